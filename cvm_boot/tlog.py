"""The appliance's file-backed transparency log: append-only, crash-safe, signed checkpoints.

Directory layout::

    log.entries      header, then one framed record per entry (append-only, fsynced)
    log.checkpoint   the signed checkpoint of the last completed append (replaced atomically)
    log.key          the C2SP Ed25519 signer key, mode 0600
    log.vkey         the public verifier key string clients pin

A record is ``magic "OPTR" || u32 length || data || SHA-256(u64 index || u32 length || data)``.
Opening the log reads every record, checks its framing and checksum, recomputes the Merkle tree
and checks it against the stored signed checkpoint, so a torn tail (partial record), a truncated
file or an edited entry is refused; none of them is ever repaired. Complete records beyond the
stored checkpoint (a crash between the record's fsync and the checkpoint's) are kept: each one is
whole and checksummed, and the prefix the checkpoint signed still has to match.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import secrets
import struct
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attest.errors import ParseError, VerificationError
from attest.tlog import (
    ALG_ED25519,
    HASH_SIZE,
    SIG_PREFIX,
    VerifierKey,
    empty_root,
    key_hash,
    leaf_hash,
    node_hash,
    open_checkpoint,
    valid_key_name,
)

__all__ = [
    "CHECKPOINT_FILE",
    "DEFAULT_LOG_NAME",
    "ENTRIES_FILE",
    "KEY_FILE",
    "VKEY_FILE",
    "TransparencyLog",
    "bundle_entry",
    "generate_log_key",
    "parse_signer_key",
]

ENTRIES_FILE = "log.entries"
CHECKPOINT_FILE = "log.checkpoint"
KEY_FILE = "log.key"
VKEY_FILE = "log.vkey"
DEFAULT_LOG_NAME = "openpcc.appliance/log"
FILE_HEADER = b"openpcc-tlog/v1\n"
RECORD_MAGIC = b"OPTR"
_LEN = struct.Struct(">I")
_INDEX = struct.Struct(">Q")
RECORD_OVERHEAD = len(RECORD_MAGIC) + _LEN.size + HASH_SIZE
MAX_ENTRY_SIZE = 16 << 20
_SIGNER_PREFIX = "PRIVATE+KEY+"


def generate_log_key(name: str) -> tuple[str, str]:
    """A fresh Ed25519 log key: (C2SP signer key string, verifier key string)."""
    if not valid_key_name(name):
        raise ParseError(f"log key name {name!r} is not a valid key name")
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes_raw()
    public = private.public_key().public_bytes_raw()
    khash = key_hash(name, public).hex()
    skey = (
        _SIGNER_PREFIX + f"{name}+{khash}+" + base64.b64encode(bytes([ALG_ED25519]) + seed).decode()
    )
    vkey = VerifierKey(name=name, key_hash=bytes.fromhex(khash), public_key=public).encode()
    return skey, vkey


def parse_signer_key(skey: str) -> tuple[str, Ed25519PrivateKey, VerifierKey]:
    """Parse ``PRIVATE+KEY+name+hash+base64(0x01 || seed)``; the hash must match the key."""
    if not skey.startswith(_SIGNER_PREFIX):
        raise ParseError("signer key must start with PRIVATE+KEY+")
    parts = skey[len(_SIGNER_PREFIX) :].split("+", 2)
    if len(parts) != 3:
        raise ParseError("signer key must have the form PRIVATE+KEY+name+hash+key")
    name, hash_hex, key_b64 = parts
    if not valid_key_name(name):
        raise ParseError(f"signer key name {name!r} is not a valid key name")
    try:
        raw = base64.b64decode(key_b64, validate=True)
    except ValueError as e:
        raise ParseError("signer key is not valid base64") from e
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise ParseError("signer key is not an Ed25519 key")
    private = Ed25519PrivateKey.from_private_bytes(raw[1:])
    public = private.public_key().public_bytes_raw()
    vkey = VerifierKey(name=name, key_hash=key_hash(name, public), public_key=public)
    if hash_hex != vkey.key_hash.hex():
        raise ParseError("signer key hash does not match its key")
    return name, private, vkey


def _largest_pow2_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    # A temporary name of this writer's own: two writers never share (and tear) one.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {tmp}")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never left behind (and copied onto a disk image)
        raise
    _fsync_dir(path.parent)


def _torn(message: str, good_bytes: int) -> ParseError:
    """A partial last record. An append interrupted before its fsync finished leaves one that
    no checkpoint covers (one is written only after a whole record), so cutting it off loses
    nothing signed; the log does not do that by itself, the operator does, knowingly."""
    return ParseError(
        message,
        hint=f"if an append was interrupted, the complete records end at byte {good_bytes}: "
        f"`truncate -s {good_bytes} {ENTRIES_FILE}` in the log folder drops the partial record; "
        "the log then opens if that record was never signed, and is still refused if the "
        "signed checkpoint covered it (then the file lost signed data)",
    )


def _record_checksum(index: int, data: bytes) -> bytes:
    return hashlib.sha256(_INDEX.pack(index) + _LEN.pack(len(data)) + data).digest()


def _encode_record(index: int, data: bytes) -> bytes:
    return RECORD_MAGIC + _LEN.pack(len(data)) + data + _record_checksum(index, data)


def _read_records(raw: bytes) -> Iterator[bytes]:
    if not raw.startswith(FILE_HEADER):
        raise ParseError(f"{ENTRIES_FILE} does not start with the log header")
    pos, index = len(FILE_HEADER), 0
    while pos < len(raw):
        head = raw[pos : pos + len(RECORD_MAGIC) + _LEN.size]
        if len(head) < len(RECORD_MAGIC) + _LEN.size:
            raise _torn(f"{ENTRIES_FILE}: torn record header at entry {index}", pos)
        if head[:4] != RECORD_MAGIC:
            raise ParseError(f"{ENTRIES_FILE}: bad record magic at entry {index}")
        (length,) = _LEN.unpack(head[4:])
        start = pos + len(head)
        end = start + length + HASH_SIZE
        if end > len(raw):
            raise _torn(f"{ENTRIES_FILE}: torn record at entry {index} (file ends early)", pos)
        data = raw[start : start + length]
        if raw[start + length : end] != _record_checksum(index, data):
            raise VerificationError("tlog-file", f"entry {index} fails its checksum")
        yield data
        pos, index = end, index + 1


class TransparencyLog:
    """An append-only RFC 9162 log in one directory, signing C2SP checkpoints."""

    def __init__(
        self,
        directory: Path,
        name: str,
        private_key: Ed25519PrivateKey | None,
        vkey: VerifierKey,
    ) -> None:
        self._dir = directory
        self._name = name
        self._private = private_key
        self._vkey = vkey
        self._stored_checkpoint: str | None = None
        self._entries: list[bytes] = []
        self._index: dict[bytes, int] = {}
        # _levels[k][i] is the hash of the complete subtree of 2**k leaves starting at i * 2**k.
        self._levels: list[list[bytes]] = [[]]
        self._file_end = 0

    @classmethod
    def open(cls, directory: Path, *, signer_key: str | None = None) -> TransparencyLog:
        """Open the log in ``directory``, creating it (and a key, if none is given) when absent."""
        directory.mkdir(parents=True, exist_ok=True)
        key_path = directory / KEY_FILE
        entries_path = directory / ENTRIES_FILE
        if signer_key is None:
            if key_path.exists():
                signer_key = key_path.read_text(encoding="utf-8").strip()
            elif entries_path.exists():
                raise ParseError(f"{directory} holds a log but no {KEY_FILE}")
            else:
                signer_key, _ = generate_log_key(DEFAULT_LOG_NAME)
        name, private, vkey = parse_signer_key(signer_key)
        if key_path.exists():
            if key_path.read_text(encoding="utf-8").strip() != signer_key:
                raise VerificationError("tlog-key", f"signer key differs from {key_path}")
        else:
            _write_atomic(key_path, (signer_key + "\n").encode(), mode=0o600)
        vkey_text = vkey.encode() + "\n"
        vkey_path = directory / VKEY_FILE
        if not vkey_path.exists() or vkey_path.read_text(encoding="utf-8") != vkey_text:
            _write_atomic(vkey_path, vkey_text.encode())
        log = cls(directory, name, private, vkey)
        if not entries_path.exists():
            # The empty checkpoint first: a crash before the entries file exists leaves a log
            # that opens as empty, never one whose entries lack a checkpoint.
            if not (directory / CHECKPOINT_FILE).exists():
                _write_atomic(directory / CHECKPOINT_FILE, log.checkpoint().encode())
            fd = os.open(entries_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, FILE_HEADER)
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(directory)
        log._load()
        return log

    @classmethod
    def open_readonly(cls, directory: Path) -> TransparencyLog:
        """A copy of a log without its signing key: the provisioning disk of a real CVM.

        It serves exactly what the operator's log signed: the stored checkpoint, the entries it
        covers and proofs up to its size. Entries past the checkpoint are left out, appending is
        refused and nothing is written. On open the checkpoint's signature is verified with the
        stored verifier key and the entries' Merkle root against it, so a damaged copy is
        refused here rather than by every client.
        """
        try:
            vkey = VerifierKey.parse((directory / VKEY_FILE).read_text(encoding="utf-8").strip())
            raw = (directory / ENTRIES_FILE).read_bytes()
            cp_text = (directory / CHECKPOINT_FILE).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            what = Path(e.filename).name if isinstance(e, OSError) and e.filename else "a file"
            raise ParseError(f"read-only log in {directory}: cannot read {what}") from e
        cp = open_checkpoint(cp_text, [vkey])
        log = cls(directory, vkey.name, None, vkey)
        for data in _read_records(raw):
            if log.size == cp.size:
                break
            log._add(data)
        if log.size < cp.size:
            raise VerificationError(
                "tlog-file", f"log holds {log.size} entries, its checkpoint signed {cp.size}"
            )
        if log.root() != cp.root_hash:
            raise VerificationError(
                "tlog-file", f"entries do not match the signed checkpoint of size {cp.size}"
            )
        log._stored_checkpoint = cp_text
        log._file_end = len(raw)
        return log

    @property
    def read_only(self) -> bool:
        return self._private is None

    def _load(self) -> None:
        raw = (self._dir / ENTRIES_FILE).read_bytes()
        for data in _read_records(raw):
            self._add(data)
        self._file_end = len(raw)
        cp_path = self._dir / CHECKPOINT_FILE
        if not cp_path.exists():
            raise ParseError(f"{cp_path} is missing")
        cp = open_checkpoint(cp_path.read_text(encoding="utf-8"), [self._vkey])
        if cp.size > self.size:
            raise VerificationError(
                "tlog-file", f"log holds {self.size} entries, its checkpoint signed {cp.size}"
            )
        if self.root(cp.size) != cp.root_hash:
            raise VerificationError(
                "tlog-file", f"entries do not match the signed checkpoint of size {cp.size}"
            )

    def _add(self, data: bytes) -> None:
        index = len(self._entries)
        self._entries.append(data)
        h = leaf_hash(data)
        self._index.setdefault(h, index)
        self._levels[0].append(h)
        level, i = 0, index
        while i & 1:
            parent = node_hash(self._levels[level][i - 1], self._levels[level][i])
            level, i = level + 1, i >> 1
            if len(self._levels) == level:
                self._levels.append([])
            self._levels[level].append(parent)

    @property
    def size(self) -> int:
        return len(self._entries)

    @property
    def name(self) -> str:
        """The log's origin, which is also its key name."""
        return self._name

    @property
    def verifier_key(self) -> str:
        return self._vkey.encode()

    @property
    def directory(self) -> Path:
        return self._dir

    def append(self, data: bytes) -> int:
        """Append ``data`` durably and re-sign the checkpoint; returns its index."""
        if self._private is None:
            raise ParseError(
                f"the log in {self._dir} is a read-only copy (no signing key)",
                hint="append on the host that holds log.key: openpcc-appliance release",
            )
        if len(data) > MAX_ENTRY_SIZE:
            raise ParseError(f"log entry of {len(data)} bytes exceeds {MAX_ENTRY_SIZE}")
        index = self.size
        record = _encode_record(index, data)
        path = self._dir / ENTRIES_FILE
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size != self._file_end:
                raise VerificationError(
                    "tlog-file", f"{path} changed since it was opened; reopen the log"
                )
            written = os.write(fd, record)
            if written != len(record):
                raise OSError(f"short write to {path}")
            os.fsync(fd)
            self._file_end += len(record)
            self._add(data)
            # Still under the lock: a second appender can neither interleave its checkpoint
            # nor replace this one with an older, smaller tree.
            _write_atomic(self._dir / CHECKPOINT_FILE, self.checkpoint().encode())
        finally:
            os.close(fd)
        return index

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"size {size} is outside 0..{self.size}")
        return size

    def _subtree(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n & (n - 1) == 0 and lo % n == 0:
            return self._levels[n.bit_length() - 1][lo // n]
        k = _largest_pow2_below(n)
        return node_hash(self._subtree(lo, lo + k), self._subtree(lo + k, hi))

    def root(self, size: int | None = None) -> bytes:
        n = self._check_size(size)
        return empty_root() if n == 0 else self._subtree(0, n)

    def _path(self, m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _largest_pow2_below(n)
        if m < k:
            return [*self._path(m, lo, lo + k), self._subtree(lo + k, hi)]
        return [*self._path(m - k, lo + k, hi), self._subtree(lo, lo + k)]

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 ``PATH(index, D[0:size])``."""
        n = self._check_size(size)
        if not 0 <= index < n:
            raise ValueError(f"index {index} is outside a tree of size {n}")
        return self._path(index, 0, n)

    def _subproof(self, m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if whole else [self._subtree(lo, hi)]
        k = _largest_pow2_below(n)
        if m <= k:
            return [*self._subproof(m, lo, lo + k, whole), self._subtree(lo + k, hi)]
        return [*self._subproof(m - k, lo + k, hi, False), self._subtree(lo, lo + k)]

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """RFC 9162 ``PROOF(old, D[0:new])``; empty when ``old`` is 0 or equals ``new``."""
        new = self._check_size(new)
        if not 0 <= old <= new:
            raise ValueError(f"old size {old} is outside 0..{new}")
        if old in (0, new):
            return []
        return self._subproof(old, 0, new, True)

    def checkpoint(self) -> str:
        """The signed note (C2SP tlog-checkpoint) for the current size."""
        if self._private is None:
            assert self._stored_checkpoint is not None
            return self._stored_checkpoint
        root = base64.b64encode(self.root()).decode()
        body = f"{self._name}\n{self.size}\n{root}\n"
        sig = self._private.sign(body.encode())
        sig_b64 = base64.b64encode(self._vkey.key_hash + sig).decode()
        return f"{body}\n{SIG_PREFIX}{self._name} {sig_b64}\n"

    def entry(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise IndexError(f"no entry {index} in a log of size {self.size}")
        return self._entries[index]

    def find(self, data: bytes) -> int | None:
        """The index of the first entry equal to ``data``, or None."""
        return self._index.get(leaf_hash(data))


def bundle_entry(log: TransparencyLog, data: bytes) -> dict[str, object]:
    """The attestation bundle's ``tlog`` object for ``data`` at the log's current size.

    Raises ``LookupError`` when ``data`` was never appended (the release step was skipped).
    """
    index = log.find(data)
    if index is None:
        raise LookupError(
            "manifest is not in the transparency log; run `openpcc-appliance release`"
        )
    size = log.size
    return {
        "index": index,
        "tree_size": size,
        "inclusion": [h.hex() for h in log.inclusion_proof(index, size)],
        "checkpoint": log.checkpoint(),
    }
