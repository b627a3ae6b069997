//! Per-worker in-flight load, booked by dispatch and released by the request lifecycle.
//!
//! ```text
//!   route() ──book──▶ Prefill ──on_first_token──▶ Decode ──on_finish──▶ (freed)
//!                        └──────────────on_finish (failed / cancelled)───────┘
//! ```
//!
//! Invariants (each checked by the unit tests):
//! * dispatch books load *before* it returns, so concurrent routes see each other;
//! * a worker's row is the sum of its live requests: prefill rows count *uncached*
//!   prompt tokens (the work the engine still has to do), decode rows count the whole
//!   sequence (prompt + generated so far: the KV the engine holds and reads per step);
//! * `in_flight_tokens = prefill_tokens + decode_tokens` is the autoscaling signal;
//! * unknown ids and transitions that do not apply are errors, never panics, and a
//!   request booked on a worker that was since removed can still be freed (rows outlive
//!   their worker's registration while requests remain).

use rustc_hash::FxHashMap;

use crate::hashing::blocks_ceil;
use crate::protocols::{CoreError, CoreResult, WorkerKey};

/// One worker's load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Uncached prompt tokens of requests still in prefill.
    pub prefill_tokens: u64,
    /// Prompt + generated tokens of decoding requests.
    pub decode_tokens: u64,
    pub prefill_requests: u32,
    pub decode_requests: u32,
    /// KV blocks held by active requests (prompt + generated, trailing partial block
    /// included), prefill and decode alike.
    pub active_blocks: u64,
}

impl Load {
    /// Uncached prefill tokens + decode sequence tokens: the autoscaling signal.
    pub fn in_flight_tokens(&self) -> u64 {
        self.prefill_tokens + self.decode_tokens
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Prefill,
    Decode,
}

/// One booked request.
#[derive(Debug, Clone)]
struct Booking {
    worker: WorkerKey,
    phase: Phase,
    prompt_tokens: u64,
    /// Uncached prompt tokens (counted as prefill load until the first token).
    prefill_tokens: u64,
    generated: u64,
    /// Blocks currently charged to the worker's `active_blocks`.
    blocks: u64,
}

/// What a new booking asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookingRequest {
    pub worker: WorkerKey,
    pub prompt_tokens: u64,
    pub prefill_tokens: u64,
}

/// Requests and per-worker load rows.
pub struct Scoreboard {
    block_size: u64,
    requests: FxHashMap<String, Booking>,
    rows: FxHashMap<WorkerKey, Load>,
    /// Live requests per worker row, so rows of removed workers can be dropped once empty.
    live: FxHashMap<WorkerKey, u32>,
}

impl Scoreboard {
    pub fn new(block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        Scoreboard {
            block_size: block_size as u64,
            requests: FxHashMap::default(),
            rows: FxHashMap::default(),
            live: FxHashMap::default(),
        }
    }

    /// The row of a worker (zeros if it has nothing booked).
    pub fn load(&self, key: WorkerKey) -> Load {
        self.rows.get(&key).copied().unwrap_or_default()
    }

    /// Requests currently booked.
    pub fn num_requests(&self) -> usize {
        self.requests.len()
    }

    /// Sum of in-flight tokens over every row (registered or not).
    pub fn in_flight_tokens(&self) -> u64 {
        self.rows.values().map(Load::in_flight_tokens).sum()
    }

    pub fn contains(&self, request_id: &str) -> bool {
        self.requests.contains_key(request_id)
    }

    /// Books a request in prefill.
    pub fn book(&mut self, request_id: &str, req: BookingRequest) -> CoreResult<()> {
        if self.requests.contains_key(request_id) {
            return Err(CoreError::DuplicateRequest(request_id.to_string()));
        }
        if req.prefill_tokens > req.prompt_tokens {
            return Err(CoreError::InvalidArgument(format!(
                "prefill tokens {} exceed prompt tokens {}",
                req.prefill_tokens, req.prompt_tokens
            )));
        }
        let blocks = blocks_ceil(req.prompt_tokens as usize, self.block_size as usize) as u64;
        let row = self.rows.entry(req.worker).or_default();
        row.prefill_tokens += req.prefill_tokens;
        row.prefill_requests += 1;
        row.active_blocks += blocks;
        *self.live.entry(req.worker).or_default() += 1;
        self.requests.insert(
            request_id.to_string(),
            Booking {
                worker: req.worker,
                phase: Phase::Prefill,
                prompt_tokens: req.prompt_tokens,
                prefill_tokens: req.prefill_tokens,
                generated: 0,
                blocks,
            },
        );
        Ok(())
    }

    /// Prefill → decode. The first token itself is not counted here; report every
    /// generated token (the first included) with [`Self::on_tokens`].
    pub fn on_first_token(&mut self, request_id: &str) -> CoreResult<()> {
        let b = self
            .requests
            .get_mut(request_id)
            .ok_or_else(|| CoreError::UnknownRequest(request_id.to_string()))?;
        if b.phase != Phase::Prefill {
            return Err(CoreError::InvalidTransition {
                id: request_id.to_string(),
                reason: "first token already reported",
            });
        }
        b.phase = Phase::Decode;
        let row = self.rows.get_mut(&b.worker).expect("row of a live booking");
        row.prefill_tokens -= b.prefill_tokens;
        row.prefill_requests -= 1;
        row.decode_tokens += b.prompt_tokens + b.generated;
        row.decode_requests += 1;
        Ok(())
    }

    /// Accounts `n` newly generated tokens. A request still in prefill moves to decode
    /// first (a stream whose first-token callback was lost must not stay prefill load).
    pub fn on_tokens(&mut self, request_id: &str, n: u64) -> CoreResult<()> {
        let phase = self
            .requests
            .get(request_id)
            .ok_or_else(|| CoreError::UnknownRequest(request_id.to_string()))?
            .phase;
        if phase == Phase::Prefill {
            self.on_first_token(request_id)?;
        }
        let bs = self.block_size;
        let b = self.requests.get_mut(request_id).expect("checked above");
        b.generated += n;
        let blocks = (b.prompt_tokens + b.generated).div_ceil(bs);
        let row = self.rows.get_mut(&b.worker).expect("row of a live booking");
        row.decode_tokens += n;
        row.active_blocks += blocks - b.blocks;
        b.blocks = blocks;
        Ok(())
    }

    /// Frees a request in any phase (completed, failed or cancelled).
    pub fn on_finish(&mut self, request_id: &str) -> CoreResult<()> {
        let b = self
            .requests
            .remove(request_id)
            .ok_or_else(|| CoreError::UnknownRequest(request_id.to_string()))?;
        let row = self.rows.get_mut(&b.worker).expect("row of a live booking");
        match b.phase {
            Phase::Prefill => {
                row.prefill_tokens -= b.prefill_tokens;
                row.prefill_requests -= 1;
            }
            Phase::Decode => {
                row.decode_tokens -= b.prompt_tokens + b.generated;
                row.decode_requests -= 1;
            }
        }
        row.active_blocks -= b.blocks;
        let live = self
            .live
            .get_mut(&b.worker)
            .expect("live count of a booking");
        *live -= 1;
        if *live == 0 {
            self.live.remove(&b.worker);
            debug_assert_eq!(self.rows[&b.worker], Load::default());
            self.rows.remove(&b.worker);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: WorkerKey = WorkerKey::new(1, 0);

    fn book(s: &mut Scoreboard, id: &str, prompt: u64, uncached: u64) {
        s.book(
            id,
            BookingRequest {
                worker: W,
                prompt_tokens: prompt,
                prefill_tokens: uncached,
            },
        )
        .unwrap();
    }

    #[test]
    fn lifecycle_accounts_and_frees() {
        let mut s = Scoreboard::new(16);
        book(&mut s, "a", 40, 24);
        let l = s.load(W);
        assert_eq!(
            (l.prefill_tokens, l.prefill_requests, l.active_blocks),
            (24, 1, 3)
        );
        s.on_first_token("a").unwrap();
        s.on_tokens("a", 9).unwrap();
        let l = s.load(W);
        assert_eq!(
            (
                l.prefill_tokens,
                l.decode_tokens,
                l.decode_requests,
                l.active_blocks
            ),
            (0, 49, 1, 4)
        );
        assert_eq!(l.in_flight_tokens(), 49);
        book(&mut s, "b", 16, 16);
        assert_eq!(s.in_flight_tokens(), 65);
        s.on_finish("a").unwrap();
        s.on_finish("b").unwrap();
        assert_eq!(s.load(W), Load::default());
        assert_eq!(s.num_requests(), 0);
    }

    #[test]
    fn errors_not_panics() {
        let mut s = Scoreboard::new(16);
        assert!(matches!(
            s.on_finish("x"),
            Err(CoreError::UnknownRequest(_))
        ));
        assert!(matches!(
            s.on_first_token("x"),
            Err(CoreError::UnknownRequest(_))
        ));
        assert!(matches!(
            s.on_tokens("x", 1),
            Err(CoreError::UnknownRequest(_))
        ));
        book(&mut s, "a", 10, 10);
        assert!(matches!(
            s.book(
                "a",
                BookingRequest {
                    worker: W,
                    prompt_tokens: 1,
                    prefill_tokens: 1
                }
            ),
            Err(CoreError::DuplicateRequest(_))
        ));
        s.on_first_token("a").unwrap();
        assert!(matches!(
            s.on_first_token("a"),
            Err(CoreError::InvalidTransition { .. })
        ));
        s.on_finish("a").unwrap();
        assert!(s.on_finish("a").is_err());
    }

    #[test]
    fn tokens_before_first_token_move_to_decode_and_cancel_in_prefill_frees() {
        let mut s = Scoreboard::new(4);
        book(&mut s, "a", 8, 8);
        s.on_tokens("a", 1).unwrap();
        assert_eq!(s.load(W).decode_tokens, 9);
        assert_eq!(s.load(W).active_blocks, 3);
        book(&mut s, "b", 8, 0);
        s.on_finish("b").unwrap();
        s.on_finish("a").unwrap();
        assert_eq!(s.load(W), Load::default());
    }
}
