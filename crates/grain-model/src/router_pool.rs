//! The router's pooling, one *supercell* at a time.
//!
//! Every granularity pools the crop's `side`×`side` map with a window `(kh, kw)` that divides
//! `side`, so the least common multiple `(SH, SW)` of all windows divides `side` too. A supercell is
//! one `SH`×`SW` tile of the map: it holds whole cells of every granularity (for 36…576 on 24×24:
//! 16 + 8 + 4 + 2 + 1 = 31 positions). One task reads the tile's source rows once, then builds each
//! granularity's window sums from the finest granularity already summed whose window divides its
//! own (288 from 576, 144 from 288, …), so the pooling touches each source row once, from cache,
//! instead of once per granularity from memory. Sums of sums are the window sums; only the order
//! of the additions differs from pooling each window directly.
//!
//! Positions are laid out supercell by supercell; [`PoolPlan::order`] maps each back to its index
//! in the concatenated granularity order (for the voter).

use crate::error::Result;

/// One granularity's cells within a supercell.
struct Level {
    /// Pooling window on the crop's map.
    win: (usize, usize),
    /// The level its sums are built from (an index into `levels`), or `None`: the source rows.
    src: Option<usize>,
    /// Cells per supercell: rows, columns.
    cells: (usize, usize),
    /// Index of this granularity's first cell in the concatenated order.
    first: usize,
    /// First row of this level's sums in a task's scratch (in cells).
    at: usize,
}

/// How a `side`×`side` map is pooled at every granularity, supercell by supercell.
pub(crate) struct PoolPlan {
    side: usize,
    /// Supercell size `(SH, SW)`.
    cell: (usize, usize),
    /// In the order the sums are built (window area ascending); output order is the same. A
    /// level's sums sit in a task's scratch from row `at`, except a 1×1 window's (the map's rows).
    levels: Vec<Level>,
    /// Output position → index in the concatenated granularity order.
    pub order: Vec<usize>,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

impl PoolPlan {
    pub(crate) fn new(grans: &[u32], side: usize) -> Result<Self> {
        let mut wins = Vec::with_capacity(grans.len());
        let mut first = 0;
        for &g in grans {
            wins.push((crate::granularity::pool_window(g, side)?, first));
            first += g as usize;
        }
        wins.sort_by_key(|&((kh, kw), first)| (kh * kw, first));
        let cell = wins
            .iter()
            .fold((1, 1), |(a, b), &((kh, kw), _)| (lcm(a, kh), lcm(b, kw)));
        debug_assert!(side.is_multiple_of(cell.0) && side.is_multiple_of(cell.1));
        let mut levels: Vec<Level> = Vec::with_capacity(wins.len());
        let mut at = 0;
        for &((kh, kw), first) in &wins {
            // The largest finer window that divides this one (`levels` is area-ascending); a 1×1
            // window's sums are the source rows themselves, so it is never a source.
            let src = levels
                .iter()
                .rposition(|l| l.win != (1, 1) && kh % l.win.0 == 0 && kw % l.win.1 == 0);
            let cells = (cell.0 / kh, cell.1 / kw);
            levels.push(Level {
                win: (kh, kw),
                src,
                cells,
                first,
                at,
            });
            if (kh, kw) != (1, 1) {
                at += cells.0 * cells.1;
            }
        }
        let per_cell: usize = levels.iter().map(|l| l.cells.0 * l.cells.1).sum();
        let tiles = (side / cell.0, side / cell.1);
        let mut order = Vec::with_capacity(tiles.0 * tiles.1 * per_cell);
        for s in 0..tiles.0 * tiles.1 {
            let (tr, tc) = (s / tiles.1, s % tiles.1);
            for l in &levels {
                for a in 0..l.cells.0 {
                    for b in 0..l.cells.1 {
                        let (r, c) = (tr * l.cells.0 + a, tc * l.cells.1 + b);
                        order.push(l.first + r * (side / l.win.1) + c);
                    }
                }
            }
        }
        Ok(Self {
            side,
            cell,
            levels,
            order,
        })
    }

    /// Supercells per crop map.
    pub(crate) fn supercells(&self) -> usize {
        (self.side / self.cell.0) * (self.side / self.cell.1)
    }

    /// Positions per supercell.
    pub(crate) fn positions_per_supercell(&self) -> usize {
        self.order.len() / self.supercells()
    }

    /// Scratch rows one task needs ([`Self::sums`]).
    pub(crate) fn scratch_rows(&self) -> usize {
        self.levels
            .iter()
            .filter(|l| l.win != (1, 1))
            .map(|l| l.cells.0 * l.cells.1)
            .sum()
    }

    /// Rows per supercell (`SH·SW`).
    pub(crate) fn supercell_rows(&self) -> usize {
        self.cell.0 * self.cell.1
    }

    /// Copy supercell `s` of a crop's map (`side²` rows of `width`, row-major) into `out`
    /// ([`Self::supercell_rows`] rows, row-major within the supercell).
    pub(crate) fn gather(&self, s: usize, map: &[f32], width: usize, out: &mut [f32]) {
        let (sh, sw) = self.cell;
        let (tr, tc) = (s / (self.side / sw), s % (self.side / sw));
        for a in 0..sh {
            let from = ((tr * sh + a) * self.side + tc * sw) * width;
            out[a * sw * width..][..sw * width].copy_from_slice(&map[from..][..sw * width]);
        }
    }

    /// Window sums of one supercell of one crop: `src` holds its rows as [`Self::gather`] writes
    /// them, `scratch` [`Self::scratch_rows`] rows. Calls `emit(t, sum, area)` for each of the
    /// supercell's positions `t` in output order, `sum` the window's sum and `area` its size.
    #[inline(always)]
    pub(crate) fn sums(
        &self,
        src: &[f32],
        width: usize,
        scratch: &mut [f32],
        mut emit: impl FnMut(usize, &[f32], usize),
    ) {
        let (sh, sw) = self.cell;
        // Row `(a, b)` of the supercell.
        let source = |a: usize, b: usize| (a * sw + b) * width;
        let mut t = 0;
        for l in &self.levels {
            if l.win == (1, 1) {
                for a in 0..sh {
                    for b in 0..sw {
                        emit(t, &src[source(a, b)..][..width], 1);
                        t += 1;
                    }
                }
                continue;
            }
            // The source grid: a summed level's window and cells per supercell row, or the map.
            let ((skh, skw), s_level) = match l.src {
                Some(j) => (self.levels[j].win, Some(&self.levels[j])),
                None => ((1, 1), None),
            };
            let (rh, rw) = (l.win.0 / skh, l.win.1 / skw);
            let (head, tail) = scratch.split_at_mut(l.at * width);
            for a in 0..l.cells.0 {
                for b in 0..l.cells.1 {
                    let out = &mut tail[(a * l.cells.1 + b) * width..][..width];
                    let row = |i: usize, j: usize| -> &[f32] {
                        let (r, c) = (a * rh + i, b * rw + j);
                        match s_level {
                            Some(sl) => &head[(sl.at + r * sl.cells.1 + c) * width..][..width],
                            None => &src[source(r, c)..][..width],
                        }
                    };
                    out.copy_from_slice(row(0, 0));
                    for i in 0..rh {
                        for j in (0..rw).skip(usize::from(i == 0)) {
                            out.iter_mut().zip(row(i, j)).for_each(|(o, v)| *o += v);
                        }
                    }
                    emit(t, out, l.win.0 * l.win.1);
                    t += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supercell_sums_equal_direct_window_sums_in_concatenated_order() {
        let side = 24;
        let width = 3;
        let src: Vec<f32> = (0..side * side * width)
            .map(|i| ((i * 7919) % 101) as f32 - 50.0)
            .collect();
        for grans in [
            vec![36u32, 72, 144, 288, 576],
            vec![576, 36],
            vec![144, 72],
            vec![288],
        ] {
            let plan = PoolPlan::new(&grans, side).unwrap();
            let total: usize = grans.iter().map(|&g| g as usize).sum();
            assert_eq!(plan.order.len(), total);
            // Direct sums per concatenated index.
            let mut want = Vec::new();
            for &g in &grans {
                let (kh, kw) = crate::granularity::pool_window(g, side).unwrap();
                for c in 0..g as usize {
                    let (r, col) = (c / (side / kw), c % (side / kw));
                    let mut s = vec![0f32; width];
                    for i in 0..kh {
                        for j in 0..kw {
                            let at = ((r * kh + i) * side + col * kw + j) * width;
                            s.iter_mut()
                                .zip(&src[at..at + width])
                                .for_each(|(s, v)| *s += v);
                        }
                    }
                    want.push((s, kh * kw));
                }
            }
            let per = plan.positions_per_supercell();
            let mut scratch = vec![0f32; plan.scratch_rows() * width];
            let mut local = vec![0f32; plan.supercell_rows() * width];
            let mut seen = vec![false; total];
            for s in 0..plan.supercells() {
                plan.gather(s, &src, width, &mut local);
                plan.sums(&local, width, &mut scratch, |t, sum, area| {
                    let p = plan.order[s * per + t];
                    assert!(!seen[p], "{grans:?}: position {p} twice");
                    seen[p] = true;
                    assert_eq!(area, want[p].1);
                    // Integers: exact in any order.
                    assert_eq!(sum, want[p].0.as_slice(), "{grans:?}: position {p}");
                });
            }
            assert!(seen.iter().all(|&s| s), "{grans:?}: every position once");
        }
    }
}
