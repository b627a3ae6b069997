"""The OpenAI-compatible KV-aware router: app (FastAPI), registry, events, tokenize, metrics."""
