//! Quantized K/V (issue 25): GGUF's q8_0 and q4_0 blocks, i8 with per-token scales, and the
//! OCP 8-bit floats (e4m3, e5m2) with per-head scales, decoded as tiles load by every
//! backend (flash in each form the adapter runs, memory-efficient, the decode path's key
//! splits, naive), contiguous and paged, against the f64 reference over the dequantized
//! values (`quant::dequantize_rows`: the values the kernels must read, exactly). Crossed with
//! the masks, GQA, query dtypes and layouts (BHSD, vLLM's BSHD, an odd byte offset).
//!
//! Tolerance: the dequantized values are exact in f32 (an f16 scale times an integer of at
//! most 8 bits, or one f32 product), so each case is held to its output dtype's tolerance as
//! any f32 K/V is (`common::tolerance`).

mod common;

use common::*;
use wgpu_attention::{Backend, CausalAlignment, DType, KvScales};

const FORMATS: [DType; 5] = [
    DType::Q8_0,
    DType::Q4_0,
    DType::I8,
    DType::E4M3,
    DType::E5M2,
];

/// (b, hq, hkv, sq, sk, d): GQA with ragged lengths, Sq > Sk, and a decode shape.
const SHAPES: [(usize, usize, usize, usize, usize, usize); 3] = [
    (2, 4, 2, 7, 59, 64),
    (1, 2, 1, 113, 59, 64),
    (2, 4, 1, 1, 1023, 64),
];

/// Whether the default tier runs this case (`full_tier` runs the product): flash with every
/// format and no mask or every kind combined on every shape, and every mask with q8_0;
/// every format with every kind combined on the other backends, each on one shape.
fn default_case(backend: Backend, fi: usize, si: usize, mi: usize) -> bool {
    match backend {
        Backend::Flash => mi == 0 || mi == 7 || (fi == 0 && si == 0),
        _ => mi == 7 && si == fi % 3,
    }
}

#[test]
fn quantized_kv_matches_the_reference_on_every_backend() {
    let ctx = ctx();
    let full = full_tier();
    let layouts = [Layout::Bhsd, Layout::Bshd, Layout::Offset];
    let mut n = 0;
    for backend in [
        Backend::Flash,
        Backend::MemoryEfficient,
        Backend::Naive,
        Backend::Auto,
    ] {
        for (fi, &fmt) in FORMATS.iter().enumerate() {
            for (si, &(b, hq, hkv, sq, sk, d)) in SHAPES.iter().enumerate() {
                for (mi, mask) in masks(b, hq, sq, sk, 700 + si as u64)
                    .into_iter()
                    .enumerate()
                {
                    if !full && !default_case(backend, fi, si, mi) {
                        continue;
                    }
                    let dtype = [DType::F32, DType::F16, DType::BF16][(n / 3) % 3];
                    let mut c = Case::new(b, hq, sq, sk, d)
                        .dtype(dtype)
                        .backend(backend)
                        .mask(mask);
                    c.hkv = hkv;
                    c.kv = Some(fmt);
                    c.layout = layouts[(si + mi + n) % 3];
                    c.seed = (si * 41 + mi * 7 + n) as u64;
                    c.paged = [None, Some(16), Some(7)][(fi + mi + n) % 3];
                    c.lse = mi % 2 == 1;
                    check(ctx, &c);
                    n += 1;
                }
            }
        }
    }
    let all = 4 * FORMATS.len() * SHAPES.len() * 8;
    // Default: flash with 5 formats × 3 shapes × masks 0 and 7, and q8_0's other 6 masks on
    // shape 0; 3 backends × 5 formats with mask 7 on one shape each.
    assert_eq!(n, if full { all } else { 30 + 6 + 15 });
}

/// Head dims that are not a multiple of 4 (i8 and the 8-bit floats take any; the bytes past
/// a row's end are another row's, and must not count), on every backend.
#[test]
fn byte_formats_take_any_head_dim() {
    let ctx = ctx();
    for (n, fmt) in [DType::I8, DType::E4M3, DType::E5M2]
        .into_iter()
        .enumerate()
    {
        for backend in [
            Backend::Flash,
            Backend::MemoryEfficient,
            Backend::Naive,
            Backend::Decode,
        ] {
            let sq = if backend == Backend::Decode { 2 } else { 9 };
            let mut c = Case::new(2, 2, sq, 300, 37).backend(backend);
            c.kv = Some(fmt);
            c.layout = [Layout::Offset, Layout::Bshd, Layout::Bhsd][n];
            c.mask.causal = Some(CausalAlignment::BottomRight);
            check(ctx, &c);
        }
    }
}

/// The decode path (few queries over long keys, split across workgroups and merged) over
/// quantized keys, contiguous and paged, with GQA, key lengths, sinks, the cap and the
/// log-sum-exp.
#[test]
fn the_decode_path_reads_quantized_keys() {
    let ctx = ctx();
    for (n, &fmt) in FORMATS.iter().enumerate() {
        let (sq, sk) = [(1, 1023), (4, 2000)][n % 2];
        let mut c = Case::new(2, 4, sq, sk, 128)
            .dtype([DType::F16, DType::F32][n % 2])
            .backend(Backend::Decode);
        c.hkv = 2;
        c.kv = Some(fmt);
        c.paged = [Some(16), None][n % 2];
        c.layout = [Layout::Bshd, Layout::Bhsd, Layout::Offset][n % 3];
        c.mask.key_lengths = Some(vec![sk as u32 - 5, (sk / 3) as u32]);
        c.mask.causal = Some(CausalAlignment::BottomRight);
        c.sinks = Some(vec![0.5, -1.0, 2.0, 0.0]);
        c.softcap = Some(4.0);
        c.lse = true;
        let (got, want, plan) = run_plan(ctx, &c);
        assert!(plan.key_splits > 1, "{plan}");
        assert_close(&got, &want, c.out_dtype, &c.label());
    }
}

/// The checks above can fail: the same quantized K read with every key's scale taken from
/// key 0 (i8), or each head's from another head (the 8-bit floats), comes out far from the
/// reference.
#[test]
fn misread_scales_are_caught() {
    let ctx = ctx();
    for fmt in [DType::I8, DType::E4M3] {
        for backend in [Backend::Flash, Backend::MemoryEfficient, Backend::Naive] {
            let mut c = Case::new(1, 2, 7, 59, 64).backend(backend);
            c.hkv = 2;
            c.kv = Some(fmt);
            let x = Prepared::new(ctx, &c);
            let mut opts = x.opts(ctx, &c);
            opts.kv_scales = match opts.kv_scales.take() {
                // Every key reads key 0's scale.
                Some(KvScales::PerToken { mut k, v }) => {
                    k.strides[2] = 0;
                    Some(KvScales::PerToken { k, v })
                }
                // Each head reads another's.
                Some(KvScales::PerHead { mut k, v }) => {
                    k.reverse();
                    Some(KvScales::PerHead { k, v })
                }
                _ => panic!("{fmt}: no scales"),
            };
            let out = nan_output(ctx, [c.b, c.hq, c.sq, c.dv], DType::F32);
            ctx.attention_into_blocking(x.q.view(), x.k.view(), x.v.view(), out.view(), &opts)
                .expect("attention");
            let got = ctx.download_f32_blocking(out.view()).expect("download");
            let [q, k, v] = x.host();
            let want =
                wgpu_attention::reference::attention(&q, &k, &v, scale_of(&c), &x.host_mask(&c));
            let (atol, rtol) = tolerance(DType::F32);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(&g, &w)| (g as f64 - w).abs() / (atol + rtol * w.abs()))
                .fold(0.0, f64::max);
            // (i8's row scales, max |x| / 127, are alike for uniform data: key 0's is off by
            // a few percent, still 100 times the tolerance.)
            assert!(
                worst > 100.0,
                "{fmt} {backend:?}: misread scales are off by {worst}× the tolerance only"
            );
        }
    }
}
