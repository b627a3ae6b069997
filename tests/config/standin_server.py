"""Stand-in child process for the `bisllm serve` tests: a small HTTP server answering /health.

It accepts the command lines of bisllm-worker, bisllm-mocker and bisllm-router (only the
host/port arguments matter: `--host/--port`, or the mocker's `--workers N --base-port P`), so the
launcher's real code path - argv building, process groups, health polling, log capture,
shutdown - runs against it in milliseconds instead of a vLLM start-up. Behaviour switches come
first on its command line (the launcher appends its own arguments after them):

  --standin-record DIR       write {"argv", "pid", "grandchild"} to DIR/<first port>.json
  --standin-exit-after S     exit on its own S seconds after it starts listening
  --standin-exit-code C      ... with this code (default 3)
  --standin-fail-at-start    print an error and exit 2 before listening
  --standin-never-healthy    answer /health with 503
  --standin-ignore-sigterm   ignore SIGTERM (the launcher must SIGKILL it)
  --standin-grandchild       start a `sleep` grandchild in its process group
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--standin-record")
    parser.add_argument("--standin-exit-after", type=float)
    parser.add_argument("--standin-exit-code", type=int, default=3)
    parser.add_argument("--standin-fail-at-start", action="store_true")
    parser.add_argument("--standin-never-healthy", action="store_true")
    parser.add_argument("--standin-ignore-sigterm", action="store_true")
    parser.add_argument("--standin-grandchild", action="store_true")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    parser.add_argument("--workers")  # the mocker's count, or the router's URL list
    parser.add_argument("--base-port", type=int)
    args, _ = parser.parse_known_args()

    if args.standin_fail_at_start:
        print("standin: failing on purpose: model not found", file=sys.stderr, flush=True)
        sys.exit(2)
    if args.standin_ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = None
    if args.standin_grandchild:
        grandchild = subprocess.Popen(["sleep", "600"]).pid

    if args.base_port is not None:  # bisllm-mocker: --workers N --base-port P
        binds = [("127.0.0.1", args.base_port + i) for i in range(int(args.workers))]
    else:
        binds = [(args.host, args.port)]
    status = 503 if args.standin_never_healthy else 200

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = status if self.path == "/health" else 404
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *a: object) -> None:
            pass

    servers = [ThreadingHTTPServer(bind, Handler) for bind in binds]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    if args.standin_record:
        record = {"argv": sys.argv[1:], "pid": os.getpid(), "grandchild": grandchild}
        path = Path(args.standin_record) / f"{binds[0][1]}.json"
        path.write_text(json.dumps(record))
    print(f"standin: listening on {binds}", flush=True)
    if args.standin_exit_after is not None:
        time.sleep(args.standin_exit_after)
        print("standin: exiting on purpose", flush=True)
        os._exit(args.standin_exit_code)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
