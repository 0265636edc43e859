"""Key configurations (RFC 9458 §3) and the in-memory server key."""

from __future__ import annotations

import copy
import pickle

import pytest

from attest.errors import ParseError
from server.ohttp import (
    AES_128_GCM,
    CHACHA20_POLY1305,
    HKDF_SHA256,
    X25519_KEM,
    KeyConfig,
    ServerKey,
    Suite,
    encode_key_configs,
    parse_key_configs,
)
from tests.server.ohttp.vectors import (
    CHUNKED_KEY_CONFIG,
    CHUNKED_SK_R,
    OHTTP_KEY_CONFIG,
    OHTTP_SK_R,
)

BOTH = (Suite(HKDF_SHA256, AES_128_GCM), Suite(HKDF_SHA256, CHACHA20_POLY1305))


def test_rfc9458_key_config_parses_and_round_trips() -> None:
    config = KeyConfig.parse(OHTTP_KEY_CONFIG)
    assert config.key_id == 1
    assert config.kem_id == X25519_KEM
    assert config.public_key.hex() == (
        "31e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e798155"
    )
    assert config.suites == BOTH
    assert config.encode() == OHTTP_KEY_CONFIG


@pytest.mark.parametrize(
    ("sk", "published"), [(OHTTP_SK_R, OHTTP_KEY_CONFIG), (CHUNKED_SK_R, CHUNKED_KEY_CONFIG)]
)
def test_server_key_from_published_private_key(sk: bytes, published: bytes) -> None:
    assert ServerKey._from_private_bytes(1, sk).config.encode() == published


def test_key_list_round_trip() -> None:
    a = KeyConfig.parse(OHTTP_KEY_CONFIG)
    b = ServerKey.generate(7).config
    encoded = encode_key_configs([a, b])
    assert encoded[:2] == b"\x00\x2d"
    assert encoded[2 : 2 + 45] == OHTTP_KEY_CONFIG
    assert parse_key_configs(encoded) == [a, b]


def _mutate(data: bytes, offset: int, value: int) -> bytes:
    out = bytearray(data)
    out[offset] = value
    return bytes(out)


# One mutation per row, each with the message it must produce.
BAD_CONFIGS = [
    (b"", "truncated header"),
    (OHTTP_KEY_CONFIG[:2], "truncated header"),
    (OHTTP_KEY_CONFIG[:20], "truncated public key"),
    (OHTTP_KEY_CONFIG[:-1], "truncated algorithm list"),
    (OHTTP_KEY_CONFIG + b"\x00", "trailing bytes"),
    (_mutate(OHTTP_KEY_CONFIG, 2, 0x21), "unknown KEM"),
    (_mutate(OHTTP_KEY_CONFIG, 36, 6), "positive multiple of 4"),
    (OHTTP_KEY_CONFIG[:35] + b"\x00\x00", "positive multiple of 4"),
]


@pytest.mark.parametrize(("data", "message"), BAD_CONFIGS, ids=range(len(BAD_CONFIGS)))
def test_bad_key_config(data: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        KeyConfig.parse(data)


BAD_LISTS = [
    (b"", "no key configuration"),
    (b"\x00", "truncated length prefix"),
    (b"\x00\x2e" + OHTTP_KEY_CONFIG, "runs past the end"),
    (b"\x00\x2d" + OHTTP_KEY_CONFIG + b"\x00", "truncated length prefix"),
    (b"\x00\x2e" + OHTTP_KEY_CONFIG + b"\x00", "shorter than its length prefix"),
    (b"\x00\x2c" + OHTTP_KEY_CONFIG[:-1], "truncated algorithm list"),
]


@pytest.mark.parametrize(("data", "message"), BAD_LISTS, ids=range(len(BAD_LISTS)))
def test_bad_key_list(data: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_key_configs(data)


def test_unsupported_suites_are_kept_but_never_selected() -> None:
    config = KeyConfig(3, X25519_KEM, bytes(32), (Suite(2, 1), Suite(HKDF_SHA256, 2)))
    assert KeyConfig.parse(config.encode()) == config
    with pytest.raises(ValueError, match="no supported suite"):
        config.select_suite()
    with pytest.raises(ValueError, match="not offered"):
        KeyConfig.parse(OHTTP_KEY_CONFIG).select_suite(Suite(HKDF_SHA256, 2))


def test_server_key_never_serialises() -> None:
    key = ServerKey.generate(5)
    assert key.key_id == 5
    assert key.config.suites == BOTH
    for attempt in (lambda: pickle.dumps(key), lambda: copy.copy(key), lambda: copy.deepcopy(key)):
        with pytest.raises(TypeError):
            attempt()
    assert "public_key" in repr(key)
    with pytest.raises(TypeError):
        ServerKey()


@pytest.mark.parametrize("key_id", [-1, 256])
def test_key_id_range(key_id: int) -> None:
    with pytest.raises(ValueError, match="key_id"):
        ServerKey.generate(key_id)
