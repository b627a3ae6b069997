//! Run with: cargo bench --bench dispatch
//!
//! `Router::route` end to end (hash a 16K-token prompt, match, score, book), against
//! 64 workers (target ≤ 50 µs) and 4,096 workers (≤ 200 µs) whose index holds a
//! realistic 2M entries (benches/common). Each iteration routes one request and frees
//! it, so the scoreboard stays at a steady size.

mod common;

use common::{mixed_queries, BLOCK};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use router_core::router::RouteOptions;

fn bench_route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_16k_tokens");
    g.throughput(Throughput::Elements(1));
    for &(workers, policy) in &[(64u64, "kv_aware"), (4096, "kv_aware"), (64, "round_robin")] {
        let (router, w) = common::router_with(workers, policy);
        // Prompts: realistic 1,024-block (16K-token) prompts from the workload.
        let prompts = common::route_prompts(&w, 64, 1024 * BLOCK);
        let _ = mixed_queries;
        // Background load: a few requests in flight per worker.
        for i in 0..(workers as usize * 2) {
            router
                .route(
                    &format!("bg{i}"),
                    &prompts[i % prompts.len()][..2048],
                    &RouteOptions::default(),
                )
                .unwrap();
        }
        let mut i = 0usize;
        g.bench_function(
            BenchmarkId::from_parameter(format!("{workers}_workers_{policy}")),
            |b| {
                b.iter(|| {
                    i += 1;
                    let id = i.to_string();
                    let d = router
                        .route(
                            &id,
                            black_box(&prompts[i % prompts.len()]),
                            &RouteOptions::default(),
                        )
                        .unwrap();
                    router.on_finish(&id).unwrap();
                    d.overlap_blocks
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench_route);
criterion_main!(benches);
