//! [`super`]'s tests, and its side-by-side timings (ignored; run by hand).

use super::*;
use crate::test_util::values;

#[test]
fn matches_an_f64_product_on_every_row_remainder() {
    for (n, k) in [(16usize, 1usize), (64, 64), (192, 64), (32, 37), (48, 20)] {
        let w = values(n * k, (n + k) as u64, 1.0);
        let Some(panels) = Panels::new(&w, n, k) else {
            return; // No AVX2/FMA: callers keep the gemm crate.
        };
        let bias = values(n, 7, 1.0);
        for m in [1usize, 2, 3, 4, 5, 6, 7, 8, 9, 13, 17, 256] {
            let x = values(m * k, (m * 31 + k) as u64, 1.0);
            for (relu, with_bias) in [(false, false), (false, true), (true, true)] {
                let mut got = vec![f32::NAN; m * n];
                panels.apply(&x, with_bias.then_some(&bias[..]), relu, &mut got);
                for r in 0..m {
                    for j in 0..n {
                        let mut s = if with_bias { bias[j] as f64 } else { 0.0 };
                        for c in 0..k {
                            s += x[r * k + c] as f64 * w[j * k + c] as f64;
                        }
                        let want = if relu { s.max(0.0) } else { s } as f32;
                        let g = got[r * n + j];
                        // f32 sums of k products of values in [-1, 1).
                        assert!(
                            (g - want).abs() <= 1e-6 * (k + 1) as f32,
                            "n={n} k={k} m={m} relu={relu} [{r},{j}]: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

/// The AVX-512 tiles against the AVX2 ones, bit for bit, on odd panel counts and every row
/// remainder of both tile heights.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_tiles_give_the_avx2_bits() {
    if !std::is_x86_feature_detected!("avx512f") {
        return; // Nothing to compare on this CPU.
    }
    for (n, k) in [(16usize, 5usize), (48, 64), (80, 33), (192, 64)] {
        let w = values(n * k, (n * k) as u64, 1.0);
        let Some(panels) = Panels::new(&w, n, k) else {
            return;
        };
        let bias = values(n, 3, 1.0);
        for m in [1usize, 2, 7, 8, 9, 12, 15, 16, 17, 48, 49, 60, 100] {
            let x = values(m * k, (m + 7 * k) as u64, 2.0);
            for relu in [false, true] {
                let mut wide = vec![f32::NAN; m * n];
                let mut narrow = vec![f32::NAN; m * n];
                let shape = (m, k, n);
                // SAFETY: AVX-512F and AVX2/FMA detected; shapes as asserted by `apply`.
                unsafe {
                    avx512::apply(
                        &x,
                        &panels.data,
                        Some(&bias),
                        shape,
                        relu,
                        wide.as_mut_ptr(),
                        0..n / PANEL,
                    );
                    avx2::apply(
                        &x,
                        &panels.data,
                        Some(&bias),
                        shape,
                        relu,
                        narrow.as_mut_ptr(),
                        0..n / PANEL,
                    );
                }
                let same = wide
                    .iter()
                    .zip(&narrow)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "n={n} k={k} m={m} relu={relu}");
            }
        }
    }
}

/// Attention's packings: `S = Q·Kᵀ` on a prefix of the key panels, and `O = P·V` over a
/// prefix of the keys with `P`'s rows further apart, against f64 sums; columns outside the
/// panels asked for stay as they were.
#[test]
fn key_and_value_panels_match_f64_products_on_prefixes() {
    for (keys, hd) in [(70usize, 64usize), (16, 16), (33, 8), (5, 24)] {
        let kh = values(keys * hd, keys as u64, 1.0);
        let vh = values(keys * hd, hd as u64, 1.0);
        let (Some(kp), Some(vp)) = (Panels::keys(&kh, keys, hd), Panels::values(&vh, keys, hd))
        else {
            return; // No AVX2/FMA.
        };
        assert_eq!((kp.n(), kp.k()), (keys.next_multiple_of(16), hd));
        assert_eq!((vp.n(), vp.k()), (hd.next_multiple_of(16), keys));
        let m = 11;
        let q = values(m * hd, 9, 1.0);
        for seen in [1, keys / 2 + 1, keys] {
            let panels = seen.div_ceil(16);
            let mut s = vec![f32::NAN; m * kp.n()];
            kp.apply_prefix(&q, (hd, hd), 0..panels, &mut s);
            for r in 0..m {
                for j in 0..kp.n() {
                    let g = s[r * kp.n() + j];
                    if j >= panels * 16 {
                        assert!(g.is_nan(), "column {j} outside the panels asked for");
                        continue;
                    }
                    let want: f64 = (0..hd)
                        .map(|c| {
                            let kv = if j < keys { kh[j * hd + c] as f64 } else { 0.0 };
                            q[r * hd + c] as f64 * kv
                        })
                        .sum();
                    assert!((g as f64 - want).abs() <= 1e-5 * hd as f64, "S[{r},{j}]");
                }
            }
            // P with rows `stride` apart, of which the first `seen` count.
            let stride = keys + 3;
            let p = values(m * stride, 4, 1.0);
            let mut o = vec![f32::NAN; m * vp.n()];
            vp.apply_prefix(&p, (stride, seen), 0..vp.n() / 16, &mut o);
            for r in 0..m {
                for c in 0..vp.n() {
                    let want: f64 = (0..seen)
                        .map(|j| {
                            let v = if c < hd { vh[j * hd + c] as f64 } else { 0.0 };
                            p[r * stride + j] as f64 * v
                        })
                        .sum();
                    let g = o[r * vp.n() + c] as f64;
                    assert!((g - want).abs() <= 1e-5 * seen as f64, "O[{r},{c}]");
                }
            }
        }
    }
}

#[test]
fn widths_that_are_not_panels_keep_the_fallback() {
    assert!(Panels::new(&[0.0; 24 * 3], 24, 3).is_none());
}

/// Side-by-side timing of this kernel and the `gemm` crate on the router's shapes, run by hand:
/// `cargo test --release -p grain-model --lib panel_gemm::tests::speed -- --ignored --nocapture`.
mod speed {
    use crate::test_util::best_of;

    #[test]
    #[ignore = "a measurement, run by hand"]
    fn against_gemm_crate() {
        for (m, k, n) in [
            (256usize, 64usize, 64usize),
            (155, 64, 64),
            (80, 64, 192),
            (256, 64, 192),
            (256, 512, 512),
        ] {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919) % 1000) as f32 / 1e3 - 0.5)
                .collect();
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5)
                .collect();
            let Some(p) = super::super::Panels::new(&w, n, k) else {
                return;
            };
            let mut y = vec![0f32; m * n];
            let ours = best_of(200, || p.apply(&x, None, false, &mut y));
            let mut z = vec![0f32; m * n];
            let theirs = best_of(200, || {
                crate::host_dense::matmul_serial(&x, &w, (m, k, n), (1, k), &mut z)
            });
            let gf = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e9;
            println!(
                "{m}x{k}x{n}: panels {:.1} µs {:.1} GFLOP/s | gemm {:.1} µs {:.1} GFLOP/s",
                ours * 1e6,
                gf(ours),
                theirs * 1e6,
                gf(theirs)
            );
        }
    }

    /// The decoder's shapes on the rayon pool: [`super::super::Panels::apply_par`] against candle's
    /// matmul (the `gemm` crate, parallel), with `m` rows from a decode step to a long prefill.
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn decoder_shapes_against_candle() {
        use candle_core::{Device, Tensor};
        for (k, n) in [(512usize, 2752usize), (1376, 512)] {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919) % 1000) as f32 / 1e3 - 0.5)
                .collect();
            let Some(p) = super::super::Panels::new(&w, n, k) else {
                return;
            };
            let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
            for m in [8usize, 16, 78, 1170, 2985] {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5)
                    .collect();
                let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
                let mut y = vec![0f32; m * n];
                let ours = best_of(10, || p.apply_par(&x, None, &mut y));
                let candle = best_of(10, || {
                    xt.matmul(&wt.t().unwrap()).unwrap();
                });
                let gf = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e9;
                println!(
                    "{m:>5}x{k}x{n}: panels {:.1} GFLOP/s | candle {:.1} GFLOP/s",
                    gf(ours),
                    gf(candle)
                );
            }
        }
    }
}
