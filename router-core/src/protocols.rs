//! Identity and wire types shared by every module: router and engine block hashes,
//! worker keys, the KV events the engines publish, and the core's error enum.
//!
//! The event types here are the *owned* form of vLLM's `KVEventBatch` (see
//! [`crate::events`] for the zero-copy decoder that the hot path uses). They derive
//! `Serialize` with vLLM's field names so tests and benches can encode payloads
//! exactly the way vLLM's msgspec encoder does, and check the decoder against an
//! independent encoder.

use serde::Serialize;
use thiserror::Error;

/// A router block hash: the chained xxh3-64 of a block's tokens and every block
/// before it (see [`crate::hashing`]). Equal hashes mean equal token prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BlockHash(pub u64);

/// An engine's own block hash, kept only as an opaque id for parent links and
/// removals: the router never trusts its value (seed, algorithm and block size vary
/// by deployment).
///
/// vLLM sends a 64-bit int by default and raw bytes (a sha256 digest) when
/// `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0`. Ints keep their 64-bit pattern (negative
/// msgpack ints included); bytes are folded to 64 bits with xxh3, which keeps the
/// index entries fixed-size. A fold collision needs ~2^32 live blocks on one worker
/// to become likely, far beyond any KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EngineBlockHash(pub u64);

impl EngineBlockHash {
    /// The id of a bytes-encoded engine hash.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        EngineBlockHash(xxhash_rust::xxh3::xxh3_64(bytes))
    }
}

/// One KV cache: a worker process and its data-parallel rank. vLLM's DP ranks of one
/// server are separate caches with separate load, so they are separate keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerKey {
    pub worker_id: u64,
    pub dp_rank: u32,
}

impl WorkerKey {
    pub const fn new(worker_id: u64, dp_rank: u32) -> Self {
        WorkerKey { worker_id, dp_rank }
    }
}

impl std::fmt::Display for WorkerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {})", self.worker_id, self.dp_rank)
    }
}

/// An engine block hash as it appears on the wire (owned form, for encoding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum WireBlockHash {
    Int(u64),
    #[serde(with = "serde_bytes_compat")]
    Bytes(Vec<u8>),
}

impl WireBlockHash {
    /// The opaque id the index keys this hash by (the same as the decoder produces).
    pub fn engine_hash(&self) -> EngineBlockHash {
        match self {
            WireBlockHash::Int(v) => EngineBlockHash(*v),
            WireBlockHash::Bytes(b) => EngineBlockHash::from_bytes(b),
        }
    }
}

/// Serialize `Vec<u8>` as msgpack `bin` (serde's default would be an array of ints),
/// matching msgspec's encoding of Python `bytes`.
mod serde_bytes_compat {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
}

/// `BlockStored`: full blocks newly cached by the engine, in chain order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockStored {
    pub block_hashes: Vec<WireBlockHash>,
    /// The engine hash of the block before `block_hashes[0]`; `None` for a chain
    /// starting at the root.
    pub parent_block_hash: Option<WireBlockHash>,
    /// Tokens of all the blocks, flat: `len == block_hashes.len() * block_size`.
    pub token_ids: Vec<u32>,
    pub block_size: u32,
    pub lora_id: Option<i64>,
    pub medium: Option<String>,
    pub lora_name: Option<String>,
}

/// `BlockRemoved`: blocks evicted from the engine's cache.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockRemoved {
    pub block_hashes: Vec<WireBlockHash>,
    pub medium: Option<String>,
}

/// One KV cache event, tagged by `"type"` like vLLM's msgspec `tag=True` structs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum KvEvent {
    BlockStored(BlockStored),
    BlockRemoved(BlockRemoved),
    AllBlocksCleared {},
}

/// vLLM's `KVEventBatch`, encoded as a msgpack array `[ts, events, data_parallel_rank]`
/// (a tuple struct, so `rmp_serde::to_vec_named` writes exactly that shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KvEventBatch(pub f64, pub Vec<KvEvent>, pub Option<u32>);

/// Every error the core returns. Each variant maps to one Python exception class
/// (see `src/python/`), so callers can tell bad input from missing workers.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// The payload is not a valid vLLM KV event batch (nothing was applied).
    #[error("invalid KV event payload at byte {offset}: {reason}")]
    EventDecode { offset: usize, reason: String },
    /// The worker key was never added, or was removed.
    #[error("unknown worker {0}")]
    UnknownWorker(WorkerKey),
    /// The request id is not booked.
    #[error("unknown request {0:?}")]
    UnknownRequest(String),
    /// The request id is already booked (route called twice with one id).
    #[error("request {0:?} is already booked")]
    DuplicateRequest(String),
    /// A scoreboard transition that does not apply in the request's phase.
    #[error("request {id:?}: {reason}")]
    InvalidTransition { id: String, reason: &'static str },
    /// Every registered worker is excluded, or none is registered.
    #[error("no eligible worker (registered: {registered}, excluded: {excluded})")]
    NoEligibleWorker { registered: usize, excluded: usize },
    /// A constructor or call argument out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

pub type CoreResult<T> = Result<T, CoreError>;
