"""The plain state behind the dashboard; no Textual here.

The panels are views over these objects, and the tests build them directly: parsing Prometheus
text, rates between two scrapes, quantiles from histogram buckets, the outcome of one verification
run (with what the bundle said even when a check failed), the transparency-log watch and the
host's resources. Times are epoch seconds passed in by the caller, never read here.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from attest import tlog
from attest.bundle import CHECK_ORDER, VerificationRun
from attest.errors import OpenPCCError, ParseError
from attest.nvgpu import parse_gpu_report
from attest.sevsnp.abi import Report, parse_report
from attest.sevsnp.validate import TcbMinimum

__all__ = [
    "CHECK_SHORT",
    "Attestation",
    "CheckRow",
    "Connection",
    "DashboardState",
    "GpuRow",
    "Health",
    "HostFacts",
    "LogWatch",
    "MetricsSample",
    "ProcRow",
    "TcbRow",
    "Throughput",
    "assess_checkpoint",
    "flatten",
    "histogram_quantile",
    "parse_prometheus",
    "sparkline",
]

Verdict = Literal["pending", "verifying", "verified", "failed", "unreachable"]
Status = Literal["pass", "fail", "skip", "not-run"]

CHECK_SHORT: dict[str, str] = {
    "report-parse": "1 parse",
    "report-signature": "2 signature",
    "cert-chain": "3 chain",
    "tcb-consistency": "4 tcb/chip",
    "policy": "5 policy",
    "measurement": "6a measure",
    "transparency-log": "6b log",
    "report-data": "7 binding",
    "gpu": "8 gpu",
    "key-config": "9 key",
}
_TITLES = dict(CHECK_ORDER)
_SPARK = "▁▂▃▄▅▆▇█"


# -- Prometheus text ----------------------------------------------------------------------------

Labels = tuple[tuple[str, str], ...]
Samples = dict[str, list[tuple[Labels, float]]]


def _parse_labels(text: str, line: str) -> Labels:
    out: list[tuple[str, str]] = []
    rest = text
    while rest:
        key, sep, rest = rest.partition("=")
        if not sep or not rest.startswith('"'):
            raise ParseError(f"metrics: malformed labels in {line[:120]!r}")
        end = rest.find('"', 1)
        while end > 0 and rest[end - 1] == "\\":
            end = rest.find('"', end + 1)
        if end < 0:
            raise ParseError(f"metrics: unterminated label value in {line[:120]!r}")
        out.append((key.strip(), rest[1:end]))
        rest = rest[end + 1 :].lstrip(",").strip()
    return tuple(out)


def parse_prometheus(text: str) -> Samples:
    """Prometheus text exposition to ``{name: [(labels, value), ...]}``; comments dropped."""
    out: Samples = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            labels_text, sep, value_text = rest.rpartition("}")
            if not sep:
                raise ParseError(f"metrics: unterminated labels in {line[:120]!r}")
            labels = _parse_labels(labels_text, line)
        else:
            name, _, value_text = line.partition(" ")
            labels = ()
        parts = value_text.split()
        if not name or not parts:
            raise ParseError(f"metrics: no value in {line[:120]!r}")
        try:
            value = float(parts[0])
        except ValueError as e:
            raise ParseError(f"metrics: bad value in {line[:120]!r}") from e
        out.setdefault(name.strip(), []).append((labels, value))
    return out


def _scalar(samples: Samples, name: str) -> float | None:
    got = samples.get(name)
    return got[0][1] if got else None


Buckets = tuple[tuple[float, float], ...]


def _buckets(samples: Samples, name: str) -> Buckets:
    out: list[tuple[float, float]] = []
    for labels, value in samples.get(name + "_bucket", []):
        le = dict(labels).get("le")
        if le is None:
            continue
        out.append((math.inf if le == "+Inf" else float(le), value))
    return tuple(sorted(out))


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """Prometheus's ``histogram_quantile``: linear within the bucket holding rank ``q``.

    ``buckets`` are ``(upper bound, cumulative count)`` pairs ending with ``+Inf``. None when
    there is no observation. A rank in the ``+Inf`` bucket reads as the highest finite bound.
    """
    if not 0 <= q <= 1:
        raise ValueError("q must be in [0, 1]")
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > prev_count:
            if math.isinf(bound):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = (prev_bound if math.isinf(bound) else bound), count
    return prev_bound


def _bucket_delta(new: Buckets, old: Buckets) -> Buckets:
    """Observations between two scrapes; the newer alone after a counter reset."""
    if [b for b, _ in new] != [b for b, _ in old] or any(
        n < o for (_, n), (_, o) in zip(new, old, strict=True)
    ):
        return new
    return tuple((b, n - o) for (b, n), (_, o) in zip(new, old, strict=True))


@dataclass(frozen=True, slots=True)
class MetricsSample:
    """One scrape of ``/metrics`` at ``at`` (epoch seconds)."""

    at: float
    tokens_in: float = 0.0
    tokens_out: float = 0.0
    requests: Mapping[str, float] = field(default_factory=dict)
    active_streams: float = 0.0
    ttft: Buckets = ()
    itl: Buckets = ()
    engine_ready: float | None = None
    restarts: float = 0.0
    key_id: int | None = None
    key_age_s: float | None = None

    @classmethod
    def parse(cls, text: str, at: float) -> MetricsSample:
        s = parse_prometheus(text)
        requests: dict[str, float] = {}
        for labels, value in s.get("openpcc_requests_total", []):
            outcome = dict(labels).get("outcome")
            if outcome is not None:
                requests[outcome] = value
        key_id = _scalar(s, "openpcc_key_id")
        return cls(
            at=at,
            tokens_in=_scalar(s, "openpcc_tokens_in_total") or 0.0,
            tokens_out=_scalar(s, "openpcc_tokens_out_total") or 0.0,
            requests=requests,
            active_streams=_scalar(s, "openpcc_active_streams") or 0.0,
            ttft=_buckets(s, "openpcc_time_to_first_token_seconds"),
            itl=_buckets(s, "openpcc_inter_token_latency_seconds"),
            engine_ready=_scalar(s, "openpcc_engine_ready"),
            restarts=_scalar(s, "openpcc_engine_restarts_total") or 0.0,
            key_id=None if key_id is None else int(key_id),
            key_age_s=_scalar(s, "openpcc_key_age_seconds"),
        )


def _rate(new: float, old: float, dt: float) -> float:
    if dt <= 0:
        return 0.0
    # A counter that went down was reset (gateway restart): count from zero.
    return (new - old if new >= old else new) / dt


class Throughput:
    """The scrapes of the last ``window_s`` seconds and what they say about load and latency."""

    def __init__(self, window_s: float = 300.0) -> None:
        self.window_s = window_s
        self.samples: deque[MetricsSample] = deque()

    def add(self, sample: MetricsSample) -> None:
        if self.samples and sample.at <= self.samples[-1].at:
            return
        self.samples.append(sample)
        while self.samples and sample.at - self.samples[0].at > self.window_s:
            self.samples.popleft()

    @property
    def last(self) -> MetricsSample | None:
        return self.samples[-1] if self.samples else None

    def _pairs(self) -> Iterable[tuple[MetricsSample, MetricsSample]]:
        s = list(self.samples)
        return itertools.pairwise(s)

    def tokens_in_series(self) -> list[float]:
        return [_rate(b.tokens_in, a.tokens_in, b.at - a.at) for a, b in self._pairs()]

    def tokens_out_series(self) -> list[float]:
        return [_rate(b.tokens_out, a.tokens_out, b.at - a.at) for a, b in self._pairs()]

    def _recent(self, span_s: float) -> tuple[MetricsSample, MetricsSample] | None:
        if len(self.samples) < 2:
            return None
        last = self.samples[-1]
        first = next(
            (x for x in self.samples if last.at - x.at <= span_s and x is not last),
            self.samples[-2],
        )
        return first, last

    def tokens_rate(self, span_s: float = 10.0) -> tuple[float, float]:
        """Tokens per second (in, out) over the last ``span_s`` seconds."""
        pair = self._recent(span_s)
        if pair is None:
            return 0.0, 0.0
        a, b = pair
        dt = b.at - a.at
        return _rate(b.tokens_in, a.tokens_in, dt), _rate(b.tokens_out, a.tokens_out, dt)

    def request_rates(self, span_s: float = 10.0) -> dict[str, float]:
        """Requests per second by outcome over the last ``span_s`` seconds."""
        pair = self._recent(span_s)
        if pair is None:
            return {}
        a, b = pair
        dt = b.at - a.at
        return {k: _rate(v, a.requests.get(k, 0.0), dt) for k, v in b.requests.items()}

    def _window_buckets(self, which: Literal["ttft", "itl"]) -> Buckets:
        if not self.samples:
            return ()
        new = getattr(self.samples[-1], which)
        if len(self.samples) == 1:
            return tuple(new)
        return _bucket_delta(new, getattr(self.samples[0], which))

    def latency(self, which: Literal["ttft", "itl"]) -> tuple[float | None, float | None]:
        """p50 and p95 in seconds over the window (all time when only one scrape exists)."""
        b = self._window_buckets(which)
        return histogram_quantile(0.5, b), histogram_quantile(0.95, b)


def sparkline(values: Sequence[float], width: int) -> str:
    """Block characters, one per column; averaged down when there are more values than columns."""
    if width <= 0:
        return ""
    vals = list(values)
    if len(vals) > width:
        step = len(vals) / width
        vals = [
            sum(chunk) / len(chunk)
            for i in range(width)
            if (chunk := vals[int(i * step) : max(int((i + 1) * step), int(i * step) + 1)])
        ]
    if not vals:
        return " " * width
    top = max(vals)
    if top <= 0:
        line = _SPARK[0] * len(vals)
    else:
        line = "".join(_SPARK[min(7, int(v / top * 7.999))] for v in vals)
    return line.rjust(width)


# -- /healthz -----------------------------------------------------------------------------------


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


@dataclass(frozen=True, slots=True)
class Health:
    """What ``/healthz`` says about the gateway and its engine."""

    status: str
    tee: str
    engine_kind: str
    engine_state: str
    restarts: int
    engine_pid: int | None
    engine_uptime_s: float | None
    key_id: int | None
    uptime_s: float | None

    @classmethod
    def from_json(cls, data: object) -> Health:
        if not isinstance(data, dict):
            raise ParseError("/healthz did not answer a JSON object")
        engine = data.get("engine")
        eng: Mapping[str, object] = engine if isinstance(engine, dict) else {}
        return cls(
            status=str(data.get("status", "?")),
            tee=str(data.get("tee", "?")),
            engine_kind=str(eng.get("kind", "?")),
            engine_state=str(eng.get("state", "?")),
            restarts=_int(eng.get("restarts")) or 0,
            engine_pid=_int(eng.get("pid")),
            engine_uptime_s=_float(eng.get("uptime_s")),
            key_id=_int(data.get("key_id")),
            uptime_s=_float(data.get("uptime_s")),
        )


# -- the connection -----------------------------------------------------------------------------


@dataclass(slots=True)
class Connection:
    """Whether the gateway answers; a loss is state to show, never an exception to die of."""

    url: str
    up: bool | None = None  # None: not tried yet
    error: str = ""
    since: float | None = None  # when it last changed
    failures: int = 0

    def ok(self, now: float) -> bool:
        """Record an answer; True when this ends a loss (the node may have changed)."""
        regained = self.up is False
        if self.up is not True:
            self.since = now
        self.up, self.error, self.failures = True, "", 0
        return regained

    def lost(self, error: str, now: float) -> None:
        if self.up is not False:
            self.since = now
        self.up, self.error = False, error
        self.failures += 1


# -- attestation --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckRow:
    name: str
    status: Status
    detail: str = ""

    @property
    def title(self) -> str:
        return _TITLES.get(self.name, self.name)

    @property
    def short(self) -> str:
        return CHECK_SHORT.get(self.name, self.name)


@dataclass(frozen=True, slots=True)
class TcbRow:
    component: str
    reported: int
    minimum: int | None

    @property
    def ok(self) -> bool:
        return self.minimum is None or self.reported >= self.minimum


@dataclass(frozen=True, slots=True)
class GpuRow:
    index: int
    vendor: str
    cc_mode: str
    """"established" (measurements matched reference values), "not established" (verified, but
    only RIMs could establish the CC/DevTools state and none were compared) or "unverified"."""
    driver: str
    vbios: str
    verdict: Status


def flatten(value: object, prefix: str = "") -> list[tuple[str, str]]:
    """Nested mappings to ``("a.b.c", "value")`` rows, in the mapping's own order."""
    if isinstance(value, Mapping):
        rows: list[tuple[str, str]] = []
        for k, v in value.items():
            rows += flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return rows
    if isinstance(value, list | tuple):
        return [(prefix, ", ".join(str(v) for v in value))]
    return [(prefix, "—" if value is None else str(value))]


def _gpu_rows(
    bundle: Mapping[str, object], status: Status, verified: Sequence[Mapping[str, object]] = ()
) -> tuple[GpuRow, ...]:
    """One row per GPU in the bundle; the CC state comes from the verifier's result only (no
    report field says CC on: FEATURE_FLAG is the multi-GPU topology mode)."""
    gpus = bundle.get("gpus")
    if not isinstance(gpus, list):
        return ()
    rows: list[GpuRow] = []
    for i, g in enumerate(gpus):
        if not isinstance(g, dict):
            continue
        vendor = str(g.get("vendor", "?"))
        driver = vbios = "?"
        cc = "unverified"
        if i < len(verified) and "cc_established" in verified[i]:
            cc = "established" if verified[i]["cc_established"] else "not established"
        try:
            rep = parse_gpu_report(base64.b64decode(str(g.get("evidence", "")), validate=True))
        except (ParseError, binascii.Error, ValueError):
            pass
        else:
            driver, vbios = rep.opaque.driver_version, rep.opaque.vbios_version
        rows.append(GpuRow(i, vendor, cc, driver, vbios, status))
    return tuple(rows)


def _bundle_report(bundle: Mapping[str, object]) -> Report | None:
    raw = bundle.get("report")
    if not isinstance(raw, str):
        return None
    try:
        return parse_report(base64.b64decode(raw, validate=True))
    except (ParseError, binascii.Error, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Attestation:
    """One verification run as the panels show it."""

    verdict: Verdict = "pending"
    checks: tuple[CheckRow, ...] = ()
    tee: str | None = None
    simulated: bool = False
    product: str | None = None
    tcb: tuple[TcbRow, ...] = ()
    verified_at: float | None = None
    key_id: int | None = None
    expected_measurement: str | None = None
    reported_measurement: str | None = None
    release: str | None = None
    log_index: int | None = None
    tree_size: int | None = None
    log_detail: str = ""
    inclusion: tuple[str, ...] = ()
    checkpoint_note: str = ""
    manifest: Mapping[str, object] = field(default_factory=dict)
    gpus: tuple[GpuRow, ...] = ()
    report_fields: tuple[tuple[str, str], ...] = ()
    error: str = ""
    hint: str = ""
    runs: int = 0
    busy: bool = False  # a re-verification is under way

    def status_of(self, name: str) -> Status:
        for c in self.checks:
            if c.name == name:
                return c.status
        return "not-run"

    @property
    def measurement_match(self) -> bool | None:
        if self.expected_measurement is None or self.reported_measurement is None:
            return None
        return hmac.compare_digest(self.expected_measurement, self.reported_measurement)

    def unreachable(self, error: str, hint: str = "") -> Attestation:
        """The same facts, no longer vouched for: the node could not be asked again."""
        return replace(self, verdict="unreachable", error=error, hint=hint, runs=self.runs + 1)

    @classmethod
    def from_run(
        cls,
        run: VerificationRun,
        bundle: Mapping[str, object] | None,
        *,
        min_tcb: TcbMinimum | None,
        at: float,
        runs: int = 1,
    ) -> Attestation:
        """What ``run`` decided, with what ``bundle`` claimed shown even where a check failed."""
        bundle = bundle or {}
        checks = tuple(CheckRow(c.name, c.status, c.detail) for c in run.checks)
        node = run.node
        report = node.report if node is not None else _bundle_report(bundle)
        product = node.product if node is not None else None
        tcb: tuple[TcbRow, ...] = ()
        report_fields: tuple[tuple[str, str], ...] = ()
        if report is not None:
            product = product or report.cpuid_product()
            mins = dict(min_tcb.items()) if min_tcb is not None else {}
            reported = report.tcb("reported_tcb", product).components()
            tcb = tuple(TcbRow(k, v, mins.get(k)) for k, v in reported.items())
            report_fields = tuple(flatten(report.to_dict(product)))
        manifest = bundle.get("manifest")
        man: Mapping[str, object] = manifest if isinstance(manifest, dict) else {}
        if node is not None:
            man = node.manifest
        recipe = man.get("recipe")
        release = None
        if isinstance(recipe, dict):
            release = f"{recipe.get('name', '?')} {recipe.get('version', '?')}"
        tl = bundle.get("tlog")
        tl_map: Mapping[str, object] = tl if isinstance(tl, dict) else {}
        inclusion = tl_map.get("inclusion")
        log_check = next((c for c in checks if c.name == "transparency-log"), None)
        status_gpu: Status = next((c.status for c in checks if c.name == "gpu"), "not-run")
        key_id: int | None = node.key_config.key_id if node is not None else None
        tee = node.tee if node is not None else bundle.get("tee")
        expected = man.get("measurement")
        err = run.error
        return cls(
            verdict="verified" if node is not None else "failed",
            checks=checks,
            tee=tee if isinstance(tee, str) else None,
            simulated=node.simulated if node is not None else str(tee).startswith("sim-"),
            product=product,
            tcb=tcb,
            verified_at=at,
            key_id=key_id,
            expected_measurement=expected if isinstance(expected, str) else None,
            reported_measurement=report.measurement.hex() if report is not None else None,
            release=release,
            log_index=node.log_index if node is not None else _int(tl_map.get("index")),
            tree_size=node.tree_size if node is not None else _int(tl_map.get("tree_size")),
            log_detail=log_check.detail if log_check is not None else "",
            inclusion=tuple(str(p) for p in inclusion) if isinstance(inclusion, list) else (),
            checkpoint_note=str(tl_map.get("checkpoint", "")),
            manifest=man,
            gpus=_gpu_rows(bundle, status_gpu, node.gpus if node is not None else ()),
            report_fields=report_fields,
            error=str(err) if err is not None else "",
            hint=err.hint if isinstance(err, OpenPCCError) else "",
            runs=runs,
        )


# -- the transparency log, watched between verifications ----------------------------------------


@dataclass(frozen=True, slots=True)
class LogWatch:
    """The latest signed checkpoint and whether it extends the last one this client saw."""

    origin: str = ""
    size: int | None = None
    root: str = ""
    grown_at: float | None = None  # when this size was first seen
    consistent: bool | None = None
    detail: str = "not fetched yet"


def assess_checkpoint(
    prev: tlog.Checkpoint | None,
    cp: tlog.Checkpoint,
    proof: Sequence[bytes] | None,
    *,
    watch: LogWatch,
    now: float,
) -> LogWatch:
    """Compare a freshly fetched, signature-checked checkpoint with the last one seen.

    ``proof`` is the consistency proof from ``prev`` to ``cp`` (needed only when the tree grew).
    A rollback, a fork or a bad proof is shown as inconsistent: the possible attack DESIGN.md §5
    makes clients refuse.
    """
    grown_at = watch.grown_at if watch.size == cp.size and watch.grown_at is not None else now
    base = LogWatch(origin=cp.origin, size=cp.size, root=cp.root_hash.hex(), grown_at=grown_at)
    if prev is None:
        return replace(base, consistent=None, detail="first checkpoint seen")
    if cp.size < prev.size:
        return replace(
            base, consistent=False, detail=f"ROLLED BACK: size {cp.size} < {prev.size} seen"
        )
    if cp.size == prev.size:
        if hmac.compare_digest(cp.root_hash, prev.root_hash):
            return replace(base, consistent=True, detail=f"same as last seen (size {prev.size})")
        return replace(base, consistent=False, detail=f"FORKED: another root for size {cp.size}")
    try:
        tlog.verify_consistency(prev.size, cp.size, prev.root_hash, cp.root_hash, proof or [])
    except OpenPCCError as e:
        return replace(base, consistent=False, detail=f"INCONSISTENT with size {prev.size}: {e}")
    return replace(base, consistent=True, detail=f"consistent with size {prev.size}")


# -- host resources -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcRow:
    role: str
    name: str
    pid: int
    cpu_percent: float
    rss_bytes: int
    read_bps: float | None
    write_bps: float | None


@dataclass(frozen=True, slots=True)
class HostFacts:
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    cpu_percent: float = 0.0
    cpus: int = 1
    mem_percent: float = 0.0
    mem_used: int = 0
    mem_total: int = 0
    procs: tuple[ProcRow, ...] = ()
    note: str = ""


# -- all of it ----------------------------------------------------------------------------------


@dataclass(slots=True)
class DashboardState:
    """Everything the panels show; the workers replace its parts, the panels only read them."""

    url: str
    connection: Connection = field(init=False)
    health: Health | None = None
    attestation: Attestation = field(default_factory=Attestation)
    throughput: Throughput = field(default_factory=Throughput)
    log: LogWatch = field(default_factory=LogWatch)
    host: HostFacts = field(default_factory=HostFacts)

    def __post_init__(self) -> None:
        self.connection = Connection(self.url)
