"""The client sends nothing to /v1/ohttp unless every check passed (DESIGN.md section 4).

One row per check: a real simulated bundle with one thing wrong (the report re-signed over the
mutated bundle where needed, so the check the row names is the first to fail), served to a real
Session through a transport that records every request.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509

from attest import binding
from attest.bundle import CHECK_ORDER
from attest.errors import (
    OpenPCCError,
    ParseError,
    PolicyError,
    TransportError,
    VerificationError,
    exit_code_for,
)
from attest.sevsnp.abi import IMAGE_ID, POLICY_DEBUG_BIT, TcbVersion
from server.keys import KeyRing

Bundle = dict[str, object]
CHAT = {"messages": [{"role": "user", "content": "secret words"}], "stream": True}
CHECK_NAMES = [name for name, _ in CHECK_ORDER]


def _send_one(session: Any) -> None:
    async def go() -> None:
        async with session:
            async for _ in session.stream("POST", "/v1/chat/completions", CHAT):
                pass

    asyncio.run(go())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- one mutation per row ---------------------------------------------------------------------


def _truncated_report(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    b["report"] = _b64(base64.b64decode(str(b["report"]))[:-1])
    return b


def _flipped_signed_byte(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    raw = bytearray(base64.b64decode(str(b["report"])))
    raw[IMAGE_ID] ^= 0x01  # inside the signed range, but nothing parse or policy looks at
    b["report"] = _b64(bytes(raw))
    return b


def _other_chain(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    # Validly signed, by a chain whose root this client never trusted.
    return node.rebind(b, nonce, signer=node.other_snp)  # type: ignore[no-any-return]


def _reported_tcb_above_cert(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    t = node.snp.tcb
    higher = TcbVersion(t.bootloader, t.tee, t.snp, t.microcode + 1)
    return node.rebind(b, nonce, tcb=higher)  # type: ignore[no-any-return]


def _debug_policy(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    return node.rebind(b, nonce, policy=0x30000 | (1 << POLICY_DEBUG_BIT))  # type: ignore[no-any-return]


def _other_measurement(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    return node.rebind(b, nonce, measurement=node.other_measurement)  # type: ignore[no-any-return]


def _wrong_inclusion_proof(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    tl = dict(b["tlog"])  # type: ignore[call-overload]
    proof = list(tl["inclusion"])
    assert proof, "the test log must be large enough for a non-empty proof"
    proof[0] = bytes(32).hex()
    tl["inclusion"] = proof
    b["tlog"] = tl
    return b


def _unpinned_log_key(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    b["tlog"] = node.tlog_entry(node.unpinned_log)
    return b


def _key_config_swapped(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    b["key_config"] = _b64(KeyRing().current_config.encode())
    return b


def _gpu_evidence_of_another_node(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    # Genuine, fresh evidence from another node's GPU, but not the evidence this report binds.
    b["gpus"] = [node.gpu_entry(nonce, gpu=node.other_gpu)]
    return b


def _gpu_other_chain_bound(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    b["gpus"] = [node.gpu_entry(nonce, gpu=node.other_gpu)]
    return node.rebind(b, nonce)  # type: ignore[no-any-return]


def _gpu_cc_off_bound(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    b["gpus"] = [node.gpu_entry(nonce, cc_enabled=False)]
    return node.rebind(b, nonce)  # type: ignore[no-any-return]


def _gpu_stale_nonce_bound(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    b["gpus"] = [node.gpu_entry(bytes(32))]  # evidence for a nonce the client never sent
    return node.rebind(b, nonce)  # type: ignore[no-any-return]


def _garbage_key_config_bound(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    b["key_config"] = _b64(b"\x07not a key configuration")
    return node.rebind(b, nonce)  # type: ignore[no-any-return]


def _no_usable_suite_bound(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    # A well-formed key configuration offering only a suite this client cannot encrypt to
    # (HKDF-SHA256 with AES-256-GCM): check 9 must say so, not let sealing fail later.
    from server.ohttp import KeyConfig, Suite

    config = node.keys.current_config
    only = KeyConfig(config.key_id, config.kem_id, config.public_key, (Suite(0x0001, 0x0002),))
    b["key_config"] = _b64(only.encode())
    return node.rebind(b, nonce)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Row:
    id: str
    check: str
    mutate: Callable[[Any, Bundle, bytes | None], Bundle]
    error: type[OpenPCCError]
    exit_code: int
    says: str


ROWS = [
    Row("report-parse", "report-parse", _truncated_report, ParseError, 3, "1183 bytes"),
    Row(
        "report-signature",
        "report-signature",
        _flipped_signed_byte,
        VerificationError,
        4,
        "does not verify",
    ),
    Row("cert-chain", "cert-chain", _other_chain, VerificationError, 4, "trusted ARK"),
    Row(
        "tcb-consistency",
        "tcb-consistency",
        _reported_tcb_above_cert,
        VerificationError,
        4,
        "REPORTED_TCB",
    ),
    Row("policy", "policy", _debug_policy, PolicyError, 5, "POLICY.DEBUG is 1"),
    Row("measurement", "measurement", _other_measurement, VerificationError, 4, "!= manifest"),
    Row(
        "transparency-log-inclusion",
        "transparency-log",
        _wrong_inclusion_proof,
        VerificationError,
        4,
        "yields root",
    ),
    Row(
        "transparency-log-unpinned-key",
        "transparency-log",
        _unpinned_log_key,
        VerificationError,
        4,
        "pinned",
    ),
    Row("report-data-key", "report-data", _key_config_swapped, VerificationError, 4, "bind"),
    Row(
        "report-data-gpu-swapped",
        "report-data",
        _gpu_evidence_of_another_node,
        VerificationError,
        4,
        "GPU evidence",
    ),
    Row("gpu-other-chain", "gpu", _gpu_other_chain_bound, VerificationError, 4, "no pinned root"),
    Row("gpu-cc-off", "gpu", _gpu_cc_off_bound, VerificationError, 4, "confidential-computing"),
    Row("gpu-stale-nonce", "gpu", _gpu_stale_nonce_bound, VerificationError, 4, "nonce"),
    Row("key-config", "key-config", _garbage_key_config_bound, ParseError, 3, "key config"),
    Row(
        "key-config-no-usable-suite",
        "key-config",
        _no_usable_suite_bound,
        VerificationError,
        4,
        "offers no supported suite",
    ),
]


def test_every_check_has_a_row() -> None:
    assert {r.check for r in ROWS} == set(CHECK_NAMES)


@pytest.fixture(scope="module")
def node(sim_node: Any) -> Any:
    return sim_node


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_a_failed_check_sends_nothing(node: Any, row: Row) -> None:
    transport = node.transport(row.mutate)
    session = node.session(transport)
    with pytest.raises(row.error) as info:
        _send_one(session)
    err = info.value
    assert exit_code_for(err) == row.exit_code
    if isinstance(err, VerificationError):
        assert err.check == row.check
    if isinstance(err, PolicyError):
        # Every violation is carried; the run (below) names the check.
        assert err.violations
    assert row.says in str(err)
    # The run names exactly this check: everything before it passed, nothing after it ran.
    statuses = [(c.name, c.status) for c in session.last_run.checks]
    at = CHECK_NAMES.index(row.check)
    assert [n for n, _ in statuses] == CHECK_NAMES
    assert [s for _, s in statuses[:at]] == ["pass"] * at
    assert statuses[at] == (row.check, "fail")
    assert {s for _, s in statuses[at + 1 :]} <= {"not-run"}
    assert session.last_run.node is None
    assert len(transport.bundle_gets) == 1
    assert transport.ohttp_posts == []


def test_control_an_unmutated_bundle_is_sent_to(node: Any) -> None:
    """The harness is not vacuous: the same node, unmutated, gets the encrypted request."""
    transport = node.transport()
    session = node.session(transport)
    with pytest.raises(TransportError, match="HTTP 503"):
        _send_one(session)
    assert session.last_run.ok
    [post] = transport.ohttp_posts
    assert post.headers["content-type"] == "message/ohttp-chunked-req"
    # Sealed to the key the verified bundle carried, and nothing in it is plaintext.
    assert post.content[0] == node.keys.current_config.key_id
    assert b"secret words" not in post.content


def test_gpu_evidence_of_another_node_is_refused_naming_the_binding(node: Any) -> None:
    transport = node.transport(_gpu_evidence_of_another_node)
    session = node.session(transport)
    with pytest.raises(VerificationError) as info:
        _send_one(session)
    assert info.value.check == "report-data"
    assert "REPORT_DATA does not bind" in str(info.value)
    assert "GPU evidence" in str(info.value)
    assert transport.ohttp_posts == []


def test_the_report_data_recipe_is_the_contracts(node: Any) -> None:
    """The rows that re-sign rely on binding.report_data being what the verifier checks."""
    nonce = bytes(range(32))
    b = node.bundle(nonce)
    key_config = base64.b64decode(str(b["key_config"]))
    want = binding.report_data(
        key_config=key_config, gpus=b["gpus"], manifest=b["manifest"], nonce=nonce
    )
    report = base64.b64decode(str(b["report"]))
    from attest.sevsnp.abi import parse_report

    assert parse_report(report).report_data == want


def _without_signing_certificate(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    certs = str(b["certs"]).split("-----END CERTIFICATE-----\n")
    b["certs"] = "-----END CERTIFICATE-----\n".join(certs[1:])  # the VCEK (first) is gone
    return b


def test_a_signature_never_checked_is_never_shown_as_passed(node: Any) -> None:
    """No VCEK in the bundle (and none fetched): the chain fails, and the signature, which no
    key could check, reads not-run rather than pass."""
    transport = node.transport(_without_signing_certificate)
    session = node.session(transport)
    with pytest.raises(VerificationError, match="no VCEK certificate supplied"):
        _send_one(session)
    statuses = {c.name: c.status for c in session.last_run.checks}
    assert statuses["report-signature"] == "not-run"
    assert statuses["cert-chain"] == "fail"
    assert transport.ohttp_posts == []


def _surrogate_in_manifest(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    b["manifest"] = {**dict(b["manifest"]), "note": "\ud800"}  # type: ignore[call-overload]
    return b


def _certificate_with_an_unknown_key(node: Any, b: Bundle, nonce: bytes | None) -> Bundle:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    pems = x509.load_pem_x509_certificates(str(b["certs"]).encode())
    der = bytearray(pems[0].public_bytes(Encoding.DER))
    at = der.index(bytes.fromhex("06072a8648ce3d0201"))  # id-ecPublicKey, in the leaf's SPKI
    der[at + 2 : at + 9] = bytes.fromhex("2a8648ce3d0209")  # an OID no library knows as a key
    bad = x509.load_der_x509_certificate(bytes(der))
    b["certs"] = "".join(c.public_bytes(Encoding.PEM).decode() for c in [bad, *pems[1:]])
    return b


@pytest.mark.parametrize(
    ("mutate", "check"),
    [
        (_surrogate_in_manifest, "transparency-log"),
        (_certificate_with_an_unknown_key, "cert-chain"),
    ],
    ids=["lone-surrogate-in-manifest", "certificate-with-unknown-key-type"],
)
def test_evidence_a_library_chokes_on_fails_a_check_not_the_client(
    node: Any, mutate: Callable[[Any, Bundle, bytes | None], Bundle], check: str
) -> None:
    """Bytes that make cryptography or the JSON encoder raise their own errors end as one of
    our errors naming a check: never a traceback, never a request sent."""
    transport = node.transport(mutate)
    session = node.session(transport)
    with pytest.raises(OpenPCCError):
        _send_one(session)
    statuses = {c.name: c.status for c in session.last_run.checks}
    assert statuses[check] == "fail", session.last_run.to_dict()
    assert transport.ohttp_posts == []


@pytest.mark.parametrize(
    "raised", [ValueError("bad bytes"), RecursionError("deep"), x509.InvalidVersion("v", 9)]
)
def test_the_last_net_names_the_check_in_progress(
    node: Any, monkeypatch: pytest.MonkeyPatch, raised: Exception
) -> None:
    """A library error from a step not wrapped where it is called (here: the GPU step) fails
    that check, keeps the library's error as its cause, and sends nothing."""
    import attest.bundle

    def choke(*args: object, **kw: object) -> object:
        raise raised

    monkeypatch.setattr(attest.bundle, "_check_gpus", choke)
    transport = node.transport()
    session = node.session(transport)
    with pytest.raises(VerificationError) as info:
        _send_one(session)
    assert info.value.check == "gpu"
    assert str(info.value).startswith(f"gpu: malformed evidence: {type(raised).__name__}")
    assert info.value.__cause__ is raised
    assert transport.ohttp_posts == []


def test_a_programming_error_is_not_blamed_on_the_node(
    node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The net is for what libraries raise on bad input: a TypeError is a bug of ours and
    surfaces as itself, still with nothing sent."""
    import attest.bundle

    def bug(*args: object, **kw: object) -> object:
        raise TypeError("a bug")

    monkeypatch.setattr(attest.bundle, "_check_gpus", bug)
    transport = node.transport()
    session = node.session(transport)
    with pytest.raises(TypeError, match="a bug"):
        _send_one(session)
    assert transport.ohttp_posts == []
