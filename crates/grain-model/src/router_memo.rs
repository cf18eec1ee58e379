//! The router's visual parts, kept for the next prompt about the same image.
//!
//! A chat sends its image again with every turn. The engine's encoder cache then hands the router
//! the same features tensor, and the voter's sum over the image's visual rows
//! ([`crate::router_cpu::CpuRouter::visual_part`], all but the 32 text rows of the router's work)
//! depends on those features alone. This keeps the last [`CAPACITY`] of them, keyed by the
//! features tensor's id: candle gives every tensor an id of its own for the life of the process,
//! and features are never written in place, so one id always names the same values.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use candle_core::TensorId;

/// Images whose visual parts are kept (`D` `f64` values each: 32 KB at `D` = 4096).
pub(crate) const CAPACITY: usize = 256;

#[derive(Default)]
pub(crate) struct VisualMemo {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Keys, oldest first: the first to go when the memo is full.
    order: VecDeque<TensorId>,
    parts: HashMap<TensorId, Arc<Vec<f64>>>,
}

impl VisualMemo {
    pub(crate) fn get(&self, features: TensorId) -> Option<Arc<Vec<f64>>> {
        self.lock().parts.get(&features).cloned()
    }

    pub(crate) fn insert(&self, features: TensorId, part: Vec<f64>) {
        let mut memo = self.lock();
        if memo.parts.insert(features, Arc::new(part)).is_none() {
            memo.order.push_back(features);
        }
        while memo.order.len() > CAPACITY {
            if let Some(old) = memo.order.pop_front() {
                memo.parts.remove(&old);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().parts.len()
    }

    #[cfg(test)]
    pub(crate) fn clear(&self) {
        *self.lock() = Inner::default();
    }

    /// The memo holds plain values; a panic elsewhere while it was locked leaves them whole.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memo keeps the newest [`CAPACITY`] parts, and a key inserted again keeps one slot.
    #[test]
    fn keeps_the_newest_parts_up_to_its_capacity() {
        let memo = VisualMemo::default();
        let ids: Vec<TensorId> = (0..CAPACITY + 10)
            .map(|_| {
                candle_core::Tensor::zeros(1, candle_core::DType::F32, &candle_core::Device::Cpu)
                    .unwrap()
                    .id()
            })
            .collect();
        for (i, &id) in ids.iter().enumerate() {
            memo.insert(id, vec![i as f64]);
            memo.insert(id, vec![i as f64]);
        }
        assert_eq!(memo.len(), CAPACITY);
        assert!(memo.get(ids[9]).is_none());
        assert_eq!(memo.get(ids[10]).as_deref(), Some(&vec![10.0]));
        assert_eq!(
            memo.get(ids[CAPACITY + 9]).as_deref(),
            Some(&vec![(CAPACITY + 9) as f64])
        );
    }
}
