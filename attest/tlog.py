"""Client-side verification of the OpenPCC transparency log (verification only, no state).

- Merkle hashing and proofs as in RFC 9162 section 2.1: leaf ``SHA-256(0x00 || data)``, node
  ``SHA-256(0x01 || left || right)``; inclusion (2.1.3.2) and consistency (2.1.4.2) verification.
- Checkpoints (C2SP ``tlog-checkpoint``) carried in C2SP ``signed-note`` form, signed with Ed25519
  and checked against verifier keys pinned by the client (``name+hash+base64``).

Malformed input is a ``ParseError``; a proof or signature that does not verify is a
``VerificationError`` whose ``check`` is ``tlog-inclusion``, ``tlog-consistency`` or
``tlog-checkpoint``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from attest.errors import ParseError, VerificationError

__all__ = [
    "ALG_ED25519",
    "HASH_SIZE",
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "SIG_PREFIX",
    "Checkpoint",
    "VerifierKey",
    "empty_root",
    "key_hash",
    "leaf_hash",
    "node_hash",
    "open_checkpoint",
    "root_from_inclusion",
    "valid_key_name",
    "verify_consistency",
    "verify_inclusion",
    "verify_log_entry",
]

HASH_SIZE = 32
ALG_ED25519 = 0x01
ED25519_KEY_SIZE = 32
ED25519_SIG_SIZE = 64
KEY_HASH_SIZE = 4
# Go's note.Open refuses more than 100 signatures; a note is a few hundred bytes in practice.
MAX_SIGNATURES = 100
MAX_NOTE_SIZE = 1 << 20
SIG_PREFIX = "\u2014 "
_SIZE_RE = re.compile(r"(0|[1-9][0-9]{0,19})")
_HEX8_RE = re.compile(r"[0-9a-f]{8}")


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 ``MTH({d})``: SHA-256 of 0x00 followed by the entry."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node: SHA-256 of 0x01, left child, right child."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def empty_root() -> bytes:
    """Root of the empty tree: SHA-256 of the empty string (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(b"").digest()


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ParseError(f"{what} is {len(value)} bytes, expected {HASH_SIZE}")


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` yields for ``leaf`` (a leaf hash) at ``index`` in a tree of ``size``.

    RFC 9162 section 2.1.3.2; a proof of the wrong length is a ``tlog-inclusion`` failure.
    """
    _check_hash(leaf, "leaf hash")
    for i, p in enumerate(proof):
        _check_hash(p, f"inclusion proof element {i}")
    if index < 0 or size <= 0 or index >= size:
        raise VerificationError("tlog-inclusion", f"index {index} is outside a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise VerificationError("tlog-inclusion", "inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("tlog-inclusion", "inclusion proof is too short")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` (a leaf hash) sits at ``index`` of the tree of ``size`` with ``root``."""
    _check_hash(root, "root hash")
    got = root_from_inclusion(index, size, leaf, proof)
    if not hmac.compare_digest(got, root):
        raise VerificationError(
            "tlog-inclusion",
            f"proof for index {index} of size {size} yields root {got.hex()}, "
            f"checkpoint has {root.hex()}",
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``new_size`` extends the tree of ``old_size`` (RFC 9162 2.1.4.2)."""
    _check_hash(old_root, "old root hash")
    _check_hash(new_root, "new root hash")
    for i, p in enumerate(proof):
        _check_hash(p, f"consistency proof element {i}")
    if old_size < 0 or new_size < old_size:
        raise VerificationError(
            "tlog-consistency", f"size {new_size} cannot extend size {old_size}"
        )
    if old_size == new_size:
        if proof:
            raise VerificationError("tlog-consistency", "proof between equal sizes must be empty")
        if not hmac.compare_digest(old_root, new_root):
            raise VerificationError("tlog-consistency", "equal sizes but different roots")
        return
    if old_size == 0:
        # Every tree extends the empty tree; there is nothing to prove.
        if proof:
            raise VerificationError("tlog-consistency", "proof from size 0 must be empty")
        return
    if not proof:
        raise VerificationError("tlog-consistency", "empty proof")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("tlog-consistency", "consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("tlog-consistency", "consistency proof is too short")
    if not hmac.compare_digest(fr, old_root):
        raise VerificationError(
            "tlog-consistency", f"proof yields old root {fr.hex()}, expected {old_root.hex()}"
        )
    if not hmac.compare_digest(sr, new_root):
        raise VerificationError(
            "tlog-consistency", f"proof yields new root {sr.hex()}, expected {new_root.hex()}"
        )


def valid_key_name(name: str) -> bool:
    """C2SP signed-note key names: non-empty UTF-8, no Unicode whitespace, no ``+``."""
    if not name or "+" in name or any(c.isspace() or c < " " for c in name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def key_hash(name: str, public_key: bytes) -> bytes:
    """The 4-byte Ed25519 key ID: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    data = name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key
    return hashlib.sha256(data).digest()[:KEY_HASH_SIZE]


def _b64decode(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise ParseError(f"{what} is not valid base64") from e
    if base64.b64encode(raw).decode("ascii") != text:
        raise ParseError(f"{what} is not canonical base64")
    return raw


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A C2SP Ed25519 verifier key, ``name+hash+base64(0x01 || public key)``."""

    name: str
    key_hash: bytes
    public_key: bytes

    @classmethod
    def parse(cls, s: str) -> VerifierKey:
        parts = s.split("+", 2)
        if len(parts) != 3:
            raise ParseError("verifier key must have the form name+hash+key")
        name, hash_hex, key_b64 = parts
        if not valid_key_name(name):
            raise ParseError(f"verifier key name {name!r} is not a valid key name")
        if not _HEX8_RE.fullmatch(hash_hex):
            raise ParseError("verifier key hash must be 8 lower-case hex digits")
        raw = _b64decode(key_b64, "verifier key")
        if len(raw) != 1 + ED25519_KEY_SIZE or raw[0] != ALG_ED25519:
            raise ParseError("verifier key is not an Ed25519 key (algorithm 0x01, 32 bytes)")
        public_key = raw[1:]
        expected = key_hash(name, public_key)
        if bytes.fromhex(hash_hex) != expected:
            raise ParseError(
                f"verifier key hash {hash_hex} does not match its key ({expected.hex()})"
            )
        return cls(name=name, key_hash=expected, public_key=public_key)

    def encode(self) -> str:
        key = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_hash.hex()}+{key}"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A checkpoint whose signature by a pinned log key has been verified."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...]
    note: str


@dataclass(frozen=True, slots=True)
class _Signature:
    name: str
    key_hash: bytes
    signature: bytes


def _split_note(note: str) -> tuple[str, list[_Signature]]:
    if len(note) > MAX_NOTE_SIZE:
        raise ParseError("signed note is too large")
    if any(c < " " and c != "\n" for c in note):
        raise ParseError("signed note contains a control character")
    try:
        note.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ParseError("signed note is not valid UTF-8") from e
    if not note.endswith("\n"):
        raise ParseError("signed note does not end in a newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise ParseError("signed note has no blank line before its signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    lines = sig_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise ParseError(f"signed note has more than {MAX_SIGNATURES} signatures")
    sigs = []
    for line in lines:
        if not line.startswith(SIG_PREFIX):
            raise ParseError("signature line does not start with an em dash and a space")
        fields = line[len(SIG_PREFIX) :].split(" ")
        if len(fields) != 2:
            raise ParseError("signature line must be '— name signature'")
        name, sig_b64 = fields
        if not valid_key_name(name):
            raise ParseError(f"signature key name {name!r} is not a valid key name")
        raw = _b64decode(sig_b64, "signature")
        if len(raw) <= KEY_HASH_SIZE:
            raise ParseError("signature is too short to carry a key hash")
        sigs.append(_Signature(name, raw[:KEY_HASH_SIZE], raw[KEY_HASH_SIZE:]))
    return text, sigs


def _parse_body(text: str, note: str) -> Checkpoint:
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise ParseError("checkpoint body needs origin, tree size and root hash lines")
    origin, size_line, root_line, *extensions = lines
    if not origin:
        raise ParseError("checkpoint origin line is empty")
    if not _SIZE_RE.fullmatch(size_line):
        raise ParseError(f"checkpoint tree size {size_line!r} is not a canonical decimal")
    size = int(size_line)
    if size >= 1 << 63:
        raise ParseError("checkpoint tree size is out of range")
    root_hash = _b64decode(root_line, "checkpoint root hash")
    _check_hash(root_hash, "checkpoint root hash")
    if any(not ext for ext in extensions):
        raise ParseError("checkpoint extension line is empty")
    return Checkpoint(
        origin=origin, size=size, root_hash=root_hash, extensions=tuple(extensions), note=note
    )


def open_checkpoint(note: str, keys: Sequence[VerifierKey]) -> Checkpoint:
    """Parse a signed checkpoint and require a valid signature by one of the pinned ``keys``.

    Signatures by unknown keys are ignored (witness cosignatures, key rotation); a signature
    that claims a pinned key but does not verify rejects the whole note, as the spec requires.
    The checkpoint's origin must be the name of the key that signed it.
    """
    if not keys:
        raise VerificationError("tlog-checkpoint", "no log verifier keys are pinned")
    text, sigs = _split_note(note)
    body = _parse_body(text, note)
    pinned = {(k.name, k.key_hash): k for k in keys}
    message = text.encode()
    verified: VerifierKey | None = None
    for sig in sigs:
        key = pinned.get((sig.name, sig.key_hash))
        if key is None:
            continue
        if len(sig.signature) != ED25519_SIG_SIZE:
            raise VerificationError("tlog-checkpoint", f"signature by {sig.name} has bad length")
        try:
            Ed25519PublicKey.from_public_bytes(key.public_key).verify(sig.signature, message)
        except InvalidSignature as e:
            raise VerificationError(
                "tlog-checkpoint", f"signature by {sig.name} does not verify"
            ) from e
        verified = key
    if verified is None:
        names = ", ".join(sorted({k.name for k in keys}))
        raise VerificationError("tlog-checkpoint", f"no valid signature by a pinned key ({names})")
    if body.origin != verified.name:
        raise VerificationError(
            "tlog-checkpoint",
            f"checkpoint origin {body.origin!r} is not the signing key's name {verified.name!r}",
        )
    return body


def verify_log_entry(
    data: bytes,
    *,
    index: int,
    tree_size: int,
    inclusion: Sequence[bytes],
    checkpoint: str,
    keys: Sequence[VerifierKey],
) -> Checkpoint:
    """Verify that ``data`` is entry ``index`` of the log whose signed ``checkpoint`` is given.

    This is the check a client makes on a bundle's ``tlog`` object against the manifest's
    canonical JSON; it returns the verified checkpoint for later consistency checks.
    """
    cp = open_checkpoint(checkpoint, keys)
    if cp.size != tree_size:
        raise VerificationError(
            "tlog-inclusion", f"proof is for size {tree_size}, checkpoint has size {cp.size}"
        )
    verify_inclusion(index, tree_size, leaf_hash(data), inclusion, cp.root_hash)
    return cp
