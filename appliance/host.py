"""The appliance on a real TEE host: the confidential VM as a systemd unit running QEMU.

- ``provision``: measure the release recipe, append the release manifest to the transparency
  log, write the provisioning disk (public data only: the manifest, the log's entries, checkpoint
  and verifier key, the inclusion proof; ``cvm_boot.image.provision.provision_host``) and
  ``openpcc-cvm.service`` whose ExecStart is the release's QEMU command line (``cvm_boot.qemu``),
  the CC GPUs passed through on vfio-pci. The unit holds no secret: paths, the measured kernel
  command line and public digests only.
- ``up``: ``systemctl daemon-reload`` and ``start``, wait for the gateway's ``/healthz`` over the
  forwarded port, then verify its attestation exactly as a client would (fresh nonce, pinned
  vendor roots, the log key) and check that it runs the release provisioned here.
- ``down``: ``systemctl stop``. ``status``: the public endpoints and the host-side boot log
  (the guest's serial console) only. ``logs``: the serial console and the unit's journal
  (QEMU's own messages), the only logs the host can read; everything else inside the CVM is in
  encrypted memory, and the image has no shell, ssh or log export.

Every external command goes through a :data:`~appliance.runner.Runner`. The test hooks in
:data:`TEST_HOOKS` are read from the environment by :meth:`HostConfig.from_env`; they exist for
tests and install.sh's test mode only, and ``OPENPCC_TEST_SIMULATION_ROOT`` announces itself
every time it is used.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from cryptography import x509

from appliance.doctor import DoctorOptions, HostFacts, detect_host, vfio_config_files
from appliance.runner import Completed, Runner, run_command
from appliance.state import ApplianceRecord, StatePaths
from attest.bundle import ClientPolicy, TrustAnchors, VerificationRun
from attest.errors import OpenPCCError, ParseError, TransportError, VerificationError
from attest.nvgpu import pinned_nvidia_roots
from attest.sevsnp.validate import SnpPolicy
from attest.sevsnp.verify import load_certificates, pinned_roots
from attest.tdx.verify import pinned_intel_roots
from attest.tlog import VerifierKey
from cvm_boot.image.provision import provision_host
from cvm_boot.manifest import build_manifest, canonical_json
from cvm_boot.measure import expected_measurement
from cvm_boot.qemu import qemu_command
from cvm_boot.recipe import Recipe, load_recipe
from cvm_boot.tlog import TransparencyLog

__all__ = [
    "HOST_MODES",
    "TEST_HOOKS",
    "UNIT_NAME",
    "HostConfig",
    "HostLogs",
    "HostProvisionResult",
    "HostRecord",
    "down",
    "follow_serial",
    "logs",
    "persist_vfio",
    "provision",
    "provisioned_mode",
    "status",
    "systemd_exec_line",
    "unit_text",
    "up",
    "verify",
]

HOST_MODES = ("sev-snp", "tdx")
UNIT_NAME = "openpcc-cvm.service"
HOST_RECORD = "host.json"
SERIAL_LOG = "serial.log"
PROVISION_DIR = "provision"
BOOT_LOG_LINES = 20
# Test hooks (environment variables): tests and install.sh's test mode only.
TEST_HOOKS = {
    "OPENPCC_TEST_HOST_ROOT": "host root the doctor and provisioning read (a fake sysfs tree)",
    "OPENPCC_TEST_QEMU": "the QEMU binary (a recording stub)",
    "OPENPCC_TEST_SYSTEMCTL": "systemctl (a recording stub)",
    "OPENPCC_TEST_JOURNALCTL": "journalctl (a recording stub)",
    "OPENPCC_TEST_UNIT_DIR": "where the unit is written instead of /etc/systemd/system",
    "OPENPCC_TEST_SIMULATION_ROOT": "accept SIMULATED evidence signed by this root PEM when "
    "verifying the CVM",
}
Say = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Where the host's tools and files are; the defaults are a real host's."""

    root: Path = Path("/")
    qemu: str = "qemu-system-x86_64"
    systemctl: str = "systemctl"
    journalctl: str = "journalctl"
    unit_dir: Path = Path("/etc/systemd/system")
    gpu_tools: str = "nvidia_gpu_tools.py"
    simulation_root: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HostConfig:
        """The defaults, with the operator's ``OPENPCC_GPU_ADMIN_TOOLS`` and any test hooks."""
        e = os.environ if env is None else env
        base = cls()
        sim = e.get("OPENPCC_TEST_SIMULATION_ROOT")
        return cls(
            root=Path(e.get("OPENPCC_TEST_HOST_ROOT") or base.root),
            qemu=e.get("OPENPCC_TEST_QEMU") or base.qemu,
            systemctl=e.get("OPENPCC_TEST_SYSTEMCTL") or base.systemctl,
            journalctl=e.get("OPENPCC_TEST_JOURNALCTL") or base.journalctl,
            unit_dir=Path(e.get("OPENPCC_TEST_UNIT_DIR") or base.unit_dir),
            gpu_tools=e.get("OPENPCC_GPU_ADMIN_TOOLS") or base.gpu_tools,
            simulation_root=Path(sim) if sim else None,
        )

    @property
    def unit_path(self) -> Path:
        return self.unit_dir / UNIT_NAME

    def doctor_options(
        self,
        *,
        runner: Runner = run_command,
        recipe: Recipe | None = None,
        state_dir: Path | None = None,
        disk_bytes: int | None = None,
    ) -> DoctorOptions:
        """What the doctor checks on this host, for ``recipe`` when one is given."""
        base = DoctorOptions()
        return DoctorOptions(
            runner=runner,
            qemu=self.qemu,
            gpu_tools=self.gpu_tools,
            firmware=recipe.firmware.path if recipe is not None else None,
            guest_memory_mib=recipe.memory_mib if recipe is not None else base.guest_memory_mib,
            disk_bytes=disk_bytes if disk_bytes is not None else base.disk_bytes,
            state_dir=state_dir,
        )


@dataclass(frozen=True, slots=True)
class HostRecord:
    """What provisioning decided, for ``up``, ``down`` and ``status`` (``STATE/host.json``)."""

    tee: str
    unit: str
    unit_path: str
    recipe: str
    release: str
    measurement: str
    log_index: int
    serial_log: str
    gpus: tuple[str, ...]
    argv: tuple[str, ...]
    provision_image: str = ""  # records written before the disk existed load without it

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> HostRecord:
        try:
            data = json.loads(path.read_text())
            data["gpus"] = tuple(data["gpus"])
            data["argv"] = tuple(data["argv"])
            return cls(**data)
        except FileNotFoundError as e:
            raise ParseError(
                f"no confidential VM is provisioned in {path.parent}",
                hint="run `openpcc-appliance provision --recipe RECIPE` on the TEE host",
            ) from e
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise ParseError(f"{path} is damaged: {e}") from e


@dataclass(frozen=True, slots=True)
class HostProvisionResult:
    tee: str
    measurement: bytes
    log_index: int
    log_vkey: str
    unit_path: Path
    argv: tuple[str, ...]
    gpus: tuple[str, ...]


# -- the unit -----------------------------------------------------------------------------------

_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


def _systemd_word(arg: str) -> str:
    if "\n" in arg or "\r" in arg:
        raise ParseError(f"a QEMU argument contains a line break: {arg!r}")
    if _PLAIN_WORD.fullmatch(arg):
        return arg
    # Inside double quotes systemd takes C-style escapes; % starts a specifier and $ a variable.
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


def systemd_exec_line(argv: Sequence[str]) -> str:
    """``argv`` as one ExecStart= value: each word quoted so systemd splits it back exactly."""
    return " ".join(_systemd_word(a) for a in argv)


def unit_text(
    argv: Sequence[str], *, tee: str, release: str, measurement: bytes, log_index: int
) -> str:
    """The systemd unit that runs the CVM. It names the release; it carries no secret."""
    return (
        "# Generated by `openpcc-appliance provision`; re-run it instead of editing this file.\n"
        f"# Release {release} ({tee}), expected launch measurement {measurement.hex()},\n"
        f"# transparency log index {log_index}. Nothing here is secret.\n"
        "[Unit]\n"
        f"Description=OpenPCC confidential VM ({tee}, {release})\n"
        "After=network.target\n"
        "\n"
        "[Service]\n"
        "Type=exec\n"
        f"ExecStart={systemd_exec_line(argv)}\n"
        "Restart=on-failure\n"
        "RestartSec=5s\n"
        "TimeoutStopSec=60s\n"
        "# vfio pins all guest memory.\n"
        "LimitMEMLOCK=infinity\n"
        "NoNewPrivileges=yes\n"
        "PrivateTmp=yes\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


# -- provision ----------------------------------------------------------------------------------


def _facts_for(config: HostConfig, recipe: Recipe) -> HostFacts:
    facts = detect_host(config.root)
    if facts.tee is None:
        raise ParseError(
            "this host has no SEV-SNP or TDX support: a real release cannot launch here",
            hint="`openpcc-appliance doctor` says what is missing",
        )
    if recipe.tee != facts.tee:
        raise ParseError(f"recipe {recipe.name} is for {recipe.tee}, this host runs {facts.tee}")
    for g in facts.gpus:
        if g.cc_capable and g.driver != "vfio-pci":
            raise ParseError(
                f"GPU {g.address} ({g.model}) is bound to {g.driver or 'nothing'}, not vfio-pci",
                hint="install.sh binds it after asking; or see `openpcc-appliance doctor`",
            )
    return facts


def provision(
    paths: StatePaths,
    recipe_path: Path,
    *,
    port: int,
    config: HostConfig,
    say: Say = _quiet,
) -> HostProvisionResult:
    """Measure ``recipe_path``, release it into the log and write the CVM's unit."""
    recipe = load_recipe(recipe_path)
    if recipe.simulated:
        raise ParseError(f"recipe {recipe.name} is a simulation recipe: it has no VM to launch")
    facts = _facts_for(config, recipe)
    tee = recipe.tee
    gpus = tuple(g.address for g in facts.gpus if g.cc_capable)
    release = f"{recipe.name} {recipe.version}"
    say(
        f"provision: {release} for {tee}, GPUs {', '.join(gpus) or 'none'} on vfio-pci, "
        f"gateway forwarded to 127.0.0.1:{port}"
    )
    for d in (paths.root, paths.release, paths.logs):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)

    measurement = expected_measurement(recipe)
    manifest = build_manifest(recipe, measurement)
    data = canonical_json(manifest)
    paths.manifest.write_bytes(data + b"\n")
    say(f"measure: {tee} launch measurement {measurement.hex()}")

    log = TransparencyLog.open(paths.log)
    index = log.find(data)
    appended = index is None
    if index is None:
        index = log.append(data)
    say(
        f"release: manifest at log index {index} of {log.size}"
        f"{'' if appended else ' (already logged)'}, log key {log.verifier_key}"
    )

    try:
        disk = provision_host(data, paths.log, paths.root / PROVISION_DIR)
    except OSError as e:
        raise ParseError(
            f"cannot write the provisioning disk: {e}",
            hint="mksquashfs (squashfs-tools) builds it; see the doctor's 'Image tools' line",
        ) from e
    say(
        f"disk: {disk.image} (manifest, log checkpoint of size {disk.tree_size}, inclusion "
        "proof; public data, attached read-only)"
    )

    qemu = shutil.which(config.qemu) or config.qemu
    serial = paths.logs / SERIAL_LOG
    argv = tuple(
        qemu_command(
            recipe,
            tee=tee,
            gpus=gpus,
            serial_log=serial,
            gateway_port=port,
            provision_image=disk.image,
            qemu_binary=qemu,
            iommufd=(config.root / "dev" / "iommu").exists(),
        )
    )
    text = unit_text(argv, tee=tee, release=release, measurement=measurement, log_index=index)
    config.unit_dir.mkdir(parents=True, exist_ok=True)
    tmp = config.unit_path.with_suffix(".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, config.unit_path)
    say(f"unit: wrote {config.unit_path} (ExecStart: the release's QEMU command line)")

    ApplianceRecord(
        mode=tee, gateway_url=f"http://127.0.0.1:{port}", engine=recipe.engine_name, port=port
    ).save(paths.record)
    HostRecord(
        tee=tee,
        unit=UNIT_NAME,
        unit_path=str(config.unit_path),
        recipe=str(recipe_path.resolve()),
        release=release,
        measurement=measurement.hex(),
        log_index=index,
        serial_log=str(serial),
        gpus=gpus,
        argv=argv,
        provision_image=str(disk.image),
    ).save(paths.root / HOST_RECORD)
    return HostProvisionResult(
        tee, measurement, index, log.verifier_key, config.unit_path, argv, gpus
    )


# -- up / down / status -------------------------------------------------------------------------


def provisioned_mode(paths: StatePaths) -> str | None:
    """``"sev-snp"`` or ``"tdx"`` when ``paths`` holds a real-host appliance, else None."""
    try:
        mode = ApplianceRecord.load(paths.record).mode
    except OpenPCCError:
        return None
    return mode if mode in HOST_MODES else None


def _systemctl(config: HostConfig, runner: Runner, *args: str) -> Completed:
    return runner([config.systemctl, *args])


def _boot_log_tail(serial_log: str, lines: int = BOOT_LOG_LINES) -> list[str]:
    try:
        text = Path(serial_log).read_text(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def _wait_healthy(
    url: str,
    *,
    timeout: float,
    unit_state: Callable[[], str],
    hint: str,
    poll: float = 0.3,
    state_every: float = 2.0,
) -> None:
    deadline = time.monotonic() + timeout
    next_state = time.monotonic() + state_every
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url + "/healthz", timeout=2.0)
            if r.status_code == 200:
                return
            last = f"/healthz answered {r.status_code}"
        except httpx.HTTPError:
            last = "gateway not answering"
        if time.monotonic() >= next_state:
            state = unit_state()
            if state in ("failed", "inactive"):
                raise TransportError(f"the CVM unit is {state} ({last})", hint=hint)
            next_state = time.monotonic() + state_every
        time.sleep(poll)
    raise TransportError(f"the CVM did not become healthy in {timeout:g}s ({last})", hint=hint)


def up(
    paths: StatePaths,
    config: HostConfig,
    *,
    runner: Runner = run_command,
    timeout: float = 900.0,
    say: Say = _quiet,
) -> VerificationRun:
    """Start the unit, wait for the gateway's health, then verify it as a client would."""
    record = ApplianceRecord.load(paths.record)
    host = HostRecord.load(paths.root / HOST_RECORD)
    hint = f"journalctl -u {host.unit}; the boot log is {host.serial_log}"
    for args in (("daemon-reload",), ("start", host.unit)):
        say(f"start: systemctl {' '.join(args)}")
        res = _systemctl(config, runner, *args)
        if not res.ok:
            raise TransportError(
                f"systemctl {' '.join(args)} failed: {res.first_line()}", hint=hint
            )
    say(f"start: waiting for {record.gateway_url}/healthz (the CVM boots and loads the model)")

    def unit_state() -> str:
        return _systemctl(config, runner, "is-active", host.unit).stdout.strip()

    _wait_healthy(record.gateway_url, timeout=timeout, unit_state=unit_state, hint=hint)
    return verify(paths, config, say=say)


def _anchors(paths: StatePaths, config: HostConfig, say: Say) -> TrustAnchors:
    vkey_file = paths.log / "log.vkey"
    try:
        vkey = VerifierKey.parse(vkey_file.read_text().strip())
    except OSError as e:
        raise ParseError(f"cannot read the log key {vkey_file}: {e.strerror}") from e
    sim: tuple[x509.Certificate, ...] = ()
    if config.simulation_root is not None:
        say(
            "TEST HOOK OPENPCC_TEST_SIMULATION_ROOT: SIMULATED evidence signed by "
            f"{config.simulation_root} is accepted — this is NOT a confidential launch"
        )
        try:
            sim = tuple(load_certificates(config.simulation_root.read_bytes()))
        except OSError as e:
            raise ParseError(f"cannot read {config.simulation_root}: {e.strerror}") from e
    from client_cli.trust import is_tdx_root

    # The anchors a client has: every pinned vendor root (a TDX host's quote chains to Intel's),
    # and, under the test hook only, the simulation roots (a TDX-shaped one for sim-tdx only).
    sim_tdx = tuple(c for c in sim if is_tdx_root(c))
    sim_other = tuple(c for c in sim if not is_tdx_root(c))
    return TrustAnchors(
        amd_roots=tuple(pinned_roots()),
        nvidia_roots=tuple(pinned_nvidia_roots()),
        log_keys=(vkey,),
        simulation_snp_roots=sim_other,
        simulation_gpu_roots=sim_other,
        intel_roots=tuple(pinned_intel_roots()),
        simulation_tdx_roots=sim_tdx,
    )


def verify(paths: StatePaths, config: HostConfig, *, say: Say = _quiet) -> VerificationRun:
    """Verify the running CVM as a client would, and that it runs the release provisioned here."""
    from client_cli.session import Session

    record = ApplianceRecord.load(paths.record)
    host = HostRecord.load(paths.root / HOST_RECORD)
    say(f"verify: {record.gateway_url} with a fresh nonce, pinned roots and the log key")
    anchors = _anchors(paths, config, say)
    expected = bytes.fromhex(host.measurement)

    async def go() -> VerificationRun:
        async with Session(
            record.gateway_url,
            trust=anchors,
            # The host holds no NVIDIA RIMs: it checks everything else, and says below what a
            # client must add for the GPUs' CC state (clients fail closed without RIMs).
            policy=ClientPolicy(snp=SnpPolicy(measurements=(expected,)), require_gpu_cc=False),
        ) as s:
            return await s.verify()

    run = asyncio.run(go())
    for i, gpu in enumerate(run.node.gpus if run.node is not None else ()):
        if gpu.get("cc_established") is False:
            say(
                f"warning: GPU {i} CC state not established here (no RIMs); clients refuse it "
                f"until their policy has [gpu] rims for driver {gpu.get('driver_version')} and "
                f"VBIOS {gpu.get('vbios_version')}"
            )
    if run.node is not None and run.node.measurement != expected:
        return VerificationRun(
            run.checks,
            error=VerificationError(
                "measurement",
                f"the node runs {run.node.measurement.hex()}, provisioned {host.measurement}",
            ),
        )
    return run


def down(paths: StatePaths, config: HostConfig, *, runner: Runner = run_command) -> bool:
    """Stop the CVM's unit; True when systemctl did."""
    host = HostRecord.load(paths.root / HOST_RECORD)
    res = _systemctl(config, runner, "stop", host.unit)
    if not res.ok:
        raise TransportError(
            f"systemctl stop {host.unit} failed: {res.first_line()}",
            hint=f"journalctl -u {host.unit}",
        )
    return True


def status(paths: StatePaths) -> dict[str, object]:
    """Public endpoints and the host-side boot log only; no command runs, no secret is read."""
    record = ApplianceRecord.load(paths.record)
    out: dict[str, object] = {
        "state": "down",
        "mode": record.mode,
        "gateway_url": record.gateway_url,
        "engine": record.engine,
    }
    try:
        host: HostRecord | None = HostRecord.load(paths.root / HOST_RECORD)
    except OpenPCCError:
        host = None
    vkey = paths.log / "log.vkey"
    out["log_vkey"] = vkey.read_text().strip() if vkey.exists() else None
    if host is not None:
        out.update(
            unit=host.unit,
            release=host.release,
            measurement=host.measurement,
            log_index=host.log_index,
            gpus=list(host.gpus),
            serial_log=host.serial_log,
            boot_log=_boot_log_tail(host.serial_log),
        )
    try:
        r = httpx.get(record.gateway_url + "/healthz", timeout=3.0)
        out["state"] = "up" if r.status_code == 200 else "degraded"
        out["health"] = r.json()
    except (httpx.HTTPError, json.JSONDecodeError):
        pass
    return out


# -- logs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostLogs:
    """What the host can read of the CVM: its serial console and the unit's journal."""

    unit: str
    serial_log: str
    serial: tuple[str, ...]
    journal: tuple[str, ...]
    journal_error: str | None = None


def logs(
    paths: StatePaths,
    config: HostConfig,
    *,
    runner: Runner = run_command,
    lines: int = BOOT_LOG_LINES,
) -> HostLogs:
    """The last ``lines`` of the serial console (as ``status`` shows them) and of the journal.

    The journal holds what systemd and QEMU itself print (start, stop, QEMU's errors); the
    serial console holds what the guest prints. Neither carries request content: the image's
    gateway and engine log lifecycle lines only.
    """
    host = HostRecord.load(paths.root / HOST_RECORD)
    res = runner(
        [config.journalctl, "-u", host.unit, "-n", str(lines), "--no-pager", "-o", "short-iso"]
    )
    journal = tuple(res.stdout.splitlines()) if res.ok else ()
    return HostLogs(
        unit=host.unit,
        serial_log=host.serial_log,
        serial=tuple(_boot_log_tail(host.serial_log, lines)),
        journal=journal,
        journal_error=None if res.ok else f"journalctl: {res.first_line()}",
    )


def follow_serial(
    serial_log: str,
    emit: Callable[[str], None],
    *,
    stop: Callable[[], bool] = lambda: False,
    poll: float = 0.5,
) -> None:
    """Print lines as QEMU appends them to the serial console, from its current end.

    A file that shrinks (the log was rotated or removed and QEMU reopened it) is read again from
    its start. Returns when ``stop()`` says so (the CLI runs until Ctrl-C).
    """
    path = Path(serial_log)
    pos = path.stat().st_size if path.exists() else 0
    partial = b""
    while not stop():
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < pos:
            pos, partial = 0, b""
        if size > pos:
            with path.open("rb") as f:
                f.seek(pos)
                chunk = f.read(size - pos)
            pos += len(chunk)
            *done, partial = (partial + chunk).split(b"\n")
            for line in done:
                emit(line.decode(errors="replace"))
        else:
            time.sleep(poll)


# -- vfio-pci across reboots ----------------------------------------------------------------------


def persist_vfio(root: Path) -> tuple[list[str], list[Path]]:
    """Keep every CC-capable GPU the doctor finds on vfio-pci from boot; idempotent.

    Writes ``etc/modprobe.d/openpcc-vfio.conf`` (``options vfio-pci ids=...`` and ``softdep
    nvidia pre: vfio-pci``) and ``etc/modules-load.d/openpcc-vfio.conf`` under ``root``; a file
    that already says exactly this is left alone. Returns the GPU addresses and the files that
    changed. The caller asks for consent first (``persist-vfio``'s prompt, or install.sh).
    """
    gpus = [g for g in detect_host(root).gpus if g.cc_capable]
    if not gpus:
        raise ParseError(
            "no CC-capable NVIDIA GPU on this host: there is nothing to keep on vfio-pci",
            hint="`openpcc-appliance doctor` lists the GPUs it finds",
        )
    changed: list[Path] = []
    for rel, text in vfio_config_files(gpus).items():
        path = root / rel
        try:
            if path.is_file() and path.read_text() == text:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as e:
            raise ParseError(
                f"cannot write {path}: {e.strerror}", hint="run it as root (sudo)"
            ) from e
        changed.append(path)
    return [g.address for g in gpus], changed
