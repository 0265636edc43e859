"""Oblivious HTTP request and response encapsulation (RFC 9458 §4.3, §4.4)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pyhpke import PyHPKEError

from attest.errors import DecryptError
from server.ohttp._hpke import (
    HEADER_LEN,
    export_secret,
    open_header,
    response_keys,
    sender_context,
)
from server.ohttp._keys import TAG_LEN, X25519_NPK, KeyConfig, ServerKey, Suite, aead_params

__all__ = [
    "REQUEST_LABEL",
    "RESPONSE_LABEL",
    "ClientResponseOpener",
    "ServerResponseSealer",
    "decapsulate_request",
    "encapsulate_request",
]

REQUEST_LABEL = b"message/bhttp request"
RESPONSE_LABEL = b"message/bhttp response"


class ClientResponseOpener:
    """Opens the one response to a request made with :func:`encapsulate_request`."""

    __slots__ = ("_enc", "_secret", "_suite")

    def __init__(self, secret: bytes, enc: bytes, suite: Suite) -> None:
        self._secret = secret
        self._enc = enc
        self._suite = suite

    @property
    def suite(self) -> Suite:
        return self._suite

    def open(self, enc_response: bytes) -> bytes:
        """The response plaintext; DecryptError for anything that is not a response to us."""
        params = aead_params(self._suite)
        n = params.entropy_len
        if len(enc_response) < n + TAG_LEN:
            raise DecryptError()
        keys = response_keys(self._secret, self._enc, bytes(enc_response[:n]), params)
        return keys.open(keys.nonce, bytes(enc_response[n:]), b"")


class ServerResponseSealer:
    """Seals the response to one decapsulated request."""

    __slots__ = ("_enc", "_key_id", "_secret", "_suite")

    def __init__(self, secret: bytes, enc: bytes, key_id: int, suite: Suite) -> None:
        self._secret = secret
        self._enc = enc
        self._key_id = key_id
        self._suite = suite

    @property
    def enc(self) -> bytes:
        """The request's encapsulated key: unique per request, so usable for replay detection."""
        return self._enc

    @property
    def key_id(self) -> int:
        return self._key_id

    @property
    def suite(self) -> Suite:
        return self._suite

    def seal(self, response: bytes, *, _response_nonce: bytes | None = None) -> bytes:
        """``response_nonce || ct``. ``_response_nonce`` is for known-answer tests only."""
        params = aead_params(self._suite)
        nonce = os.urandom(params.entropy_len) if _response_nonce is None else _response_nonce
        if len(nonce) != params.entropy_len:
            raise ValueError(f"response nonce must be {params.entropy_len} bytes")
        keys = response_keys(self._secret, self._enc, nonce, params)
        return nonce + keys.seal(keys.nonce, response, b"")


def encapsulate_request(
    config: KeyConfig,
    request: bytes,
    *,
    suite: Suite | None = None,
    _ephemeral_private_key: bytes | None = None,
) -> tuple[bytes, ClientResponseOpener]:
    """``(hdr || enc || ct, opener for the response)``.

    ``suite`` defaults to the first offered suite this module implements; ValueError when the
    configuration offers none. ``_ephemeral_private_key`` is for known-answer tests only.
    """
    prefix, chosen, ctx = sender_context(config, suite, REQUEST_LABEL, _ephemeral_private_key)
    ct: bytes = ctx.seal(request, b"")
    enc = prefix[HEADER_LEN:]
    secret = export_secret(ctx, RESPONSE_LABEL, chosen)
    return prefix + ct, ClientResponseOpener(secret, enc, chosen)


def decapsulate_request(
    keys: Mapping[int, ServerKey], enc_request: bytes
) -> tuple[bytes, ServerResponseSealer]:
    """``(request plaintext, sealer for the response)``.

    Unknown key id, a suite the key does not offer, a malformed header or a ciphertext that
    does not open are all the same DecryptError.
    """
    if len(enc_request) < HEADER_LEN + X25519_NPK + TAG_LEN:
        raise DecryptError()
    key, suite, enc, ctx = open_header(keys, enc_request, REQUEST_LABEL)
    request = _open(ctx, bytes(enc_request[HEADER_LEN + X25519_NPK :]))
    secret = export_secret(ctx, RESPONSE_LABEL, suite)
    return request, ServerResponseSealer(secret, enc, key.key_id, suite)


def _open(ctx: Any, ct: bytes) -> bytes:
    try:
        plaintext: bytes = ctx.open(ct, b"")
    except PyHPKEError:
        raise DecryptError() from None
    return plaintext
