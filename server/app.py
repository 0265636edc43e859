"""Assemble the gateway from its configuration and run it: ``python -m server --config FILE``."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
import threading
from pathlib import Path

import typer
import uvicorn

from attest.binding import canonical_json
from attest.errors import OpenPCCError
from cvm_boot.tlog import ENTRIES_FILE, KEY_FILE, TransparencyLog, bundle_entry
from server.attestation import (
    BundleBuilder,
    GpuEvidenceProvider,
    NoGpuProvider,
    NvmlGpuProvider,
    SimulatedGpuProvider,
    cpu_provider,
)
from server.config import GatewayConfig, load_config
from server.engines import EngineSupervisor
from server.gateway import GatewayState, LogView, create_app
from server.keys import KeyRing

__all__ = ["build_state", "main", "serve"]


class _ReloadingLog:
    """The release log, reopened when the operator appends to it (the entries file changes)."""

    def __init__(self, directory: Path, manifest: bytes) -> None:
        self._dir = directory
        self._manifest = manifest
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._log = self._reopen()

    def _file_stamp(self) -> tuple[int, int] | None:
        path = self._dir / ENTRIES_FILE
        if not path.exists():
            return None
        st = path.stat()
        return st.st_size, st.st_mtime_ns

    def _reopen(self) -> TransparencyLog:
        self._stamp = self._file_stamp()
        if not (self._dir / KEY_FILE).exists() and (self._dir / ENTRIES_FILE).exists():
            # A real CVM's provisioning disk: the signed log without its key, served as signed.
            return TransparencyLog.open_readonly(self._dir)
        return TransparencyLog.open(self._dir)

    def current(self) -> TransparencyLog:
        with self._lock:
            if self._file_stamp() != self._stamp:
                self._log = self._reopen()
            return self._log

    def view(self) -> LogView:
        return LogView(
            entry=lambda: bundle_entry(self.current(), self._manifest),
            checkpoint=lambda: self.current().checkpoint(),
            consistency=lambda a, b: self.current().consistency_proof(a, b),
        )


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# The C HTTP parser and event loop cut the gateway's per-token cost (docs/bench).
_HTTP = "httptools" if _have("httptools") else "h11"
_LOOP = "uvloop" if _have("uvloop") else "asyncio"


def build_state(cfg: GatewayConfig) -> GatewayState:
    manifest = json.loads(cfg.manifest.read_text())
    measurement = bytes.fromhex(str(manifest["measurement"]))
    cpu = cpu_provider(
        cfg.attestation, sim_dir=cfg.sim_dir, measurement=measurement, manifest=manifest
    )
    gpu: GpuEvidenceProvider
    if cfg.gpu == "simulated":
        gpu = SimulatedGpuProvider(cfg.sim_dir / "gpu", cfg.gpu_count)
    elif cfg.gpu == "none":
        gpu = NoGpuProvider()
    elif cfg.gpu == "nvidia":
        gpu = NvmlGpuProvider(cfg.gpu_count)
    else:
        raise OpenPCCError(f"unknown GPU evidence provider {cfg.gpu!r}")
    keys = KeyRing(
        rotation_s=cfg.key_rotation_s,
        overlap_s=cfg.key_overlap_s,
        replay_max_per_key=cfg.replay_max_per_key,
    )
    log = _ReloadingLog(cfg.log_dir, canonical_json(manifest)).view()
    bundles = BundleBuilder(cpu=cpu, gpu=gpu, keys=keys, manifest=manifest, tlog_entry=log.entry)
    engine = EngineSupervisor(cfg.engine, log_path=cfg.engine_log)
    return GatewayState(config=cfg, keys=keys, bundles=bundles, engine=engine, log=log)


async def serve(cfg: GatewayConfig) -> None:
    state = build_state(cfg)
    state.bundles.build(None)  # fail at start, not at the first client, if evidence is broken
    app = create_app(state)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=cfg.host,
            port=cfg.port,
            access_log=False,
            log_level="warning",
            lifespan="on",
            # The gateway never looks at who a client is: no X-Forwarded-* interpretation (and
            # one middleware less per request), and no Server or Date header to fingerprint.
            proxy_headers=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=30,
            h11_max_incomplete_event_size=64 * 1024,
            # Bounded, so `down` never has to SIGKILL a gateway that waits on an open stream.
            timeout_graceful_shutdown=5,
            http=_HTTP,
            loop=_LOOP,
        )
    )
    await state.engine.start()
    try:
        await server.serve()
    finally:
        await state.engine.stop()


def main(config: Path = typer.Option(..., "--config", help="gateway TOML")) -> None:
    """Run the sealed gateway (and supervise its engine) until SIGTERM."""
    try:
        cfg = load_config(config)
        print(
            f"openpcc gateway: {cfg.attestation} attestation, engine {cfg.engine.kind}, "
            f"listening on {cfg.host}:{cfg.port}",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            if _LOOP == "uvloop":
                import uvloop

                uvloop.run(serve(cfg))
            else:
                asyncio.run(serve(cfg))
    except OpenPCCError as e:
        print(f"openpcc gateway: {e}", file=sys.stderr)
        raise typer.Exit(1) from e
