"""``openpcc-appliance``: the operator's CLI (doctor, provision, up, down, status, measure, ...).

The operator is not trusted with content: nothing here reads prompts or answers, and `status`
reads only the appliance's public endpoints and its own records.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from appliance import lifecycle
from appliance.cmd_bench import bench
from appliance.cmd_dashboard import dashboard
from appliance.cmd_image import build_image
from appliance.cmd_release import measure, release
from appliance.doctor import detect_host, run_checks
from appliance.state import StatePaths
from attest.errors import OpenPCCError, exit_code_for
from client_cli.render import SIMULATED_BANNER, print_run

__all__ = ["app"]

app = typer.Typer(
    name="openpcc-appliance",
    help="Provision and run the OpenPCC confidential inference appliance.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("measure")(measure)
app.command("release")(release)
app.command("dashboard")(dashboard)
app.command("bench")(bench)
app.command("build-image")(build_image)
out = Console()
err = Console(stderr=True)


def _fail(e: OpenPCCError) -> typer.Exit:
    err.print(f"[bold red]error:[/] {e}", highlight=False)
    if e.hint:
        err.print(f"[dim]hint: {e.hint}[/]", highlight=False)
    return typer.Exit(exit_code_for(e))


@app.command()
def doctor(
    root: Path = typer.Option(Path("/"), "--root", help="host root (tests use fake trees)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Check the host: TEE support, IOMMU, GPUs and their CC mode, QEMU."""
    checks = run_checks(root)
    facts = detect_host(root)
    if json_out:
        print(json.dumps({"tee": facts.tee, "checks": [c.to_dict() for c in checks]}))
    else:
        table = Table(title="openpcc-appliance doctor")
        for col in ("requirement", "result", "detail", "fix"):
            table.add_column(col, overflow="fold")
        style = {"pass": "green", "warn": "yellow", "fail": "red", "info": "cyan"}
        for c in checks:
            table.add_row(c.name, Text(c.status.upper(), style=style[c.status]), c.detail, c.fix)
        out.print(table)
    if any(c.status == "fail" for c in checks) and facts.tee is not None:
        raise typer.Exit(1)


@app.command()
def provision(
    port: int = typer.Option(lifecycle.DEFAULT_PORT, "--port", min=1, max=65535),
    engine: str = typer.Option(
        "embedded", "--engine", help="embedded (CPU, Gemma 3 270M), vllm, or command"
    ),
    engine_arg: list[str] = typer.Option(
        [], "--engine-arg", help="argv of a 'command' engine, one per option"
    ),
    recipe: Path | None = typer.Option(None, "--recipe", help="release recipe TOML"),
) -> None:
    """Provision the appliance: on a host without a TEE, the SIMULATED one."""
    paths = StatePaths.default()
    facts = detect_host()
    if facts.tee is not None:
        err.print(
            f"[bold]This host supports {facts.tee}.[/] Real-host provisioning launches the "
            "CVM from a release recipe; this command provisions the simulated appliance."
        )
    try:
        res = lifecycle.provision_simulated(
            paths, port=port, engine=engine, engine_args=tuple(engine_arg), recipe=recipe
        )
    except OpenPCCError as e:
        raise _fail(e) from e
    err.print(Text(f"{SIMULATED_BANNER}: provisioned the simulated appliance", style="bold red"))
    out.print(f"state directory: {paths.root}", highlight=False)
    out.print(f"measurement:     {res.measurement.hex()}", highlight=False)
    out.print(f"log index:       {res.log_index}", highlight=False)
    out.print(f"log key:         {res.log_vkey}", highlight=False)


@app.command()
def up(
    timeout: float = typer.Option(900.0, "--timeout", help="seconds to wait for health"),
) -> None:
    """Start the appliance, wait until healthy, and verify its attestation as a client would."""
    paths = StatePaths.default()
    try:
        with err.status("starting the gateway and its engine (first start loads the model)…"):
            run = lifecycle.up(paths, timeout=timeout)
    except OpenPCCError as e:
        raise _fail(e) from e
    print_run(err, run, str(lifecycle.gateway_status(paths).get("gateway_url") or ""))
    if run.error is not None:
        raise typer.Exit(exit_code_for(run.error))


@app.command()
def down() -> None:
    """Stop the appliance (gateway and engine)."""
    stopped = lifecycle.down(StatePaths.default())
    out.print("stopped" if stopped else "not running")


@app.command()
def status(json_out: bool = typer.Option(False, "--json", help="machine-readable")) -> None:
    """State, mode and gateway URL, from the public endpoints."""
    st = lifecycle.gateway_status(StatePaths.default())
    if json_out:
        print(json.dumps(st))
        return
    mode = st.get("mode")
    state = st.get("state")
    colour = "green" if state == "up" else "red"
    out.print(Text("state: ") + Text(str(state), style=f"bold {colour}"))
    out.print(f"mode: {mode}", highlight=False)
    if mode == "simulated":
        out.print(Text(SIMULATED_BANNER, style="bold white on red"))
    out.print(f"gateway: {st.get('gateway_url')}", highlight=False)
    health = st.get("health")
    if isinstance(health, dict):
        engine = health.get("engine", {})
        if isinstance(engine, dict):
            out.print(
                f"engine: {engine.get('kind')} {engine.get('state')}, "
                f"restarts {engine.get('restarts')}",
                highlight=False,
            )
        out.print(f"key id: {health.get('key_id')}", highlight=False)
    out.print(f"log key: {st.get('log_vkey')}", highlight=False)


@app.command()
def logs(lines: int = typer.Option(50, "-n", help="lines from the end")) -> None:
    """The host-side gateway log (lifecycle lines only: no content is ever logged)."""
    path = StatePaths.default().logs / "gateway.log"
    if not path.exists():
        out.print("no log yet")
        return
    for line in path.read_text(errors="replace").splitlines()[-lines:]:
        out.print(line, highlight=False, markup=False)
