"""Fixtures for engine tests: the asyncio backend and the fake engine as a ``command`` spec."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from server.engines import EngineSpec

FAKE_ENGINE = Path(__file__).resolve().parents[2] / "fakes" / "engine.py"


@pytest.fixture
def anyio_backend() -> str:
    # The supervisor uses asyncio subprocesses, as the gateway (uvicorn) does.
    return "asyncio"


def fake_engine_spec(*extra: str, port: int = 0) -> EngineSpec:
    """The fake engine run through ``kind="command"``, the way tests and bench run it."""
    argv = (sys.executable, str(FAKE_ENGINE), "--host", "{host}", "--port", "{port}", *extra)
    return EngineSpec(kind="command", args=argv, port=port)


@pytest.fixture
def fake_spec() -> EngineSpec:
    return fake_engine_spec()


@pytest.fixture
def make_fake_spec() -> Callable[..., EngineSpec]:
    return fake_engine_spec


@pytest.fixture
def fake_engine_path() -> Path:
    return FAKE_ENGINE
