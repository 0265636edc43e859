"""The checkpoint store under several writers: the stored tree never shrinks, a file is never torn.

``openpcc proxy`` and ``openpcc chat`` may share one store; each verified a checkpoint against what
it read earlier (``last``), so the store replaces only exactly that: a checkpoint stored by another
process meanwhile was never proved consistent with this one, and that verification must be redone.
"""

from __future__ import annotations

import fcntl
import os
import random
import stat
import threading
from pathlib import Path

import pytest

from attest import tlog
from attest.errors import VerificationError
from client_cli.trust import FileCheckpointStore
from cvm_boot.tlog import TransparencyLog

SIZES = 10


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Signed checkpoints of one log at sizes 1..SIZES, and a fork of size 3 under the same key."""
    base = tmp_path_factory.mktemp("store-logs")
    log = TransparencyLog.open(base / "log")
    keys = [tlog.VerifierKey.parse(log.verifier_key)]
    by_size: dict[int, tlog.Checkpoint] = {}
    for i in range(SIZES):
        log.append(f"release {i}".encode())
        by_size[log.size] = tlog.open_checkpoint(log.checkpoint(), keys)
    signer = (base / "log" / "log.key").read_text().strip()
    fork = TransparencyLog.open(base / "fork", signer_key=signer)
    for data in (b"release 0", b"release 1", b"another release 2"):
        fork.append(data)
    return {
        "keys": keys,
        "by_size": by_size,
        "fork3": tlog.open_checkpoint(fork.checkpoint(), keys),
    }


def _store(directory: Path, checkpoints: dict[str, object]) -> FileCheckpointStore:
    keys = checkpoints["keys"]
    assert isinstance(keys, list)
    return FileCheckpointStore(directory, keys)


def _cp(checkpoints: dict[str, object], size: int) -> tlog.Checkpoint:
    by_size = checkpoints["by_size"]
    assert isinstance(by_size, dict)
    cp = by_size[size]
    assert isinstance(cp, tlog.Checkpoint)
    return cp


def _stored_size(store: FileCheckpointStore, origin: str) -> int | None:
    cp = store.last(origin)
    return None if cp is None else cp.size


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_a_save_over_a_checkpoint_stored_meanwhile_is_refused(
    tmp_path: Path, checkpoints: dict[str, object]
) -> None:
    proxy, chat = _store(tmp_path, checkpoints), _store(tmp_path, checkpoints)
    cp3, cp5, cp7 = (_cp(checkpoints, n) for n in (3, 5, 7))
    # Both read nothing, verified, then saved: the second never saw the first's checkpoint.
    assert proxy.last(cp5.origin) is None and chat.last(cp3.origin) is None
    proxy.save(cp5)
    with pytest.raises(VerificationError, match="another client process stored") as info:
        chat.save(cp3)
    assert info.value.check == "transparency-log" and "verify again" in info.value.hint
    assert _stored_size(_store(tmp_path, checkpoints), cp5.origin) == 5  # never shrinks
    # Verified again, against what is stored now: saved.
    assert chat.last(cp7.origin) == cp5
    chat.save(cp7)
    assert _stored_size(proxy, cp7.origin) == 7
    chat.save(cp7)  # the same again: nothing changes
    assert proxy.last(cp7.origin) == cp7
    assert _leftovers(tmp_path) == []


def test_the_same_size_with_another_root_is_refused_as_a_fork(
    tmp_path: Path, checkpoints: dict[str, object]
) -> None:
    store = _store(tmp_path, checkpoints)
    cp3 = _cp(checkpoints, 3)
    fork3 = checkpoints["fork3"]
    assert isinstance(fork3, tlog.Checkpoint) and fork3.size == 3 and fork3.origin == cp3.origin
    store.save(cp3)
    with pytest.raises(VerificationError, match="log forked") as info:
        _store(tmp_path, checkpoints).save(fork3)
    assert info.value.check == "transparency-log"
    assert store.last(cp3.origin) == cp3


def test_a_crash_between_write_and_replace_leaves_the_old_file(
    tmp_path: Path, checkpoints: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path, checkpoints)
    cp3, cp5 = _cp(checkpoints, 3), _cp(checkpoints, 5)
    store.save(cp3)
    [path] = [p for p in tmp_path.iterdir() if p.suffix == ".txt"]
    before = path.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(VerificationError, match="cannot store the checkpoint") as info:
        store.save(cp5)
    assert "simulated crash" in str(info.value) and "free space" in info.value.hint
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert store.last(cp3.origin) == cp3
    assert _leftovers(tmp_path) == []
    store.save(cp5)  # and the store is not wedged
    assert _stored_size(store, cp5.origin) == 5


def test_the_stored_file_is_private(tmp_path: Path, checkpoints: dict[str, object]) -> None:
    store = _store(tmp_path / "checkpoints", checkpoints)
    store.save(_cp(checkpoints, 1))
    [path] = (tmp_path / "checkpoints").glob("*.txt")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_save_waits_for_the_lock_another_process_holds(
    tmp_path: Path, checkpoints: dict[str, object]
) -> None:
    store = _store(tmp_path, checkpoints)
    store.save(_cp(checkpoints, 2))
    # An flock on a separate open of the lock file excludes like another process's would.
    fd = os.open(tmp_path / FileCheckpointStore.LOCK_NAME, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    done = threading.Event()

    def save_four() -> None:
        store.save(_cp(checkpoints, 4))
        done.set()

    writer = threading.Thread(target=save_four)
    try:
        writer.start()
        assert not done.wait(0.3)
        assert _stored_size(store, _cp(checkpoints, 2).origin) == 2
    finally:
        os.close(fd)
    assert done.wait(10)
    writer.join(10)
    assert _stored_size(store, _cp(checkpoints, 4).origin) == 4


def test_concurrent_saves_from_threads_do_not_corrupt(
    tmp_path: Path, checkpoints: dict[str, object]
) -> None:
    origin = _cp(checkpoints, 1).origin
    errors: list[BaseException] = []
    retries: list[int] = []
    seen: list[list[int]] = [[], []]
    stop = threading.Event()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        store = _store(tmp_path, checkpoints)  # one per "process"
        order = [n for n in range(1, SIZES + 1) for _ in range(4)]
        rng.shuffle(order)
        try:
            for n in order:
                # As the verifier does: read, (prove n consistent with it), save; when another
                # writer stored meanwhile, verify again against that.
                while (size := _stored_size(store, origin) or 0) < n:
                    try:
                        store.save(_cp(checkpoints, n))
                    except VerificationError as e:
                        if "another client process stored" not in str(e):
                            raise
                        retries.append(size)
        except BaseException as e:  # reported below, with the thread's failure
            errors.append(e)

    def reader(sizes: list[int]) -> None:
        store = _store(tmp_path, checkpoints)
        try:
            while not stop.is_set():
                size = _stored_size(store, origin)
                if size is not None:
                    sizes.append(size)
        except BaseException as e:
            errors.append(e)

    readers = [threading.Thread(target=reader, args=(sizes,)) for sizes in seen]
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join(60)
    stop.set()
    for t in readers:
        t.join(60)
    assert errors == []
    assert _stored_size(_store(tmp_path, checkpoints), origin) == SIZES
    # Each reader saw whole, verifying notes only, and a stored size that never went backwards.
    for sizes in seen:
        assert sizes == sorted(sizes)
    assert _leftovers(tmp_path) == []


def test_file_system_failures_are_one_line_verification_errors(
    tmp_path: Path, checkpoints: dict[str, object]
) -> None:
    store = _store(tmp_path, checkpoints)
    cp = _cp(checkpoints, 1)
    store.save(cp)
    [path] = [p for p in tmp_path.iterdir() if p.suffix == ".txt"]
    path.unlink()
    path.mkdir()  # reading it now fails in the OS, not in the parser
    with pytest.raises(VerificationError, match="cannot read the checkpoint") as info:
        store.last(cp.origin)
    assert info.value.check == "transparency-log" and "\n" not in str(info.value)
