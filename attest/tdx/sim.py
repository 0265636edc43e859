"""SIMULATED Intel TDX quoting — NOT CONFIDENTIAL.

Generates a chain shaped like Intel's DCAP PKI (self-signed ECDSA P-256 "Intel SGX Root CA" ->
"Intel SGX PCK Platform CA" -> "Intel SGX PCK Certificate" carrying the SGX extensions: PPID, TCB,
PCE-ID, FMSPC, SGX type), every name marked SIMULATED in its organization, plus a Quoting Enclave
attestation key. :meth:`SimulatedTdxSigner.sign` builds a real-format DCAP version-4 quote: header,
TD report body, ECDSA P-256 quote signature, attestation key, a QE report signed by the PCK key
whose REPORTDATA binds the attestation key and QE auth data, and certification data type 5 holding
the PCK chain. Such quotes verify through :func:`attest.tdx.verify.verify_quote`, but only against
the simulated root, which a caller must pass as ``roots`` explicitly. Production code never imports
this module except to serve simulated evidence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attest.errors import ParseError
from attest.tdx import abi
from attest.tdx.verify import (
    INTEL_ROOT_SUBJECT_CN,
    QE_REPORT_DATA_HASH_SIZE,
    SIMULATED_TD_QE_MRSIGNER,
)

__all__ = [
    "SIMULATED_BANNER",
    "SIMULATED_TDX_ORG",
    "TD_ATTRIBUTES_SEPT_VE_DISABLE",
    "SimulatedTdxSigner",
]

SIMULATED_BANNER = "SIMULATED — NOT CONFIDENTIAL"
SIMULATED_TDX_ORG = "OpenPCC SIMULATED TDX (not Intel, not confidential)"
PLATFORM_CA_CN = "Intel SGX PCK Platform CA"
PCK_CN = "Intel SGX PCK Certificate"
#: TD_ATTRIBUTES with only SEPT_VE_DISABLE (bit 28) set, as a production TD launches.
TD_ATTRIBUTES_SEPT_VE_DISABLE = (1 << 28).to_bytes(8, "little")
_XFAM = bytes.fromhex("e742060000000000")  # x87, SSE, AVX, AVX-512, PKRU, AMX: a common TD
_TEE_TCB_SVN = bytes.fromhex("03000500000000000000000000000000")
_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")  # Intel's QE vendor id
_QE_ISV_PROD_ID = 2  # the TD Quoting Enclave
_QE_ISV_SVN = 4
_QE_ATTRIBUTES = bytes.fromhex("1500000000000000e700000000000000")
_QE_AUTH_DATA = bytes(range(32))  # what Intel's QE puts there too
# Simulated identities: digests of labels, so they can never equal Intel's real values.
_QE_MRENCLAVE = hashlib.sha256(b"OpenPCC SIMULATED TD Quoting Enclave").digest()
_QE_MRSIGNER = SIMULATED_TD_QE_MRSIGNER
_MRSEAM = hashlib.sha384(b"OpenPCC SIMULATED TDX module").digest()
# SGX extensions of a PCK certificate (Intel SGX PCK Certificate and CRL Profile).
OID_SGX_EXTENSIONS = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
_SGX = "1.2.840.113741.1.13.1"
_ONE_DAY = timedelta(days=1)
_FILES = ("root.pem", "platform-ca.pem", "pck.pem", "pck.key", "attestation.key", "simulated.json")
_log = logging.getLogger(__name__)


# -- a minimal DER writer for the SGX extension ------------------------------------------------


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([40 * parts[0] + parts[1]])
    for value in parts[2:]:
        chunk = [value & 0x7F]
        value >>= 7
        while value:
            chunk.append(0x80 | (value & 0x7F))
            value >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return _tlv(0x02, body)


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _sgx_extension(*, ppid: bytes, cpu_svn: bytes, pce_svn: int, fmspc: bytes) -> bytes:
    """The PCK certificate's SGX extensions value, in Intel's layout."""
    comps = [_seq(_oid(f"{_SGX}.2.{i + 1}"), _int(svn)) for i, svn in enumerate(cpu_svn)]
    tcb = _seq(
        *comps,
        _seq(_oid(f"{_SGX}.2.17"), _int(pce_svn)),
        _seq(_oid(f"{_SGX}.2.18"), _tlv(0x04, cpu_svn)),
    )
    return _seq(
        _seq(_oid(f"{_SGX}.1"), _tlv(0x04, ppid)),
        _seq(_oid(f"{_SGX}.2"), tcb),
        _seq(_oid(f"{_SGX}.3"), _tlv(0x04, b"\x00\x00")),  # PCE-ID
        _seq(_oid(f"{_SGX}.4"), _tlv(0x04, fmspc)),
        _seq(_oid(f"{_SGX}.5"), _tlv(0x0A, b"\x00")),  # SGX type: Standard
    )


# -- the signer ---------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIMULATED_TDX_ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 as DCAP stores it: r || s, 32 bytes each, big-endian."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point[1:]  # X || Y without the 0x04 prefix


def _u16(value: int) -> bytes:
    return struct.pack("<H", value)


def _u32(value: int) -> bytes:
    return struct.pack("<I", value)


def _blob(name: str, value: bytes, size: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"{name} must be {size} bytes")
    return value


class SimulatedTdxSigner:
    """A SIMULATED TDX module and Quoting Enclave: every certificate says so; nothing is sealed."""

    def __init__(
        self,
        *,
        root: x509.Certificate,
        platform_ca: x509.Certificate,
        pck: x509.Certificate,
        pck_key: ec.EllipticCurvePrivateKey,
        attestation_key: ec.EllipticCurvePrivateKey,
        tee_tcb_svn: bytes,
    ) -> None:
        self._root, self._platform_ca, self._pck = root, platform_ca, pck
        self._pck_key = pck_key
        self._attestation_key = attestation_key
        self.tee_tcb_svn = tee_tcb_svn

    @classmethod
    def generate(
        cls,
        directory: Path,
        *,
        now: datetime | None = None,
        tee_tcb_svn: bytes = _TEE_TCB_SVN,
        fmspc: bytes = bytes.fromhex("00806f050000"),
    ) -> SimulatedTdxSigner:
        """Generate a fresh simulated chain and attestation key into ``directory``."""
        _blob("tee_tcb_svn", tee_tcb_svn, 16)
        _blob("fmspc", fmspc, 6)
        start = (now or datetime.now(UTC)) - _ONE_DAY
        end = start + timedelta(days=3650)
        root_key = ec.generate_private_key(ec.SECP256R1())
        ca_key = ec.generate_private_key(ec.SECP256R1())
        pck_key = ec.generate_private_key(ec.SECP256R1())
        attestation_key = ec.generate_private_key(ec.SECP256R1())

        def builder(
            subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, issuer_key_id: bytes
        ) -> x509.CertificateBuilder:
            public = key.public_key()
            return (
                x509.CertificateBuilder()
                .subject_name(_name(subject))
                .issuer_name(_name(issuer))
                .public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(start)
                .not_valid_after(end)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier(issuer_key_id, None, None), critical=False
                )
            )

        def key_id(key: ec.EllipticCurvePrivateKey) -> bytes:
            return x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest

        ca_usage = x509.KeyUsage(
            digital_signature=False,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
        root = (
            builder(INTEL_ROOT_SUBJECT_CN, INTEL_ROOT_SUBJECT_CN, root_key, key_id(root_key))
            .add_extension(ca_usage, critical=True)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .sign(root_key, hashes.SHA256())
        )
        platform_ca = (
            builder(PLATFORM_CA_CN, INTEL_ROOT_SUBJECT_CN, ca_key, key_id(root_key))
            .add_extension(ca_usage, critical=True)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(root_key, hashes.SHA256())
        )
        cpu_svn = bytes.fromhex("05050d02030100030000000000000000")
        sgx = _sgx_extension(ppid=os.urandom(16), cpu_svn=cpu_svn, pce_svn=11, fmspc=fmspc)
        pck = (
            builder(PCK_CN, PLATFORM_CA_CN, pck_key, key_id(ca_key))
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=True,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.UnrecognizedExtension(OID_SGX_EXTENSIONS, sgx), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        directory.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        (directory / "root.pem").write_bytes(root.public_bytes(pem))
        (directory / "platform-ca.pem").write_bytes(platform_ca.public_bytes(pem))
        (directory / "pck.pem").write_bytes(pck.public_bytes(pem))
        for name, key in (("pck.key", pck_key), ("attestation.key", attestation_key)):
            path = directory / name
            path.write_bytes(
                key.private_bytes(
                    pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
            path.chmod(0o600)
        meta = {
            "warning": SIMULATED_BANNER,
            "tee": "sim-tdx",
            "fmspc": fmspc.hex(),
            "tee_tcb_svn": tee_tcb_svn.hex(),
        }
        (directory / "simulated.json").write_text(json.dumps(meta, indent=2) + "\n")
        return cls(
            root=root,
            platform_ca=platform_ca,
            pck=pck,
            pck_key=pck_key,
            attestation_key=attestation_key,
            tee_tcb_svn=tee_tcb_svn,
        )

    @classmethod
    def load(cls, directory: Path) -> SimulatedTdxSigner:
        """Load what ``generate`` wrote. Raises ``ParseError`` for a broken directory."""
        try:
            blobs = {name: (directory / name).read_bytes() for name in _FILES}
            meta = json.loads(blobs["simulated.json"])
            tee_tcb_svn = bytes.fromhex(meta["tee_tcb_svn"])
            keys = [
                serialization.load_pem_private_key(blobs[name], password=None)
                for name in ("pck.key", "attestation.key")
            ]
            certs = [
                x509.load_pem_x509_certificate(blobs[name])
                for name in ("root.pem", "platform-ca.pem", "pck.pem")
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ParseError(
                f"cannot load simulated TDX signer from {directory}: {exc}",
                hint="regenerate it (SimulatedTdxSigner.generate)",
            ) from exc
        pck_key, attestation_key = keys
        if not isinstance(pck_key, ec.EllipticCurvePrivateKey) or not isinstance(
            attestation_key, ec.EllipticCurvePrivateKey
        ):
            raise ParseError(f"simulated TDX keys in {directory} are not EC keys")
        if len(tee_tcb_svn) != 16:
            raise ParseError(f"simulated TDX tee_tcb_svn in {directory} is not 16 bytes")
        root, platform_ca, pck = certs
        return cls(
            root=root,
            platform_ca=platform_ca,
            pck=pck,
            pck_key=pck_key,
            attestation_key=attestation_key,
            tee_tcb_svn=tee_tcb_svn,
        )

    def root_certificate(self) -> x509.Certificate:
        """The simulated root. Trust it only knowingly: it makes nothing confidential."""
        return self._root

    def certificates(self) -> list[x509.Certificate]:
        """PCK certificate, PCK Platform CA, root (the order DCAP puts them in a quote)."""
        return [self._pck, self._platform_ca, self._root]

    def chain_pem(self) -> bytes:
        """The PCK chain as one PEM bundle."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.certificates())

    def qe_report(self) -> bytes:
        """The simulated QE's 384-byte SGX report; REPORTDATA binds the attestation key."""
        buf = bytearray(abi.QE_REPORT_SIZE)
        buf[abi.QE_CPUSVN : abi.QE_CPUSVN + 16] = bytes.fromhex("05050d0f03ff00030000000000000000")
        buf[abi.QE_ATTRIBUTES : abi.QE_ATTRIBUTES + 16] = _QE_ATTRIBUTES
        buf[abi.QE_MRENCLAVE : abi.QE_MRENCLAVE + 32] = _QE_MRENCLAVE
        buf[abi.QE_MRSIGNER : abi.QE_MRSIGNER + 32] = _QE_MRSIGNER
        struct.pack_into("<HH", buf, abi.QE_ISVPRODID, _QE_ISV_PROD_ID, _QE_ISV_SVN)
        digest = hashlib.sha256(_raw_public(self._attestation_key) + _QE_AUTH_DATA).digest()
        buf[abi.QE_REPORTDATA :] = digest + b"\x00" * QE_REPORT_DATA_HASH_SIZE
        return bytes(buf)

    def sign(
        self,
        *,
        report_data: bytes,
        mrtd: bytes,
        rtmrs: Sequence[bytes] | None = None,
        td_attributes: bytes = TD_ATTRIBUTES_SEPT_VE_DISABLE,
        xfam: bytes = _XFAM,
        mrconfigid: bytes = b"\x00" * abi.MR_SIZE,
        mrowner: bytes = b"\x00" * abi.MR_SIZE,
        mrownerconfig: bytes = b"\x00" * abi.MR_SIZE,
        tee_tcb_svn: bytes | None = None,
    ) -> bytes:
        """A DCAP v4 quote of a TD with these registers, signed by the simulated QE."""
        rtmrs = list(rtmrs) if rtmrs is not None else [b"\x00" * abi.MR_SIZE] * 4
        if len(rtmrs) != 4:
            raise ValueError("rtmrs must be four 48-byte registers")
        header = (
            _u16(4)
            + _u16(abi.ATTESTATION_KEY_TYPE_ECDSA_P256)
            + _u32(abi.TEE_TYPE_TDX)
            + b"\x00" * 4
            + _QE_VENDOR_ID
            + b"\x00" * 20
        )
        body = b"".join(
            (
                _blob("tee_tcb_svn", tee_tcb_svn or self.tee_tcb_svn, 16),
                _MRSEAM,
                b"\x00" * abi.MR_SIZE,  # MRSIGNERSEAM: zero for Intel's own TDX module
                b"\x00" * 8,  # SEAM_ATTRIBUTES
                _blob("td_attributes", td_attributes, 8),
                _blob("xfam", xfam, 8),
                _blob("mrtd", mrtd, abi.MR_SIZE),
                _blob("mrconfigid", mrconfigid, abi.MR_SIZE),
                _blob("mrowner", mrowner, abi.MR_SIZE),
                _blob("mrownerconfig", mrownerconfig, abi.MR_SIZE),
                *(_blob(f"rtmr{i}", r, abi.MR_SIZE) for i, r in enumerate(rtmrs)),
                _blob("report_data", report_data, 64),
            )
        )
        assert len(header) == abi.HEADER_SIZE and len(body) == abi.TD10_BODY_SIZE
        signed = header + body
        qe_report = self.qe_report()
        pck_pem = self.chain_pem() + b"\x00"  # Intel's QE NUL-terminates the chain too
        qe_cert_data = (
            qe_report
            + _raw_signature(self._pck_key, qe_report)
            + _u16(len(_QE_AUTH_DATA))
            + _QE_AUTH_DATA
            + _u16(abi.CERT_TYPE_PCK_CHAIN)
            + _u32(len(pck_pem))
            + pck_pem
        )
        sig_data = (
            _raw_signature(self._attestation_key, signed)
            + _raw_public(self._attestation_key)
            + _u16(abi.CERT_TYPE_QE_REPORT)
            + _u32(len(qe_cert_data))
            + qe_cert_data
        )
        _log.warning("TDX quote signed by the simulator: %s", SIMULATED_BANNER)
        return signed + _u32(len(sig_data)) + sig_data
