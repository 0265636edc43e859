"""The code base stays lint-clean, formatted and type-checked (strict mypy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "argv",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_is_clean(argv: list[str]) -> None:
    r = subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_install_script_parses_and_has_help() -> None:
    assert subprocess.run(["bash", "-n", str(ROOT / "install.sh")], check=False).returncode == 0
    r = subprocess.run(
        [str(ROOT / "install.sh"), "--help"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0
    assert "SIMULATED" in r.stdout and "--uninstall" in r.stdout
    bad = subprocess.run(
        [str(ROOT / "install.sh"), "--bogus"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and "unknown option '--bogus'" in bad.stderr
