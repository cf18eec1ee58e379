//! [`super`]'s loops against plain scalar (or libm, or f64) references, and the AVX-512 copies
//! against the AVX2 ones, bit for bit.

use super::*;

fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

#[test]
fn exp_matches_libm() {
    // Inside the clamp, normal results only (below -87 libm's results are subnormal).
    let (mut worst, mut at) = (0f32, 0f32);
    for i in -8600..8800 {
        let x = i as f32 * 0.01 + 0.003;
        let (a, b) = (exp(x), x.exp());
        let e = ((a - b) / b).abs();
        if e > worst {
            (worst, at) = (e, x);
        }
    }
    // Stated tolerance: 1e-6 relative (the polynomial's error is a few ulp).
    assert!(worst <= 1e-6, "max relative error {worst} at {at}");
    // Far below the clamp the result is tiny and positive, never NaN or negative.
    assert!(exp(-1000.0) >= 0.0 && exp(-1000.0) < 1e-37);
}

#[test]
fn softmax_matches_f64() {
    for len in [1usize, 5, 16, 17, 203, 2377] {
        let s: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 30.0).collect();
        let max = s
            .iter()
            .map(|&x| x as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|&x| (x as f64 - max).exp()).collect();
        let z: f64 = e.iter().sum();
        let mut got = s.clone();
        softmax_in_place(&mut got);
        for ((g, e), &x) in got.iter().zip(&e).zip(&s) {
            let want = e / z;
            // 2e-6 relative (the exponential's and the sum's few ulp), plus the rounding of the
            // f32 difference `x − max` (half an ulp of it, which scales the result by up to
            // `e^(|x − max|·2⁻²⁴)`), or absolute where the result is below f32's normal range.
            let shift = (x as f64 - max).abs() * 6e-8;
            assert!(
                (*g as f64 - want).abs() <= (2e-6 + shift) * want + 1e-37,
                "len {len}: {g} vs {want}"
            );
        }
    }
    let mut empty: [f32; 0] = [];
    softmax_in_place(&mut empty);
}

/// The vector passes give the bits of the plain composition (maximum by `f32::max`, [`exp`] of
/// each shifted value, their sum in 16 interleaved lanes, one reciprocal), whichever lanes the CPU
/// has: the maximum is exact in any order, and the sum keeps its lanes' order.
#[test]
fn softmax_gives_the_plain_compositions_bits() {
    for len in [1usize, 7, 8, 15, 16, 17, 33, 100, 577, 2400] {
        let mut row = values(len, 7 * len as u32);
        row[len / 2] = 3.5; // the maximum somewhere in the middle
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = row.iter().map(|&x| exp(x - max)).collect();
        let whole = len / 16 * 16;
        let mut lanes = [0f32; 16];
        for (i, v) in e[..whole].iter().enumerate() {
            lanes[i % 16] += v;
        }
        let halves: [f32; 8] = std::array::from_fn(|i| lanes[i] + lanes[i + 8]);
        let tail = e[whole..].iter().fold(0f32, |a, v| a + v);
        let inv = 1.0 / (tree8(&halves) + tail);
        let want: Vec<u32> = e.iter().map(|x| (x * inv).to_bits()).collect();
        softmax_in_place(&mut row);
        let got: Vec<u32> = row.iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, want, "len {len}");
    }
}

/// The 16-lane copies of the elementwise loops give the AVX2 copies' bits, sums included.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_loops_give_the_avx2_bits() {
    if !(std::is_x86_feature_detected!("avx512f") && crate::small_gemm::available()) {
        return; // Nothing to compare on this CPU.
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for len in [1usize, 7, 8, 15, 16, 17, 33, 100, 577] {
        let (a, b) = (values(len, len as u32), values(len, 3 * len as u32 + 1));
        let (mut wide, mut narrow) = (a.clone(), a.clone());
        // SAFETY: AVX-512F, AVX2 and FMA detected; equal lengths.
        unsafe {
            avx512::softmax_in_place(&mut wide);
            avx2::softmax_in_place(&mut narrow);
            assert_eq!(bits(&wide), bits(&narrow), "softmax {len}");
            avx512::silu_mul(&a, &b, &mut wide);
            avx2::silu_mul(&a, &b, &mut narrow);
            assert_eq!(bits(&wide), bits(&narrow), "silu {len}");
            let quick = |v: f32| v / (1.0 + exp(-1.702 * v));
            avx512::map(&a, &mut wide, quick);
            avx2::map(&a, &mut narrow, quick);
            assert_eq!(bits(&wide), bits(&narrow), "quick_gelu {len}");
            avx512::map(&a, &mut wide, crate::host_dense::gelu_erf);
            avx2::map(&a, &mut narrow, crate::host_dense::gelu_erf);
            assert_eq!(bits(&wide), bits(&narrow), "gelu_erf {len}");
            // The weighted sum of `len` rows of 64 values, every width it takes.
            let vc = values(len * 64 + 64, 5);
            let at: Vec<usize> = (0..len).map(|p| (p * 37) % len * 64).collect();
            for width in [16usize, 32, 48, 64] {
                let (mut w16, mut w8) = (vec![0f32; width], vec![0f32; width]);
                avx512::weighted_sum(&a, &vc, &at, 0, &mut w16);
                avx2::weighted_sum(&a, &vc, &at, 0, &mut w8);
                assert_eq!(bits(&w16), bits(&w8), "weighted_sum {len} x {width}");
            }
        }
    }
}

#[test]
fn silu_mul_matches_f64() {
    let gate: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.2).collect();
    let up = values(gate.len(), 9);
    let mut out = vec![f32::NAN; gate.len()];
    silu_mul(&gate, &up, &mut out);
    for ((o, g), u) in out.iter().zip(&gate).zip(&up) {
        let (g, u) = (*g as f64, *u as f64);
        let want = g / (1.0 + (-g).exp()) * u;
        // Stated tolerance: 1e-6 relative (exp's error plus two roundings), absolute near 0.
        assert!(
            (*o as f64 - want).abs() <= 1e-6 * want.abs() + 1e-30,
            "silu({g}) * {u}: {o} vs {want}"
        );
    }
}

#[test]
fn dot_matches_a_plain_sum_at_every_length() {
    for n in [0usize, 1, 7, 8, 9, 31, 32, 33, 64, 100, 128] {
        let (a, b) = (values(n, 1), values(n, 2));
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let got = dot(&a, &b);
        assert!(
            (got as f64 - want).abs() <= 1e-5 * (n as f64 + 1.0),
            "n={n}: {got} vs {want}"
        );
    }
}

#[test]
fn scores_match_plain_dots() {
    for hd in [8usize, 16, 24, 64, 128, 5] {
        let kc = values(hd * 40, 5);
        for heads in [1usize, 2, 4] {
            let q = values(heads * hd, 6);
            for ctx in [0usize, 1, 3, 4, 5, 8, 9, 17, 24, 31] {
                let at: Vec<usize> = (0..ctx).map(|p| (p * 11 % 37) * hd).collect();
                let mut out = vec![f32::NAN; heads * ctx];
                scores(&q, hd, &kc, &at, 0.125, &mut out);
                for g in 0..heads {
                    for (p, &a) in at.iter().enumerate() {
                        let want: f64 = (0..hd)
                            .map(|i| q[g * hd + i] as f64 * kc[a + i] as f64)
                            .sum::<f64>()
                            * 0.125;
                        let got = out[g * ctx + p] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * hd as f64,
                            "hd {hd} heads {heads} ctx {ctx} g {g} p {p}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn weighted_sum_matches_a_plain_sum() {
    let vc = values(80 * 16, 3);
    let at: Vec<usize> = (0..12).map(|p| (p * 7 % 15) * 80).collect();
    let weights = values(12, 4);
    let cases = [
        (0usize, 32usize),
        (8, 32),
        (0, 16),
        (4, 8),
        (3, 5),
        (0, 36),
        (0, 64),
        (16, 56),
        (1, 72),
    ];
    for (offset, len) in cases {
        let mut out = vec![f32::NAN; len];
        weighted_sum(&weights, &vc, &at, offset, &mut out);
        for (i, got) in out.iter().enumerate() {
            let want: f64 = weights
                .iter()
                .zip(&at)
                .map(|(p, a)| *p as f64 * vc[a + offset + i] as f64)
                .sum();
            assert!(
                (*got as f64 - want).abs() <= 1e-5,
                "offset {offset} len {len} i {i}"
            );
        }
    }
}
