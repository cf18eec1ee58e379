//! Bicubic resampling that reproduces Pillow's `Image.resize(..., BICUBIC)` on 8-bit RGB bit for bit.
//!
//! Both the HF image processor (slow path) and the original LLaVA code resize with Pillow, so
//! matching its arithmetic — separable convolution, antialiasing support scaled by the downscale
//! factor, coefficients quantised to 22-bit fixed point, a horizontal pass rounded to u8 before the
//! vertical pass — is what makes our pixel values equal the reference ones instead of merely close.

/// Pillow's fixed-point precision for 8-bit images: 32 - 8 (pixel) - 2 (headroom).
const PRECISION_BITS: u32 = 22;
const BICUBIC_SUPPORT: f64 = 2.0;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per-output-pixel source window and fixed-point weights along one axis.
struct Coeffs {
    ksize: usize,
    /// (first source index, number of taps) per output pixel.
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn coefficients(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = BICUBIC_SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut tmp = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // Truncation toward zero, as C's (int) cast does.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut total = 0.0;
        for (x, t) in tmp.iter_mut().enumerate().take(n) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *t = w;
            total += w;
        }
        let k = &mut weights[xx * ksize..(xx + 1) * ksize];
        for x in 0..n {
            let w = if total != 0.0 { tmp[x] / total } else { tmp[x] };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            k[x] = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

#[inline]
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl Rgb8 {
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![0; width * height * 3],
        }
    }

    /// Resize with Pillow's bicubic filter. Same-size resizes return a copy, as Pillow does.
    pub fn resize_bicubic(&self, width: usize, height: usize) -> Rgb8 {
        let need_h = width != self.width;
        let need_v = height != self.height;
        if !need_h && !need_v {
            return self.clone();
        }
        let vert = coefficients(self.height, height);
        // Pillow 13 runs the vertical pass first when the height loses more than twice as many
        // pixels as the width (python-pillow/Pillow#9549); older Pillow is always horizontal
        // first. The u8 rounding between passes makes the order visible (up to ~10 levels on
        // tall images), and the HF parity fixtures were made with Pillow 13.
        let (dh, dw) = (
            self.height as i64 - height as i64,
            self.width as i64 - width as i64,
        );
        if dh > 0 && dh > 2 * dw {
            let tmp = self.vertical(height, &vert, 0);
            return if need_h {
                tmp.horizontal(width, 0, height)
            } else {
                tmp
            };
        }
        // Only the source rows the vertical pass will read need a horizontal pass.
        let (row_first, row_last) = if need_v {
            let first = vert.bounds[0].0;
            let (s, n) = vert.bounds[height - 1];
            (first, s + n)
        } else {
            (0, self.height)
        };
        let tmp = if need_h {
            self.horizontal(width, row_first, row_last)
        } else {
            Rgb8 {
                width: self.width,
                height: row_last - row_first,
                data: self.data[row_first * self.width * 3..row_last * self.width * 3].to_vec(),
            }
        };
        if need_v {
            tmp.vertical(height, &vert, row_first)
        } else {
            tmp
        }
    }

    fn horizontal(&self, width: usize, row_first: usize, row_last: usize) -> Rgb8 {
        let c = coefficients(self.width, width);
        let mut out = Rgb8::new(width, row_last - row_first);
        let half = 1i64 << (PRECISION_BITS - 1);
        for (oy, y) in (row_first..row_last).enumerate() {
            let src = &self.data[y * self.width * 3..(y + 1) * self.width * 3];
            let dst = &mut out.data[oy * width * 3..(oy + 1) * width * 3];
            for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
                let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
                let mut acc = [half; 3];
                for (i, &w) in k.iter().enumerate() {
                    let p = &src[(xmin + i) * 3..(xmin + i) * 3 + 3];
                    for ch in 0..3 {
                        acc[ch] += i64::from(p[ch]) * i64::from(w);
                    }
                }
                for ch in 0..3 {
                    dst[xx * 3 + ch] = clip8(acc[ch]);
                }
            }
        }
        out
    }

    /// `self` holds source rows starting at `row_offset`.
    fn vertical(&self, height: usize, c: &Coeffs, row_offset: usize) -> Rgb8 {
        let mut out = Rgb8::new(self.width, height);
        let half = 1i64 << (PRECISION_BITS - 1);
        let stride = self.width * 3;
        let mut acc = vec![0i64; stride];
        for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
            let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
            acc.iter_mut().for_each(|a| *a = half);
            for (i, &w) in k.iter().enumerate() {
                let row = ymin - row_offset + i;
                let src = &self.data[row * stride..(row + 1) * stride];
                for (a, &p) in acc.iter_mut().zip(src) {
                    *a += i64::from(p) * i64::from(w);
                }
            }
            for (d, &a) in out.data[yy * stride..(yy + 1) * stride]
                .iter_mut()
                .zip(&acc)
            {
                *d = clip8(a);
            }
        }
        out
    }

    /// Copy `self` into a `width`×`height` black canvas at (`x`, `y`).
    pub fn paste_into(&self, width: usize, height: usize, x: usize, y: usize) -> Rgb8 {
        let mut out = Rgb8::new(width, height);
        for row in 0..self.height.min(height.saturating_sub(y)) {
            let n = self.width.min(width.saturating_sub(x)) * 3;
            let src = &self.data[row * self.width * 3..row * self.width * 3 + n];
            let start = ((y + row) * width + x) * 3;
            out.data[start..start + n].copy_from_slice(src);
        }
        out
    }

    /// The `size`×`size` square whose top-left corner is (`x`, `y`); must lie inside the image.
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Rgb8 {
        let mut out = Rgb8::new(w, h);
        for row in 0..h {
            let start = ((y + row) * self.width + x) * 3;
            out.data[row * w * 3..(row + 1) * w * 3]
                .copy_from_slice(&self.data[start..start + w * 3]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(1000, 336), (20, 336), (337, 336), (336, 672), (5, 3)] {
            let c = coefficients(i, o);
            for (xx, &(_, n)) in c.bounds.iter().enumerate() {
                let s: i64 = c.weights[xx * c.ksize..xx * c.ksize + n]
                    .iter()
                    .map(|&w| i64::from(w))
                    .sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= n as i64,
                    "{i}->{o} px {xx}: {s}"
                );
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let mut img = Rgb8::new(37, 23);
        img.data
            .chunks_mut(3)
            .for_each(|p| p.copy_from_slice(&[10, 200, 77]));
        for (w, h) in [(336, 336), (5, 90), (37, 11)] {
            let r = img.resize_bicubic(w, h);
            assert!(r.data.chunks(3).all(|p| p == [10, 200, 77]), "{w}x{h}");
        }
    }
}
