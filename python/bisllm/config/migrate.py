"""Rewrite a v1 (Engine-Builder-LLM) config as v2 (BIS-LLM), the steps of BIS-LLM's guide.

https://docs.baseten.co/engines/bis-llm/migrate-from-v1 lists seven steps; `migrate` applies
them and says what it did in notes:

1. `inference_stack: v2` first in `trt_llm`;
2. drop `build.base_model` (v2 detects the architecture);
3. move `max_seq_len`, `max_batch_size`, `max_num_tokens` from build to runtime;
4. `build.tensor_parallel_count` -> `runtime.tensor_parallel_size`;
5. drop `build.plugin_configuration` (v2 handles paged KV cache and context FMHA itself);
6. drop `build.speculator` (no lookahead decoding in v2; speculative_config is the way);
7. `runtime.enable_chunked_context` -> `runtime.enable_chunked_prefill`.

It also drops the other v1-only build and runtime fields and `version_overrides`, and the
request-based `concurrency_target` / `target_utilization_percentage` (v2 scales on
`target_in_flight_tokens`; with `tokens_per_request` it computes that target). YAML comments do
not survive (PyYAML); everything else keeps its order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["MigrationResult", "dump_yaml", "migrate"]

_MOVED_TO_RUNTIME = ("max_seq_len", "max_batch_size", "max_num_tokens")

_DROPPED_BUILD = {
    "base_model": "v2 detects the architecture from the checkpoint",
    "plugin_configuration": (
        "v2 handles paged_kv_cache, use_paged_context_fmha and use_fp8_context_fmha itself"
    ),
    "max_beam_width": "v2 has no such option (beam width is 1)",
    "max_prompt_embedding_table_size": "v2 has no such option",
    "gather_all_token_logits": "v2 has no such option",
    "strongly_typed": "v2 has no such option",
    "pipeline_parallel_count": "v2 has no pipeline parallelism option",
    "sequence_parallel_count": "v2 has no such option",
    "moe_expert_parallel_option": "v2 has no such option",
    "lora_adapters": "v2 has no build-time LoRA adapters",
    "lora_configuration": "v2 has no build-time LoRA adapters",
}

_DROPPED_RUNTIME = {
    "kv_cache_free_gpu_mem_fraction": (
        "v2 sizes the KV cache itself (vLLM's knob, a fraction of total GPU memory, is "
        "patch_kwargs.gpu_memory_utilization)"
    ),
    "kv_cache_host_memory_bytes": "v2 has no such option",
    "batch_scheduler_policy": "v2 has no such option",
    "request_default_max_tokens": "v2 has no such option",
    "total_token_limit": "v2 has no such option",
    "webserver_default_route": "v2 has no such option",
}

_LEGACY_QUANT = (
    "weights_int8",
    "weights_kv_int8",
    "weights_int4",
    "weights_int4_kv_int8",
    "smooth_quant",
)


@dataclass
class MigrationResult:
    """The v2 document, and one note per change a reader should know about."""

    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    changed: bool = False


def migrate(raw: dict[str, Any], *, tokens_per_request: int | None = None) -> MigrationResult:
    """Return `raw` rewritten as a v2 config (the input is not modified)."""
    data = dict(raw)
    result = MigrationResult(data)
    trt = raw.get("trt_llm")
    if isinstance(trt, dict):
        data["trt_llm"] = _migrate_trt_llm(trt, result)
    autoscaling = raw.get("autoscaling_settings")
    if isinstance(autoscaling, dict):
        data["autoscaling_settings"] = _migrate_autoscaling(autoscaling, tokens_per_request, result)
    return result


def _migrate_trt_llm(trt: dict[str, Any], result: MigrationResult) -> dict[str, Any]:
    notes = result.notes
    if trt.get("inference_stack") != "v2":
        result.changed = True
    build = dict(trt.get("build") or {})
    old_runtime = dict(trt.get("runtime") or {})
    moved: dict[str, Any] = {}
    for key in _MOVED_TO_RUNTIME:
        if key in build:
            moved[key] = build.pop(key)
            notes.append(f"moved trt_llm.build.{key} to trt_llm.runtime.{key}")
    if "tensor_parallel_count" in build:
        moved["tensor_parallel_size"] = build.pop("tensor_parallel_count")
        notes.append(
            "renamed trt_llm.build.tensor_parallel_count to trt_llm.runtime.tensor_parallel_size"
        )
    for key, why in _DROPPED_BUILD.items():
        if key in build:
            value = build.pop(key)
            extra = ""
            if key == "pipeline_parallel_count" and value not in (None, 1):
                extra = f" (it was {value}: the GPUs it used need tensor_parallel_size instead)"
            notes.append(f"removed trt_llm.build.{key}: {why}{extra}")
    if "speculator" in build:
        spec = build.pop("speculator") or {}
        draft = spec.get("num_draft_tokens") if isinstance(spec, dict) else None
        hint = f", max_draft_len: {draft}" if draft else ""
        notes.append(
            "removed trt_llm.build.speculator: v2 has no lookahead decoding. The closest v2 "
            f"speculation is llm_config.speculative_config: {{decoding_type: NGram{hint}}}"
        )
    quant = build.get("quantization_type")
    if quant in _LEGACY_QUANT:
        notes.append(
            f"trt_llm.build.quantization_type {quant} is a legacy v1 type with no v2 "
            "equivalent: choose no_quant, fp8, fp8_kv, fp4, fp4_kv or fp4_mlp_only"
        )

    runtime: dict[str, Any] = {}
    for key, value in moved.items():
        if key in old_runtime and old_runtime[key] != value:
            notes.append(
                f"trt_llm.runtime.{key} was already {old_runtime[key]!r}; kept it and dropped "
                f"the build value {value!r}"
            )
            continue
        runtime[key] = value
    for key, value in old_runtime.items():
        if key == "enable_chunked_context":
            if "enable_chunked_prefill" in old_runtime:
                notes.append(
                    "removed trt_llm.runtime.enable_chunked_context (enable_chunked_prefill is set)"
                )
            else:
                runtime["enable_chunked_prefill"] = value
                notes.append(
                    "renamed trt_llm.runtime.enable_chunked_context to enable_chunked_prefill"
                )
            continue
        if key in _DROPPED_RUNTIME:
            notes.append(f"removed trt_llm.runtime.{key}: {_DROPPED_RUNTIME[key]}")
            continue
        runtime.setdefault(key, value)

    out: dict[str, Any] = {"inference_stack": "v2", "build": build}
    if runtime:
        out["runtime"] = runtime
    for key, value in trt.items():
        if key in ("inference_stack", "build", "runtime"):
            continue
        if key == "version_overrides":
            notes.append("removed trt_llm.version_overrides: BIS-LLM image versions don't apply")
            continue
        out[key] = value
    if notes:
        result.changed = True
    return out


def _migrate_autoscaling(
    autoscaling: dict[str, Any], tokens_per_request: int | None, result: MigrationResult
) -> dict[str, Any]:
    out = dict(autoscaling)
    concurrency = out.pop("concurrency_target", None)
    utilization = out.pop("target_utilization_percentage", None)
    if utilization is not None:
        result.changed = True
        result.notes.append(
            "removed autoscaling_settings.target_utilization_percentage: v2 scales on tokens"
        )
    if concurrency is not None:
        result.changed = True
        if tokens_per_request and "target_in_flight_tokens" not in out:
            out["target_in_flight_tokens"] = int(concurrency) * tokens_per_request
            result.notes.append(
                f"replaced autoscaling_settings.concurrency_target {concurrency} with "
                f"target_in_flight_tokens {out['target_in_flight_tokens']} "
                f"({concurrency} x {tokens_per_request} tokens per request)"
            )
        else:
            result.notes.append(
                f"removed autoscaling_settings.concurrency_target {concurrency}: v2 scales on "
                "target_in_flight_tokens = concurrency_target x average tokens per request "
                "(pass --tokens-per-request N to compute it)"
            )
    return out


def dump_yaml(data: dict[str, Any]) -> str:
    """YAML text in block style, keys in the document's order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
