"""FAKE HOST — for tests: host trees shaped like a real host's sysfs/procfs/dev, and a runner.

``make_host`` writes the files the doctor reads, named and formatted as real kernels write them;
its defaults describe a host that passes every check: an AMD Milan with SEV-SNP enabled, an H100
PCIe bound to vfio-pci in its own IOMMU group, an AmdSev OVMF, enough memory. ``FakeRunner``
answers commands from the recorded outputs in ``hosts/`` and records every argument vector.
Production code never imports this module.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

from appliance.doctor import DoctorOptions
from appliance.runner import NOT_FOUND, Completed
from tests.cvm_boot.conftest import fake_amdsev_firmware, fake_bzimage, recipe_text

HOSTS = Path(__file__).resolve().parent / "hosts"
GPU_BDF = "0000:41:00.0"
# Firmware version and TCB of the real Milan report in ../shared/vectors/snp/milan_v2_report.bin.
MILAN_TCB = 0x7308000000000003
GiB = 1 << 30


def recorded(name: str) -> str:
    return (HOSTS / name).read_text()


def snp_status(
    major: int = 1,
    minor: int = 52,
    *,
    state: int = 1,
    rmp: bool = True,
    build: int = 4,
    current: int = MILAN_TCB,
    reported: int = MILAN_TCB,
) -> bytes:
    """``struct sev_user_data_snp_status`` as the SNP_PLATFORM_STATUS ioctl fills it."""
    return struct.pack("<BBBBIIIQQ", major, minor, state, int(rmp), build, 0, 0, current, reported)


def _meminfo(total_kib: int, available_kib: int, hugepages: int) -> str:
    return (
        f"MemTotal:       {total_kib} kB\n"
        f"MemFree:        {available_kib - 1024} kB\n"
        f"MemAvailable:   {available_kib} kB\n"
        "Buffers:          102400 kB\n"
        f"HugePages_Total:   {hugepages}\n"
        f"HugePages_Free:    {hugepages}\n"
        "HugePages_Rsvd:        0\n"
        "HugePages_Surp:        0\n"
        "Hugepagesize:       2048 kB\n"
    )


def _pci_device(
    root: Path, bdf: str, vendor: str, device: str, cls: str, driver: str | None
) -> Path:
    dev = root / "sys/bus/pci/devices" / bdf
    dev.mkdir(parents=True)
    (dev / "vendor").write_text(vendor + "\n")
    (dev / "device").write_text(device + "\n")
    (dev / "class").write_text(cls + "\n")
    if driver is not None:
        drv = root / "sys/bus/pci/drivers" / driver
        drv.mkdir(parents=True, exist_ok=True)
        (dev / "driver").symlink_to(drv)
        (drv / bdf).symlink_to(dev)
    return dev


def gpu_id(device: str) -> str:
    """``10de:2331`` for device ``0x2331``: the form modprobe's ``ids=`` takes."""
    return f"10de:{device.removeprefix('0x')}"


def make_host(
    root: Path,
    *,
    cpu: str = "AuthenticAMD",
    family: int = 25,
    model: int = 1,
    snp: str | None = "Y",
    dev_sev: bytes | None = None,
    sev_device: bool = True,
    tdx: str | None = None,
    iommu_groups: int = 4,
    gpu: str | None = "0x2331",
    gpu_driver: str | None = "vfio-pci",
    group_peers: Mapping[str, str | None] | None = None,
    mem_total_gib: int = 512,
    mem_available_gib: int = 480,
    hugepages: int = 0,
    ovmf: bytes | None = None,
    ovmf_path: str = "usr/share/ovmf/OVMF.amdsev.fd",
    image_tools: bool = True,
    psp_versions: bool = True,
    grub: bool = False,
    vfio_persistent: bool | None = None,
) -> Path:
    """A fake host tree. ``dev_sev`` is the recorded SNP_PLATFORM_STATUS answer (``b""``: the
    device exists but cannot be read); ``None`` means the Milan status on an SNP host.
    ``vfio_persistent`` (default: when the GPU is on vfio-pci) writes the modprobe.d and
    modules-load.d files that keep it there across reboots."""
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "cpuinfo").write_text(
        f"processor\t: 0\nvendor_id\t: {cpu}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
        "model name\t: fake CPU\nstepping\t: 1\n"
    )
    (root / "proc" / "meminfo").write_text(
        _meminfo(mem_total_gib << 20, mem_available_gib << 20, hugepages)
    )
    if snp is not None:
        p = root / "sys/module/kvm_amd/parameters"
        p.mkdir(parents=True)
        (p / "sev_snp").write_text(snp + "\n")
        if dev_sev is None:
            dev_sev = snp_status()
    if dev_sev is not None and sev_device:
        (root / "dev").mkdir(exist_ok=True)
        (root / "dev" / "sev").write_bytes(dev_sev)
    if tdx is not None:
        p = root / "sys/module/kvm_intel/parameters"
        p.mkdir(parents=True)
        (p / "tdx").write_text(tdx + "\n")
    for i in range(iommu_groups):
        (root / "sys/kernel/iommu_groups" / str(i) / "devices").mkdir(parents=True)
    if psp_versions and cpu == "AuthenticAMD":
        psp = _pci_device(root, "0000:02:00.1", "0x1022", "0x1486", "0x108000", "ccp")
        (psp / "bootloader_version").write_text("00.1a.00.05\n")
    if gpu is not None:
        dev = _pci_device(root, GPU_BDF, "0x10de", gpu, "0x030200", gpu_driver)
        if iommu_groups:
            group = root / "sys/kernel/iommu_groups/1"
            (dev / "iommu_group").symlink_to(group)
            (group / "devices" / GPU_BDF).symlink_to(dev)
            for bdf, driver in (group_peers or {}).items():
                peer = _pci_device(root, bdf, "0x10de", "0x22a3", "0x040300", driver)
                (group / "devices" / bdf).symlink_to(peer)
    if vfio_persistent is None:
        vfio_persistent = gpu is not None and gpu_driver == "vfio-pci"
    if vfio_persistent:
        (root / "etc/modprobe.d").mkdir(parents=True, exist_ok=True)
        (root / "etc/modprobe.d/vfio.conf").write_text(
            f"# the operator's own\noptions vfio_pci ids={gpu_id(gpu or '0x2331')}\n"
            "softdep nvidia pre: vfio_pci\n"
        )
        (root / "etc/modules-load.d").mkdir(parents=True, exist_ok=True)
        (root / "etc/modules-load.d/vfio.conf").write_text("vfio_pci\n")
    if ovmf is None:
        ovmf = fake_amdsev_firmware()
    if ovmf:
        fw = root / ovmf_path
        fw.parent.mkdir(parents=True, exist_ok=True)
        fw.write_bytes(ovmf)
    if image_tools:
        (root / "usr/sbin").mkdir(parents=True, exist_ok=True)
        (root / "usr/bin").mkdir(parents=True, exist_ok=True)
        (root / "usr/sbin/veritysetup").write_text("")
        (root / "usr/bin/mksquashfs").write_text("")
    if grub:
        (root / "etc/default").mkdir(parents=True)
        (root / "etc/default/grub").write_text('GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n')
    return root


def tdx_host(root: Path, **kwargs: object) -> Path:
    """An Intel host with TDX enabled and the Debian OVMF (which carries TDVF metadata)."""
    args: dict[str, object] = {
        "cpu": "GenuineIntel",
        "family": 6,
        "model": 143,
        "snp": None,
        "tdx": "Y",
        "ovmf": (HOSTS / "ovmf-debian12-OVMF_CODE.fd.tail").read_bytes(),
        "ovmf_path": "usr/share/ovmf/OVMF.fd",
    }
    args.update(kwargs)
    return make_host(root, **args)  # type: ignore[arg-type]


def cc_mode_line(bdf: str, mode: str) -> str:
    """A gpu-admin-tools answer, in its format: ``info(f"{gpu} CC mode is {cc_mode}")``."""
    gpu = f"GPU {bdf} H100-PCIE 0x2331 BAR0 0xfd000000"
    return f"2025-01-01,00:00:00.000 INFO     {gpu} CC mode is {mode}\n"


QEMU_NEW = (recorded("qemu-9.2-proxmox.version.txt"), recorded("qemu-9.1.object-help.txt"))
QEMU_DEBIAN12 = (
    recorded("qemu-7.2-debian12.version.txt"),
    recorded("qemu-7.2-debian12.object-help.txt"),
)


class FakeRunner:
    """FAKE: answers from recorded outputs, keyed by (program name, *arguments); records calls."""

    def __init__(
        self,
        *,
        qemu: tuple[str, str] | None = QEMU_NEW,
        cc_mode: str | None = "on",
        extra: Mapping[tuple[str, ...], Completed] | None = None,
    ) -> None:
        self.calls: list[list[str]] = []
        self.answers: dict[tuple[str, ...], Completed] = {}
        if qemu is not None:
            self.answers[("qemu-system-x86_64", "--version")] = Completed(0, qemu[0])
            self.answers[("qemu-system-x86_64", "-object", "help")] = Completed(0, qemu[1])
        if cc_mode is not None:
            key = ("nvidia_gpu_tools.py", f"--gpu-bdf={GPU_BDF}", "--query-cc-mode")
            self.answers[key] = Completed(0, cc_mode_line(GPU_BDF, cc_mode))
        self.answers.update(extra or {})

    def __call__(self, argv: Sequence[str]) -> Completed:
        self.calls.append(list(argv))
        key = (os.path.basename(argv[0]), *argv[1:])
        return self.answers.get(key, Completed(NOT_FOUND, "", f"{argv[0]}: command not found"))


def options(
    runner: FakeRunner | None = None, *, free_gib: float = 500, **kwargs: object
) -> DoctorOptions:
    """Doctor options over a fake runner, with ``free_gib`` of disk wherever it looks."""
    return DoctorOptions(
        runner=runner or FakeRunner(),
        disk_free=lambda _: int(free_gib * GiB),
        state_dir=Path("/var/lib/openpcc"),
        **kwargs,  # type: ignore[arg-type]
    )


def write_recipe(directory: Path, *, tee: str = "sev-snp") -> Path:
    """A real-launch recipe over the synthetic AmdSev firmware, a fake kernel and initrd."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "OVMF.fd": fake_amdsev_firmware(),
        "vmlinuz": fake_bzimage(),
        "initrd.img": b"initrd contents\n" * 64,
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    sha = {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    path = directory / "recipe.toml"
    path.write_text(
        recipe_text(
            tee,
            firmware_sha=sha["OVMF.fd"],
            kernel_sha=sha["vmlinuz"],
            initrd_sha=sha["initrd.img"],
        )
    )
    return path


def unsystemd(line: str) -> list[str]:
    """Split an ExecStart= value back into words (double quotes, C escapes, %% and $$)."""
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line)]
