"""The file-backed log: durable appends; torn, truncated or edited files refused; keys on disk."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from attest.errors import ParseError, VerificationError
from attest.tlog import (
    VerifierKey,
    leaf_hash,
    open_checkpoint,
    verify_consistency,
    verify_inclusion,
)
from cvm_boot.tlog import (
    CHECKPOINT_FILE,
    ENTRIES_FILE,
    KEY_FILE,
    VKEY_FILE,
    TransparencyLog,
    generate_log_key,
    parse_signer_key,
)

ENTRIES = [f'{{"release":{i}}}'.encode() for i in range(5)]


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    log = TransparencyLog.open(tmp_path / "log")
    for e in ENTRIES:
        log.append(e)
    return tmp_path / "log"


def test_reopen_gives_same_tree(logdir: Path) -> None:
    first = TransparencyLog.open(logdir)
    assert first.size == 5
    root = first.root()
    again = TransparencyLog.open(logdir)
    assert again.root() == root
    assert [again.entry(i) for i in range(5)] == ENTRIES
    assert again.find(ENTRIES[3]) == 3
    assert again.find(b"absent") is None
    index = again.append(b"six")
    assert index == 5
    reopened = TransparencyLog.open(logdir)
    verify_consistency(5, 6, root, reopened.root(), reopened.consistency_proof(5, 6))
    verify_inclusion(5, 6, leaf_hash(b"six"), reopened.inclusion_proof(5), reopened.root())


def test_key_files(logdir: Path) -> None:
    key = logdir / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    log = TransparencyLog.open(logdir)
    vkey = (logdir / VKEY_FILE).read_text().strip()
    assert vkey == log.verifier_key
    name, _, parsed = parse_signer_key(key.read_text().strip())
    assert parsed.encode() == vkey and name == log.name
    cp = open_checkpoint((logdir / CHECKPOINT_FILE).read_text(), [VerifierKey.parse(vkey)])
    assert (cp.size, cp.root_hash) == (5, log.root())


def test_explicit_signer_key(tmp_path: Path) -> None:
    skey, vkey = generate_log_key("release.example/log")
    log = TransparencyLog.open(tmp_path, signer_key=skey)
    log.append(b"x")
    assert log.verifier_key == vkey
    cp = open_checkpoint(log.checkpoint(), [VerifierKey.parse(vkey)])
    assert cp.origin == "release.example/log"
    other, _ = generate_log_key("release.example/log")
    with pytest.raises(VerificationError, match="signer key differs") as err:
        TransparencyLog.open(tmp_path, signer_key=other)
    assert err.value.check == "tlog-key"


def _truncate(n: int) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        p = d / ENTRIES_FILE
        p.write_bytes(p.read_bytes()[:-n])

    return apply


def _edit(offset_from_end: int) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        p = d / ENTRIES_FILE
        raw = bytearray(p.read_bytes())
        raw[-offset_from_end] ^= 0x01
        p.write_bytes(bytes(raw))

    return apply


def _drop_last_record(d: Path) -> None:
    from cvm_boot.tlog import RECORD_OVERHEAD

    p = d / ENTRIES_FILE
    p.write_bytes(p.read_bytes()[: -(RECORD_OVERHEAD + len(ENTRIES[-1]))])


def _rewrite_record(d: Path) -> None:
    """Replace entry 4 with a validly framed, correctly checksummed forgery."""
    from cvm_boot.tlog import RECORD_OVERHEAD, _encode_record

    p = d / ENTRIES_FILE
    raw = p.read_bytes()[: -(RECORD_OVERHEAD + len(ENTRIES[-1]))]
    p.write_bytes(raw + _encode_record(4, b'{"release":9}'))


def _append_garbage(d: Path) -> None:
    with (d / ENTRIES_FILE).open("ab") as f:
        f.write(b"OPTR\x00\x00")


def _bad_header(d: Path) -> None:
    p = d / ENTRIES_FILE
    p.write_bytes(b"X" + p.read_bytes()[1:])


def _foreign_checkpoint(d: Path) -> None:
    other = TransparencyLog.open(d.parent / "other")
    other.append(b"x")
    (d / CHECKPOINT_FILE).write_text(other.checkpoint())


def _no_checkpoint(d: Path) -> None:
    (d / CHECKPOINT_FILE).unlink()


def _no_key(d: Path) -> None:
    (d / KEY_FILE).unlink()


CORRUPTIONS = [
    ("torn tail: partial checksum", _truncate(1), ParseError, "torn record at entry 4"),
    ("torn tail: partial header", _append_garbage, ParseError, "torn record header at entry 5"),
    ("truncated by one record", _drop_last_record, VerificationError, "holds 4 entries"),
    ("edited data byte", _edit(40), VerificationError, "entry 4 fails its checksum"),
    ("edited checksum byte", _edit(1), VerificationError, "entry 4 fails its checksum"),
    ("edited length", _edit(32 + len(ENTRIES[-1]) + 1), VerificationError, "checksum"),
    ("rechecksummed forgery", _rewrite_record, VerificationError, "do not match the signed"),
    ("bad header", _bad_header, ParseError, "log header"),
    ("foreign checkpoint", _foreign_checkpoint, VerificationError, "no valid signature"),
    ("checkpoint deleted", _no_checkpoint, ParseError, "missing"),
    ("key deleted", _no_key, ParseError, "no log.key"),
]


@pytest.mark.parametrize(
    ("case", "corrupt", "error", "message"), CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS]
)
def test_corrupted_log_refused(
    logdir: Path,
    case: str,
    corrupt: Callable[[Path], None],
    error: type[Exception],
    message: str,
) -> None:
    corrupt(logdir)
    before = (logdir / ENTRIES_FILE).read_bytes()
    with pytest.raises(error, match=message):
        TransparencyLog.open(logdir)
    # Never repaired: the file is exactly as the corruption left it.
    assert (logdir / ENTRIES_FILE).read_bytes() == before


def test_complete_record_beyond_checkpoint_is_kept(logdir: Path) -> None:
    """A crash after the record's fsync but before the checkpoint's leaves a whole record."""
    log = TransparencyLog.open(logdir)
    old_checkpoint = (logdir / CHECKPOINT_FILE).read_text()
    log.append(b"late")
    (logdir / CHECKPOINT_FILE).write_text(old_checkpoint)
    assert TransparencyLog.open(logdir).size == 6


def test_concurrent_writer_detected(logdir: Path) -> None:
    a = TransparencyLog.open(logdir)
    b = TransparencyLog.open(logdir)
    a.append(b"from a")
    with pytest.raises(VerificationError, match="changed since it was opened"):
        b.append(b"from b")


def test_bad_sizes(logdir: Path) -> None:
    log = TransparencyLog.open(logdir)
    with pytest.raises(ValueError, match="outside"):
        log.inclusion_proof(5)
    with pytest.raises(ValueError, match="outside"):
        log.consistency_proof(3, 9)
    with pytest.raises(IndexError):
        log.entry(5)
    assert log.consistency_proof(0, 5) == []


@pytest.mark.parametrize(
    ("skey", "message"),
    [
        ("nope", "PRIVATE\\+KEY"),
        ("PRIVATE+KEY+a+b", "form"),
        ("PRIVATE+KEY+a b+00000000+AQ==", "valid key name"),
        ("PRIVATE+KEY+a+00000000+!!", "base64"),
        ("PRIVATE+KEY+a+00000000+AQ==", "not an Ed25519"),
        ("PRIVATE+KEY+a+00000000+AQ" + "A" * 42 + "=", "hash does not match"),
    ],
)
def test_bad_signer_keys(skey: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_signer_key(skey)


# -- a copy without the signing key (a real CVM's provisioning disk) ------------------------------


def _copy_public(logdir: Path, into: Path) -> Path:
    into.mkdir()
    for name in (ENTRIES_FILE, CHECKPOINT_FILE, VKEY_FILE):
        (into / name).write_bytes((logdir / name).read_bytes())
    return into


def test_read_only_copy_serves_what_was_signed(logdir: Path, tmp_path: Path) -> None:
    signed = TransparencyLog.open(logdir)
    copy = _copy_public(logdir, tmp_path / "ro")
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    ro = TransparencyLog.open_readonly(copy)
    assert ro.read_only and not signed.read_only
    assert ro.size == 5 and ro.root() == signed.root()
    assert ro.checkpoint() == (logdir / CHECKPOINT_FILE).read_text()
    assert ro.verifier_key == signed.verifier_key
    assert ro.find(ENTRIES[2]) == 2
    verify_inclusion(2, 5, leaf_hash(ENTRIES[2]), ro.inclusion_proof(2), ro.root())
    assert ro.consistency_proof(3, 5) == signed.consistency_proof(3, 5)
    with pytest.raises(ParseError, match="read-only copy"):
        ro.append(b"more")
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before  # nothing written


def test_read_only_copy_leaves_out_entries_past_the_checkpoint(
    logdir: Path, tmp_path: Path
) -> None:
    old_checkpoint = (logdir / CHECKPOINT_FILE).read_text()
    TransparencyLog.open(logdir).append(b"unsigned here")
    copy = _copy_public(logdir, tmp_path / "ro")
    (copy / CHECKPOINT_FILE).write_text(old_checkpoint)
    ro = TransparencyLog.open_readonly(copy)
    assert ro.size == 5
    assert ro.find(b"unsigned here") is None


def _other_key_checkpoint(copy: Path) -> None:
    other = TransparencyLog.open(copy.parent / "other")
    for e in ENTRIES:
        other.append(e)
    (copy / CHECKPOINT_FILE).write_text(other.checkpoint())


def _edit_entry(copy: Path) -> None:
    raw = (copy / ENTRIES_FILE).read_bytes()
    (copy / ENTRIES_FILE).write_bytes(raw.replace(b'"release":3', b'"release":9'))


def _drop_signed_record(copy: Path) -> None:
    raw = (copy / ENTRIES_FILE).read_bytes()
    last = raw.rfind(b"OPTR")
    (copy / ENTRIES_FILE).write_bytes(raw[:last])


READ_ONLY_DAMAGE = [
    (
        "checkpoint signed by another key",
        _other_key_checkpoint,
        VerificationError,
        "no valid signature",
    ),
    ("entry edited", _edit_entry, VerificationError, "fails its checksum"),
    ("entry missing", _drop_signed_record, VerificationError, "checkpoint signed 5"),
    ("no verifier key", lambda c: (c / VKEY_FILE).unlink(), ParseError, "cannot read log.vkey"),
    ("no checkpoint", lambda c: (c / CHECKPOINT_FILE).unlink(), ParseError, "log.checkpoint"),
    ("garbled verifier key", lambda c: (c / VKEY_FILE).write_text("x+y"), ParseError, "verifier"),
]


@pytest.mark.parametrize(
    ("case", "damage", "error", "message"), READ_ONLY_DAMAGE, ids=[c[0] for c in READ_ONLY_DAMAGE]
)
def test_damaged_read_only_copy_is_refused(
    logdir: Path,
    tmp_path: Path,
    case: str,
    damage: Callable[[Path], object],
    error: type[Exception],
    message: str,
) -> None:
    copy = _copy_public(logdir, tmp_path / "ro")
    damage(copy)
    with pytest.raises(error, match=message):
        TransparencyLog.open_readonly(copy)


def _cut_as_hinted(logdir: Path) -> None:
    import re
    import subprocess

    with pytest.raises(ParseError) as info:
        TransparencyLog.open(logdir)
    match = re.search(r"`truncate -s (\d+) log.entries`", info.value.hint)
    assert match, info.value.hint
    subprocess.run(["truncate", "-s", match.group(1), str(logdir / ENTRIES_FILE)], check=True)


def test_an_interrupted_append_is_recovered_as_the_hint_says(logdir: Path) -> None:
    """A partial record after the signed ones (an append cut short): refused, never repaired
    by the log itself, with the exact byte count to cut back to; after that cut it opens."""
    signed = TransparencyLog.open(logdir).size
    _append_garbage(logdir)
    _cut_as_hinted(logdir)
    assert TransparencyLog.open(logdir).size == signed


def test_a_torn_signed_record_stays_refused_after_the_cut(logdir: Path) -> None:
    """If the torn record was signed, cutting it off is data loss, and the log says so."""
    _truncate(1)(logdir)
    _cut_as_hinted(logdir)
    with pytest.raises(VerificationError, match="its checkpoint signed"):
        TransparencyLog.open(logdir)


def test_concurrent_appends_never_share_a_checkpoint_temporary(logdir: Path) -> None:
    """Two appenders (two processes in real life) each write their own temporary checkpoint,
    under the entries lock, so neither tears nor rolls back the other's."""
    from cvm_boot.tlog import _write_atomic

    seen: list[str] = []
    real_open = os.open

    def spy(path: object, *args: object, **kw: object) -> int:
        if str(path).endswith(".tmp"):
            seen.append(str(path))
        return real_open(path, *args, **kw)  # type: ignore[arg-type]

    import cvm_boot.tlog as tlog_module

    mp = pytest.MonkeyPatch()
    mp.setattr(tlog_module.os, "open", spy)
    try:
        _write_atomic(logdir / "x", b"1")
        _write_atomic(logdir / "x", b"2")
    finally:
        mp.undo()
    assert len(seen) == 2 and seen[0] != seen[1]
    assert not list(logdir.glob("*.tmp"))


def test_a_failed_checkpoint_write_leaves_no_temporary(
    logdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cvm_boot import tlog as tlog_module

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tlog_module.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        tlog_module._write_atomic(logdir / "x", b"data")
    assert not list(logdir.glob("*.tmp")) and not (logdir / "x").exists()
