//! Property test: the prefix index against a naive model, under random event orders.
//!
//! The model keeps, per worker, every engine block it holds with the *full token prefix*
//! that block stands for (or "unknown" for an orphan), and answers a query by checking
//! prefixes directly: no hashing, no interning, no shared nodes. Events are generated the
//! way engines produce them (engine hash = a per-worker-seeded hash of the token prefix,
//! sometimes with an extra key), with stores of known and unknown parents, duplicates,
//! removals child-before-parent, unknown removals, clears and worker removal. After
//! every step the index's internal invariants are checked; at every query and at the
//! end, `find_matches` must agree with the model.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use router_core::events::{DecodedBatch, DecodedEvent};
use router_core::hashing::hash_blocks;
use router_core::protocols::{EngineBlockHash, WorkerKey};
use router_core::PrefixIndex;

const BS: usize = 2;
const WORKERS: u64 = 3;

/// An engine's hash of a prefix: seeded per worker (vLLM seeds randomly per process),
/// `variant` models extra keys the router ignores (multimodal hashes...).
fn engine_hash(worker: u64, prefix: &[u32], variant: u8) -> u64 {
    let mut bytes: Vec<u8> = prefix.iter().flat_map(|t| t.to_le_bytes()).collect();
    bytes.push(variant);
    xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, 1000 + worker)
}

#[derive(Debug, Clone)]
enum Op {
    /// Store blocks `start..start+n` of `seq`; the parent is block `start-1`'s engine hash,
    /// or a random unknown hash when `unknown_parent`.
    Store {
        w: u64,
        seq: Vec<u32>,
        start: usize,
        n: usize,
        unknown_parent: bool,
        variant: u8,
    },
    /// Remove block `idx` of `seq` (any order relative to its children).
    Remove {
        w: u64,
        seq: Vec<u32>,
        idx: usize,
        variant: u8,
    },
    RemoveUnknown {
        w: u64,
        hash: u64,
    },
    Clear {
        w: u64,
    },
    /// Remove the worker and register it again (fresh state, maybe a reused slot).
    Readd {
        w: u64,
    },
    Query {
        seq: Vec<u32>,
    },
}

fn seq() -> impl Strategy<Value = Vec<u32>> {
    // Tiny vocabulary and short sequences: prefixes collide all the time.
    (1usize..=4).prop_flat_map(|blocks| prop::collection::vec(0u32..3, blocks * BS))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..WORKERS, seq(), any::<prop::sample::Index>(), 1usize..4, prop::bool::weighted(0.15), 0u8..2)
            .prop_map(|(w, seq, i, n, unknown_parent, variant)| {
                let blocks = seq.len() / BS;
                let start = i.index(blocks);
                let n = n.min(blocks - start);
                Op::Store { w, seq, start, n, unknown_parent, variant }
            }),
        3 => (0..WORKERS, seq(), any::<prop::sample::Index>(), 0u8..2).prop_map(|(w, seq, i, variant)| {
            let idx = i.index(seq.len() / BS);
            Op::Remove { w, seq, idx, variant }
        }),
        1 => (0..WORKERS, any::<u64>()).prop_map(|(w, hash)| Op::RemoveUnknown { w, hash }),
        1 => (0..WORKERS).prop_map(|w| Op::Clear { w }),
        1 => (0..WORKERS).prop_map(|w| Op::Readd { w }),
        3 => seq().prop_map(|seq| Op::Query { seq }),
    ]
}

/// One worker's blocks: engine hash → (token prefix if known, copies).
type Blocks = HashMap<u64, (Option<Vec<u32>>, u32)>;

/// Per worker, its blocks.
#[derive(Default, Clone)]
struct Model {
    workers: HashMap<u64, Blocks>,
}

impl Model {
    fn store(&mut self, w: u64, e: u64, parent: Option<u64>, tokens: &[u32]) {
        let blocks = self.workers.entry(w).or_default();
        let prefix = match parent {
            None => Some(tokens.to_vec()),
            Some(p) => blocks.get(&p).and_then(|(pp, _)| pp.clone()).map(|mut pp| {
                pp.extend_from_slice(tokens);
                pp
            }),
        };
        match blocks.get_mut(&e) {
            Some((known, copies)) => {
                *copies += 1;
                if known.is_none() {
                    *known = prefix; // promotion by a known-parent store
                }
            }
            None => {
                blocks.insert(e, (prefix, 1));
            }
        }
    }

    fn remove(&mut self, w: u64, e: u64) {
        let blocks = self.workers.entry(w).or_default();
        if let Some((_, copies)) = blocks.get_mut(&e) {
            *copies -= 1;
            if *copies == 0 {
                blocks.remove(&e);
            }
        }
    }

    fn matches(&self, query: &[u32]) -> Vec<(WorkerKey, u32)> {
        let mut out = Vec::new();
        for (&w, blocks) in &self.workers {
            let held: Vec<&Vec<u32>> = blocks.values().filter_map(|(p, _)| p.as_ref()).collect();
            let mut n = 0;
            while (n + 1) * BS <= query.len() && held.iter().any(|p| **p == query[..(n + 1) * BS]) {
                n += 1;
            }
            if n > 0 {
                out.push((WorkerKey::new(w, 0), n as u32));
            }
        }
        out.sort_unstable();
        out
    }
}

fn batch(ev: DecodedEvent, hashes: Vec<u64>, tokens: Vec<u32>) -> DecodedBatch {
    DecodedBatch {
        ts: 0.0,
        dp_rank: 0,
        events: vec![ev],
        hashes: hashes.into_iter().map(EngineBlockHash).collect(),
        tokens,
    }
}

fn run(ops: Vec<Op>, final_queries: Vec<Vec<u32>>) -> Result<(), TestCaseError> {
    let mut index = PrefixIndex::new(BS, Duration::from_secs(60));
    let mut model = Model::default();
    for w in 0..WORKERS {
        index.add_worker(WorkerKey::new(w, 0), false);
    }
    for op in ops {
        match op {
            Op::Store {
                w,
                seq,
                start,
                n,
                unknown_parent,
                variant,
            } => {
                let parent = if unknown_parent {
                    Some(engine_hash(w, &seq[..start * BS], 99) ^ 0x5555)
                } else if start == 0 {
                    None
                } else {
                    Some(engine_hash(w, &seq[..start * BS], variant))
                };
                let hashes: Vec<u64> = (start..start + n)
                    .map(|b| engine_hash(w, &seq[..(b + 1) * BS], variant))
                    .collect();
                let tokens = seq[start * BS..(start + n) * BS].to_vec();
                let mut p = parent;
                for (i, &e) in hashes.iter().enumerate() {
                    model.store(w, e, p, &tokens[i * BS..(i + 1) * BS]);
                    p = Some(e);
                }
                let ev = DecodedEvent::Stored {
                    hashes: 0..n,
                    parent: parent.map(EngineBlockHash),
                    tokens: 0..n * BS,
                    block_size: BS as u32,
                    salt: 0,
                };
                index.apply_batch(w, &batch(ev, hashes, tokens)).unwrap();
            }
            Op::Remove {
                w,
                seq,
                idx,
                variant,
            } => {
                let e = engine_hash(w, &seq[..(idx + 1) * BS], variant);
                model.remove(w, e);
                index
                    .apply_batch(
                        w,
                        &batch(DecodedEvent::Removed { hashes: 0..1 }, vec![e], vec![]),
                    )
                    .unwrap();
            }
            Op::RemoveUnknown { w, hash } => {
                model.remove(w, hash);
                index
                    .apply_batch(
                        w,
                        &batch(DecodedEvent::Removed { hashes: 0..1 }, vec![hash], vec![]),
                    )
                    .unwrap();
            }
            Op::Clear { w } => {
                model.workers.remove(&w);
                index
                    .apply_batch(w, &batch(DecodedEvent::Cleared, vec![], vec![]))
                    .unwrap();
            }
            Op::Readd { w } => {
                model.workers.remove(&w);
                index.remove_worker(WorkerKey::new(w, 0)).unwrap();
                index.add_worker(WorkerKey::new(w, 0), false);
            }
            Op::Query { seq } => {
                prop_assert_eq!(
                    index.find_matches(&hash_blocks(&seq, BS, 0)),
                    model.matches(&seq)
                );
            }
        }
        index.check_invariants();
    }
    for q in final_queries {
        prop_assert_eq!(
            index.find_matches(&hash_blocks(&q, BS, 0)),
            model.matches(&q)
        );
    }
    // Entry count: distinct known prefixes per worker.
    let want: usize = model
        .workers
        .values()
        .map(|b| {
            let mut p: Vec<&Vec<u32>> = b.values().filter_map(|(p, _)| p.as_ref()).collect();
            p.sort();
            p.dedup();
            p.len()
        })
        .sum();
    prop_assert_eq!(index.len(), want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn index_agrees_with_naive_model(
        ops in prop::collection::vec(op(), 1..120),
        queries in prop::collection::vec(seq(), 8),
    ) {
        run(ops, queries)?;
    }
}

/// Every sequence of 1 to 3 blocks over the vocabulary, stored by one worker parent
/// first and removed child first: the index must end empty.
#[test]
fn exhaustive_store_then_remove_child_first() {
    let mut index = PrefixIndex::new(BS, Duration::from_secs(60));
    let k = WorkerKey::new(0, 0);
    index.add_worker(k, false);
    let mut seqs = Vec::new();
    for n in 1..=3 * BS {
        if n % BS != 0 {
            continue;
        }
        for code in 0..3u32.pow(n as u32) {
            seqs.push(
                (0..n)
                    .map(|i| (code / 3u32.pow(i as u32)) % 3)
                    .collect::<Vec<u32>>(),
            );
        }
    }
    for s in &seqs {
        let blocks = s.len() / BS;
        let parent =
            (blocks > 1).then(|| EngineBlockHash(engine_hash(0, &s[..(blocks - 1) * BS], 0)));
        let e = engine_hash(0, s, 0);
        let ev = DecodedEvent::Stored {
            hashes: 0..1,
            parent,
            tokens: 0..BS,
            block_size: BS as u32,
            salt: 0,
        };
        index
            .apply_batch(0, &batch(ev, vec![e], s[(blocks - 1) * BS..].to_vec()))
            .unwrap();
    }
    assert_eq!(index.len(), 9 + 81 + 729);
    for s in seqs.iter().rev() {
        let e = engine_hash(0, s, 0);
        index
            .apply_batch(
                0,
                &batch(DecodedEvent::Removed { hashes: 0..1 }, vec![e], vec![]),
            )
            .unwrap();
    }
    assert_eq!(index.len(), 0);
    assert_eq!(index.num_nodes(), 0);
    index.check_invariants();
}
