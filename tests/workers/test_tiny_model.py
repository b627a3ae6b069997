"""The embedded tiny model: determinism, tokenizer round trip, chat template."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from bisllm_workers.tiny_model import (
    BOS_TOKEN,
    EOT_TOKEN,
    SPECIAL_TOKENS,
    TinyLlamaSpec,
    make_tiny_model,
)

FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=0)


def test_same_seed_gives_identical_files_in_a_fresh_process(
    model_dir: Path, tmp_path: Path
) -> None:
    # A separate interpreter (through the CLI) rules out state shared inside this process.
    out = tmp_path / "again"
    subprocess.run(
        [sys.executable, "-m", "bisllm_workers.tiny_model", str(out), "--seed", "0"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    for name in FILES:
        assert (model_dir / name).read_bytes() == (out / name).read_bytes(), name


def test_other_seed_changes_weights_only(model_dir: Path, tmp_path: Path) -> None:
    other = make_tiny_model(tmp_path / "s1", seed=1)
    assert (model_dir / "model.safetensors").read_bytes() != (
        other / "model.safetensors"
    ).read_bytes()
    assert (model_dir / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_config_and_weight_shapes(model_dir: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["vocab_size"] == tok.get_vocab_size()
    assert 2000 <= cfg["vocab_size"] <= 4096
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == 64
    assert cfg["tie_word_embeddings"] is False
    w = load_file(str(model_dir / "model.safetensors"))
    s = TinyLlamaSpec
    assert w["model.embed_tokens.weight"].shape == (cfg["vocab_size"], s.hidden_size)
    assert w["lm_head.weight"].shape == (cfg["vocab_size"], s.hidden_size)
    assert w["model.layers.1.self_attn.k_proj.weight"].shape == (128, s.hidden_size)
    assert w["model.layers.0.mlp.down_proj.weight"].shape == (s.hidden_size, s.intermediate_size)
    assert len(w) == 3 + 9 * s.num_hidden_layers


def test_tokenizer_round_trip_and_bos(model_dir: Path) -> None:
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    text = 'The router caches 128 blocks; ünïcödé 漢字 and {"json": true}\n\tdone.'
    enc = tok.encode(text)  # add_special_tokens=True, like vLLM for completion prompts
    assert enc.ids[0] == tok.token_to_id(BOS_TOKEN)
    assert tok.encode(text, add_special_tokens=False).ids == enc.ids[1:]
    assert tok.decode(enc.ids) == text  # skip_special_tokens drops the BOS
    # BPE learned real merges: English compresses well below one token per character.
    assert len(enc.ids) < len(text) * 0.7
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))


def test_chat_template_renders_llama3_style(model_dir: Path) -> None:
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    template = jinja2.Environment().from_string(cfg["chat_template"])
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
        },
    ]
    text = template.render(
        messages=messages, add_generation_prompt=True, bos_token=cfg["bos_token"]
    )
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = tok.encode(text, add_special_tokens=False).ids
    assert ids[0] == tok.token_to_id(BOS_TOKEN)
    assert ids.count(tok.token_to_id(BOS_TOKEN)) == 1
    assert ids.count(tok.token_to_id(EOT_TOKEN)) == 2
    assert cfg["eos_token"] == EOT_TOKEN
