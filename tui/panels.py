"""The panels: pure functions from state to Rich text, and the thin widgets that show them.

Each ``render_*`` takes the state, the time to measure ages against and the width it may use, so
the tests render them without a terminal and the snapshots never depend on the clock.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

from client_cli.render import SIMULATED_BANNER
from tui.state import Attestation, DashboardState, Status, sparkline

__all__ = [
    "PANELS",
    "Panel",
    "fmt_age",
    "fmt_bytes",
    "render_attestation",
    "render_gpus",
    "render_host",
    "render_measurements",
    "render_throughput",
    "render_title",
]

Renderer = Callable[[DashboardState, float, int], Text]

_MARK: dict[Status, tuple[str, str]] = {
    "pass": ("✓", "bold green"),
    "fail": ("✗", "bold red"),
    "skip": ("–", "yellow"),
    "not-run": ("·", "dim"),
}
_TCB_ABBREV = {"bootloader": "bl", "tee": "tee", "snp": "snp", "microcode": "µc", "fmc": "fmc"}
WIDE = 56


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = max(0.0, seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 36 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def fmt_bytes(n: float | None, suffix: str = "") -> str:
    if n is None:
        return "?"
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(v) < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}{suffix}" if unit == "B" else f"{v:.1f} {unit}{suffix}"
        v /= 1024
    return f"{v:.1f} TiB{suffix}"  # pragma: no cover - the loop returns at GiB


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def _hex(value: str | None, width: int) -> str:
    if value is None:
        return "—"
    if len(value) <= width:
        return value
    keep = max(4, width - 1)
    head = keep - keep // 3
    return value[:head] + "…" + value[len(value) - (keep - head) :]


def render_title(state: DashboardState, now: float, width: int) -> Text:
    c = state.connection
    t = Text()
    t.append(" OpenPCC dashboard ", style="bold reverse")
    t.append(f" {state.url} ")
    if c.up is None:
        t.append("… connecting", style="yellow")
    elif c.up:
        t.append("● live", style="bold green")
    else:
        since = None if c.since is None else now - c.since
        t.append(f"✗ CONNECTION LOST ({c.error}) {fmt_age(since)}", style="bold white on red")
        t.append(" retrying", style="dim")
    return t


def _verdict(a: Attestation, now: float) -> Text:
    t = Text()
    if a.verdict == "verified":
        t.append("✓ VERIFIED", style="bold green")
    elif a.verdict == "failed":
        failed = next((c for c in a.checks if c.status == "fail"), None)
        t.append("✗ NOT VERIFIED", style="bold white on red")
        if failed is not None:
            t.append(f" at {failed.short}", style="bold red")
    elif a.verdict == "unreachable":
        t.append("? NOT VERIFIED: unreachable", style="bold red")
    elif a.verdict == "verifying":
        t.append("… verifying", style="yellow")
    else:
        t.append("… not verified yet", style="yellow")
    if a.tee and a.verdict != "failed":
        t.append(f" {a.tee}")
        if a.product and not a.simulated:
            t.append(f" {a.product}", style="dim")
    return t


def render_attestation(state: DashboardState, now: float, width: int) -> Text:
    a = state.attestation
    t = _verdict(a, now)
    if a.simulated:
        t.append(" ")
        t.append(SIMULATED_BANNER if width >= WIDE + 20 else "SIMULATED", style="bold white on red")
    if a.busy:
        t.append(" ⟳", style="yellow")
    checks = a.checks
    if width >= WIDE:
        for c in checks:
            mark, style = _MARK[c.status]
            title = c.title
            room = max(10, width - 2)
            t.append("\n")
            t.append(f"{mark} ", style=style)
            title = title if len(title) <= room else title[: room - 1] + "…"
            t.append(title, style=style if c.status == "fail" else "")
            detail_room = width - 2 - len(title) - 2
            if c.detail and detail_room > 8 and c.status != "not-run":
                d = c.detail if len(c.detail) <= detail_room else c.detail[: detail_room - 1] + "…"
                t.append("  " + d, style="dim")
    else:
        col = max(12, width // 2)
        for i in range(0, len(checks), 2):
            t.append("\n")
            for c in checks[i : i + 2]:
                mark, style = _MARK[c.status]
                t.append(f"{mark} ", style=style)
                t.append(
                    f"{c.short:<{col - 2}}"[: col - 2], style=style if c.status != "pass" else ""
                )
    if a.error:
        t.append("\n" + a.error, style="red")
        if a.hint:
            t.append("\nhint: " + a.hint, style="dim")
    if a.tcb:
        t.append("\nTCB")
        for row in a.tcb:
            wide = width >= WIDE
            label = row.component if wide else _TCB_ABBREV.get(row.component, row.component)
            t.append(f" {label} {row.reported}", style="" if row.ok else "bold red")
            if not row.ok:
                t.append(f"<{row.minimum}", style="bold red")
            elif wide and row.minimum is not None:
                t.append(f" (min {row.minimum})", style="dim")
        if all(row.ok for row in a.tcb) and any(r.minimum is not None for r in a.tcb):
            t.append(" ✓ policy" if width >= WIDE else " ✓", style="green")
    if a.verified_at is not None:
        t.append(f"\nreport {fmt_age(now - a.verified_at)} old")
        last = state.throughput.last
        key_id = a.key_id if a.key_id is not None else (last.key_id if last else None)
        if key_id is not None:
            t.append(f" · key {key_id}")
            if last is not None and last.key_age_s is not None:
                t.append(f" ({fmt_age(last.key_age_s + max(0.0, now - last.at))} old)")
            if state.health is not None and state.health.key_id not in (None, key_id):
                t.append(" rotated", style="bold yellow")
    return t


def render_measurements(state: DashboardState, now: float, width: int) -> Text:
    a = state.attestation
    w = max(8, width - 9)
    t = Text()
    t.append("release  ", style="dim")
    t.append(a.release or "—")
    t.append("\nexpected ", style="dim")
    t.append(_hex(a.expected_measurement, w))
    t.append("\nreported ", style="dim")
    match = a.measurement_match
    t.append(_hex(a.reported_measurement, w - 9 if match is not None else w))
    if match is True:
        t.append(" ✓ match", style="bold green")
    elif match is False:
        t.append(" ✗ DIFFER", style="bold red")
    t.append("\nlog      ", style="dim")
    if a.log_index is not None and a.log_index >= 0:
        t.append(f"entry {a.log_index} of {a.tree_size}")
    else:
        t.append("—")
    mark, style = _MARK[a.status_of("transparency-log")]
    t.append(f" {mark}", style=style)
    lw = state.log
    t.append("\ncheckpt  ", style="dim")
    if lw.size is None:
        t.append(lw.detail, style="dim")
    else:
        age = None if lw.grown_at is None else now - lw.grown_at
        t.append(f"size {lw.size}, {fmt_age(age)} old")
        t.append("\n         ")
        style = {True: "green", False: "bold red", None: "dim"}[lw.consistent]
        t.append(lw.detail, style=style)
    return t


def render_gpus(state: DashboardState, now: float, width: int) -> Text:
    a = state.attestation
    t = Text()
    if not a.gpus:
        status = a.status_of("gpu")
        mark, style = _MARK[status]
        t.append("no GPU evidence ", style="dim")
        t.append(f"{mark} check 8 {status}", style=style)
        return t
    for i, g in enumerate(a.gpus):
        if i:
            t.append("\n")
        mark, style = _MARK[g.verdict]
        t.append(f"GPU{g.index} ", style="bold")
        t.append(f"{g.vendor} ")
        t.append(
            f"CC state {g.cc_mode}", style="green" if g.cc_mode == "established" else "bold red"
        )
        t.append(f" {mark}", style=style)
        if width >= WIDE:
            t.append(f"  driver {g.driver} · vbios {g.vbios}", style="dim")
        else:
            t.append(f"\ndrv {g.driver} vbios {g.vbios}", style="dim")
    return t


def render_throughput(state: DashboardState, now: float, width: int) -> Text:
    tp = state.throughput
    t = Text()
    tin, tout = tp.tokens_rate()
    spark_w = max(4, width - 17)
    t.append("tok/s in  ", style="dim")
    t.append(sparkline(tp.tokens_in_series(), spark_w), style="cyan")
    t.append(f"{tin:>7.1f}")
    t.append("\ntok/s out ", style="dim")
    t.append(sparkline(tp.tokens_out_series(), spark_w), style="magenta")
    t.append(f"{tout:>7.1f}")
    rates = tp.request_rates()
    t.append("\nreq/s     ", style="dim")
    shown = [(k, v) for k, v in rates.items() if k == "ok" or v > 0]
    if not shown:
        t.append("—")
    for k, v in shown:
        t.append(f"{k} ")
        t.append(f"{v:.2f}  ", style="green" if k == "ok" else "bold yellow")
    for label, which in (("TTFT", "ttft"), ("ITL ", "itl")):
        p50, p95 = tp.latency(which)  # type: ignore[arg-type]
        t.append(f"\n{label}      ", style="dim")
        t.append(f"p50 {fmt_ms(p50):>7}  p95 {fmt_ms(p95):>7}")
    last = tp.last
    t.append("\nstreams   ", style="dim")
    t.append(f"{last.active_streams:.0f}" if last else "—")
    h = state.health
    t.append("\nengine    ", style="dim")
    if h is None or state.connection.up is False:
        t.append("?", style="yellow")
    else:
        style = {"ready": "bold green", "failed": "bold red"}.get(h.engine_state, "bold yellow")
        t.append(h.engine_state, style=style)
        t.append(f" ({h.engine_kind})", style="dim")
        t.append(f" restarts {h.restarts}", style="bold yellow" if h.restarts else "")
    return t


def render_host(state: DashboardState, now: float, width: int) -> Text:
    h = state.host
    t = Text()
    t.append("load ", style="dim")
    t.append(" ".join(f"{x:.2f}" for x in h.load))
    t.append(f"  CPU {h.cpu_percent:.0f}% of {h.cpus}")
    t.append("\nmem  ", style="dim")
    t.append(f"{h.mem_percent:.0f}%  {fmt_bytes(h.mem_used)} / {fmt_bytes(h.mem_total)}")
    for p in h.procs:
        t.append(f"\n{p.role:<8}", style="bold")
        t.append(f"{p.cpu_percent:5.1f}% {fmt_bytes(p.rss_bytes):>9}")
        if p.read_bps is not None and p.write_bps is not None:
            io = f"  r {fmt_bytes(p.read_bps, '/s')} w {fmt_bytes(p.write_bps, '/s')}"
            t.append(io if width >= WIDE else "", style="dim")
        if width >= WIDE + 16:
            t.append(f"  pid {p.pid} {p.name}", style="dim")
    if h.note:
        t.append("\n" + h.note, style="dim")
    return t


PANELS: dict[str, tuple[str, Renderer]] = {
    "attestation": ("Attestation", render_attestation),
    "measurements": ("Measurements", render_measurements),
    "gpus": ("GPU", render_gpus),
    "throughput": ("Throughput", render_throughput),
    "host": ("Host", render_host),
}


class Panel(Widget):
    """A bordered view of one part of the state; it re-renders when told, never polls."""

    def __init__(
        self,
        key: str,
        state: DashboardState,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(id=key, classes="panel")
        self.border_title, self._renderer = PANELS[key]
        self._state = state
        self._clock = clock

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        # Measured at the width the layout offers, so the height never lags a resize.
        text = self._renderer(self._state, self._clock(), width)
        return len(text.wrap(self.app.console, max(1, width)))

    def render(self) -> Text:
        return self._renderer(self._state, self._clock(), self.content_size.width or 36)
