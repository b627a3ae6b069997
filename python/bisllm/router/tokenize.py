"""Tokenize to route: produce exactly the token ids the vLLM worker will see.

The router never sends these ids upstream (it forwards the client's own request so
vLLM keeps doing templates, tools and structured outputs); it needs them only to
hash prompt blocks and look them up in the prefix index. A mismatch with the
engine's tokenization would silently zero the predicted overlap, so this mirrors
vLLM's defaults (checked against vLLM's ``/tokenize`` in tests/e2e):

- chat: render the model's chat template (jinja2 sandbox with the helpers
  transformers provides), then encode WITHOUT special tokens (the template
  already holds BOS); ``add_special_tokens`` in the request overrides.
- completions: a string prompt is encoded WITH special tokens (BOS); a list of
  token ids is used as is.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
from tokenizers import Tokenizer


class TokenizeError(ValueError):
    """The request cannot be tokenized (bad message shape, template error)."""


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **kw: Any) -> str:
    # transformers' tojson keeps non-ASCII as is (jinja's default would escape it).
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, **kw)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _special_token(config: Mapping[str, Any], name: str) -> str | None:
    value = config.get(name)
    if isinstance(value, dict):  # AddedToken serialized as a dict
        value = value.get("content")
    return value if isinstance(value, str) else None


class PromptTokenizer:
    """The model's tokenizer and chat template, loaded from a local model directory."""

    def __init__(self, model_dir: str | Path) -> None:
        model_path = Path(model_dir)
        tokenizer_file = model_path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"{tokenizer_file} not found: --model must be a local model directory "
                "with a Hugging Face tokenizer.json"
            )
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        config_file = model_path / "tokenizer_config.json"
        config: dict[str, Any] = {}
        if config_file.is_file():
            config = json.loads(config_file.read_text())
        self.bos_token = _special_token(config, "bos_token")
        self.eos_token = _special_token(config, "eos_token")
        template = config.get("chat_template")
        jinja_file = model_path / "chat_template.jinja"
        if template is None and jinja_file.is_file():
            template = jinja_file.read_text()
        if isinstance(template, list):  # named templates: take "default"
            named = {t["name"]: t["template"] for t in template}
            template = named.get("default")
        self.chat_template_source: str | None = template
        self._template: jinja2.Template | None = None
        if template is not None:
            env = jinja2.sandbox.ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
            )
            env.filters["tojson"] = _tojson
            env.globals["raise_exception"] = _raise_exception
            env.globals["strftime_now"] = _strftime_now
            self._template = env.from_string(template)

    def encode_text(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def render_chat(self, body: Mapping[str, Any]) -> str:
        """Render a chat request's messages the way vLLM's chat endpoint does."""
        if self._template is None:
            raise TokenizeError("the model has no chat template; use /v1/completions")
        messages = [_normalize_message(m, i) for i, m in enumerate(body["messages"])]
        kwargs: dict[str, Any] = {}
        extra = body.get("chat_template_kwargs")
        if isinstance(extra, dict):
            kwargs.update(extra)
        add_generation_prompt = body.get("add_generation_prompt", True)
        continue_final = body.get("continue_final_message", False)
        if continue_final:
            add_generation_prompt = False
        try:
            rendered: str = self._template.render(
                messages=messages,
                tools=body.get("tools"),
                documents=body.get("documents"),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
                **kwargs,
            )
        except jinja2.exceptions.TemplateError as exc:
            raise TokenizeError(f"chat template error: {exc}") from exc
        if continue_final and messages:
            last = messages[-1].get("content")
            if isinstance(last, str) and last:
                # Cut after the final message's content, as transformers does.
                cut = rendered.rfind(last.strip())
                if cut >= 0:
                    rendered = rendered[: cut + len(last.strip())]
        return rendered

    def chat_ids(self, body: Mapping[str, Any]) -> list[int]:
        text = self.render_chat(body)
        return self.encode_text(text, bool(body.get("add_special_tokens", False)))

    def completion_ids(self, body: Mapping[str, Any]) -> array[int] | list[int]:
        """Token ids of a completion prompt; a batch of prompts routes on its first."""
        prompt = body["prompt"]
        add_special = bool(body.get("add_special_tokens", True))
        if isinstance(prompt, str):
            return self.encode_text(prompt, add_special)
        if isinstance(prompt, list) and prompt:
            first = prompt[0]
            if isinstance(first, str):
                return self.encode_text(first, add_special)
            if isinstance(first, int):
                return token_id_array(prompt)
            if isinstance(first, list):
                for other in prompt[1:]:
                    token_id_array(other)  # every prompt of the batch must be valid
                return token_id_array(first)
        raise TokenizeError("'prompt' must be a string, a list of strings or a list of token ids")


def token_id_array(ids: Any) -> array[int]:
    """Token ids as a uint32 buffer: validated in C, passed to the core without conversion."""
    if not isinstance(ids, list) or not ids:
        raise TokenizeError("a token-id prompt must be a non-empty list of integers")
    try:
        return array("I", ids)
    except (TypeError, OverflowError):
        raise TokenizeError("token ids must be integers in [0, 2**32)") from None


def _normalize_message(message: Any, index: int) -> dict[str, Any]:
    """vLLM's "string" content format: text parts joined with newlines."""
    if not isinstance(message, dict):
        raise TokenizeError(f"messages[{index}] must be an object")
    content = message.get("content")
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                texts.append(part)
        message = {**message, "content": "\n".join(texts)}
    return message
