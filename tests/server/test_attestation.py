"""BundleBuilder and EvidenceLine: one hardware request at a time, a cache that never waits for
it, and a bounded line whose slots follow the builds, not the requests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import pytest

from server.attestation import BundleBuilder, EvidenceLine
from server.keys import KeyRing
from tests.server.fake_evidence import FakeCpuProvider, GatedGpuProvider

MANIFEST = {"format": "openpcc-manifest/1", "measurement": "00" * 48, "note": "FAKE manifest"}
TLOG = {"index": 0, "tree_size": 1, "inclusion": [], "checkpoint": "FAKE"}


@pytest.fixture
def gpu() -> Iterator[GatedGpuProvider]:
    provider = GatedGpuProvider()
    yield provider
    provider.gate.set()  # no thread outlives its test


@pytest.fixture
def keys() -> KeyRing:
    return KeyRing()


@pytest.fixture
def builder(gpu: GatedGpuProvider, keys: KeyRing) -> BundleBuilder:
    return BundleBuilder(
        cpu=FakeCpuProvider(), gpu=gpu, keys=keys, manifest=MANIFEST, tlog_entry=lambda: TLOG
    )


def _until_running(gpu: GatedGpuProvider) -> None:
    """Wait (bounded) until a build is held at the fake GPU's gate."""
    for _ in range(2000):
        if gpu.running:
            return
        time.sleep(0.001)
    raise AssertionError("no build reached the hardware")


def _in_thread(
    fn: Callable[..., dict[str, object]], *args: object
) -> tuple[threading.Thread, list[dict[str, object]]]:
    out: list[dict[str, object]] = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    return t, out


def test_builds_ask_the_hardware_one_at_a_time(
    builder: BundleBuilder, gpu: GatedGpuProvider
) -> None:
    gpu.gate.clear()
    started = [_in_thread(builder.build, bytes([i]) * 32) for i in range(4)]
    _until_running(gpu)
    gpu.gate.set()
    for t, _ in started:
        t.join(5)
    assert gpu.started == 4 and gpu.most_at_once == 1
    assert sorted(str(out[0]["nonce"]) for _, out in started) == [
        (bytes([i]) * 32).hex() for i in range(4)
    ]


def test_the_cached_bundle_does_not_wait_for_a_build(
    builder: BundleBuilder, gpu: GatedGpuProvider
) -> None:
    cached = builder.build(None)
    gpu.gate.clear()
    holder, _ = _in_thread(builder.build, b"\x01" * 32)
    _until_running(gpu)
    assert builder.build(None) is cached
    assert builder.cached() is cached
    assert gpu.running == 1 and holder.is_alive()  # returned while the build was still held
    gpu.gate.set()
    holder.join(5)


def test_nonceless_requests_behind_a_rebuild_share_it(
    builder: BundleBuilder, gpu: GatedGpuProvider
) -> None:
    gpu.gate.clear()
    assert builder.cached() is None
    calls = [_in_thread(builder.build, None) for _ in range(3)]
    _until_running(gpu)
    gpu.gate.set()
    for t, _ in calls:
        t.join(5)
    first = calls[0][1][0]
    assert all(out[0] is first for _, out in calls)
    assert gpu.started == 1


def test_a_rotation_during_a_build_does_not_cache_the_old_key_as_current(
    builder: BundleBuilder, gpu: GatedGpuProvider, keys: KeyRing
) -> None:
    gpu.gate.clear()
    holder, out = _in_thread(builder.build, None)
    _until_running(gpu)  # the key configuration is already read
    keys.rotate()
    gpu.gate.set()
    holder.join(5)
    old = out[0]
    assert builder.cached() is None
    fresh = builder.build(None)
    assert fresh["key_config"] != old["key_config"]
    assert builder.cached() is fresh


def _done(future: Future[dict[str, object]]) -> threading.Event:
    """Set after the line's own callback (callbacks run in the order they were added)."""
    event = threading.Event()
    future.add_done_callback(lambda _: event.set())
    return event


def test_the_line_refuses_beyond_its_limit_and_frees_slots_when_builds_finish(
    builder: BundleBuilder, gpu: GatedGpuProvider
) -> None:
    line = EvidenceLine(builder, 2)
    gpu.gate.clear()
    first, second = line.submit(b"\x01" * 32), line.submit(b"\x02" * 32)
    assert first is not None and second is not None
    assert line.submit(b"\x03" * 32) is None
    assert line.waiting == 2
    done = _done(second)
    gpu.gate.set()
    assert done.wait(5)
    assert line.waiting == 0
    assert gpu.most_at_once == 1
    line.shutdown()


def test_a_build_cancelled_before_it_starts_frees_its_slot_at_once(
    builder: BundleBuilder, gpu: GatedGpuProvider
) -> None:
    line = EvidenceLine(builder, 2)
    gpu.gate.clear()
    running = line.submit(b"\x01" * 32)
    queued = line.submit(b"\x02" * 32)
    assert running is not None and queued is not None
    _until_running(gpu)
    assert not running.cancel()  # a hardware call cannot be taken back
    assert queued.cancel()
    assert line.waiting == 1
    done = _done(running)
    gpu.gate.set()
    assert done.wait(5)
    assert line.waiting == 0 and gpu.started == 1
    line.shutdown()


def test_a_failed_build_frees_its_slot(builder: BundleBuilder, gpu: GatedGpuProvider) -> None:
    line = EvidenceLine(builder, 1)
    gpu.fail = True
    future = line.submit(b"\x01" * 32)
    assert future is not None
    assert _done(future).wait(5)
    assert future.exception() is not None
    assert line.waiting == 0
    line.shutdown()


def test_shutdown_drops_queued_builds(builder: BundleBuilder, gpu: GatedGpuProvider) -> None:
    line = EvidenceLine(builder, 2)
    gpu.gate.clear()
    running, queued = line.submit(b"\x01" * 32), line.submit(b"\x02" * 32)
    assert running is not None and queued is not None
    _until_running(gpu)
    line.shutdown()
    assert queued.cancelled() and line.waiting == 1
    done = _done(running)
    gpu.gate.set()
    assert done.wait(5)
    assert line.waiting == 0


def test_a_line_needs_room_for_one(builder: BundleBuilder) -> None:
    with pytest.raises(ValueError, match="limit >= 1, not 0"):
        EvidenceLine(builder, 0)
