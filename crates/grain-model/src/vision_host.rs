//! The CLIP encoder layers on host `f32` rows, where every projection of the tower runs the packed
//! kernel ([`crate::linear::Linear::host_panels`]).
//!
//! The tensor path allocates a fresh tensor for each of a layer's dozen ops (LayerNorm, three
//! projections, the scaling of `q`, three head splits and the merge, two residual adds, the MLP).
//! On the CPU each large allocation is fresh pages, and the page faults, the copies and candle's
//! own thread pool for the adds (which spins beside rayon's) took about as much of the tower's
//! time as its matrix products. Here one set of buffers is reused by every layer of a pass and the
//! elementwise steps run on the rayon pool.
//!
//! The arithmetic is the tensor path's: the same packed products, the same attention blocks and
//! activations, and `q` scaled after its projection. Only the LayerNorm differs in its last bits:
//! it is [`NormF32`]'s two-pass mean and variance instead of candle's `E[x²] − mean²`.

use rayon::prelude::*;

use crate::attention_blocks::{self, Mask};
use crate::config::VisionAct;
use crate::host_dense::NormF32;
use crate::panel_gemm::Panels;
use crate::simd;

/// Values per task of the elementwise passes.
const TASK: usize = 1 << 14;

/// A packed projection and its bias.
#[derive(Clone, Copy)]
pub(crate) struct Dense<'a> {
    pub panels: &'a Panels,
    pub bias: Option<&'a [f32]>,
}

impl Dense<'_> {
    fn apply(&self, x: &[f32], out: &mut [f32]) {
        self.panels.apply_par(x, self.bias, out);
    }
}

/// One pre-LN encoder layer: `x += out(attn(LN1 x))`, then `x += fc2(act(fc1(LN2 x)))`.
pub(crate) struct HostLayer<'a> {
    pub q: Dense<'a>,
    pub k: Dense<'a>,
    pub v: Dense<'a>,
    pub out: Dense<'a>,
    pub fc1: Dense<'a>,
    pub fc2: Dense<'a>,
    pub ln1: &'a NormF32,
    pub ln2: &'a NormF32,
    pub heads: usize,
    pub act: VisionAct,
}

/// The buffers of a pass, `rows × width` (and `rows × inter` for the MLP), reused by every layer
/// and kept from pass to pass: they only grow.
#[derive(Default)]
pub(crate) struct Scratch {
    y: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    heads: [Vec<f32>; 4],
    mid: Vec<f32>,
    act: Vec<f32>,
    patches: Vec<f32>,
}

/// [`Scratch`]'s buffers cut to one pass.
struct Buffers<'a> {
    y: &'a mut [f32],
    q: &'a mut [f32],
    k: &'a mut [f32],
    v: &'a mut [f32],
    heads: [&'a mut [f32]; 4],
    mid: &'a mut [f32],
    act: &'a mut [f32],
}

/// The first `len` values of `v`, grown to that length first where it is shorter.
fn cut(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

impl Scratch {
    fn fit(&mut self, rows: usize, width: usize, inter: usize) -> Buffers<'_> {
        let (n, m) = (rows * width, rows * inter);
        let [a, b, c, d] = &mut self.heads;
        Buffers {
            y: cut(&mut self.y, n),
            q: cut(&mut self.q, n),
            k: cut(&mut self.k, n),
            v: cut(&mut self.v, n),
            heads: [cut(a, n), cut(b, n), cut(c, n), cut(d, n)],
            mid: cut(&mut self.mid, m),
            act: cut(&mut self.act, m),
        }
    }
}

impl HostLayer<'_> {
    /// The layer on `x`, `b` crops of `t` rows each, in place.
    pub(crate) fn forward(&self, x: &mut [f32], (b, t): (usize, usize), scratch: &mut Scratch) {
        let d = self.q.panels.n();
        let hd = d / self.heads;
        let shape = (b, t, self.heads, hd);
        assert_eq!(x.len(), b * t * d, "x is (b, t, {d})");
        let s = scratch.fit(b * t, d, self.fc1.panels.n());
        self.ln1.rows_into(x, s.y);
        self.q.apply(s.y, s.q);
        self.k.apply(s.y, s.k);
        self.v.apply(s.y, s.v);
        let [qh, kh, vh, oh] = s.heads;
        split_heads(s.q, qh, shape, (hd as f32).powf(-0.5));
        split_heads(s.k, kh, shape, 1.0);
        split_heads(s.v, vh, shape, 1.0);
        attention_blocks::attend(qh, kh, vh, (b * self.heads, t, t, hd), Mask::Full, oh);
        // The merged heads go to `q`, their projection to `k` (both free now).
        merge_heads(oh, s.q, shape);
        self.out.apply(s.q, s.k);
        add_rows(x, s.k);
        self.ln2.rows_into(x, s.y);
        self.fc1.apply(s.y, s.mid);
        activate(self.act, s.mid, s.act);
        self.fc2.apply(s.act, s.k);
        add_rows(x, s.k);
    }
}

/// The embeddings on the host: the patch convolution (a stride-`p` `p×p` convolution without a
/// bias is a product over flattened patches), the class embedding before each crop's patches,
/// the position embeddings and the pre-LayerNorm.
pub(crate) struct HostEmbed {
    /// The convolution's weight `(hidden, 3·p·p)`, packed.
    pub patch: Panels,
    pub class: Vec<f32>,
    /// `(patches + 1, hidden)`.
    pub position: Vec<f32>,
    pub pre_ln: NormF32,
    pub patch_size: usize,
}

impl HostEmbed {
    /// `pixels` `(b, 3, S, S)` row-major → the first layer's input `(b, (S/p)² + 1, hidden)`.
    pub(crate) fn forward(
        &self,
        pixels: &[f32],
        (b, side): (usize, usize),
        scratch: &mut Scratch,
    ) -> Vec<f32> {
        let (p, d) = (self.patch_size, self.patch.n());
        let g = side / p;
        let t = g * g + 1;
        let k = 3 * p * p;
        assert_eq!(
            pixels.len(),
            b * 3 * side * side,
            "pixels are (b, 3, {side}, {side})"
        );
        assert_eq!(
            self.position.len(),
            t * d,
            "a position embedding per patch and CLS"
        );
        let mut x = vec![0f32; b * t * d];
        let patches = cut(&mut scratch.patches, g * g * k);
        for (crop, xc) in pixels
            .chunks_exact(3 * side * side)
            .zip(x.chunks_exact_mut(t * d))
        {
            // Row `gy·g + gx` holds patch (gy, gx), channel-major, then `p×p` row-major.
            patches
                .par_chunks_mut(g * k)
                .enumerate()
                .for_each(|(gy, band)| {
                    for (gx, row) in band.chunks_exact_mut(k).enumerate() {
                        for (c, plane) in row.chunks_exact_mut(p * p).enumerate() {
                            for (py, dst) in plane.chunks_exact_mut(p).enumerate() {
                                let at = (c * side + gy * p + py) * side + gx * p;
                                dst.copy_from_slice(&crop[at..at + p]);
                            }
                        }
                    }
                });
            let (cls, rest) = xc.split_at_mut(d);
            cls.copy_from_slice(&self.class);
            self.patch.apply_par(patches, None, rest);
            add_rows(xc, &self.position);
        }
        self.pre_ln.rows_in_place(&mut x);
        x
    }
}

/// `(b, t, heads·hd)` rows to `(b·heads, t, hd)`, each value times `scale` (1 leaves it as is).
fn split_heads(
    x: &[f32],
    out: &mut [f32],
    (_, t, heads, hd): (usize, usize, usize, usize),
    scale: f32,
) {
    let d = heads * hd;
    out.par_chunks_mut(t * hd).enumerate().for_each(|(g, o)| {
        let (c, h) = (g / heads, g % heads);
        for (i, oi) in o.chunks_exact_mut(hd).enumerate() {
            let src = &x[(c * t + i) * d + h * hd..][..hd];
            if scale == 1.0 {
                oi.copy_from_slice(src);
            } else {
                oi.iter_mut().zip(src).for_each(|(o, v)| *o = v * scale);
            }
        }
    });
}

/// [`split_heads`]' inverse (no scaling).
fn merge_heads(x: &[f32], out: &mut [f32], (_, t, heads, hd): (usize, usize, usize, usize)) {
    let d = heads * hd;
    out.par_chunks_mut(t * d).enumerate().for_each(|(c, o)| {
        for h in 0..heads {
            let src = &x[(c * heads + h) * t * hd..][..t * hd];
            for (i, si) in src.chunks_exact(hd).enumerate() {
                o[i * d + h * hd..][..hd].copy_from_slice(si);
            }
        }
    });
}

/// `x += h`, in parallel.
fn add_rows(x: &mut [f32], h: &[f32]) {
    assert_eq!(x.len(), h.len(), "residual of another shape");
    x.par_chunks_mut(TASK)
        .zip(h.par_chunks(TASK))
        .for_each(|(x, h)| x.iter_mut().zip(h).for_each(|(x, h)| *x += h));
}

/// The MLP's activation of `x` into `out`, in parallel.
fn activate(act: VisionAct, x: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(TASK)
        .zip(x.par_chunks(TASK))
        .for_each(|(o, x)| match act {
            VisionAct::QuickGelu => simd::quick_gelu(x, o),
            VisionAct::Gelu => simd::gelu_erf(x, o),
        });
}
