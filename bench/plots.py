"""PNG plots (matplotlib, optional): latency CDFs, throughput vs concurrency, overhead ratios."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.loadgen import CONFIG_LABELS, CONFIGS

__all__ = ["write_plots"]

COLORS = {
    "direct": "#1b9e77",
    "httpx": "#a6761d",
    "proxy": "#666666",
    "gateway": "#d95f02",
    "full": "#7570b3",
}


def _cdf(ax: Any, xs: list[float], label: str, color: str) -> None:
    xs = sorted(xs)
    if not xs:
        return
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    ax.step([x * 1000 for x in xs], ys, where="post", label=label, color=color)


def latency_cdf(doc: Mapping[str, Any], path: Path) -> bool:
    serving = doc.get("serving") or {}
    name = "synthetic-max" if "synthetic-max" in serving else next(iter(serving), None)
    if name is None:
        return False
    engine = serving[name]
    levels = engine["concurrency"]
    fig, axes = plt.subplots(2, len(levels), figsize=(4 * len(levels), 6.5), squeeze=False)
    for j, c in enumerate(levels):
        for config in CONFIGS:
            cells = [x for x in engine["cells"] if x["config"] == config and x["concurrency"] == c]
            ok = [s for x in cells for s in x["samples"] if s["error"] is None]
            ttft = [s["ttft"] for s in ok if s["ttft"] is not None]
            e2e = [s["e2e"] for s in ok if s["e2e"] is not None]
            _cdf(axes[0][j], ttft, CONFIG_LABELS[config], COLORS[config])
            _cdf(axes[1][j], e2e, CONFIG_LABELS[config], COLORS[config])
        axes[0][j].set_title(f"concurrency {c}")
        axes[0][j].set_xscale("log")
        axes[1][j].set_xscale("log")
        axes[0][j].set_xlabel("time to first token (ms)")
        axes[1][j].set_xlabel("end-to-end latency (ms)")
        for i in (0, 1):
            axes[i][j].grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("fraction of requests")
    axes[1][0].set_ylabel("fraction of requests")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Latency CDFs — {engine['description']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def throughput(doc: Mapping[str, Any], path: Path) -> bool:
    serving = doc.get("serving") or {}
    if not serving:
        return False
    fig, axes = plt.subplots(1, len(serving), figsize=(5 * len(serving), 4), squeeze=False)
    for j, (_name, engine) in enumerate(serving.items()):
        ax = axes[0][j]
        for config in CONFIGS:
            rows = [r for r in engine["summary"] if r["config"] == config]
            ax.plot(
                [r["concurrency"] for r in rows],
                [r["tokens_per_s"] for r in rows],
                marker="o",
                label=CONFIG_LABELS[config],
                color=COLORS[config],
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("output tokens/s")
        ax.set_title(engine["description"], fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def overhead(doc: Mapping[str, Any], path: Path) -> bool:
    serving = doc.get("serving") or {}
    if not serving:
        return False
    fig, axes = plt.subplots(1, len(serving), figsize=(5 * len(serving), 4), squeeze=False)
    for j, (_name, engine) in enumerate(serving.items()):
        ax = axes[0][j]
        levels = engine["concurrency"]
        width = 0.38
        for k, config in enumerate(("gateway", "full")):
            by = {r["concurrency"]: r for r in engine["summary"] if r["config"] == config}
            xs = [i + (k - 0.5) * width for i in range(len(levels))]
            ys = [100 * by[c]["ratio_to_direct"] if c in by else 0.0 for c in levels]
            ax.bar(xs, ys, width, label=CONFIG_LABELS[config], color=COLORS[config])
        ax.axhline(95, color="black", linestyle="--", linewidth=1, label="goal 95 %")
        ax.set_xticks(range(len(levels)), [str(c) for c in levels])
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("tokens/s, % of engine direct (same run)")
        ax.set_ylim(0, 110)
        ax.set_title(engine["description"], fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_plots(doc: Mapping[str, Any], outdir: Path) -> list[str]:
    made: list[str] = []
    for fn, name in (
        (latency_cdf, "latency_cdf.png"),
        (throughput, "throughput.png"),
        (overhead, "overhead.png"),
    ):
        if fn(doc, outdir / name):
            made.append(name)
    return made
