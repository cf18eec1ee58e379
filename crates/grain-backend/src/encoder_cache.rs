//! LRU cache of projected crop features keyed by image content hash, bounded in bytes: a repeated
//! image (multi-turn chats, `n` > 1, benchmarks) skips the vision tower.

use std::collections::{HashMap, VecDeque};

use candle_core::Tensor;

pub struct EncoderCache {
    capacity_bytes: usize,
    used_bytes: usize,
    entries: HashMap<[u8; 32], (Tensor, usize)>,
    /// Most recently used at the back.
    order: VecDeque<[u8; 32]>,
    pub hits: u64,
    pub misses: u64,
    reported: (u64, u64),
}

impl EncoderCache {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity_bytes,
            used_bytes: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
            hits: 0,
            misses: 0,
            reported: (0, 0),
        }
    }

    pub fn get(&mut self, key: &[u8; 32]) -> Option<Tensor> {
        match self.entries.get(key) {
            Some((t, _)) => {
                let t = t.clone();
                self.touch(key);
                self.hits += 1;
                Some(t)
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    pub fn insert(&mut self, key: [u8; 32], value: Tensor) {
        let bytes = value.elem_count() * value.dtype().size_in_bytes();
        if bytes > self.capacity_bytes {
            return;
        }
        if let Some((_, old)) = self.entries.remove(&key) {
            self.used_bytes -= old;
            self.order.retain(|k| k != &key);
        }
        while self.used_bytes + bytes > self.capacity_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((_, b)) = self.entries.remove(&oldest) {
                self.used_bytes -= b;
            }
        }
        self.entries.insert(key, (value, bytes));
        self.order.push_back(key);
        self.used_bytes += bytes;
    }

    /// Hits and misses since the last call (for counters).
    pub fn take_counts(&mut self) -> (u64, u64) {
        let out = (self.hits - self.reported.0, self.misses - self.reported.1);
        self.reported = (self.hits, self.misses);
        out
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    fn touch(&mut self, key: &[u8; 32]) {
        if let Some(pos) = self.order.iter().position(|k| k == key) {
            self.order.remove(pos);
            self.order.push_back(*key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let t = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
        let mut c = EncoderCache::new(100 * 4);
        c.insert([1; 32], t(40));
        c.insert([2; 32], t(40));
        assert!(c.get(&[1; 32]).is_some()); // 1 is now the most recent
        c.insert([3; 32], t(40)); // evicts 2
        assert!(c.get(&[2; 32]).is_none());
        assert!(c.get(&[1; 32]).is_some() && c.get(&[3; 32]).is_some());
        assert!(c.used_bytes() <= 400);
        c.insert([4; 32], t(1000)); // larger than the whole cache: not stored
        assert!(c.get(&[4; 32]).is_none());
        assert_eq!((c.hits, c.misses), (3, 2));
    }
}
