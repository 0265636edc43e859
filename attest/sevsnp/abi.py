"""SEV-SNP ATTESTATION_REPORT: bytes to structure (ABI spec table "ATTESTATION_REPORT Structure").

This module rejects only malformed bytes (wrong size, unknown version, must-be-zero ranges that are
not zero). Whether a well-formed report is genuine is ``verify``'s job; whether it is acceptable is
``validate``'s.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from attest.errors import ParseError

__all__ = [
    "PRODUCTS",
    "REPORT_SIZE",
    "SIGNATURE_ALGO_ECDSA_P384_SHA384",
    "SIGNED_SIZE",
    "SUPPORTED_VERSIONS",
    "GuestPolicy",
    "PlatformInfo",
    "Report",
    "TcbVersion",
    "parse_report",
    "product_from_cpuid",
]

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0

# Report versions this parser knows. Version 4 has the version 5 layout (firmware that emits it
# already fills the mitigation vectors), so it is accepted rather than mistaken for garbage.
SUPPORTED_VERSIONS = (2, 3, 4, 5)
PRODUCTS = ("Milan", "Genoa", "Turin")

SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1

# Offsets, spelled like the spec's table.
VERSION = 0x000
GUEST_SVN = 0x004
POLICY = 0x008
FAMILY_ID = 0x010
IMAGE_ID = 0x020
VMPL = 0x030
SIGNATURE_ALGO = 0x034
CURRENT_TCB = 0x038
PLATFORM_INFO = 0x040
SIGNER_INFO = 0x048  # AUTHOR_KEY_EN, MASK_CHIP_KEY, SIGNING_KEY
RESERVED_04C = 0x04C
REPORT_DATA = 0x050
MEASUREMENT = 0x090
HOST_DATA = 0x0C0
ID_KEY_DIGEST = 0x0E0
AUTHOR_KEY_DIGEST = 0x110
REPORT_ID = 0x140
REPORT_ID_MA = 0x160
REPORTED_TCB = 0x180
CPUID_FAM_ID = 0x188
CPUID_MOD_ID = 0x189
CPUID_STEP = 0x18A
RESERVED_18B = 0x18B
CHIP_ID = 0x1A0
COMMITTED_TCB = 0x1E0
CURRENT_BUILD = 0x1E8
CURRENT_MINOR = 0x1E9
CURRENT_MAJOR = 0x1EA
RESERVED_1EB = 0x1EB
COMMITTED_BUILD = 0x1EC
COMMITTED_MINOR = 0x1ED
COMMITTED_MAJOR = 0x1EE
RESERVED_1EF = 0x1EF
LAUNCH_TCB = 0x1F0
LAUNCH_MIT_VECTOR = 0x1F8
CURRENT_MIT_VECTOR = 0x200
RESERVED_208 = 0x208
SIGNATURE = 0x2A0
SIGNATURE_R = 0x2A0
SIGNATURE_S = 0x2E8
SIGNATURE_RESERVED = 0x330

FAMILY_ID_SIZE = 16
IMAGE_ID_SIZE = 16
REPORT_DATA_SIZE = 64
MEASUREMENT_SIZE = 48
HOST_DATA_SIZE = 32
ID_KEY_DIGEST_SIZE = 48
AUTHOR_KEY_DIGEST_SIZE = 48
REPORT_ID_SIZE = 32
REPORT_ID_MA_SIZE = 32
CHIP_ID_SIZE = 64
ECDSA_RS_SIZE = 72

# GUEST_POLICY bits.
POLICY_ABI_MINOR_MASK = 0xFF
POLICY_ABI_MAJOR_SHIFT = 8
POLICY_SMT_BIT = 16
POLICY_RESERVED_MBO_BIT = 17
POLICY_MIGRATE_MA_BIT = 18
POLICY_DEBUG_BIT = 19
POLICY_SINGLE_SOCKET_BIT = 20
POLICY_CXL_ALLOW_BIT = 21
POLICY_MEM_AES_256_XTS_BIT = 22
POLICY_RAPL_DIS_BIT = 23
POLICY_CIPHERTEXT_HIDING_BIT = 24
POLICY_PAGE_SWAP_DISABLE_BIT = 25
POLICY_MBZ_LOW_BIT = 26

# SIGNER_INFO bits.
SIGNER_AUTHOR_KEY_EN_BIT = 0
SIGNER_MASK_CHIP_KEY_BIT = 1
SIGNER_SIGNING_KEY_SHIFT = 2
SIGNER_SIGNING_KEY_MASK = 0x7
SIGNER_MBZ_LOW_BIT = 5
SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
SIGNING_KEY_NONE = 7

_SIGNING_KEYS = {SIGNING_KEY_VCEK: "vcek", SIGNING_KEY_VLEK: "vlek", SIGNING_KEY_NONE: "none"}


def _bit(value: int, bit: int) -> bool:
    return bool((value >> bit) & 1)


@dataclass(frozen=True, slots=True)
class TcbVersion:
    """TCB_VERSION: security version numbers of the firmware components.

    Milan and Genoa: byte 0 BOOT_LOADER, 1 TEE, 6 SNP, 7 MICROCODE.
    Turin: byte 0 FMC, 1 BOOT_LOADER, 2 TEE, 3 SNP, 7 MICROCODE.
    """

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: int, product: str | None = None) -> TcbVersion:
        b = raw.to_bytes(8, "little")
        if product == "Turin":
            return cls(bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7], fmc=None)

    def encode(self, product: str | None = None) -> int:
        b = bytearray(8)
        if product == "Turin":
            b[0], b[1], b[2], b[3], b[7] = (
                self.fmc or 0,
                self.bootloader,
                self.tee,
                self.snp,
                self.microcode,
            )
        else:
            b[0], b[1], b[6], b[7] = self.bootloader, self.tee, self.snp, self.microcode
        return int.from_bytes(b, "little")

    def components(self) -> dict[str, int]:
        """The named components, FMC only where the product has one."""
        out = {
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
        }
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.components().items())


@dataclass(frozen=True, slots=True)
class GuestPolicy:
    """GUEST_POLICY, the launch policy the firmware enforces for the guest's lifetime."""

    abi_minor: int
    abi_major: int
    smt: bool
    migrate_ma: bool
    debug: bool
    single_socket: bool
    cxl_allow: bool
    mem_aes_256_xts: bool
    rapl_dis: bool
    ciphertext_hiding: bool
    page_swap_disable: bool

    @classmethod
    def decode(cls, raw: int) -> GuestPolicy:
        if raw >> 64:
            raise ParseError(f"POLICY 0x{raw:x} does not fit in 64 bits")
        if not _bit(raw, POLICY_RESERVED_MBO_BIT):
            raise ParseError(
                f"POLICY bit {POLICY_RESERVED_MBO_BIT} is reserved must-be-one: 0x{raw:016x}"
            )
        if raw >> POLICY_MBZ_LOW_BIT:
            raise ParseError(f"POLICY bits 63:{POLICY_MBZ_LOW_BIT} must be zero: 0x{raw:016x}")
        return cls(
            abi_minor=raw & POLICY_ABI_MINOR_MASK,
            abi_major=(raw >> POLICY_ABI_MAJOR_SHIFT) & 0xFF,
            smt=_bit(raw, POLICY_SMT_BIT),
            migrate_ma=_bit(raw, POLICY_MIGRATE_MA_BIT),
            debug=_bit(raw, POLICY_DEBUG_BIT),
            single_socket=_bit(raw, POLICY_SINGLE_SOCKET_BIT),
            cxl_allow=_bit(raw, POLICY_CXL_ALLOW_BIT),
            mem_aes_256_xts=_bit(raw, POLICY_MEM_AES_256_XTS_BIT),
            rapl_dis=_bit(raw, POLICY_RAPL_DIS_BIT),
            ciphertext_hiding=_bit(raw, POLICY_CIPHERTEXT_HIDING_BIT),
            page_swap_disable=_bit(raw, POLICY_PAGE_SWAP_DISABLE_BIT),
        )

    def encode(self) -> int:
        raw = self.abi_minor | (self.abi_major << POLICY_ABI_MAJOR_SHIFT)
        raw |= 1 << POLICY_RESERVED_MBO_BIT
        for flag, bit in (
            (self.smt, POLICY_SMT_BIT),
            (self.migrate_ma, POLICY_MIGRATE_MA_BIT),
            (self.debug, POLICY_DEBUG_BIT),
            (self.single_socket, POLICY_SINGLE_SOCKET_BIT),
            (self.cxl_allow, POLICY_CXL_ALLOW_BIT),
            (self.mem_aes_256_xts, POLICY_MEM_AES_256_XTS_BIT),
            (self.rapl_dis, POLICY_RAPL_DIS_BIT),
            (self.ciphertext_hiding, POLICY_CIPHERTEXT_HIDING_BIT),
            (self.page_swap_disable, POLICY_PAGE_SWAP_DISABLE_BIT),
        ):
            if flag:
                raw |= 1 << bit
        return raw


@dataclass(frozen=True, slots=True)
class PlatformInfo:
    """PLATFORM_INFO. Unknown bits are kept in ``raw``: AMD keeps defining new ones."""

    raw: int
    smt_en: bool
    tsme_en: bool
    ecc_en: bool
    rapl_dis: bool
    ciphertext_hiding_en: bool
    alias_check_complete: bool

    @classmethod
    def decode(cls, raw: int) -> PlatformInfo:
        return cls(
            raw=raw,
            smt_en=_bit(raw, 0),
            tsme_en=_bit(raw, 1),
            ecc_en=_bit(raw, 2),
            rapl_dis=_bit(raw, 3),
            ciphertext_hiding_en=_bit(raw, 4),
            alias_check_complete=_bit(raw, 5),
        )


def product_from_cpuid(family: int, model: int) -> str | None:
    """The SEV-SNP product for CPUID_FAM_ID / CPUID_MOD_ID (combined extended values), or None."""
    if family == 0x19:
        if model <= 0x0F:
            return "Milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return "Genoa"  # Genoa, Bergamo and Siena share the Genoa ARK
    if family == 0x1A and model <= 0x1F:
        return "Turin"
    return None


@dataclass(frozen=True, slots=True)
class Report:
    """A well-formed ATTESTATION_REPORT. Nothing here is trusted until ``verify`` says so."""

    version: int
    guest_svn: int
    policy: GuestPolicy
    policy_raw: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    signer_info: int
    signing_key: str
    mask_chip_key: bool
    author_key_en: bool
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: int
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: int
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: bytes
    signature_s: bytes
    raw: bytes

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers: 0x000-0x29F."""
        return self.raw[:SIGNED_SIZE]

    def cpuid_product(self) -> str | None:
        """The product named by CPUID_FAM_ID/CPUID_MOD_ID (v3+), None for v2 or unknown ids."""
        if self.cpuid_fam_id is None or self.cpuid_mod_id is None:
            return None
        return product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)

    def tcb(self, field: str, product: str | None = None) -> TcbVersion:
        """Decode one of current_tcb, reported_tcb, committed_tcb, launch_tcb."""
        raw = {
            "current_tcb": self.current_tcb,
            "reported_tcb": self.reported_tcb,
            "committed_tcb": self.committed_tcb,
            "launch_tcb": self.launch_tcb,
        }[field]
        return TcbVersion.decode(raw, product or self.cpuid_product())

    def to_dict(self, product: str | None = None) -> dict[str, object]:
        """Every field, JSON-safe: bytes as hex, TCBs decoded for ``product``."""
        product = product or self.cpuid_product()

        def tcb(raw: int) -> dict[str, object]:
            return {"raw": f"{raw:016x}", **TcbVersion.decode(raw, product).components()}

        pol = self.policy
        pi = PlatformInfo.decode(self.platform_info)
        return {
            "version": self.version,
            "guest_svn": self.guest_svn,
            "policy": {
                "raw": f"{self.policy_raw:016x}",
                "abi_major": pol.abi_major,
                "abi_minor": pol.abi_minor,
                "smt": pol.smt,
                "migrate_ma": pol.migrate_ma,
                "debug": pol.debug,
                "single_socket": pol.single_socket,
                "cxl_allow": pol.cxl_allow,
                "mem_aes_256_xts": pol.mem_aes_256_xts,
                "rapl_dis": pol.rapl_dis,
                "ciphertext_hiding": pol.ciphertext_hiding,
                "page_swap_disable": pol.page_swap_disable,
            },
            "family_id": self.family_id.hex(),
            "image_id": self.image_id.hex(),
            "vmpl": self.vmpl,
            "signature_algo": self.signature_algo,
            "current_tcb": tcb(self.current_tcb),
            "platform_info": {
                "raw": f"{self.platform_info:016x}",
                "smt_en": pi.smt_en,
                "tsme_en": pi.tsme_en,
                "ecc_en": pi.ecc_en,
                "rapl_dis": pi.rapl_dis,
                "ciphertext_hiding_en": pi.ciphertext_hiding_en,
                "alias_check_complete": pi.alias_check_complete,
            },
            "signer_info": {
                "raw": f"{self.signer_info:08x}",
                "signing_key": self.signing_key,
                "mask_chip_key": self.mask_chip_key,
                "author_key_en": self.author_key_en,
            },
            "report_data": self.report_data.hex(),
            "measurement": self.measurement.hex(),
            "host_data": self.host_data.hex(),
            "id_key_digest": self.id_key_digest.hex(),
            "author_key_digest": self.author_key_digest.hex(),
            "report_id": self.report_id.hex(),
            "report_id_ma": self.report_id_ma.hex(),
            "reported_tcb": tcb(self.reported_tcb),
            "cpuid_fam_id": self.cpuid_fam_id,
            "cpuid_mod_id": self.cpuid_mod_id,
            "cpuid_step": self.cpuid_step,
            "chip_id": self.chip_id.hex(),
            "committed_tcb": tcb(self.committed_tcb),
            "current_version": f"{self.current_major}.{self.current_minor}.{self.current_build}",
            "current_build": self.current_build,
            "current_minor": self.current_minor,
            "current_major": self.current_major,
            "committed_version": (
                f"{self.committed_major}.{self.committed_minor}.{self.committed_build}"
            ),
            "committed_build": self.committed_build,
            "committed_minor": self.committed_minor,
            "committed_major": self.committed_major,
            "launch_tcb": tcb(self.launch_tcb),
            "launch_mit_vector": (
                None if self.launch_mit_vector is None else f"{self.launch_mit_vector:016x}"
            ),
            "current_mit_vector": (
                None if self.current_mit_vector is None else f"{self.current_mit_vector:016x}"
            ),
            "signature_r": self.signature_r.hex(),
            "signature_s": self.signature_s.hex(),
            "product": product,
        }


def _mbz(data: bytes, lo: int, hi: int) -> None:
    chunk = data[lo:hi]
    if any(chunk):
        raise ParseError(f"reserved bytes 0x{lo:03X}-0x{hi - 1:03X} must be zero: {chunk.hex()}")


def _u32(data: bytes, off: int) -> int:
    value: int = struct.unpack_from("<I", data, off)[0]
    return value


def _u64(data: bytes, off: int) -> int:
    value: int = struct.unpack_from("<Q", data, off)[0]
    return value


def parse_report(data: bytes) -> Report:
    """Parse a raw 1184-byte ATTESTATION_REPORT. Raises ``ParseError`` and nothing else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ParseError(f"report must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) != REPORT_SIZE:
        raise ParseError(f"report is {len(data)} bytes, ATTESTATION_REPORT is {REPORT_SIZE}")
    version = _u32(data, VERSION)
    if version not in SUPPORTED_VERSIONS:
        raise ParseError(f"unknown report VERSION {version}; supported: {SUPPORTED_VERSIONS}")

    policy_raw = _u64(data, POLICY)
    policy = GuestPolicy.decode(policy_raw)

    signer_info = _u32(data, SIGNER_INFO)
    if signer_info >> SIGNER_MBZ_LOW_BIT:
        raise ParseError(f"SIGNER_INFO bits 31:5 must be zero: 0x{signer_info:08x}")
    key_sel = (signer_info >> SIGNER_SIGNING_KEY_SHIFT) & SIGNER_SIGNING_KEY_MASK
    if key_sel not in _SIGNING_KEYS:
        raise ParseError(f"SIGNER_INFO.SIGNING_KEY {key_sel} is reserved")
    _mbz(data, RESERVED_04C, REPORT_DATA)

    cpuid: tuple[int | None, int | None, int | None] = (None, None, None)
    if version >= 3:
        cpuid = (data[CPUID_FAM_ID], data[CPUID_MOD_ID], data[CPUID_STEP])
        _mbz(data, RESERVED_18B, CHIP_ID)
    else:
        _mbz(data, CPUID_FAM_ID, CHIP_ID)
    _mbz(data, RESERVED_1EB, COMMITTED_BUILD)
    _mbz(data, RESERVED_1EF, LAUNCH_TCB)

    mit: tuple[int | None, int | None] = (None, None)
    if version >= 4:
        mit = (_u64(data, LAUNCH_MIT_VECTOR), _u64(data, CURRENT_MIT_VECTOR))
        _mbz(data, RESERVED_208, SIGNATURE)
    else:
        _mbz(data, LAUNCH_MIT_VECTOR, SIGNATURE)

    signature_algo = _u32(data, SIGNATURE_ALGO)
    if signature_algo == SIGNATURE_ALGO_ECDSA_P384_SHA384:
        _mbz(data, SIGNATURE_RESERVED, REPORT_SIZE)

    return Report(
        version=version,
        guest_svn=_u32(data, GUEST_SVN),
        policy=policy,
        policy_raw=policy_raw,
        family_id=data[FAMILY_ID : FAMILY_ID + FAMILY_ID_SIZE],
        image_id=data[IMAGE_ID : IMAGE_ID + IMAGE_ID_SIZE],
        vmpl=_u32(data, VMPL),
        signature_algo=signature_algo,
        current_tcb=_u64(data, CURRENT_TCB),
        platform_info=_u64(data, PLATFORM_INFO),
        signer_info=signer_info,
        signing_key=_SIGNING_KEYS[key_sel],
        mask_chip_key=_bit(signer_info, SIGNER_MASK_CHIP_KEY_BIT),
        author_key_en=_bit(signer_info, SIGNER_AUTHOR_KEY_EN_BIT),
        report_data=data[REPORT_DATA : REPORT_DATA + REPORT_DATA_SIZE],
        measurement=data[MEASUREMENT : MEASUREMENT + MEASUREMENT_SIZE],
        host_data=data[HOST_DATA : HOST_DATA + HOST_DATA_SIZE],
        id_key_digest=data[ID_KEY_DIGEST : ID_KEY_DIGEST + ID_KEY_DIGEST_SIZE],
        author_key_digest=data[AUTHOR_KEY_DIGEST : AUTHOR_KEY_DIGEST + AUTHOR_KEY_DIGEST_SIZE],
        report_id=data[REPORT_ID : REPORT_ID + REPORT_ID_SIZE],
        report_id_ma=data[REPORT_ID_MA : REPORT_ID_MA + REPORT_ID_MA_SIZE],
        reported_tcb=_u64(data, REPORTED_TCB),
        cpuid_fam_id=cpuid[0],
        cpuid_mod_id=cpuid[1],
        cpuid_step=cpuid[2],
        chip_id=data[CHIP_ID : CHIP_ID + CHIP_ID_SIZE],
        committed_tcb=_u64(data, COMMITTED_TCB),
        current_build=data[CURRENT_BUILD],
        current_minor=data[CURRENT_MINOR],
        current_major=data[CURRENT_MAJOR],
        committed_build=data[COMMITTED_BUILD],
        committed_minor=data[COMMITTED_MINOR],
        committed_major=data[COMMITTED_MAJOR],
        launch_tcb=_u64(data, LAUNCH_TCB),
        launch_mit_vector=mit[0],
        current_mit_vector=mit[1],
        signature_r=data[SIGNATURE_R : SIGNATURE_R + ECDSA_RS_SIZE],
        signature_s=data[SIGNATURE_S : SIGNATURE_S + ECDSA_RS_SIZE],
        raw=data,
    )
