"""The real TDX v4 quote: parse, verify to the pinned Intel root, mutations, policy, fuzzing."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import ParseError, PolicyError, VerificationError
from attest.tdx import (
    Quote,
    TdxCollateral,
    TdxPolicy,
    parse_quote,
    pinned_intel_roots,
    validate_quote,
    verify_quote,
)
from attest.tdx.abi import (
    BODY_MRTD,
    BODY_REPORTDATA,
    BODY_RTMR0,
    BODY_TD_ATTRIBUTES,
    HEADER_SIZE,
    QE_ATTRIBUTES,
    QE_ISVPRODID,
    QE_MRSIGNER,
    TD10_BODY_SIZE,
)
from attest.tdx.sim import SimulatedTdxSigner
from attest.tdx.verify import INTEL_TD_QE_MRSIGNER, SIMULATED_TD_QE_MRSIGNER, TD_QE_ISV_PROD_ID

NOW = datetime(2024, 6, 1, tzinfo=UTC)
INTEL_ROOT_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
SIG_DATA = HEADER_SIZE + TD10_BODY_SIZE + 4


@pytest.fixture(scope="module")
def raw(vectors: Path) -> bytes:
    return (vectors / "tdx" / "quote_v4.dat").read_bytes()


@pytest.fixture(scope="module")
def quote(raw: bytes) -> Quote:
    return parse_quote(raw)


def test_parse(quote: Quote, raw: bytes) -> None:
    assert quote.version == 4 and len(quote.raw) == len(raw) == 4936
    assert quote.header.tee_type == 0x81 and quote.header.attestation_key_type == 2
    body = quote.body
    assert body.td_attributes.hex() == "0100001000000000"
    assert body.debug is True
    assert body.mrtd.hex().startswith("705ee9381b8633a9")
    assert body.tee_tcb_svn_2 is None
    assert len(quote.qe_auth_data) == 32
    assert [c.subject.rfc4514_string().split("CN=")[1] for c in quote.pck_chain] == [
        "Intel SGX PCK Certificate",
        "Intel SGX PCK Platform CA",
        "Intel SGX Root CA",
    ]
    assert quote.to_dict()["body"]["debug"] is True


def test_pinned_root(quote: Quote) -> None:
    (root,) = pinned_intel_roots()
    assert root.fingerprint(hashes.SHA256()).hex() == INTEL_ROOT_SHA256
    assert root == quote.pck_chain[-1]


def test_real_quote_verifies(quote: Quote) -> None:
    verified = verify_quote(quote, now=NOW)
    assert [n for n, _ in verified.checks] == [
        "tdx-pck-chain",
        "tdx-qe-report-signature",
        "tdx-qe-report-data",
        "tdx-qe-identity-floor",
        "tdx-quote-signature",
    ]
    assert verified.pck_certificate == quote.pck_chain[0]
    # Intel's TD Quoting Enclave signed it: the constant the floor checks is this QE's.
    assert quote.qe_report.mrsigner == INTEL_TD_QE_MRSIGNER
    assert quote.qe_report.isv_prod_id == TD_QE_ISV_PROD_ID


def _flip(raw: bytes, offset: int) -> Quote:
    data = bytearray(raw)
    data[offset] ^= 0x01
    return parse_quote(bytes(data))


MUTATIONS = [
    ("td_attributes debug bit", HEADER_SIZE + BODY_TD_ATTRIBUTES, "tdx-quote-signature"),
    ("mrtd", HEADER_SIZE + BODY_MRTD + 5, "tdx-quote-signature"),
    ("rtmr0", HEADER_SIZE + BODY_RTMR0, "tdx-quote-signature"),
    ("report data", HEADER_SIZE + BODY_REPORTDATA + 63, "tdx-quote-signature"),
    ("header user data", 40, "tdx-quote-signature"),
    ("quote signature", SIG_DATA + 10, "tdx-quote-signature"),
    ("attestation key", SIG_DATA + 64 + 3, "tdx-qe-report-data"),
    ("qe report", SIG_DATA + 128 + 6 + 0x40, "tdx-qe-report-signature"),
    ("qe report signature", SIG_DATA + 128 + 6 + 384 + 1, "tdx-qe-report-signature"),
    ("qe auth data", SIG_DATA + 128 + 6 + 384 + 64 + 2 + 5, "tdx-qe-report-data"),
]


@pytest.mark.parametrize(("name", "offset", "check"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mutations(raw: bytes, name: str, offset: int, check: str) -> None:
    with pytest.raises(VerificationError) as err:
        verify_quote(_flip(raw, offset), now=NOW)
    assert err.value.check == check, name


def test_debug_bit_mutation_is_parsed(raw: bytes) -> None:
    assert _flip(raw, HEADER_SIZE + BODY_TD_ATTRIBUTES).body.debug is False


@pytest.mark.parametrize(
    "now", [datetime(2018, 1, 1, tzinfo=UTC), datetime(2031, 1, 1, tzinfo=UTC)]
)
def test_chain_outside_validity(quote: Quote, now: datetime) -> None:
    with pytest.raises(VerificationError, match="is not valid at") as err:
        verify_quote(quote, now=now)
    assert err.value.check == "tdx-pck-chain"


def test_chain_to_other_root(quote: Quote, vectors: Path) -> None:
    from attest.nvgpu import pinned_nvidia_roots

    with pytest.raises(VerificationError, match="no pinned root issued") as err:
        verify_quote(quote, now=NOW, roots=pinned_nvidia_roots())
    assert err.value.check == "tdx-pck-chain"


def test_unparsable_collateral_fails_closed(quote: Quote) -> None:
    with pytest.raises(ParseError, match="TCB info is malformed"):
        verify_quote(quote, now=NOW, collateral=TdxCollateral(b"{}", b"{}", b""))


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, 3, "unsupported TDX quote version"),
        (2, 3, "attestation key type"),
        (4, 0x00, "not TDX"),
        (SIG_DATA + 128, 5, "expected 6"),
        (SIG_DATA - 4, 0xFF, "truncated"),
    ],
)
def test_malformed(raw: bytes, offset: int, value: int, message: str) -> None:
    data = bytearray(raw)
    data[offset] = value
    with pytest.raises(ParseError, match=message):
        parse_quote(bytes(data))


@pytest.mark.parametrize("cut", [0, 10, 47, 48, 600, 632, 636, 700, 1200, 1300, 4000, 4935])
def test_truncation(raw: bytes, cut: int) -> None:
    with pytest.raises(ParseError):
        parse_quote(raw[:cut])


def test_trailing_bytes(raw: bytes) -> None:
    assert parse_quote(raw + bytes(16)).raw == raw
    with pytest.raises(ParseError, match="unexpected bytes"):
        parse_quote(raw + b"\x07")


def _as_v5(raw: bytes, *, td15: bool) -> bytes:
    body = raw[HEADER_SIZE : HEADER_SIZE + TD10_BODY_SIZE]
    extra = bytes(range(16)) + b"\x5a" * 48 if td15 else b""
    descriptor = (3 if td15 else 2).to_bytes(2, "little") + len(body + extra).to_bytes(4, "little")
    header = (5).to_bytes(2, "little") + raw[2:HEADER_SIZE]
    return header + descriptor + body + extra + raw[HEADER_SIZE + TD10_BODY_SIZE :]


@pytest.mark.parametrize("td15", [False, True])
def test_v5_layout(raw: bytes, quote: Quote, td15: bool) -> None:
    v5 = parse_quote(_as_v5(raw, td15=td15))
    assert v5.version == 5 and v5.body.mrtd == quote.body.mrtd
    assert v5.body.report_data == quote.body.report_data
    assert len(v5.signed_bytes) == HEADER_SIZE + 6 + TD10_BODY_SIZE + (64 if td15 else 0)
    if td15:
        assert v5.body.tee_tcb_svn_2 == bytes(range(16)) and v5.body.mrservicetd == b"\x5a" * 48
    # Re-framing changes the signed bytes, so the real signature no longer verifies.
    with pytest.raises(VerificationError) as err:
        verify_quote(v5, now=NOW)
    assert err.value.check == "tdx-quote-signature"


def test_v5_bad_body_descriptor(raw: bytes) -> None:
    data = bytearray(_as_v5(raw, td15=True))
    data[HEADER_SIZE + 2] = 0
    with pytest.raises(ParseError, match="expected 648"):
        parse_quote(bytes(data))


def test_policy_debug_forbidden_by_default(quote: Quote) -> None:
    policy = TdxPolicy.from_mapping({"mrtd": [quote.body.mrtd.hex()]})
    with pytest.raises(PolicyError) as err:
        validate_quote(quote, policy)
    assert err.value.check == "tdx-policy"
    assert err.value.violations == (
        "td_attributes.debug: quote 0100001000000000 sets DEBUG, policy forbids it",
    )


def test_policy_collects_every_violation(quote: Quote) -> None:
    other = hashlib.sha384(b"x").hexdigest()
    policy = TdxPolicy.from_mapping(
        {"mrtd": [other], "rtmr1": [other], "report_data": "00" * 64, "allow_debug": False}
    )
    with pytest.raises(PolicyError) as err:
        validate_quote(quote, policy)
    fields = [v.split(":")[0] for v in err.value.violations]
    assert fields == ["td_attributes.debug", "mrtd", "rtmr1", "report_data"]
    assert quote.body.mrtd.hex() in err.value.violations[1] and other in err.value.violations[1]


def test_policy_passes(quote: Quote) -> None:
    body = quote.body
    policy = TdxPolicy.from_mapping(
        {
            "allow_debug": True,
            "mrtd": [body.mrtd.hex()],
            "rtmr0": [body.rtmrs[0].hex()],
            "report_data": body.report_data.hex(),
        }
    )
    names = [n for n, _ in validate_quote(quote, policy)]
    assert names == ["tdx-debug", "tdx-mrtd", "tdx-rtmr0", "tdx-report-data"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "empty"),
        ({"mrtd": ["00" * 48], "mrseam": ["00"]}, "unknown TDX policy keys: mrseam"),
        ({"mrtd": "00"}, "non-empty list"),
        ({"mrtd": ["00"]}, "48 bytes"),
        ({"report_data": "zz"}, "not hex"),
        ({"allow_debug": 1}, "true or false"),
    ],
)
def test_policy_is_strict(data: dict[str, object], message: str) -> None:
    with pytest.raises(ParseError, match=message):
        TdxPolicy.from_mapping(data)


def test_policy_toml(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('allow_debug = false\nmrtd = ["' + "ab" * 48 + '"]\n')
    assert TdxPolicy.from_toml(path).mrtd == (b"\xab" * 48,)
    path.write_text("mrtd = [")
    with pytest.raises(ParseError, match="not TOML"):
        TdxPolicy.from_toml(path)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1200))
def test_fuzz_random(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_quote(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_mutated_real_quote(vectors: Path, data: st.DataObject) -> None:
    raw = bytearray((vectors / "tdx" / "quote_v4.dat").read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ParseError):
        parse_quote(bytes(raw[: data.draw(st.integers(0, len(raw)))]))


# -- the QE identity floor: the PCK key signs any enclave's report, so who signed matters ---------


def _sim_quote(
    tmp: Path,
    *,
    mrsigner: bytes | None = None,
    isv_prod_id: int | None = None,
    debug: bool = False,
) -> tuple[SimulatedTdxSigner, Quote]:
    """A simulated quote whose QE report (which the PCK key then signs) has fields changed."""
    signer = SimulatedTdxSigner.generate(tmp)
    genuine = signer.qe_report

    def qe_report() -> bytes:
        buf = bytearray(genuine())
        if mrsigner is not None:
            buf[QE_MRSIGNER : QE_MRSIGNER + 32] = mrsigner
        if isv_prod_id is not None:
            buf[QE_ISVPRODID : QE_ISVPRODID + 2] = isv_prod_id.to_bytes(2, "little")
        if debug:
            buf[QE_ATTRIBUTES] |= 0x02
        return bytes(buf)

    signer.qe_report = qe_report  # type: ignore[method-assign]
    quote = parse_quote(signer.sign(report_data=bytes(64), mrtd=bytes(48)))
    return signer, quote


def test_simulated_qe_passes_only_with_the_simulators_mrsigner(tmp_path: Path) -> None:
    signer, quote = _sim_quote(tmp_path)
    roots = [signer.root_certificate()]
    verified = verify_quote(quote, roots=roots, qe_mrsigner=SIMULATED_TD_QE_MRSIGNER)
    assert "tdx-qe-identity-floor" in dict(verified.checks)
    # Against Intel's QE identity, the simulator's enclave is any other enclave.
    with pytest.raises(VerificationError, match="MRSIGNER") as err:
        verify_quote(quote, roots=roots)
    assert err.value.check == "tdx-qe-identity-floor"


QE_FLOOR_ROWS: list[tuple[str, dict[str, object], str]] = [
    ("other-signer", {"mrsigner": bytes(32)}, "MRSIGNER 0000"),
    ("intel-signer-on-the-simulated-path", {"mrsigner": INTEL_TD_QE_MRSIGNER}, "is not"),
    ("sgx-qe-prodid", {"isv_prod_id": 1}, "ISVPRODID 1 is not 2"),
    ("debug-enclave", {"debug": True}, "DEBUG on"),
]


@pytest.mark.parametrize(
    ("fields", "says"), [r[1:] for r in QE_FLOOR_ROWS], ids=[r[0] for r in QE_FLOOR_ROWS]
)
def test_qe_identity_floor_rows(tmp_path: Path, fields: dict[str, Any], says: str) -> None:
    signer, quote = _sim_quote(tmp_path, **fields)
    expected = SIMULATED_TD_QE_MRSIGNER
    with pytest.raises(VerificationError, match=says) as err:
        verify_quote(quote, roots=[signer.root_certificate()], qe_mrsigner=expected)
    assert err.value.check == "tdx-qe-identity-floor"


def _with_attributes(quote: Quote, attributes: bytes) -> Quote:
    return dataclasses.replace(
        quote, body=dataclasses.replace(quote.body, td_attributes=attributes)
    )


def test_policy_migratable_forbidden_by_default(quote: Quote) -> None:
    """MIGRATABLE (bit 29) is TDX's MIGRATE_MA: the floor refuses it, as SEV-SNP's does."""
    migratable = _with_attributes(quote, bytes.fromhex("0000003000000000"))  # bits 28 and 29
    assert migratable.body.migratable and not migratable.body.debug
    assert not quote.body.migratable
    with pytest.raises(PolicyError) as err:
        validate_quote(migratable, TdxPolicy())
    assert err.value.violations == (
        "td_attributes.migratable: quote 0000003000000000 sets MIGRATABLE (its state can be "
        "exported through a migration TD the host picks), policy forbids it",
    )
    assert validate_quote(migratable, TdxPolicy(allow_migratable=True))
    assert TdxPolicy.from_mapping({"allow_migratable": True}).allow_migratable


def test_policy_a_bound_service_td_must_be_listed(raw: bytes) -> None:
    v5 = parse_quote(_as_v5(raw, td15=True))  # MRSERVICETD 5a..5a: a service TD is bound
    assert v5.body.service_td_bound
    policy = TdxPolicy(allow_debug=True)
    with pytest.raises(PolicyError) as err:
        validate_quote(v5, policy)
    assert err.value.violations == (
        f"mrservicetd: the TD is bound to service TD {'5a' * 48}, which the policy does not list",
    )
    listed = TdxPolicy.from_mapping({"allow_debug": True, "mrservicetd": ["5a" * 48]})
    assert ("tdx-mrservicetd", "5a" * 48) in validate_quote(v5, listed)
    # A TD 1.0 body has no MRSERVICETD, and a zero one binds nothing.
    assert not parse_quote(_as_v5(raw, td15=False)).body.service_td_bound
    zero = dataclasses.replace(v5, body=dataclasses.replace(v5.body, mrservicetd=bytes(48)))
    assert validate_quote(zero, policy)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"allow_migratable": "yes"}, "allow_migratable must be true or false"),
        ({"mrservicetd": "00"}, "mrservicetd must be a non-empty list"),
        ({"mrservicetd": ["00"]}, "48 bytes"),
    ],
)
def test_policy_floor_keys_are_strict(data: dict[str, object], message: str) -> None:
    with pytest.raises(ParseError, match=message):
        TdxPolicy.from_mapping(data)
