"""``openpcc proxy``: an OpenAI-compatible endpoint on loopback for unmodified OpenAI clients.

Each request is verified-then-encrypted through one :class:`Session`; the node is verified before
the proxy starts listening, and again whenever the session decides to (rotation, failure, age).

What it holds in memory is bounded: a request body (``MAX_REQUEST``, 4 MiB) is counted as it
arrives and refused with 413 once over; a non-streamed answer (``MAX_ANSWER_BYTES``, 16 MiB) is
refused with 502 once over. Streamed answers pass through piece by piece.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import uvicorn
from rich.console import Console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from attest.errors import OpenPCCError
from client_cli.render import SIMULATED_BANNER, status_line
from client_cli.session import MAX_ANSWER_BYTES, Session

__all__ = ["MAX_REQUEST", "create_proxy_app", "run_proxy"]

MAX_REQUEST = 4 * 1024 * 1024


class _TooLargeError(Exception):
    pass


def _error(status: int, message: str, kind: str = "openpcc_error") -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": status}}, status_code=status
    )


def _node_header(session: Session) -> str:
    """What the answer came from, in every response; HTTP headers are ASCII, hence the hyphen."""
    run = session.last_run
    if run is None or run.node is None:
        return "not verified"
    n = run.node
    what = "SIMULATED - NOT CONFIDENTIAL" if n.simulated else "verified"
    return f"{n.tee}; measurement={n.measurement.hex()[:16]}; {what}"


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, counted as it arrives: one over ``limit`` is never held whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLargeError
    buf = bytearray()
    async for piece in request.stream():
        buf += piece
        if len(buf) > limit:
            raise _TooLargeError
    return bytes(buf)


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _host_name(header: str) -> str:
    """``Host`` without its port: ``[::1]:8481`` -> ``::1``, ``localhost:8481`` -> ``localhost``."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def create_proxy_app(
    session: Session,
    *,
    max_request: int = MAX_REQUEST,
    max_answer: int = MAX_ANSWER_BYTES,
    allowed_hosts: frozenset[str] | None = LOOPBACK_HOSTS,
) -> Starlette:
    """The proxy's ASGI app; the limits are parameters so tests can make them small.

    It serves plaintext on loopback, so it answers only requests addressed to a loopback name
    (``allowed_hosts``; None with ``--allow-remote``): a web page cannot reach it through DNS
    rebinding. A POST must be ``application/json``, which a browser cannot send cross-origin
    without a CORS preflight this proxy never grants.
    """

    async def forward(request: Request) -> Response:
        path = request.url.path
        payload: dict[str, object] | None = None
        host = _host_name(request.headers.get("host", "").strip().lower())
        if allowed_hosts is not None and host not in allowed_hosts:
            return _error(403, "this proxy answers only requests to a loopback address")
        if request.method == "POST":
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return _error(415, "request body must be application/json", "invalid_request_error")
            try:
                raw = await _read_body(request, max_request)
            except _TooLargeError:
                return _error(
                    413, f"request body exceeds {max_request} bytes", "invalid_request_error"
                )
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):  # JSON, UTF-8, huge numbers, nesting
                return _error(400, "request body is not JSON", "invalid_request_error")
            if not isinstance(body, dict):
                return _error(400, "request body must be an object", "invalid_request_error")
            payload = body
        stream = bool(payload and payload.get("stream") is True)
        events = session.stream(request.method, path, payload)
        try:
            first = await anext(events)
        except OpenPCCError as e:
            await events.aclose()
            return _error(502, f"node not usable: {e}")
        except StopAsyncIteration:
            return _error(502, "the node sent an empty answer")
        status = first.head.status if first.head is not None else 502
        headers = {"openpcc-node": _node_header(session)}
        if stream and status == 200:

            async def body_iter() -> AsyncIterator[bytes]:
                try:
                    async for ev in events:
                        yield ev.data
                except OpenPCCError as e:
                    err = {"error": {"message": str(e), "type": "openpcc_error"}}
                    yield b"data: " + json.dumps(err).encode() + b"\n\n"
                finally:
                    # The client may leave mid-answer: end the encrypted stream now, not at GC.
                    await events.aclose()

            return StreamingResponse(body_iter(), media_type="text/event-stream", headers=headers)
        data = bytearray()
        try:
            async for ev in events:
                data += ev.data
                if len(data) > max_answer:
                    return _error(502, f"the node's answer exceeds {max_answer} bytes")
        except OpenPCCError as e:
            return _error(502, f"answer failed: {e}")
        finally:
            await events.aclose()
        return Response(
            bytes(data), status_code=status, media_type="application/json", headers=headers
        )

    routes = [
        Route("/v1/chat/completions", forward, methods=["POST"]),
        Route("/v1/completions", forward, methods=["POST"]),
        Route("/v1/models", forward, methods=["GET"]),
    ]
    return Starlette(routes=routes)


def run_proxy(
    session: Session, host: str, port: int, url: str, *, allow_remote: bool = False
) -> None:
    console = Console(stderr=True, highlight=False)

    async def main() -> None:
        try:
            await session.node()  # refuse to listen at all for a node that does not verify
            console.print(status_line(session.last_run, url))
            run = session.last_run
            if run is not None and run.node is not None and run.node.simulated:
                console.print(f"[bold red]{SIMULATED_BANNER}[/]")
            console.print(f"OpenAI-compatible proxy on http://{host}:{port}/v1 -> {url}")
            server = uvicorn.Server(
                uvicorn.Config(
                    create_proxy_app(
                        session, allowed_hosts=None if allow_remote else LOOPBACK_HOSTS
                    ),
                    host=host,
                    port=port,
                    access_log=False,
                    log_level="warning",
                )
            )
            await server.serve()
        finally:
            await session.aclose()

    asyncio.run(main())
