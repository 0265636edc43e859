"""Verify an NVIDIA GPU attestation report: chain, signature, FWID, nonce, reference values.

Checks run in this order and the first failure raises :class:`VerificationError` naming it:

``gpu-chain``      the PEM chain (leaf first) links up, every certificate is valid at ``now``,
                   and it ends in (or is issued by) a pinned "NVIDIA Device Identity CA" root;
``gpu-signature``  ECDSA P-384 / SHA-384 over request and response up to the signature, r || s
                   big-endian, by the leaf's key;
``gpu-fwid``       the leaf's FWID (extension 2.23.133.5.4.1) equals the report's opaque FWID;
``gpu-nonce``      the request nonce equals the one the caller asked for (constant time);
``gpu-rim``        each active reference measurement in the operator's RIM files matches.
"""

from __future__ import annotations

import hmac
import itertools
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attest.errors import ParseError, VerificationError
from attest.nvgpu.abi import SIGNATURE_SIZE, GpuReport

__all__ = [
    "FWID_EXTENSION_OID",
    "NVIDIA_ROOT_SUBJECT_CN",
    "RimMeasurement",
    "VerifiedGpu",
    "leaf_fwid",
    "load_gpu_chain",
    "parse_rim",
    "pinned_nvidia_roots",
    "verify_chain",
    "verify_gpu_report",
]

NVIDIA_ROOT_SUBJECT_CN = "NVIDIA Device Identity CA"
#: tcg-dice-TcbInfo; NVIDIA's leaf carries SEQUENCE { INTEGER, SubjectPublicKeyInfo, FWID }.
FWID_EXTENSION_OID = x509.ObjectIdentifier("2.23.133.5.4.1")
SHA384_OID = "2.16.840.1.101.3.4.2.2"
FWID_SIZE = 48
ROOT_PEM = "nvidia_device_identity_ca.pem"
# The RIM's hash attributes live in the XML-Enc SHA-384 namespace: Hash0, Hash1, ...
RIM_HASH_NAMESPACE = "{http://www.w3.org/2001/04/xmlenc#sha384}"


@dataclass(frozen=True, slots=True)
class VerifiedGpu:
    """A report whose chain, signature, FWID and (when asked) nonce and RIMs verified."""

    report: GpuReport
    leaf: x509.Certificate
    checks: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RimMeasurement:
    """One reference value from a RIM: SPDM block ``index`` must equal one of ``values``."""

    component: str
    name: str
    index: int
    values: tuple[bytes, ...]
    active: bool


def load_gpu_chain(pem: bytes) -> list[x509.Certificate]:
    """Certificates of a PEM chain, leaf first; :class:`ParseError` when there are none."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ParseError(f"GPU certificate chain is not valid PEM: {exc}") from exc
    return certs


def pinned_nvidia_roots() -> list[x509.Certificate]:
    """The NVIDIA Device Identity CA shipped in ``attest/roots`` (checked against nvtrust)."""
    data = resources.files("attest").joinpath("roots", ROOT_PEM).read_bytes()
    return x509.load_pem_x509_certificates(data)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not constraints.ca:
        return False
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.key_cert_sign


def _check_time(cert: x509.Certificate, now: datetime, check: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise VerificationError(
            check,
            f"{cert.subject.rfc4514_string()} is not valid at {now.isoformat()} "
            f"({cert.not_valid_before_utc.isoformat()} .. {cert.not_valid_after_utc.isoformat()})",
        )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_chain(
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    *,
    now: datetime,
    check: str,
) -> x509.Certificate:
    """Check ``chain`` (leaf first) links up to one of ``roots``; returns the root it reached.

    Every link is a direct issuance (names and signature), every issuer is a CA allowed to sign
    certificates, every certificate (and the root) is valid at ``now``. The chain may end in the
    pinned root itself or in a certificate that root issued; a self-signed certificate that is not
    pinned never anchors anything.
    """
    if not chain:
        raise VerificationError(check, "certificate chain is empty")
    if not roots:
        raise VerificationError(check, "no pinned root certificates to verify against")
    for cert in chain:
        _check_time(cert, now, check)
    for position, (cert, issuer) in enumerate(itertools.pairwise(chain)):
        if not _issued_by(cert, issuer):
            raise VerificationError(
                check,
                f"certificate {position} ({cert.subject.rfc4514_string()}) is not signed by "
                f"the next one ({issuer.subject.rfc4514_string()})",
            )
        if not _is_ca(issuer):
            raise VerificationError(
                check, f"{issuer.subject.rfc4514_string()} is not a CA allowed to sign certificates"
            )
    last = chain[-1]
    for root in roots:
        if last == root:
            return root
    for root in roots:
        if _issued_by(last, root) and _is_ca(root):
            _check_time(root, now, check)
            return root
    raise VerificationError(
        check,
        f"chain ends in {last.subject.rfc4514_string()} "
        f"(SHA-256 {last.fingerprint(hashes.SHA256()).hex()}), which no pinned root issued",
    )


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """Top-level DER TLVs of ``data`` as (tag, content); raises ValueError on bad encoding."""
    items: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 2:
            raise ValueError("truncated DER header")
        tag = data[offset]
        length = data[offset + 1]
        offset += 2
        if length & 0x80:
            count = length & 0x7F
            if count == 0 or count > 4 or offset + count > len(data):
                raise ValueError("bad DER length")
            length = int.from_bytes(data[offset : offset + count], "big")
            offset += count
        if offset + length > len(data):
            raise ValueError("DER value overruns its container")
        items.append((tag, data[offset : offset + length]))
        offset += length
    return items


def _oid_text(content: bytes) -> str:
    if not content:
        raise ValueError("empty OID")
    first = content[0]
    parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    value = 0
    for byte in content[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(str(p) for p in parts)


def _find_fwids(data: bytes, found: list[bytes], depth: int = 0) -> None:
    """Collect every SEQUENCE { OID sha384, OCTET STRING digest } under ``data``."""
    if depth > 8:
        raise ValueError("DER nested too deeply")
    for tag, content in _der_items(data):
        if tag != 0x30 and tag & 0x20 == 0:
            continue
        inner = _der_items(content)
        if (
            tag == 0x30
            and len(inner) == 2
            and inner[0][0] == 0x06
            and inner[1][0] == 0x04
            and _oid_text(inner[0][1]) == SHA384_OID
        ):
            found.append(inner[1][1])
        else:
            _find_fwids(content, found, depth + 1)


def leaf_fwid(leaf: x509.Certificate) -> bytes:
    """The SHA-384 FWID in the leaf's 2.23.133.5.4.1 extension; VerificationError('gpu-fwid')."""
    try:
        ext = leaf.extensions.get_extension_for_oid(FWID_EXTENSION_OID)
    except x509.ExtensionNotFound as exc:
        raise VerificationError("gpu-fwid", "leaf certificate has no FWID extension") from exc
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise VerificationError("gpu-fwid", "FWID extension has an unexpected type")
    found: list[bytes] = []
    try:
        _find_fwids(value.value, found)
    except ValueError as exc:
        raise VerificationError("gpu-fwid", f"FWID extension is malformed: {exc}") from exc
    if len(found) != 1 or len(found[0]) != FWID_SIZE:
        raise VerificationError(
            "gpu-fwid", f"leaf FWID extension holds {len(found)} SHA-384 FWIDs, expected one"
        )
    return found[0]


def _verify_signature(report: GpuReport, leaf: x509.Certificate) -> None:
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise VerificationError("gpu-signature", "leaf key is not ECDSA P-384")
    half = SIGNATURE_SIZE // 2
    r = int.from_bytes(report.signature[:half], "big")
    s = int.from_bytes(report.signature[half:], "big")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise VerificationError(
            "gpu-signature", "report signature does not verify with the leaf key"
        ) from exc


def parse_rim(data: bytes, component: str) -> list[RimMeasurement]:
    """Reference measurements of a NVIDIA RIM (SWID tag): ``Payload/Resource`` elements.

    RIM indices are 0-based; SPDM block indices are 1-based, so RIM index i is block i + 1
    (as nvtrust compares them). The RIM's own XML signature is not checked here.
    """
    try:
        root = ET.fromstring(data)  # noqa: S314 - operator-supplied reference file, not network input
    except ET.ParseError as exc:
        raise ParseError(f"{component} RIM is not XML: {exc}") from exc
    payload = next((el for el in root if el.tag.endswith("Payload")), None)
    if payload is None:
        raise ParseError(f"{component} RIM has no Payload")
    out: list[RimMeasurement] = []
    seen: set[int] = set()
    for resource in payload:
        attrs = resource.attrib
        try:
            index = int(attrs["index"])
            alternatives = int(attrs.get("alternatives", "1"))
            values = tuple(
                bytes.fromhex(attrs[f"{RIM_HASH_NAMESPACE}Hash{i}"]) for i in range(alternatives)
            )
        except (KeyError, ValueError) as exc:
            raise ParseError(f"{component} RIM resource is malformed: {exc}") from exc
        if index in seen:
            raise ParseError(f"{component} RIM lists index {index} twice")
        seen.add(index)
        out.append(
            RimMeasurement(
                component=component,
                name=attrs.get("name", ""),
                index=index + 1,
                values=values,
                active=attrs.get("active", "True") != "False",
            )
        )
    if not out:
        raise ParseError(f"{component} RIM has no measurements")
    return out


def _check_rims(report: GpuReport, rims: Mapping[str, bytes]) -> str:
    golden: dict[int, RimMeasurement] = {}
    for component, data in rims.items():
        for ref in parse_rim(data, component):
            if not ref.active:
                continue
            if ref.index in golden:
                raise VerificationError(
                    "gpu-rim",
                    f"index {ref.index} is active in both {golden[ref.index].component} "
                    f"and {component} RIMs",
                )
            golden[ref.index] = ref
    runtime = report.measurements
    mismatched: list[str] = []
    for index in sorted(golden):
        ref = golden[index]
        value = runtime.get(index)
        if value is None:
            mismatched.append(f"index {index} ({ref.component}): missing from the report")
        elif not any(hmac.compare_digest(value, alt) for alt in ref.values):
            mismatched.append(
                f"index {index} ({ref.component}): report {value.hex()}, "
                f"RIM {' or '.join(v.hex() for v in ref.values)}"
            )
    if mismatched:
        raise VerificationError("gpu-rim", "; ".join(mismatched))
    return f"{len(golden)} active reference measurements match ({', '.join(sorted(rims))})"


def verify_gpu_report(
    report: GpuReport,
    chain: Sequence[x509.Certificate],
    *,
    nonce: bytes | None,
    roots: Sequence[x509.Certificate] | None = None,
    now: datetime | None = None,
    rims: Mapping[str, bytes] | None = None,
) -> VerifiedGpu:
    """Run every check in order; the first failure raises :class:`VerificationError`."""
    checks: list[tuple[str, str]] = []
    run_gpu_checks(report, chain, nonce=nonce, roots=roots, now=now, rims=rims, record=checks)
    return VerifiedGpu(report=report, leaf=chain[0], checks=tuple(checks))


def run_gpu_checks(
    report: GpuReport,
    chain: Sequence[x509.Certificate],
    *,
    nonce: bytes | None,
    roots: Sequence[x509.Certificate] | None,
    now: datetime | None,
    rims: Mapping[str, bytes] | None,
    record: list[tuple[str, str]],
) -> None:
    """The checks behind :func:`verify_gpu_report`, appending each pass to ``record``."""
    when = now if now is not None else datetime.now(UTC)
    anchors = list(roots) if roots is not None else pinned_nvidia_roots()
    root = verify_chain(chain, anchors, now=when, check="gpu-chain")
    record.append(
        (
            "gpu-chain",
            f"{len(chain)} certificates to {root.subject.rfc4514_string()} "
            f"(SHA-256 {root.fingerprint(hashes.SHA256()).hex()[:16]}…)",
        )
    )
    leaf = chain[0]
    _verify_signature(report, leaf)
    record.append(("gpu-signature", f"ECDSA P-384 over {len(report.signed_bytes)} bytes"))
    fwid = leaf_fwid(leaf)
    if not report.opaque.fwid:
        raise VerificationError("gpu-fwid", "report carries no FWID")
    if not hmac.compare_digest(fwid, report.opaque.fwid):
        raise VerificationError(
            "gpu-fwid",
            f"leaf FWID {fwid.hex()} differs from report FWID {report.opaque.fwid.hex()}",
        )
    record.append(("gpu-fwid", fwid.hex()))
    if nonce is None:
        record.append(("gpu-nonce", "skipped: no expected nonce given"))
    else:
        if not hmac.compare_digest(report.request_nonce, nonce):
            raise VerificationError(
                "gpu-nonce",
                f"report nonce {report.request_nonce.hex()} differs from expected {nonce.hex()}",
            )
        record.append(("gpu-nonce", nonce.hex()))
    if rims:
        record.append(("gpu-rim", _check_rims(report, rims)))
