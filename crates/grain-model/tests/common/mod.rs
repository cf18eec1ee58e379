#![allow(dead_code)]

use std::path::{Path, PathBuf};

use grain_model::image::Rgb8;
use grain_model::tiny::{write_tiny, TinyLayout, TinySize};

/// A fresh tiny checkpoint in a temp dir (kept alive by the returned guard).
pub fn tiny(layout: TinyLayout, seed: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt");
    write_tiny(&path, layout, TinySize::TINY, seed).unwrap();
    (dir, path)
}

/// A deterministic test picture: gradients plus a stripe patch.
pub fn picture(w: usize, h: usize) -> Rgb8 {
    let mut img = Rgb8::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let i = (y * w + x) * 3;
            let stripe = if (x / 3 + y / 5) % 2 == 0 { 60 } else { 0 };
            img.data[i] = ((x * 255) / w.max(1)) as u8;
            img.data[i + 1] = ((y * 255) / h.max(1)) as u8;
            img.data[i + 2] = ((((x + y) * 7) % 190) + stripe) as u8;
        }
    }
    img
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}
