"""dm-verity volumes: format them with ``veritysetup`` and recompute their root hash in Python.

The root hashes go into the kernel command line (``Recipe.cmdline``), which the launch
measurement covers, so the root filesystem and the model weights are pinned by the measurement.
Formatting is reproducible: the salt comes from the recipe and the superblock UUID is fixed.
``root_hash`` is an independent recomputation (format version 1, SHA-256) used to check an image
without trusting the tool that built it.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from attest.errors import ParseError, VerificationError

__all__ = [
    "BLOCK_SIZE",
    "FIXED_UUID",
    "VerityFormat",
    "format_volume",
    "root_hash",
    "veritysetup_path",
]

BLOCK_SIZE = 4096
DIGEST_SIZE = 32
# The superblock UUID is not covered by the root hash; fixing it makes hash images byte-identical.
FIXED_UUID = "6f70656e-7063-4300-8000-000000000001"
_ROOT_RE = re.compile(r"^Root hash:\s+([0-9a-f]{64})\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class VerityFormat:
    data: Path
    hash_image: Path
    salt: bytes
    root_hash: bytes


def veritysetup_path() -> str | None:
    """Where ``veritysetup`` (Debian package ``cryptsetup-bin``) is, or None."""
    return shutil.which("veritysetup") or next(
        (p for p in ("/usr/sbin/veritysetup", "/sbin/veritysetup") if Path(p).is_file()), None
    )


def format_volume(data: Path, hash_image: Path, salt: bytes) -> VerityFormat:
    """Run ``veritysetup format`` on a plain data file; returns the root hash it reports.

    The result is checked against ``root_hash`` so a tool that disagrees is caught at build time.
    """
    tool = veritysetup_path()
    if tool is None:
        raise FileNotFoundError("veritysetup not found; install the Debian package cryptsetup-bin")
    _check_data(data)
    args = [
        tool,
        "format",
        "--hash=sha256",
        "--format=1",
        f"--data-block-size={BLOCK_SIZE}",
        f"--hash-block-size={BLOCK_SIZE}",
        f"--salt={salt.hex() if salt else '-'}",
        f"--uuid={FIXED_UUID}",
        str(data),
        str(hash_image),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OSError(f"veritysetup format failed ({proc.returncode}): {proc.stderr.strip()}")
    m = _ROOT_RE.search(proc.stdout)
    if m is None:
        raise ParseError("veritysetup format printed no root hash")
    reported = bytes.fromhex(m.group(1))
    ours = root_hash(data, salt)
    if reported != ours:
        raise VerificationError(
            "verity", f"veritysetup says {reported.hex()}, recomputation says {ours.hex()}"
        )
    return VerityFormat(data=data, hash_image=hash_image, salt=salt, root_hash=reported)


def _check_data(data: Path) -> int:
    size = data.stat().st_size
    if size == 0 or size % BLOCK_SIZE:
        raise ParseError(f"{data}: size {size} is not a positive multiple of {BLOCK_SIZE}")
    return size


def root_hash(data: Path, salt: bytes) -> bytes:
    """dm-verity format 1 root hash of ``data`` with SHA-256 and 4 KiB blocks.

    Each block's digest is ``SHA-256(salt || block)``; while more than one digest remains they
    are packed into zero-padded hash blocks and those are digested the same way (the next level).
    The last digest standing is the root (a one-block volume's root is its block's digest).
    """
    _check_data(data)
    per_block = BLOCK_SIZE // DIGEST_SIZE
    digests: list[bytes] = []
    with data.open("rb") as f:
        while block := f.read(BLOCK_SIZE):
            digests.append(hashlib.sha256(salt + block).digest())
    while len(digests) > 1:
        blocks = [
            b"".join(digests[i : i + per_block]).ljust(BLOCK_SIZE, b"\0")
            for i in range(0, len(digests), per_block)
        ]
        digests = [hashlib.sha256(salt + b).digest() for b in blocks]
    return digests[0]
