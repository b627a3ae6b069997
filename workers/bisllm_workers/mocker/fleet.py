"""`MockerFleet`: N mock workers in this process, as an async context manager.

    async with MockerFleet(FleetConfig(workers=4, speedup=10)) as fleet:
        urls = fleet.urls            # ["http://127.0.0.1:41237", ...]
        fleet.workers[0].info        # the /bisllm/worker document

Everything binds to 127.0.0.1 (HTTP) and to loopback tcp or ipc:// (KV events). With
`base_port=0` every HTTP port is ephemeral; with `events_base_port` worker i publishes on
`P + 2i` and replays on `P + 2i + 1`; with `events_ipc_dir` on `ipc://DIR/worker-i.{pub,replay}`;
otherwise on ephemeral loopback ports. All workers share one tokenizer and one ZMQ context.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import zmq

from bisllm_workers.kv_events import KVEventPublisher
from bisllm_workers.mocker.engine import EngineConfig, MockEngine
from bisllm_workers.mocker.model import ModelInfo, load_model
from bisllm_workers.mocker.server import MockWorker, bind_loopback
from bisllm_workers.mocker.timing import get_profile

__all__ = ["FleetConfig", "MockerFleet"]


@dataclass(slots=True)
class FleetConfig:
    workers: int = 1
    base_port: int = 0  # worker i listens on base_port + i; 0 = ephemeral ports
    model: str | None = None  # HF-style dir with tokenizer.json; None = embedded tiny tokenizer
    served_model_name: str | None = None  # default: the model path (vLLM's default)
    profile: str = "h100-llama3-8b"
    speedup: float = 1.0
    min_step_wall_s: float = 0.0  # see EngineConfig.min_step_wall_s
    block_size: int = 16
    num_blocks: int | None = None  # default: the profile's KV capacity / block_size
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None  # default: the model's max_position_embeddings
    enable_chunked_prefill: bool = True
    events: bool = True
    events_base_port: int | None = None
    events_ipc_dir: str | None = None
    topic: str = "kv"
    replay_buffer_steps: int = 10_000


class MockerFleet:
    def __init__(self, config: FleetConfig, model: ModelInfo | None = None) -> None:
        if config.workers < 1:
            raise ValueError("workers must be >= 1")
        self.config = config
        self._model = model
        self.workers: list[MockWorker] = []
        self._ctx: zmq.Context | None = None

    @property
    def urls(self) -> list[str]:
        return [w.url for w in self.workers]

    def _endpoints(self, i: int) -> tuple[str, str]:
        cfg = self.config
        if cfg.events_ipc_dir is not None:
            d = Path(cfg.events_ipc_dir)
            return f"ipc://{d}/worker-{i}.pub", f"ipc://{d}/worker-{i}.replay"
        if cfg.events_base_port is not None:
            p = cfg.events_base_port + 2 * i
            return f"tcp://127.0.0.1:{p}", f"tcp://127.0.0.1:{p + 1}"
        return "tcp://127.0.0.1:*", "tcp://127.0.0.1:*"

    async def start(self) -> None:
        cfg = self.config
        profile = get_profile(cfg.profile)
        model = self._model
        if model is None:
            # Tokenizer loading/training is CPU work: keep the loop responsive meanwhile.
            model = await asyncio.to_thread(load_model, cfg.model, cfg.max_model_len)
        self._model = model
        served = cfg.served_model_name or cfg.model or "bisllm-tiny"
        num_blocks = cfg.num_blocks or max(1, profile.kv_capacity_tokens // cfg.block_size)
        engine_cfg = EngineConfig(
            block_size=cfg.block_size,
            num_blocks=num_blocks,
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            max_model_len=cfg.max_model_len or model.max_model_len,
            enable_chunked_prefill=cfg.enable_chunked_prefill,
            speedup=cfg.speedup,
            min_step_wall_s=cfg.min_step_wall_s,
        )
        if cfg.events:
            self._ctx = zmq.Context()
            self._ctx.set(zmq.MAX_SOCKETS, max(1024, 4 * cfg.workers + 64))
            if cfg.events_ipc_dir is not None:
                os.makedirs(cfg.events_ipc_dir, exist_ok=True)
        try:
            for i in range(cfg.workers):
                publisher = None
                if self._ctx is not None:
                    pub_ep, replay_ep = self._endpoints(i)
                    publisher = KVEventPublisher(
                        self._ctx, pub_ep, replay_ep, cfg.topic, cfg.replay_buffer_steps
                    )
                engine = MockEngine(engine_cfg, profile, model, publisher)
                worker = MockWorker(engine, served, publisher, index=i)
                # Registered before start so stop() cleans up a half-started worker too.
                self.workers.append(worker)
                sock = bind_loopback(cfg.base_port + i if cfg.base_port else 0)
                await worker.start(sock)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        workers, self.workers = self.workers, []
        for w in workers:
            with contextlib.suppress(Exception):
                await w.stop()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def __aenter__(self) -> MockerFleet:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
