"""Intel TDX collateral: TCB Info and QE Identity, loaded from operator-supplied files.

The files are what Intel's PCS (API v4) serves, saved as they are::

    tcb_info.json          GET /tdx/certification/v4/tcb?fmspc=..  {"tcbInfo": {..}, "signature"}
    qe_identity.json       GET /tdx/certification/v4/qe/identity   {"enclaveIdentity": {..}, ..}
    tcb_signing_chain.pem  the TCB-Info-Issuer-Chain header: "Intel SGX TCB Signing", then the root
    pck_crl.der            optional: GET /sgx/certification/v4/pckcrl?ca=platform (or processor,
                           whichever CA issued the PCK certificate); PEM as pck_crl.pem
    root_ca_crl.der        optional: the Intel SGX Root CA's CRL (the CRL distribution point of
                           the PCK CA certificate); PEM as root_ca_crl.pem

CRLs may be DER, PEM or hex-encoded DER (what a PCCS serves).

Each signature is ECDSA P-256 / SHA-256 (r || s, hex) over the exact bytes of the inner object as
served, so the signed bytes are cut from the file, never re-serialized. Nothing here uses a network.

:func:`evaluate_collateral` follows Intel's Quote Verification Library (QVL, its section 4.1.2.4
steps); the first failure raises :class:`VerificationError` naming the check:

``tdx-collateral-chain``       the signing chain is one "Intel SGX TCB Signing" certificate issued
                               directly by a pinned Intel SGX Root CA, valid at ``now`` (a PCK
                               certificate under the same root must never be able to sign TCB info);
``tdx-tcb-info-signature``     the TCB info signature verifies with the TCB signing key;
``tdx-qe-identity-signature``  the QE identity signature verifies with the TCB signing key;
``tdx-collateral-validity``    ``issueDate <= now <= nextUpdate`` for both documents;
``tdx-crl``                    when the collateral has CRLs (both or neither): the PCK CRL is
                               issued and signed by the CA in the quote's PCK chain that issued
                               the PCK certificate, the Root CA CRL by the pinned root that CA
                               chains to; both are current (``thisUpdate <= now <= nextUpdate``);
                               neither the PCK certificate, nor its CA, nor the TCB signing
                               certificate is revoked;
``tdx-fmspc``                  FMSPC and PCE-ID of the PCK certificate equal the TCB info's;
``tdx-module-identity``        MRSIGNERSEAM and SEAM attributes match the TDX module identity
                               (``tdxModuleIdentities`` "TDX_<major>" when TEE_TCB_SVN[1] > 0);
``tdx-qe-identity``            the QE report's MRSIGNER, ISVPRODID, masked MISCSELECT and
                               ATTRIBUTES match, and its ISVSVN reaches a QE TCB level;
``tdx-tcb-level``              a TCB level applies (SGX components and PCESVN from the PCK
                               certificate, TDX components from TEE_TCB_SVN), and the TDX module's
                               ISVSVN reaches a module TCB level;
``tdx-tcb-revoked``            the resulting status is Revoked: never acceptable.

The result is a :class:`TcbEvaluation`: a status and its advisory IDs. Which statuses are
acceptable is policy (:func:`check_tcb_status`; default UpToDate only).

Without CRLs in the collateral, revocation is not checked and :attr:`TcbEvaluation.revocation`
is None (a policy's ``require_collateral`` then refuses the quote). Not evaluated here: QVL's TD
1.5 relaunch advice from TEE_TCB_SVN_2 (``TDRelaunchAdvised``), which only ever
downgrades an otherwise acceptable status to "relaunch the TD".
"""

from __future__ import annotations

import enum
import hmac
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attest.crl import load_crl, validity_problem
from attest.errors import ParseError, PolicyError, VerificationError
from attest.nvgpu._chain import issued_by, public_key
from attest.nvgpu.verify import verify_chain
from attest.tdx.abi import TEE_TYPE_TDX, Quote
from attest.tdx.pck import PckExtensions, pck_extensions

__all__ = [
    "COLLATERAL_FILES",
    "DEFAULT_ACCEPTED_TCB_STATUSES",
    "PCK_CRL_FILES",
    "QE_IDENTITY_FILE",
    "ROOT_CA_CRL_FILES",
    "TCB_INFO_FILE",
    "TCB_SIGNING_CHAIN_FILE",
    "EnclaveTcbLevel",
    "QeIdentity",
    "TcbEvaluation",
    "TcbInfo",
    "TcbLevel",
    "TcbStatus",
    "TdxCollateral",
    "TdxModule",
    "check_tcb_status",
    "evaluate_collateral",
    "load_collateral_dir",
    "load_qe_identity",
    "load_tcb_info",
    "load_tcb_signing_chain",
]

TCB_INFO_FILE = "tcb_info.json"
QE_IDENTITY_FILE = "qe_identity.json"
TCB_SIGNING_CHAIN_FILE = "tcb_signing_chain.pem"
COLLATERAL_FILES = (TCB_INFO_FILE, QE_IDENTITY_FILE, TCB_SIGNING_CHAIN_FILE)
#: Optional, both or neither: the CRL of the CA that issued the PCK certificate (PCS
#: ``/sgx/certification/v4/pckcrl?ca=platform|processor``) and the Intel SGX Root CA's CRL.
PCK_CRL_FILES = ("pck_crl.der", "pck_crl.pem")
ROOT_CA_CRL_FILES = ("root_ca_crl.der", "root_ca_crl.pem")
#: Intel's PCS documents are a few tens of KiB; anything far larger is not one.
MAX_COLLATERAL_SIZE = 1 << 20
TCB_SIGNING_CN = "Intel SGX TCB Signing"
ROOT_PEM = "intel_sgx_root_ca.pem"
TCB_INFO_ID = "TDX"
TCB_INFO_VERSION = 3
QE_IDENTITY_ID = "TD_QE"
QE_IDENTITY_VERSION = 2
COMPONENTS = 16
FMSPC_SIZE = 6
PCE_ID_SIZE = 2
MRSIGNER_SEAM_SIZE = 48
SEAM_ATTRIBUTES_SIZE = 8
QE_MRSIGNER_SIZE = 32
QE_ATTRIBUTES_SIZE = 16
MISCSELECT_SIZE = 4
SIGNATURE_SIZE = 64
# TEE_TCB_SVN bytes: [0] TDX module ISVSVN (minor), [1] TDX module major version.
TEE_TCB_SVN_MODULE_SVN = 0
TEE_TCB_SVN_MODULE_MAJOR = 1
# When a module identity applies, the first two TEE_TCB_SVN bytes are the module's, not TCB levels'.
MODULE_BYTES = 2


class TcbStatus(enum.StrEnum):
    """Intel's TCB statuses, as spelled in the PCS documents."""

    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"


#: Statuses a QE identity or TDX module identity level may carry.
IDENTITY_STATUSES = frozenset({TcbStatus.UP_TO_DATE, TcbStatus.OUT_OF_DATE, TcbStatus.REVOKED})
DEFAULT_ACCEPTED_TCB_STATUSES: tuple[TcbStatus, ...] = (TcbStatus.UP_TO_DATE,)


@dataclass(frozen=True, slots=True)
class TdxCollateral:
    """Operator-supplied DCAP collateral files: TCB info, QE identity, their issuer chain, and
    (both or neither) the PCK CRL and the Intel SGX Root CA CRL."""

    tcb_info: bytes
    qe_identity: bytes
    issuer_chain_pem: bytes
    pck_crl: bytes | None = None
    root_ca_crl: bytes | None = None


@dataclass(frozen=True, slots=True)
class TcbLevel:
    """One platform TCB level: at or above these SVNs, the platform has ``status``."""

    sgx_components: tuple[int, ...]
    pce_svn: int
    tdx_components: tuple[int, ...]
    status: TcbStatus
    date: datetime
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EnclaveTcbLevel:
    """A QE identity or TDX module identity level: ISVSVN at or above ``isv_svn``."""

    isv_svn: int
    status: TcbStatus
    date: datetime
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TdxModule:
    """``tdxModule`` or one of ``tdxModuleIdentities`` (``levels`` empty for the former)."""

    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    levels: tuple[EnclaveTcbLevel, ...]


@dataclass(frozen=True, slots=True)
class TcbInfo:
    """A TDX TCB info document; ``body`` is the signed bytes exactly as served."""

    body: bytes
    signature: bytes
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_evaluation_data_number: int
    tdx_module: TdxModule
    tdx_module_identities: tuple[TdxModule, ...]
    levels: tuple[TcbLevel, ...]


@dataclass(frozen=True, slots=True)
class QeIdentity:
    """A TD_QE enclave identity document; ``body`` is the signed bytes exactly as served."""

    body: bytes
    signature: bytes
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isv_prod_id: int
    levels: tuple[EnclaveTcbLevel, ...]


@dataclass(frozen=True, slots=True)
class TcbEvaluation:
    """What genuine collateral says about this quote's platform."""

    status: TcbStatus
    advisory_ids: tuple[str, ...]
    platform_status: TcbStatus
    module_status: TcbStatus | None
    qe_status: TcbStatus
    tcb_date: datetime
    fmspc: bytes
    tcb_evaluation_data_number: int
    revocation: str | None = None
    """What the CRLs showed (``tdx-crl``'s detail); None when the collateral had none."""

    def describe(self) -> str:
        """One line: status, TCB date, FMSPC, evaluation data number, advisories."""
        line = (
            f"{self.status} (TCB date {self.tcb_date.date().isoformat()}, "
            f"FMSPC {self.fmspc.hex()}, TCB evaluation data {self.tcb_evaluation_data_number})"
        )
        if self.advisory_ids:
            line += f"; advisories {', '.join(self.advisory_ids)}"
        return line


# --- loading: bytes to structure, ParseError only ---------------------------------------------


def _bad(document: str, what: str) -> ParseError:
    return ParseError(
        f"{document} is malformed: {what}",
        hint="save the PCS response body unchanged (Intel PCS API v4, TDX endpoints)",
    )


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_object, parse_constant=_no_constants)


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _signed_document(data: bytes, key: str, document: str) -> tuple[bytes, dict[str, Any], bytes]:
    """Split ``{"<key>": {...}, "signature": "<hex>"}`` into the exact bytes of the inner object
    as served, the inner object decoded, and the signature. Duplicate keys anywhere are refused:
    what is signed and what is read must be the same object."""
    if len(data) > MAX_COLLATERAL_SIZE:
        raise _bad(document, f"{len(data)} bytes is more than {MAX_COLLATERAL_SIZE}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(document, f"not UTF-8 ({exc.reason})") from exc
    members: dict[str, tuple[Any, int, int]] = {}
    try:
        pos = _skip_ws(text, 0)
        if text[pos : pos + 1] != "{":
            raise ValueError("not a JSON object")
        pos = _skip_ws(text, pos + 1)
        while True:
            if text[pos : pos + 1] != '"':
                raise ValueError(f"expected a member name at {pos}")
            name, pos = _DECODER.raw_decode(text, pos)
            pos = _skip_ws(text, pos)
            if text[pos : pos + 1] != ":":
                raise ValueError(f"expected ':' at {pos}")
            start = _skip_ws(text, pos + 1)
            value, end = _DECODER.raw_decode(text, start)
            if name in members:
                raise ValueError(f"duplicate key {name!r}")
            members[name] = (value, start, end)
            pos = _skip_ws(text, end)
            if text[pos : pos + 1] == ",":
                pos = _skip_ws(text, pos + 1)
                continue
            if text[pos : pos + 1] != "}":
                raise ValueError(f"expected ',' or '}}' at {pos}")
            break
        if _skip_ws(text, pos + 1) != len(text):
            raise ValueError("data after the JSON object")
    except (ValueError, RecursionError) as exc:
        raise _bad(document, f"not valid JSON ({exc})") from exc
    if set(members) != {key, "signature"}:
        raise _bad(document, f"expected exactly the members {key!r} and 'signature'")
    inner, start, end = members[key]
    if not isinstance(inner, dict):
        raise _bad(document, f"{key!r} is not an object")
    signature = _hex(members["signature"][0], SIGNATURE_SIZE, document, "signature")
    return text[start:end].encode("utf-8"), inner, signature


def _field(obj: Mapping[str, Any], name: str, document: str) -> Any:
    if name not in obj:
        raise _bad(document, f"missing {name!r}")
    return obj[name]


def _int(value: Any, document: str, what: str, maximum: int = 0xFFFF_FFFF) -> int:
    if type(value) is not int or not 0 <= value <= maximum:
        raise _bad(document, f"{what} must be an integer in 0..{maximum}")
    return value


def _str(value: Any, document: str, what: str) -> str:
    if not isinstance(value, str):
        raise _bad(document, f"{what} must be a string")
    return value


def _hex(value: Any, size: int, document: str, what: str) -> bytes:
    text = _str(value, document, what)
    try:
        raw = bytes.fromhex(text)
    except ValueError as exc:
        raise _bad(document, f"{what} is not hex") from exc
    if len(raw) != size or len(text) != 2 * size:
        raise _bad(document, f"{what} must be {size} bytes of hex")
    return raw


def _time(value: Any, document: str, what: str) -> datetime:
    text = _str(value, document, what)
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _bad(document, f"{what} {text!r} is not an ISO-8601 time") from exc
    if when.tzinfo is None:
        raise _bad(document, f"{what} {text!r} has no time zone")
    return when.astimezone(UTC)


def _list(value: Any, document: str, what: str, *, empty: bool = False) -> list[Any]:
    if not isinstance(value, list) or (not value and not empty):
        raise _bad(document, f"{what} must be a {'' if empty else 'non-empty '}list")
    return value


def _object(value: Any, document: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(document, f"{what} must be an object")
    return value


def _status(value: Any, document: str, what: str, allowed: Iterable[TcbStatus]) -> TcbStatus:
    text = _str(value, document, what)
    allowed = tuple(allowed)
    if text not in {s.value for s in allowed}:
        raise _bad(document, f"{what} {text!r} is not one of {', '.join(s.value for s in allowed)}")
    return TcbStatus(text)


def _advisories(level: Mapping[str, Any], document: str) -> tuple[str, ...]:
    ids = _list(level.get("advisoryIDs", []), document, "advisoryIDs", empty=True)
    return tuple(_str(a, document, "advisory ID") for a in ids)


def _components(value: Any, document: str, what: str) -> tuple[int, ...]:
    items = _list(value, document, what)
    if len(items) != COMPONENTS:
        raise _bad(document, f"{what} has {len(items)} entries, expected {COMPONENTS}")
    return tuple(
        _int(_field(_object(c, document, what), "svn", document), document, f"{what} svn", 0xFF)
        for c in items
    )


def _enclave_levels(
    value: Any, document: str, allowed: Iterable[TcbStatus]
) -> tuple[EnclaveTcbLevel, ...]:
    levels = []
    allowed = tuple(allowed)
    for raw in _list(value, document, "tcbLevels"):
        level = _object(raw, document, "tcbLevel")
        tcb = _object(_field(level, "tcb", document), document, "tcbLevel.tcb")
        levels.append(
            EnclaveTcbLevel(
                isv_svn=_int(_field(tcb, "isvsvn", document), document, "isvsvn", 0xFFFF),
                status=_status(
                    _field(level, "tcbStatus", document), document, "tcbStatus", allowed
                ),
                date=_time(_field(level, "tcbDate", document), document, "tcbDate"),
                advisory_ids=_advisories(level, document),
            )
        )
    # Highest ISVSVN first, so the first level at or below the enclave's SVN is its level.
    return tuple(sorted(levels, key=lambda lv: lv.isv_svn, reverse=True))


def _module(value: Any, document: str, what: str, *, with_levels: bool) -> TdxModule:
    obj = _object(value, document, what)
    return TdxModule(
        id=_str(_field(obj, "id", document), document, f"{what}.id") if with_levels else "",
        mrsigner=_hex(_field(obj, "mrsigner", document), MRSIGNER_SEAM_SIZE, document, "mrsigner"),
        attributes=_hex(
            _field(obj, "attributes", document), SEAM_ATTRIBUTES_SIZE, document, "attributes"
        ),
        attributes_mask=_hex(
            _field(obj, "attributesMask", document),
            SEAM_ATTRIBUTES_SIZE,
            document,
            "attributesMask",
        ),
        levels=_enclave_levels(_field(obj, "tcbLevels", document), document, IDENTITY_STATUSES)
        if with_levels
        else (),
    )


def load_tcb_info(data: bytes) -> TcbInfo:
    """Parse a TDX TCB info file (``{"tcbInfo": ..., "signature": ...}``); nothing is verified."""
    doc = "TCB info"
    body, info, signature = _signed_document(data, "tcbInfo", doc)
    kind = _str(_field(info, "id", doc), doc, "id")
    if kind != TCB_INFO_ID:
        raise _bad(doc, f"id {kind!r} is not 'TDX' (an SGX TCB info cannot evaluate a TDX quote)")
    version = _int(_field(info, "version", doc), doc, "version")
    if version != TCB_INFO_VERSION:
        raise _bad(doc, f"version {version} is not {TCB_INFO_VERSION}")
    if "tdxModuleIdentities" in info:
        identities = tuple(
            _module(m, doc, "tdxModuleIdentities[]", with_levels=True)
            for m in _list(info["tdxModuleIdentities"], doc, "tdxModuleIdentities", empty=True)
        )
    else:
        identities = ()
    levels: list[TcbLevel] = []
    for raw in _list(_field(info, "tcbLevels", doc), doc, "tcbLevels"):
        level = _object(raw, doc, "tcbLevel")
        tcb = _object(_field(level, "tcb", doc), doc, "tcbLevel.tcb")
        levels.append(
            TcbLevel(
                sgx_components=_components(
                    _field(tcb, "sgxtcbcomponents", doc), doc, "sgxtcbcomponents"
                ),
                pce_svn=_int(_field(tcb, "pcesvn", doc), doc, "pcesvn", 0xFFFF),
                tdx_components=_components(
                    _field(tcb, "tdxtcbcomponents", doc), doc, "tdxtcbcomponents"
                ),
                status=_status(_field(level, "tcbStatus", doc), doc, "tcbStatus", TcbStatus),
                date=_time(_field(level, "tcbDate", doc), doc, "tcbDate"),
                advisory_ids=_advisories(level, doc),
            )
        )
    # QVL walks the levels from the highest, ordered by SGX components, then PCESVN, then TDX
    # components; Intel serves them in that order, and sorting keeps a reordered file equivalent.
    levels.sort(key=lambda lv: (lv.sgx_components, lv.pce_svn, lv.tdx_components), reverse=True)
    return TcbInfo(
        body=body,
        signature=signature,
        version=version,
        issue_date=_time(_field(info, "issueDate", doc), doc, "issueDate"),
        next_update=_time(_field(info, "nextUpdate", doc), doc, "nextUpdate"),
        fmspc=_hex(_field(info, "fmspc", doc), FMSPC_SIZE, doc, "fmspc"),
        pce_id=_hex(_field(info, "pceId", doc), PCE_ID_SIZE, doc, "pceId"),
        tcb_evaluation_data_number=_int(
            _field(info, "tcbEvaluationDataNumber", doc), doc, "tcbEvaluationDataNumber"
        ),
        tdx_module=_module(_field(info, "tdxModule", doc), doc, "tdxModule", with_levels=False),
        tdx_module_identities=identities,
        levels=tuple(levels),
    )


def load_qe_identity(data: bytes) -> QeIdentity:
    """Parse a TD_QE identity file (``{"enclaveIdentity": ..., "signature": ...}``)."""
    doc = "QE identity"
    body, ident, signature = _signed_document(data, "enclaveIdentity", doc)
    kind = _str(_field(ident, "id", doc), doc, "id")
    if kind != QE_IDENTITY_ID:
        raise _bad(doc, f"id {kind!r} is not 'TD_QE' (the SGX QE identity does not apply to TDX)")
    version = _int(_field(ident, "version", doc), doc, "version")
    if version != QE_IDENTITY_VERSION:
        raise _bad(doc, f"version {version} is not {QE_IDENTITY_VERSION}")
    return QeIdentity(
        body=body,
        signature=signature,
        version=version,
        issue_date=_time(_field(ident, "issueDate", doc), doc, "issueDate"),
        next_update=_time(_field(ident, "nextUpdate", doc), doc, "nextUpdate"),
        tcb_evaluation_data_number=_int(
            _field(ident, "tcbEvaluationDataNumber", doc), doc, "tcbEvaluationDataNumber"
        ),
        # The report holds MISCSELECT little-endian; the document spells it as a big-endian number.
        miscselect=int.from_bytes(
            _hex(_field(ident, "miscselect", doc), MISCSELECT_SIZE, doc, "miscselect"), "big"
        ),
        miscselect_mask=int.from_bytes(
            _hex(_field(ident, "miscselectMask", doc), MISCSELECT_SIZE, doc, "miscselectMask"),
            "big",
        ),
        attributes=_hex(_field(ident, "attributes", doc), QE_ATTRIBUTES_SIZE, doc, "attributes"),
        attributes_mask=_hex(
            _field(ident, "attributesMask", doc), QE_ATTRIBUTES_SIZE, doc, "attributesMask"
        ),
        mrsigner=_hex(_field(ident, "mrsigner", doc), QE_MRSIGNER_SIZE, doc, "mrsigner"),
        isv_prod_id=_int(_field(ident, "isvprodid", doc), doc, "isvprodid", 0xFFFF),
        levels=_enclave_levels(_field(ident, "tcbLevels", doc), doc, IDENTITY_STATUSES),
    )


def load_tcb_signing_chain(pem: bytes) -> list[x509.Certificate]:
    """The TCB signing chain (PEM, signing certificate first); ParseError when empty or not PEM."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except (ValueError, x509.InvalidVersion) as exc:
        raise ParseError(
            f"TCB signing chain is not valid PEM: {exc}",
            hint="save the TCB-Info-Issuer-Chain header, URL-decoded, as PEM",
        ) from exc
    return certs


def _optional_file(directory: Path, names: tuple[str, ...]) -> tuple[str, bytes] | None:
    """The one of ``names`` present in ``directory`` (name and bytes), or None."""
    present = [name for name in names if (directory / name).exists()]
    if len(present) > 1:
        raise ParseError(
            f"TDX collateral {directory} holds both {' and '.join(present)}",
            hint="keep one copy of each CRL (DER or PEM)",
        )
    if not present:
        return None
    path = directory / present[0]
    try:
        return present[0], path.read_bytes()
    except OSError as exc:
        raise ParseError(f"cannot read TDX collateral {path}: {exc.strerror or exc}") from exc


def load_collateral_dir(directory: Path) -> TdxCollateral:
    """Read the three :data:`COLLATERAL_FILES` from ``directory``, and the two CRLs when present
    (:data:`PCK_CRL_FILES`, :data:`ROOT_CA_CRL_FILES`: both or neither). ParseError if a
    required file is missing or unreadable, or only one CRL is there."""
    contents: list[bytes] = []
    for name in COLLATERAL_FILES:
        path = directory / name
        try:
            contents.append(path.read_bytes())
        except OSError as exc:
            raise ParseError(
                f"cannot read TDX collateral {path}: {exc.strerror or exc}",
                hint=f"the collateral directory holds {', '.join(COLLATERAL_FILES)}",
            ) from exc
    pck_crl = _optional_file(directory, PCK_CRL_FILES)
    root_ca_crl = _optional_file(directory, ROOT_CA_CRL_FILES)
    if (pck_crl is None) != (root_ca_crl is None):
        have, lack = (pck_crl, ROOT_CA_CRL_FILES) if pck_crl else (root_ca_crl, PCK_CRL_FILES)
        assert have is not None
        raise ParseError(
            f"TDX collateral {directory} holds {have[0]} but no {' or '.join(lack)}",
            hint="revocation is checked with both CRLs: the PCK CRL (PCS /sgx/certification/"
            "v4/pckcrl, ca=platform or processor) and the Intel SGX Root CA CRL",
        )
    return TdxCollateral(
        tcb_info=contents[0],
        qe_identity=contents[1],
        issuer_chain_pem=contents[2],
        pck_crl=pck_crl[1] if pck_crl else None,
        root_ca_crl=root_ca_crl[1] if root_ca_crl else None,
    )


# --- verification -----------------------------------------------------------------------------


def _pinned_roots() -> list[x509.Certificate]:
    data = resources.files("attest").joinpath("roots", ROOT_PEM).read_bytes()
    return x509.load_pem_x509_certificates(data)


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _signing_key(
    chain: list[x509.Certificate], roots: list[x509.Certificate], now: datetime
) -> ec.EllipticCurvePublicKey:
    check = "tdx-collateral-chain"
    root = verify_chain(chain, roots, now=now, check=check)
    below_root = [c for c in chain if c != root]
    if len(below_root) != 1:
        raise VerificationError(
            check,
            f"expected one TCB signing certificate issued by the root, got {len(below_root)}",
            hint="the chain is the TCB-Info-Issuer-Chain header: TCB Signing, then Root CA",
        )
    signer = below_root[0]
    if _common_name(signer) != TCB_SIGNING_CN:
        raise VerificationError(
            check, f"signer is {signer.subject.rfc4514_string()}, not CN={TCB_SIGNING_CN}"
        )
    key = public_key(signer)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise VerificationError(check, "TCB signing key is not ECDSA P-256")
    return key


def _verify_document(
    key: ec.EllipticCurvePublicKey, body: bytes, signature: bytes, check: str, name: str
) -> None:
    half = SIGNATURE_SIZE // 2
    der = encode_dss_signature(
        int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
    )
    try:
        key.verify(der, body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise VerificationError(
            check,
            f"{name} signature does not verify with the TCB signing key",
            hint="the file must be the PCS response body byte for byte",
        ) from exc


def _check_validity(name: str, issue: datetime, next_update: datetime, now: datetime) -> None:
    if not issue <= now <= next_update:
        raise VerificationError(
            "tdx-collateral-validity",
            f"{name} is valid {issue.isoformat()} .. {next_update.isoformat()}, "
            f"not at {now.isoformat()}",
            hint="fetch current collateral from Intel PCS (or your PCCS)",
        )


def _crl_date(crl: x509.CertificateRevocationList) -> str:
    return crl.last_update_utc.date().isoformat()


def _verified_crl(
    data: bytes, issuer: x509.Certificate, name: str, now: datetime
) -> x509.CertificateRevocationList:
    check = "tdx-crl"
    crl = load_crl(data, check=check)
    if crl.issuer != issuer.subject:
        raise VerificationError(
            check,
            f"{name} is issued by {crl.issuer.rfc4514_string()}, "
            f"not {issuer.subject.rfc4514_string()}",
            hint="the PCK CRL must be the one for the CA that issued this platform's PCK "
            "certificate (ca=platform or ca=processor)"
            if name == "PCK CRL"
            else "the Root CA CRL must be the Intel SGX Root CA's",
        )
    key = public_key(issuer)
    if not isinstance(key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(key):
        raise VerificationError(
            check, f"{name} signature does not verify with {_common_name(issuer)!r}'s key"
        )
    problem = validity_problem(crl, now)
    if problem is not None:
        raise VerificationError(
            check,
            f"{name} {problem}",
            hint="fetch current CRLs from Intel PCS (or your PCCS) with the other collateral",
        )
    return crl


def _revoked(crl: x509.CertificateRevocationList, cert: x509.Certificate, what: str) -> None:
    if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise VerificationError(
            "tdx-crl",
            f"{what} {_common_name(cert)!r} (serial {cert.serial_number:x}) is revoked",
            hint="Intel revoked this certificate: the platform or its keys are not to be trusted",
        )


def _check_revocation(
    quote: Quote,
    pck: x509.Certificate,
    tcb_chain: list[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    collateral: TdxCollateral,
    now: datetime,
) -> str | None:
    """QVL's CRL checks: the PCK certificate against its CA's CRL, that CA and the TCB signing
    certificate against the Root CA CRL, each CRL signed by its issuer and current. None when
    the collateral has no CRLs."""
    check = "tdx-crl"
    if collateral.pck_crl is None and collateral.root_ca_crl is None:
        return None
    if collateral.pck_crl is None or collateral.root_ca_crl is None:
        raise VerificationError(
            check,
            "the collateral has only one of the PCK CRL and the Root CA CRL",
            hint="revocation is checked with both, or not at all",
        )
    # The certificates that actually signed: a look-alike name placed in the chain (or beside a
    # root) must not be where a CRL's signature is checked.
    ca = next((c for c in quote.pck_chain if c is not pck and issued_by(pck, c)), None)
    if ca is None:
        raise VerificationError(check, "the quote's PCK chain lacks the PCK certificate's issuer")
    root = next((r for r in anchors if issued_by(ca, r)), None)
    if root is None:
        raise VerificationError(
            check, f"{_common_name(ca)!r} is not issued by a pinned Intel SGX Root CA"
        )
    root_crl = _verified_crl(collateral.root_ca_crl, root, "Root CA CRL", now)
    pck_crl = _verified_crl(collateral.pck_crl, ca, "PCK CRL", now)
    _revoked(pck_crl, pck, "PCK certificate")
    _revoked(root_crl, ca, "PCK CA")
    signers = [c for c in tcb_chain if c.subject != root.subject and issued_by(c, root)]
    if not signers:
        raise VerificationError(
            check,
            f"the TCB signing certificate is not issued by {_common_name(root)!r}, whose CRL "
            "was given",
            hint="the collateral's TCB signing chain and the quote's PCK chain end in one root",
        )
    for cert in signers:
        _revoked(root_crl, cert, "TCB signing certificate")
    return (
        f"PCK certificate not revoked (PCK CRL of {_crl_date(pck_crl)}); "
        f"{_common_name(ca)} and {TCB_SIGNING_CN} not revoked "
        f"(Root CA CRL of {_crl_date(root_crl)})"
    )


def _masked(value: bytes, mask: bytes) -> bytes:
    return bytes(v & m for v, m in zip(value, mask, strict=True))


def _module_identity(info: TcbInfo, quote: Quote) -> TdxModule:
    """The module identity QVL checks the quote against (4.1.2.4.11)."""
    major = quote.body.tee_tcb_svn[TEE_TCB_SVN_MODULE_MAJOR]
    if major == 0:
        return info.tdx_module
    wanted = f"TDX_{major:02X}"
    for identity in info.tdx_module_identities:
        if identity.id.upper() == wanted:
            return identity
    raise VerificationError(
        "tdx-module-identity",
        f"TEE_TCB_SVN names TDX module major version {major}; the TCB info has no {wanted}",
    )


def _check_module(module: TdxModule, quote: Quote) -> str:
    body = quote.body
    problems = []
    if not hmac.compare_digest(body.mrsignerseam, module.mrsigner):
        problems.append(f"MRSIGNERSEAM {body.mrsignerseam.hex()}, expected {module.mrsigner.hex()}")
    seam = _masked(body.seam_attributes, module.attributes_mask)
    expected = _masked(module.attributes, module.attributes_mask)
    if seam != expected:
        problems.append(
            f"SEAM attributes {body.seam_attributes.hex()} & mask "
            f"{module.attributes_mask.hex()} = {seam.hex()}, expected {expected.hex()}"
        )
    if problems:
        raise VerificationError("tdx-module-identity", "; ".join(problems))
    return f"TDX module {module.id or 'tdxModule'}: MRSIGNERSEAM {module.mrsigner.hex()[:16]}…"


def _enclave_level(levels: tuple[EnclaveTcbLevel, ...], isv_svn: int) -> EnclaveTcbLevel | None:
    return next((lv for lv in levels if isv_svn >= lv.isv_svn), None)


def _check_qe(identity: QeIdentity, quote: Quote) -> EnclaveTcbLevel:
    qe = quote.qe_report
    problems = []
    if not hmac.compare_digest(qe.mrsigner, identity.mrsigner):
        problems.append(f"MRSIGNER {qe.mrsigner.hex()}, expected {identity.mrsigner.hex()}")
    if qe.isv_prod_id != identity.isv_prod_id:
        problems.append(f"ISVPRODID {qe.isv_prod_id}, expected {identity.isv_prod_id}")
    misc = qe.misc_select & identity.miscselect_mask
    if misc != identity.miscselect & identity.miscselect_mask:
        problems.append(
            f"MISCSELECT {qe.misc_select:08x} & mask {identity.miscselect_mask:08x} = "
            f"{misc:08x}, expected {identity.miscselect:08x}"
        )
    attributes = _masked(qe.attributes, identity.attributes_mask)
    if attributes != _masked(identity.attributes, identity.attributes_mask):
        problems.append(
            f"ATTRIBUTES {qe.attributes.hex()} & mask {identity.attributes_mask.hex()} = "
            f"{attributes.hex()}, expected {identity.attributes.hex()}"
        )
    if problems:
        raise VerificationError("tdx-qe-identity", "QE report: " + "; ".join(problems))
    level = _enclave_level(identity.levels, qe.isv_svn)
    if level is None:
        raise VerificationError(
            "tdx-qe-identity",
            f"QE ISVSVN {qe.isv_svn} is below every QE identity TCB level (TCB not supported)",
        )
    return level


def _platform_level(info: TcbInfo, pck: PckExtensions, tee_tcb_svn: bytes) -> TcbLevel:
    """QVL 4.1.2.4.17: the first level (highest first) whose SGX components and PCESVN the PCK
    certificate reaches and whose TDX components TEE_TCB_SVN reaches."""
    start = MODULE_BYTES if tee_tcb_svn[TEE_TCB_SVN_MODULE_MAJOR] > 0 else 0
    sgx_reached = False
    for level in info.levels:
        if level.pce_svn > pck.pce_svn or any(
            have < need for have, need in zip(pck.tcb_components, level.sgx_components, strict=True)
        ):
            continue
        sgx_reached = True
        if all(tee_tcb_svn[i] >= level.tdx_components[i] for i in range(start, COMPONENTS)):
            return level
    platform = (
        f"SGX components {list(pck.tcb_components)}, PCESVN {pck.pce_svn}, "
        f"TEE_TCB_SVN {tee_tcb_svn.hex()}"
    )
    which = "TDX" if sgx_reached else "SGX"
    raise VerificationError(
        "tdx-tcb-level",
        f"no {which} TCB level applies to this platform ({platform}): TCB not supported",
    )


def _converge(status: TcbStatus, other: TcbStatus) -> TcbStatus:
    """QVL's rule for folding a module or QE status (UpToDate, OutOfDate, Revoked) into a
    platform status."""
    if other is TcbStatus.REVOKED:
        return TcbStatus.REVOKED
    if other is TcbStatus.OUT_OF_DATE:
        if status in (TcbStatus.UP_TO_DATE, TcbStatus.SW_HARDENING_NEEDED):
            return TcbStatus.OUT_OF_DATE
        if status in (
            TcbStatus.CONFIGURATION_NEEDED,
            TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
        ):
            return TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
    return status


def _merge_ids(*groups: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(a for group in groups for a in group))


def evaluate_collateral(
    quote: Quote,
    pck_certificate: x509.Certificate,
    collateral: TdxCollateral,
    *,
    roots: Sequence[x509.Certificate] | None = None,
    now: datetime | None = None,
    record: list[tuple[str, str]] | None = None,
) -> TcbEvaluation:
    """Evaluate a quote's platform against signed Intel collateral (see the module docstring).

    ``pck_certificate`` must come from a verified quote (:func:`attest.tdx.verify.verify_quote`).
    ``roots`` replaces the pinned Intel SGX Root CA (tests pass their own). Each check that passes
    is appended to ``record`` as (name, detail).
    """
    when = now if now is not None else datetime.now(UTC)
    log = record if record is not None else []
    anchors = list(roots) if roots is not None else _pinned_roots()
    info = load_tcb_info(collateral.tcb_info)
    identity = load_qe_identity(collateral.qe_identity)
    chain = load_tcb_signing_chain(collateral.issuer_chain_pem)

    key = _signing_key(chain, anchors, when)
    log.append(("tdx-collateral-chain", f"{TCB_SIGNING_CN} issued by a pinned Intel SGX Root CA"))
    _verify_document(key, info.body, info.signature, "tdx-tcb-info-signature", "TCB info")
    log.append(("tdx-tcb-info-signature", f"ECDSA P-256 over {len(info.body)} bytes"))
    _verify_document(
        key, identity.body, identity.signature, "tdx-qe-identity-signature", "QE identity"
    )
    log.append(("tdx-qe-identity-signature", f"ECDSA P-256 over {len(identity.body)} bytes"))
    _check_validity("TCB info", info.issue_date, info.next_update, when)
    _check_validity("QE identity", identity.issue_date, identity.next_update, when)
    log.append(
        (
            "tdx-collateral-validity",
            f"TCB info until {info.next_update.isoformat()}, "
            f"QE identity until {identity.next_update.isoformat()}",
        )
    )

    revocation = _check_revocation(quote, pck_certificate, chain, anchors, collateral, when)
    if revocation is not None:
        log.append(("tdx-crl", revocation))

    if quote.header.tee_type != TEE_TYPE_TDX:
        raise VerificationError("tdx-fmspc", "TDX TCB info cannot evaluate a non-TDX quote")
    pck = pck_extensions(pck_certificate)
    if pck.fmspc != info.fmspc or pck.pce_id != info.pce_id:
        raise VerificationError(
            "tdx-fmspc",
            f"PCK certificate FMSPC {pck.fmspc.hex()} / PCE-ID {pck.pce_id.hex()}, "
            f"TCB info is for FMSPC {info.fmspc.hex()} / PCE-ID {info.pce_id.hex()}",
            hint="fetch the TCB info for this platform's FMSPC",
        )
    log.append(("tdx-fmspc", f"{pck.fmspc.hex()} (PCE-ID {pck.pce_id.hex()})"))

    module = _module_identity(info, quote)
    log.append(("tdx-module-identity", _check_module(module, quote)))
    qe_level = _check_qe(identity, quote)
    log.append(
        (
            "tdx-qe-identity",
            f"TD_QE ISVPRODID {quote.qe_report.isv_prod_id}, ISVSVN {quote.qe_report.isv_svn}: "
            f"{qe_level.status}",
        )
    )

    tee_tcb_svn = quote.body.tee_tcb_svn
    level = _platform_level(info, pck, tee_tcb_svn)
    status = level.status
    module_status: TcbStatus | None = None
    module_ids: tuple[str, ...] = ()
    if tee_tcb_svn[TEE_TCB_SVN_MODULE_MAJOR] > 0:
        module_level = _enclave_level(module.levels, tee_tcb_svn[TEE_TCB_SVN_MODULE_SVN])
        if module_level is None:
            raise VerificationError(
                "tdx-tcb-level",
                f"TDX module ISVSVN {tee_tcb_svn[TEE_TCB_SVN_MODULE_SVN]} is below every "
                f"{module.id} TCB level (TCB not supported)",
            )
        module_status, module_ids = module_level.status, module_level.advisory_ids
        status = _converge(status, module_status)
    status = _converge(status, qe_level.status)
    evaluation = TcbEvaluation(
        status=status,
        advisory_ids=_merge_ids(level.advisory_ids, module_ids, qe_level.advisory_ids),
        platform_status=level.status,
        module_status=module_status,
        qe_status=qe_level.status,
        tcb_date=level.date,
        fmspc=pck.fmspc,
        tcb_evaluation_data_number=info.tcb_evaluation_data_number,
        revocation=revocation,
    )
    if status is TcbStatus.REVOKED:
        raise VerificationError(
            "tdx-tcb-revoked",
            f"Intel lists this platform's TCB as Revoked ({evaluation.describe()})",
            hint="a revoked TCB is never acceptable: the platform needs a microcode/TDX update",
        )
    log.append(("tdx-tcb-level", evaluation.describe()))
    return evaluation


def check_tcb_status(
    evaluation: TcbEvaluation, accepted: Collection[TcbStatus | str]
) -> tuple[str, str]:
    """``("tdx-tcb-status", detail)`` when the status is accepted; PolicyError otherwise."""
    try:
        allowed = {TcbStatus(s) for s in accepted}
    except ValueError as exc:
        raise ParseError(f"unknown TCB status in {sorted(map(str, accepted))}") from exc
    if not allowed:
        raise PolicyError(["tcb_status: the policy accepts no TCB status"], check="tdx-tcb-status")
    if evaluation.status not in allowed:
        names = ", ".join(sorted(allowed))
        ids = evaluation.advisory_ids
        advisories = f" (advisories {', '.join(ids)})" if ids else ""
        raise PolicyError(
            [f"tcb_status: platform {evaluation.status}{advisories}, policy accepts {names}"],
            check="tdx-tcb-status",
            hint="update the platform, or accept the status explicitly in accepted_tcb_statuses",
        )
    return ("tdx-tcb-status", f"{evaluation.status} accepted")
