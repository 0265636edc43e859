"""The doctor against fake host trees: a real SNP host with an H100, a TDX host, and broken ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.doctor import detect_host, run_checks
from appliance.main import app


def make_host(
    root: Path,
    *,
    cpu: str = "AuthenticAMD",
    snp: str | None = "Y",
    dev_sev: bool = True,
    tdx: str | None = None,
    iommu_groups: int = 4,
    gpu: str | None = "0x2331",
    gpu_driver: str | None = "vfio-pci",
) -> Path:
    """A fake sysfs/procfs/dev tree shaped like the real files the doctor reads."""
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "cpuinfo").write_text(f"processor\t: 0\nvendor_id\t: {cpu}\n")
    if snp is not None:
        p = root / "sys/module/kvm_amd/parameters"
        p.mkdir(parents=True)
        (p / "sev_snp").write_text(snp + "\n")
    if dev_sev:
        (root / "dev").mkdir(exist_ok=True)
        (root / "dev" / "sev").write_text("")
    if tdx is not None:
        p = root / "sys/module/kvm_intel/parameters"
        p.mkdir(parents=True)
        (p / "tdx").write_text(tdx + "\n")
    for i in range(iommu_groups):
        (root / "sys/kernel/iommu_groups" / str(i)).mkdir(parents=True)
    if gpu is not None:
        dev = root / "sys/bus/pci/devices/0000:41:00.0"
        dev.mkdir(parents=True)
        (dev / "vendor").write_text("0x10de\n")
        (dev / "device").write_text(gpu + "\n")
        (dev / "class").write_text("0x030200\n")
        if gpu_driver is not None:
            drv = root / "sys/bus/pci/drivers" / gpu_driver
            drv.mkdir(parents=True)
            (dev / "driver").symlink_to(drv)
    return root


def _by_name(checks):  # type: ignore[no-untyped-def]
    return {c.name: c for c in checks}


def test_snp_host_with_h100_in_vfio(tmp_path: Path) -> None:
    root = make_host(tmp_path)
    facts = detect_host(root)
    assert facts.tee == "sev-snp"
    assert facts.gpus[0].model == "H100 PCIe" and facts.gpus[0].driver == "vfio-pci"
    checks = _by_name(run_checks(root))
    assert checks["AMD SEV-SNP host support"].status == "pass"
    assert checks["IOMMU"].status == "pass"
    assert checks["GPU 0000:41:00.0"].status == "pass"
    assert "GPU 0000:41:00.0 binding" not in checks


def test_tdx_host(tmp_path: Path) -> None:
    root = make_host(tmp_path, cpu="GenuineIntel", snp=None, dev_sev=False, tdx="Y")
    assert detect_host(root).tee == "tdx"
    assert _by_name(run_checks(root))["Intel TDX host support"].status == "pass"


@pytest.mark.parametrize(
    ("kwargs", "check", "status", "fix"),
    [
        ({"snp": "N"}, "AMD SEV-SNP host support", "fail", "sev_snp=1"),
        ({"dev_sev": False}, "AMD SEV-SNP host support", "fail", "BIOS"),
        (
            {"cpu": "GenuineIntel", "snp": None, "dev_sev": False, "tdx": "N"},
            "Intel TDX host support",
            "fail",
            "tdx=1",
        ),
        ({"iommu_groups": 0}, "IOMMU", "fail", "amd_iommu=on"),
        ({"gpu_driver": "nvidia"}, "GPU 0000:41:00.0 binding", "fail", "vfio-pci"),
        ({"gpu": "0x2204"}, "GPU 0000:41:00.0", "fail", "no confidential-computing mode"),
        ({"gpu": None}, "NVIDIA GPU", "warn", "CPU engine"),
    ],
    ids=[
        "snp-param-off",
        "no-dev-sev",
        "tdx-off",
        "no-iommu",
        "gpu-not-vfio",
        "gpu-not-cc",
        "no-gpu",
    ],
)
def test_each_missing_requirement_fails_with_its_fix(
    tmp_path: Path,
    kwargs,
    check,
    status,  # type: ignore[no-untyped-def]
    fix,
) -> None:
    checks = _by_name(run_checks(make_host(tmp_path, **kwargs)))
    assert checks[check].status == status
    assert fix in checks[check].fix


def test_no_tee_host_warns_simulation(tmp_path: Path) -> None:
    root = make_host(
        tmp_path, cpu="GenuineIntel", snp=None, dev_sev=False, gpu=None, iommu_groups=0
    )
    checks = _by_name(run_checks(root))
    assert checks["TEE"].status == "warn"
    assert "SIMULATED" in checks["TEE"].fix


def test_doctor_cli_json(tmp_path: Path) -> None:
    root = make_host(tmp_path)
    r = CliRunner().invoke(app, ["doctor", "--root", str(root), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["tee"] == "sev-snp"
    assert {c["name"] for c in data["checks"]} >= {"AMD SEV-SNP host support", "IOMMU"}


def test_doctor_cli_fails_on_a_broken_tee_host(tmp_path: Path) -> None:
    root = make_host(tmp_path, gpu_driver="nvidia")
    r = CliRunner().invoke(app, ["doctor", "--root", str(root)])
    assert r.exit_code == 1
