"""Aggregate gateway metrics in Prometheus text format.

Only counts and timings: no label ever carries request content, a model prompt or a client's
identity. Outcomes are a fixed, small set of words.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["OUTCOMES", "Histogram", "Metrics"]

OUTCOMES = (
    "ok",
    "decrypt_failed",
    "replay",
    "bad_request",
    "too_large",
    "busy",
    "engine_error",
    "unavailable",
    "timeout",
    "client_gone",
)

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


@dataclass(slots=True)
class Histogram:
    buckets: Sequence[float] = _LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def render(self, name: str) -> list[str]:
        lines = [f"# TYPE {name} histogram"]
        acc = 0
        for bound, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            lines.append(f'{name}_bucket{{le="{bound}"}} {acc}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        lines.append(f"{name}_sum {self.total:.6f}")
        lines.append(f"{name}_count {self.n}")
        return lines


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = dict.fromkeys(OUTCOMES, 0)
        self.decrypted = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.active_streams = 0
        # GET /v1/attestation with a nonce: refused because the evidence line was full, and
        # answered "unavailable" because evidence did not come within attestation_timeout_s.
        self.attestation_busy = 0
        self.attestation_timeouts = 0
        self.ttft = Histogram()
        self.itl = Histogram()
        self.request_seconds = Histogram()

    def outcome(self, name: str) -> None:
        if name not in self.requests:
            raise ValueError(f"unknown outcome {name!r}")
        with self._lock:
            self.requests[name] += 1

    def add_tokens(self, tokens_in: int, tokens_out: int) -> None:
        with self._lock:
            self.tokens_in += tokens_in
            self.tokens_out += tokens_out

    def render(self, gauges: Mapping[str, float], info: Callable[[], Mapping[str, str]]) -> str:
        with self._lock:
            lines = ["# TYPE openpcc_requests_total counter"]
            lines += [
                f'openpcc_requests_total{{outcome="{k}"}} {v}' for k, v in self.requests.items()
            ]
            lines += [
                "# TYPE openpcc_decrypted_requests_total counter",
                f"openpcc_decrypted_requests_total {self.decrypted}",
                "# TYPE openpcc_tokens_in_total counter",
                f"openpcc_tokens_in_total {self.tokens_in}",
                "# TYPE openpcc_tokens_out_total counter",
                f"openpcc_tokens_out_total {self.tokens_out}",
                "# TYPE openpcc_active_streams gauge",
                f"openpcc_active_streams {self.active_streams}",
                "# TYPE openpcc_attestation_busy_total counter",
                f"openpcc_attestation_busy_total {self.attestation_busy}",
                "# TYPE openpcc_attestation_timeouts_total counter",
                f"openpcc_attestation_timeouts_total {self.attestation_timeouts}",
            ]
            lines += self.ttft.render("openpcc_time_to_first_token_seconds")
            lines += self.itl.render("openpcc_inter_token_latency_seconds")
            lines += self.request_seconds.render("openpcc_request_seconds")
        for name, value in gauges.items():
            lines += [f"# TYPE {name} gauge", f"{name} {value}"]
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(info().items()))
        lines += ["# TYPE openpcc_info gauge", f"openpcc_info{{{labels}}} 1"]
        return "\n".join(lines) + "\n"
