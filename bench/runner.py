"""Scenarios: what runs, in which order, and the one entry point both CLIs call."""

from __future__ import annotations

import asyncio
import contextlib
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

from appliance.state import StatePaths
from attest.errors import OpenPCCError, TransportError
from bench import cvm, micro, startup
from bench.gpu import (
    DEFAULT_MODEL,
    WEIGHTS_SHARE,
    GpuProbe,
    cached_models,
    detect_gpus,
    hf_cache_dir,
    pick_model,
    vllm_executable,
    vllm_importable,
)
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
from server.engines.spec import EngineSpec, engine_command

__all__ = ["ENGINES", "SCENARIOS", "Options", "run"]

SCENARIOS = ("all", "serving", "micro", "startup", "smoke")
ENGINES = ("auto", "synthetic", "embedded", "vllm")
"""``auto``: the synthetic engine, the embedded one when installed, vLLM on a GPU host with
vLLM installed. Naming engines measures exactly those (``vllm`` even without a GPU in sight)."""
VECTORS = REPO_ROOT.parent / "shared" / "vectors"
VLLM_ARGS = ("--max-model-len", "4096")
"""Enough for the mix's longest request (512 words of prompt, 1024 tokens of answer) and small
enough that the KV cache of a model filling 70 % of the GPU still holds 64 sequences."""
VLLM_MAX_PROMPT = 512
"""Words; vLLM's ShareGPT benchmark likewise drops prompts over 1024 tokens."""


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
    engines: tuple[str, ...] = ("auto",)
    model: str = DEFAULT_MODEL
    """vLLM model: an id or path, or ``auto`` (the largest cached one that fits the GPU)."""
    vllm_args: tuple[str, ...] = VLLM_ARGS
    cvm_url: str | None = None
    """A running appliance in a CVM to measure as *inside* (engine outside vs inside)."""
    cvm_trust: Path | None = None
    """What verifies it: an openpcc client configuration or an appliance state directory."""
    cvm_vm: bool = False
    """Boot the sealed image under QEMU/TCG here and measure it as *inside* (slow)."""
    cvm_image_recipe: Path = cvm.TEST_IMAGE_RECIPE
    cvm_engine: str = "auto"
    cvm_concurrency: tuple[int, ...] | None = None
    """None: the engine's levels, or (1, 4) for ``--cvm vm`` (everything in it is emulated)."""
    host_state: Path | None = None
    """The host appliance's state directory (None: the default) for the TEE-host pair."""
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


def _engines(
    opts: Options, notes: list[str], probe: GpuProbe
) -> list[tuple[EngineChoice, tuple[int, ...]]]:
    bad = set(opts.engines) - set(ENGINES)
    if bad or not opts.engines:
        raise OpenPCCError(
            f"--engine {','.join(sorted(bad)) or '(empty)'}: not one of {', '.join(ENGINES)}"
        )
    auto = "auto" in opts.engines
    out: list[tuple[EngineChoice, tuple[int, ...]]] = []
    if auto or "synthetic" in opts.engines:
        if FAKE_ENGINE.exists():
            out.append((EngineChoice("synthetic-max", "synthetic", 0.0), opts.concurrency))
            if opts.rate > 0:
                name = f"synthetic-{opts.rate:g}tps"
                out.append((EngineChoice(name, "synthetic", opts.rate), opts.concurrency))
        else:
            notes.append(f"synthetic engine skipped: {FAKE_ENGINE} is not in this checkout")
    if (auto or "embedded" in opts.engines) and opts.embedded and opts.scenario != "smoke":
        why = embedded_available()
        if why is None:
            out.append((EngineChoice("embedded", "embedded"), opts.embedded_concurrency))
        else:
            notes.append(f"embedded configuration skipped: {why}")
    vllm = _vllm_engine(opts, notes, probe, explicit="vllm" in opts.engines, auto=auto)
    if vllm is not None:
        out.append((vllm, opts.concurrency))
    return out


def _vllm_engine(
    opts: Options, notes: list[str], probe: GpuProbe, *, explicit: bool, auto: bool
) -> EngineChoice | None:
    if not explicit and not auto:
        notes.append("vLLM not measured: --engine does not name it")
        return None
    missing = [] if probe.gpus else [str(probe.problem)]
    if not vllm_importable():
        missing.append("vLLM is not installed here (vllm is not importable: pip install vllm)")
    if missing and not explicit:
        notes.append(
            "vLLM not measured: "
            + "; ".join(missing)
            + ". On a GPU host with vLLM installed it is measured automatically "
            "(`--engine vllm` forces it)"
        )
        return None
    exe = vllm_executable()
    if exe is None:
        raise OpenPCCError(
            "--engine vllm: there is no `vllm` executable on PATH or beside this Python",
            hint="install vLLM into this environment (pip install vllm) or put its bin on PATH",
        )
    if shutil.which("vllm") is None:
        # The gateway's supervisor runs `vllm` from PATH; the gateway inherits ours.
        os.environ["PATH"] = str(Path(exe).parent) + os.pathsep + os.environ.get("PATH", "")
    if missing:
        notes.append(
            "vLLM measured because --engine vllm asked for it, although " + "; ".join(missing)
        )
    model = opts.model
    if model == "auto":
        pick = pick_model(cached_models(), probe.gpus)
        model = pick.model_id
        biggest = max(g.memory_mib for g in probe.gpus)
        notes.append(
            f"--model auto chose {model} ({pick.weights_bytes / 2**30:.1f} GiB of weights): the "
            f"largest model in {hf_cache_dir()} within {WEIGHTS_SHARE:.0%} of one GPU's "
            f"{biggest} MiB"
        )
    return EngineChoice("vllm", "vllm", model=model, args=opts.vllm_args)


def _no_cvm_note(opts: Options) -> str:
    from appliance.doctor import detect_host

    what = "engine outside vs inside a CVM (the TEE hardware's share) not measured: "
    tee = detect_host().tee
    if tee is None:
        return what + (
            "this host has no TEE (no SEV-SNP or TDX host support), and neither --cvm-url URL "
            "(a running appliance in a CVM) nor --cvm vm (the sealed image under QEMU/TCG here: "
            "emulation, not TEE hardware) was given"
        )
    paths = StatePaths(opts.host_state) if opts.host_state else StatePaths.default()
    _, why = cvm.appliance_target(paths)
    return what + f"this host supports {tee}, but {why}; install.sh starts it, or pass --cvm-url"


def _items_for(
    opts: Options, engine: EngineChoice, concurrency: int, round_no: int
) -> list[WorkItem]:
    seed = opts.seed * 1000 + concurrency * 10 + round_no
    if engine.kind == "embedded":
        # A real model on two shared cores: a few short answers keep the run under 10 minutes.
        n = opts.requests or concurrency
        return sharegpt_like(n, opts.seed * 1000 + concurrency, max_prompt=48, max_output=16)
    if engine.kind == "vllm":
        n = opts.requests or max(8, 2 * concurrency)
        cap = min(opts.max_output, 1024)
        return sharegpt_like(n, seed, max_prompt=VLLM_MAX_PROMPT, max_output=cap, ignore_eos=True)
    if engine.rate > 0:
        n = opts.requests or max(4, concurrency)
        cap = min(opts.max_output, 256)
    else:
        n = opts.requests or max(32, 4 * concurrency)
        cap = opts.max_output
    # The same seed per (concurrency, round) for every configuration: identical work.
    return sharegpt_like(n, seed, max_output=cap)


def _warm_items(opts: Options, engine: EngineChoice) -> list[WorkItem]:
    vllm = engine.kind == "vllm"
    return sharegpt_like(
        4, opts.seed, max_prompt=VLLM_MAX_PROMPT if vllm else 2048, max_output=16, ignore_eos=vllm
    )


async def _serve(
    stack: Stack, engine: EngineChoice, levels: Sequence[int], opts: Options
) -> list[CellResult]:
    clients = Clients(stack)
    cells: list[CellResult] = []
    try:
        await clients.open()
        warm = _warm_items(opts, engine)
        # The null proxy shows the floor for any extra hop where the engine is CPU-bound on
        # the same cores (the synthetic engine); with a model's token rate it adds nothing.
        configs = tuple(c for c in CONFIGS if c != "proxy" or engine.kind == "synthetic")
        for config in configs:
            await run_cell(clients, engine.name, config, warm, 4, -1)
        rounds = opts.rounds if engine.kind != "embedded" else 1
        for r in range(rounds):
            for li, c in enumerate(levels):
                items = _items_for(opts, engine, c, r)
                shift = (r + li) % len(configs)
                order = configs[shift:] + configs[:shift]  # A/B/C, B/C/A, ...: no position bias
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
    probe = detect_gpus()
    machine = describe_machine()
    machine.update(gpus=[g.to_dict() for g in probe.gpus], gpu_probe=probe.problem)
    doc: dict[str, object] = {
        "format": "openpcc-bench/1",
        "scenario": opts.scenario,
        "started": stamp,
        "machine": machine,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in _opts_dict(opts).items()},
        "loadavg_start": os.getloadavg(),
    }
    want = {opts.scenario} if opts.scenario != "all" else {"serving", "micro", "startup"}
    if opts.scenario == "smoke":
        want = {"serving", "micro", "startup"}
    serving: dict[str, object] = {}
    micro_out: dict[str, object] = {}
    startup_out: dict[str, object] = {}
    cvm_out: dict[str, object] = {}
    tmp = Path(tempfile.mkdtemp(prefix="openpcc-bench-"))
    try:
        engines = _engines(opts, notes, probe)
        if "serving" in want and opts.scenario != "smoke":
            # First: a CVM that does not verify stops the run before anything is measured.
            cvm_out = _measure_cvm(opts, tmp, notes)
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
                        "kind": engine.kind,
                        "rate": engine.rate,
                        **_engine_facts(engine, stack),
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
    except OpenPCCError:
        with contextlib.suppress(OSError):
            outdir.rmdir()  # only when nothing was written: a refused run leaves no results
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc.update(
        serving=serving,
        cvm=cvm_out,
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


def _engine_facts(engine: EngineChoice, stack: Stack) -> dict[str, object]:
    """For vLLM: the model and the exact argv the gateway's supervisor ran."""
    if engine.kind != "vllm":
        return {}
    port = int(stack.engine_url.rsplit(":", 1)[1])
    spec = EngineSpec(kind="vllm", model=engine.model, args=engine.args, port=port)
    return {
        "model": engine.model,
        "engine_args": list(engine.args),
        "engine_argv": engine_command(spec, port),
        "vllm_executable": vllm_executable(),
    }


def _measure_cvm(opts: Options, tmp: Path, notes: list[str]) -> dict[str, object]:
    """Engine outside vs inside a CVM, when one is named (or runs on this TEE host)."""
    with contextlib.ExitStack() as stack:
        if opts.cvm_url:
            target = cvm.url_target(opts.cvm_url, opts.cvm_trust)
        elif opts.cvm_vm:
            opts.log("[cvm] --cvm vm: the sealed image under QEMU/TCG (emulated: minutes)")
            target = stack.enter_context(
                cvm.emulated_target(tmp / "cvm-vm", opts.cvm_image_recipe, log=opts.log)
            )
        else:
            found = _host_cvm(opts, notes)
            if found is None:
                return {}
            target = found
        auto = target.how == "this host's appliance"
        opts.log(f"[cvm] verifying {target.url} ({target.how}) before measuring anything")
        try:
            node = asyncio.run(cvm.verify_target(target))
            engine = cvm.outside_engine(node, opts.cvm_engine)
        except TransportError as e:
            if not auto:
                raise
            notes.append(f"engine outside vs inside a CVM not measured: {e}")
            return {}
        except OpenPCCError as e:
            if not auto or "needs a GPU" not in str(e):
                raise
            notes.append(f"engine outside vs inside a CVM not measured: {e}")
            return {}
        facts = cvm.node_facts(node)
        opts.log(f"[cvm] verified: {facts['tee']}, measurement {str(facts['measurement'])[:16]}…")
        if node.simulated:
            opts.log(f"[cvm] {cvm.SIMULATED_WARNING}")
            notes.append(cvm.SIMULATED_WARNING)
        vm = target.how == "--cvm vm"
        levels = opts.cvm_concurrency or (
            (1, 4)
            if vm
            else opts.embedded_concurrency
            if engine.kind == "embedded"
            else opts.concurrency
        )

        def items(c: int, r: int) -> list[WorkItem]:
            if vm:
                n = opts.requests or 8
                return sharegpt_like(n, opts.seed * 1000 + c * 10 + r, max_output=64)
            return _items_for(opts, engine, c, r)

        rounds = opts.rounds if engine.kind != "embedded" else 1
        opts.log(f"[cvm] outside: {engine.describe()}: starting the local appliance")
        with running_stack(tmp / "cvm-outside", engine) as local:
            cells = asyncio.run(
                cvm.measure_pair(
                    local,
                    target,
                    engine,
                    levels,
                    rounds,
                    items,
                    _warm_items(opts, engine),
                    opts.log,
                )
            )
    return {
        "target": {"url": target.url, "how": target.how, "trust": target.trust_source, **facts},
        "simulated": node.simulated,
        "warning": cvm.SIMULATED_WARNING if node.simulated else None,
        "outside": {
            "engine": engine.name,
            "description": engine.describe(),
            **(
                {"model": engine.model, "engine_args": list(engine.args)}
                if engine.kind == "vllm"
                else {}
            ),
        },
        "concurrency": list(levels),
        "cells": [c.to_dict() for c in cells],
        "summary": cvm.summarize_pair(cells),
    }


def _host_cvm(opts: Options, notes: list[str]) -> cvm.CvmTarget | None:
    """On a TEE host whose appliance runs in a CVM: that appliance; else a note saying why not."""
    from appliance.doctor import detect_host

    if detect_host().tee is not None:
        paths = StatePaths(opts.host_state) if opts.host_state else StatePaths.default()
        target, _ = cvm.appliance_target(paths)
        if target is not None:
            return target
    notes.append(_no_cvm_note(opts))
    return None


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
