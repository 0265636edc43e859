"""``openpcc-appliance bench``: the benchmark suite, the same entry point as ``python -m bench``."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["bench"]


def bench(
    scenario: str = typer.Argument("all", help="all, serving, micro, startup or smoke"),
    seed: int = typer.Option(1, "--seed", help="seed of the request mix"),
    results: Path | None = typer.Option(
        None, "--results", help="results root (default: bench/results in the checkout)"
    ),
    concurrency: str = typer.Option("1,8,32,64", "--concurrency", help="levels, comma-separated"),
    rounds: int = typer.Option(3, "--rounds", min=1, help="interleaved rounds per cell"),
    requests: int = typer.Option(0, "--requests", min=0, help="requests per cell (0 = auto)"),
    rate: float = typer.Option(100.0, "--rate", min=0, help="paced synthetic tokens/s (0 = off)"),
    no_embedded: bool = typer.Option(False, "--no-embedded", help="skip the embedded CPU engine"),
    publish: Path | None = typer.Option(None, "--publish", help="also write REPORT.md + PNGs"),
    no_plots: bool = typer.Option(False, "--no-plots"),
    engine: str = typer.Option(
        "auto", "--engine", help="auto, or a comma list of synthetic, embedded, vllm"
    ),
    model: str | None = typer.Option(None, "--model", help="vLLM model id or path, or 'auto'"),
    vllm_arg: list[str] = typer.Option(
        [], "--vllm-arg", help="vllm serve argument (--vllm-arg=--flag), repeatable"
    ),
    cvm_url: str | None = typer.Option(
        None, "--cvm-url", help="a running appliance in a CVM: engine outside vs inside"
    ),
    cvm_trust: Path | None = typer.Option(
        None, "--cvm-trust", help="openpcc client config or appliance state dir to verify it"
    ),
    cvm: str | None = typer.Option(
        None, "--cvm", help="vm: boot the sealed image under QEMU/TCG here (slow, emulated)"
    ),
    cvm_engine: str = typer.Option("auto", "--cvm-engine", help="the engine outside the CVM"),
) -> None:
    """Benchmark serving (direct, gateway, full path; vLLM on a GPU host; engine outside vs
    inside a CVM), micro operations and cold start."""
    from bench.cli import main

    argv = [scenario, "--seed", str(seed), "--concurrency", concurrency]
    argv += ["--rounds", str(rounds), "--requests", str(requests), "--rate", f"{rate:g}"]
    if results is not None:
        argv += ["--results", str(results)]
    if no_embedded:
        argv.append("--no-embedded")
    if publish is not None:
        argv += ["--publish", str(publish)]
    if no_plots:
        argv.append("--no-plots")
    argv += ["--engine", engine, "--cvm-engine", cvm_engine]
    if model is not None:
        argv += ["--model", model]
    argv += [f"--vllm-arg={a}" for a in vllm_arg]
    if cvm_url is not None:
        argv += ["--cvm-url", cvm_url]
    if cvm_trust is not None:
        argv += ["--cvm-trust", str(cvm_trust)]
    if cvm is not None:
        argv += ["--cvm", cvm]
    try:
        main(argv)
    except SystemExit as e:
        raise typer.Exit(e.code if isinstance(e.code, int) else 2) from e
