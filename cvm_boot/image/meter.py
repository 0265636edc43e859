"""Progress callbacks for the long steps (fetching weights, hashing, copying), without any UI.

A step reports through two plain callables, so the functions that do the work stay usable from
scripts and tests without rich: ``say(message)`` for a step that starts, and
``meter(label, done, total)`` for bytes; ``total`` is None while unknown, and ``done == total``
ends the meter. ``appliance.progress`` turns them into bars on a terminal, one line per step
otherwise, and nothing with ``--json``.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = ["CHUNK", "Meter", "Say", "copy_tree", "no_meter", "quiet", "sha256_file"]

Say = Callable[[str], None]
Meter = Callable[[str, int, "int | None"], None]
CHUNK = 1 << 20


def quiet(_message: str) -> None:
    return None


def no_meter(_label: str, _done: int, _total: int | None) -> None:
    return None


def sha256_file(path: Path, meter: Meter = no_meter, label: str = "") -> str:
    """SHA-256 of ``path`` (hex), reporting bytes read under ``label`` when one is given."""
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            done += len(chunk)
            if label:
                meter(label, done, total)
    if label and total == 0:
        meter(label, 0, 0)
    return h.hexdigest()


def copy_tree(src: Path, dst: Path, meter: Meter = no_meter, label: str = "") -> None:
    """``shutil.copytree`` (links followed), reporting the bytes copied under ``label``."""
    files = [p for p in sorted(src.rglob("*")) if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    done = 0
    dst.mkdir(parents=True, exist_ok=True)
    for p in files:
        target = dst / p.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        with p.open("rb") as fin, target.open("wb") as fout:
            while chunk := fin.read(CHUNK):
                fout.write(chunk)
                done += len(chunk)
                if label:
                    meter(label, done, total)
        shutil.copymode(p, target)
    for d in sorted(src.rglob("*")):
        if d.is_dir():
            (dst / d.relative_to(src)).mkdir(parents=True, exist_ok=True)
    if label and total == 0:
        meter(label, 0, 0)
