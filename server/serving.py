"""The inner OpenAI API, behind the encryption: route, salt the cache, forward to the engine.

No web framework here: requests and responses are Binary HTTP values and byte iterators. Nothing
in this module logs, stores or puts into an error message any part of a prompt or an answer.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from server.engine_http import EngineHttp, EngineHttpError, EngineResponse, EngineTimeout
from server.engines import EngineSupervisor
from server.metrics import Metrics
from server.ohttp import BhttpRequest

__all__ = ["InnerResponse", "Serving", "openai_error"]

ROUTES = {
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("GET", "/v1/models"),
}
_JSON = (("content-type", "application/json"),)
_SSE = (("content-type", "text/event-stream"), ("cache-control", "no-store"))


@dataclass(slots=True)
class InnerResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


def openai_error(status: int, message: str, kind: str) -> InnerResponse:
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    return InnerResponse(status, _JSON, body)


class Serving:
    def __init__(
        self, engine: EngineSupervisor, metrics: Metrics, *, served_model: str, timeout_s: float
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._model = served_model
        self._timeout = timeout_s
        self._http: EngineHttp | None = None
        self._http_base = ""

    def _engine_http(self) -> EngineHttp:
        # The supervisor picks the engine's address once; it is stable across restarts.
        base = self._engine.base_url
        if self._http is None or self._http_base != base:
            if self._http is not None:
                self._http.close()
            self._http = EngineHttp.for_url(base, read_timeout=self._timeout)
            self._http_base = base
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            self._http.close()

    async def handle(self, req: BhttpRequest) -> InnerResponse:
        path = req.path.split("?", 1)[0]
        if (req.method, path) not in ROUTES:
            self._metrics.outcome("bad_request")
            return openai_error(404, f"no route {req.method} {path}", "not_found_error")
        if self._engine.state != "ready":
            self._metrics.outcome("unavailable")
            return openai_error(503, f"engine is {self._engine.state}", "engine_unavailable")
        if req.method == "GET":
            return await self._forward_plain("GET", path, None)
        try:
            payload = json.loads(req.body or b"{}")
        except (ValueError, RecursionError):  # malformed, not UTF-8, huge numbers, deep nesting
            self._metrics.outcome("bad_request")
            return openai_error(400, "request body is not valid JSON", "invalid_request_error")
        if not isinstance(payload, dict):
            self._metrics.outcome("bad_request")
            return openai_error(400, "request body must be a JSON object", "invalid_request_error")
        payload["model"] = self._model
        # A fresh salt per request: no user can probe another's prompt through prefix-cache timing.
        payload["cache_salt"] = secrets.token_urlsafe(16)
        body = json.dumps(payload).encode()
        if payload.get("stream") is True:
            return await self._forward_stream(path, body)
        return await self._forward_plain("POST", path, body)

    async def _forward_plain(self, method: str, path: str, body: bytes | None) -> InnerResponse:
        t0 = time.perf_counter()
        try:
            r = await self._engine_http().request(method, path, body)
            content = await r.read()
        except EngineTimeout:
            self._metrics.outcome("timeout")
            return openai_error(504, "engine timed out", "engine_timeout")
        except EngineHttpError as e:
            self._metrics.outcome("engine_error")
            return openai_error(502, f"engine failed ({type(e).__name__})", "engine_error")
        self._metrics.request_seconds.observe(time.perf_counter() - t0)
        self._metrics.outcome("ok" if r.status < 400 else "engine_error")
        if r.status < 400 and body is not None:
            self._count_usage(content)
        ctype = r.headers.get("content-type", "application/json")
        return InnerResponse(r.status, (("content-type", ctype),), content)

    def _count_usage(self, content: bytes) -> None:
        try:
            usage = json.loads(content).get("usage") or {}
            self._metrics.add_tokens(
                int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
            )
        except (AttributeError, TypeError, ValueError, RecursionError):
            return

    async def _forward_stream(self, path: str, body: bytes) -> InnerResponse:
        t0 = time.perf_counter()
        try:
            r = await self._engine_http().request("POST", path, body)
            if r.status >= 400:
                content = await r.read()
                self._metrics.outcome("engine_error")
                return InnerResponse(r.status, _JSON, content)
        except EngineTimeout:
            self._metrics.outcome("timeout")
            return openai_error(504, "engine timed out", "engine_timeout")
        except EngineHttpError as e:
            self._metrics.outcome("engine_error")
            return openai_error(502, f"engine failed ({type(e).__name__})", "engine_error")
        return InnerResponse(200, _SSE, stream=self._relay(r, t0))

    async def _relay(self, r: EngineResponse, t0: float) -> AsyncIterator[bytes]:
        m = self._metrics
        m.active_streams += 1
        tokens = 0
        prompt_tokens = 0
        last = t0
        outcome = "ok"
        try:
            async for piece in r.iter_batches():
                now = time.perf_counter()
                # Each SSE event from an OpenAI engine carries one token; counting lines is
                # enough for aggregate metrics and costs nothing on the hot path. A piece is
                # everything that arrived since the last one: often many tokens.
                n = piece.count(b"data: ") - piece.count(b"data: [DONE]")
                if n > 0:
                    if tokens == 0:
                        m.ttft.observe(now - t0)
                    else:
                        m.itl.observe((now - last) / n)
                    tokens += n
                    last = now
                if b'"prompt_tokens"' in piece:  # the usage chunk, when the client asked for it
                    prompt_tokens = _prompt_tokens(piece) or prompt_tokens
                yield piece
        except EngineHttpError as e:
            outcome = "engine_error"
            err = {
                "error": {
                    "message": f"engine failed during generation ({type(e).__name__})",
                    "type": "engine_error",
                    "code": 502,
                }
            }
            yield b"data: " + json.dumps(err).encode() + b"\n\n"
        finally:
            m.active_streams -= 1
            r.close()
            m.add_tokens(prompt_tokens, tokens)
            m.request_seconds.observe(time.perf_counter() - t0)
            m.outcome(outcome)


def _prompt_tokens(piece: bytes) -> int:
    for line in piece.split(b"\n"):
        if line.startswith(b"data: {") and b'"prompt_tokens"' in line:
            try:
                usage = json.loads(line[6:]).get("usage") or {}
                return int(usage.get("prompt_tokens", 0))
            except (AttributeError, TypeError, ValueError, RecursionError):
                return 0
    return 0
