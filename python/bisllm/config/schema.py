"""The `config.yaml` schema: msgspec Structs in BIS-LLM's names and nesting.

A deployment is one YAML file. Its `trt_llm` block is BIS-LLM's (Baseten Inference Stack v2)
Truss block, field for field, so a BIS-LLM user can paste theirs. What BIS-LLM configures
elsewhere (its Management API's `llm_config` block and the deployment's autoscaling settings)
gets a top-level block of the same name here, and `bisllm` holds what only bisllm has: how
`bisllm serve` runs the stack on one machine.

    model_name            display name (and the served name unless runtime.served_model_name)
    resources             accelerator "H100:4", use_gpu
    trt_llm               inference_stack v2, build (checkpoint, quantization), runtime (engine)
    llm_config            b10_routing_config, is_disaggregated, b10_disagg_config, speculative_config
    autoscaling_settings  min/max_replica, autoscaling_window, scale_down_delay, target_in_flight_tokens
    bisllm                engine_backend vllm | mocker, ports, router policy, process settings

Every field has a default and a description (`msgspec.Meta(description=...)`), so the JSON
schema (`bisllm config schema`) and docs/config.md carry the same words. Unknown fields are
errors (`forbid_unknown_fields`); the validator (validate.py) reports them with their path and
a suggestion instead of letting msgspec stop at the first one.

Sources for names, defaults and ranges (read 2025/2026):
- https://docs.baseten.co/engines/bis-llm/bis-llm-config (v2 reference config)
- https://docs.baseten.co/engines/bis-llm/overview (canonical DeepSeek V3.1 NVFP4 on B200:4)
- https://docs.baseten.co/engines/bis-llm/migrate-from-v1 (v1 -> v2 steps and error messages)
- https://docs.baseten.co/engines/bis-llm/advanced-features (b10_routing_config,
  is_disaggregated + b10_disagg_config, speculative_config)
- https://docs.baseten.co/engines/performance-concepts/autoscaling-engines (target_in_flight_tokens)
- https://docs.baseten.co/deployment/autoscaling/overview (min_replica, max_replica,
  autoscaling_window, scale_down_delay, concurrency_target, target_utilization_percentage)
- https://docs.baseten.co/engines/engine-builder-llm/engine-builder-config (v1 fields)
- basetenlabs/truss truss/base/trt_llm_config.py (ranges: max_batch_size 1..2048,
  max_num_tokens >64..131072, max_seq_len 1..1048576, calibration sizes multiple of 64)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "AutoscalingSettings",
    "BisllmSettings",
    "BuildConfig",
    "CheckpointRepository",
    "CheckpointSource",
    "Config",
    "DecodingType",
    "DisaggConfig",
    "EngineBackend",
    "LlmConfig",
    "MockerSettings",
    "QuantizationConfig",
    "QuantizationType",
    "Resources",
    "RouterPolicy",
    "RoutingConfig",
    "RuntimeConfig",
    "SpeculativeConfig",
    "TrtLlmConfig",
    "WorkerRole",
]


def _doc(text: str, **constraints: Any) -> msgspec.Meta:
    """A field description (plus optional msgspec constraints) in one place."""
    return msgspec.Meta(description=text, **constraints)


class _Block(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base of every config block: keyword-only, unknown fields rejected, defaults omitted on dump."""


# ---- trt_llm.build ---------------------------------------------------------------------------

CheckpointSource = Literal["HF", "LOCAL", "S3", "GCS", "AZURE", "REMOTE_URL", "BASETEN_TRAINING"]
"""Where the checkpoint lives. `bisllm serve` loads LOCAL and HF; the others are valid BIS-LLM
values that need a download step first (see checkpoint.py)."""

QuantizationType = Literal["no_quant", "fp8", "fp8_kv", "fp4", "fp4_kv", "fp4_mlp_only"]
"""BIS-LLM v2 quantization types. `no_quant` serves the checkpoint's own precision, including
pre-quantized ModelOpt/NVFP4 checkpoints, whose quantization vLLM reads from config.json."""


class CheckpointRepository(_Block):
    """Where the model checkpoint (config.json, tokenizer, safetensors) comes from."""

    source: Annotated[
        CheckpointSource,
        _doc(
            "HF (Hugging Face Hub), LOCAL (a directory on this machine), or one of BIS-LLM's "
            "remote stores S3, GCS, AZURE, REMOTE_URL, BASETEN_TRAINING."
        ),
    ] = "HF"
    repo: Annotated[
        str,
        _doc(
            "HF: the repo id (`org/name`). LOCAL: a directory path, relative paths resolved "
            "against the current working directory. Others: bucket path or URL."
        ),
    ] = ""
    revision: Annotated[
        str | None, _doc("HF only: branch, tag or commit; the repo's default branch if unset.")
    ] = None
    runtime_secret_name: Annotated[
        str,
        _doc(
            "Name of the secret holding the access token. bisllm reads it from the environment "
            "variable of the same name upper-cased (hf_access_token -> HF_ACCESS_TOKEN), falling "
            "back to huggingface_hub's own HF_TOKEN."
        ),
    ] = "hf_access_token"


class QuantizationConfig(_Block):
    """Calibration settings of BIS-LLM's build-time quantization.

    Accepted for compatibility and range-checked like BIS-LLM does; vLLM quantizes FP8 dynamically
    at load time without calibration, so bisllm does not use them.
    """

    calib_size: Annotated[
        int,
        _doc("Calibration samples (64..16384, multiple of 64).", ge=64, le=16384, multiple_of=64),
    ] = 1024
    calib_dataset: Annotated[str, _doc("Hugging Face dataset used for calibration.")] = (
        "abisee/cnn_dailymail"
    )
    calib_max_seq_length: Annotated[
        int,
        _doc(
            "Longest calibration sample (64..16384, multiple of 64).",
            ge=64,
            le=16384,
            multiple_of=64,
        ),
    ] = 1536


class BuildConfig(_Block):
    """`trt_llm.build`: in v2 only the checkpoint and its quantization (five fields)."""

    checkpoint_repository: Annotated[
        CheckpointRepository | None,
        _doc("The model checkpoint. Required unless skip_build_result is true."),
    ] = None
    quantization_type: Annotated[
        QuantizationType,
        _doc(
            "no_quant | fp8 | fp8_kv | fp4 | fp4_kv | fp4_mlp_only. FP8 needs an Ada/Hopper or newer "
            "GPU, FP4 a Blackwell GPU; see docs/config.md for what vLLM does with each."
        ),
    ] = "no_quant"
    quantization_config: Annotated[
        QuantizationConfig, _doc("Calibration settings (accepted, unused by vLLM).")
    ] = msgspec.field(default_factory=QuantizationConfig)
    num_builder_gpus: Annotated[
        Annotated[int, msgspec.Meta(ge=1)] | None,
        _doc("GPUs for BIS-LLM's build step; bisllm has no build step and ignores it."),
    ] = None
    skip_build_result: Annotated[
        bool,
        _doc(
            "Serve the checkpoint as is, without a build/quantization step; then "
            "quantization_type must be no_quant."
        ),
    ] = False


# ---- trt_llm.runtime --------------------------------------------------------------------------


class RuntimeConfig(_Block):
    """`trt_llm.runtime`: engine limits, mapped to vLLM engine arguments (engine_args.py)."""

    max_seq_len: Annotated[
        Annotated[int, msgspec.Meta(ge=1, le=1048576)] | None,
        _doc(
            "Longest sequence (prompt + output) per request, 1..1048576 -> vLLM max_model_len; "
            "the model's max_position_embeddings if unset."
        ),
    ] = None
    max_batch_size: Annotated[
        int, _doc("Sequences batched per step, 1..2048 -> vLLM max_num_seqs.", ge=1, le=2048)
    ] = 256
    max_num_tokens: Annotated[
        int,
        _doc(
            "Tokens batched per step, 65..131072 -> vLLM max_num_batched_tokens.", gt=64, le=131072
        ),
    ] = 8192
    tensor_parallel_size: Annotated[
        int,
        _doc("GPUs per worker for tensor parallelism; at most the GPUs in resources.", ge=1),
    ] = 1
    enable_chunked_prefill: Annotated[
        bool,
        _doc(
            "Split long prefills into max_num_tokens chunks so decodes keep running; when false, "
            "max_num_tokens must cover max_seq_len."
        ),
    ] = True
    served_model_name: Annotated[
        str | None,
        _doc("The `model` name clients send and responses carry; model_name if unset."),
    ] = None
    patch_kwargs: Annotated[
        dict[str, Any],
        _doc(
            "Extra vLLM engine arguments (snake_case or dashed), passed through to the engine. "
            "Keys that a typed field already sets are rejected."
        ),
    ] = msgspec.field(default_factory=dict)


class TrtLlmConfig(_Block):
    """`trt_llm`: BIS-LLM's block. bisllm serves the v2 stack (BIS-LLM) only."""

    inference_stack: Annotated[
        Literal["v1", "v2"],
        _doc(
            "v2 (BIS-LLM). v1 (Engine-Builder-LLM) configs are rejected; `bisllm config migrate` "
            "rewrites them. A missing value reads as v2, so v1 leftovers are reported field by field."
        ),
    ] = "v2"
    build: Annotated[BuildConfig, _doc("Checkpoint and quantization.")] = msgspec.field(
        default_factory=BuildConfig
    )
    runtime: Annotated[RuntimeConfig, _doc("Engine limits and extra engine arguments.")] = (
        msgspec.field(default_factory=RuntimeConfig)
    )


# ---- llm_config (BIS-LLM's Management API block) ------------------------------------------------


class RoutingConfig(_Block):
    """`llm_config.b10_routing_config`: the KV-aware router's knobs (BIS-LLM defaults)."""

    router_queue_policy: Annotated[
        Literal["fcfs", "wspt"],
        _doc(
            "Order of queued requests when every worker is saturated: fcfs (first come, first "
            "served; fair, best tail TTFT) or wspt (weighted shortest processing time; best mean "
            "TTFT, may starve long prompts). Validated; the router does not queue yet."
        ),
    ] = "fcfs"
    router_overlap_score_weight: Annotated[
        float,
        _doc(
            "Weight of prefill cost against decode load in the KV-aware cost; higher favours "
            "cache hits, lower favours balance -> bisllm-router --overlap-weight. Default 8: "
            "bisllm's measured best on the Mooncake trace (bench/results/README.md); BIS-LLM "
            "documents 3.5 for its own cost function.",
            ge=0,
        ),
    ] = 8.0
    router_temperature: Annotated[
        float,
        _doc(
            "Randomness of worker choice (softmax over costs); 0 picks the cheapest "
            "-> bisllm-router --temperature. Default 0: 0.1 cost ~22% p90 TTFT on the Mooncake "
            "trace (bench/results/README.md).",
            ge=0,
        ),
    ] = 0.0


class DisaggConfig(_Block):
    """`llm_config.b10_disagg_config`: one replica = this many prefill and decode workers."""

    prefill_workers_per_replica: Annotated[
        Annotated[int, msgspec.Meta(ge=1)] | None,
        _doc("Prefill workers per replica (>= 1); required when is_disaggregated."),
    ] = None
    decode_workers_per_replica: Annotated[
        Annotated[int, msgspec.Meta(ge=1)] | None,
        _doc("Decode workers per replica (>= 1); required when is_disaggregated."),
    ] = None


DecodingType = Literal["Eagle", "Eagle3", "MTP", "NGram"]
"""Speculative decoding types; YAML values match case-insensitively, as BIS-LLM's do."""


class SpeculativeConfig(_Block):
    """`llm_config.speculative_config`: becomes vLLM's --speculative-config JSON."""

    decoding_type: Annotated[
        DecodingType | None,
        _doc(
            "Eagle | Eagle3 (a trained draft head), MTP (the model's own multi-token-prediction "
            "layers, e.g. DeepSeek V3) or NGram (prompt lookup, no draft model). Required."
        ),
    ] = None
    speculative_model_dir: Annotated[
        str | None, _doc("Eagle/Eagle3 only, required: directory of the draft head's weights.")
    ] = None
    num_nextn_predict_layers: Annotated[
        Annotated[int, msgspec.Meta(ge=1)] | None,
        _doc("MTP only, required: the model's next-token prediction layers."),
    ] = None
    max_draft_len: Annotated[
        Annotated[int, msgspec.Meta(ge=1)] | None,
        _doc(
            "Tokens drafted per step -> vLLM num_speculative_tokens. Unset: 4 for NGram, 3 for "
            "Eagle/Eagle3, num_nextn_predict_layers for MTP."
        ),
    ] = None
    prompt_lookup_max: Annotated[
        Annotated[int, msgspec.Meta(ge=1)] | None,
        _doc("NGram only: longest n-gram matched in the prompt -> vLLM prompt_lookup_max."),
    ] = None
    eagle3_one_model: Annotated[
        bool,
        _doc(
            "Eagle/Eagle3 only: BIS-LLM's fused draft+target mode (TensorRT-LLM). vLLM has no "
            "such mode, so it has no effect here."
        ),
    ] = False


class LlmConfig(_Block):
    """`llm_config`: what BIS-LLM takes through its Management API, kept in the one file here."""

    b10_routing_config: Annotated[RoutingConfig, _doc("KV-aware routing knobs.")] = msgspec.field(
        default_factory=RoutingConfig
    )
    is_disaggregated: Annotated[
        bool,
        _doc("Split prefill and decode onto separate workers; needs b10_disagg_config."),
    ] = False
    b10_disagg_config: Annotated[
        DisaggConfig | None,
        _doc("Workers per replica when disaggregated; only with is_disaggregated: true."),
    ] = None
    speculative_config: Annotated[
        SpeculativeConfig | None, _doc("Speculative decoding; off when unset.")
    ] = None


# ---- autoscaling_settings -----------------------------------------------------------------------


class AutoscalingSettings(_Block):
    """Token-based autoscaling (BIS-LLM): replicas = in-flight tokens / target_in_flight_tokens.

    `bisllm serve` starts min_replica replicas; the autoscaler scales between min and max.
    BIS-LLM rejects the request-based `concurrency_target` and `target_utilization_percentage`.
    """

    min_replica: Annotated[
        int, _doc("Replicas kept running; BIS-LLM has no scale to zero, so >= 1.", ge=1)
    ] = 1
    max_replica: Annotated[int, _doc("Most replicas; >= min_replica.", ge=1)] = 1
    autoscaling_window: Annotated[
        int,
        _doc(
            "Seconds of in-flight tokens averaged per decision (10..3600; BIS-LLM suggests 300).",
            ge=10,
            le=3600,
        ),
    ] = 300
    scale_down_delay: Annotated[
        int,
        _doc("Seconds load must stay low before replicas are removed (0..3600).", ge=0, le=3600),
    ] = 300
    target_in_flight_tokens: Annotated[
        int,
        _doc(
            "In-flight tokens (uncached prefill + decode sequence tokens) per replica; BIS-LLM "
            "suggests 50,000..150,000 to start.",
            ge=1,
        ),
    ] = 50000


# ---- resources ------------------------------------------------------------------------------------


class Resources(_Block):
    """Truss `resources`: what one replica's worker runs on."""

    accelerator: Annotated[
        str | None,
        _doc("GPU type and count, `H100:4`, `B200`, `L4:2`; unset = CPU only."),
    ] = None
    use_gpu: Annotated[bool, _doc("True when accelerator is set (as Truss writes it).")] = False
    cpu: Annotated[str | None, _doc("CPU request (Truss); informational here.")] = None
    memory: Annotated[str | None, _doc("Memory request (Truss); informational here.")] = None


# ---- bisllm (bisllm-only: how `bisllm serve` runs on one machine) -------------------------------

EngineBackend = Literal["vllm", "mocker"]
RouterPolicy = Literal["kv_aware", "round_robin", "random", "least_tokens", "power_of_two"]
WorkerRole = Literal["aggregated", "prefill", "decode"]


class MockerSettings(_Block):
    """The engine simulator (`bisllm-mocker`) used when engine_backend is mocker."""

    profile: Annotated[
        str | None, _doc("Named step-time profile -> --profile; the mocker's default if unset.")
    ] = None
    speedup: Annotated[
        float, _doc("Run this many times faster than real time -> --speedup.", gt=0)
    ] = 1.0


class BisllmSettings(_Block):
    """`bisllm`: bisllm-only settings of `bisllm serve` (BIS-LLM runs these on its platform)."""

    engine_backend: Annotated[
        EngineBackend,
        _doc("vllm: real vLLM workers (bisllm-worker). mocker: the simulator (bisllm-mocker)."),
    ] = "vllm"
    host: Annotated[str, _doc("Address the router listens on.")] = "127.0.0.1"
    port: Annotated[int, _doc("Router port (the OpenAI endpoint).", ge=1, le=65535)] = 8000
    worker_host: Annotated[str, _doc("Address the workers listen on.")] = "127.0.0.1"
    worker_base_port: Annotated[
        int, _doc("First worker port; worker i listens on worker_base_port + i.", ge=1, le=65535)
    ] = 8101
    nixl_side_channel_base_port: Annotated[
        int,
        _doc(
            "Disaggregated workers only: worker i's NIXL handshake port is this + i x "
            "tensor_parallel_size (VLLM_NIXL_SIDE_CHANNEL_PORT must differ per server).",
            ge=1,
            le=65535,
        ),
    ] = 5600
    router_policy: Annotated[
        RouterPolicy,
        _doc("Dispatch policy; kv_aware is BIS-LLM's, the others are for comparison."),
    ] = "kv_aware"
    block_size: Annotated[
        Annotated[int, msgspec.Meta(ge=1)] | None,
        _doc("KV block size in tokens -> --block-size; vLLM on CPU needs a multiple of 32."),
    ] = None
    kv_cache_space_gib: Annotated[
        Annotated[float, msgspec.Meta(gt=0)] | None,
        _doc(
            "KV cache size per worker in GiB -> --kv-cache-space-gib (vLLM's "
            "--kv-cache-memory-bytes); vLLM sizes it from free memory if unset."
        ),
    ] = None
    api_key_env: Annotated[
        str | None,
        _doc("Environment variable holding the API key clients must send; no auth if unset."),
    ] = None
    admin_key_env: Annotated[
        str | None, _doc("Environment variable holding the router's admin key.")
    ] = None
    startup_timeout_s: Annotated[
        float, _doc("Seconds to wait for every process to report healthy.", gt=0)
    ] = 600.0
    shutdown_grace_s: Annotated[
        float, _doc("Seconds between SIGTERM and SIGKILL on shutdown.", ge=0)
    ] = 10.0
    log_dir: Annotated[
        str | None, _doc("Directory for each process's log; a new temporary one if unset.")
    ] = None
    mocker: Annotated[MockerSettings, _doc("Simulator settings.")] = msgspec.field(
        default_factory=MockerSettings
    )
    worker_command: Annotated[
        list[str], _doc("Command that starts one vLLM worker (bisllm-worker's CLI).")
    ] = msgspec.field(default_factory=lambda: ["bisllm-worker"])
    mocker_command: Annotated[
        list[str], _doc("Command that starts the simulator fleet (bisllm-mocker's CLI).")
    ] = msgspec.field(default_factory=lambda: ["bisllm-mocker"])
    router_command: Annotated[
        list[str], _doc("Command that starts the router (bisllm-router's CLI).")
    ] = msgspec.field(default_factory=lambda: ["bisllm-router"])


# ---- the whole file -------------------------------------------------------------------------------


class Config(_Block):
    """One deployment: a BIS-LLM config.yaml plus bisllm's blocks."""

    model_name: Annotated[
        str, _doc("Deployment name; also the served model name unless runtime sets one.")
    ] = "bisllm-model"
    description: Annotated[str | None, _doc("Free text (Truss).")] = None
    resources: Annotated[Resources, _doc("Accelerator per worker.")] = msgspec.field(
        default_factory=Resources
    )
    environment_variables: Annotated[
        dict[str, str], _doc("Extra environment variables for every process started.")
    ] = msgspec.field(default_factory=dict)
    secrets: Annotated[
        dict[str, str | None],
        _doc("Truss secret names; bisllm reads secrets from the environment, never from here."),
    ] = msgspec.field(default_factory=dict)
    model_metadata: Annotated[
        dict[str, Any], _doc("Truss metadata (tags, example input); not used by bisllm.")
    ] = msgspec.field(default_factory=dict)
    trt_llm: Annotated[TrtLlmConfig, _doc("BIS-LLM's build and runtime block.")] = msgspec.field(
        default_factory=TrtLlmConfig
    )
    llm_config: Annotated[
        LlmConfig, _doc("Routing, disaggregation and speculation (BIS-LLM's llm_config).")
    ] = msgspec.field(default_factory=LlmConfig)
    autoscaling_settings: Annotated[
        AutoscalingSettings, _doc("Replica bounds and token-based autoscaling.")
    ] = msgspec.field(default_factory=AutoscalingSettings)
    bisllm: Annotated[BisllmSettings, _doc("How `bisllm serve` runs on this machine.")] = (
        msgspec.field(default_factory=BisllmSettings)
    )

    @property
    def served_model_name(self) -> str:
        """The name clients put in `model`: runtime.served_model_name, else model_name."""
        return self.trt_llm.runtime.served_model_name or self.model_name

    @property
    def workers_per_replica(self) -> int:
        """Worker processes in one replica: 1 aggregated, or prefill + decode when disaggregated."""
        llm = self.llm_config
        if llm.is_disaggregated and llm.b10_disagg_config is not None:
            disagg = llm.b10_disagg_config
            return (disagg.prefill_workers_per_replica or 1) + (
                disagg.decode_workers_per_replica or 1
            )
        return 1

    def worker_roles(self) -> list[WorkerRole]:
        """The role of each worker `bisllm serve` starts, in port order (min_replica replicas)."""
        llm = self.llm_config
        per_replica: list[WorkerRole] = ["aggregated"]
        if llm.is_disaggregated and llm.b10_disagg_config is not None:
            disagg = llm.b10_disagg_config
            prefill: list[WorkerRole] = ["prefill"] * (disagg.prefill_workers_per_replica or 1)
            decode: list[WorkerRole] = ["decode"] * (disagg.decode_workers_per_replica or 1)
            per_replica = prefill + decode
        return per_replica * self.autoscaling_settings.min_replica
