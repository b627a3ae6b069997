"""``python -m bench.replay``: replay a trace through the router to a mocker fleet.

Three modes share one set of workload and fleet options:

- ``run``: one policy, one rate.
- ``compare``: several policies on identical traffic (same requests, same token
  ids, same router seed), each on a fresh fleet so caches start cold.
- ``sweep``: ``compare`` at several offered rates, light to overload: where each
  policy saturates.

Each writes ``report.json``, ``report.md`` and PNG plots under ``--out`` (default
``bench/results/<mode>-<workload>-<time>/``); the JSON is rewritten after every
run, so an interrupted sweep keeps what it measured.

Time: the workload's clock is *simulated* seconds. The mocker runs its GPU model
at ``--speedup`` x real time, and the client sends arrival ``a`` at wall time
``a / speedup``; reported latencies are wall x speedup. A speedup below 1 slows
the simulated GPUs down so that they, not the Python processes sharing the
benchmark machine's cores, are the bottleneck (see bench/results/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.replay import plots
from bench.replay.client import ClientConfig, ClientRun, LoadSample, RequestResult, replay
from bench.replay.fleet import (
    REPO,
    FleetConfig,
    Policy,
    fleet,
    http_get,
    install_signal_handlers,
    vocab_size,
)
from bench.replay.report import (
    CPU_LAG_WARN_SIM_MS,
    RunSummary,
    cpu_bound,
    markdown_table,
    result_rows,
    summarize_run,
)
from bench.replay.synthetic import GENERATORS
from bench.replay.trace import (
    BlockExpander,
    Workload,
    load_trace,
    scale,
    select,
    summarize,
    with_rate,
)

DEFAULT_TRACE = REPO.parent / "shared" / "traces" / "mooncake_synthetic_trace.jsonl"
DEFAULT_POLICIES = (
    "kv_aware:w=1,t=0",
    "kv_aware:w=2,t=0",
    "kv_aware:w=4,t=0",
    "kv_aware:w=8,t=0",
    "kv_aware:w=4,t=0.1",
    "round_robin",
    "least_tokens",
    "power_of_two",
)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="mode", required=True)
    modes = {
        "run": "replay once with one policy",
        "compare": "replay the same traffic under several policies",
        "sweep": "compare at several offered rates (light to overload)",
    }
    for mode, help_text in modes.items():
        sp = sub.add_parser(mode, help=help_text, description=help_text)
        _workload_args(sp)
        _fleet_args(sp)
        if mode == "run":
            sp.add_argument("--policy", default="kv_aware", help="router policy (default kv_aware)")
            sp.add_argument("--overlap-weight", type=float, default=None)
            sp.add_argument("--temperature", type=float, default=None)
        else:
            sp.add_argument(
                "--policies",
                nargs="+",
                default=list(DEFAULT_POLICIES),
                metavar="SPEC",
                help="policies to compare: NAME or kv_aware:w=W,t=T "
                f"(default: {' '.join(DEFAULT_POLICIES)})",
            )
        if mode == "sweep":
            sp.add_argument(
                "--rates",
                type=_floats,
                required=True,
                help="comma-separated offered rates (simulated req/s), e.g. 100,200,400",
            )
        _output_args(sp)
    return p


def _workload_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload")
    src = g.add_mutually_exclusive_group()
    src.add_argument(
        "--trace",
        type=Path,
        default=None,
        help=f"Mooncake-format JSONL trace (default: {DEFAULT_TRACE})",
    )
    src.add_argument(
        "--synthetic",
        choices=sorted(GENERATORS),
        default=None,
        help="generate a synthetic workload instead of replaying a trace",
    )
    g.add_argument(
        "--synthetic-requests", type=int, default=500, help="requests to generate (synthetic)"
    )
    g.add_argument(
        "--synthetic-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="generator keyword (repeatable), e.g. n_prefixes=64 or output=64,256; see "
        "bench/replay/synthetic.py",
    )
    g.add_argument(
        "--rate",
        type=float,
        default=None,
        help="mean arrival rate in simulated req/s (default: the trace's own rate, "
        "x --rate-multiplier)",
    )
    g.add_argument(
        "--rate-multiplier",
        type=float,
        default=1.0,
        help="divide arrival times by this (ignored with --rate)",
    )
    g.add_argument(
        "--length-scale",
        type=int,
        default=8,
        help="divide prompt lengths and the 512-token block by this (default 8: a trace "
        "block becomes 64 tokens, 4 KV blocks; with --output-scale 8 the prefill/decode "
        "work ratio of the trace is kept)",
    )
    g.add_argument(
        "--output-scale",
        type=float,
        default=8.0,
        help="divide output lengths by this (default 8)",
    )
    g.add_argument("--max-output-tokens", type=int, default=256, help="cap on max_tokens")
    g.add_argument(
        "--max-input-tokens",
        type=int,
        default=None,
        help="truncate prompts to this many tokens (default: max model len - max output)",
    )
    g.add_argument(
        "--start", type=float, default=0.0, help="skip trace arrivals before this (trace s)"
    )
    g.add_argument(
        "--duration", type=float, default=None, help="keep arrivals within this span (trace s)"
    )
    g.add_argument("--max-requests", type=int, default=None, help="keep at most this many")
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds token expansion, synthetic workloads and the router (same seed: same run)",
    )


def _fleet_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fleet")
    g.add_argument("--workers", type=int, default=8, help="mock workers (default 8)")
    g.add_argument("--profile", default="h100-llama3-8b", help="mocker timing profile")
    g.add_argument(
        "--speedup",
        type=float,
        default=1.0,
        help="mocker --speedup: simulated seconds per wall second (< 1 slows the simulated "
        "GPUs so the CPU is not the bottleneck)",
    )
    g.add_argument(
        "--wall-rate",
        type=float,
        default=None,
        help="instead of --speedup: pick each run's speedup so the client sends this many "
        "req/s of wall time whatever the simulated rate (keeps the CPU load of every run "
        "of a sweep the same)",
    )
    g.add_argument("--block-size", type=int, default=16, help="KV block size in tokens")
    g.add_argument("--num-blocks", type=int, default=None, help="KV capacity per worker in blocks")
    g.add_argument(
        "--max-model-len",
        type=int,
        default=16384,
        help="mocker --max-model-len (default 16384: holds the scaled Mooncake prompts up "
        "to p99.9); longer prompts are truncated to fit with their output",
    )
    g.add_argument(
        "--model",
        default=str(REPO / ".cache" / "tiny-llama"),
        help="model dir (tokenizer + config.json; its vocab bounds the token ids)",
    )
    g.add_argument(
        "--mocker-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for bisllm-mocker (repeatable; use --mocker-arg=--flag)",
    )
    g.add_argument(
        "--router-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for bisllm-router (repeatable; use --router-arg=--flag)",
    )


def _output_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output and bounds")
    g.add_argument("--out", type=Path, default=None, help="results folder")
    g.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="wall s to wait for requests after the last arrival (then: timeout)",
    )
    g.add_argument(
        "--max-wall", type=float, default=600.0, help="hard cap per run in wall s (default 600)"
    )
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument(
        "--save-requests",
        action="store_true",
        help="also write per-request rows (runs/<label>.json)",
    )


def _model_len(args: argparse.Namespace) -> int:
    if args.max_model_len is not None:
        return int(args.max_model_len)
    with (
        contextlib.suppress(OSError, KeyError, ValueError),
        open(Path(args.model) / "config.json", encoding="utf-8") as f,
    ):
        return int(json.load(f)["max_position_embeddings"])
    return 4096


def scaled_num_blocks(profile: str, length_scale: int, block_size: int) -> int | None:
    """The profile's KV capacity shrunk like the prompts: a worker then holds as many
    (scaled) prompts as the real GPU would hold real ones. None: the mocker decides."""
    try:
        from bisllm_workers.mocker.timing import get_profile
    except ImportError:
        return None
    capacity = getattr(get_profile(profile), "kv_capacity_tokens", None)
    if capacity is None:
        return None
    return max(1, capacity // length_scale // block_size)


def _generator_kwargs(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> keywords: ints, floats, or tuples of them (``a,b``)."""

    def number(text: str) -> int | float:
        try:
            return int(text)
        except ValueError:
            return float(text)

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--synthetic-arg expects KEY=VALUE, got {item!r}")
        parts = [number(v) for v in value.split(",")]
        out[key.replace("-", "_")] = tuple(parts) if len(parts) > 1 else parts[0]
    return out


def load_workload(args: argparse.Namespace) -> tuple[Workload, dict[str, Any]]:
    """The scaled, windowed workload the options describe, and how it was made."""
    if args.synthetic:
        # Synthetic generators take a rate directly; scale it afterwards like a trace.
        kwargs = _generator_kwargs(args.synthetic_arg)
        base = GENERATORS[args.synthetic](args.synthetic_requests, 1.0, seed=args.seed, **kwargs)
        source = f"synthetic:{args.synthetic}" + "".join(f" {a}" for a in args.synthetic_arg)
    else:
        path = args.trace or DEFAULT_TRACE
        base = load_trace(path)
        source = str(path)
    base = select(
        base, start_s=args.start, duration_s=args.duration, max_requests=args.max_requests
    )
    max_input = args.max_input_tokens
    if max_input is None:
        max_input = _model_len(args) - args.max_output_tokens - 1
    work = scale(
        base,
        length_scale=args.length_scale,
        output_scale=args.output_scale,
        max_input_tokens=max_input,
        max_output_tokens=args.max_output_tokens,
    )
    if getattr(args, "rate", None) is not None:
        work = with_rate(work, args.rate)
    elif args.rate_multiplier != 1.0:
        work = scale(work, rate_multiplier=args.rate_multiplier)
    meta = {
        "source": source,
        "length_scale": args.length_scale,
        "output_scale": args.output_scale,
        "max_input_tokens": max_input,
        "max_output_tokens": args.max_output_tokens,
        "start": args.start,
        "duration": args.duration,
        "max_requests": args.max_requests,
        "seed": args.seed,
        **summarize(work),
    }
    return work, meta


def _progress(total: int, label: str, enabled: bool) -> tuple[Any, Any]:
    bar = tqdm(total=total, desc=label, unit="req", disable=not enabled, dynamic_ncols=True)
    counts = {"ok": 0, "error": 0, "shed": 0, "timeout": 0}

    def on_done(result: RequestResult) -> None:
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
        bar.update(1)
        if bar.n % 20 == 0 or result.outcome != "ok":
            bar.set_postfix(err=counts["error"] + counts["timeout"], shed=counts["shed"])

    return bar, on_done


def run_once(
    work: Workload,
    expander: BlockExpander,
    fleet_cfg: FleetConfig,
    policy: Policy,
    args: argparse.Namespace,
    out: Path,
    label: str,
    ideal: float | None,
) -> tuple[RunSummary, ClientRun]:
    """One run on a fresh fleet: start, replay, summarize, stop."""
    with fleet(fleet_cfg, policy, args.seed, out / "logs") as f:
        cfg = ClientConfig(
            base_url=f.router_url,
            model=fleet_cfg.served_model_name,
            speedup=fleet_cfg.speedup,
            drain_timeout_s=args.drain_timeout,
            max_wall_s=args.max_wall,
        )
        bar, on_done = _progress(len(work.requests), label, not args.no_progress)
        try:
            run = _run_async(replay(work.requests, expander, cfg, on_done))
        finally:
            bar.close()
        engine_stats = _mocker_stats(f.worker_urls)
    summary = summarize_run(
        run,
        label=label,
        policy=policy.name,
        overlap_weight=policy.overlap_weight,
        temperature=policy.temperature,
        offered_rate=work.mean_rate if math.isfinite(work.mean_rate) else 0.0,
        speedup=fleet_cfg.speedup,
        block_size=fleet_cfg.block_size,
        ideal_hit_rate=ideal,
        engine_stats=engine_stats,
    )
    return summary, run


def _mocker_stats(worker_urls: list[str]) -> list[dict[str, Any]]:
    """Each mock worker's simulator stats (clock lag, busy time); [] if unavailable."""
    out = []
    for url in worker_urls:
        status, body = http_get(url + "/bisllm/mocker/stats", timeout=5.0)
        if status == 200:
            with contextlib.suppress(ValueError):
                out.append(json.loads(body))
    return out


def _run_async(coro: Any) -> ClientRun:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)  # type: ignore[no-any-return]


def _downsample(samples: list[LoadSample], n: int = 300) -> dict[str, Any]:
    """At most ``n`` load samples as columns (compact JSON): times in simulated s and,
    per worker, its in-flight tokens at each time."""
    kept = samples[:: max(1, len(samples) // n)]
    workers = sorted({w for s in kept for w in s.in_flight_tokens})
    return {
        "t_s": [round(s.t_s, 3) for s in kept],
        "in_flight_tokens": {
            w: [round(s.in_flight_tokens.get(w, 0.0)) for s in kept] for w in workers
        },
    }


def _profile_line(doc: dict[str, Any]) -> str:
    p = doc.get("profile")
    if not p:
        return ""
    return (
        f" Step time = {p['step_overhead_s'] * 1e3:g} ms + {p['prefill_token_s'] * 1e6:g} us"
        f"/prefill token + {p['decode_seq_s'] * 1e6:g} us/decode seq + "
        f"{p['decode_ctx_token_s'] * 1e9:g} ns/context token (at git {doc.get('git_head')})."
    )


def _git_head() -> str | None:
    """The commit the results were measured on (+ "-dirty" with local changes)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "") if head else None
    return None


def _profile_params(name: str) -> dict[str, Any] | None:
    """The mocker profile's step-time parameters as they were for this run (profiles are
    recalibrated over time; results are only comparable under the same numbers)."""
    try:
        from bisllm_workers.mocker.timing import get_profile
    except ImportError:
        return None
    with contextlib.suppress(ValueError, TypeError):
        return asdict(get_profile(name))
    return None


def write_report(
    out: Path,
    mode: str,
    meta: dict[str, Any],
    fleet_cfg: FleetConfig,
    summaries: list[RunSummary],
    samples: dict[str, list[LoadSample]],
    command: str,
) -> None:
    """report.json + load.json + report.md (rewritten after every run)."""
    doc = {
        "mode": mode,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "time_unit": "simulated (wall x speedup); latencies in ms, rates per second",
        "git_head": _git_head(),
        "workload": meta,
        "fleet": asdict(fleet_cfg),
        "profile": _profile_params(fleet_cfg.profile),
        "runs": [s.to_dict() for s in summaries],
        "load_samples": "load.json",
    }
    (out / "report.json").write_text(json.dumps(doc, indent=1) + "\n")
    # Per-worker load over time, compact (it is most of the data): label -> columns.
    load = {s.label: _downsample(samples.get(s.label, [])) for s in summaries}
    (out / "load.json").write_text(json.dumps(load, separators=(",", ":")) + "\n")
    lines = [
        f"# bench.replay {mode}: {Path(str(meta['source'])).name}",
        "",
        f"Command: `{command}`",
        "",
        f"Workload: {meta['requests']} requests over {meta.get('duration_s', 0):.1f} simulated s; "
        f"mean input {meta.get('input_mean', 0):.0f} tokens, mean output "
        f"{meta.get('output_mean', 0):.0f}; one-infinite-cache hit rate "
        f"{100 * meta.get('ideal_hit_rate', 0):.1f}% (length scale {meta['length_scale']}, "
        f"output scale {meta['output_scale']}).",
        "",
        f"Fleet: {fleet_cfg.workers} mock workers, profile `{fleet_cfg.profile}`, speedup "
        f"{', '.join(sorted({f'{x.speedup:.3g}' for x in summaries}))}, "
        f"block size {fleet_cfg.block_size}, "
        f"{fleet_cfg.num_blocks or 'default'} KV blocks per worker.{_profile_line(doc)}",
        "",
        "Latencies in simulated ms (wall x speedup). Hit rate: engine-reported cached / "
        "prompt tokens; best-prefix: the longest prefix any worker held in the router's "
        "index at routing time (the bound a router could reach); imbalance: max/mean over "
        "workers of requests / computed tokens / time-averaged in-flight tokens.",
        "",
        markdown_table(summaries),
    ]
    rr = {s.offered_rate: s for s in summaries if s.policy == "round_robin"}
    notes = []
    for s in summaries:
        base = rr.get(s.offered_rate)
        if s.policy == "kv_aware" and base and base.ttft.p90 and s.ttft.p90:
            notes.append(
                f"- {s.label}: TTFT p90 {base.ttft.p90 / s.ttft.p90:.2f}x lower than "
                f"round_robin; hit rate / best-prefix = {s.hit_efficiency or 0:.2f}; "
                f"errors {s.errors}"
            )
    if notes:
        lines += ["Against round robin at the same rate:", "", *notes, ""]
    lag = [s.client_lag_p99_ms for s in summaries if s.client_lag_p99_ms is not None]
    if lag:
        lines += [
            f"Client send lag p99 (wall ms, CPU-saturation check): max {max(lag):.1f} over runs.",
            "",
        ]
    suspect = [s.label for s in summaries if cpu_bound(s)]
    if suspect:
        lines += [
            f"**CPU-bound runs** (the client sent >{CPU_LAG_WARN_SIM_MS:g} simulated ms late at "
            "p99, or the mocker's clock slipped: the benchmark machine, not the simulated GPUs, "
            f"limited them): {', '.join(suspect)}",
            "",
        ]
    for png in ("ttft_cdf.png", "hit_rate.png", "load_over_time.png", "sweep_ttft.png"):
        if (out / png).exists():
            lines.append(f"![{png}]({png})")
    (out / "report.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install_signal_handlers()
    work, meta = load_workload(args)
    if not work.requests:
        print("bench.replay: the selected workload is empty", file=sys.stderr)
        return 2
    command = "python -m bench.replay " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.mode == "run":
        policies = [Policy.parse(args.policy)]
        if args.overlap_weight is not None:
            policies[0].overlap_weight = args.overlap_weight
        if args.temperature is not None:
            policies[0].temperature = args.temperature
    else:
        policies = [Policy.parse(spec) for spec in args.policies]
    rates: list[float | None] = list(args.rates) if args.mode == "sweep" else [None]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO / "bench" / "results" / f"{args.mode}-{work.name}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    num_blocks = args.num_blocks
    if num_blocks is None:
        num_blocks = scaled_num_blocks(args.profile, args.length_scale, args.block_size)
    fleet_cfg = FleetConfig(
        workers=args.workers,
        model=args.model,
        profile=args.profile,
        speedup=args.speedup,
        block_size=args.block_size,
        num_blocks=num_blocks,
        max_model_len=args.max_model_len,
        mocker_args=args.mocker_arg,
        router_args=args.router_arg,
    )
    expander = BlockExpander(work.block_tokens, vocab_size(args.model), seed=args.seed)
    ideal = meta.get("ideal_hit_rate")
    summaries: list[RunSummary] = []
    samples: dict[str, list[LoadSample]] = {}
    ttfts: dict[str, list[float]] = {}
    print(
        f"bench.replay {args.mode}: {len(work.requests)} requests, "
        f"{len(policies)} policies x {len(rates)} rates → {out}",
        file=sys.stderr,
    )
    try:
        for rate in rates:
            w = with_rate(work, rate) if rate is not None else work
            run_cfg = fleet_cfg
            if args.wall_rate is not None:
                run_cfg = replace(fleet_cfg, speedup=args.wall_rate / w.mean_rate)
            for policy in policies:
                label = policy.label if rate is None else f"{policy.label} @{rate:g}"
                summary, run = run_once(w, expander, run_cfg, policy, args, out, label, ideal)
                summaries.append(summary)
                # Keep load samples and TTFTs in simulated time (speedups may differ per run).
                samples[label] = [
                    LoadSample(x.t_s * run_cfg.speedup, x.in_flight_tokens, x.requests)
                    for x in run.samples
                ]
                ttfts[label] = [
                    t * run_cfg.speedup * 1000
                    for r in run.results
                    if r.outcome == "ok" and (t := r.ttft_s) is not None
                ]
                if args.save_requests:
                    runs_dir = out / "runs"
                    runs_dir.mkdir(exist_ok=True)
                    name = "".join(c if c.isalnum() else "_" for c in label)
                    (runs_dir / f"{name}.json").write_text(
                        json.dumps(result_rows(run.results, run_cfg.speedup))
                    )
                print(_one_line(summary), file=sys.stderr)
                write_report(out, args.mode, meta, fleet_cfg, summaries, samples, command)
    except KeyboardInterrupt:
        print("bench.replay: interrupted; partial results kept", file=sys.stderr)
    finally:
        if summaries and not args.no_plots:
            _plots(out, args.mode, work.name, summaries, samples, ttfts)
            write_report(out, args.mode, meta, fleet_cfg, summaries, samples, command)
    if not summaries:
        print("bench.replay: no run completed", file=sys.stderr)
        return 130
    print(markdown_table(summaries))
    print(f"report: {out / 'report.md'}", file=sys.stderr)
    return 0 if all(s.errors == 0 for s in summaries) else 1


def _one_line(s: RunSummary) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    hit = "-" if s.hit_rate is None else f"{100 * s.hit_rate:.1f}%"
    best = "-" if s.best_prefix_hit_rate is None else f"{100 * s.best_prefix_hit_rate:.1f}%"
    return (
        f"  {s.label}: TTFT p50/p90/p99 {ms(s.ttft.p50)}/{ms(s.ttft.p90)}/{ms(s.ttft.p99)} ms, "
        f"hit {hit} (best {best}), errors {s.errors}, shed {s.shed}, wall {s.wall_s:.0f}s, "
        f"client lag p99 {s.client_lag_p99_ms or 0:.0f} wall ms, engine lag "
        f"{s.engine_lag_s or 0:.1f} wall s, preemptions {s.preemptions}"
    )


def _plots(
    out: Path,
    mode: str,
    name: str,
    summaries: list[RunSummary],
    samples: dict[str, list[LoadSample]],
    ttfts: dict[str, list[float]],
) -> None:
    if mode == "sweep":
        plots.sweep(summaries, out / "sweep_ttft.png", f"{name}: load sweep")
        return
    plots.ttft_cdf(ttfts, out / "ttft_cdf.png", f"{name}: TTFT distribution")
    plots.hit_rate_plot(summaries, out / "hit_rate.png", f"{name}: prompt-token cache hit rate")
    plots.load_over_time(
        samples, 1.0, out / "load_over_time.png", f"{name}: in-flight tokens per worker"
    )
