"""Engine outside vs inside a CVM, against a second local SIMULATED appliance standing in for it.

The code path is the one ``--cvm-url`` takes on a TEE host: verify the node with the trust
material given, then measure direct / outside / inside with identical work. Here the "CVM" is
no CVM at all, and the run must say so loudly. ``--cvm vm`` (QEMU/TCG) is not run here: it boots
the sealed image for minutes; tests/appliance/test_vm.py covers that boot.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import lifecycle
from appliance.state import StatePaths
from attest.errors import ParseError, VerificationError
from bench import cvm
from bench.cli import main
from bench.runner import Options, run
from bench.stack import EngineChoice, Stack, running_stack
from bench.startup import prepare_client_config


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The appliance measured as 'inside': its own state, simulation root and log."""
    state = tmp_path_factory.mktemp("stand-in-cvm")
    with running_stack(state, EngineChoice("synthetic-max", "synthetic")) as stack:
        yield stack


def _opts(tmp_path: Path, url: str, trust: Path, lines: list[str]) -> Options:
    return Options(
        scenario="serving",
        results=tmp_path / "results",
        engines=("synthetic",),
        rate=0.0,
        concurrency=(1, 2),
        rounds=1,
        requests=3,
        max_output=24,
        embedded=False,
        quiet_wait_s=0.0,
        plots=False,
        cvm_url=url,
        cvm_trust=trust,
        cvm_engine="synthetic",
        log=lines.append,
    )


@pytest.mark.timeout(120)
def test_inside_outside_pair_is_verified_first_and_reported_simulated(
    stand_in: Stack, tmp_path: Path
) -> None:
    trust = prepare_client_config(tmp_path / "client", stand_in.paths)  # `openpcc trust`
    lines: list[str] = []
    outdir = run(_opts(tmp_path, stand_in.gateway_url, trust, lines))

    verified = next(i for i, ln in enumerate(lines) if ln.startswith("[cvm] verified: sim-sev-snp"))
    started = [i for i, ln in enumerate(lines) if "starting the" in ln]
    assert started and verified < min(started)
    assert any("SIMULATED — NOT CONFIDENTIAL" in ln for ln in lines)

    doc = json.loads((outdir / "results.json").read_text())
    pair = doc["cvm"]
    assert pair["simulated"] is True
    assert pair["target"]["url"] == stand_in.gateway_url and pair["target"]["how"] == "--cvm-url"
    assert pair["target"]["tee"] == "sim-sev-snp" and pair["target"]["checks"]
    assert "emulation/virtualisation" in pair["warning"] and pair["warning"] in doc["notes"]

    cells = pair["cells"]
    assert {(c["config"], c["concurrency"], c["round"]) for c in cells} == {
        (cfg, c, r) for cfg in cvm.PAIR_CONFIGS for c in (1, 2) for r in (0,)
    }
    for c in cells:
        assert c["errors"] == 0 and len(c["samples"]) == 3
    # Identical work items on both sides of the pair (and engine direct).
    work = {
        (c["config"], c["concurrency"], c["round"]): [
            (s["prompt_tokens"], s["max_tokens"]) for s in c["samples"]
        ]
        for c in cells
    }
    for (cfg, conc, rnd), items in work.items():
        assert items == work[("direct", conc, rnd)], cfg
    rows = {(r["config"], r["concurrency"]): r for r in pair["summary"]}
    assert rows[("inside", 2)]["ratio_inside_outside"] > 0
    assert len(rows[("inside", 2)]["ratio_inside_outside_rounds"]) == 1
    assert rows[("outside", 1)]["ratio_inside_outside"] is None
    assert rows[("direct", 1)]["ratio_to_direct"] == pytest.approx(1.0)

    report = (outdir / "report.md").read_text()
    assert "## Engine outside vs inside the CVM (the TEE hardware's share) — SIMULATED" in report
    assert "tok/s inside / outside" in report and "inside / outside the CVM (SIMULATED" in report


def test_trust_from_the_appliance_state_directory_verifies_too(stand_in: Stack) -> None:
    target = cvm.url_target(stand_in.gateway_url, stand_in.paths.root)
    assert target.trust_source.startswith("appliance state")
    node = asyncio.run(cvm.verify_target(target))
    assert node.simulated and cvm.node_facts(node)["tee"] == "sim-sev-snp"


@pytest.mark.timeout(60)
def test_a_cvm_that_does_not_verify_stops_the_run_before_any_measurement(
    stand_in: Stack,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A client that trusts another appliance's simulation root: the chain check must fail.
    other = StatePaths(tmp_path / "other")
    lifecycle.provision_simulated(other, port=1, engine="command", engine_args=("x",))
    trust = prepare_client_config(tmp_path / "client", other)
    lines: list[str] = []
    opts = _opts(tmp_path, stand_in.gateway_url, trust, lines)
    with pytest.raises(VerificationError, match="did not verify; nothing was measured") as e:
        run(opts)
    assert stand_in.gateway_url in str(e.value) and e.value.hint
    assert not any("starting the" in ln for ln in lines)
    assert not list((tmp_path / "results").rglob("results.json"))

    # The command line waits (up to 60 s) for a quiet machine; a busy CI host is not one.
    monkeypatch.setattr("bench.runner._wait_quiet", lambda opts: None)
    argv = ["serving", "--results", str(tmp_path / "r2"), "--engine", "synthetic"]
    argv += ["--cvm-url", stand_in.gateway_url, "--cvm-trust", str(trust), "--no-plots"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 4  # VerificationError's exit code
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and "nothing was measured" in err[0]
    assert err[1].startswith("hint: ")


def test_trust_material_that_is_neither_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ParseError, match="neither an openpcc client configuration"):
        cvm.trust_material(tmp_path)
