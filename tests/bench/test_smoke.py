"""The benchmark's tiny scenario runs end to end and writes files of the documented shape.

No timing is asserted: this machine is shared and the numbers are the benchmark's business.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bench.loadgen import CONFIGS
from bench.runner import Options, run
from bench.workload import sharegpt_like

HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def test_workload_is_seeded_and_bounded() -> None:
    a = sharegpt_like(50, 7, max_output=100)
    assert a == sharegpt_like(50, 7, max_output=100)
    assert a != sharegpt_like(50, 8, max_output=100)
    for item in a:
        assert 4 <= item.output_tokens <= 100
        assert len(item.prompt.split()) == item.prompt_tokens
        assert item.payload()["max_tokens"] == item.output_tokens


@pytest.mark.timeout(120)
def test_smoke_scenario_writes_results(tmp_path: Path) -> None:
    opts = Options.smoke(tmp_path / "results")
    opts.publish = tmp_path / "published"
    opts.plots = HAS_MPL
    opts.log = lambda _line: None
    outdir = run(opts)

    doc = json.loads((outdir / "results.json").read_text())
    assert doc["format"] == "openpcc-bench/1"
    assert {"cpu", "logical_cpus", "python", "versions"} <= set(doc["machine"])

    engine = doc["serving"]["synthetic-max"]
    configs = {(c["config"], c["concurrency"]) for c in engine["cells"]}
    assert configs == {(cfg, c) for cfg in CONFIGS for c in (1, 2)}
    for cell in engine["cells"]:
        assert cell["errors"] == 0
        assert len(cell["samples"]) == 3
        for s in cell["samples"]:
            assert s["tokens"] == s["max_tokens"]
            assert 0 < s["ttft"] <= s["e2e"]
    rows = {(r["config"], r["concurrency"]): r for r in engine["summary"]}
    assert rows[("direct", 1)]["ratio_to_direct"] == pytest.approx(1.0)
    assert rows[("full", 2)]["ratio_to_direct"] > 0
    assert rows[("gateway", 2)]["ratio_to_proxy"] > 0  # the null-proxy floor, same rounds
    assert "null TCP proxy" in (outdir / "report.md").read_text()
    assert {"p50", "p95", "p99"} <= set(rows[("gateway", 1)]["ttft_s"])

    micro = doc["micro"]["summary"]
    assert any(k.startswith("hpke_encapsulate") for k in micro)
    assert any(k.startswith("bundle_verify") for k in micro)
    assert len(doc["micro"]["cold"]["bundle_verify"]) == 1

    assert len(doc["startup"]["ask"]) == 1
    assert doc["startup"]["ask"][0]["verify_s"] > 0
    assert len(doc["startup"]["cold_start"]) == 1

    report = (outdir / "report.md").read_text()
    assert "engine direct" in report and "## Goals" in report
    assert (tmp_path / "published" / "REPORT.md").read_text() == report
    if HAS_MPL:
        for name in ("latency_cdf.png", "throughput.png", "overhead.png"):
            assert (outdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert (tmp_path / "published" / name).exists()
