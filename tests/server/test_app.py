"""The gateway's view of the release log, from the host's log or a CVM's read-only copy."""

from __future__ import annotations

from pathlib import Path

from attest.tlog import VerifierKey, leaf_hash, open_checkpoint, verify_inclusion
from cvm_boot.manifest import canonical_json
from cvm_boot.tlog import CHECKPOINT_FILE, ENTRIES_FILE, VKEY_FILE, TransparencyLog, bundle_entry
from server.app import _ReloadingLog

MANIFEST = {"format": "openpcc-manifest/1", "measurement": "00" * 48, "name": "test"}


def test_a_log_copy_without_its_key_is_served_as_signed(tmp_path: Path) -> None:
    data = canonical_json(MANIFEST)
    host = TransparencyLog.open(tmp_path / "host")
    host.append(b"an earlier release")
    host.append(data)
    disk = tmp_path / "provision" / "log"
    disk.mkdir(parents=True)
    for name in (ENTRIES_FILE, CHECKPOINT_FILE, VKEY_FILE):
        (disk / name).write_bytes((host.directory / name).read_bytes())
    before = {p.name: p.read_bytes() for p in disk.iterdir()}
    view = _ReloadingLog(disk, data).view()
    entry = view.entry()
    assert entry == bundle_entry(host, data)
    cp = open_checkpoint(str(entry["checkpoint"]), [VerifierKey.parse(host.verifier_key)])
    proof = [bytes.fromhex(h) for h in entry["inclusion"]]  # type: ignore[attr-defined]
    verify_inclusion(1, cp.size, leaf_hash(data), proof, cp.root_hash)
    assert view.checkpoint() == host.checkpoint()
    assert view.consistency(1, 2) == host.consistency_proof(1, 2)
    # Mounted read-only in the CVM: serving it wrote nothing (no key, no vkey, no checkpoint).
    assert {p.name: p.read_bytes() for p in disk.iterdir()} == before
