"""``openpcc-appliance up --vm``: the SIMULATED appliance as the sealed image in an emulated VM.

On a host with no TEE, ``up --vm`` builds (or finds in the image cache) the sealed image an
image recipe describes, writes its provisioning disk from this host's simulation chains and
transparency log — the very ones the local-process appliance uses, so one ``openpcc trust``
covers both and a client's stored checkpoint stays consistent — boots it under QEMU (TCG by
default, KVM when asked), waits for ``/healthz`` and verifies the attestation exactly as a
client would. It is SIMULATED — NOT CONFIDENTIAL: the host can read the VM's memory and holds
the keys that sign its evidence. What it does exercise for real is everything inside the image:
measured kernel command line, dm-verity root, no shell, the gateway started by the supervisor.

The VM's files live under ``StatePaths.vm``; the appliance record says ``vm: true``, its
``mode`` stays ``"simulated"``.
"""

from __future__ import annotations

import errno
import shlex
import socket
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.serialization import Encoding
from rich.console import Console
from rich.text import Text

from appliance import lifecycle
from appliance.state import ApplianceRecord, StatePaths
from attest.bundle import VerificationRun
from attest.errors import OpenPCCError, ParseError, TransportError
from client_cli.render import SIMULATED_BANNER
from cvm_boot.image.build import BuildResult, build_image
from cvm_boot.image.provision import provision_simulated
from cvm_boot.image.run import kvm_usable, missing_tools, start_vm, stop_vm, vm_pid
from cvm_boot.image.spec import load_image_recipe

__all__ = [
    "ACCELS",
    "VmUp",
    "client_trusts",
    "default_image_recipe",
    "down_vm",
    "leave_vm",
    "log_path",
    "mode_line",
    "print_summary",
    "serial_log",
    "up_vm",
]

ACCELS = ("tcg", "kvm")
Progress = Callable[[str], None]


def default_image_recipe() -> Path:
    """The product CPU image: gateway + embedded engine with Gemma 3 270M."""
    return Path(str(resources.files("cvm_boot") / "image" / "recipes" / "cpu.toml"))


def serial_log(paths: StatePaths) -> Path:
    return paths.vm / "vm-serial.log"


@dataclass(frozen=True, slots=True)
class VmUp:
    """What ``up_vm`` did: the client-side verification and how the VM got there."""

    run: VerificationRun
    record: ApplianceRecord
    build: BuildResult | None
    """None when the VM was already running."""
    boot_seconds: float | None
    """From starting QEMU to a healthy gateway; None when it was already running."""
    vcpus: int
    memory_mib: int
    sim_trust: Path
    log_vkey: str
    serial_log: Path


def _record(paths: StatePaths) -> ApplianceRecord | None:
    try:
        return ApplianceRecord.load(paths.record)
    except ParseError:
        return None


def _check_port(port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            raise TransportError(
                f"port {port} on 127.0.0.1 is in use",
                hint="pass --port PORT, or stop what listens there",
            ) from e


def _last_console_line(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    return lines[-1][:100] if lines else ""


def _wait_healthy(paths: StatePaths, url: str, *, timeout: float, waiting: Progress) -> None:
    hint = "`openpcc-appliance logs` shows its serial console; `openpcc-appliance down` stops it"
    started = time.monotonic()
    last = "gateway not answering"
    while True:
        if vm_pid(paths.vm) is None:
            raise TransportError("the emulated VM exited during boot", hint=hint)
        try:
            r = httpx.get(url + "/healthz", timeout=2.0)
            if r.status_code == 200:
                return
            engine = r.json().get("engine", {})
            last = f"engine {engine.get('state') if isinstance(engine, dict) else '?'}"
        except (httpx.HTTPError, ValueError, AttributeError):
            last = "gateway not answering"
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            raise TransportError(
                f"the emulated VM did not become healthy in {timeout:g}s ({last})", hint=hint
            )
        waiting(f"booting, {elapsed:.0f}s, {last}: {_last_console_line(serial_log(paths))}")
        time.sleep(1.0)


def up_vm(
    paths: StatePaths,
    *,
    image_recipe: Path,
    accel: str | None = None,
    port: int | None = None,
    timeout: float = 900.0,
    progress: Progress = lambda _m: None,
    waiting: Progress = lambda _m: None,
) -> VmUp:
    """Build or reuse the image, provision it, boot it, wait for health, verify it.

    ``progress`` gets one line per step (image build steps included), ``waiting`` the
    changing state of the boot, for a spinner. Idempotent: when the VM of this recipe already
    runs, it is only verified again. ``accel`` None: the running VM's, else TCG.
    """
    if accel is not None and accel not in ACCELS:
        raise ParseError(f"--accel {accel!r} is not one of {', '.join(ACCELS)}")
    if accel == "kvm" and not kvm_usable():
        raise OpenPCCError(
            "--accel kvm: /dev/kvm is missing or not usable by this user",
            hint="use --accel tcg (the default), or add this user to the kvm group",
        )
    missing = missing_tools()
    if missing:
        raise OpenPCCError(
            "up --vm needs " + ", ".join(missing),
            hint="./install.sh --dev installs them (Debian: apt-get install qemu-system-x86 "
            "squashfs-tools cryptsetup-bin)",
        )
    recipe_path = image_recipe.resolve()
    image = load_image_recipe(recipe_path)
    record = _record(paths)
    running = vm_pid(paths.vm)
    if running is not None:
        if (
            record is None
            or not record.vm
            or record.vm_recipe != str(recipe_path)
            or (port is not None and port != record.port)
            or accel not in (None, record.vm_accel)
        ):
            raise OpenPCCError(
                f"an emulated VM with other settings is already running (pid {running})",
                hint="`openpcc-appliance down`, then `up --vm` again",
            )
        progress(f"the emulated VM is already running (pid {running})")
        _wait_healthy(paths, record.gateway_url, timeout=timeout, waiting=waiting)
        return _verified(paths, record, None, None)
    gateway = lifecycle.gateway_pid(paths)
    if gateway is not None:
        raise OpenPCCError(
            f"the local-process appliance is running (gateway pid {gateway})",
            hint="`openpcc-appliance down` first: both serve on the appliance's port",
        )
    port = port or (record.port if record is not None else lifecycle.DEFAULT_PORT)
    _check_port(port)
    accel = accel or "tcg"

    progress(f"image recipe {recipe_path}")
    try:
        build = build_image(image, progress=progress)
    except OSError as e:
        lines = str(e).strip().splitlines() or [type(e).__name__]
        what = lines[0] if len(lines) == 1 else f"{lines[0][:150]} … {lines[-1]}"
        raise OpenPCCError(
            f"building the image failed: {what}",
            hint=f"`openpcc-appliance build-image {recipe_path}` builds it alone",
        ) from e
    progress(
        f"image {build.directory} "
        + ("(from the cache)" if build.cached else f"(built in {build.seconds:.0f}s)")
    )
    progress("provisioning: this host's simulation chains and transparency log")
    prov = provision_simulated(
        build.directory, paths.vm / "provision", sim_dir=paths.sim, log_dir=paths.log
    )
    # The same file the local-process mode writes and install.sh has the client trust.
    paths.sim_trust.write_bytes(prov.sim_trust.read_bytes())
    record = ApplianceRecord(
        mode="simulated",
        gateway_url=f"http://127.0.0.1:{port}",
        engine=image.engine_kind,
        port=port,
        vm=True,
        vm_image=str(build.directory),
        vm_recipe=str(recipe_path),
        vm_accel=accel,
    )
    record.save(paths.record)
    started = time.monotonic()
    try:
        vm = start_vm(build.directory, prov.image, host_port=port, state_dir=paths.vm, accel=accel)
    except OSError as e:
        raise TransportError(
            "QEMU did not start: " + " ".join(str(e).split())[:300],
            hint=f"see {paths.vm / 'vm-qemu.log'}",
        ) from e
    progress(f"booting under QEMU/{accel}; serial console: {vm.serial_log}")
    _wait_healthy(paths, record.gateway_url, timeout=timeout, waiting=waiting)
    boot = time.monotonic() - started
    progress(f"healthy after {boot:.1f}s; verifying the attestation as a client would")
    return _verified(paths, record, build, boot)


def _verified(
    paths: StatePaths, record: ApplianceRecord, build: BuildResult | None, boot: float | None
) -> VmUp:
    from cvm_boot.recipe import load_recipe

    run = lifecycle.self_verify(paths)
    release = load_recipe(Path(record.vm_image or "") / "release.toml")
    return VmUp(
        run=run,
        record=record,
        build=build,
        boot_seconds=boot,
        vcpus=release.vcpus,
        memory_mib=release.memory_mib,
        sim_trust=paths.sim_trust,
        log_vkey=(paths.log / "log.vkey").read_text().strip(),
        serial_log=serial_log(paths),
    )


def client_trusts(sim_trust: Path, log_vkey: str) -> bool:
    """Whether this user's ``openpcc`` already trusts these simulation roots and this log key."""
    from attest.sevsnp.verify import load_certificates
    from client_cli.trust import TrustStore

    try:
        anchors = TrustStore.default().anchors()
        wanted = load_certificates(sim_trust.read_bytes())
    except (OSError, OpenPCCError):
        return False
    have = {c.public_bytes(Encoding.DER) for c in anchors.simulation_snp_roots}
    keys = {k.encode() for k in anchors.log_keys}
    return log_vkey in keys and all(c.public_bytes(Encoding.DER) in have for c in wanted)


def mode_line(accel: str) -> Text:
    return Text(
        f"{SIMULATED_BANNER}: the sealed image in an emulated VM (QEMU/{accel}), no TEE: "
        "the host can read the VM's memory and holds the keys that sign its evidence",
        style="bold white on red",
    )


def print_summary(console: Console, res: VmUp) -> None:
    """What `up --vm` tells the operator once the VM is verified (or failed verification)."""
    rec = res.record
    console.print(mode_line(rec.vm_accel or "tcg"))
    rows = [
        ("mode", f"simulated, emulated VM: {res.vcpus} vCPUs, {res.memory_mib} MiB"),
        ("gateway", rec.gateway_url),
        ("image", str(rec.vm_image)),
        (
            "boot",
            "already running"
            if res.boot_seconds is None
            else f"{res.boot_seconds:.1f}s from starting QEMU to /healthz",
        ),
        ("console", f"{res.serial_log}  (`openpcc-appliance logs`)"),
    ]
    for name, value in rows:
        console.print(f"{name + ':':<9}{value}", highlight=False, markup=False, soft_wrap=True)
    if client_trusts(res.sim_trust, res.log_vkey):
        console.print("client:  `openpcc` already trusts this simulation root and log key")
        return
    console.print(
        "To use it from `openpcc` (verify, ask, chat, proxy), trust its SIMULATION root "
        "and log key:",
        highlight=False,
    )
    cmd = ["openpcc", "trust", "--simulated", str(res.sim_trust), "--log-key", res.log_vkey]
    console.print(shlex.join(cmd), highlight=False, markup=False, soft_wrap=True)


def down_vm(paths: StatePaths) -> bool:
    """Stop the emulated VM; True when one was running."""
    return stop_vm(paths.vm)


def leave_vm(paths: StatePaths) -> None:
    """Before a local-process ``up``: refuse while the VM runs; point the record back at local.

    The local gateway's own configuration (``gateway.toml``, written by ``provision``) says its
    port and engine; without it only the VM was ever started here.
    """
    pid = vm_pid(paths.vm)
    if pid is not None:
        raise OpenPCCError(
            f"the emulated VM is running (pid {pid}) on the appliance's port",
            hint="`openpcc-appliance down` first, or `up --vm` to keep using the VM",
        )
    record = _record(paths)
    if record is None or not record.vm:
        return
    try:
        cfg = tomllib.loads(paths.gateway_config.read_text())
        port, engine = int(cfg["gateway"]["port"]), str(cfg["engine"]["kind"])
    except FileNotFoundError as e:
        raise ParseError(
            "only the emulated VM was started here: the local-process appliance is not provisioned",
            hint="`openpcc-appliance provision`, or `openpcc-appliance up --vm`",
        ) from e
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
        raise ParseError(f"{paths.gateway_config} is damaged: {e}") from e
    ApplianceRecord(
        mode=record.mode, gateway_url=f"http://127.0.0.1:{port}", engine=engine, port=port
    ).save(paths.record)


def log_path(paths: StatePaths) -> Path:
    """What ``logs`` shows: the VM's serial console in VM mode, else the gateway's log."""
    record = _record(paths)
    return serial_log(paths) if record is not None and record.vm else paths.logs / "gateway.log"
