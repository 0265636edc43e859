"""configfs-tsm collection against a fake tree, and the verify-tdx command."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from attest.errors import TransportError
from attest.tdx import collect_tdx_quote
from client_cli.verify_gpu_tdx import verify_tdx

_spec = importlib.util.spec_from_file_location("fake_tsm", Path(__file__).with_name("fake_tsm.py"))
assert _spec is not None and _spec.loader is not None
fake_tsm = importlib.util.module_from_spec(_spec)
sys.modules["fake_tsm"] = fake_tsm
_spec.loader.exec_module(fake_tsm)
FakeTsmClient = fake_tsm.FakeTsmClient

REPORT_DATA = bytes(range(64))


def test_collect(tmp_path: Path) -> None:
    client = FakeTsmClient()
    report = collect_tdx_quote(REPORT_DATA, root=tmp_path, client=client)
    assert report.outblob == b"FAKE-QUOTE:" + REPORT_DATA
    assert report.provider == "tdx_guest" and report.generation == 1
    assert client.removed and not any(tmp_path.iterdir())


def test_wrong_provider(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="sev_guest"):
        collect_tdx_quote(REPORT_DATA, root=tmp_path, client=FakeTsmClient(provider="sev_guest"))


def test_raced_generation(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="generation is 2"):
        collect_tdx_quote(REPORT_DATA, root=tmp_path, client=FakeTsmClient(extra_writes=1))


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="cannot create"):
        collect_tdx_quote(REPORT_DATA, root=tmp_path / "absent")


def test_report_data_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        collect_tdx_quote(b"short", root=tmp_path, client=FakeTsmClient())


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    cli = typer.Typer()
    cli.command("verify-tdx")(verify_tdx)
    cli.command("other")(lambda: None)
    return cli


def test_cli_signature_chain_ok(app: typer.Typer, vectors: Path, tmp_path: Path) -> None:
    # The real quote comes from a debug TD: with a policy that allows debug, everything passes.
    policy = tmp_path / "debug-ok.toml"
    policy.write_text("allow_debug = true\n")
    result = CliRunner().invoke(
        app,
        [
            "verify-tdx",
            str(vectors / "tdx/quote_v4.dat"),
            "--at",
            "2024-06-01",
            "--json",
            "--policy",
            str(policy),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["ok"] is True and doc["quote"]["version"] == 4
    assert "tdx-quote-signature" in [c["name"] for c in doc["checks"]]


def test_cli_without_policy_applies_the_floor(app: typer.Typer, vectors: Path) -> None:
    result = CliRunner().invoke(
        app, ["verify-tdx", str(vectors / "tdx/quote_v4.dat"), "--at", "2024-06-01", "--json"]
    )
    assert result.exit_code == 5, result.output
    doc = json.loads(result.output)
    assert doc["ok"] is False
    assert "DEBUG" in result.output or "debug" in result.output


def test_cli_policy_exit_5(app: typer.Typer, vectors: Path, tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('mrtd = ["' + "00" * 48 + '"]\n')
    result = CliRunner().invoke(
        app,
        [
            "verify-tdx",
            str(vectors / "tdx/quote_v4.dat"),
            "--policy",
            str(policy),
            "--at",
            "2024-06-01",
        ],
    )
    assert result.exit_code == 5, result.output
    assert "td_attributes.debug" in result.output and "mrtd" in result.output


def test_cli_chain_expired_exit_4(app: typer.Typer, vectors: Path) -> None:
    result = CliRunner().invoke(
        app, ["verify-tdx", str(vectors / "tdx/quote_v4.dat"), "--at", "2035-01-01T00:00:00+00:00"]
    )
    assert result.exit_code == 4, result.output
    assert "tdx-pck-chain" in result.output


def test_cli_unparsable_exit_3(app: typer.Typer, vectors: Path, tmp_path: Path) -> None:
    bad = tmp_path / "q.dat"
    bad.write_bytes((vectors / "tdx/quote_v4.dat").read_bytes()[:100])
    result = CliRunner().invoke(app, ["verify-tdx", str(bad), "--json"])
    assert result.exit_code == 3, result.output
    assert json.loads(result.output)["ok"] is False


def test_cli_bad_policy_exit_3(app: typer.Typer, vectors: Path, tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text("unknown = 1\n")
    result = CliRunner().invoke(
        app, ["verify-tdx", str(vectors / "tdx/quote_v4.dat"), "--policy", str(policy)]
    )
    assert result.exit_code == 3, result.output
