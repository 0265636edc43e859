"""Signature, chain, product, validity, CRL, TCB and chip-id verification."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from attest.errors import ParseError, VerificationError
from attest.sevsnp.abi import parse_report
from attest.sevsnp.kds import vcek_url
from attest.sevsnp.sim import SimulatedSnpSigner
from attest.sevsnp.verify import (
    VerifiedReport,
    load_certificates,
    pinned_intermediates,
    pinned_roots,
    verify_report,
)

REAL_NOW = datetime(2025, 6, 1, tzinfo=UTC)
MEAS = b"\x11" * 48
RD = b"\x22" * 64


def test_serial_zero_vcek_loads(vectors: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        certs = load_certificates((vectors / "snp" / "milan_v2_vcek.der").read_bytes())
    with pytest.warns(CryptographyDeprecationWarning, match="serial number"):
        assert certs[0].serial_number == 0


def test_real_milan_v2_vcek_verifies(
    milan_v2_raw: bytes, milan_v2_vcek: list[x509.Certificate]
) -> None:
    v = verify_report(parse_report(milan_v2_raw), milan_v2_vcek, now=REAL_NOW)
    assert isinstance(v, VerifiedReport)
    assert v.product == "Milan"
    assert [name for name, _ in v.checks] == [
        "signature",
        "chain",
        "product",
        "validity",
        "tcb",
        "chip_id",
    ]
    assert v.chain[1] in pinned_intermediates()
    assert "CN=SEV-Milan" in v.chain[1].subject.rfc4514_string()
    assert v.chain[2] in pinned_roots()


def test_real_milan_v3_vlek_verifies(
    milan_v3_raw: bytes, milan_v3_vlek: list[x509.Certificate]
) -> None:
    v = verify_report(parse_report(milan_v3_raw), milan_v3_vlek, now=REAL_NOW)
    assert v.product == "Milan"
    assert "SEV-VLEK-Milan" in v.chain[1].subject.rfc4514_string()
    assert dict(v.checks)["chip_id"].startswith("not applicable")


def test_expired_vlek_fails_validity(
    milan_v3_raw: bytes, milan_v3_vlek: list[x509.Certificate]
) -> None:
    with pytest.raises(VerificationError) as info:
        verify_report(
            parse_report(milan_v3_raw), milan_v3_vlek, now=datetime(2026, 1, 1, tzinfo=UTC)
        )
    assert info.value.check == "validity"
    assert "SEV-VLEK" in info.value.detail


def test_naive_time_is_utc(milan_v2_raw: bytes, milan_v2_vcek: list[x509.Certificate]) -> None:
    verify_report(parse_report(milan_v2_raw), milan_v2_vcek, now=datetime(2025, 6, 1))


def test_full_chain_supplied_is_fine(
    vectors: Path, milan_v2_raw: bytes, milan_v2_vcek: list[x509.Certificate]
) -> None:
    chain = load_certificates((vectors / "amd" / "milan_vcek_chain.pem").read_bytes())
    v = verify_report(parse_report(milan_v2_raw), milan_v2_vcek + chain, now=REAL_NOW)
    assert v.product == "Milan"


def test_pinned_roots() -> None:
    names = sorted(c.subject.rfc4514_string().split(",")[0] for c in pinned_roots())
    assert names == ["CN=ARK-Genoa", "CN=ARK-Milan", "CN=ARK-Turin"]
    assert len(pinned_intermediates()) == 6


def test_wrong_product_roots_fail_chain(
    milan_v2_raw: bytes, milan_v2_vcek: list[x509.Certificate]
) -> None:
    genoa = [c for c in pinned_roots() if "Genoa" in c.subject.rfc4514_string()]
    with pytest.raises(VerificationError) as info:
        verify_report(parse_report(milan_v2_raw), milan_v2_vcek, roots=genoa, now=REAL_NOW)
    assert info.value.check == "chain"


def test_bundle_ark_never_decides_trust(sim: SimulatedSnpSigner) -> None:
    """A simulated chain with its own ARK in the bundle still fails against the pinned roots."""
    report = parse_report(sim.sign(report_data=RD, measurement=MEAS))
    with pytest.raises(VerificationError) as info:
        verify_report(report, sim.certificates())
    assert info.value.check == "chain"


def test_impostor_ark_in_bundle_is_refused(
    milan_v2_raw: bytes, milan_v2_vcek: list[x509.Certificate]
) -> None:
    """A supplied ARK with AMD's exact name but another key is refused, not silently ignored."""
    pinned = next(c for c in pinned_roots() if "ARK-Milan" in c.subject.rfc4514_string())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    impostor = (
        x509.CertificateBuilder()
        .subject_name(pinned.subject)
        .issuer_name(pinned.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA384())
    )
    with pytest.raises(VerificationError) as info:
        verify_report(parse_report(milan_v2_raw), [*milan_v2_vcek, impostor], now=REAL_NOW)
    assert info.value.check == "chain"
    assert "not the pinned root" in info.value.detail


def test_certs_missing(milan_v2_raw: bytes) -> None:
    with pytest.raises(VerificationError) as info:
        verify_report(parse_report(milan_v2_raw), [], now=REAL_NOW)
    assert info.value.check == "chain"
    assert "no VCEK certificate supplied" in info.value.detail


def test_fetcher_used_only_when_missing(sim: SimulatedSnpSigner) -> None:
    report = parse_report(sim.sign(report_data=RD, measurement=MEAS))
    vcek, ask, ark = sim.certificates()
    urls: list[str] = []

    def fake_fetcher(url: str) -> bytes:
        urls.append(url)
        return vcek.public_bytes(Encoding.DER)

    v = verify_report(report, [ask], roots=[ark], fetcher=fake_fetcher)
    assert v.signing_cert == vcek
    assert urls == [vcek_url("Milan", report.chip_id, report.tcb("reported_tcb"))]
    assert urls[0].startswith("https://kdsintf.amd.com/vcek/v1/Milan/" + report.chip_id.hex())
    urls.clear()
    verify_report(report, [vcek, ask], roots=[ark], fetcher=fake_fetcher)
    assert urls == []


def test_fetcher_garbage_is_chain_error(sim: SimulatedSnpSigner) -> None:
    report = parse_report(sim.sign(report_data=RD, measurement=MEAS))
    with pytest.raises(VerificationError) as info:
        verify_report(report, [], roots=[sim.ark_certificate()], fetcher=lambda url: b"junk")
    assert info.value.check == "chain"


def test_fetch_needs_product_for_v2(sim: SimulatedSnpSigner) -> None:
    report = parse_report(sim.sign(report_data=RD, measurement=MEAS, version=2))
    with pytest.raises(VerificationError) as info:
        verify_report(report, [], roots=[sim.ark_certificate()], fetcher=lambda url: b"")
    assert info.value.check == "product"


def test_turin_vcek_url() -> None:
    from attest.sevsnp.abi import TcbVersion

    url = vcek_url("Turin", bytes(range(64)), TcbVersion(1, 2, 3, 4, fmc=5))
    assert url == (
        "https://kdsintf.amd.com/vcek/v1/Turin/0001020304050607"
        "?fmcSPL=5&blSPL=1&teeSPL=2&snpSPL=3&ucodeSPL=4"
    )


def test_crl(sim: SimulatedSnpSigner) -> None:
    report = parse_report(sim.sign(report_data=RD, measurement=MEAS))
    roots = [sim.ark_certificate()]
    v = verify_report(report, sim.certificates(), roots=roots, crl=sim.crl())
    assert dict(v.checks)["crl"].startswith("not revoked")
    ask = sim.certificates()[1]
    with pytest.raises(VerificationError) as info:
        verify_report(report, sim.certificates(), roots=roots, crl=sim.crl([ask.serial_number]))
    assert (info.value.check, "revoked" in info.value.detail) == ("crl", True)
    with pytest.raises(VerificationError) as info:
        verify_report(report, sim.certificates(), roots=roots, crl=b"not a crl")
    assert info.value.check == "crl"


def test_crl_from_another_root(sim: SimulatedSnpSigner, tmp_path: Path) -> None:
    other = SimulatedSnpSigner.generate(tmp_path / "other")
    report = parse_report(sim.sign(report_data=RD, measurement=MEAS))
    with pytest.raises(VerificationError) as info:
        verify_report(report, sim.certificates(), roots=[sim.ark_certificate()], crl=other.crl())
    assert info.value.check == "crl"


def test_turin_simulated_chain_checks_fmc(tmp_path: Path) -> None:
    from attest.sevsnp.abi import TcbVersion

    turin = SimulatedSnpSigner.generate(tmp_path / "turin", product="Turin")
    roots = [turin.ark_certificate()]
    report = parse_report(turin.sign(report_data=RD, measurement=MEAS))
    v = verify_report(report, turin.certificates(), roots=roots)
    assert v.product == "Turin" and "fmc=1" in dict(v.checks)["tcb"]
    bad = parse_report(
        turin.sign(report_data=RD, measurement=MEAS, tcb=TcbVersion(1, 0, 3, 0x2A, fmc=2))
    )
    with pytest.raises(VerificationError) as info:
        verify_report(bad, turin.certificates(), roots=roots)
    assert info.value.check == "tcb"


@pytest.mark.parametrize(
    "data",
    [b"", b"   ", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"],
)
def test_load_certificates_rejects(data: bytes) -> None:
    with pytest.raises(ParseError):
        load_certificates(data)


def test_load_certificates_pem_many(vectors: Path) -> None:
    assert len(load_certificates((vectors / "amd" / "turin_vlek_chain.pem").read_bytes())) == 2


def test_on_check_callback(milan_v2_raw: bytes, milan_v2_vcek: list[x509.Certificate]) -> None:
    seen: list[str] = []
    verify_report(
        parse_report(milan_v2_raw),
        milan_v2_vcek,
        now=REAL_NOW,
        on_check=lambda n, d: seen.append(n),
    )
    assert seen == ["signature", "chain", "product", "validity", "tcb", "chip_id"]


def _unsigned_crl_named(issuer: x509.Name) -> bytes:
    """A CRL claiming ``issuer`` but signed by a throwaway key (selection is by issuer only)."""
    from datetime import timedelta

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(REAL_NOW - timedelta(days=1))
        .next_update(REAL_NOW + timedelta(days=30))
        .sign(key, hashes.SHA384())
    )
    return crl.public_bytes(serialization.Encoding.DER)


def test_crls_are_picked_by_the_pinned_root_even_for_a_vcek_only_chain(
    milan_v2_raw: bytes, milan_v2_vcek: list[x509.Certificate], sim: SimulatedSnpSigner
) -> None:
    """Real nodes often send the VCEK alone: the CRL is chosen after the chain reached its
    pinned ARK, never from what the bundle's last certificate claims."""
    report = parse_report(milan_v2_raw)
    (ark,) = [r for r in pinned_roots() if "Milan" in r.subject.rfc4514_string()]
    # Another product's CRL only: this chain has none to be checked against.
    with pytest.raises(VerificationError, match="no CRL given is issued by 'ARK-Milan'") as info:
        verify_report(report, milan_v2_vcek, now=REAL_NOW, crls=[sim.crl()])
    assert info.value.check == "crl"
    # One naming ARK-Milan is selected, and then must really be ARK-Milan's.
    forged = _unsigned_crl_named(ark.subject)
    with pytest.raises(VerificationError) as info:
        verify_report(report, milan_v2_vcek, now=REAL_NOW, crls=[sim.crl(), forged])
    assert info.value.check == "crl" and "no CRL given" not in info.value.detail


def test_a_stale_crl_is_refused(sim: SimulatedSnpSigner) -> None:
    """Past its next update a CRL cannot speak for now: revocations since are unknown."""
    from datetime import timedelta

    report = parse_report(sim.sign(report_data=RD, measurement=MEAS))
    old = sim.crl(now=datetime.now(UTC) - timedelta(days=60))
    with pytest.raises(VerificationError) as info:
        verify_report(report, sim.certificates(), roots=[sim.ark_certificate()], crls=[old])
    assert info.value.check == "crl"
    assert info.value.detail.startswith("CRL is stale: its next update was due")
    assert "AMD KDS" in info.value.hint


def test_every_crl_of_the_root_is_consulted(sim: SimulatedSnpSigner) -> None:
    """Two CRLs from one ARK (AMD's VCEK and VLEK CRLs, or an old and a new one): a chain
    certificate revoked in the second is revoked, whichever comes first."""
    report = parse_report(sim.sign(report_data=RD, measurement=MEAS))
    ask = sim.certificates()[1]
    benign, revoking = sim.crl(), sim.crl([ask.serial_number])
    for crls in ([benign, revoking], [revoking, benign]):
        with pytest.raises(VerificationError) as info:
            verify_report(report, sim.certificates(), roots=[sim.ark_certificate()], crls=crls)
        assert info.value.check == "crl" and "is revoked" in info.value.detail
    v = verify_report(report, sim.certificates(), roots=[sim.ark_certificate()], crls=[benign] * 2)
    assert dict(v.checks)["crl"].count("not revoked per CRL of") == 2
