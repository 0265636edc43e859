"""The sealed root's PID 1 copies only allowed plain files from the host's provisioning disk.

The disk is not measured: a host could put anything on it. Nothing it holds may become code in
the CVM (a ``.pth`` under a home's site-packages, a compiler cache), so the guest copies the
allowed names alone, as regular files, and gives the gateway and engine an empty home.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cvm_boot.image import supervise


def _disk(root: Path) -> Path:
    files = {
        "manifest.json": b"{}",
        "tlog.json": b"{}",
        "log/log.entries": b"e",
        "log/log.checkpoint": b"c",
        "log/log.vkey": b"v",
        "sim/snp/vcek.pem": b"p",
        "sim/gpu/device.key": b"k",
        # what a hostile host adds:
        ".local/lib/python3.11/site-packages/evil.pth": b"import os; os.system('x')",
        ".cache/vllm/torch_compile_cache/x.so": b"\x7fELF",
        "sim/snp/nested/deeper.pem": b"n",
        "manifest.json.bak": b"{}",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "log" / "linked").symlink_to("/etc/passwd")
    (root / "tlog.json").unlink()
    (root / "tlog.json").symlink_to(root / "manifest.json")  # an allowed name, but a link
    return root


def test_only_allowed_plain_files_are_copied(tmp_path: Path) -> None:
    source = _disk(tmp_path / "provision")
    target = tmp_path / "state"
    skipped = supervise.copy_provisioning(str(source), str(target))
    copied = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert copied == [
        "log/log.checkpoint",
        "log/log.entries",
        "log/log.vkey",
        "manifest.json",
        "sim/gpu/device.key",
        "sim/snp/vcek.pem",
    ]
    assert set(skipped) == {
        ".local/lib/python3.11/site-packages/evil.pth",
        ".cache/vllm/torch_compile_cache/x.so",
        "sim/snp/nested/deeper.pem",
        "manifest.json.bak",
        "log/linked",
        "tlog.json",
    }
    for path in target.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_oversized_files_are_left_behind(tmp_path: Path, monkeypatch: object) -> None:
    import pytest

    mp = pytest.MonkeyPatch()
    mp.setattr(supervise, "MAX_FILE", 4)
    try:
        source = tmp_path / "p"
        source.mkdir()
        (source / "manifest.json").write_bytes(b"12345")
        assert supervise.copy_provisioning(str(source), str(tmp_path / "s")) == ["manifest.json"]
    finally:
        mp.undo()


def test_the_gateway_gets_an_empty_home_and_no_user_site() -> None:
    env = supervise.ENV
    assert env["HOME"] == supervise.HOME and not env["HOME"].startswith(supervise.STATE)
    assert env["PYTHONNOUSERSITE"] == "1"
    assert all(env[k].startswith(supervise.HOME) for k in env if k.startswith("XDG_"))
    assert "-I" in supervise.GATEWAY
    assert os.path.basename(supervise.GATEWAY[0]).startswith("python3")


def test_a_fifo_at_an_allowed_name_never_blocks_boot(tmp_path: Path) -> None:
    source = tmp_path / "p"
    source.mkdir()
    os.mkfifo(source / "manifest.json")
    assert supervise.copy_provisioning(str(source), str(tmp_path / "s")) == ["manifest.json"]


def test_copying_is_bounded_in_bytes_and_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervise, "MAX_TOTAL", 5)
    source = tmp_path / "p"
    (source / "log").mkdir(parents=True)
    (source / "log" / "log.entries").write_bytes(b"1234")
    (source / "manifest.json").write_bytes(b"56")  # copied first (top level), then 2 + 4 > 5
    skipped = supervise.copy_provisioning(str(source), str(tmp_path / "s"))
    assert skipped == ["log/log.entries"]
    monkeypatch.setattr(supervise, "MAX_ENTRIES", 3)
    for i in range(5):
        (source / f"junk{i}").write_bytes(b"")
    skipped = supervise.copy_provisioning(str(source), str(tmp_path / "t"))
    assert skipped[-1] == "(everything after 3 entries)"


def test_every_file_a_real_host_provisions_is_allowed_in_the_guest() -> None:
    from cvm_boot.image.provision import HOST_FILES

    for rel in HOST_FILES:
        assert any(p.fullmatch(rel) for p in supervise.ALLOWED), rel
