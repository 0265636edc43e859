"""Command line: ``python -m bench [all|serving|micro|startup|smoke] [options]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attest.errors import OpenPCCError, exit_code_for
from bench.runner import ENGINES, SCENARIOS, Options, run

__all__ = ["main", "parse_engines", "parse_levels"]


def parse_levels(text: str) -> tuple[int, ...]:
    levels = tuple(int(x) for x in text.split(",") if x.strip())
    if not levels or any(c < 1 for c in levels):
        raise argparse.ArgumentTypeError("concurrency levels are positive integers, e.g. 1,8,32")
    return levels


def parse_engines(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names or set(names) - set(ENGINES):
        raise argparse.ArgumentTypeError(f"engines are a comma list of {', '.join(ENGINES)}")
    return names


def main(argv: list[str] | None = None) -> None:
    d = Options()
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("scenario", nargs="?", default="all", choices=SCENARIOS)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--results", type=Path, default=d.results, help="results root directory")
    p.add_argument("--concurrency", type=parse_levels, default=d.concurrency)
    p.add_argument("--rounds", type=int, default=d.rounds, help="interleaved rounds per cell")
    p.add_argument("--requests", type=int, default=d.requests, help="per cell (0 = auto)")
    p.add_argument("--rate", type=float, default=d.rate, help="paced synthetic tokens/s (0=off)")
    p.add_argument("--max-output", type=int, default=d.max_output)
    p.add_argument("--no-embedded", action="store_true", help="skip the embedded CPU engine")
    p.add_argument("--cold-runs", type=int, default=d.cold_runs)
    p.add_argument("--ask-runs", type=int, default=d.ask_runs)
    p.add_argument("--publish", type=Path, default=None, help="also write REPORT.md + PNGs here")
    p.add_argument("--no-plots", action="store_true")
    g = p.add_argument_group("engines")
    g.add_argument(
        "--engine",
        type=parse_engines,
        default=d.engines,
        help="comma list of auto, synthetic, embedded, vllm (auto: synthetic, embedded when "
        "installed, vllm on a GPU host with vLLM installed)",
    )
    g.add_argument("--model", default=d.model, help="vLLM model id or path, or 'auto'")
    g.add_argument(
        "--vllm-arg",
        action="append",
        default=None,
        help="vllm serve argument, repeatable, written --vllm-arg=--flag; replaces the default "
        + " ".join(d.vllm_args),
    )
    c = p.add_argument_group("engine outside vs inside a CVM")
    c.add_argument("--cvm-url", default=None, help="a running appliance in a CVM to measure")
    c.add_argument(
        "--cvm-trust",
        type=Path,
        default=None,
        help="what verifies it: an openpcc client configuration directory (default: yours) "
        "or an appliance state directory",
    )
    c.add_argument(
        "--cvm",
        choices=("vm",),
        default=None,
        help="vm: boot the sealed image under QEMU/TCG here and measure it (slow, emulated)",
    )
    c.add_argument("--cvm-image-recipe", type=Path, default=d.cvm_image_recipe)
    c.add_argument(
        "--cvm-engine",
        default=d.cvm_engine,
        choices=("auto", "synthetic", "embedded", "vllm"),
        help="the engine outside (auto: the one the CVM's manifest names)",
    )
    c.add_argument("--cvm-concurrency", type=parse_levels, default=None)
    a = p.parse_args(argv)
    if a.cvm_url and a.cvm:
        p.error("--cvm-url and --cvm vm name two different CVMs: give one")
    if a.scenario == "smoke":
        opts = Options.smoke(a.results)
    else:
        opts = Options(
            scenario=a.scenario,
            seed=a.seed,
            results=a.results,
            concurrency=a.concurrency,
            rounds=a.rounds,
            requests=a.requests,
            rate=a.rate,
            max_output=a.max_output,
            embedded=not a.no_embedded,
            cold_runs=a.cold_runs,
            ask_runs=a.ask_runs,
        )
    opts.publish = a.publish
    opts.plots = not a.no_plots
    opts.engines = a.engine
    opts.model = a.model
    if a.vllm_arg is not None:
        opts.vllm_args = tuple(a.vllm_arg)
    opts.cvm_url = a.cvm_url
    opts.cvm_trust = a.cvm_trust
    opts.cvm_vm = a.cvm == "vm"
    opts.cvm_image_recipe = a.cvm_image_recipe
    opts.cvm_engine = a.cvm_engine
    opts.cvm_concurrency = a.cvm_concurrency
    try:
        run(opts)
    except OpenPCCError as e:
        print(f"error: {e}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        raise SystemExit(exit_code_for(e)) from None
