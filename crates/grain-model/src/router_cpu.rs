//! The router's inference path on the CPU: one pass over `f32` rows instead of a chain of
//! whole-matrix tensor ops.
//!
//! For one image with `n` crops the work is cut into *supercells* ([`crate::router_pool`]): tiles
//! of the crop map that hold whole cells of every granularity (31 positions for 36…576). One task
//! per supercell, on the rayon pool, runs the whole router on that tile's rows, so they never
//! leave the core's cache:
//! 1. gather the tile's feature rows of every crop and project them with `in_proj` (no bias);
//! 2. pool features and projections at every granularity (average pooling commutes with the
//!    affine projection, so the 540 coarser rows per crop are never projected), add the bias;
//! 3. the cross-crop attention of each position ([`crate::router_attend`]);
//! 4. `out_proj → +x → LayerNorm1 → linear1 → ReLU → linear2 → +x → LayerNorm2 → mlp1 →
//!    GELU(erf)`, and the sum of the GELU rows weighted by the voter (divided by `n`: the crop
//!    mean; [`crate::gelu_vote`]).
//!
//! The last layer, `mlp2`, is affine, so it is applied once to the total: `Σ_t v_t·(W·g_t + b) =
//! W·Σ_t v_t·g_t + b·Σ_t v_t`. The text rows are the same in every crop (same q, k, v), so their
//! attention output is their value and they go through the layers once per image (one more
//! task, beside the supercells), weighted `n` times `1/n`. The supercells' partial sums are added
//! in order, then the text rows', so the logits do not depend on the thread count. No visual row
//! sees a text row, so the supercells' sum (the *visual part*) depends on the features alone:
//! [`crate::router_memo`] keeps it for the next prompt about the same image. Matrix products are [`crate::panel_gemm`]'s (or the `gemm`
//! crate's) single-threaded kernels; the loops between them have AVX2/FMA copies.

use rayon::prelude::*;

use crate::error::Result;
use crate::gelu_vote::gelu_weighted_sum;
pub(crate) use crate::host_dense::{DenseF32, NormF32};
use crate::router_attend::{attend, AttendScratch};
use crate::router_pool::PoolPlan;

/// The router's layers, as `f32` on the CPU.
pub(crate) struct CpuRouter {
    /// `in_proj` `(3D, D)` and its bias.
    pub in_proj: DenseF32,
    pub out_proj: DenseF32,
    pub linear1: DenseF32,
    pub linear2: DenseF32,
    pub mlp1: DenseF32,
    /// `mlp2` as `(E, D)` row-major.
    pub mlp2_weight: Vec<f32>,
    pub mlp2_bias: Vec<f32>,
    pub norm1: NormF32,
    pub norm2: NormF32,
    pub norm: NormF32,
    pub voter: Vec<f32>,
    pub heads: usize,
}

/// The top-`k` rows of `text` `(T, d)` by mean cosine similarity to the rows of `base`, in score
/// order (ties in prompt order), zero-padded to `k` rows. The mean of the cosines is the cosine
/// against the mean of the unit base rows, `t̂ · (Σ_i b̂_i) / L`: one pass over the base instead of
/// a `(L, T)` similarity matrix. Norms are clamped at `1e-8`, as in the tensor path.
fn select_text(base: &[f32], text: &[f32], d: usize, k: usize) -> Vec<f32> {
    let mut u = vec![0f64; d];
    // A row's f64 Euclidean norm, clamped as the tensor path clamps it.
    let norm = |row: &[f32]| -> f64 {
        let sq: f64 = row.iter().map(|v| (*v as f64).powi(2)).sum();
        sq.sqrt().max(1e-8)
    };
    for row in base.chunks_exact(d) {
        let norm = norm(row);
        u.iter_mut()
            .zip(row)
            .for_each(|(u, v)| *u += *v as f64 / norm);
    }
    let rows = (base.len() / d).max(1) as f64;
    let scores: Vec<f64> = text
        .chunks_exact(d)
        .map(|t| t.iter().zip(&u).map(|(t, u)| *t as f64 * u).sum::<f64>() / norm(t) / rows)
        .collect();
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut out = vec![0f32; k * d];
    for (dst, &i) in out.chunks_exact_mut(d).zip(&order) {
        dst.copy_from_slice(&text[i * d..][..d]);
    }
    out
}

impl CpuRouter {
    /// The visual rows' share of the voter's sum for one image with crop features `f`
    /// `(n, side², D)`: `Σ_r w_r · GELU(mlp1(row_r))` over every crop's pooled rows, the supercells'
    /// parts added in order. The merger attends across crops position by position, so no visual
    /// row sees a text row: this depends on the features alone, and another prompt about the
    /// same image can reuse it ([`Self::image_logits`]).
    pub(crate) fn visual_part(
        &self,
        f: &[f32],
        (n, side, d, k): (usize, usize, usize, usize),
        grans: &[u32],
    ) -> Result<Vec<f64>> {
        let plan = PoolPlan::new(grans, side)?;
        let partials: Vec<Vec<f64>> = (0..plan.supercells())
            .into_par_iter()
            .map(|s| {
                Task::with(&plan, n, (d, k), self, |task| {
                    self.supercell(f, (&plan, s, side), task)
                })
            })
            .collect();
        let mut acc = vec![0f64; d];
        for part in &partials {
            acc.iter_mut().zip(part).for_each(|(a, p)| *a += p);
        }
        Ok(acc)
    }

    /// The text rows' share of the voter's sum: the `k` prompt rows selected against the base
    /// crop (the first `side²` rows of `f`), through the layers once (they are the same in every
    /// crop, so their attention output is their value).
    fn text_part(
        &self,
        f: &[f32],
        text_embeds: &[f32],
        (n, side, d, k): (usize, usize, usize, usize),
        grans: &[u32],
    ) -> Result<Vec<f64>> {
        let plan = PoolPlan::new(grans, side)?;
        let vis = plan.order.len();
        let text = select_text(&f[..side * side * d], text_embeds, d, k);
        Ok(Task::with(&plan, n, (d, k), self, |task| {
            let rows = text.len() / d;
            let (x, o) = (&mut task.x[..rows * d], &mut task.o[..rows * d]);
            x.copy_from_slice(&text);
            let qkv = &mut task.qkv[..rows * 3 * d];
            self.in_proj.apply_biased(&text, false, qkv);
            for (o, t) in o.chunks_exact_mut(d).zip(qkv.chunks_exact(3 * d)) {
                o.copy_from_slice(&t[2 * d..]);
            }
            self.block(o, x, &self.voter[vis..vis + rows], &mut task.h)
        }))
    }

    /// LayerNorm'd logits of one image: its crop features `f` `(n, side², D)` and its prompt's
    /// token embeddings `text_embeds` `(T, D)`; `k` text rows are selected. `known` is the image's
    /// [`Self::visual_part`] where it was kept; else it is computed beside the text rows and
    /// returned with the logits.
    pub(crate) fn image_logits(
        &self,
        f: &[f32],
        text_embeds: &[f32],
        dims: (usize, usize, usize, usize),
        grans: &[u32],
        known: Option<&[f64]>,
    ) -> Result<(Vec<f32>, Option<Vec<f64>>)> {
        let (computed, text) = match known {
            Some(_) => (None, self.text_part(f, text_embeds, dims, grans)?),
            None => {
                let (v, t) = rayon::join(
                    || self.visual_part(f, dims, grans),
                    || self.text_part(f, text_embeds, dims, grans),
                );
                (Some(v?), t?)
            }
        };
        let visual = known.or(computed.as_deref()).expect("known or computed");
        // The same sum, in the same order, as adding every part in turn: the visual rows', then
        // the text rows'.
        let acc: Vec<f64> = visual.iter().zip(&text).map(|(v, t)| v + t).collect();
        let vsum: f32 = self.voter.iter().sum();
        let mut logits: Vec<f32> = self
            .mlp2_weight
            .chunks_exact(dims.2)
            .zip(&self.mlp2_bias)
            .map(|(w, b)| {
                let s: f64 = w.iter().zip(&acc).map(|(w, a)| *w as f64 * a).sum();
                s as f32 + b * vsum
            })
            .collect();
        self.norm.apply(&mut logits);
        Ok((logits, computed))
    }

    /// One block of rows on the calling thread: attention output `o`, residual `x` (overwritten),
    /// voter weights `w`, scratch `h` of at least `rows × widest layer` each. Returns
    /// `Σ_r w_r · GELU(mlp1(row_r))`.
    fn block(&self, o: &[f32], x: &mut [f32], w: &[f32], h: &mut [Vec<f32>; 2]) -> Vec<f64> {
        #[cfg(target_arch = "x86_64")]
        if crate::small_gemm::avx512_available() {
            // SAFETY: `avx512_available()` checked AVX-512F, AVX2 and FMA.
            #[allow(unsafe_code)]
            return unsafe { avx2::block_avx512(self, o, x, w, h) };
        }
        #[cfg(target_arch = "x86_64")]
        if crate::small_gemm::available() {
            // SAFETY: `available()` checked AVX2 and FMA.
            #[allow(unsafe_code)]
            return unsafe { avx2::block(self, o, x, w, h) };
        }
        self.block_body(o, x, w, h)
    }

    /// [`Self::block`]'s work, inlined into an AVX2/FMA copy where the CPU has them.
    #[inline(always)]
    fn block_body(&self, o: &[f32], x: &mut [f32], w: &[f32], h: &mut [Vec<f32>; 2]) -> Vec<f64> {
        let d = self.mlp1.d_out();
        let rows = w.len();
        let [h1, h2] = h;
        let span = |l: &DenseF32| 0..rows * l.d_out();
        // x ← LayerNorm1(x + out_proj(o))
        let r = span(&self.out_proj);
        self.out_proj.apply_biased(o, false, &mut h1[r.clone()]);
        self.norm1.residual_rows(x, &h1[r]);
        // x ← LayerNorm2(x + linear2(ReLU(linear1(x))))
        let r1 = span(&self.linear1);
        self.linear1.apply_biased(x, true, &mut h1[r1.clone()]);
        let r2 = span(&self.linear2);
        self.linear2
            .apply_biased(&h1[r1], false, &mut h2[r2.clone()]);
        self.norm2.residual_rows(x, &h2[r2]);
        // Σ_r w_r · GELU(mlp1(x_r))
        let r = span(&self.mlp1);
        self.mlp1.apply_biased(x, false, &mut h1[r.clone()]);
        let mut part = vec![0f32; d];
        gelu_weighted_sum(&h1[r], w, &mut part);
        part.iter().map(|&p| p as f64).collect()
    }
}

/// One task's buffers, sized for a supercell's rows (`positions × n`) or the text rows,
/// whichever is more: the tile's gathered features and their projection (`SH·SW × n` rows), the
/// pooling scratch, the rows' `x`, `q k v` and attention output, and two layer outputs. Each
/// thread keeps one ([`Task::with`]), grown to the largest image it has routed, so routing an image
/// allocates nothing on the pool's threads (whose malloc arenas would otherwise keep growing).
#[derive(Default)]
struct Task {
    feat: Vec<f32>,
    proj: Vec<f32>,
    pool: Vec<f32>,
    x: Vec<f32>,
    qkv: Vec<f32>,
    o: Vec<f32>,
    h: [Vec<f32>; 2],
    weights: Vec<f32>,
    attend: Option<AttendScratch>,
}

thread_local! {
    static TASK: std::cell::RefCell<Task> = std::cell::RefCell::default();
}

/// Grow `v` (never shrink) to at least `len` elements.
fn fit(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

impl Task {
    /// Run `f` with this thread's task buffers, sized for `plan` with `n` crops, width `d` and `k`
    /// text rows.
    fn with<R>(
        plan: &PoolPlan,
        n: usize,
        (d, k): (usize, usize),
        r: &CpuRouter,
        f: impl FnOnce(&mut Task) -> R,
    ) -> R {
        TASK.with(|cell| {
            let mut t = cell.borrow_mut();
            let rows = (plan.positions_per_supercell() * n).max(k);
            let tile = plan.supercell_rows() * n;
            let width = [&r.out_proj, &r.linear1, &r.linear2, &r.mlp1]
                .iter()
                .map(|l| l.d_out())
                .max()
                .unwrap_or(d);
            fit(&mut t.feat, tile * d);
            fit(&mut t.proj, tile * 3 * d);
            fit(&mut t.pool, plan.scratch_rows() * 3 * d);
            fit(&mut t.x, rows * d);
            fit(&mut t.qkv, rows * 3 * d);
            fit(&mut t.o, rows * d);
            fit(&mut t.h[0], rows * width);
            fit(&mut t.h[1], rows * width);
            fit(&mut t.weights, rows);
            if !t.attend.as_ref().is_some_and(|a| a.fits(n, r.heads)) {
                t.attend = Some(AttendScratch::new(n, r.heads));
            }
            f(&mut t)
        })
    }
}

impl CpuRouter {
    /// The whole router on supercell `s` of every crop; returns its share of
    /// `Σ_r w_r · GELU(mlp1(row_r))`. Rows are position-major, then crop.
    fn supercell(&self, f: &[f32], at: (&PoolPlan, usize, usize), task: &mut Task) -> Vec<f64> {
        #[cfg(target_arch = "x86_64")]
        if crate::small_gemm::avx512_available() {
            // SAFETY: `avx512_available()` checked AVX-512F, AVX2 and FMA.
            #[allow(unsafe_code)]
            return unsafe { avx2::supercell_avx512(self, f, at, task) };
        }
        #[cfg(target_arch = "x86_64")]
        if crate::small_gemm::available() {
            // SAFETY: `available()` checked AVX2 and FMA.
            #[allow(unsafe_code)]
            return unsafe { avx2::supercell(self, f, at, task) };
        }
        self.supercell_body(f, at, task)
    }

    /// [`Self::supercell`]'s loops, inlined into an AVX2/FMA copy where the CPU has them.
    #[inline(always)]
    fn supercell_body(
        &self,
        f: &[f32],
        (plan, s, side): (&PoolPlan, usize, usize),
        task: &mut Task,
    ) -> Vec<f64> {
        let d = self.in_proj.d_in();
        let l = side * side;
        let n = f.len() / (l * d);
        let (tile, per) = (plan.supercell_rows(), plan.positions_per_supercell());
        let rows = per * n;
        // 1. The tile's rows of every crop, projected (no bias: it is added after pooling).
        for i in 0..n {
            plan.gather(
                s,
                &f[i * l * d..][..l * d],
                d,
                &mut task.feat[i * tile * d..][..tile * d],
            );
        }
        let (feat, proj) = (
            &task.feat[..n * tile * d],
            &mut task.proj[..n * tile * 3 * d],
        );
        self.in_proj.apply_into(feat, proj);
        // 2. Pooled rows and projections, position-major then crop.
        let (x, qkv) = (&mut task.x[..rows * d], &mut task.qkv[..rows * 3 * d]);
        let bias = &self.in_proj.bias;
        for i in 0..n {
            plan.sums(
                &feat[i * tile * d..][..tile * d],
                d,
                &mut task.pool,
                |t, sum, area| {
                    let scale = 1.0 / area as f32;
                    let x = &mut x[(t * n + i) * d..][..d];
                    x.iter_mut().zip(sum).for_each(|(x, v)| *x = v * scale);
                },
            );
            let src = &proj[i * tile * 3 * d..][..tile * 3 * d];
            plan.sums(src, 3 * d, &mut task.pool, |t, sum, area| {
                let scale = 1.0 / area as f32;
                let q = &mut qkv[(t * n + i) * 3 * d..][..3 * d];
                for ((q, v), b) in q.iter_mut().zip(sum).zip(bias) {
                    *q = v * scale + b;
                }
            });
        }
        // 3. Cross-crop attention per position.
        let o = &mut task.o[..rows * d];
        for (q, o) in qkv.chunks_exact(n * 3 * d).zip(o.chunks_exact_mut(n * d)) {
            let scratch = task.attend.as_mut().expect("Task::with sized it");
            attend(q, d, self.heads, scratch, o);
        }
        // 4. The layers, weighted by the voter (the crop mean's 1/n included).
        let inv_n = 1.0 / n as f32;
        let w = &mut task.weights[..rows];
        for (t, wt) in w.chunks_exact_mut(n).enumerate() {
            wt.fill(self.voter[plan.order[s * per + t]] * inv_n);
        }
        self.block_body(o, x, w, &mut task.h)
    }
}

/// AVX2/FMA (and AVX-512) copies of the router's loops (the build targets baseline x86-64, so
/// the compiler vectorises them for SSE2 only): each inlines the `_body` version of its function.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use super::{CpuRouter, PoolPlan, Task};

    /// # Safety
    /// AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block(
        r: &CpuRouter,
        o: &[f32],
        x: &mut [f32],
        w: &[f32],
        h: &mut [Vec<f32>; 2],
    ) -> Vec<f64> {
        r.block_body(o, x, w, h)
    }

    /// [`block`] with 16-lane vectors for the loops the compiler vectorises (elementwise: the
    /// same bits).
    ///
    /// # Safety
    /// AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn block_avx512(
        r: &CpuRouter,
        o: &[f32],
        x: &mut [f32],
        w: &[f32],
        h: &mut [Vec<f32>; 2],
    ) -> Vec<f64> {
        r.block_body(o, x, w, h)
    }

    /// [`supercell`] with 16-lane vectors (pooling sums, scales, bias: elementwise, the same
    /// bits).
    ///
    /// # Safety
    /// AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn supercell_avx512(
        r: &CpuRouter,
        f: &[f32],
        at: (&PoolPlan, usize, usize),
        task: &mut Task,
    ) -> Vec<f64> {
        r.supercell_body(f, at, task)
    }

    /// # Safety
    /// AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn supercell(
        r: &CpuRouter,
        f: &[f32],
        at: (&PoolPlan, usize, usize),
        task: &mut Task,
    ) -> Vec<f64> {
        r.supercell_body(f, at, task)
    }
}

#[cfg(test)]
mod tests {
    use super::select_text;

    #[test]
    fn text_selection_ranks_by_the_mean_of_the_cosines() {
        let d = 3;
        let base: Vec<f32> = (0..40 * d).map(|i| ((i * 37) % 11) as f32 - 4.0).collect();
        // Rows 1 and 4 are equal (a tie: prompt order), row 5 is zero (norm clamped: score 0).
        let text: Vec<f32> = [
            [1.0, 0.0, 0.0],
            [0.2, -1.0, 3.0],
            [-2.0, 1.0, 0.5],
            [0.0, 1.0, 1.0],
            [0.2, -1.0, 3.0],
            [0.0, 0.0, 0.0],
        ]
        .concat();
        let cos = |a: &[f32], b: &[f32]| -> f64 {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let n = |v: &[f32]| {
                v.iter()
                    .map(|x| (*x as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
                    .max(1e-8)
            };
            dot / n(a) / n(b)
        };
        let score = |t: &[f32]| -> f64 { base.chunks(d).map(|b| cos(b, t)).sum::<f64>() / 40.0 };
        let mut want: Vec<usize> = (0..6).collect();
        want.sort_by(|&a, &b| {
            let (sa, sb) = (score(&text[a * d..][..d]), score(&text[b * d..][..d]));
            sb.partial_cmp(&sa).unwrap().then(a.cmp(&b))
        });
        for k in [2usize, 6, 8] {
            let got = select_text(&base, &text, d, k);
            assert_eq!(got.len(), k * d);
            for (r, row) in got.chunks(d).enumerate() {
                match want.get(r) {
                    Some(&i) => assert_eq!(row, &text[i * d..][..d], "k={k} row {r}"),
                    None => assert!(row.iter().all(|v| *v == 0.0), "k={k}: row {r} is padding"),
                }
            }
        }
        let first_tie = want.iter().position(|&i| i == 1).unwrap();
        assert_eq!(want[first_tie + 1], 4, "equal rows keep prompt order");
    }
}
