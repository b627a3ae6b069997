//! Shared input builders for the criterion benches (fixed seeds: every run sees the
//! same workload).
//!
//! The "realistic" index follows the shape of the Mooncake trace (../shared/traces:
//! 64% of prompt blocks repeat an earlier block): every cached sequence is one of a
//! pool of shared prefixes (system prompts, tool schemas, documents; popular ones on
//! many workers) followed by a tail unique to that conversation, held by the worker the
//! conversation was routed to.
#![allow(dead_code)]

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use router_core::events::{DecodedBatch, DecodedEvent};
use router_core::protocols::{BlockHash, EngineBlockHash, WorkerKey};
use router_core::router::{Router, RouterConfig};
use router_core::PrefixIndex;

pub const BLOCK: usize = 16;
pub const SEED: u64 = 0x5eed;
/// A tokenizer-sized vocabulary (Qwen's): ids need 3- and 5-byte msgpack ints.
pub const VOCAB: u32 = 151_936;

pub fn rng() -> StdRng {
    StdRng::seed_from_u64(SEED)
}

pub fn tokens(rng: &mut StdRng, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..VOCAB)).collect()
}

/// A cached conversation: (worker index, full token sequence, prefix id).
pub struct Conversation {
    pub worker: u64,
    pub tokens: Vec<u32>,
    pub prefix: usize,
}

pub struct Workload {
    pub prefixes: Vec<Vec<u32>>,
    pub conversations: Vec<Conversation>,
}

/// Stores `tokens[start..]` (whole blocks) as one BlockStored event whose
/// parent is the engine hash of block `start - 1`. Engine hashes are a per-worker
/// function of the block's prefix position and identity, like a seeded engine hash.
pub fn stored_batch(engine: &[u64], tokens: &[u32], start: usize) -> DecodedBatch {
    let n = engine.len() - start;
    DecodedBatch {
        ts: 0.0,
        dp_rank: 0,
        events: vec![DecodedEvent::Stored {
            hashes: 0..n,
            parent: (start > 0).then(|| EngineBlockHash(engine[start - 1])),
            tokens: 0..n * BLOCK,
            block_size: BLOCK as u32,
            salt: 0, // base model, no LoRA
        }],
        hashes: engine[start..]
            .iter()
            .map(|&h| EngineBlockHash(h))
            .collect(),
        tokens: tokens[start * BLOCK..engine.len() * BLOCK].to_vec(),
    }
}

/// Engine hashes of a sequence on one worker (a deterministic stand-in for vLLM's).
pub fn engine_hashes(worker: u64, router: &[BlockHash]) -> Vec<u64> {
    router
        .iter()
        .map(|h| h.0.rotate_left(17) ^ worker.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect()
}

/// Fills `index` with `workers` workers until it holds `target_entries` (block, worker)
/// entries; returns what it stored.
pub fn fill_realistic(index: &mut PrefixIndex, workers: u64, target_entries: usize) -> Workload {
    let mut rng = rng();
    let prefixes: Vec<Vec<u32>> = (0..256)
        .map(|_| {
            let blocks = rng.random_range(64..=512);
            tokens(&mut rng, blocks * BLOCK)
        })
        .collect();
    for w in 0..workers {
        index.add_worker(WorkerKey::new(w, 0), false);
    }
    let per_worker = target_entries / workers as usize;
    let mut conversations = Vec::new();
    for w in 0..workers {
        let mut held_prefixes = std::collections::HashSet::new();
        while index.worker_len(WorkerKey::new(w, 0)).unwrap() < per_worker {
            // Zipf-like popularity: low ids are much more common.
            let u: f64 = rng.random();
            let p = ((u * u * u) * prefixes.len() as f64) as usize;
            let tail = rng.random_range(32..=384) * BLOCK;
            let mut toks = prefixes[p].clone();
            toks.extend(tokens(&mut rng, tail));
            let router = router_core::hash_blocks(&toks, BLOCK, 0);
            let engine = engine_hashes(w, &router);
            // A prefix already cached on this worker is a hit: only the tail is stored.
            let start = if held_prefixes.insert(p) {
                0
            } else {
                prefixes[p].len() / BLOCK
            };
            index
                .apply_batch(w, &stored_batch(&engine, &toks, start))
                .unwrap();
            conversations.push(Conversation {
                worker: w,
                tokens: toks,
                prefix: p,
            });
        }
    }
    Workload {
        prefixes,
        conversations,
    }
}

/// One 1,024-block query of a given kind, as router hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryKind {
    /// A follow-up turn of a cached conversation (matches its whole length on one worker).
    Continuation,
    /// A new conversation on a shared prefix (matches the prefix on many workers).
    NewConversation,
    /// Nothing cached anywhere (one lookup).
    Miss,
}

pub fn query(rng: &mut StdRng, w: &Workload, kind: QueryKind, blocks: usize) -> Vec<BlockHash> {
    let mut toks = match kind {
        QueryKind::Continuation => w.conversations[rng.random_range(0..w.conversations.len())]
            .tokens
            .clone(),
        QueryKind::NewConversation => {
            let u: f64 = rng.random();
            w.prefixes[((u * u * u) * w.prefixes.len() as f64) as usize].clone()
        }
        QueryKind::Miss => Vec::new(),
    };
    toks.truncate(blocks * BLOCK);
    let fresh = blocks * BLOCK - toks.len();
    toks.extend(tokens(rng, fresh));
    router_core::hash_blocks(&toks, BLOCK, 0)
}

/// The realistic mix used for the p50 figure: 45% follow-ups, 45% new conversations on
/// shared prefixes, 10% misses.
pub fn mixed_queries(w: &Workload, n: usize, blocks: usize) -> Vec<Vec<BlockHash>> {
    let mut rng = StdRng::seed_from_u64(SEED + 1);
    (0..n)
        .map(|i| {
            let kind = match i % 20 {
                0..=8 => QueryKind::Continuation,
                9..=17 => QueryKind::NewConversation,
                _ => QueryKind::Miss,
            };
            query(&mut rng, w, kind, blocks)
        })
        .collect()
}

/// A router with `workers` workers whose index holds `entries_per_worker` realistic
/// entries each (capped at 2M in total).
pub fn router_with(workers: u64, policy: &str) -> (Router, Workload) {
    let mut cfg = RouterConfig::new(BLOCK);
    cfg.policy = policy.into();
    cfg.seed = Some(SEED);
    cfg.approx_ttl = Duration::from_secs(120);
    let router = Router::new(&cfg).unwrap();
    // Build the same index shape, then replay it into the router through events.
    let mut scratch = PrefixIndex::new(BLOCK, Duration::from_secs(120));
    let target = (workers as usize * 31_250).min(2_000_000);
    let w = fill_realistic(&mut scratch, workers, target);
    drop(scratch);
    for k in 0..workers {
        router.add_worker(WorkerKey::new(k, 0), false);
    }
    let mut held = std::collections::HashSet::new();
    for c in &w.conversations {
        let r = router_core::hash_blocks(&c.tokens, BLOCK, 0);
        let engine = engine_hashes(c.worker, &r);
        let start = if held.insert((c.worker, c.prefix)) {
            0
        } else {
            w.prefixes[c.prefix].len() / BLOCK
        };
        router
            .apply_decoded(c.worker, &stored_batch(&engine, &c.tokens, start))
            .unwrap();
    }
    (router, w)
}

/// `n` prompts of exactly `len` tokens for `route()`: even ones continue a cached
/// conversation, odd ones start a new conversation on a shared prefix; fresh random
/// tokens fill each up to `len`.
pub fn route_prompts(w: &Workload, n: usize, len: usize) -> Vec<Vec<u32>> {
    let mut rng = rng();
    (0..n)
        .map(|i| {
            let c = &w.conversations[(i * 7919) % w.conversations.len()];
            let mut t = if i % 2 == 0 {
                c.tokens.clone()
            } else {
                w.prefixes[c.prefix].clone()
            };
            t.truncate(len);
            let fresh = len - t.len();
            t.extend(tokens(&mut rng, fresh));
            t
        })
        .collect()
}
