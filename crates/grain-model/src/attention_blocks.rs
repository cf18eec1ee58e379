//! Softmax attention over host `f32` slices for long runs of queries: the LM's prefill chunks
//! (causal) and the vision tower (full).
//!
//! The work is cut into (head, block of query rows) tasks that run in parallel on the rayon pool,
//! each on one thread: `S = Q·Kᵀ`, the (masked) softmax in place in a per-thread score buffer,
//! and `O = P·V`. Each head's keys and values are packed once into
//! [`crate::panel_gemm`]'s panels ([`Panels::keys`], [`Panels::values`]), which every block of
//! that head then reads: the `gemm` crate packed `Kᵀ` (and `V`) again for every block, about as
//! much work as the block's `S` product at `hd` = 64. Where the panels cannot run (no AVX2/FMA)
//! the blocks use the `gemm` crate's single-threaded kernel. candle's batched matmul instead
//! loops over the heads and splits each product over the pool, a hand-off per head and product,
//! and zeroes every output first.
//!
//! With the panels, each output is one FMA chain over its keys in order (the masked keys add
//! exact zeros), so a query row's result does not depend on the block it falls in.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::host_dense::matmul_serial;
use crate::panel_gemm::Panels;
use crate::simd;

/// Query rows per task: the scores of a block (`ROWS × keys`) stay within a core's L2 for
/// contexts of a few thousand keys.
const ROWS: usize = 32;

thread_local! {
    /// Per-thread scores `(ROWS, keys)` and a block's output padded to whole panels (where `hd` is
    /// not a multiple of 16).
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

#[derive(Default)]
struct Scratch {
    s: Vec<f32>,
    o: Vec<f32>,
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
            let packed = Panels::keys(kh, keys, hd).zip(Panels::values(vh, keys, hd));
            let kv = match &packed {
                Some(panels) => Kv::Packed(panels),
                None => Kv::Rows(kh, vh),
            };
            oh.par_chunks_mut(ROWS * hd)
                .zip(qh.par_chunks(ROWS * hd))
                .enumerate()
                .for_each(|(b, (ob, qb))| {
                    SCRATCH.with_borrow_mut(|scratch| {
                        run_block(qb, kv, (b * ROWS, keys, hd), mask, scratch, ob)
                    })
                });
        });
}

/// The softmax of each row of `s` (rows `stride` apart, of which the first `kmax` are used) over
/// the keys row `r0 + i` sees; the masked keys up to `kmax` become zeros.
fn softmax_rows(
    s: &mut [f32],
    (stride, kmax): (usize, usize),
    (r0, keys): (usize, usize),
    mask: Mask,
) {
    for (i, row) in s.chunks_mut(stride).enumerate() {
        let seen = mask.seen(r0 + i, keys);
        let (live, masked) = row[..kmax].split_at_mut(seen);
        masked.fill(0.0);
        simd::softmax_in_place(live);
    }
}

/// A head's keys and values: packed into panels, or as `(keys, hd)` rows for the `gemm` crate.
#[derive(Clone, Copy)]
enum Kv<'a> {
    Packed(&'a (Panels, Panels)),
    Rows(&'a [f32], &'a [f32]),
}

/// One block of query rows `qb`, starting at row `r0` of its head.
fn run_block(
    qb: &[f32],
    kv: Kv<'_>,
    (r0, keys, hd): (usize, usize, usize),
    mask: Mask,
    scratch: &mut Scratch,
    ob: &mut [f32],
) {
    // The block's last row sees the most keys; nothing beyond is computed.
    let kmax = mask.seen(r0 + qb.len() / hd - 1, keys);
    if kmax == 0 {
        ob.fill(0.0);
        return;
    }
    let at = Block {
        r0,
        keys,
        kmax,
        hd,
        mask,
    };
    match kv {
        Kv::Packed(panels) => block_panels(qb, panels, at, scratch, ob),
        Kv::Rows(kh, vh) => block(qb, (kh, vh), at, scratch, ob),
    }
}

/// Where a block of query rows stands: its first row `r0` in its head, the head's `keys`, the
/// keys its last row sees (`kmax`, at least one), the head width and the mask.
#[derive(Clone, Copy)]
struct Block {
    r0: usize,
    keys: usize,
    kmax: usize,
    hd: usize,
    mask: Mask,
}

/// One block of query rows `qb` against its head's packed keys and values.
fn block_panels(
    qb: &[f32],
    (kp, vp): &(Panels, Panels),
    Block {
        r0,
        keys,
        kmax,
        hd,
        mask,
    }: Block,
    Scratch { s, o }: &mut Scratch,
    ob: &mut [f32],
) {
    let m = qb.len() / hd;
    // S = Q·Kᵀ on the panels holding keys `..kmax`; rows `kp.n()` apart.
    let stride = kp.n();
    s.resize(m * stride, 0.0);
    let s = &mut s[..m * stride];
    kp.apply_prefix(qb, (hd, hd), 0..kmax.div_ceil(16), s);
    softmax_rows(s, (stride, kmax), (r0, keys), mask);
    // O = P·V over keys `..kmax`.
    if vp.n() == hd {
        vp.apply_prefix(s, (stride, kmax), 0..hd / 16, ob);
    } else {
        let wide = vp.n();
        o.resize(m * wide, 0.0);
        vp.apply_prefix(s, (stride, kmax), 0..wide / 16, &mut o[..m * wide]);
        for (dst, src) in ob.chunks_exact_mut(hd).zip(o.chunks_exact(wide)) {
            dst.copy_from_slice(&src[..hd]);
        }
    }
}

/// [`block_panels`] with the `gemm` crate, where the panels cannot run.
fn block(
    qb: &[f32],
    (kh, vh): (&[f32], &[f32]),
    Block {
        r0,
        keys,
        kmax,
        hd,
        mask,
    }: Block,
    Scratch { s, .. }: &mut Scratch,
    ob: &mut [f32],
) {
    let m = qb.len() / hd;
    s.resize(m * kmax, 0.0);
    let s = &mut s[..m * kmax];
    // S = Q·Kᵀ: Kᵀ (hd, kmax) read from K (keys, hd) row-major.
    matmul_serial(qb, &kh[..kmax * hd], (m, hd, kmax), (1, hd), s);
    softmax_rows(s, (kmax, kmax), (r0, keys), mask);
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
            // The `gemm` crate's blocks, which machines without the panels run.
            let mut fallback = vec![f32::NAN; g * rows * hd];
            let mut scratch = Scratch::default();
            for h in 0..g {
                let kv = |t: &[f32]| t[h * keys * hd..][..keys * hd].to_vec();
                let (kh, vh) = (kv(&k), kv(&v));
                let qh = &q[h * rows * hd..][..rows * hd];
                let oh = &mut fallback[h * rows * hd..][..rows * hd];
                for (b, (ob, qb)) in oh
                    .chunks_mut(ROWS * hd)
                    .zip(qh.chunks(ROWS * hd))
                    .enumerate()
                {
                    let at = (b * ROWS, keys, hd);
                    run_block(qb, Kv::Rows(&kh, &vh), at, mask, &mut scratch, ob);
                }
            }
            for (path, got) in [("attend", &got), ("gemm blocks", &fallback)] {
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4,
                        "{path}: {mask:?} g={g} rows={rows} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// With the panels, a query row's output is the same bits whichever block it falls in: a
    /// causal chunk after cached positions equals the same rows of the whole sequence.
    #[test]
    fn a_rows_output_does_not_depend_on_its_block() {
        let (keys, hd) = (150, 16);
        let (q, k, v) = (
            values(keys * hd, 4),
            values(keys * hd, 5),
            values(keys * hd, 6),
        );
        let causal = |first| Mask::Causal {
            first,
            per_query: 1,
        };
        let mut whole = vec![0f32; keys * hd];
        attend(&q, &k, &v, (1, keys, keys, hd), causal(1), &mut whole);
        let start = 41; // Rows 41.. land at other offsets within their blocks.
        let rows = keys - start;
        let mut tail = vec![0f32; rows * hd];
        attend(
            &q[start * hd..],
            &k,
            &v,
            (1, rows, keys, hd),
            causal(start + 1),
            &mut tail,
        );
        if Panels::keys(&k, keys, hd).is_none() {
            return; // The `gemm` crate's blocks make no such promise.
        }
        let same = tail
            .iter()
            .zip(&whole[start * hd..])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "the chunk's rows differ from the whole sequence's");
    }
}
