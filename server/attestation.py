"""Evidence providers and the attestation bundle the gateway serves (DESIGN.md section 3).

A provider turns REPORT_DATA into a hardware report: the Linux configfs-tsm interface inside a
real SEV-SNP or Intel TDX guest, or a simulated signer (which says SIMULATED in its TEE name).
For TDX the "report" is the DCAP quote, whose 64-byte TD REPORTDATA carries the same binding, and
``certs`` is the PCK chain copied out of the quote. The bundle builder binds the current key
configuration, the GPU evidence and the release manifest into REPORT_DATA, so a client can check
that all of them come from this one node. :func:`cpu_provider` picks a provider by the gateway
config's ``attestation`` value.

Evidence production is serialized per builder: one hardware request at a time (NVML handles are
not documented as thread-safe, and each report costs a firmware or GPU round trip). The
gateway asks for fresh evidence only through an :class:`EvidenceLine`, which bounds how many
requests may wait for it and runs them on one thread of its own; a still-current nonce-less
bundle is served from the cache without waiting behind either.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.serialization import Encoding

from attest import binding
from attest.errors import OpenPCCError, TransportError
from attest.nvgpu import SimulatedGpu
from attest.sevsnp.configfs import collect_report
from attest.sevsnp.sim import SimulatedSnpSigner
from attest.tdx.abi import parse_quote, parse_register
from attest.tdx.configfs import REPORT_ROOT, TsmClient, collect_tdx_quote
from attest.tdx.sim import SimulatedTdxSigner
from server.keys import KeyRing

__all__ = [
    "BundleBuilder",
    "ConfigfsSnpProvider",
    "ConfigfsTdxProvider",
    "CpuEvidenceProvider",
    "EvidenceLine",
    "GpuEvidenceProvider",
    "NoGpuProvider",
    "NvmlGpuProvider",
    "SimulatedGpuProvider",
    "SimulatedSnpProvider",
    "SimulatedTdxProvider",
    "cpu_provider",
]


class CpuEvidenceProvider(Protocol):
    tee: str

    def evidence(self, report_data: bytes) -> tuple[bytes, str]:
        """(raw hardware report, PEM chain of its signing key)."""
        ...


class GpuEvidenceProvider(Protocol):
    def evidence(self, nonce: bytes) -> list[dict[str, str]]:
        """One ``{"vendor", "evidence", "certs"}`` entry per GPU, requested with ``nonce``."""
        ...


class ConfigfsSnpProvider:
    """A real SEV-SNP guest: reports come from the AMD secure processor through configfs-tsm."""

    tee = "sev-snp"

    def __init__(
        self, root: Path = Path("/sys/kernel/config/tsm/report"), *, extra_certs_pem: str = ""
    ) -> None:
        self._root = root
        self._extra = extra_certs_pem

    def evidence(self, report_data: bytes) -> tuple[bytes, str]:
        raw, certs = collect_report(report_data, root=self._root)
        pem = "".join(c.public_bytes(Encoding.PEM).decode() for c in certs)
        return raw, pem + self._extra


class SimulatedSnpProvider:
    """SIMULATED: an SEV-SNP-format report signed by a chain generated at install time."""

    tee = "sim-sev-snp"

    def __init__(self, directory: Path, measurement: bytes) -> None:
        self._signer = SimulatedSnpSigner.load(directory)
        self._measurement = measurement
        self._chain = self._signer.chain_pem().decode()

    def evidence(self, report_data: bytes) -> tuple[bytes, str]:
        return self._signer.sign(report_data=report_data, measurement=self._measurement), (
            self._chain
        )


class ConfigfsTdxProvider:
    """A real TDX guest: quotes come from the TDX module and the host's Quoting Enclave through
    configfs-tsm; the PCK chain travels inside the quote (certification data type 5)."""

    tee = "tdx"

    def __init__(self, root: Path = REPORT_ROOT, *, client: TsmClient | None = None) -> None:
        self._root = root
        self._client = client

    def evidence(self, report_data: bytes) -> tuple[bytes, str]:
        tsm = collect_tdx_quote(report_data, root=self._root, client=self._client)
        quote = parse_quote(tsm.outblob)  # a quote the client cannot parse is refused here
        if quote.body.report_data != report_data:
            raise TransportError("configfs-tsm returned a TDX quote over another REPORTDATA")
        pem = "".join(c.public_bytes(Encoding.PEM).decode() for c in quote.pck_chain)
        return quote.raw, pem


class SimulatedTdxProvider:
    """SIMULATED: a DCAP v4 quote signed by a TDX-shaped chain generated at install time.

    ``measurement`` is the TD's MRTD (the manifest's ``measurement``); ``rtmrs``, when given,
    are the four runtime registers it reports (zeros otherwise)."""

    tee = "sim-tdx"

    def __init__(
        self, directory: Path, measurement: bytes, *, rtmrs: Sequence[bytes] | None = None
    ) -> None:
        self._signer = SimulatedTdxSigner.load(directory)
        self._mrtd = measurement
        self._rtmrs = None if rtmrs is None else tuple(rtmrs)
        self._chain = self._signer.chain_pem().decode()

    def evidence(self, report_data: bytes) -> tuple[bytes, str]:
        quote = self._signer.sign(report_data=report_data, mrtd=self._mrtd, rtmrs=self._rtmrs)
        return quote, self._chain


def simulated_td_registers(manifest: Mapping[str, object]) -> tuple[bytes, ...]:
    """RTMR0-3 of a simulated TD booted from ``manifest``: what its ``tdx`` table pins, zeros
    elsewhere (a simulated TD of a release that pins nothing is then refused, as a real one
    would be). A pin that is not 48 bytes of hex is an error, not a zero."""
    pins = manifest.get("tdx", {})
    if not isinstance(pins, Mapping):
        raise OpenPCCError("manifest field 'tdx' must be an object of TD registers")
    out = []
    for i in range(4):
        value = pins.get(f"rtmr{i}")
        if value is None:
            out.append(bytes(48))
            continue
        raw = parse_register(value)
        if raw is None:
            raise OpenPCCError(f"manifest tdx.rtmr{i} is not 48 bytes of hex")
        out.append(raw)
    return tuple(out)


def cpu_provider(
    kind: str,
    *,
    sim_dir: Path,
    measurement: bytes,
    manifest: Mapping[str, object] | None = None,
) -> CpuEvidenceProvider:
    """The CPU evidence provider a gateway config's ``attestation`` value names.

    ``manifest`` gives a simulated TD its runtime registers (:func:`simulated_td_registers`).
    """
    if kind == "simulated":
        return SimulatedSnpProvider(sim_dir / "snp", measurement)
    if kind == "configfs":
        return ConfigfsSnpProvider()
    if kind == "simulated-tdx":
        rtmrs = simulated_td_registers(manifest) if manifest is not None else None
        return SimulatedTdxProvider(sim_dir / "tdx", measurement, rtmrs=rtmrs)
    if kind == "configfs-tdx":
        return ConfigfsTdxProvider()
    raise OpenPCCError(f"unknown attestation provider {kind!r}")


class SimulatedGpuProvider:
    """SIMULATED: H100-format SPDM evidence from a generated chain, CC mode reported on."""

    def __init__(self, directory: Path, count: int = 1) -> None:
        self._gpu = SimulatedGpu.load(directory)
        self._count = count
        self._chain = self._gpu.chain_pem().decode()

    def evidence(self, nonce: bytes) -> list[dict[str, str]]:
        return [
            {
                "vendor": "sim-nvidia",
                "evidence": base64.b64encode(self._gpu.evidence(nonce)).decode(),
                "certs": self._chain,
            }
            for _ in range(self._count)
        ]


#: NVML's value of ``ccFeature`` when the system runs in confidential-computing mode.
NVML_CC_FEATURE_ENABLED = 1


class NvmlGpuProvider:
    """Real H100/H200 evidence inside the CVM, read through NVML (nvidia-ml-py's ``pynvml``).

    Per GPU: the SPDM attestation report answering the nonce
    (``nvmlDeviceGetConfComputeGpuAttestationReport``) and the device certificate chain
    (``nvmlDeviceGetConfComputeGpuCertificate``, read once: it does not change), the two pieces
    NVIDIA's own attestation SDK collects. Nothing here is trusted by the gateway itself: the
    client verifies the report's signature, the chain to NVIDIA's pinned root, the nonce and the
    CC-mode bit. Starting refuses a system whose CC mode is off or that has fewer GPUs than the
    configuration names, so the gateway never serves a bundle a client must refuse.

    ``nvml``: the module (tests pass a fake); by default ``pynvml``, which vLLM hosts have.
    """

    def __init__(self, count: int = 1, *, nvml: Any = None) -> None:
        if nvml is None:
            try:
                import pynvml  # type: ignore[import-not-found, unused-ignore]
            except ImportError:
                raise OpenPCCError(
                    "gpu = 'nvidia' needs NVML's Python binding (pynvml), which is not installed",
                    hint="add nvidia-ml-py to the image, or set gpu = 'none' for a CPU-only node",
                ) from None
            nvml = pynvml
        self._nvml: Any = nvml
        error = getattr(nvml, "NVMLError", Exception)
        try:
            self._nvml.nvmlInit()
            cc = self._nvml.nvmlSystemGetConfComputeState()
            if getattr(cc, "ccFeature", None) != NVML_CC_FEATURE_ENABLED:
                raise OpenPCCError(
                    "the GPUs are not in confidential-computing mode (NVML ccFeature is off)",
                    hint="switch CC mode on with NVIDIA's gpu-admin-tools on the host, then reboot",
                )
            found = int(self._nvml.nvmlDeviceGetCount())
            if found < count:
                raise OpenPCCError(
                    f"the configuration names {count} GPU(s), NVML sees {found}",
                    hint="check the GPUs passed through to this VM (openpcc-appliance doctor)",
                )
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._chains = [self._chain(i, h) for i, h in enumerate(self._handles)]
        except OpenPCCError:
            raise
        except error as e:
            raise OpenPCCError(
                f"NVML failed while opening the GPUs ({type(e).__name__})",
                hint="is the NVIDIA driver loaded in the CVM? see the serial console",
            ) from e

    def _chain(self, i: int, handle: object) -> str:
        cert = self._nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
        raw = bytes(cert.attestationCertChain[: cert.attestationCertChainSize])
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise OpenPCCError(f"GPU {i}: NVML's certificate chain is not PEM text") from None

    def evidence(self, nonce: bytes) -> list[dict[str, str]]:
        error = getattr(self._nvml, "NVMLError", Exception)
        out: list[dict[str, str]] = []
        for i, (handle, chain) in enumerate(zip(self._handles, self._chains, strict=True)):
            try:
                r = self._nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
            except error as e:
                raise TransportError(
                    f"GPU {i}: NVML did not give an attestation report ({type(e).__name__})"
                ) from e
            report = bytes(r.attestationReport[: r.attestationReportSize])
            out.append(
                {"vendor": "nvidia", "evidence": base64.b64encode(report).decode(), "certs": chain}
            )
        return out


class NoGpuProvider:
    def evidence(self, nonce: bytes) -> list[dict[str, str]]:
        return []


class BundleBuilder:
    """Builds bundles; the nonce-less one is cached until the key or the log changes.

    Only one build at a time asks the hardware (``_evidence``); the cache has a lock of its own
    (``_lock``), held only for a dictionary look-up, so a current cached bundle never waits for
    a slow GPU or CPU report.
    """

    def __init__(
        self,
        *,
        cpu: CpuEvidenceProvider,
        gpu: GpuEvidenceProvider,
        keys: KeyRing,
        manifest: Mapping[str, object],
        tlog_entry: Callable[[], dict[str, object]],
    ) -> None:
        self._cpu = cpu
        self._gpu = gpu
        self._keys = keys
        self._manifest = dict(manifest)
        self._tlog_entry = tlog_entry
        self._lock = threading.Lock()
        self._evidence = threading.Lock()
        self._cached: tuple[tuple[int, object], dict[str, object]] | None = None
        keys.on_rotate(self.invalidate)

    @property
    def tee(self) -> str:
        return self._cpu.tee

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    def cached(self) -> dict[str, object] | None:
        """The nonce-less bundle if it is still current (same key, same log); never asks the
        hardware and never waits for a build in progress."""
        self._keys.tick()  # a rotation that is due happens now, not after the look-up
        stamp = (self._keys.generation, self._tlog_entry().get("tree_size"))
        with self._lock:
            if self._cached is not None and self._cached[0] == stamp:
                return self._cached[1]
        return None

    def build(self, nonce: bytes | None) -> dict[str, object]:
        """A bundle answering ``nonce`` (fresh evidence), or the current nonce-less one."""
        if nonce is None and (bundle := self.cached()) is not None:
            return bundle
        with self._evidence:
            # Nonce-less requests that waited here while another built it take that one.
            if nonce is None and (bundle := self.cached()) is not None:
                return bundle
            return self._build_locked(nonce)

    def _build_locked(self, nonce: bytes | None) -> dict[str, object]:
        # The generation is read before the key: a rotation in between makes the cached copy
        # look stale (one rebuild too many), never a bundle over the old key look current.
        generation = self._keys.generation
        key_config = self._keys.current_config.encode()
        tl = self._tlog_entry()
        gpus = self._gpu.evidence(binding.gpu_nonce(nonce))
        rd = binding.report_data(
            key_config=key_config, gpus=gpus, manifest=self._manifest, nonce=nonce
        )
        report, certs = self._cpu.evidence(rd)
        bundle: dict[str, object] = {
            "format": "openpcc-attestation/1",
            "tee": self._cpu.tee,
            "report": base64.b64encode(report).decode(),
            "certs": certs,
            "gpus": gpus,
            "key_config": base64.b64encode(key_config).decode(),
            "manifest": self._manifest,
            "tlog": tl,
            "nonce": nonce.hex() if nonce is not None else None,
        }
        if nonce is None:
            with self._lock:
                self._cached = ((generation, tl.get("tree_size")), bundle)
        return bundle


class EvidenceLine:
    """Fresh evidence for the gateway: at most ``limit`` builds waiting or running, on one
    thread of its own, so a flood of nonce'd requests neither grows without bound nor pins the
    default thread pool that the rest of the gateway shares.

    A slot is given back when its build is *done in the executor* (finished, failed, or
    cancelled before it started), never when the request merely stops waiting for it: a hardware
    call cannot be interrupted, so a build whose client timed out still occupies the line until
    the hardware answers. Releasing early would let clients that give up stack unbounded work
    behind a hung GPU, which is the flood this exists to stop. The count is therefore always the
    number of builds really queued or running; when the hardware hangs, the line fills and
    every further request is refused at once instead of waiting.
    """

    def __init__(self, builder: BundleBuilder, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"an evidence line needs a limit >= 1, not {limit}")
        self._builder = builder
        self._limit = limit
        self._lock = threading.Lock()  # released from the executor's thread
        self._waiting = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openpcc-evidence")

    @property
    def waiting(self) -> int:
        """Builds queued or running now."""
        with self._lock:
            return self._waiting

    def submit(self, nonce: bytes | None) -> Future[dict[str, object]] | None:
        """The build, queued; None when ``limit`` builds are already waiting or running.

        Cancelling the future drops a build that has not started (and frees its slot at once);
        a running one finishes and frees its slot then."""
        with self._lock:
            if self._waiting >= self._limit:
                return None
            self._waiting += 1
        try:
            future = self._pool.submit(self._builder.build, nonce)
        except RuntimeError:  # shut down: nothing was queued
            self._release()
            raise
        future.add_done_callback(self._release)
        return future

    def _release(self, _: object = None) -> None:
        with self._lock:
            self._waiting -= 1

    def shutdown(self) -> None:
        """Drop queued builds; a running hardware call is left to finish on its own."""
        self._pool.shutdown(wait=False, cancel_futures=True)
