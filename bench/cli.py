"""Command line: ``python -m bench [all|serving|micro|startup|smoke] [options]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.runner import SCENARIOS, Options, run

__all__ = ["main", "parse_levels"]


def parse_levels(text: str) -> tuple[int, ...]:
    levels = tuple(int(x) for x in text.split(",") if x.strip())
    if not levels or any(c < 1 for c in levels):
        raise argparse.ArgumentTypeError("concurrency levels are positive integers, e.g. 1,8,32")
    return levels


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
    a = p.parse_args(argv)
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
    run(opts)
