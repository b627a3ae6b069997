"""``bisllm-router``: the KV-aware OpenAI router in front of vLLM (or mocker) workers."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from bisllm._core import POLICIES

if TYPE_CHECKING:
    from bisllm.router.app import RouterConfig

_DESCRIPTION = """\
An OpenAI-compatible endpoint in front of a pool of vLLM workers serving one model.
Each request is tokenized with the model's tokenizer and chat template, matched
against an index of every worker's KV cache (fed by the workers' KV events), and
sent to the worker where it is cheapest: the one that already holds most of its
prefix, weighed against how loaded each worker is.

example:
  bisllm-router --model ./tiny-llama --workers http://127.0.0.1:8101,http://127.0.0.1:8102
  curl localhost:8000/v1/completions -H 'content-type: application/json' \\
       -d '{"model": "./tiny-llama", "prompt": "Hello", "max_tokens": 8}'
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bisllm-router",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("workers and model")
    g.add_argument(
        "--workers",
        default="",
        help="comma-separated worker base URLs (bisllm-worker, bisllm-mocker or plain vLLM); "
        "more can be added at runtime with POST /admin/workers",
    )
    g.add_argument(
        "--model",
        required=True,
        help="local model directory: its tokenizer.json and chat template are used to "
        "tokenize requests exactly as the workers do",
    )
    g.add_argument(
        "--served-model-name",
        default=None,
        help="the model name clients send (default: what the workers report)",
    )
    g.add_argument(
        "--worker-events",
        action="append",
        default=[],
        metavar="URL=ENDPOINT",
        help="KV events endpoint of a plain vLLM worker that does not report one "
        "(repeatable), e.g. http://10.0.0.5:8000=tcp://10.0.0.5:5557",
    )
    g.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="KV block size in tokens (default: reported by the first worker)",
    )
    g.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="reject longer prompts with a 400 (default: the smallest the workers report)",
    )

    g = p.add_argument_group("routing")
    g.add_argument(
        "--policy",
        default="kv_aware",
        choices=POLICIES,
        help="kv_aware (default) weighs cached prefix against load; the others ignore the "
        "cache and exist for comparison and as fallbacks",
    )
    g.add_argument(
        "--overlap-weight",
        type=float,
        default=8.0,
        help="kv_aware: weight of prefill work (uncached blocks) against decode load; higher "
        "favours cache hits, lower favours spreading load (default 8: the best measured on "
        "the Mooncake trace, see bench/results/README.md)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="kv_aware: 0 picks the cheapest worker; >0 samples from a softmax over costs "
        "(spreads hot prefixes over more workers)",
    )
    g.add_argument("--seed", type=int, default=None, help="RNG seed for sampling policies")
    g.add_argument(
        "--approx-ttl",
        type=float,
        default=120.0,
        help="seconds a predicted entry lives for workers without KV events",
    )

    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    g.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="require 'Authorization: Bearer KEY' on /v1 (repeatable; also BISLLM_API_KEY)",
    )
    g.add_argument(
        "--admin-key",
        default=os.environ.get("BISLLM_ADMIN_KEY"),
        help="key for /admin (also BISLLM_ADMIN_KEY); without it /admin is loopback-only",
    )
    g.add_argument(
        "--max-body-bytes",
        type=int,
        default=32 * 1024 * 1024,
        help="reject larger request bodies with a 413",
    )
    g.add_argument(
        "--max-retries",
        type=int,
        default=2,
        help="re-route a request this many times if its worker fails before the first byte",
    )
    g.add_argument("--health-interval", type=float, default=2.0, help="seconds between checks")
    g.add_argument(
        "--events-silence",
        type=float,
        default=10.0,
        help="seconds without KV events after serving requests before a worker's index "
        "falls back to approximate",
    )
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def config_from_args(args: argparse.Namespace) -> RouterConfig:
    from bisllm.router.app import RouterConfig

    worker_events: dict[str, str] = {}
    for item in args.worker_events:
        url, sep, endpoint = item.partition("=")
        if not sep or not endpoint:
            raise SystemExit(f"--worker-events expects URL=ENDPOINT, got {item!r}")
        worker_events[url.rstrip("/")] = endpoint
    api_keys = list(args.api_key)
    if os.environ.get("BISLLM_API_KEY"):
        api_keys.append(os.environ["BISLLM_API_KEY"])
    workers = [w.strip().rstrip("/") for w in args.workers.split(",") if w.strip()]
    return RouterConfig(
        workers=workers,
        model=args.model,
        served_model_name=args.served_model_name,
        policy=args.policy,
        overlap_weight=args.overlap_weight,
        temperature=args.temperature,
        seed=args.seed,
        block_size=args.block_size,
        max_model_len=args.max_model_len,
        api_keys=api_keys,
        admin_key=args.admin_key,
        max_body_bytes=args.max_body_bytes,
        max_retries=args.max_retries,
        health_interval_s=args.health_interval,
        events_silence_s=args.events_silence,
        approx_ttl_s=args.approx_ttl,
        worker_events=worker_events,
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import uvicorn

    from bisllm.router.app import create_app

    try:
        app = create_app(config)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"bisllm-router: {exc}")
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level=args.log_level,
        access_log=False,
        timeout_keep_alive=30,
    )
