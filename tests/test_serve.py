"""`bisllm serve`: the plan it builds, and its supervision of real child processes.

The supervision tests run `python -m bisllm.cli serve CONFIG` exactly as a user does, with the
config's `worker_command` / `mocker_command` / `router_command` pointing at a stand-in server
(tests/config/standin_server.py) that speaks the same command lines and serves /health, so
port checks, process groups, health polling, log tails and signal handling are all real.
`test_serve_full_stack_tiny_mocker` runs the real router and mocker once they are installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from bisllm.config import Config
from bisllm.serve import ServeError, build_plan, resolve_command, serve

ROOT = Path(__file__).resolve().parents[1]
STANDIN = Path(__file__).parent / "config" / "standin_server.py"
READY = "Ctrl-C stops everything."  # the last line of the ready banner


# ---- helpers ---------------------------------------------------------------------------------------


def free_port_block(count: int) -> int:
    """A base port with `count` consecutive free ports on 127.0.0.1."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(20000, 32000 - count)  # below the ephemeral range
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def alive(pid: int) -> bool:
    """A process exists and is not a zombie (containers may lack a reaping init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_dead(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


class Served:
    """A `bisllm serve` subprocess whose output is read line by line."""

    def __init__(self, config: Path, log_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bisllm.cli", "serve", str(config), "--log-dir", str(log_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=config.parent,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {timeout}s:\n{self.output}") from None
            if line is None:
                raise AssertionError(f"exited before {text!r}:\n{self.output}")
            self.output += line

    def finish(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout=timeout)
        while (line := self.lines.get(timeout=5)) is not None:
            self.output += line
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def served() -> Iterator[list[Served]]:
    """Collects every serve subprocess a test starts and kills what is left at the end."""
    started: list[Served] = []
    yield started
    for s in started:
        s.kill()


def make_config(
    tmp_path: Path,
    *,
    engine: str = "vllm",
    replicas: int = 2,
    worker_extra: tuple[str, ...] = (),
    router_extra: tuple[str, ...] = (),
    grace: float = 3,
    timeout: float = 20,
    extra: dict[str, Any] | None = None,
) -> tuple[Path, int, int]:
    """A config serving a tiny LOCAL model dir through stand-ins; returns (path, base, router)."""
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    records = tmp_path / "records"
    records.mkdir(exist_ok=True)
    base = free_port_block(replicas + 1)
    router_port = base + replicas
    standin = [sys.executable, str(STANDIN), "--standin-record", str(records)]
    raw: dict[str, Any] = {
        "model_name": "m",
        "trt_llm": {
            "inference_stack": "v2",
            "build": {"checkpoint_repository": {"source": "LOCAL", "repo": "model"}},
            "runtime": {"max_seq_len": 1024, "patch_kwargs": {"enforce_eager": True}},
        },
        "autoscaling_settings": {"min_replica": replicas, "max_replica": replicas},
        "bisllm": {
            "engine_backend": engine,
            "port": router_port,
            "worker_base_port": base,
            "startup_timeout_s": timeout,
            "shutdown_grace_s": grace,
            "worker_command": [*standin, *worker_extra],
            "mocker_command": [*standin, *worker_extra],
            "router_command": [*standin, *router_extra],
        },
    }
    for key, value in (extra or {}).items():
        raw.setdefault(key, {}).update(value)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, base, router_port


def records(tmp_path: Path) -> dict[int, dict[str, Any]]:
    return {int(p.stem): json.loads(p.read_text()) for p in (tmp_path / "records").glob("*.json")}


def start(tmp_path: Path, served: list[Served], **kwargs: Any) -> tuple[Served, int, int]:
    config, base, router_port = make_config(tmp_path, **kwargs)
    s = Served(config, tmp_path / "logs")
    served.append(s)
    return s, base, router_port


# ---- the plan (pure) ------------------------------------------------------------------------------------


def config(**raw: Any) -> Config:
    return msgspec.convert(raw, Config)


def test_plan_for_vllm_workers_then_router() -> None:
    cfg = config(
        model_name="m",
        autoscaling_settings={"min_replica": 2, "max_replica": 2},
        llm_config={"b10_routing_config": {"router_overlap_score_weight": 2.0}},
    )
    plan = build_plan(cfg, model_path="/m", env={})
    workers, (router,) = plan.stages
    assert [w.name for w in workers] == ["worker-0", "worker-1"]
    assert workers[1].argv[:1] == ("bisllm-worker",)
    assert workers[1].argv[workers[1].argv.index("--port") + 1] == "8102"
    assert workers[1].health_urls == ("http://127.0.0.1:8102/health",)
    assert router.argv == (
        "bisllm-router",
        "--workers", "http://127.0.0.1:8101,http://127.0.0.1:8102",
        "--model", "/m",
        "--host", "127.0.0.1",
        "--port", "8000",
        "--policy", "kv_aware",
        "--overlap-weight", "2.0",
        "--temperature", "0.0",
        "--served-model-name", "m",
    )  # fmt: skip
    assert plan.router_url == "http://127.0.0.1:8000"


def test_plan_for_disaggregated_workers_gives_distinct_nixl_ports() -> None:
    cfg = config(
        trt_llm={"runtime": {"tensor_parallel_size": 2}},
        resources={"accelerator": "H100:2"},
        llm_config={
            "is_disaggregated": True,
            "b10_disagg_config": {
                "prefill_workers_per_replica": 1,
                "decode_workers_per_replica": 2,
            },
        },
        bisllm={"nixl_side_channel_base_port": 7000},
    )
    (workers, _) = build_plan(cfg, model_path="/m", env={}).stages
    assert [w.name for w in workers] == ["prefill-0", "decode-1", "decode-2"]
    assert [w.argv[w.argv.index("--role") + 1] for w in workers] == ["prefill", "decode", "decode"]
    assert [w.env["VLLM_NIXL_SIDE_CHANNEL_PORT"] for w in workers] == ["7000", "7002", "7004"]
    assert workers[1].ports == (("127.0.0.1", 8102), ("127.0.0.1", 7002), ("127.0.0.1", 7003))


def test_plan_for_the_mocker() -> None:
    cfg = config(
        autoscaling_settings={"min_replica": 3, "max_replica": 3},
        bisllm={
            "engine_backend": "mocker",
            "block_size": 16,
            "mocker": {"profile": "h100", "speedup": 10},
        },
    )
    (mocker,), (router,) = build_plan(cfg, model_path="/m", env={}).stages
    assert mocker.argv == (
        "bisllm-mocker", "--workers", "3", "--base-port", "8101", "--model", "/m",
        "--served-model-name", "bisllm-model", "--speedup", "10.0",
        "--max-num-seqs", "256", "--max-num-batched-tokens", "8192",
        "--profile", "h100", "--block-size", "16",
    )  # fmt: skip
    assert len(mocker.health_urls) == 3
    assert router.argv[router.argv.index("--workers") + 1].count(",") == 2


def test_api_keys_reach_the_router_by_environment_not_argv() -> None:
    cfg = config(bisllm={"api_key_env": "MY_KEY", "admin_key_env": "MY_ADMIN"})
    plan = build_plan(cfg, model_path="/m", env={"MY_KEY": "s3cret", "MY_ADMIN": "adm"})
    router = plan.stages[-1][0]
    assert router.env == {"BISLLM_API_KEY": "s3cret", "BISLLM_ADMIN_KEY": "adm"}
    assert "s3cret" not in router.argv and "adm" not in router.argv
    with pytest.raises(ServeError, match=r"bisllm\.api_key_env names MY_KEY, which is not set"):
        build_plan(cfg, model_path="/m", env={})


def test_resolve_command() -> None:
    assert resolve_command([sys.executable, "-V"]) == [sys.executable, "-V"]
    assert resolve_command(["sh", "-c", "true"])[0].endswith("/sh")
    with pytest.raises(ServeError, match="not found"):
        resolve_command(["no-such-command-bisllm-test"])


def test_dry_run_prints_the_commands(tmp_path: Path) -> None:
    path, base, router_port = make_config(tmp_path)
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert serve(path, dry_run=True, out=out) == 0
    finally:
        os.chdir(cwd)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["worker-0", "worker-1", "router"]
    assert f"--port {base + 1}" in lines[1] and f"--port {router_port}" in lines[2]


def test_serve_reports_config_and_checkpoint_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("trt_llm:\n  build:\n    base_model: decoder\n")
    out = io.StringIO()
    assert serve(bad, out=out) == 1
    assert "Field trt_llm.build.base_model is not allowed" in out.getvalue()
    missing = tmp_path / "missing.yaml"
    missing.write_text(
        "trt_llm:\n  build:\n    checkpoint_repository: {source: LOCAL, repo: /nonexistent/x}\n"
    )
    out = io.StringIO()
    assert serve(missing, out=out) == 1
    assert "LOCAL checkpoint /nonexistent/x is not a directory" in out.getvalue()


# ---- supervision of real processes ------------------------------------------------------------------------


def test_serve_starts_workers_then_router_and_stops_on_sigterm(
    tmp_path: Path, served: list[Served]
) -> None:
    s, base, router_port = start(tmp_path, served)
    s.wait_for(READY)
    recs = records(tmp_path)
    assert sorted(recs) == [base, base + 1, router_port]
    worker = recs[base + 1]["argv"]
    assert worker[worker.index("--port") + 1] == str(base + 1)
    assert worker[worker.index("--model") + 1] == str((tmp_path / "model").resolve())
    assert worker[worker.index("--") :] == [
        "--", "--tensor-parallel-size", "1", "--enable-chunked-prefill", "--enforce-eager",
    ]  # fmt: skip
    router = recs[router_port]["argv"]
    assert router[router.index("--workers") + 1] == (
        f"http://127.0.0.1:{base},http://127.0.0.1:{base + 1}"
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{router_port}/health", timeout=5) as resp:
        assert resp.status == 200
    assert f"OpenAI API  http://127.0.0.1:{router_port}/v1" in s.output
    assert f"curl http://127.0.0.1:{router_port}/v1/chat/completions" in s.output
    assert "from openai import OpenAI" in s.output
    assert (tmp_path / "logs" / "worker-0.log").is_file()

    s.proc.send_signal(signal.SIGTERM)
    assert s.finish() == 0
    assert "received SIGTERM, shutting down" in s.output
    for rec in recs.values():
        assert wait_dead(rec["pid"]), rec


def test_ctrl_c_stops_everything(tmp_path: Path, served: list[Served]) -> None:
    s, _, _ = start(tmp_path, served, replicas=1)
    s.wait_for(READY)
    s.proc.send_signal(signal.SIGINT)
    assert s.finish() == 0
    assert "received SIGINT" in s.output
    assert all(wait_dead(r["pid"]) for r in records(tmp_path).values())


def test_a_child_dying_stops_the_rest_and_names_it(tmp_path: Path, served: list[Served]) -> None:
    s, base, _ = start(tmp_path, served, router_extra=("--standin-exit-after", "0.5"))
    s.wait_for(READY)
    assert s.finish() == 1
    assert "router exited with code 3" in s.output
    assert "standin: exiting on purpose" in s.output  # the tail of its log
    for port in (base, base + 1):
        assert wait_dead(records(tmp_path)[port]["pid"])


def test_start_up_failure_names_the_process_and_its_log(
    tmp_path: Path, served: list[Served]
) -> None:
    s, _, _ = start(tmp_path, served, worker_extra=("--standin-fail-at-start",))
    assert s.finish() == 1
    assert "exited with code 2; last lines of" in s.output
    assert "standin: failing on purpose: model not found" in s.output
    assert "router" not in records(tmp_path)  # never started: no records at all
    assert records(tmp_path) == {}


def test_start_up_timeout(tmp_path: Path, served: list[Served]) -> None:
    s, _, _ = start(
        tmp_path, served, replicas=1, worker_extra=("--standin-never-healthy",), timeout=1.5
    )
    assert s.finish() == 1
    assert "worker-0 was not healthy after 1.5s" in s.output
    assert all(wait_dead(r["pid"]) for r in records(tmp_path).values())


def test_busy_port_fails_before_anything_starts(tmp_path: Path, served: list[Served]) -> None:
    config, base, _ = make_config(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", base + 1))
        sock.listen()
        s = Served(config, tmp_path / "logs")
        served.append(s)
        assert s.finish() == 1
    assert f"port(s) already in use: 127.0.0.1:{base + 1} (worker-1)" in s.output
    assert records(tmp_path) == {}


def test_missing_command_fails_before_anything_starts(tmp_path: Path, served: list[Served]) -> None:
    config, _, _ = make_config(
        tmp_path, extra={"bisllm": {"router_command": ["no-such-router-xyz"]}}
    )
    s = Served(config, tmp_path / "logs")
    served.append(s)
    assert s.finish() == 1
    assert "no-such-router-xyz not found" in s.output
    assert records(tmp_path) == {}


def test_a_child_ignoring_sigterm_is_killed_after_the_grace(
    tmp_path: Path, served: list[Served]
) -> None:
    s, _, router_port = start(
        tmp_path, served, replicas=1, router_extra=("--standin-ignore-sigterm",), grace=1
    )
    s.wait_for(READY)
    s.proc.send_signal(signal.SIGTERM)
    assert s.finish() == 0
    assert "router did not stop in 1s, killing it" in s.output
    assert wait_dead(records(tmp_path)[router_port]["pid"])


def test_grandchildren_in_the_process_group_are_stopped(
    tmp_path: Path, served: list[Served]
) -> None:
    s, base, _ = start(tmp_path, served, replicas=1, worker_extra=("--standin-grandchild",))
    s.wait_for(READY)
    grandchild = records(tmp_path)[base]["grandchild"]
    assert alive(grandchild)
    s.proc.send_signal(signal.SIGTERM)
    assert s.finish() == 0
    assert wait_dead(grandchild)


def test_mocker_fleet_through_the_same_path(tmp_path: Path, served: list[Served]) -> None:
    s, base, router_port = start(tmp_path, served, engine="mocker", replicas=3)
    s.wait_for(READY)
    recs = records(tmp_path)
    assert sorted(recs) == [base, router_port]  # one mocker process for three workers
    mocker = recs[base]["argv"]
    assert mocker[mocker.index("--workers") + 1] == "3"
    assert mocker[mocker.index("--base-port") + 1] == str(base)
    s.proc.send_signal(signal.SIGTERM)
    assert s.finish() == 0


# ---- the real stack ---------------------------------------------------------------------------------------


def _full_stack_missing() -> str | None:
    try:
        import bisllm._core as core
    except ImportError:
        return "bisllm._core is not built (make build)"
    if not hasattr(core, "Core"):
        return "bisllm._core is not the real extension"
    for module in ("bisllm.router.cli", "bisllm_workers.mocker.cli"):
        with contextlib.suppress(ModuleNotFoundError):
            if importlib.util.find_spec(module) is not None:
                continue
        return f"{module} is not available yet"
    if not (ROOT / ".cache" / "tiny-llama" / "tokenizer.json").is_file():
        return "the tiny model is not built (make .cache/tiny-llama/config.json)"
    return None


@pytest.mark.skipif(_full_stack_missing() is not None, reason=str(_full_stack_missing()))
def test_serve_full_stack_tiny_mocker(tmp_path: Path, served: list[Served]) -> None:
    """`bisllm serve` with the real bisllm-router and bisllm-mocker: a chat completion end to end."""
    base = free_port_block(3)
    raw = yaml.safe_load((ROOT / "examples" / "tiny-mocker.yaml").read_text())
    raw["trt_llm"]["build"]["checkpoint_repository"]["repo"] = str(ROOT / ".cache" / "tiny-llama")
    raw["autoscaling_settings"] = {"min_replica": 2, "max_replica": 2}
    raw["bisllm"].update(port=base + 2, worker_base_port=base, startup_timeout_s=120)
    raw["bisllm"]["mocker"] = {"speedup": 50.0}
    path = tmp_path / "tiny-mocker.yaml"
    path.write_text(yaml.safe_dump(raw))
    s = Served(path, tmp_path / "logs")
    served.append(s)
    s.wait_for(READY, timeout=150)
    body = json.dumps(
        {
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": "Hello!"}],
            "max_tokens": 8,
        }
    ).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{base + 2}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        reply = json.loads(resp.read())
    assert reply["choices"][0]["message"]["content"] is not None
    s.proc.send_signal(signal.SIGTERM)
    assert s.finish(timeout=60) == 0
