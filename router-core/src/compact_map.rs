//! A compact open-addressing hash map from `u64` keys to small `Copy` values, used for
//! the index's largest table: per worker, engine hash → router hash (one entry per
//! (block, worker)).
//!
//! Why not `HashMap`: memory per entry is the index's budget (≤ 48 bytes per (block,
//! worker) entry), and a SwissTable spends a control byte per bucket, pads `(u64, u32)`
//! to 16 bytes and doubles its capacity, so its load swings between 44% and 87%: at an
//! unlucky size an entry costs 2.3× its payload. This map stores `(key, value)` slots
//! packed to 4-byte alignment (12 bytes for a `u32` value, 16 for a `u64`), has no
//! control bytes, and grows by 1.5× to a capacity of any size (buckets chosen by
//! multiply-shift "fastrange", not by masking), so its load stays within 53–80% (66% on average).
//!
//! The price is lookup latency: about 9% of keys sit more than 3 slots from home at
//! 73% load, and a random lookup costs ~1.5–2× a SwissTable's. So the latency-critical
//! `find_matches` table (router hash → worker set) stays a `HashMap`; this one serves
//! ingest, which does one lookup per stored or removed block.
//!
//! Collisions are resolved by Robin Hood linear probing (an entry far from its home
//! slot displaces one closer to its own), which keeps probe sequences short and uniform
//! at high load, and lets lookups stop early; deletion shifts the following cluster back
//! (no tombstones, so a long-lived map never degrades). Key 0 marks an empty slot; the
//! one real key 0 is stored beside the table.

/// One packed slot. `packed(4)` keeps `u64` keys at 4-byte alignment so a `u32` value
/// adds 4 bytes, not 8.
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
struct Slot<V: Copy> {
    key: u64,
    val: V,
}

const EMPTY: u64 = 0;
const MIN_CAPACITY: usize = 8;

/// A `u64 → V` map; see the module docs.
pub struct CompactMap<V: Copy + Default> {
    slots: Vec<Slot<V>>,
    len: usize,
    zero: Option<V>,
}

impl<V: Copy + Default> Default for CompactMap<V> {
    fn default() -> Self {
        CompactMap {
            slots: Vec::new(),
            len: 0,
            zero: None,
        }
    }
}

/// Mixes a key so that sequential or structured keys (small test ids, engine hashes
/// built from counters) still spread evenly; router hashes are already uniform.
#[inline(always)]
fn mix(key: u64) -> u64 {
    let h = (key ^ (key >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

impl<V: Copy + Default> CompactMap<V> {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len + self.zero.is_some() as usize
    }

    /// Heap bytes held by the table.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot<V>>()
    }

    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        ((mix(key) as u128 * self.slots.len() as u128) >> 64) as usize
    }

    #[inline(always)]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() {
            0
        } else {
            i + 1
        }
    }

    /// Distance of the entry at slot `i` (key `key`) from its home slot.
    #[inline(always)]
    fn dist(&self, i: usize, key: u64) -> usize {
        let h = self.home(key);
        if i >= h {
            i - h
        } else {
            i + self.slots.len() - h
        }
    }

    #[inline]
    fn find(&self, key: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mut i = self.home(key);
        let mut d = 0;
        loop {
            let k = self.slots[i].key;
            if k == key {
                return Some(i);
            }
            // Robin Hood invariant: had `key` been here, it would sit no farther than
            // this poorer entry; an empty slot ends the cluster.
            if k == EMPTY || self.dist(i, k) < d {
                return None;
            }
            i = self.next(i);
            d += 1;
        }
    }

    /// Looks a key up. The first four slots from its home are compared without
    /// branching on each one (a Robin Hood table at ≤ 90% load keeps almost every key
    /// within them), so the only branch a hit takes is the well-predicted "found": on a
    /// walk of consecutive lookups (find_matches) the CPU keeps speculating ahead and
    /// overlaps their cache misses instead of stalling on a mispredicted probe loop.
    #[inline]
    pub fn get(&self, key: u64) -> Option<V> {
        if key == EMPTY {
            return self.zero;
        }
        let n = self.slots.len();
        let h = self.home(key);
        if h + 4 <= n {
            let s = &self.slots[h..h + 4];
            let hit = (s[0].key == key) as u32
                | ((s[1].key == key) as u32) << 1
                | ((s[2].key == key) as u32) << 2
                | ((s[3].key == key) as u32) << 3;
            if hit != 0 {
                return Some(s[hit.trailing_zeros() as usize].val);
            }
        }
        self.find(key).map(|i| self.slots[i].val)
    }

    /// Inserts a key known to be absent (the caller just looked it up), saving the
    /// lookup that [`Self::insert`] repeats.
    pub fn insert_absent(&mut self, key: u64, val: V) {
        debug_assert!(self.get(key).is_none());
        if key == EMPTY {
            self.zero = Some(val);
            return;
        }
        if (self.len + 1) * 5 > self.slots.len() * 4 {
            let cap = (self.slots.len() * 3 / 2).max(MIN_CAPACITY);
            self.rebuild(cap);
        }
        self.insert_new(Slot { key, val });
        self.len += 1;
    }

    /// Inserts or replaces; returns the previous value.
    #[cfg(test)]
    pub fn insert(&mut self, key: u64, val: V) -> Option<V> {
        if key == EMPTY {
            return self.zero.replace(val);
        }
        if let Some(i) = self.find(key) {
            let old = self.slots[i].val;
            self.slots[i].val = val;
            return Some(old);
        }
        // Grow at 80% load, by 1.5×: linear probing's insert cost rises as 1/(1-load)²
        // (13 probes at 80%, 50 at 90%), so the upper bound is kept well below 90%.
        if (self.len + 1) * 5 > self.slots.len() * 4 {
            let cap = (self.slots.len() * 3 / 2).max(MIN_CAPACITY);
            self.rebuild(cap);
        }
        self.insert_new(Slot { key, val });
        self.len += 1;
        None
    }

    fn insert_new(&mut self, mut slot: Slot<V>) {
        let mut i = self.home(slot.key);
        let mut d = 0;
        loop {
            let k = self.slots[i].key;
            if k == EMPTY {
                self.slots[i] = slot;
                return;
            }
            let kd = self.dist(i, k);
            if kd < d {
                std::mem::swap(&mut self.slots[i], &mut slot);
                d = kd;
            }
            i = self.next(i);
            d += 1;
        }
    }

    /// Removes a key; returns its value.
    pub fn remove(&mut self, key: u64) -> Option<V> {
        if key == EMPTY {
            return self.zero.take();
        }
        let mut i = self.find(key)?;
        let val = self.slots[i].val;
        // Backward-shift deletion: pull the rest of the cluster one slot closer to home.
        loop {
            let j = self.next(i);
            let k = self.slots[j].key;
            if k == EMPTY || self.dist(j, k) == 0 {
                self.slots[i].key = EMPTY;
                break;
            }
            self.slots[i] = self.slots[j];
            i = j;
        }
        self.len -= 1;
        // Shrink when mostly empty, so a cleared worker gives its memory back.
        if self.slots.len() > MIN_CAPACITY && self.len * 4 < self.slots.len() {
            let cap = (self.len * 3 / 2).max(MIN_CAPACITY);
            self.rebuild(cap);
        }
        Some(val)
    }

    fn rebuild(&mut self, cap: usize) {
        let empty = Slot {
            key: EMPTY,
            val: V::default(),
        };
        let old = std::mem::replace(&mut self.slots, vec![empty; cap]);
        for s in old {
            if s.key != EMPTY {
                self.insert_new(s);
            }
        }
    }

    /// Every `(key, value)`, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, V)> + '_ {
        self.zero.map(|v| (EMPTY, v)).into_iter().chain(
            self.slots
                .iter()
                .filter(|s| s.key != EMPTY)
                .map(|s| (s.key, s.val)),
        )
    }

    /// Every value (the map is left empty).
    pub fn drain_values(&mut self) -> Vec<V> {
        let out: Vec<V> = self.iter().map(|(_, v)| v).collect();
        *self = Self::default();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn slots_are_packed() {
        assert_eq!(std::mem::size_of::<Slot<u32>>(), 12);
        assert_eq!(std::mem::size_of::<Slot<u64>>(), 16);
    }

    #[test]
    fn agrees_with_hashmap_under_churn() {
        let mut m: CompactMap<u64> = CompactMap::default();
        let mut r: HashMap<u64, u64> = HashMap::new();
        let mut x: u64 = 1;
        for step in 0..200_000u64 {
            // xorshift: keys from a small range (collisions, re-inserts, key 0) sometimes.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = if step % 3 == 0 { x % 512 } else { x };
            match x % 5 {
                0 | 1 => assert_eq!(m.insert(key, step), r.insert(key, step)),
                2 => assert_eq!(m.remove(key), r.remove(&key)),
                _ => assert_eq!(m.get(key), r.get(&key).copied()),
            }
            assert_eq!(m.len(), r.len());
        }
        let mut a: Vec<(u64, u64)> = m.iter().collect();
        let mut b: Vec<(u64, u64)> = r.into_iter().collect();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
    }

    #[test]
    fn load_stays_high_and_shrinks_when_emptied() {
        let mut m: CompactMap<u32> = CompactMap::default();
        for k in 1..=100_000u64 {
            m.insert(k * 7919, k as u32);
        }
        let load = m.len() as f64 / m.slots.len() as f64;
        assert!((0.5..=0.8).contains(&load), "{load}");
        for k in 1..=100_000u64 {
            assert_eq!(m.remove(k * 7919), Some(k as u32));
        }
        assert!(m.slots.len() <= 16, "{}", m.slots.len());
        assert_eq!(m.len(), 0);
    }
}
