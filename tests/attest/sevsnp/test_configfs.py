"""configfs-tsm collection against a fake directory tree, and the auxblob certificate table."""

from __future__ import annotations

import contextlib
import struct
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import ParseError, TransportError
from attest.sevsnp import configfs
from attest.sevsnp.configfs import (
    ARK_GUID,
    ASK_GUID,
    VCEK_GUID,
    VLEK_GUID,
    build_cert_table,
    collect_report,
    parse_cert_table,
)
from attest.sevsnp.sim import SimulatedSnpSigner

RD = bytes(range(64))


def _fake_entry(root: Path, sim: SimulatedSnpSigner, *, provider: str = "sev_guest") -> Path:
    """A FAKE configfs-tsm entry: plain files standing in for the kernel's attributes."""
    entry = root / "fake"
    entry.mkdir(parents=True)
    vcek, ask, ark = (c.public_bytes(Encoding.DER) for c in sim.certificates())
    (entry / "outblob").write_bytes(sim.sign(report_data=RD, measurement=b"\x01" * 48))
    (entry / "auxblob").write_bytes(
        build_cert_table({VCEK_GUID: vcek, ASK_GUID: ask, ARK_GUID: ark})
    )
    (entry / "provider").write_text(provider + "\n")
    (entry / "generation").write_text("2\n")
    (entry / "privlevel").write_text("0\n")
    (entry / "inblob").write_bytes(b"")
    return entry


def test_collect_from_fake_tree(tmp_path: Path, sim: SimulatedSnpSigner) -> None:
    entry = _fake_entry(tmp_path, sim)
    raw, certs = collect_report(RD, root=tmp_path, entry="fake", privlevel=2)
    assert len(raw) == 1184
    assert certs == sim.certificates()
    assert (entry / "inblob").read_bytes() == RD
    assert (entry / "privlevel").read_text() == "2\n"


def test_wrong_provider(tmp_path: Path, sim: SimulatedSnpSigner) -> None:
    _fake_entry(tmp_path, sim, provider="tdx_guest")
    with pytest.raises(TransportError, match="tdx_guest"):
        collect_report(RD, root=tmp_path, entry="fake")


def test_racing_writer_detected(
    tmp_path: Path, sim: SimulatedSnpSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = _fake_entry(tmp_path, sim)
    real_read = configfs._read

    def racing_read(path: Path, name: str, limit: int) -> bytes:
        data = real_read(path, name, limit)
        if name == "outblob":  # someone else writes the entry while we read our report
            (entry / "generation").write_text("3\n")
        return data

    monkeypatch.setattr(configfs, "_read", racing_read)
    with pytest.raises(TransportError, match="generation changed from 2 to 3"):
        collect_report(RD, root=tmp_path, entry="fake")


def test_foreign_report_data_detected(tmp_path: Path, sim: SimulatedSnpSigner) -> None:
    _fake_entry(tmp_path, sim)
    with pytest.raises(TransportError, match="REPORT_DATA is not ours"):
        collect_report(b"\xee" * 64, root=tmp_path, entry="fake")


def test_missing_configfs(tmp_path: Path) -> None:
    with pytest.raises(TransportError):
        collect_report(RD, root=tmp_path / "absent")


def test_fresh_entry_is_removed(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="provider"):
        collect_report(RD, root=tmp_path)  # a plain directory has no kernel attributes
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        collect_report(b"short", root=tmp_path)
    with pytest.raises(ValueError, match="privlevel"):
        collect_report(RD, root=tmp_path, privlevel=4)


def test_cert_table_roundtrip() -> None:
    entries = {VCEK_GUID: b"vcek-der", VLEK_GUID: b"", ASK_GUID: b"ask", ARK_GUID: b"ark!"}
    assert parse_cert_table(build_cert_table(entries)) == entries
    assert parse_cert_table(b"") == {}


def test_cert_table_guid_byte_order() -> None:
    blob = build_cert_table({VCEK_GUID: b"x"})
    assert blob[:16] == bytes.fromhex("63da758de6644564adc5f4b93be8accd")


def _entry(guid: str, offset: int, length: int) -> bytes:
    return uuid.UUID(guid).bytes + struct.pack("<II", offset, length)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (_entry(VCEK_GUID, 48, 1), "terminating"),
        (b"\0" * 23, "terminating"),
        (_entry(VCEK_GUID, 10, 1) + b"\0" * 24 + b"x", "outside"),
        (_entry(VCEK_GUID, 48, 5) + b"\0" * 24 + b"x", "outside"),
        (_entry(VCEK_GUID, 72, 1) * 2 + b"\0" * 24 + b"x", "twice"),
    ],
)
def test_cert_table_malformed(blob: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_cert_table(blob)


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_fuzz_cert_table_bytes(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_cert_table(data)


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(st.uuids(), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=5
    ),
    st.binary(max_size=64),
    st.booleans(),
)
def test_fuzz_cert_table_structured(
    rows: list[tuple[uuid.UUID, int, int]], body: bytes, terminate: bool
) -> None:
    blob = b"".join(u.bytes + struct.pack("<II", o, n) for u, o, n in rows)
    blob += (b"\0" * 24 if terminate else b"") + body
    try:
        table = parse_cert_table(blob)
    except ParseError:
        return
    assert all(isinstance(v, bytes) for v in table.values())
