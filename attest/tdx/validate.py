"""Policy for a verified TDX quote: debug and migratable bits, bound service TDs, MRTD / RTMR /
config allowlists, report data, and the platform TCB status that collateral evaluation found.

The floor, whatever the policy lists: DEBUG off, MIGRATABLE off (the TDX counterpart of SEV-SNP's
MIGRATE_MA), and no service TD bound (a TD 1.5 quote's MRSERVICETD zero) unless ``mrservicetd``
lists it. ``allow_debug`` / ``allow_migratable`` lift the first two for offline inspection only:
a client policy refuses them.

Policy is data: :class:`TdxPolicy` is frozen and built from a mapping or a TOML file; unknown
keys, wrong types and an empty policy are :class:`ParseError`. :func:`validate_quote` collects
every violation into one :class:`PolicyError`, each naming the field and both values.

``accepted_tcb_statuses`` (default ``["UpToDate"]``) lists the Intel TCB statuses accepted when
collateral was evaluated; ``"Revoked"`` can never be listed. ``require_collateral = true`` makes
a quote whose collateral was not evaluated, or was evaluated without the PCK and Root CA CRLs
(revocation unchecked), a violation. ``allow_unpinned_rtmrs = true`` lets the
bundle verifier accept a TD whose RTMR0-2 neither the release manifest nor this policy pins (see
:data:`BOUND_RTMRS`); without it such a TD is refused, because MRTD covers only the firmware.
"""

from __future__ import annotations

import hmac
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attest.errors import ParseError, PolicyError
from attest.tdx.abi import MR_SIZE, Quote
from attest.tdx.collateral import DEFAULT_ACCEPTED_TCB_STATUSES, TcbEvaluation, TcbStatus

__all__ = ["BOUND_RTMRS", "TdxPolicy", "validate_quote"]

REPORT_DATA_SIZE = 64
BOUND_RTMRS = ("rtmr0", "rtmr1", "rtmr2")
"""The runtime registers a TD must have bound (by the release manifest or the client's policy)
before its key is used: RTMR0 the firmware configuration the host supplied (TD HOB, ACPI
tables), RTMR1 the kernel and EFI boot path, RTMR2 the kernel command line and initrd. MRTD alone
measures only the TD firmware, so a quote checked on MRTD would accept any kernel."""
_ALLOWLISTS = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid", "mrowner", "mrownerconfig")
_KEYS = frozenset(
    {
        "allow_debug",
        "allow_migratable",
        "mrservicetd",
        "report_data",
        "accepted_tcb_statuses",
        "require_collateral",
        "allow_unpinned_rtmrs",
        *_ALLOWLISTS,
    }
)


def _statuses(value: Any) -> tuple[TcbStatus, ...]:
    known = [s.value for s in TcbStatus if s is not TcbStatus.REVOKED]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ParseError("TDX policy accepted_tcb_statuses must be a non-empty list of strings")
    if TcbStatus.REVOKED.value in value:
        raise ParseError("TDX policy accepted_tcb_statuses cannot accept Revoked")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ParseError(
            f"TDX policy accepted_tcb_statuses: unknown status {', '.join(unknown)}",
            hint=f"Intel's statuses are {', '.join(known)}",
        )
    return tuple(dict.fromkeys(TcbStatus(v) for v in value))


def _hex(name: str, value: Any, size: int) -> bytes:
    if not isinstance(value, str):
        raise ParseError(f"TDX policy {name} must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise ParseError(f"TDX policy {name} is not hex: {value!r}") from exc
    if len(raw) != size:
        raise ParseError(f"TDX policy {name} must be {size} bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True, slots=True)
class TdxPolicy:
    """What a TDX quote must show. Empty allowlists are not checked; ``allow_debug`` is False
    unless the policy says otherwise; only UpToDate collateral is accepted unless
    ``accepted_tcb_statuses`` says otherwise."""

    allow_debug: bool = False
    allow_migratable: bool = False
    mrservicetd: tuple[bytes, ...] = ()
    """Service TDs a TD 1.5 quote may be bound to (MRSERVICETD); none unless listed."""
    mrtd: tuple[bytes, ...] = ()
    rtmr0: tuple[bytes, ...] = ()
    rtmr1: tuple[bytes, ...] = ()
    rtmr2: tuple[bytes, ...] = ()
    rtmr3: tuple[bytes, ...] = ()
    mrconfigid: tuple[bytes, ...] = ()
    mrowner: tuple[bytes, ...] = ()
    mrownerconfig: tuple[bytes, ...] = ()
    report_data: bytes | None = None
    accepted_tcb_statuses: tuple[TcbStatus, ...] = DEFAULT_ACCEPTED_TCB_STATUSES
    require_collateral: bool = False
    allow_unpinned_rtmrs: bool = False

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TdxPolicy:
        if not data:
            raise ParseError("TDX policy is empty")
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise ParseError(f"unknown TDX policy keys: {', '.join(unknown)}")
        allow_debug = data.get("allow_debug", False)
        if not isinstance(allow_debug, bool):
            raise ParseError("TDX policy allow_debug must be true or false")
        allow_migratable = data.get("allow_migratable", False)
        if not isinstance(allow_migratable, bool):
            raise ParseError("TDX policy allow_migratable must be true or false")
        service_tds: tuple[bytes, ...] = ()
        if "mrservicetd" in data:
            values = data["mrservicetd"]
            if not isinstance(values, list) or not values:
                raise ParseError("TDX policy mrservicetd must be a non-empty list of hex strings")
            service_tds = tuple(_hex("mrservicetd", v, MR_SIZE) for v in values)
        require_collateral = data.get("require_collateral", False)
        if not isinstance(require_collateral, bool):
            raise ParseError("TDX policy require_collateral must be true or false")
        allow_unpinned = data.get("allow_unpinned_rtmrs", False)
        if not isinstance(allow_unpinned, bool):
            raise ParseError("TDX policy allow_unpinned_rtmrs must be true or false")
        accepted = (
            _statuses(data["accepted_tcb_statuses"])
            if "accepted_tcb_statuses" in data
            else DEFAULT_ACCEPTED_TCB_STATUSES
        )
        lists: dict[str, tuple[bytes, ...]] = {}
        for name in _ALLOWLISTS:
            if name not in data:
                continue
            values = data[name]
            if not isinstance(values, list) or not values:
                raise ParseError(f"TDX policy {name} must be a non-empty list of hex strings")
            lists[name] = tuple(_hex(name, v, MR_SIZE) for v in values)
        report_data = (
            _hex("report_data", data["report_data"], REPORT_DATA_SIZE)
            if "report_data" in data
            else None
        )
        return cls(
            allow_debug=allow_debug,
            allow_migratable=allow_migratable,
            mrservicetd=service_tds,
            report_data=report_data,
            accepted_tcb_statuses=accepted,
            require_collateral=require_collateral,
            allow_unpinned_rtmrs=allow_unpinned,
            **lists,
        )

    @classmethod
    def from_toml(cls, path: Path) -> TdxPolicy:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ParseError(f"TDX policy {path} is not TOML: {exc}") from exc
        return cls.from_mapping(data)


def validate_quote(
    quote: Quote, policy: TdxPolicy, *, tcb: TcbEvaluation | None = None
) -> list[tuple[str, str]]:
    """Checks that passed, as (name, detail); PolicyError lists every failure.

    ``tcb`` is the collateral evaluation (``VerifiedQuote.tcb``), when there was one.
    """
    body = quote.body
    passed: list[tuple[str, str]] = []
    violations: list[str] = []
    if body.debug and not policy.allow_debug:
        violations.append(
            f"td_attributes.debug: quote {body.td_attributes.hex()} sets DEBUG, policy forbids it"
        )
    else:
        passed.append(("tdx-debug", f"td_attributes {body.td_attributes.hex()}"))
    if body.migratable and not policy.allow_migratable:
        violations.append(
            f"td_attributes.migratable: quote {body.td_attributes.hex()} sets MIGRATABLE (its "
            "state can be exported through a migration TD the host picks), policy forbids it"
        )
    if body.service_td_bound:
        assert body.mrservicetd is not None
        if any(hmac.compare_digest(body.mrservicetd, a) for a in policy.mrservicetd):
            passed.append(("tdx-mrservicetd", body.mrservicetd.hex()))
        else:
            violations.append(
                f"mrservicetd: the TD is bound to service TD {body.mrservicetd.hex()}, which the "
                "policy does not list"
            )
    values = {
        "mrtd": body.mrtd,
        "rtmr0": body.rtmrs[0],
        "rtmr1": body.rtmrs[1],
        "rtmr2": body.rtmrs[2],
        "rtmr3": body.rtmrs[3],
        "mrconfigid": body.mrconfigid,
        "mrowner": body.mrowner,
        "mrownerconfig": body.mrownerconfig,
    }
    for name in _ALLOWLISTS:
        allowed: tuple[bytes, ...] = getattr(policy, name)
        if not allowed:
            continue
        value = values[name]
        if any(hmac.compare_digest(value, a) for a in allowed):
            passed.append((f"tdx-{name}", value.hex()))
        else:
            violations.append(
                f"{name}: quote {value.hex()}, policy allows {', '.join(a.hex() for a in allowed)}"
            )
    if policy.report_data is not None:
        if hmac.compare_digest(body.report_data, policy.report_data):
            passed.append(("tdx-report-data", body.report_data.hex()))
        else:
            violations.append(
                f"report_data: quote {body.report_data.hex()}, policy {policy.report_data.hex()}"
            )
    accepted = ", ".join(policy.accepted_tcb_statuses)
    if tcb is None:
        if policy.require_collateral:
            violations.append(
                f"tcb_status: no collateral was evaluated, policy requires one of {accepted}"
            )
    else:
        if tcb.status in policy.accepted_tcb_statuses:
            passed.append(("tdx-tcb-status", f"{tcb.status} accepted"))
        else:
            ids = f" (advisories {', '.join(tcb.advisory_ids)})" if tcb.advisory_ids else ""
            violations.append(f"tcb_status: platform {tcb.status}{ids}, policy accepts {accepted}")
        if tcb.revocation is None and policy.require_collateral:
            violations.append(
                "require_collateral: the collateral has no PCK and Root CA CRLs, so revocation "
                "was not checked"
            )
    if violations:
        raise PolicyError(violations, check="tdx-policy")
    return passed
