"""Host checks: can this machine run a confidential VM with a GPU in CC mode?

Everything is read through a root path (``root=Path("/")`` on a real host; a fake tree in tests),
from sysfs, procfs and /dev only. Each check yields one line: pass, warn or fail, and the fix.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Check", "HostFacts", "detect_host", "run_checks"]

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

Status = Literal["pass", "warn", "fail", "info"]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Gpu:
    address: str
    device: str
    model: str
    driver: str | None


@dataclass(frozen=True, slots=True)
class HostFacts:
    snp: bool
    tdx: bool
    iommu_groups: int
    gpus: tuple[Gpu, ...]
    cpu_vendor: str

    @property
    def tee(self) -> str | None:
        return "sev-snp" if self.snp else "tdx" if self.tdx else None


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel.lstrip("/")).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _param_on(value: str | None) -> bool:
    return value is not None and value.strip().upper() in ("Y", "1")


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
            if _read(root, str((dev / "vendor").relative_to(root))) != NVIDIA_VENDOR:
                continue
            cls = _read(root, str((dev / "class").relative_to(root))) or ""
            if not cls.startswith(("0x0300", "0x0302")):
                continue
            device = _read(root, str((dev / "device").relative_to(root))) or "?"
            link = dev / "driver"
            driver = link.resolve().name if link.exists() else None
            gpus.append(Gpu(dev.name, device, CC_GPU_IDS.get(device, "NVIDIA GPU"), driver))
    cpuinfo = _read(root, "proc/cpuinfo") or ""
    vendor = "AMD" if "AuthenticAMD" in cpuinfo else "Intel" if "GenuineIntel" in cpuinfo else "?"
    return HostFacts(snp, tdx, groups, tuple(gpus), vendor)


def run_checks(root: Path = Path("/")) -> list[Check]:
    facts = detect_host(root)
    out: list[Check] = []
    snp_param = _read(root, "sys/module/kvm_amd/parameters/sev_snp")
    if facts.snp:
        out.append(Check("AMD SEV-SNP host support", "pass", "kvm_amd sev_snp=Y and /dev/sev"))
    elif facts.cpu_vendor == "AMD":
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
    tdx_param = _read(root, "sys/module/kvm_intel/parameters/tdx")
    if facts.tdx:
        out.append(Check("Intel TDX host support", "pass", "kvm_intel tdx=Y"))
    elif facts.cpu_vendor == "Intel":
        out.append(
            Check(
                "Intel TDX host support",
                "fail",
                f"kvm_intel tdx={tdx_param or 'absent'}",
                "enable TDX in the BIOS and load kvm_intel with tdx=1",
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
    if facts.iommu_groups > 0:
        out.append(Check("IOMMU", "pass", f"{facts.iommu_groups} IOMMU groups"))
    else:
        out.append(
            Check(
                "IOMMU",
                "fail" if facts.gpus else "warn",
                "no IOMMU groups",
                "enable the IOMMU (BIOS, and amd_iommu=on / intel_iommu=on)",
            )
        )
    if not facts.gpus:
        out.append(
            Check(
                "NVIDIA GPU",
                "warn",
                "none found",
                "without a CC-capable GPU the appliance uses the embedded CPU engine",
            )
        )
    for g in facts.gpus:
        cc = g.device in CC_GPU_IDS
        out.append(
            Check(
                f"GPU {g.address}",
                "pass" if cc else "fail",
                f"{g.model} ({g.device}), driver {g.driver or 'none'}",
                "" if cc else "this GPU has no confidential-computing mode",
            )
        )
        if cc and g.driver != "vfio-pci":
            out.append(
                Check(
                    f"GPU {g.address} binding",
                    "fail",
                    f"bound to {g.driver or 'nothing'}",
                    "bind it to vfio-pci (the installer asks before doing it)",
                )
            )
    qemu = shutil.which("qemu-system-x86_64")
    if qemu:
        version = subprocess.run(
            [qemu, "--version"], capture_output=True, text=True, check=False
        ).stdout.split("\n", 1)[0]
        out.append(Check("QEMU", "info", version))
    else:
        out.append(
            Check(
                "QEMU",
                "warn" if facts.tee is None else "fail",
                "not installed",
                "install QEMU >= 9.1 (SNP and TDX guests need it)",
            )
        )
    return out
