"""Fixtures for router tests: mocker worker processes and a router process, all on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from process_harness import REPO, Proc, start_mocker, start_router


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny test model (tokenizer + chat template), built once per session."""
    from bisllm_workers.tiny_model import make_tiny_model

    cached = REPO / ".cache" / "tiny-llama"
    if (cached / "tokenizer.json").is_file() and (cached / "config.json").is_file():
        return cached
    return Path(make_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def mockers(tiny_model, log_dir) -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        for i in range(3):
            procs.append(start_mocker(tiny_model, log_dir, f"mocker{i}"))
        yield procs
    finally:
        for p in procs:
            p.stop()


@pytest.fixture(scope="module")
def router(tiny_model, log_dir, mockers) -> Iterator[Proc]:
    proc = start_router(
        tiny_model, log_dir, [m.url for m in mockers], "--admin-key", "secret-admin"
    )
    try:
        yield proc
    finally:
        proc.stop()
