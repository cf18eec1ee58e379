//! Multi-granularity pooling, the `spatial_unpad` merge, and exact visual-token counting.
//!
//! The counting functions are pure arithmetic and must agree with the tensor merge exactly: the
//! scheduler admits requests with these numbers before any tensor exists.

use candle_core::{Tensor, D};

use crate::config::{LlavaConfig, UnpadRounding};
use crate::error::{ModelError, Result};
use crate::image::anyres::grid_shape;

/// Average-pooling window `(rows, cols)` that turns a `side`×`side` map into `g` tokens, following
/// AVG-LLaVA: half the tokens → 1×2, an eighth → 2×4, otherwise a square window.
pub fn pool_window(g: u32, side: usize) -> Result<(usize, usize)> {
    let l = side * side;
    let g = g as usize;
    let win = if g == l {
        (1, 1)
    } else if g * 2 == l {
        (1, 2)
    } else if g * 8 == l {
        (2, 4)
    } else {
        let k = (l as f64 / g as f64).sqrt().round() as usize;
        (k, k)
    };
    if win.0 == 0
        || !side.is_multiple_of(win.0)
        || !side.is_multiple_of(win.1)
        || (side / win.0) * (side / win.1) != g
    {
        return Err(ModelError::Input(format!(
            "granularity {g} does not tile a {side}x{side} map"
        )));
    }
    Ok(win)
}

/// The per-crop map shape `(h, w)` the merge code assumes for `l` tokens: square when `l` is a
/// perfect square, else `h = 2·⌊√(l/2)⌋`, `w = l/h` (AVG-LLaVA's rule; exact for 288 → 24×12 and
/// 72 → 12×6).
pub fn tile_map_shape(l: usize) -> (usize, usize) {
    let r = (l as f64).sqrt() as usize;
    if r * r == l {
        (r, r)
    } else {
        let h = 2 * ((l as f64 / 2.0).sqrt() as usize);
        (h, l / h)
    }
}

/// Pool projected crop features `(n, side*side, D)` to `g` tokens per crop, row-major.
pub fn pool(features: &Tensor, g: u32) -> Result<Tensor> {
    let side = square_side(features)?;
    let (kh, kw) = pool_window(g, side)?;
    pool_map(features, side, side, kh, kw)
}

fn square_side(features: &Tensor) -> Result<usize> {
    let (_, l, _) = features.dims3()?;
    let side = (l as f64).sqrt() as usize;
    if side * side != l {
        return Err(ModelError::Input(format!(
            "{l} tokens per crop is not a square map"
        )));
    }
    Ok(side)
}

/// Average-pool row-major `rows`×`cols` maps `(n, rows*cols, C)` with a `kh`×`kw` window and equal
/// stride. Window sums are adds of strided views (no reduction kernels), columns first, then rows.
fn pool_map(x: &Tensor, rows: usize, cols: usize, kh: usize, kw: usize) -> Result<Tensor> {
    let (n, _, c) = x.dims3()?;
    if (kh, kw) == (1, 1) {
        return Ok(x.clone());
    }
    // Sum of `k` equal slices of each row of an `(r, k·w)` matrix.
    let fold = |t: &Tensor, r: usize, k: usize, w: usize| -> Result<Tensor> {
        let m = t.reshape((r, k * w))?;
        let mut acc = m.narrow(1, 0, w)?;
        for i in 1..k {
            acc = (acc + m.narrow(1, i * w, w)?)?;
        }
        Ok(acc)
    };
    let mut t = x.clone();
    if kw > 1 {
        t = fold(&t, n * rows * cols / kw, kw, c)?;
    }
    if kh > 1 {
        t = fold(&t, n * rows / kh, kh, cols / kw * c)?;
    }
    let t = t.affine(1.0 / (kh * kw) as f64, 0.0)?;
    Ok(t.reshape((n, (rows / kh) * (cols / kw), c))?)
}

/// Rows and columns kept by `unpad_image` on a `cur_h`×`cur_w` map for an image of `img_w`×`img_h`:
/// `(row_start, rows, col_start, cols)`.
pub fn unpad_window(
    cur_h: usize,
    cur_w: usize,
    img_w: u32,
    img_h: u32,
    rounding: UnpadRounding,
) -> (usize, usize, usize, usize) {
    let (ow, oh) = (f64::from(img_w), f64::from(img_h));
    let (cw, ch) = (cur_w as f64, cur_h as f64);
    let round = |x: f64| -> i64 {
        match rounding {
            UnpadRounding::Truncate => x as i64,
            // Python's round(x, 7): correctly rounded decimal, like Rust's formatting.
            UnpadRounding::Round7 => format!("{x:.7}").parse::<f64>().unwrap_or(x) as i64,
        }
    };
    if ow / oh > cw / ch {
        let scale = cw / ow;
        let new_h = round(oh * scale);
        let pad = (cur_h as i64 - new_h).div_euclid(2).max(0) as usize;
        (pad, cur_h.saturating_sub(2 * pad), 0, cur_w)
    } else {
        let scale = ch / oh;
        let new_w = round(ow * scale);
        let pad = (cur_w as i64 - new_w).div_euclid(2).max(0) as usize;
        (0, cur_h, pad, cur_w.saturating_sub(2 * pad))
    }
}

/// Exact number of visual tokens an image of `img_w`×`img_h` costs at granularity `g`: base crop,
/// then the stitched and unpadded tiles with one newline per row. No tensor work.
pub fn visual_tokens(img_w: u32, img_h: u32, g: u32, config: &LlavaConfig) -> Result<usize> {
    let side = config.vision.patches_per_side();
    pool_window(g, side)?;
    let l = g as usize;
    let (gh, gw) = grid_shape(img_w, img_h, config);
    if gh * gw == 0 {
        return Ok(l + 1);
    }
    let (h, w) = tile_map_shape(l);
    let (_, rows, _, cols) = unpad_window(gh * h, gw * w, img_w, img_h, config.unpad_rounding);
    Ok(l + rows * (cols + 1))
}

/// Merge one image's pooled crops `(n, g, D)` (base first) into its token sequence `(tokens, D)`.
pub fn merge(
    crops: &Tensor,
    img_w: u32,
    img_h: u32,
    newline: &Tensor,
    config: &LlavaConfig,
) -> Result<Tensor> {
    let (n, l, d) = crops.dims3()?;
    let newline = newline.to_dtype(crops.dtype())?.reshape((1, d))?;
    if n == 1 {
        return Ok(Tensor::cat(&[&crops.get(0)?, &newline], 0)?);
    }
    let (gh, gw) = grid_shape(img_w, img_h, config);
    if gh * gw != n - 1 {
        return Err(ModelError::Input(format!(
            "image {img_w}x{img_h} needs {} tiles but {} crops were given",
            gh * gw,
            n - 1
        )));
    }
    let (h, w) = tile_map_shape(l);
    let base = crops.get(0)?;
    let map = crops
        .narrow(0, 1, n - 1)?
        .reshape((gh, gw, h, w, d))?
        .permute((0, 2, 1, 3, 4))?
        .reshape((gh * h, gw * w, d))?;
    let (r0, rows, c0, cols) = unpad_window(gh * h, gw * w, img_w, img_h, config.unpad_rounding);
    let map = map.narrow(0, r0, rows)?.narrow(1, c0, cols)?;
    let nl = newline.reshape((1, 1, d))?.broadcast_as((rows, 1, d))?;
    let map = Tensor::cat(&[&map, &nl.contiguous()?], 1)?.reshape((rows * (cols + 1), d))?;
    Ok(Tensor::cat(&[&base, &map], 0)?)
}

/// Concatenate one image's crops pooled at every granularity of `grans` along the token axis:
/// `(n, Σg, C)`, the router's visual input (any width `C`). Each granularity is pooled from the
/// finest one already computed whose window divides its own (576 → 288 → 144 → 72 → 36 for the
/// released set), so the whole set costs about two passes over the features instead of five. A
/// mean of equal-sized window means is the window mean, so only float rounding differs.
pub fn pool_all(features: &Tensor, grans: &[u32]) -> Result<Tensor> {
    let side = square_side(features)?;
    let mut order: Vec<usize> = (0..grans.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(grans[i]));
    let mut done: Vec<((usize, usize), Tensor)> = Vec::with_capacity(grans.len());
    let mut pooled: Vec<Option<Tensor>> = vec![None; grans.len()];
    for i in order {
        let (kh, kw) = pool_window(grans[i], side)?;
        let ((sh, sw), src) = done
            .iter()
            .filter(|((sh, sw), _)| kh % sh == 0 && kw % sw == 0)
            .max_by_key(|((sh, sw), _)| sh * sw)
            .map(|(w, t)| (*w, t.clone()))
            .unwrap_or(((1, 1), features.clone()));
        let t = pool_map(&src, side / sh, side / sw, kh / sh, kw / sw)?;
        done.push(((kh, kw), t.clone()));
        pooled[i] = Some(t);
    }
    let pooled: Vec<Tensor> = pooled.into_iter().flatten().collect();
    Ok(Tensor::cat(&pooled, D::Minus2)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LlavaConfig, UnpadRounding};

    fn avg_config() -> LlavaConfig {
        let v = serde_json::json!({
            "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
            "mm_vision_tower": "openai/clip-vit-large-patch14-336",
            "image_grid_pinpoints": "[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]",
        });
        LlavaConfig::from_json(&v).unwrap()
    }

    #[test]
    fn windows() {
        assert_eq!(pool_window(576, 24).unwrap(), (1, 1));
        assert_eq!(pool_window(288, 24).unwrap(), (1, 2));
        assert_eq!(pool_window(144, 24).unwrap(), (2, 2));
        assert_eq!(pool_window(72, 24).unwrap(), (2, 4));
        assert_eq!(pool_window(36, 24).unwrap(), (4, 4));
        assert!(pool_window(100, 24).is_err());
        assert_eq!(tile_map_shape(288), (24, 12));
        assert_eq!(tile_map_shape(72), (12, 6));
    }

    /// The totals DESIGN.md §3 gives for the released model.
    #[test]
    fn design_totals() {
        let c = avg_config();
        assert_eq!(c.unpad_rounding, UnpadRounding::Truncate);
        let cases = [
            ((672, 672), [192, 228, 744, 888, 2928]),
            ((1000, 500), [114, 150, 444, 588, 1752]),
            ((1008, 336), [150, 186, 588, 732, 2328]),
        ];
        for ((w, h), want) in cases {
            let got: Vec<usize> = [36, 72, 144, 288, 576]
                .iter()
                .map(|&g| visual_tokens(w, h, g, &c).unwrap())
                .collect();
            assert_eq!(got, want, "{w}x{h}");
        }
    }

    /// The chained pooling equals pooling each granularity straight from the features, and
    /// `pool` equals a plain loop over windows (independent of the tensor code).
    #[test]
    fn pooling_matches_direct_window_means() {
        let (n, side, c) = (2usize, 24usize, 3usize);
        let data: Vec<f32> = (0..n * side * side * c)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
            .collect();
        let dev = candle_core::Device::Cpu;
        let f = Tensor::from_vec(data.clone(), (n, side * side, c), &dev).unwrap();
        let grans = [36u32, 72, 144, 288, 576];
        let all = pool_all(&f, &grans).unwrap();
        let mut off = 0;
        for &g in &grans {
            let (kh, kw) = pool_window(g, side).unwrap();
            let direct = pool(&f, g).unwrap();
            let chained = all.narrow(1, off, g as usize).unwrap();
            off += g as usize;
            let (a, b) = (
                direct.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                chained.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            for (idx, (&x, &y)) in a.iter().zip(&b).enumerate() {
                // The window mean computed by hand.
                let (crop, tok, ch) = (idx / (g as usize * c), (idx / c) % g as usize, idx % c);
                let (r, q) = (tok / (side / kw), tok % (side / kw));
                let mut want = 0.0f64;
                for dr in 0..kh {
                    for dq in 0..kw {
                        let p = (r * kh + dr) * side + q * kw + dq;
                        want += f64::from(data[(crop * side * side + p) * c + ch]);
                    }
                }
                let want = (want / (kh * kw) as f64) as f32;
                assert!((x - want).abs() <= 1e-5, "pool {g} [{idx}]: {x} vs {want}");
                assert!(
                    (y - want).abs() <= 1e-5,
                    "chained {g} [{idx}]: {y} vs {want}"
                );
            }
        }
        assert_eq!(off, all.dim(1).unwrap());
    }
}
