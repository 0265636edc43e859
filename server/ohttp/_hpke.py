"""HPKE set-up and the OHTTP response key schedule, shared by the plain and chunked variants.

pyhpke does HPKE (RFC 9180); cryptography does HKDF and the response AEAD. Every failure on
the receiving side becomes one opaque DecryptError.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from pyhpke import KEMKeyPair, PyHPKEError
from pyhpke.keys.x25519_key import X25519Key

from attest.errors import DecryptError
from server.ohttp._keys import (
    X25519_KEM,
    X25519_NPK,
    AeadParams,
    KeyConfig,
    ServerKey,
    Suite,
    aead_params,
    hpke_suite,
)

__all__ = [
    "HEADER_LEN",
    "ResponseKeys",
    "open_header",
    "request_header",
    "response_keys",
    "sender_context",
]

HEADER_LEN = 7
_SHA256 = hashes.SHA256()


def request_header(key_id: int, suite: Suite) -> bytes:
    return struct.pack(">BHHH", key_id, X25519_KEM, suite.kdf_id, suite.aead_id)


def _info(label: bytes, hdr: bytes) -> bytes:
    return label + b"\x00" + hdr


def sender_context(
    config: KeyConfig,
    suite: Suite | None,
    label: bytes,
    ephemeral_private_key: bytes | None,
) -> tuple[bytes, Suite, Any]:
    """``(hdr || enc, suite, HPKE sender context)`` for a request to ``config``."""
    chosen = config.select_suite(suite)
    cipher = hpke_suite(chosen)
    hdr = request_header(config.key_id, chosen)
    pkr = cipher.kem.deserialize_public_key(config.public_key)
    eks = None
    if ephemeral_private_key is not None:
        sk = X25519Key.from_private_bytes(ephemeral_private_key)
        eks = KEMKeyPair(sk, X25519Key(sk.raw.public_key()))
    try:
        enc, ctx = cipher.create_sender_context(pkr, _info(label, hdr), eks=eks)
    except ValueError as err:
        # A low-order public key in a configuration makes the DH output all zero.
        raise ValueError("key configuration public key is unusable") from err
    return hdr + enc, chosen, ctx


def open_header(
    keys: Mapping[int, ServerKey], data: bytes | bytearray, label: bytes
) -> tuple[ServerKey, Suite, bytes, Any]:
    """Decapsulate ``hdr || enc`` at the start of ``data``: ``(key, suite, enc, context)``.

    ``data`` must hold at least ``HEADER_LEN + X25519_NPK`` bytes.
    """
    key_id, kem_id, kdf_id, aead_id = struct.unpack_from(">BHHH", data, 0)
    key = keys.get(key_id)
    suite = Suite(kdf_id, aead_id)
    if key is None or kem_id != X25519_KEM or suite not in key.config.suites:
        raise DecryptError()
    hdr = bytes(data[:HEADER_LEN])
    enc = bytes(data[HEADER_LEN : HEADER_LEN + X25519_NPK])
    cipher = hpke_suite(suite)
    try:
        ctx = cipher.create_recipient_context(enc, key._hpke_private_key, _info(label, hdr))
    except (ValueError, PyHPKEError):
        raise DecryptError() from None
    return key, suite, enc, ctx


class ResponseKeys:
    """The AEAD key and nonce of an OHTTP response (RFC 9458 §4.4 steps 3-6)."""

    __slots__ = ("aead", "nonce")

    def __init__(self, aead: AESGCM | ChaCha20Poly1305, nonce: bytes) -> None:
        self.aead = aead
        self.nonce = nonce

    def seal(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return self.aead.encrypt(nonce, data, aad)

    def open(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        try:
            return self.aead.decrypt(nonce, data, aad)
        except InvalidTag:
            raise DecryptError() from None


def response_keys(
    secret: bytes, enc: bytes, response_nonce: bytes, params: AeadParams
) -> ResponseKeys:
    prk = HKDF.extract(_SHA256, enc + response_nonce, secret)
    key = HKDFExpand(_SHA256, params.nk, b"key").derive(prk)
    nonce = HKDFExpand(_SHA256, params.nn, b"nonce").derive(prk)
    return ResponseKeys(params.cls(key), nonce)


def export_secret(ctx: Any, label: bytes, suite: Suite) -> bytes:
    secret: bytes = ctx.export(label, aead_params(suite).entropy_len)
    return secret
