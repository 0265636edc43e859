"""Pilot tests against a running simulated appliance: verify, re-verify, report, engine, loss."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from client_cli.trust import TrustStore
from tui.app import DashboardApp, InfoScreen
from tui.panels import render_throughput, render_title

pytestmark = pytest.mark.anyio


async def wait_for(pilot: Pilot[None], cond: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            pytest.fail("timed out waiting for the dashboard")
        await pilot.pause(0.05)


async def test_verifies_reverifies_and_shows_every_field(appliance: Any) -> None:
    app = DashboardApp(appliance.url, store=TrustStore(appliance.config), poll_interval=0.2)
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: app.state.attestation.verdict == "verified")
        a = app.state.attestation
        assert a.simulated and a.tee == "sim-sev-snp"
        assert [c.status for c in a.checks] == ["pass"] * 10
        assert a.measurement_match is True
        assert app.has_class("-simulated") and app.query_one("#banner").display
        await wait_for(pilot, lambda: app.state.connection.up is True)
        assert "live" in render_title(app.state, app.clock(), 100).plain

        await pilot.press("r")
        await wait_for(pilot, lambda: app.state.attestation.runs == a.runs + 1)
        await wait_for(pilot, lambda: not app.state.attestation.busy)
        assert app.state.attestation.verdict == "verified"

        await pilot.press("d")
        await pilot.pause()
        assert isinstance(app.screen, InfoScreen)
        names = [k for k, _ in app.state.attestation.report_fields]
        assert "measurement" in names and "reported_tcb.microcode" in names
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, InfoScreen)

        for key in ("l", "question_mark"):
            await pilot.press(key)
            await pilot.pause()
            assert isinstance(app.screen, InfoScreen)
            await pilot.press("escape")
            await pilot.pause()


async def test_engine_restart_then_connection_loss(appliance_factory: Any) -> None:
    node = appliance_factory()
    app = DashboardApp(node.url, store=TrustStore(node.config), poll_interval=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(
            pilot,
            lambda: (
                app.state.attestation.verdict == "verified"
                and app.state.health is not None
                and app.state.health.engine_state == "ready"
            ),
        )
        health = app.state.health
        assert health is not None and health.engine_pid is not None
        restarts = health.restarts
        os.kill(health.engine_pid, signal.SIGKILL)

        seen: set[str] = set()

        def restarted() -> bool:
            h = app.state.health
            if h is None:
                return False
            seen.add(h.engine_state)
            return h.restarts > restarts and h.engine_state == "ready"

        await wait_for(pilot, restarted, timeout=30)
        assert seen - {"ready"}, seen  # the state changed, and the panel said so
        assert f"restarts {restarts + 1}" in render_throughput(app.state, app.clock(), 36).plain

        r = await asyncio.to_thread(node.cli, "openpcc-appliance", "down")
        assert r.returncode == 0, r.stderr
        await wait_for(pilot, lambda: app.state.connection.up is False)
        assert "CONNECTION LOST" in render_title(app.state, app.clock(), 80).plain
        assert app.has_class("-lost")

        await pilot.press("r")
        await wait_for(pilot, lambda: app.state.attestation.verdict == "unreachable")
        assert "cannot reach" in app.state.attestation.error
        assert app.is_running
