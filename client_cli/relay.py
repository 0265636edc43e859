"""``openpcc relay``: an Oblivious HTTP relay (RFC 9458 section 6.5) in front of a gateway.

It forwards encapsulated requests byte for byte, with no header from the client but the media
type and no query string, so the gateway learns nothing about who sent them; the relay sees who,
never what. Public GET endpoints (bundle, key configs, log) are forwarded the same way, with
their query (a nonce, a proof's sizes) and no header at all from the client, so a client can use
the relay for everything. What the relay itself sends upstream is the same for every client:
``host``, the media type and length on a POST, ``accept-encoding: identity`` on a GET (its
answer is passed through as raw bytes, without a content coding). Chunked responses stream
through without buffering.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import AsyncGenerator, AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from attest.errors import ParseError
from server.asgi_stream import Message, stream_to_client
from server.engine_http import EngineHttp, EngineHttpError, EngineResponse

__all__ = ["OHTTP_MEDIA_TYPES", "create_relay_app", "run_relay"]

OHTTP_MEDIA_TYPES = ("message/ohttp-req", "message/ohttp-chunked-req")
PUBLIC_GETS = ("/v1/attestation", "/v1/ohttp-keys", "/v1/log/checkpoint", "/v1/log/consistency")
MAX_BODY = 4 * 1024 * 1024
_PASS_BACK = ("content-type", "cache-control", "retry-after")
# httpx adds accept, accept-encoding, connection and user-agent to every request unless told
# otherwise: none is needed, and a user-agent would name this software to the gateway.
_HTTPX_DEFAULTS = ("accept", "connection", "user-agent")


class _TooLargeError(Exception):
    pass


class _GoneError(Exception):
    pass


def create_relay_app(gateway: str, *, transport: httpx.AsyncBaseTransport | None = None) -> ASGIApp:
    """The relay's ASGI app. ``transport`` replaces the network for the public GETs (tests)."""
    gateway = gateway.rstrip("/")
    scheme, _, rest = gateway.partition("://")
    origin, slash, tail = rest.partition("/")
    prefix = slash + tail  # a gateway behind a path prefix: https://host/openpcc
    try:
        upstream = EngineHttp.for_url(f"{scheme}://{origin}", connect_timeout=10.0)
    except ValueError as e:
        raise ParseError(f"--gateway: {e}", hint="e.g. --gateway http://127.0.0.1:8480") from None
    client = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0), transport=transport)
    for name in _HTTPX_DEFAULTS:
        del client.headers[name]
    client.headers["accept-encoding"] = "identity"

    async def get_public(request: Request) -> Response:
        url = gateway + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        try:
            upstream_r = await client.send(client.build_request("GET", url), stream=True)
        except httpx.HTTPError:
            return PlainTextResponse("unavailable", status_code=502)
        back = {k: v for k, v in upstream_r.headers.items() if k.lower() in _PASS_BACK}
        return StreamingResponse(
            upstream_r.aiter_raw(),
            status_code=upstream_r.status_code,
            headers=back,
            background=BackgroundTask(upstream_r.aclose),
        )

    async def post_ohttp(scope: Scope, receive: Receive, send: Send) -> None:
        """The hot path, in raw ASGI: bytes in, bytes out, as they come."""
        if scope["method"] != "POST":
            await _plain(send, 405, "method not allowed")
            return
        ctype = b""
        declared = b""
        for name, value in scope["headers"]:
            if name == b"content-type":
                ctype = value.split(b";")[0].strip().lower()
            elif name == b"content-length":
                declared = value
        if ctype.decode("latin-1") not in OHTTP_MEDIA_TYPES:
            await _plain(send, 415, "unsupported media type")
            return
        if declared.isdigit() and int(declared) > MAX_BODY:
            await _plain(send, 413, "too large")
            return

        async def body() -> AsyncIterator[bytes]:
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _GoneError
                piece = message.get("body", b"")
                size += len(piece)
                if size > MAX_BODY:
                    # Abort the upstream request: forwarding a cut-off body would pass a
                    # truncated request off as a whole one.
                    raise _TooLargeError
                if piece:
                    yield piece
                if not message.get("more_body", False):
                    return

        # Only the media type (and the length, when the client declared it) goes upstream.
        headers = [(b"content-type", ctype)]
        if declared.isdigit():
            headers.append((b"content-length", declared))
        # No query string either: the gateway needs none, and it could carry whatever a client
        # (or a tracker in its URL) put there.
        try:
            resp = await upstream.request("POST", prefix + "/v1/ohttp", body(), headers=headers)
        except _TooLargeError:
            await _plain(send, 413, "too large")
            return
        except _GoneError:
            return
        except EngineHttpError:
            await _plain(send, 502, "unavailable")
            return
        back = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in resp.headers.items()
            if k in _PASS_BACK
        ]
        await _forward(receive, send, resp, back)

    routes = [Route(p, get_public, methods=["GET"]) for p in PUBLIC_GETS]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            upstream.close()
            await client.aclose()

    framework = Starlette(routes=routes, lifespan=lifespan)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/ohttp":
            await post_ohttp(scope, receive, send)
        else:
            await framework(scope, receive, send)

    return app


async def _forward(
    receive: Receive, send: Send, resp: EngineResponse, headers: list[tuple[bytes, bytes]]
) -> None:
    """Stream the gateway's answer through; a client that goes away closes the upstream too."""

    async def messages() -> AsyncGenerator[Message, None]:
        yield {"type": "http.response.start", "status": resp.status, "headers": headers}
        try:
            async for piece in resp.iter_batches():
                yield {"type": "http.response.body", "body": piece, "more_body": True}
        except EngineHttpError:
            # The gateway went away mid-answer: end the stream without its final chunk, which
            # the client's opener reports as truncation (never as an answer).
            pass
        yield {"type": "http.response.body", "body": b"", "more_body": False}

    try:
        await stream_to_client(receive, send, messages())
    finally:
        resp.close()


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def run_relay(gateway: str, host: str, port: int) -> None:
    print(f"OHTTP relay on http://{host}:{port} -> {gateway}", flush=True)
    uvicorn.run(
        create_relay_app(gateway),
        host=host,
        port=port,
        access_log=False,
        log_level="warning",
        # The C HTTP parser and event loop, as the gateway uses (docs/bench).
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        server_header=False,
        date_header=False,
        proxy_headers=False,  # client addresses are never used, nor taken from headers
    )
