"""engine_command golden tests: the exact argv each engine kind runs."""

from __future__ import annotations

import sys

import pytest

from server.engines import EngineSpec, engine_command

VLLM_CURRENT = [
    "vllm",
    "serve",
    "google/gemma-3-27b-it",
    "--host",
    "127.0.0.1",
    "--port",
    "8001",
    "--served-model-name",
    "openpcc-model",
    "--disable-uvicorn-access-log",
    "--max-model-len",
    "8192",
]


def test_vllm_current_logs_no_requests_by_default() -> None:
    spec = EngineSpec(kind="vllm", model="google/gemma-3-27b-it", args=("--max-model-len", "8192"))
    assert engine_command(spec, 8001, vllm_version="0.11.2") == VLLM_CURRENT
    # 0.12 removed --disable-log-requests: passing it would stop vLLM from starting.
    assert engine_command(spec, 8001, vllm_version="0.12.0") == VLLM_CURRENT


def test_vllm_before_0_11_needs_disable_log_requests() -> None:
    spec = EngineSpec(kind="vllm", model="google/gemma-3-27b-it", args=("--max-model-len", "8192"))
    expected = [*VLLM_CURRENT[:9], "--disable-log-requests", *VLLM_CURRENT[9:]]
    assert engine_command(spec, 8001, vllm_version="0.8.5.post1") == expected
    assert engine_command(spec, 8001, vllm_version="0.10.1rc1") == expected


def test_embedded_with_model() -> None:
    spec = EngineSpec(kind="embedded", model="/models/m.gguf", args=("--threads", "4"))
    assert engine_command(spec, 9000) == [
        sys.executable,
        "-I",
        "-m",
        "server.engines.embedded",
        "--model",
        "/models/m.gguf",
        "--host",
        "127.0.0.1",
        "--port",
        "9000",
        "--served-model-name",
        "openpcc-model",
        "--threads",
        "4",
    ]


def test_embedded_default_model_is_resolved_by_the_engine() -> None:
    spec = EngineSpec(kind="embedded", served_model_name="gemma")
    assert engine_command(spec, 9000) == [
        sys.executable,
        "-I",
        "-m",
        "server.engines.embedded",
        "--host",
        "127.0.0.1",
        "--port",
        "9000",
        "--served-model-name",
        "gemma",
    ]


def test_command_substitutes_host_and_port() -> None:
    spec = EngineSpec(kind="command", args=("srv", "--bind={host}:{port}", "-p", "{port}"))
    assert engine_command(spec, 1234) == ["srv", "--bind=127.0.0.1:1234", "-p", "1234"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "vllm"}, "needs a model"),
        ({"kind": "command"}, "needs its argv"),
        ({"kind": "gpu"}, "unknown engine kind"),
        ({"kind": "embedded", "port": 70000}, "out of range"),
        ({"kind": "vllm", "model": "m", "args": ("--enable-log-requests",)}, "must not log"),
        ({"kind": "vllm", "model": "m", "args": ("--enable-log-outputs=true",)}, "must not log"),
    ],
)
def test_invalid_specs(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EngineSpec(**kwargs)  # type: ignore[arg-type]
