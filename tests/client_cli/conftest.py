"""Fixtures for the client CLI tests: a paced appliance, and in-process simulated nodes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent


def _load(name: str) -> ModuleType:
    # Tests run with --import-mode=importlib: helper modules are loaded by path, once.
    key = f"_openpcc_tests_client_cli_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, _HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def slow_appliance(appliance_factory: Any) -> Any:
    """A running simulated appliance whose fake engine streams 20 tokens a second."""
    return appliance_factory(fake_args=("--tokens-per-second", "20"))


@pytest.fixture(scope="session")
def simnode_module() -> ModuleType:
    """``tests/client_cli/simnode.py``: a simulated node built in-process (see its docstring)."""
    return _load("simnode")


@pytest.fixture(scope="module")
def sim_node(simnode_module: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One in-process simulated node (evidence keys, GPU, log), shared by a module's tests."""
    return simnode_module.SimNode.create(tmp_path_factory.mktemp("simnode"))
