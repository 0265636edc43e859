"""The PCK certificate's SGX extension: the real one decoded, malformed ones refused, fuzzed."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import ParseError
from attest.tdx import parse_quote
from attest.tdx.pck import SGX_EXTENSIONS_OID, parse_sgx_extension, pck_extensions

FMSPC_TLV = bytes.fromhex("0406" + "50806f000000")


@pytest.fixture(scope="module")
def der(vectors: Path) -> bytes:
    quote = parse_quote((vectors / "tdx" / "quote_v4.dat").read_bytes())
    value = quote.pck_chain[0].extensions.get_extension_for_oid(SGX_EXTENSIONS_OID).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


def test_real_extension(der: bytes) -> None:
    ext = parse_sgx_extension(der)
    assert ext.fmspc.hex() == "50806f000000" and ext.pce_svn == 11 and ext.sgx_type == 1
    assert len(der) == 554 and der.count(FMSPC_TLV) == 1


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | ((n.bit_length() + 7) // 8)])
        + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + length + content


def _oid(*arcs: int) -> bytes:
    body = bytes([40 * 1 + 2]) + bytes.fromhex("864886f84d010d01")  # 1.2.840.113741.1.13.1
    for arc in arcs:
        body += bytes([arc])
    return _tlv(0x06, body)


def _pair(oid: bytes, value: bytes) -> bytes:
    return _tlv(0x30, oid + value)


def _extension(
    *,
    fmspc: bytes = bytes.fromhex("50806f000000"),
    pcesvn: bytes = _tlv(0x02, b"\x0b"),
    drop: int | None = None,
    extra: bytes = b"",
) -> bytes:
    comps = b"".join(_pair(_oid(2, n), _tlv(0x02, bytes([n]))) for n in range(1, 17))
    tcb = comps + _pair(_oid(2, 17), pcesvn) + _pair(_oid(2, 18), _tlv(0x04, bytes(16)))
    elements = {
        1: _pair(_oid(1), _tlv(0x04, bytes(16))),
        2: _pair(_oid(2), _tlv(0x30, tcb)),
        3: _pair(_oid(3), _tlv(0x04, b"\x00\x00")),
        4: _pair(_oid(4), _tlv(0x04, fmspc)),
        5: _pair(_oid(5), _tlv(0x0A, b"\x01")),
    }
    return _tlv(0x30, b"".join(v for k, v in elements.items() if k != drop) + extra)


def test_builder_matches_the_parser() -> None:
    ext = parse_sgx_extension(_extension())
    assert ext.tcb_components == tuple(range(1, 17)) and ext.pce_svn == 11


@pytest.mark.parametrize(
    ("der", "message"),
    [
        (_extension() + b"\x04\x00", "not one SEQUENCE"),
        (_extension()[:-1], "overruns"),
        (_extension(fmspc=bytes(5)), "FMSPC is not a 6-byte"),
        (_extension(drop=4), "lacks element .4"),
        (_extension(pcesvn=_tlv(0x02, b"\x8b")), "PCESVN is negative"),
        (_extension(pcesvn=_tlv(0x02, b"\x00\x0b")), "not minimally encoded"),
        (_extension(pcesvn=_tlv(0x04, b"\x0b")), "PCESVN is not an integer"),
        (_extension(pcesvn=_tlv(0x02, b"\x01\x00\x00")), "exceeds 65535"),
        (_extension(extra=_pair(_oid(4), _tlv(0x04, bytes(6)))), "repeats"),
        (b"\x30\x81\x05" + bytes(5), "non-minimal length"),
        (b"\x1f\x01\x00", "multi-byte tag"),
        (_tlv(0x30, _tlv(0x30, _tlv(0x06, b"\x2a\x80\x01") + b"\x05\x00")), "non-minimal OID"),
    ],
)
def test_malformed(der: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_sgx_extension(der)


def test_certificate_without_extension(vectors: Path) -> None:
    quote = parse_quote((vectors / "tdx" / "quote_v4.dat").read_bytes())
    with pytest.raises(ParseError, match="no SGX extension"):
        pck_extensions(quote.pck_chain[1])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_sgx_extension(data)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_mutated_real(der: bytes, data: st.DataObject) -> None:
    raw = bytearray(der)
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ParseError):
        parse_sgx_extension(bytes(raw[: data.draw(st.integers(0, len(raw)))]))
