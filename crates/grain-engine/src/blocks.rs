//! KV block allocator: a free list of physical block ids plus per-sequence block tables.
//!
//! Blocks are the unit of KV memory. A sequence owns the blocks in its table exclusively; the
//! allocator only hands out ids and takes them back, the runner owns the memory behind them.

/// Number of blocks needed to hold `positions` positions.
pub fn blocks_for(positions: usize, block_size: usize) -> usize {
    positions.div_ceil(block_size)
}

#[derive(Debug, Clone)]
pub struct BlockAllocator {
    block_size: usize,
    total: usize,
    /// LIFO so recently freed (cache-warm) blocks are reused first.
    free: Vec<u32>,
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
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn free(&self) -> usize {
        self.free.len()
    }

    pub fn used(&self) -> usize {
        self.total - self.free.len()
    }

    /// Positions the whole cache can hold: the longest sequence that can ever run.
    pub fn capacity_positions(&self) -> usize {
        self.total * self.block_size
    }

    /// Grows `table` so it covers `positions` positions. All or nothing: on `false` the table and the
    /// free list are unchanged.
    pub fn grow(&mut self, table: &mut Vec<u32>, positions: usize) -> bool {
        let need = blocks_for(positions, self.block_size).saturating_sub(table.len());
        if need > self.free.len() {
            return false;
        }
        let start = self.free.len() - need;
        table.extend(self.free.drain(start..).rev());
        true
    }

    /// Blocks `grow(table, positions)` would take.
    pub fn missing(&self, table: &[u32], positions: usize) -> usize {
        blocks_for(positions, self.block_size).saturating_sub(table.len())
    }

    /// Returns every block of `table` to the free list and empties it.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        debug_assert!(self.free.len() + table.len() <= self.total);
        self.free.extend(table.drain(..).rev());
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
}
