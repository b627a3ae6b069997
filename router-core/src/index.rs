//! The KV prefix index: which workers hold which prefixes, fed by engine events (exact
//! workers) or by routing decisions (approximate workers).
//!
//! # The radix tree is implicit in the chained hashes
//!
//! A router block hash `h_i` ([`crate::hashing`]) folds in every block before it, so it
//! names one node of the prefix tree: the path root → `h_0` → … → `h_i`. A flat map
//! `h_i → {workers holding that prefix}` therefore *is* the radix tree, without child
//! pointers: `find_matches` walks the query's hashes in order, looks each one up, and
//! intersects the running set of candidate workers, stopping as soon as none is left.
//! Cost: O(matched blocks) hash lookups, no pointer chasing, no recursion (so dropping
//! or clearing a deep chain cannot overflow a stack).
//!
//! ```text
//!   nodes: FxHashMap<router hash, SetId> ──▶ sets: interned sorted worker-slot lists
//!   workers[slot]: Exact  { engine hash → router hash (CompactMap), orphans, duplicates }
//!                  Approx { router hash → deadline }   + one global expiry heap
//! ```
//!
//! # Interned worker sets
//!
//! Most nodes share their worker set with their neighbours (a cached sequence is held
//! by the same workers along its whole length), so a node stores a 4-byte [`SetId`]
//! into a table of distinct sets (hash-consed, refcounted). That keeps a node at 16
//! bytes whatever the number of workers, and makes `find_matches` compare set *ids*:
//! while consecutive blocks have the same id (or one already known to contain every
//! candidate) a step is one lookup and one integer compare; the sets themselves are
//! read only where the candidate set can shrink. Membership changes go through a memo
//! of `(set, ±slot) → set` transitions, so ingest rarely hashes a set's contents.
//! Sets whose refcount drops to 0 stay interned (they are often needed again) until
//! they outnumber live ones; then the memo is dropped and their ids are reused.
//!
//! # Event semantics (exact workers)
//!
//! The router does not trust engine hashes: a stored block's router hash is computed
//! from its `token_ids`, chained from its parent's *router* hash, found through the
//! worker's `engine hash → router hash` map. Every order vLLM can produce is handled:
//!
//! * **Unknown parent** (events missed before we subscribed, or a replay gap): the
//!   block's prefix tokens are unknown, so its router hash cannot be computed and it
//!   could never match from the root anyway. It is not indexed; its engine hash is
//!   remembered as an *orphan* so that its children are orphaned too and its removal
//!   is a silent no-op. Counted in [`EventsSummary::orphaned_blocks`]. If the same
//!   engine hash is later stored under a known parent, it is promoted (the engine hash
//!   pins the prefix, so the new router hash holds for every copy); already-orphaned
//!   children stay orphaned until they are stored again (a conservative miss).
//! * **Duplicate stores**: vLLM does not de-duplicate blocks, so one engine hash can be
//!   cached by several physical blocks (concurrent requests with a common prefix, one
//!   block per KV-cache group), each stored and later removed on its own. Copies are
//!   counted; the entry goes away with the last copy.
//! * **Several engine hashes, one router hash** (the engine hashes things the router
//!   ignores, e.g. multimodal `extra_keys`): the worker's membership of that node is
//!   counted the same way.
//! * **Child removed before parent**, **removal of unknown hashes**: removals are
//!   independent per block; unknown ones are no-ops.
//! * **AllBlocksCleared** drops the worker's entries at that point of the batch.
//!
//! The `medium` (GPU / CPU offload tier) is not distinguished: a block in either tier
//! is a prefix hit compared with recomputing it.
//!
//! # Approximate workers
//!
//! Workers that publish no events get *predicted* entries: `route()` inserts the
//! prompt's hashes for the chosen worker with a deadline `now + ttl`; a re-insert
//! extends it. One global min-heap of deadlines makes pruning O(expired · log n), and a
//! check of its top is all a route pays when nothing expired. Exact and predicted
//! entries never mix on one worker: switching mode clears it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use rustc_hash::{FxHashMap, FxHasher};

use crate::compact_map::CompactMap;
use crate::events::{DecodedBatch, DecodedEvent};
use crate::hashing::{hash_block, ROOT_PARENT_HASH};
use crate::protocols::{BlockHash, CoreError, CoreResult, WorkerKey};

/// A router hash as a node key, stored as two `u32`s so that a `(key, SetId)` map entry
/// is 12 bytes with 4-byte alignment instead of 16 (a quarter of the node table).
#[derive(Clone, Copy, PartialEq, Eq)]
struct NodeKey([u32; 2]);

impl NodeKey {
    #[inline(always)]
    fn new(h: u64) -> Self {
        NodeKey([h as u32, (h >> 32) as u32])
    }
}

impl Hash for NodeKey {
    #[inline(always)]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0] as u64 | (self.0[1] as u64) << 32);
    }
}

/// Id of an interned worker set.
pub type SetId = u32;
const NO_SET: SetId = u32::MAX;

/// What one `apply_batch` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventsSummary {
    pub dp_rank: u32,
    /// Blocks in `BlockStored` events (indexed, duplicate or orphaned).
    pub stored_blocks: usize,
    /// Hashes in `BlockRemoved` events (known or not).
    pub removed_blocks: usize,
    /// The batch contained `AllBlocksCleared`.
    pub cleared: bool,
    /// Stored blocks not indexed because their parent chain is unknown.
    pub orphaned_blocks: usize,
}

/// Interned, refcounted, sorted sets of worker slots (see the module docs).
#[derive(Default)]
struct SetTable {
    members: Vec<Box<[u32]>>,
    refs: Vec<u32>,
    by_content: HashTable<SetId>,
    /// `(set << 33) | (slot << 1) | is_add` → resulting set (NO_SET when empty).
    memo: FxHashMap<u64, SetId>,
    free: Vec<SetId>,
    dead: usize,
}

fn content_hash(slots: &[u32]) -> u64 {
    let mut h = FxHasher::default();
    slots.hash(&mut h);
    h.finish()
}

impl SetTable {
    #[inline]
    fn members(&self, id: SetId) -> &[u32] {
        &self.members[id as usize]
    }

    fn intern(&mut self, slots: Vec<u32>) -> SetId {
        let hash = content_hash(&slots);
        let members = &self.members;
        if let Some(&id) = self
            .by_content
            .find(hash, |&id| *members[id as usize] == *slots)
        {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.members[id as usize] = slots.into_boxed_slice();
                id
            }
            None => {
                self.members.push(slots.into_boxed_slice());
                self.refs.push(0);
                (self.members.len() - 1) as SetId
            }
        };
        // A new set starts dead (refcount 0) until a node takes it.
        self.dead += 1;
        let members = &self.members;
        self.by_content
            .insert_unique(hash, id, |&i| content_hash(&members[i as usize]));
        id
    }

    /// The set `from ∪ {slot}` (`add`) or `from \ {slot}`; `from` may be NO_SET (empty).
    fn transition(&mut self, from: SetId, slot: u32, add: bool) -> SetId {
        let key = ((from as u64) << 33) | ((slot as u64) << 1) | add as u64;
        if let Some(&to) = self.memo.get(&key) {
            return to;
        }
        let cur: &[u32] = if from == NO_SET {
            &[]
        } else {
            self.members(from)
        };
        let mut next = Vec::with_capacity(cur.len() + add as usize);
        match (cur.binary_search(&slot), add) {
            (Err(pos), true) => {
                next.extend_from_slice(&cur[..pos]);
                next.push(slot);
                next.extend_from_slice(&cur[pos..]);
            }
            (Ok(pos), false) => {
                next.extend_from_slice(&cur[..pos]);
                next.extend_from_slice(&cur[pos + 1..]);
            }
            // Callers only add absent and remove present slots.
            _ => unreachable!("set transition on a slot that is already (not) a member"),
        }
        let to = if next.is_empty() {
            NO_SET
        } else {
            self.intern(next)
        };
        self.memo.insert(key, to);
        to
    }

    #[inline]
    fn incref(&mut self, id: SetId) {
        if id != NO_SET {
            let r = &mut self.refs[id as usize];
            if *r == 0 {
                self.dead -= 1;
            }
            *r += 1;
        }
    }

    #[inline]
    fn decref(&mut self, id: SetId) {
        if id != NO_SET {
            let r = &mut self.refs[id as usize];
            *r -= 1;
            if *r == 0 {
                self.dead += 1;
            }
        }
    }

    /// Frees dead sets once they outnumber live ones (and bounds the memo). Only called
    /// between operations, when no caller holds a dead id.
    fn maybe_gc(&mut self) {
        let live = self.members.len() - self.free.len() - self.dead;
        let sweep_sets = self.dead > 1024 && self.dead > live;
        if !sweep_sets && self.memo.len() <= 1 << 20 {
            return;
        }
        self.memo.clear();
        if sweep_sets {
            for id in 0..self.members.len() as SetId {
                if self.refs[id as usize] == 0 && !self.members[id as usize].is_empty() {
                    let hash = content_hash(&self.members[id as usize]);
                    if let Ok(e) = self.by_content.find_entry(hash, |&i| i == id) {
                        e.remove();
                    }
                    self.members[id as usize] = Box::new([]);
                    self.free.push(id);
                }
            }
            self.dead = 0;
        }
    }

    fn heap_bytes(&self) -> usize {
        self.members.iter().map(|m| m.len() * 4).sum::<usize>()
            + self.members.capacity() * 16
            + self.refs.capacity() * 4
            + self.by_content.capacity() * 5
            + self.memo.capacity() * 13
    }
}

/// Per-worker state of an event-driven worker.
#[derive(Default)]
struct ExactState {
    /// Indexed blocks: engine hash → router hash (the index's largest table).
    engine: CompactMap<u64>,
    /// Blocks whose parent chain is unknown: engine hash → copies.
    orphans: FxHashMap<u64, u32>,
    /// Copies beyond the first of indexed engine hashes (usually empty).
    extra_copies: FxHashMap<u64, u32>,
    /// Engine hashes beyond the first that map to one router hash (usually empty).
    router_refs: FxHashMap<u64, u32>,
}

/// Per-worker state of an approximate worker.
#[derive(Default)]
struct ApproxState {
    /// Predicted blocks: router hash → expiry.
    deadline: FxHashMap<u64, Instant>,
}

enum Mode {
    Exact(ExactState),
    Approx(ApproxState),
}

struct WorkerIndex {
    key: WorkerKey,
    /// Distinct nodes this worker is a member of.
    indexed: usize,
    /// Unique per (worker, mode) lifetime: expiry-heap items of an earlier life are stale.
    epoch: u64,
    mode: Mode,
}

/// Reusable buffers of [`PrefixIndex::find_matches_into`].
#[derive(Default)]
pub struct MatchScratch {
    cand: Vec<u32>,
}

/// The prefix index of one model's worker pool. Single-threaded; the router wraps it
/// in a lock.
pub struct PrefixIndex {
    block_size: usize,
    ttl: Duration,
    nodes: FxHashMap<NodeKey, SetId>,
    sets: SetTable,
    workers: Vec<Option<WorkerIndex>>,
    slot_of: FxHashMap<WorkerKey, u32>,
    free_slots: Vec<u32>,
    entries: usize,
    next_epoch: u64,
    expiry: BinaryHeap<Reverse<(Instant, u64, u32, u64)>>,
}

impl PrefixIndex {
    /// An empty index for workers of `block_size` tokens per block; predicted entries
    /// live `approx_ttl`.
    pub fn new(block_size: usize, approx_ttl: Duration) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        PrefixIndex {
            block_size,
            ttl: approx_ttl,
            nodes: FxHashMap::default(),
            sets: SetTable::default(),
            workers: Vec::new(),
            slot_of: FxHashMap::default(),
            free_slots: Vec::new(),
            entries: 0,
            next_epoch: 0,
            expiry: BinaryHeap::new(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// (block, worker) entries in the index.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Distinct prefixes (nodes) held by at least one worker.
    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Registered worker keys, sorted.
    pub fn workers(&self) -> Vec<WorkerKey> {
        let mut v: Vec<WorkerKey> = self.slot_of.keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn contains_worker(&self, key: WorkerKey) -> bool {
        self.slot_of.contains_key(&key)
    }

    /// The slot of a registered worker: a small dense id, stable while it is registered.
    pub fn slot(&self, key: WorkerKey) -> Option<u32> {
        self.slot_of.get(&key).copied()
    }

    /// The key of a slot, if registered.
    pub fn key_of(&self, slot: u32) -> Option<WorkerKey> {
        self.workers.get(slot as usize)?.as_ref().map(|w| w.key)
    }

    /// One past the largest slot in use: size per-slot arrays with it.
    pub fn slot_capacity(&self) -> usize {
        self.workers.len()
    }

    /// Entries of one worker.
    pub fn worker_len(&self, key: WorkerKey) -> Option<usize> {
        self.worker(key).ok().map(|w| w.indexed)
    }

    pub fn is_approximate(&self, key: WorkerKey) -> Option<bool> {
        self.worker(key)
            .ok()
            .map(|w| matches!(w.mode, Mode::Approx(_)))
    }

    fn worker(&self, key: WorkerKey) -> CoreResult<&WorkerIndex> {
        let slot = self
            .slot_of
            .get(&key)
            .ok_or(CoreError::UnknownWorker(key))?;
        Ok(self.workers[*slot as usize]
            .as_ref()
            .expect("slot_of points at a live worker"))
    }

    fn new_mode(&mut self, approximate: bool) -> (Mode, u64) {
        self.next_epoch += 1;
        let mode = if approximate {
            Mode::Approx(ApproxState::default())
        } else {
            Mode::Exact(ExactState::default())
        };
        (mode, self.next_epoch)
    }

    /// Registers a worker; a no-op (returns false) if already registered, whatever its mode.
    pub fn add_worker(&mut self, key: WorkerKey, approximate: bool) -> bool {
        if self.slot_of.contains_key(&key) {
            return false;
        }
        let (mode, epoch) = self.new_mode(approximate);
        let w = WorkerIndex {
            key,
            indexed: 0,
            epoch,
            mode,
        };
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.workers[s as usize] = Some(w);
                s
            }
            None => {
                self.workers.push(Some(w));
                (self.workers.len() - 1) as u32
            }
        };
        self.slot_of.insert(key, slot);
        true
    }

    /// Drops a worker and all its entries.
    pub fn remove_worker(&mut self, key: WorkerKey) -> CoreResult<()> {
        self.clear_worker(key)?;
        let slot = self.slot_of.remove(&key).expect("checked by clear_worker");
        self.workers[slot as usize] = None;
        self.free_slots.push(slot);
        Ok(())
    }

    /// Drops every entry of a worker, keeping it registered in its current mode.
    pub fn clear_worker(&mut self, key: WorkerKey) -> CoreResult<()> {
        let approx = self
            .is_approximate(key)
            .ok_or(CoreError::UnknownWorker(key))?;
        self.reset_worker(key, approx);
        Ok(())
    }

    /// Switches a worker between exact and approximate, clearing its entries. A no-op
    /// if it is already in that mode.
    pub fn set_approximate(&mut self, key: WorkerKey, approximate: bool) -> CoreResult<()> {
        let cur = self
            .is_approximate(key)
            .ok_or(CoreError::UnknownWorker(key))?;
        if cur != approximate {
            self.reset_worker(key, approximate);
        }
        Ok(())
    }

    fn reset_worker(&mut self, key: WorkerKey, approximate: bool) {
        let slot = self.slot_of[&key];
        let (fresh, epoch) = self.new_mode(approximate);
        let w = self.workers[slot as usize].as_mut().unwrap();
        let old = std::mem::replace(&mut w.mode, fresh);
        w.epoch = epoch;
        // Every node the worker is in, exactly once: exact entries map engine hashes to
        // router hashes with `router_refs` counting repeats; predicted ones are distinct.
        let routers: Vec<u64> = match old {
            Mode::Exact(mut s) => s.engine.drain_values(),
            Mode::Approx(s) => s.deadline.into_keys().collect(),
        };
        let mut removed = 0;
        for r in routers {
            // Repeats of a router hash (several engine hashes) are unlinked only once.
            if let Some(&id) = self.nodes.get(&NodeKey::new(r)) {
                if self.sets.members(id).binary_search(&slot).is_ok() {
                    self.remove_member(r, slot);
                    removed += 1;
                }
            }
        }
        let w = self.workers[slot as usize].as_mut().unwrap();
        debug_assert_eq!(removed, w.indexed);
        self.entries -= w.indexed;
        w.indexed = 0;
        self.sets.maybe_gc();
    }

    fn add_member(&mut self, r: u64, slot: u32) {
        let e = self.nodes.entry(NodeKey::new(r)).or_insert(NO_SET);
        let from = *e;
        let to = self.sets.transition(from, slot, true);
        *e = to;
        self.sets.incref(to);
        self.sets.decref(from);
    }

    fn remove_member(&mut self, r: u64, slot: u32) {
        let std::collections::hash_map::Entry::Occupied(mut e) = self.nodes.entry(NodeKey::new(r))
        else {
            return;
        };
        let from = *e.get();
        let to = self.sets.transition(from, slot, false);
        if to == NO_SET {
            e.remove();
        } else {
            *e.get_mut() = to;
        }
        self.sets.incref(to);
        self.sets.decref(from);
    }

    /// Links `slot` to node `r` (counting a repeat if it is already a member), with one
    /// lookup of the node.
    fn link(&mut self, r: u64, slot: u32) {
        let e = self.nodes.entry(NodeKey::new(r)).or_insert(NO_SET);
        let from = *e;
        if from != NO_SET && self.sets.members(from).binary_search(&slot).is_ok() {
            let Some(Mode::Exact(s)) = self.workers[slot as usize].as_mut().map(|w| &mut w.mode)
            else {
                unreachable!()
            };
            *s.router_refs.entry(r).or_insert(0) += 1;
            return;
        }
        let to = self.sets.transition(from, slot, true);
        *e = to;
        self.sets.incref(to);
        self.sets.decref(from);
        self.workers[slot as usize].as_mut().unwrap().indexed += 1;
        self.entries += 1;
    }

    fn unlink(&mut self, r: u64, slot: u32) {
        let Some(Mode::Exact(s)) = self.workers[slot as usize].as_mut().map(|w| &mut w.mode) else {
            unreachable!()
        };
        if let Some(c) = s.router_refs.get_mut(&r) {
            *c -= 1;
            if *c == 0 {
                s.router_refs.remove(&r);
            }
            return;
        }
        self.remove_member(r, slot);
        self.workers[slot as usize].as_mut().unwrap().indexed -= 1;
        self.entries -= 1;
    }

    /// Applies a decoded batch of events from worker `(worker_id, batch.dp_rank)`.
    ///
    /// Validates first (worker registered, every stored block's size equals the index's),
    /// so an error leaves the index unchanged. Events for an approximate worker are
    /// validated and then ignored (its entries are predictions; switch it to exact with
    /// [`Self::set_approximate`] once its events flow): the summary then reports zeros.
    pub fn apply_batch(
        &mut self,
        worker_id: u64,
        batch: &DecodedBatch,
    ) -> CoreResult<EventsSummary> {
        let key = WorkerKey::new(worker_id, batch.dp_rank);
        let slot = *self
            .slot_of
            .get(&key)
            .ok_or(CoreError::UnknownWorker(key))?;
        for ev in &batch.events {
            if let DecodedEvent::Stored { block_size, .. } = ev {
                if *block_size as usize != self.block_size {
                    return Err(CoreError::EventDecode {
                        offset: 0,
                        reason: format!(
                            "BlockStored with block_size {} but this core uses {}",
                            block_size, self.block_size
                        ),
                    });
                }
            }
        }
        let mut summary = EventsSummary {
            dp_rank: batch.dp_rank,
            ..Default::default()
        };
        if matches!(
            self.workers[slot as usize].as_ref().unwrap().mode,
            Mode::Approx(_)
        ) {
            return Ok(summary);
        }
        let mut scratch = Vec::with_capacity(8 + 4 * self.block_size);
        for ev in &batch.events {
            match ev {
                DecodedEvent::Stored {
                    hashes,
                    parent,
                    tokens,
                    salt,
                    ..
                } => {
                    let hashes = &batch.hashes[hashes.clone()];
                    let tokens = &batch.tokens[tokens.clone()];
                    summary.stored_blocks += hashes.len();
                    let mut chain = match parent {
                        None => Some(ROOT_PARENT_HASH),
                        Some(p) => self.exact(slot).engine.get(p.0),
                    };
                    for (e, toks) in hashes.iter().zip(tokens.chunks_exact(self.block_size)) {
                        chain = self.store_block(slot, e.0, chain, toks, *salt, &mut scratch);
                        if chain.is_none() {
                            summary.orphaned_blocks += 1;
                        }
                    }
                }
                DecodedEvent::Removed { hashes } => {
                    summary.removed_blocks += hashes.len();
                    for e in &batch.hashes[hashes.clone()] {
                        self.remove_block(slot, e.0);
                    }
                }
                DecodedEvent::Cleared => {
                    summary.cleared = true;
                    self.reset_worker(key, false);
                }
            }
        }
        self.sets.maybe_gc();
        Ok(summary)
    }

    #[inline]
    fn exact(&mut self, slot: u32) -> &mut ExactState {
        match &mut self.workers[slot as usize].as_mut().unwrap().mode {
            Mode::Exact(s) => s,
            Mode::Approx(_) => unreachable!("exact-only path on an approximate worker"),
        }
    }

    /// Stores one block; returns its router hash (the next block's parent), or None
    /// when it is orphaned.
    fn store_block(
        &mut self,
        slot: u32,
        e: u64,
        parent: Option<u64>,
        tokens: &[u32],
        salt: u64,
        scratch: &mut Vec<u8>,
    ) -> Option<u64> {
        let s = self.exact(slot);
        if let Some(r) = s.engine.get(e) {
            *s.extra_copies.entry(e).or_insert(0) += 1;
            return Some(r);
        }
        let Some(p) = parent else {
            *s.orphans.entry(e).or_insert(0) += 1;
            return None;
        };
        let r = hash_block(p, tokens, salt, scratch);
        // A known-parent store of an orphaned engine hash promotes every copy.
        if let Some(copies) = s.orphans.remove(&e) {
            s.extra_copies.insert(e, copies);
        }
        s.engine.insert_absent(e, r);
        self.link(r, slot);
        Some(r)
    }

    fn remove_block(&mut self, slot: u32, e: u64) {
        let s = self.exact(slot);
        if let Some(c) = s.extra_copies.get_mut(&e) {
            *c -= 1;
            if *c == 0 {
                s.extra_copies.remove(&e);
            }
            return;
        }
        if let Some(r) = s.engine.remove(e) {
            self.unlink(r, slot);
            return;
        }
        if let Some(c) = s.orphans.get_mut(&e) {
            *c -= 1;
            if *c == 0 {
                s.orphans.remove(&e);
            }
        }
        // Unknown engine hash: a removal of something we never saw. Nothing to do.
    }

    /// Inserts (or refreshes) predicted entries for an approximate worker; a no-op for
    /// exact workers. Returns how many entries were new.
    pub fn insert_predicted(
        &mut self,
        key: WorkerKey,
        hashes: &[BlockHash],
        now: Instant,
    ) -> usize {
        let Some(&slot) = self.slot_of.get(&key) else {
            return 0;
        };
        let deadline = now + self.ttl;
        let w = self.workers[slot as usize].as_mut().unwrap();
        let epoch = w.epoch;
        let Mode::Approx(s) = &mut w.mode else {
            return 0;
        };
        let mut fresh = Vec::new();
        for h in hashes {
            match s.deadline.insert(h.0, deadline) {
                // Refreshed: its heap item will be re-pushed with the new deadline when
                // it surfaces, so the heap holds one item per live entry.
                Some(_) => {}
                None => fresh.push(h.0),
            }
        }
        for &r in &fresh {
            self.add_member(r, slot);
            self.expiry.push(Reverse((deadline, epoch, slot, r)));
        }
        let w = self.workers[slot as usize].as_mut().unwrap();
        w.indexed += fresh.len();
        self.entries += fresh.len();
        self.sets.maybe_gc();
        fresh.len()
    }

    /// Drops predicted entries whose deadline is `<= now`; returns how many.
    pub fn prune_expired(&mut self, now: Instant) -> usize {
        let mut pruned = 0;
        while let Some(&Reverse((deadline, epoch, slot, r))) = self.expiry.peek() {
            if deadline > now {
                break;
            }
            self.expiry.pop();
            let Some(w) = self.workers[slot as usize].as_mut() else {
                continue;
            };
            if w.epoch != epoch {
                continue; // the worker was cleared, switched or removed since
            }
            let Mode::Approx(s) = &mut w.mode else {
                continue;
            };
            match s.deadline.get(&r) {
                Some(&d) if d > now => {
                    self.expiry.push(Reverse((d, epoch, slot, r)));
                }
                Some(_) => {
                    s.deadline.remove(&r);
                    w.indexed -= 1;
                    self.entries -= 1;
                    self.remove_member(r, slot);
                    pruned += 1;
                }
                None => {}
            }
        }
        if pruned > 0 {
            self.sets.maybe_gc();
        }
        pruned
    }

    /// Per worker slot, how many leading blocks of `query` it holds; workers with 0 are
    /// omitted. `out` is cleared first and receives `(slot, overlap)` pairs.
    ///
    /// Walks the query in order and stops at the first block no candidate holds (see
    /// the module docs for why a set-id compare usually replaces the intersection).
    pub fn find_matches_into(
        &self,
        query: &[BlockHash],
        scratch: &mut MatchScratch,
        out: &mut Vec<(u32, u32)>,
    ) {
        out.clear();
        let Some(first) = query.first() else {
            return;
        };
        let Some(&id0) = self.nodes.get(&NodeKey::new(first.0)) else {
            return;
        };
        let cand = &mut scratch.cand;
        cand.clear();
        cand.extend_from_slice(self.sets.members(id0));
        // A set known to contain every candidate: blocks with this id change nothing.
        let mut superset = id0;
        let mut depth = 1;
        while depth < query.len() {
            let Some(&id) = self.nodes.get(&NodeKey::new(query[depth].0)) else {
                break;
            };
            if id != superset {
                let m = self.sets.members(id);
                let mut keep = 0;
                if cand.len() * 8 < m.len() {
                    for i in 0..cand.len() {
                        let c = cand[i];
                        if m.binary_search(&c).is_ok() {
                            cand[keep] = c;
                            keep += 1;
                        } else {
                            out.push((c, depth as u32));
                        }
                    }
                } else {
                    let mut j = 0;
                    for i in 0..cand.len() {
                        let c = cand[i];
                        while j < m.len() && m[j] < c {
                            j += 1;
                        }
                        if j < m.len() && m[j] == c {
                            cand[keep] = c;
                            keep += 1;
                        } else {
                            out.push((c, depth as u32));
                        }
                    }
                }
                cand.truncate(keep);
                if keep == 0 {
                    return;
                }
                superset = id;
            }
            depth += 1;
        }
        out.extend(cand.iter().map(|&c| (c, depth as u32)));
    }

    /// [`Self::find_matches_into`] keyed by worker, sorted by key.
    pub fn find_matches(&self, query: &[BlockHash]) -> Vec<(WorkerKey, u32)> {
        let mut out = Vec::new();
        self.find_matches_into(query, &mut MatchScratch::default(), &mut out);
        let mut v: Vec<(WorkerKey, u32)> = out
            .into_iter()
            .map(|(s, n)| (self.key_of(s).expect("live slot"), n))
            .collect();
        v.sort_unstable();
        v
    }

    /// Approximate heap bytes of the index's tables (capacity-based). The benches
    /// measure the real figure with a counting allocator; this is for metrics.
    pub fn approx_heap_bytes(&self) -> usize {
        let map = |cap: usize, entry: usize| cap * (entry + 1);
        let mut b = map(self.nodes.capacity(), 12) + self.sets.heap_bytes();
        for w in self.workers.iter().flatten() {
            b += match &w.mode {
                Mode::Exact(s) => {
                    s.engine.heap_bytes()
                        + map(s.orphans.capacity(), 16)
                        + map(s.extra_copies.capacity(), 16)
                        + map(s.router_refs.capacity(), 16)
                }
                Mode::Approx(s) => map(s.deadline.capacity(), 24),
            };
        }
        b + self.expiry.capacity() * 32
    }

    /// Checks internal invariants (tests and debug builds): per-worker counts match
    /// node memberships, refcounts match node references.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        let mut per_slot = vec![0usize; self.workers.len()];
        let mut refs = vec![0u32; self.sets.members.len()];
        for &id in self.nodes.values() {
            assert_ne!(id, NO_SET);
            refs[id as usize] += 1;
            for &s in self.sets.members(id) {
                per_slot[s as usize] += 1;
                assert!(self.workers[s as usize].is_some(), "node lists a free slot");
            }
        }
        assert_eq!(refs, self.sets.refs, "set refcounts");
        for (slot, w) in self.workers.iter().enumerate() {
            if let Some(w) = w {
                assert_eq!(per_slot[slot], w.indexed, "indexed count of {}", w.key);
            }
        }
        assert_eq!(per_slot.iter().sum::<usize>(), self.entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::DecodedEvent;
    use crate::hashing::hash_blocks;
    use crate::protocols::EngineBlockHash;

    const BS: usize = 4;

    fn toks(seed: u32, n_blocks: usize) -> Vec<u32> {
        (0..(n_blocks * BS) as u32)
            .map(|i| seed * 1000 + i)
            .collect()
    }

    /// Builds a one-event batch storing `hashes` (engine) with `tokens`.
    fn stored(dp: u32, hashes: &[u64], parent: Option<u64>, tokens: &[u32]) -> DecodedBatch {
        DecodedBatch {
            ts: 0.0,
            dp_rank: dp,
            events: vec![DecodedEvent::Stored {
                hashes: 0..hashes.len(),
                parent: parent.map(EngineBlockHash),
                tokens: 0..tokens.len(),
                block_size: BS as u32,
                salt: 0,
            }],
            hashes: hashes.iter().map(|&h| EngineBlockHash(h)).collect(),
            tokens: tokens.to_vec(),
        }
    }

    fn removed(dp: u32, hashes: &[u64]) -> DecodedBatch {
        DecodedBatch {
            ts: 0.0,
            dp_rank: dp,
            events: vec![DecodedEvent::Removed {
                hashes: 0..hashes.len(),
            }],
            hashes: hashes.iter().map(|&h| EngineBlockHash(h)).collect(),
            tokens: vec![],
        }
    }

    fn idx() -> PrefixIndex {
        let mut i = PrefixIndex::new(BS, Duration::from_secs(10));
        i.add_worker(WorkerKey::new(1, 0), false);
        i.add_worker(WorkerKey::new(2, 0), false);
        i
    }

    #[test]
    fn stores_chain_and_matches_prefix() {
        let mut i = idx();
        let t = toks(1, 3);
        i.apply_batch(1, &stored(0, &[10, 11], None, &t[..2 * BS]))
            .unwrap();
        i.apply_batch(1, &stored(0, &[12], Some(11), &t[2 * BS..]))
            .unwrap();
        let q = hash_blocks(&t, BS, 0);
        assert_eq!(i.find_matches(&q), vec![(WorkerKey::new(1, 0), 3)]);
        i.apply_batch(2, &stored(0, &[99], None, &t[..BS])).unwrap();
        assert_eq!(
            i.find_matches(&q),
            vec![(WorkerKey::new(1, 0), 3), (WorkerKey::new(2, 0), 1)]
        );
        // Child removed before parent, then an unknown removal.
        i.apply_batch(1, &removed(0, &[12, 77])).unwrap();
        assert_eq!(i.find_matches(&q)[0], (WorkerKey::new(1, 0), 2));
        i.check_invariants();
        assert_eq!(i.len(), 3);
    }

    #[test]
    fn orphans_are_not_indexed_and_their_children_neither() {
        let mut i = idx();
        let t = toks(2, 2);
        let s = i
            .apply_batch(1, &stored(0, &[21], Some(20), &t[..BS]))
            .unwrap();
        assert_eq!(s.orphaned_blocks, 1);
        let s = i
            .apply_batch(1, &stored(0, &[22], Some(21), &t[BS..]))
            .unwrap();
        assert_eq!(s.orphaned_blocks, 1);
        assert_eq!(i.len(), 0);
        // Removing an orphan is a no-op; promoting by a known-parent store works.
        i.apply_batch(1, &stored(0, &[21], None, &t[..BS])).unwrap();
        assert_eq!(i.len(), 1);
        i.apply_batch(1, &removed(0, &[21])).unwrap();
        assert_eq!(i.len(), 1, "the orphan copy is still cached");
        i.apply_batch(1, &removed(0, &[21])).unwrap();
        assert_eq!(i.len(), 0);
        i.check_invariants();
    }

    #[test]
    fn duplicate_stores_are_counted() {
        let mut i = idx();
        let t = toks(3, 1);
        i.apply_batch(1, &stored(0, &[30], None, &t)).unwrap();
        i.apply_batch(1, &stored(0, &[30], None, &t)).unwrap();
        i.apply_batch(1, &removed(0, &[30])).unwrap();
        assert_eq!(i.len(), 1);
        i.apply_batch(1, &removed(0, &[30])).unwrap();
        assert_eq!(i.len(), 0);
        // Two engine hashes with one router hash (e.g. different extra keys).
        i.apply_batch(1, &stored(0, &[31], None, &t)).unwrap();
        i.apply_batch(1, &stored(0, &[32], None, &t)).unwrap();
        assert_eq!(i.len(), 1);
        i.apply_batch(1, &removed(0, &[31])).unwrap();
        assert_eq!(i.len(), 1);
        i.apply_batch(1, &removed(0, &[32])).unwrap();
        assert_eq!(i.len(), 0);
        i.check_invariants();
    }

    #[test]
    fn errors_leave_the_index_unchanged() {
        let mut i = idx();
        let t = toks(4, 1);
        assert_eq!(
            i.apply_batch(9, &stored(0, &[1], None, &t)),
            Err(CoreError::UnknownWorker(WorkerKey::new(9, 0)))
        );
        assert!(
            i.apply_batch(1, &stored(3, &[1], None, &t)).is_err(),
            "dp rank 3 unknown"
        );
        let mut b = stored(0, &[1, 2], None, &toks(4, 2));
        b.events.push(DecodedEvent::Stored {
            hashes: 0..1,
            parent: None,
            tokens: 0..8,
            block_size: 8,
            salt: 0,
        });
        assert!(i.apply_batch(1, &b).is_err());
        assert_eq!(i.len(), 0);
    }

    #[test]
    fn clear_remove_and_slot_reuse() {
        let mut i = idx();
        let t = toks(5, 2);
        let q = hash_blocks(&t, BS, 0);
        i.apply_batch(1, &stored(0, &[1, 2], None, &t)).unwrap();
        i.apply_batch(2, &stored(0, &[1, 2], None, &t)).unwrap();
        assert_eq!(i.num_nodes(), 2);
        let cleared = DecodedBatch {
            events: vec![DecodedEvent::Cleared],
            ..Default::default()
        };
        assert!(i.apply_batch(1, &cleared).unwrap().cleared);
        assert_eq!(i.find_matches(&q), vec![(WorkerKey::new(2, 0), 2)]);
        i.remove_worker(WorkerKey::new(2, 0)).unwrap();
        assert!(i.find_matches(&q).is_empty());
        assert_eq!(i.num_nodes(), 0);
        assert!(i.add_worker(WorkerKey::new(3, 1), false));
        assert_eq!(i.slot(WorkerKey::new(3, 1)), Some(1));
        assert!(i.find_matches(&q).is_empty());
        i.check_invariants();
        assert!(i.remove_worker(WorkerKey::new(2, 0)).is_err());
    }

    #[test]
    fn predicted_entries_expire_and_refresh() {
        let mut i = PrefixIndex::new(BS, Duration::from_secs(10));
        let k = WorkerKey::new(7, 0);
        i.add_worker(k, true);
        let q = hash_blocks(&toks(6, 3), BS, 0);
        let t0 = Instant::now();
        assert_eq!(i.insert_predicted(k, &q[..2], t0), 2);
        assert_eq!(i.insert_predicted(k, &q, t0 + Duration::from_secs(5)), 1);
        assert_eq!(i.find_matches(&q), vec![(k, 3)]);
        assert_eq!(
            i.prune_expired(t0 + Duration::from_secs(11)),
            0,
            "refreshed"
        );
        assert_eq!(i.prune_expired(t0 + Duration::from_secs(15)), 3);
        assert!(i.find_matches(&q).is_empty());
        // Events for an approximate worker are ignored; switching clears.
        i.insert_predicted(k, &q, t0);
        assert_eq!(
            i.apply_batch(7, &stored(0, &[1], None, &toks(6, 1)))
                .unwrap()
                .stored_blocks,
            0
        );
        i.set_approximate(k, false).unwrap();
        assert_eq!(i.len(), 0);
        assert_eq!(
            i.prune_expired(t0 + Duration::from_secs(100)),
            0,
            "stale heap items"
        );
        i.check_invariants();
    }

    #[test]
    fn matches_intersect_and_exit_early() {
        let mut i = PrefixIndex::new(BS, Duration::from_secs(10));
        for w in 0..4 {
            i.add_worker(WorkerKey::new(w, 0), false);
        }
        let t = toks(8, 6);
        // Worker w holds the first w+2 blocks, worker 3 holds blocks 0,1 and 4,5 only.
        for w in 0..3u64 {
            let n = w as usize + 2;
            let hs: Vec<u64> = (0..n as u64).map(|b| 100 + b).collect();
            i.apply_batch(w, &stored(0, &hs, None, &t[..n * BS]))
                .unwrap();
        }
        i.apply_batch(3, &stored(0, &[1, 2, 3, 4, 5, 6], None, &t))
            .unwrap();
        i.apply_batch(3, &removed(0, &[3, 4])).unwrap();
        let q = hash_blocks(&t, BS, 0);
        assert_eq!(
            i.find_matches(&q),
            vec![
                (WorkerKey::new(0, 0), 2),
                (WorkerKey::new(1, 0), 3),
                (WorkerKey::new(2, 0), 4),
                (WorkerKey::new(3, 0), 2)
            ]
        );
        assert!(i.find_matches(&hash_blocks(&toks(9, 2), BS, 0)).is_empty());
        i.check_invariants();
    }

    #[test]
    fn dead_sets_are_collected() {
        let mut i = PrefixIndex::new(BS, Duration::from_secs(10));
        for w in 0..12 {
            i.add_worker(WorkerKey::new(w, 0), false);
        }
        // Many distinct subsets come and go; the set table must not grow without bound.
        for round in 0..2000u64 {
            let t = toks(round as u32 % 7, 1);
            for w in 0..12u64 {
                if (round >> (w % 11)) & 1 == 1 {
                    i.apply_batch(w, &stored(0, &[round], None, &t)).unwrap();
                }
            }
            for w in 0..12u64 {
                i.apply_batch(w, &removed(0, &[round])).unwrap();
            }
        }
        assert_eq!(i.len(), 0);
        assert!(i.sets.members.len() <= 4096, "{}", i.sets.members.len());
        i.check_invariants();
    }
}
