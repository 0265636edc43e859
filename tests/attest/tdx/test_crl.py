"""TDX revocation: the PCK CRL and the Intel SGX Root CA CRL in the collateral.

The real quote's PCK chain is Intel's, so no test can sign CRLs for it; the positive path and the
mutation table use a TEST platform (``FakePlatform``: a PCK chain under the fake collateral root,
quoted by the simulated QE), and the real quote shows that CRLs Intel did not sign are refused.
One mutation per row, each asserting ``tdx-crl`` and what it says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from attest.errors import ParseError, PolicyError, VerificationError
from attest.tdx import Quote, TdxPolicy, parse_quote, validate_quote, verify_quote
from attest.tdx.collateral import TdxCollateral, evaluate_collateral, load_collateral_dir
from attest.tdx.sim import SimulatedTdxSigner
from attest.tdx.verify import SIMULATED_TD_QE_MRSIGNER, VerifiedQuote, pinned_intel_roots

from .fake_collateral import CollateralBuilder, FakePlatform, FakeTcbSigner, crl

NOW = datetime(2024, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def platform() -> FakePlatform:
    return FakePlatform.generate(FakeTcbSigner.generate())


@pytest.fixture(scope="module")
def quote(platform: FakePlatform) -> Quote:
    return platform.quote()


def _collateral(platform: FakePlatform, quote: Quote, **crls: bytes | None) -> TdxCollateral:
    base = CollateralBuilder.for_quote(platform.tcb, quote).build()
    values = {"pck_crl": platform.pck_crl(), "root_ca_crl": platform.root_ca_crl(), **crls}
    return dataclasses.replace(base, **values)


def _verify(platform: FakePlatform, quote: Quote, collateral: TdxCollateral) -> VerifiedQuote:
    return verify_quote(
        quote,
        roots=[platform.tcb.root],
        now=NOW,
        collateral=collateral,
        collateral_roots=[platform.tcb.root],
        qe_mrsigner=SIMULATED_TD_QE_MRSIGNER,
    )


def test_current_crls_revoking_nothing_here_pass(platform: FakePlatform, quote: Quote) -> None:
    others = (1, 2, 0xDEADBEEF)  # revoked serials that are not this chain's
    collateral = _collateral(
        platform,
        quote,
        pck_crl=platform.pck_crl(revoked=others),
        root_ca_crl=platform.root_ca_crl(revoked=others),
    )
    verified = _verify(platform, quote, collateral)
    checks = dict(verified.checks)
    assert checks["tdx-crl"] == (
        "PCK certificate not revoked (PCK CRL of 2024-05-25); Intel SGX PCK Platform CA and "
        "Intel SGX TCB Signing not revoked (Root CA CRL of 2024-05-25)"
    )
    assert verified.tcb is not None and verified.tcb.revocation == checks["tdx-crl"]
    names = [name for name, _ in verified.checks]
    assert (
        names.index("tdx-collateral-validity") < names.index("tdx-crl") < names.index("tdx-fmspc")
    )


def test_without_crls_revocation_is_none_and_not_recorded(
    platform: FakePlatform, quote: Quote
) -> None:
    collateral = _collateral(platform, quote, pck_crl=None, root_ca_crl=None)
    verified = _verify(platform, quote, collateral)
    assert verified.tcb is not None and verified.tcb.revocation is None
    assert "tdx-crl" not in dict(verified.checks)


def test_pem_and_hex_encodings_are_accepted(platform: FakePlatform, quote: Quote) -> None:
    pem = platform.pck_crl(encoding=serialization.Encoding.PEM)
    hexed = platform.root_ca_crl().hex().encode() + b"\n"
    _verify(platform, quote, _collateral(platform, quote, pck_crl=pem, root_ca_crl=hexed))


# --- one mutation per row ---------------------------------------------------------------------

Crls = Callable[[FakePlatform], dict[str, bytes | None]]
DAY = timedelta(days=1)


def _other_ca_key(p: FakePlatform) -> bytes:
    # The same issuer name, another key: only the signature can tell.
    key, _cert = p.tcb.issue(FakePlatform.CA_CN, ca=True)
    return crl(p.ca, key)


def _other_root(p: FakePlatform) -> bytes:
    other = FakeTcbSigner.generate()  # a root of the same name this client never trusted
    return crl(other.root, other.root_key)


def _tcb_signer_revoked(p: FakePlatform) -> bytes:
    return p.root_ca_crl(revoked=(p.tcb.signer.serial_number,))


CRL_MUTATIONS: list[tuple[str, Crls, str]] = [
    (
        "pck certificate revoked",
        lambda p: {"pck_crl": p.pck_crl(revoked=(p.pck.serial_number,))},
        "PCK certificate 'Intel SGX PCK Certificate'",
    ),
    (
        "pck ca revoked",
        lambda p: {"root_ca_crl": p.root_ca_crl(revoked=(p.ca.serial_number,))},
        "PCK CA 'Intel SGX PCK Platform CA'",
    ),
    (
        "tcb signing certificate revoked",
        lambda p: {"root_ca_crl": _tcb_signer_revoked(p)},
        "TCB signing certificate 'Intel SGX TCB Signing'",
    ),
    (
        "pck crl signed by another key",
        lambda p: {"pck_crl": _other_ca_key(p)},
        "PCK CRL signature does not verify",
    ),
    (
        "root ca crl signed by another root",
        lambda p: {"root_ca_crl": _other_root(p)},
        "Root CA CRL signature does not verify",
    ),
    (
        "root ca crl given as the pck crl",
        lambda p: {"pck_crl": p.root_ca_crl()},
        "PCK CRL is issued by",
    ),
    (
        "pck crl given as the root ca crl",
        lambda p: {"root_ca_crl": p.pck_crl()},
        "Root CA CRL is issued by",
    ),
    (
        "pck crl past its next update",
        lambda p: {"pck_crl": p.pck_crl(next_update=NOW - DAY)},
        "PCK CRL is stale",
    ),
    (
        "root ca crl issued after now",
        lambda p: {"root_ca_crl": p.root_ca_crl(last_update=NOW + DAY, next_update=NOW + 9 * DAY)},
        "Root CA CRL is issued 2024-06-02",
    ),
    ("pck crl garbage", lambda p: {"pck_crl": b"\x30\x03\x02\x01"}, "cannot parse CRL"),
    ("root ca crl garbage", lambda p: {"root_ca_crl": b"not a crl"}, "cannot parse CRL"),
    ("pck crl only", lambda p: {"root_ca_crl": None}, "only one of"),
    ("root ca crl only", lambda p: {"pck_crl": None}, "only one of"),
]


@pytest.mark.parametrize(("name", "crls", "says"), CRL_MUTATIONS, ids=[m[0] for m in CRL_MUTATIONS])
def test_crl_mutations(
    platform: FakePlatform, quote: Quote, name: str, crls: Crls, says: str
) -> None:
    collateral = _collateral(platform, quote, **crls(platform))
    with pytest.raises(VerificationError) as err:
        _verify(platform, quote, collateral)
    assert err.value.check == "tdx-crl", f"{name}: {err.value}"
    assert says in err.value.detail, f"{name}: {err.value.detail}"


def test_a_revoked_pck_says_so_with_a_hint(platform: FakePlatform, quote: Quote) -> None:
    collateral = _collateral(
        platform, quote, pck_crl=platform.pck_crl(revoked=(platform.pck.serial_number,))
    )
    with pytest.raises(VerificationError) as err:
        _verify(platform, quote, collateral)
    assert err.value.detail.endswith(f"(serial {platform.pck.serial_number:x}) is revoked")
    assert "not to be trusted" in err.value.hint


def test_real_quote_refuses_crls_intel_did_not_sign(vectors: Path) -> None:
    """The real quote's PCK CA is Intel's: a TEST root's CRL cannot speak for it."""
    real = parse_quote((vectors / "tdx" / "quote_v4.dat").read_bytes())
    tcb = FakeTcbSigner.generate()
    collateral = dataclasses.replace(
        CollateralBuilder.for_quote(tcb, real).build(),
        pck_crl=crl(tcb.root, tcb.root_key),
        root_ca_crl=crl(tcb.root, tcb.root_key),
    )
    with pytest.raises(VerificationError) as err:
        evaluate_collateral(
            real,
            real.pck_chain[0],
            collateral,
            roots=[tcb.root, *pinned_intel_roots()],
            now=NOW,
        )
    assert err.value.check == "tdx-crl"
    assert "Root CA CRL is issued by" in err.value.detail
    assert "Intel SGX Root CA" in err.value.detail


# --- policy: require_collateral means revocation was checked -----------------------------------


def test_require_collateral_refuses_collateral_without_crls(
    platform: FakePlatform, quote: Quote
) -> None:
    bare = _collateral(platform, quote, pck_crl=None, root_ca_crl=None)
    tcb = evaluate_collateral(quote, platform.pck, bare, roots=[platform.tcb.root], now=NOW)
    with pytest.raises(PolicyError) as err:
        validate_quote(quote, TdxPolicy(require_collateral=True), tcb=tcb)
    assert list(err.value.violations) == [
        "require_collateral: the collateral has no PCK and Root CA CRLs, so revocation was not "
        "checked"
    ]
    # Without require_collateral the unchecked revocation is not a violation.
    validate_quote(quote, TdxPolicy(), tcb=tcb)
    full = evaluate_collateral(
        quote, platform.pck, _collateral(platform, quote), roots=[platform.tcb.root], now=NOW
    )
    validate_quote(quote, TdxPolicy(require_collateral=True), tcb=full)


# --- the collateral directory -------------------------------------------------------------------


def _write(directory: Path, collateral: TdxCollateral, **extra: bytes) -> Path:
    directory.mkdir()
    (directory / "tcb_info.json").write_bytes(collateral.tcb_info)
    (directory / "qe_identity.json").write_bytes(collateral.qe_identity)
    (directory / "tcb_signing_chain.pem").write_bytes(collateral.issuer_chain_pem)
    for name, data in extra.items():
        (directory / name.replace("_der", ".der").replace("_pem", ".pem")).write_bytes(data)
    return directory


def test_collateral_dir_reads_both_crls(
    tmp_path: Path, platform: FakePlatform, quote: Quote
) -> None:
    pck_pem = platform.pck_crl(encoding=serialization.Encoding.PEM)
    directory = _write(
        tmp_path / "c",
        _collateral(platform, quote),
        pck_crl_pem=pck_pem,
        root_ca_crl_der=platform.root_ca_crl(),
    )
    loaded = load_collateral_dir(directory)
    assert loaded.pck_crl == pck_pem and loaded.root_ca_crl is not None
    _verify(platform, quote, loaded)
    assert (
        load_collateral_dir(_write(tmp_path / "bare", _collateral(platform, quote))).pck_crl is None
    )


@pytest.mark.parametrize(
    ("files", "says"),
    [
        ({"pck_crl_der": b"x"}, "holds pck_crl.der but no root_ca_crl.der or root_ca_crl.pem"),
        ({"root_ca_crl_pem": b"x"}, "holds root_ca_crl.pem but no pck_crl.der or pck_crl.pem"),
        (
            {"pck_crl_der": b"x", "pck_crl_pem": b"y", "root_ca_crl_der": b"z"},
            "holds both pck_crl.der and pck_crl.pem",
        ),
    ],
)
def test_collateral_dir_crl_files_are_both_or_neither(
    tmp_path: Path, platform: FakePlatform, quote: Quote, files: dict[str, bytes], says: str
) -> None:
    directory = _write(tmp_path / "c", _collateral(platform, quote), **files)
    with pytest.raises(ParseError) as err:
        load_collateral_dir(directory)
    assert says in str(err.value)


def test_a_look_alike_ca_in_the_chain_is_not_where_crls_are_checked(
    platform: FakePlatform, quote: Quote
) -> None:
    """A CA of the same name but another key, put in the quote's chain in place of the real one:
    its key did not sign the PCK certificate, so no CRL signed by it can clear the PCK."""
    key, look_alike = platform.tcb.issue(FakePlatform.CA_CN, ca=True)
    forged = SimulatedTdxSigner(
        root=platform.tcb.root,
        platform_ca=look_alike,
        pck=platform.pck,
        pck_key=platform.signer._pck_key,
        attestation_key=platform.signer._attestation_key,
        tee_tcb_svn=platform.signer.tee_tcb_svn,
    )
    bad = parse_quote(forged.sign(report_data=bytes(64), mrtd=bytes(48)))
    collateral = _collateral(platform, bad, pck_crl=crl(look_alike, key))
    with pytest.raises(VerificationError) as err:
        evaluate_collateral(bad, platform.pck, collateral, roots=[platform.tcb.root], now=NOW)
    assert err.value.check == "tdx-crl"
    assert err.value.detail == "the quote's PCK chain lacks the PCK certificate's issuer"


def test_tcb_signing_under_another_root_is_not_cleared_by_this_roots_crl(
    platform: FakePlatform, quote: Quote
) -> None:
    """With two trusted roots, the Root CA CRL speaks only for certificates its root issued."""
    other = FakeTcbSigner.generate()
    collateral = dataclasses.replace(
        _collateral(platform, quote),
        tcb_info=CollateralBuilder.for_quote(other, quote).build().tcb_info,
        qe_identity=CollateralBuilder.for_quote(other, quote).build().qe_identity,
        issuer_chain_pem=other.chain_pem(),
    )
    with pytest.raises(VerificationError) as err:
        evaluate_collateral(
            quote, platform.pck, collateral, roots=[platform.tcb.root, other.root], now=NOW
        )
    assert err.value.check == "tdx-crl"
    assert err.value.detail.startswith("the TCB signing certificate is not issued by")
