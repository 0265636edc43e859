"""FAKE NODE — for tests: a simulated node built in-process and served through httpx.MockTransport.

Real simulated evidence (:class:`SimulatedSnpSigner`, :class:`SimulatedGpu`), a real
:class:`TransparencyLog` and the gateway's own :class:`BundleBuilder` and :class:`KeyRing` build
each bundle. A test mutates one thing, re-signing the report over the mutated bundle
(:meth:`SimNode.rebind`) where the check it targets must be the one that fails, and serves it to a
real :class:`client_cli.session.Session`. The transport records every request, so a test can
assert that nothing reached ``/v1/ohttp``. Loaded by path from ``conftest.py``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import httpx

from attest import binding
from attest.bundle import ClientPolicy, TrustAnchors
from attest.nvgpu import SimulatedGpu
from attest.sevsnp.sim import SimulatedSnpSigner
from attest.sevsnp.validate import SnpPolicy
from attest.tlog import VerifierKey
from client_cli.session import Session
from client_cli.trust import FileCheckpointStore
from cvm_boot.tlog import TransparencyLog, bundle_entry
from server.attestation import BundleBuilder, SimulatedGpuProvider, SimulatedSnpProvider
from server.bhttp_stream import encode_content_chunk, encode_response_end, encode_response_head
from server.keys import KeyRing
from server.ohttp import ChunkedRequestOpener

MEASUREMENT = hashlib.sha384(b"openpcc test release").digest()
OTHER_MEASUREMENT = hashlib.sha384(b"some other image").digest()
NODE_URL = "http://sim.node.test"
FILLERS = (b"filler release 1", b"filler release 2")

Bundle = dict[str, object]
Mutation = Callable[["SimNode", Bundle, bytes | None], Bundle]


class RecordingTransport(httpx.MockTransport):
    """Serves one simulated node; records every request the client makes."""

    def __init__(
        self,
        node: SimNode,
        mutate: Mutation | None,
        log: TransparencyLog,
        ohttp: Callable[[httpx.Request], httpx.Response] | None = None,
    ) -> None:
        self.node = node
        self.mutate = mutate
        self.log = log
        self.ohttp = ohttp
        self.requests: list[httpx.Request] = []
        super().__init__(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.method == "GET" and path == "/v1/attestation":
            raw = request.url.params.get("nonce")
            nonce = bytes.fromhex(raw) if raw else None
            bundle = self.node.bundle(nonce)
            bundle["tlog"] = self.node.tlog_entry(self.log)
            if self.mutate is not None:
                bundle = self.mutate(self.node, bundle, nonce)
            return httpx.Response(200, content=json.dumps(bundle).encode())
        if request.method == "GET" and path == "/v1/log/consistency":
            a, b = int(request.url.params["from"]), int(request.url.params["to"])
            proof = [h.hex() for h in self.log.consistency_proof(a, b)]
            return httpx.Response(200, json={"proof": proof})
        if request.method == "POST" and path == "/v1/ohttp":
            if self.ohttp is not None:
                return self.ohttp(request)
            return httpx.Response(503, text="unavailable")
        return httpx.Response(404, text="no route")

    @property
    def ohttp_posts(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST" and r.url.path == "/v1/ohttp"]

    @property
    def bundle_gets(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path == "/v1/attestation"]


class SimNode:
    """One simulated node, plus another node's evidence keys to swap in."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.snp = SimulatedSnpSigner.generate(base / "snp")
        self.gpu = SimulatedGpu.generate(base / "gpu")
        self.other_snp = SimulatedSnpSigner.generate(base / "other-snp")
        self.other_gpu = SimulatedGpu.generate(base / "other-gpu")
        self.manifest: dict[str, object] = {
            "measurement": MEASUREMENT.hex(),
            "model": "openpcc-model",
            "note": "FAKE release manifest for tests",
        }
        self.manifest_bytes = binding.canonical_json(self.manifest)
        self.other_measurement = OTHER_MEASUREMENT
        self.log = self.log_copy("log", [self.manifest_bytes, *FILLERS])
        # The same manifest, logged under a key the client never pinned.
        self.unpinned_log = self.log_copy("unpinned-log", [self.manifest_bytes], fresh_key=True)
        self.keys = KeyRing()
        self.builder = BundleBuilder(
            cpu=SimulatedSnpProvider(base / "snp", MEASUREMENT),
            gpu=SimulatedGpuProvider(base / "gpu"),
            keys=self.keys,
            manifest=self.manifest,
            tlog_entry=lambda: bundle_entry(self.log, self.manifest_bytes),
        )

    @classmethod
    def create(cls, base: Path) -> SimNode:
        return cls(base)

    # -- what the client trusts ---------------------------------------------------------------

    def anchors(self) -> TrustAnchors:
        return TrustAnchors(
            amd_roots=(),
            nvidia_roots=(),
            log_keys=(VerifierKey.parse(self.log.verifier_key),),
            simulation_snp_roots=(self.snp.ark_certificate(),),
            simulation_gpu_roots=(self.gpu.root_certificate(),),
        )

    def checkpoint_store(self, directory: Path) -> FileCheckpointStore:
        return FileCheckpointStore(directory, [VerifierKey.parse(self.log.verifier_key)])

    def transport(
        self,
        mutate: Mutation | None = None,
        *,
        log: TransparencyLog | None = None,
        ohttp: Callable[[httpx.Request], httpx.Response] | None = None,
    ) -> RecordingTransport:
        """``ohttp`` answers POST /v1/ohttp (default: 503, as a node that is busy)."""
        return RecordingTransport(self, mutate, log or self.log, ohttp)

    def answering(
        self, status: int, body: bytes, *, piece: int = 16 * 1024
    ) -> Callable[[httpx.Request], httpx.Response]:
        """An ``ohttp`` handler that opens the request with the node's keys and answers the inner
        ``status`` and ``body`` (in chunks of ``piece`` bytes), sealed as the gateway seals."""

        def answer(request: httpx.Request) -> httpx.Response:
            opener = ChunkedRequestOpener(self.keys.accepted())
            opener.feed(request.content)
            opener.close()
            sealer = opener.response_sealer()
            head = encode_response_head(status, [("content-type", "application/json")])
            out = [sealer.header(), sealer.seal_chunk(head)]
            for i in range(0, len(body), piece):
                out.append(sealer.seal_chunk(encode_content_chunk(body[i : i + piece])))
            out.append(sealer.seal_chunk(encode_response_end(), final=True))
            return httpx.Response(
                200,
                stream=httpx.ByteStream(b"".join(out)),  # unread, as off the network
                headers={"content-type": "message/ohttp-chunked-res"},
            )

        return answer

    def session(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        checkpoints: FileCheckpointStore | None = None,
        policy: ClientPolicy | None = None,
    ) -> Session:
        return Session(
            NODE_URL,
            trust=self.anchors(),
            policy=policy or ClientPolicy(snp=SnpPolicy()),
            checkpoints=checkpoints,
            transport=transport,
        )

    # -- building and re-signing bundles ------------------------------------------------------

    def bundle(self, nonce: bytes | None) -> Bundle:
        return copy.deepcopy(self.builder.build(nonce))

    def rebind(
        self,
        bundle: Bundle,
        nonce: bytes | None,
        *,
        signer: SimulatedSnpSigner | None = None,
        measurement: bytes = MEASUREMENT,
        **sign_kw: object,
    ) -> Bundle:
        """Sign a fresh report whose REPORT_DATA binds the bundle as it now is."""
        signer = signer or self.snp
        key_config = base64.b64decode(str(bundle["key_config"]))
        gpus = bundle["gpus"]
        manifest = bundle["manifest"]
        assert isinstance(gpus, list) and isinstance(manifest, dict)
        rd = binding.report_data(key_config=key_config, gpus=gpus, manifest=manifest, nonce=nonce)
        report = signer.sign(report_data=rd, measurement=measurement, **sign_kw)  # type: ignore[arg-type]
        bundle["report"] = base64.b64encode(report).decode()
        bundle["certs"] = signer.chain_pem().decode()
        return bundle

    def tlog_entry(self, log: TransparencyLog) -> dict[str, object]:
        return bundle_entry(log, self.manifest_bytes)

    def gpu_entry(
        self, nonce: bytes | None, *, gpu: SimulatedGpu | None = None, cc_enabled: bool = True
    ) -> dict[str, str]:
        gpu = gpu or self.gpu
        evidence = gpu.evidence(binding.gpu_nonce(nonce), cc_enabled=cc_enabled)
        return {
            "vendor": "sim-nvidia",
            "evidence": base64.b64encode(evidence).decode(),
            "certs": gpu.chain_pem().decode(),
        }

    def log_copy(
        self, name: str, entries: list[bytes], *, fresh_key: bool = False
    ) -> TransparencyLog:
        """A log in its own directory holding ``entries``, signed by this node's log key (a
        fresh key for the node's first log, or with ``fresh_key``: one the client never pinned)."""
        signer_key = None
        if not fresh_key and hasattr(self, "log"):
            signer_key = (self.log.directory / "log.key").read_text().strip()
        log = TransparencyLog.open(self.base / name, signer_key=signer_key)
        for data in entries:
            log.append(data)
        return log
