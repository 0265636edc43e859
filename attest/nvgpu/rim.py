"""NVIDIA reference integrity manifests (RIMs): parse, verify their signature, compare a report.

A RIM is an ISO/IEC 19770-2 SWID tag in the TCG PC Client RIM profile. NVIDIA publishes one per
driver version and one per VBIOS version; together they describe every SPDM measurement index::

    <SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" ...>
      <Meta colloquialVersion="550.90.07" .../>                   driver or VBIOS version
      <Payload>
        <Resource type="Measurement" index="0" active="True" alternatives="2" size="48"
                  sha384:Hash0="..." sha384:Hash1="..." name="..."/>   index 0-based
      </Payload>
      <ds:Signature>  enveloped XML-DSig: C14N 1.1, ECDSA P-384 / SHA-384, X509Data chain
    </SoftwareIdentity>

The XML is parsed by lxml with entity resolution, DTDs and network access off (a document that
declares a DTD is refused). The signature is checked with ``signxml`` against the signing
certificate whose chain *we* verified to the pinned "NVIDIA CoRIM signing Root CA" (or the
operator's root); reference values are then read only from the XML the signature covers.

Checks, each failure a :class:`VerificationError` naming it:

``gpu-rim-chain``      the RIM's chain (leaf first) reaches a RIM root, all valid at ``now``;
``gpu-rim-signature``  the enveloped signature verifies with that leaf and covers the whole tag;
``gpu-rim-version``    each RIM's version equals the report's driver or VBIOS version;
``gpu-rim-coverage``   exactly one driver and one VBIOS RIM; no index active in both; every
                       report block described by a RIM and every active index present in the
                       report;
``gpu-rim``            each active reference index matches one of its alternatives (value and
                       size), as nvtrust's local verifier compares them; index 35 is skipped when
                       the report says NVDEC0 is disabled, as nvtrust does.

Nothing is fetched: RIMs are files the operator supplies (NVIDIA's RIM service serves them),
and OCSP checks of the RIM chain, which nvtrust makes online, are not made here.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from cryptography import x509
from lxml import etree  # type: ignore[import-untyped]
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import SignXMLException
from signxml.verifier import SignatureConfiguration, XMLVerifier

from attest.errors import ParseError, VerificationError
from attest.nvgpu._chain import verify_chain
from attest.nvgpu.abi import NVDEC_STATUS_DISABLED, GpuReport

__all__ = [
    "RIM_ROOT_SUBJECT_CN",
    "Rim",
    "RimMeasurement",
    "VerifiedRim",
    "check_rims",
    "load_rim",
    "parse_rim",
    "pinned_rim_roots",
    "verify_rim",
]

RIM_ROOT_SUBJECT_CN = "NVIDIA CoRIM signing Root CA"
RIM_ROOT_PEM = "nvidia_rim_root_ca.pem"
SWID_NS = "{http://standards.iso.org/iso/19770/-2/2015/schema.xsd}"
DSIG_NS = "{http://www.w3.org/2000/09/xmldsig#}"
HASH_NS = "{http://www.w3.org/2001/04/xmlenc#sha384}"
#: Real RIMs are about 20 KiB.
MAX_RIM_SIZE = 1 << 21
MAX_ALTERNATIVES = 64
#: SPDM block indices are 1-based; a RIM's are 0-based (nvtrust compares RIM i with block i + 1).
SPDM_INDEX_OFFSET = 1
#: nvtrust skips measurement 35 (0-based) when the opaque data says NVDEC0 is disabled.
NVDEC0_BLOCK = 35 + SPDM_INDEX_OFFSET
DRIVER = "driver"
VBIOS = "VBIOS"


@dataclass(frozen=True, slots=True)
class RimMeasurement:
    """One reference value: SPDM block ``index`` (1-based) must equal one of ``values``."""

    component: str
    name: str
    index: int
    values: tuple[bytes, ...]
    active: bool
    size: int = 48


@dataclass(frozen=True, slots=True)
class Rim:
    """A parsed RIM; nothing about it is verified."""

    label: str
    tag_id: str
    product: str
    version: str
    measurements: tuple[RimMeasurement, ...]
    certificates: tuple[x509.Certificate, ...]


@dataclass(frozen=True, slots=True)
class VerifiedRim:
    """A RIM whose chain and signature verified; ``rim`` was read from the signed XML only."""

    rim: Rim
    signer: x509.Certificate
    root: x509.Certificate


def pinned_rim_roots() -> list[x509.Certificate]:
    """NVIDIA's RIM signing root shipped beside this module (as nvtrust pins it)."""
    data = resources.files("attest.nvgpu").joinpath(RIM_ROOT_PEM).read_bytes()
    return x509.load_pem_x509_certificates(data)


def _bad(label: str, what: str) -> ParseError:
    return ParseError(
        f"{label} is not a valid NVIDIA RIM: {what}",
        hint="pass the driver and VBIOS RIM (SWID tag) files exactly as NVIDIA serves them",
    )


def _parse_xml(data: bytes, label: str) -> Any:
    if len(data) > MAX_RIM_SIZE:
        raise _bad(label, f"{len(data)} bytes is more than {MAX_RIM_SIZE}")
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    try:
        root = etree.fromstring(data, parser=parser)
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise _bad(label, f"not XML ({exc})") from exc
    if root is None:
        raise _bad(label, "empty document")
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None or docinfo.doctype:
        raise _bad(label, "it declares a DTD")
    return root


def _attr(element: Any, name: str, label: str) -> str:
    value = element.get(name)
    if not isinstance(value, str):
        raise _bad(label, f"<{etree.QName(element).localname}> lacks {name!r}")
    return value


def _number(text: str, label: str, what: str, maximum: int) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > len(str(maximum)):
        raise _bad(label, f"{what} {text!r} is not a number")
    value = int(text)
    if value > maximum:
        raise _bad(label, f"{what} {value} exceeds {maximum}")
    return value


def _measurement(resource: Any, label: str) -> RimMeasurement:
    kind = resource.get("type")
    if kind != "Measurement":
        raise _bad(label, f"Resource type {kind!r} is not 'Measurement'")
    index = _number(_attr(resource, "index", label), label, "index", 0xFE)
    active_text = _attr(resource, "active", label)
    if active_text not in ("True", "False"):
        raise _bad(label, f"index {index}: active {active_text!r} is not True or False")
    count = _number(_attr(resource, "alternatives", label), label, "alternatives", MAX_ALTERNATIVES)
    size = _number(_attr(resource, "size", label), label, "size", 0xFFFF)
    if count == 0:
        raise _bad(label, f"index {index} has no alternatives")
    values = []
    for i in range(count):
        text = _attr(resource, f"{HASH_NS}Hash{i}", label)
        try:
            value = bytes.fromhex(text)
        except ValueError as exc:
            raise _bad(label, f"index {index} Hash{i} is not hex") from exc
        if len(value) != size:
            raise _bad(label, f"index {index} Hash{i} has {len(value)} bytes, size says {size}")
        values.append(value)
    return RimMeasurement(
        component=label,
        name=resource.get("name") or "",
        index=index + SPDM_INDEX_OFFSET,
        values=tuple(values),
        active=active_text == "True",
        size=size,
    )


def _certificates(root: Any, label: str) -> tuple[x509.Certificate, ...]:
    # The first enveloped Signature is the one signxml verifies (location "./"): its chain only.
    signature = root.find(f"{DSIG_NS}Signature")
    if signature is None:
        return ()
    certs = []
    for element in signature.findall(
        f"{DSIG_NS}KeyInfo/{DSIG_NS}X509Data/{DSIG_NS}X509Certificate"
    ):
        text = "".join((element.text or "").split())
        try:
            certs.append(x509.load_der_x509_certificate(base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError, x509.InvalidVersion) as exc:
            raise _bad(label, f"an X509Certificate does not decode: {exc}") from exc
    return tuple(certs)


def _read(root: Any, label: str, certificates: tuple[x509.Certificate, ...]) -> Rim:
    if root.tag != f"{SWID_NS}SoftwareIdentity":
        raise _bad(label, f"root element is {root.tag!r}, not a SWID SoftwareIdentity")
    meta = root.find(f"{SWID_NS}Meta")
    payload = root.find(f"{SWID_NS}Payload")
    if meta is None or payload is None:
        raise _bad(label, "it lacks Meta or Payload")
    version = _attr(meta, "colloquialVersion", label).strip()
    if not version:
        raise _bad(label, "colloquialVersion is empty")
    measurements: list[RimMeasurement] = []
    seen: set[int] = set()
    for resource in payload:
        if not isinstance(resource.tag, str):
            continue  # a comment or processing instruction
        if resource.tag != f"{SWID_NS}Resource":
            raise _bad(label, f"unexpected element {resource.tag!r} in Payload")
        measurement = _measurement(resource, label)
        if measurement.index in seen:
            raise _bad(label, f"index {measurement.index - SPDM_INDEX_OFFSET} is listed twice")
        seen.add(measurement.index)
        measurements.append(measurement)
    if not measurements:
        raise _bad(label, "it has no measurements")
    return Rim(
        label=label,
        tag_id=root.get("tagId") or "",
        product=root.get("name") or "",
        version=version,
        measurements=tuple(measurements),
        certificates=certificates,
    )


def load_rim(data: bytes, label: str = "RIM") -> Rim:
    """Parse a RIM (``label`` names it in messages); nothing is verified."""
    root = _parse_xml(bytes(data), label)
    return _read(root, label, _certificates(root, label))


def parse_rim(data: bytes, component: str) -> list[RimMeasurement]:
    """The reference measurements of a RIM, unverified (see :func:`verify_rim`)."""
    return list(load_rim(data, component).measurements)


def verify_rim(
    data: bytes,
    *,
    label: str = "RIM",
    roots: Sequence[x509.Certificate] | None = None,
    now: datetime | None = None,
) -> VerifiedRim:
    """Verify a RIM's chain (``gpu-rim-chain``) and enveloped signature (``gpu-rim-signature``)."""
    when = now if now is not None else datetime.now(UTC)
    anchors = list(roots) if roots is not None else pinned_rim_roots()
    parsed = load_rim(data, label)
    if not parsed.certificates:
        raise VerificationError("gpu-rim-chain", f"{label} carries no signing certificate")
    root = verify_chain(parsed.certificates, anchors, now=when, check="gpu-rim-chain")
    signer = parsed.certificates[0]
    config = SignatureConfiguration(
        location="./",
        expect_references=1,
        signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
        verification_time=when,
    )
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    try:
        result = XMLVerifier().verify(data, x509_cert=signer, parser=parser, expect_config=config)
    except (SignXMLException, etree.LxmlError, ValueError) as exc:
        # signxml re-parses and schema-checks the Signature element; what it rejects, lxml
        # reports as its own errors (DocumentInvalid, ...): all mean "does not verify".
        raise VerificationError(
            "gpu-rim-signature",
            f"{label}: XML signature does not verify with "
            f"{signer.subject.rfc4514_string()} ({exc})",
            hint="the RIM must be the file NVIDIA signed, byte for byte",
        ) from exc
    signed = result[0] if isinstance(result, list) else result
    if signed.signed_xml is None or signed.signed_xml.tag != f"{SWID_NS}SoftwareIdentity":
        raise VerificationError(
            "gpu-rim-signature", f"{label}: the signature does not cover the SoftwareIdentity tag"
        )
    rim = _read(signed.signed_xml, label, parsed.certificates)
    return VerifiedRim(rim=rim, signer=signer, root=root)


def _component(rim: Rim, report: GpuReport) -> str:
    version = rim.version.lower()
    if version == report.opaque.driver_version.lower():
        return DRIVER
    if version == report.opaque.vbios_version.lower():
        return VBIOS
    raise VerificationError(
        "gpu-rim-version",
        f"{rim.label} is for version {rim.version}; the report's driver is "
        f"{report.opaque.driver_version} and its VBIOS {report.opaque.vbios_version}",
        hint="use the RIMs published for exactly this driver and VBIOS",
    )


def check_rims(report: GpuReport, rims: Sequence[VerifiedRim]) -> list[tuple[str, str]]:
    """Compare ``report`` with a verified driver RIM and VBIOS RIM; the checks that passed."""
    by_component: dict[str, Rim] = {}
    for verified in rims:
        rim = verified.rim
        component = _component(rim, report)
        if component in by_component:
            raise VerificationError(
                "gpu-rim-coverage",
                f"{by_component[component].label} and {rim.label} are both {component} RIMs",
            )
        by_component[component] = rim
    passed = [
        (
            "gpu-rim-version",
            ", ".join(
                f"{c} {by_component[c].version} ({by_component[c].label})" for c in by_component
            ),
        )
    ]
    missing = [c for c in (DRIVER, VBIOS) if c not in by_component]
    if missing:
        versions = {DRIVER: report.opaque.driver_version, VBIOS: report.opaque.vbios_version}
        raise VerificationError(
            "gpu-rim-coverage",
            "no " + " and no ".join(f"{c} RIM (report has {versions[c]})" for c in missing),
            hint="the driver RIM and the VBIOS RIM together cover every measurement index",
        )

    golden: dict[int, RimMeasurement] = {}
    owner: dict[int, str] = {}
    described: set[int] = set()
    for component in (DRIVER, VBIOS):
        for ref in by_component[component].measurements:
            described.add(ref.index)
            if not ref.active:
                continue
            if ref.index in golden:
                raise VerificationError(
                    "gpu-rim-coverage",
                    f"index {ref.index - SPDM_INDEX_OFFSET} is active in both the driver "
                    f"and the VBIOS RIM",
                )
            golden[ref.index] = ref
            owner[ref.index] = component
    runtime = report.measurements
    skipped: list[int] = []
    if report.opaque.nvdec0_status == NVDEC_STATUS_DISABLED and NVDEC0_BLOCK in golden:
        skipped.append(NVDEC0_BLOCK)
    gaps = [f"report block {i} is described by no RIM" for i in sorted(set(runtime) - described)]
    gaps += [
        f"active index {i - SPDM_INDEX_OFFSET} ({golden[i].name}) is missing from the report"
        for i in sorted(set(golden) - set(runtime) - set(skipped))
    ]
    if gaps:
        raise VerificationError("gpu-rim-coverage", "; ".join(gaps))
    passed.append(
        (
            "gpu-rim-coverage",
            f"{len(runtime)} report blocks described, {len(golden)} active reference indices",
        )
    )

    mismatched: list[str] = []
    for index in sorted(golden):
        if index in skipped:
            continue
        ref, value = golden[index], runtime[index]
        if len(value) != ref.size or not any(hmac.compare_digest(value, v) for v in ref.values):
            mismatched.append(
                f"block {index} ({owner[index]} RIM {ref.component}, {ref.name}): "
                f"report {value.hex()}, "
                f"RIM {' or '.join(v.hex() for v in ref.values)}"
            )
    if mismatched:
        raise VerificationError(
            "gpu-rim", "; ".join(mismatched), hint="the GPU does not run the firmware its RIMs name"
        )
    note = f" (block {NVDEC0_BLOCK} skipped: NVDEC0 disabled)" if skipped else ""
    passed.append(("gpu-rim", f"{len(golden) - len(skipped)} active measurements match{note}"))
    return passed
