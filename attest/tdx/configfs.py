"""Collect a TDX quote through the kernel's configfs-tsm report interface.

``/sys/kernel/config/tsm/report/<entry>/``: write REPORT_DATA to ``inblob``, read the quote from
``outblob``, and read ``generation`` afterwards: it counts writes to the entry, so a value other
than the one write we made means another process raced us and the quote may not be ours.
``provider`` must name the TDX guest driver. File access goes through :class:`TsmClient` so tests
can use a fake tree; production uses :class:`LinuxTsmClient`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from attest.errors import TransportError

__all__ = ["REPORT_ROOT", "LinuxTsmClient", "TsmClient", "TsmReport", "collect_tdx_quote"]

REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
TDX_PROVIDER = "tdx_guest"
REPORT_DATA_SIZE = 64


class TsmClient(Protocol):
    """The four file operations the configfs-tsm protocol needs."""

    def make_entry(self, root: Path) -> Path: ...
    def write(self, path: Path, data: bytes) -> None: ...
    def read(self, path: Path) -> bytes: ...
    def remove_entry(self, entry: Path) -> None: ...


class LinuxTsmClient:
    """Real configfs: mkdir makes the kernel create the entry's attribute files."""

    def make_entry(self, root: Path) -> Path:
        return Path(tempfile.mkdtemp(prefix="openpcc-", dir=root))

    def write(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def remove_entry(self, entry: Path) -> None:
        entry.rmdir()


@dataclass(frozen=True, slots=True)
class TsmReport:
    provider: str
    generation: int
    outblob: bytes


def collect_tdx_quote(
    report_data: bytes, *, root: Path = REPORT_ROOT, client: TsmClient | None = None
) -> TsmReport:
    """A fresh TDX quote over ``report_data`` (64 bytes); TransportError on any failure."""
    if len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"TDX report data must be {REPORT_DATA_SIZE} bytes")
    fs = client if client is not None else LinuxTsmClient()
    try:
        entry = fs.make_entry(root)
    except OSError as exc:
        raise TransportError(f"cannot create a configfs-tsm entry under {root}: {exc}") from exc
    try:
        fs.write(entry / "inblob", report_data)
        outblob = fs.read(entry / "outblob")
        generation_text = fs.read(entry / "generation").decode("ascii").strip()
        provider = fs.read(entry / "provider").decode("ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TransportError(f"configfs-tsm report failed: {exc}") from exc
    finally:
        # A leftover entry costs nothing; the quote (or the error) stands either way.
        with contextlib.suppress(OSError):
            fs.remove_entry(entry)
    if provider != TDX_PROVIDER:
        raise TransportError(f"configfs-tsm provider is {provider!r}, not {TDX_PROVIDER!r}")
    try:
        generation = int(generation_text)
    except ValueError as exc:
        raise TransportError(
            f"configfs-tsm generation {generation_text!r} is not a number"
        ) from exc
    if generation != 1:
        raise TransportError(
            f"configfs-tsm generation is {generation}, expected 1: another writer raced this report"
        )
    if not outblob:
        raise TransportError("configfs-tsm returned an empty quote")
    return TsmReport(provider=provider, generation=generation, outblob=outblob)
