"""`GET /bisllm/worker`, served from inside vLLM's own OpenAI server.

How: vLLM's api_server takes `--middleware IMPORT.PATH` and installs a class found there as an
ASGI middleware of its FastAPI app. `WorkerInfoMiddleware` answers exactly `GET|HEAD
/bisllm/worker` and hands every other request to vLLM untouched. It is a pure ASGI middleware
(not `@app.middleware("http")`, which wraps every response in Starlette's BaseHTTPMiddleware and
re-buffers streamed tokens), so the cost on the hot path is one string comparison.

Why this over the alternatives:
- A sidecar proxy in front of vLLM adds a hop, a second port and its own latency to every token
  of every request, only to serve one rarely-called endpoint.
- Running vLLM in-process (`build_app` / `run_server`) ties us to vLLM's internal start-up code,
  which moves between releases (0.32 already deprecates `vllm.entrypoints.openai.api_server`).
- vLLM's endpoint plugins (`vllm.endpoint_plugins` entry points) are the newest hook, but they load
  only when listed in `VLLM_PLUGINS`, an allowlist that also filters every other vLLM plugin group,
  so enabling ours would silently disable a user's other plugins.
`--middleware` is a documented, long-standing server flag; the same line makes a plain
`vllm serve` (with bisllm-workers installed) discoverable too:
`vllm serve MODEL --middleware bisllm_workers.vllm_worker.info.WorkerInfoMiddleware ...`.

What: everything comes from the engine's live `VllmConfig` (`app.state.vllm_config`), so the
answer is what the engine actually runs with (vLLM may adjust the block size, and the KV capacity
in blocks, `cache_config.num_gpu_blocks`, is known only after the engine profiled memory; the
front end's copy is updated at start-up). Like `/health` and `/metrics`, the endpoint is not
behind `--api-key` (vLLM guards only `/v1`-style prefixes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["INFO_PATH", "WorkerInfoMiddleware", "connect_address", "worker_info"]

INFO_PATH: Final = "/bisllm/worker"

#: vLLM kv_role -> our role. kv_both (and no connector) is an aggregated worker.
_ROLE_OF_KV_ROLE: Final[dict[str, str]] = {"kv_producer": "prefill", "kv_consumer": "decode"}

_WILDCARD_HOSTS: Final = ("*", "0.0.0.0", "::", "[::]", "")


def connect_address(endpoint: str | None, host: str) -> str | None:
    """The address a subscriber connects to for an endpoint vLLM bound.

    A wildcard tcp bind (`tcp://*:5557`) is reachable at whatever host the caller used to reach
    this HTTP server, so `host` replaces the wildcard. ipc:// paths are returned unchanged (they
    only work on the same machine, which is what they are for).
    """
    if endpoint is None or not endpoint.startswith("tcp://"):
        return endpoint
    bound_host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    if bound_host not in _WILDCARD_HOSTS:
        return endpoint
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def _served_name(model_config: Any) -> str:
    name = model_config.served_model_name
    if isinstance(name, list | tuple):
        name = name[0] if name else None
    return str(name if name is not None else model_config.model)


def worker_info(vllm_config: Any, host: str) -> dict[str, Any]:
    """The discovery document for one vLLM server, from its `VllmConfig`.

    `host` is the hostname the client used to reach us (see `connect_address`).
    """
    cache = vllm_config.cache_config
    events = vllm_config.kv_events_config
    transfer = vllm_config.kv_transfer_config
    publishing = (
        events is not None
        and events.enable_kv_cache_events
        and events.publisher == "zmq"
        and bool(events.endpoint)
    )
    kv_role = getattr(transfer, "kv_role", None) if transfer is not None else None
    return {
        "model": _served_name(vllm_config.model_config),
        "role": _ROLE_OF_KV_ROLE.get(kv_role or "", "aggregated"),
        "block_size": cache.block_size,
        "kv_events_endpoint": connect_address(events.endpoint, host) if publishing else None,
        "kv_replay_endpoint": connect_address(events.replay_endpoint, host) if publishing else None,
        "kv_events_topic": events.topic if publishing else None,
        "data_parallel_size": vllm_config.parallel_config.data_parallel_size,
        "kv_capacity_blocks": cache.num_gpu_blocks,
        "max_model_len": vllm_config.model_config.max_model_len,
        "engine": "vllm",
    }


class WorkerInfoMiddleware:
    """Pure ASGI middleware: serves `GET /bisllm/worker`, passes everything else through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != scope.get("root_path", "") + INFO_PATH:
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            response = JSONResponse({"error": "method not allowed"}, status_code=405)
        else:
            # Starlette puts the application on the scope before running its middleware stack;
            # vLLM's init_app_state stores the engine's config on its state once the engine is up.
            vllm_config = getattr(scope["app"].state, "vllm_config", None)
            if vllm_config is None:
                response = JSONResponse({"error": "engine not initialized"}, status_code=503)
            else:
                host = Request(scope).url.hostname or "127.0.0.1"
                response = JSONResponse(worker_info(vllm_config, host))
        await response(scope, receive, send)
