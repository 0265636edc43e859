"""attest.crl: one loader for every vendor's CRL (PEM, DER, hex-encoded DER); only our errors."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.crl import MAX_CRL_SIZE, load_crl, validity_problem
from attest.errors import ParseError, VerificationError

from .tdx.fake_collateral import ISSUE, NEXT_UPDATE, FakeTcbSigner, crl


@pytest.fixture(scope="module")
def signer() -> FakeTcbSigner:
    return FakeTcbSigner.generate()


@pytest.fixture(scope="module")
def crl_der(signer: FakeTcbSigner) -> bytes:
    return crl(signer.root, signer.root_key, revoked=(1, 2, 3))


def test_load_crl_encodings(signer: FakeTcbSigner) -> None:
    der = crl(signer.root, signer.root_key)
    pem = crl(signer.root, signer.root_key, encoding=serialization.Encoding.PEM)
    for data in (der, pem, der.hex().encode(), der.hex().upper().encode() + b"\r\n"):
        assert load_crl(data).issuer == signer.root.subject
    assert load_crl(der).last_update_utc == ISSUE


def test_load_crl_errors_name_the_check() -> None:
    with pytest.raises(ParseError, match="not a CRL"):
        load_crl(b"")
    with pytest.raises(VerificationError) as err:
        load_crl(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", check="crl")
    assert err.value.check == "crl" and err.value.detail.startswith("cannot parse CRL")
    with pytest.raises(ParseError):
        load_crl(b"0" * (MAX_CRL_SIZE + 2))


def test_validity_problem(signer: FakeTcbSigner) -> None:
    c = load_crl(crl(signer.root, signer.root_key))
    assert validity_problem(c, ISSUE) is None and validity_problem(c, NEXT_UPDATE) is None
    assert validity_problem(c, ISSUE - timedelta(seconds=1)) == (
        "is issued 2024-05-25T00:00:00+00:00, after 2024-05-24T23:59:59+00:00"
    )
    late = datetime(2024, 7, 1, tzinfo=UTC)
    assert validity_problem(c, late) == (
        "is stale: its next update was due 2024-06-24T00:00:00+00:00"
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600) | st.text("0123456789abcdef", max_size=600).map(str.encode))
def test_fuzz_load_crl_raises_only_our_errors(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        load_crl(data)
    try:
        load_crl(data, check="tdx-crl")
    except VerificationError as e:
        assert e.check == "tdx-crl" and e.detail.startswith("cannot parse CRL")


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_mutated_crl_raises_only_our_errors(
    signer: FakeTcbSigner, data: st.DataObject
) -> None:
    der = bytearray(crl(signer.root, signer.root_key, revoked=(1, 2, 3)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, 4095)) % len(der)  # ECDSA makes the length vary
        der[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, 4096)) % (len(der) + 1)
    with contextlib.suppress(ParseError):
        load_crl(bytes(der[:cut]))


def test_a_crl_of_an_unknown_version_is_a_parse_error(crl_der: bytes) -> None:
    """cryptography raises its own InvalidVersion (not a ValueError) for it."""
    der = bytearray(crl_der)
    at = der.index(b"\x02\x01\x01")  # tbsCertList's version: v2 (1)
    der[at + 2] = 75
    with pytest.raises(ParseError):
        load_crl(bytes(der))
    with pytest.raises(VerificationError):
        load_crl(bytes(der), check="crl")
