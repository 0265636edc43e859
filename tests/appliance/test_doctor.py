"""The doctor against fake host trees: every requirement with a passing and a failing host.

The trees (``fakehost.make_host``) mirror real sysfs/procfs/dev files; QEMU's answers are the
recorded outputs in ``hosts/``; the firmware is the synthetic AmdSev image of ``cvm_boot``'s tests
or the tail of Debian 12's real OVMF.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.doctor import (
    Check,
    detect_host,
    parse_ovmf,
    parse_qemu,
    parse_snp_status,
    read_snp_platform_status,
    run_checks,
)
from appliance.main import app
from appliance.runner import Completed
from attest.errors import ParseError
from tests.appliance.fakehost import (
    GPU_BDF,
    HOSTS,
    QEMU_DEBIAN12,
    QEMU_NEW,
    FakeRunner,
    cc_mode_line,
    make_host,
    options,
    recorded,
    snp_status,
    tdx_host,
)
from tests.cvm_boot.conftest import fake_amdsev_firmware

DEBIAN_OVMF_TAIL = (HOSTS / "ovmf-debian12-OVMF_CODE.fd.tail").read_bytes()
QEMU_TDX = (
    "QEMU emulator version 10.1.0\n",
    recorded("qemu-9.1.object-help.txt") + "  tdx-guest\n",  # constructed: see hosts/README.md
)


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_snp_host_with_h100_passes_every_check(tmp_path: Path) -> None:
    root = make_host(tmp_path)
    facts = detect_host(root)
    assert facts.tee == "sev-snp" and facts.snp_product == "Milan"
    assert facts.gpus[0].model == "H100 PCIe" and facts.gpus[0].driver == "vfio-pci"
    runner = FakeRunner()
    checks = run_checks(root, options(runner))
    assert [c.line() for c in checks if c.status != "pass"] == []
    by = _by_name(checks)
    assert set(by) == {
        "AMD SEV-SNP host support",
        "SEV-SNP firmware",
        "IOMMU",
        f"GPU {GPU_BDF}",
        f"GPU {GPU_BDF} IOMMU group",
        f"GPU {GPU_BDF} CC mode",
        "vfio-pci at boot",
        "QEMU",
        "OVMF firmware",
        "Memory",
        "Hugepages",
        "Disk",
        "Image tools",
    }
    fw = by["SEV-SNP firmware"].detail
    assert "SNP API 1.52 build 4" in fw and "Milan current TCB bootloader=3 tee=0 snp=8" in fw
    assert "PSP bootloader 00.1a.00.05" in fw
    assert "9.2.0" in by["QEMU"].detail and "sev-snp-guest" in by["QEMU"].detail
    assert "kernel-hashes" in by["OVMF firmware"].detail
    assert ["nvidia_gpu_tools.py", f"--gpu-bdf={GPU_BDF}", "--query-cc-mode"] in runner.calls


def test_tdx_host_passes(tmp_path: Path) -> None:
    root = tdx_host(tmp_path)
    assert detect_host(root).tee == "tdx"
    checks = run_checks(root, options(FakeRunner(qemu=QEMU_TDX)))
    assert [c.line() for c in checks if c.status != "pass"] == []
    by = _by_name(checks)
    assert "TDVF" in by["OVMF firmware"].detail and "tdx-guest" in by["QEMU"].detail


# One mutation of the passing SNP host per row: (make_host kwargs, runner kwargs, option
# kwargs), the requirement, its status, a fragment of its detail or fix, and its remedy.
FAILING = [
    ("snp-param-off", {"snp": "N"}, {}, {}, "AMD SEV-SNP host support", "fail", "sev_snp=1", ""),
    (
        "no-dev-sev",
        {"sev_device": False},
        {},
        {},
        "AMD SEV-SNP host support",
        "fail",
        "/dev/sev absent",
        "",
    ),
    (
        "snp-firmware-too-old",
        {"dev_sev": snp_status(1, 49)},
        {},
        {},
        "SEV-SNP firmware",
        "fail",
        "SNP API >= 1.51",
        "",
    ),
    (
        "snp-uninit",
        {"dev_sev": snp_status(state=0, rmp=False)},
        {},
        {},
        "SEV-SNP firmware",
        "fail",
        "RMP not initialised",
        "",
    ),
    (
        "snp-reported-tcb-behind",
        {"dev_sev": snp_status(reported=0x7308000000000002)},
        {},
        {},
        "SEV-SNP firmware",
        "warn",
        "reported TCB bootloader=2",
        "",
    ),
    (
        "snp-status-unreadable",
        {"dev_sev": b""},
        {},
        {},
        "SEV-SNP firmware",
        "warn",
        "run the doctor as root",
        "",
    ),
    (
        "no-iommu",
        {"iommu_groups": 0},
        {},
        {},
        "IOMMU",
        "fail",
        "amd_iommu=on",
        "kernel-cmdline:amd_iommu=on iommu=pt",
    ),
    (
        "iommu-group-shared",
        {"group_peers": {"0000:41:00.1": "snd_hda_intel"}},
        {},
        {},
        f"GPU {GPU_BDF} IOMMU group",
        "fail",
        "0000:41:00.1 (snd_hda_intel)",
        "",
    ),
    (
        "gpu-not-vfio",
        {"gpu_driver": "nvidia"},
        {},
        {},
        f"GPU {GPU_BDF} binding",
        "fail",
        "vfio-pci",
        f"vfio:{GPU_BDF}",
    ),
    (
        "gpu-not-cc",
        {"gpu": "0x2204"},
        {},
        {},
        f"GPU {GPU_BDF}",
        "fail",
        "no confidential-computing mode",
        "",
    ),
    ("no-gpu", {"gpu": None}, {}, {}, "NVIDIA GPU", "warn", "CPU engine", ""),
    (
        "cc-mode-off",
        {},
        {"cc_mode": "off"},
        {},
        f"GPU {GPU_BDF} CC mode",
        "fail",
        "--set-cc-mode=on",
        "",
    ),
    (
        "cc-mode-devtools",
        {},
        {"cc_mode": "devtools"},
        {},
        f"GPU {GPU_BDF} CC mode",
        "fail",
        "devtools",
        "",
    ),
    (
        "gpu-admin-tools-missing",
        {},
        {"cc_mode": None},
        {},
        f"GPU {GPU_BDF} CC mode",
        "warn",
        "OPENPCC_GPU_ADMIN_TOOLS",
        "",
    ),
    ("qemu-7.2", {}, {"qemu": QEMU_DEBIAN12}, {}, "QEMU", "fail", "7.2.22", ""),
    (
        "qemu-new-without-snp-object",
        {},
        {"qemu": (QEMU_NEW[0], QEMU_DEBIAN12[1])},
        {},
        "QEMU",
        "fail",
        "no sev-snp-guest object",
        "",
    ),
    (
        "qemu-missing",
        {},
        {"qemu": None},
        {},
        "QEMU",
        "fail",
        "not installed",
        "apt:qemu-system-x86",
    ),
    (
        "ovmf-debian-no-kernel-hashes",
        {"ovmf": DEBIAN_OVMF_TAIL},
        {},
        {},
        "OVMF firmware",
        "fail",
        "no kernel-hashes section",
        "",
    ),
    ("ovmf-missing", {"ovmf": b""}, {}, {}, "OVMF firmware", "fail", "none found", ""),
    (
        "ovmf-not-for-tees",
        {"ovmf": b"\xff" * 8192},
        {},
        {},
        "OVMF firmware",
        "fail",
        "no OVMF footer table",
        "",
    ),
    (
        "ovmf-without-metadata",
        {"ovmf": fake_amdsev_firmware(kernel_hashes=False)},
        {},
        {},
        "OVMF firmware",
        "fail",
        "no kernel-hashes",
        "",
    ),
    (
        "vfio-not-persistent",
        {"vfio_persistent": False},
        {},
        {},
        "vfio-pci at boot",
        "warn",
        "persist-vfio",
        "vfio-persist:10de:2331",
    ),
    ("memory-short", {"mem_available_gib": 40}, {}, {}, "Memory", "fail", "recipe", ""),
    ("hugepages-reserved", {"hugepages": 8192}, {}, {}, "Hugepages", "warn", "nr_hugepages", ""),
    ("disk-short", {}, {}, {"free_gib": 10}, "Disk", "fail", "OPENPCC_STATE_DIR", ""),
    (
        "image-tools-missing",
        {"image_tools": False},
        {},
        {},
        "Image tools",
        "warn",
        "cryptsetup-bin",
        "apt:cryptsetup-bin squashfs-tools",
    ),
]


@pytest.mark.parametrize(
    ("host", "run", "opt", "check", "status", "text", "remedy"),
    [row[1:] for row in FAILING],
    ids=[row[0] for row in FAILING],
)
def test_each_requirement_fails_with_its_fix(
    tmp_path: Path,
    host: dict[str, object],
    run: dict[str, object],
    opt: dict[str, object],
    check: str,
    status: str,
    text: str,
    remedy: str,
) -> None:
    root = make_host(tmp_path, **host)  # type: ignore[arg-type]
    by = _by_name(run_checks(root, options(FakeRunner(**run), **opt)))  # type: ignore[arg-type]
    got = by[check]
    assert got.status == status, got.line()
    assert text in got.detail + " " + got.fix, got.line()
    assert got.remedy == remedy
    if detect_host(root).tee is None:
        return  # without a TEE the other requirements are judged for a simulation host
    others = [c.line() for c in by.values() if c.status != "pass" and c.name != check]
    assert others == [], "one mutation, one finding"


def test_tdx_requirements_fail_with_their_fix(tmp_path: Path) -> None:
    off = _by_name(run_checks(tdx_host(tmp_path / "a", tdx="N"), options(FakeRunner())))
    assert off["Intel TDX host support"].status == "fail"
    assert off["Intel TDX host support"].remedy == "kernel-cmdline:kvm_intel.tdx=1"
    old = _by_name(run_checks(tdx_host(tmp_path / "b"), options(FakeRunner())))
    assert old["QEMU"].status == "fail" and "does not list tdx-guest" in old["QEMU"].detail
    amd_fw = tdx_host(tmp_path / "c", ovmf=fake_amdsev_firmware())
    no_tdvf = _by_name(run_checks(amd_fw, options(FakeRunner(qemu=QEMU_TDX))))
    assert no_tdvf["OVMF firmware"].status == "fail"
    assert "no TDVF metadata" in no_tdvf["OVMF firmware"].detail


def test_no_tee_host_warns_simulation_and_skips_tee_checks(tmp_path: Path) -> None:
    root = make_host(tmp_path, cpu="GenuineIntel", snp=None, gpu=None, iommu_groups=0)
    runner = FakeRunner(qemu=QEMU_DEBIAN12)
    by = _by_name(run_checks(root, options(runner)))
    assert by["TEE"].status == "warn" and "SIMULATED" in by["TEE"].fix
    assert by["QEMU"].status == "info" and "7.2.22" in by["QEMU"].detail
    assert "simulated appliance" in by["Memory"].detail
    assert not {"OVMF firmware", "Hugepages", "Image tools", "SEV-SNP firmware"} & set(by)
    assert all(c.status != "fail" for n, c in by.items() if n != "Intel TDX host support")


# -- parsers ------------------------------------------------------------------------------------


def test_debian_ovmf_tail_is_parsed_like_the_whole_image() -> None:
    info = parse_ovmf(DEBIAN_OVMF_TAIL)
    assert info.sev_sections == (1, 1, 2, 3, 1)  # SEC memory, secrets, CPUID: no 0x10
    assert info.tdvf and not info.kernel_hashes
    full = Path("/usr/share/OVMF/OVMF_CODE.fd")
    if full.is_file() and full.read_bytes()[-4096:] == DEBIAN_OVMF_TAIL:
        assert parse_ovmf(full.read_bytes()) == info


def test_synthetic_amdsev_firmware_has_kernel_hashes() -> None:
    info = parse_ovmf(fake_amdsev_firmware())
    assert info.kernel_hashes and info.sev_sections == (1, 2, 3, 0x10)
    assert not parse_ovmf(fake_amdsev_firmware(kernel_hashes=False)).kernel_hashes


def _footer(entries: bytes, size: int = 4096) -> bytes:
    footer = entries + struct.pack("<H", len(entries) + 18)
    footer += uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
    image = bytearray(size)
    tail = footer + bytes(32)
    image[-len(tail) :] = tail
    return bytes(image)


def _entry(guid: str, data: bytes) -> bytes:
    return data + struct.pack("<H", len(data) + 18) + uuid.UUID(guid).bytes_le


META = "dc886566-984a-4798-a75e-5585a7bf67cc"
BAD_OVMF = [
    ("entry-too-short", _footer(struct.pack("<H", 5) + bytes(16)), "entry of length 5"),
    ("table-longer-than-image", _footer(b"", size=64)[:-50] + bytes(50), None),
    ("metadata-offset-outside", _footer(_entry(META, struct.pack("<I", 1 << 20))), "outside"),
    ("metadata-entry-short", _footer(_entry(META, b"\x01")), "expected 4"),
    ("metadata-bad-magic", _footer(_entry(META, struct.pack("<I", 2048))), "signature"),
]


@pytest.mark.parametrize(("case", "image", "message"), BAD_OVMF, ids=[b[0] for b in BAD_OVMF])
def test_malformed_ovmf_footer_is_a_parse_error(
    case: str, image: bytes, message: str | None
) -> None:
    if message is None:
        assert not parse_ovmf(image).table  # no footer GUID where it must be
        return
    with pytest.raises(ParseError, match=message):
        parse_ovmf(image)


def test_snp_status_and_qemu_parsers() -> None:
    st = parse_snp_status(snp_status(1, 55, build=21))
    assert st.api == (1, 55) and st.build == 21 and st.rmp_initialized
    with pytest.raises(ParseError, match="expected 32"):
        parse_snp_status(b"\x01" * 8)
    q = parse_qemu(*QEMU_DEBIAN12)
    assert q.version == (7, 2, 22) and "sev-guest" in q.objects and "sev-snp-guest" not in q.objects
    q = parse_qemu(*QEMU_NEW)
    assert q.version == (9, 2, 0) and "sev-snp-guest" in q.objects
    assert q.version_line == "QEMU emulator version 9.2.0 (pve-qemu-kvm_9.2.0-5)"
    assert parse_qemu("garbage", "").version is None


def test_snp_status_from_fake_file_and_from_a_device_that_refuses(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "sev").write_bytes(snp_status())
    assert read_snp_platform_status(tmp_path) == snp_status()
    (tmp_path / "dev" / "sev").unlink()
    assert read_snp_platform_status(tmp_path) is None
    (tmp_path / "dev" / "sev").symlink_to("/dev/null")  # a character device without the ioctl
    assert read_snp_platform_status(tmp_path) is None


def test_runner_reports_a_missing_command_as_exit_127() -> None:
    from appliance.runner import run_command

    res = run_command(["/nonexistent/openpcc-test-binary", "--version"])
    assert res == Completed(127, "", "/nonexistent/openpcc-test-binary: command not found")


# -- the CLI, with QEMU and gpu-admin-tools replaced through the test hooks ---------------------


def _stub(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    qemu = _stub(
        bin_dir / "qemu-system-x86_64",
        f'case "$1" in --version) cat "{HOSTS}/qemu-9.2-proxmox.version.txt";;\n'
        f'-object) cat "{HOSTS}/qemu-9.1.object-help.txt";; esac\n',
    )
    tools = _stub(
        bin_dir / "nvidia_gpu_tools.py",
        f"printf '%s' '{cc_mode_line(GPU_BDF, 'on')}'\n",
    )
    monkeypatch.setenv("OPENPCC_TEST_QEMU", qemu)
    monkeypatch.setenv("OPENPCC_GPU_ADMIN_TOOLS", tools)
    monkeypatch.setenv("OPENPCC_MODEL_DISK_GIB", "0.001")
    monkeypatch.setenv("OPENPCC_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def test_doctor_cli_json(hooks: Path) -> None:
    root = make_host(hooks / "host")
    r = CliRunner().invoke(app, ["doctor", "--root", str(root), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["tee"] == "sev-snp"
    assert [c["name"] for c in data["checks"] if c["status"] != "pass"] == []
    assert {c["name"] for c in data["checks"]} >= {"AMD SEV-SNP host support", "QEMU", "Disk"}


def test_doctor_cli_reads_the_host_root_hook(hooks: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_host(hooks / "host", gpu_driver="nvidia")
    monkeypatch.setenv("OPENPCC_TEST_HOST_ROOT", str(root))
    r = CliRunner().invoke(app, ["doctor", "--json"])
    assert r.exit_code == 1
    failing = [c for c in json.loads(r.output)["checks"] if c["status"] == "fail"]
    assert [(c["name"], c["remedy"]) for c in failing] == [
        (f"GPU {GPU_BDF} binding", f"vfio:{GPU_BDF}")
    ]


def test_doctor_cli_table_names_each_fix(hooks: Path) -> None:
    root = make_host(hooks / "host", hugepages=512)
    r = CliRunner().invoke(
        app, ["doctor", "--root", str(root)], env={"COLUMNS": "250", "NO_COLOR": "1"}
    )
    assert r.exit_code == 0, r.output
    assert "Hugepages" in r.output and "WARN" in r.output and "nr_hugepages" in r.output


def test_doctor_cli_uses_the_recipe_firmware_and_memory(hooks: Path) -> None:
    from tests.cvm_boot.conftest import recipe_text

    root = make_host(hooks / "host", mem_available_gib=3)
    recipe = hooks / "recipe.toml"
    recipe.write_text(recipe_text())  # memory_mib 2048, firmware OVMF.fd beside it (absent)
    r = CliRunner().invoke(app, ["doctor", "--root", str(root), "--json", "--recipe", str(recipe)])
    by = {c["name"]: c for c in json.loads(r.output)["checks"]}
    assert by["OVMF firmware"]["status"] == "fail"
    assert str(hooks / "OVMF.fd") in by["OVMF firmware"]["detail"]
    assert by["Memory"]["status"] == "fail" and "needs 2.0 GiB" in by["Memory"]["detail"]
    assert r.exit_code == 1
    assert os.environ["OPENPCC_TEST_QEMU"].endswith("qemu-system-x86_64")


PERSIST_CASES = [
    ("nothing written", {}, "ids 10de:2331; softdep nvidia pre: vfio-pci; vfio-pci in modules"),
    (
        "another GPU's id only",
        {"etc/modprobe.d/v.conf": "options vfio-pci ids=10de:2330\nsoftdep nvidia pre: vfio-pci\n"},
        "ids 10de:2331; vfio-pci in modules-load.d",
    ),
    (
        "commented out",
        {
            "etc/modprobe.d/v.conf": "# options vfio-pci ids=10de:2331\n"
            "softdep nvidia pre: vfio_pci\n",
            "etc/modules-load.d/v.conf": "vfio-pci\n",
        },
        "ids 10de:2331",
    ),
    (
        "softdep for another module",
        {
            "etc/modprobe.d/v.conf": "options vfio_pci ids=10DE:2331 disable_vga=1\n"
            "softdep nouveau pre: vfio-pci\n",
            "etc/modules-load.d/v.conf": "vfio_pci\n",
        },
        "softdep nvidia pre: vfio-pci",
    ),
    (
        "split across files, under /usr/lib",
        {
            "usr/lib/modprobe.d/a.conf": "options vfio-pci ids=10de:1,10de:2331\n",
            "etc/modprobe.d/b.conf": "softdep nvidia pre: vfio-pci post: x\n",
            "etc/modules-load.d/v.conf": "vfio-pci\n",
        },
        "",
    ),
]


@pytest.mark.parametrize(
    ("case", "files", "missing"), PERSIST_CASES, ids=[c[0] for c in PERSIST_CASES]
)
def test_vfio_persistence_reads_every_modprobe_file(
    tmp_path: Path, case: str, files: dict[str, str], missing: str
) -> None:
    root = make_host(tmp_path, vfio_persistent=False)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    check = _by_name(run_checks(root, options()))["vfio-pci at boot"]
    if not missing:
        assert check.status == "pass", check.line()
        return
    assert check.status == "warn" and missing in check.detail, check.line()
    assert "returns to its driver at the next reboot" in check.detail
    assert check.remedy == "vfio-persist:10de:2331"


def test_no_persistence_line_for_a_gpu_not_on_vfio(tmp_path: Path) -> None:
    by = _by_name(run_checks(make_host(tmp_path, gpu_driver="nvidia"), options()))
    assert "vfio-pci at boot" not in by  # the binding line says what to do first
    assert by[f"GPU {GPU_BDF} binding"].remedy == f"vfio:{GPU_BDF}"


def test_persist_vfio_writes_exactly_the_gpus_found_once(tmp_path: Path) -> None:
    root = make_host(tmp_path, vfio_persistent=False)
    peer = root / "sys/bus/pci/devices/0000:c1:00.0"
    peer.mkdir(parents=True)
    for name, value in (("vendor", "0x10de"), ("device", "0x2335"), ("class", "0x030200")):
        (peer / name).write_text(value + "\n")
    env = {"COLUMNS": "200"}
    r = CliRunner().invoke(app, ["persist-vfio", "--root", str(root)], input="n\n", env=env)
    assert r.exit_code == 1 and not (root / "etc/modprobe.d/openpcc-vfio.conf").exists()
    r = CliRunner().invoke(app, ["persist-vfio", "--root", str(root), "--yes"], env=env)
    assert r.exit_code == 0, r.output
    modprobe = (root / "etc/modprobe.d/openpcc-vfio.conf").read_text()
    lines = [ln for ln in modprobe.splitlines() if not ln.startswith("#")]
    assert lines == ["options vfio-pci ids=10de:2331,10de:2335", "softdep nvidia pre: vfio-pci"]
    loads = (root / "etc/modules-load.d/openpcc-vfio.conf").read_text()
    assert [ln for ln in loads.splitlines() if not ln.startswith("#")] == ["vfio-pci"]
    assert "wrote" in r.output and "0000:41:00.0, 0000:c1:00.0" in r.output
    check = _by_name(run_checks(root, options()))["vfio-pci at boot"]
    assert check.status == "pass", check.line()
    again = CliRunner().invoke(app, ["persist-vfio", "--root", str(root), "--yes"], env=env)
    assert again.exit_code == 0 and "already bound to vfio-pci at boot" in again.output
    assert "wrote" not in again.output


def test_persist_vfio_without_a_cc_gpu_is_an_error(tmp_path: Path) -> None:
    root = make_host(tmp_path, gpu=None)
    r = CliRunner().invoke(app, ["persist-vfio", "--root", str(root), "--yes"])
    assert r.exit_code != 0 and "no CC-capable NVIDIA GPU" in r.output
