"""``openpcc verify-gpu ... --rim FILE --rim FILE [--rim-root PEM]`` on the real H100 report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import typer
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from attest.nvgpu import GpuReport, parse_gpu_report
from client_cli.verify_gpu_tdx import verify_gpu

from .fake_rim import FakeRimSigner, rim_pair, unsigned_rim

NONCE_HEX = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
REAL_RIM = Path(__file__).with_name("rim") / "1010_0200_882_96005E0001_PROD.swidtag"


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    cli = typer.Typer()
    cli.command("verify-gpu")(verify_gpu)
    cli.command("other")(lambda: None)
    return cli


@pytest.fixture(scope="module")
def report(vectors: Path) -> GpuReport:
    return parse_gpu_report(bytes.fromhex((vectors / "nvidia/hopper_report.hex").read_text()))


@pytest.fixture(scope="module")
def signer() -> FakeRimSigner:
    return FakeRimSigner.generate()


def _files(
    tmp_path: Path, report: GpuReport, signer: FakeRimSigner, change: dict[int, bytes] | None = None
) -> list[str]:
    driver, vbios = rim_pair(report, change=change)
    (tmp_path / "driver.swidtag").write_bytes(
        signer.sign(unsigned_rim(report.opaque.driver_version, driver))
    )
    (tmp_path / "vbios.swidtag").write_bytes(
        signer.sign(unsigned_rim(report.opaque.vbios_version, vbios))
    )
    (tmp_path / "root.pem").write_bytes(signer.root.public_bytes(serialization.Encoding.PEM))
    return [
        "--rim",
        str(tmp_path / "driver.swidtag"),
        "--rim",
        str(tmp_path / "vbios.swidtag"),
        "--rim-root",
        str(tmp_path / "root.pem"),
    ]


def _run(app: typer.Typer, vectors: Path, *args: str) -> tuple[int, str]:
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
            *args,
        ],
    )
    return result.exit_code, result.output


def test_rims_match(
    app: typer.Typer, vectors: Path, tmp_path: Path, report: GpuReport, signer: FakeRimSigner
) -> None:
    code, output = _run(app, vectors, *_files(tmp_path, report, signer), "--json")
    assert code == 0, output
    checks = json.loads(output)["checks"]
    assert [c["name"] for c in checks][6:] == [
        "gpu-rim-signature",
        "gpu-rim-signature",
        "gpu-rim-version",
        "gpu-rim-coverage",
        "gpu-rim",
        "gpu-cc",
    ]
    assert checks[6]["detail"].startswith("driver.swidtag: 550.90.07, signed by")
    # Every active measurement matched the RIMs: only now is the CC state established.
    assert {c["status"] for c in checks} == {"pass"}
    assert checks[-1]["detail"] == (
        "CC state established: every active measurement matches "
        "the RIMs driver.swidtag, vbios.swidtag"
    )


def test_measurement_mismatch_exit_4(
    app: typer.Typer, vectors: Path, tmp_path: Path, report: GpuReport, signer: FakeRimSigner
) -> None:
    args = _files(tmp_path, report, signer, change={30: hashlib.sha384(b"x").digest()})
    code, output = _run(app, vectors, *args, "--json")
    assert code == 4, output
    failed = json.loads(output)["checks"][-1]
    assert failed["name"] == "gpu-rim" and failed["detail"].startswith("block 30 (driver RIM")


def test_pinned_root_refuses_test_rims(
    app: typer.Typer, vectors: Path, tmp_path: Path, report: GpuReport, signer: FakeRimSigner
) -> None:
    args = _files(tmp_path, report, signer)[:4]  # no --rim-root: the pinned NVIDIA root decides
    code, output = _run(app, vectors, *args)
    assert code == 4, output
    assert "gpu-rim-chain" in output


def test_real_nvidia_rim_is_for_another_vbios(app: typer.Typer, vectors: Path) -> None:
    code, output = _run(app, vectors, "--rim", str(REAL_RIM), "--json")
    assert code == 4, output
    checks = json.loads(output)["checks"]
    assert checks[-2]["name"] == "gpu-rim-signature" and checks[-2]["ok"]
    assert checks[-1]["name"] == "gpu-rim-version" and "96.00.5E.00.01" in checks[-1]["detail"]


def test_unreadable_rim_exit_3(app: typer.Typer, vectors: Path, tmp_path: Path) -> None:
    code, output = _run(app, vectors, "--rim", str(tmp_path / "absent.swidtag"), "--json")
    assert code == 3, output
    failed = json.loads(output)["checks"][-1]
    assert failed["name"] == "gpu-rim" and "absent.swidtag" in failed["detail"]


def test_not_a_rim_exit_3(app: typer.Typer, vectors: Path, tmp_path: Path) -> None:
    (tmp_path / "x.swidtag").write_text("<nope")
    code, output = _run(app, vectors, "--rim", str(tmp_path / "x.swidtag"), "--json")
    assert code == 3, output
    assert json.loads(output)["checks"][-1]["name"] == "gpu-rim"


def test_rim_root_alone_is_a_usage_error(app: typer.Typer, vectors: Path, tmp_path: Path) -> None:
    (tmp_path / "root.pem").write_text("")
    code, output = _run(app, vectors, "--rim-root", str(tmp_path / "root.pem"))
    assert code == 2 and "--rim-root needs --rim" in output
