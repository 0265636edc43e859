"""What engine to run and the exact command line that runs it.

``engine_command`` is pure (no I/O besides reading vLLM's installed version when it is not given),
so the command a release manifest names can be computed and golden-tested anywhere.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Literal

__all__ = ["FORBIDDEN_ENGINE_ARGS", "EngineKind", "EngineSpec", "engine_command"]

EngineKind = Literal["vllm", "embedded", "command"]

# Flags that would make the engine write prompts or outputs to its log: the stateless requirement
# (DESIGN.md §2) forbids them, so a spec carrying one is refused rather than silently run.
FORBIDDEN_ENGINE_ARGS = frozenset(
    {"--enable-log-requests", "--enable-log-outputs", "--enable-prompt-tokens-details-logging"}
)

# vLLM logged every request's prompt by default until 0.11, where ``--disable-log-requests`` was
# replaced by an opt-in ``--enable-log-requests`` (vllm-project/vllm#21739) and then removed in
# 0.12 (#29402): passing it there is a startup error. So the flag depends on the installed version.
_VLLM_QUIET_BY_DEFAULT = (0, 11)


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """An OpenAI-compatible engine served on loopback.

    ``kind="command"`` runs ``args`` as the full argv, with ``{host}`` and ``{port}`` substituted;
    tests and benchmarks use it for the fake engine.
    """

    kind: EngineKind
    model: str = ""
    """vllm: model id or path. embedded: GGUF path; "" = the packaged Gemma 3 270M."""
    args: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 0
    """0 = the supervisor picks a free loopback port."""
    served_model_name: str = "openpcc-model"

    def __post_init__(self) -> None:
        if self.kind not in ("vllm", "embedded", "command"):
            raise ValueError(f"unknown engine kind {self.kind!r}")
        if self.kind == "vllm" and not self.model:
            raise ValueError("a vllm engine needs a model id or path")
        if self.kind == "command" and not self.args:
            raise ValueError("a command engine needs its argv in args")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} out of range")
        logging_flags = sorted(
            {a.split("=", 1)[0] for a in self.args} & FORBIDDEN_ENGINE_ARGS,
        )
        if logging_flags:
            raise ValueError(
                "engine args must not log requests (stateless requirement): "
                + ", ".join(logging_flags)
            )


def _installed_vllm_version() -> str | None:
    try:
        return metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return None


def _version_tuple(version: str) -> tuple[int, int]:
    parts: list[int] = []
    for piece in version.split(".")[:2]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        parts.append(int(digits) if digits else 0)
    while len(parts) < 2:
        parts.append(0)
    return parts[0], parts[1]


def engine_command(spec: EngineSpec, port: int, *, vllm_version: str | None = None) -> list[str]:
    """The argv that serves ``spec`` on ``spec.host:port``.

    ``vllm_version`` defaults to the installed vLLM's version; when vLLM is not installed the
    command for a current vLLM (request logging off by default) is returned.
    """
    if spec.kind == "vllm":
        version = vllm_version if vllm_version is not None else _installed_vllm_version()
        quiet = version is None or _version_tuple(version) >= _VLLM_QUIET_BY_DEFAULT
        return [
            "vllm",
            "serve",
            spec.model,
            "--host",
            spec.host,
            "--port",
            str(port),
            "--served-model-name",
            spec.served_model_name,
            *([] if quiet else ["--disable-log-requests"]),
            "--disable-uvicorn-access-log",
            *spec.args,
        ]
    if spec.kind == "embedded":
        # An empty model is resolved by the engine process itself (assembling the packaged GGUF
        # takes a hash of 250 MB), which keeps this function free of I/O.
        return [
            sys.executable,
            "-I",  # isolated: no user site-packages, no PYTHON* variables, no cwd on the path
            "-m",
            "server.engines.embedded",
            *(["--model", spec.model] if spec.model else []),
            "--host",
            spec.host,
            "--port",
            str(port),
            "--served-model-name",
            spec.served_model_name,
            *spec.args,
        ]
    return [a.replace("{host}", spec.host).replace("{port}", str(port)) for a in spec.args]
