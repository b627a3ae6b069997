//! Run with: cargo bench --bench events
//!
//! Event ingest from raw msgpack payloads encoded exactly like vLLM's (batch array,
//! tagged-map events, ids from a 152K vocabulary): decode + rehash + apply. Each
//! iteration applies one batch storing `blocks` blocks (events of 16 blocks, i.e. a
//! 256-token prefill chunk each) and one batch removing them again (one hash per
//! BlockRemoved event, as vLLM's block pool emits them), on a worker that already holds
//! 30K entries. Throughput counts stored + removed blocks (target ≥ 10M blocks/s).

mod common;

use std::time::Duration;

use common::BLOCK;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use router_core::protocols::{
    BlockRemoved, BlockStored, KvEvent, KvEventBatch, WireBlockHash, WorkerKey,
};
use router_core::{decode_batch_into, DecodedBatch, PrefixIndex};

fn payloads(blocks: usize) -> (Vec<u8>, Vec<u8>) {
    let mut rng = common::rng();
    let toks = common::tokens(&mut rng, blocks * BLOCK);
    let engine: Vec<u64> = (0..blocks as u64)
        .map(|i| 0xabc0_0000_0000 + i * 7919)
        .collect();
    let mut stored = Vec::new();
    for (e, chunk) in engine.chunks(16).enumerate() {
        stored.push(KvEvent::BlockStored(BlockStored {
            block_hashes: chunk.iter().map(|&h| WireBlockHash::Int(h)).collect(),
            parent_block_hash: (e > 0).then(|| WireBlockHash::Int(engine[e * 16 - 1])),
            token_ids: toks[e * 16 * BLOCK..(e * 16 + chunk.len()) * BLOCK].to_vec(),
            block_size: BLOCK as u32,
            lora_id: None,
            medium: Some("GPU".into()),
            lora_name: None,
        }));
    }
    let removed = engine
        .iter()
        .rev()
        .map(|&h| {
            KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: vec![WireBlockHash::Int(h)],
                medium: Some("GPU".into()),
            })
        })
        .collect();
    let enc = |events| rmp_serde::to_vec_named(&KvEventBatch(1.7e9, events, Some(0))).unwrap();
    (enc(stored), enc(removed))
}

fn bench_events(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest");
    for &blocks in &[256usize, 1024, 4096] {
        let (stored, removed) = payloads(blocks);
        let mut index = PrefixIndex::new(BLOCK, Duration::from_secs(120));
        common::fill_realistic(&mut index, 1, 30_000);
        let mut batch = DecodedBatch::default();
        g.throughput(Throughput::Elements(2 * blocks as u64));
        g.bench_function(
            BenchmarkId::from_parameter(format!("store+remove_{blocks}_blocks")),
            |b| {
                b.iter(|| {
                    decode_batch_into(black_box(&stored), &mut batch).unwrap();
                    index.apply_batch(0, &batch).unwrap();
                    decode_batch_into(black_box(&removed), &mut batch).unwrap();
                    index.apply_batch(0, &batch).unwrap();
                })
            },
        );
        assert_eq!(index.worker_len(WorkerKey::new(0, 0)), Some(index.len()));
        g.bench_function(
            BenchmarkId::from_parameter(format!("decode_only_{blocks}_blocks")),
            |b| {
                b.iter(|| {
                    decode_batch_into(black_box(&stored), &mut batch).unwrap();
                    decode_batch_into(black_box(&removed), &mut batch).unwrap();
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench_events);
criterion_main!(benches);
