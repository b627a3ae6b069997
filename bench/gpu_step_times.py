"""Measure engine step times of a Llama-3-8B-shaped decoder on one GPU, and fit the mocker's model.

Standalone (PyTorch + numpy only; not imported by the mocker). Builds a Llama-3-8B-shaped decoder
in bf16 with seeded random weights (hidden 4096, 32 layers, 32 query / 8 KV heads of 128, SwiGLU
14336, vocab 128256, RMSNorm, RoPE; fused QKV and gate/up projections as vLLM does), then times
whole engine steps (embedding -> 32 layers -> final norm -> lm_head on the sampled rows -> argmax):

* prefill:  one fresh sequence of N tokens, causal SDPA (flash backend), K/V written to the cache;
* chunked:  a chunk of n tokens on top of P cached tokens (SDPA with a lower-right causal bias);
* decode:   B sequences x 1 token against per-sequence K/V caches of C tokens (+ the new one),
            SDPA with q length 1 (flash backend, GQA); captured in a CUDA graph, replays timed;
            a few points also eager, to show the launch overhead a graph removes;
* mixed:    one step holding a fresh n-token prefill and B decodes (checks additivity).

Every step is captured in a CUDA graph (static shapes) and its replays timed with CUDA events
(warm-up first, median of repeats); eager timings are reported alongside for a subset. Inputs
are random token ids; logits are checked finite. The mocker's model

    step = overhead + prefill_token x N_prefill + decode_seq x B + decode_ctx_token x sum(ctx)

is fitted by least squares (relative error, i.e. weighted by 1/t; coefficients kept >= 0) on
the prefill and decode points; chunked and mixed points are held out as checks.

    python3 bench/gpu_step_times.py --out $OUT/gpu_step_times.json        # on the GPU machine
    python3 bench/gpu_step_times.py --fit-only bench/results/gpu_step_times.json   # refit, no GPU
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial

import numpy as np

# Llama-3-8B shapes.
HIDDEN = 4096
LAYERS = 32
N_HEADS = 32
N_KV = 8
HEAD_DIM = 128
INTER = 14336
VOCAB = 128256
EPS = 1e-5
ROPE_THETA = 500000.0
KV_BYTES_PER_TOKEN = LAYERS * 2 * N_KV * HEAD_DIM * 2  # 128 KiB

PREFILL_N = [128, 256, 512, 1024, 2048, 3072, 4096, 6144, 8192]
DECODE_B = [1, 2, 4, 8, 16, 32, 64, 128, 256]
DECODE_C = [256, 512, 1024, 2048, 4096, 8192]
CHUNKED = [(2048, 0), (2048, 2048), (2048, 4096), (2048, 6144), (512, 4096)]  # (chunk, prefix)
MIXED = [(512, 32, 1024), (512, 128, 1024), (2048, 32, 1024), (2048, 128, 1024)]  # (n, B, C)
EAGER_DECODE = [(1, 256), (1, 1024), (32, 1024), (256, 1024)]
EAGER_PREFILL = [128, 2048]


# ---------------------------------------------------------------------------------------------
# model and steps (torch imported lazily so --fit-only runs without it)


def build(torch, kv_tokens: int, seed: int):
    """Weights (one tensor per matrix, per layer) and a flat K/V pool of kv_tokens per layer."""
    dev, bf16 = "cuda", torch.bfloat16
    g = torch.Generator(device=dev)
    g.manual_seed(seed)

    def rnd(*shape, std):
        return torch.randn(*shape, generator=g, device=dev, dtype=bf16).mul_(std)

    W = {
        "embed": rnd(VOCAB, HIDDEN, std=1.0),
        "lm_head": rnd(VOCAB, HIDDEN, std=HIDDEN**-0.5),
        "norm": 1.0 + rnd(HIDDEN, std=0.02),
        "layers": [],
    }
    for _ in range(LAYERS):
        W["layers"].append(
            {
                "ln1": 1.0 + rnd(HIDDEN, std=0.02),
                "ln2": 1.0 + rnd(HIDDEN, std=0.02),
                "wqkv": rnd(HIDDEN + 2 * N_KV * HEAD_DIM, HIDDEN, std=HIDDEN**-0.5),
                "wo": rnd(HIDDEN, HIDDEN, std=HIDDEN**-0.5),
                "wgu": rnd(2 * INTER, HIDDEN, std=HIDDEN**-0.5),
                "wdown": rnd(HIDDEN, INTER, std=INTER**-0.5),
            }
        )
    # K/V pool: random (non-zero) contents, as if filled by earlier steps.
    K = [rnd(kv_tokens, N_KV, HEAD_DIM, std=1.0) for _ in range(LAYERS)]
    V = [rnd(kv_tokens, N_KV, HEAD_DIM, std=1.0) for _ in range(LAYERS)]
    inv = 1.0 / (ROPE_THETA ** (torch.arange(0, HEAD_DIM, 2, device=dev).float() / HEAD_DIM))
    ang = torch.outer(torch.arange(16384, device=dev).float(), inv)
    W["cos"], W["sin"] = ang.cos().to(bf16), ang.sin().to(bf16)
    return W, K, V


def rope(torch, x, cos, sin):
    """Rotate-half RoPE; x [T, H, 128], cos/sin [T, 1, 64]."""
    x1, x2 = x[..., : HEAD_DIM // 2], x[..., HEAD_DIM // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def forward(torch, W, ids, pos, attn, logit_rows):
    """One engine step over a flat token batch. attn(layer, q, k, v) -> [T, HIDDEN]."""
    F = torch.nn.functional
    T = ids.shape[0]
    cos, sin = W["cos"][pos][:, None, :], W["sin"][pos][:, None, :]
    x = F.embedding(ids, W["embed"])
    for li, L in enumerate(W["layers"]):
        h = F.rms_norm(x, (HIDDEN,), L["ln1"], EPS)
        qkv = F.linear(h, L["wqkv"])
        q, k, v = qkv.split([HIDDEN, N_KV * HEAD_DIM, N_KV * HEAD_DIM], dim=-1)
        q = rope(torch, q.view(T, N_HEADS, HEAD_DIM), cos, sin)
        k = rope(torch, k.view(T, N_KV, HEAD_DIM), cos, sin)
        v = v.view(T, N_KV, HEAD_DIM)
        x = x + F.linear(attn(li, q, k, v), L["wo"])
        h = F.rms_norm(x, (HIDDEN,), L["ln2"], EPS)
        gate, up = F.linear(h, L["wgu"]).chunk(2, dim=-1)
        x = x + F.linear(F.silu(gate) * up, L["wdown"])
    h = F.rms_norm(x[logit_rows], (HIDDEN,), W["norm"], EPS)
    logits = F.linear(h, W["lm_head"])
    return logits, logits.argmax(dim=-1)


class Attn:
    """Attention variants over the flat K/V pool (K[l], V[l]: [pool_tokens, N_KV, HEAD_DIM])."""

    def __init__(self, torch, K, V, decode_mode: str):
        self.t, self.K, self.V = torch, K, V
        self.decode_mode = decode_mode  # "gqa" (enable_gqa) or "pack" (4 q heads as q rows)
        self.prefill_mode = "gqa"  # "gqa" (flash with enable_gqa) or "expand" (repeat K/V heads)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        self.sdpa_kernel, self.B = sdpa_kernel, SDPBackend

    def prefill(self, base: int, n: int):
        F = self.t.nn.functional

        def fn(li, q, k, v):
            self.K[li][base : base + n].copy_(k)
            self.V[li][base : base + n].copy_(v)
            kk, vv = k.transpose(0, 1)[None], v.transpose(0, 1)[None]
            gqa = self.prefill_mode == "gqa"
            if not gqa:
                kk = kk.repeat_interleave(N_HEADS // N_KV, dim=1)
                vv = vv.repeat_interleave(N_HEADS // N_KV, dim=1)
            with self.sdpa_kernel([self.B.FLASH_ATTENTION]):
                o = F.scaled_dot_product_attention(
                    q.transpose(0, 1)[None], kk, vv, is_causal=True, enable_gqa=gqa
                )
            return o[0].transpose(0, 1).reshape(n, HIDDEN)

        return fn

    def chunked(self, base: int, n: int, prefix: int, how: str):
        """n new tokens at positions prefix..prefix+n-1 of one sequence whose cache starts at base."""
        t, F = self.t, self.t.nn.functional
        from torch.nn.attention.bias import causal_lower_right

        total = prefix + n
        bias = causal_lower_right(n, total)
        mask = None
        if how == "boolmask":
            mask = t.ones(n, total, dtype=t.bool, device="cuda").tril(diagonal=prefix)

        def fn(li, q, k, v):
            self.K[li][base + prefix : base + total].copy_(k)
            self.V[li][base + prefix : base + total].copy_(v)
            kk = self.K[li][base : base + total].transpose(0, 1)[None]
            vv = self.V[li][base : base + total].transpose(0, 1)[None]
            qq = q.transpose(0, 1)[None]
            if how == "bias_gqa":
                o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=bias, enable_gqa=True)
            elif how == "bias_expand":
                kk = kk.repeat_interleave(N_HEADS // N_KV, dim=1)
                vv = vv.repeat_interleave(N_HEADS // N_KV, dim=1)
                o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=bias)
            else:  # boolmask
                o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, enable_gqa=True)
            return o[0].transpose(0, 1).reshape(n, HIDDEN)

        return fn

    def decode_core(self, li, q, k, v, base: int, B: int, C: int):
        """q [B,32,128], k/v [B,8,128]; caches of C tokens per sequence + the new one."""
        F = self.t.nn.functional
        Kc = self.K[li][base : base + B * (C + 1)].view(B, C + 1, N_KV, HEAD_DIM)
        Vc = self.V[li][base : base + B * (C + 1)].view(B, C + 1, N_KV, HEAD_DIM)
        Kc[:, C] = k
        Vc[:, C] = v
        kk, vv = Kc.transpose(1, 2), Vc.transpose(1, 2)  # [B, 8, C+1, 128], last dim contiguous
        with self.sdpa_kernel([self.B.FLASH_ATTENTION]):
            if self.decode_mode == "gqa":
                o = F.scaled_dot_product_attention(q[:, :, None, :], kk, vv, enable_gqa=True)
            else:  # query heads 4g..4g+3 share KV head g: make them 4 query rows of head g
                qg = q.view(B, N_KV, N_HEADS // N_KV, HEAD_DIM)
                o = F.scaled_dot_product_attention(qg, kk, vv)
        return o.reshape(B, HIDDEN)

    def decode(self, base: int, B: int, C: int):
        return lambda li, q, k, v: self.decode_core(li, q, k, v, base, B, C)

    def mixed(self, n: int, dbase: int, B: int, C: int):
        pre = self.prefill(0, n)

        def fn(li, q, k, v):
            a = pre(li, q[:n], k[:n], v[:n])
            b = self.decode_core(li, q[n:], k[n:], v[n:], dbase, B, C)
            return self.t.cat((a, b), dim=0)

        return fn


def bench(torch, fn, graph: bool, target_s: float = 0.6, min_reps: int = 5, max_reps: int = 40):
    """Median ms of fn (optionally as CUDA-graph replays), CUDA events around each run."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            out = fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = None
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = fn()
        run = g.replay
    else:
        run = fn
    for _ in range(2):
        run()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    run()
    torch.cuda.synchronize()
    est = time.perf_counter() - t0
    reps = max(min_reps, min(max_reps, int(target_s / max(est, 1e-6))))
    ev = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(reps)
    ]
    for a, b in ev:
        a.record()
        res = run()
        b.record()
    torch.cuda.synchronize()
    if not graph:
        out = res
    ms = sorted(a.elapsed_time(b) for a, b in ev)
    logits, _tok = out
    finite = bool(torch.isfinite(logits).all().item())
    del g
    return {
        "ms": statistics.median(ms),
        "ms_min": ms[0],
        "ms_max": ms[-1],
        "reps": reps,
        "finite": finite,
        "logit_std": float(logits.float().std().item()),
    }


def ceilings(torch):
    """Measured matmul rate and device-to-device copy bandwidth (rooflines for the report)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(10):
        a @ b
    e1.record()
    torch.cuda.synchronize()
    tflops = 10 * 2 * 8192**3 / (e0.elapsed_time(e1) / 1e3) / 1e12
    x = torch.randn(1 << 30, device="cuda", dtype=torch.bfloat16)  # 2 GiB
    y = torch.empty_like(x)
    for _ in range(2):
        y.copy_(x)
    torch.cuda.synchronize()
    e0.record()
    for _ in range(10):
        y.copy_(x)
    e1.record()
    torch.cuda.synchronize()
    tbs = 10 * 2 * x.numel() * 2 / (e0.elapsed_time(e1) / 1e3) / 1e12
    del a, b, x, y
    torch.cuda.empty_cache()
    return {"bf16_matmul_8192_tflops": tflops, "d2d_copy_tb_s_read_plus_write": tbs}


def check_attention(torch, attn: Attn):
    """Decode/prefill attention paths vs an fp32 reference on fresh random tensors."""
    F = torch.nn.functional
    res = {}
    B, C = 3, 77
    q = torch.randn(B, N_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, N_KV, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, N_KV, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    base = 1000
    Kc = attn.K[0][base : base + B * (C + 1)].view(B, C + 1, N_KV, HEAD_DIM)
    Vc = attn.V[0][base : base + B * (C + 1)].view(B, C + 1, N_KV, HEAD_DIM)
    Kc.normal_()
    Vc.normal_()
    for mode in ("gqa", "pack"):
        attn.decode_mode = mode
        try:
            out = attn.decode_core(0, q, k, v, base, B, C).float()
            kr = Kc.float().repeat_interleave(4, dim=2).transpose(1, 2)
            vr = Vc.float().repeat_interleave(4, dim=2).transpose(1, 2)
            ref = F.scaled_dot_product_attention(q.float()[:, :, None], kr, vr).reshape(B, HIDDEN)
            res[f"decode_{mode}_rel_err"] = float((out - ref).norm() / ref.norm())
        except Exception as e:
            res[f"decode_{mode}_error"] = repr(e)[:300]
    n = 64
    q = torch.randn(n, N_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(n, N_KV, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(n, N_KV, HEAD_DIM, device="cuda", dtype=torch.bfloat16)

    def ref_causal(qf, kf, vf, prefix):
        kf = kf.repeat_interleave(4, dim=1).transpose(0, 1)[None]
        vf = vf.repeat_interleave(4, dim=1).transpose(0, 1)[None]
        m = torch.ones(qf.shape[0], kf.shape[2], dtype=torch.bool, device="cuda").tril(prefix)
        o = F.scaled_dot_product_attention(qf.transpose(0, 1)[None], kf, vf, attn_mask=m)
        return o[0].transpose(0, 1).reshape(qf.shape[0], HIDDEN)

    ref = ref_causal(q.float(), k.float(), v.float(), 0)
    for mode in ("gqa", "expand"):
        attn.prefill_mode = mode
        try:
            out = attn.prefill(base, n)(0, q, k, v).float()
            res[f"prefill_{mode}_rel_err"] = float((out - ref).norm() / ref.norm())
        except Exception as e:
            res[f"prefill_{mode}_error"] = repr(e)[:300]
    attn.prefill_mode = "gqa" if res.get("prefill_gqa_rel_err", 1.0) < 2e-2 else "expand"
    prefix = 50
    for how in ("bias_gqa", "bias_expand", "boolmask"):
        try:
            attn.K[0][base : base + prefix].normal_()
            attn.V[0][base : base + prefix].normal_()
            out = attn.chunked(base, n, prefix, how)(0, q, k, v).float()
            kf = attn.K[0][base : base + prefix + n].float()
            vf = attn.V[0][base : base + prefix + n].float()
            ref = ref_causal(q.float(), kf, vf, prefix)
            res[f"chunked_{how}_rel_err"] = float((out - ref).norm() / ref.norm())
        except Exception as e:
            res[f"chunked_{how}_error"] = repr(e)[:300]
    return res


def gpu_info(torch):
    p = torch.cuda.get_device_properties(0)
    info = {
        "device_name": torch.cuda.get_device_name(0),
        "sm_count": p.multi_processor_count,
        "total_memory_gib": p.total_memory / 2**30,
        "capability": f"{p.major}.{p.minor}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    try:
        q = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu"
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except Exception as e:
        info["nvidia_smi"] = repr(e)
    return info


def measure(args) -> dict:
    import torch

    torch.manual_seed(args.seed)
    quick = args.quick
    prefill_n = [128, 1024, 4096] if quick else PREFILL_N
    decode_b = [1, 16, 128] if quick else DECODE_B
    decode_c = [256, 2048] if quick else DECODE_C
    chunked = CHUNKED[:2] if quick else CHUNKED
    mixed = MIXED[:1] if quick else MIXED
    eager_decode = EAGER_DECODE[:2] if quick else EAGER_DECODE
    eager_prefill = EAGER_PREFILL[:1] if quick else EAGER_PREFILL

    data: dict = {"meta": gpu_info(torch), "points": []}
    data["meta"]["kv_pool_tokens"] = args.kv_tokens
    data["meta"]["seed"] = args.seed
    out_path = args.out

    def save():
        if out_path:
            with open(out_path, "w") as f:
                json.dump(data, f, indent=1)

    print(json.dumps(data["meta"], indent=1), flush=True)
    data["meta"]["ceilings"] = ceilings(torch)
    print("ceilings", data["meta"]["ceilings"], flush=True)
    t0 = time.perf_counter()
    W, K, V = build(torch, args.kv_tokens, args.seed)
    torch.cuda.synchronize()
    data["meta"]["build_s"] = time.perf_counter() - t0
    data["meta"]["mem_after_build_gib"] = torch.cuda.memory_allocated() / 2**30
    attn = Attn(torch, K, V, "gqa")
    chk = check_attention(torch, attn)
    data["meta"]["attention_check"] = chk
    print("attention check", chk, flush=True)
    gen = torch.Generator(device="cuda")
    gen.manual_seed(args.seed + 1)

    def ids(T):
        return torch.randint(0, VOCAB, (T,), device="cuda", generator=gen)

    def rec(kind, params, feats, fn, graph, extra=None):
        p = {"kind": kind, **params, **feats, "graph": graph}
        if extra:
            p.update(extra)
        try:
            p.update(bench(torch, fn, graph))
        except Exception as e:
            p["error"] = repr(e)[:400]
            torch.cuda.synchronize()
        torch.cuda.empty_cache()
        data["points"].append(p)
        print(
            f"{kind:8s} {json.dumps(params):40s} graph={int(graph)} "
            + (f"{p['ms']:9.3f} ms  finite={p['finite']}" if "ms" in p else p["error"]),
            flush=True,
        )
        save()
        return p

    # decode mode: pick the faster correct flash path
    modes = [m for m in ("gqa", "pack") if chk.get(f"decode_{m}_rel_err", 1.0) < 2e-2]
    if not modes:
        raise SystemExit(f"no correct decode attention path: {chk}")
    best = None
    for m in modes:
        attn.decode_mode = m
        B, C = 64, 2048
        i, pos = ids(B), torch.full((B,), C, device="cuda", dtype=torch.long)
        fn = partial(forward, torch, W, i, pos, attn.decode(0, B, C), slice(None))
        p = rec("modesel", {"mode": m, "B": B, "C": C}, {}, fn, True)
        if "ms" in p and p["finite"] and (best is None or p["ms"] < best[1]):
            best = (m, p["ms"])
    attn.decode_mode = best[0]
    data["meta"]["decode_attention_mode"] = best[0]
    data["meta"]["prefill_attention_mode"] = attn.prefill_mode

    # prefill: fresh sequences
    for N in prefill_n:
        i, pos = ids(N), torch.arange(N, device="cuda")
        fn = partial(forward, torch, W, i, pos, attn.prefill(0, N), slice(N - 1, N))
        for graph in [True] + ([False] if N in eager_prefill else []):
            rec(
                "prefill",
                {"N": N},
                {"prefill_tokens": N, "decode_seqs": 0, "decode_ctx": 0},
                fn,
                graph,
            )

    # decode: B sequences at context C (graph); some eager too
    for C in decode_c:
        for B in decode_b:
            if args.kv_tokens < B * (C + 1):
                continue
            i, pos = ids(B), torch.full((B,), C, device="cuda", dtype=torch.long)
            fn = partial(forward, torch, W, i, pos, attn.decode(0, B, C), slice(None))
            feats = {"prefill_tokens": 0, "decode_seqs": B, "decode_ctx": B * (C + 1)}
            for graph in [True] + ([False] if (B, C) in eager_decode else []):
                rec("decode", {"B": B, "C": C}, feats, fn, graph)

    # chunked prefill: n new tokens on top of `prefix` cached ones
    how_list = [
        h
        for h in ("bias_gqa", "bias_expand", "boolmask")
        if chk.get(f"chunked_{h}_rel_err", 1) < 2e-2
    ]
    for n, prefix in chunked:
        i, pos = ids(n), torch.arange(prefix, prefix + n, device="cuda")
        for how in how_list:
            fn = partial(
                forward, torch, W, i, pos, attn.chunked(0, n, prefix, how), slice(n - 1, n)
            )
            p = rec(
                "chunked",
                {"n": n, "prefix": prefix},
                {"prefill_tokens": n, "decode_seqs": 0, "decode_ctx": 0},
                fn,
                True,
                {"how": how},
            )
            if "ms" in p:
                break

    # mixed: fresh n-token prefill + B decodes at context C in one step
    for n, B, C in mixed:
        i = ids(n + B)
        pos = torch.cat(
            (torch.arange(n, device="cuda"), torch.full((B,), C, device="cuda", dtype=torch.long))
        )
        rows = torch.cat(
            (torch.tensor([n - 1], device="cuda"), torch.arange(n, n + B, device="cuda"))
        )
        fn = partial(forward, torch, W, i, pos, attn.mixed(n, 16384, B, C), rows)
        feats = {"prefill_tokens": n, "decode_seqs": B, "decode_ctx": B * (C + 1)}
        rec("mixed", {"n": n, "B": B, "C": C}, feats, fn, True)

    data["meta"]["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    data["meta"]["measure_s"] = time.perf_counter() - t0
    save()
    return data


# ---------------------------------------------------------------------------------------------
# fitting (numpy only)

FEATS4 = ("one", "prefill_tokens", "decode_seqs", "decode_ctx")
FEATS5 = (*FEATS4, "prefill_tokens_sq")
FEATS5A = (*FEATS4, "prefill_attn_pairs")


def feat(p: dict, name: str) -> float:
    if name == "one":
        return 1.0
    if name == "prefill_tokens_sq":
        return float(p["prefill_tokens"]) ** 2
    if name == "prefill_attn_pairs":  # (query, key) pairs of prefill attention this step
        n = p["prefill_tokens"]
        return float(n * p.get("prefix", 0) + n * (n + 1) // 2)
    return float(p[name])


def fit(points: list[dict], names=FEATS4, weighted: bool = True) -> dict:
    """Least squares (relative error if weighted), coefficients forced >= 0 by dropping negatives."""
    X = np.array([[feat(p, n) for n in names] for p in points])
    y = np.array([p["ms"] for p in points])
    w = 1.0 / y if weighted else np.ones_like(y)
    scale = np.abs(X).max(axis=0)
    scale[scale == 0] = 1.0
    active = list(range(len(names)))
    while True:
        A = (X[:, active] / scale[active]) * w[:, None]
        c, *_ = np.linalg.lstsq(A, y * w, rcond=None)
        c = c / scale[active]
        if (c >= 0).all() or len(active) == 1:
            break
        active.pop(int(np.argmin(c)))
    coef = np.zeros(len(names))
    coef[active] = c
    return {n: float(v) for n, v in zip(names, coef, strict=True)}


def predict(coef: dict, p: dict) -> float:
    return sum(v * feat(p, n) for n, v in coef.items())


def errors(coef: dict, points: list[dict]) -> dict:
    by: dict[str, list[float]] = {}
    for p in points:
        by.setdefault(p["kind"], []).append(predict(coef, p) / p["ms"] - 1.0)
    out = {}
    for k, e in by.items():
        a = np.abs(np.array(e))
        out[k] = {
            "n": len(e),
            "median_abs_rel_err": float(np.median(a)),
            "max_abs_rel_err": float(a.max()),
            "mean_signed_rel_err": float(np.mean(e)),
        }
    return out


def analyse(data: dict) -> dict:
    ok = [p for p in data["points"] if "ms" in p and p.get("finite", False)]
    g = [p for p in ok if p["graph"]]
    train = [p for p in g if p["kind"] in ("prefill", "decode")]
    held = [p for p in g if p["kind"] in ("chunked", "mixed")]
    res = {}
    chunked = [p for p in held if p["kind"] == "chunked"]
    for label, names, weighted, extra in (
        ("linear4_rel", FEATS4, True, []),
        ("linear4_abs", FEATS4, False, []),
        ("quad5_rel", FEATS5, True, []),
        # the attention-pair term needs prefixes to be identified: chunked points are fitted too
        ("attn5_rel", FEATS5A, True, chunked),
    ):
        c = fit(train + extra, names, weighted)
        res[label] = {"coef_ms": c, "errors": errors(c, train + held)}
    # eager vs graph
    eg = []
    for p in ok:
        if p["graph"]:
            continue
        twin = next(
            (
                q
                for q in g
                if q["kind"] == p["kind"] and all(q.get(k) == p.get(k) for k in ("N", "B", "C"))
            ),
            None,
        )
        if twin:
            eg.append(
                {
                    "kind": p["kind"],
                    "N": p.get("N"),
                    "B": p.get("B"),
                    "C": p.get("C"),
                    "eager_ms": p["ms"],
                    "graph_ms": twin["ms"],
                    "diff_ms": p["ms"] - twin["ms"],
                }
            )
    res["eager_vs_graph"] = eg
    # additivity of mixed steps: measured vs prefill-alone + decode-alone (each measured)
    add = []
    for p in g:
        if p["kind"] != "mixed":
            continue
        pre = next((q for q in g if q["kind"] == "prefill" and q["N"] == p["n"]), None)
        dec = next(
            (q for q in g if q["kind"] == "decode" and q["B"] == p["B"] and q["C"] == p["C"]), None
        )
        if pre and dec:
            add.append(
                {
                    "n": p["n"],
                    "B": p["B"],
                    "C": p["C"],
                    "mixed_ms": p["ms"],
                    "prefill_ms": pre["ms"],
                    "decode_ms": dec["ms"],
                    "sum_ms": pre["ms"] + dec["ms"],
                    "linear4_pred_ms": predict(res["linear4_rel"]["coef_ms"], p),
                }
            )
    res["mixed_additivity"] = add
    return res


def report(data: dict, res: dict) -> None:
    c4 = res["linear4_rel"]["coef_ms"]
    c5 = res["quad5_rel"]["coef_ms"]
    print("\n== points (graph replays unless noted; pred = 4-term fit) ==")
    c5a = res["attn5_rel"]["coef_ms"]
    print(
        f"{'kind':8s} {'params':28s} {'ms':>9s} {'pred':>9s} {'err':>7s} {'quad5':>7s} {'attn5':>7s}"
    )
    for p in data["points"]:
        if "ms" not in p or p["kind"] == "modesel":
            continue
        params = {k: p[k] for k in ("N", "n", "prefix", "B", "C") if k in p}
        tag = "" if p["graph"] else " eager"
        pr, pr5, pr5a = predict(c4, p), predict(c5, p), predict(c5a, p)
        print(
            f"{p['kind'] + tag:8s} {json.dumps(params):28s} {p['ms']:9.3f} {pr:9.3f} "
            f"{pr / p['ms'] - 1:+7.1%} {pr5 / p['ms'] - 1:+7.1%} {pr5a / p['ms'] - 1:+7.1%}"
        )
    print("\n== eager vs CUDA graph ==")
    for e in res["eager_vs_graph"]:
        print(
            f"  {e['kind']} N={e['N']} B={e['B']} C={e['C']}: eager {e['eager_ms']:.3f} graph "
            f"{e['graph_ms']:.3f} (+{e['diff_ms']:.3f} ms)"
        )
    print("\n== mixed-step additivity ==")
    for a in res["mixed_additivity"]:
        print(
            f"  n={a['n']} B={a['B']} C={a['C']}: mixed {a['mixed_ms']:.2f} ms, prefill+decode alone "
            f"{a['sum_ms']:.2f}, 4-term fit {a['linear4_pred_ms']:.2f}"
        )
    print("\n== fits (coefficients; ms) ==")
    for label in ("linear4_rel", "linear4_abs", "quad5_rel", "attn5_rel"):
        c = res[label]["coef_ms"]
        print(
            f"  {label}: overhead {c['one']:.3f} ms, prefill_token {c['prefill_tokens'] * 1e3:.2f} us, "
            f"decode_seq {c['decode_seqs'] * 1e3:.2f} us, decode_ctx_token {c['decode_ctx'] * 1e6:.2f} ns"
            + (
                f", prefill_token^2 {c['prefill_tokens_sq'] * 1e9:.3f} ps"
                if "prefill_tokens_sq" in c
                else ""
            )
            + (
                f", prefill_attn_pair {c['prefill_attn_pairs'] * 1e9:.3f} ps"
                if "prefill_attn_pairs" in c
                else ""
            )
        )
        for k, e in res[label]["errors"].items():
            print(
                f"      {k:8s} n={e['n']:2d} median |err| {e['median_abs_rel_err']:6.1%}  max {e['max_abs_rel_err']:6.1%}"
                f"  mean {e['mean_signed_rel_err']:+6.1%}"
            )
    m = data["meta"]
    print(
        f"\n{m.get('device_name')} | torch {m.get('torch')} cuda {m.get('cuda')} | decode attn "
        f"{m.get('decode_attention_mode')} prefill attn {m.get('prefill_attention_mode')} | {m.get('ceilings')}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_step_times.json")
    )
    ap.add_argument("--fit-only", metavar="JSON", help="refit and print from a saved JSON (no GPU)")
    ap.add_argument("--quick", action="store_true", help="a few points only (smoke test)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--kv-tokens", type=int, default=300_000, help="K/V pool size in tokens (128 KiB each)"
    )
    args = ap.parse_args()
    if args.fit_only:
        with open(args.fit_only) as f:
            data = json.load(f)
    else:
        data = measure(args)
    res = analyse(data)
    data["fit"] = res
    if not args.fit_only and args.out:
        with open(args.out, "w") as f:
            json.dump(data, f, indent=1)
    report(data, res)


if __name__ == "__main__":
    sys.exit(main())
