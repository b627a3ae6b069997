"""bisllm: a KV-aware, token-load-aware OpenAI router for vLLM fleets, with a Rust core."""

from bisllm._core import __version__

__all__ = ["__version__"]
