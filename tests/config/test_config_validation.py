"""Every validation rule of config.yaml: its path, its message, its fix, all errors at once."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bisllm.config import ConfigError, ConfigErrors, parse_config, validate
from bisllm.config.validate import V1_BUILD_FIELDS, parse_accelerator


def base() -> dict[str, Any]:
    """The smallest valid config: a checkpoint."""
    return {
        "model_name": "m",
        "trt_llm": {
            "inference_stack": "v2",
            "build": {"checkpoint_repository": {"source": "HF", "repo": "Qwen/Qwen3-4B"}},
        },
    }


def with_(**blocks: Any) -> dict[str, Any]:
    """base() with blocks deep-merged in: with_(trt_llm={"runtime": {...}})."""
    cfg = base()

    def merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = copy.deepcopy(v)

    merge(cfg, blocks)
    return cfg


def errors(raw: Any) -> list[ConfigError]:
    cfg, errs = validate(raw)
    assert (cfg is None) == bool(errs)
    return errs


def only(raw: Any) -> ConfigError:
    errs = errors(raw)
    assert len(errs) == 1, "\n".join(map(str, errs))
    return errs[0]


def paths(raw: Any) -> list[str]:
    return [e.path for e in errors(raw)]


def test_minimal_config_is_valid_with_bis_llm_defaults() -> None:
    cfg, errs = validate(base())
    assert errs == []
    assert cfg is not None
    rt = cfg.trt_llm.runtime
    assert (rt.max_batch_size, rt.max_num_tokens, rt.enable_chunked_prefill) == (256, 8192, True)
    assert rt.tensor_parallel_size == 1 and rt.max_seq_len is None
    assert cfg.trt_llm.build.quantization_type == "no_quant"
    routing = cfg.llm_config.b10_routing_config
    assert (routing.router_queue_policy, routing.router_overlap_score_weight) == ("fcfs", 8.0)
    assert routing.router_temperature == 0.0
    assert cfg.served_model_name == "m"


# ---- v1 -> v2: BIS-LLM's words ------------------------------------------------------------------

ISSUE_V1_FIELDS = [
    "base_model",
    "max_seq_len",
    "max_batch_size",
    "max_num_tokens",
    "tensor_parallel_count",
    "plugin_configuration",
    "speculator",
]


@pytest.mark.parametrize("field", ISSUE_V1_FIELDS)
def test_v1_build_field_gives_bis_llm_message_word_for_word(field: str) -> None:
    value: Any = {"paged_kv_cache": True} if field == "plugin_configuration" else 1
    if field == "base_model":
        value = "decoder"
    err = only(with_(trt_llm={"build": {field: value}}))
    expected = f"Field trt_llm.build.{field} is not allowed to be set when using v2 inference stack"
    assert err.message == expected
    assert err.path == f"trt_llm.build.{field}"
    assert str(err).splitlines()[0] == expected  # the path is not printed twice
    assert err.fix and "bisllm config migrate" in err.fix


def test_v1_fixes_say_where_fields_go() -> None:
    assert "trt_llm.runtime.max_seq_len" in V1_BUILD_FIELDS["max_seq_len"]
    assert "tensor_parallel_size" in V1_BUILD_FIELDS["tensor_parallel_count"]
    assert "speculative_config" in V1_BUILD_FIELDS["speculator"]


def test_v1_leftovers_reported_even_without_inference_stack() -> None:
    raw = with_(trt_llm={"build": {"base_model": "decoder", "max_batch_size": 64}})
    del raw["trt_llm"]["inference_stack"]
    assert paths(raw) == ["trt_llm.build.base_model", "trt_llm.build.max_batch_size"]


def test_other_v1_build_fields_rejected_the_same_way() -> None:
    err = only(with_(trt_llm={"build": {"pipeline_parallel_count": 2}}))
    assert err.message.startswith("Field trt_llm.build.pipeline_parallel_count is not allowed")


def test_explicit_v1_stack_is_one_error_pointing_at_migrate() -> None:
    raw = with_(trt_llm={"inference_stack": "v1", "build": {"base_model": "decoder"}})
    err = only(raw)
    assert err.path == "trt_llm.inference_stack"
    assert err.fix and "bisllm config migrate" in err.fix


@pytest.mark.parametrize(
    ("field", "hint"),
    [
        ("enable_chunked_context", "enable_chunked_prefill"),
        ("kv_cache_free_gpu_mem_fraction", "gpu_memory_utilization"),
        ("batch_scheduler_policy", "no v2 equivalent"),
        ("total_token_limit", "no v2 equivalent"),
    ],
)
def test_v1_runtime_fields_get_v2_hints(field: str, hint: str) -> None:
    err = only(with_(trt_llm={"runtime": {field: True}}))
    assert err.path == f"trt_llm.runtime.{field}"
    assert err.message == "unknown field"
    assert err.fix and hint in err.fix


# ---- structure ----------------------------------------------------------------------------------


def test_unknown_field_suggests_the_close_name() -> None:
    err = only(with_(trt_llm={"runtime": {"max_batch_sise": 8}}))
    assert err.path == "trt_llm.runtime.max_batch_sise"
    assert err.fix == "did you mean `max_batch_size`?"


def test_unknown_field_without_close_name_lists_known_fields() -> None:
    err = only(with_(autoscaling_settings={"zzz": 1}))
    assert err.fix and "min_replica" in err.fix


def test_misplaced_blocks_get_a_hint() -> None:
    raw = with_(speculative_config={"decoding_type": "NGram"}, runtime={"max_batch_size": 8})
    errs = {e.path: e for e in errors(raw)}
    assert "under llm_config" in (errs["speculative_config"].fix or "")
    assert "indent it under trt_llm" in (errs["runtime"].fix or "")


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        ({"max_batch_size": "many"}, "Expected `int`, got `str`"),
        ({"max_batch_size": 0}, "Expected `int` >= 1, got 0"),
        ({"max_batch_size": 4096}, "Expected `int` <= 2048, got 4096"),
        ({"max_num_tokens": 64}, "Expected `int` >= 65, got 64"),
        ({"max_seq_len": 2_000_000}, "Expected `int` <= 1048576, got 2000000"),
        ({"enable_chunked_prefill": "yes please"}, "Expected `bool`, got `str`"),
    ],
)
def test_types_and_ranges_name_the_field(runtime: dict[str, Any], message: str) -> None:
    err = only(with_(trt_llm={"runtime": runtime}))
    assert err.path == f"trt_llm.runtime.{next(iter(runtime))}"
    assert err.message == message


def test_enum_errors_list_the_choices() -> None:
    err = only(with_(trt_llm={"build": {"quantization_type": "weights_int8"}}))
    assert err.path == "trt_llm.build.quantization_type"
    assert err.fix == "use one of: no_quant | fp8 | fp8_kv | fp4 | fp4_kv | fp4_mlp_only"


def test_errors_inside_containers_name_the_entry() -> None:
    err = only(with_(environment_variables={"FOO": 1}))
    assert err.path == "environment_variables.FOO"
    assert err.message == "Expected `str`, got `int`"
    err = only(with_(bisllm={"worker_command": ["python", 3]}))
    assert err.path == "bisllm.worker_command[1]"


def test_calibration_sizes_must_be_multiples_of_64() -> None:
    err = only(with_(trt_llm={"build": {"quantization_config": {"calib_size": 100}}}))
    assert err.path == "trt_llm.build.quantization_config.calib_size"
    assert "multiple of 64" in err.message


def test_empty_blocks_mean_defaults() -> None:
    assert errors(with_(trt_llm={"runtime": None}, llm_config=None)) == []


# ---- checkpoint -------------------------------------------------------------------------------


def test_checkpoint_required_unless_skip_build_result() -> None:
    raw = with_()
    del raw["trt_llm"]["build"]["checkpoint_repository"]
    err = only(raw)
    assert err.path == "trt_llm.build.checkpoint_repository"
    assert "skip_build_result" in err.message
    raw["trt_llm"]["build"]["skip_build_result"] = True
    assert errors(raw) == []


def test_skip_build_result_needs_no_quant() -> None:
    raw = with_(
        resources={"accelerator": "H100:1"},
        trt_llm={"build": {"skip_build_result": True, "quantization_type": "fp8"}},
    )
    err = only(raw)
    assert err.path == "trt_llm.build.quantization_type"
    assert "skip_build_result" in err.message


def test_empty_file_needs_a_checkpoint() -> None:
    assert paths(None) == ["trt_llm.build.checkpoint_repository"]


@pytest.mark.parametrize(
    ("repo", "ok"),
    [
        ("Qwen/Qwen3-4B", True),
        ("gpt2", True),
        ("nvidia/DeepSeek-V3.1-NVFP4", True),
        ("org/name/extra", False),
        ("org--name/x", False),
        ("-bad/name", False),
        ("org/na me", False),
    ],
)
def test_hf_repo_ids(repo: str, ok: bool) -> None:
    raw = with_(trt_llm={"build": {"checkpoint_repository": {"source": "HF", "repo": repo}}})
    assert (errors(raw) == []) is ok


def test_checkpoint_repo_and_revision_rules() -> None:
    raw = with_(
        trt_llm={
            "build": {"checkpoint_repository": {"source": "LOCAL", "repo": "", "revision": "main"}}
        }
    )
    assert paths(raw) == [
        "trt_llm.build.checkpoint_repository.repo",
        "trt_llm.build.checkpoint_repository.revision",
    ]


# ---- autoscaling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["concurrency_target", "target_utilization_percentage"])
def test_request_based_autoscaling_rejected(field: str) -> None:
    err = only(with_(autoscaling_settings={field: 10}))
    assert err.path == f"autoscaling_settings.{field}"
    assert err.fix and "target_in_flight_tokens" in err.fix


def test_replica_bounds() -> None:
    assert only(with_(autoscaling_settings={"min_replica": 0})).message.startswith(
        "Expected `int` >= 1"
    )
    err = only(with_(autoscaling_settings={"min_replica": 3, "max_replica": 2}))
    assert err.path == "autoscaling_settings.max_replica"


# ---- disaggregation ---------------------------------------------------------------------------------


def test_disagg_config_without_is_disaggregated() -> None:
    raw = with_(
        llm_config={
            "b10_disagg_config": {"prefill_workers_per_replica": 1, "decode_workers_per_replica": 1}
        }
    )
    err = only(raw)
    assert err.path == "llm_config.b10_disagg_config"
    assert "is_disaggregated" in err.message


def test_is_disaggregated_needs_both_counts() -> None:
    assert paths(with_(llm_config={"is_disaggregated": True})) == [
        "llm_config.b10_disagg_config.prefill_workers_per_replica",
        "llm_config.b10_disagg_config.decode_workers_per_replica",
    ]
    raw = with_(
        llm_config={
            "is_disaggregated": True,
            "b10_disagg_config": {"prefill_workers_per_replica": 1},
        }
    )
    assert paths(raw) == ["llm_config.b10_disagg_config.decode_workers_per_replica"]


def test_disagg_counts_below_one() -> None:
    raw = with_(
        llm_config={
            "is_disaggregated": True,
            "b10_disagg_config": {
                "prefill_workers_per_replica": 0,
                "decode_workers_per_replica": 1,
            },
        }
    )
    err = only(raw)
    assert err.path == "llm_config.b10_disagg_config.prefill_workers_per_replica"
    assert err.message == "Expected `int` >= 1, got 0"


def test_valid_disaggregation_and_its_workers() -> None:
    raw = with_(
        llm_config={
            "is_disaggregated": True,
            "b10_disagg_config": {
                "prefill_workers_per_replica": 1,
                "decode_workers_per_replica": 2,
            },
        },
        autoscaling_settings={"min_replica": 2, "max_replica": 2},
    )
    cfg, errs = validate(raw)
    assert errs == [] and cfg is not None
    assert cfg.worker_roles() == ["prefill", "decode", "decode"] * 2


# ---- speculation ---------------------------------------------------------------------------------


def spec(**fields: Any) -> dict[str, Any]:
    return with_(llm_config={"speculative_config": fields})


@pytest.mark.parametrize(
    "fields",
    [
        {"decoding_type": "NGram"},
        {"decoding_type": "NGram", "max_draft_len": 5, "prompt_lookup_max": 3},
        {"decoding_type": "Eagle", "speculative_model_dir": "/m/eagle", "max_draft_len": 3},
        {"decoding_type": "Eagle3", "speculative_model_dir": "/m/e3", "eagle3_one_model": True},
        {"decoding_type": "MTP", "num_nextn_predict_layers": 1},
    ],
)
def test_valid_speculation(fields: dict[str, Any]) -> None:
    assert errors(spec(**fields)) == []


def test_decoding_type_is_case_insensitive_like_bis_llm() -> None:
    cfg, _ = validate(spec(decoding_type="ngram"))
    assert cfg is not None and cfg.llm_config.speculative_config is not None
    assert cfg.llm_config.speculative_config.decoding_type == "NGram"


@pytest.mark.parametrize(
    ("fields", "path", "text"),
    [
        ({}, "decoding_type", "required"),
        ({"decoding_type": "Medusa"}, "decoding_type", "invalid value"),
        ({"decoding_type": "Eagle"}, "speculative_model_dir", "required for decoding_type Eagle"),
        ({"decoding_type": "Eagle3"}, "speculative_model_dir", "required for decoding_type Eagle3"),
        ({"decoding_type": "MTP"}, "num_nextn_predict_layers", "required for decoding_type MTP"),
        (
            {"decoding_type": "NGram", "speculative_model_dir": "/x"},
            "speculative_model_dir",
            "does not apply to decoding_type NGram",
        ),
        (
            {"decoding_type": "MTP", "num_nextn_predict_layers": 1, "speculative_model_dir": "/x"},
            "speculative_model_dir",
            "does not apply to decoding_type MTP",
        ),
        (
            {
                "decoding_type": "Eagle",
                "speculative_model_dir": "/x",
                "num_nextn_predict_layers": 1,
            },
            "num_nextn_predict_layers",
            "does not apply to decoding_type Eagle",
        ),
        (
            {"decoding_type": "MTP", "num_nextn_predict_layers": 1, "prompt_lookup_max": 3},
            "prompt_lookup_max",
            "only NGram",
        ),
        (
            {"decoding_type": "NGram", "eagle3_one_model": True},
            "eagle3_one_model",
            "only Eagle / Eagle3",
        ),
        ({"decoding_type": "NGram", "max_draft_len": 0}, "max_draft_len", ">= 1"),
    ],
)
def test_speculation_fields_must_fit_the_decoding_type(
    fields: dict[str, Any], path: str, text: str
) -> None:
    err = only(spec(**fields))
    assert err.path == f"llm_config.speculative_config.{path}"
    assert text in err.message


# ---- hardware -----------------------------------------------------------------------------------


def gpu(accelerator: str | None, quant: str = "no_quant", tp: int = 1) -> dict[str, Any]:
    resources = {"accelerator": accelerator, "use_gpu": accelerator is not None}
    return with_(
        resources=resources,
        trt_llm={"build": {"quantization_type": quant}, "runtime": {"tensor_parallel_size": tp}},
    )


def test_parse_accelerator() -> None:
    acc = parse_accelerator("H100:4")
    assert (acc.name, acc.count, acc.compute_capability) == ("H100", 4, 9.0)
    assert parse_accelerator("b200").count == 1
    with pytest.raises(ValueError, match="unknown accelerator"):
        parse_accelerator("TPUv5")
    with pytest.raises(ValueError, match="positive integer"):
        parse_accelerator("H100:0")


@pytest.mark.parametrize(
    ("accelerator", "path"),
    [("TPU:4", "resources.accelerator"), ("H100:x", "resources.accelerator")],
)
def test_bad_accelerators(accelerator: str, path: str) -> None:
    assert paths(gpu(accelerator)) == [path]


def test_use_gpu_without_accelerator() -> None:
    assert paths(with_(resources={"use_gpu": True})) == ["resources.use_gpu"]


@pytest.mark.parametrize(
    ("accelerator", "quant", "ok"),
    [
        ("H100:1", "fp8", True),
        ("H200:1", "fp8_kv", True),
        ("L4:1", "fp8", True),
        ("B200:1", "fp8_kv", True),
        ("A100:1", "fp8", False),
        ("A10G:1", "fp8_kv", False),
        ("T4:1", "fp8", False),
    ],
)
def test_fp8_needs_ada_hopper_or_newer(accelerator: str, quant: str, ok: bool) -> None:
    errs = errors(gpu(accelerator, quant))
    assert (errs == []) is ok
    if not ok:
        assert errs[0].path == "trt_llm.build.quantization_type"
        assert "FP8 GPU" in errs[0].message


@pytest.mark.parametrize("quant", ["fp4", "fp4_kv", "fp4_mlp_only"])
def test_fp4_needs_blackwell(quant: str) -> None:
    err = errors(gpu("H100:1", quant))[0]
    assert err.path == "trt_llm.build.quantization_type"
    assert "Blackwell" in err.message


def test_fp4_on_blackwell_is_bis_llm_valid_but_not_servable_by_vllm() -> None:
    err = only(gpu("B200:1", "fp4"))
    assert "vLLM cannot quantize to FP4" in err.message
    assert err.fix and "no_quant" in err.fix
    mocker = gpu("B200:1", "fp4")
    mocker["bisllm"] = {"engine_backend": "mocker"}
    assert errors(mocker) == []


def test_quantization_needs_a_gpu() -> None:
    err = only(gpu(None, "fp8"))
    assert "needs a GPU" in err.message


@pytest.mark.parametrize(
    ("accelerator", "tp", "ok"),
    [
        ("H100:4", 4, True),
        ("H100:4", 2, True),
        ("B200:4", 8, False),
        ("H100", 2, False),
        (None, 2, False),
    ],
)
def test_tensor_parallel_size_at_most_the_gpus(accelerator: str | None, tp: int, ok: bool) -> None:
    errs = errors(gpu(accelerator, tp=tp))
    assert (errs == []) is ok
    if not ok:
        assert errs[0].path == "trt_llm.runtime.tensor_parallel_size"


def test_rules_skip_fields_that_already_failed() -> None:
    # accelerator has the wrong type: no second, misleading "needs a GPU" error about it.
    raw = gpu(None, "fp8")
    raw["resources"]["accelerator"] = 4
    assert paths(raw) == ["resources.accelerator"]


# ---- runtime limits and patch_kwargs --------------------------------------------------------------


def test_chunked_prefill_off_needs_max_num_tokens_over_max_seq_len() -> None:
    raw = with_(
        trt_llm={
            "runtime": {
                "enable_chunked_prefill": False,
                "max_seq_len": 32768,
                "max_num_tokens": 8192,
            }
        }
    )
    err = only(raw)
    assert err.path == "trt_llm.runtime.max_num_tokens"
    raw["trt_llm"]["runtime"]["max_num_tokens"] = 32768
    assert errors(raw) == []


@pytest.mark.parametrize(
    ("key", "target"),
    [
        ("max_model_len", "trt_llm.runtime.max_seq_len"),
        ("max-num-seqs", "trt_llm.runtime.max_batch_size"),
        ("max_num_batched_tokens", "trt_llm.runtime.max_num_tokens"),
        ("max_batch_size", "trt_llm.runtime.max_batch_size"),
        ("tensor_parallel_size", "trt_llm.runtime.tensor_parallel_size"),
        ("quantization", "trt_llm.build.quantization_type"),
        ("speculative_config", "llm_config.speculative_config"),
        ("build_config", "trt_llm.build"),
        ("enable_prefix_caching", "bisllm-worker"),
        ("kv_events_config", "bisllm-worker"),
    ],
)
def test_patch_kwargs_colliding_with_typed_fields(key: str, target: str) -> None:
    err = only(with_(trt_llm={"runtime": {"patch_kwargs": {key: 1}}}))
    assert err.path == f"trt_llm.runtime.patch_kwargs.{key}"
    assert err.message.startswith(f"collides with {target}")


def test_patch_kwargs_free_keys_and_values() -> None:
    kwargs = {
        "gpu_memory_utilization": 0.9,
        "enforce-eager": True,
        "compilation_config": {"level": 3},
        "dtype": None,
    }
    assert errors(with_(trt_llm={"runtime": {"patch_kwargs": kwargs}})) == []
    err = only(with_(trt_llm={"runtime": {"patch_kwargs": {"Bad Key": 1}}}))
    assert "not an engine argument name" in err.message


# ---- bisllm block ---------------------------------------------------------------------------------


def test_mocker_does_not_simulate_disagg_or_speculation() -> None:
    raw = with_(
        bisllm={"engine_backend": "mocker"},
        llm_config={
            "is_disaggregated": True,
            "b10_disagg_config": {
                "prefill_workers_per_replica": 1,
                "decode_workers_per_replica": 1,
            },
            "speculative_config": {"decoding_type": "NGram"},
        },
    )
    errs = errors(raw)
    assert [e.path for e in errs] == ["bisllm.engine_backend", "bisllm.engine_backend"]
    assert "disaggregated" in errs[0].message and "speculative" in errs[1].message


def test_cpu_block_size_multiple_of_32() -> None:
    assert paths(with_(bisllm={"block_size": 16})) == ["bisllm.block_size"]
    assert errors(with_(bisllm={"block_size": 128})) == []
    assert errors(with_(bisllm={"block_size": 16, "engine_backend": "mocker"})) == []


def test_router_port_must_not_be_a_worker_port() -> None:
    raw = with_(
        autoscaling_settings={"min_replica": 3, "max_replica": 3},
        bisllm={"port": 8102, "worker_base_port": 8100},
    )
    err = only(raw)
    assert err.path == "bisllm.port" and "8100..8102" in err.message


def test_worker_ports_fit_below_65536() -> None:
    raw = with_(
        autoscaling_settings={"min_replica": 4, "max_replica": 4},
        bisllm={"worker_base_port": 65534},
    )
    assert paths(raw) == ["bisllm.worker_base_port"]


def test_key_env_names_and_commands() -> None:
    raw = with_(bisllm={"api_key_env": "not a var", "router_command": []})
    assert paths(raw) == ["bisllm.api_key_env", "bisllm.router_command"]


# ---- all at once, and file handling ---------------------------------------------------------------


def test_every_error_is_reported_at_once() -> None:
    raw = with_(
        trt_llm={
            "build": {"base_model": "decoder", "quantization_type": "fp8"},
            "runtime": {"max_batch_size": 0, "tensor_parallel_size": 8, "typo_field": 1},
        },
        resources={"accelerator": "A100:4", "use_gpu": True},
        autoscaling_settings={"concurrency_target": 8},
        llm_config={"speculative_config": {"decoding_type": "MTP"}},
    )
    assert paths(raw) == [
        "trt_llm.build.base_model",
        "autoscaling_settings.concurrency_target",
        "trt_llm.runtime.max_batch_size",
        "trt_llm.runtime.typo_field",
        "trt_llm.build.quantization_type",
        "trt_llm.runtime.tensor_parallel_size",
        "llm_config.speculative_config.num_nextn_predict_layers",
    ]


def test_parse_config_raises_with_every_error_rendered() -> None:
    text = "model_name: m\ntrt_llm:\n  build:\n    base_model: decoder\n"
    with pytest.raises(ConfigErrors) as info:
        parse_config(text, "x.yaml")
    rendered = info.value.render()
    assert rendered.startswith("x.yaml: 2 errors")
    assert "- Field trt_llm.build.base_model is not allowed" in rendered
    assert "- trt_llm.build.checkpoint_repository: required unless" in rendered


def test_duplicate_yaml_keys_are_errors() -> None:
    text = "model_name: a\nmodel_name: b\n"
    with pytest.raises(ConfigErrors, match="duplicate key 'model_name'"):
        parse_config(text)


def test_invalid_yaml_and_non_mapping_root() -> None:
    with pytest.raises(ConfigErrors, match="not valid YAML"):
        parse_config("a: [1, 2\n")
    assert paths([1, 2]) == ["<root>"]


def test_validate_does_not_modify_its_input() -> None:
    raw = with_(trt_llm={"build": {"base_model": "decoder"}})
    before = copy.deepcopy(raw)
    validate(raw)
    assert raw == before
