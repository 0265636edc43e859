"""The official ``openai`` package, unchanged, through ``openpcc proxy`` to a simulated node."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(proc: subprocess.Popen[str], port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"openpcc proxy exited {proc.returncode}: {err}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    pytest.fail("openpcc proxy did not start listening")


@pytest.fixture(scope="module")
def proxy(appliance: Any) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "openpcc"), "proxy", "--listen", f"127.0.0.1:{port}"],
        env=appliance.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_listening(proc, port)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(proxy: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=proxy, api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def test_chat_completion(client: openai.OpenAI, appliance: Any) -> None:
    before = appliance.metric("openpcc_decrypted_requests_total")
    done = client.chat.completions.create(
        model="openpcc-model",
        messages=[{"role": "user", "content": "Hello there proxy"}],
        max_tokens=4,
    )
    assert done.choices[0].message.content == "echo: proxy there Hello"
    assert done.choices[0].finish_reason == "length"
    assert done.usage is not None and done.usage.completion_tokens == 4
    assert appliance.metric("openpcc_decrypted_requests_total") == before + 1


def test_streamed_chat_completion(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="openpcc-model",
        messages=[{"role": "user", "content": "stream me please"}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    finish = None
    usage = None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert len([p for p in pieces if p]) == 8  # one chunk per token: it really streamed
    assert "".join(pieces) == "echo: please me stream echo: please me stream"
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 8


def test_completion(client: openai.OpenAI) -> None:
    done = client.completions.create(model="openpcc-model", prompt="raw text here", max_tokens=4)
    assert done.choices[0].text == "echo: here text raw"


def test_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["openpcc-model"]


def test_every_answer_says_it_is_simulated(client: openai.OpenAI) -> None:
    raw = client.models.with_raw_response.list()
    assert "SIMULATED" in raw.headers["openpcc-node"]
    assert "sim-sev-snp" in raw.headers["openpcc-node"]


def test_an_unknown_route_is_not_forwarded(proxy: str) -> None:
    import httpx

    r = httpx.post(proxy + "/embeddings", json={"input": "x"}, timeout=10)
    assert r.status_code == 404
