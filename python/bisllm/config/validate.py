"""Load and validate config.yaml, reporting every error at once with its path and its fix.

msgspec stops at the first error, and a user fixing a config one error per run gives up. So
validation runs in three passes over the raw YAML mapping:

1. **v1 leftovers** (`_v1_prepass`): fields BIS-LLM's v2 validator rejects, with BIS-LLM's own
   words (`Field trt_llm.build.base_model is not allowed to be set when using v2 inference
   stack`), and the request-based autoscaling fields token-based autoscaling rejects. These
   keys are removed so pass 2 does not report them again as unknown.
2. **structure** (`_convert`): each field is converted on its own with msgspec (types, enums,
   ranges), nested blocks recursively; an unknown key gets a did-you-mean or a v1 hint. A bad
   field is dropped (its default stands in) and its path remembered.
3. **rules** (`_RULES`): cross-field checks on the converted Config (checkpoint required,
   accelerator vs quantization, tensor parallelism vs GPUs, disaggregation, speculation,
   patch_kwargs collisions, ports). An error whose path overlaps a path that already failed in
   pass 2 is dropped: it would only repeat the same mistake through a default.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml

from bisllm.config.engine_args import PATCH_KWARGS_RESERVED, normalize_engine_arg
from bisllm.config.schema import Config

__all__ = [
    "V1_BUILD_FIELDS",
    "Accelerator",
    "ConfigError",
    "ConfigErrors",
    "check_file",
    "load_config",
    "parse_accelerator",
    "parse_config",
    "read_yaml",
    "validate",
]


@dataclass(frozen=True, slots=True)
class ConfigError:
    """One problem in a config file: where (dotted path), what, and how to fix it."""

    path: str
    message: str
    fix: str | None = None

    def __str__(self) -> str:
        # BIS-LLM's v1->v2 messages already name the field; don't print the path twice.
        head = self.message if self.path in self.message else f"{self.path}: {self.message}"
        return f"{head}\n  fix: {self.fix}" if self.fix else head


class ConfigErrors(Exception):
    """Every error found in one config file (raised by load_config / parse_config)."""

    def __init__(self, errors: list[ConfigError], source: str = "config") -> None:
        self.errors = errors
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        """All errors, one block each, under a header naming the file."""
        noun = "error" if len(self.errors) == 1 else "errors"
        lines = [f"{self.source}: {len(self.errors)} {noun}"]
        lines += [f"- {e!s}" for e in self.errors]
        return "\n".join(lines)


# ---- YAML --------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys: PyYAML silently keeps the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(text: str, source: str = "config") -> Any:
    """Parse YAML text (duplicate keys rejected); raises ConfigErrors on syntax errors."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigErrors(
            [ConfigError("<yaml>", f"not valid YAML: {exc}", "fix the YAML syntax at that line")],
            source,
        ) from exc


# ---- accelerators -----------------------------------------------------------------------------

# CUDA compute capability per Truss accelerator name. FP8 needs >= 8.9 (Ada, Hopper), FP4 >= 10.0
# (Blackwell); the same lines BIS-LLM's validator draws (truss trt_llm_config.py).
_COMPUTE_CAPABILITY: dict[str, float] = {
    "T4": 7.5,
    "V100": 7.0,
    "A10": 8.6,
    "A10G": 8.6,
    "A100": 8.0,
    "A100_40GB": 8.0,
    "L4": 8.9,
    "L40S": 8.9,
    "H100": 9.0,
    "H100_40GB": 9.0,
    "H200": 9.0,
    "GH200": 9.0,
    "B200": 10.0,
    "GB200": 10.0,
    "B300": 10.3,
    "GB300": 10.3,
}
_FP8_MIN_CC = 8.9
_FP4_MIN_CC = 10.0


@dataclass(frozen=True, slots=True)
class Accelerator:
    """A parsed `resources.accelerator`: GPU type, count, compute capability."""

    name: str
    count: int
    compute_capability: float

    def __str__(self) -> str:
        return f"{self.name}:{self.count}"


def parse_accelerator(spec: str) -> Accelerator:
    """Parse `H100:4` / `B200` (count 1). Raises ValueError with the known names on a bad spec."""
    name, _, count_text = spec.strip().partition(":")
    name = name.strip().upper()
    if name not in _COMPUTE_CAPABILITY:
        known = ", ".join(sorted(_COMPUTE_CAPABILITY))
        raise ValueError(f"unknown accelerator {name!r}; known: {known}")
    count = 1
    if count_text:
        if not count_text.strip().isdigit() or int(count_text) < 1:
            raise ValueError(f"GPU count {count_text!r} must be a positive integer (`{name}:4`)")
        count = int(count_text)
    return Accelerator(name, count, _COMPUTE_CAPABILITY[name])


# ---- pass 1: v1 leftovers ------------------------------------------------------------------------

V1_BUILD_FIELDS: dict[str, str] = {
    "base_model": "remove it: v2 detects the architecture from the checkpoint",
    "max_seq_len": "move it to trt_llm.runtime.max_seq_len",
    "max_batch_size": "move it to trt_llm.runtime.max_batch_size",
    "max_num_tokens": "move it to trt_llm.runtime.max_num_tokens",
    "tensor_parallel_count": "move it to trt_llm.runtime and rename it tensor_parallel_size",
    "plugin_configuration": (
        "remove it: v2 handles paged_kv_cache, use_paged_context_fmha and use_fp8_context_fmha itself"
    ),
    "speculator": (
        "remove it: v2 has no lookahead decoding; use llm_config.speculative_config "
        "(decoding_type: NGram is the closest)"
    ),
    "max_beam_width": "remove it: v2 has no such build option",
    "max_prompt_embedding_table_size": "remove it: v2 has no such build option",
    "gather_all_token_logits": "remove it: v2 has no such build option",
    "strongly_typed": "remove it: v2 has no such build option",
    "pipeline_parallel_count": "remove it: v2 has no pipeline parallelism option",
    "sequence_parallel_count": "remove it: v2 has no such build option",
    "moe_expert_parallel_option": "remove it: v2 has no such build option",
    "lora_adapters": "remove it: v2 has no build-time LoRA adapters",
    "lora_configuration": "remove it: v2 has no build-time LoRA adapters",
}
"""v1 (Engine-Builder-LLM) `trt_llm.build` fields and the fix for each under v2."""

_MIGRATE_HINT = " (or run `bisllm config migrate FILE`)"

_REQUEST_AUTOSCALING_FIELDS = ("concurrency_target", "target_utilization_percentage")


def _v1_prepass(raw: dict[str, Any], errors: list[ConfigError], bad: set[str]) -> None:
    """Report (and remove) what BIS-LLM's v2 stack rejects before the schema sees it."""
    trt = raw.get("trt_llm")
    if isinstance(trt, dict):
        stack = trt.get("inference_stack", "v2")
        if stack == "v1":
            errors.append(
                ConfigError(
                    "trt_llm.inference_stack",
                    "v1 (Engine-Builder-LLM) configs are not served by bisllm, which runs the "
                    "v2 inference stack (BIS-LLM)",
                    "run `bisllm config migrate FILE -o FILE` to rewrite it as v2",
                )
            )
            bad.add("trt_llm")
            raw["trt_llm"] = {}
        else:
            build = trt.get("build")
            if isinstance(build, dict):
                for field, fix in V1_BUILD_FIELDS.items():
                    if field in build:
                        path = f"trt_llm.build.{field}"
                        errors.append(
                            ConfigError(
                                path,
                                f"Field {path} is not allowed to be set when using v2 inference stack",
                                fix + _MIGRATE_HINT,
                            )
                        )
                        del build[field]
    autoscaling = raw.get("autoscaling_settings")
    if isinstance(autoscaling, dict):
        for field in _REQUEST_AUTOSCALING_FIELDS:
            if field in autoscaling:
                errors.append(
                    ConfigError(
                        f"autoscaling_settings.{field}",
                        "BIS-LLM autoscales on tokens and rejects request-based "
                        "concurrency_target / target_utilization_percentage",
                        "remove it and set autoscaling_settings.target_in_flight_tokens = "
                        "concurrency_target x average tokens per request (prompt + output), "
                        "e.g. 10 x 5,000 = 50,000",
                    )
                )
                del autoscaling[field]
    spec = (
        raw.get("llm_config", {}).get("speculative_config")
        if isinstance(raw.get("llm_config"), dict)
        else None
    )
    if isinstance(spec, dict) and isinstance(spec.get("decoding_type"), str):
        # BIS-LLM matches decoding_type case-insensitively ("eagle", "ngram").
        canonical = {"eagle": "Eagle", "eagle3": "Eagle3", "mtp": "MTP", "ngram": "NGram"}
        spec["decoding_type"] = canonical.get(spec["decoding_type"].lower(), spec["decoding_type"])


# ---- pass 2: structure ------------------------------------------------------------------------------

# Hints for unknown keys, by the dotted path of the unknown key.
_UNKNOWN_HINTS: dict[str, str] = {
    "trt_llm.runtime.enable_chunked_context": (
        "v1's name: v2 calls it enable_chunked_prefill" + _MIGRATE_HINT
    ),
    "trt_llm.runtime.kv_cache_free_gpu_mem_fraction": (
        "a v1 runtime field: v2 sizes the KV cache itself; for vLLM's knob (a fraction of total "
        "GPU memory) set trt_llm.runtime.patch_kwargs.gpu_memory_utilization" + _MIGRATE_HINT
    ),
    "trt_llm.runtime.tensor_parallel_count": "v1's name: v2 calls it tensor_parallel_size",
    "trt_llm.version_overrides": "BIS-LLM image versions don't apply to bisllm: remove it",
    "weights": "use trt_llm.build.checkpoint_repository for the model weights",
    "bis_llm": (
        "bisllm reads BIS-LLM's trt_llm format: put engine limits under trt_llm.runtime and "
        "routing/disaggregation/speculation under llm_config"
    ),
    "b10_routing_config": "it belongs under llm_config",
    "is_disaggregated": "it belongs under llm_config",
    "b10_disagg_config": "it belongs under llm_config",
    "speculative_config": "it belongs under llm_config",
    "runtime": "trt_llm's runtime block? indent it under trt_llm (Truss's own runtime block has no meaning for bisllm)",
    "build": "trt_llm's build block? indent it under trt_llm",
}
for _v1_runtime in (
    "kv_cache_host_memory_bytes",
    "batch_scheduler_policy",
    "request_default_max_tokens",
    "total_token_limit",
    "webserver_default_route",
):
    _UNKNOWN_HINTS[f"trt_llm.runtime.{_v1_runtime}"] = (
        "a v1 (Engine-Builder-LLM) runtime field with no v2 equivalent: remove it" + _MIGRATE_HINT
    )
for _truss_key in (
    "python_version",
    "requirements",
    "build_commands",
    "system_packages",
    "base_image",
    "model_class_name",
    "model_module_dir",
    "data_dir",
    "external_package_dirs",
    "bundled_packages_dir",
    "docker_server",
    "model_cache",
):
    _UNKNOWN_HINTS.setdefault(_truss_key, "a Truss field with no meaning for bisllm: remove it")


def _unknown_key_error(path: str, key: str, known: list[str]) -> ConfigError:
    hint = _UNKNOWN_HINTS.get(path)
    if hint is None:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`?" if close else f"known fields here: {', '.join(known)}"
    return ConfigError(path, "unknown field", hint)


def _struct_of(tp: Any) -> tuple[type[msgspec.Struct] | None, bool]:
    """(Struct class, optional?) of a field type, looking through Annotated and `X | None`."""
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp, False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], msgspec.Struct):
            return args[0], True
    return None, False


def _literal_choices(tp: Any) -> tuple[Any, ...]:
    """Allowed values when the field is a Literal (possibly Annotated / optional), else ()."""
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        choices: tuple[Any, ...] = ()
        for arg in typing.get_args(tp):
            choices += _literal_choices(arg)
        return choices
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    return ()


_MSGSPEC_AT = re.compile(r" - at `\$(.*)`$")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert_error(path: str, value: Any, tp: Any, exc: msgspec.ValidationError) -> ConfigError:
    message = str(exc)
    match = _MSGSPEC_AT.search(message)
    if match:  # an error inside a container value: move msgspec's `$[...]` into our path
        message = message[: match.start()]
        path = path + match.group(1)  # list indices: worker_command[1]
    choices = _literal_choices(tp)
    if choices:
        allowed = " | ".join(str(c) for c in choices)
        return ConfigError(path, f"invalid value {value!r}", f"use one of: {allowed}")
    if message.startswith("Expected") and "got" not in message:
        message = f"{message}, got {value!r}"
    return ConfigError(path, message)


def _convert(
    raw: Mapping[Any, Any],
    cls: type[msgspec.Struct],
    path: str,
    errors: list[ConfigError],
    bad: set[str],
) -> Any:
    """Build `cls` from `raw` field by field, recording every problem instead of stopping."""
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            errors.append(ConfigError(_join(path, str(key)), "field names must be strings"))
            bad.add(_join(path, str(key)))
            continue
        field_path = _join(path, key)
        info = fields.get(key)
        if info is None:
            errors.append(_unknown_key_error(field_path, key, list(fields)))
            bad.add(field_path)
            continue
        struct, optional = _struct_of(info.type)
        if struct is not None and isinstance(value, dict):
            kwargs[info.name] = _convert(value, struct, field_path, errors, bad)
            continue
        if struct is not None and value is None:
            # An empty YAML block (`runtime:`) means "all defaults"; null for optional ones.
            if optional:
                kwargs[info.name] = None
            continue
        value_type = _dict_value_type(info.type)
        if value_type is not None and isinstance(value, dict):
            # Convert entry by entry: msgspec's error path doesn't name the key.
            converted = _convert_mapping(value, value_type, field_path, errors, bad)
            if converted is not None:
                kwargs[info.name] = converted
            continue
        try:
            kwargs[info.name] = msgspec.convert(value, info.type)
        except msgspec.ValidationError as exc:
            errors.append(_convert_error(field_path, value, info.type, exc))
            bad.add(field_path)
    return cls(**kwargs)


def _dict_value_type(tp: Any) -> Any | None:
    """X of a `dict[str, X]` field (through Annotated), else None."""
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is dict:
        return typing.get_args(tp)[1]
    return None


def _convert_mapping(
    raw: dict[Any, Any], value_type: Any, path: str, errors: list[ConfigError], bad: set[str]
) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    ok = True
    for key, value in raw.items():
        entry = _join(path, str(key))
        if not isinstance(key, str):
            errors.append(ConfigError(entry, f"keys must be strings, got {type(key).__name__}"))
        else:
            try:
                out[key] = msgspec.convert(value, value_type)
                continue
            except msgspec.ValidationError as exc:
                errors.append(_convert_error(entry, value, value_type, exc))
        bad.add(entry)
        ok = False
    return out if ok else None


# ---- pass 3: rules ------------------------------------------------------------------------------------

Rule = Callable[[Config, "set[str]"], Iterator[ConfigError]]
"""A cross-field check. `bad` holds the paths pass 2 rejected (their defaults stand in), so a
rule that reads another field can skip when that field failed (see `_failed`)."""


def _failed(bad: set[str], *paths: str) -> bool:
    """True when any of `paths`, or a block containing or inside it, failed in pass 2."""
    return any(p == b or p.startswith(b + ".") or b.startswith(p + ".") for p in paths for b in bad)


def _accelerator(cfg: Config) -> Accelerator | None:
    if cfg.resources.accelerator is None:
        return None
    try:
        return parse_accelerator(cfg.resources.accelerator)
    except ValueError:
        return None


def _rule_names(cfg: Config, bad: set[str]) -> Iterator[ConfigError]:
    if not cfg.model_name.strip():
        yield ConfigError("model_name", "must not be empty", "name the deployment")
    served = cfg.trt_llm.runtime.served_model_name
    if served is not None and not served.strip():
        yield ConfigError(
            "trt_llm.runtime.served_model_name", "must not be empty", "remove it or name the model"
        )


def _rule_checkpoint(cfg: Config, bad: set[str]) -> Iterator[ConfigError]:
    build = cfg.trt_llm.build
    repo = build.checkpoint_repository
    if repo is None:
        if not build.skip_build_result:
            yield ConfigError(
                "trt_llm.build.checkpoint_repository",
                "required unless skip_build_result is true",
                "add checkpoint_repository: {source: HF, repo: org/name} "
                "(or source: LOCAL, repo: a model directory)",
            )
        return
    path = "trt_llm.build.checkpoint_repository"
    if not repo.repo.strip():
        yield ConfigError(
            f"{path}.repo", "required", "the HF repo id (org/name) or, for LOCAL, a directory"
        )
    elif repo.source == "HF" and not _valid_hf_repo_id(repo.repo):
        yield ConfigError(
            f"{path}.repo",
            f"{repo.repo!r} is not a Hugging Face repo id",
            "use `org/name` (letters, digits, '-', '_', '.'), or source: LOCAL for a directory",
        )
    if repo.revision is not None and repo.source != "HF":
        yield ConfigError(
            f"{path}.revision", f"only applies to source HF, not {repo.source}", "remove it"
        )
    if build.skip_build_result and build.quantization_type != "no_quant":
        yield ConfigError(
            "trt_llm.build.quantization_type",
            f"{build.quantization_type} needs the build step that skip_build_result skips",
            "use quantization_type: no_quant with skip_build_result: true",
        )


_HF_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _valid_hf_repo_id(repo_id: str) -> bool:
    """huggingface_hub's repo-id rules, without importing it (checks run on every `check`)."""
    return (
        len(repo_id) <= 96
        and _HF_REPO_ID.match(repo_id) is not None
        and "--" not in repo_id
        and ".." not in repo_id
        and not repo_id.endswith(".git")
    )


def _rule_resources(cfg: Config, bad: set[str]) -> Iterator[ConfigError]:
    res = cfg.resources
    if res.accelerator is not None:
        try:
            parse_accelerator(res.accelerator)
        except ValueError as exc:
            yield ConfigError(
                "resources.accelerator", str(exc), "write it as NAME or NAME:COUNT, e.g. H100:4"
            )
    elif res.use_gpu:
        yield ConfigError(
            "resources.use_gpu",
            "use_gpu is true but no accelerator is set",
            "set resources.accelerator (e.g. H100:1), or use_gpu: false for CPU",
        )


def _rule_quantization(cfg: Config, bad: set[str]) -> Iterator[ConfigError]:
    quant = cfg.trt_llm.build.quantization_type
    if quant == "no_quant" or _failed(bad, "resources", "bisllm.engine_backend"):
        return
    path = "trt_llm.build.quantization_type"
    acc = _accelerator(cfg)
    if cfg.resources.accelerator is None:
        yield ConfigError(
            path,
            f"{quant} needs a GPU, and resources has no accelerator",
            "use no_quant on CPU, or set resources.accelerator",
        )
    elif acc is not None and quant.startswith("fp4") and acc.compute_capability < _FP4_MIN_CC:
        yield ConfigError(
            path,
            f"{quant} needs a Blackwell GPU (B200, GB200 or newer); resources.accelerator is {acc.name}",
            f"use fp8 on {acc.name}, or a B200 accelerator",
        )
    elif acc is not None and quant.startswith("fp8") and acc.compute_capability < _FP8_MIN_CC:
        yield ConfigError(
            path,
            f"{quant} needs an FP8 GPU (Ada or Hopper or newer: L4, L40S, H100, H200, B200); "
            f"resources.accelerator is {acc.name}",
            f"use no_quant on {acc.name}, or an H100/H200/B200 accelerator",
        )
    if quant.startswith("fp4") and cfg.bisllm.engine_backend == "vllm":
        yield ConfigError(
            path,
            f"{quant} is BIS-LLM's build-time (calibrated) quantization; vLLM cannot quantize "
            "to FP4 when it loads a model",
            "serve a pre-quantized NVFP4/ModelOpt checkpoint with quantization_type: no_quant "
            "(vLLM reads its quantization from config.json), or use fp8",
        )


def _rule_tensor_parallel(cfg: Config, bad: set[str]) -> Iterator[ConfigError]:
    tp = cfg.trt_llm.runtime.tensor_parallel_size
    if tp == 1 or _failed(bad, "resources"):
        return
    path = "trt_llm.runtime.tensor_parallel_size"
    if cfg.resources.accelerator is None:
        yield ConfigError(
            path,
            f"{tp} GPUs asked for, but resources has no accelerator",
            "set resources.accelerator (e.g. H100:4), or tensor_parallel_size: 1",
        )
        return
    acc = _accelerator(cfg)
    if acc is not None and tp > acc.count:
        yield ConfigError(
            path,
            f"{tp} is more than the {acc.count} GPU(s) of resources.accelerator {acc}",
            f"set tensor_parallel_size to at most {acc.count} (usually the GPU count), "
            f"or ask for {acc.name}:{tp}",
        )


def _rule_runtime_limits(cfg: Config, bad: set[str]) -> Iterator[ConfigError]:
    rt = cfg.trt_llm.runtime
    if _failed(bad, "trt_llm.runtime.max_seq_len", "trt_llm.runtime.max_num_tokens"):
        return
    if (
        not rt.enable_chunked_prefill
        and rt.max_seq_len is not None
        and rt.max_num_tokens < rt.max_seq_len
    ):
        yield ConfigError(
            "trt_llm.runtime.max_num_tokens",
            f"{rt.max_num_tokens} is less than max_seq_len {rt.max_seq_len} with chunked "
            "prefill off, so the longest prompt could never be scheduled",
            "set enable_chunked_prefill: true, or max_num_tokens >= max_seq_len",
        )


def _rule_patch_kwargs(cfg: Config, bad: set[str]) -> Iterator[ConfigError]:
    base = "trt_llm.runtime.patch_kwargs"
    for key, value in cfg.trt_llm.runtime.patch_kwargs.items():
        path = f"{base}.{key}"
        normalized = normalize_engine_arg(key)
        if not re.fullmatch(r"[a-z][a-z0-9_]*", normalized):
            yield ConfigError(
                path, "not an engine argument name", "use vLLM's names, e.g. gpu_memory_utilization"
            )
            continue
        reserved = PATCH_KWARGS_RESERVED.get(normalized)
        if reserved is not None:
            target, settable = reserved
            yield ConfigError(
                path,
                f"collides with {target}",
                f"remove it and set {target} instead" if settable else "remove it",
            )
            continue
        if not isinstance(value, str | int | float | bool | list | dict | type(None)):
            yield ConfigError(
                path,
                f"unsupported value type {type(value).__name__}",
                "use a string, number, boolean, list or mapping",
            )


def _rule_llm_config(cfg: Config, bad: set[str]) -> Iterator[ConfigError]:
    llm = cfg.llm_config
    disagg = llm.b10_disagg_config
    if disagg is not None and not llm.is_disaggregated:
        yield ConfigError(
            "llm_config.b10_disagg_config",
            "set without is_disaggregated: true",
            "set llm_config.is_disaggregated: true, or remove b10_disagg_config",
        )
    if llm.is_disaggregated:
        for field in ("prefill_workers_per_replica", "decode_workers_per_replica"):
            if disagg is None or getattr(disagg, field) is None:
                yield ConfigError(
                    f"llm_config.b10_disagg_config.{field}",
                    "required when is_disaggregated is true",
                    f"set {field}: 1 or more",
                )
    spec = llm.speculative_config
    if spec is None:
        return
    base = "llm_config.speculative_config"
    kind = spec.decoding_type
    if kind is None:
        yield ConfigError(
            f"{base}.decoding_type", "required", "set decoding_type: Eagle, Eagle3, MTP or NGram"
        )
        return
    if kind in ("Eagle", "Eagle3") and spec.speculative_model_dir is None:
        yield ConfigError(
            f"{base}.speculative_model_dir",
            f"required for decoding_type {kind}",
            "point it at the draft head's weights directory",
        )
    if kind == "MTP" and spec.num_nextn_predict_layers is None:
        yield ConfigError(
            f"{base}.num_nextn_predict_layers",
            "required for decoding_type MTP",
            "set it to the model's MTP layers (num_nextn_predict_layers in its config.json; 1 for DeepSeek V3)",
        )
    misfits = {
        "speculative_model_dir": (spec.speculative_model_dir is not None, ("Eagle", "Eagle3")),
        "num_nextn_predict_layers": (spec.num_nextn_predict_layers is not None, ("MTP",)),
        "prompt_lookup_max": (spec.prompt_lookup_max is not None, ("NGram",)),
        "eagle3_one_model": (spec.eagle3_one_model, ("Eagle", "Eagle3")),
    }
    for field, (is_set, fits) in misfits.items():
        if is_set and kind not in fits:
            yield ConfigError(
                f"{base}.{field}",
                f"does not apply to decoding_type {kind} (only {' / '.join(fits)})",
                "remove it, or change decoding_type",
            )


def _rule_autoscaling(cfg: Config, bad: set[str]) -> Iterator[ConfigError]:
    auto = cfg.autoscaling_settings
    if _failed(bad, "autoscaling_settings.min_replica", "autoscaling_settings.max_replica"):
        return
    if auto.max_replica < auto.min_replica:
        yield ConfigError(
            "autoscaling_settings.max_replica",
            f"{auto.max_replica} is less than min_replica {auto.min_replica}",
            f"set max_replica >= {auto.min_replica}",
        )


def _rule_bisllm(cfg: Config, bad: set[str]) -> Iterator[ConfigError]:
    b = cfg.bisllm
    llm = cfg.llm_config
    if b.engine_backend == "mocker":
        if llm.is_disaggregated:
            yield ConfigError(
                "bisllm.engine_backend",
                "the mocker does not simulate disaggregated prefill/decode",
                "use engine_backend: vllm, or is_disaggregated: false",
            )
        if llm.speculative_config is not None:
            yield ConfigError(
                "bisllm.engine_backend",
                "the mocker does not simulate speculative decoding",
                "use engine_backend: vllm, or remove llm_config.speculative_config",
            )
    on_cpu = cfg.resources.accelerator is None and not _failed(bad, "resources")
    if b.engine_backend == "vllm" and on_cpu and b.block_size is not None and b.block_size % 32:
        yield ConfigError(
            "bisllm.block_size",
            f"{b.block_size}: vLLM on CPU needs a multiple of 32",
            "use 32, 64 or 128 (vLLM's CPU default)",
        )
    for field in ("api_key_env", "admin_key_env"):
        name = getattr(b, field)
        if name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            yield ConfigError(
                f"bisllm.{field}",
                f"{name!r} is not an environment variable name",
                "e.g. BISLLM_API_KEY",
            )
    for field in ("worker_command", "mocker_command", "router_command"):
        if not getattr(b, field):
            yield ConfigError(
                f"bisllm.{field}", "must not be empty", "remove it to use the default"
            )
    if _failed(bad, "autoscaling_settings", "llm_config", "bisllm.port", "bisllm.worker_base_port"):
        return
    workers = (
        cfg.autoscaling_settings.min_replica
        if b.engine_backend == "mocker"
        else len(cfg.worker_roles())
    )
    last = b.worker_base_port + workers - 1
    if last > 65535:
        yield ConfigError(
            "bisllm.worker_base_port",
            f"{workers} workers from port {b.worker_base_port} run past 65535",
            "lower worker_base_port",
        )
    if b.worker_base_port <= b.port <= last:
        yield ConfigError(
            "bisllm.port",
            f"router port {b.port} is one of the worker ports {b.worker_base_port}..{last}",
            f"use a port outside {b.worker_base_port}..{last}, or move worker_base_port",
        )


_RULES: tuple[Rule, ...] = (
    _rule_names,
    _rule_checkpoint,
    _rule_resources,
    _rule_quantization,
    _rule_tensor_parallel,
    _rule_runtime_limits,
    _rule_patch_kwargs,
    _rule_llm_config,
    _rule_autoscaling,
    _rule_bisllm,
)


def _overlaps(path: str, bad: set[str]) -> bool:
    """True when `path` is, or lies inside, a path that already failed in pass 2."""
    return any(path == b or path.startswith(b + ".") for b in bad)


# ---- entry points ------------------------------------------------------------------------------------


def validate(raw: Any) -> tuple[Config | None, list[ConfigError]]:
    """Validate a parsed YAML document; returns (config, []) or (None, every error)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return None, [
            ConfigError("<root>", f"expected a mapping of fields, got {type(raw).__name__}")
        ]
    raw = _deepcopy(raw)
    errors: list[ConfigError] = []
    bad: set[str] = set()
    _v1_prepass(raw, errors, bad)
    cfg = _convert(raw, Config, "", errors, bad)
    for rule in _RULES:
        errors += [e for e in rule(cfg, bad) if not _overlaps(e.path, bad)]
    return (None, errors) if errors else (cfg, [])


def _deepcopy(value: Any) -> Any:
    """Copy the dict/list skeleton so the passes can edit it without touching the caller's data."""
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value


def parse_config(text: str, source: str = "config") -> Config:
    """Parse and validate YAML text; raises ConfigErrors listing every problem."""
    cfg, errors = validate(read_yaml(text, source))
    if errors or cfg is None:
        raise ConfigErrors(errors, source)
    return cfg


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a config file; raises ConfigErrors listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigErrors(
            [ConfigError("<file>", f"cannot read {path}: {exc.strerror or exc}")], str(path)
        ) from exc
    return parse_config(text, str(path))


def check_file(path: str | Path) -> list[ConfigError]:
    """Every error of a config file ([] when valid): what `bisllm config check` prints."""
    try:
        load_config(path)
    except ConfigErrors as exc:
        return exc.errors
    return []
