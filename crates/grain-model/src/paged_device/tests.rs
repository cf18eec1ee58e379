//! The CPU forms of the two operations against candle's own ops: `write_slots` against
//! `index_select` of what it wrote, and `paged_attention` against a softmax over the gathered
//! context, with grouped query heads, scattered block tables and contexts that end mid-block.

use candle_core::{DType, Device, Tensor, D};

use super::{paged_attention, write_slots, PagedRows};
use crate::attention::Heads;

fn ramp(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 2003.0 - 0.5) * 2.0)
        .collect()
}

const HEADS: Heads = Heads {
    q: 4,
    kv: 2,
    dim: 8,
};

#[test]
fn write_slots_stores_rows_at_their_slots_and_rejects_a_slot_outside() {
    let dev = Device::Cpu;
    let cache = Tensor::zeros((12, 2, 3), DType::F32, &dev).unwrap();
    let new = Tensor::from_vec(ramp(3 * 6, 1), (3, 2, 3), &dev).unwrap();
    let slots = Tensor::from_vec(vec![7u32, 2, 11], 3, &dev).unwrap();
    write_slots(&cache, &new, &slots).unwrap();
    let back = cache.index_select(&slots, 0).unwrap();
    let abs_sum = |t: &Tensor| {
        t.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(abs_sum(&(back - &new).unwrap()), 0.0);
    // Every other slot is untouched.
    let (total, written) = (abs_sum(&cache), abs_sum(&new));
    assert!((total - written).abs() < 1e-6);
    let bad = Tensor::from_vec(vec![12u32], 1, &dev).unwrap();
    assert!(write_slots(&cache, &new.narrow(0, 0, 1).unwrap(), &bad).is_err());
}

/// Softmax attention of one query row over the first `ctx` positions of a table, with candle ops.
fn reference(q: &Tensor, k: &Tensor, v: &Tensor, table: &[u32], bs: usize, ctx: usize) -> Tensor {
    let slots: Vec<u32> = (0..ctx)
        .map(|p| table[p / bs] * bs as u32 + (p % bs) as u32)
        .collect();
    let idx = Tensor::from_vec(slots, ctx, q.device()).unwrap();
    let group = HEADS.q / HEADS.kv;
    // (kv, ctx, dim) → repeated for each query head of the group: (q, ctx, dim).
    let expand = |c: &Tensor| {
        c.index_select(&idx, 0)
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .unsqueeze(1)
            .unwrap()
            .repeat((1, group, 1, 1))
            .unwrap()
            .reshape((HEADS.q, ctx, HEADS.dim))
            .unwrap()
    };
    let (k, v) = (expand(k), expand(v));
    let q = q.reshape((HEADS.q, 1, HEADS.dim)).unwrap();
    let s = (q.matmul(&k.t().unwrap()).unwrap() * HEADS.scale()).unwrap();
    let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
    p.matmul(&v).unwrap().reshape(HEADS.q * HEADS.dim).unwrap()
}

#[test]
fn paged_attention_matches_a_softmax_over_the_gathered_context() {
    let dev = Device::Cpu;
    let (bs, blocks) = (4, 16);
    let shape = (blocks * bs, HEADS.kv, HEADS.dim);
    let n = blocks * bs * HEADS.kv * HEADS.dim;
    let k = Tensor::from_vec(ramp(n, 2), shape, &dev).unwrap();
    let v = Tensor::from_vec(ramp(n, 3), shape, &dev).unwrap();
    // Three rows: scattered tables, contexts of 1, a mid-block end and several blocks.
    let tables: [&[u32]; 3] = [&[9], &[3, 14, 0], &[15, 1, 7, 2, 11, 5]];
    let ctxs = [1usize, 10, 23];
    let rows: Vec<(&[u32], usize)> = tables.iter().copied().zip(ctxs).collect();
    let paged = PagedRows::new(&rows, bs, &dev).unwrap();
    let q = Tensor::from_vec(
        ramp(3 * HEADS.q * HEADS.dim, 4),
        (3, HEADS.q, HEADS.dim),
        &dev,
    )
    .unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let (qd, kd, vd) = (
            q.to_dtype(dtype).unwrap(),
            k.to_dtype(dtype).unwrap(),
            v.to_dtype(dtype).unwrap(),
        );
        let out = paged_attention(&qd, &kd, &vd, &paged, HEADS)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(out.dims(), &[3, HEADS.q * HEADS.dim]);
        // bf16: the inputs are rounded alike; the output's own rounding is 2^-8 relative.
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
        for (r, (&table, &ctx)) in tables.iter().zip(&ctxs).enumerate() {
            let want = reference(
                &qd.get(r).unwrap().to_dtype(DType::F32).unwrap(),
                &kd.to_dtype(DType::F32).unwrap(),
                &vd.to_dtype(DType::F32).unwrap(),
                table,
                bs,
                ctx,
            );
            let got = out.get(r).unwrap();
            let d = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < tol, "{dtype:?} row {r}: max |Δ| {d}");
        }
    }
}

#[test]
fn paged_attention_rejects_a_query_of_the_wrong_shape() {
    let dev = Device::Cpu;
    let k = Tensor::zeros((8, HEADS.kv, HEADS.dim), DType::F32, &dev).unwrap();
    let table: &[u32] = &[0, 1];
    let paged = PagedRows::new(&[(table, 5)], 4, &dev).unwrap();
    let q = Tensor::zeros((2, HEADS.q, HEADS.dim), DType::F32, &dev).unwrap();
    assert!(paged_attention(&q, &k, &k, &paged, HEADS).is_err());
}
