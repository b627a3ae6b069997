//! Run with: cargo bench --bench index
//!
//! `find_matches` on a 1,024-block query against 64 workers holding 2M (block, worker)
//! entries with realistic prefix sharing (see benches/common). Target: p50 ≤ 10 µs on
//! the realistic mix; the per-kind groups show where the time goes. The p50/p99 over
//! individual queries (criterion reports means) and the memory per entry are printed
//! by `cargo bench --bench memory`.

mod common;

use std::time::Duration;

use common::{fill_realistic, mixed_queries, query, QueryKind, BLOCK};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use router_core::index::MatchScratch;
use router_core::PrefixIndex;

fn bench_find_matches(c: &mut Criterion) {
    let mut index = PrefixIndex::new(BLOCK, Duration::from_secs(120));
    let w = fill_realistic(&mut index, 64, 2_000_000);
    let mut g = c.benchmark_group("find_matches_64w_2M");
    g.throughput(Throughput::Elements(1));
    let mut rng = common::rng();
    let mut scratch = MatchScratch::default();
    let mut out = Vec::new();
    let mut cases: Vec<(&str, Vec<Vec<router_core::BlockHash>>)> =
        vec![("mixed", mixed_queries(&w, 512, 1024))];
    for (name, kind) in [
        ("continuation", QueryKind::Continuation),
        ("new_conversation", QueryKind::NewConversation),
        ("miss", QueryKind::Miss),
    ] {
        cases.push((
            name,
            (0..256).map(|_| query(&mut rng, &w, kind, 1024)).collect(),
        ));
    }
    // Worst case: the longest cached conversation, matched for all its length.
    let longest = w
        .conversations
        .iter()
        .max_by_key(|c| c.tokens.len())
        .unwrap();
    let mut toks = longest.tokens.clone();
    toks.resize(1024 * BLOCK, 7);
    cases.push((
        "longest_cached",
        vec![router_core::hash_blocks(&toks, BLOCK, 0)],
    ));
    for (name, qs) in &cases {
        let mut i = 0;
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                i = (i + 1) % qs.len();
                index.find_matches_into(black_box(&qs[i]), &mut scratch, &mut out);
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_find_matches);
criterion_main!(benches);
