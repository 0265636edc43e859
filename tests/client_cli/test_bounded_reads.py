"""What the client reads from the network is bounded as it arrives, and never decompressed."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from attest.errors import TransportError
from client_cli.session import MAX_BUNDLE_BYTES, get_bounded

PIECE = 64 * 1024


class Endless:
    """A response body that never ends; counts the pieces the client pulled."""

    def __init__(self) -> None:
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            self.pulled += 1
            yield b"x" * PIECE


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def _get(
    handler: Callable[[httpx.Request], httpx.Response], limit: int, **kw: Any
) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        async with _client(handler) as http:
            return await get_bounded(http, "http://node.test/v1/x", limit, **kw)

    return asyncio.run(go())


def test_a_body_over_the_limit_is_refused_as_it_arrives() -> None:
    body = Endless()
    with pytest.raises(TransportError, match="GET /v1/x: response exceeds 1048576 bytes"):
        _get(lambda r: httpx.Response(200, content=body), 1024 * 1024)
    assert body.pulled <= 1024 * 1024 // PIECE + 1


def test_a_body_within_the_limit_is_returned_whole_and_identity_is_asked_for() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"y" * 1000)

    assert _get(handler, 1000, params={"a": "1"}) == (200, b"y" * 1000)
    assert seen[0].headers["accept-encoding"] == "identity"
    assert seen[0].url.params["a"] == "1"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "GZIP "])
def test_a_content_coding_sent_anyway_is_refused_not_decompressed(coding: str) -> None:
    # 64 MiB of zeros in about 64 KiB: decompressing one network read could spike memory far
    # past the limit before the limit is ever checked.
    bomb = gzip.compress(bytes(64 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < MAX_BUNDLE_BYTES

    def handler(request: httpx.Request) -> httpx.Response:
        # As a network transport gives it: not yet read (nor decoded).
        stream = httpx.ByteStream(bomb)
        return httpx.Response(200, stream=stream, headers={"content-encoding": coding})

    with pytest.raises(TransportError, match="unrequested content-encoding"):
        _get(handler, MAX_BUNDLE_BYTES)


def test_an_identity_coding_is_accepted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"ok", headers={"content-encoding": "identity"})

    assert _get(handler, 10) == (200, b"ok")


def test_another_status_is_refused_without_reading_its_body() -> None:
    body = Endless()
    with pytest.raises(TransportError, match="GET /v1/x: HTTP 500"):
        _get(lambda r: httpx.Response(500, content=body), 10)
    assert body.pulled == 0
    assert _get(lambda r: httpx.Response(503, content=b"{}"), 10, statuses=(200, 503)) == (
        503,
        b"{}",
    )


def test_an_endless_bundle_is_refused_and_nothing_is_sent(sim_node: Any) -> None:
    body = Endless()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    transport = httpx.MockTransport(handler)
    session = sim_node.session(transport)

    async def go() -> None:
        async with session:
            await session.verify()

    with pytest.raises(TransportError, match=f"exceeds {MAX_BUNDLE_BYTES} bytes"):
        asyncio.run(go())
    assert body.pulled <= MAX_BUNDLE_BYTES // PIECE + 1
    assert session.last_run is None


def test_the_bundle_and_the_consistency_proof_are_asked_for_uncompressed(
    sim_node: Any, tmp_path: Any
) -> None:
    store = sim_node.checkpoint_store(tmp_path / "checkpoints")
    small = sim_node.log_copy("bounded-small", [sim_node.manifest_bytes])
    for log in (small, sim_node.log):  # the second verification needs a consistency proof
        transport = sim_node.transport(log=log)
        session = sim_node.session(transport, checkpoints=store)

        async def go(session: Any = session) -> None:
            async with session:
                assert (await session.verify()).ok

        asyncio.run(go())
        assert transport.requests
        assert all(r.headers["accept-encoding"] == "identity" for r in transport.requests)
    paths = [r.url.path for r in transport.requests]
    assert "/v1/log/consistency" in paths


def test_a_refusal_body_is_read_only_as_far_as_needed_on_the_httpx_path() -> None:
    """An https node (or a relay, or a proxy in the way) answering 400 with an endless body:
    the client reads at most a few pieces of it, then says the node refused."""
    from attest.bundle import ClientPolicy, TrustAnchors
    from attest.sevsnp.validate import SnpPolicy
    from client_cli.session import Session
    from server.ohttp import ChunkedRequestSealer, ServerKey

    body = Endless()
    session = Session(
        "https://node.test",
        trust=TrustAnchors(amd_roots=(), nvidia_roots=(), log_keys=()),
        policy=ClientPolicy(snp=SnpPolicy()),
        transport=httpx.MockTransport(lambda r: httpx.Response(400, content=body)),
    )
    opener = ChunkedRequestSealer(ServerKey.generate(1).config).response_opener()

    async def go() -> None:
        try:
            async for _ in session._exchange(b"x", opener):
                pass
        finally:
            await session.aclose()

    with pytest.raises(TransportError, match="the node refused the request: bad request"):
        asyncio.run(go())
    assert body.pulled <= 2
