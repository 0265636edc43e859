"""Oblivious HTTP for OpenPCC: key configurations, Binary HTTP, plain and chunked OHTTP.

The recipes the gateway and client call; the framing lives in private modules beside this one
(RFC 9458, RFC 9292, draft-ietf-ohai-chunked-ohttp-08), HPKE in pyhpke, HKDF and AEADs in
cryptography. Errors: ParseError for malformed Binary HTTP or key configurations, one opaque
DecryptError for every decapsulation, AEAD or truncation failure.

Parameters whose names start with an underscore (``_ephemeral_private_key``,
``_response_nonce``) exist for known-answer tests and must never be used in production.
"""

from __future__ import annotations

from server.ohttp._bhttp import (
    BhttpRequest,
    BhttpResponse,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from server.ohttp._chunked import (
    DEFAULT_MAX_CHUNK,
    ChunkedRequestOpener,
    ChunkedRequestSealer,
    ChunkedResponseOpener,
    ChunkedResponseSealer,
)
from server.ohttp._keys import (
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
from server.ohttp._ohttp import (
    ClientResponseOpener,
    ServerResponseSealer,
    decapsulate_request,
    encapsulate_request,
)

__all__ = [
    "AES_128_GCM",
    "CHACHA20_POLY1305",
    "DEFAULT_MAX_CHUNK",
    "HKDF_SHA256",
    "X25519_KEM",
    "BhttpRequest",
    "BhttpResponse",
    "ChunkedRequestOpener",
    "ChunkedRequestSealer",
    "ChunkedResponseOpener",
    "ChunkedResponseSealer",
    "ClientResponseOpener",
    "KeyConfig",
    "ServerKey",
    "ServerResponseSealer",
    "Suite",
    "decapsulate_request",
    "decode_request",
    "decode_response",
    "encapsulate_request",
    "encode_key_configs",
    "encode_request",
    "encode_response",
    "parse_key_configs",
]
