"""examples/: every deployment validates; the translated BIS-LLM deployments keep their shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from bisllm.config import Config, load_config, worker_argv
from bisllm.config.validate import parse_accelerator

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_the_expected_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "tiny-cpu.yaml",
        "tiny-mocker.yaml",
        "deepseek-v3.1-nvfp4-b200.yaml",
        "gpt-oss-120b-b200.yaml",
        "qwen3-30b-a3b-moe-b200.yaml",
        "llama-3.3-70b-fp8-h100.yaml",
    } <= names
    assert (ROOT / "examples" / "v1" / "qwen3-4b-engine-builder.yaml").is_file()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid_and_maps_to_engine_args(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.trt_llm.inference_stack == "v2"
    argv = worker_argv(cfg, model_path="/m", port=cfg.bisllm.worker_base_port)
    assert "--" in argv


def load(name: str) -> Config:
    return load_config(ROOT / "examples" / name)


def test_tiny_cpu_is_the_make_run_deployment() -> None:
    cfg = load("tiny-cpu.yaml")
    repo = cfg.trt_llm.build.checkpoint_repository
    assert repo is not None and (repo.source, repo.repo) == ("LOCAL", ".cache/tiny-llama")
    assert cfg.bisllm.engine_backend == "vllm" and cfg.resources.accelerator is None
    assert cfg.bisllm.port == 8000
    ports = [cfg.bisllm.worker_base_port + i for i in range(len(cfg.worker_roles()))]
    assert ports == [8101, 8102]
    makefile = (ROOT / "Makefile").read_text()
    assert "bisllm serve examples/tiny-cpu.yaml" in makefile


def test_tiny_mocker_is_a_mocker_fleet() -> None:
    cfg = load("tiny-mocker.yaml")
    assert cfg.bisllm.engine_backend == "mocker"
    assert cfg.autoscaling_settings.min_replica >= 2


def test_deepseek_v31_nvfp4_on_b200x4() -> None:
    cfg = load("deepseek-v3.1-nvfp4-b200.yaml")
    assert cfg.resources.accelerator is not None
    acc = parse_accelerator(cfg.resources.accelerator)
    assert (acc.name, acc.count) == ("B200", 4)
    repo = cfg.trt_llm.build.checkpoint_repository
    assert repo is not None and repo.repo == "nvidia/DeepSeek-V3.1-NVFP4"
    assert cfg.trt_llm.build.quantization_type == "no_quant"  # pre-quantized by ModelOpt
    assert cfg.trt_llm.runtime.tensor_parallel_size == 4
    spec = cfg.llm_config.speculative_config
    assert spec is not None and spec.decoding_type == "MTP"


def test_gpt_oss_120b() -> None:
    cfg = load("gpt-oss-120b-b200.yaml")
    repo = cfg.trt_llm.build.checkpoint_repository
    assert repo is not None and repo.repo == "openai/gpt-oss-120b"
    assert cfg.trt_llm.runtime.max_num_tokens == 16384


def test_qwen3_30b_a3b_moe_disaggregated() -> None:
    cfg = load("qwen3-30b-a3b-moe-b200.yaml")
    assert cfg.llm_config.is_disaggregated
    assert cfg.worker_roles() == ["prefill", "decode"]
    assert cfg.trt_llm.build.quantization_type == "fp8"


def test_llama_33_70b_fp8_on_h100x4() -> None:
    cfg = load("llama-3.3-70b-fp8-h100.yaml")
    assert cfg.resources.accelerator == "H100:4"
    assert cfg.trt_llm.build.quantization_type == "fp8"
    assert cfg.trt_llm.runtime.tensor_parallel_size == 4
    argv = worker_argv(cfg, model_path="/m", port=8101)
    assert argv[argv.index("--") :][:6] == [
        "--",
        "--tensor-parallel-size",
        "4",
        "--enable-chunked-prefill",
        "--quantization",
        "fp8",
    ]
