"""The sealed gateway's HTTP surface (DESIGN.md sections 3, 5, 6).

Outside the encryption the host sees only public things: the attestation bundle, key
configurations, log checkpoints, aggregate metrics and health. An outer status never says more
than "could not decrypt", "bad request", "too large", "busy" or "unavailable"; everything about
the request itself travels back encrypted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from attest.errors import DecryptError, OpenPCCError, ParseError
from server.asgi_stream import Message, stream_to_client
from server.attestation import BundleBuilder, EvidenceLine
from server.bhttp_stream import encode_content_chunk, encode_response_end, encode_response_head
from server.config import GatewayConfig
from server.engines import EngineSupervisor
from server.keys import KeyRing
from server.metrics import Metrics
from server.ohttp import (
    BhttpResponse,
    ChunkedRequestOpener,
    ChunkedResponseSealer,
    decapsulate_request,
    decode_request,
    encode_key_configs,
    encode_response,
)
from server.serving import InnerResponse, Serving, openai_error

__all__ = ["GatewayState", "create_app"]

OHTTP_REQ = "message/ohttp-req"
OHTTP_RES = "message/ohttp-res"
CHUNKED_REQ = "message/ohttp-chunked-req"
CHUNKED_RES = "message/ohttp-chunked-res"
OHTTP_REQ_B, OHTTP_RES_B = OHTTP_REQ.encode(), OHTTP_RES.encode()
CHUNKED_REQ_B = CHUNKED_REQ.encode()
_CHUNKED_HEADERS = [(b"content-type", CHUNKED_RES.encode()), (b"cache-control", b"no-store")]


def _chunked_start() -> Message:
    return {"type": "http.response.start", "status": 200, "headers": list(_CHUNKED_HEADERS)}


FRAMING_ALLOWANCE = 4096
"""Bytes of OHTTP framing (header, chunk lengths, tags) a chunked request may add to
``max_body_bytes``."""
SEAL_CHUNK = 64 * 1024
"""Most plaintext content bytes in one sealed response chunk."""

KEYS_TYPE = "application/ohttp-keys"
_KEY_PROBLEM_JSON = json.dumps(
    {
        "type": "https://iana.org/assignments/http-problem-types#ohttp-key",
        "title": "key identifier unknown",
    }
).encode()


class LogView:
    """What the gateway serves of the transparency log: read-only, may be absent."""

    def __init__(
        self,
        entry: Callable[[], dict[str, object]],
        checkpoint: Callable[[], str],
        consistency: Callable[[int, int], list[bytes]],
    ) -> None:
        self.entry = entry
        self.checkpoint = checkpoint
        self.consistency = consistency


@dataclass(slots=True)
class GatewayState:
    config: GatewayConfig
    keys: KeyRing
    bundles: BundleBuilder
    engine: EngineSupervisor
    log: LogView
    metrics: Metrics = field(default_factory=Metrics)
    started: float = field(default_factory=time.monotonic)
    serving: Serving | None = None
    in_flight: int = 0


def _plain(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(
        text, status_code=status, headers={"cache-control": "no-store", **(headers or {})}
    )


def create_app(state: GatewayState) -> ASGIApp:
    cfg = state.config
    m = state.metrics
    evidence = EvidenceLine(state.bundles, cfg.max_attestation_waiting)

    async def attestation(request: Request) -> Response:
        raw = request.query_params.get("nonce")
        nonce: bytes | None = None
        if raw is not None:
            if len(raw) != 64:
                return _plain(400, "bad request: nonce must be 64 hex characters")
            try:
                nonce = bytes.fromhex(raw)
            except ValueError:
                return _plain(400, "bad request: nonce must be 64 hex characters")
        bundle = await asyncio.to_thread(state.bundles.cached) if nonce is None else None
        if bundle is not None:
            return JSONResponse(bundle, headers={"cache-control": "no-store"})
        # Fresh evidence (a nonce, or the nonce-less bundle after a rotation): admitted only
        # while the line has room, so a flood gets "busy" at once instead of a growing queue.
        build = evidence.submit(nonce)
        if build is None:
            m.attestation_busy += 1
            return _plain(503, "busy", {"retry-after": "1"})
        try:
            # On timeout wait_for cancels the wrapped future, which cancels ``build``: dropped
            # if it has not started, left to finish (still holding its slot) if it has.
            bundle = await asyncio.wait_for(asyncio.wrap_future(build), cfg.attestation_timeout_s)
        except TimeoutError:
            build.cancel()
            m.attestation_timeouts += 1
            return _plain(503, "unavailable: evidence was not produced in time")
        except OpenPCCError as e:
            return _plain(503, f"unavailable: evidence could not be produced ({type(e).__name__})")
        return JSONResponse(bundle, headers={"cache-control": "no-store"})

    async def ohttp_keys(request: Request) -> Response:
        body = encode_key_configs(state.keys.configs())
        return Response(body, media_type=KEYS_TYPE, headers={"cache-control": "max-age=60"})

    async def checkpoint(request: Request) -> Response:
        return PlainTextResponse(state.log.checkpoint())

    async def consistency(request: Request) -> Response:
        try:
            old = int(request.query_params["from"])
            new = int(request.query_params["to"])
            proof = state.log.consistency(old, new)
        except (KeyError, ValueError, OpenPCCError):
            return _plain(400, "bad request: from and to must be tree sizes 0 < from <= to")
        return JSONResponse({"proof": [p.hex() for p in proof]})

    async def healthz(request: Request) -> Response:
        engine = state.engine.snapshot()
        ok = engine.get("state") == "ready"
        return JSONResponse(
            {
                "status": "ok" if ok else "degraded",
                "tee": state.bundles.tee,
                "engine": engine,
                "key_id": state.keys.current_config.key_id,
                "uptime_s": round(time.monotonic() - state.started, 1),
            },
            status_code=200 if ok else 503,
        )

    async def metrics(request: Request) -> Response:
        snap = state.engine.snapshot()
        state_code = {"ready": 1, "starting": 0, "restarting": -1}.get(str(snap.get("state")), -2)
        gauges = {
            "openpcc_engine_ready": state_code,
            "openpcc_engine_restarts_total": float(snap.get("restarts", 0) or 0),  # type: ignore[arg-type]
            "openpcc_key_id": state.keys.current_config.key_id,
            "openpcc_key_age_seconds": round(state.keys.current_age_s, 1),
            "openpcc_replays_refused_total": state.keys.replays_refused,
            "openpcc_attestation_waiting": evidence.waiting,
            "openpcc_uptime_seconds": round(time.monotonic() - state.started, 1),
        }
        text = m.render(gauges, lambda: {"tee": state.bundles.tee})
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def ohttp(scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/ohttp``, in raw ASGI: the hot path, one framework layer less per send."""
        if scope["method"] != "POST":
            await _send_plain(send, 405, "method not allowed", ((b"allow", b"POST"),))
            return
        ctype = b""
        declared: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                ctype = value.split(b";")[0].strip().lower()
            elif name == b"content-length":
                declared = value
        if ctype not in (OHTTP_REQ_B, CHUNKED_REQ_B):
            m.outcome("bad_request")
            await _send_plain(send, 400, "bad request: unsupported media type")
            return
        assert state.serving is not None
        if state.in_flight >= cfg.max_concurrent:
            m.outcome("busy")
            await _send_plain(send, 503, "busy")
            return
        # A slot is held until the last byte of the answer is sent: a streamed answer keeps the
        # engine busy long after the request was read.
        state.in_flight += 1
        try:
            if ctype == OHTTP_REQ_B:
                await _one_shot(receive, send, declared)
            else:
                await _chunked(receive, send)
        finally:
            state.in_flight -= 1

    async def _one_shot(receive: Receive, send: Send, declared: bytes | None) -> None:
        assert state.serving is not None
        if declared is not None and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            m.outcome("too_large")
            await _send_plain(send, 413, "too large")
            return
        buf = bytearray()
        try:
            async with asyncio.timeout(cfg.body_read_timeout_s):
                async for piece in _request_body(receive):
                    buf += piece
                    if len(buf) > cfg.max_body_bytes:
                        raise _TooLarge
        except _TooLarge:
            m.outcome("too_large")
            await _send_plain(send, 413, "too large")
            return
        except (TimeoutError, _Disconnected):
            m.outcome("timeout")
            await _send_plain(send, 400, "bad request")
            return
        enc_request = bytes(buf)
        keys = state.keys.accepted()
        if enc_request and enc_request[0] not in keys:
            m.outcome("decrypt_failed")
            await _send_bytes(send, 400, b"application/problem+json", _KEY_PROBLEM_JSON)
            return
        try:
            plaintext, sealer = decapsulate_request(keys, enc_request)
        except DecryptError:
            m.outcome("decrypt_failed")
            await _send_plain(send, 400, "could not decrypt")
            return
        if not _admit(sealer.key_id, sealer.enc):
            await _send_plain(send, 400, "could not decrypt")
            return
        inner = await _inner(plaintext)
        body = inner.body
        if inner.stream is not None:
            body = b"".join([piece async for piece in inner.stream])
        encoded = encode_response(BhttpResponse(inner.status, inner.headers, body))
        await _send_bytes(send, 200, OHTTP_RES_B, sealer.seal(encoded))

    def _admit(key_id: int, enc: bytes) -> bool:
        """Count a decrypted request, or refuse a replay as opaquely as a decryption failure."""
        admission = state.keys.admit(key_id, enc)
        if admission != "new":
            m.outcome("replay" if admission == "replay" else "decrypt_failed")
            return False
        m.decrypted += 1
        return True

    async def _inner(plaintext: bytes) -> InnerResponse:
        assert state.serving is not None
        try:
            req = decode_request(plaintext)
        except ParseError:
            m.outcome("bad_request")
            return openai_error(
                400, "inner request is not valid binary HTTP", "invalid_request_error"
            )
        return await state.serving.handle(req)

    async def _chunked(receive: Receive, send: Send) -> None:
        # One chunk may carry a whole body: what bounds a request is its size (413), not its
        # chunking, so a body within the limit is never refused as undecryptable.
        opener = ChunkedRequestOpener(
            state.keys.accepted(), max_chunk_size=cfg.max_body_bytes + FRAMING_ALLOWANCE
        )
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(cfg.body_read_timeout_s):
                async for piece in _request_body(receive):
                    size += len(piece)
                    if size > cfg.max_body_bytes + FRAMING_ALLOWANCE:
                        raise _TooLarge
                    chunks.extend(opener.feed(piece))
                    if opener.finished:
                        break
            chunks.extend(opener.close())
        except _TooLarge:
            m.outcome("too_large")
            await _send_plain(send, 413, "too large")
            return
        except (TimeoutError, _Disconnected):
            m.outcome("timeout")
            await _send_plain(send, 400, "bad request")
            return
        except DecryptError:
            m.outcome("decrypt_failed")
            await _send_plain(send, 400, "could not decrypt")
            return
        if not _admit(opener.key_id, opener.enc):
            await _send_plain(send, 400, "could not decrypt")
            return
        sealer = opener.response_sealer()
        inner = await _inner(b"".join(chunks))
        head = encode_response_head(inner.status, inner.headers)
        if inner.stream is None:
            body = (
                sealer.header()
                + _seal_content(sealer, inner.body, head)
                + sealer.seal_chunk(encode_response_end(), final=True)
            )
            await send(_chunked_start())
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await _stream_sealed(receive, send, head, inner, sealer)

    async def _stream_sealed(
        receive: Receive,
        send: Send,
        head: bytes,
        inner: InnerResponse,
        sealer: ChunkedResponseSealer,
    ) -> None:
        """Seal each piece the engine delivered (everything since the last send) as it comes.

        The response starts with the engine's first piece: the OHTTP header, the inner response
        head and that piece go out as one sealed chunk in one write, so the first token costs
        the client one wake-up instead of three. A watcher notices the client going away and
        stops the engine's stream, so an abandoned answer does not keep the engine generating.
        """
        assert inner.stream is not None
        stream = inner.stream

        async def messages() -> AsyncGenerator[Message, None]:
            prefix: bytes | None = sealer.header()
            async for piece in stream:
                if prefix is None:
                    chunk = _seal_content(sealer, piece)
                else:
                    chunk = prefix + _seal_content(sealer, piece, head)
                    prefix = None
                    yield _chunked_start()
                yield {"type": "http.response.body", "body": chunk, "more_body": True}
            head_chunk = b""
            if prefix is not None:  # an empty answer: the head alone (sealed first), then the end
                yield _chunked_start()
                head_chunk = prefix + sealer.seal_chunk(head)
            end = head_chunk + sealer.seal_chunk(encode_response_end(), final=True)
            yield {"type": "http.response.body", "body": end, "more_body": False}

        try:
            if not await stream_to_client(receive, send, messages()):
                m.outcome("client_gone")
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:  # the engine stream's own clean-up (metrics, connection)
                await aclose()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.serving = Serving(
            state.engine,
            m,
            served_model=cfg.engine.served_model_name,
            timeout_s=cfg.request_timeout_s,
        )
        try:
            yield
        finally:
            evidence.shutdown()
            await state.serving.aclose()

    routes = [
        Route("/v1/attestation", attestation, methods=["GET"]),
        Route("/v1/ohttp-keys", ohttp_keys, methods=["GET"]),
        Route("/v1/log/checkpoint", checkpoint, methods=["GET"]),
        Route("/v1/log/consistency", consistency, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    framework = Starlette(routes=routes, lifespan=lifespan)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/ohttp":
            await ohttp(scope, receive, send)
        else:
            await framework(scope, receive, send)

    return app


def _seal_content(sealer: ChunkedResponseSealer, content: bytes, head: bytes = b"") -> bytes:
    """``content`` as Binary HTTP content chunks of at most :data:`SEAL_CHUNK` bytes, each sealed
    as one OHTTP chunk (``head``, the inner response head, in front of the first). A client's
    opener bounds the chunks it accepts (ours at 1 MiB), so a large answer, or a large burst of a
    stream, is never one chunk; an ordinary burst is one slice, one seal, one write."""
    if len(content) <= SEAL_CHUNK:  # the hot path: no slicing, no list
        return sealer.seal_chunk(head + encode_content_chunk(content))
    return b"".join(
        sealer.seal_chunk(
            (head if at == 0 else b"") + encode_content_chunk(content[at : at + SEAL_CHUNK])
        )
        for at in range(0, len(content), SEAL_CHUNK)
    )


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        body = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return


async def _send_bytes(
    send: Send,
    status: int,
    ctype: bytes,
    body: bytes,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    headers = [
        (b"content-type", ctype),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_plain(
    send: Send, status: int, text: str, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    await _send_bytes(send, status, b"text/plain; charset=utf-8", text.encode(), extra)


class _Disconnected(Exception):
    pass


class _TooLarge(Exception):
    pass
