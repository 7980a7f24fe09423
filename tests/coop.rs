//! Flash on cooperative matrices (tensor cores). On an adapter with 16x16x16 f16 → f32
//! cooperative matrices the dispatcher must pick that variant for f16 inputs and it must
//! match the reference over masks and shapes; on any other adapter (lavapipe, GL) it must
//! fall back to the plain flash variant, which must then be right.

mod common;

use common::*;
use wgpu_attention::dispatch::Family;
use wgpu_attention::{Backend, CausalAlignment, Context, DType, Problem, Window};

#[test]
fn cooperative_matrix_flash_or_clean_fallback() {
    // SAFETY: the test accepts wgpu's experimental features.
    let ctx = unsafe { Context::new_experimental_blocking() }.expect("adapter");
    let f16_problem = Problem {
        dtype_q: DType::F16,
        dtype_k: DType::F16,
        dtype_v: DType::F16,
        dtype_o: DType::F16,
        ..Problem::new(1, 8, 512, 512, 64)
    };
    let plan = ctx.plan_problem(&f16_problem, &Default::default()).unwrap();
    let f32_plan = ctx
        .plan_problem(&Problem::new(1, 8, 512, 512, 64), &Default::default())
        .unwrap();
    // f32 inputs never use f16 tensor cores (CPU adapters run the unrolled SIMT kernel).
    assert!(
        matches!(
            f32_plan.variant.family,
            Family::Flash | Family::FlashUnrolled
        ),
        "{}",
        f32_plan.reason
    );
    let expected = if ctx.caps().coop_matrix {
        Family::FlashCoop
    } else {
        f32_plan.variant.family
    };
    assert_eq!(plan.variant.family, expected, "{}", plan.reason);
    eprintln!(
        "cooperative matrices: {} ({})",
        ctx.caps().coop_matrix,
        plan.reason
    );

    let shapes: [(usize, usize, usize, usize, usize, usize); 4] = [
        (1, 2, 1, 70, 33, 64),
        (2, 4, 2, 64, 128, 128),
        (1, 2, 2, 113, 59, 40),
        (2, 2, 1, 7, 300, 16),
    ];
    for (si, &(b, hq, hkv, sq, sk, d)) in shapes.iter().enumerate() {
        let masks = [
            MaskSpec::default(),
            MaskSpec {
                causal: Some(CausalAlignment::BottomRight),
                key_lengths: Some((0..b).map(|i| [sk, sk / 2][i % 2] as u32).collect()),
                ..Default::default()
            },
            MaskSpec {
                window: Some(Window {
                    left: Some(20),
                    right: Some(5),
                }),
                bool_mask: Some((random_bool(b * sq * sk, 7, 0.7), [b, 1, sq, sk])),
                summary: true,
                bias: Some((random(hq * sq * sk, 8), [1, hq, sq, sk], DType::F16)),
                alibi: Some((0..hq).map(|i| 0.1 * (i + 1) as f32).collect()),
                ..Default::default()
            },
        ];
        for (mi, mask) in masks.into_iter().enumerate() {
            let mut c = Case::new(b, hq, sq, sk, d)
                .dtype(DType::F16)
                .backend(Backend::Flash)
                .mask(mask);
            c.hkv = hkv;
            c.seed = (si * 10 + mi) as u64;
            c.lse = mi == 1;
            // Odd element offsets take the general K/V load path, aligned ones the paired one.
            c.layout = if (si + mi) % 2 == 0 {
                Layout::Bhsd
            } else {
                Layout::Offset
            };
            check(&ctx, &c);
        }
    }
}
