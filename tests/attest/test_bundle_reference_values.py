"""Reference values in the bundle verifier: Intel TDX collateral and NVIDIA RIMs.

A simulated TDX node (:class:`SimulatedTdxSigner` quotes, :class:`SimulatedGpu` evidence, a real
transparency log, the gateway's own :class:`BundleBuilder`) is verified with collateral built by
``tdx/fake_collateral.py`` around its own quote and signed by that module's TEST root, and with
RIMs built by ``nvgpu/fake_rim.py`` around the simulated GPU's own measurements and signed by a
TEST RIM chain. One mutation per row, each naming the check that fails and what it says.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from attest import binding
from attest.bundle import (
    CHECK_ORDER,
    ClientPolicy,
    TrustAnchors,
    VerificationRun,
    run_verification,
)
from attest.errors import ParseError, PolicyError, VerificationError
from attest.nvgpu import GpuReport, SimulatedGpu, VerifiedRim, parse_gpu_report, verify_rim
from attest.sevsnp.validate import SnpPolicy
from attest.tdx import TcbStatus, TdxCollateral, TdxPolicy, parse_quote
from attest.tdx.sim import SimulatedTdxSigner
from attest.tlog import VerifierKey
from cvm_boot.tlog import TransparencyLog, bundle_entry
from server.attestation import BundleBuilder, SimulatedGpuProvider, SimulatedTdxProvider
from server.keys import KeyRing

from .nvgpu.fake_rim import FakeRimSigner, rim_pair, unsigned_rim
from .tdx.fake_collateral import CollateralBuilder, FakePlatform, FakeTcbSigner

MRTD = hashlib.sha384(b"openpcc test TDX release (reference values)").digest()
RTMRS = tuple(hashlib.sha384(b"reference RTMR%d" % i).digest() for i in range(4))
NONCE = bytes(range(32))
NOW = datetime.now(UTC).replace(microsecond=0)
CHECK_NAMES = [name for name, _ in CHECK_ORDER]
ADVISORY = "INTEL-SA-00837"

Bundle = dict[str, Any]


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class ReferenceNode:
    """FAKE NODE for tests: a simulated TDX node with one simulated GPU, plus the TEST signers
    of its collateral and RIMs."""

    def __init__(self, base: Path, *, own_pck_chain: bool = False) -> None:
        self.tcb_signer = FakeTcbSigner.generate()
        self.signer = SimulatedTdxSigner.generate(base / "tdx")
        # own_pck_chain: the node quotes with a PCK chain under the collateral's TEST root (one
        # root, as with Intel's), so tests can sign its CRLs.
        self.platform = FakePlatform.generate(self.tcb_signer) if own_pck_chain else None
        if self.platform is not None:
            self.platform.save(base / "tdx")
            self.signer = SimulatedTdxSigner.load(base / "tdx")
        self.gpu = SimulatedGpu.generate(base / "gpu")
        self.manifest: dict[str, object] = {
            "measurement": MRTD.hex(),
            "tee": "tdx",
            "note": "FAKE release manifest for tests",
            "tdx": {f"rtmr{i}": r.hex() for i, r in enumerate(RTMRS[:3])},
        }
        manifest_bytes = binding.canonical_json(self.manifest)
        self.log = TransparencyLog.open(base / "log")
        self.log.append(manifest_bytes)
        self.builder = BundleBuilder(
            cpu=SimulatedTdxProvider(base / "tdx", MRTD, rtmrs=RTMRS),
            gpu=SimulatedGpuProvider(base / "gpu"),
            keys=KeyRing(),
            manifest=self.manifest,
            tlog_entry=lambda: bundle_entry(self.log, manifest_bytes),
        )
        self.rim_signer = FakeRimSigner.generate()
        quote = parse_quote(self.signer.sign(report_data=bytes(64), mrtd=MRTD))
        self.collateral = CollateralBuilder.for_quote(self.tcb_signer, quote)
        # The fake documents are dated 2024; these are checked at the real clock's time.
        for document in (self.collateral.tcb, self.collateral.qe):
            document["issueDate"] = _iso(NOW - timedelta(days=1))
            document["nextUpdate"] = _iso(NOW + timedelta(days=29))
        self.gpu_report: GpuReport = parse_gpu_report(self.gpu.evidence(bytes(32)))

    def anchors(self, *, collateral_root: bool = True) -> TrustAnchors:
        """The simulation roots; the collateral's TEST root beside the simulated TDX root, as the
        TCB signing chain must reach a root that anchors the quote."""
        tdx_roots: tuple[x509.Certificate, ...] = (self.signer.root_certificate(),)
        if collateral_root:
            tdx_roots += (self.tcb_signer.root,)
        return TrustAnchors(
            amd_roots=(),
            nvidia_roots=(),
            log_keys=(VerifierKey.parse(self.log.verifier_key),),
            simulation_gpu_roots=(self.gpu.root_certificate(),),
            simulation_tdx_roots=tdx_roots,
        )

    def bundle(self) -> Bundle:
        return copy.deepcopy(self.builder.build(NONCE))

    def collateral_with(self, mutate: Callable[[CollateralBuilder], None]) -> TdxCollateral:
        builder = self.collateral.copy()
        mutate(builder)
        return builder.build()

    def collateral_with_crls(
        self, *, revoked_pck: bool = False, days_left: int = 29
    ) -> TdxCollateral:
        """The collateral with current CRLs (``own_pck_chain`` nodes only)."""
        assert self.platform is not None
        last = min(NOW - timedelta(days=1), NOW + timedelta(days=days_left - 1))
        dates = {"last_update": last, "next_update": NOW + timedelta(days=days_left)}
        revoked = (self.platform.pck.serial_number,) if revoked_pck else ()
        return dataclasses.replace(
            self.collateral.build(),
            pck_crl=self.platform.pck_crl(revoked=revoked, **dates),
            root_ca_crl=self.platform.root_ca_crl(**dates),
        )

    def rims(
        self,
        *,
        change: dict[int, bytes] | None = None,
        driver_version: str | None = None,
        signer: FakeRimSigner | None = None,
    ) -> tuple[VerifiedRim, ...]:
        """A driver and a VBIOS RIM describing the simulated GPU (``change``: other values)."""
        signer = signer or self.rim_signer
        report = self.gpu_report
        driver, vbios = rim_pair(report, change=change)
        files = {
            "driver.swidtag": unsigned_rim(driver_version or report.opaque.driver_version, driver),
            "vbios.swidtag": unsigned_rim(report.opaque.vbios_version, vbios),
        }
        return tuple(
            verify_rim(signer.sign(data), label=label, roots=[signer.root], now=NOW)
            for label, data in files.items()
        )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> ReferenceNode:
    return ReferenceNode(tmp_path_factory.mktemp("reference-node"))


@pytest.fixture(scope="module")
def crl_node(tmp_path_factory: pytest.TempPathFactory) -> ReferenceNode:
    return ReferenceNode(tmp_path_factory.mktemp("reference-node-crl"), own_pck_chain=True)


def _verify(
    node: ReferenceNode,
    policy: ClientPolicy,
    *,
    trust: TrustAnchors | None = None,
    now: datetime = NOW,
) -> VerificationRun:
    return run_verification(
        node.bundle(), trust=trust or node.anchors(), policy=policy, nonce=NONCE, now=now
    )


def _details(run: VerificationRun) -> dict[str, str]:
    return {c.name: c.detail for c in run.checks}


def _assert_failed_at(run: VerificationRun, check: str) -> None:
    """``check`` failed, every earlier check passed and every later one did not run."""
    assert not run.ok and run.node is None
    i = CHECK_NAMES.index(check)
    want = {
        **{n: "pass" for n in CHECK_NAMES[:i]},
        check: "fail",
        **{n: "not-run" for n in CHECK_NAMES[i + 1 :]},
    }
    assert {c.name: c.status for c in run.checks} == want, run.to_dict()


def _policy(**kw: Any) -> ClientPolicy:
    return ClientPolicy(snp=SnpPolicy(), **kw)


# -- Intel TDX collateral -------------------------------------------------------------------------


def test_up_to_date_collateral_verifies_and_shows_the_tcb_status(node: ReferenceNode) -> None:
    run = _verify(node, _policy(tdx_collateral=node.collateral.build()))
    assert run.ok, run.to_dict()
    assert all(c.status == "pass" for c in run.checks), run.to_dict()
    details = _details(run)
    assert "QE report signed by the PCK key" in details["tcb-consistency"]
    assert (
        "Intel collateral: TCB UpToDate (TCB date 2024-03-13, FMSPC 00806f050000"
        in (details["tcb-consistency"])
    )
    assert "not evaluated" not in details["tcb-consistency"]
    assert "tcb-status: UpToDate accepted" in details["policy"]
    assert run.node is not None and run.node.tdx_tcb is not None
    assert run.node.tdx_tcb.status is TcbStatus.UP_TO_DATE
    shown = run.to_dict()["node"]["tdx_tcb"]  # type: ignore[index]
    assert shown["status"] == "UpToDate" and shown["fmspc"] == "00806f050000"


def _out_of_date(b: CollateralBuilder) -> None:
    b.tcb["tcbLevels"][0]["tcbStatus"] = "OutOfDate"
    b.tcb["tcbLevels"][0]["advisoryIDs"] = [ADVISORY]


def test_out_of_date_is_refused_by_the_default_policy(node: ReferenceNode) -> None:
    run = _verify(node, _policy(tdx_collateral=node.collateral_with(_out_of_date)))
    _assert_failed_at(run, "policy")
    assert isinstance(run.error, PolicyError) and run.error.check == "policy"
    assert str(run.error) == (
        f"policy: tcb_status: platform OutOfDate (advisories {ADVISORY}), policy accepts UpToDate"
    )
    assert "accepted_tcb_statuses" in run.error.hint
    # The genuine collateral's verdict is shown at check 4, advisories included.
    assert _details(run)["tcb-consistency"].endswith(
        "Intel collateral: TCB OutOfDate (TCB date 2024-03-13, FMSPC 00806f050000, "
        f"TCB evaluation data 17); advisories {ADVISORY}; revocation not checked (no CRLs in "
        "the collateral)"
    )


def test_out_of_date_passes_when_the_policy_accepts_it(node: ReferenceNode) -> None:
    accepting = TdxPolicy(accepted_tcb_statuses=(TcbStatus.UP_TO_DATE, TcbStatus.OUT_OF_DATE))
    policy = _policy(tdx=accepting, tdx_collateral=node.collateral_with(_out_of_date))
    run = _verify(node, policy)
    assert run.ok, run.to_dict()
    assert f"advisories {ADVISORY}" in _details(run)["tcb-consistency"]
    assert "tcb-status: OutOfDate accepted" in _details(run)["policy"]
    assert run.node is not None and run.node.tdx_tcb is not None
    assert run.node.tdx_tcb.advisory_ids == (ADVISORY,)


def test_require_collateral_without_collateral_fails_closed(node: ReferenceNode) -> None:
    run = _verify(node, _policy(tdx=TdxPolicy(require_collateral=True)))
    _assert_failed_at(run, "policy")
    assert isinstance(run.error, PolicyError)
    assert "tcb_status: no collateral was evaluated, policy requires one of UpToDate" in str(
        run.error
    )
    assert '[tdx] collateral = "DIR"' in run.error.hint
    assert "TCB level not evaluated (no DCAP collateral)" in _details(run)["tcb-consistency"]


def test_require_collateral_with_collateral_and_crls_verifies(crl_node: ReferenceNode) -> None:
    policy = _policy(
        tdx=TdxPolicy(require_collateral=True), tdx_collateral=crl_node.collateral_with_crls()
    )
    run = _verify(crl_node, policy)
    assert run.ok, run.to_dict()
    assert _details(run)["tcb-consistency"].endswith(
        "; PCK certificate not revoked (PCK CRL of "
        f"{(NOW - timedelta(days=1)).date().isoformat()}); Intel SGX PCK Platform CA and Intel "
        f"SGX TCB Signing not revoked (Root CA CRL of {(NOW - timedelta(days=1)).date()})"
    )


def test_require_collateral_without_crls_fails_closed(crl_node: ReferenceNode) -> None:
    policy = _policy(
        tdx=TdxPolicy(require_collateral=True), tdx_collateral=crl_node.collateral.build()
    )
    run = _verify(crl_node, policy)
    _assert_failed_at(run, "policy")
    assert isinstance(run.error, PolicyError)
    assert str(run.error) == (
        "policy: require_collateral: the collateral has no PCK and Root CA CRLs, so revocation "
        "was not checked"
    )
    assert "pck_crl.der, root_ca_crl.der" in run.error.hint
    # Without require_collateral the node verifies, and check 4 says what was not checked.
    run = _verify(crl_node, _policy(tdx_collateral=crl_node.collateral.build()))
    assert run.ok and "revocation not checked" in _details(run)["tcb-consistency"]


@pytest.mark.parametrize(
    ("crls", "says"),
    [
        ({"revoked_pck": True}, "tdx-crl: PCK certificate 'Intel SGX PCK Certificate' (serial "),
        ({"days_left": -2}, "tdx-crl: Root CA CRL is stale: its next update was due"),
    ],
    ids=["revoked-pck", "stale-crl"],
)
def test_revocation_fails_tcb_consistency(
    crl_node: ReferenceNode, crls: dict[str, Any], says: str
) -> None:
    policy = _policy(tdx_collateral=crl_node.collateral_with_crls(**crls))
    run = _verify(crl_node, policy)
    _assert_failed_at(run, "tcb-consistency")
    assert str(run.error).startswith("tcb-consistency: " + says), str(run.error)


def _revoked(b: CollateralBuilder) -> None:
    b.tcb["tcbLevels"][0]["tcbStatus"] = "Revoked"


def _expired(b: CollateralBuilder) -> None:
    b.tcb["nextUpdate"] = _iso(NOW - timedelta(hours=1))


def _other_fmspc(b: CollateralBuilder) -> None:
    b.tcb["fmspc"] = "00906ED50000"


def _other_qe_signer(b: CollateralBuilder) -> None:
    b.qe["mrsigner"] = "00" * 32


def _signed_by_another_key(b: CollateralBuilder) -> None:
    other = FakeTcbSigner.generate()  # a TEST root this client never trusted
    b.signer, b.chain = other, other.chain_pem()


@dataclass(frozen=True)
class CollateralRow:
    id: str
    mutate: Callable[[CollateralBuilder], None]
    says: str


COLLATERAL_ROWS = [
    CollateralRow(
        "revoked", _revoked, "tdx-tcb-revoked: Intel lists this platform's TCB as Revoked"
    ),
    CollateralRow("expired", _expired, "tdx-collateral-validity: TCB info is valid"),
    CollateralRow("fmspc", _other_fmspc, "tdx-fmspc: PCK certificate FMSPC 00806f050000"),
    CollateralRow("qe-identity", _other_qe_signer, "tdx-qe-identity: QE report: MRSIGNER"),
    CollateralRow("untrusted-root", _signed_by_another_key, "tdx-collateral-chain"),
]


@pytest.mark.parametrize("row", COLLATERAL_ROWS, ids=[r.id for r in COLLATERAL_ROWS])
def test_collateral_mutation_fails_tcb_consistency(node: ReferenceNode, row: CollateralRow) -> None:
    # Even a policy accepting every status Intel may give refuses these.
    everything = tuple(s for s in TcbStatus if s is not TcbStatus.REVOKED)
    policy = _policy(
        tdx=TdxPolicy(accepted_tcb_statuses=everything),
        tdx_collateral=node.collateral_with(row.mutate),
    )
    run = _verify(node, policy)
    _assert_failed_at(run, "tcb-consistency")
    assert isinstance(run.error, VerificationError) and run.error.check == "tcb-consistency"
    assert str(run.error).startswith("tcb-consistency: " + row.says), str(run.error)


def test_collateral_root_must_anchor_the_quote(node: ReferenceNode) -> None:
    """Genuine collateral whose root this client trusts for nothing is refused."""
    run = _verify(
        node,
        _policy(tdx_collateral=node.collateral.build()),
        trust=node.anchors(collateral_root=False),
    )
    _assert_failed_at(run, "tcb-consistency")
    assert str(run.error).startswith("tcb-consistency: tdx-collateral-chain: chain ends in")
    assert "which no pinned root issued" in str(run.error)


def test_without_reference_values_the_run_is_unchanged(node: ReferenceNode) -> None:
    """Without reference values the run is today's: same checks, same details."""
    plain = _verify(node, _policy())
    assert plain.ok
    assert "TCB level not evaluated (no DCAP collateral)" in _details(plain)["tcb-consistency"]
    assert plain.node is not None and plain.node.tdx_tcb is None
    assert "tdx_tcb" not in plain.to_dict()["node"]  # type: ignore[operator]
    assert "rims" not in plain.node.gpus[0] and "RIMs" not in _details(plain)["gpu"]


# -- NVIDIA RIMs ----------------------------------------------------------------------------------


def test_rims_describing_the_gpu_verify(node: ReferenceNode) -> None:
    run = _verify(node, _policy(gpu_rims=node.rims()))
    assert run.ok, run.to_dict()
    detail = _details(run)["gpu"]
    assert detail == (
        f"sim-nvidia driver {node.gpu_report.opaque.driver_version}, topology SPT, CC state "
        "established: every active measurement matches the RIMs of its driver and VBIOS, RIMs: "
        "8 active measurements match (driver.swidtag, vbios.swidtag)"
    )
    assert run.node is not None and "8 active measurements match" in str(run.node.gpus[0]["rims"])


def test_rims_for_other_versions_are_set_aside(node: ReferenceNode) -> None:
    """A policy may list RIMs of several driver versions; each GPU uses those of its own."""
    other_driver = node.rims(driver_version="999.99.99")[0]
    run = _verify(node, _policy(gpu_rims=(other_driver, *node.rims())))
    assert run.ok, run.to_dict()


def test_collateral_and_rims_together(node: ReferenceNode) -> None:
    policy = _policy(tdx_collateral=node.collateral.build(), gpu_rims=node.rims())
    run = _verify(node, policy)
    assert run.ok, run.to_dict()
    assert "TCB UpToDate" in _details(run)["tcb-consistency"]
    assert "RIMs: 8 active measurements match" in _details(run)["gpu"]


def _one_changed(node: ReferenceNode) -> tuple[VerifiedRim, ...]:
    return node.rims(change={3: hashlib.sha384(b"other firmware").digest()})


def _other_driver_only(node: ReferenceNode) -> tuple[VerifiedRim, ...]:
    return node.rims(driver_version="999.99.99")


def _vbios_only(node: ReferenceNode) -> tuple[VerifiedRim, ...]:
    return node.rims()[1:]


def _signer_expired(node: ReferenceNode) -> tuple[VerifiedRim, ...]:
    short = FakeRimSigner.generate(signer_not_after=NOW + timedelta(hours=1))
    return node.rims(signer=short)


@dataclass(frozen=True)
class RimRow:
    id: str
    rims: Callable[[ReferenceNode], tuple[VerifiedRim, ...]]
    says: str
    now: datetime = NOW


RIM_ROWS = [
    RimRow("measurement", _one_changed, "GPU 0: gpu-rim: block 3 (VBIOS RIM vbios.swidtag, "),
    RimRow("version", _other_driver_only, "GPU 0: gpu-rim-coverage: no driver RIM (report has "),
    RimRow("driver-missing", _vbios_only, "GPU 0: gpu-rim-coverage: no driver RIM"),
    RimRow(
        "signer-expired",
        _signer_expired,
        "GPU 0: gpu-rim-chain: driver.swidtag: certificate ",
        NOW + timedelta(days=1),
    ),
]


@pytest.mark.parametrize("row", RIM_ROWS, ids=[r.id for r in RIM_ROWS])
def test_rim_mutation_fails_the_gpu_check(node: ReferenceNode, row: RimRow) -> None:
    run = _verify(node, _policy(gpu_rims=row.rims(node)), now=row.now)
    _assert_failed_at(run, "gpu")
    assert isinstance(run.error, VerificationError) and run.error.check == "gpu"
    assert str(run.error).startswith("gpu: " + row.says), str(run.error)


def test_a_changed_measurement_names_both_values(node: ReferenceNode) -> None:
    other = hashlib.sha384(b"other firmware").digest()
    run = _verify(node, _policy(gpu_rims=node.rims(change={3: other})))
    assert run.error is not None
    message = str(run.error)
    assert f"report {node.gpu_report.measurements[3].hex()}" in message
    assert f"RIM {other.hex()}" in message
    assert run.error.hint == "the GPU does not run the firmware its RIMs name"


def test_rims_with_the_gpu_check_skipped_are_refused(node: ReferenceNode) -> None:
    with pytest.raises(ParseError, match="the gpu check is skipped"):
        _policy(gpu_rims=node.rims(), skip=frozenset({"gpu"}))


def test_unverified_rims_are_refused_by_type(node: ReferenceNode) -> None:
    with pytest.raises(TypeError, match="VerifiedRim"):
        _policy(gpu_rims=(node.rims()[0].rim,))
