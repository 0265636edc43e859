"""The SIMULATED signer: fast, reloadable, and honest about what it is."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID

from attest.errors import ParseError
from attest.sevsnp.abi import parse_report
from attest.sevsnp.sim import SIMULATED_BANNER, SimulatedSnpSigner
from attest.sevsnp.verify import verify_report


def test_generate_is_fast_and_reloads(tmp_path: Path) -> None:
    start = time.perf_counter()
    signer = SimulatedSnpSigner.generate(tmp_path)
    assert time.perf_counter() - start < 2.0
    loaded = SimulatedSnpSigner.load(tmp_path)
    assert loaded.chain_pem() == signer.chain_pem()
    assert (loaded.chip_id, loaded.tcb, loaded.product) == (signer.chip_id, signer.tcb, "Milan")
    report = parse_report(loaded.sign(report_data=b"\1" * 64, measurement=b"\2" * 48))
    verify_report(report, signer.certificates(), roots=[signer.ark_certificate()])
    assert (tmp_path / "vcek.key").stat().st_mode & 0o077 == 0
    assert not (tmp_path / "ark.key").exists()


def test_says_it_is_simulated(sim: SimulatedSnpSigner, sim_dir: Path) -> None:
    for cert in sim.certificates():
        org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
        assert "SIMULATED" in str(org)
    assert json.loads((sim_dir / "simulated.json").read_text())["warning"] == SIMULATED_BANNER


def test_sign_logs_simulated(sim: SimulatedSnpSigner, caplog: pytest.LogCaptureFixture) -> None:
    sim.sign(report_data=b"\1" * 64, measurement=b"\2" * 48)
    assert "NOT CONFIDENTIAL" in caplog.text


def test_sign_fields(sim: SimulatedSnpSigner) -> None:
    r = parse_report(
        sim.sign(
            report_data=b"\1" * 64, measurement=b"\2" * 48, vmpl=1, host_data=b"\3" * 32,
            guest_svn=7, family_id=b"\4" * 16, author_key_en=True, current=(1, 57, 9),
        )
    )  # fmt: skip
    assert (r.vmpl, r.guest_svn, r.author_key_en) == (1, 7, True)
    assert (r.host_data, r.family_id) == (b"\3" * 32, b"\4" * 16)
    assert (r.current_major, r.current_minor, r.current_build) == (1, 57, 9)
    assert r.chip_id == sim.chip_id


def test_sign_rejects_bad_input(sim: SimulatedSnpSigner) -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        sim.sign(report_data=b"short", measurement=b"\0" * 48)
    with pytest.raises(TypeError, match="unknown report field"):
        sim.sign(report_data=b"\0" * 64, measurement=b"\0" * 48, colour="blue")


def test_load_broken_directory(tmp_path: Path) -> None:
    with pytest.raises(ParseError):
        SimulatedSnpSigner.load(tmp_path)


def test_loaded_signer_cannot_sign_crl(sim_dir: Path, sim: SimulatedSnpSigner) -> None:
    with pytest.raises(ValueError, match="ARK key"):
        SimulatedSnpSigner.load(sim_dir).crl()
