"""QEMU command lines: golden files for every TEE, and a real start of Debian's QEMU 7.2.

SNP and TDX objects need QEMU >= 9.1 and a TEE host, so they are checked by golden files only;
the generic machine (tee="none") is started paused (-S) by qemu-system-x86_64 and quit via QMP.
Regenerate goldens with OPENPCC_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from attest.errors import ParseError
from cvm_boot.qemu import qemu_command
from cvm_boot.recipe import Recipe, parse_recipe

GOLDEN = Path(__file__).parent / "golden"
GPUS = ("0000:41:00.0", "0000:c1:00.0")
DISK = Path("/var/lib/openpcc/provision/provision.img")


def _recipe(make_recipe_text: Callable[..., str], tee: str) -> Recipe:
    return parse_recipe(make_recipe_text(tee), base_dir=Path("/srv/openpcc"))


CASES: dict[str, dict[str, object]] = {
    "snp": dict(tee="sev-snp", gpus=GPUS, iommufd=True, provision_image=DISK),
    "snp-nogpu": dict(tee="sev-snp"),
    "tdx": dict(tee="tdx", gpus=GPUS[:1], iommufd=False, provision_image=DISK),
    "none": dict(tee="none", gpus=GPUS[:1], qmp_socket=Path("/run/openpcc/qmp.sock")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(make_recipe_text: Callable[..., str], case: str) -> None:
    kwargs = dict(CASES[case])
    tee = str(kwargs["tee"])
    recipe = _recipe(make_recipe_text, "sev-snp" if tee == "none" else tee)
    argv = qemu_command(
        recipe,
        serial_log=Path("/var/log/openpcc/serial.log"),
        gateway_port=9443,
        **kwargs,  # type: ignore[arg-type]
    )
    text = "\n".join(argv) + "\n"
    golden = GOLDEN / f"qemu-{case}.txt"
    if os.environ.get("OPENPCC_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_snp_essentials(make_recipe_text: Callable[..., str]) -> None:
    argv = qemu_command(
        _recipe(make_recipe_text, "sev-snp"),
        tee="sev-snp",
        gpus=GPUS,
        serial_log=Path("/l"),
        gateway_port=9443,
        iommufd=True,
    )
    joined = " ".join(argv)
    assert "sev-snp-guest,id=sev0" in joined and "kernel-hashes=on" in joined
    assert "confidential-guest-support=sev0" in joined
    assert "memory-backend-memfd" in joined
    assert argv[argv.index("-bios") + 1] == "/srv/openpcc/OVMF.fd"
    assert argv[argv.index("-monitor") + 1] == "none"
    assert "restrict=on" in joined and "hostfwd=tcp:127.0.0.1:9443-:8443" in joined
    assert joined.count("vfio-pci,host=") == 2 and "iommufd=iommufd0" in joined
    assert argv[argv.index("-append") + 1] == _recipe(make_recipe_text, "sev-snp").cmdline
    assert argv[argv.index("-chardev") + 1] == "file,id=serial0,path=/l,append=on"


def test_provisioning_disk_is_read_only_with_its_serial(
    make_recipe_text: Callable[..., str],
) -> None:
    argv = qemu_command(
        _recipe(make_recipe_text, "sev-snp"),
        tee="sev-snp",
        serial_log=Path("/l"),
        gateway_port=9443,
        provision_image=DISK,
    )
    drive = f"if=none,id=openpcc-provision,file={DISK},format=raw,readonly=on"
    assert argv[argv.index(drive) - 1] == "-drive"
    device = argv[argv.index(drive) + 2]
    assert device.startswith("virtio-blk-pci,drive=openpcc-provision,serial=openpcc-provision,")
    assert "iommu_platform=on" in device
    # Data disks come before the NIC, in a fixed order: root, weights, then provisioning.
    drives = [argv[i + 1].split(",")[1] for i, a in enumerate(argv) if a == "-drive"]
    assert drives[-1] == "id=openpcc-provision" and len(drives) == 5
    with pytest.raises(ParseError, match="comma"):
        qemu_command(
            _recipe(make_recipe_text, "sev-snp"),
            tee="sev-snp",
            serial_log=Path("/l"),
            gateway_port=9443,
            provision_image=Path("/a,b.img"),
        )


BAD = [
    ("unknown tee", dict(tee="sgx"), "tee 'sgx'"),
    ("tee mismatch", dict(tee="tdx"), "is for sev-snp"),
    ("bad gpu", dict(tee="sev-snp", gpus=("41:00.0",)), "full PCI address"),
    ("dup gpu", dict(tee="sev-snp", gpus=(GPUS[0], GPUS[0])), "listed twice"),
    ("port", dict(tee="sev-snp", gateway_port=0), "out of range"),
    ("comma path", dict(tee="sev-snp", serial_log=Path("/a,b")), "comma"),
]


@pytest.mark.parametrize(("case", "kwargs", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_arguments(
    make_recipe_text: Callable[..., str], case: str, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"serial_log": Path("/l"), "gateway_port": 9443, **kwargs}
    with pytest.raises(ParseError, match=message):
        qemu_command(_recipe(make_recipe_text, "sev-snp"), **args)  # type: ignore[arg-type]


def test_simulated_recipe_has_no_vm(make_recipe_text: Callable[..., str]) -> None:
    recipe = parse_recipe(make_recipe_text("sim-sev-snp", paths=False), base_dir=Path("/x"))
    with pytest.raises(ParseError, match="simulation recipe"):
        qemu_command(recipe, tee="none", serial_log=Path("/l"), gateway_port=1)


def test_debian_qemu_accepts_generic_arguments(
    qemu_x86: str, debian_ovmf: Path, snp_recipe: Path, tmp_path: Path
) -> None:
    """Start the generated machine paused under TCG, then quit it over QMP on stdio."""
    from cvm_boot.recipe import load_recipe

    base = snp_recipe.parent
    for name in ("rootfs.img", "rootfs.verity", "weights.img", "weights.verity", "provision.img"):
        (base / name).write_bytes(bytes(4096))
    recipe = load_recipe(snp_recipe)
    # Debian's OVMF stands in for the AmdSev build: QEMU only maps it, -S never runs it.
    recipe = recipe.__class__(
        **{
            **{f: getattr(recipe, f) for f in recipe.__dataclass_fields__},
            "firmware": recipe.firmware.__class__(path=debian_ovmf, sha256=b"\0" * 32),
        }
    )
    serial = tmp_path / "serial.log"
    argv = qemu_command(
        recipe,
        tee="none",
        qemu_binary=qemu_x86,
        accel="tcg",
        serial_log=serial,
        gateway_port=18443,
        gateway_bind="127.0.0.1",
        provision_image=base / "provision.img",
    )
    argv += ["-S", "-qmp", "stdio"]
    qmp = '{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n'
    proc = subprocess.run(argv, input=qmp, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert '"return"' in proc.stdout
    assert serial.exists()
