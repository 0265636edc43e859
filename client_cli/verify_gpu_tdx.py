"""``openpcc verify-gpu`` and ``openpcc verify-tdx``: check one piece of evidence offline.

Each prints every check (name, status, detail) as a table, or with ``--json``
``{"ok", "checks": [{"name", "ok", "status", "detail"}], "report" | "quote": {...}}``. A check's
status is ``pass``, ``fail`` or ``not-checked`` (what the inputs given cannot establish: no
``--nonce``, no ``--rim``, no ``--collateral``); ``ok`` is true for ``pass`` only. The command
succeeds when nothing failed, and names what it did not check. Exit codes follow
``attest.errors.EXIT_CODES``: 0 ok, 3 unparsable, 4 signature or chain failure, 5 policy.

``verify-gpu`` never reports the GPU's CC state from a report field: FEATURE_FLAG is the topology
mode. The state is established (``gpu-cc`` pass) only when the measurements matched the RIMs
given with ``--rim``; otherwise ``gpu-cc`` is not checked and says so.
"""

from __future__ import annotations

import json
import string
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from cryptography import x509
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from attest.errors import OpenPCCError, ParseError, PolicyError, VerificationError, exit_code_for
from attest.nvgpu.abi import NONCE_SIZE, parse_gpu_report
from attest.nvgpu.validate import gpu_cc_state
from attest.nvgpu.verify import load_gpu_chain, run_gpu_checks
from attest.pemfile import read_pem_certificates
from attest.tdx.abi import parse_quote
from attest.tdx.collateral import (
    COLLATERAL_FILES,
    PCK_CRL_FILES,
    ROOT_CA_CRL_FILES,
    TcbEvaluation,
    evaluate_collateral,
    load_collateral_dir,
)
from attest.tdx.validate import TdxPolicy, validate_quote
from attest.tdx.verify import run_quote_checks

__all__ = ["verify_gpu", "verify_tdx"]

_HEX = frozenset(string.hexdigits)

Status = Literal["pass", "fail", "not-checked"]
Check = tuple[str, Status, str]
_SHOWN: dict[Status, str] = {
    "pass": "[green]yes[/]",
    "fail": "[red]NO[/]",
    "not-checked": "[yellow]not checked[/]",
}


def _parse_at(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO-8601 time: {value}", param_hint="--at") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _parse_nonce(value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        nonce = bytes.fromhex(value)
    except ValueError as exc:
        raise typer.BadParameter("nonce must be hex", param_hint="--nonce") from exc
    if len(nonce) != NONCE_SIZE:
        raise typer.BadParameter(f"nonce must be {NONCE_SIZE} bytes", param_hint="--nonce")
    return nonce


def _read_evidence(path: Path) -> bytes:
    """Raw bytes, or hex text (as NVIDIA's tools and the test vectors store reports)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from exc
    text = b"".join(data.split())
    if text and len(text) % 2 == 0 and all(chr(c) in _HEX for c in text):
        return bytes.fromhex(text.decode("ascii"))
    return data


def _emit(
    *,
    title: str,
    checks: list[Check],
    key: str,
    parsed: dict[str, Any] | None,
    as_json: bool,
    error: OpenPCCError | None,
) -> None:
    ok = error is None and all(status != "fail" for _, status, _ in checks)
    if as_json:
        doc: dict[str, Any] = {
            "ok": ok,
            "checks": [
                {"name": n, "ok": status == "pass", "status": status, "detail": d}
                for n, status, d in checks
            ],
        }
        if parsed is not None:
            doc[key] = parsed
        typer.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        table = Table(title=title)
        table.add_column("check")
        table.add_column("ok")
        table.add_column("detail", overflow="fold")
        for name, status, detail in checks:
            table.add_row(name, _SHOWN[status], Text(detail))  # evidence text, not markup
        console = Console()
        console.print(table)
        if error is not None:
            console.print(f"[red]FAILED[/] {escape(str(error))}")
            if error.hint:
                console.print(f"hint: {escape(error.hint)}")
        else:
            skipped = [name for name, status, _ in checks if status == "not-checked"]
            console.print(
                "[green]OK[/]"
                + (f" [yellow](not checked: {', '.join(skipped)})[/]" if skipped else "")
            )
    if error is not None:
        raise typer.Exit(exit_code_for(error))


def _failed(name: str, error: OpenPCCError) -> Check:
    if isinstance(error, VerificationError):
        return (error.check, "fail", error.detail)
    if isinstance(error, PolicyError):
        return (error.check, "fail", "; ".join(error.violations))
    return (name, "fail", str(error))


def _read_rims(paths: list[Path]) -> dict[str, bytes]:
    """RIM files by label: the file name, or the whole path where two names collide."""
    names = [p.name for p in paths]
    rims: dict[str, bytes] = {}
    for path in paths:
        label = path.name if names.count(path.name) == 1 else str(path)
        try:
            rims[label] = path.read_bytes()
        except OSError as exc:
            raise ParseError(f"cannot read RIM {path}: {exc.strerror or exc}") from exc
    return rims


def _read_rim_root(path: Path) -> list[x509.Certificate]:
    return read_pem_certificates(path, "RIM root")


def verify_gpu(
    report: Annotated[Path, typer.Argument(help="SPDM attestation report (raw or hex)")],
    certs: Annotated[Path, typer.Option("--certs", help="PEM certificate chain, leaf first")],
    nonce: Annotated[
        str | None, typer.Option("--nonce", help="expected request nonce (64 hex chars)")
    ] = None,
    rim: Annotated[
        list[Path] | None,
        typer.Option(
            "--rim",
            metavar="FILE",
            help="NVIDIA RIM (SWID tag) of this GPU's driver or VBIOS, as NVIDIA serves it; "
            "repeat to give both. Checks each RIM's signature and chain, that its version is "
            "the report's, and every measurement index against it",
        ),
    ] = None,
    rim_root: Annotated[
        Path | None,
        typer.Option(
            "--rim-root",
            metavar="PEM",
            help="PEM root that RIM signatures must chain to, instead of the pinned "
            '"NVIDIA CoRIM signing Root CA"',
        ),
    ] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="check certificate validity at this ISO-8601 time")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Verify an NVIDIA GPU attestation report against the pinned NVIDIA root."""
    when = _parse_at(at)
    expected = _parse_nonce(nonce)
    if rim_root is not None and not rim:
        raise typer.BadParameter("--rim-root needs --rim", param_hint="--rim-root")
    checks: list[Check] = []
    parsed: dict[str, Any] | None = None
    error: OpenPCCError | None = None
    stage = "gpu-parse"
    try:
        gpu = parse_gpu_report(_read_evidence(report))
        parsed = gpu.to_dict()
        checks.append(("gpu-parse", "pass", f"SPDM {parsed['spdm_version']}, {gpu.length} bytes"))
        try:
            chain = load_gpu_chain(certs.read_bytes())
        except OSError as exc:
            raise ParseError(f"cannot read {certs}: {exc.strerror or exc}") from exc
        if not chain:
            raise ParseError(f"{certs} holds no certificates")
        # From here a ParseError can only be about the RIM files (load_rim inside the checks).
        stage = "gpu-rim"
        rims = _read_rims(rim) if rim else None
        rim_roots = _read_rim_root(rim_root) if rim_root is not None else None
        record: list[tuple[str, str]] = []
        not_checked: list[tuple[str, str]] = []
        try:
            verified = run_gpu_checks(
                gpu,
                chain,
                nonce=expected,
                roots=None,
                now=when,
                rims=rims,
                record=record,
                rim_roots=rim_roots,
                not_checked=not_checked,
            )
        finally:
            checks.extend((name, "pass", detail) for name, detail in record)
            checks.extend((name, "not-checked", detail) for name, detail in not_checked)
        if not rims:
            checks.append(("gpu-rim", "not-checked", "no --rim: measurements not compared"))
        state = gpu_cc_state(verified)
        checks.append(("gpu-cc", "pass" if state.established else "not-checked", state.detail))
    except OpenPCCError as exc:
        error = exc
        checks.append(_failed(stage, exc))
    _emit(
        title="NVIDIA GPU attestation",
        checks=checks,
        key="report",
        parsed=parsed,
        as_json=as_json,
        error=error,
    )


def verify_tdx(
    quote: Annotated[Path, typer.Argument(help="TDX DCAP quote (v4 or v5, raw or hex)")],
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            help="TOML policy (debug, MRTD, RTMRs, report data, accepted_tcb_statuses, "
            "require_collateral)",
        ),
    ] = None,
    collateral: Annotated[
        Path | None,
        typer.Option(
            "--collateral",
            file_okay=False,
            metavar="DIR",
            help="directory of Intel PCS collateral for this platform, saved unchanged: "
            f"{COLLATERAL_FILES[0]} (TDX TCB info), {COLLATERAL_FILES[1]} (TD_QE identity), "
            f"{COLLATERAL_FILES[2]} (the TCB-Info-Issuer-Chain header as PEM), and to check "
            f"revocation {PCK_CRL_FILES[0]} and {ROOT_CA_CRL_FILES[0]} (or .pem); evaluates the "
            "platform's TCB status (accepted: UpToDate unless the policy says otherwise)",
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at", help="check certificate and collateral validity at this ISO-8601 time"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Verify an Intel TDX quote to the pinned Intel SGX Root CA, then apply a policy."""
    when = _parse_at(at)
    checks: list[Check] = []
    parsed: dict[str, Any] | None = None
    error: OpenPCCError | None = None
    stage = "tdx-policy-file"
    try:
        # No policy file still means the floor: a debug TD is never accepted by default.
        rules = TdxPolicy.from_toml(policy) if policy is not None else TdxPolicy()
        stage = "tdx-parse"
        tdx = parse_quote(_read_evidence(quote))
        parsed = tdx.to_dict()
        checks.append(("tdx-parse", "pass", f"quote v{tdx.version}, {len(tdx.raw)} bytes"))
        stage = "tdx-collateral"
        files = load_collateral_dir(collateral) if collateral is not None else None
        record: list[tuple[str, str]] = []
        tcb: TcbEvaluation | None = None
        try:
            pck = run_quote_checks(tdx, roots=None, now=when, collateral=None, record=record)
            if files is not None:
                tcb = evaluate_collateral(tdx, pck, files, now=when, record=record)
        finally:
            checks.extend((name, "pass", detail) for name, detail in record)
        if files is None:
            checks.append(
                ("tdx-collateral", "not-checked", "skipped: no --collateral, TCB not evaluated")
            )
        elif tcb is not None and tcb.revocation is None:
            checks.append(
                (
                    "tdx-crl",
                    "not-checked",
                    f"no {PCK_CRL_FILES[0]} / {ROOT_CA_CRL_FILES[0]} in the collateral: "
                    "a revoked PCK certificate would not be noticed",
                )
            )
        stage = "tdx-policy"
        checks.extend(
            (name, "pass", detail) for name, detail in validate_quote(tdx, rules, tcb=tcb)
        )
    except OSError as exc:
        error = ParseError(f"cannot read {policy}: {exc}")
        checks.append(_failed(stage, error))
    except OpenPCCError as exc:
        error = exc
        checks.append(_failed(stage, exc))
    _emit(
        title="Intel TDX quote",
        checks=checks,
        key="quote",
        parsed=parsed,
        as_json=as_json,
        error=error,
    )
