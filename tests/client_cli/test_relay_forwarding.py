"""The OHTTP relay: body unchanged, identifying headers stripped, none added, no buffering."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _target(request: Request) -> str:
    query = request.scope["query_string"].decode("latin-1")
    return request.url.path + ("?" + query if query else "")


class Upstream:
    """A stand-in gateway that records what reaches it and streams on command."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, str], bytes]] = []
        self.targets: list[str] = []  # path and query of each request, as received
        self.release = threading.Event()
        self.port = _port()

        async def ohttp(request: Request) -> Response:
            self.seen.append((dict(request.headers), await request.body()))
            self.targets.append(_target(request))

            async def body() -> AsyncIterator[bytes]:
                yield b"first-chunk"
                await asyncio.to_thread(self.release.wait, 10)
                yield b"second-chunk"

            return StreamingResponse(
                body(),
                media_type="message/ohttp-chunked-res",
                headers={"set-cookie": "tracker=1", "x-node": "n1"},
            )

        async def keys(request: Request) -> Response:
            self.seen.append((dict(request.headers), b""))
            self.targets.append(_target(request))
            return Response(b"\x00\x01", media_type="application/ohttp-keys")

        app = Starlette(
            routes=[
                Route("/v1/ohttp", ohttp, methods=["POST"]),
                Route("/v1/ohttp-keys", keys, methods=["GET"]),
            ]
        )
        self.server = uvicorn.Server(uvicorn.Config(app, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)


@pytest.fixture
def relay() -> Iterator[tuple[str, Upstream]]:
    up = Upstream()
    up.thread.start()
    port = _port()
    proc = subprocess.Popen(
        [
            str(BIN / "openpcc"),
            "relay",
            "--gateway",
            f"http://127.0.0.1:{up.port}",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url + "/v1/ohttp-keys", timeout=1)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "relay did not start"
            time.sleep(0.1)
    up.seen.clear()
    up.targets.clear()
    try:
        yield url, up
    finally:
        proc.terminate()
        proc.wait(10)
        up.release.set()
        up.server.should_exit = True
        up.thread.join(10)


IDENTIFYING = {
    "forwarded": "for=203.0.113.7",
    "x-forwarded-for": "203.0.113.7",
    "x-real-ip": "203.0.113.7",
    "cookie": "session=abc",
    "user-agent": "curl/8 (alice's laptop)",
    "authorization": "Bearer alice",
    "via": "1.1 alice-proxy",
}


def test_relay_forwards_body_unchanged_and_strips_identity(relay) -> None:  # type: ignore[no-untyped-def]
    url, up = relay
    body = bytes(range(256)) * 4
    with httpx.stream(
        "POST",
        url + "/v1/ohttp",
        content=body,
        headers={"content-type": "message/ohttp-chunked-req", **IDENTIFYING},
        timeout=20,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "message/ohttp-chunked-res"
        assert "set-cookie" not in r.headers and "x-node" not in r.headers
        it = r.iter_raw()
        # The first piece arrives while the upstream is still holding the second back: the
        # relay streams instead of buffering the whole response.
        assert next(it) == b"first-chunk"
        up.release.set()
        assert b"".join(it) == b"second-chunk"
    headers, received = up.seen[0]
    assert received == body
    for name, value in IDENTIFYING.items():
        assert name not in headers or value not in headers[name], name
    assert "alice" not in " ".join(headers.values())
    assert headers["content-type"] == "message/ohttp-chunked-req"


def test_relay_refuses_other_media_types(relay) -> None:  # type: ignore[no-untyped-def]
    url, up = relay
    r = httpx.post(
        url + "/v1/ohttp", content=b"{}", headers={"content-type": "application/json"}, timeout=10
    )
    assert r.status_code == 415
    assert up.seen == []


def test_relay_forwards_public_gets_without_identity(relay) -> None:  # type: ignore[no-untyped-def]
    url, up = relay
    r = httpx.get(url + "/v1/ohttp-keys", headers=IDENTIFYING, timeout=10)
    assert r.status_code == 200 and r.content == b"\x00\x01"
    headers, _ = up.seen[0]
    assert "alice" not in " ".join(headers.values())
    assert "203.0.113.7" not in " ".join(headers.values())


def test_relay_forwards_no_query_string_on_ohttp(relay) -> None:  # type: ignore[no-untyped-def]
    url, up = relay
    up.release.set()
    r = httpx.post(
        url + "/v1/ohttp?user=alice&session=abc",
        content=b"sealed",
        headers={"content-type": "message/ohttp-req"},
        timeout=10,
    )
    assert r.status_code == 200
    assert up.targets == ["/v1/ohttp"]
    assert up.seen[0][1] == b"sealed"


def test_relay_sends_upstream_only_the_headers_it_must(relay) -> None:  # type: ignore[no-untyped-def]
    url, up = relay
    up.release.set()
    r = httpx.post(
        url + "/v1/ohttp",
        content=b"sealed",
        headers={"content-type": "message/ohttp-chunked-req", **IDENTIFYING},
        timeout=10,
    )
    assert r.status_code == 200
    r = httpx.get(url + "/v1/ohttp-keys?probe=1", headers=IDENTIFYING, timeout=10)
    assert r.status_code == 200
    (post_headers, _), (get_headers, _) = up.seen
    assert set(post_headers) == {"host", "content-type", "content-length"}
    assert post_headers["content-type"] == "message/ohttp-chunked-req"
    # No user-agent, accept or connection (httpx's defaults), nothing from the client; the GET's
    # answer is passed through raw, so no content coding is accepted.
    assert get_headers == {"host": f"127.0.0.1:{up.port}", "accept-encoding": "identity"}
    # A public GET keeps its query: a nonce, a consistency proof's sizes.
    assert up.targets == ["/v1/ohttp", "/v1/ohttp-keys?probe=1"]
