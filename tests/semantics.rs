//! The documented semantics: fully masked rows, finite sentinels, overflow, causal
//! alignment, layouts, splitting under small limits, recording into your own encoder.

mod common;

use common::*;
use wgpu_attention::reference::{self, HostMask, HostTensor};
use wgpu_attention::{
    AttentionOptions, Backend, CausalAlignment, Context, DType, Mask, TensorView, Tuning,
};

const BACKENDS: [Backend; 3] = [Backend::Flash, Backend::MemoryEfficient, Backend::Naive];

#[allow(clippy::too_many_arguments)]
fn run_simple(
    ctx: &Context,
    qh: &[f32],
    kh: &[f32],
    vh: &[f32],
    shape_q: [usize; 4],
    shape_kv: [usize; 4],
    dv: usize,
    opts: &AttentionOptions,
) -> Vec<f32> {
    let q = ctx.upload_f32(qh, shape_q).unwrap();
    let k = ctx.upload_f32(kh, shape_kv).unwrap();
    let v = ctx
        .upload_f32(vh, [shape_kv[0], shape_kv[1], shape_kv[2], dv])
        .unwrap();
    let out = nan_output(ctx, [shape_q[0], shape_q[1], shape_q[2], dv], DType::F32);
    ctx.attention_into_blocking(q.view(), k.view(), v.view(), &out, opts)
        .unwrap();
    ctx.download_f32_blocking(&out).unwrap()
}

/// Rows with no visible key give zeros (PyTorch gives NaN), whatever masked them.
#[test]
fn fully_masked_rows_are_zero() {
    let ctx = ctx();
    let (sq, sk, d) = (5, 9, 8);
    let qh = random(sq * d, 1);
    let kh = random(sk * d, 2);
    let vh = random(sk * d, 3);
    let all_false = ctx
        .upload_bool(&vec![false; sq * sk], [1, 1, sq, sk])
        .unwrap();
    let neg_inf = ctx
        .upload_f32(&vec![f32::NEG_INFINITY; sq * sk], [1, 1, sq, sk])
        .unwrap();
    let masks = [
        Mask::none().bool_mask(all_false.view().clone()),
        Mask::none().key_lengths(vec![0]),
        Mask::none().query_lengths(vec![0]),
        Mask::none().bias(neg_inf.view().clone()),
        Mask::none()
            .causal(CausalAlignment::BottomRight)
            .window(Some(0), None)
            .key_lengths(vec![0]),
    ];
    for backend in BACKENDS {
        for m in &masks {
            let o = run_simple(
                ctx,
                &qh,
                &kh,
                &vh,
                [1, 1, sq, d],
                [1, 1, sk, d],
                d,
                &AttentionOptions::with_mask(m.clone()).backend(backend),
            );
            assert!(
                o.iter().all(|&x| x == 0.0),
                "{backend:?} {}: {o:?}",
                m.describe()
            );
        }
    }
}

/// A row whose every logit carries a finite sentinel (WeNet's -1e10, transformers'
/// f32::MIN) gives the mean of V, as in PyTorch.
#[test]
fn finite_sentinels_give_mean_of_v() {
    let ctx = ctx();
    let (sq, sk, d) = (3, 11, 8);
    let qh = random(sq * d, 1);
    let kh = random(sk * d, 2);
    let vh = random(sk * d, 3);
    let mean: Vec<f64> = (0..d)
        .map(|c| (0..sk).map(|j| vh[j * d + c] as f64).sum::<f64>() / sk as f64)
        .collect();
    for sentinel in [-1e10f32, f32::MIN] {
        let bias = ctx
            .upload_f32(&vec![sentinel; sq * sk], [1, 1, sq, sk])
            .unwrap();
        for backend in BACKENDS {
            let o = run_simple(
                ctx,
                &qh,
                &kh,
                &vh,
                [1, 1, sq, d],
                [1, 1, sk, d],
                d,
                &AttentionOptions::with_mask(Mask::none().bias(bias.view().clone()))
                    .backend(backend),
            );
            for i in 0..sq {
                for c in 0..d {
                    assert!(
                        (o[i * d + c] as f64 - mean[c]).abs() < 1e-5,
                        "{backend:?} sentinel {sentinel}: row {i} col {c}: {} vs {}",
                        o[i * d + c],
                        mean[c]
                    );
                }
            }
        }
    }
}

/// A NaN in the bias masks that logit, like -inf (PyTorch would give NaN), on every
/// backend and with the bias's other terms (ALiBi, a bool mask) present or not.
#[test]
fn nan_in_the_bias_masks_the_logit() {
    let ctx = ctx();
    let (b, h, sq, sk) = (1, 2, 19, 23);
    let mut bias = random(h * sq * sk, 4);
    for (e, x) in bias.iter_mut().enumerate() {
        if e % 5 == 1 {
            *x = f32::NAN;
        }
    }
    let as_inf: Vec<f32> = bias
        .iter()
        .map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x })
        .collect();
    for backend in BACKENDS {
        for alibi in [false, true] {
            let case = |data: &[f32]| {
                let mut c = Case::new(b, h, sq, sk, 16).backend(backend);
                c.mask.bias = Some((data.to_vec(), [1, h, sq, sk], DType::F32));
                c.mask.alibi = alibi.then(|| vec![0.3, 0.1]);
                c
            };
            let (got, _) = run(ctx, &case(&bias));
            let (_, want) = run(ctx, &case(&as_inf));
            assert_close(&got, &want, DType::F32, &case(&bias).label());
        }
    }
}

/// Logits around 1e4 neither overflow nor lose the softmax.
#[test]
fn large_logits_do_not_overflow() {
    let ctx = ctx();
    for backend in BACKENDS {
        for dtype in [DType::F32, DType::F16] {
            let mut c = Case::new(1, 2, 37, 45, 64).backend(backend).dtype(dtype);
            c.q_gain = if dtype == DType::F16 { 100.0 } else { 3e4 };
            c.scale = Some(if dtype == DType::F16 { 10.0 } else { 0.125 });
            let (got, want) = run(ctx, &c);
            assert!(got.iter().all(|x| x.is_finite()), "{}", c.label());
            let worst = got
                .iter()
                .zip(&want)
                .map(|(&g, &w)| (g as f64 - w).abs())
                .fold(0.0, f64::max);
            // f32 logits of size 1e4 carry ~1e-3 of rounding error (here and in PyTorch), which
            // near-ties turn into output error of that order; a lost softmax would be O(1).
            assert!(worst < 2e-2, "{}: {worst}", c.label());
        }
    }
}

/// The two causal alignments, read off exactly: Q = 0 makes every visible key equally
/// likely, and V = one-hot rows shows which keys those are.
#[test]
fn causal_alignment_pictures() {
    let ctx = ctx();
    let (sq, sk) = (3, 5);
    let qh = vec![0.0; sq * 4];
    let kh = random(sk * 4, 2);
    let mut vh = vec![0.0; sk * sk];
    for j in 0..sk {
        vh[j * sk + j] = 1.0;
    }
    let pictures = [
        (
            Mask::none().causal(CausalAlignment::TopLeft),
            ["x....", "xx...", "xxx.."],
        ),
        (
            Mask::none().causal(CausalAlignment::BottomRight),
            ["xxx..", "xxxx.", "xxxxx"],
        ),
        (
            Mask::none().window(Some(1), Some(0)),
            ["x....", "xx...", ".xx.."],
        ),
        (
            Mask::none().window(Some(1), Some(1)),
            ["xx...", "xxx..", ".xxx."],
        ),
        (
            Mask::none()
                .causal(CausalAlignment::BottomRight)
                .window(Some(1), None),
            [".xx..", "..xx.", "...xx"],
        ),
    ];
    for backend in BACKENDS {
        for (m, rows) in &pictures {
            let o = run_simple(
                ctx,
                &qh,
                &kh,
                &vh,
                [1, 1, sq, 4],
                [1, 1, sk, 4],
                sk,
                &AttentionOptions::with_mask(m.clone()).backend(backend),
            );
            for (i, row) in rows.iter().enumerate() {
                let n = row.chars().filter(|&c| c == 'x').count() as f32;
                for (j, ch) in row.chars().enumerate() {
                    let want = if ch == 'x' { 1.0 / n } else { 0.0 };
                    assert!(
                        (o[i * sk + j] - want).abs() < 1e-6,
                        "{backend:?} {}: row {i}: {:?} vs {row}",
                        m.describe(),
                        &o[i * sk..(i + 1) * sk]
                    );
                }
            }
        }
    }
}

/// A packed QKV buffer [b, s, 3, h, d] gives the same result as separate BHSD tensors.
#[test]
fn packed_qkv_layout() {
    let ctx = ctx();
    let (b, s, h, d) = (2, 19, 3, 16);
    let packed = random(b * s * 3 * h * d, 11);
    let buf = buffer_of(ctx, &packed, DType::F32);
    let [q, k, v] = TensorView::packed_qkv(buf.buffer().clone(), DType::F32, b, s, h, d)
        .map(|x| buf.reshaped(DType::F32, x.shape, x.strides, x.offset));
    let unpack = |which: usize| {
        let mut t = vec![0.0; b * h * s * d];
        for ib in 0..b {
            for is in 0..s {
                for ih in 0..h {
                    for id in 0..d {
                        t[((ib * h + ih) * s + is) * d + id] =
                            packed[(((ib * s + is) * 3 + which) * h + ih) * d + id];
                    }
                }
            }
        }
        t
    };
    let (qh, kh, vh) = (unpack(0), unpack(1), unpack(2));
    let opts = AttentionOptions::with_mask(Mask::none().causal(CausalAlignment::TopLeft));
    let want = run_simple(ctx, &qh, &kh, &vh, [b, h, s, d], [b, h, s, d], d, &opts);
    for backend in BACKENDS {
        let out = nan_output(ctx, [b, h, s, d], DType::F32);
        ctx.attention_into_blocking(&q, &k, &v, &out, &opts.clone().backend(backend))
            .unwrap();
        let got = ctx.download_f32_blocking(&out).unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-5, "{backend:?}: {worst}");
    }
}

/// The three backends agree with each other (a user can switch), masks included.
#[test]
fn backends_agree() {
    let ctx = ctx();
    let (b, h, sq, sk, d) = (2, 2, 77, 130, 48);
    let bias = random(h * sq * sk, 8);
    let mask = MaskSpec {
        causal: Some(CausalAlignment::BottomRight),
        key_lengths: Some(vec![130, 71]),
        bias: Some((bias, [1, h, sq, sk], DType::F32)),
        ..Default::default()
    };
    let outs: Vec<Vec<f32>> = BACKENDS
        .iter()
        .map(|&be| {
            run(
                ctx,
                &Case::new(b, h, sq, sk, d).backend(be).mask(mask.clone()),
            )
            .0
        })
        .collect();
    for pair in [(0, 1), (0, 2), (1, 2)] {
        let worst = outs[pair.0]
            .iter()
            .zip(&outs[pair.1])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            worst < 2e-5,
            "{:?} vs {:?}: {worst}",
            BACKENDS[pair.0],
            BACKENDS[pair.1]
        );
    }
}

/// A device with tiny limits: every backend splits its dispatches (workgroups per
/// dimension, naive score scratch) and still matches the reference. (Calls split into parts
/// to fit small storage bindings: tests/split.rs.)
#[test]
fn splits_under_small_limits() {
    let (info, device, queue) = own_device(|l| wgpu::Limits {
        max_compute_workgroups_per_dimension: 7,
        max_storage_buffer_binding_size: 1 << 16,
        ..l
    });
    let small = Context::from_device(device, queue, &info);
    assert_eq!(small.caps().max_workgroups_per_dim, 7);
    for backend in BACKENDS {
        let mask = MaskSpec {
            causal: Some(CausalAlignment::TopLeft),
            key_lengths: Some(vec![80, 33]),
            ..Default::default()
        };
        check(
            &small,
            &Case::new(2, 4, 100, 80, 16).backend(backend).mask(mask),
        );
    }
}

/// Recording two calls into the caller's own encoder, submitted once.
#[test]
fn record_into_own_encoder() {
    let ctx = ctx();
    let shape = [1, 2, 20, 8];
    let n = 2 * 20 * 8;
    let (qh, kh, vh) = (random(n, 1), random(n, 2), random(n, 3));
    let q = ctx.upload_f32(&qh, shape).unwrap();
    let k = ctx.upload_f32(&kh, shape).unwrap();
    let v = ctx.upload_f32(&vh, shape).unwrap();
    let o1 = nan_output(ctx, shape, DType::F32);
    let o2 = nan_output(ctx, shape, DType::F32);
    let causal = AttentionOptions::with_mask(Mask::none().causal(CausalAlignment::TopLeft));
    // Our own use of the device: under its lock (a no-op except on GL, where another test
    // thread may be compiling for longer than wgpu-hal waits for the GL context).
    let held = ctx.lock_device();
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    let p1 = ctx
        .record_attention(
            &mut enc,
            q.view(),
            k.view(),
            v.view(),
            &o1,
            &AttentionOptions::default(),
        )
        .unwrap();
    let p2 = ctx
        .record_attention(&mut enc, q.view(), k.view(), v.view(), &o2, &causal)
        .unwrap();
    assert_eq!(p1.backend, p2.backend, "a mask never changes the backend");
    ctx.queue().submit([enc.finish()]);
    drop(held);
    let a = ctx.download_f32_blocking(&o1).unwrap();
    let b = ctx.download_f32_blocking(&o2).unwrap();
    let want_a = run_simple(
        ctx,
        &qh,
        &kh,
        &vh,
        shape,
        shape,
        8,
        &AttentionOptions::default(),
    );
    let want_b = run_simple(ctx, &qh, &kh, &vh, shape, shape, 8, &causal);
    assert_eq!(a, want_a);
    assert_eq!(b, want_b);
    assert_ne!(a, b);
}

/// The context is Send + Sync and works from several threads at once.
#[test]
fn context_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Context>();
    let ctx = ctx();
    std::thread::scope(|s| {
        for t in 0..3u64 {
            s.spawn(move || {
                let mut c = Case::new(1, 2, 21 + t as usize, 30, 16);
                c.seed = t;
                check(ctx, &c);
            });
        }
    });
}

/// `plan` explains the choice without running anything, and agrees with what runs.
#[test]
fn plan_explains_itself() {
    let ctx = ctx();
    let t = ctx
        .upload_f32(&random(2 * 64 * 64, 1), [1, 2, 64, 64])
        .unwrap();
    let plan = ctx
        .plan(t.view(), t.view(), t.view(), &AttentionOptions::default())
        .unwrap();
    assert_eq!(plan.backend, Backend::Flash);
    assert!(plan.reason.contains("flash fits"), "{}", plan.reason);
    let masked = ctx
        .plan(
            t.view(),
            t.view(),
            t.view(),
            &AttentionOptions::with_mask(Mask::none().key_lengths(vec![3])),
        )
        .unwrap();
    assert_eq!(masked.backend, Backend::Flash);
    assert!(
        masked.reason.contains("inside the kernel"),
        "{}",
        masked.reason
    );
    let compiled = ctx.compiled_pipelines();
    let _ = ctx
        .plan(
            t.view(),
            t.view(),
            t.view(),
            &AttentionOptions::default().backend(Backend::Naive),
        )
        .unwrap();
    assert_eq!(
        ctx.compiled_pipelines(),
        compiled,
        "planning compiles nothing"
    );
}

/// Shaders compiled without wgpu's injected bounds checks compute the same results.
#[test]
fn unchecked_shaders_match_reference() {
    let (info, device, queue) = own_device(|l| l);
    // SAFETY: the crate's own shaders on validated views.
    let fast = unsafe { Context::from_device_unchecked(device, queue, &info) };
    for backend in [Backend::Flash, Backend::MemoryEfficient, Backend::Naive] {
        let mask = MaskSpec {
            causal: Some(CausalAlignment::BottomRight),
            key_lengths: Some(vec![50, 9]),
            ..Default::default()
        };
        check(
            &fast,
            &Case::new(2, 2, 37, 50, 64).backend(backend).mask(mask),
        );
    }
}

/// The one rule for non-finite inputs, on every backend and the decode path: a logit that
/// is not finite (NaN or ±inf from Q·K, the bias, or their sum) takes no part in the softmax,
/// so a NaN or infinite query row gives zeros and a NaN or infinite key is skipped by every
/// row. The reference applies the same rule; the outputs stay finite.
#[test]
fn non_finite_logits_are_masked_on_every_backend() {
    let ctx = ctx();
    // (sq, sk): a prefill shape for every backend, and a decode shape (split keys).
    for (sq, sk, backends) in [
        (9, 23, &BACKENDS[..]),
        (1, 1030, &[Backend::Auto, Backend::MemoryEfficient][..]),
    ] {
        let (h, d) = (2, 16);
        let mut qh = random(h * sq * d, 1);
        let mut kh = random(h * sk * d, 2);
        let vh = random(h * sk * d, 3);
        let mut bias = random(h * sq * sk, 4);
        qh[3] = f32::NAN; // head 0, row 0
        if sq > 1 {
            qh[(sq + 2) * d + 5] = f32::INFINITY; // head 1, row 2
        }
        kh[4 * d + 1] = f32::NAN; // head 0, key 4
        kh[(sk + 7) * d] = f32::INFINITY; // head 1, key 7
        kh[(sk + 9) * d + 2] = f32::NEG_INFINITY; // head 1, key 9
        bias[sq * sk + 5] = f32::INFINITY; // head 1, row 0 (a live row), key 5
        bias[sq * sk + 3] = f32::NEG_INFINITY; // head 1, row 0, key 3
        let q = ctx.upload_f32(&qh, [1, h, sq, d]).unwrap();
        let k = ctx.upload_f32(&kh, [1, h, sk, d]).unwrap();
        let v = ctx.upload_f32(&vh, [1, h, sk, d]).unwrap();
        let b = ctx.upload_f32(&bias, [1, h, sq, sk]).unwrap();
        for with_bias in [false, true] {
            let host_bias = HostTensor {
                data: &bias,
                shape: [1, h, sq, sk],
            };
            let want = reference::attention(
                &HostTensor {
                    data: &qh,
                    shape: [1, h, sq, d],
                },
                &HostTensor {
                    data: &kh,
                    shape: [1, h, sk, d],
                },
                &HostTensor {
                    data: &vh,
                    shape: [1, h, sk, d],
                },
                1.0 / (d as f64).sqrt(),
                &HostMask {
                    bias: with_bias.then_some(host_bias),
                    ..Default::default()
                },
            );
            assert!(want.iter().all(|x| x.is_finite()));
            // The NaN query row gives zeros.
            assert!(want[..d].iter().all(|&x| x == 0.0));
            let mask = if with_bias {
                Mask::none().bias(b.view().clone())
            } else {
                Mask::none()
            };
            // Each backend as dispatched here, and the unrolled flash kernel (the default only on
            // CPU adapters) forced.
            let unrolled = AttentionOptions::with_mask(mask.clone())
                .backend(Backend::Flash)
                .tuning(Tuning::new(Some(8), None, Some(1)));
            let runs = backends
                .iter()
                .map(|&b| AttentionOptions::with_mask(mask.clone()).backend(b))
                .chain((sq > 1).then_some(unrolled));
            for opts in runs {
                let out = nan_output(ctx, [1, h, sq, d], DType::F32);
                let plan = ctx
                    .attention_into_blocking(&q, &k, &v, &out, &opts)
                    .unwrap();
                let got = ctx.download_f32_blocking(&out).unwrap();
                let label = format!("sq {sq} sk {sk} bias {with_bias} {}", plan.reason);
                assert_close(&got, &want, DType::F32, &label);
            }
        }
    }
}
