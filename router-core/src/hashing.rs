//! Token ids → chained block hashes: the router's own identity of a KV prefix.
//!
//! Block `i` of a prompt hashes as
//!
//! ```text
//! h_i = xxh3_64_with_seed(le_bytes(h_{i-1}) ‖ le_u32(tokens[i*B .. (i+1)*B]), seed = salt)
//! h_{-1} = ROOT_PARENT_HASH
//! ```
//!
//! Because every hash folds in its parent, `h_i` identifies the whole prefix
//! `tokens[..(i+1)*B]`: two prompts share `h_i` iff they share their first `i+1` blocks
//! (up to 64-bit collisions). That is what lets [`crate::index`] keep a flat map keyed
//! by hash instead of an explicit tree. Only full blocks are hashed: an engine only
//! caches (and publishes) full blocks, so a trailing partial block can never match.
//!
//! The salt separates caches that hold the same tokens with different KV contents
//! (LoRA adapters, `cache_salt`); it seeds every block, so chains with different salts
//! never meet. Cost: one xxh3 call over `8 + 4B` bytes per block (72 bytes for B = 16),
//! about 10 ns, with one reused scratch buffer and no allocation beyond the output.

use crate::protocols::BlockHash;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// `h_{-1}`: the parent hash of block 0. An arbitrary fixed constant (the ASCII bytes
/// of "bisllm" and a version byte) so that block 0 is hashed exactly like every other
/// block; changing it changes every router hash, so it is part of the wire contract
/// with the Python reference implementation in tests/core.
pub const ROOT_PARENT_HASH: u64 = 0x6269_736c_6c6d_0001;

/// Number of full blocks in `num_tokens` tokens.
#[inline]
pub fn full_blocks(num_tokens: usize, block_size: usize) -> usize {
    num_tokens / block_size
}

/// Number of blocks a prompt occupies in an engine's KV cache, counting a trailing
/// partial block (which is always computed, never cached).
#[inline]
pub fn blocks_ceil(num_tokens: usize, block_size: usize) -> usize {
    num_tokens.div_ceil(block_size)
}

/// Hashes one block given its parent's hash. `scratch` is reused across calls to avoid
/// an allocation per block; its contents on entry are irrelevant.
#[inline]
pub fn hash_block(parent: u64, tokens: &[u32], salt: u64, scratch: &mut Vec<u8>) -> u64 {
    scratch.resize(8 + 4 * tokens.len(), 0);
    hash_block_in(parent, tokens, salt, scratch)
}

/// [`hash_block`] with a scratch slice of exactly `8 + 4 * tokens.len()` bytes: the
/// fixed-size copy compiles to a plain memcpy on little-endian hosts.
#[inline(always)]
fn hash_block_in(parent: u64, tokens: &[u32], salt: u64, buf: &mut [u8]) -> u64 {
    let (head, body) = buf.split_at_mut(8);
    head.copy_from_slice(&parent.to_le_bytes());
    // Little-endian u32s, explicitly: the hash must not depend on the host's byte order.
    for (dst, t) in body.chunks_exact_mut(4).zip(tokens) {
        dst.copy_from_slice(&t.to_le_bytes());
    }
    xxh3_64_with_seed(buf, salt)
}

/// Appends the chained hashes of every full block of `tokens` to `out`, continuing the
/// chain from `parent` ([`ROOT_PARENT_HASH`] for a prompt's first block).
///
/// # Panics
/// If `block_size == 0` (callers validate it once, at construction).
pub fn hash_blocks_into(
    tokens: &[u32],
    block_size: usize,
    salt: u64,
    parent: u64,
    out: &mut Vec<BlockHash>,
) {
    assert!(block_size > 0, "block_size must be positive");
    let n = tokens.len() / block_size;
    if n == 0 {
        return; // (and no scratch sized by an arbitrary block_size)
    }
    out.reserve(n);
    let mut buf = vec![0u8; 8 + 4 * block_size];
    let mut prev = parent;
    for block in tokens.chunks_exact(block_size) {
        prev = hash_block_in(prev, block, salt, &mut buf);
        out.push(BlockHash(prev));
    }
}

/// The chained hashes of every full block of a prompt (see the module docs).
pub fn hash_blocks(tokens: &[u32], block_size: usize, salt: u64) -> Vec<BlockHash> {
    let mut out = Vec::new();
    hash_blocks_into(tokens, block_size, salt, ROOT_PARENT_HASH, &mut out);
    out
}

/// The salt of blocks stored under a LoRA adapter, derived from the adapter's name
/// (`xxh3_64(utf8(name))`, seed 0). `route()` must be given the same salt for requests
/// to that adapter, so that its entries and its queries agree.
pub fn lora_salt(lora_name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(lora_name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_blocks_are_hashed() {
        let toks: Vec<u32> = (0..35).collect();
        assert_eq!(hash_blocks(&toks, 16, 0).len(), 2);
        assert_eq!(hash_blocks(&toks[..15], 16, 0).len(), 0);
        assert_eq!(hash_blocks(&[], 16, 0).len(), 0);
    }

    #[test]
    fn matches_the_documented_formula() {
        let toks: Vec<u32> = (100..132).collect();
        let mut buf = ROOT_PARENT_HASH.to_le_bytes().to_vec();
        for t in &toks[..16] {
            buf.extend_from_slice(&t.to_le_bytes());
        }
        let h0 = xxh3_64_with_seed(&buf, 7);
        let mut buf = h0.to_le_bytes().to_vec();
        for t in &toks[16..] {
            buf.extend_from_slice(&t.to_le_bytes());
        }
        let h1 = xxh3_64_with_seed(&buf, 7);
        assert_eq!(
            hash_blocks(&toks, 16, 7),
            vec![BlockHash(h0), BlockHash(h1)]
        );
    }

    #[test]
    fn chain_encodes_the_prefix() {
        let a: Vec<u32> = (0..64).collect();
        let mut b = a.clone();
        b[20] = 999; // differs in block 1 (block size 16)
        let (ha, hb) = (hash_blocks(&a, 16, 0), hash_blocks(&b, 16, 0));
        assert_eq!(ha[0], hb[0]);
        // Blocks 2 and 3 have equal tokens but a different prefix: different hashes.
        assert!(ha[1..].iter().zip(&hb[1..]).all(|(x, y)| x != y));
    }

    #[test]
    fn salt_separates_chains_and_continuation_equals_whole() {
        let toks: Vec<u32> = (0..64).collect();
        assert_ne!(hash_blocks(&toks, 16, 0)[0], hash_blocks(&toks, 16, 1)[0]);
        let whole = hash_blocks(&toks, 16, 3);
        let mut part = hash_blocks(&toks[..32], 16, 3);
        let last = part.last().unwrap().0;
        hash_blocks_into(&toks[32..], 16, 3, last, &mut part);
        assert_eq!(whole, part);
    }
}
