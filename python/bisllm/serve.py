"""`bisllm serve config.yaml`: start the workers and the router on this machine, supervise them.

    config.yaml ──load_config──▶ Config ──resolve_checkpoint──▶ model dir
                                   │
                         build_plan (pure) ──▶ [worker-0 .. worker-N | mocker] then router
                                   │
    Supervisor: check ports free ─▶ start workers ─▶ wait /health ─▶ start router ─▶ wait /health
                ─▶ print endpoints ─▶ watch: Ctrl-C / SIGTERM / SIGHUP -> clean stop, exit 0;
                                             a child exits -> stop the rest, exit 1 naming it

Invariants:
- Every child runs in its own session (process group), so vLLM's engine-core grandchildren are
  stopped with it: SIGTERM to the group, SIGKILL after `shutdown_grace_s` to what is left.
  The router stops first so no request lands on a worker that is going away.
- Nothing is started until every port is known to be free and every command resolves, so a
  typo fails in milliseconds instead of after a worker has loaded a model.
- A failure names the process, its exit status and the tail of its log (one file per process).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen
from typing import Any, TextIO

from bisllm.config import Config, worker_argv
from bisllm.config.schema import WorkerRole

__all__ = ["Plan", "ProcessSpec", "ServeError", "Supervisor", "build_plan", "serve"]


class ServeError(RuntimeError):
    """`bisllm serve` cannot go on; the message names the process and the cause."""


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One child process: its name in messages and logs, its argv, the URLs that mean ready."""

    name: str
    argv: tuple[str, ...]
    health_urls: tuple[str, ...]
    #: (host, port) pairs it will bind; checked free before anything starts.
    ports: tuple[tuple[str, int], ...]
    #: Environment on top of the supervisor's (secrets go here, never into argv).
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    """What `bisllm serve` starts, in stages: every worker process, then the router."""

    stages: tuple[tuple[ProcessSpec, ...], ...]
    router_url: str
    worker_urls: tuple[str, ...]
    worker_roles: tuple[str, ...]
    served_model_name: str
    api_key_env: str | None
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def processes(self) -> tuple[ProcessSpec, ...]:
        """All processes in start order."""
        return tuple(spec for stage in self.stages for spec in stage)


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _url(host: str, port: int) -> str:
    host = _client_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def build_plan(config: Config, *, model_path: str, env: Mapping[str, str]) -> Plan:
    """The processes for `config` serving `model_path` (pure apart from reading `env`'s keys)."""
    b = config.bisllm
    runtime = config.trt_llm.runtime
    routing = config.llm_config.b10_routing_config
    if b.engine_backend == "mocker":
        count = config.autoscaling_settings.min_replica
        roles: list[WorkerRole] = ["aggregated"] * count
        ports = [b.worker_base_port + i for i in range(count)]
        # The mocker binds its workers on 127.0.0.1; its CLI has no host option.
        worker_urls = [_url("127.0.0.1", p) for p in ports]
        argv = [
            *b.mocker_command,
            "--workers",
            str(count),
            "--base-port",
            str(b.worker_base_port),
            "--model",
            model_path,
            "--served-model-name",
            config.served_model_name,
            "--speedup",
            str(b.mocker.speedup),
            # The simulated engine gets the same limits a vLLM worker would.
            "--max-num-seqs",
            str(runtime.max_batch_size),
            "--max-num-batched-tokens",
            str(runtime.max_num_tokens),
        ]
        if runtime.max_seq_len is not None:
            argv += ["--max-model-len", str(runtime.max_seq_len)]
        if not runtime.enable_chunked_prefill:
            argv.append("--no-chunked-prefill")
        if b.mocker.profile is not None:
            argv += ["--profile", b.mocker.profile]
        if b.block_size is not None:
            argv += ["--block-size", str(b.block_size)]
        workers: tuple[ProcessSpec, ...] = (
            ProcessSpec(
                "mocker",
                tuple(argv),
                tuple(f"{u}/health" for u in worker_urls),
                tuple(("127.0.0.1", p) for p in ports),
            ),
        )
    else:
        roles = list(config.worker_roles())
        worker_urls = []
        specs = []
        for i, role in enumerate(roles):
            port = b.worker_base_port + i
            url = _url(b.worker_host, port)
            worker_urls.append(url)
            name = f"worker-{i}" if role == "aggregated" else f"{role}-{i}"
            argv = [
                *b.worker_command,
                *worker_argv(config, model_path=model_path, port=port, role=role),
            ]
            binds = [(b.worker_host, port)]
            worker_env: dict[str, str] = {}
            if role != "aggregated":
                # vLLM's NIXL handshake listens on this port (+ tensor-parallel rank): it must
                # differ per server on one machine, and bisllm-worker leaves it to its caller.
                tp = config.trt_llm.runtime.tensor_parallel_size
                side = b.nixl_side_channel_base_port + i * tp
                worker_env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(side)
                binds += [(b.worker_host, side + rank) for rank in range(tp)]
            specs.append(
                ProcessSpec(name, tuple(argv), (f"{url}/health",), tuple(binds), worker_env)
            )
        workers = tuple(specs)

    router_argv = [
        *b.router_command,
        "--workers",
        ",".join(worker_urls),
        "--model",
        model_path,
        "--host",
        b.host,
        "--port",
        str(b.port),
        "--policy",
        b.router_policy,
        "--overlap-weight",
        str(routing.router_overlap_score_weight),
        "--temperature",
        str(routing.router_temperature),
        "--served-model-name",
        config.served_model_name,
    ]
    # Keys travel in the router's environment (BISLLM_API_KEY / BISLLM_ADMIN_KEY, which
    # bisllm-router reads), not on its command line where `ps` shows them.
    router_env: dict[str, str] = {}
    for field_name, var, router_var in (
        ("api_key_env", b.api_key_env, "BISLLM_API_KEY"),
        ("admin_key_env", b.admin_key_env, "BISLLM_ADMIN_KEY"),
    ):
        if var is None:
            continue
        value = env.get(var)
        if not value:
            raise ServeError(f"bisllm.{field_name} names {var}, which is not set")
        router_env[router_var] = value
    router_url = _url(b.host, b.port)
    router = ProcessSpec(
        "router",
        tuple(router_argv),
        (f"{router_url}/health",),
        ((b.host, b.port),),
        router_env,
    )
    child_env = {**config.environment_variables, "PYTHONUNBUFFERED": "1"}
    return Plan(
        stages=(workers, (router,)),
        router_url=router_url,
        worker_urls=tuple(worker_urls),
        worker_roles=tuple(roles),
        served_model_name=config.served_model_name,
        api_key_env=b.api_key_env,
        env=child_env,
    )


def resolve_command(argv: Sequence[str]) -> list[str]:
    """argv with its program found: beside this Python first (the venv), then on PATH."""
    program = argv[0]
    if os.sep not in program:
        beside = Path(sys.executable).parent / program
        if beside.is_file() and os.access(beside, os.X_OK):
            return [str(beside), *argv[1:]]
        found = shutil.which(program)
        if found is None:
            raise ServeError(
                f"{program} not found (looked beside {sys.executable} and on PATH); "
                "`make install` installs bisllm-router, bisllm-worker and bisllm-mocker"
            )
        return [found, *argv[1:]]
    if not os.access(program, os.X_OK):
        raise ServeError(f"{program} is not an executable file")
    return list(argv)


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As servers bind: SO_REUSEADDR lets a port in TIME_WAIT count as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = 25) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    kept = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in kept) if kept else "    (log is empty)"


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthy(url: str) -> bool:
    """GET url returns 200 (proxies bypassed: these are local servers)."""
    try:
        with _NO_PROXY.open(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM the child if `bisllm serve` itself dies (even SIGKILL)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


@dataclass
class _Child:
    spec: ProcessSpec
    proc: Popen[bytes]
    log_path: Path


class Supervisor:
    """Starts a Plan's processes stage by stage, waits for health, watches, and stops them."""

    def __init__(
        self,
        plan: Plan,
        *,
        log_dir: Path,
        startup_timeout_s: float,
        shutdown_grace_s: float,
        out: TextIO = sys.stdout,
        poll_interval_s: float = 0.2,
    ) -> None:
        self.plan = plan
        self.log_dir = log_dir
        self.startup_timeout_s = startup_timeout_s
        self.shutdown_grace_s = shutdown_grace_s
        self.out = out
        self.poll_interval_s = poll_interval_s
        self.children: list[_Child] = []
        self._stop = threading.Event()
        self._stop_reason = ""

    # ---- output ----
    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # ---- signals ----
    def request_stop(self, reason: str) -> None:
        """Ask run() to shut everything down (signal handlers and tests call this)."""
        self._stop_reason = reason
        self._stop.set()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.request_stop(f"received {signal.Signals(signum).name}")

    # ---- lifecycle ----
    def run(self) -> int:
        """Serve until stopped: 0 after a requested stop, 1 when a process failed."""
        handlers: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            self._preflight()
            for stage in self.plan.stages:
                for spec in stage:
                    self._start(spec)
                if not self._wait_healthy(stage):
                    return 0  # stopped by a signal during start-up
            self._print_ready()
            return self._watch()
        except ServeError as exc:
            self._say(f"bisllm serve: error: {exc}")
            return 1
        finally:
            self.shutdown()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _preflight(self) -> None:
        busy = [
            f"{host}:{port} ({spec.name})"
            for spec in self.plan.processes
            for host, port in spec.ports
            if not _port_free(host, port)
        ]
        if busy:
            raise ServeError(
                f"port(s) already in use: {', '.join(busy)}; stop what holds them or change "
                "bisllm.port / bisllm.worker_base_port"
            )
        for spec in self.plan.processes:
            resolve_command(spec.argv)

    def _start(self, spec: ProcessSpec) -> None:
        argv = resolve_command(spec.argv)
        log_path = self.log_dir / f"{spec.name}.log"
        env = {**os.environ, **self.plan.env, **spec.env}
        with log_path.open("ab") as log:
            log.write(f"$ {shlex.join(argv)}\n".encode())
            log.flush()
            proc = Popen(
                argv,
                stdin=DEVNULL,
                stdout=log,
                stderr=STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.children.append(_Child(spec, proc, log_path))
        self._say(f"started {spec.name} (pid {proc.pid}), log {log_path}")

    def _failure(self, child: _Child, what: str) -> ServeError:
        return ServeError(
            f"{child.spec.name} {what}; last lines of {child.log_path}:\n{_tail(child.log_path)}"
        )

    def _check_alive(self) -> None:
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                raise self._failure(child, _describe_exit(code))

    def _wait_healthy(self, stage: Sequence[ProcessSpec]) -> bool:
        pending = {url: spec for spec in stage for url in spec.health_urls}
        deadline = time.monotonic() + self.startup_timeout_s
        while pending:
            if self._stop.is_set():
                self._say(f"{self._stop_reason} during start-up, shutting down")
                return False
            self._check_alive()
            for url in [u for u in pending if _healthy(u)]:
                del pending[url]
            if not pending:
                break
            if time.monotonic() > deadline:
                spec = next(iter(pending.values()))
                child = next(c for c in self.children if c.spec is spec)
                raise self._failure(
                    child,
                    f"was not healthy after {self.startup_timeout_s:g}s "
                    f"({', '.join(u for u, s in pending.items() if s is spec)}); raise "
                    "bisllm.startup_timeout_s if it is still loading",
                )
            self._stop.wait(self.poll_interval_s)
        for spec in stage:
            self._say(f"{spec.name} is healthy")
        return True

    def _watch(self) -> int:
        while not self._stop.wait(self.poll_interval_s):
            self._check_alive()
        self._say(f"{self._stop_reason}, shutting down")
        return 0

    def shutdown(self) -> None:
        """SIGTERM every child's process group (router first), SIGKILL what outlives the grace."""
        children = list(reversed(self.children))
        for child in children:
            _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_grace_s
        while time.monotonic() < deadline and any(_group_alive(c.proc) for c in children):
            time.sleep(0.05)
        for child in children:
            if _group_alive(child.proc):
                self._say(
                    f"{child.spec.name} did not stop in {self.shutdown_grace_s:g}s, killing it"
                )
                _signal_group(child.proc, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(Exception):
                child.proc.wait(timeout=5)
        self.children.clear()

    def _print_ready(self) -> None:
        plan = self.plan
        base = f"{plan.router_url}/v1"
        auth_header = f' -H "Authorization: Bearer ${plan.api_key_env}"' if plan.api_key_env else ""
        api_key = f'os.environ["{plan.api_key_env}"]' if plan.api_key_env else '"unused"'
        workers = "\n".join(
            f"    {url}  ({role})"
            for url, role in zip(plan.worker_urls, plan.worker_roles, strict=True)
        )
        body = json.dumps(
            {
                "model": plan.served_model_name,
                "messages": [{"role": "user", "content": "Hello!"}],
                "max_tokens": 32,
            }
        )
        self._say(
            f"""
bisllm is ready: serving {plan.served_model_name!r}
  OpenAI API  {base}
  router      {plan.router_url}  (/health, /metrics)
  workers
{workers}
  logs        {self.log_dir}

Try it:
  curl {base}/chat/completions -H "Content-Type: application/json"{auth_header} \\
    -d '{body}'

  python - <<'EOF'
  import os
  from openai import OpenAI
  client = OpenAI(base_url="{base}", api_key={api_key})
  reply = client.chat.completions.create(
      model="{plan.served_model_name}",
      messages=[{{"role": "user", "content": "Hello!"}}],
      max_tokens=32,
  )
  print(reply.choices[0].message.content)
  EOF

Ctrl-C stops everything."""
        )


def _signal_group(proc: Popen[bytes], sig: signal.Signals) -> None:
    # start_new_session made the child a group leader: its pgid is its pid, even after it exits.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _group_alive(proc: Popen[bytes]) -> bool:
    """Does any live (non-zombie) process remain in the child's process group?

    Zombies don't count: a grandchild whose parent died is reaped by init whenever init gets to
    it, and waiting for that would stretch every shutdown to the full grace period.
    """
    proc.poll()  # reap the leader so its own zombie doesn't count
    try:
        os.killpg(proc.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return True
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after ')'
        fields = stat.rsplit(")", 1)[1].split()
        if len(fields) > 2 and int(fields[2]) == proc.pid and fields[0] not in ("Z", "X"):
            return True
    return False


def serve(
    config_path: str | Path,
    *,
    dry_run: bool = False,
    log_dir: str | Path | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """`bisllm serve`: 0 after a clean stop, 1 when the config, the checkpoint or a process fails."""
    from bisllm.config import CheckpointError, ConfigErrors, load_config, resolve_checkpoint

    try:
        config = load_config(config_path)
    except ConfigErrors as exc:
        print(exc.render(), file=out, flush=True)
        return 1
    repo = config.trt_llm.build.checkpoint_repository
    if repo is None:
        print(
            "bisllm serve: error: trt_llm.build.checkpoint_repository is needed to know what to "
            "load (skip_build_result only skips BIS-LLM's engine build)",
            file=out,
            flush=True,
        )
        return 1
    if repo.source == "HF":
        print(f"checkpoint {repo.repo}: Hugging Face cache, else download", file=out, flush=True)
    try:
        model_path = resolve_checkpoint(repo)
        plan = build_plan(config, model_path=str(model_path), env=os.environ)
    except (CheckpointError, ServeError, ValueError) as exc:
        print(f"bisllm serve: error: {exc}", file=out, flush=True)
        return 1
    if dry_run:
        for spec in plan.processes:
            print(f"{spec.name}: {shlex.join(spec.argv)}", file=out)
        return 0
    chosen = log_dir or config.bisllm.log_dir
    logs = Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix="bisllm-serve-"))
    logs.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(
        plan,
        log_dir=logs,
        startup_timeout_s=config.bisllm.startup_timeout_s,
        shutdown_grace_s=config.bisllm.shutdown_grace_s,
        out=out,
    )
    return supervisor.run()
