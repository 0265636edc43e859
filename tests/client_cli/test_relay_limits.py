"""The relay refuses an oversized body instead of forwarding a cut-off one."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from attest.errors import ParseError
from client_cli.relay import MAX_BODY, create_relay_app


class Gateway:
    """A real HTTP server standing in for the gateway; records every whole body it got."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.cut_off = 0
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]

        async def ohttp(request: Request) -> Response:
            try:
                self.bodies.append(await request.body())
            except ClientDisconnect:
                self.cut_off += 1
                return Response(status_code=400)
            return Response(b"ok", media_type="message/ohttp-chunked-res")

        app = Starlette(routes=[Route("/v1/ohttp", ohttp, methods=["POST"])])
        config = uvicorn.Config(app, port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    gw = Gateway()
    gw.thread.start()
    deadline = time.monotonic() + 10
    while not gw.server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    yield gw
    gw.server.should_exit = True
    gw.thread.join(10)


def _client(gateway: Gateway) -> httpx.AsyncClient:
    app = create_relay_app(f"http://127.0.0.1:{gateway.port}")
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://relay.test")


def test_declared_oversize_is_refused_before_forwarding(gateway: Gateway) -> None:
    async def go() -> int:
        async with _client(gateway) as client:
            r = await client.post(
                "/v1/ohttp",
                content=b"x" * (MAX_BODY + 1),
                headers={"content-type": "message/ohttp-chunked-req"},
            )
        return r.status_code

    before = (len(gateway.bodies), gateway.cut_off)
    assert asyncio.run(go()) == 413
    assert (len(gateway.bodies), gateway.cut_off) == before


def test_streamed_oversize_is_refused_not_truncated(gateway: Gateway) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * (MAX_BODY // 4)

    async def go() -> int:
        async with _client(gateway) as client:
            r = await client.post(
                "/v1/ohttp", content=body(), headers={"content-type": "message/ohttp-chunked-req"}
            )
        return r.status_code

    before = len(gateway.bodies)
    assert asyncio.run(go()) == 413
    # The gateway never received a whole (cut-off) body: the connection was dropped mid-body.
    deadline = time.monotonic() + 5
    while gateway.cut_off == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(gateway.bodies) == before
    assert gateway.cut_off >= 1


def test_a_body_within_the_limit_is_forwarded_whole(gateway: Gateway) -> None:
    async def go() -> tuple[int, bytes]:
        async with _client(gateway) as client:
            r = await client.post(
                "/v1/ohttp", content=b"y" * 1000, headers={"content-type": "message/ohttp-req"}
            )
        return r.status_code, r.content

    assert asyncio.run(go()) == (200, b"ok")
    assert gateway.bodies[-1] == b"y" * 1000


def test_a_streamed_body_within_the_limit_is_forwarded_whole(gateway: Gateway) -> None:
    async def body() -> AsyncIterator[bytes]:
        for i in range(4):
            yield bytes([i]) * 1000

    async def go() -> int:
        async with _client(gateway) as client:
            r = await client.post(
                "/v1/ohttp", content=body(), headers={"content-type": "message/ohttp-chunked-req"}
            )
        return r.status_code

    assert asyncio.run(go()) == 200
    assert gateway.bodies[-1] == b"".join(bytes([i]) * 1000 for i in range(4))


def test_unreachable_gateway_is_502_not_a_hang() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed

    async def go() -> int:
        app = create_relay_app(f"http://127.0.0.1:{port}")
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://relay.test") as c:
            r = await c.post(
                "/v1/ohttp", content=b"z", headers={"content-type": "message/ohttp-req"}
            )
        return r.status_code

    assert asyncio.run(go()) == 502


@pytest.mark.parametrize("url", ["gateway.test", "ftp://gateway.test", "http://", "http://h:x"])
def test_a_malformed_gateway_url_is_refused(url: str) -> None:
    with pytest.raises(ParseError, match="--gateway"):
        create_relay_app(url)
