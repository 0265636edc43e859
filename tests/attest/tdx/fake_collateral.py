"""FAKE Intel collateral for tests: a TEST root (not Intel's) and a "TCB Signing" key under it.

The real quote vector comes without collateral, and only Intel can sign real collateral, so tests
build TCB info and QE identity documents around the real quote's own FMSPC, PCE-ID, TCB SVNs and
QE report, sign them with this fake chain, and pass the fake root where the pinned Intel root
would go. Production code never imports this module.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attest.tdx.abi import Quote, parse_quote
from attest.tdx.collateral import TdxCollateral
from attest.tdx.pck import pck_extensions
from attest.tdx.sim import OID_SGX_EXTENSIONS, SimulatedTdxSigner, _sgx_extension

ISSUE = datetime(2024, 5, 25, tzinfo=UTC)
NEXT_UPDATE = datetime(2024, 6, 24, tzinfo=UTC)
TCB_DATE = "2024-03-13T00:00:00Z"
# What Intel's PCS serves for TD_QE; the real quote's QE report satisfies it.
QE_ATTRIBUTES = "11000000000000000000000000000000"
QE_ATTRIBUTES_MASK = "FBFFFFFFFFFFFFFF0000000000000000"


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OpenPCC TEST (not Intel)"),
        ]
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    not_before: datetime = datetime(2020, 1, 1, tzinfo=UTC),
    not_after: datetime = datetime(2040, 1, 1, tzinfo=UTC),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
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
    )
    return builder.sign(issuer_key, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass
class FakeTcbSigner:
    """A TEST root CA and an "Intel SGX TCB Signing" certificate it issued."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    signer: x509.Certificate

    ROOT_CN = "TEST Intel SGX Root CA (not Intel)"

    @classmethod
    def generate(cls) -> FakeTcbSigner:
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = _cert(cls.ROOT_CN, root_key, cls.ROOT_CN, root_key, ca=True)
        key = ec.generate_private_key(ec.SECP256R1())
        signer = _cert("Intel SGX TCB Signing", key, cls.ROOT_CN, root_key, ca=False)
        return cls(root_key=root_key, root=root, key=key, signer=signer)

    def issue(
        self,
        cn: str,
        *,
        ca: bool = False,
        issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
        **validity: datetime,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """Another certificate under the TEST root, or under ``issuer`` (for chain mutations)."""
        key = ec.generate_private_key(ec.SECP256R1())
        issuer_cn, issuer_key = issuer or (self.ROOT_CN, self.root_key)
        return key, _cert(cn, key, issuer_cn, issuer_key, ca=ca, **validity)

    def chain_pem(self) -> bytes:
        return pem(self.signer, self.root)

    def sign_document(
        self, outer: str, inner: dict[str, Any], key: ec.EllipticCurvePrivateKey | None = None
    ) -> bytes:
        """``{"<outer>": <inner>, "signature": hex}`` as PCS serves it: compact JSON, the
        signature (r || s) over the inner object's exact bytes."""
        body = json.dumps(inner, separators=(",", ":")).encode()
        der = (key or self.key).sign(body, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()
        return (
            b'{"' + outer.encode() + b'":' + body + b',"signature":"' + signature.encode() + b'"}'
        )


def _components(svns: list[int] | tuple[int, ...]) -> list[dict[str, Any]]:
    return [{"svn": v, "category": "TEST", "type": f"component {i}"} for i, v in enumerate(svns)]


def tcb_level(
    sgx: list[int] | tuple[int, ...],
    pcesvn: int,
    tdx: list[int] | tuple[int, ...] | bytes,
    status: str,
    advisories: list[str] | None = None,
) -> dict[str, Any]:
    level: dict[str, Any] = {
        "tcb": {
            "sgxtcbcomponents": _components(list(sgx)),
            "pcesvn": pcesvn,
            "tdxtcbcomponents": _components(list(tdx)),
        },
        "tcbDate": TCB_DATE,
        "tcbStatus": status,
    }
    if advisories is not None:
        level["advisoryIDs"] = advisories
    return level


def tcb_info(quote: Quote, *, status: str = "UpToDate") -> dict[str, Any]:
    """A TDX TCB info (v3) whose top level matches the real quote exactly."""
    pck = pck_extensions(quote.pck_chain[0])
    body = quote.body
    return {
        "id": "TDX",
        "version": 3,
        "issueDate": _iso(ISSUE),
        "nextUpdate": _iso(NEXT_UPDATE),
        "fmspc": pck.fmspc.hex().upper(),
        "pceId": pck.pce_id.hex().upper(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": 17,
        "tdxModule": {
            "mrsigner": body.mrsignerseam.hex().upper(),
            "attributes": "0000000000000000",
            "attributesMask": "FFFFFFFFFFFFFFFF",
        },
        "tdxModuleIdentities": [
            {
                "id": "TDX_01",
                "mrsigner": body.mrsignerseam.hex().upper(),
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
                "tcbLevels": [
                    {"tcb": {"isvsvn": 2}, "tcbDate": TCB_DATE, "tcbStatus": "UpToDate"},
                    {"tcb": {"isvsvn": 1}, "tcbDate": TCB_DATE, "tcbStatus": "OutOfDate"},
                ],
            }
        ],
        "tcbLevels": [
            tcb_level(pck.tcb_components, pck.pce_svn, body.tee_tcb_svn, status, []),
            tcb_level([0] * 16, 0, [0] * 16, "OutOfDate", ["INTEL-SA-00837", "INTEL-SA-00960"]),
        ],
    }


def qe_identity(quote: Quote, *, status: str = "UpToDate") -> dict[str, Any]:
    """A TD_QE identity (v2) the real quote's QE report satisfies."""
    qe = quote.qe_report
    return {
        "id": "TD_QE",
        "version": 2,
        "issueDate": _iso(ISSUE),
        "nextUpdate": _iso(NEXT_UPDATE),
        "tcbEvaluationDataNumber": 17,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": QE_ATTRIBUTES,
        "attributesMask": QE_ATTRIBUTES_MASK,
        "mrsigner": qe.mrsigner.hex().upper(),
        "isvprodid": qe.isv_prod_id,
        "tcbLevels": [
            {"tcb": {"isvsvn": qe.isv_svn}, "tcbDate": TCB_DATE, "tcbStatus": status},
            {
                "tcb": {"isvsvn": 0},
                "tcbDate": "2021-11-10T00:00:00Z",
                "tcbStatus": "OutOfDate",
                "advisoryIDs": ["INTEL-SA-00615"],
            },
        ],
    }


@dataclass
class CollateralBuilder:
    """Documents to mutate, then :meth:`build` signs them into a :class:`TdxCollateral`."""

    signer: FakeTcbSigner
    tcb: dict[str, Any]
    qe: dict[str, Any]
    chain: bytes

    @classmethod
    def for_quote(cls, signer: FakeTcbSigner, quote: Quote) -> CollateralBuilder:
        return cls(signer, tcb_info(quote), qe_identity(quote), signer.chain_pem())

    def copy(self) -> CollateralBuilder:
        return CollateralBuilder(
            self.signer, copy.deepcopy(self.tcb), copy.deepcopy(self.qe), self.chain
        )

    def build(self) -> TdxCollateral:
        return TdxCollateral(
            tcb_info=self.signer.sign_document("tcbInfo", self.tcb),
            qe_identity=self.signer.sign_document("enclaveIdentity", self.qe),
            issuer_chain_pem=self.chain,
        )


def shifted(days: int) -> str:
    return _iso(ISSUE + timedelta(days=days))


def crl(
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    revoked: tuple[int, ...] = (),
    last_update: datetime = ISSUE,
    next_update: datetime = NEXT_UPDATE,
    encoding: serialization.Encoding = serialization.Encoding.DER,
) -> bytes:
    """A CRL ``issuer`` signed, revoking ``revoked`` serial numbers."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(last_update)
        .next_update(next_update)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(last_update)
            .build()
        )
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(encoding)


@dataclass
class FakePlatform:
    """A TEST PCK chain under a :class:`FakeTcbSigner`'s root (root -> "Intel SGX PCK Platform
    CA" -> PCK certificate with SGX extensions) and a simulated QE quoting with it, so tests hold
    every key that signs a CRL. The real quote's chain is Intel's: no test can sign its CRLs."""

    tcb: FakeTcbSigner
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    pck: x509.Certificate
    signer: SimulatedTdxSigner

    CA_CN = "Intel SGX PCK Platform CA"

    @classmethod
    def generate(cls, tcb: FakeTcbSigner) -> FakePlatform:
        ca_key, ca = tcb.issue(cls.CA_CN, ca=True)
        pck_key = ec.generate_private_key(ec.SECP256R1())
        sgx = _sgx_extension(
            ppid=bytes(16),
            cpu_svn=bytes.fromhex("05050d02030100030000000000000000"),
            pce_svn=11,
            fmspc=bytes.fromhex("00806f050000"),
        )
        pck = (
            x509.CertificateBuilder()
            .subject_name(_name("Intel SGX PCK Certificate"))
            .issuer_name(ca.subject)
            .public_key(pck_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
            .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.UnrecognizedExtension(OID_SGX_EXTENSIONS, sgx), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        signer = SimulatedTdxSigner(
            root=tcb.root,
            platform_ca=ca,
            pck=pck,
            pck_key=pck_key,
            attestation_key=ec.generate_private_key(ec.SECP256R1()),
            tee_tcb_svn=bytes.fromhex("03000500000000000000000000000000"),
        )
        return cls(tcb=tcb, ca_key=ca_key, ca=ca, pck=pck, signer=signer)

    def quote(self, mrtd: bytes = bytes(48), report_data: bytes = bytes(64)) -> Quote:
        return parse_quote(self.signer.sign(report_data=report_data, mrtd=mrtd))

    def save(self, directory: Path) -> None:
        """Over a ``SimulatedTdxSigner.generate`` directory: a simulated TDX provider reading
        it then quotes with this chain."""
        enc = serialization.Encoding.PEM
        (directory / "root.pem").write_bytes(self.tcb.root.public_bytes(enc))
        (directory / "platform-ca.pem").write_bytes(self.ca.public_bytes(enc))
        (directory / "pck.pem").write_bytes(self.pck.public_bytes(enc))
        for name, key in (
            ("pck.key", self.signer._pck_key),
            ("attestation.key", self.signer._attestation_key),
        ):
            (directory / name).write_bytes(
                key.private_bytes(
                    enc, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )

    def pck_crl(self, *, revoked: tuple[int, ...] = (), **kwargs: Any) -> bytes:
        return crl(self.ca, self.ca_key, revoked=revoked, **kwargs)

    def root_ca_crl(self, *, revoked: tuple[int, ...] = (), **kwargs: Any) -> bytes:
        return crl(self.tcb.root, self.tcb.root_key, revoked=revoked, **kwargs)
