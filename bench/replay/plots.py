"""PNG plots of a comparison or a sweep (matplotlib, headless Agg backend).

- ``ttft_cdf.png``: TTFT distribution per policy (CDF, log x): the whole tail, not
  just three percentiles.
- ``hit_rate.png``: actual hit rate next to the router's best-prefix bound and the
  single-infinite-cache ideal, per policy.
- ``load_over_time.png``: per-worker in-flight tokens over time, one panel per
  policy: imbalance and hot spots show as one line far above the others.
- ``sweep_ttft.png``: TTFT p90 against offered rate per policy: where each saturates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from bench.replay.client import LoadSample
from bench.replay.report import RunSummary


def ttft_cdf(ttfts_ms: Mapping[str, Sequence[float]], path: Path, title: str) -> None:
    """CDF of TTFT (simulated ms) per run label."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, values in ttfts_ms.items():
        if not values:
            continue
        xs = np.sort(np.asarray(values, dtype=np.float64))
        ys = np.arange(1, len(xs) + 1) / len(xs)
        ax.step(xs, ys, where="post", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (simulated ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.axhline(0.9, color="grey", lw=0.5, ls="--")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def hit_rate_plot(summaries: Sequence[RunSummary], path: Path, title: str) -> None:
    """Grouped bars: actual vs best-prefix bound per run (ideal as a line)."""
    labels = [s.label for s in summaries]
    x = np.arange(len(labels))
    actual = [s.hit_rate or 0.0 for s in summaries]
    best = [s.best_prefix_hit_rate or 0.0 for s in summaries]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels)), 4.5))
    ax.bar(x - 0.2, actual, 0.4, label="actual (engine cached_tokens)")
    ax.bar(x + 0.2, best, 0.4, label="best prefix in router index")
    ideal = next((s.ideal_hit_rate for s in summaries if s.ideal_hit_rate is not None), None)
    if ideal is not None:
        ax.axhline(ideal, color="black", ls="--", lw=1, label="one infinite cache")
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("prompt-token hit rate")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_over_time(
    runs: Mapping[str, Sequence[LoadSample]], speedup: float, path: Path, title: str
) -> None:
    """One panel per run: in-flight tokens per worker over simulated time."""
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        return
    cols = min(2, len(runs))
    rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 3 * rows), squeeze=False, sharey=True)
    for ax, (label, samples) in zip(axes.flat, runs.items(), strict=False):
        workers = sorted({w for s in samples for w in s.in_flight_tokens})
        t = np.array([s.t_s * speedup for s in samples])
        for i, w in enumerate(workers):
            ys = [s.in_flight_tokens.get(w, 0.0) for s in samples]
            ax.plot(t, ys, lw=0.8, label=f"w{i}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("simulated s")
        ax.set_ylabel("in-flight tokens")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(runs) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sweep(summaries: Sequence[RunSummary], path: Path, title: str) -> None:
    """TTFT p90 vs offered rate per policy (log y), plus hit rate vs rate."""
    by_policy: dict[str, list[RunSummary]] = {}
    for s in summaries:
        by_policy.setdefault(s.label.split(" @")[0], []).append(s)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for label, runs in by_policy.items():
        runs = sorted(runs, key=lambda s: s.offered_rate)
        rates = [s.offered_rate for s in runs]
        ax.plot(rates, [s.ttft.p90 or math.nan for s in runs], marker="o", label=label)
        ax2.plot(rates, [s.hit_rate or math.nan for s in runs], marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (req/s, simulated)")
    ax.set_ylabel("TTFT p90 (simulated ms, log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("TTFT p90 vs load")
    ax2.set_xlabel("offered rate (req/s, simulated)")
    ax2.set_ylabel("actual prompt-token hit rate")
    ax2.set_ylim(0, 1)
    ax2.grid(True, alpha=0.3)
    ax2.set_title("cache hit rate vs load")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
