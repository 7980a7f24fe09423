//! The backward pass against the f64 analytic gradients (`reference::attention_backward`),
//! which a finite-difference check confirms on small cases: every mask kind and combination
//! × GQA × dtypes × ragged sizes × layouts, NaN-poisoned gradients, fully masked rows,
//! packed variable-length batches, and calls recorded together.

mod common;

use common::*;
use wgpu_attention::dispatch::BackwardPlan;
use wgpu_attention::reference::{self, HostGradients, HostTensor};
use wgpu_attention::{
    AttentionOptions, Backend, BackwardInputs, CausalAlignment, DType, GradientViews, Tensor,
    Tuning,
};

/// Which gradient a tolerance is for.
#[derive(Clone, Copy)]
enum Grad {
    Q,
    K,
    V,
    Bias,
}

/// The tolerance of gradient `g` stored as `dtype`, `|gpu − ref| ≤ atol + rtol·|ref|`,
/// derived as the forward's (`tolerance_for`). The reference is given the forward's output
/// as stored (`reference::attention_backward_from`), so its D = rowsum(dO∘O) carries the
/// same rounding of a 16-bit O as the kernel's: what is left is the kernel's f32
/// arithmetic and the gradient's own rounding. With |Q|, |K|, |V|, |dO| ≤ 1:
/// - the stored gradient: rtol = 2·u(dtype);
/// - dV sums n = Sq terms P·dO of at most 1: f32 errors of random sign, 4·√n·u(f32);
/// - dQ (n = Sk), dK and the bias's gradient (n = Sq, and the broadcast items it sums) sum
///   terms of dS = P∘(dP − D), whose dot products over Dv keys grow the error by √Dv:
///   4·√(n·Dv)·u(f32).
fn grad_tolerance(g: Grad, dtype: DType, c: &Case) -> (f64, f64) {
    let n = match g {
        Grad::Q => c.sk,
        Grad::V => c.sq,
        Grad::K => c.sq * (c.hq / c.hkv),
        Grad::Bias => c.sq * c.b * c.hq,
    };
    let dot = match g {
        Grad::V => 1,
        _ => c.dv,
    };
    sum_tolerance(n * dot, dtype)
}

/// 4·√terms·u(f32) absolute and 2·u(dtype) relative, for a gradient stored as `dtype` summed
/// over `terms` f32 products (see `grad_tolerance`).
fn sum_tolerance(terms: usize, dtype: DType) -> (f64, f64) {
    let u32_ = unit_roundoff(DType::F32);
    (
        4.0 * (terms as f64).sqrt() * u32_,
        2.0 * unit_roundoff(dtype),
    )
}

fn assert_grad(got: &[f32], want: &[f64], tol: (f64, f64), label: &str) {
    let (atol, rtol) = tol;
    assert_eq!(got.len(), want.len(), "{label}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{label}: element {i}: got {g}, want {w} (err {err:.3e}, tol {atol:e}+{rtol:e}*|want|)"
        );
    }
}

/// What a backward call over a prepared case reads.
fn saved<'a>(
    x: &'a Prepared,
    out: &'a Tensor,
    d_out: &'a Tensor,
    lse: &'a Tensor,
) -> BackwardInputs<'a> {
    BackwardInputs {
        q: x.q.view(),
        k: x.k.view(),
        v: x.v.view(),
        out: out.view(),
        d_out: d_out.view(),
        lse: lse.view(),
    }
}

/// The GPU's gradients of a case (forward on the GPU for O and the log-sum-exp, then the
/// backward into NaN-poisoned gradients) and the reference's.
struct Run {
    got: [Vec<f32>; 5],
    want: HostGradients,
    plan: BackwardPlan,
}

fn run_backward(c: &Case, dbias: bool) -> Run {
    let ctx = ctx();
    let x = Prepared::new(ctx, c);
    let opts = x.opts(ctx, c);
    let os = [c.b, c.hq, c.sq, c.dv];
    let lse = nan_output(ctx, [c.b, c.hq, c.sq, 1], DType::F32);
    let out = nan_output(ctx, os, c.out_dtype);
    let mut fwd = opts
        .clone()
        .backend(Backend::Auto)
        .lse_output(lse.view().clone());
    // (Eight threads a row is the backward's alone: the forward runs its own default.)
    if c.tuning.flash_threads_per_row == Some(8) {
        fwd.tuning = Tuning::default();
    }
    ctx.attention_into_blocking(x.q.view(), x.k.view(), x.v.view(), out.view(), &fwd)
        .unwrap_or_else(|e| panic!("{} forward: {e}", c.label()));
    let doh = round_to(c.dtype, &random(os.iter().product(), c.seed + 3));
    let d_out = upload(ctx, &doh, os, c.dtype, c.layout);
    let bias_dt = x.bias_rounded.as_ref().map(|b| (b.1, b.2));
    // NaN-poisoned gradients in the case's layout (BSHD strides, odd offsets).
    let g: [Tensor; 3] = [x.qs, x.ks, x.vs].map(|s| {
        let n: usize = s.iter().product();
        upload(ctx, &vec![f32::NAN; n], s, c.dtype, c.layout)
    });
    let gb = bias_dt
        .filter(|_| dbias)
        .map(|(s, dt)| nan_output(ctx, s, dt));
    let gs = c
        .sinks
        .as_ref()
        .map(|s| nan_output(ctx, [1, s.len(), 1, 1], DType::F32));
    let grads = GradientViews {
        dq: g[0].view().clone(),
        dk: g[1].view().clone(),
        dv: g[2].view().clone(),
        dbias: gb.as_ref().map(|t| t.view().clone()),
        dsink: gs.as_ref().map(|t| t.view().clone()),
    };
    let inputs = saved(&x, &out, &d_out, &lse);
    let plan = ctx
        .attention_backward_into_blocking(&inputs, &grads, &opts)
        .unwrap_or_else(|e| panic!("{} backward: {e}", c.label()));
    if c.backend != Backend::Auto {
        assert_eq!(plan.backend, c.backend, "{}", c.label());
    }
    let down = |t: &Tensor| ctx.download_f32_blocking(t.view()).expect("download");
    let got = [
        down(&g[0]),
        down(&g[1]),
        down(&g[2]),
        gb.as_ref().map(down).unwrap_or_default(),
        gs.as_ref().map(down).unwrap_or_default(),
    ];
    let [qh, kh, vh] = x.host();
    // D from the forward's output as stored, as the kernel takes it.
    let out_h = down(&out);
    let want = reference::attention_backward_from(
        &qh,
        &kh,
        &vh,
        &doh,
        Some(&out_h),
        scale_of(c),
        &x.host_mask(c),
    );
    Run { got, want, plan }
}

fn check_backward(c: &Case, dbias: bool) -> BackwardPlan {
    let r = run_backward(c, dbias);
    let l = c.label();
    let tol = |g| grad_tolerance(g, c.dtype, c);
    assert_grad(&r.got[0], &r.want.dq, tol(Grad::Q), &format!("{l} dQ"));
    assert_grad(&r.got[1], &r.want.dk, tol(Grad::K), &format!("{l} dK"));
    assert_grad(&r.got[2], &r.want.dv, tol(Grad::V), &format!("{l} dV"));
    if dbias && let Some((_, _, dt)) = &c.mask.bias {
        // Stored in the bias's dtype.
        let t = grad_tolerance(Grad::Bias, *dt, c);
        assert_grad(&r.got[3], &r.want.dbias, t, &format!("{l} dBias"));
    }
    if c.sinks.is_some() {
        // f32, a sum over every row of the head of exp(sink − lse)·D, D a dot product over
        // Dv: as the bias's gradient summed over batch items and rows.
        let t = sum_tolerance(c.b * c.sq * c.dv, DType::F32);
        assert_grad(&r.got[4], &r.want.dsink, t, &format!("{l} dSink"));
    }
    r.plan
}

/// (b, hq, hkv, sq, sk, dk, dv): ragged sizes and powers of two, GQA, Sq != Sk, Dv != Dk.
/// Head dims stay in one bucket (64) so that the product compiles few kernels (GL compiles
/// each cold for tens of seconds); `head_dim_buckets` covers the others.
const SHAPES: [(usize, usize, usize, usize, usize, usize, usize); 4] = [
    (1, 1, 1, 1, 7, 64, 64),
    (2, 4, 2, 59, 113, 64, 64),
    (1, 2, 1, 64, 32, 59, 64),
    (2, 2, 2, 113, 59, 64, 61),
];

fn product(backend: Backend, dtypes: &[DType]) {
    product_with(backend, dtypes, Tuning::default());
}

fn product_with(backend: Backend, dtypes: &[DType], tuning: Tuning) {
    let layouts = [Layout::Bhsd, Layout::Bshd, Layout::Offset];
    let mut n = 0;
    for (si, &(b, hq, hkv, sq, sk, dk, dv)) in SHAPES.iter().enumerate() {
        for (mi, mask) in masks(b, hq, sq, sk, 200 + si as u64)
            .into_iter()
            .enumerate()
        {
            let dtype = dtypes[(si + mi) % dtypes.len()];
            let mut c = Case::new(b, hq, sq, sk, dk)
                .dtype(dtype)
                .backend(backend)
                .mask(mask);
            c.hkv = hkv;
            c.dv = dv;
            c.layout = layouts[(si + mi) % 3];
            c.seed = (si * 31 + mi) as u64;
            c.tuning = tuning;
            check_backward(&c, true);
            n += 1;
        }
    }
    assert_eq!(n, SHAPES.len() * 8);
}

#[test]
fn flash_f32_every_mask_shape_and_layout() {
    product(Backend::Flash, &[DType::F32]);
}

#[test]
fn flash_16_bit_every_mask_shape_and_layout() {
    product(Backend::Flash, &[DType::F16, DType::BF16]);
}

/// The GPU kernels' forms, four threads per row (and eight, at head dims of 128 and more)
/// reducing across a subgroup, on whatever adapter runs the tests (CPU adapters pick one
/// thread per row by default). Where the adapter's subgroups are smaller (GL has none),
/// asking for it is refused with the reason.
#[test]
fn flash_subgroup_rows_every_mask_shape_and_layout() {
    let caps = ctx().caps();
    // (The default tier runs four threads a row; eight, the head dims of 128 and more, in full.)
    for tpr in tiered([4, 8], |i| i == 0) {
        let tuning = Tuning::default().threads_per_row(tpr);
        if caps.subgroup && caps.subgroup_min_size >= tpr {
            // One pass over the mask kinds (the other dtypes take the same code path).
            let (b, hq, hkv, sq, sk, dk, dv) = SHAPES[1];
            for (mi, mask) in masks(b, hq, sq, sk, 300).into_iter().enumerate() {
                let mut c = Case::new(b, hq, sq, sk, dk)
                    .backend(Backend::Flash)
                    .mask(mask);
                c.hkv = hkv;
                c.dv = dv;
                c.dtype = [DType::F32, DType::F16][mi % 2];
                c.tuning = tuning;
                check_backward(&c, true);
            }
        } else {
            let c = Case::new(1, 1, 8, 8, 64).backend(Backend::Flash);
            let mut c = c;
            c.tuning = tuning;
            let err = std::panic::catch_unwind(|| run_backward(&c, false))
                .err()
                .and_then(|e| e.downcast_ref::<String>().cloned())
                .expect("threads per row beyond the subgroup size must fail");
            assert!(
                err.contains(&format!("subgroups of at least {tpr}")),
                "{err}"
            );
        }
    }
}

#[test]
fn naive_every_mask_shape_and_layout() {
    product(Backend::Naive, &[DType::F32, DType::F16]);
}

/// The soft cap's backward (Gemma 2): dS reaches the scores q·k times the cap's slope
/// 1 − (c / cap)², the bias's gradient is dS itself (the bias is added after the cap).
/// Flash (the unrolled kernels on CPU adapters; with four threads a row, the SIMT kernels
/// where subgroups allow) and naive, unmasked and with every mask kind (bias included),
/// GQA, f32 and f16, logits pushed past the cap.
#[test]
fn softcap_gradients_match_the_reference() {
    let caps = ctx().caps();
    let (b, hq, hkv, sq, sk, dk, dv) = SHAPES[1];
    let mut n = 0;
    for (backend, tpr) in [
        (Backend::Flash, None),
        (Backend::Flash, Some(4)),
        (Backend::Naive, None),
    ] {
        if tpr.is_some_and(|t| !caps.subgroup || caps.subgroup_min_size < t) {
            continue;
        }
        for (mi, mask) in masks(b, hq, sq, sk, 400).into_iter().enumerate() {
            if mi != 0 && mi != 7 {
                continue;
            }
            for dtype in [DType::F32, DType::F16] {
                let mut c = Case::new(b, hq, sq, sk, dk)
                    .dtype(dtype)
                    .backend(backend)
                    .mask(mask.clone());
                c.hkv = hkv;
                c.dv = dv;
                c.q_gain = 6.0;
                c.softcap = Some(2.5);
                c.layout = [Layout::Bhsd, Layout::Bshd][mi % 2];
                c.seed = 90 + n;
                if let Some(t) = tpr {
                    c.tuning = Tuning::default().threads_per_row(t);
                }
                check_backward(&c, true);
                n += 1;
            }
        }
    }
    assert!(n >= 8, "{n}");
}

/// The sinks' backward (gpt-oss): dQ, dK and dV come from P against the log-sum-exp, which
/// includes the sinks; dsink[h] = −Σ exp(sink − lse)·D over head h's rows. Flash and naive,
/// every mask kind (rows with no key included: their D is 0), GQA, f32 and f16, with and
/// without the soft cap.
#[test]
fn sink_gradients_match_the_reference() {
    let (b, hq, hkv, sq, sk, dk, dv) = SHAPES[1];
    let mut n = 0;
    for backend in [Backend::Flash, Backend::Naive] {
        for (mi, mask) in masks(b, hq, sq, sk, 500).into_iter().enumerate() {
            if !full_tier() && mi != 0 && mi != 7 {
                continue;
            }
            let mut c = Case::new(b, hq, sq, sk, dk)
                .dtype([DType::F32, DType::F16][mi % 2])
                .backend(backend)
                .mask(mask);
            c.hkv = hkv;
            c.dv = dv;
            c.q_gain = 4.0;
            c.sinks = Some(vec![0.5, -2.0, 3.0, 9.0]);
            c.softcap = (mi == 7).then_some(2.5);
            c.layout = [Layout::Bhsd, Layout::Offset][mi % 2];
            c.seed = 120 + n;
            check_backward(&c, true);
            n += 1;
        }
    }
    assert_eq!(n, if full_tier() { 16 } else { 4 });
}

/// The analytic reference against central differences of the f64 forward, on small cases
/// with GQA, causal masking, a broadcast bias and ALiBi: the gradients the GPU is held to
/// are the loss's.
#[test]
fn reference_gradients_match_finite_differences() {
    let (b, hq, hkv, sq, sk, d) = (2, 2, 1, 5, 6, 4);
    let qs = [b, hq, sq, d];
    let ks = [b, hkv, sk, d];
    let q = random(qs.iter().product(), 1);
    let k = random(ks.iter().product(), 2);
    let v = random(ks.iter().product(), 3);
    let d_out = random(qs.iter().product(), 4);
    let bias: Vec<f32> = random(hq * sq * sk, 5);
    let bias_shape = [1, hq, sq, sk];
    let kl = [6u32, 4];
    let alibi = [0.5f32, 0.25];
    let scale = 0.7;
    let loss = |q: &[f32], k: &[f32], v: &[f32], bias: &[f32]| -> f64 {
        let m = reference::HostMask {
            causal: true,
            alignment: CausalAlignment::BottomRight,
            key_lengths: Some(&kl),
            bias: Some(HostTensor {
                data: bias,
                shape: bias_shape,
            }),
            alibi: Some(&alibi),
            ..Default::default()
        };
        let t = |data, shape| HostTensor { data, shape };
        let o = reference::attention(&t(q, qs), &t(k, ks), &t(v, ks), scale, &m);
        o.iter().zip(&d_out).map(|(a, &g)| a * g as f64).sum()
    };
    let m = reference::HostMask {
        causal: true,
        alignment: CausalAlignment::BottomRight,
        key_lengths: Some(&kl),
        bias: Some(HostTensor {
            data: &bias,
            shape: bias_shape,
        }),
        alibi: Some(&alibi),
        ..Default::default()
    };
    let t = |data, shape| HostTensor { data, shape };
    let g = reference::attention_backward(&t(&q, qs), &t(&k, ks), &t(&v, ks), &d_out, scale, &m);
    let eps = 1e-2f32;
    let mut checked = 0;
    for (which, analytic) in [(0, &g.dq), (1, &g.dk), (2, &g.dv), (3, &g.dbias)] {
        let base = [&q, &k, &v, &bias][which];
        for e in (0..base.len()).step_by(3) {
            let at = |delta: f32| {
                let mut x = [q.clone(), k.clone(), v.clone(), bias.clone()];
                x[which][e] += delta;
                loss(&x[0], &x[1], &x[2], &x[3])
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            let a = analytic[e];
            assert!(
                (fd - a).abs() <= 2e-3 + 2e-2 * a.abs(),
                "tensor {which} element {e}: finite difference {fd}, analytic {a}"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "{checked}");
    // Batch item 1's keys past its length (4 of 6) get no gradient; the others do.
    assert!(g.dk[(sk + 4) * d..2 * sk * d].iter().all(|&x| x == 0.0));
    assert!(g.dk[sk * d..(sk + 4) * d].iter().any(|&x| x != 0.0));
}

/// Rows with no visible key (a batch item with no keys, query lengths, an all-false bool
/// row) give zero gradients, never NaN, on both backends.
#[test]
fn fully_masked_rows_give_zero_gradients() {
    for backend in [Backend::Flash, Backend::Naive] {
        let (b, h, sq, sk) = (3, 2, 9, 17);
        let mut bools = random_bool(b * sq * sk, 9, 0.6);
        bools[..sk].fill(false);
        let c = Case::new(b, h, sq, sk, 64).backend(backend).mask(MaskSpec {
            key_lengths: Some(vec![17, 0, 5]),
            query_lengths: Some(vec![9, 4, 0]),
            bool_mask: Some((bools, [b, 1, sq, sk])),
            bias: Some((random(b * h * sq * sk, 3), [b, h, sq, sk], DType::F32)),
            ..Default::default()
        });
        let r = run_backward(&c, true);
        for (n, g) in r.got.iter().enumerate() {
            assert!(g.iter().all(|x| x.is_finite()), "{backend:?} gradient {n}");
        }
        // Batch item 1 sees no key: every gradient of it is zero.
        let per_b = h * sq * 64;
        assert!(r.got[0][per_b..2 * per_b].iter().all(|&x| x == 0.0));
        assert!(
            r.got[1][h * sk * 64..2 * h * sk * 64]
                .iter()
                .all(|&x| x == 0.0)
        );
        check_backward(&c, true);
    }
}

/// Head-dim buckets other than 64 (and a V head dim unlike Q/K's), on both sides of the
/// unrolled kernels' bound (128).
#[test]
fn head_dim_buckets() {
    // (The default tier leaves out the unrolled kernels' largest bucket, 128 with Dv != Dk.)
    for (dk, dv) in tiered([(7, 7), (256, 32), (128, 96)], |i| i < 2) {
        let mut c = Case::new(1, 2, 33, 40, dk)
            .backend(Backend::Flash)
            .mask(MaskSpec {
                causal: Some(CausalAlignment::TopLeft),
                ..Default::default()
            });
        c.dv = dv;
        check_backward(&c, false);
    }
}

/// Two runs give bit-identical gradients (dQ comes from its own pass, not from atomics).
#[test]
fn gradients_are_deterministic() {
    let c = Case::new(2, 4, 70, 90, 64).mask(MaskSpec {
        causal: Some(CausalAlignment::BottomRight),
        ..Default::default()
    });
    let (a, b) = (run_backward(&c, false), run_backward(&c, false));
    assert_eq!(a.got, b.got);
}

/// A packed variable-length batch: each sequence's gradients are those of the sequence on
/// its own, with attention sinks: the sinks' gradient is the sum of the sequences' (the
/// padded grid's rows past a sequence's end have no log-sum-exp and add nothing).
#[test]
fn varlen_matches_each_sequence_alone() {
    use wgpu_attention::{Mask, Varlen};
    let ctx = ctx();
    let (hq, hkv, d) = (2, 1, 64);
    let cu_q = vec![0u32, 5, 5, 17];
    let cu_k = vec![0u32, 9, 12, 30];
    let (tq, tk) = (17, 30);
    let qh = random(tq * hq * d, 1);
    let kh = random(tk * hkv * d, 2);
    let vh = random(tk * hkv * d, 3);
    let doh = random(tq * hq * d, 4);
    let q = packed_varlen(ctx, &qh, tq, hq, d);
    let k = packed_varlen(ctx, &kh, tk, hkv, d);
    let v = packed_varlen(ctx, &vh, tk, hkv, d);
    let d_out = packed_varlen(ctx, &doh, tq, hq, d);
    let vl = Varlen::new(cu_q.clone(), cu_k.clone());
    let lse_t = nan_output(ctx, [1, hq, tq, 1], DType::F32);
    let sinks = vec![0.7f32, -1.3];
    let opts = AttentionOptions::with_mask(Mask::none().causal(CausalAlignment::BottomRight))
        .varlen(vl)
        .sinks(sinks.clone());
    let fwd = opts.clone().lse_output(lse_t.view().clone());
    let out = ctx
        .attention_blocking(q.view(), k.view(), v.view(), &fwd)
        .expect("forward");
    for backend in [Backend::Flash, Backend::Naive] {
        let opts = opts.clone().backend(backend);
        let inputs = BackwardInputs {
            q: q.view(),
            k: k.view(),
            v: v.view(),
            out: out.view(),
            d_out: d_out.view(),
            lse: lse_t.view(),
        };
        let g = ctx
            .attention_backward_blocking(&inputs, &opts)
            .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
        let got =
            [&g.dq, &g.dk, &g.dv].map(|t| ctx.download_f32_blocking(t.view()).expect("download"));
        let dsink = g.dsink.as_ref().expect("a sink gradient");
        let got_dsink = ctx.download_f32_blocking(dsink.view()).expect("download");
        let mut want_dsink = vec![0.0f64; hq];
        for s in 0..3 {
            let (q0, q1) = (cu_q[s] as usize, cu_q[s + 1] as usize);
            let (k0, k1) = (cu_k[s] as usize, cu_k[s + 1] as usize);
            let (ql, kl) = (q1 - q0, k1 - k0);
            // Packed [total, heads, d] rows of one sequence, as BHSD.
            let take = |src: &[f32], heads: usize, start: usize, n: usize| {
                let mut t = vec![0.0; heads * n * d];
                for hh in 0..heads {
                    for i in 0..n {
                        t[(hh * n + i) * d..][..d]
                            .copy_from_slice(&src[((start + i) * heads + hh) * d..][..d]);
                    }
                }
                t
            };
            let (sq_, sk_, sv_, sdo) = (
                take(&qh, hq, q0, ql),
                take(&kh, hkv, k0, kl),
                take(&vh, hkv, k0, kl),
                take(&doh, hq, q0, ql),
            );
            let m = reference::HostMask {
                causal: true,
                alignment: CausalAlignment::BottomRight,
                sinks: Some(&sinks),
                ..Default::default()
            };
            let t = |data, heads, n| HostTensor {
                data,
                shape: [1, heads, n, d],
            };
            let w = reference::attention_backward(
                &t(&sq_, hq, ql),
                &t(&sk_, hkv, kl),
                &t(&sv_, hkv, kl),
                &sdo,
                1.0 / (d as f64).sqrt(),
                &m,
            );
            // The downloads are logical [1, heads, total, d].
            let pick = |g: &[f32], heads: usize, total: usize, start: usize, n: usize| {
                let mut t = vec![0.0f32; heads * n * d];
                for hh in 0..heads {
                    for i in 0..n {
                        t[(hh * n + i) * d..][..d]
                            .copy_from_slice(&g[((hh * total) + start + i) * d..][..d]);
                    }
                }
                t
            };
            let l = format!("{backend:?} sequence {s}");
            assert_grad(
                &pick(&got[0], hq, tq, q0, ql),
                &w.dq,
                sum_tolerance(tk * d, DType::F32),
                &format!("{l} dQ"),
            );
            assert_grad(
                &pick(&got[1], hkv, tk, k0, kl),
                &w.dk,
                sum_tolerance(tq * hq * d, DType::F32),
                &format!("{l} dK"),
            );
            for (x, w) in want_dsink.iter_mut().zip(&w.dsink) {
                *x += w;
            }
            assert_grad(
                &pick(&got[2], hkv, tk, k0, kl),
                &w.dv,
                sum_tolerance(tq * hq, DType::F32),
                &format!("{l} dV"),
            );
        }
        assert_grad(
            &got_dsink,
            &want_dsink,
            sum_tolerance(tq * d, DType::F32),
            &format!("{backend:?} dSink"),
        );
    }
}

/// Gradients sub-allocated from the pages that hold the inputs (as Burn and cubecl lay
/// tensors out), and backward calls recorded together into one encoder before one submit.
#[test]
fn shared_pages_and_calls_recorded_together() {
    let ctx = ctx();
    let c = Case::new(1, 2, 19, 23, 64).mask(MaskSpec {
        causal: Some(CausalAlignment::TopLeft),
        ..Default::default()
    });
    let want = run_backward(&c, false);
    let x = Prepared::new(ctx, &c);
    let opts = x.opts(ctx, &c);
    let os = [c.b, c.hq, c.sq, c.dv];
    let lse = nan_output(ctx, [c.b, c.hq, c.sq, 1], DType::F32);
    let fwd = opts.clone().lse_output(lse.view().clone());
    let out = ctx
        .attention_blocking(x.q.view(), x.k.view(), x.v.view(), &fwd)
        .expect("forward");
    let doh = round_to(c.dtype, &random(os.iter().product(), c.seed + 3));
    // One page: dO, then dQ, dK, dV after it.
    let n: usize = os.iter().product();
    let (nq, nk) = (x.qh.len(), x.kh.len());
    let mut page_data = doh.clone();
    page_data.extend(vec![f32::NAN; nq + 2 * nk]);
    let page = buffer_of(ctx, &page_data, DType::F32);
    let at = |off: usize, shape: [usize; 4]| {
        page.reshaped(DType::F32, shape, bhsd_strides(shape), (off * 4) as u64)
    };
    let d_out = at(0, os);
    let gq = at(n, x.qs);
    let gk = at(n + nq, x.ks);
    let gv = at(n + nq + nk, x.vs);
    let grads = GradientViews {
        dq: gq.view().clone(),
        dk: gk.view().clone(),
        dv: gv.view().clone(),
        dbias: None,
        dsink: None,
    };
    let inputs = saved(&x, &out, &d_out, &lse);
    // Twice into one encoder: the second call sees the same inputs and writes the same.
    {
        let _held = ctx.lock_device();
        let mut enc = ctx
            .device()
            .create_command_encoder(&wgpu_attention::wgpu::CommandEncoderDescriptor::default());
        for _ in 0..2 {
            ctx.record_attention_backward(&mut enc, &inputs, &grads, &opts)
                .expect("record");
        }
        ctx.queue().submit([enc.finish()]);
    }
    let got = [&gq, &gk, &gv].map(|t| ctx.download_f32_blocking(t.view()).expect("download"));
    for (g, w) in got.iter().zip(&want.got) {
        assert_eq!(g, w);
    }
    assert_eq!(
        ctx.download_f32_blocking(d_out.view()).expect("download"),
        doh,
        "dO is left as it was"
    );
}

/// A backward call whose tensors need a larger storage binding than the device allows is
/// not split (the forward is): it is refused with the tensor and the limit named, and the
/// device stays usable.
#[test]
fn tensors_larger_than_a_binding_are_refused_by_name() {
    use wgpu_attention::Context;
    use wgpu_attention::error::{Error, UnsupportedReason};
    let (info, device, queue) = own_device(|l| wgpu::Limits {
        max_storage_buffer_binding_size: 8192,
        ..l
    });
    let ctx = Context::from_device(device, queue, &info);
    let opts = AttentionOptions::default();
    // Forward (which splits itself), then backward; dQ, or nothing where refused.
    let attempt = |shape: [usize; 4]| -> Vec<f32> {
        let n: usize = shape.iter().product();
        let up = |seed| ctx.upload_f32(&random(n, seed), shape).expect("upload");
        let (q, k, v, d_out) = (up(1), up(2), up(3), up(4));
        let lse = ctx
            .empty([shape[0], shape[1], shape[2], 1], DType::F32)
            .expect("lse");
        let fwd = opts.clone().lse_output(lse.view().clone());
        let out = ctx
            .attention_blocking(q.view(), k.view(), v.view(), &fwd)
            .expect("the forward splits itself");
        let inputs = BackwardInputs {
            q: q.view(),
            k: k.view(),
            v: v.view(),
            out: out.view(),
            d_out: d_out.view(),
            lse: lse.view(),
        };
        match ctx.attention_backward_blocking(&inputs, &opts) {
            Ok(g) => ctx.download_f32_blocking(g.dq.view()).expect("download"),
            Err(e) => {
                match &e {
                    Error::Unsupported(u) => assert!(
                        matches!(
                            u.reason,
                            UnsupportedReason::Binding {
                                available: 8192,
                                ..
                            }
                        ),
                        "{e}"
                    ),
                    other => panic!("expected Unsupported, got {other:?}"),
                }
                assert!(e.to_string().contains("query"), "{e}");
                Vec::new()
            }
        }
    };
    // 32 KiB tensors in 8 KiB bindings: refused.
    assert!(attempt([1, 2, 64, 64]).is_empty());
    // Smaller tensors run on the same device.
    let dq = attempt([1, 1, 8, 16]);
    assert_eq!(dq.len(), 128);
    assert!(dq.iter().all(|x| x.is_finite()));
}

/// A warm backward call (the same views and options again) creates no buffer and no bind
/// group, on both backends. (A context of its own: the other tests of this binary run
/// beside it.)
#[test]
fn warm_backward_calls_create_nothing() {
    let (info, device, queue) = own_device(|l| l);
    let own = wgpu_attention::Context::from_device(device, queue, &info);
    let ctx = &own;
    for backend in [Backend::Flash, Backend::Naive] {
        let c = Case::new(2, 2, 21, 37, 64).backend(backend).mask(MaskSpec {
            causal: Some(CausalAlignment::BottomRight),
            bias: Some((random(2 * 21 * 37, 8), [1, 2, 21, 37], DType::F32)),
            ..Default::default()
        });
        let x = Prepared::new(ctx, &c);
        let opts = x.opts(ctx, &c);
        let lse = nan_output(ctx, [2, 2, 21, 1], DType::F32);
        let out = ctx
            .attention_blocking(
                x.q.view(),
                x.k.view(),
                x.v.view(),
                &opts.clone().lse_output(lse.view().clone()),
            )
            .expect("forward");
        let d_out = upload(
            ctx,
            &random(2 * 2 * 21 * 64, 9),
            [2, 2, 21, 64],
            DType::F32,
            Layout::Bhsd,
        );
        let g: [Tensor; 4] =
            [x.qs, x.ks, x.vs, [1, 2, 21, 37]].map(|s| nan_output(ctx, s, DType::F32));
        let grads = GradientViews {
            dq: g[0].view().clone(),
            dk: g[1].view().clone(),
            dv: g[2].view().clone(),
            dbias: Some(g[3].view().clone()),
            dsink: None,
        };
        let inputs = saved(&x, &out, &d_out, &lse);
        ctx.attention_backward_into_blocking(&inputs, &grads, &opts)
            .expect("first call");
        let before = ctx.created_resources();
        for _ in 0..3 {
            ctx.attention_backward_into_blocking(&inputs, &grads, &opts)
                .expect("warm call");
        }
        let after = ctx.created_resources();
        assert_eq!(
            (after.buffers, after.bind_groups),
            (before.buffers, before.bind_groups),
            "{backend:?}"
        );
    }
}

/// NaN in the rows of Q and dO past the query lengths and in the rows of K past the key
/// lengths never reaches a gradient. (V's padding stays finite: as in PyTorch, where P·V
/// multiplies it by a weight of 0, the forward's output carries a NaN there.)
#[test]
fn nan_in_the_padding_stays_out_of_the_gradients() {
    use wgpu_attention::Mask;
    let ctx = ctx();
    let (b, h, sq, sk, d) = (2, 2, 13, 21, 64);
    let (ql, kl) = ([13u32, 6], [21u32, 9]);
    let poison = |seed, s: usize, lens: &[u32; 2]| {
        let mut x = random(b * h * s * d, seed);
        for ib in 0..b {
            for ih in 0..h {
                for i in lens[ib] as usize..s {
                    x[((ib * h + ih) * s + i) * d..][..d].fill(f32::NAN);
                }
            }
        }
        x
    };
    let (qh, kh, vh, doh) = (
        poison(1, sq, &ql),
        poison(2, sk, &kl),
        random(b * h * sk * d, 3),
        poison(4, sq, &ql),
    );
    let t = |x: &[f32], s| ctx.upload_f32(x, [b, h, s, d]).expect("upload");
    let (q, k, v, d_out) = (t(&qh, sq), t(&kh, sk), t(&vh, sk), t(&doh, sq));
    let lse = nan_output(ctx, [b, h, sq, 1], DType::F32);
    let mask = Mask::none()
        .causal(CausalAlignment::BottomRight)
        .key_lengths(kl.to_vec())
        .query_lengths(ql.to_vec());
    for backend in [Backend::Flash, Backend::Naive] {
        let opts = AttentionOptions::with_mask(mask.clone()).backend(backend);
        let fwd = opts.clone().lse_output(lse.view().clone());
        let out = ctx
            .attention_blocking(q.view(), k.view(), v.view(), &fwd)
            .expect("forward");
        let inputs = BackwardInputs {
            q: q.view(),
            k: k.view(),
            v: v.view(),
            out: out.view(),
            d_out: d_out.view(),
            lse: lse.view(),
        };
        let g = ctx
            .attention_backward_blocking(&inputs, &opts)
            .expect("backward");
        let m = reference::HostMask {
            causal: true,
            alignment: CausalAlignment::BottomRight,
            key_lengths: Some(&kl),
            query_lengths: Some(&ql),
            ..Default::default()
        };
        let ht = |data, s| HostTensor {
            data,
            shape: [b, h, s, d],
        };
        let (rq, rk, rv) = (ht(&qh, sq), ht(&kh, sk), ht(&vh, sk));
        let want = reference::attention_backward(&rq, &rk, &rv, &doh, 0.125, &m);
        for (got, want, name) in [
            (&g.dq, &want.dq, "dQ"),
            (&g.dk, &want.dk, "dK"),
            (&g.dv, &want.dv, "dV"),
        ] {
            assert!(want.iter().all(|x| x.is_finite()), "{name}: the reference");
            let got = ctx.download_f32_blocking(got.view()).expect("download");
            let tol = sum_tolerance(sq.max(sk) * d, DType::F32);
            assert_grad(&got, want, tol, &format!("{backend:?} {name}"));
        }
    }
}

/// The bias gradient of every broadcast shape of the bias, on both backends: summed over the
/// batch, the heads, or both.
#[test]
fn bias_gradient_sums_over_each_broadcast_dim() {
    let (b, h, sq, sk) = (2, 3, 17, 23);
    for backend in [Backend::Flash, Backend::Naive] {
        for shape in [[b, 1, sq, sk], [1, 1, sq, sk], [1, h, sq, sk]] {
            let n: usize = shape.iter().product();
            let mut c = Case::new(b, h, sq, sk, 64).backend(backend).mask(MaskSpec {
                key_lengths: Some(vec![23, 11]),
                bias: Some((random(n, 6), shape, DType::F16)),
                ..Default::default()
            });
            c.hkv = 1;
            check_backward(&c, true);
        }
    }
}

/// 16-bit gradients that share 4-byte words with each other, in the page that holds dO:
/// staged together, none loses an element to another's copy back.
#[test]
fn sixteen_bit_gradients_sharing_words_with_each_other() {
    let ctx = ctx();
    let c = Case::new(1, 1, 3, 3, 3).dtype(DType::F16);
    let want = run_backward(&c, false);
    let x = Prepared::new(ctx, &c);
    let opts = x.opts(ctx, &c);
    let lse = nan_output(ctx, [1, 1, 3, 1], DType::F32);
    let fwd = opts.clone().lse_output(lse.view().clone());
    let out = ctx
        .attention_blocking(x.q.view(), x.k.view(), x.v.view(), &fwd)
        .expect("forward");
    // One f16 page: dO (9 elements), then dQ, dK, dV (9 each): dK and dV share a word.
    let doh = round_to(DType::F16, &random(9, c.seed + 3));
    let mut page_data = doh.clone();
    page_data.extend(vec![f32::NAN; 27]);
    let page = buffer_of(ctx, &page_data, DType::F16);
    let at = |e: usize| page.reshaped(DType::F16, [1, 1, 3, 3], [9, 9, 3, 1], (e * 2) as u64);
    let (d_out, gq, gk, gv) = (at(0), at(9), at(18), at(27));
    let grads = GradientViews {
        dq: gq.view().clone(),
        dk: gk.view().clone(),
        dv: gv.view().clone(),
        dbias: None,
        dsink: None,
    };
    let inputs = saved(&x, &out, &d_out, &lse);
    ctx.attention_backward_into_blocking(&inputs, &grads, &opts)
        .expect("backward");
    for (t, w) in [&gq, &gk, &gv].iter().zip(&want.got) {
        assert_eq!(&ctx.download_f32_blocking(t.view()).expect("download"), w);
    }
}
