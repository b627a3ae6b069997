"""config.yaml: BIS-LLM's schema (msgspec), its validation, v1->v2 migration, engine arguments.

    from bisllm.config import load_config, ConfigErrors
    cfg = load_config("examples/tiny-cpu.yaml")       # raises ConfigErrors listing every error
    cfg.trt_llm.runtime.max_batch_size                # 256
    worker_argv(cfg, model_path=..., port=8101)      # bisllm-worker's argv

Modules: schema (the Structs), validate (loading + every rule), migrate (v1 -> v2),
engine_args (config -> vLLM engine arguments), checkpoint (checkpoint_repository -> a directory).
docs/config.md is the user-facing reference.
"""

from bisllm.config.checkpoint import CheckpointError, resolve_checkpoint
from bisllm.config.engine_args import (
    MAPPING,
    EngineArgsError,
    speculative_config_dict,
    vllm_engine_args,
    worker_argv,
)
from bisllm.config.migrate import MigrationResult, dump_yaml, migrate
from bisllm.config.schema import (
    AutoscalingSettings,
    BisllmSettings,
    BuildConfig,
    CheckpointRepository,
    Config,
    DisaggConfig,
    LlmConfig,
    MockerSettings,
    QuantizationConfig,
    Resources,
    RoutingConfig,
    RuntimeConfig,
    SpeculativeConfig,
    TrtLlmConfig,
)
from bisllm.config.validate import (
    Accelerator,
    ConfigError,
    ConfigErrors,
    check_file,
    load_config,
    parse_accelerator,
    parse_config,
    read_yaml,
    validate,
)

__all__ = [
    "MAPPING",
    "Accelerator",
    "AutoscalingSettings",
    "BisllmSettings",
    "BuildConfig",
    "CheckpointError",
    "CheckpointRepository",
    "Config",
    "ConfigError",
    "ConfigErrors",
    "DisaggConfig",
    "EngineArgsError",
    "LlmConfig",
    "MigrationResult",
    "MockerSettings",
    "QuantizationConfig",
    "Resources",
    "RoutingConfig",
    "RuntimeConfig",
    "SpeculativeConfig",
    "TrtLlmConfig",
    "check_file",
    "dump_yaml",
    "load_config",
    "migrate",
    "parse_accelerator",
    "parse_config",
    "read_yaml",
    "resolve_checkpoint",
    "speculative_config_dict",
    "validate",
    "vllm_engine_args",
    "worker_argv",
]
