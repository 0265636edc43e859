"""Scenarios: what runs, in which order, and the one entry point both CLIs call."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench import micro, startup
from bench.loadgen import CONFIGS, CellResult, Clients, run_cell
from bench.machine import describe_machine
from bench.stack import (
    FAKE_ENGINE,
    REPO_ROOT,
    EngineChoice,
    Stack,
    embedded_available,
    running_stack,
)
from bench.summary import summarize_serving
from bench.workload import WorkItem, sharegpt_like

__all__ = ["SCENARIOS", "Options", "run"]

SCENARIOS = ("all", "serving", "micro", "startup", "smoke")
VECTORS = REPO_ROOT.parent / "shared" / "vectors"


@dataclass(slots=True)
class Options:
    scenario: str = "all"
    seed: int = 1
    results: Path = REPO_ROOT / "bench" / "results"
    concurrency: tuple[int, ...] = (1, 8, 32, 64)
    rounds: int = 3
    requests: int = 0
    """Requests per cell; 0 = max(32, 4 x concurrency) unpaced, max(4, concurrency) paced."""
    rate: float = 100.0
    """Tokens/s per stream of the paced synthetic engine (0 disables that configuration)."""
    max_output: int = 1024
    embedded: bool = True
    embedded_concurrency: tuple[int, ...] = (1, 2)
    cold_runs: int = 3
    ask_runs: int = 3
    micro_budget_s: float = 0.4
    publish: Path | None = None
    plots: bool = True
    quiet_wait_s: float = 60.0
    vectors: Path = VECTORS
    log: Callable[[str], None] = field(default=print, repr=False)

    @classmethod
    def smoke(cls, results: Path) -> Options:
        return cls(
            scenario="smoke",
            results=results,
            concurrency=(1, 2),
            rounds=1,
            requests=3,
            rate=0.0,
            max_output=24,
            embedded=False,
            cold_runs=1,
            ask_runs=1,
            micro_budget_s=0.02,
            quiet_wait_s=0.0,
        )


def _wait_quiet(opts: Options) -> None:
    """Other people's test runs share this machine: wait (bounded) for the load to settle."""
    deadline = time.monotonic() + opts.quiet_wait_s
    cores = os.cpu_count() or 1
    while time.monotonic() < deadline and os.getloadavg()[0] > 0.6 * cores:
        time.sleep(2.0)


def _engines(opts: Options, notes: list[str]) -> list[tuple[EngineChoice, tuple[int, ...]]]:
    out: list[tuple[EngineChoice, tuple[int, ...]]] = []
    if FAKE_ENGINE.exists():
        out.append((EngineChoice("synthetic-max", "synthetic", 0.0), opts.concurrency))
        if opts.rate > 0:
            name = f"synthetic-{opts.rate:g}tps"
            out.append((EngineChoice(name, "synthetic", opts.rate), opts.concurrency))
    else:
        notes.append(f"synthetic engine skipped: {FAKE_ENGINE} is not in this checkout")
    if opts.embedded and opts.scenario != "smoke":
        why = embedded_available()
        if why is None:
            out.append((EngineChoice("embedded", "embedded"), opts.embedded_concurrency))
        else:
            notes.append(f"embedded configuration skipped: {why}")
    notes.append(
        "not measured here: engine outside vs inside a CVM (no TEE on this host) and vLLM "
        "(no GPU); the same command measures them on such hosts once the appliance runs there"
    )
    return out


def _items_for(
    opts: Options, engine: EngineChoice, concurrency: int, round_no: int
) -> list[WorkItem]:
    if engine.kind == "embedded":
        # A real model on two shared cores: a few short answers keep the run under 10 minutes.
        n = opts.requests or concurrency
        return sharegpt_like(n, opts.seed * 1000 + concurrency, max_prompt=48, max_output=16)
    if engine.rate > 0:
        n = opts.requests or max(4, concurrency)
        cap = min(opts.max_output, 256)
    else:
        n = opts.requests or max(32, 4 * concurrency)
        cap = opts.max_output
    # The same seed per (concurrency, round) for every configuration: identical work.
    return sharegpt_like(n, opts.seed * 1000 + concurrency * 10 + round_no, max_output=cap)


async def _serve(
    stack: Stack, engine: EngineChoice, levels: Sequence[int], opts: Options
) -> list[CellResult]:
    clients = Clients(stack)
    cells: list[CellResult] = []
    try:
        await clients.open()
        warm = sharegpt_like(4, opts.seed, max_output=16)
        for config in CONFIGS:
            await run_cell(clients, engine.name, config, warm, 4, -1)
        rounds = opts.rounds if engine.kind != "embedded" else 1
        for r in range(rounds):
            for li, c in enumerate(levels):
                items = _items_for(opts, engine, c, r)
                shift = (r + li) % len(CONFIGS)
                order = CONFIGS[shift:] + CONFIGS[:shift]  # A/B/C, B/C/A, ...: no position bias
                for config in order:
                    cell = await run_cell(clients, engine.name, config, items, c, r)
                    cells.append(cell)
                    opts.log(
                        f"  {engine.name:<18} c={c:<3} r={r} {config:<8} "
                        f"{cell.tokens_per_s:9.0f} tok/s  "
                        f"ttft p50 {_ms(_p50([s.ttft for s in cell.ok if s.ttft is not None]))}"
                        f"  errors {len(cell.samples) - len(cell.ok)}"
                    )
    finally:
        await clients.aclose()
    return cells


def _p50(xs: list[float]) -> float:
    from bench.stats import median

    return median(xs)


def _ms(x: float) -> str:
    return f"{x * 1000:8.2f} ms"


def _fetch_bundle(stack: Stack, out: Path) -> tuple[Path, str]:
    nonce = secrets.token_bytes(32).hex()
    r = httpx.get(stack.gateway_url + "/v1/attestation", params={"nonce": nonce}, timeout=30)
    r.raise_for_status()
    out.write_text(r.text)
    return out, nonce


def run(opts: Options) -> Path:
    """Run the scenario; returns the results directory (results.json, report.md, PNGs)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    outdir = opts.results / stamp
    outdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    notes: list[str] = []
    _wait_quiet(opts)
    doc: dict[str, object] = {
        "format": "openpcc-bench/1",
        "scenario": opts.scenario,
        "started": stamp,
        "machine": describe_machine(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in _opts_dict(opts).items()},
        "loadavg_start": os.getloadavg(),
    }
    want = {opts.scenario} if opts.scenario != "all" else {"serving", "micro", "startup"}
    if opts.scenario == "smoke":
        want = {"serving", "micro", "startup"}
    serving: dict[str, object] = {}
    micro_out: dict[str, object] = {}
    startup_out: dict[str, object] = {}
    tmp = Path(tempfile.mkdtemp(prefix="openpcc-bench-"))
    try:
        engines = _engines(opts, notes)
        for i, (engine, levels) in enumerate(engines):
            first = i == 0
            if "serving" not in want and not (first and want & {"micro", "startup"}):
                continue
            _wait_quiet(opts)
            opts.log(f"[{engine.name}] {engine.describe()}: starting the appliance")
            with running_stack(tmp / engine.name, engine) as stack:
                if "serving" in want:
                    cells = asyncio.run(_serve(stack, engine, levels, opts))
                    serving[engine.name] = {
                        "description": engine.describe(),
                        "rate": engine.rate,
                        "concurrency": list(levels),
                        "cells": [c.to_dict() for c in cells],
                        "summary": summarize_serving(cells),
                    }
                if first and "micro" in want:
                    opts.log("[micro] per-operation timings")
                    micro_out = _micro(stack, opts, outdir, notes)
                if first and "startup" in want:
                    opts.log("[startup] openpcc ask -> first token")
                    cfg = startup.prepare_client_config(tmp / "client", stack.paths)
                    startup_out["ask"] = startup.ask_runs(cfg, stack.gateway_url, opts.ask_runs)
        if "startup" in want and FAKE_ENGINE.exists():
            opts.log("[startup] up -> first verified answer")
            startup_out["cold_start"] = startup.cold_start_runs(
                tmp / "coldstart", EngineChoice("synthetic-max", "synthetic"), opts.cold_runs
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc.update(
        serving=serving,
        micro=micro_out,
        startup=startup_out,
        notes=notes,
        loadavg_end=os.getloadavg(),
        duration_s=time.perf_counter() - t_start,
    )
    (outdir / "results.json").write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    from bench import report

    report.write_all(doc, outdir, plots=opts.plots, publish=opts.publish, log=opts.log)
    return outdir


def _micro(stack: Stack, opts: Options, outdir: Path, notes: list[str]) -> dict[str, object]:
    ops = micro.crypto_ops(opts.micro_budget_s)
    bundle_path, nonce = _fetch_bundle(stack, outdir / "bundle.json")
    bundle = json.loads(bundle_path.read_text())
    ops["bundle_verify (simulated appliance, warm)"] = micro.bundle_op(
        bundle, bytes.fromhex(nonce), stack.paths.root, opts.micro_budget_s
    )
    cold: dict[str, list[dict[str, float]]] = {}
    n_cold = max(1, opts.cold_runs)
    cold["bundle_verify"] = micro.cold_runs(
        "bundle", [str(bundle_path), nonce, str(stack.paths.root)], n_cold
    )
    if (opts.vectors / "snp" / "milan_v2_report.bin").exists():
        ops["snp_report_verify (real Milan v2 + VCEK, warm)"] = micro.snp_op(
            opts.vectors, opts.micro_budget_s
        )
        cold["snp_report_verify"] = micro.cold_runs("snp", [str(opts.vectors)], n_cold)
    else:
        notes.append(f"SEV-SNP vectors not found at {opts.vectors}: report verification skipped")
    return {"samples_s": ops, "summary": micro.summarize(ops), "cold": cold}


def _opts_dict(opts: Options) -> dict[str, object]:
    d = asdict(opts)
    d.pop("log", None)
    return d


def _json_default(o: object) -> object:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float):
        return o
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
