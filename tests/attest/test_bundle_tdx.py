"""Intel TDX in the bundle verifier: a simulated TDX node, one mutation per row, the real quote.

The node is real simulated evidence end to end: :class:`SimulatedTdxSigner` quotes (DCAP v4),
simulated GPU evidence, a real transparency log and the gateway's own :class:`BundleBuilder`.
Where a row targets a check after the signature, the quote is re-signed over the mutated bundle
(``rebind``) so that the check the row names is the first to fail.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from attest import binding
from attest.bundle import (
    CHECK_ORDER,
    ClientPolicy,
    TrustAnchors,
    VerificationRun,
    run_verification,
    verify_bundle,
)
from attest.errors import OpenPCCError, ParseError, PolicyError, VerificationError
from attest.nvgpu import SimulatedGpu
from attest.sevsnp.sim import SimulatedSnpSigner
from attest.sevsnp.validate import SnpPolicy
from attest.tdx import TdxPolicy, parse_quote, pinned_intel_roots
from attest.tdx.abi import (
    BODY_MRCONFIGID,
    HEADER_SIZE,
    QE_MRENCLAVE,
    TD10_BODY_SIZE,
    TD_ATTRIBUTES_DEBUG,
)
from attest.tdx.sim import TD_ATTRIBUTES_SEPT_VE_DISABLE, SimulatedTdxSigner
from attest.tlog import VerifierKey
from cvm_boot.tlog import TransparencyLog, bundle_entry
from server.attestation import BundleBuilder, SimulatedGpuProvider, SimulatedTdxProvider
from server.keys import KeyRing

MRTD = hashlib.sha384(b"openpcc test TDX release").digest()
OTHER_MRTD = hashlib.sha384(b"some other TD").digest()
# The TD's runtime registers: RTMR0-2 pinned by the release manifest, RTMR3 left to the TD.
RTMRS = tuple(hashlib.sha384(b"openpcc test RTMR%d" % i).digest() for i in range(4))
RTMR_PINS = {f"rtmr{i}": RTMRS[i].hex() for i in range(3)}
NONCE = bytes(range(32))
CHECK_NAMES = [name for name, _ in CHECK_ORDER]
# The signature data starts after the header, the TD 1.0 body and the 4-byte length.
SIG_DATA = HEADER_SIZE + TD10_BODY_SIZE + 4
QE_REPORT = SIG_DATA + 64 + 64 + 6  # quote signature, attestation key, cert data header
REAL_QUOTE_NOW = datetime(2024, 6, 1, tzinfo=UTC)  # inside the real PCK chain's validity

Bundle = dict[str, Any]


class TdxNode:
    """FAKE NODE for tests: one simulated TDX node, plus another node's keys to swap in."""

    def __init__(self, base: Path) -> None:
        self.signer = SimulatedTdxSigner.generate(base / "tdx")
        self.other_signer = SimulatedTdxSigner.generate(base / "other-tdx")
        self.gpu = SimulatedGpu.generate(base / "gpu")
        self.other_gpu = SimulatedGpu.generate(base / "other-gpu")
        self.manifest: dict[str, object] = {
            "measurement": MRTD.hex(),
            "tee": "tdx",
            "note": "FAKE release manifest for tests",
            "tdx": {"mrtd": MRTD.hex(), **RTMR_PINS},
        }
        manifest_bytes = binding.canonical_json(self.manifest)
        self.log = TransparencyLog.open(base / "log")
        for data in (manifest_bytes, b"filler release 1", b"filler release 2"):
            self.log.append(data)
        self.keys = KeyRing()
        self.builder = BundleBuilder(
            cpu=SimulatedTdxProvider(base / "tdx", MRTD, rtmrs=RTMRS),
            gpu=SimulatedGpuProvider(base / "gpu"),
            keys=self.keys,
            manifest=self.manifest,
            tlog_entry=lambda: bundle_entry(self.log, manifest_bytes),
        )

    def anchors(self, **overrides: Any) -> TrustAnchors:
        fields: dict[str, Any] = {
            "amd_roots": (),
            "nvidia_roots": (),
            "log_keys": (VerifierKey.parse(self.log.verifier_key),),
            "simulation_gpu_roots": (self.gpu.root_certificate(),),
            "simulation_tdx_roots": (self.signer.root_certificate(),),
        }
        fields.update(overrides)
        return TrustAnchors(**fields)

    def bundle(self, nonce: bytes | None = NONCE) -> Bundle:
        return copy.deepcopy(self.builder.build(nonce))

    def rebind(
        self,
        bundle: Bundle,
        nonce: bytes | None = NONCE,
        *,
        signer: SimulatedTdxSigner | None = None,
        mrtd: bytes = MRTD,
        report_data: bytes | None = None,
        **sign_kw: Any,
    ) -> Bundle:
        """A fresh quote whose REPORTDATA binds the bundle as it now is (or ``report_data``)."""
        signer = signer or self.signer
        rd = report_data or binding.report_data(
            key_config=base64.b64decode(bundle["key_config"]),
            gpus=bundle["gpus"],
            manifest=bundle["manifest"],
            nonce=nonce,
        )
        sign_kw.setdefault("rtmrs", RTMRS)
        quote = signer.sign(report_data=rd, mrtd=mrtd, **sign_kw)
        bundle["report"] = base64.b64encode(quote).decode()
        bundle["certs"] = signer.chain_pem().decode()
        return bundle

    def gpu_entry(self, nonce: bytes | None, gpu: SimulatedGpu) -> dict[str, str]:
        evidence = gpu.evidence(binding.gpu_nonce(nonce))
        return {
            "vendor": "sim-nvidia",
            "evidence": base64.b64encode(evidence).decode(),
            "certs": gpu.chain_pem().decode(),
        }


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> TdxNode:
    return TdxNode(tmp_path_factory.mktemp("tdx-node"))


def _verify(
    node: TdxNode,
    bundle: Bundle,
    *,
    nonce: bytes | None = NONCE,
    policy: ClientPolicy | None = None,
    trust: TrustAnchors | None = None,
    now: datetime | None = None,
) -> VerificationRun:
    return run_verification(
        bundle,
        trust=trust or node.anchors(),
        policy=policy or ClientPolicy(snp=SnpPolicy()),
        nonce=nonce,
        now=now,
    )


def _statuses(run: VerificationRun) -> dict[str, str]:
    return {c.name: c.status for c in run.checks}


def _expected_statuses(check: str) -> dict[str, str]:
    """Every check's status when ``check`` is the one that fails.

    verify_quote walks root -> PCK -> QE report -> attestation key -> quote signature, so the
    TDX steps 2-4 finish in the order 3, 4, 2: a broken chain leaves the quote signature not
    run, and a bad quote signature comes after a chain and QE binding that did verify.
    """
    i = CHECK_NAMES.index(check)
    out = {n: "pass" for n in CHECK_NAMES[:i]}
    out[check] = "fail"
    out.update({n: "not-run" for n in CHECK_NAMES[i + 1 :]})
    if check in ("cert-chain", "tcb-consistency"):
        out["report-signature"] = "not-run"
    if check == "report-signature":
        out["cert-chain"] = out["tcb-consistency"] = "pass"
    return out


def _assert_failed_at(run: VerificationRun, check: str) -> None:
    assert not run.ok and run.node is None
    assert [c.name for c in run.checks] == CHECK_NAMES
    assert _statuses(run) == _expected_statuses(check), run.to_dict()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _quote(bundle: Bundle) -> bytes:
    return base64.b64decode(bundle["report"])


def _flip(bundle: Bundle, offset: int) -> Bundle:
    raw = bytearray(_quote(bundle))
    raw[offset] ^= 0x01
    bundle["report"] = _b64(bytes(raw))
    return bundle


# -- a good bundle ------------------------------------------------------------------------------


@pytest.mark.parametrize("nonce", [NONCE, None], ids=["fresh-nonce", "no-nonce"])
def test_good_sim_tdx_bundle_verifies(node: TdxNode, nonce: bytes | None) -> None:
    run = _verify(node, node.bundle(nonce), nonce=nonce)
    assert run.ok, run.to_dict()
    assert all(s == "pass" for s in _statuses(run).values()), run.to_dict()
    n = run.node
    assert n is not None and n.genuine
    assert n.tee == "sim-tdx" and n.simulated is True and n.product == "Intel TDX"
    assert n.measurement == MRTD
    assert n.report is None and n.quote is not None and n.quote.body.mrtd == MRTD
    assert n.log_index == 0 and n.tree_size == 3
    details = {c.name: c.detail for c in run.checks}
    assert details["report-parse"].startswith("sim-tdx quote v4")
    assert "Intel SGX Root CA" in details["cert-chain"]
    assert "TCB level not evaluated" in details["tcb-consistency"]
    assert details["measurement"].endswith("RTMR0, RTMR1, RTMR2 match the manifest")
    assert run.to_dict()["node"]["tee"] == "sim-tdx"  # type: ignore[index]


def test_verify_bundle_returns_the_node(node: TdxNode) -> None:
    verified = verify_bundle(
        node.bundle(), trust=node.anchors(), policy=ClientPolicy(snp=SnpPolicy()), nonce=NONCE
    )
    assert (
        verified.tee == "sim-tdx" and verified.key_config.key_id == node.keys.current_config.key_id
    )


def test_mrtd_allowlist_that_names_the_node_passes(node: TdxNode) -> None:
    policy = ClientPolicy(snp=SnpPolicy(), tdx=TdxPolicy(mrtd=(OTHER_MRTD, MRTD)))
    run = _verify(node, node.bundle(), policy=policy)
    assert run.ok, run.to_dict()
    assert "mrtd" in next(c.detail for c in run.checks if c.name == "policy")


def test_manifest_register_pins_are_compared(node: TdxNode) -> None:
    run = _verify(node, node.bundle())
    assert run.ok, run.to_dict()
    detail = next(c.detail for c in run.checks if c.name == "measurement")
    assert "RTMR0, RTMR1, RTMR2 match the manifest" in detail
    b = node.bundle()
    b["manifest"] = {**b["manifest"], "tdx": {**RTMR_PINS, "rtmr3": RTMRS[3].hex()}}
    b = node.rebind(b)
    skip_log = ClientPolicy(snp=SnpPolicy(), skip=frozenset({"transparency-log"}))
    run = _verify(node, b, policy=skip_log)
    assert run.ok, run.to_dict()
    detail = next(c.detail for c in run.checks if c.name == "measurement")
    assert "RTMR0, RTMR1, RTMR2, RTMR3 match the manifest" in detail


def _mrtd_only(node: TdxNode) -> Bundle:
    b = node.bundle()
    b["manifest"] = {**b["manifest"], "tdx": {"mrtd": MRTD.hex()}}
    return node.rebind(b)


def test_rtmrs_the_manifest_leaves_out_may_be_bound_by_the_policy(node: TdxNode) -> None:
    """The client's own allowlist (checked at check 5) binds what the release did not pin."""
    skip_log = frozenset({"transparency-log"})
    policy = ClientPolicy(
        snp=SnpPolicy(),
        skip=skip_log,
        tdx=TdxPolicy(rtmr0=(RTMRS[0],), rtmr1=(RTMRS[1],), rtmr2=(RTMRS[2],)),
    )
    run = _verify(node, _mrtd_only(node), policy=policy)
    assert run.ok, run.to_dict()
    detail = next(c.detail for c in run.checks if c.name == "measurement")
    assert "RTMR0, RTMR1, RTMR2 in the policy's allowlist" in detail
    # Two of three is not enough.
    partial = ClientPolicy(
        snp=SnpPolicy(), skip=skip_log, tdx=TdxPolicy(rtmr0=(RTMRS[0],), rtmr1=(RTMRS[1],))
    )
    run = _verify(node, _mrtd_only(node), policy=partial)
    _assert_failed_at(run, "measurement")
    assert "RTMR2 pinned neither" in str(run.error)


def test_unpinned_rtmrs_pass_only_where_the_policy_names_it(node: TdxNode) -> None:
    skip_log = frozenset({"transparency-log"})
    run = _verify(node, _mrtd_only(node), policy=ClientPolicy(snp=SnpPolicy(), skip=skip_log))
    _assert_failed_at(run, "measurement")
    assert run.error is not None and "allow_unpinned_rtmrs" in run.error.hint
    assert "openpcc-appliance tdx-reference" in run.error.hint
    lax = ClientPolicy(snp=SnpPolicy(), skip=skip_log, tdx=TdxPolicy(allow_unpinned_rtmrs=True))
    run = _verify(node, _mrtd_only(node), policy=lax)
    assert run.ok, run.to_dict()
    detail = next(c.detail for c in run.checks if c.name == "measurement")
    assert "RTMR0, RTMR1, RTMR2 NOT bound (policy allow_unpinned_rtmrs)" in detail
    # With the log skipped, the manifest is only the node's word: the run says so.
    log = next(c for c in run.checks if c.name == "transparency-log")
    assert log.status == "skip" and "the node's own word" in log.detail


def test_allow_unpinned_rtmrs_must_be_a_boolean() -> None:
    with pytest.raises(ParseError, match="allow_unpinned_rtmrs must be true or false"):
        TdxPolicy.from_mapping({"allow_unpinned_rtmrs": "yes"})
    assert TdxPolicy.from_mapping({"allow_unpinned_rtmrs": True}).allow_unpinned_rtmrs


# -- one mutation per row -----------------------------------------------------------------------


def _truncated(node: TdxNode, b: Bundle) -> Bundle:
    b["report"] = _b64(_quote(b)[: HEADER_SIZE + 100])
    return b


def _wrong_version(node: TdxNode, b: Bundle) -> Bundle:
    raw = bytearray(_quote(b))
    raw[0] = 3
    b["report"] = _b64(bytes(raw))
    return b


def _signed_byte_flipped(node: TdxNode, b: Bundle) -> Bundle:
    return _flip(b, HEADER_SIZE + BODY_MRCONFIGID)  # signed, but nothing else looks at it


def _signature_flipped(node: TdxNode, b: Bundle) -> Bundle:
    return _flip(b, SIG_DATA + 5)


def _other_chain(node: TdxNode, b: Bundle) -> Bundle:
    # Validly signed, by a PCK chain whose root this client never trusted.
    return node.rebind(b, signer=node.other_signer)


def _qe_report_tampered(node: TdxNode, b: Bundle) -> Bundle:
    return _flip(b, QE_REPORT + QE_MRENCLAVE)


def _debug(node: TdxNode, b: Bundle) -> Bundle:
    attrs = bytearray(TD_ATTRIBUTES_SEPT_VE_DISABLE)
    attrs[0] |= TD_ATTRIBUTES_DEBUG
    return node.rebind(b, td_attributes=bytes(attrs))


def _other_mrtd(node: TdxNode, b: Bundle) -> Bundle:
    return node.rebind(b, mrtd=OTHER_MRTD)


def _rtmr_pin_missed(node: TdxNode, b: Bundle) -> Bundle:
    pins = {**RTMR_PINS, "rtmr1": hashlib.sha384(b"another kernel").digest().hex()}
    b["manifest"] = {**b["manifest"], "tdx": pins}
    return node.rebind(b)


def _rtmr_unpinned(node: TdxNode, b: Bundle) -> Bundle:
    # A release that pins MRTD only: the kernel, initrd and command line are not bound.
    b["manifest"] = {**b["manifest"], "tdx": {"mrtd": MRTD.hex()}}
    return node.rebind(b)


def _rtmr2_unpinned(node: TdxNode, b: Bundle) -> Bundle:
    pins = {k: v for k, v in RTMR_PINS.items() if k != "rtmr2"}
    b["manifest"] = {**b["manifest"], "tdx": pins}
    return node.rebind(b)


def _unknown_manifest_register(node: TdxNode, b: Bundle) -> Bundle:
    b["manifest"] = {**b["manifest"], "tdx": {"rtmr9": MRTD.hex()}}
    return node.rebind(b)


def _report_data_altered(node: TdxNode, b: Bundle) -> Bundle:
    rd = bytearray(
        binding.report_data(
            key_config=base64.b64decode(b["key_config"]),
            gpus=b["gpus"],
            manifest=b["manifest"],
            nonce=NONCE,
        )
    )
    rd[0] ^= 0x01
    return node.rebind(b, report_data=bytes(rd))


def _gpu_evidence_of_another_node(node: TdxNode, b: Bundle) -> Bundle:
    # Genuine, fresh evidence from another node's GPU, but not the evidence this quote binds.
    b["gpus"] = [node.gpu_entry(NONCE, node.other_gpu)]
    return b


def _key_config_swapped(node: TdxNode, b: Bundle) -> Bundle:
    b["key_config"] = _b64(KeyRing().current_config.encode())
    return b


def _log_proof_wrong(node: TdxNode, b: Bundle) -> Bundle:
    b["tlog"]["inclusion"][0] = bytes(32).hex()
    return b


def _gpu_other_chain_bound(node: TdxNode, b: Bundle) -> Bundle:
    b["gpus"] = [node.gpu_entry(NONCE, node.other_gpu)]
    return node.rebind(b)


@dataclass(frozen=True)
class Row:
    id: str
    check: str
    mutate: Callable[[TdxNode, Bundle], Bundle]
    error: type[OpenPCCError]
    says: str
    policy: ClientPolicy | None = None


ROWS = [
    Row("truncated", "report-parse", _truncated, ParseError, "truncated"),
    Row("version", "report-parse", _wrong_version, ParseError, "version 3"),
    Row("signed-byte", "report-signature", _signed_byte_flipped, VerificationError, "tdx-quote"),
    Row("signature", "report-signature", _signature_flipped, VerificationError, "does not verify"),
    Row("untrusted-root", "cert-chain", _other_chain, VerificationError, "no pinned root issued"),
    Row("qe-report", "tcb-consistency", _qe_report_tampered, VerificationError, "QE report"),
    Row("debug", "policy", _debug, PolicyError, "td_attributes.debug"),
    Row(
        "mrtd-not-allowed",
        "policy",
        lambda node, b: b,
        PolicyError,
        f"mrtd: quote {MRTD.hex()}",
        ClientPolicy(snp=SnpPolicy(), tdx=TdxPolicy(mrtd=(OTHER_MRTD,))),
    ),
    Row("mrtd-not-manifest", "measurement", _other_mrtd, VerificationError, "quote MRTD"),
    Row("rtmr-pin", "measurement", _rtmr_pin_missed, VerificationError, "RTMR1"),
    Row(
        "rtmr-unpinned",
        "measurement",
        _rtmr_unpinned,
        VerificationError,
        "RTMR0, RTMR1, RTMR2 pinned neither by the manifest",
    ),
    Row("rtmr2-unpinned", "measurement", _rtmr2_unpinned, VerificationError, "RTMR2 pinned"),
    Row(
        "rtmr-allowlist-other",
        "policy",
        lambda node, b: b,
        PolicyError,
        "rtmr1: quote",
        ClientPolicy(snp=SnpPolicy(), tdx=TdxPolicy(rtmr1=(OTHER_MRTD,))),
    ),
    Row("tdx-key", "measurement", _unknown_manifest_register, VerificationError, "tdx.rtmr9"),
    Row("log", "transparency-log", _log_proof_wrong, VerificationError, "yields root"),
    Row("report-data", "report-data", _report_data_altered, VerificationError, "REPORTDATA"),
    Row("gpu-swapped", "report-data", _gpu_evidence_of_another_node, VerificationError, "GPU"),
    Row("key-config", "report-data", _key_config_swapped, VerificationError, "key config"),
    Row("gpu-untrusted", "gpu", _gpu_other_chain_bound, VerificationError, "no pinned root issued"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_mutation_fails_at_its_check(node: TdxNode, row: Row) -> None:
    run = _verify(node, row.mutate(node, node.bundle()), policy=row.policy)
    _assert_failed_at(run, row.check)
    assert isinstance(run.error, row.error)
    if not isinstance(run.error, ParseError):  # a parse error names no check; its row does
        assert getattr(run.error, "check", None) == row.check
    assert row.says in str(run.error), str(run.error)


# -- what the client trusts -----------------------------------------------------------------------


def test_sim_tdx_refused_without_a_simulation_tdx_root(
    node: TdxNode, tmp_path_factory: pytest.TempPathFactory
) -> None:
    snp = SimulatedSnpSigner.generate(tmp_path_factory.mktemp("snp"))
    # Trusting a simulated SEV-SNP root (and the real Intel root) does not admit sim-tdx.
    trust = node.anchors(
        simulation_tdx_roots=(),
        simulation_snp_roots=(snp.ark_certificate(),),
        intel_roots=tuple(pinned_intel_roots()),
    )
    run = _verify(node, node.bundle(), trust=trust)
    _assert_failed_at(run, "cert-chain")
    assert "SIMULATED evidence and no simulation root is trusted" in str(run.error)
    assert run.error is not None and "openpcc trust --simulated" in run.error.hint


def test_simulated_quote_presented_as_real_tdx_is_refused(node: TdxNode) -> None:
    b = node.bundle()
    b["tee"] = "tdx"
    trust = node.anchors(intel_roots=tuple(pinned_intel_roots()))
    run = _verify(node, b, trust=trust)
    _assert_failed_at(run, "cert-chain")
    assert "no pinned root issued" in str(run.error)


def test_real_tdx_with_no_intel_root_fails_closed(node: TdxNode) -> None:
    b = node.bundle()
    b["tee"] = "tdx"
    run = _verify(node, b)  # intel_roots empty: nothing may fall back to a default root
    _assert_failed_at(run, "cert-chain")
    assert "no pinned root" in str(run.error)


def test_a_tdx_policy_never_allows_debug() -> None:
    with pytest.raises(ParseError, match="may not allow debug"):
        ClientPolicy(snp=SnpPolicy(), tdx=TdxPolicy(allow_debug=True))
    with pytest.raises(ParseError, match="may not allow debug or migration"):
        ClientPolicy(snp=SnpPolicy(), tdx=TdxPolicy(allow_migratable=True))
    with pytest.raises(ParseError, match="may not pin report_data"):
        ClientPolicy(snp=SnpPolicy(), tdx=TdxPolicy(report_data=bytes(64)))


# -- the real TDX quote -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_quote(vectors: Path) -> bytes:
    return (vectors / "tdx" / "quote_v4.dat").read_bytes()


def _real_bundle(node: TdxNode, quote: bytes) -> Bundle:
    b = node.bundle()
    b["tee"] = "tdx"
    b["report"] = _b64(quote)
    b["certs"] = ""
    b["manifest"] = {"measurement": parse_quote(quote).body.mrtd.hex(), "tee": "tdx"}
    return b


def test_real_quote_verifies_to_the_intel_root_and_cannot_be_bound(
    node: TdxNode, real_quote: bytes
) -> None:
    """The captured quote is genuine (checks 1-4 pass against the pinned Intel root) but no key
    config of ours was bound into it. It comes from a debug TD, so the policy floor refuses it
    before the binding check runs; the binding is checked directly below."""
    b = _real_bundle(node, real_quote)
    policy = ClientPolicy(snp=SnpPolicy(), skip=frozenset({"gpu", "transparency-log"}))
    trust = node.anchors(intel_roots=tuple(pinned_intel_roots()), simulation_tdx_roots=())
    run = _verify(node, b, trust=trust, policy=policy, now=REAL_QUOTE_NOW)
    statuses = _statuses(run)
    for check in ("report-parse", "report-signature", "cert-chain", "tcb-consistency"):
        assert statuses[check] == "pass", run.to_dict()
    assert "O=Intel Corporation,CN=Intel SGX Root CA (SHA-256 44a0196b" in next(
        c.detail for c in run.checks if c.name == "cert-chain"
    )
    _assert_failed_at(run, "policy")
    assert isinstance(run.error, PolicyError)
    assert "td_attributes.debug" in str(run.error)
    # The binding the report-data check computes is not what this quote carries.
    want = binding.report_data(
        key_config=base64.b64decode(b["key_config"]),
        gpus=b["gpus"],
        manifest=b["manifest"],
        nonce=NONCE,
    )
    assert parse_quote(real_quote).body.report_data != want


def test_real_quote_outside_its_chain_validity_fails_the_chain(
    node: TdxNode, real_quote: bytes
) -> None:
    trust = node.anchors(intel_roots=tuple(pinned_intel_roots()))
    run = _verify(
        node, _real_bundle(node, real_quote), trust=trust, now=datetime(2031, 1, 1, tzinfo=UTC)
    )
    _assert_failed_at(run, "cert-chain")
    assert "is not valid at" in str(run.error)


def test_real_quote_presented_as_simulated_is_refused(node: TdxNode, real_quote: bytes) -> None:
    b = _real_bundle(node, real_quote)
    b["tee"] = "sim-tdx"
    run = _verify(node, b, now=REAL_QUOTE_NOW)
    _assert_failed_at(run, "cert-chain")


# -- one physical GPU counts once ------------------------------------------------------------------


def _as_real_gpu(node: TdxNode, entry: dict[str, str]) -> dict[str, str]:
    # Evidence from the simulated GPU, presented as NVIDIA's and trusted as such below: what a
    # gateway listing one real GPU twice would send.
    return {**entry, "vendor": "nvidia"}


def test_the_same_real_gpu_listed_twice_counts_once(node: TdxNode) -> None:
    trust = node.anchors(nvidia_roots=(node.gpu.root_certificate(),))
    lax = ClientPolicy(snp=SnpPolicy(), require_gpu_cc=False)  # no RIMs for this "real" GPU
    one = _as_real_gpu(node, node.gpu_entry(NONCE, node.gpu))
    b = node.rebind({**node.bundle(), "gpus": [one]})
    assert _verify(node, b, trust=trust, policy=lax).ok
    twice = node.rebind({**node.bundle(), "gpus": [one, dict(one)]})
    run = _verify(node, twice, trust=trust, policy=lax)
    _assert_failed_at(run, "gpu")
    assert "GPU 1: the same device certificate as an earlier GPU" in str(run.error)


def test_a_real_gpu_without_rims_fails_closed_unless_the_policy_says_so(node: TdxNode) -> None:
    """No report field says CC on; for a real GPU only NVIDIA's RIMs establish it (the
    simulation's reference values never count for vendor "nvidia")."""
    trust = node.anchors(nvidia_roots=(node.gpu.root_certificate(),))
    one = _as_real_gpu(node, node.gpu_entry(NONCE, node.gpu))
    b = node.rebind({**node.bundle(), "gpus": [one]})
    run = _verify(node, b, trust=trust)
    _assert_failed_at(run, "gpu")
    assert "GPU 0: confidential-computing state not established" in str(run.error)
    assert run.error is not None and "[gpu] rims" in run.error.hint
    lax = ClientPolicy(snp=SnpPolicy(), require_gpu_cc=False)
    run = _verify(node, b, trust=trust, policy=lax)
    assert run.ok, run.to_dict()
    detail = next(c.detail for c in run.checks if c.name == "gpu")
    assert "measurements not compared with RIMs: CC/DevTools state not established" in detail
