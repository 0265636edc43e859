"""SIMULATED SEV-SNP signer — NOT CONFIDENTIAL.

Generates an ARK/ASK/VCEK chain shaped like AMD's (RSASSA-PSS SHA-384 salt 48 for the CAs, ECDSA
P-384 VCEK carrying the same TCB and hwID extensions) and signs version-3 reports built from given
fields. Reports it signs verify through the same code as real ones, but only against the simulated
ARK, which a caller must pass as ``roots`` explicitly. Production code never imports this module.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attest.errors import ParseError
from attest.sevsnp import abi
from attest.sevsnp.abi import TcbVersion
from attest.sevsnp.verify import (
    OID_AMD_BLSPL,
    OID_AMD_FMCSPL,
    OID_AMD_HWID,
    OID_AMD_PRODUCT_NAME,
    OID_AMD_SNPSPL,
    OID_AMD_TEESPL,
    OID_AMD_UCODESPL,
    load_certificates,
)

__all__ = ["SIMULATED_BANNER", "SimulatedSnpSigner"]

SIMULATED_BANNER = "SIMULATED — NOT CONFIDENTIAL"
_ORG = "OpenPCC SIMULATED SEV-SNP (not AMD, not confidential)"
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_CPUID = {"Milan": (0x19, 0x01, 0x01), "Genoa": (0x19, 0x11, 0x01), "Turin": (0x1A, 0x02, 0x00)}
_DEFAULT_TCB = TcbVersion(bootloader=4, tee=0, snp=22, microcode=213)
_ONE_DAY = timedelta(days=1)
_log = logging.getLogger(__name__)
_FILES = ("ark.pem", "ask.pem", "vcek.pem", "vcek.key", "simulated.json")


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _der_int(value: int) -> bytes:
    body = value.to_bytes(2, "big") if value >= 0x80 else bytes([value])
    return bytes([0x02, len(body)]) + body


def _ext(oid: x509.ObjectIdentifier, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(oid, value)


class SimulatedSnpSigner:
    """A SIMULATED AMD-SP: it says so in every certificate, and nothing it signs is confidential."""

    def __init__(
        self,
        *,
        ark: x509.Certificate,
        ask: x509.Certificate,
        vcek: x509.Certificate,
        vcek_key: ec.EllipticCurvePrivateKey,
        chip_id: bytes,
        tcb: TcbVersion,
        product: str,
        ark_key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        self._ark, self._ask, self._vcek, self._key = ark, ask, vcek, vcek_key
        self._ark_key = ark_key  # kept in memory only: ``load`` cannot sign CRLs
        self.chip_id = chip_id
        self.tcb = tcb
        self.product = product

    @classmethod
    def generate(
        cls,
        directory: Path,
        *,
        product: str = "Milan",
        chip_id: bytes | None = None,
        tcb: TcbVersion | None = None,
        now: datetime | None = None,
    ) -> SimulatedSnpSigner:
        """Generate a fresh simulated chain into ``directory`` (created if needed)."""
        if product not in _CPUID:
            raise ValueError(f"unknown product {product!r}")
        chip_id = os.urandom(abi.CHIP_ID_SIZE) if chip_id is None else chip_id
        if len(chip_id) != abi.CHIP_ID_SIZE:
            raise ValueError("chip_id must be 64 bytes")
        tcb = tcb or (TcbVersion(1, 0, 3, 0x2A, fmc=1) if product == "Turin" else _DEFAULT_TCB)
        start = (now or datetime.now(UTC)) - _ONE_DAY
        end = start + timedelta(days=3650)

        def ca_cert(
            subject: str, key: rsa.RSAPrivateKey, issuer: str, signer: rsa.RSAPrivateKey
        ) -> x509.Certificate:
            return (
                x509.CertificateBuilder()
                .subject_name(_name(subject))
                .issuer_name(_name(issuer))
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start)
                .not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(signer, hashes.SHA384(), rsa_padding=_PSS)
            )

        ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        vcek_key = ec.generate_private_key(ec.SECP384R1())
        ark = ca_cert(f"ARK-{product}", ark_key, f"ARK-{product}", ark_key)
        ask = ca_cert(f"SEV-{product}", ask_key, f"ARK-{product}", ark_key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("SEV-VCEK"))
            .issuer_name(_name(f"SEV-{product}"))
            .public_key(vcek_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
        )
        label = f"{product}-B0".encode()
        spl = [
            (OID_AMD_BLSPL, tcb.bootloader),
            (OID_AMD_TEESPL, tcb.tee),
            (OID_AMD_SNPSPL, tcb.snp),
            (OID_AMD_UCODESPL, tcb.microcode),
        ]
        if product == "Turin":
            spl.append((OID_AMD_FMCSPL, tcb.fmc or 0))
        exts = [
            _ext(OID_AMD_PRODUCT_NAME, bytes([0x16, len(label)]) + label),
            *(_ext(oid, _der_int(v)) for oid, v in spl),
            _ext(OID_AMD_HWID, chip_id[:8] if product == "Turin" else chip_id),
        ]
        for ext in exts:
            builder = builder.add_extension(ext, critical=False)
        vcek = builder.sign(ask_key, hashes.SHA384(), rsa_padding=_PSS)

        directory.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        (directory / "ark.pem").write_bytes(ark.public_bytes(pem))
        (directory / "ask.pem").write_bytes(ask.public_bytes(pem))
        (directory / "vcek.pem").write_bytes(vcek.public_bytes(pem))
        key_path = directory / "vcek.key"
        key_path.write_bytes(
            vcek_key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)
        meta = {
            "warning": SIMULATED_BANNER,
            "product": product,
            "chip_id": chip_id.hex(),
            "tcb": {**tcb.components()},
        }
        (directory / "simulated.json").write_text(json.dumps(meta, indent=2) + "\n")
        return cls(
            ark=ark,
            ask=ask,
            vcek=vcek,
            vcek_key=vcek_key,
            chip_id=chip_id,
            tcb=tcb,
            product=product,
            ark_key=ark_key,
        )

    @classmethod
    def load(cls, directory: Path) -> SimulatedSnpSigner:
        """Load a chain written by ``generate``. Raises ``ParseError`` for a broken directory."""
        try:
            blobs = {name: (directory / name).read_bytes() for name in _FILES}
            meta = json.loads(blobs["simulated.json"])
            key = serialization.load_pem_private_key(blobs["vcek.key"], password=None)
            tcb_parts = meta["tcb"]
            tcb = TcbVersion(
                bootloader=int(tcb_parts["bootloader"]),
                tee=int(tcb_parts["tee"]),
                snp=int(tcb_parts["snp"]),
                microcode=int(tcb_parts["microcode"]),
                fmc=None if tcb_parts.get("fmc") is None else int(tcb_parts["fmc"]),
            )
            chip_id = bytes.fromhex(meta["chip_id"])
            product = str(meta["product"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ParseError(
                f"cannot load simulated SEV-SNP signer from {directory}: {exc}"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ParseError("simulated VCEK key is not an EC key")
        return cls(
            ark=load_certificates(blobs["ark.pem"])[0],
            ask=load_certificates(blobs["ask.pem"])[0],
            vcek=load_certificates(blobs["vcek.pem"])[0],
            vcek_key=key,
            chip_id=chip_id,
            tcb=tcb,
            product=product,
        )

    def ark_certificate(self) -> x509.Certificate:
        """The simulated root. Trust it only knowingly: it makes nothing confidential."""
        return self._ark

    def certificates(self) -> list[x509.Certificate]:
        """VCEK, ASK, ARK."""
        return [self._vcek, self._ask, self._ark]

    def crl(self, revoked_serials: Sequence[int] = (), *, now: datetime | None = None) -> bytes:
        """A DER CRL signed by the simulated ARK (only on a signer made by ``generate``)."""
        if self._ark_key is None:
            raise ValueError("the simulated ARK key is not kept on disk; generate a signer")
        at = now or datetime.now(UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._ark.subject)
            .last_update(at - _ONE_DAY)
            .next_update(at + timedelta(days=30))
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(at - _ONE_DAY)
                .build()
            )
        crl = builder.sign(self._ark_key, hashes.SHA384(), rsa_padding=_PSS)
        return crl.public_bytes(serialization.Encoding.DER)

    def chain_pem(self) -> bytes:
        """VCEK, ASK, ARK as one PEM bundle."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.certificates())

    def sign(
        self,
        *,
        report_data: bytes,
        measurement: bytes,
        policy: int = 0x30000,
        vmpl: int = 0,
        chip_id: bytes | None = None,
        tcb: TcbVersion | None = None,
        host_data: bytes = b"\0" * 32,
        **kw: object,
    ) -> bytes:
        """Build and sign a raw 1184-byte version-3 report (``version=`` overrides; test use).

        Extra keywords: version, guest_svn, family_id, image_id, id_key_digest, author_key_digest,
        report_id, report_id_ma, platform_info, signing_key ("vcek"|"vlek"|"none"), mask_chip_key,
        author_key_en, cpuid=(family, model, stepping), current_tcb, committed_tcb, launch_tcb,
        current=(major, minor, build), committed=(major, minor, build), signature_algo.
        """
        known = {
            "version", "guest_svn", "family_id", "image_id", "id_key_digest", "author_key_digest",
            "report_id", "report_id_ma", "platform_info", "signing_key", "mask_chip_key",
            "author_key_en", "cpuid", "current_tcb", "committed_tcb", "launch_tcb", "current",
            "committed", "signature_algo",
        }  # fmt: skip
        unknown = set(kw) - known
        if unknown:
            raise TypeError(f"unknown report field(s): {', '.join(sorted(unknown))}")
        if len(report_data) != abi.REPORT_DATA_SIZE or len(measurement) != abi.MEASUREMENT_SIZE:
            raise ValueError("report_data must be 64 bytes and measurement 48 bytes")
        if len(host_data) != abi.HOST_DATA_SIZE:
            raise ValueError("host_data must be 32 bytes")
        mask = bool(kw.get("mask_chip_key", False))
        if chip_id is None:
            chip_id = b"\0" * abi.CHIP_ID_SIZE if mask else self.chip_id
        tcb = tcb or self.tcb

        def tcb_raw(name: str) -> int:
            value = kw.get(name, tcb)
            if not isinstance(value, TcbVersion):
                raise TypeError(f"{name} must be a TcbVersion")
            return value.encode(self.product)

        def blob(name: str, size: int, fill: bytes = b"\0") -> bytes:
            value = kw.get(name, fill * size)
            if not isinstance(value, bytes) or len(value) != size:
                raise ValueError(f"{name} must be {size} bytes")
            return value

        def integer(name: str, default: int) -> int:
            value = kw.get(name, default)
            if not isinstance(value, int):
                raise TypeError(f"{name} must be an int")
            return value

        def triple(name: str, default: tuple[int, int, int]) -> tuple[int, int, int]:
            value = kw.get(name, default)
            if not (isinstance(value, tuple) and len(value) == 3):
                raise TypeError(f"{name} must be a 3-tuple of ints")
            a, b, c = value
            return int(a), int(b), int(c)

        signing_key = {"vcek": 0, "vlek": 1, "none": 7}[str(kw.get("signing_key", "vcek"))]
        signer_info = (signing_key << abi.SIGNER_SIGNING_KEY_SHIFT) | (
            int(mask) << abi.SIGNER_MASK_CHIP_KEY_BIT
        )
        if kw.get("author_key_en", False):
            signer_info |= 1 << abi.SIGNER_AUTHOR_KEY_EN_BIT
        version = integer("version", 3)
        buf = bytearray(abi.REPORT_SIZE)
        struct.pack_into("<I", buf, abi.VERSION, version)
        struct.pack_into("<I", buf, abi.GUEST_SVN, integer("guest_svn", 0))
        struct.pack_into("<Q", buf, abi.POLICY, policy)
        buf[abi.FAMILY_ID : abi.FAMILY_ID + 16] = blob("family_id", abi.FAMILY_ID_SIZE)
        buf[abi.IMAGE_ID : abi.IMAGE_ID + 16] = blob("image_id", abi.IMAGE_ID_SIZE)
        struct.pack_into("<I", buf, abi.VMPL, vmpl)
        struct.pack_into("<I", buf, abi.SIGNATURE_ALGO, integer("signature_algo", 1))
        struct.pack_into("<Q", buf, abi.CURRENT_TCB, tcb_raw("current_tcb"))
        struct.pack_into("<Q", buf, abi.PLATFORM_INFO, integer("platform_info", 0x1))
        struct.pack_into("<I", buf, abi.SIGNER_INFO, signer_info)
        buf[abi.REPORT_DATA : abi.REPORT_DATA + 64] = report_data
        buf[abi.MEASUREMENT : abi.MEASUREMENT + 48] = measurement
        buf[abi.HOST_DATA : abi.HOST_DATA + 32] = host_data
        buf[abi.ID_KEY_DIGEST : abi.ID_KEY_DIGEST + 48] = blob("id_key_digest", 48)
        buf[abi.AUTHOR_KEY_DIGEST : abi.AUTHOR_KEY_DIGEST + 48] = blob("author_key_digest", 48)
        buf[abi.REPORT_ID : abi.REPORT_ID + 32] = blob("report_id", abi.REPORT_ID_SIZE)
        buf[abi.REPORT_ID_MA : abi.REPORT_ID_MA + 32] = blob("report_id_ma", 32, b"\xff")
        struct.pack_into("<Q", buf, abi.REPORTED_TCB, tcb.encode(self.product))
        if version >= 3:
            fam, mod, step = triple("cpuid", _CPUID[self.product])
            buf[abi.CPUID_FAM_ID], buf[abi.CPUID_MOD_ID], buf[abi.CPUID_STEP] = fam, mod, step
        if len(chip_id) != abi.CHIP_ID_SIZE:
            raise ValueError("chip_id must be 64 bytes")
        buf[abi.CHIP_ID : abi.CHIP_ID + 64] = chip_id
        struct.pack_into("<Q", buf, abi.COMMITTED_TCB, tcb_raw("committed_tcb"))
        cur = triple("current", (1, 55, 21))
        com = triple("committed", cur)
        buf[abi.CURRENT_MAJOR], buf[abi.CURRENT_MINOR], buf[abi.CURRENT_BUILD] = cur
        buf[abi.COMMITTED_MAJOR], buf[abi.COMMITTED_MINOR], buf[abi.COMMITTED_BUILD] = com
        struct.pack_into("<Q", buf, abi.LAUNCH_TCB, tcb_raw("launch_tcb"))
        der = self._key.sign(bytes(buf[: abi.SIGNED_SIZE]), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        buf[abi.SIGNATURE_R : abi.SIGNATURE_R + 72] = r.to_bytes(72, "little")
        buf[abi.SIGNATURE_S : abi.SIGNATURE_S + 72] = s.to_bytes(72, "little")
        _log.warning("SEV-SNP report signed by the simulator: %s", SIMULATED_BANNER)
        return bytes(buf)
