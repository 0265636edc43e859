"""The dashboard's state without the UI: metrics, quantiles, rates, verdicts, the log watch."""

from __future__ import annotations

import math

import pytest

from attest import tlog
from attest.bundle import CHECK_ORDER, CheckResult, VerificationRun
from attest.errors import ParseError, VerificationError
from server.metrics import Metrics
from tests.tui.states import T0, make_state
from tui.panels import (
    fmt_age,
    fmt_bytes,
    render_attestation,
    render_gpus,
    render_host,
    render_measurements,
    render_throughput,
    render_title,
)
from tui.state import (
    Attestation,
    Connection,
    Health,
    LogWatch,
    MetricsSample,
    Throughput,
    assess_checkpoint,
    flatten,
    histogram_quantile,
    parse_prometheus,
    sparkline,
)


def gateway_metrics() -> str:
    """Metrics as the gateway renders them (the real renderer, fed known values)."""
    m = Metrics()
    for _ in range(3):
        m.outcome("ok")
    m.outcome("busy")
    m.add_tokens(12, 40)
    m.active_streams = 2
    for v in (0.02, 0.03, 0.04, 0.2):
        m.ttft.observe(v)
    m.itl.observe(0.004)
    gauges = {
        "openpcc_engine_ready": 1,
        "openpcc_engine_restarts_total": 2.0,
        "openpcc_key_id": 7,
        "openpcc_key_age_seconds": 12.5,
    }
    return m.render(gauges, lambda: {"tee": "sim-sev-snp", "version": "0.1.0"})


def test_parses_the_gateways_metrics() -> None:
    s = MetricsSample.parse(gateway_metrics(), at=T0)
    assert s.requests["ok"] == 3 and s.requests["busy"] == 1 and s.requests["timeout"] == 0
    assert (s.tokens_in, s.tokens_out, s.active_streams) == (12, 40, 2)
    assert (s.restarts, s.key_id, s.key_age_s, s.engine_ready) == (2, 7, 12.5, 1)
    assert s.ttft[-1] == (math.inf, 4) and len(s.ttft) == 16
    assert parse_prometheus(gateway_metrics())["openpcc_info"][0][0] == (
        ("tee", "sim-sev-snp"),
        ("version", "0.1.0"),
    )


@pytest.mark.parametrize(
    "line",
    ['x{a="1" 2', "x", "x{a=1} 2", "x notanumber"],
    ids=["unterminated", "no value", "unquoted label", "bad value"],
)
def test_malformed_metrics_are_parse_errors(line: str) -> None:
    with pytest.raises(ParseError, match="metrics:"):
        parse_prometheus(line)


INF = math.inf


@pytest.mark.parametrize(
    ("q", "buckets", "want"),
    [
        (0.5, ((0.1, 0), (0.2, 10), (INF, 10)), 0.15),  # linear inside the bucket
        (0.5, ((0.1, 10), (INF, 10)), 0.05),  # the first bucket starts at 0
        (0.95, ((0.1, 5), (0.2, 5), (INF, 10)), 0.2),  # in +Inf: the highest finite bound
        (0.5, ((0.1, 0), (INF, 0)), None),  # no observation
        (0.5, (), None),
    ],
)
def test_histogram_quantile(
    q: float, buckets: tuple[tuple[float, float], ...], want: float | None
) -> None:
    got = histogram_quantile(q, buckets)
    assert got == pytest.approx(want) if want is not None else got is None


def test_quantile_from_the_gateways_buckets() -> None:
    s = MetricsSample.parse(gateway_metrics(), at=T0)
    p50 = histogram_quantile(0.5, s.ttft)
    assert p50 is not None and 0.025 <= p50 <= 0.05


def sample(at: float, tin: float, tout: float, ok: float = 0.0) -> MetricsSample:
    return MetricsSample(at=at, tokens_in=tin, tokens_out=tout, requests={"ok": ok})


def test_rates_window_and_counter_reset() -> None:
    tp = Throughput(window_s=10)
    for i, (tin, tout) in enumerate([(0, 0), (10, 100), (30, 300), (5, 50)]):
        tp.add(sample(T0 + 2 * i, tin, tout, ok=float(i)))
    # the last scrape's counters went down: the gateway restarted and counts from zero
    assert tp.tokens_in_series() == [5.0, 10.0, 2.5]
    assert tp.tokens_out_series() == [50.0, 100.0, 25.0]
    assert tp.request_rates(span_s=2)["ok"] == pytest.approx(0.5)
    tp.add(sample(T0 + 14, 5, 50))
    assert [s.at for s in tp.samples] == [T0 + 4, T0 + 6, T0 + 14]  # older than 10 s: gone
    tp.add(sample(T0 + 14, 99, 99))  # not newer: ignored
    assert tp.last is not None and tp.last.tokens_in == 5


def test_latency_is_over_the_window() -> None:
    tp = Throughput()
    b_old = ((0.01, 100.0), (0.1, 100.0), (INF, 100.0))
    b_new = ((0.01, 100.0), (0.1, 110.0), (INF, 110.0))
    tp.add(MetricsSample(at=T0, ttft=b_old))
    assert tp.latency("ttft")[0] == pytest.approx(0.005)  # one scrape: all time
    tp.add(MetricsSample(at=T0 + 1, ttft=b_new))
    p50, _ = tp.latency("ttft")
    assert p50 is not None and 0.01 < p50 <= 0.1  # only the 10 new, slower observations


def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == "▁▂▃▄▅▆▇█"
    assert sparkline([1, 1], 4) == "  ██"
    assert sparkline([], 3) == "   "
    assert sparkline([0, 0], 2) == "▁▁"
    assert len(sparkline(list(range(300)), 20)) == 20


def test_health_from_json() -> None:
    h = Health.from_json(
        {
            "status": "degraded",
            "tee": "sim-sev-snp",
            "engine": {"kind": "command", "state": "restarting", "restarts": 1, "pid": None},
            "key_id": 3,
            "uptime_s": 9.5,
        }
    )
    assert (h.engine_state, h.restarts, h.engine_pid, h.key_id) == ("restarting", 1, None, 3)
    with pytest.raises(ParseError, match="JSON object"):
        Health.from_json([1])


def test_connection_loss_and_return() -> None:
    c = Connection("http://x")
    assert c.ok(T0) is False
    c.lost("ConnectError", T0 + 1)
    c.lost("ConnectError", T0 + 2)
    assert (c.up, c.since, c.failures) == (False, T0 + 1, 2)
    assert c.ok(T0 + 3) is True and c.since == T0 + 3


def _run_failed_at(name: str) -> VerificationRun:
    checks = []
    for n, _ in CHECK_ORDER:
        if n == name:
            checks.append(CheckResult(n, "fail", "boom"))
            break
        checks.append(CheckResult(n, "pass", "ok"))
    return VerificationRun(checks, error=VerificationError(name, "boom", hint="look"))


def test_failed_run_keeps_what_the_bundle_claimed() -> None:
    bundle = {
        "tee": "sim-sev-snp",
        "manifest": {"measurement": "ab" * 48, "recipe": {"name": "r", "version": "1"}},
        "tlog": {"index": 2, "tree_size": 3, "inclusion": ["cd" * 32], "checkpoint": "note"},
        "gpus": [{"vendor": "sim-nvidia", "evidence": "not base64!"}],
        "report": "AAAA",
    }
    a = Attestation.from_run(_run_failed_at("policy"), bundle, min_tcb=None, at=T0)
    assert (a.verdict, a.simulated, a.release, a.log_index, a.tree_size) == (
        "failed",
        True,
        "r 1",
        2,
        3,
    )
    assert a.error == "policy: boom" and a.hint == "look"
    assert a.expected_measurement == "ab" * 48 and a.reported_measurement is None
    assert a.gpus[0].driver == "?" and a.gpus[0].verdict == "not-run"
    assert a.status_of("policy") == "fail" and a.status_of("gpu") == "not-run"
    assert a.unreachable("gone").verdict == "unreachable"


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == [
        ("a.b", "1"),
        ("a.c", "1, 2"),
        ("d", "—"),
    ]


def _cp(size: int, root: bytes) -> tlog.Checkpoint:
    return tlog.Checkpoint(origin="o", size=size, root_hash=root, extensions=(), note="")


LEAF_A, LEAF_B = tlog.leaf_hash(b"a"), tlog.leaf_hash(b"b")
ROOT2 = tlog.node_hash(LEAF_A, LEAF_B)


@pytest.mark.parametrize(
    ("prev", "cp", "proof", "consistent", "detail"),
    [
        (None, _cp(1, LEAF_A), None, None, "first checkpoint seen"),
        (_cp(1, LEAF_A), _cp(1, LEAF_A), None, True, "same as last seen"),
        (_cp(1, LEAF_A), _cp(2, ROOT2), [LEAF_B], True, "consistent with size 1"),
        (_cp(1, LEAF_A), _cp(2, ROOT2), [LEAF_A], False, "INCONSISTENT"),
        (_cp(2, ROOT2), _cp(1, LEAF_A), None, False, "ROLLED BACK"),
        (_cp(1, LEAF_A), _cp(1, LEAF_B), None, False, "FORKED"),
    ],
    ids=["first", "same", "grown", "bad-proof", "rollback", "fork"],
)
def test_assess_checkpoint(
    prev: tlog.Checkpoint | None,
    cp: tlog.Checkpoint,
    proof: list[bytes] | None,
    consistent: bool | None,
    detail: str,
) -> None:
    w = assess_checkpoint(prev, cp, proof, watch=LogWatch(), now=T0)
    assert w.consistent is consistent and detail in w.detail and w.grown_at == T0
    again = assess_checkpoint(prev, cp, proof, watch=w, now=T0 + 5)
    assert again.grown_at == T0  # the age counts from when this size was first seen


def test_views_render_without_a_terminal() -> None:
    st = make_state(simulated=True)
    assert "VERIFIED" in render_attestation(st, T0, 36).plain
    assert "SIMULATED" in render_attestation(st, T0, 36).plain
    assert "✓ match" in render_measurements(st, T0, 36).plain
    assert "CC state established" in render_gpus(st, T0, 36).plain
    assert "restarts 1" in render_throughput(st, T0, 36).plain
    assert "gateway" in render_host(st, T0, 36).plain
    st.connection.lost("ConnectError", T0)
    assert "CONNECTION LOST (ConnectError)" in render_title(st, T0 + 5, 80).plain
    failed = make_state(simulated=False, failed="policy")
    text = render_attestation(failed, T0, 36).plain
    assert "NOT VERIFIED at 5 policy" in text and "µc 84<115" in text


def test_formats() -> None:
    assert [fmt_age(x) for x in (None, 5, 600, 7200, 200000)] == [
        "?",
        "5 s",
        "10 min",
        "2.0 h",
        "2.3 d",
    ]
    assert fmt_bytes(512) == "512 B" and fmt_bytes(3 * 2**30) == "3.0 GiB"
