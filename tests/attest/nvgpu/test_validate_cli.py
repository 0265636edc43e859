"""GPU policy (strict, all violations together), the CC state, and the verify-gpu command."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from attest.errors import ParseError, PolicyError, VerificationError
from attest.nvgpu import (
    CC_NOT_ESTABLISHED,
    GpuPolicy,
    SimulatedGpu,
    gpu_cc_state,
    load_gpu_chain,
    parse_gpu_report,
    validate_gpu,
    verify_gpu_report,
)
from client_cli.verify_gpu_tdx import verify_gpu

NOW = datetime(2024, 6, 1, tzinfo=UTC)

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


def _real(vectors: Path) -> tuple[bytes, bytes]:
    report = bytes.fromhex((vectors / "nvidia/hopper_report.hex").read_text())
    return report, (vectors / "nvidia/hopper_cert_chain.pem").read_bytes()


def test_policy_collects_every_violation(vectors: Path) -> None:
    raw, pem = _real(vectors)
    report = parse_gpu_report(raw)
    verified = verify_gpu_report(report, load_gpu_chain(pem), nonce=None, now=NOW)
    policy = GpuPolicy.from_mapping(
        {"require_cc": True, "driver_versions": ["570.1"], "vbios_versions": ["96.00.9f.00.01"]}
    )
    with pytest.raises(PolicyError) as err:
        validate_gpu(report, policy, cc=gpu_cc_state(verified))
    assert err.value.check == "gpu-policy"
    assert err.value.violations == (
        f"cc: {CC_NOT_ESTABLISHED}; policy requires the CC state established",
        "driver_version: report 550.90.07, policy allows 570.1",
    )
    relaxed = GpuPolicy.from_mapping({"require_cc": False, "driver_versions": ["550.90.07"]})
    assert validate_gpu(report, relaxed) == [("gpu-driver-version", "550.90.07")]


def test_cc_state_without_reference_values_is_not_established(vectors: Path) -> None:
    raw, pem = _real(vectors)
    verified = verify_gpu_report(parse_gpu_report(raw), load_gpu_chain(pem), nonce=None, now=NOW)
    state = gpu_cc_state(verified)
    assert not state.established
    assert state.detail == (
        "measurements not compared with RIMs: CC/DevTools state not established"
    )
    # Not given at all counts the same as not established.
    with pytest.raises(PolicyError, match="CC/DevTools state not established"):
        validate_gpu(verified.report, GpuPolicy(require_cc=True))


def test_cc_state_from_rims_the_caller_compared(vectors: Path) -> None:
    raw, pem = _real(vectors)
    verified = verify_gpu_report(parse_gpu_report(raw), load_gpu_chain(pem), nonce=None, now=NOW)
    state = gpu_cc_state(verified, rims_matched="the RIMs d.swidtag, v.swidtag")
    assert state.established
    assert validate_gpu(verified.report, GpuPolicy(require_cc=True), cc=state) == [
        (
            "gpu-cc",
            "CC state established: every active measurement matches the RIMs d.swidtag, v.swidtag",
        ),
    ]


def test_policy_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "gpu.toml"
    path.write_text('require_cc = true\nvbios_versions = ["96.00.9f.00.01"]\n')
    assert GpuPolicy.from_toml(path).vbios_versions == ("96.00.9f.00.01",)


def test_sim_cc_state(tmp_path: Path) -> None:
    sim = SimulatedGpu.generate(tmp_path)
    chain = load_gpu_chain(sim.chain_pem())
    on = verify_gpu_report(
        parse_gpu_report(sim.evidence(bytes(32))), chain, nonce=bytes(32), roots=[sim.root]
    )
    state = gpu_cc_state(on)
    assert state.established and state.detail == (
        "CC state established: every active measurement matches the SIMULATED reference values"
    )
    assert validate_gpu(on.report, GpuPolicy(require_cc=True), cc=state)[0][0] == "gpu-cc"
    # Outside CC mode the simulated GPU never gets as far as a CC state: verification fails.
    off = parse_gpu_report(sim.evidence(bytes(32), cc_enabled=False))
    with pytest.raises(VerificationError, match="outside confidential-computing mode"):
        verify_gpu_report(off, chain, nonce=bytes(32), roots=[sim.root])


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
    statuses = {c["name"]: c["status"] for c in doc["checks"]}
    assert statuses == {
        "gpu-parse": "pass",
        "gpu-chain": "pass",
        "gpu-signature": "pass",
        "gpu-fwid": "pass",
        "gpu-nonce": "pass",
        "gpu-topology": "pass",
        "gpu-rim": "not-checked",
        "gpu-cc": "not-checked",
    }
    details = {c["name"]: c["detail"] for c in doc["checks"]}
    assert details["gpu-rim"] == "no --rim: measurements not compared"
    assert details["gpu-cc"] == CC_NOT_ESTABLISHED
    assert doc["report"]["opaque"]["vbios_version"] == "96.00.9f.00.01"
    assert doc["report"]["topology_mode"] is None


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
