"""The real host's provisioning disk: public data only, read back and checked as the guest would.

Built with the host's mksquashfs and read back with unsquashfs (squashfs-tools); the negative
table plants one thing per row that a disk must never hold, or damages one thing a client checks.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from attest.errors import OpenPCCError, ParseError, VerificationError
from cvm_boot.image.provision import (
    HOST_FILES,
    provision_host,
    read_provisioning,
    read_provisioning_image,
)
from cvm_boot.manifest import canonical_json
from cvm_boot.tlog import TransparencyLog

pytestmark = pytest.mark.skipif(
    shutil.which("mksquashfs") is None or shutil.which("unsquashfs") is None,
    reason="squashfs-tools is not installed",
)


def _manifest(tee: str = "sev-snp", n: int = 0) -> bytes:
    return canonical_json({"tee": tee, "measurement": f"{n:02x}" * 48, "model": "m"})


@pytest.fixture
def released(tmp_path: Path) -> tuple[bytes, Path]:
    log = TransparencyLog.open(tmp_path / "log")
    log.append(_manifest(n=1))  # an older release: the proof is not trivial
    data = _manifest(n=2)
    log.append(data)
    log.append(_manifest(n=3))
    return data, tmp_path / "log"


def test_disk_holds_public_data_only_and_reads_back(
    released: tuple[bytes, Path], tmp_path: Path
) -> None:
    data, log_dir = released
    res = provision_host(data, log_dir, tmp_path / "prov")
    assert res.image.is_file() and res.log_index == 1 and res.tree_size == 3
    assert not (tmp_path / "prov" / "tree").exists()
    got = read_provisioning_image(res.image, tmp_path / "back")
    assert got.manifest_bytes == data
    assert got.tlog["index"] == 1 and got.tlog["tree_size"] == 3
    assert got.log_vkey == TransparencyLog.open(log_dir).verifier_key
    tree = tmp_path / "back" / "provision"
    files = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}
    assert files == HOST_FILES  # no log.key, no sim/
    key = (log_dir / "log.key").read_bytes().strip()
    for p in tree.rglob("*"):
        if p.is_file():
            assert key not in p.read_bytes() and b"PRIVATE" not in p.read_bytes()
    # The same inputs give the same disk, byte for byte.
    again = provision_host(data, log_dir, tmp_path / "prov2")
    assert again.image.read_bytes() == res.image.read_bytes()


def test_simulated_or_unlogged_releases_are_refused(
    released: tuple[bytes, Path], tmp_path: Path
) -> None:
    _, log_dir = released
    with pytest.raises(ParseError, match="simulated release"):
        provision_host(_manifest("sim-sev-snp"), log_dir, tmp_path / "p")
    with pytest.raises(LookupError, match="not in the transparency log"):
        provision_host(_manifest(n=9), log_dir, tmp_path / "p")
    with pytest.raises(ParseError, match="canonical"):
        provision_host(json.dumps(json.loads(_manifest(n=2)), indent=1).encode(), log_dir, tmp_path)


def _plant_key(tree: Path) -> None:
    shutil.copyfile(tree.parent.parent / "log" / "log.key", tree / "log" / "log.key")


def _key_in_allowed_name(tree: Path) -> None:
    (tree / "log" / "log.vkey").write_text("PRIVATE+KEY+openpcc.appliance/log+00+AA\n")


def _sim_dir(tree: Path) -> None:
    (tree / "sim" / "snp").mkdir(parents=True)
    (tree / "sim" / "snp" / "ark.pem").write_text("x")


def _link(tree: Path) -> None:
    (tree / "manifest.json").unlink()
    (tree / "manifest.json").symlink_to("/etc/passwd")


def _other_manifest(tree: Path) -> None:
    (tree / "manifest.json").write_bytes(_manifest(n=3) + b"\n")  # logged, but at index 2


def _sim_manifest(tree: Path) -> None:
    (tree / "manifest.json").write_bytes(_manifest("sim-sev-snp", 2) + b"\n")


def _bad_proof(tree: Path) -> None:
    tlog = json.loads((tree / "tlog.json").read_text())
    tlog["inclusion"][0] = "00" * 32
    (tree / "tlog.json").write_bytes(canonical_json(tlog) + b"\n")


def _foreign_key(tree: Path) -> None:
    other = TransparencyLog.open(tree.parent / "other-log")
    (tree / "log" / "log.vkey").write_text(other.verifier_key + "\n")


def _missing_tlog(tree: Path) -> None:
    (tree / "tlog.json").unlink()


MUTATIONS: list[tuple[str, Callable[[Path], None], type[OpenPCCError], str]] = [
    ("log signing key", _plant_key, ParseError, r"unexpected log/log\.key"),
    ("key in an allowed file", _key_in_allowed_name, ParseError, "holds key material"),
    ("simulation keys", _sim_dir, ParseError, "unexpected sim/snp/ark.pem"),
    ("a link", _link, ParseError, "is a link"),
    ("another release's manifest", _other_manifest, VerificationError, "tlog-inclusion"),
    ("simulated manifest", _sim_manifest, ParseError, "simulated release"),
    ("damaged proof", _bad_proof, VerificationError, "tlog-inclusion"),
    ("another log's key", _foreign_key, VerificationError, "tlog-checkpoint"),
    ("missing tlog.json", _missing_tlog, ParseError, r"missing tlog\.json"),
]


@pytest.mark.parametrize(
    ("case", "mutate", "error", "message"), MUTATIONS, ids=[m[0] for m in MUTATIONS]
)
def test_reading_back_refuses_what_could_weaken_verification(
    released: tuple[bytes, Path],
    tmp_path: Path,
    case: str,
    mutate: Callable[[Path], None],
    error: type[OpenPCCError],
    message: str,
) -> None:
    data, log_dir = released
    res = provision_host(data, log_dir, tmp_path / "prov")
    read_provisioning_image(res.image, tmp_path / "back")
    tree = tmp_path / "back" / "provision"
    mutate(tree)
    with pytest.raises(error, match=message):
        read_provisioning(tree)


def test_simulated_disk_keeps_its_keys_private(tmp_path: Path) -> None:
    """The simulated disk carries the log signing key and simulated evidence keys: the image,
    its folder and every file in it are owner-only (they were 0644 inside a 0644 image)."""
    import os
    import stat
    import subprocess

    from cvm_boot.image.provision import provision_simulated

    build = tmp_path / "build"
    build.mkdir()
    (build / "manifest.json").write_text(
        '{"tee": "sim-sev-snp", "measurement": "' + "00" * 48 + '"}'
    )
    old = os.umask(0o022)
    try:
        result = provision_simulated(build, tmp_path / "out" / "vm")
    finally:
        os.umask(old)
    assert stat.S_IMODE(result.image.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "out" / "vm").stat().st_mode) == 0o700
    listing = subprocess.run(
        ["unsquashfs", "-lln", str(result.image)], capture_output=True, text=True, check=True
    ).stdout
    entries = [line.split()[0] for line in listing.splitlines() if line[:1] in "-d"]
    assert entries and all(e in ("-rw-------", "drwx------") for e in entries), listing
    assert "log.key" in listing
