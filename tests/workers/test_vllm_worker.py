"""bisllm-worker without an engine: argument mapping and errors, the discovery endpoint, and the
supervisor (against a fake server process). Real-vLLM tests are in tests/e2e."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bisllm_workers.vllm_worker import main
from bisllm_workers.vllm_worker.config import (
    INFO_MIDDLEWARE,
    WorkerConfig,
    WorkerConfigError,
    child_env,
    parse_worker_args,
    resolve_endpoints,
    vllm_argv,
)
from bisllm_workers.vllm_worker.info import connect_address, worker_info


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


# -- argument mapping -------------------------------------------------------------------------


def test_defaults_map_to_prefix_caching_events_and_discovery(tmp_path: Path) -> None:
    cfg = resolve_endpoints(parse_worker_args(["--model", "/m", "--port", "8001"]), tmp_path)
    argv = vllm_argv(cfg)
    assert _flag(argv, "--model") == "/m"
    assert _flag(argv, "--port") == "8001"
    assert _flag(argv, "--host") == "127.0.0.1"
    assert "--enable-prefix-caching" in argv
    assert "--enable-prompt-tokens-details" in argv
    assert _flag(argv, "--middleware") == INFO_MIDDLEWARE
    events = json.loads(_flag(argv, "--kv-events-config") or "")
    assert events == {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"ipc://{tmp_path}/kv-events.sock",
        "replay_endpoint": f"ipc://{tmp_path}/kv-replay.sock",
        "topic": "kv",
    }
    for absent in ("--kv-transfer-config", "--speculative-config", "--block-size"):
        assert absent not in argv


def test_typed_flags_map_onto_vllm_flags(tmp_path: Path) -> None:
    spec = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}
    cfg = parse_worker_args(
        [
            "--model", "/m", "--port", "9000", "--host", "0.0.0.0", "--role", "prefill",
            "--block-size", "32", "--max-model-len", "4096", "--max-num-seqs", "8",
            "--max-num-batched-tokens", "2048", "--speculative-config", json.dumps(spec),
            "--served-model-name", "tiny", "--kv-events-endpoint", "tcp://*:5557",
            "--kv-replay-endpoint", "tcp://*:5558", "--kv-cache-space-gib", "0.5",
            "--", "--enforce-eager", "-tp", "1",
        ]
    )  # fmt: skip
    argv = vllm_argv(resolve_endpoints(cfg, tmp_path))
    assert _flag(argv, "--block-size") == "32"
    assert _flag(argv, "--max-model-len") == "4096"
    assert _flag(argv, "--max-num-seqs") == "8"
    assert _flag(argv, "--max-num-batched-tokens") == "2048"
    assert _flag(argv, "--served-model-name") == "tiny"
    assert json.loads(_flag(argv, "--speculative-config") or "") == spec
    assert json.loads(_flag(argv, "--kv-transfer-config") or "") == {
        "kv_connector": "NixlConnector",
        "kv_role": "kv_producer",
    }
    assert _flag(argv, "--kv-cache-memory-bytes") == str(2**29)
    events = json.loads(_flag(argv, "--kv-events-config") or "")
    assert events["endpoint"] == "tcp://*:5557"
    assert events["replay_endpoint"] == "tcp://*:5558"
    assert argv[-3:] == ["--enforce-eager", "-tp", "1"]


def test_decode_role_and_child_env() -> None:
    cfg = parse_worker_args(["--model", "m", "--port", "1", "--role", "decode"])
    argv = vllm_argv(resolve_endpoints(cfg, "/tmp/x"))
    assert json.loads(_flag(argv, "--kv-transfer-config") or "")["kv_role"] == "kv_consumer"
    env = child_env(cfg, {"PATH": "/bin"})
    assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "127.0.0.1"
    sized = WorkerConfig(model="m", port=1, kv_cache_space_gib=1.0)
    assert "VLLM_CPU_KVCACHE_SPACE" not in child_env(sized, {"VLLM_CPU_KVCACHE_SPACE": "4"})
    assert child_env(WorkerConfig(model="m", port=1), {"VLLM_CPU_KVCACHE_SPACE": "4"}) == {
        "VLLM_CPU_KVCACHE_SPACE": "4"
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kv-events-endpoint", "tcp://127.0.0.1:5557"], "wildcard host"),
        (["--kv-events-endpoint", "tcp://*:0"], "non-zero port"),
        (["--kv-events-endpoint", "udp://x"], "expected ipc://"),
        (["--kv-replay-endpoint", "ipc:///tmp/r"], "needs --kv-events-endpoint"),
        (["--data-parallel-size", "2"], "needs --kv-events-endpoint tcp"),
        (
            ["--data-parallel-size", "2", "--kv-events-endpoint", "ipc:///tmp/e"],
            "use a tcp:// endpoint",
        ),
        (
            ["--kv-events-endpoint", "tcp://*:5557", "--kv-replay-endpoint", "tcp://*:5557"],
            "must differ",
        ),
        (["--speculative-config", '{"num_speculative_tokens": 3}'], '"method"'),
    ],
)
def test_invalid_arguments_fail_before_start(args: list[str], message: str) -> None:
    with pytest.raises(WorkerConfigError, match=message):
        parse_worker_args(["--model", "m", "--port", "1", *args])


def test_main_reports_config_errors_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", "m", "--port", "1", "--kv-events-endpoint", "tcp://127.0.0.1:5557"]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("bisllm-worker: error: --kv-events-endpoint")


@pytest.mark.parametrize("bad", ["{bad", "[1, 2]", "3"])
def test_speculative_config_must_be_a_json_object(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_worker_args(["--model", "m", "--port", "1", "--speculative-config", bad])
    assert exc.value.code == 2
    assert "--speculative-config" in capsys.readouterr().err


# -- checks with vLLM's own parser -------------------------------------------------------------


@pytest.fixture(scope="module")
def check() -> Any:
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from bisllm_workers.vllm_worker.config import check_with_vllm

    def run(*extra: str) -> None:
        cfg = resolve_endpoints(
            WorkerConfig(model="/m", port=1, extra_args=tuple(extra)), "/tmp/bisllm-test"
        )
        check_with_vllm(cfg.extra_args, vllm_argv(cfg))

    return run


@pytest.mark.parametrize(
    ("extra", "owner"),
    [
        (["--block-size", "16"], "use --block-size"),
        (["--block_size=16"], "use --block-size"),
        (["--max_model_len", "8"], "use --max-model-len"),
        (["--speculative-config.method", "ngram"], "use --speculative-config"),
        (["--kv-events-config", "{}"], "use --kv-events-endpoint"),
        (["--kv-transfer-config", "{}"], "use --role"),
        (["--no-enable-prefix-caching"], "it is always on"),
        (["--port", "2"], "use --port"),
    ],
)
def test_extra_args_that_duplicate_a_typed_flag_conflict(
    check: Any, extra: list[str], owner: str
) -> None:
    with pytest.raises(WorkerConfigError, match=f"conflicts with a bisllm-worker setting: {owner}"):
        check(*extra)


def test_extra_args_unknown_or_rejected_by_vllm(check: Any) -> None:
    with pytest.raises(WorkerConfigError, match="unknown vLLM argument"):
        check("--frobnicate", "1")
    with pytest.raises(WorkerConfigError, match="invalid choice"):
        check("--dtype", "bogus")
    with pytest.raises(WorkerConfigError, match="positional"):
        check("some-model")
    check("--enforce-eager", "-tp", "1", "--dtype", "float32", "--seed", "3")  # accepted


# -- GET /bisllm/worker -------------------------------------------------------------------------


def _fake_vllm_config(**over: Any) -> SimpleNamespace:
    events = SimpleNamespace(
        enable_kv_cache_events=True,
        publisher="zmq",
        endpoint="tcp://*:5557",
        replay_endpoint="tcp://*:5558",
        topic="kv",
    )
    cfg = SimpleNamespace(
        model_config=SimpleNamespace(model="/m", served_model_name="tiny", max_model_len=2048),
        cache_config=SimpleNamespace(block_size=32, num_gpu_blocks=4096),
        parallel_config=SimpleNamespace(data_parallel_size=1),
        kv_events_config=events,
        kv_transfer_config=None,
    )
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def test_worker_info_document() -> None:
    assert worker_info(_fake_vllm_config(), "10.0.0.7") == {
        "model": "tiny",
        "role": "aggregated",
        "block_size": 32,
        "kv_events_endpoint": "tcp://10.0.0.7:5557",
        "kv_replay_endpoint": "tcp://10.0.0.7:5558",
        "kv_events_topic": "kv",
        "data_parallel_size": 1,
        "kv_capacity_blocks": 4096,
        "max_model_len": 2048,
        "engine": "vllm",
    }
    prefill = worker_info(
        _fake_vllm_config(kv_transfer_config=SimpleNamespace(kv_role="kv_producer")), "h"
    )
    assert prefill["role"] == "prefill"
    off = SimpleNamespace(enable_kv_cache_events=False, publisher="null", endpoint="", topic="")
    quiet = worker_info(_fake_vllm_config(kv_events_config=off), "h")
    assert quiet["kv_events_endpoint"] is None and quiet["kv_replay_endpoint"] is None


@pytest.mark.parametrize(
    ("endpoint", "host", "expected"),
    [
        ("tcp://*:5557", "10.1.2.3", "tcp://10.1.2.3:5557"),
        ("tcp://[::]:5557", "::1", "tcp://[::1]:5557"),
        ("tcp://127.0.0.1:5558", "example.com", "tcp://127.0.0.1:5558"),
        ("ipc:///tmp/x/kv.sock", "example.com", "ipc:///tmp/x/kv.sock"),
        (None, "h", None),
    ],
)
def test_connect_address(endpoint: str | None, host: str, expected: str | None) -> None:
    assert connect_address(endpoint, host) == expected


def test_middleware_serves_info_and_passes_everything_else() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from bisllm_workers.vllm_worker.info import WorkerInfoMiddleware

    app = Starlette(routes=[Route("/health", lambda request: PlainTextResponse("ok"))])
    app.add_middleware(WorkerInfoMiddleware)
    with TestClient(app, base_url="http://worker-7:8000") as client:
        assert client.get("/bisllm/worker").status_code == 503  # engine not up yet
        app.state.vllm_config = _fake_vllm_config()
        doc = client.get("/bisllm/worker").json()
        assert doc["kv_events_endpoint"] == "tcp://worker-7:5557"
        assert client.post("/bisllm/worker").status_code == 405
        assert client.get("/health").text == "ok"
        assert client.get("/bisllm/other").status_code == 404


# -- the supervisor, against a fake server ------------------------------------------------------

FAKE_SERVER = textwrap.dedent(
    """
    import http.server, json, os, signal, subprocess, sys, threading, time
    port, mode = int(sys.argv[1]), sys.argv[2]
    # A grandchild, like vLLM's engine core: it must die with the server's process group.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    open(sys.argv[3], "w").write(json.dumps({"server": os.getpid(), "child": child.pid}))
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    if mode == "never-healthy":
        time.sleep(120)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"{}" if self.path in ("/health", "/bisllm/worker") else None
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body or b"")
        def log_message(self, *a):
            pass
    srv = http.server.HTTPServer(("127.0.0.1", port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    time.sleep(1.5 if mode == "exit-3" else 120)
    os._exit(3)
    """
)

SUPERVISE = textwrap.dedent(
    """
    import sys
    from bisllm_workers.vllm_worker.supervisor import Supervisor
    fake, port, mode, pids, timeout = sys.argv[1:6]
    sup = Supervisor([sys.executable, fake, port, mode, pids],
                     url=f"http://127.0.0.1:{port}", stop_grace_s=1.5, poll_interval_s=0.1)
    sys.exit(sup.run(float(timeout), lambda s: print("READY", flush=True)))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Reaped yet? A zombie (child of a dead parent, awaiting init) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1].startswith("Z")


def _wait_gone(pids: list[int], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(_gone(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


class _Run:
    """One supervisor process (python -c SUPERVISE) around the fake server."""

    def __init__(self, tmp_path: Path, mode: str, startup_timeout: float = 20.0) -> None:
        fake = tmp_path / "fake_server.py"
        fake.write_text(FAKE_SERVER)
        self.pids_file = tmp_path / f"pids-{mode}.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SUPERVISE, str(fake), str(_free_port()), mode,
             str(self.pids_file), str(startup_timeout)],
            stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "READY"

    def pids(self) -> list[int]:
        deadline = time.monotonic() + 10
        while not self.pids_file.exists() or not self.pids_file.read_text():
            assert time.monotonic() < deadline, "fake server did not start"
            time.sleep(0.05)
        return list(json.loads(self.pids_file.read_text()).values())

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        for pid in self.pids() if self.pids_file.exists() else []:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def supervised(tmp_path: Path) -> Any:
    runs: list[_Run] = []

    def start(mode: str, startup_timeout: float = 20.0) -> _Run:
        runs.append(_Run(tmp_path, mode, startup_timeout))
        return runs[-1]

    yield start
    for r in runs:
        r.close()


def test_sigterm_is_forwarded_and_the_tree_stops(supervised: Any) -> None:
    run = supervised("normal")
    run.wait_ready()
    pids = run.pids()
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=10) == 0
    assert _wait_gone(pids)


def test_supervisor_exits_with_the_servers_status(supervised: Any) -> None:
    run = supervised("exit-3")
    run.wait_ready()
    assert run.proc.wait(timeout=10) == 3
    assert _wait_gone(run.pids())


def test_server_ignoring_sigterm_is_killed_after_the_grace_period(supervised: Any) -> None:
    run = supervised("ignore-term")
    run.wait_ready()
    pids = run.pids()
    t0 = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    assert run.proc.wait(timeout=10) == 128 + signal.SIGKILL
    assert time.monotonic() - t0 >= 1.4
    assert _wait_gone(pids)


def test_startup_timeout_stops_the_server(supervised: Any) -> None:
    run = supervised("never-healthy", startup_timeout=1.0)
    assert run.proc.wait(timeout=15) == 1
    assert _wait_gone(run.pids())


def test_server_goes_down_when_the_supervisor_is_killed(supervised: Any) -> None:
    run = supervised("normal")
    run.wait_ready()
    server, _child = run.pids()
    os.kill(run.proc.pid, signal.SIGKILL)  # only the supervisor
    run.proc.wait(timeout=10)
    assert _wait_gone([server])  # PR_SET_PDEATHSIG delivered SIGTERM


# -- make-tiny-model ----------------------------------------------------------------------------


def test_make_tiny_model_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make-tiny-model", str(tmp_path / "m"), "--seed", "1"]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["hidden_size"] == 256 and config["head_dim"] == 64
    assert (tmp_path / "m" / "tokenizer.json").exists()
