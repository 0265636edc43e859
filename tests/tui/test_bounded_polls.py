"""The dashboard's polls read bounded bytes, as they arrive, and never a compressed body."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from attest import tlog
from client_cli.session import MAX_PROOF_BYTES
from client_cli.trust import TrustStore
from cvm_boot.tlog import TransparencyLog
from tui.app import MAX_CHECKPOINT, MAX_HEALTHZ, MAX_METRICS, DashboardApp

pytestmark = pytest.mark.anyio

URL = "http://node.test"
PIECE = 16 * 1024
HEALTH = {"status": "ok", "tee": "sim-sev-snp", "engine": {"state": "ready"}, "key_id": 1}


class Endless:
    """A body that never ends; counts the pieces pulled."""

    def __init__(self) -> None:
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            self.pulled += 1
            yield b"x" * PIECE


class Node:
    """FAKE gateway endpoints for the dashboard's polls; one of them can be made to misbehave."""

    def __init__(self, base: Path) -> None:
        self.log = TransparencyLog.open(base / "log")
        for i in range(3):
            self.log.append(f"release {i}".encode())
        self.keys = [tlog.VerifierKey.parse(self.log.verifier_key)]
        self.requests: list[httpx.Request] = []
        self.broken: dict[str, Callable[[], httpx.Response]] = {}

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path in self.broken:
            return self.broken[path]()
        if path == "/healthz":
            return httpx.Response(200, json=HEALTH)
        if path == "/metrics":
            return httpx.Response(200, text="openpcc_key_id 1\n")
        if path == "/v1/log/checkpoint":
            return httpx.Response(200, text=self.log.checkpoint())
        if path == "/v1/log/consistency":
            a, b = int(request.url.params["from"]), int(request.url.params["to"])
            return httpx.Response(
                200, json={"proof": [h.hex() for h in self.log.consistency_proof(a, b)]}
            )
        return httpx.Response(404)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "node")


async def _poll(node: Node, tmp_path: Path, *, earlier: tlog.Checkpoint | None) -> DashboardApp:
    store = TrustStore(tmp_path / "config")
    store.add_log_key(node.log.verifier_key)
    app = DashboardApp(URL, store=store, live=False)
    async with app.run_test(size=(100, 32)):
        app._last_cp = earlier
        async with httpx.AsyncClient(transport=httpx.MockTransport(node.handle)) as http:
            await app.poll_once(http)
    return app


def _earlier(tmp_path: Path, node: Node) -> tlog.Checkpoint:
    """A checkpoint of the same log at size 1, as if seen before the log grew to 3."""
    one = TransparencyLog.open(
        tmp_path / "earlier", signer_key=(node.log.directory / "log.key").read_text().strip()
    )
    one.append(b"release 0")
    return tlog.open_checkpoint(one.checkpoint(), node.keys)


async def test_a_well_behaved_node_is_polled_with_identity_coding(
    node: Node, tmp_path: Path
) -> None:
    app = await _poll(node, tmp_path, earlier=_earlier(tmp_path, node))
    assert app.state.connection.up is True
    assert app.state.health is not None and app.state.health.key_id == 1
    assert app.state.log.consistent is True, app.state.log.detail
    paths = [r.url.path for r in node.requests]
    assert paths == ["/healthz", "/metrics", "/v1/log/checkpoint", "/v1/log/consistency"]
    assert all(r.headers["accept-encoding"] == "identity" for r in node.requests)


def _gzip_bomb() -> httpx.Response:
    bomb = gzip.compress(bytes(64 * 1024 * 1024), compresslevel=9)
    return httpx.Response(200, stream=httpx.ByteStream(bomb), headers={"content-encoding": "gzip"})


@pytest.mark.parametrize(
    ("path", "limit"),
    [
        ("/healthz", MAX_HEALTHZ),
        ("/metrics", MAX_METRICS),
        ("/v1/log/checkpoint", MAX_CHECKPOINT),
        ("/v1/log/consistency", MAX_PROOF_BYTES),
    ],
)
async def test_an_endless_answer_is_cut_at_its_limit(
    node: Node, tmp_path: Path, path: str, limit: int
) -> None:
    body = Endless()
    node.broken[path] = lambda: httpx.Response(200, content=body)
    app = await _poll(node, tmp_path, earlier=_earlier(tmp_path, node))
    says = f"GET {path}: response exceeds {limit} bytes"
    assert body.pulled <= limit // PIECE + 1
    if path in ("/healthz", "/metrics"):
        assert app.state.connection.up is False
        assert app.state.connection.error == says
    else:
        assert app.state.connection.up is True
        assert app.state.log.consistent is False
        assert app.state.log.detail == "checkpoint refused: " + says


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/v1/log/checkpoint"])
async def test_a_compressed_answer_is_refused(node: Node, tmp_path: Path, path: str) -> None:
    node.broken[path] = _gzip_bomb
    app = await _poll(node, tmp_path, earlier=None)
    says = f"GET {path}: unrequested content-encoding 'gzip'"
    if path == "/v1/log/checkpoint":
        assert app.state.log.detail == "checkpoint refused: " + says
    else:
        assert app.state.connection.error == says


async def test_a_healthz_that_is_not_json_is_a_lost_connection(node: Node, tmp_path: Path) -> None:
    node.broken["/healthz"] = lambda: httpx.Response(503, content=b"<html>busy</html>")
    app = await _poll(node, tmp_path, earlier=None)
    assert app.state.connection.up is False
    node.broken["/healthz"] = lambda: httpx.Response(503, json=dict(HEALTH, status="starting"))
    app = await _poll(node, tmp_path, earlier=None)
    assert app.state.connection.up is True
    assert app.state.health is not None and app.state.health.status == "starting"


@pytest.mark.parametrize(
    ("path", "respond"),
    [
        ("/metrics", lambda: httpx.Response(200, text="openpcc_key_id +Inf\n")),
        ("/healthz", lambda: httpx.Response(200, content=b"[" * 100_000 + b"]" * 100_000)),
    ],
    ids=["infinite-key-id", "deeply-nested-healthz"],
)
async def test_what_the_host_answers_cannot_crash_the_poll(
    node: Node, tmp_path: Path, path: str, respond: Callable[[], httpx.Response]
) -> None:
    node.broken[path] = respond
    app = await _poll(node, tmp_path, earlier=None)
    assert app.state.connection.up is False


async def test_a_claimed_key_rotation_re_verifies_once_not_every_poll(
    node: Node, tmp_path: Path
) -> None:
    """/healthz is the host's word: a key id differing from the verified one starts one
    verification, never a second while it runs, and at most one per ROTATION_RECHECK_S."""
    from dataclasses import replace

    from tui.state import Attestation

    store = TrustStore(tmp_path / "config")
    store.add_log_key(node.log.verifier_key)
    clock = [1000.0]
    app = DashboardApp(URL, store=store, live=False)
    app.clock = lambda: clock[0]  # type: ignore[method-assign]
    started: list[float] = []
    app.verify_now = lambda: started.append(clock[0])  # type: ignore[assignment, method-assign]
    async with app.run_test(size=(100, 32)):
        app.state.connection.ok(clock[0])  # already up: only the rotation can trigger
        verified = Attestation(verdict="verified", key_id=0)
        async with httpx.AsyncClient(transport=httpx.MockTransport(node.handle)) as http:
            app.state.attestation = replace(verified, busy=True)
            await app.poll_once(http)  # healthz says key 1; a verification is running
            assert started == []
            app.state.attestation = verified
            await app.poll_once(http)
            assert started == [1000.0]
            clock[0] += 1.0
            await app.poll_once(http)  # the host still claims key 1: not again so soon
            assert started == [1000.0]
            clock[0] += 10.0
            await app.poll_once(http)
            assert started == [1000.0, 1011.0]
