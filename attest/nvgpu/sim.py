"""SIMULATED NVIDIA GPU evidence: the real SPDM format, signed by a chain generated here.

Nothing this module produces is confidential. The chain's root says SIMULATED in its name and
verifies only when a caller explicitly passes it as ``roots=``; the pinned NVIDIA root never
accepts it. Tests and the simulated appliance use it to exercise the same verifier code path.

As on a real GPU, the CC state shows in the measurements, not in a flag: a simulated GPU outside
CC mode measures one block differently (:mod:`attest.nvgpu._simulated`), which only a comparison
with reference values notices. FEATURE_FLAG carries the topology mode, SPT unless told otherwise.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attest.errors import ParseError
from attest.nvgpu._simulated import (
    SIMULATED_BLOCKS,
    SIMULATED_DRIVER_VERSION,
    SIMULATED_VBIOS,
    simulated_measurement,
)
from attest.nvgpu.abi import (
    GET_MEASUREMENTS,
    MEASUREMENT_SPEC_DMTF,
    MEASUREMENTS,
    NONCE_SIZE,
    SIGNATURE_SIZE,
    SPDM_VERSION_1_1,
    TOPOLOGY_SPT,
    OpaqueFieldId,
)
from attest.nvgpu.verify import FWID_EXTENSION_OID, SHA384_OID, leaf_fwid

__all__ = [
    "SIMULATED_DRIVER_VERSION",
    "SimulatedGpu",
    "build_evidence",
    "measurement_block",
    "opaque_item",
]

DMTF_RAW_BITSTREAM = 0x01
_ROOT, _CA, _LEAF, _KEY = (
    "sim_gpu_root.pem",
    "sim_gpu_ca.pem",
    "sim_gpu_leaf.pem",
    "sim_gpu_key.pem",
)


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + content


def _der_oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body.extend(reversed(chunk))
    return _der(0x06, bytes(body))


def fwid_extension_value(fwid: bytes) -> bytes:
    """DER of the leaf's FWID extension, the shape NVIDIA uses: SEQ { INTEGER, FWID }."""
    fwid_seq = _der(0x30, _der_oid(SHA384_OID) + _der(0x04, fwid))
    return _der(0x30, _der(0x02, b"\x01") + fwid_seq)


def opaque_item(field: int, value: bytes) -> bytes:
    """One NVIDIA opaque data item: DataType[2] | DataSize[2] | Data."""
    return field.to_bytes(2, "little") + len(value).to_bytes(2, "little") + value


def measurement_block(index: int, value: bytes, *, value_type: int = DMTF_RAW_BITSTREAM) -> bytes:
    """One SPDM measurement block in the DMTF layout."""
    dmtf = bytes([value_type]) + len(value).to_bytes(2, "little") + value
    return bytes([index, MEASUREMENT_SPEC_DMTF]) + len(dmtf).to_bytes(2, "little") + dmtf


def build_evidence(
    key: ec.EllipticCurvePrivateKey,
    *,
    nonce: bytes,
    blocks: list[bytes],
    opaque: bytes,
    responder_nonce: bytes,
) -> bytes:
    """GET_MEASUREMENTS request plus MEASUREMENTS response, signed with ``key`` (P-384)."""
    if len(nonce) != NONCE_SIZE or len(responder_nonce) != NONCE_SIZE:
        raise ValueError("SPDM nonces are 32 bytes")
    request = bytes([SPDM_VERSION_1_1, GET_MEASUREMENTS, 0x01, 0xFF]) + nonce + b"\x00"
    record = b"".join(blocks)
    response = (
        bytes([SPDM_VERSION_1_1, MEASUREMENTS, 0x00, 0x00, len(blocks)])
        + len(record).to_bytes(3, "little")
        + record
        + responder_nonce
        + len(opaque).to_bytes(2, "little")
        + opaque
    )
    der = key.sign(request + response, ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    half = SIGNATURE_SIZE // 2
    return request + response + r.to_bytes(half, "big") + s.to_bytes(half, "big")


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OpenPCC SIMULATION"),
        ]
    )


def _cert(
    subject: str,
    issuer: str,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    fwid: bytes | None = None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if fwid is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(FWID_EXTENSION_OID, fwid_extension_value(fwid)),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA384())


@dataclass(frozen=True, slots=True)
class SimulatedGpu:
    """A SIMULATED GPU: a generated root, CA and leaf key, producing SPDM evidence on request."""

    root: x509.Certificate
    ca: x509.Certificate
    leaf: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    fwid: bytes

    @classmethod
    def generate(cls, directory: Path) -> SimulatedGpu:
        """Create a fresh SIMULATED chain and key under ``directory`` (key file mode 0600)."""
        directory.mkdir(parents=True, exist_ok=True)
        root_key = ec.generate_private_key(ec.SECP384R1())
        ca_key = ec.generate_private_key(ec.SECP384R1())
        leaf_key = ec.generate_private_key(ec.SECP384R1())
        fwid = hashlib.sha384(os.urandom(32)).digest()
        root_cn = "SIMULATED NVIDIA Device Identity CA"
        ca_cn = "SIMULATED GH100 Identity"
        root = _cert(root_cn, root_cn, root_key, root_key, ca=True)
        ca = _cert(ca_cn, root_cn, ca_key, root_key, ca=True)
        leaf = _cert("SIMULATED GH100 GSP FMC LF", ca_cn, leaf_key, ca_key, ca=False, fwid=fwid)
        pem = serialization.Encoding.PEM
        for name, cert in ((_ROOT, root), (_CA, ca), (_LEAF, leaf)):
            (directory / name).write_bytes(cert.public_bytes(pem))
        key_path = directory / _KEY
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(
                leaf_key.private_bytes(
                    pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        return cls(root=root, ca=ca, leaf=leaf, key=leaf_key, fwid=fwid)

    @classmethod
    def load(cls, directory: Path) -> SimulatedGpu:
        """Load a chain and key written by :meth:`generate`."""
        try:
            root = x509.load_pem_x509_certificate((directory / _ROOT).read_bytes())
            ca = x509.load_pem_x509_certificate((directory / _CA).read_bytes())
            leaf = x509.load_pem_x509_certificate((directory / _LEAF).read_bytes())
            key = serialization.load_pem_private_key((directory / _KEY).read_bytes(), None)
        except ValueError as exc:
            raise ParseError(f"simulated GPU files in {directory} are corrupt: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ParseError(f"simulated GPU key in {directory} is not an EC key")
        return cls(root=root, ca=ca, leaf=leaf, key=key, fwid=leaf_fwid(leaf))

    def root_certificate(self) -> x509.Certificate:
        return self.root

    def chain_pem(self) -> bytes:
        """Leaf, CA, root: the same order as the device chain a real GPU returns."""
        pem = serialization.Encoding.PEM
        return b"".join(c.public_bytes(pem) for c in (self.leaf, self.ca, self.root))

    def evidence(
        self, nonce: bytes, *, cc_enabled: bool = True, topology: int | None = TOPOLOGY_SPT
    ) -> bytes:
        """SIMULATED SPDM evidence for ``nonce``.

        ``cc_enabled`` False measures the CC-state block as a GPU outside CC mode (off or
        DevTools) would; ``topology`` is the FEATURE_FLAG value, None for firmware without it.
        """
        blocks = [
            measurement_block(i, simulated_measurement(i, cc_enabled=cc_enabled))
            for i in range(1, SIMULATED_BLOCKS + 1)
        ]
        counts = b"".join((1).to_bytes(4, "little") for _ in range(SIMULATED_BLOCKS))
        items = [
            opaque_item(OpaqueFieldId.DRIVER_VERSION, SIMULATED_DRIVER_VERSION.encode() + b"\0"),
            opaque_item(OpaqueFieldId.VBIOS_VERSION, SIMULATED_VBIOS),
            opaque_item(OpaqueFieldId.PROJECT, b"SIMULATED\0"),
            opaque_item(OpaqueFieldId.MSRSCNT, counts),
            opaque_item(OpaqueFieldId.FWID, self.fwid),
        ]
        if topology is not None:
            items.append(opaque_item(OpaqueFieldId.FEATURE_FLAG, bytes([topology])))
        opaque = b"".join(items)
        return build_evidence(
            self.key,
            nonce=nonce,
            blocks=blocks,
            opaque=opaque,
            responder_nonce=os.urandom(NONCE_SIZE),
        )
