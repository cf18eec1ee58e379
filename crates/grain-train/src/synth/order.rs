//! The `order` fine layout: the answer hides in the *position inside a pooling window*, which
//! average pooling destroys exactly (in pixels).
//!
//! Every pooling window of every granularity below 576 (288: 1×2 cells, 144: 2×2, 72: 2×4, 36:
//! 4×4) is a union of horizontal cell pairs `(cx, cx + 1)` with `cx` even. The image is tiled with
//! such pairs of two different colours:
//!
//! - every pair but the fine ones has the dominant colour `D` on one side (random which) and another
//!   colour on the other, so `D` covers half of every pooling window without fine pairs
//!   (`coarse` answer);
//! - the first `fine_pairs` pairs in row-major order (12 per row; default one: cells (0, 0) and
//!   (1, 0)) hold the fine pair: `F` on the left, `G` on the right, two different colours other
//!   than `D`. The `fine` question asks for the colour of the top-left cell, `F`.
//!
//! Pooled at any granularity but 576, the fine pair shows as the mix {F, G} and the scene with F and
//! G swapped has the same colour multiset in every window: at best a 50% guess (ln 2 per answer
//! token) from 288 down. At 576 the top-left cell keeps a token of its own, at a fixed place in the
//! sequence: the base view's first token and, in the left anyres tile (the 336×336 image is padded
//! to 672 wide, 168 px = 12 cells each side), the token in row 0, column 12 (even, and a multiple
//! of 4, so every pooling window stays aligned with the pairs). Only the vision tower's
//! nonlinearity (position embeddings, attention) can leave a trace of the order after pooling.
//! Measured (docs/rglf.md): the tiny LMM does not learn one or 12 fine pairs in 6 epochs; 48 (the
//! top four rows, `--order-pairs 48`) and 12 epochs make 576 its best fine granularity.

use image::{Rgb, RgbImage};
use rand::Rng;

use super::{shade, Kind, CELL, CELLS, COLOURS, SIDE};

/// Most fine pairs allowed: half of the image's 288 pairs, so `D` still dominates.
pub const MAX_FINE_PAIRS: u32 = CELLS * CELLS / 4;

/// The cell whose colour the `fine` question asks for: top-left.
pub const FINE_CELL: (u32, u32) = (0, 0);
/// The `fine` question of this layout (every word is in the tiny tokenizer).
pub const ORDER_FINE_QUESTION: &str = "what colour is the top left shape?";

/// What one `order`-layout image shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderScene {
    /// The dominant colour (answer to `coarse`).
    pub background: usize,
    /// Left colour of the fine pair(s) (answer to `fine`).
    pub fine: usize,
    /// Right colour of the fine pair(s).
    pub partner: usize,
    /// How many pairs, in row-major order from the top-left, are fine pairs.
    pub fine_pairs: u32,
    /// Per cell (row-major) its colour.
    pub cells: Vec<usize>,
    /// Per cell a brightness jitter.
    pub jitter: Vec<i16>,
}

impl OrderScene {
    /// `fine_pairs` (1..=[`MAX_FINE_PAIRS`]): pairs, in row-major order from the top-left (12 per
    /// row), that show `F G`.
    pub fn sample(rng: &mut impl Rng, jitter: i16, fine_pairs: u32) -> Self {
        assert!(
            (1..=MAX_FINE_PAIRS).contains(&fine_pairs),
            "fine_pairs must be 1..={MAX_FINE_PAIRS}"
        );
        let n = COLOURS.len();
        let background = rng.random_range(0..n);
        let others: Vec<usize> = (0..n).filter(|&c| c != background).collect();
        let fi = rng.random_range(0..others.len());
        let mut gi = rng.random_range(0..others.len() - 1);
        if gi >= fi {
            gi += 1;
        }
        let (fine, partner) = (others[fi], others[gi]);
        let mut cells = vec![0usize; (CELLS * CELLS) as usize];
        for cy in 0..CELLS {
            for px in 0..CELLS / 2 {
                let i = (cy * CELLS + 2 * px) as usize;
                if cy * (CELLS / 2) + px < fine_pairs {
                    cells[i] = fine;
                    cells[i + 1] = partner;
                } else {
                    let other = others[rng.random_range(0..others.len())];
                    if rng.random_bool(0.5) {
                        cells[i] = background;
                        cells[i + 1] = other;
                    } else {
                        cells[i] = other;
                        cells[i + 1] = background;
                    }
                }
            }
        }
        let jitter = (0..CELLS * CELLS)
            .map(|_| rng.random_range(-jitter..=jitter))
            .collect();
        Self {
            background,
            fine,
            partner,
            fine_pairs,
            cells,
            jitter,
        }
    }

    /// The same scene with every fine pair's two colours swapped (so the `fine` answer changes).
    pub fn swapped(&self) -> Self {
        let mut s = self.clone();
        std::mem::swap(&mut s.fine, &mut s.partner);
        for k in 0..self.fine_pairs {
            let i = (2 * k) as usize;
            s.cells.swap(i, i + 1);
        }
        s
    }

    pub fn render(&self) -> RgbImage {
        let mut img = RgbImage::new(SIDE, SIDE);
        for (x, y, px) in img.enumerate_pixels_mut() {
            let cell = ((y / CELL) * CELLS + x / CELL) as usize;
            let j = self.jitter[cell];
            let c = COLOURS[self.cells[cell]].1;
            *px = Rgb(shade(c, j));
        }
        img
    }

    pub fn answer(&self, kind: Kind) -> &'static str {
        match kind {
            Kind::Coarse => COLOURS[self.background].0,
            Kind::Fine => COLOURS[self.fine].0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Pooling windows `(rows, cols)` in cells of 288, 144, 72 and 36 tokens per crop.
    const POOLED: [(u32, u32); 4] = [(1, 2), (2, 2), (2, 4), (4, 4)];

    /// Sorted colours of the window of `kh`×`kw` cells at window index (wx, wy).
    fn window(s: &OrderScene, kh: u32, kw: u32, wx: u32, wy: u32) -> Vec<usize> {
        let mut v: Vec<usize> = (0..kh)
            .flat_map(|dy| (0..kw).map(move |dx| (dx, dy)))
            .map(|(dx, dy)| s.cells[((wy * kh + dy) * CELLS + wx * kw + dx) as usize])
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn pooling_windows_cannot_tell_the_fine_order_apart() {
        for fine_pairs in [1, 4, 12, 48] {
            for seed in 0..8 {
                let s = OrderScene::sample(&mut ChaCha8Rng::seed_from_u64(seed), 30, fine_pairs);
                assert_eq!(
                    s,
                    OrderScene::sample(&mut ChaCha8Rng::seed_from_u64(seed), 30, fine_pairs)
                );
                assert_ne!(s.fine, s.partner);
                assert_ne!(s.fine, s.background);
                assert_ne!(s.partner, s.background);
                let t = s.swapped();
                assert_ne!(s.answer(Kind::Fine), t.answer(Kind::Fine));
                assert_eq!(s.answer(Kind::Coarse), t.answer(Kind::Coarse));
                // Every window of every pooled granularity: the same colours either way round.
                for (kh, kw) in POOLED {
                    for wy in 0..CELLS / kh {
                        for wx in 0..CELLS / kw {
                            assert_eq!(window(&s, kh, kw, wx, wy), window(&t, kh, kw, wx, wy));
                        }
                    }
                }
                // At 576 the top-left cell tells them apart.
                let (fx, fy) = FINE_CELL;
                assert_ne!(window(&s, 1, 1, fx, fy), window(&t, 1, 1, fx, fy));
            }
        }
    }

    #[test]
    fn pairs_are_two_colours_and_the_dominant_fills_half_of_every_window() {
        let s = OrderScene::sample(&mut ChaCha8Rng::seed_from_u64(1), 30, 1);
        for cy in 0..CELLS {
            for px in 0..CELLS / 2 {
                let i = (cy * CELLS + 2 * px) as usize;
                assert_ne!(s.cells[i], s.cells[i + 1]);
                if (cy, px) != (0, 0) {
                    assert!(s.cells[i] == s.background || s.cells[i + 1] == s.background);
                }
            }
        }
        for wy in 0..CELLS / 4 {
            for wx in 0..CELLS / 4 {
                let d = window(&s, 4, 4, wx, wy)
                    .iter()
                    .filter(|&&c| c == s.background)
                    .count();
                let want = if (wx, wy) == (0, 0) { 7 } else { 8 };
                assert_eq!(d, want, "window ({wx}, {wy})");
            }
        }
        // Not one tile repeated: the non-dominant colours and the sides vary.
        let rows: std::collections::HashSet<_> = (1..CELLS)
            .map(|cy| s.cells[(cy * CELLS) as usize..((cy + 1) * CELLS) as usize].to_vec())
            .collect();
        assert!(rows.len() > 10);
    }

    #[test]
    fn the_answer_is_the_rendered_top_left_cell() {
        for seed in 0..4 {
            let s = OrderScene::sample(&mut ChaCha8Rng::seed_from_u64(seed), 30, 1);
            let img = s.render();
            let (fx, fy) = FINE_CELL;
            let near = |x: u32, y: u32, c: usize| {
                img.get_pixel(x, y)
                    .0
                    .iter()
                    .zip(COLOURS[c].1)
                    .all(|(&a, b)| (i16::from(a) - i16::from(b)).abs() <= 30)
            };
            for (x, y) in [(1, 1), (CELL / 2, CELL / 2), (CELL - 2, CELL - 2)] {
                assert!(near(fx * CELL + x, fy * CELL + y, s.fine));
                assert!(near((fx + 1) * CELL + x, fy * CELL + y, s.partner));
            }
            assert_eq!(s.answer(Kind::Fine), COLOURS[s.fine].0);
            assert_eq!(s.answer(Kind::Coarse), COLOURS[s.background].0);
        }
    }
}
