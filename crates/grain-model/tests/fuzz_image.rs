//! Property-based fuzzing of image decoding with limits (`grain_model::image::decode_rgb`).
//!
//! Seeds are valid PNG (RGB, RGBA, grey), JPEG, GIF, BMP and WebP images written with the `image`
//! crate's encoders; each case mutates one (flipped bytes, truncation, inserted bytes, a header
//! claiming other dimensions). Decoding must return an image that respects the limits or an
//! error — never panic, never allocate past the limits.
//!
//! CI runs the default budget (256 cases per property). A longer run:
//! `PROPTEST_CASES=20000 cargo test --release -p grain-model --test fuzz_image`.

use std::io::Cursor;
use std::sync::OnceLock;

use grain_model::image::{decode_rgb, Alpha, DecodeLimits};
use image::{DynamicImage, ImageFormat, RgbImage, RgbaImage};
use proptest::prelude::*;

/// Small limits, so a mutated header claiming a huge image is refused before any allocation.
const LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 1_000_000,
    max_side: 4096,
    max_alloc_bytes: 64 * 1024 * 1024,
};

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode seed image");
    out.into_inner()
}

fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let rgb = DynamicImage::ImageRgb8(RgbImage::from_fn(37, 23, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 11) as u8, ((x + y) * 3) as u8])
        }));
        let rgba = DynamicImage::ImageRgba8(RgbaImage::from_fn(16, 40, |x, y| {
            image::Rgba([(x * 9) as u8, (y * 5) as u8, 200, ((x * y) % 256) as u8])
        }));
        let grey = DynamicImage::ImageLuma8(rgb.to_luma8());
        vec![
            encode(&rgb, ImageFormat::Png),
            encode(&rgba, ImageFormat::Png),
            encode(&grey, ImageFormat::Png),
            encode(&rgb, ImageFormat::Jpeg),
            encode(&rgba, ImageFormat::Gif),
            encode(&rgb, ImageFormat::Bmp),
            encode(&rgba, ImageFormat::WebP),
        ]
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Vec<(usize, u8)>),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    /// Overwrite 8 bytes somewhere in the first 64 (where every format keeps its dimensions).
    Header(usize, [u8; 8]),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        prop::collection::vec((any::<usize>(), any::<u8>()), 1..8).prop_map(Mutation::Flip),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..32))
            .prop_map(|(at, b)| Mutation::Insert(at, b)),
        (0usize..56, any::<[u8; 8]>()).prop_map(|(at, b)| Mutation::Header(at, b)),
    ]
}

fn apply(seed: &[u8], m: &Mutation) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    match m {
        Mutation::Flip(flips) => {
            for &(at, value) in flips {
                let i = at % bytes.len();
                bytes[i] ^= value;
            }
        }
        Mutation::Truncate(at) => bytes.truncate(at % bytes.len()),
        Mutation::Insert(at, extra) => {
            let i = at % bytes.len();
            bytes.splice(i..i, extra.iter().copied());
        }
        Mutation::Header(at, b) => {
            let at = (*at).min(bytes.len());
            let end = (at + 8).min(bytes.len());
            bytes[at..end].copy_from_slice(&b[..end - at]);
        }
    }
    bytes
}

fn check(bytes: &[u8], alpha: Alpha) -> Result<(), TestCaseError> {
    if let Ok(img) = decode_rgb(bytes, LIMITS, alpha) {
        prop_assert!(img.width >= 1 && img.height >= 1);
        prop_assert!(img.width as u64 * img.height as u64 <= LIMITS.max_pixels);
        prop_assert!(
            img.width <= LIMITS.max_side as usize && img.height <= LIMITS.max_side as usize
        );
        prop_assert_eq!(img.data.len(), img.width * img.height * 3);
    }
    Ok(())
}

#[test]
fn every_seed_decodes() {
    for (i, seed) in seeds().iter().enumerate() {
        let img = decode_rgb(seed, LIMITS, Alpha::Drop).unwrap_or_else(|e| panic!("seed {i}: {e}"));
        assert!(
            img.width == 37 || img.width == 16,
            "seed {i}: {}x{}",
            img.width,
            img.height
        );
    }
}

proptest! {
    #[test]
    fn mutated_images_decode_within_limits_or_fail_cleanly(
        seed in 0usize..7,
        mutations in prop::collection::vec(mutation(), 1..3),
        over_white in any::<bool>(),
    ) {
        let mut bytes = seeds()[seed].clone();
        for m in &mutations {
            if bytes.is_empty() {
                break;
            }
            bytes = apply(&bytes, m);
        }
        check(&bytes, if over_white { Alpha::OverWhite } else { Alpha::Drop })?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        prefix in prop_oneof![
            Just(&b"\x89PNG\r\n\x1a\n"[..]), Just(&b"\xff\xd8\xff"[..]), Just(&b"GIF89a"[..]),
            Just(&b"RIFF\0\0\0\0WEBPVP8 "[..]), Just(&b"BM"[..]), Just(&b""[..]),
        ],
        rest in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = prefix.to_vec();
        bytes.extend(rest);
        check(&bytes, Alpha::Drop)?;
    }
}

/// CRC-32 (IEEE) for hand-built PNG chunks.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        c.extend_from_slice(&crc32(&crc_input).to_be_bytes());
        c
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    // zlib stream of one empty row: not enough data for the claimed size.
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// Headers the reliability suite sends over HTTP, checked here at the decoder.
#[test]
fn regressions() {
    assert_eq!(
        crc32(b"IEND"),
        0xAE42_6082,
        "CRC-32 of IEND as every PNG stores it"
    );
    for (w, h) in [
        (60_000, 60_000),
        (0, 0),
        (1, 0),
        (12_000, 12_000),
        (4097, 1),
        (1001, 1000),
    ] {
        let err = decode_rgb(&png_header_only(w, h), LIMITS, Alpha::Drop).expect_err("refused");
        let text = err.to_string();
        assert!(!text.is_empty(), "{w}x{h}");
    }
    // Within the limits the header passes and the missing pixel data is what fails.
    assert!(decode_rgb(&png_header_only(20, 20), LIMITS, Alpha::Drop).is_err());
}
