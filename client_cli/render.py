"""How verification results look to a person: a table of checks and a SIMULATED banner."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from attest.bundle import CHECK_ORDER, VerificationRun

__all__ = ["SIMULATED_BANNER", "checks_table", "print_run", "status_line"]

SIMULATED_BANNER = "SIMULATED — NOT CONFIDENTIAL"
_STYLE = {
    "pass": ("PASS", "bold green"),
    "fail": ("FAIL", "bold red"),
    "skip": ("SKIP", "yellow"),
    "not-run": ("not run", "dim"),
}
_TITLES = dict(CHECK_ORDER)


def checks_table(run: VerificationRun, title: str = "Attestation") -> Table:
    table = Table(title=title, expand=False, show_lines=False)
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for c in run.checks:
        word, style = _STYLE[c.status]
        # A detail quotes evidence (certificate names, values): text, never markup.
        table.add_row(_TITLES.get(c.name, c.name), Text(word, style=style), Text(c.detail))
    return table


def print_run(console: Console, run: VerificationRun, url: str) -> None:
    console.print(checks_table(run, title=f"Attestation of {url}"))
    if run.node is not None and run.node.simulated:
        console.print(
            Panel(
                Text(SIMULATED_BANNER, style="bold white on red", justify="center"),
                border_style="red",
            )
        )
    if run.node is not None:
        console.print(
            Text("VERIFIED", style="bold green")
            + Text(
                f"  {run.node.tee}  measurement {run.node.measurement.hex()[:24]}…  "
                f"key id {run.node.key_config.key_id}"
            )
        )
    elif run.error is not None:
        console.print(Text("NOT VERIFIED: ", style="bold red") + Text(str(run.error)))
        if run.error.hint:
            console.print(Text(f"hint: {run.error.hint}", style="dim"))


def status_line(run: VerificationRun | None, url: str) -> Text:
    if run is None or run.node is None:
        return Text(f"{url}: not verified", style="bold red")
    n = run.node
    line = Text(f"bound to {url} · {n.tee} · measurement {n.measurement.hex()[:16]}… ", style="dim")
    if n.simulated:
        line += Text(SIMULATED_BANNER, style="bold red")
    else:
        line += Text("verified", style="bold green")
    return line
