"""Fixed dashboard states for the snapshot and view tests, and the SVG snapshot check.

Not a conftest: imported as ``tests.tui.states`` by the tests that need it.

The states are built by hand from plain objects, with fixed times, ports and pids, so a snapshot
changes only when what a person sees changes. ``OPENPCC_UPDATE_SNAPSHOTS=1`` rewrites them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from attest.bundle import CHECK_ORDER
from tui.app import DashboardApp
from tui.state import (
    Attestation,
    CheckRow,
    DashboardState,
    GpuRow,
    Health,
    HostFacts,
    LogWatch,
    MetricsSample,
    ProcRow,
    TcbRow,
)

SNAPSHOTS = Path(__file__).resolve().parent / "__snapshots__"
T0 = 1_760_000_000.0
URL = "http://node.example:8480"
MEASUREMENT = "ecb4de15e3e236a252" + "5a" * 30 + "12ab188b"


def _buckets(counts: list[float]) -> tuple[tuple[float, float], ...]:
    bounds = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, float("inf"))
    acc, out = 0.0, []
    for b, c in zip(bounds, counts, strict=True):
        acc += c
        out.append((b, acc))
    return tuple(out)


def make_state(*, simulated: bool, failed: str | None = None) -> DashboardState:
    """A node seen for two minutes under load; ``failed`` names the check that failed."""
    st = DashboardState(URL)
    checks: list[CheckRow] = []
    broken = False
    for name, _ in CHECK_ORDER:
        if broken:
            checks.append(CheckRow(name, "not-run", "an earlier check failed"))
        elif name == failed:
            checks.append(CheckRow(name, "fail", "report MEASUREMENT 3f00… != manifest ecb4…"))
            broken = True
        else:
            checks.append(CheckRow(name, "pass", f"{name} ok"))
    tee = "sim-sev-snp" if simulated else "sev-snp"
    reported = MEASUREMENT if failed != "measurement" else "3f00" + MEASUREMENT[4:]
    st.attestation = Attestation(
        verdict="failed" if failed else "verified",
        checks=tuple(checks),
        tee=tee,
        simulated=simulated,
        product="Genoa",
        tcb=(
            TcbRow("bootloader", 10, 3),
            TcbRow("tee", 0, 0),
            TcbRow("snp", 23, 8),
            TcbRow("microcode", 84 if failed == "policy" else 213, 115),
        ),
        verified_at=T0 - 42,
        key_id=None if failed else 7,
        expected_measurement=MEASUREMENT,
        reported_measurement=reported,
        release="openpcc-llm 1.2.0",
        log_index=4,
        tree_size=5,
        log_detail="index 4 of 5, checkpoint by openpcc.example/log",
        inclusion=("aa" * 32, "bb" * 32),
        manifest={"measurement": MEASUREMENT, "recipe": {"name": "openpcc-llm"}},
        gpus=(
            GpuRow(
                0,
                "sim-nvidia" if simulated else "nvidia",
                "established",
                "550.90.07",
                "96.00.9f.00.01",
                "not-run" if failed else "pass",
            ),
        ),
        report_fields=(("version", "3"), ("measurement", reported)),
        error=f"{failed}: report MEASUREMENT differs from the manifest" if failed else "",
        runs=3,
    )
    st.connection.ok(T0 - 120)
    st.health = Health(
        status="ok",
        tee=tee,
        engine_kind="vllm",
        engine_state="ready",
        restarts=1,
        engine_pid=4242,
        engine_uptime_s=300.0,
        key_id=7,
        uptime_s=3600.0,
    )
    for i in range(61):
        t = T0 - 120 + 2 * i
        load = (i % 12) * 1.5
        st.throughput.add(
            MetricsSample(
                at=t,
                tokens_in=40.0 * i + 10 * load * i,
                tokens_out=300.0 * i + 50 * load * i,
                requests={"ok": 2.0 * i, "busy": float(i // 20), "decrypt_failed": 0.0},
                active_streams=3,
                ttft=_buckets([0, i, 4 * i, 2 * i, i, 0, 0, 0, 0]),
                itl=_buckets([5 * i, 20 * i, 3 * i, 0, 0, 0, 0, 0, 0]),
                engine_ready=1,
                restarts=1,
                key_id=7,
                key_age_s=300.0 + 2 * i,
            )
        )
    st.log = LogWatch(
        origin="openpcc.example/log",
        size=5,
        root="cd" * 32,
        grown_at=T0 - 600,
        consistent=True,
        detail="consistent with size 4",
    )
    role = "gateway" if simulated else "cvm"
    st.host = HostFacts(
        load=(1.25, 0.98, 0.71),
        cpu_percent=37.0,
        cpus=16,
        mem_percent=41.0,
        mem_used=26 * 2**30,
        mem_total=64 * 2**30,
        procs=(
            ProcRow(
                role,
                "python" if simulated else "qemu-system-x86_64",
                4200,
                12.5,
                812 * 2**20,
                0.0,
                4096.0,
            ),
            ProcRow("engine", "python", 4242, 88.0, 3 * 2**30, 1024.0, 0.0),
        )
        if simulated
        else (ProcRow(role, "qemu-system-x86_64", 4200, 395.0, 48 * 2**30, 2048.0, 65536.0),),
    )
    return st


def fixed_app(state: DashboardState) -> DashboardApp:
    return DashboardApp(URL, state=state, live=False, clock=lambda: T0)


def assert_svg_snapshot(svg: str, name: str) -> None:
    path = SNAPSHOTS / f"{name}.svg"
    if os.environ.get("OPENPCC_UPDATE_SNAPSHOTS") == "1" or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(svg)
        if os.environ.get("OPENPCC_UPDATE_SNAPSHOTS") != "1":
            pytest.fail(f"snapshot {path.name} did not exist; written, check it and run again")
        return
    if path.read_text() != svg:
        actual = Path(tempfile.gettempdir()) / f"openpcc-{name}.actual.svg"
        actual.write_text(svg)
        pytest.fail(
            f"the screen differs from {path}; see {actual} (OPENPCC_UPDATE_SNAPSHOTS=1 accepts it)"
        )
