"""QUIC varints (RFC 9000 §16 and appendix A.1 examples)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attest.errors import ParseError
from server.ohttp._varint import MAX_VARINT, decode_varint, encode_varint, peek_varint

RFC9000_EXAMPLES = (
    ("c2197c5eff14e88c", 151288809941952652),
    ("9d7f3e7d", 494878333),
    ("7bbd", 15293),
    ("25", 37),
    ("4025", 37),  # a non-minimal encoding decodes too
)


@pytest.mark.parametrize(("encoded", "value"), RFC9000_EXAMPLES)
def test_rfc9000_examples_decode(encoded: str, value: int) -> None:
    data = bytes.fromhex(encoded)
    assert decode_varint(data, 0) == (value, len(data))


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (63, "3f"),
        (64, "4040"),
        (16383, "7fff"),
        (16384, "80004000"),
        (2**30, "c000000040000000"),
        (151288809941952652, "c2197c5eff14e88c"),
    ],
)
def test_encode_is_minimal(value: int, encoded: str) -> None:
    assert encode_varint(value).hex() == encoded


@pytest.mark.parametrize("value", [-1, MAX_VARINT + 1])
def test_encode_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match="varint"):
        encode_varint(value)


@pytest.mark.parametrize("data", ["", "40", "80ffff", "c0000000000000"])
def test_truncated(data: str) -> None:
    raw = bytes.fromhex(data)
    assert peek_varint(raw, 0) is None
    with pytest.raises(ParseError, match="truncated"):
        decode_varint(raw, 0)


@given(st.integers(min_value=0, max_value=MAX_VARINT), st.binary(max_size=4))
def test_round_trip(value: int, tail: bytes) -> None:
    encoded = encode_varint(value)
    assert decode_varint(encoded + tail, 0) == (value, len(encoded))
