"""Host resources through psutil: the CVM's process (QEMU), or the local processes in simulation.

The dashboard learns the engine's pid from ``/healthz`` (public); in simulation the gateway is its
parent. On a real host the CVM is the ``qemu-system-*`` process: what runs inside it is not visible
from here, by design.
"""

from __future__ import annotations

import os

import psutil

from tui.state import HostFacts, ProcRow

__all__ = ["HostSampler"]


class HostSampler:
    """Keeps the psutil handles between samples, so CPU and I/O are rates, not totals."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self._io: dict[int, tuple[float, int, int]] = {}

    def _targets(self, simulated: bool, engine_pid: int | None) -> list[tuple[str, int]]:
        if simulated:
            if engine_pid is None:
                return []
            out: list[tuple[str, int]] = []
            try:
                parent = psutil.Process(engine_pid).parent()
            except psutil.Error:
                return []
            if parent is not None:
                out.append(("gateway", int(parent.pid)))
            out.append(("engine", engine_pid))
            return out
        return [
            ("cvm", int(p.pid))
            for p in psutil.process_iter(["name"])
            if str(p.info.get("name") or "").startswith("qemu-system")
        ]

    def _proc(self, pid: int) -> psutil.Process:
        p = self._procs.get(pid)
        if p is None:
            p = psutil.Process(pid)
            p.cpu_percent(None)  # the first call only starts the measurement
            self._procs[pid] = p
        return p

    def _io_rates(self, p: psutil.Process, now: float) -> tuple[float | None, float | None]:
        try:
            io = p.io_counters()
        except (psutil.Error, AttributeError):
            return None, None
        prev = self._io.get(int(p.pid))
        self._io[int(p.pid)] = (now, int(io.read_bytes), int(io.write_bytes))
        if prev is None or now <= prev[0]:
            return None, None
        dt = now - prev[0]
        return (int(io.read_bytes) - prev[1]) / dt, (int(io.write_bytes) - prev[2]) / dt

    def sample(self, *, simulated: bool, engine_pid: int | None, now: float) -> HostFacts:
        rows: list[ProcRow] = []
        seen: set[int] = set()
        for role, pid in self._targets(simulated, engine_pid):
            try:
                p = self._proc(pid)
                with p.oneshot():
                    name = str(p.name())
                    cpu = float(p.cpu_percent(None))
                    rss = int(p.memory_info().rss)
                read, write = self._io_rates(p, now)
            except psutil.Error:
                self._procs.pop(pid, None)
                continue
            seen.add(pid)
            rows.append(ProcRow(role, name, pid, cpu, rss, read, write))
        for gone in set(self._procs) - seen:
            self._procs.pop(gone, None)
            self._io.pop(gone, None)
        mem = psutil.virtual_memory()
        note = ""
        if not rows:
            note = "the node's processes are not on this host" if simulated else "no QEMU found"
        return HostFacts(
            load=os.getloadavg(),
            cpu_percent=float(psutil.cpu_percent(None)),
            cpus=int(psutil.cpu_count() or 1),
            mem_percent=float(mem.percent),
            mem_used=int(mem.total - mem.available),
            mem_total=int(mem.total),
            procs=tuple(rows),
            note=note,
        )
