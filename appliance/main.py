"""``openpcc-appliance``: the operator's CLI (doctor, provision, up, down, status, measure, ...).

The operator is not trusted with content: nothing here reads prompts or answers, and `status`
reads only the appliance's public endpoints and its own records.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from appliance import host as tee_host
from appliance import lifecycle
from appliance import vm as emulated_vm
from appliance.cmd_bench import bench
from appliance.cmd_dashboard import dashboard
from appliance.cmd_image import build_image
from appliance.cmd_release import measure, release, tdx_reference
from appliance.doctor import detect_host, run_checks
from appliance.state import ApplianceRecord, StatePaths
from attest.errors import OpenPCCError, ParseError, exit_code_for
from client_cli.render import SIMULATED_BANNER, print_run
from cvm_boot.recipe import load_recipe

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
app.command("tdx-reference")(tdx_reference)
app.command("dashboard")(dashboard)
app.command("bench")(bench)
app.command("build-image")(build_image)
out = Console()
err = Console(stderr=True)


def _fail(e: OpenPCCError) -> typer.Exit:
    # The text is data (paths, recipe keys like "[tdx]"), never markup.
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
    if e.hint:
        err.print(f"[dim]hint: {escape(e.hint)}[/]", highlight=False)
    return typer.Exit(exit_code_for(e))


@app.command()
def doctor(
    root: Path | None = typer.Option(None, "--root", help="host root (tests use fake trees)"),
    json_out: bool = typer.Option(False, "--json"),
    recipe: Path | None = typer.Option(
        None, "--recipe", help="check for this release recipe (its firmware and memory)"
    ),
    disk_gib: float = typer.Option(
        80.0, "--disk-gib", envvar="OPENPCC_MODEL_DISK_GIB", help="disk the model needs (GiB)"
    ),
) -> None:
    """Check the host: TEE and firmware, IOMMU, GPUs and CC mode, QEMU, OVMF, memory, disk."""
    config = tee_host.HostConfig.from_env()
    root = root or config.root
    try:
        parsed = load_recipe(recipe) if recipe is not None else None
    except OpenPCCError as e:
        raise _fail(e) from e
    options = config.doctor_options(
        recipe=parsed, state_dir=StatePaths.default().root, disk_bytes=int(disk_gib * (1 << 30))
    )
    checks = run_checks(root, options)
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


@app.command("persist-vfio")
def persist_vfio(
    root: Path | None = typer.Option(None, "--root", help="host root (tests use fake trees)"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask"),
) -> None:
    """Keep the CC GPUs on vfio-pci across reboots (modprobe.d and modules-load.d files)."""
    config = tee_host.HostConfig.from_env()
    root = root or config.root
    if not yes and not typer.confirm(
        "Write /etc/modprobe.d/openpcc-vfio.conf and /etc/modules-load.d/openpcc-vfio.conf "
        "so the GPUs stay on vfio-pci after a reboot?"
    ):
        raise typer.Exit(1)
    try:
        gpus, changed = tee_host.persist_vfio(root)
    except OpenPCCError as e:
        raise _fail(e) from e
    for path in changed:
        out.print(f"wrote {path}", highlight=False)
    if changed:
        out.print(
            f"GPU {', '.join(gpus)}: bound to vfio-pci from the next boot on; if the initramfs "
            "loads nvidia, run update-initramfs -u",
            highlight=False,
        )
    else:
        out.print(f"GPU {', '.join(gpus)}: already bound to vfio-pci at boot", highlight=False)


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
    """Provision the appliance: with --recipe on a TEE host the CVM, else the SIMULATED one."""
    paths = StatePaths.default()
    config = tee_host.HostConfig.from_env()
    facts = detect_host(config.root)
    if recipe is not None and facts.tee is not None and not _simulation_recipe(recipe):
        _provision_host(paths, recipe, port, config)
        return
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


def _simulation_recipe(recipe: Path) -> bool:
    try:
        return load_recipe(recipe).simulated
    except OpenPCCError as e:
        raise _fail(e) from e


def _provision_host(
    paths: StatePaths, recipe: Path, port: int, config: tee_host.HostConfig
) -> None:
    try:
        res = tee_host.provision(
            paths, recipe, port=port, config=config, say=lambda m: out.print(m, highlight=False)
        )
    except OpenPCCError as e:
        raise _fail(e) from e
    out.print(f"state directory: {paths.root}", highlight=False)
    out.print(f"measurement:     {res.measurement.hex()}", highlight=False)
    out.print(f"log index:       {res.log_index}", highlight=False)
    out.print(f"log key:         {res.log_vkey}", highlight=False)
    out.print(f"unit:            {res.unit_path}", highlight=False)


@app.command()
def up(
    timeout: float = typer.Option(900.0, "--timeout", help="seconds to wait for health"),
    vm: bool = typer.Option(
        False, "--vm", help="SIMULATED: boot the sealed image in an emulated VM (QEMU)"
    ),
    image_recipe: Path | None = typer.Option(
        None, "--image-recipe", help="--vm: image recipe [default: cvm_boot/image/recipes/cpu.toml]"
    ),
    accel: str | None = typer.Option(None, "--accel", help="--vm: tcg (default) or kvm"),
    port: int | None = typer.Option(
        None, "--port", min=1, max=65535, help="--vm: host port [default: provisioned, or 8480]"
    ),
) -> None:
    """Start the appliance, wait until healthy, and verify its attestation as a client would.

    Without a TEE: local processes (the default), or with --vm the sealed image in an emulated
    VM. Both are SIMULATED — NOT CONFIDENTIAL.
    """
    paths = StatePaths.default()
    if vm:
        err.print(emulated_vm.mode_line(accel or "tcg"))
        try:
            with err.status("finding or building the image…") as spinner:
                res = emulated_vm.up_vm(
                    paths,
                    image_recipe=image_recipe or emulated_vm.default_image_recipe(),
                    accel=accel,
                    port=port,
                    timeout=timeout,
                    progress=lambda m: err.print(Text(m, style="dim")),
                    waiting=lambda m: spinner.update(Text(m)),
                )
        except OpenPCCError as e:
            raise _fail(e) from e
        print_run(err, res.run, res.record.gateway_url)
        emulated_vm.print_summary(out, res)
        if res.run.error is not None:
            raise typer.Exit(exit_code_for(res.run.error))
        return
    if image_recipe is not None or accel is not None or port is not None:
        raise _fail(
            ParseError(
                "--image-recipe, --accel and --port go with --vm",
                hint="the local gateway's port is set by `openpcc-appliance provision --port`",
            )
        )
    if tee_host.provisioned_mode(paths) is not None:
        _up_host(paths, timeout)
        return
    try:
        emulated_vm.leave_vm(paths)
        mode = ApplianceRecord.load(paths.record).mode
        err.print(
            Text(f"mode: {mode}, local processes (gateway and engine on this host)", style="bold")
            + (Text(f"  {SIMULATED_BANNER}", style="bold red") if mode == "simulated" else Text())
        )
        with err.status("starting the gateway and its engine (first start loads the model)…"):
            run = lifecycle.up(paths, timeout=timeout)
    except OpenPCCError as e:
        raise _fail(e) from e
    print_run(err, run, str(lifecycle.gateway_status(paths).get("gateway_url") or ""))
    if run.error is not None:
        raise typer.Exit(exit_code_for(run.error))


def _up_host(paths: StatePaths, timeout: float) -> None:
    config = tee_host.HostConfig.from_env()
    try:
        run = tee_host.up(
            paths, config, timeout=timeout, say=lambda m: err.print(m, highlight=False)
        )
    except OpenPCCError as e:
        raise _fail(e) from e
    print_run(err, run, str(tee_host.status(paths).get("gateway_url") or ""))
    if run.error is not None:
        raise typer.Exit(exit_code_for(run.error))


@app.command()
def down() -> None:
    """Stop the appliance (the CVM's unit, gateway and engine, or the emulated VM)."""
    paths = StatePaths.default()
    if tee_host.provisioned_mode(paths) is not None:
        try:
            tee_host.down(paths, tee_host.HostConfig.from_env())
        except OpenPCCError as e:
            raise _fail(e) from e
        out.print("stopped the confidential VM")
        return
    stopped_vm = emulated_vm.down_vm(paths)
    stopped = lifecycle.down(paths) or stopped_vm
    if not stopped:
        out.print("not running")
    else:
        out.print("stopped the emulated VM" if stopped_vm else "stopped")


@app.command()
def status(json_out: bool = typer.Option(False, "--json", help="machine-readable")) -> None:
    """State, mode and gateway URL, from the public endpoints."""
    paths = StatePaths.default()
    host_mode = tee_host.provisioned_mode(paths) is not None
    st = tee_host.status(paths) if host_mode else lifecycle.gateway_status(paths)
    if json_out:
        print(json.dumps(st))
        return
    mode = st.get("mode")
    state = st.get("state")
    colour = "green" if state == "up" else "red"
    out.print(Text("state: ") + Text(str(state), style=f"bold {colour}"))
    out.print(f"mode: {mode}", highlight=False)
    if host_mode:
        out.print(f"runs in: confidential VM, unit {st.get('unit')}", highlight=False)
        out.print(f"release: {st.get('release')}, measurement {st.get('measurement')}")
    elif st.get("vm"):
        out.print(f"runs in: emulated VM (QEMU/{st.get('vm_accel')}), pid {st.get('pid')}")
        out.print(f"image: {st.get('vm_image')}", highlight=False)
    elif st.get("mode") is not None:
        out.print(f"runs in: local processes, gateway pid {st.get('pid')}", highlight=False)
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
def logs(
    lines: int = typer.Option(50, "-n", min=1, help="lines from the end"),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="keep printing the console as it grows (Ctrl-C stops)"
    ),
) -> None:
    """Host-side logs only, never request content.

    On a TEE host: the CVM's serial console (QEMU writes it to logs/serial.log in the state
    directory) and `journalctl -u openpcc-cvm.service` (systemd's and QEMU's own messages). Nothing
    else from inside the CVM is readable by the host: its memory is encrypted and the image has no
    shell, ssh or log export. In simulation: the gateway log, or the emulated VM's console.
    """
    paths = StatePaths.default()
    if tee_host.provisioned_mode(paths) is not None:
        _logs_host(paths, lines, follow)
        return
    path = emulated_vm.log_path(paths)
    if not path.exists():
        out.print("no log yet")
        return
    for line in path.read_text(errors="replace").splitlines()[-lines:]:
        out.print(line, highlight=False, markup=False)
    if follow:
        _follow(str(path))


def _follow(path: str) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        tee_host.follow_serial(
            path, lambda ln: out.print(ln, highlight=False, markup=False, soft_wrap=True)
        )


def _logs_host(paths: StatePaths, lines: int, follow: bool) -> None:
    try:
        got = tee_host.logs(paths, tee_host.HostConfig.from_env(), lines=lines)
    except OpenPCCError as e:
        raise _fail(e) from e
    out.print(Text(f"== journalctl -u {got.unit} (systemd and QEMU)", style="bold"), soft_wrap=True)
    if got.journal_error is not None:
        err.print(f"[yellow]{got.journal_error}[/]", highlight=False)
    for line in got.journal or (() if got.journal_error else ("(no entries)",)):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    out.print(Text(f"== {got.serial_log} (the CVM's serial console)", style="bold"), soft_wrap=True)
    for line in got.serial or ("(empty: the CVM has not printed anything yet)",):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    if follow:
        _follow(got.serial_log)
