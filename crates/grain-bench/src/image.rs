//! Seeded synthetic images, PNG-encoded as `data:` URLs.
//!
//! Content is smooth (gradients and a few flat shapes) so that PNGs stay small and the benchmark's
//! own memory and upload time stay negligible; the seed draws the colours and shapes, so no two
//! requests share an image and a server's encoder cache never turns a benchmark into a cache
//! benchmark.

use base64::Engine as _;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ImageEncoder, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::SpecError;

/// Width × height of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl Size {
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        let bad = || SpecError::ImageSize(s.to_string());
        let (w, h) = s.trim().split_once(['x', 'X']).ok_or_else(bad)?;
        let width: u32 = w.parse().map_err(|_| bad())?;
        let height: u32 = h.parse().map_err(|_| bad())?;
        if width == 0 || height == 0 || width > 8192 || height > 8192 {
            return Err(bad());
        }
        Ok(Self { width, height })
    }
}

/// A spread of common photo sizes (COCO- and web-like: 4:3 and 3:2 landscape dominate, then portrait,
/// 16:9 and square), long side 336 to 1280, with the share of requests each gets.
pub const REALISTIC: [(Size, f64); 9] = [
    (
        Size {
            width: 640,
            height: 480,
        },
        0.25,
    ),
    (
        Size {
            width: 640,
            height: 427,
        },
        0.15,
    ),
    (
        Size {
            width: 480,
            height: 640,
        },
        0.10,
    ),
    (
        Size {
            width: 500,
            height: 375,
        },
        0.10,
    ),
    (
        Size {
            width: 1024,
            height: 768,
        },
        0.10,
    ),
    (
        Size {
            width: 1280,
            height: 720,
        },
        0.10,
    ),
    (
        Size {
            width: 800,
            height: 800,
        },
        0.08,
    ),
    (
        Size {
            width: 427,
            height: 640,
        },
        0.07,
    ),
    (
        Size {
            width: 336,
            height: 336,
        },
        0.05,
    ),
];

/// Where image sizes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SizeSpread {
    Realistic,
    /// Drawn uniformly from the list.
    List(Vec<Size>),
}

impl SizeSpread {
    /// `realistic` or a comma-separated list such as `672x672,1008x336`.
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        if s.trim() == "realistic" {
            return Ok(SizeSpread::Realistic);
        }
        let sizes = s
            .split(',')
            .map(Size::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if sizes.is_empty() {
            return Err(SpecError::ImageSize(s.to_string()));
        }
        Ok(SizeSpread::List(sizes))
    }

    pub fn draw(&self, rng: &mut impl Rng) -> Size {
        match self {
            SizeSpread::Realistic => {
                let u: f64 = rng.random();
                let mut acc = 0.0;
                for (size, w) in REALISTIC {
                    acc += w;
                    if u < acc {
                        return size;
                    }
                }
                REALISTIC[REALISTIC.len() - 1].0
            }
            SizeSpread::List(sizes) => sizes[rng.random_range(0..sizes.len())],
        }
    }
}

/// The RGB pixels of image `seed` at `size`: a diagonal gradient between two random colours and
/// three random rectangles.
pub fn render(size: Size, seed: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c0: [f32; 3] = [
        rng.random_range(0.0..255.0),
        rng.random_range(0.0..255.0),
        rng.random_range(0.0..255.0),
    ];
    let c1: [f32; 3] = [
        rng.random_range(0.0..255.0),
        rng.random_range(0.0..255.0),
        rng.random_range(0.0..255.0),
    ];
    let (w, h) = (size.width, size.height);
    let rects: Vec<(u32, u32, u32, u32, [u8; 3])> = (0..3)
        .map(|_| {
            let x0 = rng.random_range(0..w);
            let y0 = rng.random_range(0..h);
            let x1 = rng.random_range(x0..=w);
            let y1 = rng.random_range(y0..=h);
            (x0, y0, x1, y1, [rng.random(), rng.random(), rng.random()])
        })
        .collect();
    let denom = (w + h).max(2) as f32 - 2.0;
    let mut img = RgbImage::new(w, h);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let t = if denom > 0.0 {
            (x + y) as f32 / denom
        } else {
            0.0
        };
        let mut rgb = [0u8; 3];
        for (k, v) in rgb.iter_mut().enumerate() {
            *v = (c0[k] + (c1[k] - c0[k]) * t).round() as u8;
        }
        for &(x0, y0, x1, y1, colour) in &rects {
            if (x0..x1).contains(&x) && (y0..y1).contains(&y) {
                rgb = colour;
            }
        }
        px.0 = rgb;
    }
    img
}

/// PNG bytes of an RGB image (fast compression: the benchmark must not spend its time here).
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Sub).write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(out)
}

/// `data:image/png;base64,…` for PNG bytes.
pub fn png_data_url(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// A synthetic image as a data URL.
pub fn synthetic_data_url(size: Size, seed: u64) -> Result<String, image::ImageError> {
    Ok(png_data_url(&encode_png(&render(size, seed))?))
}

/// Re-encode a data-URL image with the 8 bytes of `salt` XORed into its first bytes of RGB data
/// (the first three pixels), so that a file workload replayed at several run points does not hit the
/// server's encoder cache: distinct salts give distinct images (for images of at least 3 pixels).
/// `salt == 0` returns the URL as is.
pub fn salt_data_url(url: &str, salt: u64) -> Result<String, SpecError> {
    if salt == 0 {
        return Ok(url.to_string());
    }
    let bad = |why: String| SpecError::Invalid(format!("cannot salt image: {why}"));
    let payload = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
        .map(|(_, b64)| b64)
        .ok_or_else(|| {
            bad(
                "only base64 data: URLs can be salted (use --no-unique-images for http URLs)"
                    .into(),
            )
        })?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .map_err(|e| bad(e.to_string()))?;
    let mut img = image::load_from_memory(&bytes)
        .map_err(|e| bad(e.to_string()))?
        .to_rgb8();
    let data: &mut [u8] = &mut img;
    let n = data.len();
    for (i, b) in salt.to_le_bytes().into_iter().enumerate() {
        data[i % n] ^= b;
    }
    let png = encode_png(&img).map_err(|e| bad(e.to_string()))?;
    Ok(png_data_url(&png))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(url: &str) -> image::RgbImage {
        let b64 = url.strip_prefix("data:image/png;base64,").unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .unwrap()
            .to_rgb8()
    }

    #[test]
    fn images_decode_to_the_requested_size_and_depend_on_the_seed() {
        let size = Size {
            width: 37,
            height: 21,
        };
        let a = decode(&synthetic_data_url(size, 1).unwrap());
        assert_eq!((a.width(), a.height()), (37, 21));
        assert_eq!(
            a,
            decode(&synthetic_data_url(size, 1).unwrap()),
            "same seed, same pixels"
        );
        assert_ne!(a, decode(&synthetic_data_url(size, 2).unwrap()));
        let one = decode(
            &synthetic_data_url(
                Size {
                    width: 1,
                    height: 1,
                },
                3,
            )
            .unwrap(),
        );
        assert_eq!((one.width(), one.height()), (1, 1));
    }

    #[test]
    fn salting_touches_the_first_three_pixels_and_distinct_salts_never_collide() {
        let url = synthetic_data_url(
            Size {
                width: 8,
                height: 5,
            },
            9,
        )
        .unwrap();
        assert_eq!(salt_data_url(&url, 0).unwrap(), url);
        let a = decode(&url);
        let mut seen = std::collections::HashSet::new();
        // Salts that agree modulo 255 or in their low byte must still differ.
        for salt in [1u64, 2, 256, 257, 1 << 40, (1 << 40) + 1, u64::MAX] {
            let b = decode(&salt_data_url(&url, salt).unwrap());
            let changed: Vec<usize> = a
                .pixels()
                .zip(b.pixels())
                .enumerate()
                .filter(|(_, (p, q))| p != q)
                .map(|(i, _)| i)
                .collect();
            assert!(
                !changed.is_empty() && changed.iter().all(|&i| i < 3),
                "salt {salt}: pixels {changed:?}"
            );
            assert!(
                seen.insert(b.into_raw()),
                "salt {salt} repeats another salt's image"
            );
        }
        assert!(salt_data_url("https://example.invalid/x.png", 1).is_err());
    }

    #[test]
    fn sizes_parse_and_the_realistic_spread_sums_to_one() {
        assert_eq!(
            Size::parse("672x336").unwrap(),
            Size {
                width: 672,
                height: 336
            }
        );
        for bad in ["672", "0x10", "10x", "axb", "9000x10"] {
            assert!(Size::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            SizeSpread::parse("1x2,3x4").unwrap(),
            SizeSpread::List(vec![
                Size {
                    width: 1,
                    height: 2
                },
                Size {
                    width: 3,
                    height: 4
                }
            ])
        );
        assert!((REALISTIC.iter().map(|s| s.1).sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
