"""NVIDIA Hopper SPDM attestation report: bytes to structure.

The report is the SPDM 1.1 GET_MEASUREMENTS request (DSP0274 §10.11.1) followed by the signed
MEASUREMENTS response (§10.11.2), as the GPU's attestation API returns them::

    request   SPDMVersion | 0xE0 | Param1 | Param2 | Nonce[32] | SlotIDParam          (37 bytes)
    response  SPDMVersion | 0x60 | Param1 | Param2 | NumberOfBlocks | RecordLength[3]
              | MeasurementRecord | Nonce[32] | OpaqueLength[2] | OpaqueData | Signature[96]

Multi-byte integers are little-endian. The opaque data is NVIDIA's list of
``DataType[2] | DataSize[2] | Data`` items (field ids as in nvtrust's ``OpaqueData``). The report
length comes from decoding; only zero padding may follow it (NVML returns a fixed-size buffer).
This module rejects malformed bytes only: nothing here is verified.

No field of the report states that the GPU is in confidential-computing mode. ``FEATURE_FLAG``
(opaque field 36) is the multi-GPU topology mode the evidence was produced in, SPT (0), MPT (1) or
PPCIE (2), as NVIDIA's and Google's verifiers read it to pick a verification flow; firmware that
predates the field (the captured H100 report) omits it. None of its values stands for CC on, off
or DevTools (a DevTools GPU still runs in one of these topologies), so the flag cannot tell them
apart: that shows only in the measurements, compared with NVIDIA's RIMs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from attest.errors import ParseError

__all__ = [
    "NONCE_SIZE",
    "REQUEST_SIZE",
    "SIGNATURE_SIZE",
    "SPDM_VERSION_1_1",
    "TOPOLOGY_MODES",
    "TOPOLOGY_MPT",
    "TOPOLOGY_PPCIE",
    "TOPOLOGY_SPT",
    "GpuReport",
    "MeasurementBlock",
    "OpaqueData",
    "OpaqueFieldId",
    "parse_gpu_report",
]

SPDM_VERSION_1_1 = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60

NONCE_SIZE = 32
SIGNATURE_SIZE = 96  # ECDSA P-384, r || s big-endian
# Request: SPDMVersion, RequestResponseCode, Param1, Param2, Nonce, SlotIDParam.
REQ_VERSION = 0x00
REQ_CODE = 0x01
REQ_PARAM1 = 0x02
REQ_PARAM2 = 0x03
REQ_NONCE = 0x04
REQ_SLOT_ID = REQ_NONCE + NONCE_SIZE
REQUEST_SIZE = REQ_SLOT_ID + 1  # 37
REQ_PARAM1_SIGNATURE_REQUESTED = 0x01
# Response header, relative to the start of the response.
RSP_VERSION = 0x00
RSP_CODE = 0x01
RSP_PARAM1 = 0x02
RSP_PARAM2 = 0x03
RSP_NUMBER_OF_BLOCKS = 0x04
RSP_RECORD_LENGTH = 0x05
RSP_RECORD = 0x08
RECORD_LENGTH_SIZE = 3
OPAQUE_LENGTH_SIZE = 2
# Measurement block: Index, MeasurementSpecification, MeasurementSize[2], Measurement.
BLOCK_HEADER_SIZE = 4
MEASUREMENT_SPEC_DMTF = 0x01
# DMTF measurement: DMTFSpecMeasurementValueType, DMTFSpecMeasurementValueSize[2], value.
DMTF_HEADER_SIZE = 3
# Opaque item: DataType[2], DataSize[2], Data.
OPAQUE_ITEM_HEADER_SIZE = 4
MSR_COUNT_SIZE = 4
SWITCH_PDI_SIZE = 8

NVDEC_STATUS_ENABLED = 0xAA
NVDEC_STATUS_DISABLED = 0x55

#: OPAQUE_FIELD_ID_FEATURE_FLAG values: the multi-GPU topology mode (single GPU passthrough,
#: multi-GPU passthrough, protected PCIe), not the CC state.
TOPOLOGY_SPT = 0
TOPOLOGY_MPT = 1
TOPOLOGY_PPCIE = 2
TOPOLOGY_MODES: Mapping[int, str] = MappingProxyType(
    {TOPOLOGY_SPT: "SPT", TOPOLOGY_MPT: "MPT", TOPOLOGY_PPCIE: "PPCIE"}
)


class OpaqueFieldId(enum.IntEnum):
    """NVIDIA opaque data field ids (nvtrust ``OPAQUE_FIELD_ID_*``)."""

    CERT_ISSUER_NAME = 1
    CERT_AUTHORITY_KEY_IDENTIFIER = 2
    DRIVER_VERSION = 3
    GPU_INFO = 4
    SKU = 5
    VBIOS_VERSION = 6
    MANUFACTURER_ID = 7
    TAMPER_DETECTION = 8
    SMC = 9
    VPR = 10
    NVDEC0_STATUS = 11
    MSRSCNT = 12
    CPRINFO = 13
    BOARD_ID = 14
    CHIP_SKU = 15
    CHIP_SKU_MOD = 16
    PROJECT = 17
    PROJECT_SKU = 18
    PROJECT_SKU_MOD = 19
    FWID = 20
    PROTECTED_PCIE_STATUS = 21
    SWITCH_PDI = 22
    FLOORSWEPT_PORTS = 23
    POSITION_ID = 24
    LOCK_SWITCH_STATUS = 25
    GPU_LINK_CONN = 32
    SYS_ENABLE_STATUS = 33
    OPAQUE_DATA_VERSION = 34
    CHIP_INFO = 35
    FEATURE_FLAG = 36
    INVALID = 255


@dataclass(frozen=True, slots=True)
class MeasurementBlock:
    """One SPDM measurement block in the DMTF measurement layout."""

    index: int
    specification: int
    value_type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class OpaqueData:
    """NVIDIA's opaque data: every item in order, plus the typed fields decoded from them."""

    items: tuple[tuple[int, bytes], ...]
    driver_version: str
    vbios_version: str
    fwid: bytes
    gpu_info: bytes
    board_id: bytes
    chip_sku: str
    chip_sku_mod: str
    project: str
    project_sku: str
    project_sku_mod: bytes
    cpr_info: bytes
    nvdec0_status: int | None
    protected_pcie_status: int | None
    #: FEATURE_FLAG, the topology mode (see :data:`TOPOLOGY_MODES`); None where not carried.
    feature_flag: int | None
    opaque_data_version: int | None
    measurement_counts: tuple[int, ...]
    switch_pdis: tuple[bytes, ...]

    def get(self, field: int) -> bytes | None:
        """The raw value of ``field`` (an :class:`OpaqueFieldId`), or None when absent."""
        for item_type, value in self.items:
            if item_type == field:
                return value
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "driver_version": self.driver_version,
            "vbios_version": self.vbios_version,
            "fwid": self.fwid.hex(),
            "gpu_info": self.gpu_info.hex(),
            "board_id": self.board_id.hex(),
            "chip_sku": self.chip_sku,
            "chip_sku_mod": self.chip_sku_mod,
            "project": self.project,
            "project_sku": self.project_sku,
            "project_sku_mod": self.project_sku_mod.hex(),
            "cpr_info": self.cpr_info.hex(),
            "nvdec0_status": _status_name(self.nvdec0_status),
            "protected_pcie_status": _status_hex(self.protected_pcie_status),
            "feature_flag": _topology_name(self.feature_flag),
            "opaque_data_version": self.opaque_data_version,
            "measurement_count": {
                str(i): count for i, count in enumerate(self.measurement_counts, start=1)
            },
            "switch_pdi": [pdi.hex() for pdi in self.switch_pdis],
            "items": [{"type": _field_name(t), "value": v.hex()} for t, v in self.items],
        }
        return out


@dataclass(frozen=True, slots=True)
class GpuReport:
    """A decoded GET_MEASUREMENTS request and its signed MEASUREMENTS response."""

    raw: bytes
    spdm_version: int
    request_param1: int
    request_param2: int
    request_nonce: bytes
    slot_id: int
    response_param1: int
    response_param2: int
    blocks: tuple[MeasurementBlock, ...]
    responder_nonce: bytes
    opaque_raw: bytes
    opaque: OpaqueData
    signature: bytes

    @property
    def length(self) -> int:
        """Bytes the decoded report spans (what the signature and the evidence hash cover)."""
        return len(self.raw)

    @property
    def signed_bytes(self) -> bytes:
        """Request and response up to the signature: what the GPU signed."""
        return self.raw[:-SIGNATURE_SIZE]

    @property
    def measurements(self) -> dict[int, bytes]:
        """Measurement values by SPDM block index (a fresh dict each call)."""
        return {block.index: block.value for block in self.blocks}

    @property
    def topology_mode(self) -> str | None:
        """The signed topology mode: SPT, MPT, PPCIE or ``unknown(N)``; None where the report
        carries no FEATURE_FLAG (firmware that predates it, such as the captured H100 report)."""
        return _topology_name(self.opaque.feature_flag)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spdm_version": f"{self.spdm_version >> 4}.{self.spdm_version & 0xF}",
            "request": {
                "param1": self.request_param1,
                "param2": self.request_param2,
                "nonce": self.request_nonce.hex(),
                "slot_id": self.slot_id,
            },
            "response": {"param1": self.response_param1, "param2": self.response_param2},
            "length": self.length,
            "number_of_blocks": len(self.blocks),
            "measurements": {
                str(b.index): {
                    "specification": b.specification,
                    "value_type": b.value_type,
                    "value": b.value.hex(),
                }
                for b in self.blocks
            },
            "responder_nonce": self.responder_nonce.hex(),
            "opaque": self.opaque.to_dict(),
            "topology_mode": self.topology_mode,
            "signature": self.signature.hex(),
        }


def _field_name(field: int) -> str:
    try:
        return OpaqueFieldId(field).name.lower()
    except ValueError:
        return f"unknown_{field}"


def _status_name(value: int | None) -> str | None:
    if value is None:
        return None
    if value == NVDEC_STATUS_ENABLED:
        return "enabled"
    if value == NVDEC_STATUS_DISABLED:
        return "disabled"
    return f"{value:02x}"


def _status_hex(value: int | None) -> str | None:
    return None if value is None else f"{value:02x}"


def _topology_name(value: int | None) -> str | None:
    if value is None:
        return None
    return TOPOLOGY_MODES.get(value, f"unknown({value})")


def _le(data: bytes, offset: int, size: int, what: str) -> int:
    end = offset + size
    if end > len(data):
        raise ParseError(f"GPU report truncated in {what} (needs {end} bytes, has {len(data)})")
    return int.from_bytes(data[offset:end], "little")


def _take(data: bytes, offset: int, size: int, what: str) -> bytes:
    end = offset + size
    if end > len(data):
        raise ParseError(f"GPU report truncated in {what} (needs {end} bytes, has {len(data)})")
    return data[offset:end]


def _c_string(value: bytes, what: str) -> str:
    try:
        return value.rstrip(b"\x00").decode("ascii")
    except UnicodeDecodeError as exc:
        raise ParseError(f"opaque {what} is not ASCII: {value.hex()}") from exc


def format_vbios_version(value: bytes) -> str:
    """NVIDIA's display form: the low half's bytes reversed, then the next byte (96.00.9f.00.01)."""
    if len(value) < 2 or len(value) % 2:
        raise ParseError(f"opaque vbios_version has odd or short size {len(value)}")
    half = len(value) // 2
    return ".".join(f"{b:02x}" for b in (*reversed(value[:half]), value[half]))


def _single_byte(value: bytes, what: str) -> int:
    if len(value) != 1:
        raise ParseError(f"opaque {what} must be 1 byte, got {len(value)}")
    return value[0]


def _le_int(value: bytes, what: str) -> int:
    if not 1 <= len(value) <= 8:
        raise ParseError(f"opaque {what} must be 1 to 8 bytes, got {len(value)}")
    return int.from_bytes(value, "little")


def _parse_opaque(data: bytes) -> OpaqueData:
    items: list[tuple[int, bytes]] = []
    seen: set[int] = set()
    offset = 0
    while offset < len(data):
        if len(data) - offset < OPAQUE_ITEM_HEADER_SIZE:
            raise ParseError(f"opaque data item header truncated at offset {offset}")
        item_type = int.from_bytes(data[offset : offset + 2], "little")
        size = int.from_bytes(data[offset + 2 : offset + 4], "little")
        start = offset + OPAQUE_ITEM_HEADER_SIZE
        if start + size > len(data):
            raise ParseError(f"opaque data item {item_type} overruns the opaque data")
        if item_type == OpaqueFieldId.INVALID:
            raise ParseError("opaque data carries OPAQUE_FIELD_ID_INVALID")
        if item_type in seen:
            raise ParseError(f"opaque data item {_field_name(item_type)} appears twice")
        seen.add(item_type)
        items.append((item_type, data[start : start + size]))
        offset = start + size

    fields = dict(items)

    def raw(field: OpaqueFieldId) -> bytes:
        return fields.get(field, b"")

    if OpaqueFieldId.DRIVER_VERSION not in fields or OpaqueFieldId.VBIOS_VERSION not in fields:
        raise ParseError("opaque data lacks driver_version or vbios_version")
    counts_raw = raw(OpaqueFieldId.MSRSCNT)
    if len(counts_raw) % MSR_COUNT_SIZE:
        raise ParseError(f"opaque measurement count size {len(counts_raw)} is not a multiple of 4")
    pdis_raw = raw(OpaqueFieldId.SWITCH_PDI)
    if len(pdis_raw) % SWITCH_PDI_SIZE:
        raise ParseError(f"opaque switch PDI size {len(pdis_raw)} is not a multiple of 8")

    def optional_byte(field: OpaqueFieldId) -> int | None:
        value = fields.get(field)
        return None if value is None else _single_byte(value, field.name.lower())

    def optional_int(field: OpaqueFieldId) -> int | None:
        value = fields.get(field)
        return None if value is None else _le_int(value, field.name.lower())

    return OpaqueData(
        items=tuple(items),
        driver_version=_c_string(raw(OpaqueFieldId.DRIVER_VERSION), "driver_version"),
        vbios_version=format_vbios_version(raw(OpaqueFieldId.VBIOS_VERSION)),
        fwid=raw(OpaqueFieldId.FWID),
        gpu_info=raw(OpaqueFieldId.GPU_INFO),
        board_id=raw(OpaqueFieldId.BOARD_ID),
        chip_sku=_c_string(raw(OpaqueFieldId.CHIP_SKU), "chip_sku"),
        chip_sku_mod=_c_string(raw(OpaqueFieldId.CHIP_SKU_MOD), "chip_sku_mod"),
        project=_c_string(raw(OpaqueFieldId.PROJECT), "project"),
        project_sku=_c_string(raw(OpaqueFieldId.PROJECT_SKU), "project_sku"),
        project_sku_mod=raw(OpaqueFieldId.PROJECT_SKU_MOD),
        cpr_info=raw(OpaqueFieldId.CPRINFO),
        nvdec0_status=optional_byte(OpaqueFieldId.NVDEC0_STATUS),
        protected_pcie_status=optional_byte(OpaqueFieldId.PROTECTED_PCIE_STATUS),
        feature_flag=optional_int(OpaqueFieldId.FEATURE_FLAG),
        opaque_data_version=optional_int(OpaqueFieldId.OPAQUE_DATA_VERSION),
        measurement_counts=tuple(
            int.from_bytes(counts_raw[i : i + MSR_COUNT_SIZE], "little")
            for i in range(0, len(counts_raw), MSR_COUNT_SIZE)
        ),
        switch_pdis=tuple(
            pdis_raw[i : i + SWITCH_PDI_SIZE] for i in range(0, len(pdis_raw), SWITCH_PDI_SIZE)
        ),
    )


def _parse_record(record: bytes, number_of_blocks: int) -> tuple[MeasurementBlock, ...]:
    blocks: list[MeasurementBlock] = []
    seen: set[int] = set()
    offset = 0
    for _ in range(number_of_blocks):
        if len(record) - offset < BLOCK_HEADER_SIZE:
            raise ParseError(f"measurement record truncated in block {len(blocks) + 1} header")
        index = record[offset]
        spec = record[offset + 1]
        size = int.from_bytes(record[offset + 2 : offset + 4], "little")
        start = offset + BLOCK_HEADER_SIZE
        if start + size > len(record):
            raise ParseError(f"measurement block {index} overruns the measurement record")
        if spec != MEASUREMENT_SPEC_DMTF:
            raise ParseError(f"measurement block {index} specification {spec:#x} is not DMTF")
        if size < DMTF_HEADER_SIZE:
            raise ParseError(f"measurement block {index} is shorter than a DMTF header")
        value_type = record[start]
        value_size = int.from_bytes(record[start + 1 : start + 3], "little")
        if value_size != size - DMTF_HEADER_SIZE:
            raise ParseError(
                f"measurement block {index}: DMTF value size {value_size} "
                f"disagrees with block size {size}"
            )
        if index in seen:
            raise ParseError(f"measurement block index {index} appears twice")
        seen.add(index)
        blocks.append(
            MeasurementBlock(
                index=index,
                specification=spec,
                value_type=value_type,
                value=record[start + DMTF_HEADER_SIZE : start + size],
            )
        )
        offset = start + size
    if offset != len(record):
        raise ParseError(
            f"measurement record length {len(record)} disagrees with its {number_of_blocks} blocks"
        )
    return tuple(blocks)


def parse_gpu_report(data: bytes) -> GpuReport:
    """Decode an SPDM attestation report; :class:`ParseError` on malformed bytes."""
    data = bytes(data)
    version = _le(data, REQ_VERSION, 1, "request")
    if version != SPDM_VERSION_1_1:
        raise ParseError(f"unsupported SPDM version {version:#04x} (expected 0x11)")
    code = _le(data, REQ_CODE, 1, "request")
    if code != GET_MEASUREMENTS:
        raise ParseError(f"request code {code:#04x} is not GET_MEASUREMENTS (0xe0)")
    request = _take(data, 0, REQUEST_SIZE, "request")
    param1 = request[REQ_PARAM1]
    if not param1 & REQ_PARAM1_SIGNATURE_REQUESTED:
        raise ParseError("GET_MEASUREMENTS did not request a signature")

    rsp = REQUEST_SIZE
    rsp_version = _le(data, rsp + RSP_VERSION, 1, "response header")
    if rsp_version != version:
        raise ParseError(f"response SPDM version {rsp_version:#04x} differs from the request's")
    rsp_code = _le(data, rsp + RSP_CODE, 1, "response header")
    if rsp_code != MEASUREMENTS:
        raise ParseError(f"response code {rsp_code:#04x} is not MEASUREMENTS (0x60)")
    header = _take(data, rsp, RSP_RECORD, "response header")
    number_of_blocks = header[RSP_NUMBER_OF_BLOCKS]
    record_length = int.from_bytes(
        header[RSP_RECORD_LENGTH : RSP_RECORD_LENGTH + RECORD_LENGTH_SIZE], "little"
    )
    offset = rsp + RSP_RECORD
    record = _take(data, offset, record_length, "measurement record")
    blocks = _parse_record(record, number_of_blocks)
    offset += record_length
    responder_nonce = _take(data, offset, NONCE_SIZE, "responder nonce")
    offset += NONCE_SIZE
    opaque_length = _le(data, offset, OPAQUE_LENGTH_SIZE, "opaque length")
    offset += OPAQUE_LENGTH_SIZE
    opaque_raw = _take(data, offset, opaque_length, "opaque data")
    opaque = _parse_opaque(opaque_raw)
    offset += opaque_length
    signature = _take(data, offset, SIGNATURE_SIZE, "signature")
    offset += SIGNATURE_SIZE
    if data[offset:].strip(b"\x00"):
        raise ParseError(f"{len(data) - offset} unexpected bytes after the {offset}-byte report")

    return GpuReport(
        raw=data[:offset],
        spdm_version=version,
        request_param1=param1,
        request_param2=request[REQ_PARAM2],
        request_nonce=request[REQ_NONCE : REQ_NONCE + NONCE_SIZE],
        slot_id=request[REQ_SLOT_ID],
        response_param1=header[RSP_PARAM1],
        response_param2=header[RSP_PARAM2],
        blocks=blocks,
        responder_nonce=responder_nonce,
        opaque_raw=opaque_raw,
        opaque=opaque,
        signature=signature,
    )
