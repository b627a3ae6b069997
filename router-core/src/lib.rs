//! bisllm router core: chained block hashing, a KV prefix index fed by vLLM's KV
//! events, a token-load scoreboard and dispatch policies, loaded by Python as
//! `bisllm._core` (bindings in `src/python/`, behind the `python` feature).
//!
//! Start at [`Router`]: one object that hashes a prompt, matches it against the
//! index, scores the workers and books the chosen one.

mod compact_map;
pub mod dispatch;
pub mod events;
pub mod hashing;
pub mod index;
pub mod protocols;
pub mod router;
pub mod scoreboard;

#[cfg(feature = "python")]
mod python;

pub use dispatch::{make_policy, CostBreakdown, Policy, PolicyConfig, POLICIES};
pub use events::{decode_batch, decode_batch_into, DecodedBatch, DecodedEvent};
pub use hashing::{hash_blocks, lora_salt, ROOT_PARENT_HASH};
pub use index::{EventsSummary, PrefixIndex};
pub use protocols::{
    BlockHash, CoreError, CoreResult, EngineBlockHash, KvEvent, KvEventBatch, WorkerKey,
};
pub use router::{RouteDecision, RouteOptions, Router, RouterConfig, WorkerRow};
pub use scoreboard::{Load, Scoreboard};
