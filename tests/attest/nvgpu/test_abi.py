"""Parsing the real H100 SPDM report: golden claims, length, malformed bytes, fuzzing."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import ParseError
from attest.nvgpu.abi import (
    REQUEST_SIZE,
    SIGNATURE_SIZE,
    GpuReport,
    OpaqueFieldId,
    parse_gpu_report,
)
from attest.nvgpu.sim import build_evidence, measurement_block, opaque_item


def _report_bytes(vectors: Path) -> bytes:
    return bytes.fromhex((vectors / "nvidia" / "hopper_report.hex").read_text().strip())


@pytest.fixture(scope="module")
def raw(vectors: Path) -> bytes:
    return _report_bytes(vectors)


@pytest.fixture(scope="module")
def report(raw: bytes) -> GpuReport:
    return parse_gpu_report(raw)


@pytest.fixture(scope="module")
def claims(vectors: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        (vectors / "nvidia" / "hopper_report_claims.txt").read_text()
    )
    return data


def test_structure(report: GpuReport, raw: bytes) -> None:
    assert report.length == len(raw) == 4117
    assert report.spdm_version == 0x11
    assert report.request_param1 == 0x01 and report.request_param2 == 0xFF
    assert report.slot_id == 0
    assert report.request_nonce == bytes.fromhex(
        "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
    )
    assert len(report.blocks) == 64
    assert report.signed_bytes == raw[:-SIGNATURE_SIZE]
    assert report.signature == raw[-SIGNATURE_SIZE:]
    assert report.topology_mode is None  # this firmware carries no FEATURE_FLAG
    assert report.opaque.get(OpaqueFieldId.FWID) == report.opaque.fwid


def test_claims_match_golden_field_for_field(report: GpuReport, claims: dict[str, object]) -> None:
    config = claims["config"]
    assert isinstance(config, dict)
    opaque = report.opaque
    assert opaque.driver_version == config["driver_version"] == "550.90.07"
    assert opaque.vbios_version == config["vbios_version"] == "96.00.9f.00.01"
    assert opaque.fwid.hex() == config["fwid"]
    assert opaque.board_id.hex() == config["board_id"]
    assert opaque.chip_sku == config["chip_sku"]
    assert opaque.chip_sku_mod == config["chip_sku_mod"]
    assert opaque.project == config["project"]
    assert opaque.project_sku == config["project_sku"]
    assert opaque.project_sku_mod.hex() == config["project_sku_mod"]
    assert opaque.cpr_info.hex() == config["cpr_info"]
    assert opaque.gpu_info.hex() == config["gpu_info"]
    # The golden file prints these one-byte statuses as characters (0x55 is "U").
    assert opaque.nvdec0_status == ord(config["nvdec0_status"])
    assert opaque.protected_pcie_status == ord(config["protected_pcie_status"])
    counts = {str(i): c for i, c in enumerate(opaque.measurement_counts, start=1)}
    assert counts == config["measurement_count"]
    golden = claims["measurements"]
    assert isinstance(golden, dict)
    assert {str(i): v.hex() for i, v in report.measurements.items()} == golden
    assert report.to_dict()["opaque"]["measurement_count"] == config["measurement_count"]


def test_to_dict_is_json(report: GpuReport) -> None:
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["opaque"]["driver_version"] == "550.90.07"
    assert len(doc["measurements"]) == 64


def test_real_report_states_no_topology_and_no_cc_state(
    report: GpuReport, claims: dict[str, object]
) -> None:
    """The captured H100 firmware predates FEATURE_FLAG and OPAQUE_DATA_VERSION; the golden
    extractor reports neither. Nothing in the report is read as a CC state."""
    types = {t for t, _ in report.opaque.items}
    assert OpaqueFieldId.FEATURE_FLAG not in types
    assert OpaqueFieldId.OPAQUE_DATA_VERSION not in types
    assert report.opaque.feature_flag is None and report.opaque.opaque_data_version is None
    config = claims["config"]
    assert isinstance(config, dict)
    assert not {k for k in config if "feature" in k or "cc" in k}
    doc = report.to_dict()
    assert doc["topology_mode"] is None and doc["opaque"]["feature_flag"] is None
    assert "cc_enabled" not in doc and "cc_mode" not in doc
    assert not hasattr(report, "cc_enabled")  # no field of the report is the CC state


def _with_opaque(extra: bytes) -> bytes:
    opaque = opaque_item(OpaqueFieldId.DRIVER_VERSION, b"570.1\0") + opaque_item(
        OpaqueFieldId.VBIOS_VERSION, bytes(8)
    )
    return build_evidence(
        ec.generate_private_key(ec.SECP384R1()),
        nonce=bytes(32),
        blocks=[measurement_block(1, bytes(48))],
        opaque=opaque + extra,
        responder_nonce=bytes(32),
    )


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        (b"\x00", "SPT"),
        (b"\x01", "MPT"),
        (b"\x02", "PPCIE"),
        (b"\x00\x00\x00\x00", "SPT"),
        (b"\x03", "unknown(3)"),
        (b"\x00\x01", "unknown(256)"),
    ],
)
def test_feature_flag_is_the_topology_mode(value: bytes, mode: str) -> None:
    report = parse_gpu_report(_with_opaque(opaque_item(OpaqueFieldId.FEATURE_FLAG, value)))
    assert report.topology_mode == mode
    assert report.to_dict()["topology_mode"] == mode


@pytest.mark.parametrize(("size", "message"), [(0, "got 0"), (9, "got 9")])
def test_feature_flag_size(size: int, message: str) -> None:
    with pytest.raises(ParseError, match=f"^opaque feature_flag must be 1 to 8 bytes, {message}$"):
        parse_gpu_report(_with_opaque(opaque_item(OpaqueFieldId.FEATURE_FLAG, bytes(size))))


def test_length_comes_from_decoding(raw: bytes) -> None:
    padded = parse_gpu_report(raw + bytes(200))
    assert padded.raw == raw and padded.length == len(raw)
    with pytest.raises(ParseError, match="unexpected bytes after"):
        parse_gpu_report(raw + b"\x01")


@pytest.mark.parametrize(
    "cut",
    [0, 1, 4, REQUEST_SIZE - 1, REQUEST_SIZE, REQUEST_SIZE + 7, 100, 3000, 3600, 3700, 4020, 4116],
)
def test_truncation_is_a_parse_error(raw: bytes, cut: int) -> None:
    with pytest.raises(ParseError, match=r"truncated|overruns|disagrees"):
        parse_gpu_report(raw[:cut])


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, 0x12, "unsupported SPDM version"),
        (1, 0xE1, "not GET_MEASUREMENTS"),
        (2, 0x00, "did not request a signature"),
        (REQUEST_SIZE, 0x10, "differs from the request"),
        (REQUEST_SIZE + 1, 0x61, "not MEASUREMENTS"),
        (REQUEST_SIZE + 4, 0x41, "truncated|overruns|disagrees"),  # NumberOfBlocks
        (REQUEST_SIZE + 8, 0x02, "appears twice"),  # first block's index -> duplicate of 2
        (REQUEST_SIZE + 9, 0x02, "not DMTF"),
        (REQUEST_SIZE + 13, 0x31, "disagrees with block size"),
    ],
)
def test_malformed_fields(raw: bytes, offset: int, value: int, message: str) -> None:
    data = bytearray(raw)
    data[offset] = value
    with pytest.raises(ParseError, match=message):
        parse_gpu_report(bytes(data))


def test_duplicate_opaque_field_rejected(raw: bytes, report: GpuReport) -> None:
    # Retag the CHIP_SKU_MOD item as a second CHIP_SKU.
    start = raw.index(report.opaque_raw)
    item = raw.index(bytes.fromhex("10000500"), start)
    data = bytearray(raw)
    data[item] = OpaqueFieldId.CHIP_SKU
    with pytest.raises(ParseError, match="appears twice"):
        parse_gpu_report(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_gpu_report(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_real_report(vectors: Path, data: st.DataObject) -> None:
    raw = bytearray(_report_bytes(vectors))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    with contextlib.suppress(ParseError):
        parse_gpu_report(bytes(raw[:cut]))
