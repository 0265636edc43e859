"""``openpcc verify-report``: verify one SEV-SNP report against pinned AMD roots and a policy.

Exit codes: 0 verified and policy satisfied; 3 the report, a certificate or the policy cannot be
parsed; 4 signature, chain or TCB-consistency failure; 5 policy violation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from attest.errors import ParseError, PolicyError, VerificationError, exit_code_for
from attest.sevsnp.abi import REPORT_SIZE, Report, parse_report
from attest.sevsnp.validate import POLICY_CHECKS, SnpPolicy, evaluate_report
from attest.sevsnp.verify import CHECKS, load_certificates
from attest.sevsnp.verify import verify_report as verify_snp_report

__all__ = ["VerifyOutcome", "read_report_bytes", "run_verify_report", "verify_report"]

SIMULATED_BANNER = "SIMULATED — NOT CONFIDENTIAL"
_NOT_RUN = "not run: an earlier check failed"


@dataclass
class VerifyOutcome:
    """What the command decided: exit code, every check row, and the parsed report if any."""

    exit_code: int = 0
    checks: list[dict[str, object]] = field(default_factory=list)
    report: Report | None = None
    product: str | None = None
    simulated: bool = False
    error: str = ""

    def add(self, name: str, ok: bool | None, detail: str) -> None:
        self.checks.append({"name": name, "ok": ok, "detail": detail})

    def fail(self, exc: ParseError | VerificationError | PolicyError, name: str) -> None:
        self.exit_code = exit_code_for(exc)
        self.error = str(exc)
        if isinstance(exc, VerificationError):
            self.add(exc.check, False, exc.detail)
        elif not isinstance(exc, PolicyError):
            self.add(name, False, str(exc))

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.exit_code == 0,
            "simulated": self.simulated,
            "checks": self.checks,
            "report": None if self.report is None else self.report.to_dict(self.product),
        }


def read_report_bytes(data: bytes) -> bytes:
    """Raw 1184-byte report, or the same as hex text (whitespace ignored). ``ParseError`` else."""
    if len(data) == REPORT_SIZE:
        return data
    try:
        text = data.decode("ascii")
        raw = bytes.fromhex("".join(text.split()).removeprefix("0x"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ParseError(
            f"report is neither {REPORT_SIZE} raw bytes nor hex text ({len(data)} bytes)"
        ) from exc
    return raw


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ParseError(f"cannot read {what} {path}: {exc}") from exc


def run_verify_report(
    report_path: Path,
    cert_paths: list[Path],
    *,
    policy_path: Path | None = None,
    at: datetime | None = None,
    simulated_root: Path | None = None,
    crl_path: Path | None = None,
) -> VerifyOutcome:
    """Do the whole verification without printing; the command renders the outcome."""
    out = VerifyOutcome(simulated=simulated_root is not None)
    try:
        out.report = parse_report(read_report_bytes(_read(report_path, "report")))
    except ParseError as exc:
        out.fail(exc, "parse")
        return out
    report = out.report
    out.add("parse", True, f"ATTESTATION_REPORT version {report.version}, {len(report.raw)} bytes")
    certs: list[x509.Certificate] = []
    try:
        for path in cert_paths:
            certs.extend(load_certificates(_read(path, "certificates")))
        policy = SnpPolicy() if policy_path is None else SnpPolicy.from_toml(policy_path)
        roots = None
        if simulated_root is not None:
            roots = load_certificates(_read(simulated_root, "simulated root"))
        crl = None if crl_path is None else _read(crl_path, "CRL")
    except ParseError as exc:
        out.fail(exc, "input")
        return out

    try:
        verified = verify_snp_report(
            report,
            certs,
            roots=roots,
            now=at,
            crl=crl,
            on_check=lambda name, detail: out.add(name, True, detail),
        )
    except VerificationError as exc:
        out.fail(exc, exc.check)
        done = {str(row["name"]) for row in out.checks}
        for name in (*CHECKS, *POLICY_CHECKS):
            if name not in done and not (name == "crl" and crl is None):
                out.add(name, False, _NOT_RUN)
        return out
    out.product = verified.product
    if crl is None:
        out.add("crl", None, "not checked: no --crl given")

    results = evaluate_report(verified.report, policy, product=verified.product)
    for result in results:
        out.add(result.name, result.ok, result.detail)
    failed = [r for r in results if r.ok is False]
    if failed:
        error = PolicyError(
            [r.detail for r in failed], check=failed[0].name if len(failed) == 1 else "policy"
        )
        out.fail(error, "policy")
    return out


def _parse_at(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO-8601 time: {value!r}", param_hint="--at") from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _render(out: VerifyOutcome, console: Console) -> None:
    if out.simulated:
        console.print(f"[bold red]{SIMULATED_BANNER}[/]: trusting a simulated AMD root")
    table = Table(title="SEV-SNP report verification")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for row in out.checks:
        ok, detail = row["ok"], str(row["detail"])
        if ok is True:
            result = "[green]PASS[/]"
        elif ok is None:
            result = "[yellow]not checked[/]"
        elif detail == _NOT_RUN:
            result = "[dim]not run[/]"
        else:
            result = "[red]FAIL[/]"
        table.add_row(Text(str(row["name"])), Text.from_markup(result), Text(detail))
    console.print(table)
    if out.exit_code == 0:
        tag = f" ({SIMULATED_BANNER})" if out.simulated else ""
        console.print(f"[bold green]verified[/]: {out.product} report, policy satisfied{tag}")
    else:
        console.print(f"[bold red]rejected[/] (exit {out.exit_code}): {escape(out.error)}")


def verify_report(
    report: Annotated[
        Path, typer.Argument(help="ATTESTATION_REPORT: raw 1184 bytes or hex text.", dir_okay=False)
    ],
    certs: Annotated[
        list[Path],
        typer.Option(
            "--certs",
            help="PEM or DER certificate file(s): the VCEK/VLEK at least. Repeatable.",
            dir_okay=False,
        ),
    ],
    policy: Annotated[
        Path | None, typer.Option("--policy", help="Policy TOML.", dir_okay=False)
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at", help="Check certificate validity at this ISO-8601 time (default now)."
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
    crl: Annotated[
        Path | None, typer.Option("--crl", help="AMD CRL (PEM or DER) to check.", dir_okay=False)
    ] = None,
    simulated_root: Annotated[
        Path | None,
        typer.Option(
            "--simulated-root",
            help="Trust this SIMULATED ARK instead of AMD's pinned roots. NOT CONFIDENTIAL.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Verify an SEV-SNP report: signature, AMD chain, TCB consistency, then policy."""
    out = run_verify_report(
        report,
        certs,
        policy_path=policy,
        at=_parse_at(at),
        simulated_root=simulated_root,
        crl_path=crl,
    )
    if json_output:
        typer.echo(json.dumps(out.to_json(), indent=2))
    else:
        _render(out, Console())
    raise typer.Exit(out.exit_code)
