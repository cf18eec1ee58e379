//! LLaVA-1.6 "AnyRes": choose a grid resolution for an image, resize keeping aspect, pad, and cut
//! into square tiles; plus the whole image squashed to one tile as the base crop.

use super::resample::Rgb8;
use crate::config::LlavaConfig;
use crate::error::{ModelError, Result};

/// The best `(height, width)` among `pinpoints` for an image of `width`×`height`: the largest
/// effective (downscaled, capped at original) area, ties broken by the least wasted area, then by
/// list order — the LLaVA-1.6 rule.
pub fn select_best_resolution(width: u32, height: u32, pinpoints: &[(u32, u32)]) -> (u32, u32) {
    let (ow, oh) = (f64::from(width), f64::from(height));
    let mut best = pinpoints[0];
    let mut max_effective = 0u64;
    let mut min_wasted = u64::MAX;
    for &(h, w) in pinpoints {
        let scale = (f64::from(w) / ow).min(f64::from(h) / oh);
        let dw = (ow * scale) as u64;
        let dh = (oh * scale) as u64;
        let effective = (dw * dh).min(u64::from(width) * u64::from(height));
        let wasted = u64::from(w) * u64::from(h) - effective;
        if effective > max_effective || (effective == max_effective && wasted < min_wasted) {
            max_effective = effective;
            min_wasted = wasted;
            best = (h, w);
        }
    }
    best
}

/// Tiles per column and per row: `(grid_h, grid_w)`.
pub fn grid_shape(width: u32, height: u32, config: &LlavaConfig) -> (usize, usize) {
    let (h, w) = select_best_resolution(width, height, &config.grid_pinpoints);
    let tile = config.vision.image_size as u32;
    ((h / tile) as usize, (w / tile) as usize)
}

/// Size of the image after the aspect-preserving resize into `(target_h, target_w)`, as `(h, w)`.
pub fn resized_size(width: u32, height: u32, target: (u32, u32)) -> (u32, u32) {
    let (th, tw) = target;
    let scale_w = f64::from(tw) / f64::from(width);
    let scale_h = f64::from(th) / f64::from(height);
    if scale_w < scale_h {
        let nh = (f64::from(height) * scale_w).ceil().min(f64::from(th)) as u32;
        (nh.max(1), tw)
    } else {
        let nw = (f64::from(width) * scale_h).ceil().min(f64::from(tw)) as u32;
        (th, nw.max(1))
    }
}

/// The crops of one image, in model order: base (whole image at tile size) first, then the tiles
/// row by row.
pub fn crops(img: &Rgb8, config: &LlavaConfig) -> Result<Vec<Rgb8>> {
    if img.width == 0 || img.height == 0 {
        return Err(ModelError::Image("image has zero width or height".into()));
    }
    let tile = config.vision.image_size;
    let (w, h) = (img.width as u32, img.height as u32);
    let target = select_best_resolution(w, h, &config.grid_pinpoints);
    let (nh, nw) = resized_size(w, h, target);
    let resized = img.resize_bicubic(nw as usize, nh as usize);
    let (th, tw) = (target.0 as usize, target.1 as usize);
    let padded = resized.paste_into(tw, th, (tw - nw as usize) / 2, (th - nh as usize) / 2);
    let mut out = Vec::with_capacity(1 + (th / tile) * (tw / tile));
    out.push(img.resize_bicubic(tile, tile));
    for y in (0..th).step_by(tile) {
        for x in (0..tw).step_by(tile) {
            out.push(padded.crop(x, y, tile, tile));
        }
    }
    Ok(out)
}

/// Rescale to [0, 1] and normalise with the checkpoint's mean/std; channels first, crops stacked:
/// `(n_crops, 3, S, S)` flattened.
pub fn normalize(crops: &[Rgb8], mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let mut out = Vec::with_capacity(crops.iter().map(|c| c.data.len()).sum());
    for c in crops {
        let plane = c.width * c.height;
        for ch in 0..3 {
            out.extend((0..plane).map(|i| {
                // transformers rescales in f64 then casts to f32 before normalising in f32.
                let v = (f64::from(c.data[i * 3 + ch]) * (1.0 / 255.0)) as f32;
                (v - mean[ch]) / std[ch]
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_PINPOINTS;

    #[test]
    fn best_resolution_examples() {
        let p = DEFAULT_PINPOINTS;
        assert_eq!(select_best_resolution(672, 672, &p), (672, 672));
        assert_eq!(select_best_resolution(1000, 500, &p), (336, 672));
        assert_eq!(select_best_resolution(1008, 336, &p), (336, 1008));
        assert_eq!(select_best_resolution(336, 1008, &p), (1008, 336));
        // Tiny square: every candidate keeps the whole image; the least waste ties (336,672) and
        // (672,336), and list order picks the first.
        assert_eq!(select_best_resolution(20, 20, &p), (336, 672));
    }

    #[test]
    fn resize_keeps_aspect_and_fits() {
        assert_eq!(resized_size(1000, 500, (336, 672)), (336, 672));
        assert_eq!(resized_size(400, 900, (1008, 336)), (756, 336));
        assert_eq!(resized_size(20, 30, (672, 336)), (504, 336));
    }
}
