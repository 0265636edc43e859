"""PID 1 of the sealed root: copy the provisioning data to memory, run the gateway, restart it.

The provisioning disk is the host's, so only the allowed names (:data:`ALLOWED`: the manifest,
the log, ``tlog.json``, simulated evidence keys) are copied, as plain files; the gateway and the
engine get an empty home of their own (:data:`HOME`) and ignore user site-packages, so nothing the
host put on the disk can become code in the CVM.

Standard library only; it runs as ``python3.11 -I -B`` straight from ``switch_root``. It reaps
every orphan (PID 1's duty), restarts the gateway with a growing back-off when it exits, and on
SIGTERM stops the gateway and powers the VM off. It writes nothing but the gateway's console
lines, which carry no request data.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

PROVISION = "/run/openpcc/provision"
STATE = "/run/openpcc/state"
HOME = "/tmp/openpcc-home"  # noqa: S108 -- the CVM's own fresh tmpfs; made here, at boot, 0700
"""An empty home for the gateway and the engine (and their caches): nothing the host supplied.
On /tmp, not /run (mounted noexec), because compilers (Triton's, say) load what they cache."""
# The provisioning disk is the host's: only these names are copied, as plain files, so nothing
# it holds can become code (a .pth under a home's site-packages, a compiler cache) in the CVM.
# They mirror what cvm_boot.image.provision writes (HOST_FILES and the simulated tree): PID 1
# runs on the standard library alone, so the list is repeated here and a test ties the two.
ALLOWED = (
    re.compile(r"(manifest|tlog)\.json"),
    re.compile(r"log/log\.(entries|checkpoint|vkey|key)"),
    re.compile(r"sim/(snp|gpu)/[A-Za-z0-9][A-Za-z0-9._-]{0,63}"),
)
MAX_FILE = 256 * 1024 * 1024
MAX_TOTAL = 1024 * 1024 * 1024
"""Bytes copied in all: a host cannot fill the CVM's memory through the disk."""
MAX_ENTRIES = 10_000
"""Entries looked at on the disk: the real ones are a handful."""
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
ENV = {
    "PATH": "/usr/bin",
    "HOME": HOME,
    "XDG_CACHE_HOME": HOME + "/.cache",
    "XDG_CONFIG_HOME": HOME + "/.config",
    "XDG_DATA_HOME": HOME + "/.local/share",
    "PYTHONNOUSERSITE": "1",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
}
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


def _private_dirs(root: str, rel: str) -> None:
    """Each folder from ``root`` down to ``root/rel`` exists with mode 0700 (umask aside)."""
    path = root
    for part in [p for p in rel.split("/") if p]:
        path = os.path.join(path, part)
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)


def copy_provisioning(source: str, target: str) -> list[str]:
    """Copy the allowed regular files of ``source`` into ``target`` (0600, in 0700 folders);
    return what was left behind (other names, links, devices, oversized files)."""
    os.makedirs(target, mode=0o700, exist_ok=True)
    os.chmod(target, 0o700)
    skipped: list[str] = []
    seen = total = 0
    for folder, dirs, files in os.walk(source, followlinks=False):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            seen += 1
            if seen > MAX_ENTRIES:
                skipped.append(f"(everything after {MAX_ENTRIES} entries)")
                return skipped
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, source)
            if not any(p.fullmatch(rel) for p in ALLOWED):
                skipped.append(rel)
                continue
            try:
                # Never blocks (a FIFO at an allowed name), never follows a link.
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                skipped.append(rel)
                continue
            with os.fdopen(fd, "rb") as src:
                info = os.fstat(src.fileno())
                if (
                    not stat.S_ISREG(info.st_mode)
                    or info.st_size > MAX_FILE
                    or total + info.st_size > MAX_TOTAL
                ):
                    skipped.append(rel)
                    continue
                total += info.st_size
                dst = os.path.join(target, rel)
                _private_dirs(target, os.path.dirname(rel))
                out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(out, "wb") as f:
                    shutil.copyfileobj(src, f)
    return skipped


def main() -> None:
    global _child
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if os.path.isdir(PROVISION):
        try:
            skipped = copy_provisioning(PROVISION, STATE)
        except OSError as e:  # PID 1 must not die: the gateway then reports what is missing
            skipped = [f"(copying stopped: {e})"]
        for rel in skipped[:20]:
            _say(f"ignored on the provisioning disk: {rel!r} (not an allowed plain file)")
        if len(skipped) > 20:
            _say(f"... and {len(skipped) - 20} more ignored entries")
    os.makedirs(STATE, mode=0o700, exist_ok=True)
    os.mkdir(HOME, mode=0o700)  # fresh: /tmp is a new tmpfs and nothing ran before PID 1
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
