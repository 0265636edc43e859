"""SEV-SNP policy: what a genuine report must say to be accepted.

A policy is data (TOML) loaded into frozen options. Every violation is collected and reported at
once, each naming the spec field and both values. The floor (DEBUG and MIGRATE_MA forbidden)
applies whatever the file says, unless it explicitly allows them.
"""

from __future__ import annotations

import hmac
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from attest.errors import ParseError, PolicyError
from attest.sevsnp.abi import (
    AUTHOR_KEY_DIGEST_SIZE,
    HOST_DATA_SIZE,
    ID_KEY_DIGEST_SIZE,
    MEASUREMENT_SIZE,
    REPORT_DATA_SIZE,
    Report,
    TcbVersion,
)

__all__ = [
    "POLICY_CHECKS",
    "PolicyCheck",
    "SnpPolicy",
    "TcbMinimum",
    "evaluate_report",
    "validate_report",
]

# Every check validate_report knows, in the order it reports them.
POLICY_CHECKS = (
    "debug",
    "migrate_ma",
    "measurement",
    "report_data",
    "host_data",
    "vmpl",
    "min_tcb",
    "min_abi",
    "id_key_digest",
    "author_key_digest",
    "signing_key",
)

_TCB_FIELDS = ("bootloader", "tee", "snp", "microcode", "fmc")
_KEYS = (
    "measurements",
    "report_data",
    "host_data",
    "allow_debug",
    "allow_migrate_ma",
    "vmpls",
    "min_tcb",
    "min_abi",
    "id_key_digests",
    "author_key_digests",
    "require_signing_key",
)


@dataclass(frozen=True, slots=True)
class TcbMinimum:
    """Per-component minimum security versions; None leaves a component unchecked."""

    bootloader: int | None = None
    tee: int | None = None
    snp: int | None = None
    microcode: int | None = None
    fmc: int | None = None

    def items(self) -> list[tuple[str, int]]:
        return [(f.name, v) for f in fields(self) if (v := getattr(self, f.name)) is not None]


@dataclass(frozen=True, slots=True)
class SnpPolicy:
    """Frozen policy options. ``SnpPolicy()`` is the floor: no debug, no migration agent."""

    measurements: tuple[bytes, ...] | None = None
    report_data: bytes | None = None
    host_data: bytes | None = None
    allow_debug: bool = False
    allow_migrate_ma: bool = False
    vmpls: tuple[int, ...] | None = None
    min_tcb: TcbMinimum | None = None
    min_abi: tuple[int, int] | None = None
    id_key_digests: tuple[bytes, ...] | None = None
    author_key_digests: tuple[bytes, ...] | None = None
    require_signing_key: str | None = None

    @classmethod
    def from_toml(cls, source: str | Path) -> SnpPolicy:
        """Load from a TOML file (a ``Path``, or a ``str`` naming an existing file) or TOML text."""
        if isinstance(source, Path) or (
            "=" not in source and "\n" not in source and Path(source).is_file()
        ):
            try:
                text = Path(source).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ParseError(f"cannot read policy {source}: {exc}") from exc
        else:
            text = source
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ParseError(f"policy is not valid TOML: {exc}") from exc
        return cls.from_mapping(data)

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> SnpPolicy:
        """Build from a mapping; an unknown key or an empty policy is a ``ParseError``."""
        if not isinstance(data, Mapping):
            raise ParseError("policy must be a table")
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise ParseError(f"unknown policy key(s): {', '.join(unknown)}")
        if not data:
            raise ParseError("empty policy: name at least one requirement")
        return cls(
            measurements=_hex_list(data, "measurements", MEASUREMENT_SIZE),
            report_data=_hex_value(data, "report_data", REPORT_DATA_SIZE),
            host_data=_hex_value(data, "host_data", HOST_DATA_SIZE),
            allow_debug=_bool(data, "allow_debug"),
            allow_migrate_ma=_bool(data, "allow_migrate_ma"),
            vmpls=_vmpls(data),
            min_tcb=_min_tcb(data),
            min_abi=_min_abi(data),
            id_key_digests=_hex_list(data, "id_key_digests", ID_KEY_DIGEST_SIZE),
            author_key_digests=_hex_list(data, "author_key_digests", AUTHOR_KEY_DIGEST_SIZE),
            require_signing_key=_signing_key(data),
        )


def _hex(value: object, key: str, size: int) -> bytes:
    if not isinstance(value, str):
        raise ParseError(f"policy {key}: expected a hex string, got {type(value).__name__}")
    try:
        raw = bytes.fromhex(value.strip().removeprefix("0x"))
    except ValueError as exc:
        raise ParseError(f"policy {key}: not hex: {exc}") from exc
    if len(raw) != size:
        raise ParseError(f"policy {key}: {len(raw)} bytes, expected {size}")
    return raw


def _hex_value(data: Mapping[str, object], key: str, size: int) -> bytes | None:
    return None if key not in data else _hex(data[key], key, size)


def _hex_list(data: Mapping[str, object], key: str, size: int) -> tuple[bytes, ...] | None:
    if key not in data:
        return None
    value = data[key]
    if not isinstance(value, list) or not value:
        raise ParseError(f"policy {key}: expected a non-empty list of hex strings")
    return tuple(_hex(item, f"{key}[{i}]", size) for i, item in enumerate(value))


def _bool(data: Mapping[str, object], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ParseError(f"policy {key}: expected true or false")
    return value


def _small_int(value: object, key: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise ParseError(f"policy {key}: expected an integer 0..{limit}, got {value!r}")
    return value


def _vmpls(data: Mapping[str, object]) -> tuple[int, ...] | None:
    if "vmpls" not in data:
        return None
    value = data["vmpls"]
    if not isinstance(value, list) or not value:
        raise ParseError("policy vmpls: expected a non-empty list of integers 0..3")
    return tuple(_small_int(v, f"vmpls[{i}]", 3) for i, v in enumerate(value))


def _min_tcb(data: Mapping[str, object]) -> TcbMinimum | None:
    if "min_tcb" not in data:
        return None
    value = data["min_tcb"]
    if not isinstance(value, Mapping) or not value:
        raise ParseError(
            "policy min_tcb: expected a non-empty table { bootloader, tee, snp, microcode, fmc }"
        )
    unknown = sorted(set(value) - set(_TCB_FIELDS))
    if unknown:
        raise ParseError(f"unknown policy key(s): {', '.join('min_tcb.' + k for k in unknown)}")
    parts = {k: _small_int(v, f"min_tcb.{k}", 0xFF) for k, v in value.items()}
    return TcbMinimum(**parts)


def _min_abi(data: Mapping[str, object]) -> tuple[int, int] | None:
    if "min_abi" not in data:
        return None
    value = data["min_abi"]
    if not isinstance(value, str):
        raise ParseError('policy min_abi: expected "major.minor"')
    major, sep, minor = value.partition(".")
    if not sep or not major.isdigit() or not minor.isdigit():
        raise ParseError(f'policy min_abi: expected "major.minor", got {value!r}')
    return _small_int(int(major), "min_abi major", 0xFF), _small_int(
        int(minor), "min_abi minor", 0xFF
    )


def _signing_key(data: Mapping[str, object]) -> str | None:
    if "require_signing_key" not in data:
        return None
    value = data["require_signing_key"]
    if value not in ("vcek", "vlek"):
        raise ParseError(f'policy require_signing_key: expected "vcek" or "vlek", got {value!r}')
    return str(value)


@dataclass(frozen=True, slots=True)
class PolicyCheck:
    """One policy check: ``ok`` is None when the policy does not ask for it."""

    name: str
    ok: bool | None
    detail: str


def _in(value: bytes, allowed: Sequence[bytes]) -> bool:
    found = False
    for candidate in allowed:
        found |= hmac.compare_digest(value, candidate)
    return found


def evaluate_report(
    report: Report, policy: SnpPolicy, *, product: str | None = None
) -> tuple[PolicyCheck, ...]:
    """Every policy check with its outcome (passed, failed, not checked), in POLICY_CHECKS order."""
    out: list[PolicyCheck] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        out.append(PolicyCheck(name, ok, detail))

    debug = int(report.policy.debug)
    if report.policy.debug and not policy.allow_debug:
        add("debug", False, f"POLICY.DEBUG is {debug}, policy requires 0")
    else:
        add("debug", True, f"POLICY.DEBUG is {debug}" + (" (allowed)" if debug else ""))
    mma = int(report.policy.migrate_ma)
    if report.policy.migrate_ma and not policy.allow_migrate_ma:
        add("migrate_ma", False, f"POLICY.MIGRATE_MA is {mma}, policy requires 0")
    else:
        add("migrate_ma", True, f"POLICY.MIGRATE_MA is {mma}" + (" (allowed)" if mma else ""))

    def digests(name: str, field: str, value: bytes, allowed: tuple[bytes, ...] | None) -> None:
        if allowed is None:
            add(name, None, f"not checked: {field} {value.hex()}")
        elif _in(value, allowed):
            add(name, True, f"{field} {value.hex()} is allowed")
        else:
            want = ", ".join(a.hex() for a in allowed)
            add(name, False, f"{field} is {value.hex()}, policy allows {want}")

    digests("measurement", "MEASUREMENT", report.measurement, policy.measurements)
    digests(
        "report_data",
        "REPORT_DATA",
        report.report_data,
        None if policy.report_data is None else (policy.report_data,),
    )
    digests(
        "host_data",
        "HOST_DATA",
        report.host_data,
        None if policy.host_data is None else (policy.host_data,),
    )

    if policy.vmpls is None:
        add("vmpl", None, f"not checked: VMPL {report.vmpl}")
    elif report.vmpl in policy.vmpls:
        add("vmpl", True, f"VMPL {report.vmpl} is allowed")
    else:
        add("vmpl", False, f"VMPL is {report.vmpl}, policy allows {list(policy.vmpls)}")

    product = product or report.cpuid_product()
    if policy.min_tcb is None:
        add(
            "min_tcb",
            None,
            f"not checked: REPORTED_TCB {TcbVersion.decode(report.reported_tcb, product)}",
        )
    else:
        problems: list[str] = []
        for field in ("reported_tcb", "current_tcb", "committed_tcb"):
            have = report.tcb(field, product).components()
            for comp, minimum in policy.min_tcb.items():
                spec = f"{field.upper()}.{comp.upper()}"
                if comp not in have:
                    problems.append(
                        f"{spec} does not exist on {product or 'Milan/Genoa'}, "
                        f"policy minimum {minimum}"
                    )
                elif have[comp] < minimum:
                    problems.append(f"{spec} is {have[comp]}, policy minimum {minimum}")
        if problems:
            add("min_tcb", False, "; ".join(problems))
        else:
            wanted = " ".join(f"{k}>={v}" for k, v in policy.min_tcb.items())
            add("min_tcb", True, f"REPORTED/CURRENT/COMMITTED_TCB meet {wanted}")

    cur = (report.current_major, report.current_minor)
    com = (report.committed_major, report.committed_minor)
    if policy.min_abi is None:
        add("min_abi", None, f"not checked: CURRENT {cur[0]}.{cur[1]}")
    else:
        want = f"{policy.min_abi[0]}.{policy.min_abi[1]}"
        problems = [
            f"{name}_MAJOR.{name}_MINOR is {v[0]}.{v[1]}, policy minimum {want}"
            for name, v in (("CURRENT", cur), ("COMMITTED", com))
            if v < policy.min_abi
        ]
        if problems:
            add("min_abi", False, "; ".join(problems))
        else:
            add(
                "min_abi",
                True,
                f"firmware ABI {cur[0]}.{cur[1]} (committed {com[0]}.{com[1]}) >= {want}",
            )

    digests("id_key_digest", "ID_KEY_DIGEST", report.id_key_digest, policy.id_key_digests)
    digests(
        "author_key_digest",
        "AUTHOR_KEY_DIGEST",
        report.author_key_digest,
        policy.author_key_digests,
    )

    if policy.require_signing_key is None:
        add("signing_key", None, f"not checked: SIGNER_INFO.SIGNING_KEY {report.signing_key}")
    elif report.signing_key == policy.require_signing_key:
        add("signing_key", True, f"SIGNER_INFO.SIGNING_KEY is {report.signing_key}")
    else:
        add(
            "signing_key",
            False,
            f"SIGNER_INFO.SIGNING_KEY is {report.signing_key}, "
            f"policy requires {policy.require_signing_key}",
        )
    return tuple(out)


def validate_report(
    report: Report, policy: SnpPolicy, *, product: str | None = None
) -> list[tuple[str, str]]:
    """The passed (check, detail) pairs; raises ``PolicyError`` listing every violation.

    ``PolicyError.check`` is the failing check's name when only one fails, else ``"policy"``.
    Call this on ``VerifiedReport.report`` with ``product=VerifiedReport.product``.
    """
    results = evaluate_report(report, policy, product=product)
    failed = [c for c in results if c.ok is False]
    if failed:
        raise PolicyError(
            [c.detail for c in failed], check=failed[0].name if len(failed) == 1 else "policy"
        )
    return [(c.name, c.detail) for c in results if c.ok]
