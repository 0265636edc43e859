"""``openpcc-appliance dashboard``: the live dashboard of this host's appliance (or ``--url``)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from appliance.state import ApplianceRecord, StatePaths
from attest.errors import OpenPCCError, exit_code_for

__all__ = ["dashboard"]


def dashboard(
    url: str | None = typer.Option(
        None, "--url", help="gateway URL (default: this host's appliance)"
    ),
) -> None:
    """Live dashboard: attestation and every check, measurements, GPUs, throughput, host."""
    from tui.app import run_dashboard

    if url is None:
        try:
            url = ApplianceRecord.load(StatePaths.default().record).gateway_url
        except OpenPCCError as e:
            err = Console(stderr=True)
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            if e.hint:
                err.print(f"[dim]hint: {escape(e.hint)}[/]", highlight=False)
            raise typer.Exit(exit_code_for(e)) from e
    run_dashboard(url)
