"""``openpcc proxy`` holds bounded bytes: a request body as it streams in, a whole answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from client_cli.proxy import MAX_REQUEST, create_proxy_app
from client_cli.session import MAX_ANSWER_BYTES

CHAT: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class Pieces:
    """A request body sent in ``count`` pieces of ``size`` bytes; counts those pulled."""

    def __init__(self, count: int, size: int) -> None:
        self.count, self.size, self.pulled = count, size, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            self.pulled += 1
            yield b" " * self.size


def _post(app: Any, content: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8481") as c:
            sent = {"content-type": "application/json", **(headers or {})}
            r = await c.post("/v1/chat/completions", content=content, headers=sent)
            await r.aread()
            return r

    return asyncio.run(go())


def _openai_error(r: httpx.Response, status: int, says: str) -> None:
    assert r.status_code == status
    error = r.json()["error"]
    assert says in error["message"]
    assert error["code"] == status and error["type"]


def test_the_default_limits_are_the_documented_ones() -> None:
    assert MAX_REQUEST == 4 * 1024 * 1024
    assert MAX_ANSWER_BYTES == 16 * 1024 * 1024


def test_a_declared_oversize_request_is_refused_before_reading_it(sim_node: Any) -> None:
    transport = sim_node.transport()
    app = create_proxy_app(sim_node.session(transport))
    r = _post(app, b" " * (MAX_REQUEST + 1), {"content-type": "application/json"})
    _openai_error(r, 413, f"request body exceeds {MAX_REQUEST} bytes")
    assert transport.requests == []  # not verified, not sent


def test_a_streamed_oversize_request_is_refused_as_it_arrives(sim_node: Any) -> None:
    transport = sim_node.transport()
    app = create_proxy_app(sim_node.session(transport), max_request=4096)
    body = Pieces(count=1000, size=1024)  # no content-length: chunked
    r = _post(app, body)
    _openai_error(r, 413, "request body exceeds 4096 bytes")
    assert body.pulled <= 5
    assert transport.requests == []


def test_a_request_at_the_limit_is_forwarded(sim_node: Any) -> None:
    payload = json.dumps(CHAT).encode()
    body = payload + b" " * (4096 - len(payload))
    transport = sim_node.transport()  # the node answers 503
    app = create_proxy_app(sim_node.session(transport), max_request=4096)
    r = _post(app, body)
    _openai_error(r, 502, "HTTP 503")
    assert len(transport.ohttp_posts) == 1


@pytest.mark.parametrize("size", [1000, 5000])
def test_a_whole_answer_over_the_limit_is_refused(sim_node: Any, size: int) -> None:
    answer = json.dumps({"pad": "x" * size}).encode()
    transport = sim_node.transport(ohttp=sim_node.answering(200, answer, piece=256))
    app = create_proxy_app(sim_node.session(transport), max_answer=2048)
    r = _post(app, json.dumps(CHAT).encode())
    if len(answer) <= 2048:
        assert r.status_code == 200 and r.content == answer
    else:
        _openai_error(r, 502, "the node's answer exceeds 2048 bytes")


@pytest.mark.parametrize(
    ("headers", "status", "says"),
    [
        ({"host": "evil.example"}, 403, "only requests to a loopback address"),
        ({"host": "evil.example:8481"}, 403, "only requests to a loopback address"),
        ({"content-type": "text/plain"}, 415, "must be application/json"),
    ],
    ids=["rebound-host", "rebound-host-port", "simple-cross-origin-post"],
)
def test_a_web_page_cannot_drive_the_proxy(
    sim_node: Any, headers: dict[str, str], status: int, says: str
) -> None:
    """DNS rebinding (a page's own name resolved to 127.0.0.1) and text/plain POSTs (which a
    browser sends cross-origin without a preflight) are refused before anything is verified."""
    transport = sim_node.transport()
    app = create_proxy_app(sim_node.session(transport))
    r = _post(app, json.dumps(CHAT).encode(), headers)
    _openai_error(r, status, says)
    assert transport.requests == []


def test_loopback_names_are_all_accepted() -> None:
    from client_cli.proxy import LOOPBACK_HOSTS, _host_name

    for header in ("127.0.0.1:8481", "localhost", "LOCALHOST:1".lower(), "[::1]:8481", "[::1]"):
        assert _host_name(header) in LOOPBACK_HOSTS, header
    assert _host_name("127.0.0.1.evil.example:80") not in LOOPBACK_HOSTS
