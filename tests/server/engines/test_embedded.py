"""The embedded engine: HTTP shape and KV isolation on a fake Llama; the real Gemma when present."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from server.engines import EngineSpec, EngineSupervisor, free_loopback_port
from server.engines.embedded import KVIsolation, LlamaBackend, build_app, render_chat

pytestmark = pytest.mark.anyio

EOS = 0


class FakeLlama:
    """Tokens are words; the answer is scripted. Tracks KV reuse like ``llama_cpp.Llama``."""

    def __init__(self, answer: str) -> None:
        self.vocab: list[str] = ["<eos>"]
        self.answer = answer
        self.kv: list[int] = []  # what the previous request left in the cache
        self.resets = 0
        self.reused: list[int] = []  # per request: prefix tokens served from the cache
        self.seeds: list[int] = []

    def _id(self, word: str) -> int:
        if word not in self.vocab:
            self.vocab.append(word)
        return self.vocab.index(word)

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return [self._id(w) for w in text.decode().split(" ") if w]

    def detokenize(
        self, tokens: list[int], prev_tokens: list[int] | None = None, special: bool = False
    ) -> bytes:
        return "".join(self.vocab[t] for t in tokens).encode()

    def reset(self) -> None:
        self.resets += 1
        self.kv = []

    def set_seed(self, seed: int) -> None:
        self.seeds.append(seed)

    def n_ctx(self) -> int:
        return 64

    def generate(self, tokens: Sequence[int], **kwargs: Any) -> Generator[int, Any, None]:
        prefix = 0
        for a, b in zip(self.kv, tokens, strict=False):
            if a != b:
                break
            prefix += 1
        self.reused.append(prefix)
        self.kv = list(tokens)
        for piece in self.answer.split("|"):
            yield self._id(piece)
        yield EOS


def make_client(llm: FakeLlama) -> httpx.AsyncClient:
    backend = LlamaBackend(llm, is_eog=lambda t: t == EOS)
    app = build_app(backend, served_model_name="m")
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://engine")


async def complete(client: httpx.AsyncClient, prompt: str, salt: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": 10}
    if salt is not None:
        body["cache_salt"] = salt
    r = await client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


@pytest.mark.parametrize(
    ("salts", "resets", "reused"),
    [
        (("alice", "bob"), 2, [0, 0]),  # different salts: nothing of alice's prompt reaches bob
        ((None, None), 2, [0, 0]),  # no salt: stricter than vLLM, never shared
        (("alice", None), 2, [0, 0]),
        (("alice", "alice"), 1, [0, 4]),  # the same salt (same user) may reuse its own prefix
    ],
)
async def test_kv_cache_is_shared_only_within_one_salt(
    salts: tuple[str | None, str | None], resets: int, reused: list[int]
) -> None:
    llm = FakeLlama(" ok")
    async with make_client(llm) as client:
        await complete(client, "my secret medical question", salts[0])
        await complete(client, "my secret medical question too", salts[1])
    assert llm.resets == resets
    assert llm.reused == reused


def test_kv_isolation_keeps_no_salt() -> None:
    llm = FakeLlama("")
    guard = KVIsolation(llm)
    assert guard.before_request("salt-value") is True
    assert guard.before_request("salt-value") is False
    assert "salt-value" not in repr(vars(guard))


async def test_completion_shape_usage_and_stop() -> None:
    llm = FakeLlama(" Paris|.| It| is|\nUser:| more")
    async with make_client(llm) as client:
        r = await client.post(
            "/v1/completions", json={"prompt": "The capital of France is", "stop": ["\nUser:"]}
        )
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["model"] == "m"
    assert body["choices"][0] == {
        "index": 0,
        "logprobs": None,
        "finish_reason": "stop",
        "text": " Paris. It is",
    }
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}


async def test_chat_stream_events_and_usage() -> None:
    llm = FakeLlama(" Paris| is| the| capital.")
    request = {
        "model": "m",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": 7,
    }
    async with make_client(llm) as client:
        r = await client.post("/v1/chat/completions", json=request)
    assert r.headers["content-type"].startswith("text/event-stream")
    lines = [x.removeprefix("data: ") for x in r.text.split("\n\n") if x]
    assert lines[-1] == "[DONE]"
    events = [json.loads(x) for x in lines[:-1]]
    assert {e["object"] for e in events} == {"chat.completion.chunk"}
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert content == "Paris is the capital."  # the space after "Assistant:" is dropped
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == 4
    assert llm.seeds == [7]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/completions", {"prompt": "x", "model": "other"}, 404, "does not exist"),
        ("/v1/completions", {"prompt": 5}, 400, "prompt must be a string"),
        ("/v1/completions", {"prompt": "x", "n": 2}, 400, "only n=1"),
        ("/v1/completions", {"prompt": "x", "temperature": 9}, 400, "temperature"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "w " * 80}, 400, "maximum context length is 64"),
        ("/v1/chat/completions", {"messages": []}, 400, "non-empty list"),
        ("/v1/chat/completions", {"messages": [{"content": "x"}]}, 400, "needs a role"),
    ],
)
async def test_errors_are_openai_shaped_and_quote_no_prompt(
    path: str, body: dict[str, Any], status: int, message: str
) -> None:
    async with make_client(FakeLlama("x")) as client:
        r = await client.post(path, json=body)
    assert r.status_code == status
    error = r.json()["error"]
    assert message in error["message"]
    assert error["code"] == status
    assert "w w w" not in error["message"]


def test_render_chat_is_a_transcript_ending_with_the_assistant_turn() -> None:
    prompt = render_chat(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi\nthere"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Capital of Peru?"},
        ]
    )
    assert prompt.startswith("You are terse.\n\n")
    assert "User: Hi there\nAssistant: Hello.\n\nUser: Capital of Peru?\nAssistant:" in prompt
    assert prompt.endswith("Assistant:")


class EndlessLlama(FakeLlama):
    """Generates forever, a token every 10 ms, and records whether it was closed."""

    def __init__(self) -> None:
        super().__init__("")
        self.closed = False
        self.produced = 0

    def generate(self, tokens: Sequence[int], **kwargs: Any) -> Generator[int, Any, None]:
        try:
            while True:
                time.sleep(0.01)
                self.produced += 1
                yield self._id(" word")
        finally:
            self.closed = True


async def test_client_disconnect_stops_generation_and_frees_the_model() -> None:
    llm = EndlessLlama()
    app = build_app(LlamaBackend(llm, is_eog=lambda t: t == EOS), served_model_name="m")
    port = free_loopback_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as c:
            while not server.started:
                await anyio.sleep(0.01)
            request = {"prompt": "go", "max_tokens": 10_000, "stream": True}
            async with c.stream("POST", "/v1/completions", json=request) as r:
                async for _ in r.aiter_lines():
                    if llm.produced >= 3:
                        break
            with anyio.fail_after(5):
                while not llm.closed:
                    await anyio.sleep(0.01)
            stopped_at = llm.produced
            # The lock is free again: a second request is served.
            llm.closed = False
            with anyio.fail_after(5):
                r2 = await c.post("/v1/completions", json={"prompt": "go", "max_tokens": 2})
            assert r2.json()["usage"]["completion_tokens"] == 2
        assert stopped_at < 100
        server.should_exit = True


# -- the real engine ---------------------------------------------------------------------------

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama_cpp not importable: install the cpu extra (python -m appliance.engine_install)",
)


@pytest.mark.slow
@needs_llama
async def test_real_gemma_engine(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    sup = EngineSupervisor(EngineSpec(kind="embedded", args=("--threads", "2")), log_path=log)
    canary = "CANARY-7f3a9 What is the capital of France?"
    await sup.start()
    try:
        await sup.wait_ready(180)
        async with httpx.AsyncClient(base_url=sup.base_url, timeout=120, trust_env=False) as c:
            r = await c.post(
                "/v1/completions",
                json={"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0},
            )
            body = r.json()
            text = body["choices"][0]["text"]
            assert "France" in text or "Paris" in text, text
            assert 0 < body["usage"]["completion_tokens"] <= 12
            request = {
                "messages": [{"role": "user", "content": canary}],
                "temperature": 0,
                "max_tokens": 32,
                "stream": True,
            }
            answer = ""
            async with c.stream("POST", "/v1/chat/completions", json=request) as s:
                async for line in s.aiter_lines():
                    if line.startswith("data: {"):
                        delta = json.loads(line[6:])["choices"][0]["delta"]
                        answer += delta.get("content", "")
            assert "Paris" in answer, answer
    finally:
        await sup.stop()
    assert "CANARY-7f3a9" not in log.read_text(errors="replace")
