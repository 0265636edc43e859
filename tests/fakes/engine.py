"""FAKE ENGINE — for tests. A deterministic OpenAI-compatible server; production never uses it.

Run as ``python tests/fakes/engine.py --port P [--host H] [--tokens N] [--tokens-per-second R]``.

The answer is ``echo:`` followed by the prompt's words in reverse order, repeated until it has
``max_tokens`` tokens (or ``--tokens`` when the request names none), so a test can assert that the
answer came from *its* prompt. One word is one token, for the prompt and for the answer, and
``usage`` counts exactly that.

It records nothing to disk and keeps no prompt: ``GET /_fake/stats`` reports counters and whether
the last request carried a ``cache_salt`` (never the value). ``POST /_fake/health`` with
``{"ok": false}`` makes ``/health`` answer 503, for supervisor tests.

It is also the synthetic engine of ``bench/``: every SSE line of a response is encoded before the
first is sent, so the per-token cost is one ASGI send (and, when paced, one sleep).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MODEL_ID = "openpcc-model"
OWNED_BY = "FAKE ENGINE — for tests"
MAX_BODY = 4 * 1024 * 1024


class FakeEngine:
    """The ASGI app. ``tokens`` is the default answer length, ``rate`` tokens/s (0 = unpaced)."""

    def __init__(self, *, tokens: int = 16, rate: float = 0.0, model: str = MODEL_ID) -> None:
        self.tokens = tokens
        self.rate = rate
        self.model = model
        self.healthy = True
        self.requests_served = 0
        self.requests_with_cache_salt = 0
        self.streams_abandoned = 0
        self.last_cache_salt_present = False
        # Only digests, and only to count distinct salts: enough to show a per-request salt.
        self._salt_digests: set[bytes] = set()
        self._counter = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path == "/health" and method == "GET":
            await _send_json(send, 200 if self.healthy else 503, {})
        elif path == "/v1/models" and method == "GET":
            await _send_json(send, 200, self._models())
        elif path == "/_fake/stats" and method == "GET":
            await _send_json(send, 200, self._stats())
        elif path == "/_fake/health" and method == "POST":
            body = await _read_json(receive)
            self.healthy = bool(body.get("ok", True)) if isinstance(body, dict) else True
            await _send_json(send, 200, {"ok": self.healthy})
        elif path in ("/v1/completions", "/v1/chat/completions") and method == "POST":
            await self._generate(path == "/v1/chat/completions", receive, send)
        else:
            await _send_error(send, 404, f"no route {method} {path}", "NotFoundError")

    def _models(self) -> dict[str, Any]:
        card = {"id": self.model, "object": "model", "created": 0, "owned_by": OWNED_BY}
        return {"object": "list", "data": [card]}

    def _stats(self) -> dict[str, Any]:
        return {
            "fake": True,
            "requests_served": self.requests_served,
            "requests_with_cache_salt": self.requests_with_cache_salt,
            "last_cache_salt_present": self.last_cache_salt_present,
            "distinct_cache_salts": len(self._salt_digests),
            "streams_abandoned": self.streams_abandoned,
        }

    async def _generate(self, chat: bool, receive: Receive, send: Send) -> None:
        body = await _read_json(receive)
        if not isinstance(body, dict):
            await _send_error(send, 400, "request body must be a JSON object", "BadRequestError")
            return
        try:
            prompt_words, answer_source = _words(body, chat)
        except (KeyError, TypeError, ValueError):
            await _send_error(send, 400, "malformed prompt or messages", "BadRequestError")
            return
        salt = body.get("cache_salt")
        self.last_cache_salt_present = isinstance(salt, str) and bool(salt)
        if self.last_cache_salt_present:
            self.requests_with_cache_salt += 1
            self._salt_digests.add(hashlib.sha256(str(salt).encode()).digest())
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        count = int(limit) if isinstance(limit, int) and limit > 0 else self.tokens
        finish = "length" if limit else "stop"
        cycle = ["echo:", *reversed(answer_source)]
        pieces = [(" " if i else "") + cycle[i % len(cycle)] for i in range(count)]
        usage = {
            "prompt_tokens": prompt_words,
            "completion_tokens": count,
            "total_tokens": prompt_words + count,
        }
        self._counter += 1
        rid = f"{'chatcmpl' if chat else 'cmpl'}-fake{self._counter:08d}"
        created = int(time.time())
        if body.get("stream"):
            opts = body.get("stream_options")
            include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
            lines = _sse_lines(chat, rid, created, self.model, pieces, finish, usage, include_usage)
            await self._stream(lines, receive, send)
        else:
            text = "".join(pieces)
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            obj = "chat.completion" if chat else "text_completion"
            await _send_json(
                send,
                200,
                {
                    "id": rid,
                    "object": obj,
                    "created": created,
                    "model": self.model,
                    "choices": [choice],
                    "usage": usage,
                },
            )
        self.requests_served += 1

    async def _stream(self, lines: list[bytes], receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        disconnected = asyncio.create_task(_wait_disconnect(receive))
        try:
            start = time.perf_counter()
            for i, line in enumerate(lines):
                if disconnected.done():
                    self.streams_abandoned += 1  # the reader went away mid-answer
                    return
                if self.rate > 0:
                    delay = start + i / self.rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await send({"type": "http.response.body", "body": line, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            disconnected.cancel()


def _words(body: dict[str, Any], chat: bool) -> tuple[int, list[str]]:
    """(prompt token count, words the answer is made of)."""
    if not chat:
        prompt = body["prompt"]
        if isinstance(prompt, list):
            prompt = " ".join(str(p) for p in prompt)
        if not isinstance(prompt, str):
            raise TypeError("prompt")
        words = prompt.split()
        return len(words), words
    total, last_user = 0, []
    for message in body["messages"]:
        content = message.get("content") or ""
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        words = str(content).split()
        total += len(words)
        if message.get("role") == "user":
            last_user = words
    return total, last_user


def _sse_lines(
    chat: bool,
    rid: str,
    created: int,
    model: str,
    pieces: list[str],
    finish: str,
    usage: dict[str, int],
    include_usage: bool,
) -> list[bytes]:
    obj = "chat.completion.chunk" if chat else "text_completion"
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(choice: dict[str, Any]) -> bytes:
        event = {"id": rid, "object": obj, "created": created, "model": model}
        event["choices"] = [{"index": 0, "logprobs": None, **choice}]
        event.update(extra)
        return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"

    lines: list[bytes] = []
    if chat:
        lines.append(chunk({"delta": {"role": "assistant", "content": ""}, "finish_reason": None}))
        lines += [chunk({"delta": {"content": p}, "finish_reason": None}) for p in pieces]
        lines.append(chunk({"delta": {}, "finish_reason": finish}))
    else:
        lines += [chunk({"text": p, "finish_reason": None}) for p in pieces]
        lines.append(chunk({"text": "", "finish_reason": finish}))
    if include_usage:
        event = {"id": rid, "object": obj, "created": created, "model": model}
        event.update(choices=[], usage=usage)
        lines.append(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")
    lines.append(b"data: [DONE]\n\n")
    return lines


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _read_json(receive: Receive) -> Any:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_BODY:
            return None
        if not message.get("more_body", False):
            break
    try:
        return json.loads(b"".join(chunks) or b"null")
    except ValueError:
        return None


async def _send_json(send: Send, status: int, obj: object) -> None:
    body = json.dumps(obj).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, status: int, message: str, kind: str) -> None:
    error = {"message": message, "type": kind, "param": None, "code": status}
    await _send_json(send, status, {"error": error})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FAKE ENGINE — for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--tokens-per-second", type=float, default=0.0)
    parser.add_argument("--served-model-name", default=MODEL_ID)
    args = parser.parse_args(argv)
    app = FakeEngine(tokens=args.tokens, rate=args.tokens_per_second, model=args.served_model_name)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        log_level="warning",
        lifespan="off",
    )


if __name__ == "__main__":
    main()
