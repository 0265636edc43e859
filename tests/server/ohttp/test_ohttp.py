"""Oblivious HTTP (RFC 9458): appendix A byte for byte, round trips, opaque failures."""

from __future__ import annotations

import contextlib

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import DecryptError
from server.ohttp import (
    AES_128_GCM,
    CHACHA20_POLY1305,
    HKDF_SHA256,
    KeyConfig,
    ServerKey,
    Suite,
    decapsulate_request,
    encapsulate_request,
)
from server.ohttp._hpke import response_keys
from server.ohttp._keys import aead_params
from tests.server.ohttp.vectors import (
    OHTTP_AEAD_KEY,
    OHTTP_AEAD_NONCE,
    OHTTP_ENC_REQUEST,
    OHTTP_ENC_RESPONSE,
    OHTTP_EXPORTED_SECRET,
    OHTTP_KEY_CONFIG,
    OHTTP_REQUEST,
    OHTTP_RESPONSE,
    OHTTP_RESPONSE_NONCE,
    OHTTP_SK_E,
    OHTTP_SK_R,
)

AES = Suite(HKDF_SHA256, AES_128_GCM)
CHACHA = Suite(HKDF_SHA256, CHACHA20_POLY1305)


@pytest.fixture(scope="module")
def rfc_key() -> ServerKey:
    return ServerKey._from_private_bytes(1, OHTTP_SK_R)


def test_appendix_a_client_request(rfc_key: ServerKey) -> None:
    config = KeyConfig.parse(OHTTP_KEY_CONFIG)
    enc_request, opener = encapsulate_request(
        config, OHTTP_REQUEST, _ephemeral_private_key=OHTTP_SK_E
    )
    assert enc_request == OHTTP_ENC_REQUEST
    assert opener.open(OHTTP_ENC_RESPONSE) == OHTTP_RESPONSE


def test_appendix_a_gateway(rfc_key: ServerKey) -> None:
    request, sealer = decapsulate_request({1: rfc_key}, OHTTP_ENC_REQUEST)
    assert request == OHTTP_REQUEST
    assert sealer.key_id == 1
    assert sealer.enc == OHTTP_ENC_REQUEST[7:39]
    assert sealer.seal(OHTTP_RESPONSE, _response_nonce=OHTTP_RESPONSE_NONCE) == OHTTP_ENC_RESPONSE


def test_appendix_a_response_key_schedule(rfc_key: ServerKey) -> None:
    _, sealer = decapsulate_request({1: rfc_key}, OHTTP_ENC_REQUEST)
    assert sealer._secret == OHTTP_EXPORTED_SECRET
    keys = response_keys(OHTTP_EXPORTED_SECRET, sealer.enc, OHTTP_RESPONSE_NONCE, aead_params(AES))
    assert keys.nonce == OHTTP_AEAD_NONCE
    published = AESGCM(OHTTP_AEAD_KEY).encrypt(OHTTP_AEAD_NONCE, OHTTP_RESPONSE, b"")
    assert published == OHTTP_ENC_RESPONSE[16:]
    assert keys.seal(keys.nonce, OHTTP_RESPONSE, b"") == published


@pytest.mark.parametrize("suite", [AES, CHACHA], ids=["aes128gcm", "chacha20poly1305"])
def test_round_trip(suite: Suite) -> None:
    key = ServerKey.generate(9)
    enc_request, opener = encapsulate_request(key.config, b"hello", suite=suite)
    assert enc_request[1:7] == bytes.fromhex("0020 0001") + suite.aead_id.to_bytes(2, "big")
    request, sealer = decapsulate_request({9: key}, enc_request)
    assert request == b"hello"
    enc_response = sealer.seal(b"world")
    assert len(enc_response) == aead_params(suite).entropy_len + 5 + 16
    assert opener.open(enc_response) == b"world"


def test_responses_use_fresh_nonces() -> None:
    key = ServerKey.generate(1)
    enc_request, opener = encapsulate_request(key.config, b"")
    _, sealer = decapsulate_request({1: key}, enc_request)
    a, b = sealer.seal(b"x"), sealer.seal(b"x")
    assert a != b
    assert opener.open(a) == opener.open(b) == b"x"


def _flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)


# One change per row; every one is the same opaque DecryptError.
BAD_REQUESTS = [
    ("empty", b""),
    ("header only", OHTTP_ENC_REQUEST[:7]),
    ("no ciphertext", OHTTP_ENC_REQUEST[:39]),
    ("short tag", OHTTP_ENC_REQUEST[:-1]),
    ("extra byte", OHTTP_ENC_REQUEST + b"\x00"),
    ("unknown key id", _flip(OHTTP_ENC_REQUEST, 0)),
    ("other KEM", _flip(OHTTP_ENC_REQUEST, 2)),
    ("unsupported KDF", _flip(OHTTP_ENC_REQUEST, 3)),
    ("AEAD switched to ChaCha", OHTTP_ENC_REQUEST[:5] + b"\x00\x03" + OHTTP_ENC_REQUEST[7:]),
    ("AEAD not offered", OHTTP_ENC_REQUEST[:5] + b"\x00\x02" + OHTTP_ENC_REQUEST[7:]),
    ("enc changed", _flip(OHTTP_ENC_REQUEST, 10)),
    ("ciphertext changed", _flip(OHTTP_ENC_REQUEST, 50)),
    ("tag changed", _flip(OHTTP_ENC_REQUEST, len(OHTTP_ENC_REQUEST) - 1)),
    ("low-order enc", OHTTP_ENC_REQUEST[:7] + bytes(32) + OHTTP_ENC_REQUEST[39:]),
]


@pytest.mark.parametrize("data", [r[1] for r in BAD_REQUESTS], ids=[r[0] for r in BAD_REQUESTS])
def test_bad_request_is_one_opaque_error(rfc_key: ServerKey, data: bytes) -> None:
    with pytest.raises(DecryptError) as info:
        decapsulate_request({1: rfc_key}, data)
    assert str(info.value) == "decryption failed"


BAD_RESPONSES = [
    ("empty", b""),
    ("nonce only", OHTTP_ENC_RESPONSE[:16]),
    ("short tag", OHTTP_ENC_RESPONSE[:-1]),
    ("nonce changed", _flip(OHTTP_ENC_RESPONSE, 0)),
    ("ciphertext changed", _flip(OHTTP_ENC_RESPONSE, 16)),
    ("tag changed", _flip(OHTTP_ENC_RESPONSE, len(OHTTP_ENC_RESPONSE) - 1)),
    ("extra byte", OHTTP_ENC_RESPONSE + b"\x00"),
]


@pytest.mark.parametrize("data", [r[1] for r in BAD_RESPONSES], ids=[r[0] for r in BAD_RESPONSES])
def test_bad_response_is_one_opaque_error(data: bytes) -> None:
    _, opener = encapsulate_request(
        KeyConfig.parse(OHTTP_KEY_CONFIG), OHTTP_REQUEST, _ephemeral_private_key=OHTTP_SK_E
    )
    with pytest.raises(DecryptError):
        opener.open(data)


def test_response_to_another_request_does_not_open() -> None:
    key = ServerKey.generate(1)
    _, opener_a = encapsulate_request(key.config, b"a")
    req_b, _ = encapsulate_request(key.config, b"b")
    _, sealer_b = decapsulate_request({1: key}, req_b)
    with pytest.raises(DecryptError):
        opener_a.open(sealer_b.seal(b"for b"))


def test_key_config_with_only_unsupported_suites_is_refused() -> None:
    config = KeyConfig(1, 0x0020, bytes(range(32)), (Suite(HKDF_SHA256, 0x0002),))
    with pytest.raises(ValueError, match="no supported suite"):
        encapsulate_request(config, b"")


def test_response_nonce_hook_checks_length(rfc_key: ServerKey) -> None:
    _, sealer = decapsulate_request({1: rfc_key}, OHTTP_ENC_REQUEST)
    with pytest.raises(ValueError, match="16 bytes"):
        sealer.seal(b"", _response_nonce=b"short")


@settings(max_examples=200)
@given(st.binary(max_size=120))
def test_decapsulate_fuzz_raises_only_decrypt_error(data: bytes) -> None:
    key = ServerKey._from_private_bytes(1, OHTTP_SK_R)
    for candidate in (data, OHTTP_ENC_REQUEST[:7] + data):
        with contextlib.suppress(DecryptError):
            decapsulate_request({1: key}, candidate)
