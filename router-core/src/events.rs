//! Zero-copy decoder of vLLM's raw KV event payloads (msgpack), built for ingest speed.
//!
//! # Wire format (vllm/distributed/kv_events.py)
//!
//! A payload is one `KVEventBatch`. vLLM has shipped three encodings over time and this
//! decoder accepts all of them, branching on the msgpack marker byte (free):
//!
//! | part  | current (`array_like` batch, tagged-map events)   | also accepted                         |
//! |-------|---------------------------------------------------|---------------------------------------|
//! | batch | array `[ts, [events...], data_parallel_rank]`      | map `{ts, events, data_parallel_rank}`; array without the rank |
//! | event | map `{"type": "BlockStored", "block_hashes": ...}` | array `["BlockStored", block_hashes, parent, token_ids, block_size, ...]` (older `array_like` events) |
//!
//! Event fields (msgspec `omit_defaults=True`, so defaulted fields may be absent):
//! `BlockStored {block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
//! lora_name, extra_keys, group_idx, kv_cache_spec_kind, ...}`, `BlockRemoved
//! {block_hashes, medium, group_idx}`, `AllBlocksCleared {}`. Unknown fields are skipped,
//! so newer vLLMs that add fields still decode. An unknown event *type* is an error:
//! silently skipping an event that changes the cache would desynchronise the index.
//! Block hashes are ints (any sign, kept as 64-bit patterns) or bytes (folded with
//! xxh3, see [`EngineBlockHash`]).
//!
//! # Why hand-rolled
//!
//! Ingest must sustain ≥ 10M blocks/s on one thread. Deserialising into owned trees
//! (serde + `rmpv::Value`) allocates per value; this decoder walks the bytes once with a
//! cursor, appends every event's hashes and tokens to two flat vectors (one allocation
//! each per batch, reusable across batches) and records ranges into them. It validates
//! the whole batch (types, lengths, trailing bytes, `token_ids.len() == n * block_size`)
//! *before* anything touches the index, so a malformed payload leaves it unchanged.

use std::ops::Range;

use crate::hashing::lora_salt;
use crate::protocols::{CoreError, CoreResult, EngineBlockHash};

/// One decoded event; ranges index into [`DecodedBatch::hashes`] / [`DecodedBatch::tokens`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodedEvent {
    Stored {
        hashes: Range<usize>,
        parent: Option<EngineBlockHash>,
        tokens: Range<usize>,
        block_size: u32,
        /// Router-hash salt of these blocks: [`lora_salt`] of `lora_name`, else 0.
        salt: u64,
    },
    Removed {
        hashes: Range<usize>,
    },
    Cleared,
}

/// A fully validated batch. Reuse one across calls with [`decode_batch_into`] to keep
/// the flat buffers' capacity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecodedBatch {
    pub ts: f64,
    /// `data_parallel_rank` of the batch (0 when absent or nil).
    pub dp_rank: u32,
    pub events: Vec<DecodedEvent>,
    pub hashes: Vec<EngineBlockHash>,
    pub tokens: Vec<u32>,
}

impl DecodedBatch {
    pub fn clear(&mut self) {
        self.ts = 0.0;
        self.dp_rank = 0;
        self.events.clear();
        self.hashes.clear();
        self.tokens.clear();
    }

    /// Blocks in `BlockStored` / `BlockRemoved` events (for throughput accounting).
    pub fn block_counts(&self) -> (usize, usize) {
        let (mut s, mut r) = (0, 0);
        for e in &self.events {
            match e {
                DecodedEvent::Stored { hashes, .. } => s += hashes.len(),
                DecodedEvent::Removed { hashes } => r += hashes.len(),
                DecodedEvent::Cleared => {}
            }
        }
        (s, r)
    }
}

/// Decodes one payload into a fresh [`DecodedBatch`].
pub fn decode_batch(payload: &[u8]) -> CoreResult<DecodedBatch> {
    let mut out = DecodedBatch::default();
    decode_batch_into(payload, &mut out)?;
    Ok(out)
}

/// Decodes one payload into `out` (cleared first). On error `out` holds garbage.
pub fn decode_batch_into(payload: &[u8], out: &mut DecodedBatch) -> CoreResult<()> {
    out.clear();
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let b = r.peek()?;
    if is_array(b) {
        let n = r.array_len()?;
        if n < 2 {
            return Err(r.err("batch array needs at least [ts, events]"));
        }
        out.ts = r.f64()?;
        decode_events(&mut r, out)?;
        if n >= 3 {
            out.dp_rank = r.opt_u32("data_parallel_rank")?.unwrap_or(0);
        }
        for _ in 3..n {
            r.skip()?;
        }
    } else if is_map(b) {
        let n = r.map_len()?;
        let (mut has_ts, mut has_events) = (false, false);
        for _ in 0..n {
            match r.str()? {
                b"ts" => {
                    out.ts = r.f64()?;
                    has_ts = true;
                }
                b"events" => {
                    if has_events {
                        return Err(r.err("duplicate events key"));
                    }
                    decode_events(&mut r, out)?;
                    has_events = true;
                }
                b"data_parallel_rank" => {
                    out.dp_rank = r.opt_u32("data_parallel_rank")?.unwrap_or(0);
                }
                _ => r.skip()?,
            }
        }
        if !has_ts || !has_events {
            return Err(r.err("batch map needs ts and events"));
        }
    } else {
        return Err(r.err("a batch must be a msgpack array [ts, events, dp_rank] or a map"));
    }
    if r.pos != payload.len() {
        return Err(r.err("trailing bytes after the batch"));
    }
    Ok(())
}

fn decode_events(r: &mut Reader<'_>, out: &mut DecodedBatch) -> CoreResult<()> {
    let n = r.array_len()?;
    r.ensure_items(n)?;
    out.events.reserve(n);
    for _ in 0..n {
        let ev = decode_event(r, out)?;
        out.events.push(ev);
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stored,
    Removed,
    Cleared,
}

fn kind_of(r: &Reader<'_>, tag: &[u8]) -> CoreResult<Kind> {
    match tag {
        b"BlockStored" => Ok(Kind::Stored),
        b"BlockRemoved" => Ok(Kind::Removed),
        b"AllBlocksCleared" => Ok(Kind::Cleared),
        other => Err(r.err(&format!(
            "unknown event type {:?}",
            String::from_utf8_lossy(other)
        ))),
    }
}

/// Fields of one event while it is being read (map keys may come in any order).
#[derive(Default)]
struct Fields {
    kind: Option<Kind>,
    hashes: Option<Range<usize>>,
    parent: Option<EngineBlockHash>,
    tokens: Option<Range<usize>>,
    block_size: Option<u32>,
    salt: u64,
}

fn decode_event(r: &mut Reader<'_>, out: &mut DecodedBatch) -> CoreResult<DecodedEvent> {
    let start = r.pos;
    let mut f = Fields::default();
    let b = r.peek()?;
    if is_map(b) {
        let n = r.map_len()?;
        for _ in 0..n {
            match r.str()? {
                b"type" => {
                    let tag = r.str()?;
                    f.kind = Some(kind_of(r, tag)?);
                }
                b"block_hashes" => f.hashes = Some(r.hash_array(&mut out.hashes)?),
                b"parent_block_hash" => f.parent = r.opt_hash()?,
                b"token_ids" => f.tokens = Some(r.u32_array(&mut out.tokens)?),
                b"block_size" => f.block_size = Some(r.u32()?),
                b"lora_name" => f.salt = r.opt_str()?.map_or(0, salt_of),
                _ => r.skip()?,
            }
        }
    } else if is_array(b) {
        // Older `array_like=True` events: the tag first, then fields in declaration order.
        let n = r.array_len()?;
        if n == 0 {
            return Err(r.err("empty event array"));
        }
        let tag = r.str()?;
        let kind = kind_of(r, tag)?;
        f.kind = Some(kind);
        for i in 1..n {
            match (kind, i) {
                (Kind::Stored | Kind::Removed, 1) => {
                    f.hashes = Some(r.hash_array(&mut out.hashes)?)
                }
                (Kind::Stored, 2) => f.parent = r.opt_hash()?,
                (Kind::Stored, 3) => f.tokens = Some(r.u32_array(&mut out.tokens)?),
                (Kind::Stored, 4) => f.block_size = Some(r.u32()?),
                (Kind::Stored, 7) => f.salt = r.opt_str()?.map_or(0, salt_of),
                _ => r.skip()?,
            }
        }
    } else {
        return Err(r.err("an event must be a msgpack map (or array) tagged by its type"));
    }
    let at = |reason: &str| CoreError::EventDecode {
        offset: start,
        reason: reason.to_string(),
    };
    match f.kind {
        None => Err(at("event without a \"type\"")),
        Some(Kind::Cleared) => Ok(DecodedEvent::Cleared),
        Some(Kind::Removed) => Ok(DecodedEvent::Removed {
            hashes: f
                .hashes
                .ok_or_else(|| at("BlockRemoved without block_hashes"))?,
        }),
        Some(Kind::Stored) => {
            let hashes = f
                .hashes
                .ok_or_else(|| at("BlockStored without block_hashes"))?;
            let tokens = f
                .tokens
                .ok_or_else(|| at("BlockStored without token_ids"))?;
            let block_size = f
                .block_size
                .ok_or_else(|| at("BlockStored without block_size"))?;
            if block_size == 0 {
                return Err(at("BlockStored with block_size 0"));
            }
            if tokens.len() != hashes.len() * block_size as usize {
                return Err(at(&format!(
                    "BlockStored has {} token ids for {} blocks of {}",
                    tokens.len(),
                    hashes.len(),
                    block_size
                )));
            }
            Ok(DecodedEvent::Stored {
                hashes,
                parent: f.parent,
                tokens,
                block_size,
                salt: f.salt,
            })
        }
    }
}

fn salt_of(name: &[u8]) -> u64 {
    // lora_salt hashes the UTF-8 bytes; msgpack str is UTF-8 already, so no check needed.
    match std::str::from_utf8(name) {
        Ok(s) => lora_salt(s),
        Err(_) => xxhash_rust::xxh3::xxh3_64(name),
    }
}

#[inline]
fn is_array(b: u8) -> bool {
    (0x90..=0x9f).contains(&b) || b == 0xdc || b == 0xdd
}

#[inline]
fn is_map(b: u8) -> bool {
    (0x80..=0x8f).contains(&b) || b == 0xde || b == 0xdf
}

/// A bounds-checked cursor over msgpack bytes. Every read returns an
/// [`CoreError::EventDecode`] with the byte offset instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[cold]
    fn err(&self, reason: &str) -> CoreError {
        CoreError::EventDecode {
            offset: self.pos,
            reason: reason.to_string(),
        }
    }

    #[inline]
    fn peek(&self) -> CoreResult<u8> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.err("truncated payload"))
    }

    #[inline]
    fn byte(&mut self) -> CoreResult<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    fn take(&mut self, n: usize) -> CoreResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.err("truncated payload"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    #[inline]
    fn be<const N: usize>(&mut self) -> CoreResult<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// Every msgpack value takes at least one byte: a container claiming more items
    /// than bytes left is truncated (and must not drive a huge allocation).
    #[inline]
    fn ensure_items(&self, n: usize) -> CoreResult<()> {
        if n > self.buf.len() - self.pos {
            Err(self.err("container length exceeds the payload"))
        } else {
            Ok(())
        }
    }

    fn array_len(&mut self) -> CoreResult<usize> {
        let b = self.byte()?;
        match b {
            0x90..=0x9f => Ok((b & 0x0f) as usize),
            0xdc => Ok(u16::from_be_bytes(self.be()?) as usize),
            0xdd => Ok(u32::from_be_bytes(self.be()?) as usize),
            _ => {
                self.pos -= 1;
                Err(self.err("expected an array"))
            }
        }
    }

    fn map_len(&mut self) -> CoreResult<usize> {
        let b = self.byte()?;
        match b {
            0x80..=0x8f => Ok((b & 0x0f) as usize),
            0xde => Ok(u16::from_be_bytes(self.be()?) as usize),
            0xdf => Ok(u32::from_be_bytes(self.be()?) as usize),
            _ => {
                self.pos -= 1;
                Err(self.err("expected a map"))
            }
        }
    }

    /// A str (or bin, which some encoders use for keys) as raw bytes.
    fn str(&mut self) -> CoreResult<&'a [u8]> {
        let b = self.byte()?;
        let n = match b {
            0xa0..=0xbf => (b & 0x1f) as usize,
            0xd9 | 0xc4 => self.byte()? as usize,
            0xda | 0xc5 => u16::from_be_bytes(self.be()?) as usize,
            0xdb | 0xc6 => u32::from_be_bytes(self.be()?) as usize,
            _ => {
                self.pos -= 1;
                return Err(self.err("expected a string"));
            }
        };
        self.take(n)
    }

    fn opt_str(&mut self) -> CoreResult<Option<&'a [u8]>> {
        if self.peek()? == 0xc0 {
            self.pos += 1;
            Ok(None)
        } else {
            self.str().map(Some)
        }
    }

    /// Any msgpack int as its 64-bit two's complement pattern, plus whether it was negative.
    #[inline]
    fn int_bits(&mut self) -> CoreResult<(u64, bool)> {
        let b = self.byte()?;
        Ok(match b {
            0x00..=0x7f => (b as u64, false),
            0xe0..=0xff => (b as i8 as i64 as u64, true),
            0xcc => (self.byte()? as u64, false),
            0xcd => (u16::from_be_bytes(self.be()?) as u64, false),
            0xce => (u32::from_be_bytes(self.be()?) as u64, false),
            0xcf => (u64::from_be_bytes(self.be()?), false),
            0xd0 => {
                let v = self.byte()? as i8 as i64;
                (v as u64, v < 0)
            }
            0xd1 => {
                let v = i16::from_be_bytes(self.be()?) as i64;
                (v as u64, v < 0)
            }
            0xd2 => {
                let v = i32::from_be_bytes(self.be()?) as i64;
                (v as u64, v < 0)
            }
            0xd3 => {
                let v = i64::from_be_bytes(self.be()?);
                (v as u64, v < 0)
            }
            _ => {
                self.pos -= 1;
                return Err(self.err("expected an integer"));
            }
        })
    }

    fn u32(&mut self) -> CoreResult<u32> {
        let (v, neg) = self.int_bits()?;
        if neg || v > u32::MAX as u64 {
            return Err(self.err("integer out of the u32 range"));
        }
        Ok(v as u32)
    }

    fn opt_u32(&mut self, _what: &str) -> CoreResult<Option<u32>> {
        if self.peek()? == 0xc0 {
            self.pos += 1;
            Ok(None)
        } else {
            self.u32().map(Some)
        }
    }

    fn f64(&mut self) -> CoreResult<f64> {
        match self.peek()? {
            0xcb => {
                self.pos += 1;
                Ok(f64::from_be_bytes(self.be()?))
            }
            0xca => {
                self.pos += 1;
                Ok(f32::from_be_bytes(self.be()?) as f64)
            }
            _ => {
                let (v, neg) = self
                    .int_bits()
                    .map_err(|_| self.err("expected a float timestamp"))?;
                Ok(if neg { v as i64 as f64 } else { v as f64 })
            }
        }
    }

    /// One engine block hash: an int of any width and sign, or bytes (bin or str).
    #[inline]
    fn hash(&mut self) -> CoreResult<EngineBlockHash> {
        let b = self.peek()?;
        if b < 0x80 {
            self.pos += 1;
            return Ok(EngineBlockHash(b as u64));
        }
        if b == 0xcf {
            self.pos += 1;
            return Ok(EngineBlockHash(u64::from_be_bytes(self.be()?)));
        }
        match b {
            0xc4..=0xc6 | 0xa0..=0xbf | 0xd9..=0xdb => {
                let s = self.str()?;
                Ok(EngineBlockHash::from_bytes(s))
            }
            _ => self
                .int_bits()
                .map(|(v, _)| EngineBlockHash(v))
                .map_err(|_| self.err("a block hash must be an int or bytes")),
        }
    }

    fn opt_hash(&mut self) -> CoreResult<Option<EngineBlockHash>> {
        if self.peek()? == 0xc0 {
            self.pos += 1;
            Ok(None)
        } else {
            self.hash().map(Some)
        }
    }

    fn hash_array(&mut self, out: &mut Vec<EngineBlockHash>) -> CoreResult<Range<usize>> {
        let n = self.array_len()?;
        self.ensure_items(n)?;
        let start = out.len();
        out.reserve(n);
        for _ in 0..n {
            let h = self.hash()?;
            out.push(h);
        }
        Ok(start..out.len())
    }

    /// The hot loop of ingest. Token ids of a real vocabulary are a random mix of 3-byte
    /// (`0xcd`, < 65536) and 5-byte (`0xce`) uints, so branching on the width would
    /// mispredict half the time: instead every `0xcc..=0xce` int is read as 4 big-endian
    /// bytes and shifted down by its width (one well-predicted branch per token). The
    /// last few tokens of a payload, fixints and anything unusual take the general path.
    fn u32_array(&mut self, out: &mut Vec<u32>) -> CoreResult<Range<usize>> {
        let n = self.array_len()?;
        self.ensure_items(n)?;
        let start = out.len();
        out.resize(start + n, 0);
        let buf = self.buf;
        let mut pos = self.pos;
        for slot in out[start..].iter_mut() {
            let Some(&b) = buf.get(pos) else {
                self.pos = pos;
                return Err(self.err("truncated payload"));
            };
            let width = b.wrapping_sub(0xcc);
            if width < 3 && pos + 5 <= buf.len() {
                let size = 1usize << width; // 1, 2 or 4 bytes
                let raw =
                    u32::from_be_bytes([buf[pos + 1], buf[pos + 2], buf[pos + 3], buf[pos + 4]]);
                *slot = raw >> (32 - 8 * size as u32);
                pos += 1 + size;
            } else if b < 0x80 {
                *slot = b as u32;
                pos += 1;
            } else {
                // u64 / signed encodings of small values, the payload's tail, and errors.
                self.pos = pos;
                *slot = self
                    .u32()
                    .map_err(|_| self.err("token ids must be u32 ints"))?;
                pos = self.pos;
            }
        }
        self.pos = pos;
        Ok(start..out.len())
    }

    /// Skips one value of any type, iteratively (a hostile payload nested a million
    /// levels deep must not overflow the stack).
    fn skip(&mut self) -> CoreResult<()> {
        let mut pending: usize = 1;
        while pending > 0 {
            pending -= 1;
            let b = self.byte()?;
            let n = match b {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
                0x80..=0x8f => {
                    pending += 2 * (b & 0x0f) as usize;
                    0
                }
                0x90..=0x9f => {
                    pending += (b & 0x0f) as usize;
                    0
                }
                0xa0..=0xbf => (b & 0x1f) as usize,
                0xcc | 0xd0 => 1,
                0xcd | 0xd1 => 2,
                0xca | 0xce | 0xd2 => 4,
                0xcb | 0xcf | 0xd3 => 8,
                0xc4 | 0xd9 => self.byte()? as usize,
                0xc5 | 0xda => u16::from_be_bytes(self.be()?) as usize,
                0xc6 | 0xdb => u32::from_be_bytes(self.be()?) as usize,
                0xdc => {
                    pending += u16::from_be_bytes(self.be()?) as usize;
                    0
                }
                0xdd => {
                    pending += u32::from_be_bytes(self.be()?) as usize;
                    0
                }
                0xde => {
                    pending += 2 * u16::from_be_bytes(self.be()?) as usize;
                    0
                }
                0xdf => {
                    pending += 2 * u32::from_be_bytes(self.be()?) as usize;
                    0
                }
                0xd4 => 2,
                0xd5 => 3,
                0xd6 => 5,
                0xd7 => 9,
                0xd8 => 17,
                0xc7 => self.byte()? as usize + 1,
                0xc8 => u16::from_be_bytes(self.be()?) as usize + 1,
                0xc9 => u32::from_be_bytes(self.be()?) as usize + 1,
                0xc1 => return Err(self.err("invalid msgpack marker 0xc1")),
            };
            self.take(n)?;
            self.ensure_items(pending)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny msgpack writer for hand-built edge cases (the integration tests use
    /// rmp-serde, an independent encoder, for the vLLM shapes).
    fn arr(n: u8) -> u8 {
        0x90 | n
    }
    fn map(n: u8) -> u8 {
        0x80 | n
    }
    fn s(out: &mut Vec<u8>, v: &str) {
        out.push(0xa0 | v.len() as u8);
        out.extend_from_slice(v.as_bytes());
    }

    /// `hashes` / `tokens` are pre-encoded elements; `n` counts (blocks, tokens).
    fn stored_enc(
        out: &mut Vec<u8>,
        hashes: &[u8],
        parent: Option<u8>,
        tokens: &[u8],
        bs: u8,
        n: (u8, u8),
    ) {
        out.push(map(7));
        s(out, "type");
        s(out, "BlockStored");
        s(out, "block_hashes");
        out.push(arr(n.0));
        out.extend_from_slice(hashes);
        s(out, "parent_block_hash");
        out.push(parent.unwrap_or(0xc0));
        s(out, "token_ids");
        out.push(arr(n.1));
        out.extend_from_slice(tokens);
        s(out, "block_size");
        out.push(bs);
        s(out, "unknown_future_field");
        out.extend_from_slice(&[arr(2), 0x01, map(1), 0xa1, b'k', 0xc0]);
        s(out, "medium");
        s(out, "GPU");
    }

    /// Stored event whose hashes and tokens are positive fixints.
    fn stored_map(out: &mut Vec<u8>, hashes: &[u8], parent: Option<u8>, tokens: &[u8], bs: u8) {
        let n = (hashes.len() as u8, tokens.len() as u8);
        stored_enc(out, hashes, parent, tokens, bs, n);
    }

    #[test]
    fn decodes_the_current_vllm_shape() {
        let mut p = vec![arr(3), 0xcb];
        p.extend_from_slice(&1.5f64.to_be_bytes());
        p.push(arr(3));
        stored_map(&mut p, &[1, 2], None, &[10, 11, 12, 13], 2);
        p.push(map(2));
        s(&mut p, "type");
        s(&mut p, "BlockRemoved");
        s(&mut p, "block_hashes");
        p.extend_from_slice(&[arr(1), 0xd3]);
        p.extend_from_slice(&(-5i64).to_be_bytes());
        p.push(map(1));
        s(&mut p, "type");
        s(&mut p, "AllBlocksCleared");
        p.push(3); // dp rank
        let b = decode_batch(&p).unwrap();
        assert_eq!(b.ts, 1.5);
        assert_eq!(b.dp_rank, 3);
        assert_eq!(b.events.len(), 3);
        assert_eq!(
            b.events[0],
            DecodedEvent::Stored {
                hashes: 0..2,
                parent: None,
                tokens: 0..4,
                block_size: 2,
                salt: 0
            }
        );
        assert_eq!(b.events[1], DecodedEvent::Removed { hashes: 2..3 });
        assert_eq!(b.hashes[2], EngineBlockHash(-5i64 as u64));
        assert_eq!(b.events[2], DecodedEvent::Cleared);
        assert_eq!(b.tokens, vec![10, 11, 12, 13]);
        assert_eq!(b.block_counts(), (2, 1));
    }

    #[test]
    fn every_int_width_decodes_in_token_arrays() {
        let want: [u32; 8] = [5, 200, 60_000, 151_000, 4_000_000_000, 127, 65_535, 7];
        let mut p = vec![arr(2), 0x00, arr(1), map(4)];
        s(&mut p, "type");
        s(&mut p, "BlockStored");
        s(&mut p, "block_hashes");
        p.extend_from_slice(&[arr(1), 1]);
        s(&mut p, "block_size");
        p.push(8);
        s(&mut p, "token_ids");
        p.push(arr(8));
        p.push(5);
        p.extend_from_slice(&[0xcc, 200]);
        p.push(0xcd);
        p.extend_from_slice(&60_000u16.to_be_bytes());
        p.push(0xce);
        p.extend_from_slice(&151_000u32.to_be_bytes());
        p.push(0xcf); // a u64 encoding of a u32 value
        p.extend_from_slice(&4_000_000_000u64.to_be_bytes());
        p.push(0xd0); // an int8 encoding of a positive value
        p.push(127);
        p.push(0xcd);
        p.extend_from_slice(&65_535u16.to_be_bytes());
        p.extend_from_slice(&[0xcc, 7]); // at the very end: the general path
        assert_eq!(decode_batch(&p).unwrap().tokens, want);
    }

    #[test]
    fn decodes_the_older_array_forms() {
        // [ts, [["BlockStored", [7], 3, [1, 2], 2, nil]]] without the dp rank.
        let mut p = vec![arr(2), 0x00, arr(1), arr(6)];
        s(&mut p, "BlockStored");
        p.extend_from_slice(&[arr(1), 7, 3, arr(2), 1, 2, 2, 0xc0]);
        let b = decode_batch(&p).unwrap();
        assert_eq!(b.dp_rank, 0);
        assert!(matches!(
            b.events[0],
            DecodedEvent::Stored {
                parent: Some(EngineBlockHash(3)),
                block_size: 2,
                ..
            }
        ));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let mut p = vec![arr(3), 0x01, arr(1)];
        stored_enc(
            &mut p,
            &[0xcd, 1, 2],
            Some(9),
            &[0xce, 0, 1, 0, 0, 0xcd, 0, 5],
            2,
            (1, 2),
        );
        p.push(0xc0);
        assert!(decode_batch(&p).is_ok());
        for cut in 0..p.len() {
            assert!(decode_batch(&p[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = p.clone();
        extra.push(0);
        assert!(decode_batch(&extra).is_err());
    }

    #[test]
    fn rejects_wrong_types_and_lengths() {
        for bad in [
            vec![0x01],                                       // not a container
            vec![arr(2), 0x01, 0x02],                         // events not an array
            vec![arr(2), 0x01, arr(1), 0x05],                 // event not a map
            vec![arr(1), 0x01],                               // too short
            vec![arr(2), 0xa1, b'x', arr(0)],                 // ts not a number
            vec![arr(2), 0x01, 0xdd, 0xff, 0xff, 0xff, 0xff], // huge claimed length
        ] {
            assert!(decode_batch(&bad).is_err(), "{bad:?}");
        }
        // Token count must equal blocks * block_size.
        let mut p = vec![arr(2), 0x01, arr(1)];
        stored_map(&mut p, &[1, 2], None, &[1, 2, 3], 2);
        let e = decode_batch(&p).unwrap_err();
        assert!(e.to_string().contains("3 token ids for 2 blocks"), "{e}");
        // Unknown event type.
        let mut p = vec![arr(2), 0x01, arr(1), map(1)];
        s(&mut p, "type");
        s(&mut p, "BlockUpdated");
        assert!(decode_batch(&p)
            .unwrap_err()
            .to_string()
            .contains("BlockUpdated"));
        // Negative token id.
        let mut p = vec![arr(2), 0x01, arr(1)];
        stored_map(&mut p, &[1], None, &[0xff], 1);
        assert!(decode_batch(&p).is_err());
    }

    #[test]
    fn deep_nesting_in_unknown_fields_is_skipped_iteratively() {
        let mut p = vec![arr(2), 0x01, arr(1), map(2)];
        s(&mut p, "type");
        s(&mut p, "AllBlocksCleared");
        s(&mut p, "junk");
        p.extend(std::iter::repeat_n(arr(1), 100_000));
        p.push(0xc0);
        assert_eq!(
            decode_batch(&p).unwrap().events,
            vec![DecodedEvent::Cleared]
        );
    }

    #[test]
    fn bytes_hashes_are_folded_and_lora_names_salt() {
        let mut p = vec![arr(2), 0x01, arr(1), map(6)];
        s(&mut p, "type");
        s(&mut p, "BlockStored");
        s(&mut p, "block_hashes");
        p.extend_from_slice(&[arr(1), 0xc4, 3, 1, 2, 3]);
        s(&mut p, "parent_block_hash");
        p.extend_from_slice(&[0xc4, 1, 9]);
        s(&mut p, "token_ids");
        p.extend_from_slice(&[arr(1), 4]);
        s(&mut p, "block_size");
        p.push(1);
        s(&mut p, "lora_name");
        s(&mut p, "ad");
        let b = decode_batch(&p).unwrap();
        assert_eq!(b.hashes[0], EngineBlockHash::from_bytes(&[1, 2, 3]));
        assert!(matches!(
            b.events[0],
            DecodedEvent::Stored { parent: Some(p), salt, .. }
                if p == EngineBlockHash::from_bytes(&[9]) && salt == lora_salt("ad")
        ));
    }
}
