//! Content keys for the prefix cache (see `blocks.rs` and `State::add_with_prefix`).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// Keys the full blocks of prompts. Randomly seeded per process (SipHash with a random key), so
/// that nobody can craft a prompt whose key collides with another user's.
#[derive(Debug, Clone)]
pub(crate) struct PrefixKeyer {
    hasher: RandomState,
    block_size: usize,
}

impl PrefixKeyer {
    pub fn new(block_size: usize) -> Self {
        Self {
            hasher: RandomState::new(),
            block_size,
        }
    }

    /// One key per full block of `prompt_ids`: a hash of every token up to the block's end (each
    /// key chains the previous one), so equal keys mean equal prefixes.
    pub fn keys(&self, prompt_ids: &[u32]) -> Vec<u64> {
        let mut prev = 0u64;
        prompt_ids
            .chunks_exact(self.block_size)
            .map(|block| {
                let mut h = self.hasher.build_hasher();
                h.write_u64(prev);
                block.iter().for_each(|&t| h.write_u32(t));
                prev = h.finish();
                prev
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_identify_whole_prefixes_block_by_block() {
        let k = PrefixKeyer::new(4);
        let a = k.keys(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(a.len(), 2, "the partial last block has no key");
        assert_eq!(k.keys(&[1, 2, 3, 4, 5, 6, 7, 8]), a);
        let b = k.keys(&[1, 2, 3, 4, 5, 6, 7, 0]);
        assert_eq!(b[0], a[0]);
        assert_ne!(b[1], a[1]);
        // The same second block after a different first one is a different prefix.
        let c = k.keys(&[0, 2, 3, 4, 5, 6, 7, 8]);
        assert_ne!(c[0], a[0]);
        assert_ne!(c[1], a[1]);
        assert!(k.keys(&[1, 2, 3]).is_empty());
    }
}
