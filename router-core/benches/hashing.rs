//! Run with: cargo bench --bench hashing
//!
//! Chained block hashing of a prompt (target: 16K tokens, block 16, ≤ 30 µs).

mod common;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use router_core::hash_blocks;

fn bench_hashing(c: &mut Criterion) {
    let mut rng = common::rng();
    let mut g = c.benchmark_group("hash_blocks");
    for &n in &[1024usize, 4096, 16_384, 131_072] {
        let toks = common::tokens(&mut rng, n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{n}_tokens_block16")),
            &toks,
            |b, t| b.iter(|| hash_blocks(black_box(t), 16, 0)),
        );
    }
    let toks = common::tokens(&mut rng, 16_384);
    for &bs in &[32usize, 128] {
        g.throughput(Throughput::Elements(16_384));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("16384_tokens_block{bs}")),
            &toks,
            |b, t| b.iter(|| hash_blocks(black_box(t), bs, 0)),
        );
    }
    g.finish();
}

criterion_group!(benches, bench_hashing);
criterion_main!(benches);
