"""GPU host facts for the vLLM configuration: which GPUs, whether vLLM can run, which model.

A GPU host is one where ``nvidia-smi`` lists at least one GPU. ``--model auto`` picks the
largest model in the local Hugging Face cache whose weights leave room on the GPU for vLLM's
KV cache; nothing is downloaded to decide.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from attest.errors import ParseError

__all__ = [
    "DEFAULT_MODEL",
    "WEIGHTS_SHARE",
    "CachedModel",
    "Gpu",
    "GpuProbe",
    "cached_models",
    "detect_gpus",
    "hf_cache_dir",
    "pick_model",
    "vllm_executable",
    "vllm_importable",
]

DEFAULT_MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"
WEIGHTS_SHARE = 0.7
"""A model fits when its weights take at most this share of one GPU's memory: vLLM claims 90 %
by default and needs the rest of it for the KV cache of 64 concurrent sequences."""
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


@dataclass(frozen=True, slots=True)
class Gpu:
    name: str
    memory_mib: int

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "memory_mib": self.memory_mib}


@dataclass(frozen=True, slots=True)
class GpuProbe:
    """What ``nvidia-smi`` said: the GPUs, or why there are none."""

    gpus: tuple[Gpu, ...]
    problem: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"gpus": [g.to_dict() for g in self.gpus], "problem": self.problem}


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)


def parse_nvidia_smi(text: str) -> tuple[Gpu, ...]:
    """``name, memory.total`` CSV lines (``NVIDIA H100 80GB HBM3, 81559 MiB``)."""
    gpus: list[Gpu] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, memory = line.rpartition(",")
        value, _, unit = memory.strip().partition(" ")
        if not sep or not value.isdigit() or unit.strip() not in ("MiB", ""):
            raise ParseError(f"nvidia-smi: unexpected line {line.strip()!r}")
        gpus.append(Gpu(name.strip(), int(value)))
    return tuple(gpus)


def detect_gpus(run: Runner = _run) -> GpuProbe:
    """``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader``; absent: no GPU."""
    if shutil.which("nvidia-smi") is None:
        return GpuProbe((), "no GPU: nvidia-smi is not installed")
    try:
        r = run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"])
    except (OSError, subprocess.TimeoutExpired) as e:
        return GpuProbe((), f"no GPU: nvidia-smi did not run ({e})")
    if r.returncode != 0:
        why = (r.stderr or r.stdout).strip().splitlines()
        return GpuProbe((), f"no GPU: nvidia-smi exited {r.returncode} ({why[0] if why else ''})")
    try:
        gpus = parse_nvidia_smi(r.stdout)
    except ParseError as e:
        return GpuProbe((), f"no GPU: {e}")
    return GpuProbe(gpus, None if gpus else "no GPU: nvidia-smi lists none")


def vllm_importable() -> bool:
    """Whether this interpreter can import vllm (found, not imported: that takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


def vllm_executable() -> str | None:
    """The ``vllm`` the gateway's supervisor will run: on PATH, or beside this interpreter."""
    found = shutil.which("vllm")
    if found is not None:
        return found
    beside = Path(sys.executable).parent / "vllm"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


@dataclass(frozen=True, slots=True)
class CachedModel:
    model_id: str
    weights_bytes: int
    snapshot: Path


def hf_cache_dir() -> Path:
    """Where ``huggingface_hub`` keeps models: ``$HF_HUB_CACHE``, ``$HF_HOME/hub``, or ~/.cache."""
    if env := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env)
    if home := os.environ.get("HF_HOME"):
        return Path(home) / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "huggingface" / "hub"


def cached_models(cache: Path | None = None) -> list[CachedModel]:
    """Every model in the cache with a config and weights, sized by its newest complete snapshot."""
    cache = cache or hf_cache_dir()
    out: list[CachedModel] = []
    if not cache.is_dir():
        return out
    for repo in sorted(cache.glob("models--*")):
        model_id = repo.name.removeprefix("models--").replace("--", "/", 1)
        best: CachedModel | None = None
        for snap in sorted((repo / "snapshots").glob("*")):
            if not (snap / "config.json").is_file():
                continue
            size = 0
            for f in snap.rglob("*"):
                # The snapshot holds links into blobs/; a dangling one is an unfinished download.
                if f.suffix in _WEIGHT_SUFFIXES and f.is_file():
                    size += f.stat().st_size
            if size and (best is None or snap.stat().st_mtime > best.snapshot.stat().st_mtime):
                best = CachedModel(model_id, size, snap)
        if best is not None:
            out.append(best)
    return out


def pick_model(models: Sequence[CachedModel], gpus: Sequence[Gpu]) -> CachedModel:
    """The largest model whose weights fit one GPU (``WEIGHTS_SHARE`` of its memory)."""
    if not gpus:
        raise ParseError(
            "--model auto needs a GPU to size models against, and nvidia-smi lists none",
            hint="name the model: --model ORG/NAME",
        )
    budget = int(max(g.memory_mib for g in gpus) * 2**20 * WEIGHTS_SHARE)
    fitting = [m for m in models if m.weights_bytes <= budget]
    if not fitting:
        have = ", ".join(f"{m.model_id} ({m.weights_bytes / 2**30:.1f} GiB)" for m in models)
        raise ParseError(
            f"--model auto: no model in the Hugging Face cache ({hf_cache_dir()}) fits "
            f"{budget / 2**30:.1f} GiB of weights on one GPU (cached: {have or 'none'})",
            hint="download one (huggingface-cli download ORG/NAME) or name it with --model",
        )
    return max(fitting, key=lambda m: (m.weights_bytes, m.model_id))
