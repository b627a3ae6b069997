"""`bisllm config check / migrate / schema`: output and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bisllm.cli import main

ROOT = Path(__file__).resolve().parents[2]
V1_EXAMPLE = ROOT / "examples" / "v1" / "qwen3-4b-engine-builder.yaml"
VALID = "model_name: m\ntrt_llm:\n  build:\n    checkpoint_repository: {source: HF, repo: a/b}\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_check_valid_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "ok.yaml", VALID)
    assert main(["config", "check", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok\n"


def test_check_prints_every_error_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(V1_EXAMPLE)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{V1_EXAMPLE}: 12 errors\n")
    for field in (
        "base_model",
        "max_seq_len",
        "max_batch_size",
        "max_num_tokens",
        "tensor_parallel_count",
        "plugin_configuration",
        "speculator",
    ):
        line = f"- Field trt_llm.build.{field} is not allowed to be set when using v2 inference stack\n"
        assert line in out
    assert out.count("\n- ") == 12
    assert "  fix: " in out


def test_check_several_files_fails_if_any_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok = write(tmp_path, "ok.yaml", VALID)
    bad = write(tmp_path, "bad.yaml", VALID + "bogus: 1\n")
    assert main(["config", "check", str(ok), str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{ok}: ok" in out and f"{bad}: 1 error\n- bogus: unknown field" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [(None, "cannot read"), ("a: [1\n", "not valid YAML"), ("- 1\n", "expected a mapping")],
)
def test_check_unreadable_files_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, message: str
) -> None:
    path = tmp_path / "x.yaml"
    if text is not None:
        path.write_text(text)
    assert main(["config", "check", str(path)]) == 1
    assert message in capsys.readouterr().out


def test_migrate_to_stdout_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "migrate", str(V1_EXAMPLE), "--tokens-per-request", "5000"]) == 0
    captured = capsys.readouterr()
    assert "inference_stack: v2" in captured.out
    assert "note: moved trt_llm.build.max_seq_len" in captured.err
    out = write(tmp_path, "v2.yaml", captured.out)
    assert main(["config", "check", str(out)]) == 0


def test_migrate_to_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "v2.yaml"
    assert main(["config", "migrate", str(V1_EXAMPLE), "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    assert main(["config", "check", str(out)]) == 0


def test_migrate_already_v2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path, "v2.yaml", VALID.replace("trt_llm:\n", "trt_llm:\n  inference_stack: v2\n")
    )
    assert main(["config", "migrate", str(path)]) == 0
    captured = capsys.readouterr()
    assert "already a v2 config" in captured.err
    assert yaml.safe_load(captured.out) == yaml.safe_load(path.read_text())


def test_migrate_exits_1_when_hand_edits_remain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path, "v1.yaml", VALID.replace("a/b}", "a/b}\n    quantization_type: smooth_quant")
    )
    assert main(["config", "migrate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "still has 1 error(s)" in err and "trt_llm.build.quantization_type" in err


def test_schema_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "TrtLlmConfig" in schema["$defs"]


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["config", "frobnicate"])
    assert info.value.code == 2


def test_cli_is_a_module_entry_point_and_imports_lazily() -> None:
    code = (
        "import sys, bisllm.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('bisllm.router', 'bisllm.config', 'msgspec'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    done = subprocess.run(
        [sys.executable, "-m", "bisllm.cli", "config", "check", str(V1_EXAMPLE)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "12 errors" in done.stdout


def test_router_main_delegates_to_the_router_cli() -> None:
    from bisllm import cli

    assert callable(cli.router_main)
