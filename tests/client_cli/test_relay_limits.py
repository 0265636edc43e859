"""The relay refuses an oversized body instead of forwarding a cut-off one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx

from client_cli.relay import MAX_BODY, create_relay_app


def _relay() -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    forwarded: list[httpx.Request] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        forwarded.append(request)
        request.read()
        return httpx.Response(200, stream=httpx.ByteStream(b"ok"))

    app = create_relay_app("http://gateway.test", transport=httpx.MockTransport(gateway))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://relay.test")
    return client, forwarded


def test_declared_oversize_is_refused_before_forwarding() -> None:
    async def go() -> int:
        client, forwarded = _relay()
        async with client:
            r = await client.post(
                "/v1/ohttp",
                content=b"x" * (MAX_BODY + 1),
                headers={"content-type": "message/ohttp-chunked-req"},
            )
        assert forwarded == []
        return r.status_code

    assert asyncio.run(go()) == 413


def test_streamed_oversize_is_refused_not_truncated() -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * (MAX_BODY // 4)

    async def go() -> int:
        client, _forwarded = _relay()
        async with client:
            r = await client.post(
                "/v1/ohttp", content=body(), headers={"content-type": "message/ohttp-chunked-req"}
            )
        return r.status_code

    assert asyncio.run(go()) == 413


def test_a_body_within_the_limit_is_forwarded_whole() -> None:
    async def go() -> bytes:
        client, forwarded = _relay()
        async with client:
            r = await client.post(
                "/v1/ohttp", content=b"y" * 1000, headers={"content-type": "message/ohttp-req"}
            )
            assert r.status_code == 200
        [req] = forwarded
        return req.content

    assert asyncio.run(go()) == b"y" * 1000
