"""Router metrics (prometheus_client), named as BIS-LLM names them.

Hit-rate definitions (all ratios of prompt tokens, over a sliding window of recent
requests so a dashboard sees the current behaviour, with monotonic counters beside
them for PromQL ``rate()``):

- ``kv_cache_hit_rate``: tokens the engines actually served from cache
  (``usage.prompt_tokens_details.cached_tokens``) / prompt tokens.
- ``kv_cache_best_prefix_hit_rate``: the best overlap any worker held in the
  router's index at routing time / prompt tokens — the bound a perfect router
  could reach with the caches as they were.
- ``kv_cache_hit_rate_efficiency``: hit rate / best-prefix hit rate (1.0 = the
  router turned every reusable prefix into a real cache hit).
- ``kv_cache_hit_rate_skew``: predicted hit rate of the chosen worker minus the
  actual hit rate; > 0 means the index over-predicts (stale entries, lagging
  events), < 0 that it under-predicts (missing events, approximate workers).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from bisllm.router.registry import WorkerRegistry

_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
_TPS_BUCKETS = (1, 5, 10, 20, 40, 60, 80, 100, 150, 200, 300, 500, 1000)
_LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2)


@dataclass(slots=True)
class _Sample:
    prompt_tokens: int
    cached_tokens: int  # engine-reported
    predicted_tokens: int  # router's overlap on the chosen worker
    best_tokens: int  # router's best overlap over all workers


class RouterMetrics:
    """All router metrics in one registry (so tests and many routers per process don't clash)."""

    def __init__(self, window: int = 1000) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.concurrent_requests = Gauge(
            "concurrent_requests", "Requests the router is serving now.", registry=r
        )
        self.requests = Counter(
            "requests",
            "Requests finished, by endpoint and outcome.",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.input_tokens = Counter("input_tokens", "Prompt tokens served.", registry=r)
        self.output_tokens = Counter("output_tokens", "Generated tokens served.", registry=r)
        self.cached_tokens = Counter(
            "kv_cache_hit_tokens", "Prompt tokens the engines served from cache.", registry=r
        )
        self.best_prefix_tokens = Counter(
            "kv_cache_best_prefix_tokens",
            "Prompt tokens the best worker held in the router's index at routing time.",
            registry=r,
        )
        self.input_tokens_per_request = Histogram(
            "input_tokens_per_request",
            "Prompt tokens per request.",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.output_tokens_per_request = Histogram(
            "output_tokens_per_request",
            "Generated tokens per request.",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.tps_per_request = Histogram(
            "tps_per_request",
            "Decode speed per request: generated tokens / (end - first token), tokens/s.",
            buckets=_TPS_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "time_to_first_token_seconds",
            "Router-observed time to first streamed token.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.kv_cache_hit_rate = Gauge(
            "kv_cache_hit_rate", "Engine-reported cached / prompt tokens (window).", registry=r
        )
        self.kv_cache_best_prefix_hit_rate = Gauge(
            "kv_cache_best_prefix_hit_rate",
            "Best overlap in the router's index / prompt tokens (window).",
            registry=r,
        )
        self.kv_cache_hit_rate_efficiency = Gauge(
            "kv_cache_hit_rate_efficiency", "hit rate / best-prefix hit rate (window).", registry=r
        )
        self.kv_cache_hit_rate_skew = Gauge(
            "kv_cache_hit_rate_skew",
            "Predicted hit rate of the chosen worker minus the actual hit rate (window).",
            registry=r,
        )
        self.routing_seconds = Histogram(
            "routing_decision_seconds",
            "Time in core.route (hash, match, score, book).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokenize_seconds = Histogram(
            "tokenize_seconds",
            "Time to tokenize a request for routing.",
            buckets=(*_LATENCY_BUCKETS, 0.1, 0.5),
            registry=r,
        )
        self.retries = Counter(
            "upstream_retries",
            "Requests re-routed after a worker failed before the first byte.",
            registry=r,
        )
        self._window: deque[_Sample] = deque(maxlen=window)
        # Running sums over the window: O(1) per request on the hot path.
        self._sums = [0, 0, 0, 0]

    def observe_cache(
        self, prompt_tokens: int, cached_tokens: int, predicted_tokens: int, best_tokens: int
    ) -> None:
        """Record one finished request's real and predicted cache reuse."""
        self.cached_tokens.inc(cached_tokens)
        self.best_prefix_tokens.inc(best_tokens)
        sums = self._sums
        if len(self._window) == self._window.maxlen:
            old = self._window[0]
            sums[0] -= old.prompt_tokens
            sums[1] -= old.cached_tokens
            sums[2] -= old.predicted_tokens
            sums[3] -= old.best_tokens
        self._window.append(_Sample(prompt_tokens, cached_tokens, predicted_tokens, best_tokens))
        sums[0] += prompt_tokens
        sums[1] += cached_tokens
        sums[2] += predicted_tokens
        sums[3] += best_tokens
        prompt = sums[0]
        if prompt == 0:
            return
        hit = sums[1] / prompt
        best = sums[3] / prompt
        self.kv_cache_hit_rate.set(hit)
        self.kv_cache_best_prefix_hit_rate.set(best)
        self.kv_cache_hit_rate_efficiency.set(hit / best if best > 0 else 1.0)
        self.kv_cache_hit_rate_skew.set(sums[2] / prompt - hit)


class StateCollector(Collector):
    """Metrics read from live state at scrape time: workers, their events and their load.

    Reading at scrape time keeps the hot paths (event ingest, routing) free of metric
    updates, and the numbers can never drift from the state they describe.
    """

    def __init__(self, registry: WorkerRegistry) -> None:
        self.workers = registry

    def collect(self) -> Iterator[Metric]:
        from bisllm.router.events import IndexState
        from bisllm.router.registry import WorkerStatus

        workers = list(self.workers.workers.values())
        status = GaugeMetricFamily(
            "replica_count_by_status", "Workers by status.", labels=["status"]
        )
        for st in WorkerStatus:
            status.add_metric([st.value], sum(1 for w in workers if w.status == st))
        yield status

        state = GaugeMetricFamily(
            "kv_index_state",
            "1 for each worker's current index state (exact, degraded, approximate).",
            labels=["worker", "state"],
        )
        batches = CounterMetricFamily(
            "kv_events_batches_applied", "KV event batches applied.", labels=["worker"]
        )
        invalid = CounterMetricFamily(
            "kv_events_invalid", "KV event messages rejected as malformed.", labels=["worker"]
        )
        gaps = CounterMetricFamily(
            "kv_events_gaps", "Sequence gaps in KV event streams.", labels=["worker"]
        )
        replays = CounterMetricFamily(
            "kv_events_replays", "Replays after a gap, by result.", labels=["worker", "result"]
        )
        for w in workers:
            label = w.url
            for index_state in IndexState:
                value = 1.0 if w.index_state == index_state else 0.0
                state.add_metric([label, index_state.value], value)
            if w.subscriber is not None:
                stats = w.subscriber.stats
                batches.add_metric([label], stats.batches)
                invalid.add_metric([label], stats.invalid)
                gaps.add_metric([label], stats.gaps)
                replays.add_metric([label, "ok"], stats.replays_ok)
                replays.add_metric([label, "failed"], stats.replays_failed)
        yield from (state, batches, invalid, gaps, replays)

        core = self.workers.cores.core
        if core is None:
            return
        urls = {w.worker_id: w.url for w in workers}
        tokens = GaugeMetricFamily(
            "worker_in_flight_tokens",
            "Uncached prefill + decode tokens booked per worker (the autoscaling signal).",
            labels=["worker", "dp_rank"],
        )
        requests = GaugeMetricFamily(
            "worker_requests",
            "Requests booked per worker and phase.",
            labels=["worker", "dp_rank", "phase"],
        )
        indexed = GaugeMetricFamily(
            "worker_indexed_blocks",
            "Prefix-index entries per worker.",
            labels=["worker", "dp_rank"],
        )
        for load in core.loads():
            labels = [urls.get(load.worker_id, str(load.worker_id)), str(load.dp_rank)]
            tokens.add_metric(labels, load.in_flight_tokens)
            requests.add_metric([*labels, "prefill"], load.prefill_requests)
            requests.add_metric([*labels, "decode"], load.decode_requests)
            indexed.add_metric(labels, load.indexed_blocks)
        yield from (tokens, requests, indexed)
        yield GaugeMetricFamily(
            "in_flight_tokens", "In-flight tokens over all workers.", value=core.in_flight_tokens()
        )
        yield GaugeMetricFamily(
            "kv_index_entries",
            "(block, worker) entries in the prefix index.",
            value=core.index_size(),
        )
