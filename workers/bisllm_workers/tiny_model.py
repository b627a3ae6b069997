"""The embedded default model: a tiny random-weight Llama with a locally trained tokenizer.

Tests, `make run` and the mocker need a model directory that vLLM (CPU build) can load in
seconds, without downloading anything. `make_tiny_model` builds one deterministically:

- `config.json`: `LlamaForCausalLM`, hidden 256, 4 heads (head dim 64), 2 KV heads, 2 layers.
- `model.safetensors`: float32 weights drawn from `numpy.random.default_rng(seed)` (PCG64 and
  the ziggurat normal sampler are stable across numpy versions), written with
  `safetensors.numpy`, so no torch is needed to build the model.
- `tokenizer.json`: a byte-level BPE trained with HF `tokenizers` on a corpus generated here from
  a fixed seed. The tokenizer does not depend on `seed`: models built with different seeds share
  token ids, so prompts and fixtures stay comparable across them.
- `tokenizer_config.json` / `special_tokens_map.json` / `generation_config.json`: Llama-3 style
  special tokens and a Llama-3 style chat template.

Two runs with the same seed produce byte-identical files (tests/workers/test_tiny_model.py).

Usage: `python -m bisllm_workers.tiny_model DIR [--seed N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported lazily: the mocker uses the tokenizer only
    import numpy as np

__all__ = [
    "BOS_TOKEN",
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "EOT_TOKEN",
    "SPECIAL_TOKENS",
    "TinyLlamaSpec",
    "main",
    "make_tiny_model",
]

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
EOT_TOKEN = "<|eot_id|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
PAD_TOKEN = "<|finetune_right_pad_id|>"
# Special tokens get the first ids (0..5), in this order; the BPE trainer reserves them.
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, EOT_TOKEN, START_HEADER, END_HEADER, PAD_TOKEN)

# Llama-3 style: BOS once, then one header + body + <|eot_id|> per message. Content given as a list
# of OpenAI text parts is joined, so both content formats render the same prompt.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set content = message['content'] %}"
    "{%- elif message['content'] is none %}{%- set content = '' %}"
    "{%- else %}{%- set content = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') %}{%- endif %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + content | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


class TinyLlamaSpec:
    """Architecture constants of the tiny model (a namespace, not configurable on purpose:
    every test and fixture in the repo assumes these shapes)."""

    hidden_size = 256
    num_attention_heads = 4  # head_dim 64, a size every vLLM attention backend supports
    num_key_value_heads = 2  # GQA, like the real Llama 3 models
    intermediate_size = 512
    num_hidden_layers = 2
    max_position_embeddings = 4096
    rms_norm_eps = 1e-5
    rope_theta = 500000.0
    target_vocab_size = 4096  # the BPE trainer stops earlier if the corpus runs out of merges
    init_std = 0.02


# Corpus generation. A fixed seed, independent of the model seed (see the module docstring).
_CORPUS_SEED = 0x5EED_B15
_CORPUS_SENTENCES = 24_000

# Whitespace-separated word lists (split in _corpus).
_COMMON_WORDS = """
the of and to a in is it you that he was for on are with as I his they be at one have this from
or had by hot word but what some we can out other were all there when up use your how said an
each she which do their time if will way about many then them write would like so these her long
make thing see him two has look more day could go come did number sound no most people my over
know water than call first who may down side been now find any new work part take get place made
live where after back little only round man year came show every good me give our under name
very through just form sentence great think say help low line differ turn cause much mean before
move right boy old too same tell does set three want air well also play small end put home read
hand port large spell add even land here must big high such follow act why ask men change went
light kind off need house picture try us again animal point mother world near build self earth
father head stand own page should country found answer school grow study still learn plant cover
food sun four between state keep eye never last let thought city tree cross farm hard start might
story saw far sea draw left late run while press close night real life few north open seem
together next white children begin got walk example ease paper group always music those both mark
often letter until mile river car feet care second book carry took science eat room friend began
idea fish mountain stop once base hear horse cut sure watch color face wood main enough plain girl
usual young ready above ever red list though feel talk bird soon body dog family direct pose leave
song measure door product black short numeral class wind question happen complete ship area half
rock order fire south problem piece told knew pass since top whole king space heard best hour
better true during hundred five remember step early hold west ground interest reach fast verb sing
listen six table travel less morning ten simple several vowel toward war lay against pattern slow
center love person money serve appear road map rain rule govern pull cold notice voice unit power
town fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest
correct able pound done beauty drive stood contain front teach week final gave green oh quick
develop ocean warm free minute strong special mind behind clear tail produce fact street inch
multiply nothing course stay wheel full force blue object decide surface deep moon island foot
system busy test record boat common gold possible plane stead dry wonder laugh thousand ago ran
check game shape equate miss brought heat snow tire bring yes distant fill east paint language
among model router request token cache block prefix worker engine latency throughput server
"""

_SYLLABLES = (
    "ba be bi bo bu ca ce ci co cu da de di do du fa fe fi fo ga ge go ha he hi ho ja jo ka ke ki"
    " ko la le li lo lu ma me mi mo mu na ne ni no nu pa pe pi po pu ra re ri ro ru sa se si so su"
    " ta te ti to tu va ve vi vo wa we wi ya yo za zo an en in on un ar er ir or ur al el il ol st"
    " tr pr br gr ch sh th qu ng nt nd"
)

_PUNCT_END = (".", ".", ".", ".", "?", "!", ";", ":")


def _corpus() -> Iterator[str]:
    """Yield deterministic English-like text: Zipf-weighted common words, pseudo-words built
    from syllables (so BPE has enough distinct words to learn ~4k merges), numbers, and a few
    code/JSON-ish lines so those characters get merges too."""
    rng = random.Random(_CORPUS_SEED)
    syllables = _SYLLABLES.split()
    pseudo = sorted(
        {"".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(6000)}
    )
    words = _COMMON_WORDS.split() + pseudo
    weights = [1.0 / (rank + 1) ** 0.9 for rank in range(len(words))]
    cum: list[float] = []
    acc = 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    for i in range(_CORPUS_SENTENCES):
        n = rng.randint(4, 18)
        ws = rng.choices(words, cum_weights=cum, k=n)
        ws[0] = ws[0].capitalize()
        if rng.random() < 0.15:
            ws.insert(rng.randint(1, n), str(rng.randint(0, 10_000)))
        if rng.random() < 0.1:
            ws.insert(rng.randint(1, n), ",")
        sentence = " ".join(ws).replace(" ,", ",") + rng.choice(_PUNCT_END)
        if i % 50 == 0:
            key, val = rng.choice(words), rng.randint(0, 999)
            sentence += f'\n{{"{key}": {val}, "ok": true}}\ndef f_{key}(x):\n    return x + {val}\n'
        yield sentence + ("\n" if rng.random() < 0.2 else " ")


def _train_tokenizer() -> object:
    """Train the byte-level BPE. Training is deterministic for a fixed corpus: the trainer picks
    the most frequent pair and breaks ties by pair ids, which follow the sorted byte alphabet."""
    # Imported here so importing this module (e.g. for CHAT_TEMPLATE) stays cheap.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TinyLlamaSpec.target_vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer, length=_CORPUS_SENTENCES)
    bos_id = tok.token_to_id(BOS_TOKEN)
    # Like Llama 3: add_special_tokens=True prepends BOS (vLLM does this for completion prompts;
    # chat prompts carry BOS from the template and are encoded without special tokens).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return tok


def _dump_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _weights(seed: int, vocab_size: int) -> dict[str, np.ndarray]:
    """Random Llama weights in HF naming. Norm weights are ones, projections N(0, 0.02²)."""
    import numpy as np

    s = TinyLlamaSpec
    rng = np.random.default_rng(seed)
    head_dim = s.hidden_size // s.num_attention_heads
    kv_dim = s.num_key_value_heads * head_dim

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(s.init_std)).astype(
            np.float32
        )

    out: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal(vocab_size, s.hidden_size)}
    for i in range(s.num_hidden_layers):
        p = f"model.layers.{i}."
        out[p + "self_attn.q_proj.weight"] = normal(s.hidden_size, s.hidden_size)
        out[p + "self_attn.k_proj.weight"] = normal(kv_dim, s.hidden_size)
        out[p + "self_attn.v_proj.weight"] = normal(kv_dim, s.hidden_size)
        out[p + "self_attn.o_proj.weight"] = normal(s.hidden_size, s.hidden_size)
        out[p + "mlp.gate_proj.weight"] = normal(s.intermediate_size, s.hidden_size)
        out[p + "mlp.up_proj.weight"] = normal(s.intermediate_size, s.hidden_size)
        out[p + "mlp.down_proj.weight"] = normal(s.hidden_size, s.intermediate_size)
        out[p + "input_layernorm.weight"] = np.ones(s.hidden_size, dtype=np.float32)
        out[p + "post_attention_layernorm.weight"] = np.ones(s.hidden_size, dtype=np.float32)
    out["model.norm.weight"] = np.ones(s.hidden_size, dtype=np.float32)
    out["lm_head.weight"] = normal(vocab_size, s.hidden_size)
    return out


def make_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Build the tiny Llama into `out_dir` (created if missing; existing files are overwritten)
    and return its path. Deterministic: the same seed gives byte-identical files."""
    from safetensors.numpy import save_file

    # Parallel training is deterministic too, but one thread keeps the build from competing with
    # whatever else runs on a small machine, and removes any doubt.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = TinyLlamaSpec

    tok = _train_tokenizer()
    tok.save(str(out / "tokenizer.json"))  # type: ignore[attr-defined]
    vocab_size: int = tok.get_vocab_size()  # type: ignore[attr-defined]
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}  # type: ignore[attr-defined]

    _dump_json(
        out / "config.json",
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": s.hidden_size,
            "num_attention_heads": s.num_attention_heads,
            "num_key_value_heads": s.num_key_value_heads,
            "head_dim": s.hidden_size // s.num_attention_heads,
            "intermediate_size": s.intermediate_size,
            "num_hidden_layers": s.num_hidden_layers,
            "hidden_act": "silu",
            "max_position_embeddings": s.max_position_embeddings,
            "rms_norm_eps": s.rms_norm_eps,
            "rope_theta": s.rope_theta,
            "rope_scaling": None,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "initializer_range": s.init_std,
            "vocab_size": vocab_size,
            "tie_word_embeddings": False,
            "bos_token_id": ids[BOS_TOKEN],
            "eos_token_id": ids[EOT_TOKEN],
            "pad_token_id": ids[PAD_TOKEN],
            "torch_dtype": "float32",
            "use_cache": True,
            "transformers_version": "4.56.0",
        },
    )
    _dump_json(
        out / "generation_config.json",
        {
            "bos_token_id": ids[BOS_TOKEN],
            "eos_token_id": [ids[EOS_TOKEN], ids[EOT_TOKEN]],
            "transformers_version": "4.56.0",
        },
    )
    added = {
        str(ids[t]): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    _dump_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "added_tokens_decoder": added,
            "bos_token": BOS_TOKEN,
            "eos_token": EOT_TOKEN,
            "pad_token": PAD_TOKEN,
            "add_bos_token": True,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": s.max_position_embeddings,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    _dump_json(
        out / "special_tokens_map.json",
        {"bos_token": BOS_TOKEN, "eos_token": EOT_TOKEN, "pad_token": PAD_TOKEN},
    )
    weights_path = out / "model.safetensors"
    save_file(_weights(seed, vocab_size), str(weights_path), metadata={"format": "pt"})
    weights_path.chmod(0o644)  # safetensors creates it 0600; the model dir is shared read-only
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bisllm_workers.tiny_model",
        description="Build the tiny random-weight Llama (deterministic for a seed).",
    )
    parser.add_argument("out_dir", type=Path, help="directory to write the model into")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    args = parser.parse_args(argv)
    path = make_tiny_model(args.out_dir, seed=args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
