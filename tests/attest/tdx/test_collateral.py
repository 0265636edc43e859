"""TDX collateral: the real quote evaluated against TCB info / QE identity built around its own
FMSPC, SVNs and QE report, signed by a TEST chain; one mutation per row, each naming its check."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest.errors import ParseError, PolicyError, VerificationError
from attest.tdx import (
    Quote,
    TcbStatus,
    TdxPolicy,
    check_tcb_status,
    evaluate_collateral,
    load_collateral_dir,
    parse_quote,
    validate_quote,
    verify_quote,
)
from attest.tdx.collateral import (
    COLLATERAL_FILES,
    TdxCollateral,
    load_qe_identity,
    load_tcb_info,
    load_tcb_signing_chain,
)
from attest.tdx.pck import pck_extensions

from .fake_collateral import CollateralBuilder, FakeTcbSigner, pem, shifted, tcb_level

NOW = datetime(2024, 6, 1, tzinfo=UTC)
STATUSES = [s.value for s in TcbStatus if s is not TcbStatus.REVOKED]


@pytest.fixture(scope="module")
def quote(vectors: Path) -> Quote:
    return parse_quote((vectors / "tdx" / "quote_v4.dat").read_bytes())


@pytest.fixture(scope="module")
def signer() -> FakeTcbSigner:
    return FakeTcbSigner.generate()


@pytest.fixture
def builder(signer: FakeTcbSigner, quote: Quote) -> CollateralBuilder:
    return CollateralBuilder.for_quote(signer, quote)


def _evaluate(quote: Quote, collateral: TdxCollateral, signer: FakeTcbSigner, **kwargs: Any) -> Any:
    return evaluate_collateral(
        quote, quote.pck_chain[0], collateral, roots=[signer.root], now=NOW, **kwargs
    )


def test_real_quote_pck_extension(quote: Quote) -> None:
    pck = pck_extensions(quote.pck_chain[0])
    assert pck.fmspc.hex() == "50806f000000" and pck.pce_id == b"\x00\x00"
    assert pck.tcb_components == (5, 5, 13, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0)
    assert pck.pce_svn == 11 and pck.cpu_svn == bytes(pck.tcb_components)
    assert pck.sgx_type == 1 and len(pck.ppid) == 16


def test_real_quote_up_to_date(
    quote: Quote, signer: FakeTcbSigner, builder: CollateralBuilder
) -> None:
    record: list[tuple[str, str]] = []
    tcb = _evaluate(quote, builder.build(), signer, record=record)
    assert tcb.status is TcbStatus.UP_TO_DATE and tcb.advisory_ids == ()
    assert tcb.platform_status is TcbStatus.UP_TO_DATE and tcb.module_status is None
    assert tcb.fmspc.hex() == "50806f000000" and tcb.tcb_evaluation_data_number == 17
    assert [name for name, _ in record] == [
        "tdx-collateral-chain",
        "tdx-tcb-info-signature",
        "tdx-qe-identity-signature",
        "tdx-collateral-validity",
        "tdx-fmspc",
        "tdx-module-identity",
        "tdx-qe-identity",
        "tdx-tcb-level",
    ]


def test_verify_quote_with_collateral(
    quote: Quote, signer: FakeTcbSigner, builder: CollateralBuilder
) -> None:
    verified = verify_quote(
        quote, now=NOW, collateral=builder.build(), collateral_roots=[signer.root]
    )
    assert verified.tcb is not None and verified.tcb.status is TcbStatus.UP_TO_DATE
    assert [n for n, _ in verified.checks][-2:] == ["tdx-tcb-level", "tdx-tcb-status"]
    assert verify_quote(quote, now=NOW).tcb is None


def test_collateral_never_trusts_the_test_root_by_default(
    quote: Quote, builder: CollateralBuilder
) -> None:
    # Without collateral_roots the pinned Intel root decides: the TEST chain is refused.
    with pytest.raises(VerificationError, match="no pinned root issued") as err:
        verify_quote(quote, now=NOW, collateral=builder.build())
    assert err.value.check == "tdx-collateral-chain"


# --- one mutation per row ---------------------------------------------------------------------

Mutation = Callable[[CollateralBuilder, FakeTcbSigner], TdxCollateral]


def _docs(mutate: Callable[[CollateralBuilder], None]) -> Mutation:
    def build(b: CollateralBuilder, _signer: FakeTcbSigner) -> TdxCollateral:
        mutate(b)
        return b.build()

    return build


def _set(doc: str, path: str, value: Any) -> Mutation:
    def mutate(b: CollateralBuilder) -> None:
        node: Any = b.tcb if doc == "tcb" else b.qe
        *parents, last = path.split(".")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return _docs(mutate)


def _flip_signature(field: str) -> Mutation:
    def build(b: CollateralBuilder, _signer: FakeTcbSigner) -> TdxCollateral:
        c = b.build()
        data = getattr(c, field)
        at = data.rindex(b'"signature":"') + len(b'"signature":"') + 5
        flipped = data[:at] + (b"0" if data[at : at + 1] != b"0" else b"1") + data[at + 1 :]
        return dataclasses.replace(c, **{field: flipped})

    return build


def _edit_after_signing(b: CollateralBuilder, _signer: FakeTcbSigner) -> TdxCollateral:
    c = b.build()
    return dataclasses.replace(
        c,
        tcb_info=c.tcb_info.replace(
            b'"tcbEvaluationDataNumber":17', b'"tcbEvaluationDataNumber":18'
        ),
    )


def _chain(make: Callable[[FakeTcbSigner], bytes]) -> Mutation:
    def build(b: CollateralBuilder, signer: FakeTcbSigner) -> TdxCollateral:
        return dataclasses.replace(b.build(), issuer_chain_pem=make(signer))

    return build


def _wrong_cn(signer: FakeTcbSigner) -> bytes:
    _key, cert = signer.issue("Intel SGX PCK Certificate")
    return pem(cert, signer.root)


def _under_intermediate(signer: FakeTcbSigner) -> bytes:
    # A certificate below a CA under the root (as a PCK certificate is) must not sign collateral,
    # even one whose name says "TCB Signing".
    ca_key, ca = signer.issue("Intel SGX PCK Platform CA", ca=True)
    _key, leaf = signer.issue("Intel SGX TCB Signing", issuer=("Intel SGX PCK Platform CA", ca_key))
    return pem(leaf, ca, signer.root)


def _expired_signer(signer: FakeTcbSigner) -> bytes:
    _key, cert = signer.issue(
        "Intel SGX TCB Signing",
        not_before=datetime(2020, 1, 1, tzinfo=UTC),
        not_after=datetime(2024, 1, 1, tzinfo=UTC),
    )
    return pem(cert, signer.root)


def _other_signing_key(b: CollateralBuilder, signer: FakeTcbSigner) -> TdxCollateral:
    key, cert = signer.issue("Intel SGX TCB Signing")
    c = b.build()
    return dataclasses.replace(
        c,
        qe_identity=signer.sign_document("enclaveIdentity", b.qe, key=key),
        issuer_chain_pem=pem(cert, signer.root),
    )


def _levels_above(b: CollateralBuilder) -> None:
    for level in b.tcb["tcbLevels"]:
        level["tcb"]["sgxtcbcomponents"][2]["svn"] = 14


def _tdx_levels_above(b: CollateralBuilder) -> None:
    for level in b.tcb["tcbLevels"]:
        level["tcb"]["tdxtcbcomponents"][2]["svn"] = 6


def _qe_levels_above(b: CollateralBuilder) -> None:
    b.qe["tcbLevels"] = [b.qe["tcbLevels"][0]]
    b.qe["tcbLevels"][0]["tcb"]["isvsvn"] = 5


MUTATIONS: list[tuple[str, Mutation, str]] = [
    ("tcb info signature", _flip_signature("tcb_info"), "tdx-tcb-info-signature"),
    ("tcb info edited after signing", _edit_after_signing, "tdx-tcb-info-signature"),
    ("qe identity signature", _flip_signature("qe_identity"), "tdx-qe-identity-signature"),
    ("chain of another signing key", _other_signing_key, "tdx-tcb-info-signature"),
    ("chain: signer not TCB Signing", _chain(_wrong_cn), "tdx-collateral-chain"),
    ("chain: signer below an intermediate CA", _chain(_under_intermediate), "tdx-collateral-chain"),
    ("chain: signer expired", _chain(_expired_signer), "tdx-collateral-chain"),
    ("chain: root only", _chain(lambda s: pem(s.root)), "tdx-collateral-chain"),
    (
        "tcb info nextUpdate passed",
        _set("tcb", "nextUpdate", shifted(3)),
        "tdx-collateral-validity",
    ),
    ("qe identity issued later", _set("qe", "issueDate", shifted(30)), "tdx-collateral-validity"),
    ("fmspc", _set("tcb", "fmspc", "00906ED50000"), "tdx-fmspc"),
    ("pce id", _set("tcb", "pceId", "0100"), "tdx-fmspc"),
    ("tdx module mrsigner", _set("tcb", "tdxModule.mrsigner", "AB" * 48), "tdx-module-identity"),
    (
        "tdx module attributes",
        _set("tcb", "tdxModule.attributes", "0100000000000000"),
        "tdx-module-identity",
    ),
    ("qe mrsigner", _set("qe", "mrsigner", "00" * 32), "tdx-qe-identity"),
    ("qe isvprodid", _set("qe", "isvprodid", 1), "tdx-qe-identity"),
    ("qe miscselect under mask", _set("qe", "miscselect", "00000001"), "tdx-qe-identity"),
    ("qe attributes under mask", _set("qe", "attributes", "13" + "00" * 15), "tdx-qe-identity"),
    ("qe isvsvn below every level", _docs(_qe_levels_above), "tdx-qe-identity"),
    ("sgx components below every level", _docs(_levels_above), "tdx-tcb-level"),
    ("tdx components below every level", _docs(_tdx_levels_above), "tdx-tcb-level"),
    ("platform revoked", _set("tcb", "tcbLevels.0.tcbStatus", "Revoked"), "tdx-tcb-revoked"),
    ("qe revoked", _set("qe", "tcbLevels.0.tcbStatus", "Revoked"), "tdx-tcb-revoked"),
]


@pytest.mark.parametrize(("name", "mutation", "check"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mutations(
    quote: Quote,
    signer: FakeTcbSigner,
    builder: CollateralBuilder,
    name: str,
    mutation: Mutation,
    check: str,
) -> None:
    collateral = mutation(builder, signer)
    with pytest.raises(VerificationError) as err:
        _evaluate(quote, collateral, signer)
    assert err.value.check == check, f"{name}: {err.value}"


def test_masked_bits_outside_the_mask_are_ignored(
    quote: Quote, signer: FakeTcbSigner, builder: CollateralBuilder
) -> None:
    # The real QE's ATTRIBUTES byte 0 is 0x15; Intel's mask FB clears bit 2, so 0x11 matches.
    assert quote.qe_report.attributes[0] == 0x15
    builder.qe["miscselectMask"] = "FFFFFFFE"
    builder.qe["miscselect"] = "00000000"
    assert _evaluate(quote, builder.build(), signer).status is TcbStatus.UP_TO_DATE


def test_other_root_refused(quote: Quote, builder: CollateralBuilder) -> None:
    other = FakeTcbSigner.generate()
    with pytest.raises(VerificationError, match="no pinned root issued") as err:
        _evaluate(quote, builder.build(), other)
    assert err.value.check == "tdx-collateral-chain"


@pytest.mark.parametrize("status", STATUSES)
def test_each_status_against_the_default_policy(
    quote: Quote, signer: FakeTcbSigner, builder: CollateralBuilder, status: str
) -> None:
    builder.tcb["tcbLevels"][0]["tcbStatus"] = status
    builder.tcb["tcbLevels"][0]["advisoryIDs"] = ["INTEL-SA-00999"]
    collateral = builder.build()
    tcb = _evaluate(quote, collateral, signer)
    assert tcb.status == status and tcb.advisory_ids == ("INTEL-SA-00999",)

    def verify() -> Any:
        return verify_quote(quote, now=NOW, collateral=collateral, collateral_roots=[signer.root])

    policy = TdxPolicy(allow_debug=True)
    if status == "UpToDate":
        assert verify().tcb == tcb
        assert validate_quote(quote, policy, tcb=tcb)[-1][0] == "tdx-tcb-status"
        return
    with pytest.raises(PolicyError, match=f"platform {status} .advisories INTEL-SA-00999") as err:
        verify()
    assert err.value.check == "tdx-tcb-status"
    with pytest.raises(PolicyError) as perr:
        validate_quote(quote, policy, tcb=tcb)
    assert perr.value.check == "tdx-policy"
    assert perr.value.violations == (
        f"tcb_status: platform {status} (advisories INTEL-SA-00999), policy accepts UpToDate",
    )


@pytest.mark.parametrize("status", STATUSES)
def test_each_status_accepted_when_the_policy_names_it(
    quote: Quote, signer: FakeTcbSigner, builder: CollateralBuilder, status: str
) -> None:
    builder.tcb["tcbLevels"][0]["tcbStatus"] = status
    collateral = builder.build()
    policy = TdxPolicy.from_mapping({"allow_debug": True, "accepted_tcb_statuses": [status]})
    verified = verify_quote(
        quote,
        now=NOW,
        collateral=collateral,
        collateral_roots=[signer.root],
        accepted_tcb_statuses=policy.accepted_tcb_statuses,
    )
    assert verified.tcb is not None
    assert ("tdx-tcb-status", f"{status} accepted") in validate_quote(
        quote, policy, tcb=verified.tcb
    )


def test_sw_hardening_needs_explicit_policy(
    quote: Quote, signer: FakeTcbSigner, builder: CollateralBuilder
) -> None:
    builder.tcb["tcbLevels"][0]["tcbStatus"] = "SWHardeningNeeded"
    tcb = _evaluate(quote, builder.build(), signer)
    with pytest.raises(PolicyError):
        check_tcb_status(tcb, TdxPolicy().accepted_tcb_statuses)
    allowing = TdxPolicy.from_mapping({"accepted_tcb_statuses": ["UpToDate", "SWHardeningNeeded"]})
    assert check_tcb_status(tcb, allowing.accepted_tcb_statuses)[1] == "SWHardeningNeeded accepted"


@pytest.mark.parametrize(
    ("platform", "qe", "expected"),
    [
        ("UpToDate", "OutOfDate", "OutOfDate"),
        ("SWHardeningNeeded", "OutOfDate", "OutOfDate"),
        ("ConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
        ("ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
        ("OutOfDate", "UpToDate", "OutOfDate"),
    ],
)
def test_qe_status_converges(
    quote: Quote,
    signer: FakeTcbSigner,
    builder: CollateralBuilder,
    platform: str,
    qe: str,
    expected: str,
) -> None:
    builder.tcb["tcbLevels"][0]["tcbStatus"] = platform
    builder.qe["tcbLevels"][0]["tcbStatus"] = qe
    tcb = _evaluate(quote, builder.build(), signer)
    assert (tcb.status, tcb.platform_status, tcb.qe_status) == (expected, platform, qe)


def test_lower_level_selected_with_its_advisories(
    quote: Quote, signer: FakeTcbSigner, builder: CollateralBuilder
) -> None:
    # Intel's newest level is above this platform: the next one down applies.
    pck = pck_extensions(quote.pck_chain[0])
    newer = [*pck.tcb_components]
    newer[0] += 1
    builder.tcb["tcbLevels"].insert(
        0, tcb_level(newer, pck.pce_svn, quote.body.tee_tcb_svn, "UpToDate", [])
    )
    builder.tcb["tcbLevels"][1]["tcbStatus"] = "OutOfDate"
    builder.tcb["tcbLevels"][1]["advisoryIDs"] = ["INTEL-SA-00837"]
    builder.qe["tcbLevels"][0]["advisoryIDs"] = ["INTEL-SA-00837", "INTEL-SA-00615"]
    tcb = _evaluate(quote, builder.build(), signer)
    assert tcb.status is TcbStatus.OUT_OF_DATE
    assert tcb.advisory_ids == ("INTEL-SA-00837", "INTEL-SA-00615")


def test_level_order_in_the_file_does_not_matter(
    quote: Quote, signer: FakeTcbSigner, builder: CollateralBuilder
) -> None:
    builder.tcb["tcbLevels"].reverse()
    assert _evaluate(quote, builder.build(), signer).status is TcbStatus.UP_TO_DATE


# --- TDX module identities (TEE_TCB_SVN[1] > 0): the real quote's body with another SVN -----------


def _with_tee_tcb_svn(quote: Quote, svn: bytes) -> Quote:
    # Collateral evaluation reads the parsed body; the quote signature was checked before.
    return dataclasses.replace(quote, body=dataclasses.replace(quote.body, tee_tcb_svn=svn))


def _module_quote(quote: Quote, minor: int, rest: int = 5) -> Quote:
    return _with_tee_tcb_svn(quote, bytes([minor, 1, rest]) + bytes(13))


def test_module_identity_up_to_date(
    quote: Quote, signer: FakeTcbSigner, builder: CollateralBuilder
) -> None:
    # TDX components at index 0 and 1 are the module's: the level's 3 and 0 are not compared.
    tcb = _evaluate(_module_quote(quote, 2), builder.build(), signer)
    assert (tcb.status, tcb.module_status) == (TcbStatus.UP_TO_DATE, TcbStatus.UP_TO_DATE)


def test_module_identity_out_of_date(
    quote: Quote, signer: FakeTcbSigner, builder: CollateralBuilder
) -> None:
    tcb = _evaluate(_module_quote(quote, 1), builder.build(), signer)
    assert (tcb.status, tcb.module_status) == (TcbStatus.OUT_OF_DATE, TcbStatus.OUT_OF_DATE)


@pytest.mark.parametrize(
    ("name", "svn", "mutate", "check"),
    [
        ("module svn below every level", bytes([0, 1, 5]) + bytes(13), None, "tdx-tcb-level"),
        ("no identity for major 2", bytes([2, 2, 5]) + bytes(13), None, "tdx-module-identity"),
        (
            "identity mrsigner",
            bytes([2, 1, 5]) + bytes(13),
            "tdxModuleIdentities.0.mrsigner",
            "tdx-module-identity",
        ),
    ],
)
def test_module_identity_mutations(
    quote: Quote,
    signer: FakeTcbSigner,
    builder: CollateralBuilder,
    name: str,
    svn: bytes,
    mutate: str | None,
    check: str,
) -> None:
    collateral = _set("tcb", mutate, "CD" * 48)(builder, signer) if mutate else builder.build()
    with pytest.raises(VerificationError) as err:
        _evaluate(_with_tee_tcb_svn(quote, svn), collateral, signer)
    assert err.value.check == check, name


def test_module_bytes_skipped_but_the_rest_compared(
    quote: Quote, signer: FakeTcbSigner, builder: CollateralBuilder
) -> None:
    # TEE_TCB_SVN[2] = 4 is below the top level's 5: the all-zero OutOfDate level applies.
    low = _with_tee_tcb_svn(quote, bytes([2, 1, 4]) + bytes(13))
    tcb = _evaluate(low, builder.build(), signer)
    assert tcb.status is TcbStatus.OUT_OF_DATE
    assert tcb.advisory_ids == ("INTEL-SA-00837", "INTEL-SA-00960")
    del builder.tcb["tcbLevels"][1]
    with pytest.raises(VerificationError, match="no TDX TCB level applies") as err:
        _evaluate(low, builder.build(), signer)
    assert err.value.check == "tdx-tcb-level"


def test_module_revoked(quote: Quote, signer: FakeTcbSigner, builder: CollateralBuilder) -> None:
    builder.tcb["tdxModuleIdentities"][0]["tcbLevels"][0]["tcbStatus"] = "Revoked"
    with pytest.raises(VerificationError) as err:
        _evaluate(_module_quote(quote, 2), builder.build(), signer)
    assert err.value.check == "tdx-tcb-revoked"


# --- policy -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"accepted_tcb_statuses": []}, "non-empty list"),
        ({"accepted_tcb_statuses": "UpToDate"}, "non-empty list"),
        ({"accepted_tcb_statuses": ["UpToDate", "Revoked"]}, "cannot accept Revoked"),
        ({"accepted_tcb_statuses": ["Fine"]}, "unknown status Fine"),
        ({"require_collateral": "yes"}, "true or false"),
    ],
)
def test_policy_tcb_keys_are_strict(data: dict[str, object], message: str) -> None:
    with pytest.raises(ParseError, match=message):
        TdxPolicy.from_mapping(data)


def test_policy_require_collateral(quote: Quote) -> None:
    policy = TdxPolicy.from_mapping({"allow_debug": True, "require_collateral": True})
    with pytest.raises(PolicyError) as err:
        validate_quote(quote, policy)
    assert err.value.violations == (
        "tcb_status: no collateral was evaluated, policy requires one of UpToDate",
    )
    assert validate_quote(quote, TdxPolicy(allow_debug=True)) == [
        ("tdx-debug", "td_attributes 0100001000000000")
    ]


def test_policy_toml_statuses(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('accepted_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]\n')
    assert TdxPolicy.from_toml(path).accepted_tcb_statuses == (
        TcbStatus.UP_TO_DATE,
        TcbStatus.SW_HARDENING_NEEDED,
    )


# --- loaders ------------------------------------------------------------------------------------


def test_collateral_dir(tmp_path: Path, builder: CollateralBuilder) -> None:
    c = builder.build()
    files = (c.tcb_info, c.qe_identity, c.issuer_chain_pem)
    for name, data in zip(COLLATERAL_FILES, files, strict=True):
        (tmp_path / name).write_bytes(data)
    assert load_collateral_dir(tmp_path) == c
    (tmp_path / "qe_identity.json").unlink()
    with pytest.raises(ParseError, match=r"qe_identity\.json"):
        load_collateral_dir(tmp_path)


def test_signed_bytes_are_cut_from_the_file(builder: CollateralBuilder) -> None:
    # Whitespace around the inner object is not signed; inside it, it is, byte for byte.
    data = builder.build().tcb_info
    spaced = b'{\n  "signature": ' + data[data.rindex(b'"signature":') + 12 :].rstrip(b"}")
    spaced += b',\n  "tcbInfo" :  ' + data[len(b'{"tcbInfo":') : data.rindex(b',"signature"')]
    spaced += b"\n}\n"
    assert load_tcb_info(spaced).body == load_tcb_info(data).body


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.replace(b'"id":"TDX"', b'"id":"SGX"'), "not 'TDX'"),
        (lambda d: d.replace(b'"version":3', b'"version":2'), "version 2"),
        (lambda d: d.replace(b'"fmspc":', b'"fmspc":"00","x":'), "fmspc must be 6 bytes"),
        (lambda d: d.replace(b'"version":3', b'"version":3,"version":3'), "duplicate key"),
        (lambda d: d[:-1] + b',"tcbInfo":{}}', "duplicate key"),
        (lambda d: d[:-1] + b',"extra":1}', "exactly the members"),
        (lambda d: d.replace(b'"pcesvn":11', b'"pcesvn":true'), "pcesvn must be an integer"),
        (lambda d: d.replace(b'"pcesvn":11', b'"pcesvn":NaN'), "not valid JSON"),
        (lambda d: d.replace(b'"UpToDate"', b'"Fine"', 1), "tcbStatus 'Fine'"),
        (lambda d: d.replace(b'"2024-05-25T00:00:00Z"', b'"yesterday"'), "not an ISO-8601"),
        (lambda d: d.replace(b'"2024-05-25T00:00:00Z"', b'"2024-05-25T00:00:00"'), "no time zone"),
        (lambda d: d + b"x", "data after the JSON object"),
        (lambda d: b"\xff" + d, "not UTF-8"),
        (lambda d: d[:-70] + b'"}', "signature must be 64 bytes"),
        (lambda d: b"[" + d + b"]", "not a JSON object"),
    ],
)
def test_tcb_info_malformed(
    builder: CollateralBuilder, edit: Callable[[bytes], bytes], message: str
) -> None:
    with pytest.raises(ParseError, match=message):
        load_tcb_info(edit(builder.build().tcb_info))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.replace(b'"id":"TD_QE"', b'"id":"QE"'), "not 'TD_QE'"),
        (lambda d: d.replace(b'"isvprodid":2', b'"isvprodid":-2'), "isvprodid"),
        (
            lambda d: d.replace(b'"tcbStatus":"UpToDate"', b'"tcbStatus":"SWHardeningNeeded"'),
            "tcbStatus",
        ),
        (lambda d: d.replace(b'"miscselect":"00000000"', b'"miscselect":"0000"'), "miscselect"),
    ],
)
def test_qe_identity_malformed(
    builder: CollateralBuilder, edit: Callable[[bytes], bytes], message: str
) -> None:
    with pytest.raises(ParseError, match=message):
        load_qe_identity(edit(builder.build().qe_identity))


def test_signing_chain_not_pem() -> None:
    with pytest.raises(ParseError, match="not valid PEM"):
        load_tcb_signing_chain(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


# --- fuzzing: only ParseError may leave the loaders ----------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_loaders_random_bytes(data: bytes) -> None:
    for load in (load_tcb_info, load_qe_identity):
        with contextlib.suppress(ParseError):
            load(data)


@settings(max_examples=300, deadline=None)
@given(_json, _json)
def test_fuzz_loaders_json_shapes(inner: Any, signature: Any) -> None:
    for key, load in (("tcbInfo", load_tcb_info), ("enclaveIdentity", load_qe_identity)):
        data = json.dumps({key: inner, "signature": signature}).encode()
        with contextlib.suppress(ParseError):
            load(data)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_fuzz_loaders_mutated_documents(builder: CollateralBuilder, data: st.DataObject) -> None:
    """Replace or delete one field anywhere in a valid document; only ParseError escapes."""
    for doc, key, load in (
        (builder.tcb, "tcbInfo", load_tcb_info),
        (builder.qe, "enclaveIdentity", load_qe_identity),
    ):
        tree = json.loads(json.dumps(doc))
        path = data.draw(st.sampled_from(_paths(tree)))
        parent = tree
        for part in path[:-1]:
            parent = parent[part]
        if data.draw(st.booleans()):
            parent[path[-1]] = data.draw(_json)
        elif isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
        raw = builder.signer.sign_document(key, tree)
        with contextlib.suppress(ParseError):
            load(raw)
