//! Run with: cargo bench --bench memory
//!
//! Not a criterion bench: prints (1) heap bytes per (block, worker) entry of the prefix
//! index at 2M entries, measured with a counting global allocator (target ≤ 48 bytes),
//! and (2) per-query latency percentiles of `find_matches` (criterion reports means;
//! the target is a p50) and of `Router::route` with 64 and 4,096 workers.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{fill_realistic, mixed_queries, query, QueryKind, BLOCK};
use router_core::index::MatchScratch;
use router_core::router::RouteOptions;
use router_core::PrefixIndex;

/// Counts live heap bytes (requested sizes: allocator slack is not included).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn percentiles(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e6;
    (at(0.5), at(0.9), at(0.99))
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    println!("## prefix index memory (64 workers, block {BLOCK}, realistic sharing)");
    println!("| entries | nodes | sharing | index heap bytes | bytes/entry |");
    println!("|---|---|---|---|---|");
    for target in [500_000usize, 1_000_000, 2_000_000, 3_000_000] {
        let mut index = PrefixIndex::new(BLOCK, Duration::from_secs(120));
        // Build, then measure the index alone: rebuild it from the same (deterministic)
        // workload after the workload's own buffers are allocated.
        let before_all = LIVE.load(Ordering::Relaxed);
        let w = fill_realistic(&mut index, 64, target);
        let with_index = LIVE.load(Ordering::Relaxed);
        drop(index);
        let workload_only = LIVE.load(Ordering::Relaxed);
        let index_bytes = with_index - workload_only;
        let _ = before_all;
        let mut index = PrefixIndex::new(BLOCK, Duration::from_secs(120));
        let w2 = fill_realistic(&mut index, 64, target);
        let entries = index.len();
        println!(
            "| {} | {} | {:.2} | {} | {:.1} |",
            entries,
            index.num_nodes(),
            entries as f64 / index.num_nodes() as f64,
            index_bytes,
            index_bytes as f64 / entries as f64
        );
        drop((w, w2));
    }
    let mut index = PrefixIndex::new(BLOCK, Duration::from_secs(120));
    fill_realistic(&mut index, 64, 2_000_000);
    latency(&index);
    drop(index);
    route_latency();
}

fn latency(index: &PrefixIndex) {
    let w = {
        // Same workload as the index (deterministic seed); rebuilt to get the queries.
        let mut scratch = PrefixIndex::new(BLOCK, Duration::from_secs(120));
        fill_realistic(&mut scratch, 64, 2_000_000)
    };
    let mut scratch = MatchScratch::default();
    let mut out = Vec::new();
    let mut rng = common::rng();
    println!();
    println!("## find_matches latency per query (1,024-block queries, 64 workers, 2M entries)");
    println!("| queries | matched blocks (mean) | p50 µs | p90 µs | p99 µs |");
    println!("|---|---|---|---|---|");
    let mut cases = vec![("realistic mix (45/45/10)", mixed_queries(&w, 20_000, 1024))];
    for (name, kind) in [
        ("continuation", QueryKind::Continuation),
        ("new conversation", QueryKind::NewConversation),
        ("miss", QueryKind::Miss),
    ] {
        cases.push((
            name,
            (0..5_000)
                .map(|_| query(&mut rng, &w, kind, 1024))
                .collect(),
        ));
    }
    for (name, qs) in cases {
        // Warm-up pass, then one timed pass.
        for q in &qs {
            index.find_matches_into(q, &mut scratch, &mut out);
        }
        let mut times = Vec::with_capacity(qs.len());
        let mut matched = 0usize;
        for q in &qs {
            let t = Instant::now();
            index.find_matches_into(q, &mut scratch, &mut out);
            times.push(t.elapsed());
            matched += out.iter().map(|&(_, n)| n as usize).max().unwrap_or(0);
        }
        let (p50, p90, p99) = percentiles(times);
        println!(
            "| {name} | {:.0} | {p50:.2} | {p90:.2} | {p99:.2} |",
            matched as f64 / qs.len() as f64
        );
    }
}

fn route_latency() {
    println!();
    println!("## Router::route latency per call (16K-token prompt incl. hashing, kv_aware)");
    println!("| workers | p50 µs | p90 µs | p99 µs |");
    println!("|---|---|---|---|");
    for workers in [64u64, 4096] {
        let (router, w) = common::router_with(workers, "kv_aware");
        let prompts = common::route_prompts(&w, 256, 1024 * BLOCK);
        for i in 0..(workers as usize * 2) {
            router
                .route(
                    &format!("bg{i}"),
                    &prompts[i % prompts.len()][..2048],
                    &RouteOptions::default(),
                )
                .unwrap();
        }
        let mut times = Vec::new();
        for i in 0..4000 {
            let id = i.to_string();
            let t = Instant::now();
            router
                .route(&id, &prompts[i % prompts.len()], &RouteOptions::default())
                .unwrap();
            times.push(t.elapsed());
            router.on_finish(&id).unwrap();
        }
        let (p50, p90, p99) = percentiles(times.split_off(500));
        println!("| {workers} | {p50:.1} | {p90:.1} | {p99:.1} |");
    }
}
