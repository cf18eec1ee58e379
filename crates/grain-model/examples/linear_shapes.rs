//! Decode-shaped linear layers in candle: `x · Wᵀ` (what `candle_nn::Linear` does) against
//! `(W · xᵀ)ᵀ` (the weight as the left operand), for batch rows 1, 4, 16. Medians of 50 runs.
//!
//! cargo run --release -p grain-model --example linear_shapes

use std::time::Instant;

use grain_model::{DType, Device, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(f: impl Fn() -> Tensor) -> f64 {
    f();
    median(
        (0..50)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (1376, 512), &dev)?;
    println!("rows  x·Wᵀ ms  (W·xᵀ)ᵀ ms   (1376x512 weight)");
    for m in [1usize, 4, 16, 64] {
        let x = Tensor::randn(0f32, 1.0, (m, 512), &dev)?.to_dtype(DType::F32)?;
        let a = bench(|| x.matmul(&w.t().unwrap()).unwrap());
        let b = bench(|| {
            w.matmul(&x.t().unwrap())
                .unwrap()
                .t()
                .unwrap()
                .contiguous()
                .unwrap()
        });
        println!("{m:>4}  {a:>7.3}  {b:>10.3}");
    }
    Ok(())
}
