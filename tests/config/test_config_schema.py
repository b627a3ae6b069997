"""The schema itself: every field documented and defaulted, BIS-LLM's defaults, the JSON schema."""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator

import msgspec
import pytest

from bisllm.config import Config, LlmConfig
from bisllm.config.schema import DisaggConfig


def _structs(
    cls: type[msgspec.Struct], seen: set[type] | None = None
) -> Iterator[type[msgspec.Struct]]:
    """cls and every Struct reachable from its fields."""
    seen = set() if seen is None else seen
    if cls in seen:
        return
    seen.add(cls)
    yield cls
    for field in msgspec.structs.fields(cls):
        stack = [field.type]
        while stack:
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
                yield from _structs(tp, seen)
            stack.extend(a for a in typing.get_args(tp) if not isinstance(a, msgspec.Meta))


ALL_STRUCTS = list(_structs(Config))


def test_schema_covers_the_bis_llm_blocks() -> None:
    names = {cls.__name__ for cls in ALL_STRUCTS}
    assert {
        "TrtLlmConfig",
        "BuildConfig",
        "RuntimeConfig",
        "CheckpointRepository",
        "QuantizationConfig",
        "LlmConfig",
        "RoutingConfig",
        "DisaggConfig",
        "SpeculativeConfig",
        "AutoscalingSettings",
        "Resources",
        "BisllmSettings",
        "MockerSettings",
    } <= names


@pytest.mark.parametrize("cls", ALL_STRUCTS, ids=lambda c: c.__name__)
def test_every_field_has_a_default_and_a_description(cls: type[msgspec.Struct]) -> None:
    assert cls.__doc__, f"{cls.__name__} has no docstring"
    for field in msgspec.structs.fields(cls):
        has_default = field.default is not msgspec.NODEFAULT or (
            field.default_factory is not msgspec.NODEFAULT
        )
        assert has_default, f"{cls.__name__}.{field.name} has no default"
        metas = [a for a in typing.get_args(field.type) if isinstance(a, msgspec.Meta)]
        assert any(m.description for m in metas), f"{cls.__name__}.{field.name} has no description"


@pytest.mark.parametrize("cls", ALL_STRUCTS, ids=lambda c: c.__name__)
def test_unknown_fields_are_forbidden(cls: type[msgspec.Struct]) -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field `nope`"):
        msgspec.convert({"nope": 1}, cls)


def test_defaults_are_bis_llm_defaults() -> None:
    cfg = Config()
    assert cfg.trt_llm.inference_stack == "v2"
    assert cfg.trt_llm.runtime.max_batch_size == 256
    assert cfg.trt_llm.runtime.max_num_tokens == 8192
    assert cfg.trt_llm.runtime.enable_chunked_prefill is True
    assert cfg.trt_llm.build.quantization_type == "no_quant"
    assert cfg.trt_llm.build.quantization_config.calib_size == 1024
    assert cfg.llm_config.b10_routing_config.router_queue_policy == "fcfs"
    assert cfg.autoscaling_settings.min_replica == 1
    assert cfg.bisllm.engine_backend == "vllm"
    assert (cfg.bisllm.port, cfg.bisllm.worker_base_port) == (8000, 8101)


def test_json_schema_describes_every_field() -> None:
    schema = msgspec.json.schema(Config)
    defs = schema["$defs"]
    runtime = defs["RuntimeConfig"]
    assert runtime["additionalProperties"] is False
    batch = runtime["properties"]["max_batch_size"]
    assert (batch["minimum"], batch["maximum"], batch["default"]) == (1, 2048, 256)
    assert "max_num_seqs" in batch["description"]
    json.dumps(schema)  # serializable for editors


def test_served_model_name_falls_back_to_model_name() -> None:
    cfg = msgspec.convert({"model_name": "m"}, Config)
    assert cfg.served_model_name == "m"
    cfg = msgspec.convert(
        {"model_name": "m", "trt_llm": {"runtime": {"served_model_name": "s"}}}, Config
    )
    assert cfg.served_model_name == "s"


def test_worker_roles_follow_replicas_and_disaggregation() -> None:
    cfg = Config()
    assert cfg.worker_roles() == ["aggregated"] and cfg.workers_per_replica == 1
    disagg = msgspec.structs.replace(
        cfg,
        llm_config=LlmConfig(
            is_disaggregated=True,
            b10_disagg_config=DisaggConfig(
                prefill_workers_per_replica=2, decode_workers_per_replica=1
            ),
        ),
    )
    assert disagg.worker_roles() == ["prefill", "prefill", "decode"]
    assert disagg.workers_per_replica == 3


def test_docs_reference_every_field() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    for cls in ALL_STRUCTS:
        for field in msgspec.structs.fields(cls):
            assert f"| `{field.name}` |" in doc, f"{cls.__name__}.{field.name} missing in docs"
