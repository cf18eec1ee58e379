//! Helpers shared by the crate's unit tests, by-hand measurements and `grain check-device kernels`
//! (its random inputs).

/// Deterministic values in `[-scale, scale)` from a seed (xorshift64, top 24 bits).
pub(crate) fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// The fastest of `runs` timed calls of `f`, in seconds.
#[cfg(test)]
pub(crate) fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}
