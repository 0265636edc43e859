"""The live dashboard: a Textual view over :class:`tui.state.DashboardState`.

It reads only the gateway's public endpoints and verifies the node itself, with the same
:class:`client_cli.session.Session`, trust store and policy as ``openpcc verify``. Polling and
verification run in workers; a lost connection is a state the title bar shows, never a crash.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import ClassVar

import httpx
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Footer, Static

from attest import tlog
from attest.bundle import ClientPolicy
from attest.errors import OpenPCCError, ParseError, TransportError, VerificationError
from client_cli.render import SIMULATED_BANNER
from client_cli.session import MAX_PROOF_BYTES, Session, get_bounded
from client_cli.trust import TrustStore, load_policy
from tui.host import HostSampler
from tui.panels import Panel, render_title
from tui.state import (
    Attestation,
    DashboardState,
    Health,
    LogWatch,
    MetricsSample,
    assess_checkpoint,
)

__all__ = ["DashboardApp", "run_dashboard"]

POLL_S = 1.0
VERIFY_EVERY_S = 60.0
LOG_EVERY_POLLS = 10
ROTATION_RECHECK_S = 10.0
"""Least time between verifications triggered by a key id change /healthz reports."""
HTTP_TIMEOUT_S = 5.0
# What one poll may read, each counted as it arrives (a consistency proof: MAX_PROOF_BYTES).
MAX_HEALTHZ = 64 * 1024
MAX_METRICS = 1024 * 1024
MAX_CHECKPOINT = 64 * 1024


class _RecordingSession(Session):
    """A session that keeps the last bundle, so a failed check still shows what was claimed."""

    last_bundle: Mapping[str, object] | None = None

    async def fetch_bundle(self, nonce: bytes | None) -> Mapping[str, object]:
        self.last_bundle = None
        bundle = await super().fetch_bundle(nonce)
        self.last_bundle = bundle
        return bundle


class TitleBar(Widget):
    def __init__(self, state: DashboardState, clock: Callable[[], float]) -> None:
        super().__init__(id="title")
        self._state, self._clock = state, clock

    def render(self) -> Text:
        return render_title(self._state, self._clock(), self.content_size.width)


class InfoScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss", "Close"),
        Binding("q", "dismiss", "Close"),
    ]

    def __init__(self, title: str, body: RenderableType) -> None:
        super().__init__()
        self._title, self._body = title, body

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="modal") as box:
            box.border_title = self._title
            box.border_subtitle = "esc to close"
            yield Static(self._body)

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)


def _report_view(a: Attestation) -> RenderableType:
    checks = Table(title="Checks, in the verification order", expand=True, title_justify="left")
    checks.add_column("check", no_wrap=True)
    checks.add_column("result", no_wrap=True)
    checks.add_column("detail", overflow="fold")
    for c in a.checks:
        checks.add_row(c.title, c.status, Text(c.detail))  # evidence text, never markup
    fields = Table(title="Report fields", expand=True, title_justify="left")
    fields.add_column("field", no_wrap=True, style="cyan")
    fields.add_column("value", overflow="fold")
    for k, v in a.report_fields:
        fields.add_row(k, Text(v))
    if not a.report_fields:
        fields.add_row("—", "no report received yet")
    tcb = Table(title="Reported TCB against the policy", expand=True, title_justify="left")
    for col in ("component", "reported", "minimum", "ok"):
        tcb.add_column(col)
    for row in a.tcb:
        tcb.add_row(
            row.component,
            str(row.reported),
            "—" if row.minimum is None else str(row.minimum),
            "yes" if row.ok else "NO",
        )
    return Group(checks, Text(""), tcb, Text(""), fields)


def _log_view(state: DashboardState) -> RenderableType:
    a = state.attestation
    t = Text()
    t.append("Log entry\n", style="bold")
    t.append(f"index {a.log_index} of tree size {a.tree_size}\n")
    t.append(f"check 6b: {a.status_of('transparency-log')} {a.log_detail}\n\n")
    t.append("Inclusion proof (RFC 9162), leaf to root\n", style="bold")
    for i, h in enumerate(a.inclusion):
        t.append(f"{i:>3} {h}\n")
    if not a.inclusion:
        t.append("  (empty: the entry is the whole tree)\n", style="dim")
    t.append("\nCheckpoint in the bundle (signed note)\n", style="bold")
    t.append((a.checkpoint_note or "—") + "\n")
    lw = state.log
    t.append("\nLatest checkpoint watched\n", style="bold")
    t.append(f"{lw.origin} size {lw.size} root {lw.root}\n{lw.detail}\n")
    t.append("\nThe entry: the release manifest (canonical JSON, pretty-printed)\n", style="bold")
    t.append(json.dumps(a.manifest, indent=2, sort_keys=True) if a.manifest else "—")
    return t


def _help_view() -> RenderableType:
    table = Table(expand=True, show_header=False)
    table.add_column("key", style="bold cyan", no_wrap=True)
    table.add_column("what")
    for key, what in (
        ("r", "re-verify the node now (fresh nonce, every check)"),
        ("d", "every field of the attestation report, every check's detail"),
        ("l", "the transparency-log entry, its inclusion proof and the checkpoint"),
        ("?", "this help"),
        ("q", "quit (esc closes a window)"),
    ):
        table.add_row(key, what)
    note = Text(
        "\nThe dashboard reads only the gateway's public endpoints and verifies the node itself "
        f"every {VERIFY_EVERY_S:.0f} s, with your trust store and policy. "
        f"{SIMULATED_BANNER} means the evidence is signed by a key on this host: "
        "it proves nothing about confidentiality.",
        style="dim",
    )
    return Group(table, note)


class DashboardApp(App[None]):
    """The live dashboard of one node."""

    CSS_PATH = "dashboard.tcss"
    TITLE = "OpenPCC dashboard"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "reverify", "Re-verify"),
        Binding("d", "report", "Report"),
        Binding("l", "log", "Log entry"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        url: str,
        *,
        store: TrustStore | None = None,
        state: DashboardState | None = None,
        live: bool = True,
        clock: Callable[[], float] = time.time,
        poll_interval: float = POLL_S,
        verify_interval: float = VERIFY_EVERY_S,
    ) -> None:
        super().__init__()
        self.url = url.rstrip("/")
        self.state = state or DashboardState(self.url)
        self.store = store
        self.live = live
        self.clock = clock
        self.poll_interval = poll_interval
        self.verify_interval = verify_interval
        self.polls = 0
        self._rotation_checked = float("-inf")
        self._session: _RecordingSession | None = None
        self._policy: ClientPolicy | None = None
        self._host = HostSampler()
        self._last_cp: tlog.Checkpoint | None = None

    def compose(self) -> ComposeResult:
        yield TitleBar(self.state, self.clock)
        yield Static(SIMULATED_BANNER, id="banner")
        with Horizontal(id="body"):
            with Vertical(id="left"):
                for key in ("attestation", "gpus", "host"):
                    yield Panel(key, self.state, self.clock)
            with Vertical(id="right"):
                for key in ("measurements", "throughput"):
                    yield Panel(key, self.state, self.clock)
        yield Footer()

    def on_mount(self) -> None:
        self._sync_classes()
        if not self.live:
            return
        store = self.store or TrustStore.default()
        try:
            self._policy = load_policy(store.policy_path)
            self._session = _RecordingSession(
                self.url,
                trust=store.anchors(),
                policy=self._policy,
                checkpoints=store.checkpoints(),
                timeout=30.0,
            )
        except OpenPCCError as e:
            self.state.attestation = Attestation(verdict="failed", error=str(e), hint=e.hint)
        else:
            self.verify_now()
            self.set_interval(self.verify_interval, self.verify_now)
        self.poll_loop()

    async def on_unmount(self) -> None:
        if self._session is not None:
            await self._session.aclose()

    def on_resize(self, event: events.Resize) -> None:
        self._sync_classes()

    def _sync_classes(self) -> None:
        self.set_class(self.size.height < 32, "-short")
        self.set_class(self.state.attestation.simulated, "-simulated")
        self.set_class(self.state.connection.up is False, "-lost")

    def refresh_view(self) -> None:
        """Repaint what shows the state; Textual redraws only the lines that changed."""
        self._sync_classes()
        for w in self.query(Panel):
            w.refresh(layout=True)  # a panel's height follows its line count
        for bar in self.query(TitleBar):  # absent while the screen is built or torn down
            bar.refresh()

    # -- workers --------------------------------------------------------------------------------

    @work(exclusive=True, group="verify")
    async def verify_now(self) -> None:
        """Fetch a bundle with a fresh nonce and run every check of DESIGN.md §4."""
        session, policy = self._session, self._policy
        if session is None or policy is None:
            return
        before = self.state.attestation
        self.state.attestation = replace(before, busy=True)
        self.refresh_view()
        try:
            run = await session.verify()
        except OpenPCCError as e:
            self.state.attestation = replace(before.unreachable(str(e), e.hint), busy=False)
        else:
            self.state.attestation = Attestation.from_run(
                run,
                session.last_bundle,
                min_tcb=policy.snp.min_tcb,
                at=self.clock(),
                runs=before.runs + 1,
            )
        self.refresh_view()

    @work(exclusive=True, group="poll")
    async def poll_loop(self) -> None:
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(HTTP_TIMEOUT_S), follow_redirects=False
        ) as http:
            while True:
                await self.poll_once(http)
                await asyncio.sleep(self.poll_interval)

    async def poll_once(self, http: httpx.AsyncClient) -> None:
        now = self.clock()
        st = self.state
        try:
            # 503: the gateway is up but not ready, and says why.
            _, raw = await get_bounded(
                http, self.url + "/healthz", MAX_HEALTHZ, statuses=(200, 503)
            )
            health = Health.from_json(json.loads(raw))
            _, text = await get_bounded(http, self.url + "/metrics", MAX_METRICS)
            sample = MetricsSample.parse(text.decode(errors="replace"), now)
        except httpx.HTTPError as e:
            st.connection.lost(type(e).__name__, now)
        except (ParseError, TransportError, ValueError, ArithmeticError, RecursionError) as e:
            # What the (untrusted) host answers cannot take the dashboard down.
            st.connection.lost(str(e)[:60], now)
        else:
            regained = st.connection.ok(now)
            st.health = health
            st.throughput.add(sample)
            a = st.attestation
            rotated = a.verdict == "verified" and health.key_id not in (None, a.key_id)
            # One verification at a time, and a rotation the host keeps claiming re-verifies at
            # most every ROTATION_RECHECK_S: /healthz is the host's word, and restarting the
            # one in flight on every poll kept an old "verified" on screen forever.
            if not a.busy and (
                regained or (rotated and now - self._rotation_checked >= ROTATION_RECHECK_S)
            ):
                if rotated:
                    self._rotation_checked = now
                self.verify_now()
            if self.polls % LOG_EVERY_POLLS == 0:
                await self.watch_log(http, now)
        pid = st.health.engine_pid if st.health and st.connection.up else None
        simulated = st.attestation.simulated or (st.health is not None and "sim" in st.health.tee)
        st.host = self._host.sample(simulated=simulated, engine_pid=pid, now=now)
        self.polls += 1
        self.refresh_view()

    async def watch_log(self, http: httpx.AsyncClient, now: float) -> None:
        """Check the latest checkpoint's signature and its consistency with the last one seen."""
        store = self.store or TrustStore.default()
        st = self.state
        try:
            keys = store.log_keys()
            if not keys:
                st.log = LogWatch(detail="no log key trusted: `openpcc trust --log-key`")
                return
            _, note = await get_bounded(http, self.url + "/v1/log/checkpoint", MAX_CHECKPOINT)
            cp = tlog.open_checkpoint(note.decode(errors="replace"), keys)
            prev = self._last_cp or store.checkpoints().last(cp.origin)
            proof: list[bytes] | None = None
            if prev is not None and cp.size > prev.size:
                _, raw = await get_bounded(
                    http,
                    self.url + "/v1/log/consistency",
                    MAX_PROOF_BYTES,
                    params={"from": str(prev.size), "to": str(cp.size)},
                )
                proof = [bytes.fromhex(h) for h in json.loads(raw)["proof"]]
        except httpx.HTTPError:
            return  # the poll shows the loss
        except (VerificationError, ParseError, TransportError) as e:
            st.log = replace(st.log, consistent=False, detail=f"checkpoint refused: {e}")
            return
        except (ValueError, KeyError, TypeError) as e:
            st.log = replace(st.log, consistent=False, detail=f"malformed proof: {e}")
            return
        st.log = assess_checkpoint(prev, cp, proof, watch=st.log, now=now)
        if st.log.consistent is not False:
            self._last_cp = cp

    # -- keys -----------------------------------------------------------------------------------

    def action_reverify(self) -> None:
        self.verify_now()

    def action_report(self) -> None:
        self.push_screen(InfoScreen("Attestation report", _report_view(self.state.attestation)))

    def action_log(self) -> None:
        self.push_screen(InfoScreen("Transparency log", _log_view(self.state)))

    def action_help(self) -> None:
        self.push_screen(InfoScreen("Help", _help_view()))


def run_dashboard(url: str) -> None:
    """Run the dashboard for the node at ``url`` until the user quits."""
    DashboardApp(url).run()
