//! Softmax attention over host `f32` slices for long runs of queries: the LM's prefill chunks
//! (causal) and the vision tower (full).
//!
//! The work is cut into (head, block of query rows) tasks that run in parallel on the rayon pool,
//! each on one thread: `S = Q·Kᵀ` and `O = P·V` with the `gemm` crate's single-threaded kernel, the
//! (masked) softmax in between with the vector `exp`, in a per-thread score buffer. candle's
//! batched matmul instead loops over the heads and splits each product over the pool, a hand-off
//! per head and product, and zeroes every output first; on the 2-core build machine that left
//! the tiny model's 2985-token prefill as slow on two threads as on one.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::host_dense::matmul_serial;
use crate::simd;

/// Query rows per task: the scores of a block (`ROWS × keys`) stay within a core's L2 for
/// contexts of a few thousand keys.
const ROWS: usize = 32;

thread_local! {
    /// Per-thread scores `(ROWS, keys)` and one row of exponentials.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Which keys a query row sees.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mask {
    /// Every key.
    Full,
    /// Causal: row `r` is query `r / per_query` (the query heads sharing a KV head are adjacent
    /// rows) and sees keys `0 .. first + r / per_query`.
    Causal { first: usize, per_query: usize },
}

impl Mask {
    /// Keys seen by row `r` of `keys`.
    fn seen(self, r: usize, keys: usize) -> usize {
        match self {
            Mask::Full => keys,
            Mask::Causal { first, per_query } => (first + r / per_query).min(keys),
        }
    }
}

/// Attention for `g` independent heads: `q` `(g, rows, hd)` (already scaled by `1/√hd`), `k` and
/// `v` `(g, keys, hd)`, `out` `(g, rows, hd)`, all row-major.
pub(crate) fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (g, rows, keys, hd): (usize, usize, usize, usize),
    mask: Mask,
    out: &mut [f32],
) {
    assert_eq!(q.len(), g * rows * hd, "q is (g, rows, hd)");
    assert_eq!(k.len(), g * keys * hd, "k is (g, keys, hd)");
    assert_eq!(v.len(), g * keys * hd, "v is (g, keys, hd)");
    assert_eq!(out.len(), g * rows * hd, "out is (g, rows, hd)");
    if g == 0 || rows == 0 || hd == 0 {
        return;
    }
    if keys == 0 {
        out.fill(0.0);
        return;
    }
    out.par_chunks_mut(rows * hd)
        .zip(q.par_chunks(rows * hd))
        .zip(k.par_chunks(keys * hd).zip(v.par_chunks(keys * hd)))
        .for_each(|((oh, qh), (kh, vh))| {
            oh.par_chunks_mut(ROWS * hd)
                .zip(qh.par_chunks(ROWS * hd))
                .enumerate()
                .for_each(|(b, (ob, qb))| {
                    SCRATCH.with_borrow_mut(|(s, e)| {
                        block(qb, (kh, vh), (b * ROWS, keys, hd), mask, (s, e), ob)
                    })
                });
        });
}

/// One block of query rows `qb` starting at row `r0` of its head, against that head's `kh`, `vh`.
fn block(
    qb: &[f32],
    (kh, vh): (&[f32], &[f32]),
    (r0, keys, hd): (usize, usize, usize),
    mask: Mask,
    (s, e): (&mut Vec<f32>, &mut Vec<f32>),
    ob: &mut [f32],
) {
    let m = qb.len() / hd;
    // The block's last row sees the most keys; nothing beyond is computed.
    let kmax = mask.seen(r0 + m - 1, keys);
    if kmax == 0 {
        ob.fill(0.0);
        return;
    }
    s.resize(m * kmax, 0.0);
    e.resize(kmax, 0.0);
    let s = &mut s[..m * kmax];
    // S = Q·Kᵀ: Kᵀ (hd, kmax) read from K (keys, hd) row-major.
    matmul_serial(qb, &kh[..kmax * hd], (m, hd, kmax), (1, hd), s);
    for (i, row) in s.chunks_exact_mut(kmax).enumerate() {
        let seen = mask.seen(r0 + i, keys);
        let (live, masked) = row.split_at_mut(seen);
        masked.fill(0.0);
        if seen == 0 {
            continue;
        }
        let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e = &mut e[..seen];
        let inv = 1.0 / simd::exp_shifted(live, max, e);
        for (p, x) in live.iter_mut().zip(e.iter()) {
            *p = x * inv;
        }
    }
    // O = P·V: V (kmax, hd) row-major.
    matmul_serial(s, &vh[..kmax * hd], (m, kmax, hd), (hd, 1), ob);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain f64 attention, row by row.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        (g, rows, keys, hd): (usize, usize, usize, usize),
        mask: Mask,
    ) -> Vec<f32> {
        let mut out = vec![0f32; g * rows * hd];
        for h in 0..g {
            for r in 0..rows {
                let seen = mask.seen(r, keys);
                let qr = &q[(h * rows + r) * hd..][..hd];
                let s: Vec<f64> = (0..seen)
                    .map(|j| {
                        let kr = &k[(h * keys + j) * hd..][..hd];
                        qr.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum()
                    })
                    .collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let z: f64 = w.iter().sum();
                for c in 0..hd {
                    let o: f64 = (0..seen)
                        .map(|j| w[j] / z * v[(h * keys + j) * hd + c] as f64)
                        .sum();
                    out[(h * rows + r) * hd + c] = o as f32;
                }
            }
        }
        out
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 2654435761 + seed * 40503) % 1000) as f32 / 250.0) - 2.0)
            .collect()
    }

    #[test]
    fn blocks_match_a_plain_f64_attention() {
        // Row counts around the block size, one key, grouped causal rows, a chunk after cached
        // positions (first > 1), and head widths off the kernel's tiles.
        let cases = [
            (2, 70, 70, 8, Mask::Full),
            (3, 33, 1, 5, Mask::Full),
            (
                1,
                64,
                64,
                16,
                Mask::Causal {
                    first: 1,
                    per_query: 1,
                },
            ),
            (
                2,
                140,
                70,
                8,
                Mask::Causal {
                    first: 1,
                    per_query: 2,
                },
            ),
            (
                2,
                80,
                49,
                8,
                Mask::Causal {
                    first: 10,
                    per_query: 2,
                },
            ),
        ];
        for (g, rows, keys, hd, mask) in cases {
            let q = values(g * rows * hd, 1);
            let k = values(g * keys * hd, 2);
            let v = values(g * keys * hd, 3);
            let mut got = vec![f32::NAN; g * rows * hd];
            attend(&q, &k, &v, (g, rows, keys, hd), mask, &mut got);
            let want = reference(&q, &k, &v, (g, rows, keys, hd), mask);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4,
                    "{mask:?} g={g} rows={rows} [{i}]: {a} vs {b}"
                );
            }
        }
    }
}
