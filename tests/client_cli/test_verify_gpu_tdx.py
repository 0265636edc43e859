"""``openpcc verify-gpu`` / ``verify-tdx``: what was not checked says so, and never reads as a pass.

The real H100 report carries no FEATURE_FLAG and no RIMs are given here, so its CC state cannot be
established: the command succeeds (nothing failed) but names the checks it did not make.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from attest.nvgpu import CC_NOT_ESTABLISHED
from attest.nvgpu.verify import NONCE_NOT_CHECKED
from client_cli.verify_gpu_tdx import verify_gpu, verify_tdx

NONCE_HEX = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
AT = "2024-06-01T00:00:00Z"


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    cli = typer.Typer()
    cli.command("verify-gpu")(verify_gpu)
    cli.command("verify-tdx")(verify_tdx)
    return cli


def _gpu(app: typer.Typer, vectors: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app,
        [
            "verify-gpu",
            str(vectors / "nvidia/hopper_report.hex"),
            "--certs",
            str(vectors / "nvidia/hopper_cert_chain.pem"),
            "--at",
            AT,
            *args,
        ],
    )
    return result.exit_code, result.output


def _checks(output: str) -> dict[str, dict[str, object]]:
    return {c["name"]: c for c in json.loads(output)["checks"]}


def test_without_nonce_or_rims_three_checks_are_not_checked(
    app: typer.Typer, vectors: Path
) -> None:
    code, output = _gpu(app, vectors, "--json")
    assert code == 0, output
    assert json.loads(output)["ok"] is True  # nothing failed
    checks = _checks(output)
    not_checked = {n: c["detail"] for n, c in checks.items() if c["status"] == "not-checked"}
    assert not_checked == {
        "gpu-nonce": NONCE_NOT_CHECKED,
        "gpu-rim": "no --rim: measurements not compared",
        "gpu-cc": CC_NOT_ESTABLISHED,
    }
    # Not checked is never reported as ok.
    assert all(c["ok"] is False for n, c in checks.items() if n in not_checked)
    assert {c["status"] for n, c in checks.items() if n not in not_checked} == {"pass"}


def test_with_nonce_only_the_measurements_are_not_checked(app: typer.Typer, vectors: Path) -> None:
    code, output = _gpu(app, vectors, "--nonce", NONCE_HEX, "--json")
    assert code == 0, output
    checks = _checks(output)
    assert checks["gpu-nonce"]["status"] == "pass" and checks["gpu-nonce"]["detail"] == NONCE_HEX
    assert checks["gpu-topology"]["detail"] == (
        "legacy: no FEATURE_FLAG (firmware predates it), verified as a single GPU"
    )
    assert [n for n, c in checks.items() if c["status"] == "not-checked"] == ["gpu-rim", "gpu-cc"]


def test_table_shows_not_checked_and_no_cc_claim(app: typer.Typer, vectors: Path) -> None:
    code, output = _gpu(app, vectors)
    assert code == 0, output
    assert output.count("not checked") >= 3
    assert "OK (not checked: gpu-nonce, gpu-rim, gpu-cc)" in output
    assert "CC mode" not in output and "CC on" not in output


@pytest.mark.parametrize(
    ("nonce", "code", "status"),
    [
        (NONCE_HEX, 0, "pass"),
        ("00" * 32, 4, "fail"),
        ("ff" + NONCE_HEX[2:], 4, "fail"),
    ],
)
def test_nonce_rows(app: typer.Typer, vectors: Path, nonce: str, code: int, status: str) -> None:
    got, output = _gpu(app, vectors, "--nonce", nonce, "--json")
    assert got == code, output
    assert _checks(output)["gpu-nonce"]["status"] == status
    assert json.loads(output)["ok"] is (status == "pass")


def test_verify_tdx_without_collateral_says_not_checked(
    app: typer.Typer, vectors: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("allow_debug = true\n")
    result = CliRunner().invoke(
        app,
        ["verify-tdx", str(vectors / "tdx/quote_v4.dat"), "--policy", str(policy), "--at", AT],
    )
    assert result.exit_code == 0, result.output
    assert "OK (not checked: tdx-collateral)" in result.output
