"""``openpcc verify-tdx --collateral DIR``: the real quote against TEST-signed collateral."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import attest.tdx.collateral as collateral_module
from attest.tdx import Quote, parse_quote
from attest.tdx.collateral import COLLATERAL_FILES
from client_cli.verify_gpu_tdx import verify_tdx

from .fake_collateral import CollateralBuilder, FakeTcbSigner, crl


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    cli = typer.Typer()
    cli.command("verify-tdx")(verify_tdx)
    cli.command("other")(lambda: None)
    return cli


@pytest.fixture(scope="module")
def quote(vectors: Path) -> Quote:
    return parse_quote((vectors / "tdx" / "quote_v4.dat").read_bytes())


@pytest.fixture
def signer(monkeypatch: pytest.MonkeyPatch) -> FakeTcbSigner:
    """The TEST root stands in for the pinned Intel root, for these tests only."""
    fake = FakeTcbSigner.generate()
    monkeypatch.setattr(collateral_module, "_pinned_roots", lambda: [fake.root])
    return fake


def _write(directory: Path, builder: CollateralBuilder) -> Path:
    directory.mkdir(exist_ok=True)
    c = builder.build()
    files = (c.tcb_info, c.qe_identity, c.issuer_chain_pem)
    for name, data in zip(COLLATERAL_FILES, files, strict=True):
        (directory / name).write_bytes(data)
    return directory


def _run(app: typer.Typer, vectors: Path, tmp_path: Path, *args: str) -> tuple[int, str]:
    policy = tmp_path / "policy.toml"
    if not policy.exists():
        policy.write_text("allow_debug = true\n")
    result = CliRunner().invoke(
        app,
        [
            "verify-tdx",
            str(vectors / "tdx/quote_v4.dat"),
            "--at",
            "2024-06-01T00:00:00Z",
            "--policy",
            str(policy),
            *args,
        ],
    )
    return result.exit_code, result.output


def test_up_to_date(
    app: typer.Typer, vectors: Path, tmp_path: Path, quote: Quote, signer: FakeTcbSigner
) -> None:
    directory = _write(tmp_path / "c", CollateralBuilder.for_quote(signer, quote))
    code, output = _run(app, vectors, tmp_path, "--collateral", str(directory), "--json")
    assert code == 0, output
    checks = json.loads(output)["checks"]
    names = [c["name"] for c in checks]
    assert names[-4:] == ["tdx-tcb-level", "tdx-crl", "tdx-debug", "tdx-tcb-status"]
    assert "tdx-fmspc" in names and "tdx-qe-identity" in names
    # Collateral without CRLs: revocation is named as not checked, never as passed.
    assert checks[-3]["status"] == "not-checked" and not checks[-3]["ok"]
    assert "pck_crl.der / root_ca_crl.der" in checks[-3]["detail"]


def test_crls_intel_did_not_sign_exit_4(
    app: typer.Typer, vectors: Path, tmp_path: Path, quote: Quote, signer: FakeTcbSigner
) -> None:
    directory = _write(tmp_path / "c", CollateralBuilder.for_quote(signer, quote))
    (directory / "pck_crl.der").write_bytes(crl(signer.root, signer.root_key))
    (directory / "root_ca_crl.der").write_bytes(crl(signer.root, signer.root_key))
    code, output = _run(app, vectors, tmp_path, "--collateral", str(directory), "--json")
    assert code == 4, output
    failed = [c for c in json.loads(output)["checks"] if c["status"] == "fail"]
    assert [c["name"] for c in failed] == ["tdx-crl"]
    assert "is not issued by a pinned Intel SGX Root CA" in failed[0]["detail"]


def test_without_collateral_says_so(app: typer.Typer, vectors: Path, tmp_path: Path) -> None:
    code, output = _run(app, vectors, tmp_path, "--json")
    assert code == 0, output
    checks = {c["name"]: c["detail"] for c in json.loads(output)["checks"]}
    assert checks["tdx-collateral"] == "skipped: no --collateral, TCB not evaluated"


def test_out_of_date_exit_5_then_accepted_by_policy(
    app: typer.Typer, vectors: Path, tmp_path: Path, quote: Quote, signer: FakeTcbSigner
) -> None:
    builder = CollateralBuilder.for_quote(signer, quote)
    builder.tcb["tcbLevels"][0]["tcbStatus"] = "SWHardeningNeeded"
    builder.tcb["tcbLevels"][0]["advisoryIDs"] = ["INTEL-SA-00615"]
    directory = _write(tmp_path / "c", builder)
    code, output = _run(app, vectors, tmp_path, "--collateral", str(directory))
    assert code == 5, output
    assert "SWHardeningNeeded" in output and "INTEL-SA-00615" in output
    (tmp_path / "policy.toml").write_text(
        'allow_debug = true\naccepted_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]\n'
    )
    code, output = _run(app, vectors, tmp_path, "--collateral", str(directory))
    assert code == 0, output


def test_require_collateral_policy(app: typer.Typer, vectors: Path, tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text("allow_debug = true\nrequire_collateral = true\n")
    code, output = _run(app, vectors, tmp_path)
    assert code == 5, output
    assert "no collateral was evaluated" in output


def test_expired_collateral_exit_4(
    app: typer.Typer, vectors: Path, tmp_path: Path, quote: Quote, signer: FakeTcbSigner
) -> None:
    directory = _write(tmp_path / "c", CollateralBuilder.for_quote(signer, quote))
    code, output = _run(
        app, vectors, tmp_path, "--collateral", str(directory), "--at", "2024-07-01", "--json"
    )
    assert code == 4, output
    doc = json.loads(output)
    assert doc["checks"][-1]["name"] == "tdx-collateral-validity" and not doc["checks"][-1]["ok"]


def test_missing_file_exit_3(
    app: typer.Typer, vectors: Path, tmp_path: Path, quote: Quote, signer: FakeTcbSigner
) -> None:
    directory = _write(tmp_path / "c", CollateralBuilder.for_quote(signer, quote))
    (directory / "tcb_signing_chain.pem").unlink()
    code, output = _run(app, vectors, tmp_path, "--collateral", str(directory), "--json")
    assert code == 3, output
    failed = json.loads(output)["checks"][-1]
    assert failed["name"] == "tdx-collateral" and "tcb_signing_chain.pem" in failed["detail"]


def test_real_intel_root_refuses_test_collateral(
    app: typer.Typer, vectors: Path, tmp_path: Path, quote: Quote
) -> None:
    directory = _write(tmp_path / "c", CollateralBuilder.for_quote(FakeTcbSigner.generate(), quote))
    code, output = _run(app, vectors, tmp_path, "--collateral", str(directory))
    assert code == 4, output
    assert "tdx-collateral-chain" in output
