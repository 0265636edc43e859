"""``GET /v1/attestation`` under a flood: a bounded line for fresh evidence, busy beyond it, a
timeout that answers instead of hanging, and the cached nonce-less bundle never held up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from server.attestation import BundleBuilder
from server.config import GatewayConfig
from server.engines import EngineSpec, EngineSupervisor
from server.gateway import GatewayState, LogView, create_app
from server.keys import KeyRing
from tests.server.fake_evidence import FakeCpuProvider, GatedGpuProvider

MANIFEST = {"format": "openpcc-manifest/1", "measurement": "00" * 48, "note": "FAKE manifest"}


@dataclass
class Node:
    state: GatewayState
    gpu: GatedGpuProvider


def _node(**config: Any) -> Node:
    gpu = GatedGpuProvider()
    keys = KeyRing()
    tlog = {"index": 0, "tree_size": 1, "inclusion": [], "checkpoint": "FAKE"}
    bundles = BundleBuilder(
        cpu=FakeCpuProvider(), gpu=gpu, keys=keys, manifest=MANIFEST, tlog_entry=lambda: tlog
    )
    bundles.build(None)  # as the gateway does at start: the nonce-less bundle is cached
    gpu.started = gpu.most_at_once = 0  # the tests count what clients ask for
    state = GatewayState(
        config=GatewayConfig(**config),
        keys=keys,
        bundles=bundles,
        engine=EngineSupervisor(EngineSpec(kind="embedded")),
        log=LogView(entry=lambda: tlog, checkpoint=lambda: "FAKE", consistency=lambda a, b: []),
    )
    return Node(state, gpu)


@pytest.fixture
def nodes() -> Iterator[Callable[..., Node]]:
    made: list[Node] = []

    def make(**config: Any) -> Node:
        made.append(_node(**config))
        return made[-1]

    yield make
    for node in made:  # no evidence thread outlives its test
        node.gpu.gate.set()


def _run(test: Callable[[httpx.AsyncClient], Coroutine[Any, Any, None]], node: Node) -> None:
    async def go() -> None:
        transport = httpx.ASGITransport(app=create_app(node.state))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            await test(c)

    asyncio.run(go())


def _nonce(i: int) -> str:
    return f"{i:064x}"


async def _attest(c: httpx.AsyncClient, nonce: str | None) -> httpx.Response:
    return await c.get("/v1/attestation", params={"nonce": nonce} if nonce is not None else None)


async def _metric(c: httpx.AsyncClient, name: str) -> float:
    for line in (await c.get("/metrics")).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def _until(cond: Callable[[], Awaitable[bool]], what: str) -> None:
    """Yield to the event loop until ``cond``; the deadline only ends a broken test."""
    deadline = time.monotonic() + 2
    while not await cond():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.001)


def _assert_busy(r: httpx.Response) -> None:
    assert r.status_code == 503
    assert r.text == "busy"
    assert r.headers["retry-after"] == "1"
    assert r.headers["cache-control"] == "no-store"


def test_beyond_the_limit_is_busy_at_once_and_the_slots_come_back(
    nodes: Callable[..., Node],
) -> None:
    node = nodes(max_attestation_waiting=2)

    async def test(c: httpx.AsyncClient) -> None:
        node.gpu.gate.clear()
        held = [asyncio.create_task(_attest(c, _nonce(i))) for i in (1, 2)]

        async def both_admitted() -> bool:
            return await _metric(c, "openpcc_attestation_waiting") == 2

        await _until(both_admitted, "both requests admitted")
        # (a) refused while the two admitted ones are still held at the gate: nothing waited.
        for i in (3, 4, 5):
            _assert_busy(await _attest(c, _nonce(i)))
        assert node.gpu.started == 1 and not any(t.done() for t in held)
        # (b) the held ones are answered once the hardware answers; their slots come back.
        node.gpu.gate.set()
        for i, r in zip((1, 2), await asyncio.gather(*held), strict=True):
            assert r.status_code == 200 and r.json()["nonce"] == _nonce(i)
        assert await _metric(c, "openpcc_attestation_waiting") == 0
        r = await _attest(c, _nonce(6))
        assert r.status_code == 200 and r.json()["nonce"] == _nonce(6)
        # Serialized: never two hardware requests at once.
        assert node.gpu.started == 3 and node.gpu.most_at_once == 1

    _run(test, node)


def test_the_cached_bundle_is_served_while_a_slow_build_runs(nodes: Callable[..., Node]) -> None:
    node = nodes(max_attestation_waiting=1)

    async def test(c: httpx.AsyncClient) -> None:
        node.gpu.gate.clear()
        slow = asyncio.create_task(_attest(c, _nonce(1)))

        async def running() -> bool:
            return node.gpu.running == 1

        await _until(running, "the nonce'd build reached the hardware")
        r = await _attest(c, None)
        assert r.status_code == 200 and r.json()["nonce"] is None
        assert node.gpu.running == 1 and not slow.done()  # answered past the build, not after
        node.gpu.gate.set()
        assert (await slow).status_code == 200

    _run(test, node)


def test_a_stale_nonceless_bundle_needs_a_slot_like_a_nonced_one(
    nodes: Callable[..., Node],
) -> None:
    """After a rotation the nonce-less bundle is rebuilt from the hardware: bounded too."""
    node = nodes(max_attestation_waiting=1)

    async def test(c: httpx.AsyncClient) -> None:
        node.gpu.gate.clear()
        slow = asyncio.create_task(_attest(c, _nonce(1)))

        async def admitted() -> bool:
            return await _metric(c, "openpcc_attestation_waiting") == 1

        await _until(admitted, "the nonce'd request admitted")
        node.state.keys.rotate()
        _assert_busy(await _attest(c, None))
        node.gpu.gate.set()
        assert (await slow).status_code == 200
        r = await _attest(c, None)
        assert r.status_code == 200
        key_id = r.json()["key_config"]
        assert key_id == (node.state.bundles.cached() or {})["key_config"]

    _run(test, node)


def test_a_timed_out_build_keeps_its_slot_until_the_hardware_answers(
    nodes: Callable[..., Node],
) -> None:
    node = nodes(max_attestation_waiting=1, attestation_timeout_s=0.05)

    async def test(c: httpx.AsyncClient) -> None:
        node.gpu.gate.clear()
        r = await _attest(c, _nonce(1))
        assert r.status_code == 503
        assert r.text == "unavailable: evidence was not produced in time"
        assert await _metric(c, "openpcc_attestation_timeouts_total") == 1
        # The hardware call cannot be interrupted: it still runs, and still holds the slot.
        assert node.gpu.running == 1
        assert await _metric(c, "openpcc_attestation_waiting") == 1
        _assert_busy(await _attest(c, _nonce(2)))
        node.gpu.gate.set()

        async def released() -> bool:
            return await _metric(c, "openpcc_attestation_waiting") == 0

        await _until(released, "the slot released when the build finished")
        r = await _attest(c, _nonce(3))
        assert r.status_code == 200 and r.json()["nonce"] == _nonce(3)
        assert await _metric(c, "openpcc_attestation_waiting") == 0

    _run(test, node)


def test_a_timed_out_request_still_in_line_is_dropped_and_frees_its_slot(
    nodes: Callable[..., Node],
) -> None:
    node = nodes(max_attestation_waiting=2, attestation_timeout_s=0.05)

    async def test(c: httpx.AsyncClient) -> None:
        node.gpu.gate.clear()
        first = asyncio.create_task(_attest(c, _nonce(1)))

        async def running() -> bool:
            return node.gpu.running == 1

        await _until(running, "the first build reached the hardware")
        second = await _attest(c, _nonce(2))  # in line behind the first, never started
        assert second.status_code == 503
        assert (await first).status_code == 503
        # The running build holds its slot; the one that never started gave its slot back.
        assert await _metric(c, "openpcc_attestation_waiting") == 1
        node.gpu.gate.set()

        async def released() -> bool:
            return await _metric(c, "openpcc_attestation_waiting") == 0

        await _until(released, "the running build finished")
        assert node.gpu.started == 1  # the dropped one never asked the hardware
        assert await _metric(c, "openpcc_attestation_timeouts_total") == 2

    _run(test, node)


def test_failed_evidence_is_unavailable_and_frees_its_slot(nodes: Callable[..., Node]) -> None:
    node = nodes(max_attestation_waiting=1)

    async def test(c: httpx.AsyncClient) -> None:
        node.gpu.fail = True
        r = await _attest(c, _nonce(1))
        assert r.status_code == 503
        assert r.text == "unavailable: evidence could not be produced (TransportError)"
        assert await _metric(c, "openpcc_attestation_waiting") == 0
        node.gpu.fail = False
        assert (await _attest(c, _nonce(2))).status_code == 200

    _run(test, node)


def test_busy_refusals_are_counted_without_labels(nodes: Callable[..., Node]) -> None:
    node = nodes(max_attestation_waiting=1)

    async def test(c: httpx.AsyncClient) -> None:
        assert await _metric(c, "openpcc_attestation_busy_total") == 0
        node.gpu.gate.clear()
        held = asyncio.create_task(_attest(c, _nonce(1)))

        async def admitted() -> bool:
            return await _metric(c, "openpcc_attestation_waiting") == 1

        await _until(admitted, "the first request admitted")
        for i in range(2, 5):
            _assert_busy(await _attest(c, _nonce(i)))
        text = (await c.get("/metrics")).text
        assert "# TYPE openpcc_attestation_busy_total counter" in text
        assert "openpcc_attestation_busy_total 3" in text.splitlines()
        # Refusals are not ohttp outcomes, and nothing about the client is in a label.
        assert 'openpcc_requests_total{outcome="busy"} 0' in text.splitlines()
        assert _nonce(2) not in text
        node.gpu.gate.set()
        assert (await held).status_code == 200
        assert await _metric(c, "openpcc_attestation_busy_total") == 3

    _run(test, node)
