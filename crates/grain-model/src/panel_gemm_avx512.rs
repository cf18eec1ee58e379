//! The AVX-512 form of [`super::avx2`]'s tiles: a panel's 16 outputs fill one 16-lane register,
//! and a tile of up to 8 rows × 2 panels keeps sixteen FMA accumulators busy with two weight loads
//! and eight broadcasts per channel (a lone last panel gets 1-panel tiles). Each output is still
//! one FMA chain over `k` in channel order with the bias added last, so the results are the same
//! bits as the AVX2 tiles', on any row count.

use std::arch::x86_64::*;

use super::{PANEL, ROW_CHUNK};

/// How many channels ahead the first row tile of a chunk asks for its panels' lines
/// (`PANEL` floats, one 64-byte line, per channel and panel): 4 KB ahead in each panel stream.
/// That tile is the one that streams the panels in from L3 or memory (the chunk's later tiles find
/// them in L1/L2). A 16-row decode step of the small preset, whose weights (48 MB) do not fit in
/// the L3, went from 2.07–2.11 to 1.89–1.94 ms with it (`decode_step small 128`, five alternated
/// runs); the prefetch changes no arithmetic.
const PREFETCH: usize = 64;

/// What a tile prefetches: nothing, its own panels [`PREFETCH`] channels ahead (the chunk's first
/// tile on them), or into L2 the next panels' line of each channel it reads (the chunk's last
/// tile, when it is not also the first: it computes from cache while the next panels come in).
/// `NEXT` took the small preset's 16-row step from 2.14–2.22 to 1.97–2.09 ms (four alternated
/// pairs) and text at c=16 in the server from 3691–3881 to 4044–4211 tok/s (three pairs); the
/// 2377-token prefill and the medium preset's steps did not move.
const NONE: u8 = 0;
const AHEAD: u8 = 1;
const NEXT: u8 = 2;

/// Panels `ps` against every row, as [`super::avx2::apply`] does.
///
/// # Safety
/// AVX-512F; `x` `m × k`, `panels` `n × k`, `bias` `n`, `out` valid for `m × n` writes with
/// nothing else touching the columns of panels `ps`, `n % 16 == 0`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn apply(
    x: &[f32],
    panels: &[f32],
    bias: Option<&[f32]>,
    (m, k, n): (usize, usize, usize),
    relu: bool,
    out: *mut f32,
    ps: std::ops::Range<usize>,
) {
    // SAFETY: as this function's, with `x` rows and panels `k` apart.
    unsafe { apply_strided(x, panels, bias, (m, k, n), (k, k), relu, out, ps) }
}

/// [`super::avx2::apply_strided`] in 16 lanes.
///
/// # Safety
/// As [`apply`]'s, with `x` `m × kx` and `panels` `n × kp`, `k ≤ kx`, `k ≤ kp`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn apply_strided(
    x: &[f32],
    panels: &[f32],
    bias: Option<&[f32]>,
    (m, k, n): (usize, usize, usize),
    (kx, kp): (usize, usize),
    relu: bool,
    out: *mut f32,
    ps: std::ops::Range<usize>,
) {
    let mut chunk = 0;
    while chunk < m {
        let end = (chunk + ROW_CHUNK).min(m);
        let mut p = ps.start;
        while p < ps.end {
            let pair = p + 1 < ps.end;
            let mut r = chunk;
            while r < end {
                let rows = tile_rows(end - r);
                let at = Tile {
                    r,
                    p,
                    k,
                    kx,
                    kp,
                    n,
                    relu,
                };
                let step = if pair { 2 } else { 1 };
                let fetch = if r == chunk {
                    AHEAD
                } else if r + rows == end && (p + 2 * step) * PANEL * kp <= panels.len() {
                    NEXT
                } else {
                    NONE
                };
                // SAFETY: AVX-512F enabled; rows `r..r+rows` and panels `p..p+1(+1)` in bounds.
                unsafe {
                    match (pair, fetch) {
                        (true, AHEAD) => tile_of::<2, AHEAD>(rows, x, panels, bias, at, out),
                        (true, NEXT) => tile_of::<2, NEXT>(rows, x, panels, bias, at, out),
                        (true, _) => tile_of::<2, NONE>(rows, x, panels, bias, at, out),
                        (false, AHEAD) => tile_of::<1, AHEAD>(rows, x, panels, bias, at, out),
                        (false, NEXT) => tile_of::<1, NEXT>(rows, x, panels, bias, at, out),
                        (false, _) => tile_of::<1, NONE>(rows, x, panels, bias, at, out),
                    }
                }
                r += rows;
            }
            p += if pair { 2 } else { 1 };
        }
        chunk = end;
    }
}

/// Rows for the next tile when `left` remain: eight, the last tiles sharing what is left evenly.
fn tile_rows(left: usize) -> usize {
    let tiles = left.div_ceil(8);
    left.div_ceil(tiles)
}

/// [`tile`] with `rows` (1 to 8) as its const row count.
///
/// # Safety
/// As [`tile`]'s.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_of<const P: usize, const FETCH: u8>(
    rows: usize,
    x: &[f32],
    panels: &[f32],
    bias: Option<&[f32]>,
    at: Tile,
    out: *mut f32,
) {
    // SAFETY: as this function's.
    unsafe {
        match rows {
            8 => tile::<8, P, FETCH>(x, panels, bias, at, out),
            7 => tile::<7, P, FETCH>(x, panels, bias, at, out),
            6 => tile::<6, P, FETCH>(x, panels, bias, at, out),
            5 => tile::<5, P, FETCH>(x, panels, bias, at, out),
            4 => tile::<4, P, FETCH>(x, panels, bias, at, out),
            3 => tile::<3, P, FETCH>(x, panels, bias, at, out),
            2 => tile::<2, P, FETCH>(x, panels, bias, at, out),
            _ => tile::<1, P, FETCH>(x, panels, bias, at, out),
        }
    }
}

#[derive(Clone, Copy)]
struct Tile {
    r: usize,
    p: usize,
    /// Channels summed.
    k: usize,
    /// Row stride of `x`.
    kx: usize,
    /// Channels per panel.
    kp: usize,
    n: usize,
    relu: bool,
}

/// Rows `r .. r + R` against panels `p .. p + P`: `R × 16P` outputs. `FETCH`: what it prefetches
/// ([`NONE`], [`AHEAD`] or [`NEXT`]).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const R: usize, const P: usize, const FETCH: u8>(
    x: &[f32],
    panels: &[f32],
    bias: Option<&[f32]>,
    Tile {
        r,
        p,
        k,
        kx,
        kp,
        n,
        relu,
    }: Tile,
    out: *mut f32,
) {
    debug_assert!((r + R - 1) * kx + k <= x.len() && (p + P) * PANEL * kp <= panels.len());
    let xp = x.as_ptr();
    let wp: [*const f32; P] =
        std::array::from_fn(|j| panels.as_ptr().wrapping_add((p + j) * kp * PANEL));
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    // SAFETY: channel `c < k` of rows `r + i < m` and of panels `p + j`, all inside the slices.
    unsafe {
        for c in 0..k {
            if FETCH == AHEAD {
                for w in &wp {
                    // A hint only: an address past the panels' end does not fault.
                    let ahead = w.wrapping_add((c + PREFETCH) * PANEL);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast::<i8>());
                }
            } else if FETCH == NEXT {
                for w in &wp {
                    let next = w.wrapping_add((P * kp + c) * PANEL);
                    _mm_prefetch::<_MM_HINT_T1>(next.cast::<i8>());
                }
            }
            let w: [__m512; P] = std::array::from_fn(|j| _mm512_loadu_ps(wp[j].add(c * PANEL)));
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*xp.add((r + i) * kx + c));
                for j in 0..P {
                    a[j] = _mm512_fmadd_ps(xv, w[j], a[j]);
                }
            }
        }
        let b: [__m512; P] = std::array::from_fn(|j| match bias {
            Some(b) => _mm512_loadu_ps(b.as_ptr().add((p + j) * PANEL)),
            None => _mm512_setzero_ps(),
        });
        let zero = _mm512_setzero_ps();
        for (i, a) in acc.iter().enumerate() {
            for j in 0..P {
                let mut v = _mm512_add_ps(a[j], b[j]);
                if relu {
                    v = _mm512_max_ps(v, zero);
                }
                _mm512_storeu_ps(out.add((r + i) * n + (p + j) * PANEL), v);
            }
        }
    }
}
