//! Cross-module tests: vLLM-shaped payloads from an independent msgpack encoder
//! (rmp-serde) through the hand-rolled decoder, the index and `Router::route`.

use router_core::protocols::{BlockRemoved, BlockStored, KvEvent, KvEventBatch, WireBlockHash};
use router_core::router::{RouteOptions, Router, RouterConfig};
use router_core::{decode_batch, hash_blocks, CoreError, WorkerKey};

const BS: usize = 16;

fn stored(hashes: &[u64], parent: Option<u64>, tokens: &[u32]) -> KvEvent {
    KvEvent::BlockStored(BlockStored {
        block_hashes: hashes.iter().map(|&h| WireBlockHash::Int(h)).collect(),
        parent_block_hash: parent.map(WireBlockHash::Int),
        token_ids: tokens.to_vec(),
        block_size: BS as u32,
        lora_id: None,
        medium: Some("GPU".into()),
        lora_name: None,
    })
}

fn payload(events: Vec<KvEvent>, dp: u32) -> Vec<u8> {
    rmp_serde::to_vec_named(&KvEventBatch(1.25, events, Some(dp))).unwrap()
}

fn router(policy: &str) -> Router {
    let mut cfg = RouterConfig::new(BS);
    cfg.policy = policy.into();
    cfg.seed = Some(42);
    Router::new(&cfg).unwrap()
}

#[test]
fn rmp_serde_payloads_decode_to_the_same_events() {
    let toks: Vec<u32> = (0..48).map(|i| i * 100_000).collect();
    let p = payload(
        vec![
            stored(&[1, u64::MAX], None, &toks[..32]),
            KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: vec![WireBlockHash::Bytes(vec![7; 32])],
                medium: None,
            }),
            KvEvent::AllBlocksCleared {},
        ],
        2,
    );
    let b = decode_batch(&p).unwrap();
    assert_eq!((b.ts, b.dp_rank, b.events.len()), (1.25, 2, 3));
    assert_eq!(b.tokens, toks[..32]);
    assert_eq!(
        b.hashes,
        vec![
            WireBlockHash::Int(1).engine_hash(),
            WireBlockHash::Int(u64::MAX).engine_hash(),
            WireBlockHash::Bytes(vec![7; 32]).engine_hash()
        ]
    );
}

#[test]
fn events_steer_routing_and_removal_is_seen() {
    let r = router("kv_aware");
    for w in 0..4 {
        r.add_worker(WorkerKey::new(w, 0), false);
    }
    let prompt: Vec<u32> = (0..BS as u32 * 40 + 5).collect();
    // Worker 2 caches the first 30 blocks, in two batches (the second chained by parent).
    r.apply_events(
        2,
        &payload(
            vec![stored(
                &(100..120).collect::<Vec<_>>(),
                None,
                &prompt[..20 * BS],
            )],
            0,
        ),
    )
    .unwrap();
    r.apply_events(
        2,
        &payload(
            vec![stored(
                &(120..130).collect::<Vec<_>>(),
                Some(119),
                &prompt[20 * BS..30 * BS],
            )],
            0,
        ),
    )
    .unwrap();
    let hashes = hash_blocks(&prompt, BS, 0);
    assert_eq!(r.find_matches(&hashes), vec![(WorkerKey::new(2, 0), 30)]);
    let d = r.route("a", &prompt, &RouteOptions::default()).unwrap();
    assert_eq!(
        (d.worker, d.overlap_blocks, d.best_overlap_blocks),
        (WorkerKey::new(2, 0), 30, 30)
    );
    assert_eq!(d.prompt_blocks, 40);
    assert_eq!(d.prefill_tokens, (10 * BS + 5) as u64);
    // Evict block 10 (and so break the chain there): the overlap drops to 10.
    r.apply_events(
        2,
        &payload(
            vec![KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: vec![WireBlockHash::Int(110)],
                medium: None,
            })],
            0,
        ),
    )
    .unwrap();
    assert_eq!(r.find_matches(&hashes), vec![(WorkerKey::new(2, 0), 10)]);
    // A batch for an unregistered dp rank is refused before anything is applied.
    assert_eq!(
        r.apply_events(2, &payload(vec![KvEvent::AllBlocksCleared {}], 1)),
        Err(CoreError::UnknownWorker(WorkerKey::new(2, 1)))
    );
    assert_eq!(r.index_size(), 29);
}

#[test]
fn router_is_shareable_across_threads() {
    let r = std::sync::Arc::new(router("power_of_two"));
    for w in 0..8 {
        r.add_worker(WorkerKey::new(w, 0), false);
    }
    let prompt: Vec<u32> = (0..1024).collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (r, prompt) = (r.clone(), &prompt);
            s.spawn(move || {
                for i in 0..250 {
                    r.route(&format!("{t}-{i}"), prompt, &RouteOptions::default())
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(r.num_requests(), 1000);
    assert_eq!(r.in_flight_tokens(), 1000 * 1024);
    let rows = r.loads();
    assert_eq!(
        rows.iter().map(|w| w.load.prefill_requests).sum::<u32>(),
        1000
    );
}
