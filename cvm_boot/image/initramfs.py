"""The initramfs: a static busybox, ``veritysetup`` with its libraries, kernel modules, ``init``.

The archive is written here, not by ``cpio``: members sorted by path, owner root, one fixed
mtime, inode numbers in order, gzip with no name and mtime 0, so equal inputs give equal bytes.
busybox lives only in the initramfs, which ``init`` leaves with ``switch_root``; the root
filesystem it mounts has no shell.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from attest.errors import ParseError

__all__ = ["BOOT_MODULES", "module_closure", "write_cpio"]

# What init loads, in this order after their dependencies: virtio transport and disks, the
# network card, an entropy source (getrandom would otherwise wait on a quiet VM), device-mapper
# with dm-verity, and the root filesystem's type.
BOOT_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio-rng",
    "dm-verity",
    "squashfs",
)


def _modinfo_depends(ko: Path) -> list[str]:
    data = ko.read_bytes()
    key = b"\0depends="
    at = data.find(key)
    if at < 0:
        return []
    end = data.index(b"\0", at + len(key))
    value = data[at + len(key) : end].decode()
    return [d for d in value.split(",") if d]


def module_closure(modules_dir: Path, wanted: Sequence[str]) -> list[Path]:
    """The ``.ko`` files for ``wanted`` and their dependencies, dependencies first."""
    index: dict[str, Path] = {}
    for ko in sorted(modules_dir.rglob("*.ko")):
        index[ko.stem.replace("-", "_")] = ko
    order: list[Path] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if key not in index:
            raise ParseError(f"kernel module {name} is not in {modules_dir}")
        ko = index[key]
        if ko in order or key in visiting:
            return
        visiting.add(key)
        for dep in _modinfo_depends(ko):
            visit(dep)
        order.append(ko)

    for name in wanted:
        visit(name)
    return order


def _header(ino: int, mode: int, size: int, name: bytes, mtime: int, nlink: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, 0, 0, len(name) + 1, 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields)
    return _pad(head + name + b"\0")


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def write_cpio(tree: Path, output: Path, *, mtime: int, executables: Iterable[str] = ()) -> None:
    """A gzip'd newc archive of ``tree``; modes are normalized (0755 dirs and executables)."""
    execs = set(executables)
    entries: list[Path] = sorted(tree.rglob("*"), key=lambda p: p.relative_to(tree).as_posix())
    buf = io.BytesIO()
    for ino, path in enumerate(entries, start=1):
        rel = path.relative_to(tree).as_posix()
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            buf.write(_header(ino, stat.S_IFDIR | 0o755, 0, rel.encode(), mtime, 2))
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(path).encode()
            buf.write(_header(ino, stat.S_IFLNK | 0o777, len(target), rel.encode(), mtime, 1))
            buf.write(_pad(target))
        elif stat.S_ISREG(st.st_mode):
            data = path.read_bytes()
            exe = rel in execs or bool(st.st_mode & 0o111)
            mode = stat.S_IFREG | (0o755 if exe else 0o644)
            buf.write(_header(ino, mode, len(data), rel.encode(), mtime, 1))
            buf.write(_pad(data))
        else:
            raise ParseError(f"initramfs: {rel} is not a file, directory or link")
    buf.write(_header(0, 0, 0, b"TRAILER!!!", 0, 1))
    raw = buf.getvalue()
    raw += b"\0" * (-len(raw) % 512)
    with output.open("wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw)
