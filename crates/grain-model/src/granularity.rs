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
    if win.0 == 0 || side % win.0 != 0 || side % win.1 != 0 || (side / win.0) * (side / win.1) != g
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
    let (n, l, d) = features.dims3()?;
    let side = (l as f64).sqrt() as usize;
    if side * side != l {
        return Err(ModelError::Input(format!(
            "{l} tokens per crop is not a square map"
        )));
    }
    let (kh, kw) = pool_window(g, side)?;
    if (kh, kw) == (1, 1) {
        return Ok(features.clone());
    }
    let t = features
        .reshape((n, side / kh, kh, side / kw, kw, d))?
        .sum(4)?
        .sum(2)?
        .affine(1.0 / (kh * kw) as f64, 0.0)?;
    Ok(t.reshape((n, g as usize, d))?)
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
/// `(n, Σg, D)`, the router's visual input.
pub fn pool_all(features: &Tensor, grans: &[u32]) -> Result<Tensor> {
    let pooled = grans
        .iter()
        .map(|&g| pool(features, g))
        .collect::<Result<Vec<_>>>()?;
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
}
