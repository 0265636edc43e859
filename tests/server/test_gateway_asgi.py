"""The gateway's ``/v1/ohttp`` driven in process, as raw ASGI: edges that need exact timing or
sizes (a key retiring while a body arrives, answers larger than one sealed chunk may be, inner
JSON that makes the parser itself fail, a client leaving mid-stream). Nothing here may escape
the app as an exception: that would be an outer 500 and a traceback in the host's log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from server.bhttp_stream import StreamingResponseDecoder
from server.config import GatewayConfig
from server.gateway import SEAL_CHUNK, GatewayState, LogView, create_app
from server.keys import KeyRing
from server.metrics import Metrics
from server.ohttp import BhttpRequest, ChunkedRequestSealer, encode_request
from server.serving import InnerResponse, Serving

Message = dict[str, Any]


class _Bundles:
    tee = "sim-sev-snp"


class _Engine:
    state = "ready"
    base_url = "http://127.0.0.1:9"

    def snapshot(self) -> dict[str, object]:
        return {"state": "ready"}


@dataclass
class _Inner:
    """An inner handler standing in for ``Serving``: answers what the test says."""

    answer: Callable[[BhttpRequest], Awaitable[InnerResponse]]
    seen: list[BhttpRequest] = field(default_factory=list)

    async def handle(self, req: BhttpRequest) -> InnerResponse:
        self.seen.append(req)
        return await self.answer(req)


def _gateway(
    inner: object, *, clock: Callable[[], float] | None = None, **cfg: Any
) -> tuple[GatewayState, Any]:
    keys = KeyRing(clock=clock) if clock is not None else KeyRing()
    state = GatewayState(
        GatewayConfig(**cfg),
        keys,
        _Bundles(),  # type: ignore[arg-type]
        _Engine(),  # type: ignore[arg-type]
        LogView(dict, str, lambda a, b: []),
        Metrics(),
    )
    app = create_app(state)
    state.serving = inner  # type: ignore[assignment]
    return state, app


@dataclass
class _Exchange:
    status: int | None
    body: bytes
    messages: list[Message]


async def _call(
    app: Any,
    pieces: list[bytes],
    *,
    before_last: Callable[[], Awaitable[None]] | None = None,
    leave_after_first_body: bool = False,
) -> _Exchange:
    queue = [
        {"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
        for i, p in enumerate(pieces)
    ]
    sent: list[Message] = []
    first_body = asyncio.Event()

    async def receive() -> Message:
        if queue:
            if len(queue) == 1 and before_last is not None:
                await before_last()
            return queue.pop(0)
        if leave_after_first_body:
            await first_body.wait()
            return {"type": "http.disconnect"}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            first_body.set()

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/ohttp",
        "headers": [(b"content-type", b"message/ohttp-chunked-req")],
    }
    await app(scope, receive, send)
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return _Exchange(status, body, sent)


def _request(keys: KeyRing, body: bytes) -> tuple[bytes, ChunkedRequestSealer]:
    sealer = ChunkedRequestSealer(keys.current_config)
    inner = encode_request(
        BhttpRequest("POST", "https", "openpcc", "/v1/chat/completions", (), body)
    )
    return sealer.header() + sealer.seal_chunk(inner, final=True), sealer


def _open(sealer: ChunkedRequestSealer, body: bytes) -> tuple[int, bytes]:
    """What our client does with an answer: every chunk within its opener's default limit."""
    opener = sealer.response_opener()
    decoder = StreamingResponseDecoder()
    status, content = 0, bytearray()
    for chunk in [*opener.feed(body), *opener.close()]:  # fed as they open, as the client does
        head, pieces = decoder.feed(chunk)
        if head is not None:
            status = head.status
        content += b"".join(pieces)
    return status, bytes(content)


def _json(status: int, body: bytes) -> Callable[[BhttpRequest], Awaitable[InnerResponse]]:
    async def answer(_req: BhttpRequest) -> InnerResponse:
        return InnerResponse(status, (("content-type", "application/json"),), body)

    return answer


@pytest.mark.parametrize("size", [SEAL_CHUNK - 1, SEAL_CHUNK + 1, 3 * 1024 * 1024 + 17])
def test_answers_larger_than_a_chunk_are_sealed_in_pieces(size: int) -> None:
    """A client's opener bounds a chunk (ours at 1 MiB): a 3 MiB answer still opens."""
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    state, app = _gateway(_Inner(_json(200, body)))
    enc, sealer = _request(state.keys, b"{}")
    exchange = asyncio.run(_call(app, [enc]))
    assert exchange.status == 200
    assert _open(sealer, exchange.body) == (200, body)


def test_a_large_streamed_burst_is_sealed_in_pieces() -> None:
    burst = b"data: " + b"y" * (2 * 1024 * 1024) + b"\n\n"

    async def stream() -> AsyncIterator[bytes]:
        yield b"data: {}\n\n"
        yield burst

    async def answer(_req: BhttpRequest) -> InnerResponse:
        return InnerResponse(200, (("content-type", "text/event-stream"),), stream=stream())

    state, app = _gateway(_Inner(answer))
    enc, sealer = _request(state.keys, b'{"stream": true}')
    exchange = asyncio.run(_call(app, [enc]))
    assert _open(sealer, exchange.body) == (200, b"data: {}\n\n" + burst)


@pytest.mark.parametrize(
    "payload",
    [b'{"max_tokens": ' + b"9" * 5000 + b"}", b"[" * 100_000 + b"]" * 100_000],
    ids=["integer-over-4300-digits", "nesting-deeper-than-the-parser"],
)
def test_inner_json_that_breaks_the_parser_is_an_encrypted_400(payload: bytes) -> None:
    metrics = Metrics()
    serving = Serving(_Engine(), metrics, served_model="m", timeout_s=5.0)  # type: ignore[arg-type]
    state, app = _gateway(serving)
    enc, sealer = _request(state.keys, payload)
    exchange = asyncio.run(_call(app, [enc]))
    assert exchange.status == 200  # the outer status says nothing about the inner request
    status, content = _open(sealer, exchange.body)
    assert status == 400
    assert json.loads(content)["error"]["message"] == "request body is not valid JSON"


def test_a_key_retired_while_the_body_arrived_is_refused() -> None:
    """Opened under a key that retired before admission: its replay memory is gone, so the
    request cannot be shown fresh and is refused, not waved through as unknown."""
    now = [0.0]
    inner = _Inner(_json(200, b"{}"))
    state, app = _gateway(inner, clock=lambda: now[0])
    first, _ = _request(state.keys, b"{}")
    enc, _ = _request(state.keys, b"{}")  # another request under the same key
    assert asyncio.run(_call(app, [first])).status == 200

    async def retire() -> None:
        now[0] = 3600.0  # rotation: the key becomes the previous one
        state.keys.tick()
        now[0] = 3600.0 + 301.0  # past the overlap: retired
        state.keys.tick()

    exchange = asyncio.run(_call(app, [enc[:40], enc[40:]], before_last=retire))
    assert (exchange.status, exchange.body) == (400, b"could not decrypt")
    assert len(inner.seen) == 1
    assert state.metrics.requests["decrypt_failed"] == 1


def test_a_request_chunk_over_one_mib_within_max_body_is_answered() -> None:
    inner = _Inner(_json(200, b"{}"))
    state, app = _gateway(inner, max_body_bytes=4 * 1024 * 1024)
    enc, _ = _request(state.keys, b'{"prompt": "' + b"z" * (1024 * 1024 + 100) + b'"}')
    assert asyncio.run(_call(app, [enc])).status == 200
    assert len(inner.seen) == 1


def test_a_client_leaving_mid_stream_is_counted_not_raised() -> None:
    async def stream() -> AsyncIterator[bytes]:
        yield b"data: {}\n\n"
        await asyncio.sleep(3600)
        yield b"never"

    async def answer(_req: BhttpRequest) -> InnerResponse:
        return InnerResponse(200, (("content-type", "text/event-stream"),), stream=stream())

    state, app = _gateway(_Inner(answer))
    enc, _ = _request(state.keys, b'{"stream": true}')
    exchange = asyncio.run(_call(app, [enc], leave_after_first_body=True))
    assert exchange.status == 200
    assert state.metrics.requests["client_gone"] == 1
    assert state.in_flight == 0


def test_an_empty_streamed_answer_is_the_head_then_the_end() -> None:
    async def stream() -> AsyncIterator[bytes]:
        return
        yield b""  # an async generator that yields nothing

    async def answer(_req: BhttpRequest) -> InnerResponse:
        return InnerResponse(200, (("content-type", "text/event-stream"),), stream=stream())

    state, app = _gateway(_Inner(answer))
    enc, sealer = _request(state.keys, b'{"stream": true}')
    exchange = asyncio.run(_call(app, [enc]))
    assert _open(sealer, exchange.body) == (200, b"")
