"""NVIDIA GPU attestation: SPDM report parsing (abi), verification (verify), policy (validate)."""

from attest.nvgpu.abi import (
    TOPOLOGY_MODES,
    GpuReport,
    MeasurementBlock,
    OpaqueData,
    OpaqueFieldId,
    parse_gpu_report,
)
from attest.nvgpu.collect import GpuEvidence, GpuEvidenceSource, NvmlGpuSource, SimulatedGpuSource
from attest.nvgpu.rim import (
    Rim,
    RimMeasurement,
    VerifiedRim,
    check_rims,
    load_rim,
    pinned_rim_roots,
    verify_rim,
)
from attest.nvgpu.sim import SimulatedGpu
from attest.nvgpu.validate import (
    CC_NOT_ESTABLISHED,
    GpuCcState,
    GpuPolicy,
    gpu_cc_state,
    validate_gpu,
)
from attest.nvgpu.verify import (
    VerifiedGpu,
    load_gpu_chain,
    pinned_nvidia_roots,
    verify_gpu_report,
)

__all__ = [
    "CC_NOT_ESTABLISHED",
    "TOPOLOGY_MODES",
    "GpuCcState",
    "GpuEvidence",
    "GpuEvidenceSource",
    "GpuPolicy",
    "GpuReport",
    "MeasurementBlock",
    "NvmlGpuSource",
    "OpaqueData",
    "OpaqueFieldId",
    "Rim",
    "RimMeasurement",
    "SimulatedGpu",
    "SimulatedGpuSource",
    "VerifiedGpu",
    "VerifiedRim",
    "check_rims",
    "gpu_cc_state",
    "load_gpu_chain",
    "load_rim",
    "parse_gpu_report",
    "pinned_nvidia_roots",
    "pinned_rim_roots",
    "validate_gpu",
    "verify_gpu_report",
    "verify_rim",
]
