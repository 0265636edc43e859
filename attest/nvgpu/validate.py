"""Policy for verified GPU evidence: CC mode, driver and VBIOS allowlists.

Policy is data: :class:`GpuPolicy` is frozen and built from a mapping or a TOML file. Unknown keys
and an empty policy are errors. :func:`validate_gpu` collects every violation into one
:class:`PolicyError`, each naming the field and both values.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attest.errors import ParseError, PolicyError
from attest.nvgpu.abi import GpuReport

__all__ = ["GpuPolicy", "validate_gpu"]

_KEYS = frozenset({"require_cc", "driver_versions", "vbios_versions"})


def _strings(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ParseError(f"GPU policy {name} must be a non-empty list of strings")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class GpuPolicy:
    """What GPU evidence must show. ``require_cc``: the signed CC flag must say CC is on;
    a report that carries no CC flag (older Hopper firmware) fails unless ``require_cc`` is
    False, which the policy must then say explicitly."""

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


def validate_gpu(report: GpuReport, policy: GpuPolicy) -> list[tuple[str, str]]:
    """Checks that passed, as (name, detail); PolicyError lists every failure."""
    passed: list[tuple[str, str]] = []
    violations: list[str] = []
    if policy.require_cc:
        if report.cc_enabled:
            passed.append(("gpu-cc", f"CC mode {report.cc_mode}"))
        else:
            violations.append(f"cc_enabled: report {report.cc_enabled}, policy requires True")
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
