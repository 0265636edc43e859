"""`openpcc verify-report`: real reports end to end, output shapes and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from attest.sevsnp.sim import SimulatedSnpSigner

AT = "2025-06-01T00:00:00Z"


def _run(app: typer.Typer, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["verify-report", *args])
    return result.exit_code, result.stdout


def test_real_v2_verifies_table(cli_app: typer.Typer, vectors: Path) -> None:
    snp = vectors / "snp"
    code, out = _run(
        cli_app,
        str(snp / "milan_v2_report.bin"),
        "--certs",
        str(snp / "milan_v2_vcek.der"),
        "--at",
        AT,
    )
    assert code == 0, out
    assert "verified" in out and "not checked" in out
    for name in ("signature", "chain", "tcb", "chip_id", "measurement", "report_data"):
        assert name in out


def test_real_v3_vlek_verifies_json(cli_app: typer.Typer, vectors: Path) -> None:
    snp = vectors / "snp"
    code, out = _run(
        cli_app, str(snp / "milan_v3_vlek_report.bin"), "--certs", str(snp / "milan_v3_vlek.der"),
        "--at", AT, "--json",
    )  # fmt: skip
    assert code == 0, out
    doc = json.loads(out)
    assert doc["ok"] is True and doc["simulated"] is False
    checks = {c["name"]: c for c in doc["checks"]}
    assert checks["measurement"]["ok"] is None and checks["measurement"]["detail"].startswith(
        "not checked"
    )
    assert checks["report_data"]["ok"] is None
    assert checks["debug"]["ok"] is True
    assert doc["report"]["version"] == 3 and doc["report"]["vmpl"] == 1
    assert doc["report"]["signer_info"]["signing_key"] == "vlek"


def test_real_vlek_expired_now(cli_app: typer.Typer, vectors: Path) -> None:
    snp = vectors / "snp"
    code, out = _run(
        cli_app,
        str(snp / "milan_v3_vlek_report.bin"),
        "--certs",
        str(snp / "milan_v3_vlek.der"),
        "--at",
        "2026-06-01T00:00:00+00:00",
        "--json",
    )
    assert code == 4
    doc = json.loads(out)
    assert next(c["name"] for c in doc["checks"] if c["ok"] is False) == "validity"


def test_hex_report_and_full_chain(cli_app: typer.Typer, vectors: Path, tmp_path: Path) -> None:
    snp = vectors / "snp"
    hex_report = tmp_path / "report.hex"
    hex_report.write_text((snp / "milan_v2_report.bin").read_bytes().hex(" ", 16) + "\n")
    code, out = _run(
        cli_app, str(hex_report), "--certs", str(snp / "milan_v2_vcek.der"),
        "--certs", str(vectors / "amd" / "milan_vcek_chain.pem"), "--at", AT, "--json",
    )  # fmt: skip
    assert code == 0, out


def test_policy_violation_exit_5(cli_app: typer.Typer, vectors: Path, tmp_path: Path) -> None:
    snp = vectors / "snp"
    policy = tmp_path / "policy.toml"
    policy.write_text(f'measurements = ["{"00" * 48}"]\nvmpls = [0]\n')
    code, out = _run(
        cli_app, str(snp / "milan_v3_vlek_report.bin"), "--certs", str(snp / "milan_v3_vlek.der"),
        "--at", AT, "--policy", str(policy), "--json",
    )  # fmt: skip
    assert code == 5
    failed = {c["name"] for c in json.loads(out)["checks"] if c["ok"] is False}
    assert failed == {"measurement", "vmpl"}


def test_parse_failures_exit_3(cli_app: typer.Typer, vectors: Path, tmp_path: Path) -> None:
    snp = vectors / "snp"
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\x01 not hex")
    code, _ = _run(cli_app, str(junk), "--certs", str(snp / "milan_v2_vcek.der"), "--at", AT)
    assert code == 3
    code, out = _run(
        cli_app, str(snp / "milan_v2_report.bin"), "--certs", str(junk), "--at", AT, "--json"
    )
    assert code == 3
    assert json.loads(out)["checks"][-1]["name"] == "input"
    bad_policy = tmp_path / "bad.toml"
    bad_policy.write_text("surprise = 1\n")
    code, out = _run(
        cli_app, str(snp / "milan_v2_report.bin"), "--certs", str(snp / "milan_v2_vcek.der"),
        "--policy", str(bad_policy), "--at", AT,
    )  # fmt: skip
    assert code == 3 and "surprise" in out


def test_bad_at_is_usage_error(cli_app: typer.Typer, vectors: Path) -> None:
    snp = vectors / "snp"
    code, _ = _run(
        cli_app,
        str(snp / "milan_v2_report.bin"),
        "--certs",
        str(snp / "milan_v2_vcek.der"),
        "--at",
        "yesterday",
    )
    assert code == 2


def test_simulated_root_says_so(
    cli_app: typer.Typer, sim: SimulatedSnpSigner, tmp_path: Path
) -> None:
    report = tmp_path / "sim.bin"
    report.write_bytes(sim.sign(report_data=b"\0" * 64, measurement=b"\0" * 48))
    chain = tmp_path / "chain.pem"
    chain.write_bytes(sim.chain_pem())
    ark = tmp_path / "ark.pem"
    ark.write_bytes(
        sim.chain_pem().split(b"-----END CERTIFICATE-----\n")[2] + b"-----END CERTIFICATE-----\n"
    )
    code, out = _run(cli_app, str(report), "--certs", str(chain), "--simulated-root", str(ark))
    assert code == 0, out
    assert "SIMULATED" in out and "NOT CONFIDENTIAL" in out
    code, _ = _run(cli_app, str(report), "--certs", str(chain))
    assert code == 4  # pinned AMD roots never trust the simulator
