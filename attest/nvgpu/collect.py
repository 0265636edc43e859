"""Collect GPU evidence: NVIDIA's NVML on a real host, or the SIMULATED GPU.

Both sources return :class:`GpuEvidence` in the same SPDM format; the verifier cannot tell them
apart except by which root the chain reaches. The real source needs the optional ``gpu`` extra
(NVIDIA's ``nvidia-ml-py``, the NVML binding that NVIDIA's attestation SDK itself calls) and
is imported lazily so that hosts without it still import this module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

from attest.errors import TransportError
from attest.nvgpu.abi import NONCE_SIZE
from attest.nvgpu.sim import SimulatedGpu

__all__ = ["GpuEvidence", "GpuEvidenceSource", "NvmlGpuSource", "SimulatedGpuSource"]


@dataclass(frozen=True, slots=True)
class GpuEvidence:
    """One GPU's SPDM report and its certificate chain (PEM, leaf first), exactly as received."""

    vendor: str
    evidence: bytes
    certs_pem: bytes

    @property
    def simulated(self) -> bool:
        return self.vendor.startswith("sim-")


class GpuEvidenceSource(Protocol):
    """Anything that returns fresh evidence for every GPU bound to ``nonce``."""

    def collect(self, nonce: bytes) -> list[GpuEvidence]: ...


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"GPU nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")


@dataclass(frozen=True, slots=True)
class SimulatedGpuSource:
    """SIMULATED evidence from :class:`SimulatedGpu` (vendor ``sim-nvidia``); ``cc_enabled``
    False simulates a GPU outside CC mode, which shows in its measurements."""

    gpu: SimulatedGpu
    cc_enabled: bool = True

    def collect(self, nonce: bytes) -> list[GpuEvidence]:
        _check_nonce(nonce)
        return [
            GpuEvidence(
                vendor="sim-nvidia",
                evidence=self.gpu.evidence(nonce, cc_enabled=self.cc_enabled),
                certs_pem=self.gpu.chain_pem(),
            )
        ]


class NvmlGpuSource:
    """Evidence from every GPU through NVML's confidential-computing attestation calls.

    Written against NVML's documented ``nvmlDeviceGetConfComputeGpuAttestationReport`` and
    ``nvmlDeviceGetConfComputeGpuCertificate``; not yet exercised on CC hardware here.
    """

    def __init__(self, nvml: Any | None = None) -> None:
        self._nvml = nvml

    def _module(self) -> Any:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                raise TransportError(
                    "NVML is not installed", hint="install the 'gpu' extra (nvidia-ml-py)"
                ) from exc
        return self._nvml

    def collect(self, nonce: bytes) -> list[GpuEvidence]:
        _check_nonce(nonce)
        nvml = self._module()
        error = getattr(nvml, "NVMLError", OSError)
        out: list[GpuEvidence] = []
        try:
            nvml.nvmlInit()
            try:
                for index in range(nvml.nvmlDeviceGetCount()):
                    handle = nvml.nvmlDeviceGetHandleByIndex(index)
                    report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
                    certs = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
                    evidence = bytes(report.attestationReport[: report.attestationReportSize])
                    chain = bytes(certs.attestationCertChain[: certs.attestationCertChainSize])
                    out.append(GpuEvidence(vendor="nvidia", evidence=evidence, certs_pem=chain))
            finally:
                nvml.nvmlShutdown()
        except error as exc:
            raise TransportError(f"NVML attestation failed: {exc}") from exc
        if not out:
            raise TransportError("NVML reports no GPU")
        return out
