"""``openpcc relay``: an Oblivious HTTP relay (RFC 9458 section 6.5) in front of a gateway.

It forwards encapsulated requests byte for byte, with no header from the client but the media
type, so the gateway learns nothing about who sent them; the relay sees who, never what. Public
GET endpoints (bundle, key configs, log) are forwarded the same way so a client can use the
relay for everything. Chunked responses stream through without buffering.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["OHTTP_MEDIA_TYPES", "create_relay_app", "run_relay"]

OHTTP_MEDIA_TYPES = ("message/ohttp-req", "message/ohttp-chunked-req")
PUBLIC_GETS = ("/v1/attestation", "/v1/ohttp-keys", "/v1/log/checkpoint", "/v1/log/consistency")
MAX_BODY = 4 * 1024 * 1024
_PASS_BACK = ("content-type", "cache-control", "retry-after")


class _TooLargeError(Exception):
    pass


def create_relay_app(
    gateway: str, *, transport: httpx.AsyncBaseTransport | None = None
) -> Starlette:
    gateway = gateway.rstrip("/")
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(600.0, connect=10.0),
        transport=transport,
        headers={"user-agent": "openpcc-relay"},
    )

    async def relay(
        request: Request, method: str, headers: dict[str, str], content: AsyncIterator[bytes] | None
    ) -> Response:
        url = gateway + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        req = client.build_request(method, url, headers=headers, content=content)
        try:
            upstream = await client.send(req, stream=True)
        except _TooLargeError:
            return PlainTextResponse("too large", status_code=413)
        except httpx.HTTPError:
            return PlainTextResponse("unavailable", status_code=502)
        back = {k: v for k, v in upstream.headers.items() if k.lower() in _PASS_BACK}
        return StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            headers=back,
            background=BackgroundTask(upstream.aclose),
        )

    async def post_ohttp(request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in OHTTP_MEDIA_TYPES:
            return PlainTextResponse("unsupported media type", status_code=415)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            return PlainTextResponse("too large", status_code=413)

        async def body() -> AsyncIterator[bytes]:
            size = 0
            async for piece in request.stream():
                size += len(piece)
                if size > MAX_BODY:
                    # Abort the upstream request: forwarding a cut-off body would pass a
                    # truncated request off as a whole one.
                    raise _TooLargeError
                yield piece

        return await relay(request, "POST", {"content-type": ctype}, body())

    async def get_public(request: Request) -> Response:
        return await relay(request, "GET", {}, None)

    routes = [Route("/v1/ohttp", post_ohttp, methods=["POST"])]
    routes += [Route(p, get_public, methods=["GET"]) for p in PUBLIC_GETS]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    return Starlette(routes=routes, lifespan=lifespan)


def run_relay(gateway: str, host: str, port: int) -> None:
    print(f"OHTTP relay on http://{host}:{port} -> {gateway}", flush=True)
    uvicorn.run(
        create_relay_app(gateway),
        host=host,
        port=port,
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
    )
