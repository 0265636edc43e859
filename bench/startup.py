"""Cold start (``up`` to the first verified answer) and ``openpcc ask`` to its first token."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

from appliance import lifecycle
from appliance.state import ApplianceRecord, StatePaths
from attest.bundle import ClientPolicy
from attest.sevsnp.validate import SnpPolicy
from bench.stack import EngineChoice, engine_pid, provision, stop_orphaned_engine
from client_cli.session import Session, SseDecoder, delta_text
from client_cli.trust import TrustStore

__all__ = ["ask_runs", "cold_start_runs", "prepare_client_config"]

ASK_PROMPT = "Why is the sky blue on a clear day"


async def _first_answer(url: str, paths: StatePaths) -> tuple[float, float]:
    """(client verification seconds, seconds from verified to first token) for a new client."""
    async with Session(
        url, trust=lifecycle.trust_anchors(paths), policy=ClientPolicy(snp=SnpPolicy())
    ) as s:
        t0 = time.perf_counter()
        await s.node()
        t1 = time.perf_counter()
        payload = {
            "messages": [{"role": "user", "content": ASK_PROMPT}],
            "max_tokens": 16,
            "stream": True,
        }
        sse = SseDecoder()
        first: float | None = None
        async for ev in s.stream("POST", "/v1/chat/completions", payload):
            if (
                first is None
                and ev.kind == "data"
                and any(delta_text(e) for e in sse.feed(ev.data))
            ):
                first = time.perf_counter() - t1
        if first is not None:
            return t1 - t0, first
    raise RuntimeError("the appliance answered without a token")


def cold_start_runs(state: Path, engine: EngineChoice, n: int) -> list[dict[str, float]]:
    """``n`` times: stopped appliance -> ``up`` (spawn, health, operator verification) ->
    a new client verifies and gets its first token."""
    # No fixed engine port: an engine that outlives its gateway's `down` would block the next `up`.
    paths, _ = provision(state, engine, max_concurrent=64, fixed_engine_port=False)
    url = f"http://127.0.0.1:{ApplianceRecord.load(paths.record).port}"
    out: list[dict[str, float]] = []
    engines: list[int | None] = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            lifecycle.up(paths, timeout=600)
            t_up = time.perf_counter() - t0
            engines.append(engine_pid(int(paths.pid.read_text().strip())))
            verify_s, first_s = asyncio.run(_first_answer(url, paths))
            out.append(
                {
                    "up_s": t_up,
                    "client_verify_s": verify_s,
                    "first_token_after_verify_s": first_s,
                    "total_s": time.perf_counter() - t0,
                }
            )
            lifecycle.down(paths)
            stop_orphaned_engine(engines[-1])
    finally:
        lifecycle.down(paths)
        for pid in engines:
            stop_orphaned_engine(pid)
    return out


def prepare_client_config(directory: Path, paths: StatePaths) -> Path:
    """A client trust store that trusts this simulated appliance (``openpcc trust``)."""
    store = TrustStore(directory)
    store.trust_simulation(paths.sim_trust.read_bytes())
    store.add_log_key((paths.log / "log.vkey").read_text().strip())
    return directory


def _openpcc() -> list[str]:
    exe = Path(sys.executable).parent / "openpcc"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from client_cli.main import app; app()"]


def _ask_once(env: dict[str, str], json_out: bool) -> dict[str, float]:
    argv = [*_openpcc(), "ask", ASK_PROMPT, "--max-tokens", "16"]
    if json_out:
        argv.append("--json")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    times: dict[str, float] = {}
    out = bytearray()
    open_fds = 2
    while open_fds:
        for key, _ in sel.select(timeout=60):
            data = os.read(key.fd, 65536)
            if not data:
                sel.unregister(key.fileobj)
                open_fds -= 1
                continue
            now = time.perf_counter() - t0
            if key.data == "out":
                out += data
                if out.strip() and "first_output_s" not in times:
                    times["first_output_s"] = now
            elif "stderr_first_s" not in times:
                times["stderr_first_s"] = now
    rc = proc.wait(timeout=60)
    times["exit_s"] = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"openpcc ask exited {rc}")
    if json_out:
        times["verify_s"] = float(json.loads(out)["verify_ms"]) / 1000.0
    return times


def ask_runs(config_dir: Path, url: str, n: int) -> list[dict[str, float]]:
    """``n`` pairs of fresh ``openpcc ask`` processes: one streaming (time to its first token on
    stdout), one with ``--json`` (which reports how long its verification took)."""
    env = {**os.environ, "OPENPCC_CONFIG_DIR": str(config_dir), "OPENPCC_URL": url}
    env.update(NO_COLOR="1", COLUMNS="200")
    out: list[dict[str, float]] = []
    for _ in range(n):
        plain = _ask_once(env, json_out=False)
        js = _ask_once(env, json_out=True)
        out.append(
            {
                "ask_to_first_token_s": plain["first_output_s"],
                "ask_to_verified_s": plain.get("stderr_first_s", float("nan")),
                "ask_exit_s": plain["exit_s"],
                "verify_s": js["verify_s"],
                "json_exit_s": js["exit_s"],
            }
        )
    return out
