//! Flash on cooperative matrices (tensor cores), FlashAttention-2 style.
//!
//! On an adapter with f16 cooperative matrices (lavapipe from Mesa 26: 8×8×8; NVIDIA:
//! 16×16×16) the dispatcher must pick the cooperative-matrix kernel for 16-bit inputs, and it
//! must match the f64 reference over masks × shapes × dtypes × GQA × layouts, with outputs
//! poisoned with NaN. With `WGPU_ATTENTION_REQUIRE_COOP=<fragment>` (CI's Mesa 26 pass) an
//! adapter without them fails the suite; elsewhere the same cases check that flash falls
//! back cleanly. The variant's rescale counter is tested here too.

mod common;

use std::sync::OnceLock;

use common::*;
use wgpu_attention::dispatch::Family;
use wgpu_attention::reference::HostMask;
use wgpu_attention::{
    AttentionOptions, Backend, CausalAlignment, Context, DType, Mask, Problem, TensorView, Tuning,
    Varlen, Window,
};

/// The experimental context of this binary (cooperative matrices where the adapter has them).
fn coop_ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        // SAFETY: the test accepts wgpu's experimental features.
        let c = unsafe { Context::new_experimental_blocking() }.expect("adapter");
        let i = c.adapter_info();
        eprintln!(
            "testing on {} ({:?}, {}): cooperative matrices {}, fragment {}",
            i.name,
            i.backend,
            i.driver_info,
            c.caps().coop_matrix,
            c.caps().coop_fragment
        );
        if let Ok(want) = std::env::var("WGPU_ATTENTION_REQUIRE_COOP") {
            let want: u32 = want
                .parse()
                .expect("WGPU_ATTENTION_REQUIRE_COOP: a fragment size");
            assert_eq!(
                c.caps().coop_fragment,
                want,
                "the adapter ({}, {}) must offer {want}x{want}x{want} f16 cooperative matrices here",
                i.name,
                i.driver_info
            );
        }
        c
    })
}

/// An f16 problem of one batch item.
/// An adapter of the caller's and a device on it with wgpu's experimental cooperative
/// matrices, the limits `limits` makes of the adapter's. Made after the shared context and
/// under its lock: on GL, two threads opening EGL at once race.
fn coop_device(
    limits: impl FnOnce(wgpu::Limits) -> wgpu::Limits,
) -> (wgpu::Adapter, wgpu::Device, wgpu::Queue) {
    let _held = coop_ctx().lock_device();
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("adapter");
    let coop = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: adapter.features() & (wgpu_attention::OPTIONAL_FEATURES | coop),
        required_limits: limits(adapter.limits()),
        // SAFETY: the test accepts wgpu's experimental features.
        experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
        ..Default::default()
    }))
    .expect("device");
    (adapter, device, queue)
}

fn f16_problem(h: usize, s: usize, d: usize) -> Problem {
    Problem {
        dtype_q: DType::F16,
        dtype_k: DType::F16,
        dtype_v: DType::F16,
        dtype_o: DType::F16,
        ..Problem::new(1, h, s, s, d)
    }
}

fn has_coop(ctx: &Context) -> bool {
    let plan = ctx
        .plan_problem(&f16_problem(1, 64, 64), &Default::default())
        .unwrap();
    plan.variant.family() == Family::FlashCoop
}

#[test]
fn the_dispatcher_picks_cooperative_matrices_for_16_bit_inputs() {
    let ctx = coop_ctx();
    let plan = ctx
        .plan_problem(&f16_problem(8, 512, 128), &Default::default())
        .unwrap();
    let f32_plan = ctx
        .plan_problem(&Problem::new(1, 8, 512, 512, 128), &Default::default())
        .unwrap();
    // f32 inputs never use f16 tensor cores.
    assert!(
        matches!(
            f32_plan.variant.family(),
            Family::Flash | Family::FlashUnrolled
        ),
        "{}",
        f32_plan.reason
    );
    let caps = ctx.caps();
    // (Any power-of-two subgroup range: a larger subgroup owns more row blocks.)
    if caps.coop_fragment > 0 {
        assert_eq!(plan.variant.family(), Family::FlashCoop, "{}", plan.reason);
        // The FlashAttention-2 structure, as its cost line states it, at d=128.
        let cost = plan.variant.cost();
        assert!(cost.rows_per_workgroup >= 64, "{cost}");
        assert!(cost.keys_per_tile >= 32, "{cost}");
        assert!(cost.barriers_per_tile <= 2, "{cost}");
        assert!(cost.workgroup_bytes <= caps.max_workgroup_storage, "{cost}");
        assert!(plan.to_string().contains(&cost.to_string()), "{plan}");
        eprintln!("{plan}");
    } else {
        assert_eq!(
            plan.variant.family(),
            f32_plan.variant.family(),
            "{}",
            plan.reason
        );
    }
}

/// Masks × shapes × dtypes × GQA × layouts against the f64 reference.
#[test]
fn cooperative_matrix_flash_matches_the_reference() {
    let ctx = coop_ctx();
    let coop = has_coop(ctx);
    // (batch, query heads, KV heads, Sq, Sk, Dk, Dv)
    let shapes: [(usize, usize, usize, usize, usize, usize, usize); 7] = [
        (1, 2, 1, 70, 33, 64, 64),
        (2, 4, 2, 64, 128, 128, 128),
        (1, 2, 2, 113, 59, 40, 40),
        (2, 2, 1, 7, 300, 16, 16),
        (1, 1, 1, 1, 1, 32, 32),
        (1, 4, 1, 1023, 129, 64, 32),
        (2, 3, 3, 59, 113, 96, 128),
    ];
    let mut n = 0;
    for (si, &(b, hq, hkv, sq, sk, dk, dv)) in shapes.iter().enumerate() {
        // Without cooperative matrices these cases check the fallback, which the other
        // suites cover: the default tier runs two shapes of it (head dims in one bucket).
        if !coop && !full_tier() && si != 0 && si != 2 {
            continue;
        }
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
            MaskSpec {
                causal: Some(CausalAlignment::TopLeft),
                query_lengths: Some((0..b).map(|i| [sq, sq / 2 + 1][i % 2] as u32).collect()),
                bool_mask: Some((random_bool(b * hq * sq * sk, 9, 0.5), [b, hq, sq, sk])),
                bias: Some((random(b * sq * sk, 10), [b, 1, sq, sk], DType::BF16)),
                ..Default::default()
            },
        ];
        for (mi, mask) in masks.into_iter().enumerate() {
            for (di, dtype) in [DType::F16, DType::BF16].into_iter().enumerate() {
                let mut c = Case::new(b, hq, sq, sk, dk)
                    .dtype(dtype)
                    .backend(Backend::Flash)
                    .mask(mask.clone());
                c.hkv = hkv;
                c.dv = dv;
                c.seed = (si * 100 + mi * 10 + di) as u64;
                c.lse = mi % 2 == 1;
                // Aligned BHSD takes the eight-element K/V loads; an odd element offset and
                // the BSHD layout the element-wise ones.
                c.layout = [Layout::Bhsd, Layout::Offset, Layout::Bshd][(si + mi + di) % 3];
                if di == 1 {
                    c.out_dtype = DType::F32;
                }
                let (got, want, plan) = run_plan(ctx, &c);
                assert_eq!(
                    plan.variant.family() == Family::FlashCoop,
                    coop,
                    "{}",
                    plan.reason
                );
                assert_within(&got, &want, coop_tolerance(c.out_dtype), &c.label());
                n += 1;
            }
        }
    }
    eprintln!("{n} cases, cooperative matrices: {coop}");
}

/// Gemma 2's soft cap and gpt-oss's sinks on cooperative matrices: the cap goes through the
/// extra-terms loop over each lane's visible keys (with the bias and ALiBi where present),
/// the sink into each row's state before the output.
#[test]
fn softcap_and_sinks_on_cooperative_matrices() {
    let ctx = coop_ctx();
    let coop = has_coop(ctx);
    let mut n = 0;
    for (si, &(b, hq, hkv, sq, sk, d)) in [(1, 4, 2, 70, 33, 64), (2, 2, 1, 59, 113, 128)]
        .iter()
        .enumerate()
    {
        // Without cooperative matrices the fallback is the other suites' (tests/serving.rs):
        // the default tier runs the first shape of it (the d=128 one compiles slowest).
        if !coop && !full_tier() && si != 0 {
            continue;
        }
        let masks = [
            MaskSpec::default(),
            MaskSpec {
                causal: Some(CausalAlignment::BottomRight),
                key_lengths: Some((0..b).map(|i| [sk, 0][i % 2] as u32).collect()),
                bias: Some((random(hq * sq * sk, 11), [1, hq, sq, sk], DType::F16)),
                ..Default::default()
            },
        ];
        for (mi, mask) in masks.into_iter().enumerate() {
            for dtype in [DType::F16, DType::BF16] {
                let mut c = Case::new(b, hq, sq, sk, d)
                    .dtype(dtype)
                    .backend(Backend::Flash)
                    .mask(mask.clone());
                c.hkv = hkv;
                c.q_gain = 6.0;
                c.softcap = Some(2.5);
                c.sinks = Some([0.5, -2.0, 3.0, 9.0][..hq].to_vec());
                c.lse = true;
                c.seed = (si * 10 + mi) as u64;
                let (got, want, plan) = run_plan(ctx, &c);
                assert_eq!(
                    plan.variant.family() == Family::FlashCoop,
                    coop,
                    "{}",
                    plan.reason
                );
                assert_within(&got, &want, coop_tolerance(c.out_dtype), &c.label());
                n += 1;
            }
        }
    }
    assert_eq!(n, if coop || full_tier() { 8 } else { 4 });
}

/// Paged K/V on cooperative matrices: the K and V tiles staged row by row through the page
/// table, in word pairs (f16, vLLM's token-major pages) and element by element (bf16 at an odd
/// offset), with pages that divide the key tile (16) and that end inside it (7).
#[test]
fn paged_kv_on_cooperative_matrices() {
    let ctx = coop_ctx();
    let coop = has_coop(ctx);
    let mut n = 0;
    for (si, &(b, hq, hkv, sq, sk, d)) in [(2, 4, 2, 70, 33, 64), (2, 2, 1, 59, 113, 128)]
        .iter()
        .enumerate()
    {
        if !coop && !full_tier() && si != 0 {
            continue;
        }
        let masks = [
            MaskSpec::default(),
            MaskSpec {
                causal: Some(CausalAlignment::BottomRight),
                key_lengths: Some((0..b).map(|i| [sk, sk / 2][i % 2] as u32).collect()),
                bias: Some((random(hq * sq * sk, 12), [1, hq, sq, sk], DType::F16)),
                ..Default::default()
            },
        ];
        for (mi, mask) in masks.into_iter().enumerate() {
            for (dtype, layout) in [(DType::F16, Layout::Bshd), (DType::BF16, Layout::Offset)] {
                let mut c = Case::new(b, hq, sq, sk, d)
                    .dtype(dtype)
                    .backend(Backend::Flash)
                    .mask(mask.clone());
                c.hkv = hkv;
                c.layout = layout;
                c.paged = Some([16, 7][(mi + n) % 2]);
                c.lse = true;
                c.seed = (si * 10 + mi + 40) as u64;
                let (got, want, plan) = run_plan(ctx, &c);
                assert_eq!(
                    plan.variant.family() == Family::FlashCoop,
                    coop,
                    "{}",
                    plan.reason
                );
                assert_within(&got, &want, coop_tolerance(c.out_dtype), &c.label());
                n += 1;
            }
        }
    }
    assert_eq!(n, if coop || full_tier() { 8 } else { 4 });
}

/// Quantized K/V on cooperative matrices (issue 25): each format decoded element by element
/// into the f16 tiles, contiguous and paged, with and without score terms, Q in f16 and bf16.
/// Tolerance: the dequantized values round to f16 in the tiles (q8_0's `d·q` needs up to 19
/// bits), one more f16 rounding of each K and V value than `coop_tolerance` counts: each
/// logit moves by at most u(f16)·Σ|q·k|·scale and each output by u(f16)·|v|, so atol gains
/// 2·u(f16).
#[test]
fn quantized_kv_on_cooperative_matrices() {
    let ctx = coop_ctx();
    let coop = has_coop(ctx);
    let formats = [
        DType::Q8_0,
        DType::Q4_0,
        DType::I8,
        DType::E4M3,
        DType::E5M2,
    ];
    let mut n = 0;
    for (fi, &fmt) in formats.iter().enumerate() {
        for mi in 0..2 {
            if !coop && !full_tier() && mi == 1 {
                continue;
            }
            let (b, hq, hkv, sq, sk, d) = [(2, 4, 2, 70, 33, 64), (1, 2, 1, 59, 113, 128)][mi];
            let mut c = Case::new(b, hq, sq, sk, d)
                .dtype([DType::F16, DType::BF16][(fi + mi) % 2])
                .backend(Backend::Flash);
            if mi == 1 {
                c.mask = MaskSpec {
                    causal: Some(CausalAlignment::BottomRight),
                    bias: Some((random(hq * sq * sk, 13), [1, hq, sq, sk], DType::F16)),
                    ..Default::default()
                };
            }
            c.hkv = hkv;
            c.kv = Some(fmt);
            c.paged = [None, Some(16)][(fi + mi) % 2];
            c.layout = [Layout::Bshd, Layout::Offset, Layout::Bhsd][(fi + mi) % 3];
            // (No log-sum-exp check: `run_plan` holds it to f32's tolerance, and the f16
            // rounding of K moves the logits by up to u(f16)·Σ|q·k|·scale, about 1e-5 here.
            // tests/quant.rs checks the log-sum-exp of quantized K on every other kernel.)
            c.seed = (fi * 10 + mi + 60) as u64;
            let (got, want, plan) = run_plan(ctx, &c);
            assert_eq!(
                plan.variant.family() == Family::FlashCoop,
                coop,
                "{}",
                plan.reason
            );
            let (atol, rtol) = coop_tolerance(c.out_dtype);
            let u16 = unit_roundoff(DType::F16);
            assert_within(&got, &want, (atol + 2.0 * u16, rtol), &c.label());
            n += 1;
        }
    }
    assert_eq!(n, if coop || full_tier() { 10 } else { 5 });
}

/// The cooperative-matrix kernel's tolerance: its P·V multiplies f16 weights, whatever the
/// inputs (bf16 Q/K/V convert to f16 exactly in range, so they add nothing), and the output
/// rounds to its own dtype (`tolerance_for` says how each term is derived).
fn coop_tolerance(out: DType) -> (f64, f64) {
    tolerance_for(out, DType::F16)
}

/// WeNet masks with a finite sentinel (-1e10) in a float bias: a row whose keys are all
/// masked that way still gets the mean of V, as in PyTorch, so the kernel must take the
/// row's own max, not a fragment's.
#[test]
fn rows_masked_by_a_finite_sentinel_get_the_mean_of_v() {
    let ctx = coop_ctx();
    let (b, h, sq, sk, d) = (1, 2, 80, 70, 64);
    let mut bias = random(b * sq * sk, 31);
    for i in 0..sq {
        for j in 0..sk {
            // Rows 3, 17 and 64..: every key at the sentinel; other rows: keys past 50.
            if i == 3 || i == 17 || i >= 64 || j >= 50 {
                bias[i * sk + j] = -1e10;
            }
        }
    }
    let mut c = Case::new(b, h, sq, sk, d)
        .dtype(DType::F16)
        .backend(Backend::Flash)
        .mask(MaskSpec {
            bias: Some((bias, [b, 1, sq, sk], DType::F32)),
            ..Default::default()
        });
    c.out_dtype = DType::F32;
    c.lse = true;
    let (got, want, plan) = run_plan(ctx, &c);
    assert_eq!(plan.variant.family() == Family::FlashCoop, has_coop(ctx));
    assert_within(&got, &want, coop_tolerance(c.out_dtype), &c.label());
}

/// The lazy-rescaling counter: never on a row whose max stays within the slack, on every
/// tile after the first when a bias ramps up by more than the slack per tile, and on a
/// small fraction of tiles for random inputs.
#[test]
fn rescale_round_trips_are_counted() {
    let ctx = coop_ctx();
    if !has_coop(ctx) {
        eprintln!("no cooperative matrices on this adapter: the counter is the coop kernel's");
        assert!(std::env::var("WGPU_ATTENTION_REQUIRE_COOP").is_err());
        return;
    }
    let (b, h, sq, sk, d) = (1, 1, 64, 256, 64);
    let f16 = |data: &[f32], shape: [usize; 4]| upload(ctx, data, shape, DType::F16, Layout::Bhsd);
    let q = f16(&random(b * h * sq * d, 1), [b, h, sq, d]);
    let k = f16(&random(b * h * sk * d, 2), [b, h, sk, d]);
    let v = f16(&random(b * h * sk * d, 3), [b, h, sk, d]);
    let out = nan_output(ctx, [b, h, sq, d], DType::F32);
    let counts = |mask: Mask| {
        let opts = AttentionOptions::with_mask(mask);
        ctx.debug_kernel_counts(q.view(), k.view(), v.view(), out.view(), &opts)
            .expect("counts")
    };
    let tiles = (sk / 32) as u32;
    // Random inputs at this scale: logits within a few units, so the first tile's max
    // holds: no round trip.
    let plain = counts(Mask::none());
    assert_eq!(plain.key_tiles, tiles);
    assert_eq!(plain.rescales, 0, "{plain:?}");
    // A bias rising by 1 per key: every tile's max exceeds the last by 32 > 8.
    let ramp: Vec<f32> = (0..sq * sk).map(|e| (e % sk) as f32).collect();
    let ramp = upload(ctx, &ramp, [1, 1, sq, sk], DType::F32, Layout::Bhsd);
    let rising = counts(Mask::none().bias(ramp.view().clone()));
    assert_eq!(rising.rescales, tiles - 1, "{rising:?}");
    // Causal (top-left): 64 rows see the first 64 keys, two tiles, and no round trip.
    let causal = counts(Mask::none().causal(CausalAlignment::TopLeft));
    assert_eq!(causal.key_tiles, 2, "{causal:?}");
    assert_eq!(causal.rescales, 0, "{causal:?}");
    // Slack 0: random inputs' maxima rise on some later tile of some row block, and each
    // rise is a round trip (the slack reaches the shader).
    let opts = AttentionOptions::default().tuning(Tuning::default().rescale_slack(0));
    let exact = ctx
        .debug_kernel_counts(q.view(), k.view(), v.view(), out.view(), &opts)
        .expect("counts");
    assert!(exact.rescales > 0, "{exact:?}");
    assert!(exact.rescales < tiles, "{exact:?}");
}

/// Packed variable-length batches with GQA run on the cooperative-matrix kernel too.
#[test]
fn packed_variable_length_batches() {
    let ctx = coop_ctx();
    let (h, hkv, d) = (4, 2, 64);
    let vl = Varlen::from_lengths(&[37, 1, 0, 100], &[50, 7, 3, 129]);
    let tq = *vl.cu_seqlens_q.last().unwrap() as usize;
    let tk = *vl.cu_seqlens_k.last().unwrap() as usize;
    let qh = round_to(DType::F16, &random(tq * h * d, 41));
    let kh = round_to(DType::F16, &random(tk * hkv * d, 42));
    let vh = round_to(DType::F16, &random(tk * hkv * d, 43));
    let packed = |data: &[f32], total: usize, heads: usize| {
        let t = buffer_of(ctx, data, DType::F16);
        let v = TensorView::packed_varlen(t.buffer().clone(), DType::F16, total, heads, d);
        t.reshaped(DType::F16, v.shape, v.strides, 0)
    };
    let (q, k, v) = (
        packed(&qh, tq, h),
        packed(&kh, tk, hkv),
        packed(&vh, tk, hkv),
    );
    let out = packed_varlen(ctx, &vec![f32::NAN; tq * h * d], tq, h, d);
    let opts = AttentionOptions::with_mask(Mask::none().causal(CausalAlignment::BottomRight))
        .varlen(vl.clone());
    let plan = ctx
        .attention_into_blocking(&q, &k, &v, &out, &opts)
        .expect("varlen");
    assert_eq!(
        plan.variant.family() == Family::FlashCoop,
        has_coop(ctx),
        "{}",
        plan.reason
    );
    let got = ctx.download_f32_blocking(&out).unwrap();
    let mask = HostMask {
        causal: true,
        alignment: CausalAlignment::BottomRight,
        ..Default::default()
    };
    let want = varlen_reference(&vl, (h, hkv, d), [&qh, &kh, &vh], &mask);
    assert_within(&got, &want, coop_tolerance(DType::F16), "coop varlen");
}

/// A call larger than one storage binding runs split (batch items, heads, query rows) on the
/// cooperative-matrix kernel too, on a device of the caller's (`Context::from_adapter_device`)
/// with small bindings; causal and window masks depend on a row's index, which each part
/// must keep.
#[test]
fn split_calls_on_a_callers_device() {
    let (adapter, device, queue) = coop_device(|l| wgpu::Limits {
        max_storage_buffer_binding_size: 6 * 1024,
        ..l
    });
    let ctx = Context::from_adapter_device(&adapter, device, queue);
    let expect_coop = has_coop(coop_ctx());
    let (b, hq, hkv, sq, sk, d) = (2, 4, 2, 77, 23, 16);
    let masks = [
        MaskSpec::default(),
        MaskSpec {
            causal: Some(CausalAlignment::BottomRight),
            window: Some(Window {
                left: Some(9),
                right: None,
            }),
            key_lengths: Some(vec![23, 14]),
            ..Default::default()
        },
    ];
    for (mi, mask) in masks.into_iter().enumerate() {
        let mut c = Case::new(b, hq, sq, sk, d)
            .dtype(DType::F16)
            .backend(Backend::Flash)
            .mask(mask);
        c.hkv = hkv;
        c.lse = mi == 1;
        let (got, want, plan) = run_plan(&ctx, &c);
        assert!(plan.parts > 1, "not split: {plan}");
        assert_eq!(
            plan.variant.family() == Family::FlashCoop,
            expect_coop,
            "{plan}"
        );
        assert_within(&got, &want, coop_tolerance(c.out_dtype), &c.label());
    }
}

/// Drivers with a range of subgroup sizes (RADV: 32 to 64) pick one when they compile; the
/// kernel has one subgroup of the largest size per row block, and where the driver picks a
/// smaller one, the subgroups sharing a row block split its fragments. Lavapipe's subgroups
/// are 8: a context that believes the largest is 16 builds the kernel for subgroups of 16,
/// so two subgroups of 8 share every row block: the path RADV takes in wave32.
#[test]
fn subgroups_smaller_than_the_largest_share_a_row_block() {
    let expect_coop = has_coop(coop_ctx());
    let (adapter, device, queue) = coop_device(|l| l);
    let mut info = adapter.get_info();
    if expect_coop {
        assert_eq!(info.subgroup_min_size, info.subgroup_max_size, "{info:?}");
        info.subgroup_max_size *= 2;
    }
    let ctx = Context::from_adapter_device_as(&adapter, device, queue, &info);
    if !expect_coop {
        // Without cooperative matrices the path does not exist: the dispatcher says so
        // (the SIMT kernels' suites cover the fallback's results).
        let plan = ctx
            .plan_problem(&f16_problem(2, 70, 64), &Default::default())
            .unwrap();
        assert_ne!(plan.variant.family(), Family::FlashCoop, "{plan}");
        return;
    }
    let shapes = [(2, 4, 2, 70, 133, 64, 64), (1, 2, 1, 113, 59, 40, 128)];
    for (si, &(b, hq, hkv, sq, sk, dk, dv)) in shapes.iter().enumerate() {
        let masks = [
            MaskSpec::default(),
            MaskSpec {
                causal: Some(CausalAlignment::BottomRight),
                key_lengths: Some((0..b).map(|i| [sk, sk / 2][i % 2] as u32).collect()),
                bias: Some((random(hq * sq * sk, 8), [1, hq, sq, sk], DType::F16)),
                ..Default::default()
            },
            // A bias rising along the keys: a rescale round trip per tile, both ways.
            MaskSpec {
                bias: Some((
                    (0..sq * sk).map(|e| 0.5 * (e % sk) as f32).collect(),
                    [1, 1, sq, sk],
                    DType::F32,
                )),
                ..Default::default()
            },
        ];
        for (mi, mask) in masks.into_iter().enumerate() {
            let mut c = Case::new(b, hq, sq, sk, dk)
                .dtype(DType::F16)
                .backend(Backend::Flash)
                .mask(mask);
            c.hkv = hkv;
            c.dv = dv;
            c.seed = (si * 10 + mi) as u64;
            c.lse = mi == 1;
            let (got, want, plan) = run_plan(&ctx, &c);
            assert_eq!(
                plan.variant.family() == Family::FlashCoop,
                expect_coop,
                "{plan}"
            );
            if let wgpu_attention::dispatch::ShaderVariant::FlashCoop(t) = plan.variant {
                assert_eq!(t.ways, 2, "{t:?}");
            }
            assert_within(&got, &want, coop_tolerance(c.out_dtype), &c.label());
        }
    }
}

/// The lazy rescale's round trips, checked against the reference at the default slack (8)
/// and at slack 0: a bias rising along the keys moves every row's reference on every tile
/// (a round trip per tile), one falling then rising spreads the logits over hundreds of
/// units (the shared-row-block test takes the rounds with two ways).
#[test]
fn rescaled_accumulators_match_the_reference() {
    let ctx = coop_ctx();
    let expect_coop = has_coop(ctx);
    // (batch, heads, Sq, Sk, D, bias slope per key)
    let shapes = [(1, 2, 70, 200, 64, 0.5f32), (2, 1, 33, 130, 128, 3.0)];
    let each = shapes.iter().enumerate().flat_map(|s| {
        ["rising", "spread"]
            .into_iter()
            .enumerate()
            .map(move |p| (s, p))
    });
    // At the default slack (8: weights up to e^8) and at 0 (a round trip on every rise).
    for slack in [8, 0] {
        for ((si, &(b, h, sq, sk, d, slope)), (pi, profile)) in each.clone() {
            let bias: Vec<f32> = (0..sq * sk)
                .map(|e| {
                    let j = (e % sk) as f32;
                    match profile {
                        "rising" => slope * j,
                        _ => slope * (j - sk as f32 / 2.0).abs(),
                    }
                })
                .collect();
            let mut c = Case::new(b, h, sq, sk, d)
                .dtype(DType::F16)
                .backend(Backend::Flash)
                .mask(MaskSpec {
                    bias: Some((bias, [1, 1, sq, sk], DType::F32)),
                    ..Default::default()
                });
            c.seed = (si * 10 + pi) as u64;
            c.lse = true;
            c.tuning = Tuning::default().rescale_slack(slack);
            let (got, want, plan) = run_plan(ctx, &c);
            assert_eq!(
                plan.variant.family() == Family::FlashCoop,
                expect_coop,
                "{plan}"
            );
            if let wgpu_attention::dispatch::ShaderVariant::FlashCoop(t) = plan.variant {
                assert_eq!(t.slack, slack);
            }
            assert_within(
                &got,
                &want,
                coop_tolerance(c.out_dtype),
                &format!("{} slack {slack}", c.label()),
            );
        }
    }
}
