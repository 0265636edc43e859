"""Boot a built image in an emulated VM (no TEE): QEMU with TCG, or KVM when it is usable.

This is what ``openpcc-appliance up --vm`` runs on a host without a TEE, and what the boot test
uses. TCG is the default; KVM only when asked (``accel="kvm"``). The VM gets the image's kernel,
initrd and measured command line, its four dm-verity disks read-only, the provisioning disk, one
user-mode NIC that reaches nothing (``restrict=on``) but the forwarded gateway port, and a virtio
RNG. It is SIMULATED — NOT CONFIDENTIAL: the host can
read the VM's memory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from attest.errors import ParseError
from cvm_boot.qemu import PROVISION_SERIAL
from cvm_boot.recipe import ROOT_SERIAL, WEIGHTS_SERIAL, load_recipe

__all__ = [
    "HOST_TOOLS",
    "PROVISION_SERIAL",
    "EmulatedVm",
    "kvm_usable",
    "missing_tools",
    "start_vm",
    "stop_vm",
    "vm_command",
    "vm_pid",
]

HOST_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
    "mksquashfs": "squashfs-tools",
    "veritysetup": "cryptsetup-bin",
}
"""What building, provisioning and booting an image need on the host: program -> Debian package."""


def missing_tools() -> list[str]:
    """``"program (package)"`` for each of :data:`HOST_TOOLS` not on ``PATH``."""
    return [f"{tool} ({pkg})" for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None]


def kvm_usable() -> bool:
    """Whether /dev/kvm is there for us; the default stays TCG (a nested /dev/kvm can hang)."""
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def vm_command(
    build_dir: Path,
    provision_image: Path,
    *,
    host_port: int,
    serial_log: Path,
    pid_file: Path | None = None,
    memory_mib: int | None = None,
    vcpus: int | None = None,
    accel: str | None = None,
    qemu_binary: str = "qemu-system-x86_64",
) -> list[str]:
    """The QEMU argv that boots ``build_dir``'s image with the gateway on ``host_port``.

    vCPUs and memory default to the release recipe's (the vCPU count is measured).
    """
    recipe = load_recipe(build_dir / "release.toml")
    vcpus = vcpus or recipe.vcpus
    memory_mib = memory_mib or recipe.memory_mib
    if not 1 <= host_port <= 65535:
        raise ParseError(f"port {host_port} is out of range")
    accel = accel or "tcg"
    accel_opt = "tcg,thread=multi" if accel == "tcg" else accel
    cpu = "max" if accel == "tcg" else "host"
    drives: list[str] = []
    disks = [
        (ROOT_SERIAL, recipe.root.image),
        (f"{ROOT_SERIAL}-hash", recipe.root.hash_image),
        (WEIGHTS_SERIAL, recipe.weights.image),
        (f"{WEIGHTS_SERIAL}-hash", recipe.weights.hash_image),
        (PROVISION_SERIAL, provision_image),
    ]
    for serial, image in disks:
        if image is None or "," in str(image):
            raise ParseError(f"image path for {serial} is missing or contains a comma")
        drives += [
            "-drive",
            f"if=none,id={serial},file={image},format=raw,readonly=on",
            "-device",
            f"virtio-blk-pci,drive={serial},serial={serial}",
        ]
    assert recipe.kernel.path is not None and recipe.initrd.path is not None
    argv = [
        qemu_binary,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-accel",
        accel_opt,
        "-machine",
        "q35,vmport=off,smm=off",
        "-cpu",
        cpu,
        "-smp",
        str(vcpus),
        "-m",
        f"{memory_mib}M",
        "-kernel",
        str(recipe.kernel.path),
        "-initrd",
        str(recipe.initrd.path),
        "-append",
        recipe.cmdline,
        "-chardev",
        f"file,id=serial0,path={serial_log}",
        "-serial",
        "chardev:serial0",
        *drives,
        "-netdev",
        f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{host_port}-:{recipe.gateway_port}",
        "-device",
        "virtio-net-pci,netdev=net0,romfile=",
        "-device",
        "virtio-rng-pci",
    ]
    if pid_file is not None:
        argv += ["-pidfile", str(pid_file)]
    return argv


@dataclass(frozen=True, slots=True)
class EmulatedVm:
    pid: int
    url: str
    serial_log: Path
    accel: str


def start_vm(
    build_dir: Path,
    provision_image: Path,
    *,
    host_port: int,
    state_dir: Path,
    memory_mib: int | None = None,
    vcpus: int | None = None,
    accel: str | None = None,
) -> EmulatedVm:
    """Start the VM in the background; its pid goes to ``state_dir/vm.pid``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    serial_log = state_dir / "vm-serial.log"
    serial_log.unlink(missing_ok=True)
    pid_file = state_dir / "vm.pid"
    accel = accel or "tcg"
    argv = vm_command(
        build_dir,
        provision_image,
        host_port=host_port,
        serial_log=serial_log,
        memory_mib=memory_mib,
        vcpus=vcpus,
        accel=accel,
    )
    with (state_dir / "vm-qemu.log").open("wb") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
        )
    pid_file.write_text(f"{proc.pid}\n")
    time.sleep(0.5)
    if proc.poll() is not None:
        pid_file.unlink(missing_ok=True)
        raise OSError(
            f"QEMU exited at once ({proc.returncode}): "
            + (state_dir / "vm-qemu.log").read_text(errors="replace")[-800:]
        )
    return EmulatedVm(proc.pid, f"http://127.0.0.1:{host_port}", serial_log, accel)


def vm_pid(state_dir: Path) -> int | None:
    """The pid of the VM ``state_dir/vm.pid`` names, or None when it is not running.

    A pid file left behind by a VM that is gone, whose pid now belongs to another program,
    is not a running VM: where ``/proc`` says what the pid runs, it must be QEMU.
    """
    try:
        pid = int((state_dir / "vm.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return None  # our own child (an in-process caller), exited: now reaped
    if not _alive(pid):
        return None
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return pid  # no /proc: trust the pid file
    return pid if b"qemu" in os.path.basename(argv0) else None


def stop_vm(state_dir: Path, *, timeout: float = 10.0) -> bool:
    """Stop the VM whose pid ``state_dir/vm.pid`` names; True when one was running."""
    pid = vm_pid(state_dir)
    pid_file = state_dir / "vm.pid"
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid if not _alive(pid) else 0
        if done:
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    pid_file.unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie nobody reaps yet (a container's PID 1 may not) is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"
