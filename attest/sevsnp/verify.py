"""SEV-SNP verification: report signature, AMD certificate chain, TCB and chip-id binding.

Trust comes only from ``roots`` (default: the AMD ARKs pinned in ``attest/roots``); certificates a
caller supplies are candidates, never anchors. The clock (``now``) and the network (``fetcher``)
are parameters: nothing here reads the wall clock when given a time, or reaches the network unless
a fetcher is passed.
"""

from __future__ import annotations

import hmac
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from attest.crl import load_crl, validity_problem
from attest.errors import ParseError, VerificationError
from attest.nvgpu._chain import public_key
from attest.sevsnp.abi import (
    PRODUCTS,
    SIGNATURE_ALGO_ECDSA_P384_SHA384,
    Report,
    TcbVersion,
)

__all__ = [
    "CHECKS",
    "OID_AMD_BLSPL",
    "OID_AMD_FMCSPL",
    "OID_AMD_HWID",
    "OID_AMD_PRODUCT_NAME",
    "OID_AMD_SNPSPL",
    "OID_AMD_TEESPL",
    "OID_AMD_UCODESPL",
    "VerifiedReport",
    "load_certificates",
    "pinned_intermediates",
    "pinned_roots",
    "verify_report",
]

# The checks verify_report performs, in order; each failure names one of them.
CHECKS = ("signature", "chain", "product", "validity", "crl", "tcb", "chip_id")

# AMD VCEK/VLEK certificate extensions (AMD "Versioned Chip Endorsement Key" spec).
OID_AMD_STRUCT_VERSION = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.1")
OID_AMD_PRODUCT_NAME = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.2")
OID_AMD_BLSPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.1")
OID_AMD_TEESPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.2")
OID_AMD_SNPSPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.3")
OID_AMD_UCODESPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.8")
OID_AMD_FMCSPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.9")
OID_AMD_HWID = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4")
OID_AMD_CSP_ID = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.5")

_TCB_OIDS: tuple[tuple[str, x509.ObjectIdentifier], ...] = (
    ("bootloader", OID_AMD_BLSPL),
    ("tee", OID_AMD_TEESPL),
    ("snp", OID_AMD_SNPSPL),
    ("microcode", OID_AMD_UCODESPL),
)

# The AMD files in attest/roots (other vendors' roots live beside them).
AMD_ROOT_FILES = tuple(
    f"{product.lower()}_{key}_chain.pem" for product in PRODUCTS for key in ("vcek", "vlek")
)
PSS_SALT_LENGTH = 48
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=PSS_SALT_LENGTH)
_PRODUCT_RE = re.compile(r"\b(Milan|Genoa|Turin)\b")
_SIGNING_CN = {"vcek": "SEV-VCEK", "vlek": "SEV-VLEK"}
_INTERMEDIATE_NAME = {"vcek": "ASK", "vlek": "ASVK"}


@dataclass(frozen=True)
class VerifiedReport:
    """A report whose signature, chain and TCB binding verified. Only this type is trustworthy."""

    report: Report
    product: str
    signing_cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    checks: tuple[tuple[str, str], ...]


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Certificates from PEM (one or many) or DER bytes. Raises ``ParseError`` only."""
    if not data or not data.strip():
        raise ParseError("no certificate data")
    with warnings.catch_warnings():
        # AMD issues VCEKs with serial number 0; RFC 5280 frowns, AMD's chain is still valid.
        warnings.filterwarnings("ignore", message=".*serial number.*")
        try:
            if b"-----BEGIN" in data:
                certs = x509.load_pem_x509_certificates(data)
            else:
                certs = [x509.load_der_x509_certificate(data)]
        except (ValueError, x509.InvalidVersion) as exc:
            raise ParseError(f"cannot parse certificate: {exc}") from exc
    if not certs:
        raise ParseError("no certificate found")
    return list(certs)


@cache
def _pinned_material() -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
    roots: list[x509.Certificate] = []
    intermediates: list[x509.Certificate] = []
    folder = resources.files("attest").joinpath("roots")
    for name in AMD_ROOT_FILES:
        for cert in load_certificates(folder.joinpath(name).read_bytes()):
            target = roots if cert.issuer == cert.subject else intermediates
            if cert not in target:
                target.append(cert)
    return tuple(roots), tuple(intermediates)


def pinned_roots() -> list[x509.Certificate]:
    """The AMD ARKs (Milan, Genoa, Turin) shipped inside the package."""
    return list(_pinned_material()[0])


def pinned_intermediates() -> list[x509.Certificate]:
    """The AMD ASKs and ASVKs shipped inside the package, used when a bundle omits them."""
    return list(_pinned_material()[1])


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = attrs[0].value if attrs else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _product_of(cert: x509.Certificate) -> str | None:
    match = _PRODUCT_RE.search(_cn(cert.subject))
    return match.group(1) if match else None


def _signed_by(
    cert: x509.Certificate | x509.CertificateRevocationList, issuer: x509.Certificate
) -> str | None:
    """None when ``issuer`` signed ``cert`` with RSASSA-PSS/SHA-384/salt 48, else why not."""
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        return (
            f"signature algorithm is {cert.signature_algorithm_oid.dotted_string}, not RSASSA-PSS"
        )
    try:
        hash_alg = cert.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        return f"unsupported signature hash: {exc}"
    if not isinstance(hash_alg, hashes.SHA384):
        return "signature hash is not SHA-384"
    key = public_key(issuer)
    if not isinstance(key, rsa.RSAPublicKey):
        return "issuer key is not RSA"
    tbs = (
        cert.tbs_certlist_bytes
        if isinstance(cert, x509.CertificateRevocationList)
        else cert.tbs_certificate_bytes
    )
    try:
        key.verify(cert.signature, tbs, _PSS, hashes.SHA384())
    except InvalidSignature:
        return f"signature does not verify under {_cn(issuer.subject)!r}"
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return True  # AMD's chain predates strict profiles; the pinned root decides trust
    except ValueError:
        return False  # extensions that do not parse make no CA
    return bc.ca


def _der_small_int(raw: bytes) -> int | None:
    """A DER INTEGER in 0..255 as AMD encodes SPL extensions, or None when it is not one."""
    if len(raw) < 3 or raw[0] != 0x02 or raw[1] != len(raw) - 2 or raw[1] > 2:
        return None
    value = int.from_bytes(raw[2:], "big", signed=True)
    return value if 0 <= value <= 0xFF else None


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        value = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    if isinstance(value, x509.UnrecognizedExtension):
        return value.value
    return None


def _cert_tcb(cert: x509.Certificate, product: str) -> TcbVersion:
    parts: dict[str, int] = {}
    oids = list(_TCB_OIDS)
    if product == "Turin":
        oids.append(("fmc", OID_AMD_FMCSPL))
    for name, oid in oids:
        raw = _extension(cert, oid)
        if raw is None:
            raise VerificationError(
                "tcb", f"signing certificate lacks TCB extension {oid.dotted_string} ({name})"
            )
        value = _der_small_int(raw)
        if value is None:
            raise VerificationError(
                "tcb", f"TCB extension {oid.dotted_string} ({name}) is not a small INTEGER"
            )
        parts[name] = value
    return TcbVersion(
        bootloader=parts["bootloader"],
        tee=parts["tee"],
        snp=parts["snp"],
        microcode=parts["microcode"],
        fmc=parts.get("fmc"),
    )


def _hwid(cert: x509.Certificate) -> bytes | None:
    raw = _extension(cert, OID_AMD_HWID)
    if raw is None:
        return None
    # KDS has shipped both the raw bytes and a DER OCTET STRING around them.
    if len(raw) in (66, 10) and raw[0] == 0x04 and raw[1] == len(raw) - 2:
        return raw[2:]
    return raw


def _check_signature(report: Report, cert: x509.Certificate) -> None:
    key = public_key(cert)
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerificationError("signature", "signing certificate key is not ECDSA P-384")
    r = int.from_bytes(report.signature_r, "little")
    s = int.from_bytes(report.signature_s, "little")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes(), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise VerificationError(
            "signature",
            f"report signature does not verify under {report.signing_key.upper()} "
            f"{_cn(cert.subject)!r}",
        ) from None


def _is_signing_cert(cert: x509.Certificate) -> bool:
    key = public_key(cert)
    return isinstance(key, ec.EllipticCurvePublicKey)


def _pick_signing_cert(
    report: Report, certs: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    candidates = [c for c in certs if _is_signing_cert(c)]
    wanted = _SIGNING_CN.get(report.signing_key)
    for cert in candidates:
        if _cn(cert.subject) == wanted:
            return cert
    return candidates[0] if len(candidates) == 1 else None


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def verify_report(
    report: Report,
    certs: Sequence[x509.Certificate],
    *,
    roots: Sequence[x509.Certificate] | None = None,
    now: datetime | None = None,
    crl: bytes | None = None,
    crls: Sequence[bytes] = (),
    fetcher: Callable[[str], bytes] | None = None,
    product: str | None = None,
    on_check: Callable[[str, str], None] | None = None,
) -> VerifiedReport:
    """Verify signature, chain to a pinned ARK, product, validity, optional CRL, TCB and chip id.

    ``certs`` holds at least the signing certificate (VCEK or VLEK); a missing ASK/ASVK is taken
    from the pinned set. ``roots=None`` means the pinned AMD ARKs. ``fetcher(url) -> DER`` is used
    only when no signing certificate is supplied (VCEK from AMD's KDS; see ``attest.sevsnp.kds``).
    ``product`` is a hint for that fetch when the report (v2) carries no CPUID. ``on_check(name,
    detail)`` is told of each check as it passes. Raises ``VerificationError`` naming the check.
    ``crl`` is one CRL that must be the chain's root's; ``crls`` is a set (one per product) from
    which the one the pinned root issued is used (given any, the chain must have one).
    """
    at = _now(now)
    passed: list[tuple[str, str]] = []

    def ok(name: str, detail: str) -> None:
        passed.append((name, detail))
        if on_check is not None:
            on_check(name, detail)

    if report.signing_key == "none":
        raise VerificationError(
            "signature", "SIGNER_INFO.SIGNING_KEY is none: the report is unsigned"
        )
    if report.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise VerificationError(
            "signature",
            f"SIGNATURE_ALGO {report.signature_algo} is not ECDSA P-384 with SHA-384 (1)",
        )

    signing = _pick_signing_cert(report, certs)
    if signing is None and fetcher is not None and report.signing_key == "vcek":
        signing = _fetch_vcek(report, fetcher, product or report.cpuid_product())
    if signing is None:
        raise VerificationError(
            "chain", f"no {report.signing_key.upper()} certificate supplied (and none fetched)"
        )

    _check_signature(report, signing)
    ok("signature", f"ECDSA P-384/SHA-384 by {report.signing_key.upper()} {_cn(signing.subject)!r}")

    # Chain: signing cert -> ASK/ASVK -> pinned ARK.
    kind = _cn(signing.subject)
    if kind != _SIGNING_CN[report.signing_key]:
        raise VerificationError(
            "chain",
            f"SIGNER_INFO.SIGNING_KEY is {report.signing_key} "
            f"but the signing certificate is {kind!r}",
        )
    trust = list(roots) if roots is not None else pinned_roots()
    inter_name = _INTERMEDIATE_NAME[report.signing_key]
    supplied = [c for c in certs if c is not signing and c.issuer != c.subject]
    intermediate: x509.Certificate | None = None
    why = f"no {inter_name} named {_cn(signing.issuer)!r} supplied or pinned"
    for cand in [*supplied, *pinned_intermediates()]:
        if cand.subject != signing.issuer:
            continue
        problem = _signed_by(signing, cand) or (None if _is_ca(cand) else "not a CA")
        if problem is None:
            intermediate = cand
            break
        why = f"{inter_name} {_cn(cand.subject)!r}: {problem}"
    if intermediate is None:
        raise VerificationError(
            "chain", f"{report.signing_key.upper()} does not chain to an {inter_name}: {why}"
        )
    root: x509.Certificate | None = None
    why = f"no trusted root named {_cn(intermediate.issuer)!r}"
    for cand in trust:
        if cand.subject != intermediate.issuer:
            continue
        problem = _signed_by(intermediate, cand)
        if problem is None:
            root = cand
            break
        why = f"root {_cn(cand.subject)!r}: {problem}"
    if root is None:
        raise VerificationError("chain", f"{inter_name} does not chain to a trusted ARK: {why}")
    root_key = root.public_key()
    for cand in certs:
        if (
            cand.issuer == cand.subject
            and cand.subject == root.subject
            and public_key(cand) != root_key
        ):
            raise VerificationError(
                "chain", f"supplied {_cn(cand.subject)!r} is not the pinned root"
            )
    anchor = "pinned" if roots is None else "caller-supplied"
    ok(
        "chain",
        f"{_cn(signing.subject)} -> {_cn(intermediate.subject)} -> {_cn(root.subject)} ({anchor}); "
        "RSASSA-PSS SHA-384 salt 48",
    )

    # Product: from the chain, cross-checked against CPUID (v3+) and the VCEK's product name.
    chain_product = _product_of(root) or _product_of(intermediate)
    if chain_product is None:
        raise VerificationError("product", f"cannot tell the product from {_cn(root.subject)!r}")
    sources = [f"certificates: {chain_product}"]
    if report.version >= 3:
        cpu = report.cpuid_product()
        fam, mod = report.cpuid_fam_id, report.cpuid_mod_id
        if cpu != chain_product:
            raise VerificationError(
                "product",
                f"CPUID family 0x{fam or 0:02x} model 0x{mod or 0:02x} is {cpu or 'unknown'}, "
                f"certificates are {chain_product}",
            )
        sources.append(f"CPUID 0x{fam or 0:02x}/0x{mod or 0:02x}: {cpu}")
    name_raw = _extension(signing, OID_AMD_PRODUCT_NAME)
    if name_raw is not None and len(name_raw) > 2:
        name = name_raw[2:].decode("ascii", "replace")
        if not name.startswith(chain_product):
            raise VerificationError(
                "product", f"signing certificate product name {name!r} is not {chain_product}"
            )
        sources.append(f"productName {name}")
    if product is not None and product != chain_product:
        raise VerificationError(
            "product", f"expected product {product}, certificates are {chain_product}"
        )
    ok("product", "; ".join(sources))

    chain = (signing, intermediate, root)
    for cert in chain:
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise VerificationError(
                "validity",
                f"{_cn(cert.subject)!r} is valid {cert.not_valid_before_utc.isoformat()} to "
                f"{cert.not_valid_after_utc.isoformat()}, not at {at.isoformat()}",
            )
    ok("validity", f"all certificates valid at {at.isoformat()}")

    if crl is not None:
        ok("crl", _check_crl(crl, chain, root, at))
    elif crls:
        mine = [c for c in crls if load_crl(c, check="crl").issuer == root.subject]
        if not mine:
            raise VerificationError(
                "crl",
                f"no CRL given is issued by {_cn(root.subject)!r}, the root this chain ends in",
                hint="add that product's CRL (AMD KDS: /vcek/v1/<product>/crl)",
            )
        # Every CRL this root issued speaks (AMD's VCEK and VLEK CRLs share the ARK): a chain
        # certificate revoked by any of them is revoked.
        ok("crl", "; ".join(_check_crl(c, chain, root, at) for c in mine))

    cert_tcb = _cert_tcb(signing, chain_product)
    reported = TcbVersion.decode(report.reported_tcb, chain_product)
    if cert_tcb != reported:
        raise VerificationError(
            "tcb",
            f"REPORTED_TCB {reported} does not equal "
            f"the {report.signing_key.upper()}'s TCB {cert_tcb}",
        )
    ok("tcb", f"REPORTED_TCB equals certificate TCB ({reported})")

    if report.signing_key == "vcek":
        if report.mask_chip_key:
            ok("chip_id", "not checked: SIGNER_INFO.MASK_CHIP_KEY is set")
        else:
            hwid = _hwid(signing)
            if hwid is None:
                raise VerificationError("chip_id", "VCEK lacks the hwID extension")
            expected = report.chip_id[: len(hwid)] if len(hwid) == 8 else report.chip_id
            if not hmac.compare_digest(hwid, expected):
                raise VerificationError(
                    "chip_id",
                    f"CHIP_ID {report.chip_id.hex()} does not equal VCEK hwID {hwid.hex()}",
                )
            ok("chip_id", "CHIP_ID equals the VCEK hwID")
    else:
        ok("chip_id", "not applicable: VLEK is not chip-specific")

    return VerifiedReport(
        report=report,
        product=chain_product,
        signing_cert=signing,
        chain=chain,
        checks=tuple(passed),
    )


def _check_crl(
    data: bytes, chain: Sequence[x509.Certificate], root: x509.Certificate, at: datetime
) -> str:
    crl = load_crl(data, check="crl")
    if crl.issuer != root.subject:
        raise VerificationError(
            "crl", f"CRL issuer {_cn(crl.issuer)!r} is not {_cn(root.subject)!r}"
        )
    problem = _signed_by(crl, root)
    if problem is not None:
        raise VerificationError("crl", f"CRL {problem}")
    problem = validity_problem(crl, at)
    if problem is not None:
        raise VerificationError(
            "crl",
            f"CRL {problem}",
            hint="fetch the product's current CRL from AMD KDS (/vcek/v1/<product>/crl, and "
            "/vlek/v1/<product>/crl for VLEK-signed reports)",
        )
    for cert in chain:
        if cert.issuer != crl.issuer or cert.issuer == cert.subject:
            continue
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise VerificationError(
                "crl", f"{_cn(cert.subject)!r} (serial {cert.serial_number}) is revoked"
            )
    return f"not revoked per CRL of {crl.last_update_utc.date().isoformat()}"


def _fetch_vcek(
    report: Report, fetcher: Callable[[str], bytes], product: str | None
) -> x509.Certificate:
    from attest.sevsnp.kds import vcek_url  # only the fetch path needs URLs

    if product not in PRODUCTS:
        raise VerificationError(
            "product",
            "cannot fetch a VCEK: the product is unknown (v2 report without a product hint)",
        )
    url = vcek_url(product, report.chip_id, TcbVersion.decode(report.reported_tcb, product))
    try:
        certs = load_certificates(fetcher(url))
    except ParseError as exc:
        raise VerificationError("chain", f"fetched VCEK cannot be parsed: {exc}") from exc
    return certs[0]
