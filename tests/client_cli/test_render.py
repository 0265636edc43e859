"""The verification table shows evidence text as text: a node cannot crash or restyle it."""

from __future__ import annotations

from rich.console import Console

from attest.bundle import CheckResult, VerificationRun
from attest.errors import VerificationError
from client_cli.render import print_run


def test_details_from_evidence_are_never_markup() -> None:
    """A certificate subject like ``CN=[/x]`` (the node chooses it) crashed Rich's markup
    parser; ``[bold]`` would have restyled the table."""
    hostile = "certificate 0 (CN=[/x],O=[bold]Evil[/bold]) is not signed by the next one"
    run = VerificationRun(
        [CheckResult("report-parse", "pass", "ok"), CheckResult("cert-chain", "fail", hostile)],
        error=VerificationError("cert-chain", hostile),
    )
    console = Console(record=True, width=400, color_system=None)
    print_run(console, run, "http://node.test")
    assert "CN=[/x],O=[bold]Evil[/bold]" in console.export_text()
