"""Shared fixtures: where the real captured evidence lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(__file__).resolve().parent / "assets"


def _vectors_dir() -> Path:
    env = os.environ.get("OPENPCC_VECTORS")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "vectors"


VECTORS = _vectors_dir()


@pytest.fixture(scope="session")
def vectors() -> Path:
    """Real evidence from real hardware (../shared/vectors, or $OPENPCC_VECTORS)."""
    if not (VECTORS / "PROVENANCE.md").is_file():
        pytest.fail(f"real test vectors not found at {VECTORS}; set OPENPCC_VECTORS")
    return VECTORS
