//! The `solid` fine layout: every cell is split into a left and a right half (7 px each) of palette
//! colours. A border four cells wide (the outer ring of 4×4 pooling windows) has the dominant
//! colour on one half of every cell; the middle 16×16 cells hold the fine detail: in every 4×4
//! window four cells are *solid* (both halves the answer colour) and the other twelve are two-tone,
//! and every colour fills exactly four left and four right halves. Pooled 4×4 (36 tokens) every
//! middle window therefore shows the same colour mix whatever the answer is (only the tower's
//! nonlinearity keeps a trace); pooled 2×2 a window shows part of the pairing. `block` 2 balances
//! every 2×2 window too (one solid cell in each), meant to hide the pairing from 72 and 144 tokens
//! as well; measured, the fine-tuned tiny LMM then read it best at 36 (docs/rglf.md), so 4 is the
//! default. At 576 tokens every
//! cell keeps a token, so "which colour is paired with itself" is a per-token test the LM can
//! average over the image, without having to find one token among a thousand.

use image::{Rgb, RgbImage};
use rand::seq::SliceRandom;
use rand::Rng;

use super::{shade, Kind, CELL, CELLS, COLOURS, SIDE};

/// Cells per side of a pooling window at 36 tokens per crop (24 / 6).
pub const WINDOW: u32 = 4;

/// What one `solid`-layout image shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolidScene {
    /// The dominant colour (answer to `coarse`).
    pub background: usize,
    /// The colour of the solid cells (answer to `fine`).
    pub solid: usize,
    /// Per cell (row-major) the colours of its left and right halves.
    pub halves: Vec<[usize; 2]>,
    /// Per cell and half a brightness jitter.
    pub jitter: Vec<[i16; 2]>,
}

/// Whether a cell lies in the border ring (outside the middle 16×16 cells).
pub fn in_border(cx: u32, cy: u32) -> bool {
    let lo = WINDOW;
    let hi = CELLS - WINDOW;
    cx < lo || cy < lo || cx >= hi || cy >= hi
}

impl SolidScene {
    /// `block` (2 or 4) is the side in cells of the windows whose colour mix is balanced: 4 hides
    /// the answer from 36-token pooling only, 2 also from 72 and 144 (their windows are unions of
    /// 2×2 cells).
    pub fn sample(rng: &mut impl Rng, jitter: i16, block: u32) -> Self {
        assert!(block == 2 || block == 4, "block must be 2 or 4");
        let n = COLOURS.len();
        let background = rng.random_range(0..n);
        let solid = rng.random_range(0..n);
        let mut halves = vec![[0usize; 2]; (CELLS * CELLS) as usize];
        for cy in 0..CELLS {
            for cx in 0..CELLS {
                if in_border(cx, cy) {
                    let mut other = rng.random_range(0..n - 1);
                    if other >= background {
                        other += 1;
                    }
                    let side = rng.random_range(0..2);
                    let mut h = [other; 2];
                    h[side] = background;
                    halves[(cy * CELLS + cx) as usize] = h;
                }
            }
        }
        // The middle, cut into `block`-sized windows, each balanced on its own.
        let b = block;
        let w = b as usize;
        let per = w * w / 4;
        let others: Vec<usize> = (0..n).filter(|&c| c != solid).collect();
        for wy in WINDOW / b..(CELLS - WINDOW) / b {
            for wx in WINDOW / b..(CELLS - WINDOW) / b {
                let mut slots: Vec<usize> = (0..w * w).collect();
                slots.shuffle(rng);
                // Left halves: each other colour `per` times; right halves a rearrangement of the
                // same with no cell paired with its own colour (rejection: a few dozen tries).
                let mut left: Vec<usize> = others
                    .iter()
                    .flat_map(|&c| std::iter::repeat_n(c, per))
                    .collect();
                left.shuffle(rng);
                let mut right = left.clone();
                loop {
                    right.shuffle(rng);
                    if left.iter().zip(&right).all(|(a, b)| a != b) {
                        break;
                    }
                }
                for (k, &slot) in slots.iter().enumerate() {
                    let (dx, dy) = ((slot % w) as u32, (slot / w) as u32);
                    let cell = ((wy * b + dy) * CELLS + wx * b + dx) as usize;
                    halves[cell] = if k < per {
                        [solid; 2]
                    } else {
                        [left[k - per], right[k - per]]
                    };
                }
            }
        }
        let jitter = (0..CELLS * CELLS)
            .map(|_| {
                [
                    rng.random_range(-jitter..=jitter),
                    rng.random_range(-jitter..=jitter),
                ]
            })
            .collect();
        Self {
            background,
            solid,
            halves,
            jitter,
        }
    }

    pub fn render(&self) -> RgbImage {
        let mut img = RgbImage::new(SIDE, SIDE);
        for (x, y, px) in img.enumerate_pixels_mut() {
            let cell = ((y / CELL) * CELLS + x / CELL) as usize;
            let half = usize::from(x % CELL >= CELL / 2);
            let j = self.jitter[cell][half];
            let c = COLOURS[self.halves[cell][half]].1;
            *px = Rgb(shade(c, j));
        }
        img
    }

    pub fn answer(&self, kind: Kind) -> &'static str {
        match kind {
            Kind::Coarse => COLOURS[self.background].0,
            Kind::Fine => COLOURS[self.solid].0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Colour counts of the left and right halves in the `b`-cell window at (wx, wy).
    fn counts(s: &SolidScene, b: u32, wx: u32, wy: u32) -> (Vec<[usize; 2]>, Vec<[usize; 2]>) {
        let mut count = vec![[0; 2]; COLOURS.len()];
        let mut layout = Vec::new();
        for dy in 0..b {
            for dx in 0..b {
                let h = s.halves[((wy * b + dy) * CELLS + wx * b + dx) as usize];
                count[h[0]][0] += 1;
                count[h[1]][1] += 1;
                layout.push(h);
            }
        }
        (count, layout)
    }

    #[test]
    fn middle_windows_hide_the_answer_in_their_colour_mix() {
        for block in [4, 2] {
            let s = SolidScene::sample(&mut ChaCha8Rng::seed_from_u64(3), 30, block);
            assert_eq!(
                s,
                SolidScene::sample(&mut ChaCha8Rng::seed_from_u64(3), 30, block)
            );
            let mut solid_cells = 0;
            for cy in 0..CELLS {
                for cx in 0..CELLS {
                    let [l, r] = s.halves[(cy * CELLS + cx) as usize];
                    if l == r {
                        // Solid cells are the answer's colour and lie only in the middle.
                        assert_eq!(l, s.solid);
                        assert!(!in_border(cx, cy), "({cx}, {cy})");
                        solid_cells += 1;
                    }
                    if in_border(cx, cy) {
                        assert!(l == s.background || r == s.background);
                    }
                }
            }
            // A quarter of the middle 16×16 cells are solid.
            assert_eq!(solid_cells, 64);
            // Every middle window of `block` cells (and so every 4×4 one): each colour on the
            // same number of left and right halves, and the arrangement differs between windows
            // (it is not one tile repeated).
            for b in [block, 4] {
                let per = (b * b / 4) as usize;
                let mut layouts = std::collections::HashSet::new();
                for wy in WINDOW / b..(CELLS - WINDOW) / b {
                    for wx in WINDOW / b..(CELLS - WINDOW) / b {
                        let (count, layout) = counts(&s, b, wx, wy);
                        assert!(count.iter().all(|c| *c == [per, per]), "{count:?}");
                        layouts.insert(layout);
                    }
                }
                assert!(layouts.len() > 1);
            }
            // The picture shows what the scene says: both halves of a solid cell in its colour.
            let img = s.render();
            let cell = s.halves.iter().position(|h| h[0] == h[1]).unwrap() as u32;
            let (x0, y0) = ((cell % CELLS) * CELL, (cell / CELLS) * CELL);
            for x in [x0 + 1, x0 + CELL - 2] {
                let p = img.get_pixel(x, y0 + CELL / 2).0;
                let want = COLOURS[s.solid].1;
                assert!(p
                    .iter()
                    .zip(want)
                    .all(|(&a, b)| (i16::from(a) - i16::from(b)).abs() <= 30));
            }
            assert_eq!(s.answer(Kind::Fine), COLOURS[s.solid].0);
            assert_eq!(s.answer(Kind::Coarse), COLOURS[s.background].0);
        }
        // With 4×4 balance only, 2×2 windows are not all balanced: 2×2 pooling sees the pairing.
        let s = SolidScene::sample(&mut ChaCha8Rng::seed_from_u64(3), 30, 4);
        let unbalanced = (2..10)
            .flat_map(|wy| (2..10).map(move |wx| (wx, wy)))
            .filter(|&(wx, wy)| counts(&s, 2, wx, wy).0.iter().any(|c| *c != [1, 1]))
            .count();
        assert!(unbalanced > 0);
    }
}
