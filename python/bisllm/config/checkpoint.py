"""checkpoint_repository -> a model directory on this machine.

LOCAL is a directory (relative paths against the current working directory, as vLLM's
`--model` reads them). HF goes through huggingface_hub: the local cache first, so a model
downloaded once serves offline, then a download that fails with the reason and the fix when
there is no network. BIS-LLM's remote stores (S3, GCS, AZURE, REMOTE_URL, BASETEN_TRAINING)
are valid config but need the checkpoint fetched first: the error says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from bisllm.config.schema import CheckpointRepository

__all__ = ["HF_ALLOW_PATTERNS", "HF_IGNORE_PATTERNS", "CheckpointError", "resolve_checkpoint"]


class CheckpointError(RuntimeError):
    """The checkpoint can't be made available here; the message says why and what to do."""


# What vLLM loads: configs, tokenizer files, safetensors weights. Not *.bin/*.pth duplicates,
# nor the `original/` copies some repos (gpt-oss, Llama) carry beside the HF weights.
HF_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja", "*.py"]
HF_IGNORE_PATTERNS = ["original/*"]


def resolve_checkpoint(
    repo: CheckpointRepository,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Path:
    """A local directory holding the checkpoint, downloading from the HF Hub if needed."""
    if repo.source == "LOCAL":
        return _resolve_local(repo.repo, cwd or Path.cwd())
    if repo.source == "HF":
        return _resolve_hf(repo, os.environ if env is None else env)
    raise CheckpointError(
        f"checkpoint source {repo.source} ({repo.repo}) is not fetched by `bisllm serve`: copy "
        "the checkpoint to this machine and use `source: LOCAL` with `repo: <directory>` "
        "(or `source: HF` for a Hugging Face repo)"
    )


def _resolve_local(repo: str, cwd: Path) -> Path:
    path = Path(repo).expanduser()
    if not path.is_absolute():
        path = cwd / path
    if not path.is_dir():
        raise CheckpointError(
            f"LOCAL checkpoint {repo} is not a directory (looked at {path}); build the tiny test "
            "model with `bisllm-worker make-tiny-model .cache/tiny-llama` or point "
            "checkpoint_repository.repo at a model directory"
        )
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"LOCAL checkpoint {path} has no config.json; point checkpoint_repository.repo at a "
            "Hugging Face-format model directory (config.json, tokenizer, *.safetensors)"
        )
    return path.resolve()


def _resolve_hf(repo: CheckpointRepository, env: Mapping[str, str]) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a dependency
        raise CheckpointError(
            "source HF needs huggingface_hub: pip install huggingface_hub"
        ) from exc
    # The Baseten secret name (hf_access_token) as an environment variable; None lets
    # huggingface_hub use HF_TOKEN or its stored login.
    token = env.get(repo.runtime_secret_name.upper()) or env.get(repo.runtime_secret_name) or None
    label = f"{repo.repo}@{repo.revision}" if repo.revision else repo.repo

    def download(local_files_only: bool) -> Path:
        return Path(
            snapshot_download(
                repo.repo,
                revision=repo.revision,
                token=token,
                allow_patterns=HF_ALLOW_PATTERNS,
                ignore_patterns=HF_IGNORE_PATTERNS,
                local_files_only=local_files_only,
            )
        )

    try:
        return download(local_files_only=True)
    except LocalEntryNotFoundError:
        pass  # not cached yet: download
    try:
        return download(local_files_only=False)
    except Exception as exc:
        offline = env.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else f"{type(exc).__name__}: {exc}"
        raise CheckpointError(
            f"cannot download {label} from the Hugging Face Hub and it is not in the local cache "
            f"({why}). Where a network exists run `hf download {repo.repo}"
            + (f" --revision {repo.revision}" if repo.revision else "")
            + "` and copy the cache (HF_HOME) here, or download the files and use "
            "`source: LOCAL` with `repo: <directory>`. Private or gated repos need a token in "
            f"{repo.runtime_secret_name.upper()} or HF_TOKEN."
        ) from exc
