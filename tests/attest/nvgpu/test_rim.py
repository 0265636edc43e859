"""NVIDIA RIMs: a real NVIDIA-signed RIM, and RIMs built around the real H100 report's own
measurements signed by a TEST chain; one mutation per row, each naming the check that fails.

``rim/1010_0200_882_96005E0001_PROD.swidtag`` is NVIDIA's VBIOS RIM for GH100 VBIOS 96.00.5E.00.01
as published in NVIDIA/nvtrust (BSD-3-Clause): guest_tools/gpu_verifiers/local_gpu_verifier/
src/verifier/samples/, unchanged (SHA-256 7e8ea28e…bc50). Its signer certificate is valid
2023-06-23 .. 2025-06-22 and chains to the "NVIDIA CoRIM signing Root CA" pinned in attest/nvgpu.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import ParseError, VerificationError
from attest.nvgpu import (
    GpuReport,
    check_rims,
    load_gpu_chain,
    load_rim,
    parse_gpu_report,
    pinned_rim_roots,
    verify_gpu_report,
    verify_rim,
)
from attest.nvgpu.abi import NVDEC_STATUS_DISABLED, OpaqueFieldId
from attest.nvgpu.sim import build_evidence, measurement_block, opaque_item
from attest.nvgpu.verify import parse_rim

from .fake_rim import FakeRimSigner, rim_pair, unsigned_rim

NOW = datetime(2024, 6, 1, tzinfo=UTC)
NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
REAL_RIM = Path(__file__).with_name("rim") / "1010_0200_882_96005E0001_PROD.swidtag"
RIM_ROOT_SHA256 = "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1"
DRIVER = "550.90.07"
VBIOS = "96.00.9f.00.01"


@pytest.fixture(scope="module")
def report(vectors: Path) -> GpuReport:
    return parse_gpu_report(bytes.fromhex((vectors / "nvidia/hopper_report.hex").read_text()))


@pytest.fixture(scope="module")
def chain(vectors: Path) -> list[x509.Certificate]:
    return load_gpu_chain((vectors / "nvidia/hopper_cert_chain.pem").read_bytes())


@pytest.fixture(scope="module")
def signer() -> FakeRimSigner:
    return FakeRimSigner.generate()


@pytest.fixture(scope="module")
def real_rim() -> bytes:
    return REAL_RIM.read_bytes()


@pytest.fixture(scope="module")
def good(report: GpuReport, signer: FakeRimSigner) -> dict[str, bytes]:
    driver, vbios = rim_pair(report)
    return {
        "driver.swidtag": signer.sign(unsigned_rim(DRIVER, driver)),
        "vbios.swidtag": signer.sign(unsigned_rim(VBIOS.upper(), vbios)),
    }


# --- the real NVIDIA RIM ------------------------------------------------------------------------


def test_pinned_rim_root() -> None:
    (root,) = pinned_rim_roots()
    assert root.fingerprint(hashes.SHA256()).hex() == RIM_ROOT_SHA256
    assert root.subject.rfc4514_string() == "CN=NVIDIA CoRIM signing Root CA,O=NVIDIA,C=US"
    root.verify_directly_issued_by(root)


def test_real_nvidia_rim_verifies(real_rim: bytes) -> None:
    verified = verify_rim(real_rim, label="vbios", now=NOW)
    rim = verified.rim
    assert rim.version == "96.00.5E.00.01" and rim.product == "GH100"
    assert len(rim.measurements) == 64 and [m.index for m in rim.measurements] == list(range(1, 65))
    assert sum(m.active for m in rim.measurements) == 12
    assert len(rim.measurements[12].values) == 4
    assert verified.signer.subject.rfc4514_string().startswith("CN=HCC RIM L4 Signer")
    assert verified.root == pinned_rim_roots()[0]


def test_real_rim_and_real_report_share_fsp_measurements(
    real_rim: bytes, report: GpuReport
) -> None:
    # Same FSP firmware: RIM index i is SPDM block i + 1 (nvtrust's mapping), value for value.
    rim = load_rim(real_rim)
    fsp = [m for m in rim.measurements if m.name.startswith("HashedMeasurement_") and m.index > 3]
    assert [m.index for m in fsp] == [4, 5, 6, 7]
    assert all(report.measurements[m.index] == m.values[0] for m in fsp)


def test_real_rim_is_for_another_vbios(real_rim: bytes, report: GpuReport) -> None:
    verified = verify_rim(real_rim, label="vbios", now=NOW)
    with pytest.raises(VerificationError, match=r"version 96\.00\.5E\.00\.01") as err:
        check_rims(report, [verified])
    assert err.value.check == "gpu-rim-version"


@pytest.mark.parametrize(
    ("name", "edit", "now", "check"),
    [
        ("hash edited", lambda d: d.replace(b'ns2:Hash0="c3f6', b'ns2:Hash0="c3f7'), NOW, "sig"),
        ("active flag", lambda d: d.replace(b'active="False"', b'active="True"', 1), NOW, "sig"),
        ("version", lambda d: d.replace(b"96.00.5E.00.01", b"96.00.9F.00.01"), NOW, "sig"),
        (
            "signature value",
            lambda d: d.replace(b"<ds:SignatureValue>s5JY", b"<ds:SignatureValue>s5JZ"),
            NOW,
            "sig",
        ),
        ("signer expired", lambda d: d, datetime(2025, 7, 1, tzinfo=UTC), "chain"),
        ("before the signer", lambda d: d, datetime(2023, 6, 1, tzinfo=UTC), "chain"),
        (
            "chain cut",
            lambda d: re.sub(
                rb"<ds:X509Certificate>MIICjTCC.*?</ds:X509Certificate>", b"", d, flags=re.S
            ),
            NOW,
            "chain",
        ),
    ],
)
def test_real_rim_mutations(
    real_rim: bytes, name: str, edit: Callable[[bytes], bytes], now: datetime, check: str
) -> None:
    mutated = edit(real_rim)
    assert mutated != real_rim or check == "chain", name
    with pytest.raises(VerificationError) as err:
        verify_rim(mutated, label="vbios", now=now)
    assert err.value.check == f"gpu-rim-{'signature' if check == 'sig' else 'chain'}", name


def test_real_rim_refused_under_a_test_root(real_rim: bytes, signer: FakeRimSigner) -> None:
    with pytest.raises(VerificationError, match="no pinned root issued") as err:
        verify_rim(real_rim, roots=[signer.root], now=NOW)
    assert err.value.check == "gpu-rim-chain"


# --- RIMs around the real report ----------------------------------------------------------------


def test_real_report_matches_its_rims(
    report: GpuReport, chain: list[x509.Certificate], signer: FakeRimSigner, good: dict[str, bytes]
) -> None:
    verified = verify_gpu_report(
        report, chain, nonce=NONCE, now=NOW, rims=good, rim_roots=[signer.root]
    )
    names = [n for n, _ in verified.checks]
    assert names == [
        "gpu-chain",
        "gpu-signature",
        "gpu-fwid",
        "gpu-nonce",
        "gpu-topology",
        "gpu-rim-signature",
        "gpu-rim-signature",
        "gpu-rim-version",
        "gpu-rim-coverage",
        "gpu-rim",
    ]
    details = dict(verified.checks[-3:])
    assert details["gpu-rim-version"] == (
        "driver 550.90.07 (driver.swidtag), VBIOS 96.00.9F.00.01 (vbios.swidtag)"
    )
    # The captured H100 reports NVDEC0 disabled (0x55), so block 36 is not compared (nvtrust).
    assert report.opaque.nvdec0_status == NVDEC_STATUS_DISABLED
    assert details["gpu-rim"] == "63 active measurements match (block 36 skipped: NVDEC0 disabled)"
    assert verified.measurements_matched == "the RIMs driver.swidtag, vbios.swidtag"


def test_any_alternative_matches(
    report: GpuReport, signer: FakeRimSigner, good: dict[str, bytes]
) -> None:
    driver, _vbios = rim_pair(report)
    driver[40] = (True, [hashlib.sha384(b"older driver").digest(), report.measurements[40]])
    rims = [
        verify_rim(signer.sign(unsigned_rim(DRIVER, driver)), roots=[signer.root], now=NOW),
        verify_rim(good["vbios.swidtag"], roots=[signer.root], now=NOW),
    ]
    assert check_rims(report, rims)[-1][1].startswith("63 active measurements match")


Rims = dict[str, bytes]


def _resign(
    report: GpuReport,
    signer: FakeRimSigner,
    *,
    driver_version: str = DRIVER,
    edit: Callable[[dict[int, tuple[bool, list[bytes]]], dict[int, tuple[bool, list[bytes]]]], None]
    | None = None,
    change: dict[int, bytes] | None = None,
) -> Rims:
    driver, vbios = rim_pair(report, change=change)
    if edit is not None:
        edit(driver, vbios)
    return {
        "driver.swidtag": signer.sign(unsigned_rim(driver_version, driver)),
        "vbios.swidtag": signer.sign(unsigned_rim(VBIOS, vbios)),
    }


def _tamper(good: Rims, signer: FakeRimSigner, report: GpuReport) -> Rims:
    value = report.measurements[30].hex().encode()
    return {**good, "driver.swidtag": good["driver.swidtag"].replace(value, b"00" * 48, 1)}


def _flip_signature_value(good: Rims, signer: FakeRimSigner, report: GpuReport) -> Rims:
    data = good["vbios.swidtag"]
    at = data.index(b"SignatureValue>") + len(b"SignatureValue>") + 4
    swapped = b"A" if data[at : at + 1] != b"A" else b"B"
    return {**good, "vbios.swidtag": data[:at] + swapped + data[at + 1 :]}


def _unsigned(good: Rims, signer: FakeRimSigner, report: GpuReport) -> Rims:
    driver, _vbios = rim_pair(report)
    return {**good, "driver.swidtag": unsigned_rim(DRIVER, driver)}


def _expired_signer(good: Rims, signer: FakeRimSigner, report: GpuReport) -> Rims:
    old = FakeRimSigner.generate(signer_not_after=datetime(2024, 1, 1, tzinfo=UTC))
    driver, _vbios = rim_pair(report)
    old_root_rim = old.sign(unsigned_rim(DRIVER, driver))
    return {**good, "driver.swidtag": old_root_rim}


def _one_measurement(good: Rims, signer: FakeRimSigner, report: GpuReport) -> Rims:
    return _resign(report, signer, change={12: hashlib.sha384(b"other firmware").digest()})


def _version(good: Rims, signer: FakeRimSigner, report: GpuReport) -> Rims:
    return _resign(report, signer, driver_version="550.90.12")


def _missing_index(good: Rims, signer: FakeRimSigner, report: GpuReport) -> Rims:
    def edit(
        driver: dict[int, tuple[bool, list[bytes]]], _v: dict[int, tuple[bool, list[bytes]]]
    ) -> None:
        driver[65] = (True, [bytes(48)])

    return _resign(report, signer, edit=edit)


def _undescribed(good: Rims, signer: FakeRimSigner, report: GpuReport) -> Rims:
    def edit(
        driver: dict[int, tuple[bool, list[bytes]]], vbios: dict[int, tuple[bool, list[bytes]]]
    ) -> None:
        del driver[64], vbios[64]

    return _resign(report, signer, edit=edit)


def _active_in_both(good: Rims, signer: FakeRimSigner, report: GpuReport) -> Rims:
    def edit(
        driver: dict[int, tuple[bool, list[bytes]]], vbios: dict[int, tuple[bool, list[bytes]]]
    ) -> None:
        vbios[20] = driver[20]

    return _resign(report, signer, edit=edit)


def _size(good: Rims, signer: FakeRimSigner, report: GpuReport) -> Rims:
    # Block 1 listed with a 32-byte reference: the report's 48-byte value cannot match it.
    _driver, vbios = rim_pair(report)
    value = report.measurements[1]
    row = f'ns2:Hash0="{value.hex()}" name="Measurement_0" size="48"'.encode()
    short = f'ns2:Hash0="{value[:32].hex()}" name="Measurement_0" size="32"'.encode()
    unsigned = unsigned_rim(VBIOS, vbios)
    assert row in unsigned
    return {**good, "vbios.swidtag": signer.sign(unsigned.replace(row, short))}


MUTATIONS: list[tuple[str, Callable[[Rims, FakeRimSigner, GpuReport], Rims], str]] = [
    ("hash edited after signing", _tamper, "gpu-rim-signature"),
    ("signature value", _flip_signature_value, "gpu-rim-signature"),
    ("unsigned RIM", _unsigned, "gpu-rim-chain"),
    ("signer expired", _expired_signer, "gpu-rim-chain"),
    ("wrong root", lambda g, s, r: g, "gpu-rim-chain"),
    ("one measurement changed", _one_measurement, "gpu-rim"),
    ("measurement size", _size, "gpu-rim"),
    ("driver version mismatch", _version, "gpu-rim-version"),
    ("active index missing from the report", _missing_index, "gpu-rim-coverage"),
    ("report block in no RIM", _undescribed, "gpu-rim-coverage"),
    ("index active in both RIMs", _active_in_both, "gpu-rim-coverage"),
    ("no VBIOS RIM", lambda g, s, r: {"driver.swidtag": g["driver.swidtag"]}, "gpu-rim-coverage"),
    (
        "two driver RIMs",
        lambda g, s, r: {"a": g["driver.swidtag"], "b": g["driver.swidtag"]},
        "gpu-rim-coverage",
    ),
]


@pytest.mark.parametrize(("name", "mutation", "check"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mutations(
    report: GpuReport,
    chain: list[x509.Certificate],
    signer: FakeRimSigner,
    good: Rims,
    name: str,
    mutation: Callable[[Rims, FakeRimSigner, GpuReport], Rims],
    check: str,
) -> None:
    rims = mutation(good, signer, report)
    roots = None if name == "wrong root" else [signer.root]
    with pytest.raises(VerificationError) as err:
        verify_gpu_report(report, chain, nonce=NONCE, now=NOW, rims=rims, rim_roots=roots)
    assert err.value.check == check, f"{name}: {err.value}"


def test_one_measurement_message_names_the_block(
    report: GpuReport, chain: list[x509.Certificate], signer: FakeRimSigner, good: Rims
) -> None:
    with pytest.raises(
        VerificationError,
        match=r"^gpu-rim: block 12 \(VBIOS RIM vbios\.swidtag, Measurement_11\): report 413d",
    ):
        verify_gpu_report(
            report,
            chain,
            nonce=NONCE,
            now=NOW,
            rims=_one_measurement(good, signer, report),
            rim_roots=[signer.root],
        )


def test_nvdec_disabled_skips_block_36(signer: FakeRimSigner) -> None:
    values = {i: hashlib.sha384(bytes([i])).digest() for i in range(1, 41)}
    opaque = (
        opaque_item(OpaqueFieldId.DRIVER_VERSION, b"570.1\0")
        + opaque_item(OpaqueFieldId.VBIOS_VERSION, bytes(range(8)))
        + opaque_item(OpaqueFieldId.NVDEC0_STATUS, bytes([NVDEC_STATUS_DISABLED]))
    )
    evidence = build_evidence(
        ec.generate_private_key(ec.SECP384R1()),
        nonce=NONCE,
        blocks=[measurement_block(i, v) for i, v in values.items()],
        opaque=opaque,
        responder_nonce=bytes(32),
    )
    report = parse_gpu_report(evidence)
    driver, vbios = rim_pair(report, change={36: hashlib.sha384(b"nvdec off").digest()})
    rims = [
        verify_rim(signer.sign(unsigned_rim("570.1", driver)), roots=[signer.root], now=NOW),
        verify_rim(
            signer.sign(unsigned_rim(report.opaque.vbios_version, vbios)),
            roots=[signer.root],
            now=NOW,
        ),
    ]
    assert check_rims(report, rims)[-1] == (
        "gpu-rim",
        "39 active measurements match (block 36 skipped: NVDEC0 disabled)",
    )


# --- parsing ------------------------------------------------------------------------------------


def test_parse_rim_unverified(good: Rims) -> None:
    refs = parse_rim(good["driver.swidtag"], "driver")
    assert len(refs) == 64 and refs[0].index == 1 and refs[0].component == "driver"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<nope", "not XML"),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>', "DTD"),
        (
            b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
            b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><x>&c;&c;&c;&c;</x>',
            "DTD",
        ),
        (b'<!DOCTYPE x SYSTEM "file:///etc/passwd"><x/>', "DTD"),
        (b"<SoftwareIdentity/>", "not a SWID SoftwareIdentity"),
    ],
)
def test_hostile_or_wrong_xml(data: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        load_rim(data)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.replace(b'active="True"', b'active="yes"', 1), "is not True or False"),
        (lambda d: d.replace(b'index="1"', b'index="0"', 1), "listed twice"),
        (lambda d: d.replace(b'alternatives="4"', b'alternatives="5"'), "lacks"),
        (lambda d: d.replace(b'alternatives="1"', b'alternatives="0"', 1), "no alternatives"),
        (lambda d: d.replace(b'size="48"', b'size="32"', 1), "size says 32"),
        (lambda d: d.replace(b'index="5"', b'index="x5"'), "not a number"),
        (
            lambda d: d.replace(b'colloquialVersion="96.00.5E.00.01"', b'colloquialVersion=""'),
            "empty",
        ),
        (lambda d: d.replace(b'type="Measurement"', b'type="Other"', 1), "not 'Measurement'"),
        (
            lambda d: d.replace(b"<ds:X509Certificate>MIIC", b"<ds:X509Certificate>!!IC", 1),
            "does not decode",
        ),
    ],
)
def test_malformed_rim(real_rim: bytes, edit: Callable[[bytes], bytes], message: str) -> None:
    mutated = edit(real_rim)
    assert mutated != real_rim
    with pytest.raises(ParseError, match=message):
        load_rim(mutated)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_load_rim_bytes(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        load_rim(data)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_fuzz_mutated_real_rim(data: st.DataObject) -> None:
    """Byte edits of the real RIM: parsing says ParseError, verification one of our errors."""
    raw = bytearray(REAL_RIM.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = bytes(raw[: data.draw(st.integers(len(raw) // 2, len(raw)))])
    with contextlib.suppress(ParseError):
        load_rim(cut)
    with contextlib.suppress(ParseError, VerificationError):
        verify_rim(cut, now=NOW)
