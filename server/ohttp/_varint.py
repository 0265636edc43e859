"""QUIC variable-length integers (RFC 9000 §16), as Binary HTTP and chunked OHTTP use them."""

from __future__ import annotations

from attest.errors import ParseError

__all__ = ["MAX_VARINT", "decode_varint", "encode_varint", "peek_varint"]

MAX_VARINT = (1 << 62) - 1

# The two high bits of the first byte give the encoded length.
_LENGTHS = (1, 2, 4, 8)


def encode_varint(value: int) -> bytes:
    """The shortest encoding of ``value``."""
    if value < 0x40:
        if value < 0:
            raise ValueError(f"varint cannot encode negative {value}")
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x4000_0000:
        return (value | 0x8000_0000).to_bytes(4, "big")
    if value <= MAX_VARINT:
        return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")
    raise ValueError(f"varint cannot encode {value} (max 2^62-1)")


def peek_varint(data: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """``(value, next_pos)``, or ``None`` when ``data`` ends inside the integer.

    Streaming readers use this: an incomplete integer means "wait for more bytes".
    """
    if pos >= len(data):
        return None
    first = data[pos]
    size = _LENGTHS[first >> 6]
    end = pos + size
    if end > len(data):
        return None
    if size == 1:
        return first, end
    value = int.from_bytes(data[pos:end], "big") & ((1 << (8 * size - 2)) - 1)
    return value, end


def decode_varint(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    """``(value, next_pos)``; ParseError when ``data`` ends inside the integer."""
    got = peek_varint(data, pos)
    if got is None:
        raise ParseError("truncated variable-length integer")
    return got
