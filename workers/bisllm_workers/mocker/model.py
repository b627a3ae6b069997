"""The model a mock fleet pretends to serve: tokenizer, chat template, context length.

Prompts are tokenized exactly as vLLM does, so the router's token-level prefix matching sees the
same ids on mock and real workers:
- completion prompt strings with special tokens (the tokenizer's post-processor adds BOS);
- chat messages rendered with the model's chat template (`add_generation_prompt=True`, the
  template inserts BOS itself) and tokenized *without* special tokens.

Output tokens are drawn from the vocabulary entries that decode to printable ASCII on their own,
so streaming text deltas concatenate exactly to the full text (no split UTF-8 sequences).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

__all__ = ["ModelInfo", "load_model"]


def _token_content(tok: Any) -> str | None:
    """tokenizer_config.json stores special tokens as a string or an AddedToken dict."""
    if isinstance(tok, dict):
        return tok.get("content")
    return tok


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


class ModelInfo:
    def __init__(
        self,
        tokenizer: Tokenizer,
        chat_template: str | None,
        bos_token: str | None,
        eos_token: str | None,
        max_model_len: int,
        root: str,
    ) -> None:
        self.tokenizer = tokenizer
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.max_model_len = max_model_len
        self.root = root  # what /v1/models reports as "root"
        self.vocab_size = tokenizer.get_vocab_size()
        # Same environment transformers uses for chat templates.
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
            x, indent=indent, ensure_ascii=ensure_ascii
        )
        env.globals["raise_exception"] = _raise_exception
        self._template = env.from_string(chat_template) if chat_template else None
        self.has_chat_template = self._template is not None
        self.output_token_ids, self._token_text = self._ascii_tokens()
        # JSON string literals of the output tokens, for building SSE chunks without json.dumps
        self._token_json = {t: json.dumps(s) for t, s in self._token_text.items()}
        # encode_batch_fast skips offset tracking (~20% faster); older tokenizers lack it
        self._fast = hasattr(tokenizer, "encode_batch_fast")

    def _ascii_tokens(self) -> tuple[list[int], dict[int, str]]:
        special = {
            tid for tid, added in self.tokenizer.get_added_tokens_decoder().items() if added.special
        }
        ids: list[int] = []
        text: dict[int, str] = {}
        for tid in range(self.vocab_size):
            if tid in special:
                continue
            s = self.tokenizer.decode([tid], skip_special_tokens=True)
            if s and s.isascii() and s.isprintable():
                ids.append(tid)
                text[tid] = s
        if not ids:
            raise ValueError("tokenizer has no printable ASCII tokens to generate")
        return ids, text

    # ---- tokenization ----------------------------------------------------------------------

    def encode_prompt(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if self._fast:
            return self.tokenizer.encode_batch_fast([text], add_special_tokens=add_special_tokens)[
                0
            ].ids
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def render_chat(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        if self._template is None:
            raise ValueError(
                "As of transformers v4.44, default chat template is no longer allowed, so you "
                "must provide a chat template if the tokenizer does not define one."
            )
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )

    def encode_chat(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
    ) -> list[int]:
        return self.encode_prompt(self.render_chat(messages, add_generation_prompt), False)

    def token_text(self, token_id: int) -> str:
        """Text of a generated token (always one of output_token_ids)."""
        return self._token_text[token_id]

    def token_json(self, token_id: int) -> str:
        """JSON string literal of a generated token's text."""
        return self._token_json[token_id]

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


def load_model(path: str | Path | None, max_model_len: int | None = None) -> ModelInfo:
    """Load tokenizer.json, tokenizer_config.json and config.json from a HF-style model dir.

    `path=None` uses the embedded tiny model's tokenizer, trained in memory (~1 s), so the
    mocker runs with no files at all.
    """
    if path is None:
        from bisllm_workers import tiny_model

        tok = tiny_model._train_tokenizer()
        assert isinstance(tok, Tokenizer)
        return ModelInfo(
            tok,
            tiny_model.CHAT_TEMPLATE,
            tiny_model.BOS_TOKEN,
            tiny_model.EOT_TOKEN,
            max_model_len or tiny_model.TinyLlamaSpec.max_position_embeddings,
            "bisllm-tiny",
        )
    root = Path(path)
    tok_file = root / "tokenizer.json"
    if not tok_file.is_file():
        raise FileNotFoundError(f"{tok_file} not found (the mocker needs a fast tokenizer)")
    tokenizer = Tokenizer.from_file(str(tok_file))
    tcfg: dict[str, Any] = {}
    if (root / "tokenizer_config.json").is_file():
        tcfg = json.loads((root / "tokenizer_config.json").read_text())
    template = tcfg.get("chat_template")
    if isinstance(template, list):  # named templates: take "default"
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if template is None and (root / "chat_template.jinja").is_file():
        template = (root / "chat_template.jinja").read_text()
    cfg: dict[str, Any] = {}
    if (root / "config.json").is_file():
        cfg = json.loads((root / "config.json").read_text())
    derived = cfg.get("max_position_embeddings") or tcfg.get("model_max_length") or 4096
    return ModelInfo(
        tokenizer,
        template,
        _token_content(tcfg.get("bos_token")),
        _token_content(tcfg.get("eos_token")),
        int(max_model_len or derived),
        str(root),
    )
