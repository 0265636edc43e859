"""How the appliance runs the host's external commands (QEMU, systemctl, gpu-admin-tools).

Every such command goes through a :data:`Runner`, so tests can replace it with one that records
the argument vectors and answers from recorded outputs. A command that is not installed is an
answer (exit 127), never an exception: the doctor turns it into a line with a fix.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["NOT_FOUND", "Completed", "Runner", "run_command"]

NOT_FOUND = 127


@dataclass(frozen=True, slots=True)
class Completed:
    """What a command answered: exit status and its output, as text."""

    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def first_line(self) -> str:
        """The first non-empty line of stderr, else of stdout: enough for a one-line message."""
        for text in (self.stderr, self.stdout):
            for line in text.splitlines():
                if line.strip():
                    return line.strip()
        return f"exit status {self.returncode}"


Runner = Callable[[Sequence[str]], Completed]


def run_command(argv: Sequence[str], *, timeout: float = 60.0) -> Completed:
    """Run ``argv`` without a shell and capture its output."""
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return Completed(NOT_FOUND, "", f"{argv[0]}: command not found")
    except PermissionError:
        return Completed(126, "", f"{argv[0]}: permission denied")
    except subprocess.TimeoutExpired:
        return Completed(124, "", f"{argv[0]}: no answer in {timeout:g}s")
    return Completed(proc.returncode, proc.stdout, proc.stderr)
