"""Per-run summaries (percentiles, hit rates, imbalance) and the markdown/JSON reports.

Latencies and rates are reported in **simulated** time: the mocker runs its GPU
model ``speedup`` times faster than real time (or slower, for ``speedup`` < 1), so
a wall-clock interval ``w`` stands for ``w x speedup`` seconds on the simulated
hardware. The wall-clock figures are kept beside them (``wall``) so CPU-side
overhead on the benchmark machine stays visible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from bench.replay.client import ClientRun, LoadSample, RequestResult, metric_value, parse_prometheus


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float | None:
    """The q-th percentile (0-100, linear interpolation, as numpy); None when empty."""
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def imbalance(values: Iterable[float]) -> float | None:
    """max / mean over workers: 1.0 is perfectly even, N means one worker did everything."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0 or arr.mean() <= 0:
        return None
    return float(arr.max() / arr.mean())


@dataclass(slots=True)
class Latency:
    """Percentiles of one latency, in simulated milliseconds."""

    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None

    @classmethod
    def of(cls, seconds: Sequence[float], factor: float) -> Latency:
        """From wall seconds; ``factor`` converts to simulated seconds (the speedup)."""
        if len(seconds) == 0:
            return cls()
        ms = np.asarray(seconds, dtype=np.float64) * factor * 1000.0
        return cls(percentile(ms, 50), percentile(ms, 90), percentile(ms, 99), float(ms.mean()))


@dataclass(slots=True)
class WorkerStats:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    mean_in_flight_tokens: float = 0.0

    @property
    def work_tokens(self) -> int:
        """Tokens this worker computed: uncached prompt + generated."""
        return self.prompt_tokens - self.cached_tokens + self.output_tokens


@dataclass(slots=True)
class RunSummary:
    """Everything the report says about one run (one policy, one rate)."""

    label: str
    policy: str
    overlap_weight: float | None
    temperature: float | None
    offered_rate: float  # simulated req/s the workload asked for
    speedup: float
    requests: int
    ok: int
    errors: int
    shed: int
    timeouts: int
    error_rate: float
    shed_rate: float
    ttft: Latency
    itl: Latency  # gaps between streamed tokens
    tpot: Latency  # per request: (end - first token) / (output tokens - 1)
    e2e: Latency
    throughput_rps: float  # completed requests per simulated second
    output_tps: float  # generated tokens per simulated second
    hit_rate: float | None  # engine: sum cached_tokens / sum prompt_tokens
    best_prefix_hit_rate: float | None  # router index: best overlap at routing / prompt tokens
    hit_efficiency: float | None  # hit_rate / best_prefix_hit_rate
    predicted_hit_rate: float | None  # router's credited overlap on the chosen worker (headers)
    ideal_hit_rate: float | None  # one infinite cache (workload property)
    imbalance_requests: float | None  # max/mean requests per worker
    imbalance_work: float | None  # max/mean uncached-prompt + output tokens per worker
    imbalance_in_flight: float | None  # max/mean of time-averaged in-flight tokens per worker
    wall_s: float
    client_lag_p99_ms: float | None  # wall: how late the client sent (CPU saturation signal)
    # From the mocker's /bisllm/mocker/stats (None for other engines):
    engine_lag_s: float | None = None  # wall s the simulated engines ran behind (CPU-bound)
    preemptions: int | None = None  # requests preempted for lack of KV blocks (all workers)
    # Simulated step time / run span, mean over workers: the share of time a step was in
    # flight, like nvidia-smi's utilization. Near 100% even at low batch (every running
    # request makes the engine step), so it is not a saturation measure; TTFT is.
    gpu_busy_mean: float | None = None
    gpu_busy_max: float | None = None
    workers: dict[str, dict[str, float]] = field(default_factory=dict)
    errors_sample: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSummary:
        """Inverse of :meth:`to_dict` (to re-render or compare saved reports)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for key in ("ttft", "itl", "tpot", "e2e"):
            kw[key] = Latency(**kw[key])
        return cls(**kw)


def summarize_run(
    run: ClientRun,
    *,
    label: str,
    policy: str,
    overlap_weight: float | None,
    temperature: float | None,
    offered_rate: float,
    speedup: float,
    block_size: int,
    ideal_hit_rate: float | None = None,
    engine_stats: Sequence[dict[str, Any]] | None = None,
) -> RunSummary:
    """Reduce a client run to its :class:`RunSummary` (simulated time, see module doc)."""
    res = run.results
    ok = [r for r in res if r.outcome == "ok"]
    n = len(res)
    count = {o: sum(1 for r in res if r.outcome == o) for o in ("error", "shed", "timeout")}
    ttft = [t for r in ok if (t := r.ttft_s) is not None]
    e2e = [t for r in ok if (t := r.e2e_s) is not None]
    itl = [g for r in ok for g in r.itls()]
    tpot = [
        (r.end_s - r.first_token_s) / (r.completion_tokens - 1)
        for r in ok
        if r.end_s is not None
        and r.first_token_s is not None
        and r.completion_tokens is not None
        and r.completion_tokens > 1
    ]

    prompt = sum(r.prompt_tokens or 0 for r in ok if r.cached_tokens is not None)
    cached = sum(r.cached_tokens or 0 for r in ok if r.cached_tokens is not None)
    hit = cached / prompt if prompt else None
    predicted_num = sum(
        (r.overlap_blocks or 0) * block_size for r in ok if r.overlap_blocks is not None
    )
    predicted_den = sum(r.prompt_tokens or 0 for r in ok if r.overlap_blocks is not None)
    predicted = predicted_num / predicted_den if predicted_den else None

    # The best-prefix bound comes from the router's counters (headers carry only the
    # chosen worker's overlap). The fleet is fresh per run, so totals are this run's.
    samples = parse_prometheus(run.final_metrics) if run.final_metrics else []
    best_tokens = metric_value(samples, "kv_cache_best_prefix_tokens")
    router_input = metric_value(samples, "input_tokens")
    best = best_tokens / router_input if best_tokens is not None and router_input else None
    efficiency = hit / best if hit is not None and best else None

    workers: dict[str, WorkerStats] = {}
    for r in ok:
        w = workers.setdefault(r.worker or "?", WorkerStats())
        w.requests += 1
        w.prompt_tokens += r.prompt_tokens or 0
        w.cached_tokens += r.cached_tokens or 0
        w.output_tokens += r.completion_tokens or 0
    mean_load = mean_in_flight(run.samples)
    for url, load in mean_load.items():
        workers.setdefault(url, WorkerStats()).mean_in_flight_tokens = load

    last_end = max((r.end_s for r in ok if r.end_s is not None), default=0.0)
    first = min((r.scheduled_s for r in res), default=0.0)
    span_sim = (last_end - first) * speedup
    out_tokens = sum(r.completion_tokens or 0 for r in ok)
    lag = [(r.sent_s - r.scheduled_s) * 1000 for r in res if r.sent_s is not None]
    engine = _engine_totals(engine_stats, run.wall_s * speedup)
    return RunSummary(
        label=label,
        policy=policy,
        overlap_weight=overlap_weight,
        temperature=temperature,
        offered_rate=offered_rate,
        speedup=speedup,
        requests=n,
        ok=len(ok),
        errors=count["error"] + count["timeout"],
        shed=count["shed"],
        timeouts=count["timeout"],
        error_rate=(count["error"] + count["timeout"]) / n if n else 0.0,
        shed_rate=count["shed"] / n if n else 0.0,
        ttft=Latency.of(ttft, speedup),
        itl=Latency.of(itl, speedup),
        tpot=Latency.of(tpot, speedup),
        e2e=Latency.of(e2e, speedup),
        throughput_rps=len(ok) / span_sim if span_sim > 0 else 0.0,
        output_tps=out_tokens / span_sim if span_sim > 0 else 0.0,
        hit_rate=hit,
        best_prefix_hit_rate=best,
        hit_efficiency=efficiency,
        predicted_hit_rate=predicted,
        ideal_hit_rate=ideal_hit_rate,
        imbalance_requests=imbalance(w.requests for w in workers.values()),
        imbalance_work=imbalance(w.work_tokens for w in workers.values()),
        imbalance_in_flight=imbalance(mean_load.values()) if mean_load else None,
        wall_s=run.wall_s,
        client_lag_p99_ms=percentile(lag, 99),
        workers={
            url: {**asdict(w), "work_tokens": w.work_tokens} for url, w in sorted(workers.items())
        },
        errors_sample=[f"#{r.index}: {r.error}" for r in res if r.error][:10],
        engine_lag_s=engine.lag_s,
        preemptions=engine.preemptions,
        gpu_busy_mean=engine.busy_mean,
        gpu_busy_max=engine.busy_max,
    )


@dataclass(slots=True)
class _EngineTotals:
    lag_s: float | None = None
    preemptions: int | None = None
    busy_mean: float | None = None
    busy_max: float | None = None


def _engine_totals(stats: Sequence[dict[str, Any]] | None, span_sim_s: float) -> _EngineTotals:
    """Fleet totals of the mocker's per-worker stats: how far its clock slipped behind
    (a CPU-bound run), preemptions, and how busy the simulated GPUs were."""
    if not stats:
        return _EngineTotals()
    busy = [float(s.get("simulated_s", 0.0)) / span_sim_s for s in stats if span_sim_s > 0]
    return _EngineTotals(
        lag_s=sum(float(s.get("lag_s", 0.0)) for s in stats),
        preemptions=sum(int(s.get("num_preemptions", 0)) for s in stats),
        busy_mean=float(np.mean(busy)) if busy else None,
        busy_max=max(busy) if busy else None,
    )


#: A run whose client sent requests this late (p99, simulated ms) was limited by the
#: benchmark machine's CPU rather than the simulated GPUs.
CPU_LAG_WARN_SIM_MS = 10.0
#: Likewise if the mocker's engines ran behind their simulated clock for more than this
#: fraction of the run (summed over workers / workers).
ENGINE_LAG_WARN_FRACTION = 0.01


def cpu_bound(s: RunSummary) -> bool:
    """True if the benchmark machine, not the simulated GPUs, limited this run: its
    latencies then include CPU queueing the simulated hardware would not have."""
    if s.client_lag_p99_ms is not None and s.client_lag_p99_ms * s.speedup > CPU_LAG_WARN_SIM_MS:
        return True
    workers = max(1, len(s.workers))
    return (s.engine_lag_s or 0.0) / workers > ENGINE_LAG_WARN_FRACTION * s.wall_s


def mean_in_flight(samples: Sequence[LoadSample]) -> dict[str, float]:
    """Time-averaged in-flight tokens per worker over the scrapes (equal weights:
    scrapes are evenly spaced)."""
    if not samples:
        return {}
    workers = sorted({w for s in samples for w in s.in_flight_tokens})
    return {w: float(np.mean([s.in_flight_tokens.get(w, 0.0) for s in samples])) for w in workers}


def _fmt(v: float | None, spec: str = ".0f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def markdown_table(summaries: Sequence[RunSummary]) -> str:
    """One row per run: the comparison table of the report (latencies in simulated ms)."""
    head = (
        "| run | rate (req/s) | TTFT p50 | TTFT p90 | TTFT p99 | ITL p50 | E2E p90 | "
        "out tok/s | hit rate | best-prefix | hit/best | "
        "imbalance (req / work / in-flight) | errors | shed |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for s in summaries:
        rows.append(
            f"| {s.label} | {_fmt(s.offered_rate, '.1f')} | {_fmt(s.ttft.p50)} | "
            f"{_fmt(s.ttft.p90)} | {_fmt(s.ttft.p99)} | {_fmt(s.itl.p50, '.1f')} | "
            f"{_fmt(s.e2e.p90)} | {_fmt(s.output_tps)} | {_pct(s.hit_rate)} | "
            f"{_pct(s.best_prefix_hit_rate)} | {_fmt(s.hit_efficiency, '.2f')} | "
            f"{_fmt(s.imbalance_requests, '.2f')} / {_fmt(s.imbalance_work, '.2f')} / "
            f"{_fmt(s.imbalance_in_flight, '.2f')} | {s.errors} | {s.shed} |"
        )
    return head + "\n".join(rows) + "\n"


def result_rows(results: Sequence[RequestResult], speedup: float) -> list[dict[str, Any]]:
    """Per-request rows for the JSON report (simulated ms), small enough to keep."""
    rows = []
    for r in results:
        ttft, e2e = r.ttft_s, r.e2e_s
        rows.append(
            {
                "i": r.index,
                "arrival_ms": round(r.scheduled_s * speedup * 1000, 3),
                "outcome": r.outcome,
                "ttft_ms": None if ttft is None else round(ttft * speedup * 1000, 3),
                "e2e_ms": None if e2e is None else round(e2e * speedup * 1000, 3),
                "prompt_tokens": r.prompt_tokens,
                "cached_tokens": r.cached_tokens,
                "completion_tokens": r.completion_tokens,
                "worker": r.worker,
                "overlap_blocks": r.overlap_blocks,
                "prompt_blocks": r.prompt_blocks,
            }
        )
    return rows
