"""Write a run's outputs: a rich table in the terminal, PNG plots and a markdown report."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import stats
from bench.cvm import PAIR_LABELS
from bench.loadgen import CONFIG_LABELS

__all__ = ["write_all"]

PLOTS = ("latency_cdf.png", "throughput.png", "overhead.png")
Doc = Mapping[str, Any]


def _ms(x: object, digits: int = 2) -> str:
    if not isinstance(x, int | float) or math.isnan(x):
        return "–"
    return f"{x * 1000:.{digits}f}"


def _us(x: object) -> str:
    if not isinstance(x, int | float) or math.isnan(x):
        return "–"
    return f"{x * 1e6:,.1f}"


def _ratio(x: object) -> str:
    if not isinstance(x, int | float) or math.isnan(x):
        return "–"
    return f"{100 * x:.1f} %"


def _num(x: object) -> str:
    if not isinstance(x, int | float) or math.isnan(x):
        return "–"
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def _latency_cells(r: Doc, *, e2e_p95: bool) -> list[str]:
    """Concurrency, TTFT p50/p95/p99, TPOT p50, E2E p50/(p95)/p99, tokens/s, requests/s."""
    e2e = ("p50", "p95", "p99") if e2e_p95 else ("p50", "p99")
    return [
        str(r["concurrency"]),
        *(_ms(r["ttft_s"][q]) for q in ("p50", "p95", "p99")),
        _ms(r["tpot_s"]["p50"], 3),
        *(_ms(r["e2e_s"][q], 1) for q in e2e),
        _num(r["tokens_per_s"]),
        _num(r["requests_per_s"]),
    ]


def _serving_rows(engine: Doc) -> list[list[str]]:
    rows: list[list[str]] = []
    for r in engine["summary"]:
        cpu = r["cpu_ms_per_token"]
        cpu_s = " / ".join(
            f"{_num(cpu.get(k, math.nan) * 1000)}" for k in ("engine", "gateway", "relay", "client")
        )
        rows.append(
            [
                CONFIG_LABELS[r["config"]],
                *_latency_cells(r, e2e_p95=True),
                _ratio(r["ratio_to_direct"]) if r["config"] != "direct" else "(base)",
                _ms(r["added_ttft_p50_s"], 2) if r["config"] != "direct" else "",
                cpu_s,
                str(r["errors"]),
            ]
        )
    return rows


def _pair_rows(pair: Doc) -> list[list[str]]:
    rows: list[list[str]] = []
    for r in pair["summary"]:
        inside = r["config"] == "inside"
        rows.append(
            [
                PAIR_LABELS[r["config"]],
                *_latency_cells(r, e2e_p95=False),
                _ratio(r["ratio_to_direct"]) if r["config"] != "direct" else "(base)",
                _ratio(r["ratio_inside_outside"]) if inside else "",
                _ms(r["added_ttft_p50_vs_outside_s"], 2) if inside else "",
                str(r["errors"]),
            ]
        )
    return rows


PAIR_HEAD = [
    "configuration",
    "conc",
    "TTFT p50 ms",
    "p95",
    "p99",
    "TPOT p50 ms",
    "E2E p50 ms",
    "p99",
    "out tok/s",
    "req/s",
    "tok/s vs direct",
    "tok/s inside / outside",
    "added TTFT p50 ms vs outside",
    "err",
]


def _pair_intro(pair: Doc) -> list[str]:
    t = pair["target"]
    engine = t.get("engine") or {}
    lines = [
        f"Inside: the appliance at `{t['url']}` ({t['how']}), verified before measuring with "
        f"{t['trust']}: TEE `{t['tee']}`, measurement `{t['measurement'][:32]}…`, log index "
        f"{t['log_index']}, model `{t.get('model')}`, engine `{engine.get('name')}` "
        f"{engine.get('version', '')}.",
        f"Outside: {pair['outside']['description']}, in a local simulated appliance on this "
        "host. Both through their gateway with the same client, identical work items, "
        "interleaved; ratios are medians over rounds of per-round ratios from this run.",
    ]
    if pair.get("simulated"):
        lines = [f"**{pair['warning']}.**", "", *lines]
    return lines


SERVING_HEAD = [
    "configuration",
    "conc",
    "TTFT p50 ms",
    "p95",
    "p99",
    "TPOT p50 ms",
    "E2E p50 ms",
    "p95",
    "p99",
    "out tok/s",
    "req/s",
    "tok/s vs direct",
    "added TTFT p50 ms",
    "CPU µs/token eng/gw/relay/client",
    "err",
]


def _micro_rows(doc: Doc) -> list[list[str]]:
    m = doc.get("micro") or {}
    rows = [
        [name, _us(s["p50"]), _us(s["p95"]), _us(s["min"]), str(s["n"])]
        for name, s in (m.get("summary") or {}).items()
    ]
    for name, runs in (m.get("cold") or {}).items():
        cold = [r["cold_s"] for r in runs]
        rows.append(
            [
                f"{name} (cold: first call in a fresh process)",
                _us(stats.median(cold)),
                _us(max(cold)),
                _us(min(cold)),
                str(len(cold)),
            ]
        )
    return rows


def _startup_rows(doc: Doc) -> list[list[str]]:
    s = doc.get("startup") or {}
    rows: list[list[str]] = []
    keys = {
        "cold_start": (
            ("up_s", "`up`: spawn gateway + engine, healthy, operator verification"),
            ("client_verify_s", "new client: fetch bundle + verify"),
            ("first_token_after_verify_s", "then: encrypted request to first token"),
            ("total_s", "`up` start to first verified answer"),
        ),
        "ask": (
            ("ask_to_first_token_s", "`openpcc ask` start to first token"),
            ("ask_to_verified_s", "`openpcc ask` start to verified (status line)"),
            ("verify_s", "verification inside `ask` (bundle fetch + checks, cold)"),
            ("ask_exit_s", "`openpcc ask` start to exit (16 tokens)"),
        ),
    }
    for group, fields in keys.items():
        runs = s.get(group) or []
        for key, label in fields:
            xs = [r[key] for r in runs if key in r]
            if xs:
                rows.append([label, _ms(stats.median(xs), 1), _ms(max(xs), 1), str(len(xs))])
    return rows


def _table(title: str, head: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, h in enumerate(head):
        t.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for r in rows:
        t.add_row(*r)
    return t


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def headline(doc: Doc) -> list[list[str]]:
    """The goals of issues 3, 5, 6 and 11, each with its measured value."""
    rows: list[list[str]] = []
    serving = doc.get("serving") or {}
    fast = serving.get("synthetic-max")
    if fast:
        by = {(r["config"], r["concurrency"]): r for r in fast["summary"]}
        levels = sorted({r["concurrency"] for r in fast["summary"]})
        for config, ttft_goal in (("gateway", 1e-3), ("full", 2e-3)):
            r1 = by.get((config, levels[0]))
            if r1:
                got = r1["added_ttft_p50_s"]
                rows.append(
                    [
                        f"added TTFT p50, {CONFIG_LABELS[config]}, c={levels[0]}",
                        f"<= {ttft_goal * 1000:g} ms",
                        f"{_ms(got)} ms",
                        _verdict(got <= ttft_goal),
                    ]
                )
            for c in levels:
                r = by.get((config, c))
                if r:
                    got = r["ratio_to_direct"]
                    rows.append(
                        [
                            f"tokens/s vs direct, {CONFIG_LABELS[config]}, c={c}",
                            ">= 95 %",
                            _ratio(got),
                            _verdict(got >= 0.95),
                        ]
                    )
            for c in levels:
                r = by.get((config, c))
                if r and r.get("ratio_to_proxy") is not None:
                    rows.append(
                        [
                            f"tokens/s vs engine via a null TCP proxy, {CONFIG_LABELS[config]}, "
                            f"c={c}",
                            "(reported)",
                            _ratio(r["ratio_to_proxy"]),
                            "",
                        ]
                    )
            for c in levels:
                r = by.get((config, c))
                if r and r.get("ratio_to_httpx") is not None:
                    rows.append(
                        [
                            f"tokens/s vs direct through httpx, {CONFIG_LABELS[config]}, c={c}",
                            "(reported)",
                            _ratio(r["ratio_to_httpx"]),
                            "",
                        ]
                    )
    pair = doc.get("cvm") or {}
    for r in pair.get("summary") or []:
        if r["config"] == "inside":
            sim = " (SIMULATED: emulation, not TEE hardware)" if pair.get("simulated") else ""
            rows.append(
                [
                    f"tokens/s inside / outside the CVM{sim}, c={r['concurrency']}",
                    "(reported)",
                    _ratio(r["ratio_inside_outside"]),
                    "",
                ]
            )
    m = (doc.get("micro") or {}).get("summary") or {}
    for name, s in m.items():
        if name.startswith("snp_report_verify"):
            rows.append(
                [
                    "SEV-SNP report + chain verify, warm",
                    "<= 5 ms",
                    f"{_ms(s['p50'])} ms",
                    _verdict(s["p50"] <= 5e-3),
                ]
            )
    cold = ((doc.get("micro") or {}).get("cold") or {}).get("snp_report_verify")
    if cold:
        x = stats.median([r["cold_s"] for r in cold])
        rows.append(["SEV-SNP report + chain verify, cold", "(reported)", f"{_ms(x)} ms", ""])
    ask = (doc.get("startup") or {}).get("ask") or []
    if ask:
        v = stats.median([r["verify_s"] for r in ask])
        t = stats.median([r["ask_to_first_token_s"] for r in ask])
        rows.append(
            [
                "verification in `openpcc ask` (cold)",
                "<= 50 ms",
                f"{_ms(v, 1)} ms of {_ms(t, 0)} ms to first token",
                _verdict(v <= 0.05),
            ]
        )
    return rows


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def _machine_line(doc: Doc) -> str:
    m = doc["machine"]
    tee = m.get("tee") or "no TEE"
    gpus = m.get("gpus") or []
    if gpus:
        gpu = ", ".join(f"{g['name']} ({g['memory_mib']} MiB)" for g in gpus)
    else:
        gpu = "GPU" if m.get("gpu") else "no GPU"
    return (
        f"{m['cpu']}, {m['usable_cpus']} usable CPUs, {m['memory_gib']} GiB, {tee}, {gpu}; "
        f"{m['os']}; Python {m['python']}; commit {m.get('commit') or '?'}"
    )


def print_terminal(doc: Doc, console: Console) -> None:
    console.print(f"[bold]machine:[/] {_machine_line(doc)}", highlight=False)
    for name, engine in (doc.get("serving") or {}).items():
        console.print(
            _table(
                f"serving: {name} — {engine['description']}", SERVING_HEAD, _serving_rows(engine)
            )
        )
    pair = doc.get("cvm")
    if pair:
        if pair.get("simulated"):
            console.print(f"[bold white on red]{pair['warning']}[/]", highlight=False)
        console.print(
            _table("engine outside vs inside the CVM", PAIR_HEAD, _pair_rows(pair)),
        )
    if doc.get("micro"):
        console.print(
            _table(
                "micro (µs per operation)",
                ["operation", "p50", "p95/max", "min", "n"],
                _micro_rows(doc),
            )
        )
    if doc.get("startup"):
        console.print(_table("startup (ms)", ["what", "median", "max", "n"], _startup_rows(doc)))
    rows = headline(doc)
    if rows:
        console.print(_table("goals", ["goal", "target", "measured", ""], rows))


def write_markdown(doc: Doc, plots: Sequence[str]) -> str:
    lines = [
        "# OpenPCC benchmark report",
        "",
        f"Run `{doc['started']}` (`python -m bench {doc['scenario']}`, seed "
        f"{doc['options']['seed']}), {doc['duration_s']:.0f} s.",
        "",
        f"**Machine:** {_machine_line(doc)}.",
        f"Load average at start {doc['loadavg_start'][0]:.2f}, at end {doc['loadavg_end'][0]:.2f}.",
        "",
        "Every overhead is a ratio to *engine direct* measured in the same run, round by round "
        "(configurations interleaved A/B/C, B/C/A, ...; the ratio is the median over rounds).",
        "The load generator is one asyncio process on the same host: its CPU competes with the "
        "gateway, relay and engine for the same cores, and on the encrypted paths it also "
        "decrypts every chunk. The CPU columns show who spent what, per output token.",
        "",
        "*Engine direct* reaches the engine through the same small HTTP/1.1 client "
        "(`server/engine_http.py`) that the OpenPCC client uses for its encrypted requests, so "
        "the goal ratios measure the path, not a difference between HTTP libraries. *Engine "
        "direct (httpx)* is a second reference: the engine through httpx, the client under the "
        "OpenAI SDK, i.e. what a user of a plain OpenAI-compatible endpoint gets today.",
        "",
        "*Engine via a null TCP proxy* (synthetic engine only) sends the engine-direct workload "
        "through `bench/nullproxy.py`, a forwarder that passes every byte on unread: no HTTP, no "
        "cryptography. It is the floor for *any* extra process and hop on this machine, which the "
        "gateway pays before it does any work of its own; *vs null proxy* rows separate OpenPCC's "
        "own cost from that hop's.",
        "",
    ]
    rows = headline(doc)
    if rows:
        lines += ["## Goals", "", _md_table(["goal", "target", "measured", ""], rows), ""]
    for name, engine in (doc.get("serving") or {}).items():
        lines += [
            f"## Serving: {engine['description']}",
            "",
            f"`{name}`; ShareGPT-like request mix (seeded log-normal prompt and output lengths); "
            "TTFT = time to the first content token, TPOT = (E2E − TTFT)/(tokens − 1).",
            "",
        ]
        if engine.get("engine_argv"):
            lines += [
                f"Model `{engine['model']}`; the gateway's supervisor ran "
                f"`{' '.join(engine['engine_argv'])}`. Requests set `ignore_eos` so that output "
                "lengths follow the mix; prompt lengths are in words (about 1–3 tokens each).",
                "",
            ]
        lines += [_md_table(SERVING_HEAD, _serving_rows(engine)), ""]
    pair = doc.get("cvm")
    if pair:
        sim = " — SIMULATED" if pair.get("simulated") else ""
        lines += [
            f"## Engine outside vs inside the CVM (the TEE hardware's share){sim}",
            "",
            *_pair_intro(pair),
            "",
            _md_table(PAIR_HEAD, _pair_rows(pair)),
            "",
        ]
    if doc.get("micro"):
        lines += [
            "## Micro (µs per operation)",
            "",
            _md_table(["operation", "p50", "p95 (cold: max)", "min", "n"], _micro_rows(doc)),
            "",
        ]
    if doc.get("startup"):
        lines += [
            "## Startup (ms)",
            "",
            _md_table(["what", "median", "max", "n"], _startup_rows(doc)),
            "",
        ]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p}]({p})" for p in plots]
        lines.append("")
    notes = list(doc.get("notes") or [])
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += [
        "Where the gateway spends its time with the unpaced engine, and suggested changes: "
        "[GATEWAY_PROFILE.md](GATEWAY_PROFILE.md) (py-spy, same machine).",
        "",
        "Raw samples: `results.json` in the run's directory under `bench/results/` "
        "(every request's TTFT, E2E and token count; every micro sample).",
        "",
    ]
    return "\n".join(lines)


def write_all(
    doc: Doc,
    outdir: Path,
    *,
    plots: bool,
    publish: Path | None,
    log: Callable[[str], None],
    console: Console | None = None,
) -> None:
    made: list[str] = []
    if plots:
        try:
            from bench import plots as plotting
        except ImportError:
            log("plots skipped: matplotlib is not installed (pip install matplotlib)")
        else:
            made = plotting.write_plots(doc, outdir)
    text = write_markdown(doc, made)
    (outdir / "report.md").write_text(text)
    print_terminal(doc, console or Console(width=200))
    if publish is not None:
        publish.mkdir(parents=True, exist_ok=True)
        (publish / "REPORT.md").write_text(text)
        for p in made:
            shutil.copyfile(outdir / p, publish / p)
    log(f"results: {outdir}")
