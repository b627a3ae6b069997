"""Start and stop the system under test: one mocker process hosting N workers + a router.

Every process gets its own session (process group) so stopping it also stops
anything it spawned; every live group is remembered module-wide and killed on
exit, on Ctrl-C and on SIGTERM, so an interrupted benchmark never leaves servers
behind. Everything listens on 127.0.0.1 on ports that were free when chosen.

A fresh fleet per run is deliberate: caches start cold and the router's counters
start at zero, so each policy sees identical conditions.
"""

from __future__ import annotations

import atexit
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
from types import FrameType

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

_LIVE: dict[int, subprocess.Popen[bytes]] = {}  # pgid -> process, for the exit handlers


def _kill_group(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    pgid = proc.pid
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(5)
    # Children that outlived the leader still belong to the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    _LIVE.pop(pgid, None)


def kill_all() -> None:
    """Stop every process group this module started and has not stopped yet."""
    for proc in list(_LIVE.values()):
        _kill_group(proc, grace_s=2.0)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so `finally` blocks (and the asyncio loop) unwind.
    raise SystemExit(128 + signum)


atexit.register(kill_all)


def install_signal_handlers() -> None:
    """Make SIGTERM unwind like Ctrl-C (call from the main thread of the CLI)."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET ``url``; (status, body), or (0, b"") when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, b""


@dataclass
class Process:
    """A started server process and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        _kill_group(self.popen)


def spawn(name: str, args: Sequence[str], log: Path) -> Process:
    """Start ``args`` in a new session with output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            list(args),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=REPO,
        )
    _LIVE[popen.pid] = popen
    return Process(name, popen, log)


def wait_ready(
    url: str, proc: Process, timeout_s: float, check: str | None = None, interval: float = 0.1
) -> bytes:
    """Poll ``url`` until it answers 200 (and its body contains ``check``, if given)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode} before {url} was ready:\n"
                f"{proc.tail()}"
            )
        status, body = http_get(url)
        if status == 200 and (check is None or check.encode() in body):
            return body
        time.sleep(interval)
    raise TimeoutError(f"{proc.name}: {url} not ready after {timeout_s}s:\n{proc.tail()}")


@dataclass(slots=True)
class FleetConfig:
    """The mocker fleet and the router in front of it."""

    workers: int = 8
    model: str = str(REPO / ".cache" / "tiny-llama")
    served_model_name: str = "bench-model"
    profile: str = "h100-llama3-8b"
    speedup: float = 1.0
    block_size: int = 16
    num_blocks: int | None = None  # per worker; None: the mocker's default
    max_model_len: int | None = None
    mocker_args: list[str] = field(default_factory=list)  # passed through verbatim
    router_args: list[str] = field(default_factory=list)
    startup_timeout_s: float = 60.0


@dataclass(slots=True)
class Policy:
    """One routing configuration to compare."""

    name: str  # a bisllm-router --policy
    overlap_weight: float | None = None  # kv_aware only
    temperature: float | None = None  # kv_aware only

    @property
    def label(self) -> str:
        if self.name != "kv_aware":
            return self.name
        w = 1.0 if self.overlap_weight is None else self.overlap_weight
        t = 0.0 if self.temperature is None else self.temperature
        return f"kv_aware(w={w:g},t={t:g})"

    @classmethod
    def parse(cls, spec: str) -> Policy:
        """``kv_aware``, ``kv_aware:w=2,t=0.1``, ``round_robin``, ... (CLI syntax)."""
        name, _, params = spec.partition(":")
        weight = temp = None
        for item in filter(None, (p.strip() for p in params.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"bad policy parameter {item!r} in {spec!r} (want k=v)")
            if key in ("w", "overlap_weight"):
                weight = float(value)
            elif key in ("t", "temperature"):
                temp = float(value)
            else:
                raise ValueError(f"unknown policy parameter {key!r} in {spec!r}")
        if name != "kv_aware" and (weight is not None or temp is not None):
            raise ValueError(f"only kv_aware takes w= and t= ({spec!r})")
        if name == "kv_aware":
            weight = 1.0 if weight is None else weight
            temp = 0.0 if temp is None else temp
        return cls(name, weight, temp)


@dataclass
class Fleet:
    """A running mocker fleet + router; use as a context manager (stops on exit)."""

    router_url: str
    worker_urls: list[str]
    mocker: Process
    router: Process

    def stop(self) -> None:
        # Router first: it would otherwise log N workers failing health checks.
        self.router.stop()
        self.mocker.stop()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def mocker_command(cfg: FleetConfig) -> list[str]:
    args = [
        str(BIN / "bisllm-mocker"),
        "--workers",
        str(cfg.workers),
        "--base-port",
        "0",
        "--json",
        "--model",
        cfg.model,
        "--served-model-name",
        cfg.served_model_name,
        "--profile",
        cfg.profile,
        "--speedup",
        f"{cfg.speedup:g}",
        "--block-size",
        str(cfg.block_size),
    ]
    if cfg.num_blocks is not None:
        args += ["--num-blocks", str(cfg.num_blocks)]
    if cfg.max_model_len is not None:
        args += ["--max-model-len", str(cfg.max_model_len)]
    return args + list(cfg.mocker_args)


def router_command(
    cfg: FleetConfig, policy: Policy, workers: Sequence[str], port: int, seed: int
) -> list[str]:
    args = [
        str(BIN / "bisllm-router"),
        "--workers",
        ",".join(workers),
        "--model",
        cfg.model,
        "--served-model-name",
        cfg.served_model_name,
        "--policy",
        policy.name,
        "--seed",
        str(seed),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    if policy.overlap_weight is not None:
        args += ["--overlap-weight", f"{policy.overlap_weight:g}"]
    if policy.temperature is not None:
        args += ["--temperature", f"{policy.temperature:g}"]
    return args + list(cfg.router_args)


def start_fleet(cfg: FleetConfig, policy: Policy, seed: int, log_dir: Path) -> Fleet:
    """Start the mocker fleet, then the router; return when every worker is routable."""
    tag = policy.label.replace("(", "_").replace(")", "").replace(",", "_").replace("=", "")
    mocker = spawn("bisllm-mocker", mocker_command(cfg), log_dir / f"{tag}-mocker.log")
    router: Process | None = None
    try:
        worker_urls = _mocker_urls(mocker, cfg.workers, cfg.startup_timeout_s)
        for url in worker_urls:
            wait_ready(url + "/health", mocker, cfg.startup_timeout_s)
        port = free_port()
        router = spawn(
            "bisllm-router",
            router_command(cfg, policy, worker_urls, port, seed),
            log_dir / f"{tag}-router.log",
        )
        router_url = f"http://127.0.0.1:{port}"
        wait_ready(router_url + "/health", router, cfg.startup_timeout_s)
        _wait_all_workers(router_url, router, cfg.workers, cfg.startup_timeout_s)
    except BaseException:
        if router is not None:
            router.stop()
        mocker.stop()
        raise
    return Fleet(router_url, worker_urls, mocker, router)


def _mocker_urls(mocker: Process, n: int, timeout_s: float) -> list[str]:
    """Worker URLs from the mocker's ``--json`` lines (it binds ephemeral ports, so
    there is no port to race for), once it has printed ``ready``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = mocker.tail(1 << 20)
        if "ready:" in text:
            urls = []
            for line in text.splitlines():
                if line.startswith("{"):
                    with contextlib.suppress(json.JSONDecodeError):
                        urls.append(str(json.loads(line)["url"]).rstrip("/"))
            if len(urls) != n:
                raise RuntimeError(f"mocker announced {len(urls)} workers, wanted {n}:\n{text}")
            return urls
        if not mocker.alive():
            raise RuntimeError(f"mocker exited with {mocker.popen.returncode}:\n{text[-3000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"mocker not ready after {timeout_s}s:\n{mocker.tail()}")


def _wait_all_workers(router_url: str, router: Process, n: int, timeout_s: float) -> None:
    """Wait until the router lists ``n`` healthy workers (``/health`` needs only one)."""
    deadline = time.monotonic() + timeout_s
    healthy = 0
    while time.monotonic() < deadline:
        status, body = http_get(router_url + "/admin/workers")
        if status == 200:
            rows = json.loads(body).get("workers", [])
            healthy = sum(1 for w in rows if w.get("status") == "healthy")
            if healthy >= n:
                return
        elif status in (401, 403, 404):
            return  # no admin API to ask: /health was the best we could do
        if not router.alive():
            raise RuntimeError(f"router exited:\n{router.tail()}")
        time.sleep(0.1)
    raise TimeoutError(f"router sees {healthy}/{n} healthy workers after {timeout_s}s")


@contextlib.contextmanager
def fleet(cfg: FleetConfig, policy: Policy, seed: int, log_dir: Path) -> Iterator[Fleet]:
    """``with fleet(...) as f:`` — a fresh fleet for one run, always stopped after."""
    f = start_fleet(cfg, policy, seed, log_dir)
    try:
        yield f
    finally:
        f.stop()


def vocab_size(model_dir: str | Path) -> int:
    """The model's vocabulary size (config.json), so expanded token ids stay valid."""
    with open(Path(model_dir) / "config.json", encoding="utf-8") as f:
        return int(json.load(f)["vocab_size"])
