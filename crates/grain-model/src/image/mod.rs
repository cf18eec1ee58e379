//! Image decoding and AnyRes preprocessing, independent of candle.

pub mod anyres;
pub mod resample;

use std::io::Cursor;

pub use resample::Rgb8;

use crate::error::{ModelError, Result};

/// Limits applied while decoding untrusted image bytes.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest accepted width × height, checked from the header before any pixel is decoded.
    pub max_pixels: u64,
    /// Largest accepted side.
    pub max_side: u32,
    /// Upper bound on decoder allocations.
    pub max_alloc_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 40_000_000,
            max_side: 16_384,
            max_alloc_bytes: 512 * 1024 * 1024,
        }
    }
}

/// How transparency becomes RGB: the original LLaVA code calls Pillow's `convert("RGB")`, which
/// drops alpha; transformers 5's processors composite onto white.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alpha {
    #[default]
    Drop,
    OverWhite,
}

/// Decode PNG/JPEG/WebP/GIF (first frame)/BMP bytes into 8-bit RGB; grey is replicated and alpha
/// handled as `alpha` says.
pub fn decode_rgb(bytes: &[u8], limits: DecodeLimits, alpha: Alpha) -> Result<Rgb8> {
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ModelError::Image(format!("cannot read image: {e}")))?;
    if reader.format().is_none() {
        return Err(ModelError::Image(
            "unrecognised image format (expected PNG, JPEG, WebP, GIF or BMP)".into(),
        ));
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| ModelError::Image(format!("cannot read image header: {e}")))?;
    check_size(w, h, limits)?;
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ModelError::Image(format!("cannot read image: {e}")))?;
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    l.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(l);
    let img = reader
        .decode()
        .map_err(|e| ModelError::Image(format!("cannot decode image: {e}")))?;
    let rgb = if alpha == Alpha::OverWhite && img.color().has_alpha() {
        let rgba = img.to_rgba8();
        let (w, h) = rgba.dimensions();
        let mut out = image::RgbImage::new(w, h);
        for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
            let a = u32::from(p[3]);
            for c in 0..3 {
                // round((a·c + (255 − a)·255) / 255); the quotient is never exactly k + ½.
                o[c] = ((a * u32::from(p[c]) + (255 - a) * 255 + 127) / 255) as u8;
            }
        }
        out
    } else {
        img.to_rgb8()
    };
    let (w, h) = rgb.dimensions();
    check_size(w, h, limits)?;
    Ok(Rgb8 {
        width: w as usize,
        height: h as usize,
        data: rgb.into_raw(),
    })
}

fn check_size(w: u32, h: u32, limits: DecodeLimits) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(ModelError::Image(format!("image has zero size ({w}x{h})")));
    }
    if w > limits.max_side || h > limits.max_side || u64::from(w) * u64::from(h) > limits.max_pixels
    {
        return Err(ModelError::Image(format!(
            "image is {w}x{h}; the limit is {} pixels and {} per side",
            limits.max_pixels, limits.max_side
        )));
    }
    Ok(())
}
