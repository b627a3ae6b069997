"""config.yaml -> vLLM engine arguments, as the argv of one `bisllm-worker`.

A pure mapping (no I/O), so it is tested line by line and documented once. `bisllm-worker` owns
some vLLM flags itself (model, port, KV events, the disaggregation connector); the rest go
after `--` as plain vLLM arguments.

| config field                                  | bisllm-worker / vLLM argument          | notes |
|-----------------------------------------------|----------------------------------------|-------|
| checkpoint_repository (resolved to a path)    | --model PATH                           | checkpoint.py resolves HF/LOCAL to a directory |
| trt_llm.runtime.served_model_name / model_name| --served-model-name NAME               | the name clients send in `model` |
| trt_llm.runtime.max_seq_len                   | --max-model-len N                      | omitted when unset: vLLM uses the model's max_position_embeddings |
| trt_llm.runtime.max_batch_size                | --max-num-seqs N                       | |
| trt_llm.runtime.max_num_tokens                | --max-num-batched-tokens N             | |
| trt_llm.runtime.tensor_parallel_size          | -- --tensor-parallel-size N            | |
| trt_llm.runtime.enable_chunked_prefill        | -- --enable-chunked-prefill / --no-enable-chunked-prefill | |
| trt_llm.build.quantization_type: fp8          | -- --quantization fp8                  | dynamic FP8 weights, 16-bit KV cache |
| trt_llm.build.quantization_type: fp8_kv       | -- --quantization fp8 --kv-cache-dtype fp8 | FP8 weights and KV cache |
| trt_llm.build.quantization_type: no_quant     | (nothing)                              | pre-quantized checkpoints: vLLM reads config.json |
| trt_llm.build.quantization_type: fp4*         | rejected                               | FP4 needs calibration; use a pre-quantized NVFP4 checkpoint |
| llm_config.speculative_config                 | --speculative-config JSON              | see speculative_config_dict |
| trt_llm.runtime.patch_kwargs {k: v}           | -- --k v                               | see patch_kwargs_args; keys of typed fields rejected |
| bisllm.block_size                             | --block-size N                         | omitted when unset (vLLM: 16 on GPU, 128 on CPU) |
| bisllm.kv_cache_space_gib                     | --kv-cache-space-gib X                 | the worker passes vLLM --kv-cache-memory-bytes |
| bisllm.worker_host, worker_base_port + i      | --host H --port P                      | |
| worker role (llm_config disaggregation)       | --role aggregated / prefill / decode   | the worker sets vLLM's KV connector from it |

speculative_config -> vLLM's `--speculative-config`:

| decoding_type | JSON                                                                                      |
|---------------|-------------------------------------------------------------------------------------------|
| NGram         | {"method": "ngram", "num_speculative_tokens": max_draft_len or 4, "prompt_lookup_max": P?} |
| Eagle         | {"method": "eagle", "model": speculative_model_dir, "num_speculative_tokens": max_draft_len or 3} |
| Eagle3        | {"method": "eagle3", "model": speculative_model_dir, "num_speculative_tokens": max_draft_len or 3} |
| MTP           | {"method": "mtp", "num_speculative_tokens": max_draft_len or num_nextn_predict_layers}     |

docs/config.md carries the same tables; a test keeps MAPPING and that file in step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bisllm.config.schema import Config, QuantizationType, SpeculativeConfig, WorkerRole

__all__ = [
    "MAPPING",
    "PATCH_KWARGS_RESERVED",
    "EngineArgsError",
    "MappingRow",
    "normalize_engine_arg",
    "patch_kwargs_args",
    "quantization_args",
    "speculative_config_dict",
    "vllm_engine_args",
    "worker_argv",
]


class EngineArgsError(ValueError):
    """The config asks for something vLLM cannot do (config check reports it first)."""


@dataclass(frozen=True, slots=True)
class MappingRow:
    """One row of the documented config -> engine argument table."""

    field: str
    argument: str


MAPPING: tuple[MappingRow, ...] = (
    MappingRow("trt_llm.runtime.max_seq_len", "--max-model-len"),
    MappingRow("trt_llm.runtime.max_batch_size", "--max-num-seqs"),
    MappingRow("trt_llm.runtime.max_num_tokens", "--max-num-batched-tokens"),
    MappingRow("trt_llm.runtime.tensor_parallel_size", "--tensor-parallel-size"),
    MappingRow("trt_llm.runtime.enable_chunked_prefill", "--enable-chunked-prefill"),
    MappingRow("trt_llm.runtime.served_model_name", "--served-model-name"),
    MappingRow("trt_llm.build.quantization_type", "--quantization"),
    MappingRow("trt_llm.build.quantization_type", "--kv-cache-dtype"),
    MappingRow("llm_config.speculative_config", "--speculative-config"),
    MappingRow("trt_llm.runtime.patch_kwargs", "--"),
    MappingRow("bisllm.block_size", "--block-size"),
    MappingRow("bisllm.kv_cache_space_gib", "--kv-cache-space-gib"),
)
"""The config fields that become engine arguments (docs/config.md lists each)."""

# patch_kwargs keys bisllm sets itself, normalized (snake_case), -> (where to set it instead, or
# who owns it; whether the user can set it there).
PATCH_KWARGS_RESERVED: dict[str, tuple[str, bool]] = {
    # bisllm's typed fields, by their own names (BIS-LLM rejects these too, plus build_config)
    "max_seq_len": ("trt_llm.runtime.max_seq_len", True),
    "max_batch_size": ("trt_llm.runtime.max_batch_size", True),
    "max_num_tokens": ("trt_llm.runtime.max_num_tokens", True),
    "tensor_parallel_size": ("trt_llm.runtime.tensor_parallel_size", True),
    "enable_chunked_prefill": ("trt_llm.runtime.enable_chunked_prefill", True),
    "served_model_name": ("trt_llm.runtime.served_model_name", True),
    "patch_kwargs": ("trt_llm.runtime.patch_kwargs", True),
    "build_config": ("trt_llm.build", True),
    # ... and by the vLLM names they map to
    "max_model_len": ("trt_llm.runtime.max_seq_len", True),
    "max_num_seqs": ("trt_llm.runtime.max_batch_size", True),
    "max_num_batched_tokens": ("trt_llm.runtime.max_num_tokens", True),
    "quantization": ("trt_llm.build.quantization_type", True),
    "kv_cache_dtype": ("trt_llm.build.quantization_type (fp8_kv)", True),
    "speculative_config": ("llm_config.speculative_config", True),
    "model": ("trt_llm.build.checkpoint_repository", True),
    "tokenizer": ("trt_llm.build.checkpoint_repository", True),
    "revision": ("trt_llm.build.checkpoint_repository.revision", True),
    "block_size": ("bisllm.block_size", True),
    "host": ("bisllm.worker_host", True),
    "port": ("bisllm.worker_base_port", True),
    "kv_cache_memory_bytes": ("bisllm.kv_cache_space_gib", True),
    "data_parallel_size": ("bisllm-worker's --data-parallel-size (not in config.yaml yet)", False),
    "enable_prompt_tokens_details": (
        "bisllm-worker, which keeps it on (the router reads usage.cached_tokens)",
        False,
    ),
    # owned by bisllm-worker
    "kv_events_config": ("bisllm-worker, which publishes KV events for the router", False),
    "kv_transfer_config": (
        "bisllm-worker, which sets vLLM's KV connector from llm_config.is_disaggregated",
        False,
    ),
    "enable_prefix_caching": (
        "bisllm-worker, which keeps prefix caching on (KV-aware routing needs it)",
        False,
    ),
}


def normalize_engine_arg(key: str) -> str:
    """`--max-model-len` / `max-model-len` / `max_model_len` -> `max_model_len`."""
    return key.strip().lstrip("-").replace("-", "_")


def _flag(key: str) -> str:
    return "--" + normalize_engine_arg(key).replace("_", "-")


def _scalar(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def patch_kwargs_args(patch_kwargs: dict[str, Any]) -> list[str]:
    """patch_kwargs as vLLM CLI arguments, in the file's order.

    `k: true` -> `--k`; `k: false` -> `--no-k` (vLLM's boolean flags are BooleanOptionalAction);
    `k: null` -> omitted (vLLM's default stands); a mapping -> `--k '<json>'` (vLLM parses JSON
    for its config-object arguments); a list -> `--k a b c`; anything else -> `--k value`.
    """
    argv: list[str] = []
    for key, value in patch_kwargs.items():
        flag = _flag(key)
        if value is None:
            continue
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + flag[2:])
        elif isinstance(value, list):
            argv += [flag, *(_scalar(v) for v in value)]
        else:
            argv += [flag, _scalar(value)]
    return argv


def quantization_args(quantization_type: QuantizationType) -> list[str]:
    """vLLM arguments for a BIS-LLM quantization type (see the module table)."""
    if quantization_type == "no_quant":
        return []
    if quantization_type == "fp8":
        return ["--quantization", "fp8"]
    if quantization_type == "fp8_kv":
        return ["--quantization", "fp8", "--kv-cache-dtype", "fp8"]
    raise EngineArgsError(
        f"quantization_type {quantization_type} is BIS-LLM's calibrated build-time FP4; vLLM "
        "cannot quantize to FP4 at load time. Serve a pre-quantized NVFP4 checkpoint with "
        "quantization_type: no_quant, or use fp8."
    )


_DEFAULT_DRAFT_LEN = {"NGram": 4, "Eagle": 3, "Eagle3": 3}


def speculative_config_dict(spec: SpeculativeConfig) -> dict[str, Any]:
    """BIS-LLM's speculative_config as vLLM's SpeculativeConfig fields (module table)."""
    kind = spec.decoding_type
    if kind == "NGram":
        out: dict[str, Any] = {
            "method": "ngram",
            "num_speculative_tokens": spec.max_draft_len or _DEFAULT_DRAFT_LEN[kind],
        }
        if spec.prompt_lookup_max is not None:
            out["prompt_lookup_max"] = spec.prompt_lookup_max
        return out
    if kind in ("Eagle", "Eagle3"):
        if spec.speculative_model_dir is None:
            raise EngineArgsError(f"decoding_type {kind} needs speculative_model_dir")
        return {
            "method": kind.lower(),
            "model": spec.speculative_model_dir,
            "num_speculative_tokens": spec.max_draft_len or _DEFAULT_DRAFT_LEN[kind],
        }
    if kind == "MTP":
        if spec.num_nextn_predict_layers is None:
            raise EngineArgsError("decoding_type MTP needs num_nextn_predict_layers")
        # vLLM 0.10+ names every MTP flavour (deepseek_mtp, qwen3_next_mtp, ...) "mtp" and loads
        # the layers from the target checkpoint itself.
        return {
            "method": "mtp",
            "num_speculative_tokens": spec.max_draft_len or spec.num_nextn_predict_layers,
        }
    raise EngineArgsError("speculative_config needs a decoding_type")


def vllm_engine_args(config: Config) -> list[str]:
    """The plain vLLM arguments bisllm-worker passes through (what follows its `--`)."""
    runtime = config.trt_llm.runtime
    argv = ["--tensor-parallel-size", str(runtime.tensor_parallel_size)]
    argv.append(
        "--enable-chunked-prefill"
        if runtime.enable_chunked_prefill
        else "--no-enable-chunked-prefill"
    )
    argv += quantization_args(config.trt_llm.build.quantization_type)
    argv += patch_kwargs_args(runtime.patch_kwargs)
    return argv


def worker_argv(
    config: Config, *, model_path: str, port: int, role: WorkerRole = "aggregated"
) -> list[str]:
    """Arguments of one `bisllm-worker` (without the command itself) for this config."""
    runtime = config.trt_llm.runtime
    b = config.bisllm
    argv = [
        "--model",
        model_path,
        "--host",
        b.worker_host,
        "--port",
        str(port),
        "--role",
        role,
        "--served-model-name",
        config.served_model_name,
    ]
    if runtime.max_seq_len is not None:
        argv += ["--max-model-len", str(runtime.max_seq_len)]
    argv += ["--max-num-seqs", str(runtime.max_batch_size)]
    argv += ["--max-num-batched-tokens", str(runtime.max_num_tokens)]
    if b.block_size is not None:
        argv += ["--block-size", str(b.block_size)]
    if b.kv_cache_space_gib is not None:
        argv += ["--kv-cache-space-gib", _scalar(b.kv_cache_space_gib)]
    spec = config.llm_config.speculative_config
    if spec is not None:
        argv += ["--speculative-config", _scalar(speculative_config_dict(spec))]
    return [*argv, "--", *vllm_engine_args(config)]
