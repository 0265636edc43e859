"""Real GPU evidence through NVML, against a fake pynvml that answers like the real binding."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace

import pytest

from attest.errors import OpenPCCError, TransportError
from attest.nvgpu import SimulatedGpu
from attest.nvgpu.abi import parse_gpu_report
from attest.nvgpu.verify import load_gpu_chain, verify_gpu_report
from server.attestation import NVML_CC_FEATURE_ENABLED, NvmlGpuProvider


class FakeNvml:
    """What the provider calls of pynvml; arrays padded as NVML's fixed-size C buffers are."""

    class NVMLError(Exception):
        pass

    def __init__(
        self, gpu: SimulatedGpu, *, count: int = 1, cc: int = NVML_CC_FEATURE_ENABLED
    ) -> None:
        self.gpu, self.count, self.cc = gpu, count, cc
        self.fail_report = False
        self.fail_init = False
        self.nonces: list[bytes] = []

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlSystemGetConfComputeState(self) -> SimpleNamespace:
        return SimpleNamespace(ccFeature=self.cc)

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetConfComputeGpuAttestationReport(
        self, handle: int, nonce: bytes
    ) -> SimpleNamespace:
        if self.fail_report:
            raise self.NVMLError("Timeout")
        self.nonces.append(bytes(nonce))
        data = self.gpu.evidence(bytes(nonce))
        return SimpleNamespace(
            attestationReport=list(data) + [0] * 64, attestationReportSize=len(data)
        )

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: int) -> SimpleNamespace:
        chain = self.gpu.chain_pem()
        return SimpleNamespace(
            attestationCertChain=list(chain) + [0] * 64, attestationCertChainSize=len(chain)
        )


@pytest.fixture(scope="module")
def gpu(tmp_path_factory: pytest.TempPathFactory) -> SimulatedGpu:
    return SimulatedGpu.generate(tmp_path_factory.mktemp("gpu"))


def test_evidence_verifies_as_a_client_verifies_it(gpu: SimulatedGpu) -> None:
    nvml = FakeNvml(gpu, count=2)
    provider = NvmlGpuProvider(2, nvml=nvml)
    nonce = bytes(range(32))
    items = provider.evidence(nonce)
    assert len(items) == 2 and nvml.nonces == [nonce, nonce]
    for item in items:
        assert item["vendor"] == "nvidia"
        report = parse_gpu_report(base64.b64decode(item["evidence"]))  # padding cut off
        chain = load_gpu_chain(item["certs"].encode())
        verify_gpu_report(report, chain, nonce=nonce, roots=[gpu.root_certificate()])
        assert report.topology_mode in (None, "SPT", "MPT")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ({"cc": 0}, "not in confidential-computing mode"),
        ({"count": 1}, "names 2 GPU\\(s\\), NVML sees 1"),
        ({"fail_init": True}, "NVML failed while opening the GPUs \\(NVMLError\\)"),
    ],
)
def test_a_system_a_client_would_refuse_does_not_start(
    gpu: SimulatedGpu, setup: dict[str, object], message: str
) -> None:
    nvml = FakeNvml(gpu, **{k: v for k, v in setup.items() if k != "fail_init"})  # type: ignore[arg-type]
    nvml.fail_init = bool(setup.get("fail_init"))
    with pytest.raises(OpenPCCError, match=message) as info:
        NvmlGpuProvider(2, nvml=nvml)
    assert info.value.hint


def test_an_nvml_failure_per_request_is_a_transport_error(gpu: SimulatedGpu) -> None:
    nvml = FakeNvml(gpu)
    provider = NvmlGpuProvider(1, nvml=nvml)
    nvml.fail_report = True
    with pytest.raises(TransportError, match="GPU 0: NVML did not give an attestation report"):
        provider.evidence(b"\x00" * 32)


def test_missing_binding_is_one_line_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as if not installed
    with pytest.raises(OpenPCCError, match="needs NVML's Python binding") as info:
        NvmlGpuProvider(1)
    assert "nvidia-ml-py" in info.value.hint


def test_gateway_config_selects_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``gpu = "nvidia"`` in gateway.toml (what the sealed vLLM image names) selects NVML."""
    import json

    import server.app as app_mod
    from attest.binding import canonical_json
    from attest.sevsnp.sim import SimulatedSnpSigner
    from cvm_boot.tlog import TransparencyLog
    from server.config import load_config

    made: list[int] = []

    class Recorder:
        def __init__(self, count: int) -> None:
            made.append(count)

        def evidence(self, nonce: bytes) -> list[dict[str, str]]:
            return []

    monkeypatch.setattr(app_mod, "NvmlGpuProvider", Recorder)
    SimulatedSnpSigner.generate(tmp_path / "sim" / "snp")
    manifest = {"measurement": "11" * 48, "note": "FAKE release manifest for tests"}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    TransparencyLog.open(tmp_path / "log").append(canonical_json(manifest))
    (tmp_path / "gateway.toml").write_text(
        "[gateway]\n"
        'attestation = "simulated"\n'
        'gpu = "nvidia"\n'
        "gpu_count = 2\n"
        f'sim_dir = "{tmp_path / "sim"}"\n'
        f'manifest = "{tmp_path / "manifest.json"}"\n'
        f'log_dir = "{tmp_path / "log"}"\n'
        "[engine]\n"
        'kind = "embedded"\n'
    )
    app_mod.build_state(load_config(tmp_path / "gateway.toml"))
    assert made == [2]
