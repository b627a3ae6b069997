"""`bisllm-worker`: a real vLLM engine as a bisllm worker.

    bisllm-worker --model PATH --port P [--host 127.0.0.1] [--role aggregated|prefill|decode]
                  [--block-size N] [--max-model-len N] [--max-num-seqs N]
                  [--max-num-batched-tokens N] [--speculative-config JSON]
                  [--served-model-name NAME] [--kv-events-endpoint E] [--kv-replay-endpoint E]
                  [--kv-cache-space-gib N] [--data-parallel-size N] [-- extra vLLM args...]
    bisllm-worker make-tiny-model DIR [--seed N]

It starts vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`) as a supervised
child (supervisor.py) with what the router relies on always switched on: prefix caching, KV events
over ZMQ, `usage.prompt_tokens_details.cached_tokens`, and `GET /bisllm/worker` (info.py) for
discovery. The package imports nothing from `bisllm`: the router and the workers talk only over
HTTP and ZMQ, so a worker image never needs the Rust toolchain.

Argument mapping (bisllm-worker -> vLLM):

    --model PATH                  --model PATH
    --host H / --port P           --host H / --port P
    --served-model-name N         --served-model-name N   (default: the model path, as vLLM)
    --role aggregated             (no KV connector)
    --role prefill                --kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_producer"}'
    --role decode                 --kv-transfer-config '{"kv_connector":"NixlConnector","kv_role":"kv_consumer"}'
                                  + env VLLM_NIXL_SIDE_CHANNEL_HOST=H unless set (the port,
                                  VLLM_NIXL_SIDE_CHANNEL_PORT, must differ per server: caller's)
    --block-size N                --block-size N          (default: vLLM's, CPU 128 / GPU 16)
    --max-model-len N             --max-model-len N
    --max-num-seqs N              --max-num-seqs N
    --max-num-batched-tokens N    --max-num-batched-tokens N
    --speculative-config JSON     --speculative-config JSON (must be a JSON object with
                                  "method" or "model"; vLLM validates the rest)
    --kv-events-endpoint E        --kv-events-config '{"enable_kv_cache_events":true,
    --kv-replay-endpoint R          "publisher":"zmq","endpoint":E,"replay_endpoint":R,"topic":"kv"}'
                                  default E/R: ipc:// sockets in a private temp dir
    --kv-cache-space-gib G        --kv-cache-memory-bytes G*2^30 (and VLLM_CPU_KVCACHE_SPACE,
                                  which would override it on the CPU, is dropped)
    --data-parallel-size N        --data-parallel-size N  (needs a tcp://*:PORT events endpoint;
                                  rank r publishes on PORT+r)
    (always)                      --enable-prefix-caching --enable-prompt-tokens-details
                                  --middleware bisllm_workers.vllm_worker.info.WorkerInfoMiddleware
    -- ARGS...                    appended verbatim (e.g. -- --enforce-eager --dtype float32)

Errors before any engine starts: invalid values (argparse), a KV events endpoint vLLM would not
bind (vLLM binds only ipc:// or a wildcard tcp host and *connects* to any other address), ipc://
with data parallelism, and, checked with vLLM's own argument parser, unknown extra arguments,
extra arguments that duplicate a typed flag (`-- --block-size 16`, `-- --max_model_len=8`,
`-- --kv-events-config ...`), and values vLLM rejects.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence

from .config import (
    WorkerConfig,
    WorkerConfigError,
    check_in_subprocess,
    child_env,
    parse_worker_args,
    resolve_endpoints,
    vllm_argv,
)
from .supervisor import VLLM_SERVER_MODULE, Supervisor, http_get_json, local_url

__all__ = ["WorkerConfig", "WorkerConfigError", "main", "run_worker"]

log = logging.getLogger("bisllm_workers.vllm_worker")


def run_worker(cfg: WorkerConfig, *, check_args: bool = True) -> int:
    """Validate, start and supervise one vLLM server; return its exit status."""
    with tempfile.TemporaryDirectory(prefix="bisllm-worker-") as runtime_dir:
        cfg = resolve_endpoints(cfg, runtime_dir)
        if check_args:
            check_in_subprocess(cfg)
        url = local_url(cfg.host, cfg.port)
        sup = Supervisor(
            [sys.executable, "-m", VLLM_SERVER_MODULE, *vllm_argv(cfg)],
            url=url,
            env=child_env(cfg),
            stop_grace_s=cfg.stop_grace_s,
        )

        def on_ready(startup_s: float) -> None:
            try:
                info = http_get_json(f"{url}/bisllm/worker")
            except OSError as e:
                log.warning("vLLM is healthy but /bisllm/worker failed: %s", e)
                info = None
            line = {"event": "ready", "url": url, "startup_s": round(startup_s, 1), "info": info}
            print(json.dumps(line), flush=True)

        return sup.run(cfg.startup_timeout_s, on_ready)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of `bisllm-worker`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["make-tiny-model"]:
        from bisllm_workers.tiny_model import main as tiny_main

        return tiny_main(args[1:])
    # Our own logger only: the root logger belongs to whoever embeds us, and vLLM (in the child)
    # configures its own.
    if not log.handlers:
        handler = logging.StreamHandler()
        formatter = logging.Formatter("bisllm-worker %(asctime)s %(levelname)s %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    try:
        cfg = parse_worker_args(args)
        return run_worker(cfg)
    except WorkerConfigError as e:
        print(f"bisllm-worker: error: {e}", file=sys.stderr)
        return 2
