"""RFC 9180 appendix A.1 and A.2 base-mode vectors through the suites this package builds."""

from __future__ import annotations

from typing import Any

from pyhpke import KEMKeyPair
from pyhpke.keys.x25519_key import X25519Key

from server.ohttp import AES_128_GCM, CHACHA20_POLY1305, HKDF_SHA256, Suite
from server.ohttp._keys import hpke_suite
from tests.server.ohttp.vectors import (
    A1_CT,
    A1_EXPORTS,
    A1_IKM_E,
    A1_IKM_R,
    A1_INFO,
    A1_PK_E,
    A1_PK_R,
    A1_PT,
    A1_SK_E,
    A1_SK_R,
    A2_CT0,
    A2_ENC_PREFIX,
    A2_PK_R,
    A2_SK_E,
    A2_SK_R,
)

AES = Suite(HKDF_SHA256, AES_128_GCM)
CHACHA = Suite(HKDF_SHA256, CHACHA20_POLY1305)


def _pair(sk: bytes) -> KEMKeyPair:
    key = X25519Key.from_private_bytes(sk)
    return KEMKeyPair(key, X25519Key(key.raw.public_key()))


def _sender(suite: Suite, sk_e: bytes, pk_r: bytes) -> tuple[bytes, Any]:
    cipher = hpke_suite(suite)
    pkr = cipher.kem.deserialize_public_key(pk_r)
    enc, ctx = cipher.create_sender_context(pkr, A1_INFO, eks=_pair(sk_e))
    return enc, ctx


def test_a1_derive_key_pair() -> None:
    kem = hpke_suite(AES).kem
    for ikm, sk, pk in ((A1_IKM_E, A1_SK_E, A1_PK_E), (A1_IKM_R, A1_SK_R, A1_PK_R)):
        pair = kem.derive_key_pair(ikm)
        assert pair.private_key.to_private_bytes() == sk
        assert pair.public_key.to_public_bytes() == pk


def test_a1_encryptions_and_exports_sender() -> None:
    enc, ctx = _sender(AES, A1_SK_E, A1_PK_R)
    assert enc == A1_PK_E
    for seq in range(257):
        ct = ctx.seal(A1_PT, f"Count-{seq}".encode())
        if seq in A1_CT:
            assert ct == A1_CT[seq], seq
    for context, value in A1_EXPORTS:
        assert ctx.export(context, 32) == value


def test_a1_encryptions_and_exports_recipient() -> None:
    cipher = hpke_suite(AES)
    ctx = cipher.create_recipient_context(A1_PK_E, _pair(A1_SK_R).private_key, A1_INFO)
    for seq in range(257):
        ct = A1_CT.get(seq)
        if ct is None:
            # Advance the sequence number the way the sender's unpublished seals did.
            ct = _sender_ct_at(seq)
        assert ctx.open(ct, f"Count-{seq}".encode()) == A1_PT
    for context, value in A1_EXPORTS:
        assert ctx.export(context, 32) == value


_SENDER_CTS: list[bytes] = []


def _sender_ct_at(seq: int) -> bytes:
    if not _SENDER_CTS:
        _, ctx = _sender(AES, A1_SK_E, A1_PK_R)
        _SENDER_CTS.extend(ctx.seal(A1_PT, f"Count-{i}".encode()) for i in range(257))
    return _SENDER_CTS[seq]


def test_a2_chacha20poly1305_first_encryption() -> None:
    enc, ctx = _sender(CHACHA, A2_SK_E, A2_PK_R)
    assert enc.startswith(A2_ENC_PREFIX)
    assert ctx.seal(A1_PT, b"Count-0") == A2_CT0
    recipient = hpke_suite(CHACHA).create_recipient_context(
        enc, _pair(A2_SK_R).private_key, A1_INFO
    )
    assert recipient.open(A2_CT0, b"Count-0") == A1_PT
