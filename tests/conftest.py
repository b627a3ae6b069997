"""Session-wide fixtures: real vLLM workers (`bisllm-worker` on the tiny model), started once.

Starting a vLLM engine costs 20-80 s on a small CPU machine, so the two workers every `vllm`-marked
test shares are started once per session, in parallel, and stopped at the end. A test may kill
one (that is what failure tests do): `vllm_workers` restarts any dead worker before the next test
that asks for it, so tests stay independent without paying a start-up each.

Fixtures:
- `tiny_model_path` (session): the tiny random-weight Llama (`.cache/tiny-llama`, built with
  `bisllm_workers.tiny_model` if missing).
- `vllm_fleet` (session): the `VllmFleet` owning the workers; skips when vLLM is not installed.
- `vllm_workers` (function): `[plain, speculative]`, two running `VllmWorker`s. Both serve the
  tiny model as `tiny-llama` with block size 32; the second adds ngram speculative decoding
  (greedy output is the same; vLLM's spec-decode counters appear on its /metrics).

Never more than two engines run at once (the machine has 2 cores); everything binds 127.0.0.1
or ipc://; every process started here is stopped, whole tree, at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL_DIR = REPO / ".cache" / "tiny-llama"
SERVED_MODEL_NAME = "tiny-llama"
BLOCK_SIZE = 32
SPECULATIVE_CONFIG = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}
STARTUP_TIMEOUT_S = 300.0

#: bisllm-worker flags shared by the session workers. float32 (the tiny model's own dtype) rather
#: than vLLM's CPU default bfloat16: a random-weight model has near-tied logits, and speculative
#: verification (k+1 positions per step) must not flip a greedy argmax through rounding.
COMMON_ARGS: tuple[str, ...] = (
    "--served-model-name", SERVED_MODEL_NAME,
    "--block-size", str(BLOCK_SIZE),
    "--max-model-len", "2048",
    "--max-num-seqs", "16",
    "--kv-cache-space-gib", "0.25",
    "--startup-timeout", str(STARTUP_TIMEOUT_S),
    "--stop-grace", "20",
)  # fmt: skip
EXTRA_VLLM_ARGS: tuple[str, ...] = ("--enforce-eager", "--dtype", "float32")


def free_port() -> int:
    """A currently free loopback TCP port (the OS picks; racy only against other binders)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(method: str, url: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
    """One JSON request with the stdlib (no event loop needed in fixtures); (status, json)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    return status, json.loads(raw) if raw else None


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@dataclass
class VllmWorker:
    """One running `bisllm-worker` (a supervisor process with vLLM's server as its child)."""

    name: str
    port: int
    url: str
    #: The worker's `GET /bisllm/worker` document.
    info: dict[str, Any]
    #: The bisllm-worker process (its vLLM child runs in a process group of its own).
    proc: subprocess.Popen[bytes]
    model_path: Path
    log_path: Path
    #: Seconds from spawning bisllm-worker to `/bisllm/worker` answering.
    startup_s: float
    speculative_config: dict[str, Any] | None = None
    #: Every process of the tree (supervisor, api_server, engine core, model workers), as seen
    #: at start-up; used to stop the whole tree even if the supervisor is gone.
    pids: list[int] = field(default_factory=list)

    @property
    def model(self) -> str:
        return str(self.info["model"])

    def alive(self) -> bool:
        return self.proc.poll() is None and is_healthy(self.url)

    def tree(self) -> list[Any]:
        """psutil processes of the tree still running (supervisor first)."""
        import psutil

        procs = []
        for pid in [self.proc.pid, *self.pids]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE and p not in procs:
                    procs.append(p)
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                if child not in procs:
                    procs.append(child)
        return procs

    def kill(self) -> None:
        """SIGKILL the whole tree at once (a crashed node), and reap the supervisor."""
        for p in self.tree():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 40.0) -> None:
        """Graceful stop through the supervisor (SIGTERM), then SIGKILL whatever is left."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout_s)
        self.kill()


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    args: tuple[str, ...]
    speculative_config: dict[str, Any] | None = None


def _log_tail(path: Path, n: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    return "(no log)"


def _descendants(pid: int) -> list[int]:
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    return []


class VllmFleet:
    """The session's vLLM workers; `ensure()` (re)starts the dead ones, in parallel."""

    def __init__(self, specs: Sequence[WorkerSpec], model_path: Path, log_dir: Path) -> None:
        self.specs = list(specs)
        self.model_path = model_path
        self.log_dir = log_dir
        self.workers: list[VllmWorker | None] = [None] * len(self.specs)
        self.starts = 0

    def _spawn(self, index: int) -> tuple[subprocess.Popen[bytes], int, Path, float]:
        spec = self.specs[index]
        port = free_port()
        self.starts += 1
        log_path = self.log_dir / f"{spec.name}-{self.starts}.log"
        cmd = [
            sys.executable, "-m", "bisllm_workers.vllm_worker",
            "--model", str(self.model_path), "--port", str(port), *spec.args,
        ]  # fmt: skip
        env = dict(os.environ)
        # vLLM's CPU backend pins its compute threads; without this, both engines pin core 0.
        if (os.cpu_count() or 1) >= len(self.specs):
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(index)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        return proc, port, log_path, time.monotonic()

    def ensure(self) -> list[VllmWorker]:
        """Return all workers running, starting every one that is missing or dead."""
        pending = {}
        for i, w in enumerate(self.workers):
            if w is None or not w.alive():
                if w is not None:
                    w.stop(timeout_s=5)
                pending[i] = self._spawn(i)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        try:
            while pending and time.monotonic() < deadline:
                for i, (proc, port, log_path, t0) in list(pending.items()):
                    if proc.poll() is not None:
                        raise RuntimeError(
                            f"bisllm-worker {self.specs[i].name} exited with {proc.returncode} "
                            f"during start-up; log tail:\n{_log_tail(log_path)}"
                        )
                    url = f"http://127.0.0.1:{port}"
                    if not is_healthy(url):
                        continue
                    status, info = http_json("GET", f"{url}/bisllm/worker", timeout=10)
                    if status != 200:
                        continue
                    worker = VllmWorker(
                        name=self.specs[i].name,
                        port=port,
                        url=url,
                        info=info,
                        proc=proc,
                        model_path=self.model_path,
                        log_path=log_path,
                        startup_s=time.monotonic() - t0,
                        speculative_config=self.specs[i].speculative_config,
                        pids=_descendants(proc.pid),
                    )
                    self.workers[i] = worker
                    STARTUPS.append((worker.name, worker.startup_s))
                    del pending[i]
                time.sleep(0.5)
            if pending:
                names = [self.specs[i].name for i in pending]
                tails = "\n".join(_log_tail(p[2]) for p in pending.values())
                raise RuntimeError(f"vLLM workers {names} not ready in time; logs:\n{tails}")
        except BaseException:
            for proc, *_ in pending.values():
                with contextlib.suppress(ProcessLookupError):
                    for pid in [*_descendants(proc.pid), proc.pid]:
                        os.kill(pid, signal.SIGKILL)
                proc.wait(timeout=10)
            raise
        return [w for w in self.workers if w is not None]

    def close(self) -> None:
        for w in self.workers:
            if w is not None:
                w.stop()
        self.workers = [None] * len(self.specs)


#: (worker name, seconds from spawn to ready) of every start this session, for the summary.
STARTUPS: list[tuple[str, float]] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Report vLLM start-ups: they dominate the wall time of the `vllm` tests."""
    if STARTUPS:
        starts = ", ".join(f"{name} {secs:.1f} s" for name, secs in STARTUPS)
        terminalreporter.write_line(f"vLLM worker start-ups (spawn -> ready): {starts}")


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The tiny test model; built (deterministically, seed 0) when the cache lacks it."""
    if (
        not (TINY_MODEL_DIR / "config.json").exists()
        or not (TINY_MODEL_DIR / "model.safetensors").exists()
    ):
        from bisllm_workers.tiny_model import make_tiny_model

        make_tiny_model(TINY_MODEL_DIR, seed=0)
    return TINY_MODEL_DIR


@pytest.fixture(scope="session")
def vllm_fleet(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmFleet]:
    """Owner of the session's two vLLM workers (started lazily by `vllm_workers`)."""
    pytest.importorskip("vllm", reason="vLLM is not installed (make install-vllm)")
    pytest.importorskip("psutil")
    specs = [
        WorkerSpec("vllm-plain", (*COMMON_ARGS, "--", *EXTRA_VLLM_ARGS)),
        WorkerSpec(
            "vllm-spec",
            (
                *COMMON_ARGS,
                "--speculative-config",
                json.dumps(SPECULATIVE_CONFIG),
                "--",
                *EXTRA_VLLM_ARGS,
            ),
            speculative_config=SPECULATIVE_CONFIG,
        ),
    ]
    fleet = VllmFleet(specs, tiny_model_path, tmp_path_factory.mktemp("vllm-logs"))
    try:
        yield fleet
    finally:
        fleet.close()


@pytest.fixture
def vllm_workers(vllm_fleet: VllmFleet) -> list[VllmWorker]:
    """Two running vLLM workers, `[plain, speculative]` (restarted if an earlier test killed one)."""
    return vllm_fleet.ensure()
