"""QEMU command lines for a real host, generated from a recipe.

The guest gets: the recipe's firmware as ``-bios`` and its kernel, initrd and measured command line
(direct boot; SEV-SNP hashes them into the launch digest with ``kernel-hashes=on``); its dm-verity
volumes read-only; the provisioning disk read-only (public release data the gateway serves, see
``cvm_boot.image.provision``); each GPU by vfio-pci behind its own PCIe root port; one user-mode
NIC that reaches nothing (``restrict=on``) except the gateway's forwarded port; the serial console
appended to a host log file (``append=on``: a restart keeps the console of the boot that failed);
no monitor, no display, no default devices. The only control channel is an optional QMP socket on
the host's filesystem.

``tee="none"`` gives the same machine without confidential computing, for checking the generic
arguments against an older QEMU (Debian 12 ships 7.2; ``sev-snp-guest`` and ``tdx-guest`` need
QEMU >= 9.1 and >= 10.1 respectively).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from attest.errors import ParseError
from cvm_boot.recipe import ROOT_SERIAL, WEIGHTS_SERIAL, Recipe

__all__ = ["PROVISION_SERIAL", "QEMU_TEES", "SNP_POLICY", "iommufd_available", "qemu_command"]

QEMU_TEES = ("sev-snp", "tdx", "none")
#: The provisioning disk's virtio serial; the guest's init finds it by this name (init.sh).
PROVISION_SERIAL = "openpcc-provision"
# SNP guest policy: bit 16 reserved-must-be-one, bit 17 SMT allowed; debug and migration off.
SNP_POLICY = 0x30000
_PCI_RE = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")
# Large GPU BARs (H100: 128 GiB) need a 64-bit MMIO window bigger than OVMF's default.
_PCI_MMIO64_MB = 262144


def iommufd_available() -> bool:
    """Whether the host kernel exposes iommufd (``/dev/iommu``)."""
    return Path("/dev/iommu").exists()


def _opts(*parts: str) -> str:
    for p in parts:
        if "," in p.split("=", 1)[-1] and not p.startswith("hostfwd="):
            raise ParseError(f"QEMU option value {p!r} contains a comma")
    return ",".join(parts)


def _need(path: Path | None, what: str) -> str:
    if path is None:
        raise ParseError(f"recipe: {what} path is required to launch a VM")
    return str(path)


def qemu_command(
    recipe: Recipe,
    *,
    tee: str,
    gpus: Sequence[str] = (),
    serial_log: Path,
    gateway_port: int,
    provision_image: Path | None = None,
    gateway_bind: str = "127.0.0.1",
    qemu_binary: str = "qemu-system-x86_64",
    accel: str = "kvm",
    iommufd: bool = False,
    qmp_socket: Path | None = None,
    cbitpos: int = 51,
    reduced_phys_bits: int = 1,
) -> list[str]:
    """The argument vector (``argv[0]`` included) that launches ``recipe`` on this host.

    ``provision_image`` is the provisioning disk (``cvm_boot.image.provision.provision_host``);
    a real launch needs it, because the sealed gateway reads the release manifest and the log
    from it. It is attached read-only and is not part of the launch measurement.
    """
    if tee not in QEMU_TEES:
        raise ParseError(f"tee {tee!r} is not one of {', '.join(QEMU_TEES)}")
    if recipe.simulated:
        raise ParseError(f"recipe {recipe.name} is a simulation recipe; it has no VM to launch")
    if tee != "none" and tee != recipe.tee:
        raise ParseError(f"recipe {recipe.name} is for {recipe.tee}, not {tee}")
    if not 1 <= gateway_port <= 65535:
        raise ParseError(f"gateway port {gateway_port} is out of range")
    for bdf in gpus:
        if not _PCI_RE.fullmatch(bdf):
            raise ParseError(f"GPU address {bdf!r} is not a full PCI address like 0000:41:00.0")
    if len(set(gpus)) != len(gpus):
        raise ParseError("a GPU is listed twice")

    mem = f"{recipe.memory_mib}M"
    machine = ["q35", "vmport=off", "smm=off"]
    objects: list[str] = []
    cpu = recipe.vcpu_type
    if tee == "sev-snp":
        machine += ["confidential-guest-support=sev0", "memory-backend=ram0"]
        objects += [
            "-object",
            _opts("memory-backend-memfd", "id=ram0", f"size={mem}", "share=true", "prealloc=false"),
            "-object",
            _opts(
                "sev-snp-guest",
                "id=sev0",
                f"cbitpos={cbitpos}",
                f"reduced-phys-bits={reduced_phys_bits}",
                f"policy={SNP_POLICY:#x}",
                "kernel-hashes=on",
            ),
        ]
    elif tee == "tdx":
        machine += ["confidential-guest-support=tdx0", "kernel-irqchip=split"]
        objects += ["-object", _opts("tdx-guest", "id=tdx0")]
        cpu = "host"
    else:
        machine += ["memory-backend=ram0"]
        objects += [
            "-object",
            _opts("memory-backend-memfd", "id=ram0", f"size={mem}", "share=true", "prealloc=false"),
        ]

    # Virtio devices must use the platform IOMMU path so the guest can bounce through shared
    # memory; legacy (pre-1.0) virtio would bypass it.
    virtio = ("disable-legacy=on", "iommu_platform=on")
    argv = [
        qemu_binary,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-monitor",
        "none",
        "-accel",
        accel,
        "-machine",
        _opts(*machine),
        "-cpu",
        cpu,
        "-smp",
        str(recipe.vcpus),
        "-m",
        mem,
        *objects,
        "-bios",
        _need(recipe.firmware.path, "firmware"),
        "-kernel",
        _need(recipe.kernel.path, "kernel"),
        "-initrd",
        _need(recipe.initrd.path, "initrd"),
        "-append",
        recipe.cmdline,
        "-chardev",
        _opts("file", "id=serial0", f"path={serial_log}", "append=on"),
        "-serial",
        "chardev:serial0",
    ]
    for serial, vol in ((ROOT_SERIAL, recipe.root), (WEIGHTS_SERIAL, recipe.weights)):
        for suffix, image in (("", vol.image), ("-hash", vol.hash_image)):
            drive_id = f"{serial}{suffix}"
            argv += [
                "-drive",
                _opts(
                    "if=none",
                    f"id={drive_id}",
                    f"file={_need(image, f'volume {drive_id} image')}",
                    "format=raw",
                    "readonly=on",
                ),
                "-device",
                _opts("virtio-blk-pci", f"drive={drive_id}", f"serial={drive_id}", *virtio),
            ]
    if provision_image is not None:
        argv += [
            "-drive",
            _opts(
                "if=none",
                f"id={PROVISION_SERIAL}",
                f"file={provision_image}",
                "format=raw",
                "readonly=on",
            ),
            "-device",
            _opts(
                "virtio-blk-pci", f"drive={PROVISION_SERIAL}", f"serial={PROVISION_SERIAL}", *virtio
            ),
        ]
    argv += [
        "-netdev",
        _opts(
            "user",
            "id=net0",
            "restrict=on",
            f"hostfwd=tcp:{gateway_bind}:{gateway_port}-:{recipe.gateway_port}",
        ),
        "-device",
        _opts("virtio-net-pci", "netdev=net0", "romfile=", *virtio),
    ]
    if gpus:
        if iommufd:
            argv += ["-object", "iommufd,id=iommufd0"]
        argv += ["-fw_cfg", f"name=opt/ovmf/X-PciMmio64Mb,string={_PCI_MMIO64_MB}"]
        for i, bdf in enumerate(gpus):
            port = f"gpuport{i}"
            argv += [
                "-device",
                _opts("pcie-root-port", f"id={port}", "bus=pcie.0", f"chassis={i + 1}"),
                "-device",
                _opts(
                    "vfio-pci",
                    f"host={bdf}",
                    f"id=gpu{i}",
                    f"bus={port}",
                    *(("iommufd=iommufd0",) if iommufd else ()),
                ),
            ]
    if qmp_socket is not None:
        argv += ["-qmp", _opts(f"unix:{qmp_socket}", "server=on", "wait=off")]
    return argv
