"""Host checks: can this machine run a confidential VM with a GPU in CC mode?

Files are read through a root path (``root=Path("/")`` on a real host; a fake tree in tests),
from sysfs, procfs, /dev and the firmware directories only. External commands (QEMU's own help
output, NVIDIA's gpu-admin-tools) go through an injectable :data:`~appliance.runner.Runner`; the
SEV firmware's platform status comes from the ``SNP_PLATFORM_STATUS`` ioctl on ``/dev/sev``, and
a fake tree, whose ``dev/sev`` is a regular file, records that ioctl's answer as the file's bytes.

Each check yields one line: pass, warn, fail or info, the fix, and, where software can apply the
fix, a machine-readable ``remedy`` that install.sh acts on (always after asking):
``apt:PKG ...`` (OS packages), ``vfio:BDF`` (bind a GPU to vfio-pci), ``kernel-cmdline:ARGS``,
``vfio-persist:VENDOR:DEVICE,...`` (keep the GPUs on vfio-pci across reboots:
:func:`vfio_config_files`, written by ``openpcc-appliance persist-vfio``).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import stat
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from appliance.runner import NOT_FOUND, Runner, run_command
from appliance.state import state_dir
from attest.errors import ParseError
from attest.sevsnp.abi import TcbVersion, product_from_cpuid
from cvm_boot.measure import AMDSEV_FIRMWARE_HINT

__all__ = [
    "Check",
    "DoctorOptions",
    "FirmwareInfo",
    "HostFacts",
    "QemuInfo",
    "SnpPlatformStatus",
    "detect_host",
    "parse_ovmf",
    "parse_qemu",
    "parse_snp_status",
    "read_snp_platform_status",
    "run_checks",
    "vfio_config_files",
    "vfio_ids",
    "vfio_persistence_missing",
]

NVIDIA_VENDOR = "0x10de"
# PCI device ids of GPUs with confidential-computing support (H100 PCIe/SXM/NVL, H200, H800).
CC_GPU_IDS = {
    "0x2321": "H100 NVL",
    "0x2330": "H100 SXM5",
    "0x2331": "H100 PCIe",
    "0x2322": "H800 PCIe",
    "0x2324": "H800",
    "0x2335": "H200 SXM",
    "0x233b": "H200 NVL",
}
# QEMU gained the sev-snp-guest object in 9.1 and tdx-guest in 10.1.
QEMU_MINIMUM = {"sev-snp": (9, 1), "tdx": (10, 1)}
QEMU_OBJECT = {"sev-snp": "sev-snp-guest", "tdx": "tdx-guest"}
# The Linux SEV driver refuses SNP below this firmware API version (drivers/crypto/ccp/sev-dev.c).
SNP_MIN_API = (1, 51)
# Host memory kept for the kernel, QEMU and the appliance's own processes.
HOST_RESERVE_MIB = 4096
SIM_MEMORY_MIB = 2048
SIM_DISK_BYTES = 2 << 30
DEFAULT_DISK_BYTES = 80 << 30
DEFAULT_GUEST_MIB = 65536

# Where distributions and the AMDSEV/TDX build scripts install the firmware, most specific first.
FIRMWARE_CANDIDATES = {
    "sev-snp": (
        "usr/share/ovmf/OVMF.amdsev.fd",
        "usr/share/OVMF/OVMF.amdsev.fd",
        "usr/share/edk2/ovmf/OVMF.amdsev.fd",
        "opt/openpcc/firmware/OVMF.amdsev.fd",
        "usr/local/share/qemu/OVMF.amdsev.fd",
    ),
    "tdx": (
        "usr/share/ovmf/OVMF.inteltdx.fd",
        "usr/share/edk2/ovmf/OVMF.inteltdx.fd",
        "usr/share/ovmf/OVMF.fd",
        "usr/share/qemu/OVMF.fd",
    ),
}
TDX_FIRMWARE_HINT = (
    "install an OVMF built with TDX support (edk2 OvmfPkg/IntelTdx/IntelTdxX64.dsc, or a recent "
    "distribution OVMF.fd) and point the recipe's [firmware].path at it"
)
GPU_TOOLS_HINT = (
    "install NVIDIA gpu-admin-tools (github.com/NVIDIA/gpu-admin-tools) and set "
    "OPENPCC_GPU_ADMIN_TOOLS to its nvidia_gpu_tools.py"
)

Status = Literal["pass", "warn", "fail", "info"]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""
    remedy: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def line(self) -> str:
        """The one-line form install.sh prints when it stops at this requirement."""
        text = f"{self.status.upper()} {self.name}: {self.detail}"
        return f"{text} (fix: {self.fix})" if self.fix else text


# -- the host as sysfs and procfs describe it ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gpu:
    address: str
    device: str
    model: str
    driver: str | None

    @property
    def cc_capable(self) -> bool:
        return self.device in CC_GPU_IDS


@dataclass(frozen=True, slots=True)
class HostFacts:
    snp: bool
    tdx: bool
    iommu_groups: int
    gpus: tuple[Gpu, ...]
    cpu_vendor: str
    cpu_family: int | None = None
    cpu_model: int | None = None

    @property
    def tee(self) -> str | None:
        return "sev-snp" if self.snp else "tdx" if self.tdx else None

    @property
    def snp_product(self) -> str | None:
        if self.cpu_family is None or self.cpu_model is None:
            return None
        return product_from_cpuid(self.cpu_family, self.cpu_model)


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel.lstrip("/")).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _param_on(value: str | None) -> bool:
    return value is not None and value.strip().upper() in ("Y", "1")


def _cpuinfo_int(cpuinfo: str, key: str) -> int | None:
    m = re.search(rf"^{key}\s*:\s*(\d+)\s*$", cpuinfo, re.MULTILINE)
    return int(m.group(1)) if m else None


def detect_host(root: Path = Path("/")) -> HostFacts:
    snp = (
        _param_on(_read(root, "sys/module/kvm_amd/parameters/sev_snp"))
        and (root / "dev" / "sev").exists()
    )
    tdx = _param_on(_read(root, "sys/module/kvm_intel/parameters/tdx"))
    groups_dir = root / "sys" / "kernel" / "iommu_groups"
    groups = len(list(groups_dir.iterdir())) if groups_dir.is_dir() else 0
    gpus: list[Gpu] = []
    pci = root / "sys" / "bus" / "pci" / "devices"
    if pci.is_dir():
        for dev in sorted(pci.iterdir()):
            if _read(dev, "vendor") != NVIDIA_VENDOR:
                continue
            cls = _read(dev, "class") or ""
            if not cls.startswith(("0x0300", "0x0302")):
                continue
            device = _read(dev, "device") or "?"
            link = dev / "driver"
            driver = link.resolve().name if link.exists() else None
            gpus.append(Gpu(dev.name, device, CC_GPU_IDS.get(device, "NVIDIA GPU"), driver))
    cpuinfo = _read(root, "proc/cpuinfo") or ""
    vendor = "AMD" if "AuthenticAMD" in cpuinfo else "Intel" if "GenuineIntel" in cpuinfo else "?"
    return HostFacts(
        snp,
        tdx,
        groups,
        tuple(gpus),
        vendor,
        _cpuinfo_int(cpuinfo, "cpu family"),
        _cpuinfo_int(cpuinfo, "model"),
    )


# -- OVMF: the footer GUID table at the end of the image ------------------------------------------

OVMF_FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
SEV_HASH_TABLE_GUID = uuid.UUID("7255371f-3a3b-4b04-927b-1da6efa8d454")
SEV_METADATA_GUID = uuid.UUID("dc886566-984a-4798-a75e-5585a7bf67cc")
TDX_METADATA_GUID = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2")
# The table ends this many bytes before the end of the image (the reset vector lives there).
_FOOTER_TAIL = 32
_ENTRY_HEADER = 18  # u16 size (header included), then the GUID in EFI (little-endian) layout
_SEV_METADATA_MAGIC = b"ASEV"
_TDVF_MAGIC = b"TDVF"
SNP_KERNEL_HASHES_SECTION = 0x10


@dataclass(frozen=True, slots=True)
class FirmwareInfo:
    """What an OVMF image declares for confidential guests (empty when it has no footer table)."""

    table: Mapping[uuid.UUID, bytes] = field(default_factory=dict)
    sev_sections: tuple[int, ...] = ()
    tdvf: bool = False

    @property
    def snp_metadata(self) -> bool:
        return bool(self.sev_sections)

    @property
    def kernel_hashes(self) -> bool:
        """The SNP kernel-hashes page is declared and the hash table has an address."""
        table = self.table.get(SEV_HASH_TABLE_GUID, b"")
        gpa = int.from_bytes(table[:4], "little") if len(table) >= 4 else 0
        return SNP_KERNEL_HASHES_SECTION in self.sev_sections and gpa != 0


def parse_ovmf(data: bytes) -> FirmwareInfo:
    """Parse the OVMF footer table and the SEV / TDX metadata it points to.

    Everything is located from the end of the image, so the last pages of a firmware file are
    enough. Raises ``ParseError`` when a table entry or metadata block points outside the image.
    """
    size = len(data)
    footer_at = size - _FOOTER_TAIL - _ENTRY_HEADER
    if footer_at < 0:
        return FirmwareInfo()
    footer_len, footer_guid = struct.unpack_from("<H16s", data, footer_at)
    if uuid.UUID(bytes_le=footer_guid) != OVMF_FOOTER_GUID:
        return FirmwareInfo()
    table_len = footer_len - _ENTRY_HEADER
    if table_len < 0 or table_len > footer_at:
        raise ParseError(f"OVMF footer table length {footer_len} does not fit the image")
    rest = data[footer_at - table_len : footer_at]
    table: dict[uuid.UUID, bytes] = {}
    while len(rest) >= _ENTRY_HEADER:
        entry_len, guid = struct.unpack_from("<H16s", rest, len(rest) - _ENTRY_HEADER)
        if entry_len < _ENTRY_HEADER or entry_len > len(rest):
            raise ParseError(f"OVMF footer table entry of length {entry_len} is malformed")
        table[uuid.UUID(bytes_le=guid)] = rest[len(rest) - entry_len : len(rest) - _ENTRY_HEADER]
        rest = rest[: len(rest) - entry_len]
    return FirmwareInfo(
        table=table,
        sev_sections=_sev_sections(data, table.get(SEV_METADATA_GUID)),
        tdvf=_has_tdvf(data, table.get(TDX_METADATA_GUID)),
    )


def _block_at(data: bytes, entry: bytes | None, what: str) -> int | None:
    """The image offset an ``offset-from-end`` table entry names, or None without the entry."""
    if entry is None:
        return None
    if len(entry) < 4:
        raise ParseError(f"OVMF {what} table entry is {len(entry)} bytes, expected 4")
    back = int.from_bytes(entry[:4], "little")
    if not 16 <= back <= len(data):
        raise ParseError(f"OVMF {what} offset {back} is outside the image")
    return len(data) - back


def _sev_sections(data: bytes, entry: bytes | None) -> tuple[int, ...]:
    at = _block_at(data, entry, "SEV metadata")
    if at is None:
        return ()
    magic, length, version, count = struct.unpack_from("<4sIII", data, at)
    if magic != _SEV_METADATA_MAGIC or version != 1:
        raise ParseError(f"OVMF SEV metadata has signature {magic!r} version {version}")
    if length != 16 + 12 * count or at + length > len(data):
        raise ParseError(f"OVMF SEV metadata length {length} does not match {count} sections")
    return tuple(struct.unpack_from("<I", data, at + 16 + 12 * i + 8)[0] for i in range(count))


def _has_tdvf(data: bytes, entry: bytes | None) -> bool:
    at = _block_at(data, entry, "TDX metadata")
    return at is not None and data[at : at + 4] == _TDVF_MAGIC


# -- SEV firmware: SNP_PLATFORM_STATUS ----------------------------------------------------------

# struct sev_issue_cmd {u32 cmd; u64 data; u32 error} __packed; _IOWR('S', 0x0, ...).
SEV_ISSUE_CMD = (3 << 30) | (16 << 16) | (ord("S") << 8)
SNP_PLATFORM_STATUS_CMD = 9  # enum position in include/uapi/linux/psp-sev.h
SNP_STATUS_SIZE = 32  # struct sev_user_data_snp_status
SNP_STATES = {0: "UNINIT", 1: "INIT"}


@dataclass(frozen=True, slots=True)
class SnpPlatformStatus:
    """``struct sev_user_data_snp_status`` (Linux uapi psp-sev.h), as the firmware reports it."""

    api_major: int
    api_minor: int
    state: int
    rmp_initialized: bool
    build: int
    flags: int
    guest_count: int
    current_tcb: int
    reported_tcb: int

    @property
    def api(self) -> tuple[int, int]:
        return (self.api_major, self.api_minor)


def parse_snp_status(raw: bytes) -> SnpPlatformStatus:
    if len(raw) < SNP_STATUS_SIZE:
        raise ParseError(f"SNP platform status is {len(raw)} bytes, expected {SNP_STATUS_SIZE}")
    major, minor, state, rmp, build, flags, guests, current, reported = struct.unpack_from(
        "<BBBBIIIQQ", raw
    )
    return SnpPlatformStatus(
        major, minor, state, bool(rmp & 1), build, flags, guests, current, reported
    )


def read_snp_platform_status(root: Path) -> bytes | None:
    """The raw SNP_PLATFORM_STATUS answer of ``root``/dev/sev, or None when it cannot be had."""
    dev = root / "dev" / "sev"
    try:
        mode = dev.stat().st_mode
        if stat.S_ISREG(mode):  # a fake host tree: the recorded answer
            return dev.read_bytes() or None
        if not stat.S_ISCHR(mode):
            return None
        buf = ctypes.create_string_buffer(SNP_STATUS_SIZE)
        cmd = bytearray(struct.pack("<IQI", SNP_PLATFORM_STATUS_CMD, ctypes.addressof(buf), 0))
        fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, SEV_ISSUE_CMD, cmd, True)
        finally:
            os.close(fd)
    except OSError:
        return None
    return buf.raw


# -- QEMU ---------------------------------------------------------------------------------------

_QEMU_VERSION_RE = re.compile(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, slots=True)
class QemuInfo:
    version: tuple[int, int, int] | None
    version_line: str
    objects: frozenset[str]


def parse_qemu(version_output: str, object_help: str) -> QemuInfo:
    """``--version`` and ``-object help`` outputs: the version and the user-creatable objects."""
    m = _QEMU_VERSION_RE.search(version_output)
    version = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None
    line = version_output.strip().splitlines()[0] if version_output.strip() else ""
    objects = frozenset(
        ln.strip() for ln in object_help.splitlines() if ln.startswith("  ") and ln.strip()
    )
    return QemuInfo(version, line, objects)


# -- options ------------------------------------------------------------------------------------


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding ``path``."""
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@dataclass(frozen=True, slots=True)
class DoctorOptions:
    """What the doctor checks against, and how it reaches what is not a file under the root."""

    runner: Runner = run_command
    qemu: str = "qemu-system-x86_64"
    gpu_tools: str = "nvidia_gpu_tools.py"
    firmware: Path | None = None  # the recipe's firmware; None: the first known location
    guest_memory_mib: int = DEFAULT_GUEST_MIB
    disk_bytes: int = DEFAULT_DISK_BYTES
    state_dir: Path | None = None
    disk_free: Callable[[Path], int] = free_bytes
    snp_status: Callable[[Path], bytes | None] = read_snp_platform_status


# -- the checks ---------------------------------------------------------------------------------


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / (1 << 30):.1f} GiB"


def _tee_checks(root: Path, facts: HostFacts) -> list[Check]:
    out: list[Check] = []
    if facts.snp:
        out.append(Check("AMD SEV-SNP host support", "pass", "kvm_amd sev_snp=Y and /dev/sev"))
    elif facts.cpu_vendor == "AMD":
        snp_param = _read(root, "sys/module/kvm_amd/parameters/sev_snp")
        out.append(
            Check(
                "AMD SEV-SNP host support",
                "fail",
                f"kvm_amd sev_snp={snp_param or 'absent'}, /dev/sev "
                f"{'present' if (root / 'dev/sev').exists() else 'absent'}",
                "enable SEV-SNP in the BIOS (SMEE, SNP, RMP table) and load kvm_amd with sev_snp=1 "
                "on a kernel >= 6.11",
            )
        )
    if facts.tdx:
        out.append(Check("Intel TDX host support", "pass", "kvm_intel tdx=Y"))
    elif facts.cpu_vendor == "Intel":
        tdx_param = _read(root, "sys/module/kvm_intel/parameters/tdx")
        out.append(
            Check(
                "Intel TDX host support",
                "fail",
                f"kvm_intel tdx={tdx_param or 'absent'}",
                "enable TDX in the BIOS and load kvm_intel with tdx=1",
                "kernel-cmdline:kvm_intel.tdx=1" if tdx_param is not None else "",
            )
        )
    if facts.tee is None:
        out.append(
            Check(
                "TEE",
                "warn",
                "no SEV-SNP or TDX host support found",
                "the appliance will run SIMULATED: not confidential",
            )
        )
    return out


def _psp_versions(root: Path) -> str:
    """The AMD secure processor's bootloader and TEE versions (ccp sysfs, Linux >= 6.4)."""
    drv = root / "sys" / "bus" / "pci" / "drivers" / "ccp"
    if not drv.is_dir():
        return ""
    for dev in sorted(drv.iterdir()):
        parts = [
            f"PSP {name.split('_')[0]} {value}"
            for name in ("bootloader_version", "tee_version")
            if (value := _read(dev, name))
        ]
        if parts:
            return ", ".join(parts)
    return ""


def _snp_firmware_check(root: Path, facts: HostFacts, opts: DoctorOptions) -> Check:
    name = "SEV-SNP firmware"
    raw = opts.snp_status(root)
    if raw is None:
        return Check(
            name,
            "warn",
            "cannot read the SNP platform status from /dev/sev",
            "run the doctor as root to see the firmware and TCB versions",
        )
    try:
        st = parse_snp_status(raw)
    except ParseError as e:
        return Check(name, "warn", str(e), "the kernel's /dev/sev answer was not understood")
    product = facts.snp_product
    current = TcbVersion.decode(st.current_tcb, product)
    reported = TcbVersion.decode(st.reported_tcb, product)
    psp = _psp_versions(root)
    detail = (
        f"SNP API {st.api_major}.{st.api_minor} build {st.build}, "
        f"{SNP_STATES.get(st.state, f'state {st.state}')}, "
        f"{product or 'unknown product'} current TCB {current}"
        + (f"; reported TCB {reported}" if st.reported_tcb != st.current_tcb else "")
        + (f"; {psp}" if psp else "")
    )
    if st.api < SNP_MIN_API:
        return Check(
            name,
            "fail",
            detail,
            f"update the SEV firmware to SNP API >= {SNP_MIN_API[0]}.{SNP_MIN_API[1]} (BIOS "
            "update, or AMD's amd_sev_fam19h_model*.sbin in /lib/firmware/amd, loaded at boot)",
        )
    if st.state != 1 or not st.rmp_initialized:
        return Check(
            name,
            "fail",
            detail + ("" if st.rmp_initialized else ", RMP not initialised"),
            "the kernel initialises SNP when kvm_amd loads with sev_snp=1; check dmesg for ccp "
            "and SEV-SNP errors",
        )
    now = current.components()
    if any(v < now.get(k, 0) for k, v in reported.components().items()):
        return Check(
            name,
            "warn",
            detail,
            "guests report an older TCB than the firmware runs; commit it once the new firmware "
            "is trusted (snphost commit), or clients with a minimum-TCB policy refuse the node",
        )
    return Check(name, "pass", detail)


def _iommu_checks(root: Path, facts: HostFacts) -> list[Check]:
    if facts.iommu_groups == 0:
        arg = "intel_iommu=on iommu=pt" if facts.cpu_vendor == "Intel" else "amd_iommu=on iommu=pt"
        return [
            Check(
                "IOMMU",
                "fail" if facts.gpus else "warn",
                "no IOMMU groups",
                f"enable the IOMMU (BIOS, and {arg.split()[0]} on the kernel command line)",
                f"kernel-cmdline:{arg}" if facts.gpus else "",
            )
        ]
    return [Check("IOMMU", "pass", f"{facts.iommu_groups} IOMMU groups")]


def _group_check(root: Path, gpu: Gpu) -> Check | None:
    """Every device sharing the GPU's IOMMU group must be free for vfio too."""
    members = root / "sys" / "bus" / "pci" / "devices" / gpu.address / "iommu_group" / "devices"
    if not members.is_dir():
        return None
    busy = []
    for dev in sorted(members.iterdir()):
        link = dev / "driver"
        driver = link.resolve().name if link.exists() else None
        if dev.name != gpu.address and driver not in (None, "vfio-pci", "pcieport"):
            busy.append(f"{dev.name} ({driver})")
    name = f"GPU {gpu.address} IOMMU group"
    if busy:
        return Check(
            name,
            "fail",
            "shares its group with " + ", ".join(busy),
            "bind those devices to vfio-pci too, or move the GPU to a slot with its own group",
        )
    return Check(name, "pass", "no other device in use in the group")


def _gpu_checks(root: Path, facts: HostFacts, opts: DoctorOptions) -> list[Check]:
    if not facts.gpus:
        return [
            Check(
                "NVIDIA GPU",
                "warn",
                "none found",
                "without a CC-capable GPU the appliance uses the embedded CPU engine",
            )
        ]
    out: list[Check] = []
    for g in facts.gpus:
        out.append(
            Check(
                f"GPU {g.address}",
                "pass" if g.cc_capable else "fail",
                f"{g.model} ({g.device}), driver {g.driver or 'none'}",
                "" if g.cc_capable else "this GPU has no confidential-computing mode",
            )
        )
        if not g.cc_capable:
            continue
        if g.driver != "vfio-pci":
            out.append(
                Check(
                    f"GPU {g.address} binding",
                    "fail",
                    f"bound to {g.driver or 'nothing'}",
                    "bind it to vfio-pci (the installer asks before doing it)",
                    f"vfio:{g.address}",
                )
            )
        group = _group_check(root, g)
        if group is not None:
            out.append(group)
        if facts.tee is not None:
            out.append(_cc_mode_check(g, opts))
    return out


_CC_MODE_RE = re.compile(r"CC mode is (\w+)")


def _cc_mode_check(gpu: Gpu, opts: DoctorOptions) -> Check:
    name = f"GPU {gpu.address} CC mode"
    res = opts.runner([opts.gpu_tools, f"--gpu-bdf={gpu.address}", "--query-cc-mode"])
    if res.returncode == NOT_FOUND:
        return Check(name, "warn", "unknown: gpu-admin-tools not found", GPU_TOOLS_HINT)
    m = _CC_MODE_RE.search(res.stdout + res.stderr)
    if not res.ok or m is None:
        return Check(name, "warn", f"gpu-admin-tools: {res.first_line()}", GPU_TOOLS_HINT)
    mode = m.group(1)
    if mode == "on":
        return Check(name, "pass", "on (gpu-admin-tools)")
    return Check(
        name,
        "fail",
        f"{mode} (gpu-admin-tools)",
        f"{opts.gpu_tools} --gpu-bdf={gpu.address} --set-cc-mode=on --reset-after-cc-mode-switch",
    )


def _qemu_check(facts: HostFacts, opts: DoctorOptions) -> Check:
    version = opts.runner([opts.qemu, "--version"])
    if version.returncode == NOT_FOUND:
        return Check(
            "QEMU",
            "warn" if facts.tee is None else "fail",
            f"{opts.qemu} not installed",
            "install QEMU >= 9.1 (SNP and TDX guests need it)",
            "apt:qemu-system-x86" if facts.tee is not None else "",
        )
    if facts.tee is None:
        return Check("QEMU", "info", version.first_line())
    info = parse_qemu(version.stdout, opts.runner([opts.qemu, "-object", "help"]).stdout)
    need, obj = QEMU_MINIMUM[facts.tee], QEMU_OBJECT[facts.tee]
    found = info.version_line or version.first_line()
    has_obj = obj in info.objects
    if info.version is not None and info.version[:2] >= need and has_obj:
        return Check("QEMU", "pass", f"{found}; supports {obj}")
    why = "too old" if info.version is None or info.version[:2] < need else f"no {obj} object"
    return Check(
        "QEMU",
        "fail",
        f"{found}: {why} (-object help {'lists' if has_obj else 'does not list'} {obj})",
        f"install QEMU >= {need[0]}.{need[1]} built with {facts.tee} support (a newer "
        "distribution release, or build it from qemu.org) and set the path the unit uses",
    )


def _firmware_check(root: Path, facts: HostFacts, opts: DoctorOptions) -> Check:
    tee = facts.tee
    assert tee is not None
    hint = AMDSEV_FIRMWARE_HINT if tee == "sev-snp" else TDX_FIRMWARE_HINT
    name = "OVMF firmware"
    if opts.firmware is not None:
        path: Path | None = opts.firmware
    else:
        path = next(
            (root / c for c in FIRMWARE_CANDIDATES[tee] if (root / c).is_file()),
            None,
        )
    if path is None:
        where = ", ".join("/" + c for c in FIRMWARE_CANDIDATES[tee][:3])
        return Check(name, "fail", f"none found (looked in {where}, ...)", hint)
    try:
        info = parse_ovmf(path.read_bytes())
    except OSError as e:
        return Check(name, "fail", f"cannot read {path}: {e.strerror}", hint)
    except ParseError as e:
        return Check(name, "fail", f"{path}: {e}", hint)
    if not info.table:
        return Check(name, "fail", f"{path} has no OVMF footer table: not an OVMF for TEEs", hint)
    if tee == "tdx":
        if info.tdvf:
            return Check(name, "pass", f"{path}: TDVF metadata")
        return Check(name, "fail", f"{path} has no TDVF metadata", hint)
    if not info.snp_metadata:
        return Check(name, "fail", f"{path} has no SEV metadata section", hint)
    if not info.kernel_hashes:
        return Check(
            name,
            "fail",
            f"{path}: SNP metadata ({len(info.sev_sections)} sections) but no kernel-hashes "
            "section: a generic OVMF build, which cannot measure the kernel, initrd and cmdline",
            hint,
        )
    return Check(
        name,
        "pass",
        f"{path}: SNP metadata ({len(info.sev_sections)} sections) with the kernel-hashes section",
    )


def _meminfo(root: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(root, "proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            # Values are in kB except the HugePages_* counts.
            out[key.strip()] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return out


def _memory_checks(root: Path, facts: HostFacts, opts: DoctorOptions) -> list[Check]:
    info = _meminfo(root)
    severe: Status = "fail" if facts.tee is not None else "warn"
    if "MemTotal" not in info:
        return [Check("Memory", "warn", "cannot read /proc/meminfo")]
    guest_mib = opts.guest_memory_mib if facts.tee is not None else SIM_MEMORY_MIB
    need = (guest_mib + (HOST_RESERVE_MIB if facts.tee is not None else 0)) << 20
    available = info.get("MemAvailable", info.get("MemFree", 0))
    what = "the CVM" if facts.tee is not None else "the simulated appliance"
    detail = (
        f"{_gib(available)} available of {_gib(info['MemTotal'])}; {what} needs "
        f"{_gib(guest_mib << 20)}"
        + (f" + {_gib(HOST_RESERVE_MIB << 20)} for the host" if facts.tee is not None else "")
    )
    out = [
        Check("Memory", "pass", detail)
        if available >= need
        else Check(
            "Memory",
            severe,
            detail,
            "free memory, or lower [vm].memory_mib in the release recipe",
        )
    ]
    pages = info.get("HugePages_Total", 0)
    page_size = info.get("Hugepagesize", 2 << 20)
    if facts.tee is not None:
        if pages:
            out.append(
                Check(
                    "Hugepages",
                    "warn",
                    f"{pages} x {page_size >> 10} KiB reserved ({_gib(pages * page_size)}), "
                    "which the CVM cannot use: its memory comes from memfd and guest_memfd",
                    "release them (echo 0 > /proc/sys/vm/nr_hugepages) and drop hugepages= "
                    "from the kernel command line",
                )
            )
        else:
            out.append(
                Check("Hugepages", "pass", "none reserved (guest memory comes from guest_memfd)")
            )
    return out


def _disk_check(facts: HostFacts, opts: DoctorOptions) -> Check:
    where = opts.state_dir or state_dir()
    need = opts.disk_bytes if facts.tee is not None else SIM_DISK_BYTES
    try:
        free = opts.disk_free(where)
    except OSError as e:
        return Check("Disk", "warn", f"cannot stat {where}: {e.strerror}")
    detail = f"{_gib(free)} free at {where}; the model and images need {_gib(need)}"
    if free >= need:
        return Check("Disk", "pass", detail)
    return Check(
        "Disk",
        "fail" if facts.tee is not None else "warn",
        detail,
        "free space there, or set OPENPCC_STATE_DIR to a larger file system "
        "(OPENPCC_MODEL_DISK_GIB says how much the model needs)",
    )


_IMAGE_TOOLS = {"veritysetup": "cryptsetup-bin", "mksquashfs": "squashfs-tools"}
_BIN_DIRS = ("usr/sbin", "usr/bin", "sbin", "bin", "usr/local/sbin", "usr/local/bin")


def _image_tools_check(root: Path) -> Check:
    missing = [
        tool for tool in _IMAGE_TOOLS if not any((root / d / tool).is_file() for d in _BIN_DIRS)
    ]
    if not missing:
        return Check("Image tools", "pass", "veritysetup and mksquashfs installed")
    pkgs = " ".join(_IMAGE_TOOLS[t] for t in missing)
    return Check(
        "Image tools",
        "warn",
        f"{', '.join(missing)} missing: needed to build the sealed image and the weights volume",
        f"install {pkgs}",
        f"apt:{pkgs}",
    )


# -- vfio-pci at boot -----------------------------------------------------------------------------

VFIO_MODPROBE = "etc/modprobe.d/openpcc-vfio.conf"
VFIO_MODULES_LOAD = "etc/modules-load.d/openpcc-vfio.conf"
_MODPROBE_DIRS = ("etc/modprobe.d", "run/modprobe.d", "usr/lib/modprobe.d", "lib/modprobe.d")
_MODULES_LOAD_DIRS = ("etc/modules-load.d", "run/modules-load.d", "usr/lib/modules-load.d")


def vfio_ids(gpus: tuple[Gpu, ...] | list[Gpu]) -> list[str]:
    """``VENDOR:DEVICE`` (``10de:2331``) of each CC-capable GPU, sorted, each once."""
    ids = {f"{NVIDIA_VENDOR[2:]}:{g.device.removeprefix('0x')}" for g in gpus if g.cc_capable}
    return sorted(ids)


def vfio_config_files(gpus: tuple[Gpu, ...] | list[Gpu]) -> dict[str, str]:
    """The files that keep ``gpus`` on vfio-pci from boot, by path under the host root."""
    found = ", ".join(f"{g.address} {g.model}" for g in sorted(gpus, key=lambda g: g.address))
    head = (
        "# Written by `openpcc-appliance persist-vfio` (install.sh asks first): the\n"
        f"# confidential-computing GPUs stay on vfio-pci across reboots ({found}).\n"
        "# Delete this file (and update-initramfs -u) to give them back to their driver.\n"
    )
    return {
        VFIO_MODPROBE: head
        + f"options vfio-pci ids={','.join(vfio_ids(gpus))}\n"
        + "softdep nvidia pre: vfio-pci\n",
        VFIO_MODULES_LOAD: head + "vfio-pci\n",
    }


def _conf_lines(root: Path, dirs: tuple[str, ...]) -> list[list[str]]:
    out: list[list[str]] = []
    for d in dirs:
        directory = root / d
        if not directory.is_dir():
            continue
        for f in sorted(directory.glob("*.conf")):
            try:
                text = f.read_text()
            except (OSError, UnicodeDecodeError):
                continue
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if words:
                    out.append(words)
    return out


def _module(name: str) -> str:
    return name.replace("-", "_")


def vfio_persistence_missing(root: Path, gpus: tuple[Gpu, ...] | list[Gpu]) -> list[str]:
    """What the host's modprobe.d and modules-load.d lack to bind ``gpus`` to vfio-pci at boot.

    Any file counts (the operator may have written their own), as modprobe and
    systemd-modules-load read them all.
    """
    ids: set[str] = set()
    softdep = False
    for words in _conf_lines(root, _MODPROBE_DIRS):
        if words[0] == "options" and len(words) > 2 and _module(words[1]) == "vfio_pci":
            for opt in words[2:]:
                if opt.startswith("ids="):
                    ids.update(i.lower() for i in opt[4:].split(","))
        if words[0] == "softdep" and len(words) > 3 and _module(words[1]) == "nvidia":
            pre = words[words.index("pre:") + 1 :] if "pre:" in words else []
            softdep = softdep or "vfio_pci" in {_module(w) for w in pre}
    loads = any(_module(words[0]) == "vfio_pci" for words in _conf_lines(root, _MODULES_LOAD_DIRS))
    missing = [f"ids {i}" for i in vfio_ids(gpus) if i not in ids]
    if not softdep:
        missing.append("softdep nvidia pre: vfio-pci")
    if not loads:
        missing.append("vfio-pci in modules-load.d")
    return missing


def _vfio_persistence_check(root: Path, facts: HostFacts) -> Check | None:
    bound = [g for g in facts.gpus if g.cc_capable and g.driver == "vfio-pci"]
    if not bound:
        return None
    name = "vfio-pci at boot"
    missing = vfio_persistence_missing(root, bound)
    if not missing:
        return Check(name, "pass", "the GPUs are bound to vfio-pci from boot (modprobe.d)")
    gpus = ", ".join(g.address for g in bound)
    return Check(
        name,
        "warn",
        f"GPU {gpus} is on vfio-pci now but returns to its driver at the next reboot "
        f"(modprobe.d lacks {'; '.join(missing)})",
        f"`sudo openpcc-appliance persist-vfio` writes /{VFIO_MODPROBE} and "
        f"/{VFIO_MODULES_LOAD} (install.sh asks first)",
        f"vfio-persist:{','.join(vfio_ids(bound))}",
    )


def run_checks(root: Path = Path("/"), options: DoctorOptions | None = None) -> list[Check]:
    """Every requirement, one line each, in the order an operator fixes them."""
    opts = options or DoctorOptions()
    facts = detect_host(root)
    out = _tee_checks(root, facts)
    if facts.snp:
        out.append(_snp_firmware_check(root, facts, opts))
    out += _iommu_checks(root, facts)
    out += _gpu_checks(root, facts, opts)
    persistence = _vfio_persistence_check(root, facts)
    if persistence is not None:
        out.append(persistence)
    out.append(_qemu_check(facts, opts))
    if facts.tee is not None:
        out.append(_firmware_check(root, facts, opts))
    out += _memory_checks(root, facts, opts)
    out.append(_disk_check(facts, opts))
    if facts.tee is not None:
        out.append(_image_tools_check(root))
    return out
