"""ATTESTATION_REPORT parsing: real reports field by field, TCB/policy codecs, malformed bytes."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest.errors import ParseError
from attest.sevsnp.abi import (
    REPORT_SIZE,
    SIGNED_SIZE,
    GuestPolicy,
    PlatformInfo,
    TcbVersion,
    parse_report,
    product_from_cpuid,
)


def test_milan_v2_fields(milan_v2_raw: bytes) -> None:
    r = parse_report(milan_v2_raw)
    assert (r.version, r.guest_svn, r.vmpl, r.signature_algo) == (2, 0, 0, 1)
    assert r.policy_raw == 0x30000
    assert r.policy.smt and not r.policy.debug and not r.policy.migrate_ma
    assert (r.policy.abi_major, r.policy.abi_minor) == (0, 0)
    assert (r.signing_key, r.mask_chip_key, r.author_key_en) == ("vcek", False, False)
    assert r.cpuid_fam_id is None and r.cpuid_product() is None
    assert r.tcb("reported_tcb") == TcbVersion(bootloader=3, tee=0, snp=8, microcode=0x73)
    assert r.current_tcb == r.reported_tcb == r.committed_tcb == r.launch_tcb
    assert (r.current_major, r.current_minor, r.current_build) == (1, 52, 4)
    assert (r.committed_major, r.committed_minor, r.committed_build) == (1, 52, 4)
    assert r.measurement.hex().startswith("7a1e5c266c0108db")
    assert r.report_data.hex().startswith("d447b55d")
    assert r.chip_id.hex().startswith("d49554ec717f4e5b")
    assert r.report_id_ma == b"\xff" * 32
    assert r.launch_mit_vector is None and r.current_mit_vector is None
    assert len(r.signature_r) == len(r.signature_s) == 72
    assert r.signed_bytes() == milan_v2_raw[:SIGNED_SIZE] and r.raw == milan_v2_raw
    assert PlatformInfo.decode(r.platform_info).smt_en


def test_milan_v3_vlek_fields(milan_v3_raw: bytes) -> None:
    r = parse_report(milan_v3_raw)
    assert (r.version, r.vmpl, r.signing_key) == (3, 1, "vlek")
    assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == (0x19, 0x01, 0x01)
    assert r.cpuid_product() == "Milan"
    assert r.tcb("reported_tcb") == TcbVersion(bootloader=4, tee=0, snp=0x18, microcode=0xD9)
    assert r.chip_id == b"\0" * 64


def test_to_dict_is_json_and_complete(milan_v3_raw: bytes) -> None:
    d = parse_report(milan_v3_raw).to_dict()
    json.dumps(d)
    for key in (
        "version", "guest_svn", "policy", "family_id", "image_id", "vmpl", "signature_algo",
        "current_tcb", "platform_info", "signer_info", "report_data", "measurement", "host_data",
        "id_key_digest", "author_key_digest", "report_id", "report_id_ma", "reported_tcb",
        "cpuid_fam_id", "cpuid_mod_id", "cpuid_step", "chip_id", "committed_tcb",
        "current_build", "current_minor", "current_major", "committed_build", "committed_minor",
        "committed_major", "launch_tcb", "launch_mit_vector", "current_mit_vector",
        "signature_r", "signature_s",
    ):  # fmt: skip
        assert key in d, key
    assert d["reported_tcb"] == {
        "raw": "d918000000000004",
        "bootloader": 4,
        "tee": 0,
        "snp": 24,
        "microcode": 217,
    }
    assert d["signer_info"] == {
        "raw": "00000004",
        "signing_key": "vlek",
        "mask_chip_key": False,
        "author_key_en": False,
    }


def test_tcb_layouts_differ_by_product() -> None:
    raw = int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 9]), "little")
    assert TcbVersion.decode(raw, "Milan") == TcbVersion(1, 2, 0, 9, None)
    assert TcbVersion.decode(raw, "Genoa") == TcbVersion(1, 2, 0, 9, None)
    assert TcbVersion.decode(raw, "Turin") == TcbVersion(
        bootloader=2, tee=3, snp=4, microcode=9, fmc=1
    )
    turin = TcbVersion(bootloader=5, tee=6, snp=7, microcode=8, fmc=9)
    assert TcbVersion.decode(turin.encode("Turin"), "Turin") == turin
    milan = TcbVersion(bootloader=5, tee=6, snp=7, microcode=8)
    assert TcbVersion.decode(milan.encode("Milan"), "Milan") == milan
    assert str(turin) == "bootloader=5 tee=6 snp=7 microcode=8 fmc=9"


def test_policy_bits_roundtrip() -> None:
    p = GuestPolicy.decode(0x30000 | 1 << 19 | 1 << 20 | 1 << 25 | 0x0102)
    assert p.debug and p.single_socket and p.page_swap_disable and p.smt
    assert not p.migrate_ma and not p.cxl_allow
    assert (p.abi_major, p.abi_minor) == (1, 2)
    assert GuestPolicy.decode(p.encode()) == p


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (0x10000, "must-be-one"),
        (0x30000 | 1 << 26, "must be zero"),
        (0x30000 | 1 << 63, "must be zero"),
    ],
)
def test_policy_malformed(raw: int, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        GuestPolicy.decode(raw)


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x01, "Milan"),
        (0x19, 0x11, "Genoa"),
        (0x19, 0xA0, "Genoa"),
        (0x1A, 0x02, "Turin"),
        (0x17, 0x31, None),
    ],
)
def test_product_from_cpuid(family: int, model: int, product: str | None) -> None:
    assert product_from_cpuid(family, model) == product


def test_version_5_mitigation_vectors(milan_v3_raw: bytes) -> None:
    buf = bytearray(milan_v3_raw)
    struct.pack_into("<I", buf, 0, 5)
    struct.pack_into("<QQ", buf, 0x1F8, 0x11, 0x22)
    r = parse_report(bytes(buf))
    assert (r.launch_mit_vector, r.current_mit_vector) == (0x11, 0x22)
    buf[0x208] = 1
    with pytest.raises(ParseError, match="0x208"):
        parse_report(bytes(buf))


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0x000, 0, "unknown report VERSION 0"),
        (0x048, 0x20, "SIGNER_INFO bits 31:5"),
        (0x048, 0x08, "SIGNING_KEY 2 is reserved"),
        (0x04C, 1, "0x04C-0x04F"),
        (0x1EF, 1, "0x1EF-0x1EF"),
        (0x330, 1, "0x330-0x49F"),
    ],
)
def test_malformed_named(milan_v2_raw: bytes, offset: int, value: int, message: str) -> None:
    buf = bytearray(milan_v2_raw)
    struct.pack_into("<B" if offset % 4 else "<I", buf, offset, value)
    with pytest.raises(ParseError, match=message):
        parse_report(bytes(buf))


def test_wrong_type_and_size() -> None:
    with pytest.raises(ParseError, match="1184"):
        parse_report(b"\0" * 100)
    with pytest.raises(ParseError, match="must be bytes"):
        parse_report("not bytes")  # type: ignore[arg-type]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=REPORT_SIZE + 8))
def test_fuzz_any_bytes(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_report(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, REPORT_SIZE - 1), st.integers(0, 255)), max_size=8))
def test_fuzz_mutated_real_report(milan_v3_raw: bytes, edits: list[tuple[int, int]]) -> None:
    buf = bytearray(milan_v3_raw)
    for offset, value in edits:
        buf[offset] = value
    try:
        report = parse_report(bytes(buf))
    except ParseError:
        return
    json.dumps(report.to_dict())
