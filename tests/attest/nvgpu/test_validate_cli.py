"""GPU policy (strict, all violations together) and the verify-gpu command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from attest.errors import ParseError, PolicyError
from attest.nvgpu import GpuPolicy, SimulatedGpu, parse_gpu_report, validate_gpu
from client_cli.verify_gpu_tdx import verify_gpu

NONCE_HEX = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    cli = typer.Typer()
    cli.command("verify-gpu")(verify_gpu)
    cli.command("other")(lambda: None)
    return cli


def test_policy_is_strict() -> None:
    with pytest.raises(ParseError, match="empty"):
        GpuPolicy.from_mapping({})
    with pytest.raises(ParseError, match="unknown GPU policy keys: debug"):
        GpuPolicy.from_mapping({"debug": True})
    with pytest.raises(ParseError, match="require_cc"):
        GpuPolicy.from_mapping({"require_cc": "yes"})


def test_policy_collects_every_violation(vectors: Path) -> None:
    report = parse_gpu_report(bytes.fromhex((vectors / "nvidia/hopper_report.hex").read_text()))
    policy = GpuPolicy.from_mapping(
        {"require_cc": True, "driver_versions": ["570.1"], "vbios_versions": ["96.00.9f.00.01"]}
    )
    with pytest.raises(PolicyError) as err:
        validate_gpu(report, policy)
    assert err.value.check == "gpu-policy"
    assert err.value.violations == (
        "cc_enabled: report None, policy requires True",
        "driver_version: report 550.90.07, policy allows 570.1",
    )
    relaxed = GpuPolicy.from_mapping({"require_cc": False, "driver_versions": ["550.90.07"]})
    assert validate_gpu(report, relaxed) == [("gpu-driver-version", "550.90.07")]


def test_policy_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "gpu.toml"
    path.write_text('require_cc = true\nvbios_versions = ["96.00.9f.00.01"]\n')
    assert GpuPolicy.from_toml(path).vbios_versions == ("96.00.9f.00.01",)


def test_sim_cc_off_fails_policy(tmp_path: Path) -> None:
    sim = SimulatedGpu.generate(tmp_path)
    report = parse_gpu_report(sim.evidence(bytes(32), cc_enabled=False))
    with pytest.raises(PolicyError, match="cc_enabled: report False"):
        validate_gpu(report, GpuPolicy.from_mapping({"require_cc": True}))


def test_cli_ok_json(app: typer.Typer, vectors: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "verify-gpu",
            str(vectors / "nvidia/hopper_report.hex"),
            "--certs",
            str(vectors / "nvidia/hopper_cert_chain.pem"),
            "--nonce",
            NONCE_HEX,
            "--at",
            "2024-06-01T00:00:00Z",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["ok"] is True
    names = [c["name"] for c in doc["checks"]]
    assert names == [
        "gpu-parse",
        "gpu-chain",
        "gpu-signature",
        "gpu-fwid",
        "gpu-nonce",
        "gpu-rim",
        "gpu-cc",
    ]
    assert doc["checks"][5]["detail"] == "skipped: no --rim, measurements not compared"
    assert doc["report"]["opaque"]["vbios_version"] == "96.00.9f.00.01"


def test_cli_table_wrong_nonce_exit_4(app: typer.Typer, vectors: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "verify-gpu",
            str(vectors / "nvidia/hopper_report.hex"),
            "--certs",
            str(vectors / "nvidia/hopper_cert_chain.pem"),
            "--nonce",
            "00" * 32,
        ],
    )
    assert result.exit_code == 4, result.output
    assert "gpu-nonce" in result.output and "NO" in result.output


def test_cli_unparsable_exit_3(app: typer.Typer, vectors: Path, tmp_path: Path) -> None:
    bad = tmp_path / "r.bin"
    bad.write_bytes(b"\x11\xe0")
    result = CliRunner().invoke(
        app,
        [
            "verify-gpu",
            str(bad),
            "--certs",
            str(vectors / "nvidia/hopper_cert_chain.pem"),
            "--json",
        ],
    )
    assert result.exit_code == 3, result.output
    assert json.loads(result.output)["checks"][0]["name"] == "gpu-parse"


def test_cli_sim_evidence_fails_chain(app: typer.Typer, tmp_path: Path) -> None:
    sim = SimulatedGpu.generate(tmp_path)
    (tmp_path / "ev.bin").write_bytes(sim.evidence(bytes(32)))
    (tmp_path / "chain.pem").write_bytes(sim.chain_pem())
    result = CliRunner().invoke(
        app, ["verify-gpu", str(tmp_path / "ev.bin"), "--certs", str(tmp_path / "chain.pem")]
    )
    assert result.exit_code == 4, result.output
    assert "gpu-chain" in result.output
