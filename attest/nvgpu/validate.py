"""Policy for verified GPU evidence: CC state, driver and VBIOS allowlists.

Policy is data: :class:`GpuPolicy` is frozen and built from a mapping or a TOML file. Unknown keys
and an empty policy are errors. :func:`validate_gpu` collects every violation into one
:class:`PolicyError`, each naming the field and both values.

The CC state comes from :func:`gpu_cc_state`, and only from verified evidence. No report field
states it: FEATURE_FLAG is the topology mode (SPT, MPT, PPCIE) and has no value for CC off or
DevTools. What establishes it is what NVIDIA's verifier uses, every active measurement matching
NVIDIA's RIMs for the GPU's driver and VBIOS (or, for a SIMULATED GPU, the simulation's reference
values). Without them the state is *not established*, and the detail says exactly that.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attest.errors import ParseError, PolicyError
from attest.nvgpu.abi import GpuReport
from attest.nvgpu.verify import VerifiedGpu

__all__ = ["CC_NOT_ESTABLISHED", "GpuCcState", "GpuPolicy", "gpu_cc_state", "validate_gpu"]

_KEYS = frozenset({"require_cc", "driver_versions", "vbios_versions"})

CC_NOT_ESTABLISHED = "measurements not compared with RIMs: CC/DevTools state not established"


@dataclass(frozen=True, slots=True)
class GpuCcState:
    """What verified evidence establishes about one GPU's confidential-computing state."""

    established: bool
    detail: str


def gpu_cc_state(verified: VerifiedGpu, *, rims_matched: str | None = None) -> GpuCcState:
    """The CC state of a verified GPU.

    Established when every active measurement matched reference values: those
    :func:`~attest.nvgpu.verify.verify_gpu_report` compared, or ``rims_matched``, naming RIMs
    the caller compared itself (:func:`~attest.nvgpu.rim.check_rims`) and that all matched.
    """
    matched = rims_matched or verified.measurements_matched
    if matched is None:
        return GpuCcState(established=False, detail=CC_NOT_ESTABLISHED)
    return GpuCcState(
        established=True,
        detail=f"CC state established: every active measurement matches {matched}",
    )


def _strings(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ParseError(f"GPU policy {name} must be a non-empty list of strings")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class GpuPolicy:
    """What GPU evidence must show. ``require_cc``: the GPU's CC state must be established,
    i.e. its measurements must have matched reference values (:func:`gpu_cc_state`); evidence
    whose measurements were not compared with RIMs fails unless ``require_cc`` is False, which
    the policy must then say explicitly."""

    require_cc: bool = True
    driver_versions: tuple[str, ...] = ()
    vbios_versions: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> GpuPolicy:
        if not data:
            raise ParseError("GPU policy is empty")
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise ParseError(f"unknown GPU policy keys: {', '.join(unknown)}")
        require_cc = data.get("require_cc", True)
        if not isinstance(require_cc, bool):
            raise ParseError("GPU policy require_cc must be true or false")
        return cls(
            require_cc=require_cc,
            driver_versions=_strings("driver_versions", data["driver_versions"])
            if "driver_versions" in data
            else (),
            vbios_versions=_strings("vbios_versions", data["vbios_versions"])
            if "vbios_versions" in data
            else (),
        )

    @classmethod
    def from_toml(cls, path: Path) -> GpuPolicy:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ParseError(f"GPU policy {path} is not TOML: {exc}") from exc
        return cls.from_mapping(data)


def validate_gpu(
    report: GpuReport, policy: GpuPolicy, *, cc: GpuCcState | None = None
) -> list[tuple[str, str]]:
    """Checks that passed, as (name, detail); PolicyError lists every failure.

    ``cc`` is the GPU's :func:`gpu_cc_state`; None counts as not established.
    """
    passed: list[tuple[str, str]] = []
    violations: list[str] = []
    if policy.require_cc:
        if cc is not None and cc.established:
            passed.append(("gpu-cc", cc.detail))
        else:
            detail = cc.detail if cc is not None else CC_NOT_ESTABLISHED
            violations.append(f"cc: {detail}; policy requires the CC state established")
    opaque = report.opaque
    for field, value, allowed in (
        ("driver_version", opaque.driver_version, policy.driver_versions),
        ("vbios_version", opaque.vbios_version, policy.vbios_versions),
    ):
        if not allowed:
            continue
        if value in allowed:
            passed.append((f"gpu-{field.replace('_', '-')}", value))
        else:
            violations.append(f"{field}: report {value}, policy allows {', '.join(allowed)}")
    if violations:
        raise PolicyError(violations, check="gpu-policy")
    return passed
