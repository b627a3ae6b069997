"""Percentiles, hit rates, imbalance and the report formats (bench/replay/report.py)."""

from __future__ import annotations

import pytest

from bench.replay.client import (
    ClientRun,
    LoadSample,
    RequestResult,
    load_sample,
    metric_value,
    parse_prometheus,
)
from bench.replay.fleet import Policy
from bench.replay.report import (
    Latency,
    cpu_bound,
    imbalance,
    markdown_table,
    mean_in_flight,
    percentile,
    summarize_run,
)

METRICS = """\
# HELP input_tokens_total Prompt tokens served.
# TYPE input_tokens_total counter
input_tokens_total 400.0
kv_cache_best_prefix_tokens_total 200.0
worker_in_flight_tokens{dp_rank="0",worker="http://a"} 30.0
worker_in_flight_tokens{dp_rank="0",worker="http://b"} 10.0
worker_requests{dp_rank="0",phase="prefill",worker="http://a"} 1.0
worker_requests{dp_rank="0",phase="decode",worker="http://a"} 2.0
"""


def test_percentile_and_latency() -> None:
    assert percentile([], 50) is None
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(101)), 90) == 90
    lat = Latency.of([0.1, 0.2, 0.3], factor=0.5)  # wall s -> simulated ms
    assert lat.p50 == pytest.approx(100.0)
    assert lat.mean == pytest.approx(100.0)
    assert Latency.of([], 1.0).p90 is None


def test_imbalance() -> None:
    assert imbalance([10, 10, 10]) == 1.0
    assert imbalance([30, 0, 0]) == 3.0
    assert imbalance([]) is None
    assert imbalance([0, 0]) is None


def test_prometheus_parsing() -> None:
    samples = parse_prometheus(METRICS)
    assert metric_value(samples, "input_tokens") == 400.0
    assert metric_value(samples, "worker_requests", worker="http://a") == 3.0
    assert metric_value(samples, "missing") is None
    s = load_sample(1.0, METRICS)
    assert s.in_flight_tokens == {"http://a": 30.0, "http://b": 10.0}
    assert s.requests == {"http://a": 3.0}


def test_policy_specs() -> None:
    p = Policy.parse("kv_aware:w=2,t=0.1")
    assert (p.name, p.overlap_weight, p.temperature) == ("kv_aware", 2.0, 0.1)
    assert p.label == "kv_aware(w=2,t=0.1)"
    assert Policy.parse("kv_aware").label == "kv_aware(w=1,t=0)"
    assert Policy.parse("round_robin").overlap_weight is None
    with pytest.raises(ValueError):
        Policy.parse("round_robin:w=1")
    with pytest.raises(ValueError):
        Policy.parse("kv_aware:x=1")


def _result(i: int, worker: str, ttft: float, cached: int, outcome: str = "ok") -> RequestResult:
    r = RequestResult(i, scheduled_s=float(i), input_length=100, max_tokens=3)
    r.outcome = outcome
    if outcome != "ok":
        r.error = "boom"
        return r
    r.sent_s = r.scheduled_s + 0.001
    r.first_token_s = r.scheduled_s + ttft
    r.token_times = [r.first_token_s, r.first_token_s + 0.01, r.first_token_s + 0.03]
    r.end_s = r.token_times[-1]
    r.prompt_tokens, r.cached_tokens, r.completion_tokens = 100, cached, 3
    r.worker, r.overlap_blocks, r.prompt_blocks = worker, cached // 16, 6
    return r


def test_summarize_run() -> None:
    results = [
        _result(0, "http://a", 0.1, 0),
        _result(1, "http://a", 0.2, 96),
        _result(2, "http://b", 0.3, 0),
        _result(3, "http://b", 0.0, 0, outcome="error"),
        _result(4, "http://b", 0.0, 0, outcome="shed"),
    ]
    samples = [
        LoadSample(0.0, {"http://a": 10.0, "http://b": 30.0}, {}),
        LoadSample(1.0, {"http://a": 10.0, "http://b": 10.0}, {}),
    ]
    run = ClientRun(results, samples, wall_s=5.0, final_metrics=METRICS)
    s = summarize_run(
        run,
        label="x",
        policy="kv_aware",
        overlap_weight=1.0,
        temperature=0.0,
        offered_rate=1.0,
        speedup=2.0,
        block_size=16,
        ideal_hit_rate=0.5,
        engine_stats=[
            {"lag_s": 0.0, "num_preemptions": 1, "simulated_s": 5.0},
            {"lag_s": 0.01, "num_preemptions": 0, "simulated_s": 2.5},
        ],
    )
    assert (s.requests, s.ok, s.errors, s.shed) == (5, 3, 1, 1)
    assert s.error_rate == pytest.approx(0.2) and s.shed_rate == pytest.approx(0.2)
    assert s.ttft.p50 == pytest.approx(400.0)  # 0.2 wall s x speedup 2 = 400 simulated ms
    assert s.itl.p50 == pytest.approx(30.0)  # gaps 10 and 20 ms wall -> 20, 40 simulated
    assert s.tpot.mean == pytest.approx(30.0)
    assert s.hit_rate == pytest.approx(96 / 300)
    assert s.best_prefix_hit_rate == pytest.approx(0.5)  # router counters: 200 / 400
    assert s.hit_efficiency == pytest.approx(96 / 300 / 0.5)
    assert s.predicted_hit_rate == pytest.approx(96 / 300)
    assert s.imbalance_requests == pytest.approx(2 / 1.5)
    # work = uncached prompt + output: a = 100 + 4 + 6 = 110, b = 100 + 3 = 103
    assert s.imbalance_work == pytest.approx(110 / 106.5)
    assert mean_in_flight(samples) == {"http://a": 10.0, "http://b": 20.0}
    assert s.imbalance_in_flight == pytest.approx(20 / 15)
    # Throughput over simulated time: first arrival 0 -> last end 2.33 wall s, x2.
    assert s.throughput_rps == pytest.approx(3 / (2.33 * 2))
    # Engine totals: busy = simulated busy s / (wall 5 s x speedup 2).
    assert (s.preemptions, s.gpu_busy_mean, s.gpu_busy_max) == (1, 0.375, 0.5)
    assert s.engine_lag_s == pytest.approx(0.01)
    assert not cpu_bound(s)
    s.client_lag_p99_ms = 20.0  # x speedup 2 = 40 simulated ms late: the CPU limited it
    assert cpu_bound(s)
    table = markdown_table([s])
    assert table.count("\n") == 3 and "| x |" in table
    assert s.to_dict()["ttft"]["p50"] == pytest.approx(400.0)


def test_cli_workload_options() -> None:
    """CLI options -> the scaled workload (no servers started)."""
    from bench.replay.cli import build_parser, load_workload, scaled_num_blocks

    args = build_parser().parse_args(
        [
            "run",
            "--synthetic",
            "shared_prefix",
            "--synthetic-requests",
            "50",
            "--synthetic-arg",
            "n_prefixes=3",
            "--synthetic-arg",
            "output=8,16",
            "--rate",
            "25",
        ]
    )
    work, meta = load_workload(args)
    assert len(work.requests) == 50 and work.block_tokens == 64  # 512 / --length-scale 8
    assert work.mean_rate == pytest.approx(25.0)
    assert len({r.hash_ids[:8] for r in work.requests}) <= 3
    assert all(1 <= r.output_length <= 2 for r in work.requests)  # (8..16) / --output-scale 8
    assert meta["source"] == "synthetic:shared_prefix n_prefixes=3 output=8,16"
    # The profile's KV capacity shrinks with the prompts (tokens / length scale / block size).
    from bisllm_workers.mocker.timing import get_profile

    capacity = get_profile("h100-llama3-8b").kv_capacity_tokens
    assert scaled_num_blocks("h100-llama3-8b", 8, 16) == capacity // 8 // 16
