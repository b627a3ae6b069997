"""config -> bisllm-worker / vLLM engine arguments: the documented table, row by row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bisllm.config import (
    MAPPING,
    Config,
    EngineArgsError,
    SpeculativeConfig,
    speculative_config_dict,
    vllm_engine_args,
    worker_argv,
)
from bisllm.config.engine_args import (
    PATCH_KWARGS_RESERVED,
    patch_kwargs_args,
    quantization_args,
)
from bisllm.config.schema import RuntimeConfig

ROOT = Path(__file__).resolve().parents[2]


def config(**raw: Any) -> Config:
    return msgspec.convert(raw, Config)


def split(argv: list[str]) -> tuple[list[str], list[str]]:
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def test_full_worker_argv() -> None:
    cfg = config(
        model_name="m",
        trt_llm={
            "build": {"quantization_type": "fp8_kv"},
            "runtime": {
                "max_seq_len": 32768,
                "max_batch_size": 64,
                "max_num_tokens": 4096,
                "tensor_parallel_size": 2,
                "enable_chunked_prefill": False,
                "served_model_name": "served",
                "patch_kwargs": {"gpu_memory_utilization": 0.9, "enforce-eager": True},
            },
        },
        llm_config={"speculative_config": {"decoding_type": "NGram", "max_draft_len": 3}},
        bisllm={"block_size": 32, "kv_cache_space_gib": 2, "worker_host": "127.0.0.1"},
    )
    argv = worker_argv(cfg, model_path="/models/m", port=8101, role="decode")
    assert argv == [
        "--model", "/models/m",
        "--host", "127.0.0.1",
        "--port", "8101",
        "--role", "decode",
        "--served-model-name", "served",
        "--max-model-len", "32768",
        "--max-num-seqs", "64",
        "--max-num-batched-tokens", "4096",
        "--block-size", "32",
        "--kv-cache-space-gib", "2.0",
        "--speculative-config", '{"method":"ngram","num_speculative_tokens":3}',
        "--",
        "--tensor-parallel-size", "2",
        "--no-enable-chunked-prefill",
        "--quantization", "fp8",
        "--kv-cache-dtype", "fp8",
        "--gpu-memory-utilization", "0.9",
        "--enforce-eager",
    ]  # fmt: skip


def test_defaults_map_to_bis_llm_defaults_and_omit_the_unset() -> None:
    own, vllm = split(worker_argv(config(model_name="m"), model_path="/m", port=9000))
    assert "--max-model-len" not in own  # vLLM takes max_position_embeddings
    assert "--block-size" not in own and "--speculative-config" not in own
    assert own[own.index("--max-num-seqs") + 1] == "256"
    assert own[own.index("--max-num-batched-tokens") + 1] == "8192"
    assert own[own.index("--served-model-name") + 1] == "m"
    assert own[own.index("--role") + 1] == "aggregated"
    assert vllm == ["--tensor-parallel-size", "1", "--enable-chunked-prefill"]


@pytest.mark.parametrize(
    ("quant", "args"),
    [
        ("no_quant", []),
        ("fp8", ["--quantization", "fp8"]),
        ("fp8_kv", ["--quantization", "fp8", "--kv-cache-dtype", "fp8"]),
    ],
)
def test_quantization(quant: Any, args: list[str]) -> None:
    assert quantization_args(quant) == args


@pytest.mark.parametrize("quant", ["fp4", "fp4_kv", "fp4_mlp_only"])
def test_fp4_cannot_be_mapped(quant: Any) -> None:
    with pytest.raises(EngineArgsError, match="pre-quantized NVFP4"):
        quantization_args(quant)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"decoding_type": "NGram"}, {"method": "ngram", "num_speculative_tokens": 4}),
        (
            {"decoding_type": "NGram", "max_draft_len": 6, "prompt_lookup_max": 3},
            {"method": "ngram", "num_speculative_tokens": 6, "prompt_lookup_max": 3},
        ),
        (
            {"decoding_type": "Eagle", "speculative_model_dir": "/e"},
            {"method": "eagle", "model": "/e", "num_speculative_tokens": 3},
        ),
        (
            {"decoding_type": "Eagle3", "speculative_model_dir": "/e3", "max_draft_len": 5},
            {"method": "eagle3", "model": "/e3", "num_speculative_tokens": 5},
        ),
        (
            {"decoding_type": "MTP", "num_nextn_predict_layers": 1},
            {"method": "mtp", "num_speculative_tokens": 1},
        ),
        (
            {"decoding_type": "MTP", "num_nextn_predict_layers": 1, "max_draft_len": 2},
            {"method": "mtp", "num_speculative_tokens": 2},
        ),
    ],
)
def test_speculative_config_to_vllm(spec: dict[str, Any], expected: dict[str, Any]) -> None:
    assert speculative_config_dict(msgspec.convert(spec, SpeculativeConfig)) == expected


def test_speculative_config_needs_its_fields() -> None:
    with pytest.raises(EngineArgsError):
        speculative_config_dict(SpeculativeConfig(decoding_type="Eagle"))
    with pytest.raises(EngineArgsError):
        speculative_config_dict(SpeculativeConfig())


def test_patch_kwargs_to_cli() -> None:
    assert patch_kwargs_args(
        {
            "enforce_eager": True,
            "enable-expert-parallel": False,
            "dtype": None,
            "hf_overrides": {"b": 1, "a": [1, 2]},
            "allowed-origins": ["a", "b"],
            "seed": 7,
            "trust_remote_code": "yes",
        }
    ) == [
        "--enforce-eager",
        "--no-enable-expert-parallel",
        "--hf-overrides",
        '{"a":[1,2],"b":1}',
        "--allowed-origins",
        "a",
        "b",
        "--seed",
        "7",
        "--trust-remote-code",
        "yes",
    ]


def test_every_runtime_field_is_reserved_in_patch_kwargs() -> None:
    for field in msgspec.structs.fields(RuntimeConfig):
        assert field.name in PATCH_KWARGS_RESERVED, field.name


def test_vllm_engine_args_alone() -> None:
    cfg = config(trt_llm={"runtime": {"patch_kwargs": {"swap_space": 4}}})
    assert vllm_engine_args(cfg) == [
        "--tensor-parallel-size",
        "1",
        "--enable-chunked-prefill",
        "--swap-space",
        "4",
    ]


def test_docs_table_lists_every_mapping_row() -> None:
    doc = (ROOT / "docs" / "config.md").read_text()
    for row in MAPPING:
        assert f"`{row.field}`" in doc, row.field
        assert row.argument in doc, row.argument


def test_module_docstring_table_lists_every_mapping_row() -> None:
    from bisllm.config import engine_args

    doc = engine_args.__doc__ or ""
    for row in MAPPING:
        assert row.field in doc or row.field.rsplit(".", 1)[0] in doc, row.field
        assert row.argument in doc, row.argument


def test_bisllm_worker_parses_the_argv() -> None:
    """Contract with bisllm-worker: its own parser accepts what the launcher builds."""
    worker = pytest.importorskip("bisllm_workers.vllm_worker.config")
    cfg = config(
        model_name="m",
        trt_llm={"runtime": {"max_seq_len": 4096, "patch_kwargs": {"enforce_eager": True}}},
        llm_config={"speculative_config": {"decoding_type": "NGram", "prompt_lookup_max": 2}},
        bisllm={"block_size": 128, "kv_cache_space_gib": 1},
    )
    parsed = worker.parse_worker_args(worker_argv(cfg, model_path="/m", port=8101, role="prefill"))
    assert (parsed.model, parsed.port, parsed.role) == ("/m", 8101, "prefill")
    assert (parsed.max_model_len, parsed.max_num_seqs, parsed.max_num_batched_tokens) == (
        4096,
        256,
        8192,
    )
    assert parsed.block_size == 128 and parsed.kv_cache_space_gib == 1.0
    assert parsed.served_model_name == "m"
    assert parsed.speculative_config == json.loads(
        '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 2}'
    )
    assert parsed.extra_args == (
        "--tensor-parallel-size",
        "1",
        "--enable-chunked-prefill",
        "--enforce-eager",
    )
