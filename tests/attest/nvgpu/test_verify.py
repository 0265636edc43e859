"""Verifying the real H100 report, and one mutation per row naming the check that fails."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from attest.errors import ParseError, VerificationError
from attest.nvgpu import (
    GpuReport,
    SimulatedGpu,
    load_gpu_chain,
    parse_gpu_report,
    pinned_nvidia_roots,
    verify_gpu_report,
)
from attest.nvgpu._simulated import SIMULATED_DRIVER_VERSION, SIMULATED_VBIOS
from attest.nvgpu.abi import REQUEST_SIZE, RSP_RECORD, OpaqueFieldId
from attest.nvgpu.sim import build_evidence, measurement_block, opaque_item
from attest.nvgpu.verify import NONCE_NOT_CHECKED

from .fake_rim import FakeRimSigner, rim_pair, unsigned_rim

NOW = datetime(2024, 6, 1, tzinfo=UTC)
NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")


@pytest.fixture(scope="module")
def raw(vectors: Path) -> bytes:
    return bytes.fromhex((vectors / "nvidia" / "hopper_report.hex").read_text().strip())


@pytest.fixture(scope="module")
def report(raw: bytes) -> GpuReport:
    return parse_gpu_report(raw)


@pytest.fixture(scope="module")
def chain(vectors: Path) -> list[x509.Certificate]:
    return load_gpu_chain((vectors / "nvidia" / "hopper_cert_chain.pem").read_bytes())


@pytest.fixture(scope="module")
def rim_signer() -> FakeRimSigner:
    return FakeRimSigner.generate()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimulatedGpu:
    return SimulatedGpu.generate(tmp_path_factory.mktemp("simgpu"))


def test_pinned_root_is_the_chain_root(chain: list[x509.Certificate]) -> None:
    (root,) = pinned_nvidia_roots()
    assert root == chain[-1]
    assert root.subject.rfc4514_string() == "O=NVIDIA,CN=NVIDIA Device Identity CA"


def test_real_report_verifies(report: GpuReport, chain: list[x509.Certificate]) -> None:
    verified = verify_gpu_report(report, chain, nonce=NONCE, now=NOW)
    assert [name for name, _ in verified.checks] == [
        "gpu-chain",
        "gpu-signature",
        "gpu-fwid",
        "gpu-nonce",
        "gpu-topology",
    ]
    assert verified.report is report
    assert verified.not_checked == ()
    # This firmware predates FEATURE_FLAG; nothing compared the measurements, so nothing
    # established the CC state either.
    assert dict(verified.checks)["gpu-topology"] == (
        "legacy: no FEATURE_FLAG (firmware predates it), verified as a single GPU"
    )
    assert verified.measurements_matched is None


def _signed_rims(
    report: GpuReport, signer: FakeRimSigner, change: dict[int, bytes] | None = None
) -> dict[str, bytes]:
    driver, vbios = rim_pair(report, change=change)
    return {
        "driver": signer.sign(unsigned_rim(report.opaque.driver_version, driver)),
        "vbios": signer.sign(unsigned_rim(report.opaque.vbios_version, vbios)),
    }


def test_real_report_verifies_with_matching_rims(
    report: GpuReport, chain: list[x509.Certificate], rim_signer: FakeRimSigner
) -> None:
    rims = _signed_rims(report, rim_signer)
    verified = verify_gpu_report(
        report, chain, nonce=NONCE, now=NOW, rims=rims, rim_roots=[rim_signer.root]
    )
    assert verified.checks[-1][0] == "gpu-rim"


def test_unsigned_rims_are_refused(report: GpuReport, chain: list[x509.Certificate]) -> None:
    driver, vbios = rim_pair(report)
    rims = {
        "driver": unsigned_rim(report.opaque.driver_version, driver),
        "vbios": unsigned_rim(report.opaque.vbios_version, vbios),
    }
    with pytest.raises(VerificationError, match="carries no signing certificate") as err:
        verify_gpu_report(report, chain, nonce=NONCE, now=NOW, rims=rims)
    assert err.value.check == "gpu-rim-chain"


def _block_value_offset(report: GpuReport, index: int) -> int:
    offset = REQUEST_SIZE + RSP_RECORD
    for block in report.blocks:
        if block.index == index:
            return offset + 4 + 3
        offset += 4 + 3 + len(block.value)
    raise AssertionError(index)


def _flip(raw: bytes, offset: int) -> GpuReport:
    data = bytearray(raw)
    data[offset] ^= 0x01
    return parse_gpu_report(bytes(data))


@pytest.mark.parametrize("index", range(1, 65))
def test_each_measurement_mutation_breaks_the_signature(
    raw: bytes, report: GpuReport, chain: list[x509.Certificate], index: int
) -> None:
    mutated = _flip(raw, _block_value_offset(report, index))
    assert mutated.measurements[index] != report.measurements[index]
    with pytest.raises(VerificationError) as err:
        verify_gpu_report(mutated, chain, nonce=NONCE, now=NOW)
    assert err.value.check == "gpu-signature"


@pytest.mark.parametrize("index", [1, 2, 12, 41, 64])
def test_each_measurement_against_rim(
    report: GpuReport, chain: list[x509.Certificate], rim_signer: FakeRimSigner, index: int
) -> None:
    rims = _signed_rims(report, rim_signer, change={index: hashlib.sha384(b"not it").digest()})
    with pytest.raises(VerificationError, match=f"^gpu-rim: block {index} ") as err:
        verify_gpu_report(
            report, chain, nonce=NONCE, now=NOW, rims=rims, rim_roots=[rim_signer.root]
        )
    assert err.value.check == "gpu-rim"


def _mutations(raw: bytes, report: GpuReport) -> list[tuple[str, int]]:
    return [
        ("signature r", len(raw) - 96),
        ("signature s", len(raw) - 1),
        ("request nonce", 4),
        ("slot id", REQUEST_SIZE - 1),
        ("responder nonce", raw.index(report.responder_nonce)),
        ("opaque fwid", raw.index(report.opaque.fwid)),
        ("driver version", raw.index(b"550.90.07")),
    ]


@pytest.mark.parametrize("row", range(7))
def test_signed_byte_mutations(
    raw: bytes, report: GpuReport, chain: list[x509.Certificate], row: int
) -> None:
    _name, offset = _mutations(raw, report)[row]
    with pytest.raises(VerificationError) as err:
        verify_gpu_report(_flip(raw, offset), chain, nonce=NONCE, now=NOW)
    assert err.value.check == "gpu-signature"


def test_wrong_nonce(report: GpuReport, chain: list[x509.Certificate]) -> None:
    with pytest.raises(VerificationError, match="differs from expected") as err:
        verify_gpu_report(report, chain, nonce=bytes(32), now=NOW)
    assert err.value.check == "gpu-nonce"


def test_no_expected_nonce_is_not_checked_never_passed(
    report: GpuReport, chain: list[x509.Certificate]
) -> None:
    verified = verify_gpu_report(report, chain, nonce=None, now=NOW)
    assert "gpu-nonce" not in dict(verified.checks)
    assert verified.not_checked == (("gpu-nonce", NONCE_NOT_CHECKED),)
    assert NONCE_NOT_CHECKED.startswith("not checked:")


def test_a_missing_nonce_fails_where_one_is_expected(
    report: GpuReport, chain: list[x509.Certificate]
) -> None:
    with pytest.raises(VerificationError, match="differs from expected") as err:
        verify_gpu_report(report, chain, nonce=b"", now=NOW)
    assert err.value.check == "gpu-nonce"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing intermediate", "not signed by the next one"),
        ("leaf only", "which no pinned root issued"),
        ("reversed", "not signed by the next one"),
        ("before validity", "is not valid at"),
        ("other root", "which no pinned root issued"),
    ],
)
def test_chain_mutations(
    report: GpuReport,
    chain: list[x509.Certificate],
    sim: SimulatedGpu,
    case: str,
    message: str,
) -> None:
    certs, roots, now = list(chain), None, NOW
    if case == "missing intermediate":
        del certs[1]
    elif case == "leaf only":
        certs = certs[:1]
    elif case == "reversed":
        certs.reverse()
    elif case == "before validity":
        now = datetime(2019, 1, 1, tzinfo=UTC)
    elif case == "other root":
        roots = [sim.root_certificate()]
    with pytest.raises(VerificationError, match=message) as err:
        verify_gpu_report(report, certs, nonce=NONCE, roots=roots, now=now)
    assert err.value.check == "gpu-chain"


def test_simulated_evidence_verifies_only_with_its_root(sim: SimulatedGpu) -> None:
    nonce = hashlib.sha256(b"n").digest()
    report = parse_gpu_report(sim.evidence(nonce))
    chain = load_gpu_chain(sim.chain_pem())
    verified = verify_gpu_report(report, chain, nonce=nonce, roots=[sim.root_certificate()])
    assert report.topology_mode == "SPT"
    assert verified.measurements_matched == "the SIMULATED reference values"
    assert dict(verified.checks)["gpu-sim-measurements"] == (
        "8 blocks match the SIMULATED reference values (no NVIDIA RIM exists)"
    )
    with pytest.raises(VerificationError) as err:
        verify_gpu_report(report, chain, nonce=nonce)
    assert err.value.check == "gpu-chain"
    assert "SIMULATED" in sim.root_certificate().subject.rfc4514_string()


def test_simulated_cc_off_shows_in_the_measurements_not_the_flag(sim: SimulatedGpu) -> None:
    report = parse_gpu_report(sim.evidence(bytes(32), cc_enabled=False))
    # Same topology flag as a GPU in CC mode: the flag cannot tell them apart.
    assert report.topology_mode == "SPT"
    chain = load_gpu_chain(sim.chain_pem())
    with pytest.raises(VerificationError) as err:
        verify_gpu_report(report, chain, nonce=bytes(32), roots=[sim.root])
    assert err.value.check == "gpu-sim-measurements"
    assert err.value.detail == (
        "SIMULATED GPU block(s) 8 differ from the simulation's reference values, as a GPU "
        "outside confidential-computing mode (CC off or DevTools) measures"
    )


def test_sim_load_round_trip(sim: SimulatedGpu, tmp_path: Path) -> None:
    again = SimulatedGpu.generate(tmp_path)
    loaded = SimulatedGpu.load(tmp_path)
    assert loaded.fwid == again.fwid and loaded.chain_pem() == again.chain_pem()
    assert (tmp_path / "sim_gpu_key.pem").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("fwid", [b"", b"\x00" * 48])
def test_fwid_mismatch(sim: SimulatedGpu, fwid: bytes) -> None:
    nonce = bytes(range(32))
    opaque = opaque_item(OpaqueFieldId.DRIVER_VERSION, b"1\0") + opaque_item(
        OpaqueFieldId.VBIOS_VERSION, bytes(8)
    )
    if fwid:
        opaque += opaque_item(OpaqueFieldId.FWID, fwid)
    evidence = build_evidence(
        sim.key,
        nonce=nonce,
        blocks=[measurement_block(1, bytes(48))],
        opaque=opaque,
        responder_nonce=bytes(32),
    )
    chain = load_gpu_chain(sim.chain_pem())
    with pytest.raises(VerificationError) as err:
        verify_gpu_report(parse_gpu_report(evidence), chain, nonce=nonce, roots=[sim.root])
    assert err.value.check == "gpu-fwid"


def test_leaf_without_fwid_extension(report: GpuReport, chain: list[x509.Certificate]) -> None:
    # The BROM certificate has no FWID extension: chain still links from it upward.
    with pytest.raises(VerificationError) as err:
        verify_gpu_report(report, chain[1:], nonce=NONCE, now=NOW)
    assert err.value.check == "gpu-signature"


def test_bad_rim_file(report: GpuReport, chain: list[x509.Certificate]) -> None:
    with pytest.raises(ParseError, match="not XML"):
        verify_gpu_report(report, chain, nonce=NONCE, now=NOW, rims={"driver": b"<nope"})


def test_bad_chain_pem() -> None:
    with pytest.raises(ParseError):
        load_gpu_chain(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_warm_verify_time(report: GpuReport, chain: list[x509.Certificate]) -> None:
    import time

    verify_gpu_report(report, chain, nonce=NONCE, now=NOW)
    start = time.perf_counter()
    for _ in range(20):
        verify_gpu_report(report, chain, nonce=NONCE, now=NOW)
    per_call = (time.perf_counter() - start) / 20
    assert per_call < 0.25, per_call


# --- topology (FEATURE_FLAG) and SIMULATED reference values: one field per row ------------------


@pytest.mark.parametrize(
    ("topology", "detail"),
    [
        (None, "legacy: no FEATURE_FLAG (firmware predates it), verified as a single GPU"),
        (0, "SPT (single GPU passthrough)"),
        (1, "MPT (multi-GPU passthrough), each GPU verified on its own"),
    ],
)
def test_topologies_verified_gpu_by_gpu(
    sim: SimulatedGpu, topology: int | None, detail: str
) -> None:
    report = parse_gpu_report(sim.evidence(NONCE, topology=topology))
    verified = verify_gpu_report(
        report, load_gpu_chain(sim.chain_pem()), nonce=NONCE, roots=[sim.root]
    )
    assert dict(verified.checks)["gpu-topology"] == detail


@pytest.mark.parametrize(
    ("topology", "message"),
    [
        (2, r"^gpu-topology: FEATURE_FLAG is PPCIE \(protected PCIe\): NVLink traffic is not "),
        (3, r"^gpu-topology: FEATURE_FLAG 3 is no topology mode \(SPT=0, MPT=1, PPCIE=2\)$"),
        (0xFF, r"^gpu-topology: FEATURE_FLAG 255 is no topology mode"),
    ],
)
def test_topologies_refused(sim: SimulatedGpu, topology: int, message: str) -> None:
    report = parse_gpu_report(sim.evidence(NONCE, topology=topology))
    with pytest.raises(VerificationError, match=message) as err:
        verify_gpu_report(report, load_gpu_chain(sim.chain_pem()), nonce=NONCE, roots=[sim.root])
    assert err.value.check == "gpu-topology"


def test_ppcie_needs_switch_evidence_this_verifier_lacks(sim: SimulatedGpu) -> None:
    report = parse_gpu_report(sim.evidence(NONCE, topology=2))
    with pytest.raises(VerificationError) as err:
        verify_gpu_report(report, load_gpu_chain(sim.chain_pem()), nonce=NONCE, roots=[sim.root])
    assert "NVSwitches are inside the trust boundary" in err.value.detail
    assert err.value.hint == "run each GPU in CC mode (SPT or MPT)"


def _simulated_with(sim: SimulatedGpu, blocks: dict[int, bytes]) -> GpuReport:
    opaque = b"".join(
        [
            opaque_item(OpaqueFieldId.DRIVER_VERSION, SIMULATED_DRIVER_VERSION.encode() + b"\0"),
            opaque_item(OpaqueFieldId.VBIOS_VERSION, SIMULATED_VBIOS),
            opaque_item(OpaqueFieldId.FWID, sim.fwid),
        ]
    )
    evidence = build_evidence(
        sim.key,
        nonce=NONCE,
        blocks=[measurement_block(i, v) for i, v in blocks.items()],
        opaque=opaque,
        responder_nonce=bytes(32),
    )
    return parse_gpu_report(evidence)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({1: bytes(48)}, r"^gpu-sim-measurements: SIMULATED GPU block\(s\) 1 differ "),
        ({8: None}, r"^gpu-sim-measurements: SIMULATED GPU reports blocks \[1, 2, 3, 4, 5, 6, 7\]"),
        ({9: bytes(48)}, r"blocks \[1, 2, 3, 4, 5, 6, 7, 8, 9\], the simulation measures"),
    ],
)
def test_simulated_measurement_rows(
    sim: SimulatedGpu, change: dict[int, bytes | None], message: str
) -> None:
    blocks = parse_gpu_report(sim.evidence(NONCE)).measurements
    for index, value in change.items():
        if value is None:
            del blocks[index]
        else:
            blocks[index] = value
    report = _simulated_with(sim, blocks)
    with pytest.raises(VerificationError, match=message) as err:
        verify_gpu_report(report, load_gpu_chain(sim.chain_pem()), nonce=NONCE, roots=[sim.root])
    assert err.value.check == "gpu-sim-measurements"


def test_simulated_reference_is_selected_by_driver_version(sim: SimulatedGpu) -> None:
    """Evidence that does not say it is SIMULATED is not held to the simulation's values, and its
    measurements count as not compared."""
    opaque = opaque_item(OpaqueFieldId.DRIVER_VERSION, b"550.90.07\0") + opaque_item(
        OpaqueFieldId.VBIOS_VERSION, SIMULATED_VBIOS
    )
    evidence = build_evidence(
        sim.key,
        nonce=NONCE,
        blocks=[measurement_block(1, bytes(48))],
        opaque=opaque + opaque_item(OpaqueFieldId.FWID, sim.fwid),
        responder_nonce=bytes(32),
    )
    verified = verify_gpu_report(
        parse_gpu_report(evidence), load_gpu_chain(sim.chain_pem()), nonce=NONCE, roots=[sim.root]
    )
    assert "gpu-sim-measurements" not in dict(verified.checks)
    assert verified.measurements_matched is None
