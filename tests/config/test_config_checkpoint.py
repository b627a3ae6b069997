"""checkpoint_repository -> a directory: LOCAL paths, the HF cache, HF offline failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bisllm.config import CheckpointError, CheckpointRepository, resolve_checkpoint


def model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_local_relative_to_cwd(tmp_path: Path) -> None:
    model = model_dir(tmp_path / "models" / "tiny")
    repo = CheckpointRepository(source="LOCAL", repo="models/tiny")
    assert resolve_checkpoint(repo, cwd=tmp_path) == model.resolve()


def test_local_absolute(tmp_path: Path) -> None:
    model = model_dir(tmp_path / "m")
    assert resolve_checkpoint(CheckpointRepository(source="LOCAL", repo=str(model))) == model


def test_local_missing_directory(tmp_path: Path) -> None:
    repo = CheckpointRepository(source="LOCAL", repo=".cache/tiny-llama")
    with pytest.raises(CheckpointError, match="make-tiny-model"):
        resolve_checkpoint(repo, cwd=tmp_path)


def test_local_without_config_json(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        resolve_checkpoint(CheckpointRepository(source="LOCAL", repo="m"), cwd=tmp_path)


@pytest.mark.parametrize("source", ["S3", "GCS", "AZURE", "REMOTE_URL", "BASETEN_TRAINING"])
def test_remote_stores_ask_for_a_local_copy(source: str) -> None:
    with pytest.raises(CheckpointError, match="source: LOCAL"):
        resolve_checkpoint(CheckpointRepository(source=source, repo="s3://b/p"))  # type: ignore[arg-type]


def _resolve_in_subprocess(tmp_path: Path, repo: str, revision: str | None, **env: str) -> dict:
    """Run the HF resolver in a fresh interpreter: huggingface_hub reads HF_HOME at import."""
    code = textwrap.dedent(
        f"""
        import json
        from bisllm.config import CheckpointError, CheckpointRepository, resolve_checkpoint
        try:
            path = resolve_checkpoint(CheckpointRepository(source="HF", repo={repo!r}, revision={revision!r}))
            print(json.dumps({{"path": str(path)}}))
        except CheckpointError as exc:
            print(json.dumps({{"error": str(exc)}}))
        """
    )
    full_env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), **env}
    full_env.pop("HF_TOKEN", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_hf_offline_fails_with_a_clear_message(tmp_path: Path) -> None:
    result = _resolve_in_subprocess(tmp_path, "Qwen/Qwen3-4B", "main", HF_HUB_OFFLINE="1")
    error = result["error"]
    assert "cannot download Qwen/Qwen3-4B@main" in error
    assert "HF_HUB_OFFLINE is set" in error
    assert "hf download Qwen/Qwen3-4B --revision main" in error
    assert "source: LOCAL" in error


def test_hf_unreachable_or_missing_repo_fails_with_a_clear_message(tmp_path: Path) -> None:
    # No network here: a connection error. With a network: the repo does not exist. Either way
    # the user gets the same advice, not a traceback.
    result = _resolve_in_subprocess(
        tmp_path,
        "bisllm-tests/no-such-model-7f3a",
        None,
        HF_HUB_OFFLINE="0",
        HF_HUB_ETAG_TIMEOUT="5",
    )
    assert "cannot download bisllm-tests/no-such-model-7f3a" in result["error"]


def test_hf_cache_serves_offline(tmp_path: Path) -> None:
    # huggingface_hub's cache layout: models--ORG--NAME/{refs/main, snapshots/<commit>/...}
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_cache = tmp_path / "hf" / "hub" / "models--org--tiny"
    snapshot = repo_cache / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)
    result = _resolve_in_subprocess(tmp_path, "org/tiny", None, HF_HUB_OFFLINE="1")
    assert result == {"path": str(snapshot)}
