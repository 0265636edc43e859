"""PID 1 of the sealed root: copy the provisioning data to memory, run the gateway, restart it.

Standard library only; it runs as ``python3.11 -I -B`` straight from ``switch_root``. It reaps
every orphan (PID 1's duty), restarts the gateway with a growing back-off when it exits, and on
SIGTERM stops the gateway and powers the VM off. It writes nothing but the gateway's console
lines, which carry no request data.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time

PROVISION = "/run/openpcc/provision"
STATE = "/run/openpcc/state"
GATEWAY = [
    "/usr/bin/python3.11",
    "-I",
    "-B",
    "-u",
    "-m",
    "server",
    "--config",
    "/etc/openpcc/gateway.toml",
]
ENV = {"PATH": "/usr/bin", "HOME": STATE, "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
_POWER_OFF = 0x4321FEDC
_stopping = False
_child: subprocess.Popen[bytes] | None = None


def _say(msg: str) -> None:
    with open("/proc/uptime") as f:
        up = f.read().split()[0]
    print(f"openpcc-supervise: {up}s {msg}", file=sys.stderr, flush=True)


def _power_off() -> None:
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(_POWER_OFF)


def _stop(_sig: int, _frame: object) -> None:
    global _stopping
    _stopping = True
    if _child is not None and _child.returncode is None:
        _child.send_signal(signal.SIGTERM)


def main() -> None:
    global _child
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if os.path.isdir(PROVISION):
        shutil.copytree(PROVISION, STATE, dirs_exist_ok=True)
    os.makedirs(STATE, mode=0o700, exist_ok=True)
    backoff = 1.0
    while not _stopping:
        started = time.monotonic()
        _say("starting the gateway")
        child = subprocess.Popen(GATEWAY, env=ENV, cwd="/", stdin=subprocess.DEVNULL)
        _child = child
        while not _stopping:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == child.pid:
                child.returncode = os.waitstatus_to_exitcode(status)
                break
        if _stopping:
            if child.returncode is None:
                child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
            break
        _say(f"the gateway exited ({child.returncode}); restarting in {backoff:g}s")
        time.sleep(backoff)
        backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
    _say("powering off")
    _power_off()


if __name__ == "__main__":
    main()
