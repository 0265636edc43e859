"""The fake engine itself: deterministic, prompt-dependent, honest usage, salt seen but not kept."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from server.engines import EngineSpec, EngineSupervisor

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(make_fake_spec: Callable[..., EngineSpec]) -> AsyncIterator[httpx.AsyncClient]:
    sup = EngineSupervisor(make_fake_spec("--tokens", "6"), health_interval=0.1)
    await sup.start()
    try:
        await sup.wait_ready(30)
        async with httpx.AsyncClient(base_url=sup.base_url, trust_env=False) as c:
            yield c
    finally:
        await sup.stop()


async def test_answer_depends_on_the_prompt(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/completions", json={"prompt": "one two three"})
    body = r.json()
    assert body["choices"][0]["text"] == "echo: three two one echo: three"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_chat_stream_with_usage_and_salt(client: httpx.AsyncClient) -> None:
    request = {
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a b"}],
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
        "cache_salt": "s3cret-salt",
    }
    events = []
    async with client.stream("POST", "/v1/chat/completions", json=request) as r:
        async for line in r.aiter_lines():
            if line:
                events.append(line.removeprefix("data: "))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: b a"
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    stats = (await client.get("/_fake/stats")).json()
    assert stats["last_cache_salt_present"] is True
    assert stats["distinct_cache_salts"] == 1
    assert "s3cret-salt" not in json.dumps(stats)
