"""The vLLM configuration: GPU and model detection, and a whole run through a FAKE ``vllm``.

No GPU and no vLLM here: a fake ``nvidia-smi`` and a fake ``vllm`` executable (tests/bench/
fake_vllm.py, which serves the fake engine) come first on PATH, and the Hugging Face cache is a
temporary directory of sparse files. What is real: the bench's selection, the appliance
provisioned with engine kind vllm, the gateway's supervisor running ``vllm serve``, every
configuration's requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attest.errors import OpenPCCError, ParseError
from bench import gpu
from bench.gpu import (
    DEFAULT_MODEL,
    CachedModel,
    Gpu,
    GpuProbe,
    cached_models,
    detect_gpus,
    pick_model,
)
from bench.runner import Options, _engines, run

FAKE_VLLM = Path(__file__).resolve().parent / "fake_vllm.py"
H100 = "NVIDIA H100 80GB HBM3, 81559 MiB"


def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def _model(cache: Path, model_id: str, gib: float, *, complete: bool = True) -> None:
    snap = cache / f"models--{model_id.replace('/', '--')}" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    with (snap / "model.safetensors").open("wb") as f:
        f.truncate(int(gib * 2**30))  # sparse: sized, not written
    if not complete:
        (snap / "config.json").unlink()


def test_nvidia_smi_lines_parse() -> None:
    assert gpu.parse_nvidia_smi(H100 + "\nNVIDIA L4, 23034 MiB\n") == (
        Gpu("NVIDIA H100 80GB HBM3", 81559),
        Gpu("NVIDIA L4", 23034),
    )
    with pytest.raises(ParseError, match="unexpected line"):
        gpu.parse_nvidia_smi("NVIDIA H100, [N/A]")


@pytest.mark.parametrize(
    ("rc", "out", "problem"),
    [
        (0, H100 + "\n", None),
        (0, "", "no GPU: nvidia-smi lists none"),
        (9, "NVIDIA-SMI has failed because it couldn't communicate with the driver", "exited 9"),
    ],
)
def test_detect_gpus_reports_why_not(
    rc: int, out: str, problem: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _exe(tmp_path / "nvidia-smi", "#!/bin/sh\nexit 0\n")
    monkeypatch.setenv("PATH", str(tmp_path))

    def runner(argv: object) -> subprocess.CompletedProcess[str]:
        assert argv == ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]
        return subprocess.CompletedProcess([], rc, out, "")

    probe = detect_gpus(runner)
    if problem is None:
        assert probe == GpuProbe((Gpu("NVIDIA H100 80GB HBM3", 81559),))
    else:
        assert not probe.gpus and problem in str(probe.problem)


def test_no_nvidia_smi_means_no_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus() == GpuProbe((), "no GPU: nvidia-smi is not installed")


def test_model_auto_takes_the_largest_cached_model_that_fits(tmp_path: Path) -> None:
    _model(tmp_path, "acme/small-1b", 2)
    _model(tmp_path, "acme/mid-27b", 50)
    _model(tmp_path, "acme/huge-70b", 70)
    _model(tmp_path, "acme/partial-8b", 10, complete=False)
    models = cached_models(tmp_path)
    assert [m.model_id for m in models] == ["acme/huge-70b", "acme/mid-27b", "acme/small-1b"]
    assert pick_model(models, [Gpu("H100", 81559)]).model_id == "acme/mid-27b"
    assert pick_model(models, [Gpu("L4", 23034)]).model_id == "acme/small-1b"
    with pytest.raises(ParseError, match="no model in the Hugging Face cache"):
        pick_model(models, [Gpu("T4", 2048)])
    with pytest.raises(ParseError, match="needs a GPU"):
        pick_model([CachedModel("a/b", 1, tmp_path)], [])


def test_vllm_is_chosen_only_on_a_gpu_host_else_the_notes_say_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("bench.runner.vllm_importable", lambda: False)
    notes: list[str] = []
    chosen = _engines(
        Options(embedded=False), notes, GpuProbe((), "no GPU: nvidia-smi is not installed")
    )
    assert [e.kind for e, _ in chosen] == ["synthetic", "synthetic"]
    (note,) = [n for n in notes if n.startswith("vLLM not measured")]
    assert "no GPU: nvidia-smi is not installed" in note and "vllm is not importable" in note

    # Importable and a GPU: chosen automatically, with the default model and arguments...
    monkeypatch.setattr("bench.runner.vllm_importable", lambda: True)
    _exe(tmp_path / "vllm", "#!/bin/sh\nexit 1\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    h100 = GpuProbe((Gpu("H100", 81559),))
    (vllm,) = [e for e, _ in _engines(Options(embedded=False), [], h100) if e.kind == "vllm"]
    assert (vllm.model, vllm.args) == (DEFAULT_MODEL, ("--max-model-len", "4096"))
    # ...but without a vllm executable the run stops with a clear error, not a silent skip.
    monkeypatch.setattr("bench.runner.vllm_executable", lambda: None)
    with pytest.raises(OpenPCCError, match="no `vllm` executable"):
        _engines(Options(embedded=False), [], h100)


@pytest.fixture
def gpu_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake nvidia-smi and a fake vllm first on PATH; a HF cache with three models."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _exe(bin_dir / "nvidia-smi", f"#!/bin/sh\necho '{H100}'\n")
    _exe(bin_dir / "vllm", f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_VLLM}" "$@"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cache = tmp_path / "hf"
    for model_id, gib in (("acme/tiny-1b", 2), ("meta-llama/Meta-Llama-3-8B-Instruct", 15)):
        _model(cache, model_id, gib)
    _model(cache, "acme/too-big-70b", 140)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    argv_log = tmp_path / "vllm-argv.jsonl"
    monkeypatch.setenv("FAKE_VLLM_ARGV", str(argv_log))
    return argv_log


@pytest.mark.timeout(120)
def test_vllm_run_through_the_supervisor(gpu_host: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    opts = Options(
        scenario="serving",
        results=tmp_path / "results",
        engines=("vllm",),
        model="auto",
        concurrency=(1, 2),
        rounds=1,
        requests=3,
        max_output=24,
        quiet_wait_s=0.0,
        plots=False,
        log=lines.append,
    )
    outdir = run(opts)
    doc = json.loads((outdir / "results.json").read_text())

    # The gateway's supervisor ran exactly this (the port is the bench's fixed engine port).
    (argv,) = [json.loads(ln) for ln in gpu_host.read_text().splitlines()]
    port = argv[argv.index("--port") + 1]
    assert argv == [
        "vllm",
        "serve",
        "meta-llama/Meta-Llama-3-8B-Instruct",
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "--served-model-name",
        "openpcc-model",
        "--disable-uvicorn-access-log",
        "--max-model-len",
        "4096",
    ]
    vllm = doc["serving"]["vllm"]
    assert vllm["engine_argv"] == argv and vllm["kind"] == "vllm"
    assert vllm["model"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert list(doc["serving"]) == ["vllm"]

    configs = {(c["config"], c["concurrency"]) for c in vllm["cells"]}
    assert configs == {(cfg, c) for cfg in ("direct", "httpx", "gateway", "full") for c in (1, 2)}
    for cell in vllm["cells"]:
        assert cell["errors"] == 0 and len(cell["samples"]) == 3
        for s in cell["samples"]:
            assert s["tokens"] == s["max_tokens"]
    assert doc["machine"]["gpus"] == [{"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559}]
    assert any("--model auto chose meta-llama/Meta-Llama-3-8B-Instruct" in n for n in doc["notes"])
    # Asked for explicitly on a host where vllm is not importable: measured, and the notes say so.
    assert any(n.startswith("vLLM measured because --engine vllm") for n in doc["notes"])

    report = (outdir / "report.md").read_text()
    assert "## Serving: vLLM serving meta-llama/Meta-Llama-3-8B-Instruct" in report
    assert "vllm serve meta-llama/Meta-Llama-3-8B-Instruct --host 127.0.0.1" in report
    assert "NVIDIA H100 80GB HBM3 (81559 MiB)" in report
