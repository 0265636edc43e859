"""FAKE NVIDIA RIMs for tests: SWID tags built around a report's own measurements, signed (XML-DSig,
enveloped, ECDSA P-384 / SHA-384, C14N 1.1, as NVIDIA signs) by a TEST chain that is not NVIDIA's.
Production code never imports this module."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lxml import etree  # type: ignore[import-untyped]
from signxml.signer import XMLSigner

from attest.nvgpu.abi import GpuReport

SWID = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384 = "http://www.w3.org/2001/04/xmlenc#sha384"
#: Which SPDM blocks (1-based) the fake VBIOS RIM owns; the driver RIM owns the rest.
VBIOS_BLOCKS = frozenset(range(1, 17))


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OpenPCC TEST (not NVIDIA)"),
        ]
    )


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    not_after: datetime = datetime(2040, 1, 1, tzinfo=UTC),
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(not_after)
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
        .sign(issuer_key, hashes.SHA384())
    )


@dataclass
class FakeRimSigner:
    """TEST RIM root -> TEST CA -> TEST RIM signer (P-384), like NVIDIA's three levels."""

    root: x509.Certificate
    ca: x509.Certificate
    signer: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(
        cls, *, signer_not_after: datetime = datetime(2040, 1, 1, tzinfo=UTC)
    ) -> FakeRimSigner:
        root_key = ec.generate_private_key(ec.SECP384R1())
        root = _cert(
            "TEST RIM Root (not NVIDIA)", root_key, "TEST RIM Root (not NVIDIA)", root_key, ca=True
        )
        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca = _cert("TEST RIM CA", ca_key, "TEST RIM Root (not NVIDIA)", root_key, ca=True)
        key = ec.generate_private_key(ec.SECP384R1())
        signer = _cert(
            "TEST RIM Signer", key, "TEST RIM CA", ca_key, ca=False, not_after=signer_not_after
        )
        return cls(root=root, ca=ca, signer=signer, key=key)

    def sign(self, unsigned: bytes) -> bytes:
        element = etree.fromstring(unsigned)
        signed = XMLSigner(signature_algorithm="ecdsa-sha384", digest_algorithm="sha384").sign(
            element, key=self.key, cert=[self.signer, self.ca, self.root]
        )
        out: bytes = etree.tostring(signed)
        return out


def unsigned_rim(
    version: str, resources: dict[int, tuple[bool, list[bytes]]], *, size: int = 48
) -> bytes:
    """A SWID tag whose Payload lists ``resources``: SPDM block -> (active, alternatives)."""
    rows = []
    for block, (active, values) in sorted(resources.items()):
        hashes_ = " ".join(f'ns2:Hash{i}="{v.hex()}"' for i, v in enumerate(values))
        rows.append(
            f'<Resource type="Measurement" index="{block - 1}" active="{active}" '
            f'alternatives="{len(values)}" {hashes_} name="Measurement_{block - 1}" size="{size}"/>'
        )
    return (
        f'<SoftwareIdentity xmlns="{SWID}" xmlns:ns2="{SHA384}" name="GH100" '
        f'tagId="TEST-{version}" version="1.0">'
        f'<Entity name="OpenPCC TEST" role="softwareCreator tagCreator"/>'
        f'<Meta colloquialVersion="{version}" product="GH100"/>'
        f"<Payload>{''.join(rows)}</Payload></SoftwareIdentity>"
    ).encode()


def rim_pair(
    report: GpuReport, *, change: dict[int, bytes] | None = None
) -> tuple[dict[int, tuple[bool, list[bytes]]], dict[int, tuple[bool, list[bytes]]]]:
    """Driver and VBIOS resources that describe every block of ``report``, each active in one
    of them (with the report's value, or ``change``'s) and inactive zeros in the other."""
    measurements = {**report.measurements, **(change or {})}
    driver: dict[int, tuple[bool, list[bytes]]] = {}
    vbios: dict[int, tuple[bool, list[bytes]]] = {}
    for block, value in measurements.items():
        mine, other = (vbios, driver) if block in VBIOS_BLOCKS else (driver, vbios)
        mine[block] = (True, [value])
        other[block] = (False, [bytes(len(value))])
    return driver, vbios
