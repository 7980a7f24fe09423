//! Every backend against the f64 reference over the product of shapes (ragged and powers
//! of two, GQA, Sq != Sk, Dv != Dk), mask combinations, dtypes and layouts.

mod common;

use common::*;
use wgpu_attention::{AttentionOptions, Backend, DType, Subgroups, Tuning};

/// (b, hq, hkv, sq, sk, dk, dv)
const SHAPES: [(usize, usize, usize, usize, usize, usize, usize); 5] = [
    (1, 1, 1, 1, 1, 7, 7),
    (2, 2, 1, 7, 59, 59, 59),
    (1, 2, 2, 113, 7, 64, 32),
    (2, 4, 2, 64, 128, 64, 64),
    (1, 1, 1, 59, 113, 113, 113),
];

/// Whether the default tier runs shape `si` with mask `mi` (`full_tier` runs all): every
/// mask on the ragged and the power-of-two shapes (head dims in the 64 bucket), no mask and
/// the combination of all on the 1-element and the Dv != Dk shapes, and the 128 bucket
/// (its unrolled kernels the slowest to compile on CPU adapters) in the full tier only.
fn default_case(si: usize, mi: usize) -> bool {
    match si {
        1 | 3 => true,
        0 | 2 => mi == 0 || mi == 7,
        _ => false,
    }
}

fn product(backend: Backend, dtype: DType) {
    let ctx = ctx();
    let layouts = [Layout::Bhsd, Layout::Bshd, Layout::Offset];
    let full = full_tier();
    let mut n = 0;
    for (si, &(b, hq, hkv, sq, sk, dk, dv)) in SHAPES.iter().enumerate() {
        for (mi, mask) in masks(b, hq, sq, sk, 100 + si as u64)
            .into_iter()
            .enumerate()
        {
            if !full && !default_case(si, mi) {
                continue;
            }
            let mut c = Case::new(b, hq, sq, sk, dk)
                .dtype(dtype)
                .backend(backend)
                .mask(mask);
            c.hkv = hkv;
            c.dv = dv;
            c.layout = layouts[(si + mi) % 3];
            c.seed = (si * 31 + mi) as u64;
            check(ctx, &c);
            n += 1;
        }
    }
    assert_eq!(n, if full { SHAPES.len() * 8 } else { 20 });
}

#[test]
fn flash_f32() {
    product(Backend::Flash, DType::F32);
}

#[test]
fn flash_f16() {
    product(Backend::Flash, DType::F16);
}

#[test]
fn memeff_f32() {
    product(Backend::MemoryEfficient, DType::F32);
}

#[test]
fn memeff_f16() {
    product(Backend::MemoryEfficient, DType::F16);
}

#[test]
fn naive_f32() {
    product(Backend::Naive, DType::F32);
}

#[test]
fn naive_f16() {
    product(Backend::Naive, DType::F16);
}

/// The flash variants the dispatcher picks on other adapters (the product tests above run
/// this adapter's default), over every mask: one thread per row with 1 and 2 rows, and 4
/// threads per row with subgroup shuffles (lavapipe and every GPU we target have subgroups
/// of at least 4). On an adapter without subgroups (GL) the shuffling forms are checked to
/// be refused with a typed `Unsupported` error instead.
#[test]
fn flash_variants() {
    let ctx = ctx();
    let info = ctx.adapter_info();
    assert_eq!(
        ctx.caps().cpu,
        info.device_type == wgpu::DeviceType::Cpu && info.backend != wgpu::Backend::Gl
    );
    // Lavapipe 22 stages Q and O through written-out loads; llvmpipe under GL reports
    // the same driver but is not a CPU adapter to the dispatcher (no unrolled default).
    assert_eq!(
        ctx.caps().cpu_serial_loads,
        ctx.caps().cpu && info.driver_info.contains("Mesa 22."),
        "{info:?}"
    );
    let (b, h, sq, sk) = (2, 2, 70, 45);
    // Rows per thread 8 is the unrolled kernel; its 8-key tile is the narrowest it takes.
    // (The default tier: one form each of one and four threads a row, and the unrolled one.)
    let tiles = [
        (1, 2, 8),
        (4, 4, 32),
        (1, 8, 8),
        (1, 1, 16),
        (4, 1, 16),
        (4, 2, 16),
        (1, 8, 32),
    ];
    for (tpr, rpt, bk) in tiered(tiles, |i| i < 3) {
        if tpr > 1 && !ctx.caps().subgroup {
            // Without subgroups a row cannot be split across threads: forcing it is a
            // typed error, not a silent fallback.
            let p = wgpu_attention::Problem::new(b, h, sq, sk, 64);
            let opts = AttentionOptions::default()
                .backend(Backend::Flash)
                .tuning(Tuning::new(Some(rpt), Some(bk), Some(tpr)));
            let e = ctx.plan_problem(&p, &opts).expect_err("no subgroups");
            assert!(matches!(e, wgpu_attention::Error::Unsupported(_)), "{e}");
            continue;
        }
        for (mi, mask) in masks(b, h, sq, sk, 3).into_iter().enumerate() {
            let mut c = Case::new(b, h, sq, sk, 64)
                .backend(Backend::Flash)
                .mask(mask);
            c.tuning = Tuning::new(Some(rpt), Some(bk), Some(tpr));
            c.seed = mi as u64;
            check(ctx, &c);
        }
    }
    // Subgroups off still runs (one thread per row).
    let mut c = Case::new(b, h, sq, sk, 64).backend(Backend::Flash);
    c.subgroups = Subgroups::Off;
    check(ctx, &c);
}

/// f16 inputs with an f32 output, and f32 inputs with an f16 output.
#[test]
fn mixed_output_dtypes() {
    let ctx = ctx();
    for backend in [Backend::Flash, Backend::MemoryEfficient, Backend::Naive] {
        let mut c = Case::new(1, 2, 33, 47, 40)
            .dtype(DType::F16)
            .backend(backend);
        c.out_dtype = DType::F32;
        check(ctx, &c);
        let mut c = Case::new(1, 2, 33, 47, 40).backend(backend);
        c.out_dtype = DType::F16;
        check(ctx, &c);
    }
}

/// Head dims across every flash bucket edge, and memory-efficient's large head dims.
#[test]
fn head_dim_buckets() {
    let ctx = ctx();
    // (The default tier: a bucket's first and last dims, and one past the unrolled kernels'.)
    for d in tiered([1, 96, 160, 32, 33, 255], |i| i < 3) {
        check(ctx, &Case::new(1, 1, 65, 33, d).backend(Backend::Flash));
    }
    for d in tiered([257, 512], |i| i == 0) {
        let c = Case::new(1, 1, 9, 70, d);
        check(ctx, &c);
        check(ctx, &c.backend(Backend::MemoryEfficient));
    }
}

/// A custom scale and a 1023-long ragged key sequence.
#[test]
fn custom_scale_long_ragged() {
    let ctx = ctx();
    let mut c = Case::new(1, 2, 17, 1023, 64);
    c.scale = Some(0.37);
    check(ctx, &c);
    check(ctx, &c.clone().backend(Backend::MemoryEfficient));
}
