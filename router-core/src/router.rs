//! [`Router`]: the prefix index, the scoreboard and the dispatch policy behind one lock
//! — what Python sees as `bisllm._core.Core`.
//!
//! ```text
//!  route(tokens) ── hash (no lock) ──▶ lock ─▶ prune expired predictions
//!                                           ─▶ find_matches → overlap per worker
//!                                           ─▶ policy.select(candidates, load)
//!                                           ─▶ scoreboard.book   (before returning)
//!                                           ─▶ predicted entries (approximate worker)
//!  apply_events(payload) ── decode + validate (no lock) ──▶ lock ─▶ index.apply_batch
//! ```
//!
//! One `parking_lot::Mutex` guards everything: a route must see the load booked by the
//! route before it (or two concurrent requests would both pick the idle worker), so
//! match → score → book is one critical section. The expensive parts that need no
//! shared state (hashing the prompt, decoding an event payload) run before the lock is
//! taken, so threads overlap on them. Critical sections are tens of microseconds.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::dispatch::{make_policy, Candidate, CostBreakdown, Policy, PolicyConfig, RequestShape};
use crate::events::{decode_batch, DecodedBatch};
use crate::hashing::hash_blocks;
use crate::index::{EventsSummary, MatchScratch, PrefixIndex};
use crate::protocols::{BlockHash, CoreError, CoreResult, WorkerKey};
use crate::scoreboard::{BookingRequest, Load, Scoreboard};

/// Largest accepted block size (engines use 16 to 256 tokens).
pub const MAX_BLOCK_SIZE: usize = 1 << 16;
/// Longest accepted lifetime of predicted entries (deadlines must not overflow `Instant`).
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Construction parameters (see `Core.__init__` in the stub for their meaning).
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    pub block_size: usize,
    pub policy: String,
    pub overlap_weight: f64,
    pub temperature: f64,
    /// RNG seed; `None` seeds from the OS.
    pub seed: Option<u64>,
    pub approx_ttl: Duration,
}

impl RouterConfig {
    pub fn new(block_size: usize) -> Self {
        RouterConfig {
            block_size,
            policy: "kv_aware".to_string(),
            overlap_weight: 1.0,
            temperature: 0.0,
            seed: None,
            approx_ttl: Duration::from_secs(120),
        }
    }
}

/// What [`Router::route`] chose and why.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteDecision {
    pub worker: WorkerKey,
    pub overlap_blocks: u32,
    /// The largest overlap any eligible worker had.
    pub best_overlap_blocks: u32,
    pub prompt_blocks: u32,
    pub prompt_tokens: u64,
    /// Uncached prompt tokens booked as prefill load.
    pub prefill_tokens: u64,
    pub cost: CostBreakdown,
    pub policy: &'static str,
}

/// One worker's scoreboard row plus its index state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerRow {
    pub key: WorkerKey,
    pub load: Load,
    pub indexed_blocks: usize,
    pub approximate: bool,
}

/// A route call's inputs besides the tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteOptions<'a> {
    pub salt: u64,
    pub exclude: &'a [WorkerKey],
    pub expected_output_tokens: u64,
}

struct Inner {
    index: PrefixIndex,
    scoreboard: Scoreboard,
    policy: Box<dyn Policy>,
    rng: StdRng,
    /// Registered workers sorted by key, with their index slots (policies see
    /// candidates in key order, which makes round robin and seeded runs deterministic).
    sorted: Vec<(WorkerKey, u32)>,
    matches: Vec<(u32, u32)>,
    match_scratch: MatchScratch,
    overlap_by_slot: Vec<u32>,
    excluded_by_slot: Vec<bool>,
    candidates: Vec<Candidate>,
}

impl Inner {
    fn resort(&mut self) {
        self.sorted = self
            .index
            .workers()
            .into_iter()
            .map(|k| (k, self.index.slot(k).expect("registered")))
            .collect();
    }
}

/// The router core. `Sync`: share it between threads behind an `Arc`.
pub struct Router {
    block_size: usize,
    policy_name: &'static str,
    inner: Mutex<Inner>,
}

impl Router {
    pub fn new(cfg: &RouterConfig) -> CoreResult<Self> {
        if !(1..=MAX_BLOCK_SIZE).contains(&cfg.block_size) {
            return Err(CoreError::InvalidArgument(format!(
                "block_size must be in 1..={MAX_BLOCK_SIZE}, got {}",
                cfg.block_size
            )));
        }
        if cfg.approx_ttl.is_zero() || cfg.approx_ttl > MAX_TTL {
            return Err(CoreError::InvalidArgument(format!(
                "approx_ttl must be positive and at most {} s",
                MAX_TTL.as_secs()
            )));
        }
        let policy = make_policy(
            &cfg.policy,
            &PolicyConfig {
                overlap_weight: cfg.overlap_weight,
                temperature: cfg.temperature,
            },
        )?;
        let rng = match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Ok(Router {
            block_size: cfg.block_size,
            policy_name: policy.name(),
            inner: Mutex::new(Inner {
                index: PrefixIndex::new(cfg.block_size, cfg.approx_ttl),
                scoreboard: Scoreboard::new(cfg.block_size),
                policy,
                rng,
                sorted: Vec::new(),
                matches: Vec::new(),
                match_scratch: MatchScratch::default(),
                overlap_by_slot: Vec::new(),
                excluded_by_slot: Vec::new(),
                candidates: Vec::new(),
            }),
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn policy_name(&self) -> &'static str {
        self.policy_name
    }

    /// Registers a worker (idempotent: an existing worker keeps its mode and entries).
    pub fn add_worker(&self, key: WorkerKey, approximate: bool) {
        let mut g = self.inner.lock();
        if g.index.add_worker(key, approximate) {
            g.resort();
        }
    }

    /// The registered keys matching `worker_id` and `dp_rank` (all ranks when None).
    fn select_keys(g: &Inner, worker_id: u64, dp_rank: Option<u32>) -> CoreResult<Vec<WorkerKey>> {
        let keys: Vec<WorkerKey> = g
            .sorted
            .iter()
            .map(|&(k, _)| k)
            .filter(|k| k.worker_id == worker_id && dp_rank.is_none_or(|r| r == k.dp_rank))
            .collect();
        if keys.is_empty() {
            return Err(CoreError::UnknownWorker(WorkerKey::new(
                worker_id,
                dp_rank.unwrap_or(0),
            )));
        }
        Ok(keys)
    }

    /// Drops a worker's index entries and stops routing to it; its booked requests stay
    /// on the scoreboard until finished.
    pub fn remove_worker(&self, worker_id: u64, dp_rank: Option<u32>) -> CoreResult<()> {
        let mut g = self.inner.lock();
        for k in Self::select_keys(&g, worker_id, dp_rank)? {
            g.index.remove_worker(k)?;
        }
        g.resort();
        Ok(())
    }

    /// Drops a worker's index entries, keeping it routable.
    pub fn clear_worker(&self, worker_id: u64, dp_rank: Option<u32>) -> CoreResult<()> {
        let mut g = self.inner.lock();
        for k in Self::select_keys(&g, worker_id, dp_rank)? {
            g.index.clear_worker(k)?;
        }
        Ok(())
    }

    /// Switches between event-driven and predicted entries (clearing on a change).
    pub fn set_approximate(
        &self,
        worker_id: u64,
        approximate: bool,
        dp_rank: Option<u32>,
    ) -> CoreResult<()> {
        let mut g = self.inner.lock();
        for k in Self::select_keys(&g, worker_id, dp_rank)? {
            g.index.set_approximate(k, approximate)?;
        }
        Ok(())
    }

    pub fn workers(&self) -> Vec<WorkerKey> {
        self.inner.lock().sorted.iter().map(|&(k, _)| k).collect()
    }

    /// Decodes a raw vLLM payload (outside the lock) and applies it.
    pub fn apply_events(&self, worker_id: u64, payload: &[u8]) -> CoreResult<EventsSummary> {
        let batch = decode_batch(payload)?;
        self.apply_decoded(worker_id, &batch)
    }

    /// Applies an already decoded batch.
    pub fn apply_decoded(&self, worker_id: u64, batch: &DecodedBatch) -> CoreResult<EventsSummary> {
        self.inner.lock().index.apply_batch(worker_id, batch)
    }

    /// Per worker, leading blocks of `hashes` it holds (zeros omitted), sorted by key.
    pub fn find_matches(&self, hashes: &[BlockHash]) -> Vec<(WorkerKey, u32)> {
        self.inner.lock().index.find_matches(hashes)
    }

    /// Hash, match, score, choose and book one request.
    pub fn route(
        &self,
        request_id: &str,
        tokens: &[u32],
        opts: &RouteOptions<'_>,
    ) -> CoreResult<RouteDecision> {
        let hashes = hash_blocks(tokens, self.block_size, opts.salt);
        self.route_hashed(request_id, tokens.len(), &hashes, opts)
    }

    /// [`Self::route`] for a prompt already hashed (with the same salt).
    pub fn route_hashed(
        &self,
        request_id: &str,
        prompt_tokens: usize,
        hashes: &[BlockHash],
        opts: &RouteOptions<'_>,
    ) -> CoreResult<RouteDecision> {
        let now = Instant::now();
        let mut guard = self.inner.lock();
        let g = &mut *guard;
        if g.scoreboard.contains(request_id) {
            return Err(CoreError::DuplicateRequest(request_id.to_string()));
        }
        g.index.prune_expired(now);

        let cap = g.index.slot_capacity();
        g.overlap_by_slot.clear();
        g.overlap_by_slot.resize(cap, 0);
        g.index
            .find_matches_into(hashes, &mut g.match_scratch, &mut g.matches);
        for &(slot, n) in &g.matches {
            g.overlap_by_slot[slot as usize] = n;
        }
        g.excluded_by_slot.clear();
        g.excluded_by_slot.resize(cap, false);
        for k in opts.exclude {
            if let Some(s) = g.index.slot(*k) {
                g.excluded_by_slot[s as usize] = true;
            }
        }
        g.candidates.clear();
        let mut best_overlap = 0;
        for &(key, slot) in &g.sorted {
            if g.excluded_by_slot[slot as usize] {
                continue;
            }
            let overlap = g.overlap_by_slot[slot as usize];
            best_overlap = best_overlap.max(overlap);
            g.candidates.push(Candidate {
                key,
                overlap_blocks: overlap,
                load: g.scoreboard.load(key),
            });
        }
        if g.candidates.is_empty() {
            return Err(CoreError::NoEligibleWorker {
                registered: g.sorted.len(),
                excluded: g.sorted.len(),
            });
        }
        let shape = RequestShape {
            prompt_tokens,
            block_size: self.block_size,
            expected_output_tokens: opts.expected_output_tokens as usize,
        };
        let sel = g.policy.select(&shape, &g.candidates, &mut g.rng);
        let chosen = g.candidates[sel.index];
        // Overlap can exceed the prompt's full blocks only if hashes came from elsewhere.
        let cached_tokens = (chosen.overlap_blocks as usize * self.block_size).min(prompt_tokens);
        let prefill_tokens = (prompt_tokens - cached_tokens) as u64;
        g.scoreboard.book(
            request_id,
            BookingRequest {
                worker: chosen.key,
                prompt_tokens: prompt_tokens as u64,
                prefill_tokens,
            },
        )?;
        if g.index.is_approximate(chosen.key) == Some(true) {
            g.index.insert_predicted(chosen.key, hashes, now);
        }
        Ok(RouteDecision {
            worker: chosen.key,
            overlap_blocks: chosen.overlap_blocks,
            best_overlap_blocks: best_overlap,
            prompt_blocks: hashes.len() as u32,
            prompt_tokens: prompt_tokens as u64,
            prefill_tokens,
            cost: sel.cost,
            policy: self.policy_name,
        })
    }

    pub fn on_first_token(&self, request_id: &str) -> CoreResult<()> {
        self.inner.lock().scoreboard.on_first_token(request_id)
    }

    pub fn on_tokens(&self, request_id: &str, n: u64) -> CoreResult<()> {
        self.inner.lock().scoreboard.on_tokens(request_id, n)
    }

    pub fn on_finish(&self, request_id: &str) -> CoreResult<()> {
        self.inner.lock().scoreboard.on_finish(request_id)
    }

    /// Rows of every registered worker, sorted by key.
    pub fn loads(&self) -> Vec<WorkerRow> {
        let g = self.inner.lock();
        g.sorted
            .iter()
            .map(|&(key, _)| WorkerRow {
                key,
                load: g.scoreboard.load(key),
                indexed_blocks: g.index.worker_len(key).unwrap_or(0),
                approximate: g.index.is_approximate(key).unwrap_or(false),
            })
            .collect()
    }

    /// Sum of in-flight tokens over all workers (removed ones with live requests included:
    /// their load is real until the requests end).
    pub fn in_flight_tokens(&self) -> u64 {
        self.inner.lock().scoreboard.in_flight_tokens()
    }

    pub fn num_requests(&self) -> usize {
        self.inner.lock().scoreboard.num_requests()
    }

    pub fn index_size(&self) -> usize {
        self.inner.lock().index.len()
    }

    pub fn prune_expired(&self) -> usize {
        self.inner.lock().index.prune_expired(Instant::now())
    }

    /// Runs `f` on the index under the lock (benches, tests, metrics).
    pub fn with_index<T>(&self, f: impl FnOnce(&PrefixIndex) -> T) -> T {
        f(&self.inner.lock().index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(policy: &str) -> Router {
        let mut cfg = RouterConfig::new(4);
        cfg.policy = policy.into();
        cfg.seed = Some(1);
        Router::new(&cfg).unwrap()
    }

    #[test]
    fn route_books_and_prefers_the_cache() {
        let r = router("kv_aware");
        r.add_worker(WorkerKey::new(1, 0), true);
        r.add_worker(WorkerKey::new(2, 0), true);
        let toks: Vec<u32> = (0..64).collect();
        let d1 = r.route("a", &toks, &RouteOptions::default()).unwrap();
        assert_eq!(d1.overlap_blocks, 0);
        assert_eq!(d1.prefill_tokens, 64);
        // The first route predicted entries on its worker: once it is done, the second
        // one follows them (while it is still in prefill its load outweighs the hit).
        r.on_finish("a").unwrap();
        let d2 = r.route("b", &toks[..60], &RouteOptions::default()).unwrap();
        assert_eq!(d2.worker, d1.worker);
        assert_eq!(d2.overlap_blocks, 15);
        assert_eq!(d2.prefill_tokens, 0);
        assert!(
            r.route("b", &toks, &RouteOptions::default()).is_err(),
            "duplicate id"
        );
        let ex = [d1.worker];
        let d3 = r
            .route(
                "c",
                &toks,
                &RouteOptions {
                    exclude: &ex,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_ne!(d3.worker, d1.worker);
        assert_eq!(d3.best_overlap_blocks, 0);
        assert_eq!(r.num_requests(), 2);
        assert_eq!(r.in_flight_tokens(), 64);
        for id in ["b", "c"] {
            r.on_finish(id).unwrap();
        }
        assert_eq!(r.in_flight_tokens(), 0);
    }

    #[test]
    fn removed_workers_are_not_chosen_but_their_requests_free() {
        let r = router("round_robin");
        r.add_worker(WorkerKey::new(1, 0), false);
        r.add_worker(WorkerKey::new(1, 1), false);
        let d = r
            .route("a", &[1, 2, 3, 4], &RouteOptions::default())
            .unwrap();
        r.remove_worker(1, None).unwrap();
        assert!(matches!(
            r.route("b", &[1], &RouteOptions::default()),
            Err(CoreError::NoEligibleWorker { .. })
        ));
        assert_eq!(r.in_flight_tokens(), 4);
        r.on_finish("a").unwrap();
        assert_eq!(r.in_flight_tokens(), 0);
        assert!(r.remove_worker(1, None).is_err());
        assert_eq!(d.worker, WorkerKey::new(1, 0));
    }
}
