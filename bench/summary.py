"""Per (configuration, concurrency) numbers and the same-run ratios to engine direct."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from bench import stats
from bench.loadgen import CONFIGS, CellResult

__all__ = ["summarize_serving"]


def summarize_serving(cells: Sequence[CellResult]) -> list[dict[str, object]]:
    """One row per (config, concurrency): pooled latency percentiles over every round, median
    over rounds of tokens/s, and the median over rounds of the ratio to direct in that round."""
    by: dict[tuple[str, int], list[CellResult]] = defaultdict(list)
    for c in cells:
        by[(c.config, c.concurrency)].append(c)
    rows: list[dict[str, object]] = []
    levels = sorted({c.concurrency for c in cells})
    for conc in levels:
        direct = {c.round: c for c in by.get(("direct", conc), [])}
        via_httpx = {c.round: c for c in by.get(("httpx", conc), [])}
        via_proxy = {c.round: c for c in by.get(("proxy", conc), [])}
        for config in CONFIGS:
            group = by.get((config, conc), [])
            if not group:
                continue
            ok = [s for c in group for s in c.ok]
            ttft = [s.ttft for s in ok if s.ttft is not None]
            tpot = [t for s in ok if (t := s.tpot) is not None]
            e2e = [s.e2e for s in ok if s.e2e is not None]
            tps = [c.tokens_per_s for c in group]
            ratios: list[float] = []
            added_ttft: list[float] = []
            to_httpx: list[float] = []
            to_proxy: list[float] = []
            for c in group:
                d = direct.get(c.round)
                if d is None or d.tokens_per_s <= 0:
                    continue
                ratios.append(c.tokens_per_s / d.tokens_per_s)
                mine = [s.ttft for s in c.ok if s.ttft is not None]
                theirs = [s.ttft for s in d.ok if s.ttft is not None]
                added_ttft.append(stats.median(mine) - stats.median(theirs))
                h = via_httpx.get(c.round)
                if h is not None and h.tokens_per_s > 0:
                    to_httpx.append(c.tokens_per_s / h.tokens_per_s)
                x = via_proxy.get(c.round)
                if x is not None and x.tokens_per_s > 0:
                    to_proxy.append(c.tokens_per_s / x.tokens_per_s)
            tokens = sum(s.tokens for s in ok)
            cpu: dict[str, float] = defaultdict(float)
            for c in group:
                for role, secs in c.cpu_s.items():
                    cpu[role] += secs
            rows.append(
                {
                    "config": config,
                    "concurrency": conc,
                    "rounds": len(group),
                    "requests": len(ok),
                    "errors": sum(len(c.samples) - len(c.ok) for c in group),
                    "ttft_s": stats.summary(ttft),
                    "tpot_s": stats.summary(tpot),
                    "e2e_s": stats.summary(e2e),
                    "tokens_per_s": stats.median(tps),
                    "tokens_per_s_rounds": tps,
                    "requests_per_s": stats.median([c.requests_per_s for c in group]),
                    "ratio_to_direct": stats.median(ratios),
                    "ratio_to_direct_rounds": ratios,
                    # The same path against the engine reached through httpx (OpenAI SDK's client).
                    "ratio_to_httpx": stats.median(to_httpx) if to_httpx else None,
                    # The same path against the engine behind a do-nothing TCP forwarder: what
                    # OpenPCC's own work costs beyond one more process and hop.
                    "ratio_to_proxy": stats.median(to_proxy) if to_proxy else None,
                    "added_ttft_p50_s": stats.median(added_ttft),
                    "cpu_ms_per_token": {
                        role: 1000.0 * secs / tokens if tokens else 0.0
                        for role, secs in sorted(cpu.items())
                    },
                }
            )
    return rows
