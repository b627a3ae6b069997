"""`bisllm-worker`'s command line and how it maps onto vLLM's OpenAI server arguments.

Parsing is stdlib-only so that `bisllm-worker --help` and argument errors are instant. The one
check that needs vLLM (`check_with_vllm`: unknown extra arguments, extra arguments that duplicate a
typed flag, values vLLM's own parser rejects) imports vLLM's argument parser, which costs a few
seconds but still fails long before an engine would have started.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast

__all__ = [
    "INFO_MIDDLEWARE",
    "KV_EVENTS_TOPIC",
    "ROLES",
    "Role",
    "WorkerConfig",
    "WorkerConfigError",
    "build_parser",
    "check_in_subprocess",
    "check_with_vllm",
    "child_env",
    "parse_worker_args",
    "resolve_endpoints",
    "vllm_argv",
]

Role = Literal["aggregated", "prefill", "decode"]
ROLES: Final[tuple[Role, ...]] = ("aggregated", "prefill", "decode")

#: vLLM's `kv_role` for each disaggregation role (aggregated workers get no KV connector).
_KV_ROLE: Final[dict[str, str]] = {"prefill": "kv_producer", "decode": "kv_consumer"}

#: The KV connector behind `--role prefill|decode` (vLLM's NIXL connector; DESIGN.md).
KV_CONNECTOR: Final = "NixlConnector"

#: Topic of every KV event frame (the first of the three frames).
KV_EVENTS_TOPIC: Final = "kv"

#: Import path given to vLLM's `--middleware`: serves `GET /bisllm/worker` (see info.py).
INFO_MIDDLEWARE: Final = "bisllm_workers.vllm_worker.info.WorkerInfoMiddleware"

#: vLLM argument destinations this wrapper sets itself -> how to set them instead. An extra
#: argument (after `--`) that lands on one of them is a conflict, not an override: the discovery
#: JSON and the router's assumptions are built from the typed flags.
_OWNED_DESTS: Final[dict[str, str]] = {
    "model": "use --model",
    "model_tag": "use --model",
    "host": "use --host",
    "port": "use --port",
    "served_model_name": "use --served-model-name",
    "block_size": "use --block-size",
    "max_model_len": "use --max-model-len",
    "max_num_seqs": "use --max-num-seqs",
    "max_num_batched_tokens": "use --max-num-batched-tokens",
    "speculative_config": "use --speculative-config",
    "kv_events_config": "use --kv-events-endpoint / --kv-replay-endpoint",
    "kv_transfer_config": "use --role",
    "kv_cache_memory_bytes": "use --kv-cache-space-gib",
    "data_parallel_size": "use --data-parallel-size",
    "enable_prefix_caching": "it is always on (the router's KV-aware routing needs it)",
    "enable_prompt_tokens_details": "it is always on (the router reads usage.cached_tokens)",
}

_WILDCARD_HOSTS: Final = ("*", "::", "[::]")


class WorkerConfigError(ValueError):
    """A bisllm-worker argument is invalid or conflicts with another; raised before any engine starts."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything `bisllm-worker` needs to start and describe one vLLM server."""

    #: Model directory or Hugging Face id, passed to vLLM as `--model`.
    model: str
    #: HTTP port of vLLM's OpenAI server (and of `GET /bisllm/worker`).
    port: int
    #: HTTP bind address. Loopback by default: exposing a worker is an explicit decision.
    host: str = "127.0.0.1"
    role: Role = "aggregated"
    #: Tokens per KV block; None keeps vLLM's platform default (CPU 128, GPU 16).
    block_size: int | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    #: Parsed `--speculative-config` JSON object, passed through to vLLM unchanged.
    speculative_config: dict[str, Any] | None = None
    served_model_name: str | None = None
    #: ZMQ PUB endpoint vLLM binds for KV events; None means an ipc:// socket in a private
    #: temp dir, filled in by `resolve_endpoints` at launch.
    kv_events_endpoint: str | None = None
    #: ZMQ ROUTER endpoint for replaying buffered event batches; None follows the events endpoint
    #: (ipc:// next to it when that is defaulted, no replay socket otherwise).
    kv_replay_endpoint: str | None = None
    #: KV cache size in GiB (vLLM `--kv-cache-memory-bytes`); None keeps vLLM's default.
    kv_cache_space_gib: float | None = None
    data_parallel_size: int = 1
    #: Seconds to wait for `/health` before giving up on start-up.
    startup_timeout_s: float = 600.0
    #: Seconds between forwarding SIGTERM and killing the engine's whole process group.
    stop_grace_s: float = 30.0
    #: Extra vLLM arguments given after `--`, appended verbatim after the mapped ones.
    extra_args: tuple[str, ...] = ()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return cast(dict[str, Any], value)


def build_parser() -> argparse.ArgumentParser:
    """The `bisllm-worker` argument parser (the `make-tiny-model` subcommand is dispatched before it)."""
    p = argparse.ArgumentParser(
        prog="bisllm-worker",
        description=(
            "Start vLLM's OpenAI server as a bisllm worker: prefix caching, KV events over ZMQ, "
            "cached-token usage, and GET /bisllm/worker for discovery. Arguments after `--` go to "
            "vLLM unchanged. `bisllm-worker make-tiny-model DIR [--seed N]` builds the tiny test model."
        ),
    )
    p.add_argument("--model", required=True, help="model directory or Hugging Face id")
    p.add_argument("--port", type=_port, required=True, help="HTTP port")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--role", choices=ROLES, default="aggregated", help="disaggregation role")
    p.add_argument("--block-size", type=_positive_int, help="tokens per KV block")
    p.add_argument("--max-model-len", type=_positive_int)
    p.add_argument("--max-num-seqs", type=_positive_int)
    p.add_argument("--max-num-batched-tokens", type=_positive_int)
    p.add_argument(
        "--speculative-config",
        type=_json_object,
        help='vLLM speculative config, e.g. \'{"method":"ngram","num_speculative_tokens":3}\'',
    )
    p.add_argument("--served-model-name", help="model name clients use (default: --model)")
    p.add_argument(
        "--kv-events-endpoint",
        help="ZMQ PUB endpoint vLLM binds: ipc://PATH or tcp://*:PORT (default: ipc:// in a temp dir)",
    )
    p.add_argument("--kv-replay-endpoint", help="ZMQ ROUTER endpoint for event replay")
    p.add_argument("--kv-cache-space-gib", type=_positive_float, help="KV cache size in GiB")
    p.add_argument("--data-parallel-size", type=_positive_int, default=1)
    p.add_argument("--startup-timeout", type=_positive_float, default=600.0, metavar="SECONDS")
    p.add_argument("--stop-grace", type=_positive_float, default=30.0, metavar="SECONDS")
    return p


def parse_worker_args(argv: Sequence[str]) -> WorkerConfig:
    """Parse `bisllm-worker` arguments; everything after the first `--` is kept as extra vLLM args.

    Raises WorkerConfigError for invalid values (argparse's own usage errors exit as usual).
    """
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    ns = build_parser().parse_args(argv)
    cfg = WorkerConfig(
        model=ns.model,
        port=ns.port,
        host=ns.host,
        role=ns.role,
        block_size=ns.block_size,
        max_model_len=ns.max_model_len,
        max_num_seqs=ns.max_num_seqs,
        max_num_batched_tokens=ns.max_num_batched_tokens,
        speculative_config=ns.speculative_config,
        served_model_name=ns.served_model_name,
        kv_events_endpoint=ns.kv_events_endpoint,
        kv_replay_endpoint=ns.kv_replay_endpoint,
        kv_cache_space_gib=ns.kv_cache_space_gib,
        data_parallel_size=ns.data_parallel_size,
        startup_timeout_s=ns.startup_timeout,
        stop_grace_s=ns.stop_grace,
        extra_args=tuple(extra),
    )
    validate(cfg)
    return cfg


def _check_endpoint(flag: str, endpoint: str, *, publisher: bool, dp_size: int) -> None:
    """Reject endpoints vLLM would not bind, or could not advertise to a subscriber.

    vLLM binds its PUB socket only for ipc:// or a wildcard tcp host (`*`, `::`); any other tcp
    address is *connected to*, which would invert who listens and leave nothing for the router
    to subscribe to. The replay ROUTER socket is always bound, so any tcp host is fine there.
    """
    if endpoint.startswith("ipc://"):
        if len(endpoint) <= len("ipc://"):
            raise WorkerConfigError(f"{flag}: empty ipc path")
        if dp_size > 1:
            raise WorkerConfigError(
                f"{flag}: with --data-parallel-size > 1 use a tcp:// endpoint: vLLM offsets the "
                "port per data-parallel rank and cannot do that for ipc://"
            )
        return
    if not endpoint.startswith("tcp://"):
        raise WorkerConfigError(f"{flag}: expected ipc://PATH or tcp://HOST:PORT, got {endpoint!r}")
    host, sep, port = endpoint.removeprefix("tcp://").rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise WorkerConfigError(
            f"{flag}: {endpoint!r} needs an explicit non-zero port (the router must know it)"
        )
    if publisher and host not in _WILDCARD_HOSTS:
        raise WorkerConfigError(
            f"{flag}: vLLM binds the KV events socket only on a wildcard host; it would connect "
            f"to {endpoint!r} instead. Use tcp://*:{port} or an ipc:// path."
        )


def validate(cfg: WorkerConfig) -> None:
    """Checks that need only the typed flags (no vLLM import)."""
    if cfg.kv_events_endpoint is not None:
        _check_endpoint(
            "--kv-events-endpoint",
            cfg.kv_events_endpoint,
            publisher=True,
            dp_size=cfg.data_parallel_size,
        )
    elif cfg.data_parallel_size > 1:
        raise WorkerConfigError(
            "--data-parallel-size > 1 needs --kv-events-endpoint tcp://*:PORT "
            "(one port per rank from PORT up)"
        )
    if cfg.kv_replay_endpoint is not None:
        if cfg.kv_events_endpoint is None:
            raise WorkerConfigError("--kv-replay-endpoint needs --kv-events-endpoint too")
        _check_endpoint(
            "--kv-replay-endpoint",
            cfg.kv_replay_endpoint,
            publisher=False,
            dp_size=cfg.data_parallel_size,
        )
        if cfg.kv_replay_endpoint == cfg.kv_events_endpoint:
            raise WorkerConfigError("--kv-replay-endpoint must differ from --kv-events-endpoint")
    spec = cfg.speculative_config
    if spec is not None and not ("method" in spec or "model" in spec):
        raise WorkerConfigError(
            '--speculative-config needs "method" (ngram, draft_model, eagle, eagle3, mtp, ...) '
            'or "model"'
        )


def resolve_endpoints(cfg: WorkerConfig, runtime_dir: str | Path) -> WorkerConfig:
    """Fill in the default ipc:// KV event endpoints inside `runtime_dir` (a private temp dir).

    ipc:// keeps events off the network, needs no free port, and vLLM binds it (DESIGN.md); the
    socket path must stay under the ~107-byte limit of sun_path, so keep `runtime_dir` short.
    """
    if cfg.kv_events_endpoint is not None:
        return cfg
    base = Path(runtime_dir)
    events = f"ipc://{base / 'kv-events.sock'}"
    replay = f"ipc://{base / 'kv-replay.sock'}"
    if len(replay) - len("ipc://") > 100:
        raise WorkerConfigError(f"runtime dir path too long for an ipc socket: {base}")
    return dataclasses.replace(cfg, kv_events_endpoint=events, kv_replay_endpoint=replay)


def kv_events_config(cfg: WorkerConfig) -> dict[str, Any]:
    """The `--kv-events-config` object: zmq publisher, topic `kv`, the resolved endpoints."""
    if cfg.kv_events_endpoint is None:
        raise WorkerConfigError("KV events endpoint not resolved (call resolve_endpoints first)")
    conf: dict[str, Any] = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": cfg.kv_events_endpoint,
        "topic": KV_EVENTS_TOPIC,
    }
    if cfg.kv_replay_endpoint is not None:
        conf["replay_endpoint"] = cfg.kv_replay_endpoint
    return conf


def vllm_argv(cfg: WorkerConfig) -> list[str]:
    """vLLM OpenAI server arguments for `cfg` (after `python -m vllm.entrypoints.openai.api_server`).

    The table in the package docstring documents this mapping; keep the two in sync.
    """
    argv = [
        "--model", cfg.model,
        "--host", cfg.host,
        "--port", str(cfg.port),
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",
        "--kv-events-config", json.dumps(kv_events_config(cfg), separators=(",", ":")),
        "--middleware", INFO_MIDDLEWARE,
    ]  # fmt: skip
    optional: list[tuple[str, object]] = [
        ("--served-model-name", cfg.served_model_name),
        ("--block-size", cfg.block_size),
        ("--max-model-len", cfg.max_model_len),
        ("--max-num-seqs", cfg.max_num_seqs),
        ("--max-num-batched-tokens", cfg.max_num_batched_tokens),
    ]
    if cfg.speculative_config is not None:
        optional.append(("--speculative-config", json.dumps(cfg.speculative_config)))
    if cfg.role != "aggregated":
        transfer = {"kv_connector": KV_CONNECTOR, "kv_role": _KV_ROLE[cfg.role]}
        optional.append(("--kv-transfer-config", json.dumps(transfer, separators=(",", ":"))))
    if cfg.kv_cache_space_gib is not None:
        optional.append(("--kv-cache-memory-bytes", int(cfg.kv_cache_space_gib * 2**30)))
    if cfg.data_parallel_size != 1:
        optional.append(("--data-parallel-size", cfg.data_parallel_size))
    for flag, value in optional:
        if value is not None:
            argv += [flag, str(value)]
    return argv + list(cfg.extra_args)


def child_env(cfg: WorkerConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the vLLM child.

    - `VLLM_CPU_KVCACHE_SPACE` is dropped when `--kv-cache-space-gib` is given: vLLM's CPU
      platform lets that legacy variable override `--kv-cache-memory-bytes`.
    - For prefill/decode roles the NIXL side channel (the out-of-band handshake between prefill
      and decode servers) listens on the HTTP host unless `VLLM_NIXL_SIDE_CHANNEL_HOST` is set;
      its port (`VLLM_NIXL_SIDE_CHANNEL_PORT`) must be distinct per server on one machine and is
      left to the caller.
    """
    env = dict(os.environ if base is None else base)
    if cfg.kv_cache_space_gib is not None:
        env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    if cfg.role != "aggregated" and cfg.host not in ("0.0.0.0", "::", ""):
        env.setdefault("VLLM_NIXL_SIDE_CHANNEL_HOST", cfg.host)
    return env


def _option_name(token: str) -> str | None:
    """The option an argv token names, normalized as vLLM's FlexibleArgumentParser does.

    `--max_model_len=8` -> `--max-model-len`; `--speculative-config.method` ->
    `--speculative-config`; values and positionals -> None.
    """
    if not token.startswith("-") or token in ("-", "--") or token[1:2].isdigit():
        return None
    name = token.split("=", 1)[0]
    if name.startswith("--"):
        name = "--" + name[2:].split(".", 1)[0].replace("_", "-")
    return name


def check_with_vllm(extra_args: Sequence[str], argv: Sequence[str]) -> None:
    """Validate a vLLM argv with vLLM's own parser, in this process.

    `argv` is the full vLLM argv (`vllm_argv`), `extra_args` the part of it the user gave after
    `--`. Catches unknown extra arguments, values vLLM rejects, and extra arguments that set
    something a typed flag owns (`-- --block-size 16` is refused, `-- -tp 2` is fine).
    Raises WorkerConfigError.
    """
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm api_server"))
    actions = parser._option_string_actions  # argparse's option-string -> action table
    for token in extra_args:
        name = _option_name(token)
        if name is None:
            continue
        action = actions.get(name)
        if action is None and name.startswith("--no-"):
            action = actions.get("--" + name.removeprefix("--no-"))
        if action is None:
            raise WorkerConfigError(f"unknown vLLM argument after `--`: {token!r}")
        owner = _OWNED_DESTS.get(action.dest)
        if owner is not None:
            raise WorkerConfigError(
                f"extra vLLM argument {token!r} conflicts with a bisllm-worker setting: {owner}"
            )

    def fail(message: str) -> None:
        raise WorkerConfigError(f"vLLM rejects the arguments: {message}")

    parser.error = fail  # type: ignore[method-assign,assignment]
    ns = parser.parse_args(list(argv))
    if getattr(ns, "model_tag", None) is not None:
        raise WorkerConfigError(
            f"positional argument {ns.model_tag!r} after `--`: the model is given with --model"
        )


def check_in_subprocess(cfg: WorkerConfig, timeout_s: float = 120.0) -> None:
    """Run `check_with_vllm` for `cfg` in a short-lived child process.

    Importing vLLM's parser costs ~1 GiB of resident memory (torch comes with it) that the
    supervisor would otherwise keep for the worker's whole life, next to the server that needs
    it; a child gives it back. Raises WorkerConfigError with the child's message.
    """
    request = json.dumps({"extra_args": list(cfg.extra_args), "argv": vllm_argv(cfg)})
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bisllm_workers.vllm_worker._check", request],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise WorkerConfigError(
            f"checking the vLLM arguments took over {timeout_s:.0f} s"
        ) from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise WorkerConfigError(
            lines[-1] if lines else f"argument check failed ({done.returncode})"
        )
