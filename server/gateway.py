"""The sealed gateway's HTTP surface (DESIGN.md sections 3, 5, 6).

Outside the encryption the host sees only public things: the attestation bundle, key
configurations, log checkpoints, aggregate metrics and health. An outer status never says more
than "could not decrypt", "bad request", "too large", "busy" or "unavailable"; everything about
the request itself travels back encrypted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from attest.errors import DecryptError, OpenPCCError, ParseError
from server.attestation import BundleBuilder
from server.bhttp_stream import encode_content_chunk, encode_response_end, encode_response_head
from server.config import GatewayConfig
from server.engines import EngineSupervisor
from server.keys import KeyRing
from server.metrics import Metrics
from server.ohttp import (
    BhttpResponse,
    ChunkedRequestOpener,
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
KEYS_TYPE = "application/ohttp-keys"
_KEY_PROBLEM = {
    "type": "https://iana.org/assignments/http-problem-types#ohttp-key",
    "title": "key identifier unknown",
}


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


def _plain(status: int, text: str) -> Response:
    return PlainTextResponse(text, status_code=status, headers={"cache-control": "no-store"})


def create_app(state: GatewayState) -> Starlette:
    cfg = state.config
    m = state.metrics

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
        try:
            bundle = await asyncio.to_thread(state.bundles.build, nonce)
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
            "openpcc_uptime_seconds": round(time.monotonic() - state.started, 1),
        }
        text = m.render(gauges, lambda: {"tee": state.bundles.tee})
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            raise _TooLarge
        buf = bytearray()
        async with asyncio.timeout(cfg.body_read_timeout_s):
            async for piece in request.stream():
                buf += piece
                if len(buf) > cfg.max_body_bytes:
                    raise _TooLarge
        return bytes(buf)

    async def ohttp(request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in (OHTTP_REQ, CHUNKED_REQ):
            m.outcome("bad_request")
            return _plain(400, "bad request: unsupported media type")
        assert state.serving is not None
        if state.in_flight >= cfg.max_concurrent:
            m.outcome("busy")
            return _plain(503, "busy")
        # A slot is held until the last byte of the answer is sent, not until the handler
        # returns: a streamed answer keeps the engine busy long after that.
        state.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                state.in_flight -= 1

        try:
            if ctype == OHTTP_REQ:
                response = await _one_shot(request)
            else:
                response = await _chunked(request)
        except BaseException:
            release()
            raise
        if isinstance(response, StreamingResponse):
            response.body_iterator = _releasing(response.body_iterator, release)
        else:
            release()
        return response

    async def _one_shot(request: Request) -> Response:
        assert state.serving is not None
        try:
            enc_request = await read_body(request)
        except _TooLarge:
            m.outcome("too_large")
            return _plain(413, "too large")
        except (TimeoutError, ClientDisconnect):
            m.outcome("timeout")
            return _plain(400, "bad request")
        keys = state.keys.accepted()
        if enc_request and enc_request[0] not in keys:
            m.outcome("decrypt_failed")
            return JSONResponse(
                _KEY_PROBLEM, status_code=400, media_type="application/problem+json"
            )
        try:
            plaintext, sealer = decapsulate_request(keys, enc_request)
        except DecryptError:
            m.outcome("decrypt_failed")
            return _plain(400, "could not decrypt")
        refused = _admit(sealer.key_id, sealer.enc)
        if refused is not None:
            return refused
        inner = await _inner(plaintext)
        body = inner.body
        if inner.stream is not None:
            body = b"".join([piece async for piece in inner.stream])
        encoded = encode_response(BhttpResponse(inner.status, inner.headers, body))
        return Response(
            sealer.seal(encoded), media_type=OHTTP_RES, headers={"cache-control": "no-store"}
        )

    def _admit(key_id: int, enc: bytes) -> Response | None:
        """Count a decrypted request, or refuse a replay as opaquely as a decryption failure."""
        if not state.keys.admit(key_id, enc):
            m.outcome("replay")
            return _plain(400, "could not decrypt")
        m.decrypted += 1
        return None

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

    async def _chunked(request: Request) -> Response:
        opener = ChunkedRequestOpener(state.keys.accepted())
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(cfg.body_read_timeout_s):
                async for piece in request.stream():
                    size += len(piece)
                    if size > cfg.max_body_bytes + 4096:
                        raise _TooLarge
                    chunks.extend(opener.feed(piece))
                    if opener.finished:
                        break
            chunks.extend(opener.close())
        except _TooLarge:
            m.outcome("too_large")
            return _plain(413, "too large")
        except (TimeoutError, ClientDisconnect):
            m.outcome("timeout")
            return _plain(400, "bad request")
        except DecryptError:
            m.outcome("decrypt_failed")
            return _plain(400, "could not decrypt")
        refused = _admit(opener.key_id, opener.enc)
        if refused is not None:
            return refused
        sealer = opener.response_sealer()
        inner = await _inner(b"".join(chunks))

        async def body() -> AsyncIterator[bytes]:
            yield sealer.header()
            head = encode_response_head(inner.status, inner.headers)
            if inner.stream is None:
                yield sealer.seal_chunk(head + encode_content_chunk(inner.body))
            else:
                yield sealer.seal_chunk(head)
                async for piece in _coalesce(inner.stream):
                    yield sealer.seal_chunk(encode_content_chunk(piece))
            yield sealer.seal_chunk(encode_response_end(), final=True)

        return StreamingResponse(
            body(), media_type=CHUNKED_RES, headers={"cache-control": "no-store"}
        )

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
            await state.serving.aclose()

    routes = [
        Route("/v1/attestation", attestation, methods=["GET"]),
        Route("/v1/ohttp-keys", ohttp_keys, methods=["GET"]),
        Route("/v1/ohttp", ohttp, methods=["POST"]),
        Route("/v1/log/checkpoint", checkpoint, methods=["GET"]),
        Route("/v1/log/consistency", consistency, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


_DONE = object()


async def _coalesce(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Yield everything the engine has produced since the last send as one piece.

    When the engine is faster than the client link, tokens queue up while a chunk is being
    sealed and sent; sending them together costs one seal and one write instead of one per token.
    A paced engine still gets one chunk per token: nothing is ever held back waiting.
    """
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for piece in stream:
                queue.put_nowait(piece)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, re-raised there
            queue.put_nowait(e)
            return
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:  # runs the engine stream's own clean-up (metrics, socket)
                await aclose()
        queue.put_nowait(_DONE)

    task = asyncio.create_task(pump())
    try:
        while True:
            batch: list[bytes] = []
            item = await queue.get()
            while True:
                if item is _DONE:
                    if batch:
                        yield b"".join(batch)
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                batch.append(item)
                if queue.empty():
                    break
                item = queue.get_nowait()
            yield b"".join(batch)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _releasing(
    body: AsyncIterable[str | bytes | memoryview], release: Callable[[], None]
) -> AsyncIterator[str | bytes | memoryview]:
    try:
        async for piece in body:
            yield piece
    finally:
        release()


class _TooLarge(Exception):
    pass
