"""Chunked Oblivious HTTP (draft-ietf-ohai-chunked-ohttp-08).

Framing: ``hdr || enc`` (requests) or ``response_nonce`` (responses), then chunks, each a QUIC
varint length and a sealed chunk. The final chunk has the length 0, extends to the end of the
stream and is sealed with the AAD ``"final"``: a stream is complete only once that chunk has
opened, so every other ending is a truncation and a DecryptError.

The openers accept bytes in pieces split anywhere. Since the final chunk has no length, an
opener tries to open what it holds of it as bytes arrive; a wrong guess costs one failed AEAD
check (forging a shorter final chunk would need a tag forgery). Those tries are spaced so
that a final chunk dribbled one byte at a time costs linear, not quadratic, work.
"""

from __future__ import annotations

import abc
import copy
import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from pyhpke import PyHPKEError

from attest.errors import DecryptError
from server.ohttp._hpke import (
    HEADER_LEN,
    ResponseKeys,
    export_secret,
    open_header,
    response_keys,
    sender_context,
)
from server.ohttp._keys import TAG_LEN, X25519_NPK, KeyConfig, ServerKey, Suite, aead_params
from server.ohttp._varint import encode_varint, peek_varint

__all__ = [
    "CHUNKED_REQUEST_LABEL",
    "CHUNKED_RESPONSE_LABEL",
    "DEFAULT_MAX_CHUNK",
    "ChunkedRequestOpener",
    "ChunkedRequestSealer",
    "ChunkedResponseOpener",
    "ChunkedResponseSealer",
]

CHUNKED_REQUEST_LABEL = b"message/bhttp chunked request"
CHUNKED_RESPONSE_LABEL = b"message/bhttp chunked response"
FINAL_AAD = b"final"
DEFAULT_MAX_CHUNK = 1 << 20
"""Largest chunk plaintext an opener accepts by default; its sealed form adds the AEAD tag."""

# Below this a final chunk is tried on every feed; above it, only when it has doubled since.
_EAGER_FINAL_TRY = 16 * 1024


class _ChunkedOpener(abc.ABC):
    """The incremental chunk reader both openers share."""

    def __init__(self, max_chunk_size: int) -> None:
        if max_chunk_size < 1:
            raise ValueError("max_chunk_size must be positive")
        self._limit = max_chunk_size + TAG_LEN
        self._buf = bytearray()
        self._started = False
        self._in_final = False
        self._finished = False
        self._failed = False
        self._last_try = 0

    @property
    def finished(self) -> bool:
        """True once the final chunk has opened: only then is the message complete."""
        return self._finished

    def feed(self, data: bytes) -> list[bytes]:
        """Plaintext of every chunk that completed with ``data`` (empty chunks left out)."""
        if self._failed:
            raise DecryptError()
        if self._finished:
            if data:
                self._failed = True
                raise DecryptError()
            return []
        self._buf += data
        try:
            return self._drain()
        except DecryptError:
            self._failed = True
            self._buf.clear()
            raise

    def close(self) -> list[bytes]:
        """End of stream. DecryptError("truncated") unless the final chunk opened.

        Returns the final chunk's plaintext when ``feed`` had not yet returned it (only a
        final chunk above 16 KiB can wait for this), else an empty list.
        """
        if self._failed:
            raise DecryptError()
        if self._finished:
            return []
        if self._in_final and len(self._buf) >= TAG_LEN:
            plaintext = self._try_final(bytes(self._buf))
            if plaintext is not None:
                self._finished = True
                self._buf.clear()
                return [plaintext] if plaintext else []
        self._failed = True
        self._buf.clear()
        raise DecryptError("truncated")

    def _drain(self) -> list[bytes]:
        out: list[bytes] = []
        buf = self._buf
        pos = 0
        if not self._started:
            used = self._open_prefix(buf)
            if used is None:
                return out
            pos = used
            self._started = True
        limit = self._limit
        while not self._in_final:
            got = peek_varint(buf, pos)
            if got is None:
                break
            length, start = got
            if length == 0:
                self._in_final = True
                pos = start
                break
            if length > limit:
                raise DecryptError()
            end = start + length
            if end > len(buf):
                break
            plaintext = self._open_chunk(bytes(buf[start:end]))
            if plaintext:
                out.append(plaintext)
            pos = end
        if pos:
            del buf[:pos]
        if self._in_final:
            size = len(buf)
            if size > limit:
                raise DecryptError()
            if size >= TAG_LEN and (size <= _EAGER_FINAL_TRY or size >= 2 * self._last_try):
                final = self._try_final(bytes(buf))
                if final is None:
                    self._last_try = size
                else:
                    self._finished = True
                    buf.clear()
                    if final:
                        out.append(final)
        return out

    @abc.abstractmethod
    def _open_prefix(self, buf: bytearray) -> int | None:
        """Consume what precedes the chunks: bytes used, or None to wait for more."""

    @abc.abstractmethod
    def _open_chunk(self, sealed: bytes) -> bytes:
        """One non-final chunk's plaintext (DecryptError when it does not open)."""

    @abc.abstractmethod
    def _try_final(self, sealed: bytes) -> bytes | None:
        """The final chunk's plaintext, or None when ``sealed`` does not open as it."""


class ChunkedResponseSealer:
    """Gateway side of a chunked response: ``header()`` then ``seal_chunk`` per chunk."""

    __slots__ = ("_base", "_counter", "_done", "_keys", "_nn", "_nonce")

    def __init__(
        self, secret: bytes, enc: bytes, suite: Suite, *, _response_nonce: bytes | None = None
    ) -> None:
        params = aead_params(suite)
        nonce = os.urandom(params.entropy_len) if _response_nonce is None else _response_nonce
        if len(nonce) != params.entropy_len:
            raise ValueError(f"response nonce must be {params.entropy_len} bytes")
        self._nonce = nonce
        self._keys: ResponseKeys = response_keys(secret, enc, nonce, params)
        self._base = int.from_bytes(self._keys.nonce, "big")
        self._nn = params.nn
        self._counter = 0
        self._done = False

    def header(self) -> bytes:
        """The response nonce, sent before the first chunk."""
        return self._nonce

    def seal_chunk(self, data: bytes, *, final: bool = False) -> bytes:
        """One framed chunk; the final one is ``0x00 || Seal(..., aad="final")``."""
        if self._done:
            raise RuntimeError("the final chunk was already sealed")
        if self._counter >> (8 * self._nn):
            raise RuntimeError("chunk counter exhausted")
        nonce = (self._base ^ self._counter).to_bytes(self._nn, "big")
        self._counter += 1
        if final:
            self._done = True
            return b"\x00" + self._keys.seal(nonce, data, FINAL_AAD)
        sealed = self._keys.seal(nonce, data, b"")
        return encode_varint(len(sealed)) + sealed


class ChunkedResponseOpener(_ChunkedOpener):
    """Client side of a chunked response; made by :meth:`ChunkedRequestSealer.response_opener`."""

    def __init__(
        self, secret: bytes, enc: bytes, suite: Suite, *, max_chunk_size: int = DEFAULT_MAX_CHUNK
    ) -> None:
        super().__init__(max_chunk_size)
        self._secret = secret
        self._enc = enc
        self._params = aead_params(suite)
        self._keys: ResponseKeys | None = None
        self._base = 0
        self._counter = 0

    def _open_prefix(self, buf: bytearray) -> int | None:
        n = self._params.entropy_len
        if len(buf) < n:
            return None
        self._keys = response_keys(self._secret, self._enc, bytes(buf[:n]), self._params)
        self._base = int.from_bytes(self._keys.nonce, "big")
        return n

    def _nonce(self) -> bytes:
        return (self._base ^ self._counter).to_bytes(self._params.nn, "big")

    def _open_chunk(self, sealed: bytes) -> bytes:
        assert self._keys is not None
        plaintext = self._keys.open(self._nonce(), sealed, b"")
        self._counter += 1
        return plaintext

    def _try_final(self, sealed: bytes) -> bytes | None:
        assert self._keys is not None
        try:
            return self._keys.aead.decrypt(self._nonce(), sealed, FINAL_AAD)
        except InvalidTag:
            return None


class ChunkedRequestSealer:
    """Client side of a chunked request: ``header()``, then ``seal_chunk`` per chunk."""

    def __init__(
        self,
        config: KeyConfig,
        *,
        suite: Suite | None = None,
        _ephemeral_private_key: bytes | None = None,
    ) -> None:
        prefix, chosen, ctx = sender_context(
            config, suite, CHUNKED_REQUEST_LABEL, _ephemeral_private_key
        )
        self._prefix = prefix
        self._suite = chosen
        self._ctx: Any = ctx
        self._secret = export_secret(ctx, CHUNKED_RESPONSE_LABEL, chosen)
        self._done = False

    @property
    def suite(self) -> Suite:
        return self._suite

    def header(self) -> bytes:
        """``hdr || enc``, sent before the first chunk."""
        return self._prefix

    def seal_chunk(self, data: bytes, *, final: bool = False) -> bytes:
        """One framed chunk; the final one is ``0x00 || Seal(aad="final", data)``."""
        if self._done:
            raise RuntimeError("the final chunk was already sealed")
        if final:
            self._done = True
            final_sealed: bytes = self._ctx.seal(data, FINAL_AAD)
            return b"\x00" + final_sealed
        sealed: bytes = self._ctx.seal(data, b"")
        return encode_varint(len(sealed)) + sealed

    def response_opener(self, *, max_chunk_size: int = DEFAULT_MAX_CHUNK) -> ChunkedResponseOpener:
        return ChunkedResponseOpener(
            self._secret, self._prefix[HEADER_LEN:], self._suite, max_chunk_size=max_chunk_size
        )


class ChunkedRequestOpener(_ChunkedOpener):
    """Gateway side of a chunked request, fed the body as it arrives."""

    def __init__(
        self, keys: Mapping[int, ServerKey], *, max_chunk_size: int = DEFAULT_MAX_CHUNK
    ) -> None:
        super().__init__(max_chunk_size)
        self._keys = keys
        self._ctx: Any = None
        self._key_id = -1
        self._suite: Suite | None = None
        self._enc = b""
        self._secret = b""

    def _open_prefix(self, buf: bytearray) -> int | None:
        need = HEADER_LEN + X25519_NPK
        if len(buf) < need:
            return None
        key, suite, enc, ctx = open_header(self._keys, buf, CHUNKED_REQUEST_LABEL)
        self._ctx = ctx
        self._key_id = key.key_id
        self._suite = suite
        self._enc = enc
        self._secret = export_secret(ctx, CHUNKED_RESPONSE_LABEL, suite)
        return need

    def _open_chunk(self, sealed: bytes) -> bytes:
        try:
            plaintext: bytes = self._ctx.open(sealed, b"")
        except PyHPKEError:
            raise DecryptError() from None
        return plaintext

    def _try_final(self, sealed: bytes) -> bytes | None:
        # A failed open still advances pyhpke's sequence number, so try on a copy.
        trial = copy.copy(self._ctx)
        try:
            plaintext: bytes = trial.open(sealed, FINAL_AAD)
        except PyHPKEError:
            return None
        return plaintext

    def _require_header(self) -> Suite:
        if self._suite is None:
            raise RuntimeError("the request header has not arrived yet")
        return self._suite

    @property
    def header_received(self) -> bool:
        return self._suite is not None

    @property
    def enc(self) -> bytes:
        """The encapsulated key: unique per request, so usable for replay detection."""
        self._require_header()
        return self._enc

    @property
    def key_id(self) -> int:
        self._require_header()
        return self._key_id

    @property
    def suite(self) -> Suite:
        return self._require_header()

    def response_sealer(self, *, _response_nonce: bytes | None = None) -> ChunkedResponseSealer:
        """The sealer for this request's response; ``_response_nonce`` is for tests only."""
        suite = self._require_header()
        return ChunkedResponseSealer(
            self._secret, self._enc, suite, _response_nonce=_response_nonce
        )
