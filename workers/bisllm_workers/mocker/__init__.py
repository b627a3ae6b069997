"""The engine simulator: mock vLLM workers with a real paged KV cache, a continuous-batching
scheduler, a step-time model and vLLM's KV-event wire format. See ../../../shared/DESIGN.md,
"The mocker". Imports nothing from `bisllm` (or vLLM)."""

from bisllm_workers.mocker.engine import EngineConfig, MockEngine
from bisllm_workers.mocker.fleet import FleetConfig, MockerFleet
from bisllm_workers.mocker.timing import PROFILES, TimingProfile

__all__ = ["PROFILES", "EngineConfig", "FleetConfig", "MockEngine", "MockerFleet", "TimingProfile"]
