"""Intel TDX DCAP quote (versions 4 and 5): bytes to structure.

Layout (Intel TDX DCAP Quoting Library API, appendix "Quote format"), little-endian::

    v4: Header[48] | TD report body[584]                          | SigDataLen[4] | SigData
    v5: Header[48] | BodyType[2] | BodySize[4] | body[584 or 648] | SigDataLen[4] | SigData

    SigData: QuoteSignature[64] | AttestationKey[64] | CertData(type 6)
    CertData type 6: QEReport[384] | QEReportSignature[64] | QEAuthLen[2] | QEAuthData
                     | CertData(type 5: PCK certificate chain, PEM)

The v5 TD 1.5 body (type 3) appends TEE_TCB_SVN_2[16] and MRSERVICETD[48]. The quote's length
comes from decoding; only zero padding may follow it. Nothing here is verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509

from attest.errors import ParseError

__all__ = [
    "ATTESTATION_KEY_TYPE_ECDSA_P256",
    "HEADER_SIZE",
    "TD_ATTRIBUTES_DEBUG",
    "TD_ATTRIBUTES_MIGRATABLE",
    "TEE_TYPE_TDX",
    "QeReport",
    "Quote",
    "QuoteHeader",
    "TdReportBody",
    "parse_quote",
]

# Header.
HEADER_SIZE = 48
HDR_VERSION = 0x00
HDR_ATTESTATION_KEY_TYPE = 0x02
HDR_TEE_TYPE = 0x04
HDR_RESERVED = 0x08  # QE SVN and PCE SVN in SGX quotes; reserved for TDX
HDR_QE_VENDOR_ID = 0x0C
HDR_USER_DATA = 0x1C
QUOTE_VERSIONS = (4, 5)
ATTESTATION_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x81
# v5 body descriptor.
BODY_DESCRIPTOR_SIZE = 6
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3
# TD report body (TD 1.0); TD 1.5 appends two fields.
BODY_TEE_TCB_SVN = 0x000
BODY_MRSEAM = 0x010
BODY_MRSIGNERSEAM = 0x040
BODY_SEAM_ATTRIBUTES = 0x070
BODY_TD_ATTRIBUTES = 0x078
BODY_XFAM = 0x080
BODY_MRTD = 0x088
BODY_MRCONFIGID = 0x0B8
BODY_MROWNER = 0x0E8
BODY_MROWNERCONFIG = 0x118
BODY_RTMR0 = 0x148
BODY_RTMR_SIZE = 48
BODY_REPORTDATA = 0x208
TD10_BODY_SIZE = 0x248  # 584
BODY_TEE_TCB_SVN_2 = 0x248
BODY_MRSERVICETD = 0x258
TD15_BODY_SIZE = 0x288  # 648
MR_SIZE = 48
TD_ATTRIBUTES_DEBUG = 0x01  # TD_ATTRIBUTES bit 0 (TUD.DEBUG)
TD_ATTRIBUTES_MIGRATABLE = 1 << 29  # TD_ATTRIBUTES bit 29 (SEC.MIGRATABLE), little-endian u64
# Signature data.
SIG_DATA_LENGTH_SIZE = 4
ECDSA_SIGNATURE_SIZE = 64  # P-256 r || s, big-endian
ATTESTATION_KEY_SIZE = 64  # P-256 X || Y, big-endian
CERT_DATA_HEADER_SIZE = 6  # type[2], size[4]
CERT_TYPE_PCK_CHAIN = 5
CERT_TYPE_QE_REPORT = 6
# SGX REPORT body of the Quoting Enclave.
QE_REPORT_SIZE = 384
QE_CPUSVN = 0x000
QE_MISCSELECT = 0x010
QE_ATTRIBUTES = 0x030
QE_MRENCLAVE = 0x040
QE_MRSIGNER = 0x080
QE_ISVPRODID = 0x100
QE_ISVSVN = 0x102
QE_REPORTDATA = 0x140
QE_AUTH_LENGTH_SIZE = 2


@dataclass(frozen=True, slots=True)
class QuoteHeader:
    version: int
    attestation_key_type: int
    tee_type: int
    reserved: bytes
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True, slots=True)
class TdReportBody:
    """The TD report body; ``tee_tcb_svn_2`` and ``mrservicetd`` only in a TD 1.5 body."""

    body_type: int
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn_2: bytes | None
    mrservicetd: bytes | None

    @property
    def debug(self) -> bool:
        """TD_ATTRIBUTES.DEBUG: the TD's memory and state are open to the host."""
        return bool(self.td_attributes[0] & TD_ATTRIBUTES_DEBUG)

    @property
    def migratable(self) -> bool:
        """TD_ATTRIBUTES.MIGRATABLE: the TD's state may be exported through a migration TD."""
        return bool(int.from_bytes(self.td_attributes, "little") & TD_ATTRIBUTES_MIGRATABLE)

    @property
    def service_td_bound(self) -> bool:
        """A TD 1.5 body whose MRSERVICETD is not zero: a service TD (a migration TD, say) is
        bound to this TD and can act on it."""
        return self.mrservicetd is not None and any(self.mrservicetd)


@dataclass(frozen=True, slots=True)
class QeReport:
    """The Quoting Enclave's SGX report (signed by the PCK key)."""

    raw: bytes
    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes


@dataclass(frozen=True, slots=True)
class Quote:
    """A decoded TDX quote. ``signed_bytes`` is what the attestation key signed."""

    raw: bytes
    header: QuoteHeader
    body: TdReportBody
    signed_bytes: bytes
    signature: bytes
    attestation_key: bytes
    qe_report: QeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    pck_chain: tuple[x509.Certificate, ...]

    @property
    def version(self) -> int:
        return self.header.version

    def to_dict(self) -> dict[str, Any]:
        b = self.body
        body: dict[str, Any] = {
            "body_type": b.body_type,
            "tee_tcb_svn": b.tee_tcb_svn.hex(),
            "mrseam": b.mrseam.hex(),
            "mrsignerseam": b.mrsignerseam.hex(),
            "seam_attributes": b.seam_attributes.hex(),
            "td_attributes": b.td_attributes.hex(),
            "debug": b.debug,
            "migratable": b.migratable,
            "xfam": b.xfam.hex(),
            "mrtd": b.mrtd.hex(),
            "mrconfigid": b.mrconfigid.hex(),
            "mrowner": b.mrowner.hex(),
            "mrownerconfig": b.mrownerconfig.hex(),
            **{f"rtmr{i}": r.hex() for i, r in enumerate(b.rtmrs)},
            "report_data": b.report_data.hex(),
        }
        if b.tee_tcb_svn_2 is not None and b.mrservicetd is not None:
            body["tee_tcb_svn_2"] = b.tee_tcb_svn_2.hex()
            body["mrservicetd"] = b.mrservicetd.hex()
        q = self.qe_report
        return {
            "version": self.header.version,
            "length": len(self.raw),
            "header": {
                "attestation_key_type": self.header.attestation_key_type,
                "tee_type": self.header.tee_type,
                "qe_vendor_id": self.header.qe_vendor_id.hex(),
                "user_data": self.header.user_data.hex(),
            },
            "body": body,
            "signature": self.signature.hex(),
            "attestation_key": self.attestation_key.hex(),
            "qe_report": {
                "cpu_svn": q.cpu_svn.hex(),
                "misc_select": q.misc_select,
                "attributes": q.attributes.hex(),
                "mrenclave": q.mrenclave.hex(),
                "mrsigner": q.mrsigner.hex(),
                "isv_prod_id": q.isv_prod_id,
                "isv_svn": q.isv_svn,
                "report_data": q.report_data.hex(),
            },
            "qe_report_signature": self.qe_report_signature.hex(),
            "qe_auth_data": self.qe_auth_data.hex(),
            "pck_chain": [c.subject.rfc4514_string() for c in self.pck_chain],
        }


def _take(data: bytes, offset: int, size: int, what: str) -> bytes:
    end = offset + size
    if end > len(data):
        raise ParseError(f"TDX quote truncated in {what} (needs {end} bytes, has {len(data)})")
    return data[offset:end]


def _u(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset : offset + size], "little")


def _parse_body(body: bytes, body_type: int) -> TdReportBody:
    def mr(offset: int) -> bytes:
        return body[offset : offset + MR_SIZE]

    rtmrs = tuple(mr(BODY_RTMR0 + i * BODY_RTMR_SIZE) for i in range(4))
    td15 = body_type == BODY_TYPE_TD15
    return TdReportBody(
        body_type=body_type,
        tee_tcb_svn=body[BODY_TEE_TCB_SVN:BODY_MRSEAM],
        mrseam=mr(BODY_MRSEAM),
        mrsignerseam=mr(BODY_MRSIGNERSEAM),
        seam_attributes=body[BODY_SEAM_ATTRIBUTES:BODY_TD_ATTRIBUTES],
        td_attributes=body[BODY_TD_ATTRIBUTES:BODY_XFAM],
        xfam=body[BODY_XFAM:BODY_MRTD],
        mrtd=mr(BODY_MRTD),
        mrconfigid=mr(BODY_MRCONFIGID),
        mrowner=mr(BODY_MROWNER),
        mrownerconfig=mr(BODY_MROWNERCONFIG),
        rtmrs=(rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]),
        report_data=body[BODY_REPORTDATA:TD10_BODY_SIZE],
        tee_tcb_svn_2=body[BODY_TEE_TCB_SVN_2:BODY_MRSERVICETD] if td15 else None,
        mrservicetd=mr(BODY_MRSERVICETD) if td15 else None,
    )


def _parse_qe_report(raw: bytes) -> QeReport:
    return QeReport(
        raw=raw,
        cpu_svn=raw[QE_CPUSVN:QE_MISCSELECT],
        misc_select=_u(raw, QE_MISCSELECT, 4),
        attributes=raw[QE_ATTRIBUTES:QE_MRENCLAVE],
        mrenclave=raw[QE_MRENCLAVE : QE_MRENCLAVE + 32],
        mrsigner=raw[QE_MRSIGNER : QE_MRSIGNER + 32],
        isv_prod_id=_u(raw, QE_ISVPRODID, 2),
        isv_svn=_u(raw, QE_ISVSVN, 2),
        report_data=raw[QE_REPORTDATA:QE_REPORT_SIZE],
    )


def _parse_pck_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    text = pem.rstrip(b"\x00")
    try:
        certs = x509.load_pem_x509_certificates(text)
    except (ValueError, x509.InvalidVersion) as exc:
        raise ParseError(f"TDX PCK certificate chain is not valid PEM: {exc}") from exc
    return tuple(certs)


def parse_quote(data: bytes) -> Quote:
    """Decode a TDX DCAP quote (v4 or v5); :class:`ParseError` on malformed bytes."""
    data = bytes(data)
    header_raw = _take(data, 0, HEADER_SIZE, "header")
    version = _u(header_raw, HDR_VERSION, 2)
    if version not in QUOTE_VERSIONS:
        raise ParseError(f"unsupported TDX quote version {version} (expected 4 or 5)")
    key_type = _u(header_raw, HDR_ATTESTATION_KEY_TYPE, 2)
    if key_type != ATTESTATION_KEY_TYPE_ECDSA_P256:
        raise ParseError(f"unsupported attestation key type {key_type} (expected 2, ECDSA P-256)")
    tee_type = _u(header_raw, HDR_TEE_TYPE, 4)
    if tee_type != TEE_TYPE_TDX:
        raise ParseError(f"TEE type {tee_type:#x} is not TDX (0x81)")
    header = QuoteHeader(
        version=version,
        attestation_key_type=key_type,
        tee_type=tee_type,
        reserved=header_raw[HDR_RESERVED:HDR_QE_VENDOR_ID],
        qe_vendor_id=header_raw[HDR_QE_VENDOR_ID:HDR_USER_DATA],
        user_data=header_raw[HDR_USER_DATA:HEADER_SIZE],
    )

    offset = HEADER_SIZE
    if version == 4:
        body_type, body_size = BODY_TYPE_TD10, TD10_BODY_SIZE
    else:
        descriptor = _take(data, offset, BODY_DESCRIPTOR_SIZE, "body descriptor")
        body_type, body_size = _u(descriptor, 0, 2), _u(descriptor, 2, 4)
        expected = {BODY_TYPE_TD10: TD10_BODY_SIZE, BODY_TYPE_TD15: TD15_BODY_SIZE}.get(body_type)
        if expected is None:
            raise ParseError(f"v5 body type {body_type} is not a TD report (2 or 3)")
        if body_size != expected:
            raise ParseError(f"v5 body type {body_type} has size {body_size}, expected {expected}")
        offset += BODY_DESCRIPTOR_SIZE
    body = _parse_body(_take(data, offset, body_size, "TD report body"), body_type)
    offset += body_size
    signed_bytes = data[:offset]

    sig_len = _u(_take(data, offset, SIG_DATA_LENGTH_SIZE, "signature data length"), 0, 4)
    offset += SIG_DATA_LENGTH_SIZE
    sig_data = _take(data, offset, sig_len, "signature data")
    end = offset + sig_len
    if data[end:].strip(b"\x00"):
        raise ParseError(f"{len(data) - end} unexpected bytes after the {end}-byte quote")

    pos = 0
    signature = _take(sig_data, pos, ECDSA_SIGNATURE_SIZE, "quote signature")
    pos += ECDSA_SIGNATURE_SIZE
    attestation_key = _take(sig_data, pos, ATTESTATION_KEY_SIZE, "attestation key")
    pos += ATTESTATION_KEY_SIZE
    cert_header = _take(sig_data, pos, CERT_DATA_HEADER_SIZE, "certification data header")
    cert_type, cert_size = _u(cert_header, 0, 2), _u(cert_header, 2, 4)
    pos += CERT_DATA_HEADER_SIZE
    if cert_type != CERT_TYPE_QE_REPORT:
        raise ParseError(f"certification data type {cert_type}, expected 6 (QE report)")
    qe_data = _take(sig_data, pos, cert_size, "QE report certification data")
    if pos + cert_size != len(sig_data):
        raise ParseError(
            f"signature data length {len(sig_data)} disagrees with its contents "
            f"({pos + cert_size} bytes)"
        )

    qpos = 0
    qe_report = _parse_qe_report(_take(qe_data, qpos, QE_REPORT_SIZE, "QE report"))
    qpos += QE_REPORT_SIZE
    qe_report_signature = _take(qe_data, qpos, ECDSA_SIGNATURE_SIZE, "QE report signature")
    qpos += ECDSA_SIGNATURE_SIZE
    auth_len = _u(_take(qe_data, qpos, QE_AUTH_LENGTH_SIZE, "QE auth data length"), 0, 2)
    qpos += QE_AUTH_LENGTH_SIZE
    qe_auth_data = _take(qe_data, qpos, auth_len, "QE auth data")
    qpos += auth_len
    inner_header = _take(qe_data, qpos, CERT_DATA_HEADER_SIZE, "PCK certification data header")
    inner_type, inner_size = _u(inner_header, 0, 2), _u(inner_header, 2, 4)
    qpos += CERT_DATA_HEADER_SIZE
    if inner_type != CERT_TYPE_PCK_CHAIN:
        raise ParseError(f"QE certification data type {inner_type}, expected 5 (PCK chain)")
    pck_pem = _take(qe_data, qpos, inner_size, "PCK certificate chain")
    if qpos + inner_size != len(qe_data):
        raise ParseError("QE report certification data has trailing bytes")
    pck_chain = _parse_pck_chain(pck_pem)
    if not pck_chain:
        raise ParseError("TDX PCK certificate chain is empty")

    return Quote(
        raw=data[:end],
        header=header,
        body=body,
        signed_bytes=signed_bytes,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain_pem=pck_pem,
        pck_chain=pck_chain,
    )


def parse_register(value: object) -> bytes | None:
    """A 48-byte TD register written as hex (a manifest's ``tdx`` pins); None otherwise."""
    if not isinstance(value, str):
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        return None
    return raw if len(raw) == MR_SIZE else None
