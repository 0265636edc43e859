"""Chunked OHTTP (draft-ietf-ohai-chunked-ohttp-08): the appendix byte for byte, streaming,
truncation, tampering and memory bounds."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import DecryptError
from server.ohttp import (
    AES_128_GCM,
    CHACHA20_POLY1305,
    HKDF_SHA256,
    ChunkedRequestOpener,
    ChunkedRequestSealer,
    ChunkedResponseOpener,
    KeyConfig,
    ServerKey,
    Suite,
)
from server.ohttp._chunked import CHUNKED_REQUEST_LABEL
from server.ohttp._hpke import request_header
from server.ohttp._varint import encode_varint
from tests.server.ohttp.vectors import (
    CHUNKED_AEAD_NONCE,
    CHUNKED_ENC_REQUEST,
    CHUNKED_ENC_REQUEST_LINES,
    CHUNKED_ENC_RESPONSE,
    CHUNKED_EXPORTED_SECRET,
    CHUNKED_INFO,
    CHUNKED_KEY_CONFIG,
    CHUNKED_PK_E,
    CHUNKED_RESPONSE_NONCE,
    CHUNKED_SK_E,
    CHUNKED_SK_R,
    OHTTP_REQUEST,
    OHTTP_RESPONSE,
)

AES = Suite(HKDF_SHA256, AES_128_GCM)
CHACHA = Suite(HKDF_SHA256, CHACHA20_POLY1305)


@pytest.fixture(scope="module")
def keys() -> dict[int, ServerKey]:
    return {1: ServerKey._from_private_bytes(1, CHUNKED_SK_R)}


def _example_sealer() -> ChunkedRequestSealer:
    return ChunkedRequestSealer(
        KeyConfig.parse(CHUNKED_KEY_CONFIG), _ephemeral_private_key=CHUNKED_SK_E
    )


def test_appendix_request_byte_for_byte() -> None:
    sealer = _example_sealer()
    assert CHUNKED_REQUEST_LABEL + b"\x00" + request_header(1, AES) == CHUNKED_INFO
    header = sealer.header()
    assert header == CHUNKED_ENC_REQUEST_LINES[0] + CHUNKED_PK_E
    # 12 bytes, the remaining 13, then an empty final chunk.
    first = sealer.seal_chunk(OHTTP_REQUEST[:12])
    second = sealer.seal_chunk(OHTTP_REQUEST[12:])
    final = sealer.seal_chunk(b"", final=True)
    assert (first, second, final) == CHUNKED_ENC_REQUEST_LINES[2:]
    assert sealer._secret == CHUNKED_EXPORTED_SECRET


def test_appendix_gateway_byte_for_byte(keys: dict[int, ServerKey]) -> None:
    opener = ChunkedRequestOpener(keys)
    assert opener.feed(CHUNKED_ENC_REQUEST) == [OHTTP_REQUEST[:12], OHTTP_REQUEST[12:]]
    assert opener.finished
    assert opener.close() == []
    assert opener.key_id == 1
    assert opener.enc == CHUNKED_PK_E
    sealer = opener.response_sealer(_response_nonce=CHUNKED_RESPONSE_NONCE)
    assert sealer._keys.nonce == CHUNKED_AEAD_NONCE
    out = (
        sealer.header()
        + sealer.seal_chunk(OHTTP_RESPONSE[:1])
        + sealer.seal_chunk(OHTTP_RESPONSE[1:])
        + sealer.seal_chunk(b"", final=True)
    )
    assert out == CHUNKED_ENC_RESPONSE


def test_appendix_client_opens_response() -> None:
    opener = _example_sealer().response_opener()
    assert opener.feed(CHUNKED_ENC_RESPONSE) == [OHTTP_RESPONSE[:1], OHTTP_RESPONSE[1:]]
    assert opener.finished
    opener.close()


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=150)
@given(st.lists(st.integers(min_value=0), max_size=20))
def test_request_any_split_points(cuts: list[int]) -> None:
    keys = {1: ServerKey._from_private_bytes(1, CHUNKED_SK_R)}
    opener = ChunkedRequestOpener(keys)
    out: list[bytes] = []
    for piece in _split(CHUNKED_ENC_REQUEST, cuts):
        out += opener.feed(piece)
    out += opener.close()
    assert b"".join(out) == OHTTP_REQUEST
    assert opener.finished


@settings(max_examples=150)
@given(
    st.lists(st.binary(max_size=50), max_size=6),
    st.binary(max_size=40),
    st.lists(st.integers(min_value=0), max_size=20),
    st.sampled_from([AES, CHACHA]),
)
def test_response_round_trip_any_split_points(
    chunks: list[bytes], last: bytes, cuts: list[int], suite: Suite
) -> None:
    key = ServerKey.generate(4)
    client = ChunkedRequestSealer(key.config, suite=suite)
    gateway = ChunkedRequestOpener({4: key})
    assert gateway.feed(client.header() + client.seal_chunk(b"q", final=True)) == [b"q"]
    sealer = gateway.response_sealer()
    stream = sealer.header() + b"".join(sealer.seal_chunk(c) for c in chunks)
    stream += sealer.seal_chunk(last, final=True)
    opener = client.response_opener()
    out: list[bytes] = []
    for piece in _split(stream, cuts):
        out += opener.feed(piece)
    out += opener.close()
    assert b"".join(out) == b"".join(chunks) + last
    assert opener.finished


def test_final_chunk_with_data_arrives_through_feed(keys: dict[int, ServerKey]) -> None:
    sealer = ChunkedRequestSealer(keys[1].config)
    opener = ChunkedRequestOpener(keys)
    assert opener.feed(sealer.header() + sealer.seal_chunk(b"all of it", final=True)) == [
        b"all of it"
    ]
    assert opener.finished


def test_large_final_chunk_fed_bytewise_opens_at_close(keys: dict[int, ServerKey]) -> None:
    sealer = ChunkedRequestSealer(keys[1].config)
    body = bytes(100_000)
    stream = sealer.header() + sealer.seal_chunk(body, final=True)
    opener = ChunkedRequestOpener(keys)
    out: list[bytes] = []
    for i in range(0, len(stream), 997):
        out += opener.feed(stream[i : i + 997])
    out += opener.close()
    assert b"".join(out) == body


def _request_stream(keys: dict[int, ServerKey], *chunks: bytes) -> tuple[bytes, list[bytes]]:
    sealer = ChunkedRequestSealer(keys[1].config)
    parts = [sealer.header(), *(sealer.seal_chunk(c) for c in chunks)]
    return b"".join(parts), parts


@pytest.mark.parametrize(
    "stream",
    [
        CHUNKED_ENC_REQUEST[:0],
        CHUNKED_ENC_REQUEST[:20],
        CHUNKED_ENC_REQUEST[:39],
        b"".join(CHUNKED_ENC_REQUEST_LINES[:3]),
        b"".join(CHUNKED_ENC_REQUEST_LINES[:4]),
        b"".join(CHUNKED_ENC_REQUEST_LINES[:4]) + b"\x00",
        CHUNKED_ENC_REQUEST[:-1],
        CHUNKED_ENC_REQUEST[:-15],
    ],
    ids=[
        "empty",
        "in header",
        "header only",
        "one chunk",
        "two chunks",
        "final marker only",
        "final short 1",
        "final short 15",
    ],
)
def test_truncated_request_is_never_complete(keys: dict[int, ServerKey], stream: bytes) -> None:
    opener = ChunkedRequestOpener(keys)
    opener.feed(stream)
    assert not opener.finished
    with pytest.raises(DecryptError, match="truncated"):
        opener.close()
    with pytest.raises(DecryptError):
        opener.feed(b"")


@pytest.mark.parametrize("cut", range(len(CHUNKED_ENC_RESPONSE)))
def test_truncated_response_is_never_complete(cut: int) -> None:
    opener = _example_sealer().response_opener()
    opener.feed(CHUNKED_ENC_RESPONSE[:cut])
    assert not opener.finished
    with pytest.raises(DecryptError, match="truncated"):
        opener.close()


def _flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)


_L = [len(line) for line in CHUNKED_ENC_REQUEST_LINES]
_FINAL_AT = sum(_L[:4])
# One change per row; each is a DecryptError, raised by feed() or at the latest by close().
BAD_REQUEST_STREAMS = [
    ("unknown key id", _flip(CHUNKED_ENC_REQUEST, 0)),
    ("AEAD switched", CHUNKED_ENC_REQUEST[:5] + b"\x00\x03" + CHUNKED_ENC_REQUEST[7:]),
    ("enc changed", _flip(CHUNKED_ENC_REQUEST, 8)),
    ("first chunk changed", _flip(CHUNKED_ENC_REQUEST, 45)),
    ("first chunk length shortened", _flip(CHUNKED_ENC_REQUEST, 39)),
    ("chunks swapped", b"".join(CHUNKED_ENC_REQUEST_LINES[i] for i in (0, 1, 3, 2, 4))),
    ("chunk dropped", b"".join(CHUNKED_ENC_REQUEST_LINES[i] for i in (0, 1, 3, 4))),
    ("final chunk changed", _flip(CHUNKED_ENC_REQUEST, len(CHUNKED_ENC_REQUEST) - 1)),
    (
        "final marker removed",
        CHUNKED_ENC_REQUEST[:_FINAL_AT] + CHUNKED_ENC_REQUEST[_FINAL_AT + 1 :],
    ),
    ("data after final", CHUNKED_ENC_REQUEST + b"\x00"),
    (
        "non-final chunk marked final",
        b"".join(CHUNKED_ENC_REQUEST_LINES[:2]) + b"\x00" + CHUNKED_ENC_REQUEST_LINES[2][1:],
    ),
]


@pytest.mark.parametrize(
    "stream", [r[1] for r in BAD_REQUEST_STREAMS], ids=[r[0] for r in BAD_REQUEST_STREAMS]
)
def test_tampered_request_stream(keys: dict[int, ServerKey], stream: bytes) -> None:
    opener = ChunkedRequestOpener(keys)
    with pytest.raises(DecryptError):
        opener.feed(stream)
        opener.close()
    assert not opener.finished


def test_non_minimal_length_encoding_is_accepted(keys: dict[int, ServerKey]) -> None:
    # The draft leaves the varint encoding unauthenticated, so any valid encoding must work.
    lines = list(CHUNKED_ENC_REQUEST_LINES)
    lines[2] = b"\x40" + lines[2]
    opener = ChunkedRequestOpener(keys)
    assert b"".join(opener.feed(b"".join(lines))) == OHTTP_REQUEST


def test_oversized_chunk_length_is_refused_before_buffering(keys: dict[int, ServerKey]) -> None:
    stream, _ = _request_stream(keys)
    opener = ChunkedRequestOpener(keys, max_chunk_size=1024)
    with pytest.raises(DecryptError):
        opener.feed(stream + encode_varint(1024 + 16 + 1))
    # Exactly at the bound is fine.
    sealer = ChunkedRequestSealer(keys[1].config)
    ok = ChunkedRequestOpener(keys, max_chunk_size=1024)
    assert ok.feed(sealer.header() + sealer.seal_chunk(bytes(1024))) == [bytes(1024)]


def test_huge_declared_length_never_allocates(keys: dict[int, ServerKey]) -> None:
    stream, _ = _request_stream(keys)
    opener = ChunkedRequestOpener(keys)
    with pytest.raises(DecryptError):
        opener.feed(stream + encode_varint(2**62 - 1))


def test_oversized_final_chunk_is_refused(keys: dict[int, ServerKey]) -> None:
    stream, _ = _request_stream(keys)
    opener = ChunkedRequestOpener(keys, max_chunk_size=64)
    with pytest.raises(DecryptError):
        opener.feed(stream + b"\x00" + bytes(64 + 16 + 1))


def test_response_opener_rejects_oversized_chunk() -> None:
    opener = _example_sealer().response_opener(max_chunk_size=8)
    with pytest.raises(DecryptError):
        opener.feed(CHUNKED_RESPONSE_NONCE + encode_varint(8 + 16 + 1))


def test_sealers_refuse_chunks_after_final(keys: dict[int, ServerKey]) -> None:
    sealer = ChunkedRequestSealer(keys[1].config)
    sealer.seal_chunk(b"", final=True)
    with pytest.raises(RuntimeError, match="final"):
        sealer.seal_chunk(b"x")
    opener = ChunkedRequestOpener(keys)
    opener.feed(sealer.header())
    response = opener.response_sealer()
    response.seal_chunk(b"", final=True)
    with pytest.raises(RuntimeError, match="final"):
        response.seal_chunk(b"x", final=True)


def test_opener_state_before_header(keys: dict[int, ServerKey]) -> None:
    opener = ChunkedRequestOpener(keys)
    assert opener.feed(CHUNKED_ENC_REQUEST[:38]) == []
    assert not opener.header_received
    with pytest.raises(RuntimeError, match="header"):
        opener.response_sealer()
    opener.feed(CHUNKED_ENC_REQUEST[38:39])
    assert opener.header_received
    assert opener.key_id == 1


def test_request_chunk_cannot_be_replayed_as_response(keys: dict[int, ServerKey]) -> None:
    client = _example_sealer()
    opener = client.response_opener()
    with pytest.raises(DecryptError):
        opener.feed(CHUNKED_ENC_REQUEST[:16] + b"".join(CHUNKED_ENC_REQUEST_LINES[2:]))
        opener.close()


@settings(max_examples=300)
@given(st.binary(max_size=120), st.lists(st.integers(min_value=0), max_size=6))
def test_response_opener_fuzz_raises_only_decrypt_error(data: bytes, cuts: list[int]) -> None:
    for stream in (data, CHUNKED_RESPONSE_NONCE + data, CHUNKED_ENC_RESPONSE[:-17] + data):
        opener = ChunkedResponseOpener(CHUNKED_EXPORTED_SECRET, CHUNKED_PK_E, AES)
        with contextlib.suppress(DecryptError):
            for piece in _split(stream, cuts):
                opener.feed(piece)
            opener.close()


@settings(max_examples=200)
@given(st.binary(max_size=120), st.lists(st.integers(min_value=0), max_size=6))
def test_request_opener_fuzz_raises_only_decrypt_error(data: bytes, cuts: list[int]) -> None:
    keys = {1: ServerKey._from_private_bytes(1, CHUNKED_SK_R)}
    for stream in (data, CHUNKED_ENC_REQUEST[:39] + data, CHUNKED_ENC_REQUEST[:-17] + data):
        opener = ChunkedRequestOpener(keys)
        with contextlib.suppress(DecryptError):
            for piece in _split(stream, cuts):
                opener.feed(piece)
            opener.close()
