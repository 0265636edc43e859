"""The Intel SGX extension of a PCK certificate: FMSPC, PCE-ID and the platform's TCB.

Layout (Intel "SGX PCK Certificate and Certificate Revocation List Profile", section 1.3.5), DER::

    SGXExtensions ::= SEQUENCE OF SEQUENCE { OID, value }      -- OID 1.2.840.113741.1.13.1
      .1  PPID        OCTET STRING (16)
      .2  TCB         SEQUENCE OF SEQUENCE { OID .2.1 .. .2.16 INTEGER  -- SGX TCB component SVNs
                                                  .2.17  INTEGER         -- PCESVN
                                                  .2.18  OCTET STRING }  -- CPUSVN (16)
      .3  PCE-ID      OCTET STRING (2)
      .4  FMSPC       OCTET STRING (6)
      .5  SGX type    ENUMERATED
      .6, .7          platform instance id and configuration (multi-package platforms only)

cryptography hands us the extension's bytes; the structure is this small and fixed, so a strict
DER reader of our own (definite minimal lengths, single-byte tags, nothing trailing) is shorter and
easier to audit than a general ASN.1 library and its schema, and adds no dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from attest.errors import ParseError

__all__ = ["SGX_EXTENSIONS_OID", "PckExtensions", "parse_sgx_extension", "pck_extensions"]

SGX_EXTENSIONS_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_SEQUENCE = 0x30
TCB_COMPONENTS = 16
PPID_SIZE = 16
CPUSVN_SIZE = 16
PCE_ID_SIZE = 2
FMSPC_SIZE = 6
MAX_SVN = 0xFF
MAX_PCESVN = 0xFFFF


@dataclass(frozen=True, slots=True)
class PckExtensions:
    """What the PCK certificate says about the platform (SGX extension)."""

    ppid: bytes
    tcb_components: tuple[int, ...]
    pce_svn: int
    cpu_svn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int


def _fail(what: str) -> ParseError:
    return ParseError(
        f"PCK certificate SGX extension is malformed: {what}",
        hint="the quote's PCK certificate must carry Intel's SGX extension (1.2.840.113741.1.13.1)",
    )


def _tlvs(data: bytes, where: str) -> list[tuple[int, bytes]]:
    """Every DER TLV directly in ``data`` as (tag, content); strict DER or ParseError."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 2:
            raise _fail(f"truncated header in {where}")
        tag, first = data[pos], data[pos + 1]
        if tag & 0x1F == 0x1F:
            raise _fail(f"multi-byte tag in {where}")
        pos += 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count == 0 or count > 3 or pos + count > len(data):
                raise _fail(f"bad length in {where}")
            length = int.from_bytes(data[pos : pos + count], "big")
            if length < 0x80 or data[pos] == 0:
                raise _fail(f"non-minimal length in {where}")
            pos += count
        if pos + length > len(data):
            raise _fail(f"value overruns its container in {where}")
        out.append((tag, data[pos : pos + length]))
        pos += length
    return out


def _oid(content: bytes, where: str) -> str:
    if not content or content[-1] & 0x80:
        raise _fail(f"bad OID in {where}")
    first = content[0]
    if first & 0x80:
        raise _fail(f"bad OID in {where}")
    head = min(first // 40, 2)
    parts = [head, first - 40 * head]
    value = 0
    fresh = True
    for byte in content[1:]:
        if fresh and byte == 0x80:
            raise _fail(f"non-minimal OID arc in {where}")
        value = (value << 7) | (byte & 0x7F)
        fresh = not byte & 0x80
        if fresh:
            parts.append(value)
            value = 0
    return ".".join(str(p) for p in parts)


def _uint(tag: int, content: bytes, expected_tag: int, maximum: int, where: str) -> int:
    if tag != expected_tag or not content:
        raise _fail(f"{where} is not an integer")
    if content[0] & 0x80:
        raise _fail(f"{where} is negative")
    if len(content) > 1 and content[0] == 0 and not content[1] & 0x80:
        raise _fail(f"{where} is not minimally encoded")
    value = int.from_bytes(content, "big")
    if value > maximum:
        raise _fail(f"{where} = {value} exceeds {maximum}")
    return value


def _octets(tag: int, content: bytes, size: int, where: str) -> bytes:
    if tag != TAG_OCTET_STRING or len(content) != size:
        raise _fail(f"{where} is not a {size}-byte OCTET STRING")
    return content


def _pairs(body: bytes, prefix: str, where: str) -> dict[int, tuple[int, bytes]]:
    """The contents of a SEQUENCE OF SEQUENCE { OID prefix.N, value } as {N: (tag, content)}."""
    out: dict[int, tuple[int, bytes]] = {}
    for tag, content in _tlvs(body, where):
        if tag != TAG_SEQUENCE:
            raise _fail(f"{where} entry is not a SEQUENCE")
        entry = _tlvs(content, where)
        if len(entry) != 2 or entry[0][0] != TAG_OID:
            raise _fail(f"{where} entry is not {{OID, value}}")
        oid = _oid(entry[0][1], where)
        head, _, arc = oid.rpartition(".")
        if head != prefix or not arc.isdigit():
            continue  # an element this verifier does not use (Intel adds arcs over time)
        number = int(arc)
        if number in out:
            raise _fail(f"{where} repeats {oid}")
        out[number] = entry[1]
    return out


def _single_sequence(data: bytes, where: str) -> bytes:
    items = _tlvs(data, where)
    if len(items) != 1 or items[0][0] != TAG_SEQUENCE:
        raise _fail(f"{where} is not one SEQUENCE")
    return items[0][1]


def _require(pairs: dict[int, tuple[int, bytes]], number: int, where: str) -> tuple[int, bytes]:
    if number not in pairs:
        raise _fail(f"{where} lacks element .{number}")
    return pairs[number]


def pck_extensions(certificate: x509.Certificate) -> PckExtensions:
    """Decode the SGX extension of ``certificate``; :class:`ParseError` when absent or malformed."""
    try:
        ext = certificate.extensions.get_extension_for_oid(SGX_EXTENSIONS_OID)
    except x509.ExtensionNotFound as exc:
        raise _fail("the certificate has no SGX extension") from exc
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise _fail("unexpected extension type")
    return parse_sgx_extension(value.value)


def parse_sgx_extension(der: bytes) -> PckExtensions:
    """Decode the DER value of the SGX extension; :class:`ParseError` when malformed."""
    root = SGX_EXTENSIONS_OID.dotted_string
    top = _pairs(_single_sequence(der, "SGXExtensions"), root, "SGXExtensions")
    ppid = _octets(*_require(top, 1, "SGXExtensions"), PPID_SIZE, "PPID")
    tcb_tag, tcb_content = _require(top, 2, "SGXExtensions")
    if tcb_tag != TAG_SEQUENCE:
        raise _fail("TCB is not a SEQUENCE")
    tcb = _pairs(tcb_content, f"{root}.2", "TCB")
    components = tuple(
        _uint(*_require(tcb, n, "TCB"), TAG_INTEGER, MAX_SVN, f"TCB component {n}")
        for n in range(1, TCB_COMPONENTS + 1)
    )
    pce_svn = _uint(*_require(tcb, 17, "TCB"), TAG_INTEGER, MAX_PCESVN, "PCESVN")
    cpu_svn = _octets(*_require(tcb, 18, "TCB"), CPUSVN_SIZE, "CPUSVN")
    pce_id = _octets(*_require(top, 3, "SGXExtensions"), PCE_ID_SIZE, "PCE-ID")
    fmspc = _octets(*_require(top, 4, "SGXExtensions"), FMSPC_SIZE, "FMSPC")
    sgx_type = _uint(*_require(top, 5, "SGXExtensions"), TAG_ENUMERATED, MAX_SVN, "SGX type")
    return PckExtensions(
        ppid=ppid,
        tcb_components=components,
        pce_svn=pce_svn,
        cpu_svn=cpu_svn,
        pce_id=pce_id,
        fmspc=fmspc,
        sgx_type=sgx_type,
    )
