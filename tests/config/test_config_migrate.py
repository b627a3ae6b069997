"""`migrate`: BIS-LLM's seven v1 -> v2 steps, the extra drops, and the round trip."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from bisllm.config import dump_yaml, migrate, read_yaml, validate

ROOT = Path(__file__).resolve().parents[2]
V1_EXAMPLE = ROOT / "examples" / "v1" / "qwen3-4b-engine-builder.yaml"

# BIS-LLM's migration guide, before and after (https://docs.baseten.co/engines/bis-llm/migrate-from-v1).
GUIDE_V1: dict[str, Any] = {
    "trt_llm": {
        "build": {
            "base_model": "decoder",
            "checkpoint_repository": {"source": "HF", "repo": "Qwen/Qwen3-4B"},
            "max_seq_len": 32768,
            "max_batch_size": 256,
            "max_num_tokens": 8192,
            "quantization_type": "fp8_kv",
            "tensor_parallel_count": 1,
            "plugin_configuration": {
                "paged_kv_cache": True,
                "use_paged_context_fmha": True,
                "use_fp8_context_fmha": True,
            },
        },
        "runtime": {"kv_cache_free_gpu_mem_fraction": 0.9, "enable_chunked_context": True},
    }
}
GUIDE_V2: dict[str, Any] = {
    "trt_llm": {
        "inference_stack": "v2",
        "build": {
            "checkpoint_repository": {"source": "HF", "repo": "Qwen/Qwen3-4B"},
            "quantization_type": "fp8_kv",
        },
        "runtime": {
            "max_seq_len": 32768,
            "max_batch_size": 256,
            "max_num_tokens": 8192,
            "tensor_parallel_size": 1,
            "enable_chunked_prefill": True,
        },
    }
}


def test_migration_guide_before_becomes_after() -> None:
    result = migrate(GUIDE_V1)
    assert result.changed
    assert result.data == GUIDE_V2
    assert list(result.data["trt_llm"]) == ["inference_stack", "build", "runtime"]
    assert list(result.data["trt_llm"]["runtime"]) == list(GUIDE_V2["trt_llm"]["runtime"])


def test_migrate_does_not_modify_its_input() -> None:
    before = copy.deepcopy(GUIDE_V1)
    migrate(GUIDE_V1)
    assert before == GUIDE_V1


def test_every_change_is_noted() -> None:
    notes = "\n".join(migrate(GUIDE_V1).notes)
    for text in (
        "moved trt_llm.build.max_seq_len to trt_llm.runtime.max_seq_len",
        "renamed trt_llm.build.tensor_parallel_count to trt_llm.runtime.tensor_parallel_size",
        "removed trt_llm.build.base_model",
        "removed trt_llm.build.plugin_configuration",
        "removed trt_llm.runtime.kv_cache_free_gpu_mem_fraction",
        "renamed trt_llm.runtime.enable_chunked_context to enable_chunked_prefill",
    ):
        assert text in notes


def test_speculator_dropped_with_ngram_suggestion() -> None:
    raw = copy.deepcopy(GUIDE_V1)
    raw["trt_llm"]["build"]["speculator"] = {"num_draft_tokens": 31}
    result = migrate(raw)
    assert "speculator" not in result.data["trt_llm"]["build"]
    assert any("decoding_type: NGram, max_draft_len: 31" in n for n in result.notes)


def test_runtime_value_wins_over_a_conflicting_build_value() -> None:
    raw = {"trt_llm": {"build": {"max_batch_size": 64}, "runtime": {"max_batch_size": 32}}}
    result = migrate(raw)
    assert result.data["trt_llm"]["runtime"]["max_batch_size"] == 32
    assert any("kept it" in n for n in result.notes)


def test_version_overrides_and_v1_runtime_fields_dropped() -> None:
    raw = {
        "trt_llm": {
            "build": {},
            "runtime": {"total_token_limit": 5, "served_model_name": "x"},
            "version_overrides": {"briton_version": "1"},
        }
    }
    out = migrate(raw).data["trt_llm"]
    assert "version_overrides" not in out
    assert out["runtime"] == {"served_model_name": "x"}


def test_concurrency_target_becomes_token_target_when_told_tokens_per_request() -> None:
    raw = {"autoscaling_settings": {"concurrency_target": 10, "target_utilization_percentage": 70}}
    assert migrate(raw, tokens_per_request=5000).data["autoscaling_settings"] == {
        "target_in_flight_tokens": 50000
    }
    result = migrate(raw)
    assert result.data["autoscaling_settings"] == {}
    assert any("--tokens-per-request" in n for n in result.notes)


def test_already_v2_is_unchanged() -> None:
    result = migrate(GUIDE_V2)
    assert not result.changed
    assert result.data == GUIDE_V2 and result.notes == []


def test_legacy_quantization_is_left_for_the_user_with_a_note() -> None:
    raw = {"trt_llm": {"build": {"quantization_type": "weights_int8"}}}
    result = migrate(raw)
    assert result.data["trt_llm"]["build"]["quantization_type"] == "weights_int8"
    assert any("legacy v1 type" in n for n in result.notes)


def test_v1_example_round_trip_validates() -> None:
    raw = read_yaml(V1_EXAMPLE.read_text())
    _, before = validate(raw)
    assert len(before) == 12  # seven build fields, two autoscaling fields, three runtime fields
    result = migrate(raw, tokens_per_request=4000)
    migrated = read_yaml(dump_yaml(result.data))  # through YAML text, as the CLI writes it
    cfg, errors = validate(migrated)
    assert errors == [], "\n".join(map(str, errors))
    assert cfg is not None
    assert cfg.trt_llm.runtime.max_seq_len == 32768
    assert cfg.trt_llm.runtime.enable_chunked_prefill is True
    assert cfg.trt_llm.build.quantization_type == "fp8_kv"
    assert cfg.autoscaling_settings.target_in_flight_tokens == 32 * 4000
    assert migrate(migrated).changed is False  # idempotent


def test_dump_keeps_document_order() -> None:
    text = dump_yaml({"b": 1, "a": {"z": 1, "y": 2}})
    assert text == "b: 1\na:\n  z: 1\n  y: 2\n"
