"""The machine and software a run measured: enough to compare runs and to name the host."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import psutil

__all__ = ["describe_machine"]

_PACKAGES = (
    "openpcc",
    "httpx",
    "httpcore",
    "h11",
    "uvicorn",
    "httptools",
    "uvloop",
    "starlette",
    "cryptography",
    "pyhpke",
    "llama-cpp-python",
    "vllm",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit(root: Path) -> str | None:
    try:
        r = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None


def describe_machine() -> dict[str, object]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    tee = "sev-snp" if Path("/dev/sev-guest").exists() else None
    if tee is None and Path("/dev/tdx_guest").exists():
        tee = "tdx"
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "tee": tee,
        "gpu": Path("/dev/nvidia0").exists(),
        "hostname": platform.node(),
        "commit": _git_commit(Path(__file__).resolve().parent.parent),
        "versions": versions,
    }
