"""`bisllm-mocker` as a process: startup lines, ipc endpoints, clean SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import zmq


def test_cli_serves_workers_on_ipc_events_and_stops_on_sigterm(tmp_path: Path) -> None:
    ipc = tmp_path / "ev"
    cmd = [
        sys.executable, "-m", "bisllm_workers.mocker.cli",
        "--workers", "2", "--base-port", "0", "--events-ipc-dir", str(ipc),
        "--served-model-name", "m", "--speedup", "100", "--num-blocks", "512",
        "--max-model-len", "2048", "--json",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[2].startswith("ready: 2 workers"), lines
        infos = [json.loads(ln) for ln in lines[:2]]
        assert infos[0]["kv_events_endpoint"] == f"ipc://{ipc}/worker-0.pub"
        assert infos[1]["kv_replay_endpoint"] == f"ipc://{ipc}/worker-1.replay"
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(infos[1]["kv_events_endpoint"])
        time.sleep(0.3)
        req = urllib.request.Request(
            infos[1]["url"] + "/v1/completions",
            data=json.dumps({"prompt": list(range(10, 60)), "max_tokens": 2}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.loads(r.read())["usage"]["prompt_tokens"] == 50
        assert sub.poll(5000)
        topic, seq, _payload = sub.recv_multipart()
        assert (topic, seq) == (b"kv", bytes(8))
        sub.close(linger=0)
        ctx.term()
        with urllib.request.urlopen(infos[0]["url"] + "/bisllm/worker", timeout=10) as r:
            assert json.loads(r.read())["model"] == "m"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out.strip().endswith("stopped")
