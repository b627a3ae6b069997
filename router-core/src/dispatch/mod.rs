//! Dispatch policies: given the eligible workers (their prefix overlap with the prompt
//! and their scoreboard load), pick one.
//!
//! One trait, one file per policy, a factory from config names. A policy only
//! *chooses*: hashing, matching and booking belong to [`crate::router::Router::route`],
//! so every policy sees the same inputs and can be swapped at runtime.
//!
//! | policy         | picks                                                     | cost  |
//! |----------------|-----------------------------------------------------------|-------|
//! | `kv_aware`     | min `overlap_weight·prefill_blocks + decode_blocks`      | O(n)  |
//! | `round_robin`  | the next worker in key order                              | O(1)  |
//! | `random`       | uniformly at random                                       | O(1)  |
//! | `least_tokens` | min in-flight tokens (ties at random)                     | O(n)  |
//! | `power_of_two` | the less loaded (in-flight tokens) of two random workers  | O(1)  |

mod kv_aware;
mod least_tokens;
mod power_of_two;
mod random;
mod round_robin;

pub use kv_aware::KvAware;
pub use least_tokens::LeastTokens;
pub use power_of_two::PowerOfTwo;
pub use random::Random;
pub use round_robin::RoundRobin;

use rand::rngs::StdRng;
use rand::Rng;

use crate::protocols::{CoreError, CoreResult, WorkerKey};
use crate::scoreboard::Load;

/// Names accepted by [`make_policy`], in documentation order.
pub const POLICIES: &[&str] = &[
    "kv_aware",
    "round_robin",
    "random",
    "least_tokens",
    "power_of_two",
];

/// One eligible worker as a policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub key: WorkerKey,
    /// Leading prompt blocks this worker already holds (router's index).
    pub overlap_blocks: u32,
    pub load: Load,
}

/// The request being placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestShape {
    pub prompt_tokens: usize,
    pub block_size: usize,
    /// Expected generated tokens (0 if unknown): future decode KV of this request.
    pub expected_output_tokens: usize,
}

/// kv_aware's cost terms for one worker (all zero for other policies).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CostBreakdown {
    pub cost: f64,
    pub prefill_blocks: f64,
    pub decode_blocks: f64,
}

/// A policy's choice: an index into the candidates and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Selection {
    pub index: usize,
    pub cost: CostBreakdown,
}

/// Tunables shared by the factory; each policy reads what it needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyConfig {
    /// kv_aware: weight of prefill blocks against decode blocks (≥ 0).
    pub overlap_weight: f64,
    /// kv_aware: softmax temperature over normalised costs; 0 takes the minimum.
    pub temperature: f64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            overlap_weight: 1.0,
            temperature: 0.0,
        }
    }
}

/// A dispatch policy. `select` is only called with at least one candidate, sorted by
/// key; randomness comes from the caller's seeded RNG so runs are reproducible.
pub trait Policy: Send {
    /// Config name, also the metrics label.
    fn name(&self) -> &'static str;
    fn select(
        &mut self,
        req: &RequestShape,
        candidates: &[Candidate],
        rng: &mut StdRng,
    ) -> Selection;
}

/// Builds a policy from its config name.
pub fn make_policy(name: &str, cfg: &PolicyConfig) -> CoreResult<Box<dyn Policy>> {
    Ok(match name {
        "kv_aware" => Box::new(KvAware::new(cfg.overlap_weight, cfg.temperature)?),
        "round_robin" => Box::new(RoundRobin::default()),
        "random" => Box::new(Random),
        "least_tokens" => Box::new(LeastTokens),
        "power_of_two" => Box::new(PowerOfTwo),
        other => {
            return Err(CoreError::InvalidArgument(format!(
                "unknown policy {other:?}; expected one of {POLICIES:?}"
            )))
        }
    })
}

/// Index of the minimum of `key` over `0..n`, ties broken uniformly at random (so equal
/// workers share load instead of the first one taking it all).
pub(crate) fn argmin_random_ties<K: PartialOrd + Copy>(
    n: usize,
    key: impl Fn(usize) -> K,
    rng: &mut StdRng,
) -> usize {
    let mut best = 0;
    let mut best_key = key(0);
    let mut ties = 1u32;
    for i in 1..n {
        let k = key(i);
        if k < best_key {
            best = i;
            best_key = k;
            ties = 1;
        } else if k == best_key {
            // Reservoir sampling over the ties: each is kept with probability 1/ties.
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                best = i;
            }
        }
    }
    best
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    pub fn cand(id: u64, overlap: u32, prefill: u64, decode: u64, blocks: u64) -> Candidate {
        Candidate {
            key: WorkerKey::new(id, 0),
            overlap_blocks: overlap,
            load: Load {
                prefill_tokens: prefill,
                decode_tokens: decode,
                prefill_requests: (prefill > 0) as u32,
                decode_requests: (decode > 0) as u32,
                active_blocks: blocks,
            },
        }
    }

    pub fn shape(prompt: usize) -> RequestShape {
        RequestShape {
            prompt_tokens: prompt,
            block_size: 16,
            expected_output_tokens: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn factory_knows_every_name() {
        for name in POLICIES {
            assert_eq!(
                make_policy(name, &PolicyConfig::default()).unwrap().name(),
                *name
            );
        }
        assert!(make_policy("nope", &PolicyConfig::default()).is_err());
    }

    #[test]
    fn ties_are_spread() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[argmin_random_ties(3, |_| 5, &mut rng)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
        assert_eq!(argmin_random_ties(3, |i| [3, 1, 2][i], &mut rng), 1);
    }
}
