"""Process harness for router tests: mocker workers and routers as real processes on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200 (bounded); fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s ({last})")


@dataclass
class Proc:
    popen: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def spawn(args: list[str], log: Path, url: str, ready_path: str, timeout: float = 30.0) -> Proc:
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO
        )
    proc = Proc(popen, url, log)
    try:
        wait_http(url + ready_path, timeout, popen)
    except Exception:
        proc.stop()
        raise RuntimeError(f"{args[0]} failed to start; log:\n{log.read_text()[-3000:]}") from None
    return proc


def start_mocker(
    tiny_model: Path, log_dir: Path, name: str, *extra: str, port: int | None = None
) -> Proc:
    port = port or free_port()
    args = [
        str(BIN / "bisllm-mocker"),
        "--workers",
        "1",
        "--base-port",
        str(port),
        "--model",
        str(tiny_model),
        "--served-model-name",
        "tiny",
        "--block-size",
        "16",
        "--speedup",
        "10",
        *extra,
    ]
    return spawn(args, log_dir / f"{name}.log", f"http://127.0.0.1:{port}", "/health")


def start_router(
    tiny_model: Path,
    log_dir: Path,
    workers: list[str],
    *extra: str,
    name: str = "router",
    timeout: float = 30.0,
) -> Proc:
    port = free_port()
    args = [
        str(BIN / "bisllm-router"),
        "--model",
        str(tiny_model),
        "--port",
        str(port),
        "--workers",
        ",".join(workers),
        "--health-interval",
        "0.5",
        "--log-level",
        "warning",
        *extra,
    ]
    return spawn(args, log_dir / f"{name}.log", f"http://127.0.0.1:{port}", "/health", timeout)
