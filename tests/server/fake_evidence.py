"""FAKE evidence providers for tests of how the gateway queues evidence production.

Nothing here is evidence a client could verify: the CPU "report" is the REPORT_DATA itself and
the GPU "evidence" is the nonce. What matters is timing: every GPU request waits at a gate the
test opens, so a test decides exactly when a slow build finishes, without sleeping.
"""

from __future__ import annotations

import base64
import threading

from attest.errors import TransportError

__all__ = ["FakeCpuProvider", "GatedGpuProvider"]


class FakeCpuProvider:
    """FAKE CPU evidence: answers at once, the report is the REPORT_DATA."""

    tee = "fake-sev-snp"

    def evidence(self, report_data: bytes) -> tuple[bytes, str]:
        return report_data, ""


class GatedGpuProvider:
    """FAKE GPU evidence that holds each request at ``gate`` (open unless a test clears it),
    the way a slow NVML call holds a real one, and counts what it was asked.

    A request still held after ``limit_s`` fails, so a broken test ends instead of hanging.
    ``fail`` makes the next requests fail as NVML does when it gives no report.
    """

    def __init__(self, *, limit_s: float = 5.0) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False
        self._limit_s = limit_s
        self._lock = threading.Lock()
        self.started = 0
        self.running = 0
        self.most_at_once = 0

    def evidence(self, nonce: bytes) -> list[dict[str, str]]:
        with self._lock:
            self.started += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            if not self.gate.wait(self._limit_s):
                raise TransportError("FAKE GPU: the test never opened the gate")
            if self.fail:
                raise TransportError("FAKE GPU: no attestation report")
            return [
                {"vendor": "fake-nvidia", "evidence": base64.b64encode(nonce).decode(), "certs": ""}
            ]
        finally:
            with self._lock:
                self.running -= 1
