"""Continuous-batching scheduler, modelled on vLLM v1's `Scheduler.schedule()`.

Each step has a token budget (`max_num_batched_tokens`):

1. Running requests first, in arrival order. A decoding request needs 1 token; a request in the
   middle of a chunked prefill needs the rest of its prompt, capped by the remaining budget.
   If its blocks cannot be allocated, the *last* running request is preempted (blocks freed,
   `num_computed_tokens` reset, pushed to the front of the waiting queue: recompute, helped by
   the prefix cache) and allocation is retried; if the victim is the request itself, the
   running pass stops.
2. Then, only if nothing was preempted this step, waiting requests in order while the budget
   lasts and fewer than `max_num_seqs` run: look up the prefix cache, take a chunk of at most
   the remaining budget, allocate; stop at the first request that does not fit.

The scheduler is pure bookkeeping: no clock, no asyncio. The engine calls `schedule()`, sleeps
for the step time, then `update_from_output()`, which samples one token for every request whose
known tokens are now all computed and finishes requests at `max_tokens` / `max_model_len`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bisllm_workers.mocker.kv_cache import KVCacheManager
from bisllm_workers.mocker.request import Request, RequestId, RequestStatus

__all__ = ["Scheduler", "SchedulerConfig", "SchedulerStats", "StepPlan"]


@dataclass(slots=True, frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256  # vLLM's default on GPU
    max_num_batched_tokens: int = 8192  # vLLM v1's default token budget per step
    max_model_len: int = 4096
    enable_chunked_prefill: bool = True

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.max_model_len < 2:
            raise ValueError(
                "max_num_seqs, max_num_batched_tokens must be >= 1, max_model_len >= 2"
            )


@dataclass(slots=True)
class StepPlan:
    """What one engine step computes, and the inputs of the step-time model."""

    scheduled: list[tuple[Request, int]] = field(default_factory=list)  # (request, new tokens)
    num_prefill_tokens: int = 0  # tokens computed for requests not (yet) decoding
    num_decode_seqs: int = 0  # requests computing exactly their next token
    num_decode_context_tokens: int = 0  # sum of those requests' context lengths
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_scheduled_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_seqs


@dataclass(slots=True)
class SchedulerStats:
    """Cumulative counters behind the vLLM metrics of the same names."""

    prefix_cache_queries: int = 0  # prompt tokens looked up (vllm:prefix_cache_queries)
    prefix_cache_hits: int = 0  # of those, found cached (vllm:prefix_cache_hits)
    prompt_tokens: int = 0  # vllm:prompt_tokens
    generation_tokens: int = 0  # vllm:generation_tokens
    num_preemptions: int = 0  # vllm:num_preemptions
    num_steps: int = 0
    max_running_seen: int = 0  # largest running batch (tests check max_num_seqs)
    max_step_tokens_seen: int = 0  # largest step (tests check max_num_batched_tokens)


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        kv: KVCacheManager,
        next_token: Callable[[Request], int],
    ) -> None:
        self.config = config
        self.kv = kv
        self._next_token = next_token  # deterministic output token for a request's position
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.stats = SchedulerStats()
        self._requests: dict[RequestId, Request] = {}

    # ---- queue management ----------------------------------------------------------------

    def add_request(self, req: Request) -> None:
        if req.request_id in self._requests:
            raise ValueError(f"duplicate request id {req.request_id}")
        self._requests[req.request_id] = req
        self.waiting.append(req)

    def abort(self, request_id: RequestId) -> Request | None:
        """Drop a request wherever it is; its blocks go back to the free queue."""
        req = self._requests.pop(request_id, None)
        if req is None or req.is_finished:
            return None
        if req.status == RequestStatus.RUNNING:
            self.running.remove(req)
        else:
            self.waiting.remove(req)
        self.kv.free(req)
        req.status = RequestStatus.FINISHED_ABORTED
        return req

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    # ---- one step -------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        cfg = self.config
        kv = self.kv
        plan = StepPlan()
        budget = cfg.max_num_batched_tokens
        running = self.running

        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            num_new = min(req.num_tokens - req.num_computed_tokens, budget)
            num_new = min(num_new, cfg.max_model_len - 1 - req.num_computed_tokens)
            if num_new <= 0:
                i += 1
                continue
            scheduled = True
            while not kv.allocate_slots(req, num_new):
                victim = running.pop()
                self._preempt(victim)
                plan.preempted.append(victim)
                if victim is req:
                    scheduled = False
                    break
            if not scheduled:
                break
            self._account(plan, req, num_new)
            budget -= num_new
            i += 1

        if not plan.preempted:
            waiting = self.waiting
            while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
                req = waiting[0]
                hits = []
                if req.num_computed_tokens == 0:
                    hits = kv.get_computed_blocks(req)
                num_computed = len(hits) * kv.block_size
                num_new = req.num_tokens - num_computed
                if num_new > budget and not cfg.enable_chunked_prefill:
                    break
                num_new = min(num_new, budget)
                if not kv.allocate_slots(req, num_new, hits):
                    break
                waiting.popleft()
                if req.num_cached_tokens < 0:
                    req.num_cached_tokens = num_computed
                    self.stats.prefix_cache_queries += req.num_tokens
                    self.stats.prefix_cache_hits += num_computed
                req.num_computed_tokens = num_computed
                req.status = RequestStatus.RUNNING
                running.append(req)
                self._account(plan, req, num_new)
                budget -= num_new

        st = self.stats
        if plan.scheduled:
            st.num_steps += 1
            st.max_running_seen = max(st.max_running_seen, len(running))
            st.max_step_tokens_seen = max(st.max_step_tokens_seen, plan.num_scheduled_tokens)
        return plan

    def update_from_output(self, plan: StepPlan, now: float) -> list[Request]:
        """Apply a finished step: advance computed tokens, sample, finish. Returns the
        requests that got a new token or finished (for the engine to notify)."""
        cfg = self.config
        touched: list[Request] = []
        finished: list[Request] = []
        st = self.stats
        for req, n in plan.scheduled:
            if req.is_finished or req.status != RequestStatus.RUNNING:
                continue  # aborted (or preempted) while the step ran
            req.num_computed_tokens += n
            if req.num_computed_tokens < req.num_tokens:
                continue  # a chunk of a longer prefill: no token yet
            req.append_output_token(self._next_token(req))
            st.generation_tokens += 1
            if req.first_token_time is None:
                req.first_token_time = now
                st.prompt_tokens += req.num_prompt_tokens
            if req.num_output_tokens >= req.max_tokens or req.num_tokens >= cfg.max_model_len:
                req.status = RequestStatus.FINISHED_LENGTH
                req.finish_time = now
                finished.append(req)
            touched.append(req)
        if finished:
            done = {id(r) for r in finished}
            self.running = [r for r in self.running if id(r) not in done]
            for req in finished:
                self.kv.free(req)
                self._requests.pop(req.request_id, None)
        return touched

    # ---- helpers ----------------------------------------------------------------------------

    def _preempt(self, req: Request) -> None:
        self.kv.free(req)
        req.status = RequestStatus.PREEMPTED
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.waiting.appendleft(req)

    @staticmethod
    def _account(plan: StepPlan, req: Request, num_new: int) -> None:
        plan.scheduled.append((req, num_new))
        if num_new == 1 and req.num_computed_tokens >= req.num_prompt_tokens:
            plan.num_decode_seqs += 1
            plan.num_decode_context_tokens += req.num_computed_tokens + 1
        else:
            plan.num_prefill_tokens += num_new
