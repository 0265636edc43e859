"""Gateway configuration: limits with defaults that protect a 2-core host, loaded strictly."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from attest.errors import ParseError
from server.engines import EngineSpec

__all__ = ["ATTESTATION_PROVIDERS", "GatewayConfig", "load_config"]

#: ``attestation`` values: SEV-SNP (``simulated``, ``configfs``) and Intel TDX (``*-tdx``).
#: ``configfs*`` read real evidence through configfs-tsm; ``simulated*`` sign with the chain
#: generated at install time under ``sim_dir`` (``snp/`` or ``tdx/``) and say SIMULATED.
ATTESTATION_PROVIDERS = ("simulated", "configfs", "simulated-tdx", "configfs-tdx")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8480
    max_body_bytes: int = 1024 * 1024
    max_concurrent: int = 64
    request_timeout_s: float = 600.0
    body_read_timeout_s: float = 30.0
    key_rotation_s: float = 3600.0
    key_overlap_s: float = 300.0
    replay_max_per_key: int = 100_000
    # Nonce'd attestation requests waiting for or producing fresh evidence (one at a time); more
    # are answered 503 "busy". Eight covers a burst of sessions starting together while the last
    # in line still waits only seconds (an NVML report per GPU can take hundreds of ms).
    max_attestation_waiting: int = 8
    # The longest one attestation request waits for fresh evidence, in line and producing it,
    # before it is answered 503 "unavailable"; healthy hardware answers a full line well within.
    attestation_timeout_s: float = 30.0
    attestation: str = "simulated"  # one of ATTESTATION_PROVIDERS
    sim_dir: Path = Path()
    gpu: str = "simulated"  # "simulated" | "none" | "nvidia"
    gpu_count: int = 1
    manifest: Path = Path()
    measurement_hex: str = ""
    log_dir: Path = Path()
    engine: EngineSpec = field(default_factory=lambda: EngineSpec(kind="embedded"))
    engine_log: Path | None = None

    def __post_init__(self) -> None:
        n = self.max_attestation_waiting
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ParseError(f"max_attestation_waiting must be an integer >= 1, not {n!r}")
        t = self.attestation_timeout_s
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise ParseError(f"attestation_timeout_s must be a number of seconds > 0, not {t!r}")


_PATHS = {"sim_dir", "manifest", "log_dir", "engine_log"}


def load_config(path: Path) -> GatewayConfig:
    """Read the gateway's TOML; an unknown key is an error that names it."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ParseError(f"gateway config {path}: {e}") from e
    gw: dict[str, Any] = dict(data.pop("gateway", {}))
    engine: dict[str, Any] = dict(data.pop("engine", {}))
    if data:
        raise ParseError(f"gateway config {path}: unknown section(s) {sorted(data)}")
    known = {f.name for f in fields(GatewayConfig)} - {"engine"}
    unknown = set(gw) - known
    if unknown:
        raise ParseError(f"gateway config {path}: unknown key(s) {sorted(unknown)}")
    for k in _PATHS & set(gw):
        gw[k] = Path(gw[k])
    eng_known = {f.name for f in fields(EngineSpec)}
    if set(engine) - eng_known:
        raise ParseError(
            f"gateway config {path}: unknown engine key(s) {sorted(set(engine) - eng_known)}"
        )
    if "args" in engine:
        engine["args"] = tuple(engine["args"])
    if gw.get("attestation", "simulated") not in ATTESTATION_PROVIDERS:
        raise ParseError(
            f"gateway config {path}: attestation {gw['attestation']!r} is not one of "
            f"{', '.join(ATTESTATION_PROVIDERS)}"
        )
    try:
        return GatewayConfig(**gw, engine=EngineSpec(**engine))
    except (TypeError, ParseError) as e:
        raise ParseError(f"gateway config {path}: {e}") from e
