//! KV block allocator: physical block ids, per-sequence block tables, and the prefix cache.
//!
//! Blocks are the unit of KV memory; the runner owns the memory behind the ids. A block is held by
//! the tables that list it (a reference count). Most blocks belong to one sequence. A *cached*
//! block also carries a content key: the chained hash of every prompt token up to its end (see
//! `State`). Later prompts that start with the same tokens attach it instead of computing it again
//! (automatic prefix caching, as in vLLM). Only full blocks of prompt tokens are ever cached, and a
//! sequence never writes into a block below its computed length, so a shared block is read-only.
//!
//! A cached block that no table holds any more stays cached but counts as free: `grow` takes
//! uncached free blocks first, then evicts cached ones, least recently released first.

use std::collections::{BTreeMap, HashMap};

/// Number of blocks needed to hold `positions` positions.
pub fn blocks_for(positions: usize, block_size: usize) -> usize {
    positions.div_ceil(block_size)
}

#[derive(Debug, Clone)]
pub struct BlockAllocator {
    block_size: usize,
    total: usize,
    /// Uncached free blocks; LIFO so recently freed (cache-warm) blocks are reused first.
    free: Vec<u32>,
    /// Per block: how many tables hold it.
    refs: Vec<u32>,
    /// Per block: its content key while it is cached.
    key_of: Vec<Option<u64>>,
    /// Content key → cached block.
    cached: HashMap<u64, u32>,
    /// Cached blocks no table holds, by release stamp (oldest first): evicted in this order.
    evictable: BTreeMap<u64, u32>,
    /// Per block: its key in `evictable` while it is there.
    stamp_of: Vec<u64>,
    next_stamp: u64,
}

impl BlockAllocator {
    /// # Panics
    /// If `block_size` is zero or `total` does not fit block ids (`u32`): both are start-up bugs.
    pub fn new(block_size: usize, total: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        let top = u32::try_from(total).expect("num_kv_blocks must fit in u32");
        Self {
            block_size,
            total,
            free: (0..top).rev().collect(),
            refs: vec![0; total],
            key_of: vec![None; total],
            cached: HashMap::new(),
            evictable: BTreeMap::new(),
            stamp_of: vec![0; total],
            next_stamp: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Blocks `grow` can hand out: the uncached free ones and the cached ones no table holds.
    pub fn free(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks some table holds.
    pub fn used(&self) -> usize {
        self.total - self.free()
    }

    /// Blocks holding a cached prefix (held by tables or not).
    pub fn cached(&self) -> usize {
        self.cached.len()
    }

    /// Positions the whole cache can hold: the longest sequence that can ever run.
    pub fn capacity_positions(&self) -> usize {
        self.total * self.block_size
    }

    /// Grows `table` so it covers `positions` positions. All or nothing: on `false` the table and the
    /// free list are unchanged.
    pub fn grow(&mut self, table: &mut Vec<u32>, positions: usize) -> bool {
        let need = blocks_for(positions, self.block_size).saturating_sub(table.len());
        if need > self.free() {
            return false;
        }
        for _ in 0..need {
            let b = match self.free.pop() {
                Some(b) => b,
                None => self.evict_oldest(),
            };
            self.refs[b as usize] = 1;
            table.push(b);
        }
        true
    }

    /// Takes the least recently released cached block out of the cache.
    fn evict_oldest(&mut self) -> u32 {
        let (_, b) = self
            .evictable
            .pop_first()
            .expect("`grow` checked that enough blocks are free");
        if let Some(key) = self.key_of[b as usize].take() {
            self.cached.remove(&key);
        }
        b
    }

    /// Blocks `grow(table, positions)` would take.
    pub fn missing(&self, table: &[u32], positions: usize) -> usize {
        blocks_for(positions, self.block_size).saturating_sub(table.len())
    }

    /// Drops `table`'s hold on each of its blocks and empties it. A block nobody holds any more
    /// returns to the free list, or, when cached, becomes evictable.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        for b in table.drain(..).rev() {
            let i = b as usize;
            debug_assert!(self.refs[i] > 0, "block {b} released more often than held");
            self.refs[i] = self.refs[i].saturating_sub(1);
            if self.refs[i] > 0 {
                continue;
            }
            if self.key_of[i].is_some() {
                self.stamp_of[i] = self.next_stamp;
                self.evictable.insert(self.next_stamp, b);
                self.next_stamp += 1;
            } else {
                self.free.push(b);
            }
        }
    }

    /// How many leading `keys` are cached, and how many of those no table holds (attaching them
    /// takes them out of [`Self::free`]).
    pub fn cached_prefix(&self, keys: &[u64]) -> (usize, usize) {
        let mut hits = 0;
        let mut idle = 0;
        for key in keys {
            let Some(&b) = self.cached.get(key) else {
                break;
            };
            hits += 1;
            idle += usize::from(self.refs[b as usize] == 0);
        }
        (hits, idle)
    }

    /// Appends the cached blocks of `keys` (all cached: see [`Self::cached_prefix`]) to an empty
    /// `table`, holding each.
    pub fn attach(&mut self, table: &mut Vec<u32>, keys: &[u64]) {
        debug_assert!(table.is_empty(), "a prefix is attached to an empty table");
        for key in keys {
            let b = self.cached[key];
            let i = b as usize;
            if self.refs[i] == 0 {
                self.evictable.remove(&self.stamp_of[i]);
            }
            self.refs[i] += 1;
            table.push(b);
        }
    }

    /// Caches `block` under `key` once its K/V is computed. Ignored for a block no table holds
    /// (its sequence ended before the step finished) or a key that is already cached (two
    /// sequences computed the same prefix in one step; the second copy stays private).
    pub fn register(&mut self, block: u32, key: u64) {
        let i = block as usize;
        if self.refs[i] == 0 || self.key_of[i].is_some() || self.cached.contains_key(&key) {
            return;
        }
        self.key_of[i] = Some(key);
        self.cached.insert(key, block);
    }

    /// Tables holding `block` (for the scheduler's invariant checks).
    #[cfg(test)]
    pub fn refs(&self, block: u32) -> u32 {
        self.refs[block as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn blocks_for_rounds_up() {
        assert_eq!(blocks_for(0, 16), 0);
        assert_eq!(blocks_for(1, 16), 1);
        assert_eq!(blocks_for(16, 16), 1);
        assert_eq!(blocks_for(17, 16), 2);
    }

    #[test]
    fn grow_is_incremental_and_all_or_nothing() {
        let mut a = BlockAllocator::new(4, 5);
        let mut t = Vec::new();
        assert!(a.grow(&mut t, 3));
        assert_eq!(t.len(), 1);
        assert!(a.grow(&mut t, 4));
        assert_eq!(t.len(), 1, "4 positions still fit one block of 4");
        assert!(a.grow(&mut t, 9));
        assert_eq!(t.len(), 3);
        assert_eq!(a.free(), 2);
        assert!(!a.grow(&mut t, 21), "needs 6 blocks, only 5 exist");
        assert_eq!(t.len(), 3);
        assert_eq!(a.free(), 2);
    }

    #[test]
    fn tables_never_share_blocks_and_release_returns_all() {
        let mut a = BlockAllocator::new(2, 10);
        let mut t1 = Vec::new();
        let mut t2 = Vec::new();
        assert!(a.grow(&mut t1, 7));
        assert!(a.grow(&mut t2, 12));
        let all: HashSet<u32> = t1.iter().chain(&t2).copied().collect();
        assert_eq!(all.len(), 10);
        assert!(all.iter().all(|&b| b < 10));
        assert_eq!(a.used(), 10);
        a.release(&mut t1);
        assert!(t1.is_empty());
        assert_eq!(a.free(), 4);
        a.release(&mut t2);
        assert_eq!(a.used(), 0);
    }

    #[test]
    fn a_cached_prefix_is_shared_then_evicted_oldest_first() {
        let mut a = BlockAllocator::new(4, 4);
        let mut t1 = Vec::new();
        assert!(a.grow(&mut t1, 9));
        a.register(t1[0], 10);
        a.register(t1[1], 11);
        assert_eq!(a.cached(), 2);
        assert_eq!(
            a.cached_prefix(&[10, 11, 12]),
            (2, 0),
            "held by t1: nothing idle"
        );

        let mut t2 = Vec::new();
        a.attach(&mut t2, &[10, 11]);
        assert_eq!(t2, t1[..2]);
        assert_eq!((a.refs(t1[0]), a.used()), (2, 3));
        assert!(a.grow(&mut t2, 9));
        assert_eq!(a.used(), 4, "t2 added one private block");

        a.release(&mut t1);
        assert_eq!(
            a.used(),
            3,
            "t1's private block is free, the shared ones still held"
        );
        a.release(&mut t2);
        assert_eq!(a.used(), 0);
        assert_eq!(a.free(), 4);
        assert_eq!(
            a.cached_prefix(&[10, 11]),
            (2, 2),
            "cached, idle, attachable"
        );

        // Two uncached blocks are free: growing by two keeps the cache; a third evicts the least
        // recently released cached block, key 11's (`release` empties a table back to front).
        let mut t3 = Vec::new();
        assert!(a.grow(&mut t3, 8));
        assert_eq!(a.cached(), 2);
        assert!(a.grow(&mut t3, 12));
        assert_eq!(a.cached(), 1);
        assert_eq!(a.cached_prefix(&[10]), (1, 1));
        assert_eq!(a.cached_prefix(&[11]), (0, 0));
        assert!(a.grow(&mut t3, 16));
        assert_eq!((a.cached(), a.used()), (0, 4));
        assert!(!a.grow(&mut t3, 17));
    }

    #[test]
    fn registering_is_ignored_for_released_blocks_and_known_keys() {
        let mut a = BlockAllocator::new(2, 3);
        let mut t1 = Vec::new();
        let mut t2 = Vec::new();
        assert!(a.grow(&mut t1, 2));
        assert!(a.grow(&mut t2, 2));
        a.register(t1[0], 5);
        a.register(t2[0], 5);
        assert_eq!(a.cached(), 1, "the second copy stays private");
        let gone = t2[0];
        a.release(&mut t2);
        a.register(gone, 6);
        assert_eq!(
            a.cached_prefix(&[6]),
            (0, 0),
            "a freed block is never cached"
        );
        a.release(&mut t1);
        assert_eq!(a.used(), 0);
    }
}
