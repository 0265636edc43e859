"""Generated test inputs for cvm_boot: a synthetic AmdSev-style firmware and a fake bzImage.

Both are fakes built here, byte for byte, so the kernel-hashes measurement path and QEMU's
``-kernel`` loader can be exercised without a real firmware build or kernel.
"""

from __future__ import annotations

import shutil
import struct
import uuid
from pathlib import Path

import pytest

FOOTER_GUID = "96b582de-1fb2-45f7-baea-a366c55a082d"
SEV_HASH_TABLE_RV_GUID = "7255371f-3a3b-4b04-927b-1da6efa8d454"
SEV_ES_RESET_BLOCK_GUID = "00f771de-1a7e-4fcb-890e-68c77e2fb44e"
SEV_META_DATA_GUID = "dc886566-984a-4798-a75e-5585a7bf67cc"
FIRMWARE_SIZE = 0x10000
DEBIAN_OVMF = Path("/usr/share/OVMF/OVMF_CODE.fd")


def _entry(guid: str, data: bytes) -> bytes:
    """One OVMF footer-table entry: data, then u16 size (data + header), then the GUID."""
    return data + struct.pack("<H", len(data) + 18) + uuid.UUID(guid).bytes_le


def fake_amdsev_firmware(*, kernel_hashes: bool = True) -> bytes:
    """A 64 KiB image with an OVMF footer table and SNP metadata, as AmdSev builds carry them.

    Metadata: SEC memory, secrets page, CPUID page, and (optionally) the kernel-hashes page whose
    table sits at offset 0x10 into the page, to exercise the in-page offset.
    """
    sections = [(0x800000, 0x1000, 1), (0x801000, 0x1000, 2), (0x802000, 0x1000, 3)]
    if kernel_hashes:
        sections.append((0x803000, 0x1000, 0x10))
    meta = b"ASEV" + struct.pack("<III", 16 + 12 * len(sections), 1, len(sections))
    meta += b"".join(struct.pack("<III", *s) for s in sections)
    meta_offset = 0x1000  # metadata header at (size - meta_offset)
    table = _entry(SEV_ES_RESET_BLOCK_GUID, struct.pack("<I", 0xFFFFF000))
    table += _entry(SEV_HASH_TABLE_RV_GUID, struct.pack("<II", 0x803010, 0x200))
    table += _entry(SEV_META_DATA_GUID, struct.pack("<I", meta_offset))
    footer = struct.pack("<H", len(table) + 18) + uuid.UUID(FOOTER_GUID).bytes_le
    tail = table + footer + bytes(32)
    image = bytearray(b"\xff" * FIRMWARE_SIZE)
    image[-len(tail) :] = tail
    start = FIRMWARE_SIZE - meta_offset
    image[start : start + len(meta)] = meta
    return bytes(image)


def fake_bzimage() -> bytes:
    """8 KiB with a Linux boot-protocol 2.15 setup header: enough for QEMU's -kernel loader."""
    img = bytearray(8192)
    img[0x1F1] = 4  # setup_sects
    img[0x1FE:0x200] = b"\x55\xaa"
    img[0x202:0x206] = b"HdrS"
    img[0x206:0x208] = struct.pack("<H", 0x020F)
    img[0x211] = 0x01  # loadflags: LOADED_HIGH
    img[0x22C:0x230] = struct.pack("<I", 0x7FFFFFFF)  # initrd_addr_max
    img[0x238:0x23C] = struct.pack("<I", 4096)  # cmdline_size
    return bytes(img)


@pytest.fixture
def amdsev_firmware(tmp_path: Path) -> Path:
    path = tmp_path / "OVMF.fake-amdsev.fd"
    path.write_bytes(fake_amdsev_firmware())
    return path


@pytest.fixture
def debian_ovmf() -> Path:
    if not DEBIAN_OVMF.is_file():
        pytest.skip(f"{DEBIAN_OVMF} absent: install the Debian package ovmf")
    return DEBIAN_OVMF


@pytest.fixture
def veritysetup() -> str:
    from cvm_boot.verity import veritysetup_path

    tool = veritysetup_path()
    if tool is None:
        pytest.skip("veritysetup absent: install the Debian package cryptsetup-bin")
    return tool


@pytest.fixture
def qemu_x86() -> str:
    tool = shutil.which("qemu-system-x86_64")
    if tool is None:
        pytest.skip("qemu-system-x86_64 absent: install the Debian package qemu-system-x86")
    return tool


RECIPE_TEMPLATE = """\
format = "openpcc-recipe/1"
name = "test-{tee}"
version = "1.2.3"
tee = "{tee}"

[firmware]
{firmware_path}sha256 = "{firmware_sha}"

[kernel]
{kernel_path}sha256 = "{kernel_sha}"

[initrd]
{initrd_path}sha256 = "{initrd_sha}"

[vm]
vcpus = 4
vcpu_type = "EPYC-Milan"
guest_features = 0x1
memory_mib = 2048
cmdline = "console=ttyS0 ro"

[volumes.root]
image = "rootfs.img"
hash_image = "rootfs.verity"
salt = "aa"
root_hash = "{root_hash}"

[volumes.weights]
image = "weights.img"
hash_image = "weights.verity"
salt = "bb"
root_hash = "{weights_hash}"

[model]
id = "test/model"

[engine]
name = "vllm"
version = "0.8.5"
args = ["--max-model-len", "4096"]

[gateway]
version = "0.1.0"
port = 8443
{extra}"""


def recipe_text(
    tee: str = "sev-snp", *, paths: bool = True, extra: str = "", **digests: str
) -> str:
    """A valid recipe; ``digests`` override firmware_sha, kernel_sha, initrd_sha, root_hash..."""
    values = {
        "firmware_sha": "01" * 32,
        "kernel_sha": "02" * 32,
        "initrd_sha": "03" * 32,
        "root_hash": "04" * 32,
        "weights_hash": "05" * 32,
    }
    values.update(digests)
    return RECIPE_TEMPLATE.format(
        tee=tee,
        firmware_path='path = "OVMF.fd"\n' if paths else "",
        kernel_path='path = "vmlinuz"\n' if paths else "",
        initrd_path='path = "initrd.img"\n' if paths else "",
        extra=extra,
        **values,
    )


@pytest.fixture
def snp_recipe(tmp_path: Path) -> Path:
    """A real-launch recipe over the synthetic firmware, a fake kernel and a small initrd."""
    import hashlib

    files = {
        "OVMF.fd": fake_amdsev_firmware(),
        "vmlinuz": fake_bzimage(),
        "initrd.img": b"initrd contents\n" * 64,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    sha = {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    path = tmp_path / "recipe.toml"
    path.write_text(
        recipe_text(
            firmware_sha=sha["OVMF.fd"], kernel_sha=sha["vmlinuz"], initrd_sha=sha["initrd.img"]
        )
    )
    return path


@pytest.fixture
def make_recipe_text() -> object:
    return recipe_text
