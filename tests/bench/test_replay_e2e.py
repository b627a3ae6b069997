"""One tiny end-to-end replay: CLI -> mocker fleet -> router -> JSON/markdown/PNG report.

Kept small (20 requests, 2 workers, speedup 20, two policies) so it runs in seconds on
a 2-core machine; the real measurements live in bench/results/ (see its README).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.timeout(180)
def test_tiny_compare_writes_report(tmp_path: Path, tiny_model_path: Path) -> None:
    if not (BIN / "bisllm-router").exists() or not (BIN / "bisllm-mocker").exists():
        pytest.skip("bisllm-router / bisllm-mocker not installed (make build)")
    out = tmp_path / "report"
    cmd = [
        sys.executable,
        "-m",
        "bench.replay",
        "compare",
        "--synthetic",
        "shared_prefix",
        "--synthetic-requests",
        "20",
        "--rate",
        "20",
        "--workers",
        "2",
        "--speedup",
        "20",
        "--model",
        str(tiny_model_path),
        "--policies",
        "kv_aware",
        "round_robin",
        "--drain-timeout",
        "30",
        "--max-wall",
        "60",
        "--no-progress",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    runs = {r["label"]: r for r in report["runs"]}
    assert set(runs) == {"kv_aware(w=1,t=0)", "round_robin"}
    for run in runs.values():
        assert run["requests"] == 20 and run["ok"] == 20 and run["errors"] == 0
        assert run["ttft"]["p50"] > 0 and run["ttft"]["p99"] >= run["ttft"]["p50"]
        assert 0.0 <= run["hit_rate"] <= 1.0
        assert run["best_prefix_hit_rate"] is not None
        assert sum(w["requests"] for w in run["workers"].values()) == 20
        assert run["gpu_busy_mean"] > 0 and run["engine_lag_s"] is not None
    # Round robin splits requests evenly over the two workers.
    assert runs["round_robin"]["imbalance_requests"] == pytest.approx(1.0)
    # Shared system prompts: kv_aware must reuse them (first use of each prefix misses).
    assert runs["kv_aware(w=1,t=0)"]["hit_rate"] > 0.3
    load = json.loads((out / "load.json").read_text())
    assert set(load) == set(runs)
    assert all(len(v["in_flight_tokens"]) == 2 for v in load.values())
    md = (out / "report.md").read_text()
    assert "| kv_aware(w=1,t=0) |" in md and "| round_robin |" in md
    for png in ("ttft_cdf.png", "hit_rate.png", "load_over_time.png"):
        assert (out / png).stat().st_size > 1000


def test_fleet_kills_whole_process_group(tmp_path: Path) -> None:
    """A stopped server takes its children with it (process group), and kill_all
    reaches every group still running (what Ctrl-C / SIGTERM / exit run)."""
    from bench.replay import fleet

    script = "sleep 60 & echo $! > child.pid; sleep 60"
    procs = []
    for i in range(2):
        d = tmp_path / str(i)
        d.mkdir()
        procs.append(fleet.spawn("sh", ["sh", "-c", f"cd {d}; {script}"], d / "log"))
    pid_files = [tmp_path / str(i) / "child.pid" for i in range(2)]
    deadline = time.monotonic() + 10
    while not all(f.exists() and f.read_text().strip() for f in pid_files):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    children = [int(f.read_text()) for f in pid_files]
    procs[0].stop()
    assert not procs[0].alive() and _gone(children[0])
    assert procs[1].alive() and _alive(children[1])
    fleet.kill_all()
    assert not procs[1].alive() and _gone(children[1])


def _gone(pid: int, timeout: float = 5.0) -> bool:
    """Signals land asynchronously: give a killed process a moment to die."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (reaped later by init) counts as gone.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False
