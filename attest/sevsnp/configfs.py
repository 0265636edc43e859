"""Collect an SEV-SNP report inside a real guest through Linux configfs-tsm.

``/sys/kernel/config/tsm/report/<entry>/``: write ``privlevel`` and ``inblob`` (REPORT_DATA), read
``outblob`` (the ATTESTATION_REPORT) and ``auxblob`` (the GHCB certificate table). ``generation``
counts writes to the entry; it is read after our writes and again after the reads, so a racing
writer cannot hand us a report made for someone else's REPORT_DATA.
"""

from __future__ import annotations

import contextlib
import secrets
import struct
import uuid
from pathlib import Path

from cryptography import x509

from attest.errors import ParseError, TransportError
from attest.sevsnp.abi import REPORT_DATA_SIZE, parse_report
from attest.sevsnp.verify import load_certificates

__all__ = [
    "ARK_GUID",
    "ASK_GUID",
    "CERT_TABLE_ENTRY_SIZE",
    "TSM_REPORT_ROOT",
    "VCEK_GUID",
    "VLEK_GUID",
    "build_cert_table",
    "collect_report",
    "parse_cert_table",
]

TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
SEV_PROVIDER = "sev_guest"

# GHCB spec, "certificate table" GUIDs (RFC 4122 byte order, as hypervisors write them).
VCEK_GUID = "63da758d-e664-4564-adc5-f4b93be8accd"
VLEK_GUID = "a8074bc2-a25a-483e-aae6-39c045a0b8a1"
ASK_GUID = "4ab7b379-bbac-4fe4-a02f-05aef327c782"
ARK_GUID = "c0b406a4-a803-4952-9743-3fb6014cd0ae"

GUID_SIZE = 16
CERT_TABLE_ENTRY_SIZE = 24  # GUID, u32 offset, u32 length
MAX_AUXBLOB = 1 << 20
MAX_OUTBLOB = 1 << 16


def parse_cert_table(auxblob: bytes) -> dict[str, bytes]:
    """GUID (lower-case string) -> certificate bytes. Raises ``ParseError`` only.

    The table is a list of 24-byte entries ended by an all-zero entry; each (offset, length) must
    lie after the table and inside the blob. An empty blob is an empty table.
    """
    if not isinstance(auxblob, bytes | bytearray | memoryview):
        raise ParseError(f"auxblob must be bytes, not {type(auxblob).__name__}")
    data = bytes(auxblob)
    if not data:
        return {}
    if len(data) > MAX_AUXBLOB:
        raise ParseError(f"auxblob is {len(data)} bytes, over {MAX_AUXBLOB}")
    entries: list[tuple[str, int, int]] = []
    pos = 0
    while True:
        if pos + CERT_TABLE_ENTRY_SIZE > len(data):
            raise ParseError("certificate table has no all-zero terminating entry")
        guid_raw = data[pos : pos + GUID_SIZE]
        offset, length = struct.unpack_from("<II", data, pos + GUID_SIZE)
        pos += CERT_TABLE_ENTRY_SIZE
        if not any(guid_raw) and offset == 0 and length == 0:
            break
        entries.append((str(uuid.UUID(bytes=guid_raw)), offset, length))
    table: dict[str, bytes] = {}
    for guid, offset, length in entries:
        if guid in table:
            raise ParseError(f"certificate table lists GUID {guid} twice")
        if offset < pos or offset + length > len(data):
            raise ParseError(
                f"certificate table entry {guid} range {offset}+{length} is outside "
                f"the data area {pos}..{len(data)}"
            )
        table[guid] = data[offset : offset + length]
    return table


def build_cert_table(entries: dict[str, bytes]) -> bytes:
    """The inverse of ``parse_cert_table`` (for fakes and tests of hypervisor tooling)."""
    header = CERT_TABLE_ENTRY_SIZE * (len(entries) + 1)
    head = bytearray()
    body = bytearray()
    for guid, blob in entries.items():
        head += uuid.UUID(guid).bytes + struct.pack("<II", header + len(body), len(blob))
        body += blob
    return bytes(head) + b"\0" * CERT_TABLE_ENTRY_SIZE + bytes(body)


def _read(entry: Path, name: str, limit: int) -> bytes:
    try:
        with (entry / name).open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise TransportError(f"cannot read configfs-tsm {name}: {exc}") from exc
    if len(data) > limit:
        raise ParseError(f"configfs-tsm {name} is over {limit} bytes")
    return data


def _write(entry: Path, name: str, data: bytes) -> None:
    try:
        with (entry / name).open("wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise TransportError(f"cannot write configfs-tsm {name}: {exc}") from exc


def _generation(entry: Path) -> int:
    text = _read(entry, "generation", 64).decode("ascii", "replace").strip()
    if not text.isdigit():
        raise ParseError(f"configfs-tsm generation is not a number: {text!r}")
    return int(text)


def collect_report(
    report_data: bytes,
    *,
    root: Path = TSM_REPORT_ROOT,
    privlevel: int = 0,
    entry: str | None = None,
) -> tuple[bytes, list[x509.Certificate]]:
    """Ask the AMD-SP for a report over ``report_data``; return it and the auxblob certificates.

    Certificates come signing key first (VCEK or VLEK), then ASK, then ARK, as present. ``entry``
    names an existing entry to reuse (kept afterwards); by default a fresh one is made and removed.
    Raises ``TransportError`` for an unusable configfs, ``ParseError`` for malformed output.
    """
    if len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"report_data must be {REPORT_DATA_SIZE} bytes")
    if not 0 <= privlevel <= 3:
        raise ValueError("privlevel must be 0..3")
    created = entry is None
    path = root / (entry or f"openpcc-{secrets.token_hex(8)}")
    if created:
        try:
            path.mkdir()
        except OSError as exc:
            raise TransportError(f"cannot create configfs-tsm entry {path}: {exc}") from exc
    try:
        provider = _read(path, "provider", 64).decode("ascii", "replace").strip()
        if provider != SEV_PROVIDER:
            raise TransportError(f"configfs-tsm provider is {provider!r}, not {SEV_PROVIDER!r}")
        if (path / "privlevel").exists():
            _write(path, "privlevel", f"{privlevel}\n".encode())
        elif privlevel:
            raise TransportError("configfs-tsm has no privlevel attribute")
        _write(path, "inblob", report_data)
        before = _generation(path)
        raw = _read(path, "outblob", MAX_OUTBLOB)
        aux = _read(path, "auxblob", MAX_AUXBLOB) if (path / "auxblob").exists() else b""
        after = _generation(path)
        if before != after:
            raise TransportError(
                f"configfs-tsm generation changed from {before} to {after}: another writer raced us"
            )
    finally:
        if created:
            # configfs removes the entry with its attributes; a failure leaves only an empty entry
            with contextlib.suppress(OSError):
                path.rmdir()
    report = parse_report(raw)
    if report.report_data != report_data:
        raise TransportError("outblob REPORT_DATA is not ours: another writer raced us")
    table = parse_cert_table(aux)
    certs: list[x509.Certificate] = []
    for guid in (VCEK_GUID, VLEK_GUID, ASK_GUID, ARK_GUID):
        blob = table.get(guid)
        if blob:
            certs.extend(load_certificates(blob))
    return raw, certs
