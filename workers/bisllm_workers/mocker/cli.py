"""`bisllm-mocker`: run a fleet of simulated vLLM workers in one process.

    bisllm-mocker --workers 8 --base-port 8100 --model .cache/tiny-llama \\
        --profile h100-llama3-8b --speedup 10

Prints one line per worker (URL, KV events endpoint, replay endpoint), then `ready`; stops
cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from bisllm_workers.mocker.fleet import FleetConfig, MockerFleet
from bisllm_workers.mocker.timing import PROFILES

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bisllm-mocker",
        description="Simulated vLLM workers (OpenAI API, KV events, metrics) for tests and benchmarks.",
    )
    p.add_argument("--workers", type=int, default=1, help="number of workers (default 1)")
    p.add_argument(
        "--base-port", type=int, default=8100, help="worker i listens on BASE+i; 0 = ephemeral"
    )
    p.add_argument(
        "--model",
        default=None,
        help="HF model dir (tokenizer.json, tokenizer_config.json, config.json); default: the embedded tiny tokenizer",
    )
    p.add_argument(
        "--served-model-name", default=None, help="model name in the API (default: --model)"
    )
    p.add_argument(
        "--profile", default="h100-llama3-8b", choices=sorted(PROFILES), help="step-time profile"
    )
    p.add_argument(
        "--speedup", type=float, default=1.0, help="divide every simulated step time by this"
    )
    p.add_argument(
        "--min-step-ms",
        type=float,
        default=0.0,
        help="batch engine steps into wake-ups of at least this many wall ms (0 = one sleep per "
        "step, exact; 1-2 ms cuts CPU for large fleets at high speedup)",
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=16,
        help="KV block size in tokens (default 16, vLLM on GPU)",
    )
    p.add_argument(
        "--num-blocks",
        type=int,
        default=None,
        help="KV capacity in blocks (default: the profile's)",
    )
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="default: the model's max_position_embeddings",
    )
    p.add_argument("--no-chunked-prefill", action="store_true")
    ev = p.add_mutually_exclusive_group()
    ev.add_argument(
        "--events-base-port",
        type=int,
        default=None,
        help="worker i publishes on P+2i, replays on P+2i+1 (tcp://127.0.0.1)",
    )
    ev.add_argument(
        "--events-ipc-dir",
        default=None,
        help="publish on ipc://DIR/worker-i.pub, replay on ipc://DIR/worker-i.replay",
    )
    ev.add_argument("--no-events", action="store_true", help="do not publish KV events")
    p.add_argument("--topic", default="kv", help="KV events topic (default kv)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print each worker's /bisllm/worker document as a JSON line",
    )
    return p  # fmt: skip


def config_from_args(args: argparse.Namespace) -> FleetConfig:
    return FleetConfig(
        workers=args.workers,
        base_port=args.base_port,
        model=args.model,
        served_model_name=args.served_model_name,
        profile=args.profile,
        speedup=args.speedup,
        min_step_wall_s=args.min_step_ms / 1000.0,
        block_size=args.block_size,
        num_blocks=args.num_blocks,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        enable_chunked_prefill=not args.no_chunked_prefill,
        events=not args.no_events,
        events_base_port=args.events_base_port,
        events_ipc_dir=args.events_ipc_dir,
        topic=args.topic,
    )


async def _serve(cfg: FleetConfig, as_json: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with MockerFleet(cfg) as fleet:
        for w in fleet.workers:
            if as_json:
                print(json.dumps({"url": w.url, **w.info.to_json()}), flush=True)
            else:
                print(
                    f"worker {w.index}: {w.url}  events={w.info.kv_events_endpoint}  "
                    f"replay={w.info.kv_replay_endpoint}",
                    flush=True,
                )
        print(
            f"ready: {len(fleet.workers)} workers, model={fleet.workers[0].served_model_name}, "
            f"profile={cfg.profile}, speedup={cfg.speedup}",
            flush=True,
        )
        await stop.wait()
    print("stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        try:
            import uvloop  # optional: ~2x cheaper event loop for large fleets
        except ImportError:
            asyncio.run(_serve(cfg, args.json))
        else:
            uvloop.run(_serve(cfg, args.json))
    except (ValueError, OSError) as exc:
        print(f"bisllm-mocker: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
