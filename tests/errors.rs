//! Bad input never panics: every case returns a typed error naming the tensor, the
//! dimension, and what was expected versus got, before anything is dispatched.

mod common;

use common::*;
use wgpu_attention::error::{Dim, InputProblem, InvalidInput, TensorRole, UnsupportedReason};
use wgpu_attention::{
    AttentionOptions, Backend, Context, DType, Error, Mask, Tensor, TensorView, Varlen,
};

/// Tensors, not bare views: on GL a buffer must not be destroyed outside the context's
/// lock while another test thread compiles (see `Context::lock_device`).
struct Qkv {
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

fn qkv(ctx: &Context, b: usize, h: usize, s: usize, d: usize) -> Qkv {
    let shape = [b, h, s, d];
    let n = b * h * s * d;
    Qkv {
        q: ctx.upload_f32(&random(n, 1), shape).unwrap(),
        k: ctx.upload_f32(&random(n, 2), shape).unwrap(),
        v: ctx.upload_f32(&random(n, 3), shape).unwrap(),
    }
}

/// `t` seen as `dtype`, `shape` (contiguous) at byte `offset`.
fn as_view(t: &Tensor, dtype: DType, shape: [usize; 4], offset: u64) -> Tensor {
    t.reshaped(dtype, shape, bhsd_strides(shape), offset)
}

fn invalid(err: Error) -> InvalidInput {
    match err {
        Error::InvalidInput(i) => i,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

fn run(ctx: &Context, t: &Qkv, opts: &AttentionOptions) -> Error {
    ctx.attention_blocking(&t.q, &t.k, &t.v, opts)
        .expect_err("bad input must be rejected")
}

#[test]
fn key_head_dim_mismatch() {
    let ctx = ctx();
    let mut t = qkv(ctx, 1, 2, 8, 16);
    t.k = ctx
        .upload_f32(&random(2 * 8 * 12, 4), [1, 2, 8, 12])
        .unwrap();
    let e = invalid(run(ctx, &t, &AttentionOptions::default()));
    assert_eq!(e.tensor, TensorRole::Key);
    assert!(
        matches!(&e.problem, InputProblem::ShapeMismatch { dim: Dim::HeadDim, got: 12, expected } if expected == "16")
    );
    let msg = e.to_string();
    assert!(
        msg.contains("key") && msg.contains("12") && msg.contains("16"),
        "{msg}"
    );
}

#[test]
fn batch_mismatch_value() {
    let ctx = ctx();
    let mut t = qkv(ctx, 2, 2, 8, 16);
    t.v = ctx
        .upload_f32(&random(2 * 8 * 16, 4), [1, 2, 8, 16])
        .unwrap();
    let e = invalid(run(ctx, &t, &AttentionOptions::default()));
    assert_eq!(e.tensor, TensorRole::Value);
    assert!(matches!(
        e.problem,
        InputProblem::ShapeMismatch {
            dim: Dim::Batch,
            got: 1,
            ..
        }
    ));
}

#[test]
fn heads_not_a_divisor() {
    let ctx = ctx();
    let mut t = qkv(ctx, 1, 4, 8, 16);
    let kv = ctx
        .upload_f32(&random(3 * 8 * 16, 4), [1, 3, 8, 16])
        .unwrap();
    t.k = kv.clone();
    t.v = kv;
    let e = invalid(run(ctx, &t, &AttentionOptions::default()));
    assert_eq!(e.tensor, TensorRole::Key);
    assert!(matches!(
        e.problem,
        InputProblem::ShapeMismatch {
            dim: Dim::Heads,
            got: 3,
            ..
        }
    ));
}

#[test]
fn zero_head_dim() {
    let ctx = ctx();
    let mut t = qkv(ctx, 1, 1, 4, 4);
    t.q = as_view(&t.q, DType::F32, [1, 1, 4, 0], 0);
    let e = invalid(run(ctx, &t, &AttentionOptions::default()));
    assert_eq!(e.tensor, TensorRole::Query);
    assert_eq!(e.problem, InputProblem::ZeroDim { dim: Dim::HeadDim });
}

#[test]
fn view_out_of_bounds() {
    let ctx = ctx();
    let mut t = qkv(ctx, 1, 1, 4, 4);
    t.k = as_view(&t.k, DType::F32, [1, 1, 4, 4], 8);
    let e = invalid(run(ctx, &t, &AttentionOptions::default()));
    assert_eq!(e.tensor, TensorRole::Key);
    assert!(
        matches!(
            e.problem,
            InputProblem::OutOfBounds {
                needed: 72,
                buffer_size: 64
            }
        ),
        "{e}"
    );
}

#[test]
fn misaligned_offset() {
    let ctx = ctx();
    let mut t = qkv(ctx, 1, 1, 4, 4);
    t.v = as_view(&t.v, DType::F32, [1, 1, 2, 4], 6);
    t.k = as_view(&t.k, DType::F32, [1, 1, 2, 4], 0);
    let e = invalid(run(ctx, &t, &AttentionOptions::default()));
    assert_eq!(e.tensor, TensorRole::Value);
    assert_eq!(
        e.problem,
        InputProblem::MisalignedOffset {
            offset: 6,
            align: 4
        }
    );
}

#[test]
fn missing_storage_usage() {
    let ctx = ctx();
    let mut t = qkv(ctx, 1, 1, 4, 4);
    // A buffer of our own, made and dropped under the device lock (GL: see
    // `Context::lock_device`).
    let held = ctx.lock_device();
    let buf = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 64,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    t.q = Tensor::from_view(TensorView::bhsd(buf, DType::F32, [1, 1, 4, 4]));
    let e = invalid(run(ctx, &t, &AttentionOptions::default()));
    assert_eq!(e.tensor, TensorRole::Query);
    assert!(matches!(e.problem, InputProblem::MissingUsage { .. }));
    drop(t);
    drop(held);
}

#[test]
fn bool_dtype_for_query() {
    let ctx = ctx();
    let mut t = qkv(ctx, 1, 1, 4, 4);
    t.q = as_view(&t.q, DType::Bool, [1, 1, 4, 4], 0);
    let e = invalid(run(ctx, &t, &AttentionOptions::default()));
    assert_eq!(e.tensor, TensorRole::Query);
    assert!(matches!(e.problem, InputProblem::WrongDType { .. }));
}

#[test]
fn non_finite_scale() {
    let ctx = ctx();
    let t = qkv(ctx, 1, 1, 4, 4);
    for s in [f32::NAN, f32::INFINITY] {
        let e = invalid(run(ctx, &t, &AttentionOptions::default().scale(s)));
        assert_eq!(e.tensor, TensorRole::Options);
        assert!(matches!(
            e.problem,
            InputProblem::NonFinite { what: "scale", .. }
        ));
    }
}

/// A finite scale past `MAX_SCALE` is refused with the bound; one at the bound is exact
/// (the softmax is then one-hot on each row's largest score, as in the f64 reference).
#[test]
fn huge_scale_refused_past_the_bound() {
    let ctx = ctx();
    let t = qkv(ctx, 1, 1, 4, 4);
    let max = wgpu_attention::validate::MAX_SCALE;
    for s in [f32::MAX, -f32::MAX, max * 2.0] {
        let e = invalid(run(ctx, &t, &AttentionOptions::default().scale(s)));
        assert_eq!(e.tensor, TensorRole::Options);
        assert_eq!(
            e.problem,
            InputProblem::OutOfRange {
                what: "scale",
                value: s,
                max
            }
        );
        assert!(e.to_string().contains("at most 4.2949673e9"), "{e}");
    }
    for backend in [Backend::Flash, Backend::MemoryEfficient, Backend::Naive] {
        let mut c = Case::new(1, 2, 7, 59, 16).backend(backend);
        c.scale = Some(max);
        check(ctx, &c);
        c.scale = Some(-max);
        check(ctx, &c);
    }
}

#[test]
fn key_length_beyond_sequence() {
    let ctx = ctx();
    let t = qkv(ctx, 2, 1, 8, 4);
    let e = invalid(run(
        ctx,
        &t,
        &AttentionOptions::with_mask(Mask::none().key_lengths(vec![8, 9])),
    ));
    assert_eq!(e.tensor, TensorRole::KeyLengths);
    assert_eq!(
        e.problem,
        InputProblem::LengthTooLong {
            batch: 1,
            len: 9,
            max: 8
        }
    );
}

#[test]
fn query_lengths_wrong_count() {
    let ctx = ctx();
    let t = qkv(ctx, 2, 1, 8, 4);
    let e = invalid(run(
        ctx,
        &t,
        &AttentionOptions::with_mask(Mask::none().query_lengths(vec![3])),
    ));
    assert_eq!(e.tensor, TensorRole::QueryLengths);
    assert_eq!(
        e.problem,
        InputProblem::WrongCount {
            expected: 2,
            got: 1,
            per: "one per batch item"
        }
    );
}

#[test]
fn bool_mask_wrong_shape() {
    let ctx = ctx();
    let t = qkv(ctx, 2, 2, 8, 4);
    let m = ctx.upload_bool(&[true; 3 * 8 * 8], [1, 3, 8, 8]).unwrap();
    let e = invalid(run(
        ctx,
        &t,
        &AttentionOptions::with_mask(Mask::none().bool_mask(m.view().clone())),
    ));
    assert_eq!(e.tensor, TensorRole::BoolMask);
    assert!(
        matches!(&e.problem, InputProblem::ShapeMismatch { dim: Dim::Heads, got: 3, expected } if expected == "2 or 1")
    );
}

#[test]
fn bool_mask_given_as_float() {
    let ctx = ctx();
    let t = qkv(ctx, 1, 1, 8, 4);
    let m = ctx.upload_f32(&random(64, 5), [1, 1, 8, 8]).unwrap();
    let e = invalid(run(
        ctx,
        &t,
        &AttentionOptions::with_mask(Mask::none().bool_mask(m.view().clone())),
    ));
    assert_eq!(e.tensor, TensorRole::BoolMask);
    assert!(matches!(e.problem, InputProblem::WrongDType { .. }));
}

#[test]
fn bias_wrong_key_length() {
    let ctx = ctx();
    let t = qkv(ctx, 1, 1, 8, 4);
    let bias = ctx.upload_f32(&random(8 * 7, 5), [1, 1, 8, 7]).unwrap();
    let e = invalid(run(
        ctx,
        &t,
        &AttentionOptions::with_mask(Mask::none().bias(bias.view().clone())),
    ));
    assert_eq!(e.tensor, TensorRole::Bias);
    assert!(matches!(
        e.problem,
        InputProblem::ShapeMismatch {
            dim: Dim::HeadDim,
            got: 7,
            ..
        }
    ));
}

#[test]
fn alibi_wrong_count_and_nan() {
    let ctx = ctx();
    let t = qkv(ctx, 1, 2, 8, 4);
    let e = invalid(run(
        ctx,
        &t,
        &AttentionOptions::with_mask(Mask::none().alibi(vec![0.5])),
    ));
    assert_eq!(e.tensor, TensorRole::AlibiSlopes);
    assert_eq!(
        e.problem,
        InputProblem::WrongCount {
            expected: 2,
            got: 1,
            per: "one per query head"
        }
    );
    assert!(!e.to_string().contains("batch"), "{e}");
    let e = invalid(run(
        ctx,
        &t,
        &AttentionOptions::with_mask(Mask::none().alibi(vec![0.5, f32::NAN])),
    ));
    assert!(matches!(e.problem, InputProblem::NonFinite { .. }));
}

#[test]
fn sinks_wrong_count_and_not_finite() {
    let ctx = ctx();
    let t = qkv(ctx, 1, 2, 8, 4);
    let e = invalid(run(ctx, &t, &AttentionOptions::default().sinks(vec![0.5])));
    assert_eq!(e.tensor, TensorRole::Sinks);
    assert_eq!(
        e.problem,
        InputProblem::WrongCount {
            expected: 2,
            got: 1,
            per: "one per query head"
        }
    );
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let e = invalid(run(
            ctx,
            &t,
            &AttentionOptions::default().sinks(vec![0.5, bad]),
        ));
        assert_eq!(e.tensor, TensorRole::Sinks);
        assert!(
            matches!(
                e.problem,
                InputProblem::NonFinite {
                    what: "sink logit",
                    ..
                }
            ),
            "{e}"
        );
    }
}

#[test]
fn softcap_must_be_positive_and_finite() {
    let ctx = ctx();
    let t = qkv(ctx, 1, 2, 8, 4);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let e = invalid(run(ctx, &t, &AttentionOptions::default().softcap(bad)));
        assert_eq!(e.tensor, TensorRole::Options);
        assert!(
            matches!(
                e.problem,
                InputProblem::NonFinite {
                    what: "softcap",
                    ..
                }
            ),
            "{e}"
        );
    }
    for bad in [0.0, -0.0, -30.0] {
        let e = invalid(run(ctx, &t, &AttentionOptions::default().softcap(bad)));
        assert_eq!(e.tensor, TensorRole::Options);
        assert!(
            matches!(
                e.problem,
                InputProblem::NotPositive {
                    what: "softcap",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("expected a positive number"), "{e}");
    }
}

#[test]
fn output_shape_overlap_and_alias() {
    let ctx = ctx();
    let t = qkv(ctx, 1, 2, 8, 4);
    let opts = AttentionOptions::default();
    let out = nan_output(ctx, [1, 2, 8, 5], DType::F32);
    let e = invalid(
        ctx.attention_into_blocking(&t.q, &t.k, &t.v, &out, &opts)
            .unwrap_err(),
    );
    assert_eq!(e.tensor, TensorRole::Output);
    assert!(matches!(
        e.problem,
        InputProblem::ShapeMismatch {
            dim: Dim::HeadDim,
            got: 5,
            ..
        }
    ));

    let out = nan_output(ctx, [1, 2, 8, 4], DType::F32);
    let overlapping = out.reshaped(DType::F32, [1, 2, 8, 4], [64, 0, 4, 1], 0);
    let e = invalid(
        ctx.attention_into_blocking(&t.q, &t.k, &t.v, &overlapping, &opts)
            .unwrap_err(),
    );
    assert_eq!(
        e.problem,
        InputProblem::OverlappingOutput { dim: Dim::Heads }
    );

    let e = invalid(
        ctx.attention_into_blocking(&t.q, &t.k, &t.v, &t.k, &opts)
            .unwrap_err(),
    );
    assert_eq!(
        e.problem,
        InputProblem::OutputAliasesInput {
            input: TensorRole::Key
        }
    );
}

#[test]
fn host_slice_length() {
    let ctx = ctx();
    let e = invalid(ctx.upload_f32(&[1.0; 10], [1, 1, 3, 4]).unwrap_err());
    assert_eq!(e.tensor, TensorRole::HostData);
    assert_eq!(
        e.problem,
        InputProblem::HostLength {
            expected: 12,
            got: 10
        }
    );
}

#[test]
fn forced_backend_that_cannot_run() {
    let ctx = ctx();
    let t = qkv(ctx, 1, 1, 4, 300);
    let err = run(
        ctx,
        &t,
        &AttentionOptions::default().backend(Backend::Flash),
    );
    match err {
        Error::Unsupported(u) => match u.reason {
            UnsupportedReason::Backend(s) => assert!(s.contains("300") && s.contains("256"), "{s}"),
            other => panic!("{other:?}"),
        },
        other => panic!("expected Unsupported, got {other:?}"),
    }
    // Auto still runs it.
    ctx.attention_blocking(&t.q, &t.k, &t.v, &AttentionOptions::default())
        .unwrap();
}

#[test]
fn block_summary_for_another_shape() {
    let ctx = ctx();
    let t = qkv(ctx, 1, 1, 8, 4);
    let m1 = ctx.upload_bool(&[true; 64], [1, 1, 8, 8]).unwrap();
    let m2 = ctx.upload_bool(&[true; 128], [1, 2, 8, 8]).unwrap();
    let s = ctx.block_mask_blocking(m2.view()).unwrap();
    let e = invalid(run(
        ctx,
        &t,
        &AttentionOptions::with_mask(Mask::none().bool_mask_with_summary(m1.view().clone(), s)),
    ));
    assert_eq!(e.tensor, TensorRole::BoolMask);
}

/// The device is still usable after all of the above.
#[test]
fn device_survives_bad_input() {
    let ctx = ctx();
    let t = qkv(ctx, 1, 1, 8, 4);
    let e = invalid(run(ctx, &t, &AttentionOptions::default().scale(f32::NAN)));
    assert_eq!(e.tensor, TensorRole::Options);
    check(ctx, &Case::new(1, 1, 8, 8, 4));
}

#[test]
fn sequence_beyond_the_shader_limit() {
    let ctx = ctx();
    let mut t = qkv(ctx, 1, 1, 4, 4);
    t.k = t.k.reshaped(
        DType::F32,
        [1, 1, wgpu_attention::validate::MAX_SEQ, 4],
        [0, 0, 1, 1],
        0,
    );
    let e = invalid(run(ctx, &t, &AttentionOptions::default()));
    assert_eq!(e.tensor, TensorRole::Key);
    assert!(matches!(e.problem, InputProblem::TooLarge { .. }), "{e}");
}

#[test]
fn zero_sized_block_mask_and_merge() {
    let ctx = ctx();
    let m = ctx.upload_bool(&[true; 4], [1, 1, 2, 2]).unwrap();
    let empty = as_view(&m, DType::Bool, [1, 1, 0, 2], 0);
    let e = invalid(ctx.block_mask_blocking(&empty).unwrap_err());
    assert_eq!(e.problem, InputProblem::ZeroDim { dim: Dim::Seq });
    let o = ctx.upload_f32(&[1.0; 4], [1, 1, 1, 4]).unwrap();
    let l = ctx.upload_f32(&[0.0], [1, 1, 1, 1]).unwrap();
    let out = as_view(&o, DType::F32, [1, 1, 1, 0], 0);
    let e = invalid(
        ctx.merge_blocking(&[(o.view(), l.view())], &out, None)
            .unwrap_err(),
    );
    assert_eq!(e.problem, InputProblem::ZeroDim { dim: Dim::HeadDim });
}

// ------------------------------------------------------------------ every check, rejected
//
// One rejection per check of `validate`, each naming the tensor and the problem: deleting or
// weakening a check fails one of these (most would otherwise let bad input through as `Ok`).

/// A valid call of b=2, h=2, s=8, d=4 with every optional tensor, to break one piece at a time.
struct Full {
    t: Qkv,
    out: Tensor,
    lse: Tensor,
    bools: Tensor,
    bias: Tensor,
}

fn full(ctx: &Context) -> Full {
    Full {
        t: qkv(ctx, 2, 2, 8, 4),
        out: nan_output(ctx, [2, 2, 8, 4], DType::F32),
        lse: nan_output(ctx, [2, 2, 8, 1], DType::F32),
        bools: ctx
            .upload_bool(&[true; 2 * 2 * 8 * 8], [2, 2, 8, 8])
            .unwrap(),
        bias: ctx
            .upload_f32(&random(2 * 2 * 8 * 8, 9), [2, 2, 8, 8])
            .unwrap(),
    }
}

/// Runs `attention_into` with these views and expects `role` to be named.
#[allow(clippy::too_many_arguments)]
fn rejected(
    ctx: &Context,
    [q, k, v, out]: [&TensorView; 4],
    opts: &AttentionOptions,
    role: TensorRole,
    what: &str,
) -> InputProblem {
    match ctx.attention_into_blocking(q, k, v, out, opts) {
        Err(Error::InvalidInput(e)) => {
            assert_eq!(e.tensor, role, "{what}: {e}");
            e.problem
        }
        other => panic!("{what}: expected InvalidInput naming the {role}, got {other:?}"),
    }
}

#[test]
fn every_shape_check_names_its_tensor() {
    let ctx = ctx();
    let f = full(ctx);
    let (q, k, v, o) = (&f.t.q, &f.t.k, &f.t.v, &f.out);
    let d = AttentionOptions::default();
    let shaped = |t: &Tensor, shape| as_view(t, DType::F32, shape, 0);
    use Dim::*;
    use TensorRole::*;
    let cases: Vec<(&str, [Tensor; 4], TensorRole, Dim)> = vec![
        (
            "K batch",
            [q.clone(), shaped(k, [1, 2, 8, 4]), v.clone(), o.clone()],
            Key,
            Batch,
        ),
        (
            "V batch",
            [q.clone(), k.clone(), shaped(v, [1, 2, 8, 4]), o.clone()],
            Value,
            Batch,
        ),
        (
            "V heads",
            [q.clone(), k.clone(), shaped(v, [2, 1, 8, 4]), o.clone()],
            Value,
            Heads,
        ),
        (
            "V seq",
            [q.clone(), k.clone(), shaped(v, [2, 2, 7, 4]), o.clone()],
            Value,
            Seq,
        ),
        (
            "K head dim",
            [q.clone(), shaped(k, [2, 2, 8, 3]), v.clone(), o.clone()],
            Key,
            HeadDim,
        ),
        (
            "out batch",
            [q.clone(), k.clone(), v.clone(), shaped(o, [1, 2, 8, 4])],
            Output,
            Batch,
        ),
        (
            "out heads",
            [q.clone(), k.clone(), v.clone(), shaped(o, [2, 1, 8, 4])],
            Output,
            Heads,
        ),
        (
            "out seq",
            [q.clone(), k.clone(), v.clone(), shaped(o, [2, 2, 7, 4])],
            Output,
            Seq,
        ),
        (
            "out dv",
            [q.clone(), k.clone(), v.clone(), shaped(o, [2, 2, 8, 3])],
            Output,
            HeadDim,
        ),
    ];
    for (what, [q, k, v, o], role, dim) in &cases {
        let p = rejected(ctx, [q, k, v, o], &d, *role, what);
        assert!(
            matches!(p, InputProblem::ShapeMismatch { dim: x, .. } if x == *dim),
            "{what}: {p:?}"
        );
    }
    // Zero sizes and non-float dtypes of K and V.
    for (what, k2, v2, role) in [
        ("K zero", shaped(k, [2, 2, 0, 4]), v.clone(), Key),
        ("V zero", k.clone(), shaped(v, [2, 2, 8, 0]), Value),
    ] {
        let p = rejected(ctx, [q, &k2, &v2, o], &d, role, what);
        assert!(matches!(p, InputProblem::ZeroDim { .. }), "{what}: {p:?}");
    }
    for (what, k2, v2, o2, role) in [
        (
            "K bool",
            as_view(k, DType::Bool, [2, 2, 8, 4], 0),
            v.clone(),
            o.clone(),
            Key,
        ),
        (
            "V bool",
            k.clone(),
            as_view(v, DType::Bool, [2, 2, 8, 4], 0),
            o.clone(),
            Value,
        ),
        (
            "out bool",
            k.clone(),
            v.clone(),
            as_view(o, DType::Bool, [2, 2, 8, 4], 0),
            Output,
        ),
    ] {
        let p = rejected(ctx, [q, &k2, &v2, &o2], &d, role, what);
        assert!(
            matches!(p, InputProblem::WrongDType { .. }),
            "{what}: {p:?}"
        );
    }
    // A query sequence past the shader limit (stride 0: no memory needed).
    let long = q.reshaped(
        DType::F32,
        [2, 2, wgpu_attention::validate::MAX_SEQ, 4],
        [0, 0, 0, 1],
        0,
    );
    let lo = o.reshaped(
        DType::F32,
        [2, 2, wgpu_attention::validate::MAX_SEQ, 4],
        [0, 0, 0, 1],
        0,
    );
    let p = rejected(ctx, [&long, k, v, &lo], &d, Query, "Q too long");
    assert!(matches!(p, InputProblem::TooLarge { .. }), "{p:?}");
    // An output dtype that is not a float, asked for with `attention`.
    let e = invalid(
        ctx.attention_blocking(q, k, v, &d.clone().output_dtype(DType::Bool))
            .unwrap_err(),
    );
    assert_eq!(e.tensor, Options);
    assert!(matches!(e.problem, InputProblem::WrongDType { .. }), "{e}");
    // Output memory: past the end of its buffer.
    let p = rejected(
        ctx,
        [q, k, v, &as_view(o, DType::F32, [2, 2, 8, 4], 4)],
        &d,
        Output,
        "out OOB",
    );
    assert!(matches!(p, InputProblem::OutOfBounds { .. }), "{p:?}");
}

#[test]
fn every_mask_check_names_its_tensor() {
    let ctx = ctx();
    let f = full(ctx);
    let views = [&*f.t.q, &*f.t.k, &*f.t.v, &*f.out];
    use Dim::*;
    use TensorRole::*;
    let with = |m: Mask| AttentionOptions::with_mask(m);
    // Bool mask and bias: each broadcast dimension, then dtype and memory.
    for dim in [Batch, Heads, Seq, HeadDim] {
        let mut shape = [2, 2, 8, 8];
        shape[dim as usize] = 3;
        let bm = as_view(&f.bools, DType::Bool, shape, 0);
        let p = rejected(
            ctx,
            views,
            &with(Mask::none().bool_mask(bm.view().clone())),
            BoolMask,
            "bool shape",
        );
        assert!(
            matches!(p, InputProblem::ShapeMismatch { dim: x, .. } if x == dim),
            "{dim:?}: {p:?}"
        );
        let bias = as_view(&f.bias, DType::F32, shape, 0);
        let p = rejected(
            ctx,
            views,
            &with(Mask::none().bias(bias.view().clone())),
            Bias,
            "bias shape",
        );
        assert!(
            matches!(p, InputProblem::ShapeMismatch { dim: x, .. } if x == dim),
            "{dim:?}: {p:?}"
        );
    }
    let as_bias = as_view(&f.bools, DType::Bool, [2, 2, 8, 8], 0);
    let p = rejected(
        ctx,
        views,
        &with(Mask::none().bias(as_bias.view().clone())),
        Bias,
        "bool bias",
    );
    assert!(matches!(p, InputProblem::WrongDType { .. }), "{p:?}");
    let past = as_view(&f.bools, DType::Bool, [2, 2, 8, 8], 4);
    let p = rejected(
        ctx,
        views,
        &with(Mask::none().bool_mask(past.view().clone())),
        BoolMask,
        "bool OOB",
    );
    assert!(matches!(p, InputProblem::OutOfBounds { .. }), "{p:?}");
    let past = as_view(&f.bias, DType::F32, [2, 2, 8, 8], 8);
    let p = rejected(
        ctx,
        views,
        &with(Mask::none().bias(past.view().clone())),
        Bias,
        "bias OOB",
    );
    assert!(matches!(p, InputProblem::OutOfBounds { .. }), "{p:?}");
    // Query lengths above the sequence.
    let p = rejected(
        ctx,
        views,
        &with(Mask::none().query_lengths(vec![8, 9])),
        QueryLengths,
        "qlen",
    );
    assert_eq!(
        p,
        InputProblem::LengthTooLong {
            batch: 1,
            len: 9,
            max: 8
        }
    );
    let p = rejected(
        ctx,
        views,
        &with(Mask::none().key_lengths(vec![8])),
        KeyLengths,
        "klen count",
    );
    assert!(
        matches!(
            p,
            InputProblem::WrongCount {
                expected: 2,
                got: 1,
                ..
            }
        ),
        "{p:?}"
    );
}

#[test]
fn every_lse_and_aliasing_check_names_its_tensor() {
    let ctx = ctx();
    let f = full(ctx);
    let views = [&*f.t.q, &*f.t.k, &*f.t.v, &*f.out];
    use TensorRole::*;
    let lse = |l: &Tensor, m: Mask| AttentionOptions::with_mask(m).lse_output(l.view().clone());
    let f16 = as_view(&f.lse, DType::F16, [2, 2, 8, 1], 0);
    let p = rejected(ctx, views, &lse(&f16, Mask::none()), Lse, "lse f16");
    assert!(matches!(p, InputProblem::WrongDType { .. }), "{p:?}");
    for (i, shape) in [[1, 2, 8, 1], [2, 1, 8, 1], [2, 2, 7, 1], [2, 2, 8, 2]]
        .into_iter()
        .enumerate()
    {
        let l = f.lse.reshaped(DType::F32, shape, [0, 0, 0, 0], 0);
        let p = rejected(ctx, views, &lse(&l, Mask::none()), Lse, "lse shape");
        assert!(
            matches!(p, InputProblem::ShapeMismatch { dim, .. } if dim == Dim::ALL[i]),
            "{shape:?}: {p:?}"
        );
    }
    let overlap = f.lse.reshaped(DType::F32, [2, 2, 8, 1], [8, 0, 1, 1], 0);
    let p = rejected(ctx, views, &lse(&overlap, Mask::none()), Lse, "lse overlap");
    assert!(matches!(p, InputProblem::OverlappingOutput { .. }), "{p:?}");
    let past = as_view(&f.lse, DType::F32, [2, 2, 8, 1], 4);
    let p = rejected(ctx, views, &lse(&past, Mask::none()), Lse, "lse OOB");
    assert!(matches!(p, InputProblem::OutOfBounds { .. }), "{p:?}");
    // The lse output may not share a buffer with any input or the output: each is named.
    let bias_as_lse = f
        .bias
        .reshaped(DType::F32, [2, 2, 8, 1], bhsd_strides([2, 2, 8, 1]), 0);
    let bools_as_lse = f
        .bools
        .reshaped(DType::F32, [2, 2, 8, 1], bhsd_strides([2, 2, 8, 1]), 0);
    let out_as_lse = f
        .out
        .reshaped(DType::F32, [2, 2, 8, 1], bhsd_strides([2, 2, 8, 1]), 0);
    let q_as_lse =
        f.t.q
            .reshaped(DType::F32, [2, 2, 8, 1], bhsd_strides([2, 2, 8, 1]), 0);
    let v_as_lse =
        f.t.v
            .reshaped(DType::F32, [2, 2, 8, 1], bhsd_strides([2, 2, 8, 1]), 0);
    let masked = Mask::none()
        .bool_mask(f.bools.view().clone())
        .bias(f.bias.view().clone());
    for (l, input) in [
        (&bias_as_lse, Bias),
        (&bools_as_lse, BoolMask),
        (&out_as_lse, Output),
        (&q_as_lse, Query),
        (&v_as_lse, Value),
    ] {
        let p = rejected(ctx, views, &lse(l, masked.clone()), Lse, "lse alias");
        assert_eq!(p, InputProblem::OutputAliasesInput { input }, "{input}");
    }
    // The output may not share a buffer with any input.
    // A bool mask in a buffer large enough to hold an f32 output as well.
    let big = ctx
        .upload_bool(&[true; 2 * 2 * 8 * 32], [2, 2, 8, 32])
        .unwrap();
    let bools = big.reshaped(DType::Bool, [2, 2, 8, 8], bhsd_strides([2, 2, 8, 8]), 0);
    let opts = AttentionOptions::with_mask(
        Mask::none()
            .bool_mask(bools.view().clone())
            .bias(f.bias.view().clone()),
    );
    for (t, input) in [
        (&f.t.q, Query),
        (&f.t.v, Value),
        (&f.bias, Bias),
        (&big, BoolMask),
    ] {
        let o = t.reshaped(DType::F32, [2, 2, 8, 4], bhsd_strides([2, 2, 8, 4]), 0);
        let p = rejected(
            ctx,
            [views[0], views[1], views[2], &o],
            &opts,
            Output,
            "out alias",
        );
        assert_eq!(p, InputProblem::OutputAliasesInput { input }, "{input}");
    }
}

#[test]
fn varlen_checks_name_their_tensor() {
    let ctx = ctx();
    let t = packed_varlen(ctx, &vec![0.5; 10 * 2 * 8], 10, 2, 8);
    let vl = Varlen::from_lengths(&[4, 6], &[4, 6]);
    // A packed tensor has batch 1.
    for (i, role) in [TensorRole::Query, TensorRole::Key, TensorRole::Value]
        .into_iter()
        .enumerate()
    {
        let two = t.reshaped(DType::F32, [2, 2, 10, 8], [0, 8, 16, 1], 0);
        let mut views = [&*t, &*t, &*t];
        views[i] = &two;
        let e = invalid(
            ctx.attention_blocking(
                views[0],
                views[1],
                views[2],
                &AttentionOptions::default().varlen(vl.clone()),
            )
            .unwrap_err(),
        );
        assert_eq!(e.tensor, role, "{e}");
    }
    // Lengths come from cu_seqlens: key or query lengths as well are refused.
    for mask in [
        Mask::none().key_lengths(vec![4, 6]),
        Mask::none().query_lengths(vec![4, 6]),
    ] {
        let opts = AttentionOptions::with_mask(mask).varlen(vl.clone());
        let e = invalid(ctx.attention_blocking(&t, &t, &t, &opts).unwrap_err());
        assert_eq!(e.tensor, TensorRole::Options, "{e}");
    }
}

/// Shapes whose element counts overflow are typed errors naming the tensor, at once (no
/// planning of 2^64 parts, no 4-byte buffer for 2^62 elements).
#[test]
fn overflowing_sizes_are_typed_errors() {
    let ctx = ctx();
    let t = qkv(ctx, 1, 1, 4, 4);
    let huge = 1usize << 32;
    let q =
        t.q.reshaped(DType::F32, [huge, huge, 4, 4], [0, 0, 4, 1], 0);
    let k =
        t.k.reshaped(DType::F32, [huge, huge, 4, 4], [0, 0, 4, 1], 0);
    let started = std::time::Instant::now();
    let e = invalid(
        ctx.plan(&q, &k, &k, &AttentionOptions::default())
            .unwrap_err(),
    );
    assert_eq!(e.tensor, TensorRole::Query, "{e}");
    assert!(matches!(e.problem, InputProblem::TooLarge { .. }), "{e}");
    // The output attention would allocate is Q's shape: Q is named, not an output the caller
    // never passed.
    let wide =
        t.q.reshaped(DType::F32, [1 << 20, 1 << 10, 4, 4], [0, 0, 4, 1], 0);
    let wk =
        t.k.reshaped(DType::F32, [1 << 20, 1 << 10, 4, 4], [0, 0, 4, 1], 0);
    let e = invalid(
        ctx.attention_blocking(&wide, &wk, &wk, &AttentionOptions::default())
            .unwrap_err(),
    );
    assert_eq!(e.tensor, TensorRole::Query, "{e}");
    assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
    let e = invalid(
        ctx.empty([1 << 31, 1 << 31, 1 << 31, 4], DType::F32)
            .unwrap_err(),
    );
    assert_eq!(e.tensor, TensorRole::NewTensor, "{e}");
    let e = invalid(
        ctx.upload_f32(&[1.0; 4], [1 << 62, 1 << 2, 1, 1])
            .unwrap_err(),
    );
    assert_eq!(e.tensor, TensorRole::HostData, "{e}");
    assert!(matches!(e.problem, InputProblem::TooLarge { .. }), "{e}");
}

/// A buffer of another context's device is an input error naming the tensor, never a panic
/// or a computation on some other buffer.
#[test]
fn buffers_of_another_context_are_named() {
    let ctx = ctx();
    let other = Context::new_blocking().expect("a second context");
    let t = qkv(ctx, 1, 2, 8, 16);
    let foreign = qkv(&other, 1, 2, 8, 16);
    let out = nan_output(ctx, [1, 2, 8, 16], DType::F32);
    let foreign_out = nan_output(&other, [1, 2, 8, 16], DType::F32);
    let d = AttentionOptions::default();
    for (views, role) in [
        ([&*foreign.q, &*t.k, &*t.v, &*out], TensorRole::Query),
        ([&*t.q, &*foreign.k, &*t.v, &*out], TensorRole::Key),
        ([&*t.q, &*t.k, &*foreign.v, &*out], TensorRole::Value),
        ([&*t.q, &*t.k, &*t.v, &*foreign_out], TensorRole::Output),
    ] {
        let p = rejected(ctx, views, &d, role, "foreign");
        assert_eq!(p, InputProblem::ForeignBuffer);
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        let e = invalid(
            ctx.record_attention(&mut enc, views[0], views[1], views[2], views[3], &d)
                .unwrap_err(),
        );
        assert_eq!((e.tensor, e.problem), (role, InputProblem::ForeignBuffer));
    }
    let e = invalid(ctx.download_f32_blocking(&foreign_out).unwrap_err());
    assert_eq!(
        (e.tensor, e.problem),
        (TensorRole::Download, InputProblem::ForeignBuffer)
    );
    // Both contexts still work.
    ctx.attention_into_blocking(&t.q, &t.k, &t.v, &out, &d)
        .unwrap();
    other
        .attention_into_blocking(&foreign.q, &foreign.k, &foreign.v, &foreign_out, &d)
        .unwrap();
    let a = ctx.download_f32_blocking(&out).unwrap();
    assert!(a.iter().all(|x| x.is_finite()));
}

/// A device error's message carries wgpu's text once, and its context.
#[test]
fn device_errors_say_it_once() {
    let ctx = ctx();
    let t = qkv(ctx, 1, 1, 8, 8);
    let out = nan_output(ctx, [1, 1, 8, 8], DType::F32);
    {
        let _held = ctx.lock_device(); // our own use of the device (see `lock_device`)
        t.k.buffer().destroy();
    }
    let e = ctx
        .attention_into_blocking(&t.q, &t.k, &t.v, &out, &AttentionOptions::default())
        .expect_err("a destroyed buffer");
    let Error::Device(d) = &e else {
        panic!("expected a device error, got {e:?}")
    };
    let msg = e.to_string();
    let inner = d.source.to_string();
    let line = inner
        .lines()
        .map(str::trim)
        .rfind(|l| l.len() > 10)
        .unwrap_or(&inner)
        .to_string();
    assert!(
        msg.contains("attention") && msg.contains("destroyed"),
        "{msg}"
    );
    assert_eq!(msg.matches(line.as_str()).count(), 1, "{msg}");
    assert!(
        std::error::Error::source(&e).is_none(),
        "the message is whole: no chain to repeat it"
    );
}

/// The backward pass's inputs and gradients are checked like the forward's: each error names
/// its tensor, and nothing runs.
#[test]
fn backward_rejects_bad_inputs_and_gradients() {
    use wgpu_attention::{BackwardInputs, GradientViews};
    let ctx = ctx();
    let t = qkv(ctx, 1, 2, 8, 16);
    let shape = [1, 2, 8, 16];
    let lse = ctx.empty([1, 2, 8, 1], DType::F32).unwrap();
    let fwd = AttentionOptions::default().lse_output(lse.view().clone());
    let out = ctx.attention_blocking(&t.q, &t.k, &t.v, &fwd).unwrap();
    let d_out = ctx.upload_f32(&random(256, 9), shape).unwrap();
    // Tensors that outlive every view of them (see `Qkv`).
    let mk = |s: [usize; 4], dt: DType| ctx.empty(s, dt).unwrap();
    let (gq, gk, gv) = (
        mk(shape, DType::F32),
        mk(shape, DType::F32),
        mk(shape, DType::F32),
    );
    let (k8, bias8, int_q) = (
        mk([1, 2, 8, 8], DType::F32),
        mk([1, 2, 8, 8], DType::F32),
        mk(shape, DType::Bool),
    );
    let grads = || GradientViews {
        dq: gq.view().clone(),
        dk: gk.view().clone(),
        dv: gv.view().clone(),
        dbias: None,
        dsink: None,
    };
    let inputs = BackwardInputs {
        q: &t.q,
        k: &t.k,
        v: &t.v,
        out: out.view(),
        d_out: d_out.view(),
        lse: lse.view(),
    };
    let opts = AttentionOptions::default();
    // A good call runs.
    ctx.attention_backward_into_blocking(&inputs, &grads(), &opts)
        .expect("a good backward call");
    let rejected = |x: &BackwardInputs<'_>, g: &GradientViews, o: &AttentionOptions| {
        invalid(
            ctx.attention_backward_into_blocking(x, g, o)
                .expect_err("bad input must be rejected"),
        )
    };
    // dO of the wrong shape.
    let short = ctx.upload_f32(&random(128, 9), [1, 2, 4, 16]).unwrap();
    let e = rejected(
        &BackwardInputs {
            d_out: short.view(),
            ..inputs
        },
        &grads(),
        &opts,
    );
    assert_eq!(e.tensor, TensorRole::OutputGrad);
    assert!(matches!(
        e.problem,
        InputProblem::ShapeMismatch {
            dim: Dim::Seq,
            got: 4,
            ..
        }
    ));
    // The log-sum-exp as f16.
    let lse16 = ctx.empty([1, 2, 8, 1], DType::F16).unwrap();
    let e = rejected(
        &BackwardInputs {
            lse: lse16.view(),
            ..inputs
        },
        &grads(),
        &opts,
    );
    assert_eq!(e.tensor, TensorRole::Lse);
    // dK of the wrong head dim.
    let mut g = grads();
    g.dk = k8.view().clone();
    let e = rejected(&inputs, &g, &opts);
    assert_eq!(e.tensor, TensorRole::KeyGrad);
    assert!(e.to_string().contains("key gradient"), "{e}");
    // A bias gradient without a bias.
    let mut g = grads();
    g.dbias = Some(bias8.view().clone());
    let e = rejected(&inputs, &g, &opts);
    assert_eq!(e.tensor, TensorRole::BiasGrad);
    // A sink gradient without sinks, of the wrong shape, or over dO.
    let sink_g = mk([1, 2, 1, 1], DType::F32);
    let mut g = grads();
    g.dsink = Some(sink_g.view().clone());
    let e = rejected(&inputs, &g, &opts);
    assert_eq!(e.tensor, TensorRole::SinkGrad);
    assert!(e.to_string().contains("no sinks"), "{e}");
    let sinks = AttentionOptions::default().sinks(vec![0.5, 1.0]);
    let mut g = grads();
    g.dsink = Some(k8.view().clone());
    let e = rejected(&inputs, &g, &sinks);
    assert_eq!(e.tensor, TensorRole::SinkGrad);
    assert!(
        matches!(
            e.problem,
            InputProblem::ShapeMismatch {
                dim: Dim::Seq,
                got: 8,
                ..
            }
        ),
        "{e}"
    );
    let mut g = grads();
    g.dsink = Some(d_out.view().narrowed(2, 0, 1).narrowed(3, 0, 1));
    let e = rejected(&inputs, &g, &sinks);
    assert_eq!(e.tensor, TensorRole::SinkGrad);
    assert!(
        matches!(
            e.problem,
            InputProblem::OutputAliasesInput {
                input: TensorRole::OutputGrad
            }
        ),
        "{e}"
    );
    // The good call with sinks and their gradient runs.
    let mut g = grads();
    g.dsink = Some(sink_g.view().clone());
    ctx.attention_backward_into_blocking(&inputs, &g, &sinks)
        .expect("a backward call with sinks");
    // dV overlapping dO, and dQ overlapping dK.
    let mut g = grads();
    g.dv = d_out.view().clone();
    let e = rejected(&inputs, &g, &opts);
    assert_eq!(e.tensor, TensorRole::ValueGrad);
    assert!(matches!(
        e.problem,
        InputProblem::OutputAliasesInput {
            input: TensorRole::OutputGrad
        }
    ));
    let mut g = grads();
    g.dk = g.dq.clone();
    let e = rejected(&inputs, &g, &opts);
    assert_eq!(e.tensor, TensorRole::KeyGrad);
    assert!(matches!(
        e.problem,
        InputProblem::OutputAliasesInput {
            input: TensorRole::QueryGrad
        }
    ));
    // A gradient with an integer dtype.
    let mut g = grads();
    g.dq = int_q.view().clone();
    let e = rejected(&inputs, &g, &opts);
    assert_eq!(e.tensor, TensorRole::QueryGrad);
    // The device is still fine.
    ctx.attention_backward_into_blocking(&inputs, &grads(), &opts)
        .expect("the device survives");
}

/// Paged K/V: the page table's size and entries, the pool's page size and pages, the key
/// axis, and what paged calls do not take (varlen, the backward pass) each get their error.
#[test]
fn paged_kv_rejects_bad_tables_and_pools() {
    use wgpu_attention::{BackwardInputs, GradientViews, PagedKv};
    let ctx = ctx();
    // Q: 2 batch items, 2 heads, 3 rows; a pool of 5 pages of 4 keys.
    let q = ctx
        .upload_f32(&random(2 * 2 * 3 * 8, 1), [2, 2, 3, 8])
        .unwrap();
    let k = ctx
        .upload_f32(&random(5 * 2 * 4 * 8, 2), [5, 2, 4, 8])
        .unwrap();
    let v = ctx
        .upload_f32(&random(5 * 2 * 4 * 8, 3), [5, 2, 4, 8])
        .unwrap();
    let call = |k: &Tensor, v: &Tensor, pg: PagedKv, opts: AttentionOptions| {
        ctx.attention_blocking(&q, k, v, &opts.paged(pg))
            .expect_err("bad paged input must be rejected")
    };
    let good = || PagedKv::new(4, 2, vec![3, 1, 0, 4]);
    let plain = AttentionOptions::default;
    // The good call runs.
    ctx.attention_blocking(&q, &k, &v, &plain().paged(good()))
        .expect("a good paged call");
    // A table with an entry per batch item missing.
    let e = invalid(call(&k, &v, PagedKv::new(4, 2, vec![3, 1, 0]), plain()));
    assert_eq!(e.tensor, TensorRole::PageTable);
    assert_eq!(
        e.problem,
        InputProblem::WrongCount {
            expected: 4,
            got: 3,
            per: "pages_per_seq per batch item"
        }
    );
    // A page the pool does not have (batch 1's second page).
    let e = invalid(call(&k, &v, PagedKv::new(4, 2, vec![3, 1, 0, 5]), plain()));
    assert_eq!(e.tensor, TensorRole::PageTable);
    assert_eq!(
        e.problem,
        InputProblem::PageOutOfRange {
            batch: 1,
            column: 1,
            page: 5,
            pages: 5
        }
    );
    assert!(e.to_string().contains("page 5"), "{e}");
    // ... unless the key axis ends before that page: its entry is never read.
    ctx.attention_blocking(
        &q,
        &k,
        &v,
        &plain().paged(PagedKv::new(4, 2, vec![3, 1, 0, 99]).seq_len(4)),
    )
    .expect("entries past the key axis are not read");
    // Pages of another size than the views'.
    let e = invalid(call(&k, &v, PagedKv::new(8, 1, vec![3, 1]), plain()));
    assert_eq!(e.tensor, TensorRole::Key);
    assert!(
        matches!(&e.problem, InputProblem::ShapeMismatch { dim: Dim::Seq, got: 4, expected } if expected.contains('8')),
        "{e}"
    );
    // Pools of different sizes for K and V.
    let v4 = ctx
        .upload_f32(&random(4 * 2 * 4 * 8, 4), [4, 2, 4, 8])
        .unwrap();
    let e = invalid(call(&k, &v4, good(), plain()));
    assert_eq!(e.tensor, TensorRole::Value);
    assert!(
        matches!(
            e.problem,
            InputProblem::ShapeMismatch {
                dim: Dim::Batch,
                got: 4,
                ..
            }
        ),
        "{e}"
    );
    // A key axis longer than the pages hold, or empty; no page per batch item.
    for bad in [
        PagedKv::new(4, 2, vec![3, 1, 0, 4]).seq_len(9),
        PagedKv::new(4, 2, vec![3, 1, 0, 4]).seq_len(0),
        PagedKv::new(4, 0, vec![]),
    ] {
        let e = invalid(call(&k, &v, bad.clone(), plain()));
        assert_eq!(e.tensor, TensorRole::PageTable, "{bad:?}");
    }
    // Key lengths past the key axis.
    let e = invalid(call(
        &k,
        &v,
        good().seq_len(6),
        AttentionOptions::with_mask(Mask::none().key_lengths(vec![6, 7])),
    ));
    assert_eq!(e.tensor, TensorRole::KeyLengths);
    assert!(
        matches!(
            e.problem,
            InputProblem::LengthTooLong {
                batch: 1,
                len: 7,
                max: 6
            }
        ),
        "{e}"
    );
    // Packed variable-length queries over paged keys: each sequence's keys must fit the
    // table's key axis (8 here), not packed rows.
    let packed_q = ctx.upload_f32(&random(2 * 3 * 8, 6), [1, 2, 3, 8]).unwrap();
    let varlen = |kl: u32| plain().varlen(Varlen::from_lengths(&[1, 2], &[3, kl]));
    ctx.attention_blocking(&packed_q, &k, &v, &varlen(8).paged(good()))
        .expect("varlen over pages");
    let e = invalid(
        ctx.attention_blocking(&packed_q, &k, &v, &varlen(9).paged(good()))
            .expect_err("a sequence longer than its pages"),
    );
    assert_eq!(e.tensor, TensorRole::CuSeqlensK);
    assert!(
        matches!(
            e.problem,
            InputProblem::LengthTooLong {
                batch: 1,
                len: 9,
                max: 8
            }
        ),
        "{e}"
    );
    // Nor is the backward pass.
    let shape = [2, 2, 3, 8];
    let lse = ctx.empty([2, 2, 3, 1], DType::F32).unwrap();
    let out = ctx.empty(shape, DType::F32).unwrap();
    let d_out = ctx.upload_f32(&random(96, 9), shape).unwrap();
    let (gq, gk, gv) = (
        ctx.empty(shape, DType::F32).unwrap(),
        ctx.empty([5, 2, 4, 8], DType::F32).unwrap(),
        ctx.empty([5, 2, 4, 8], DType::F32).unwrap(),
    );
    let inputs = BackwardInputs {
        q: q.view(),
        k: k.view(),
        v: v.view(),
        out: out.view(),
        d_out: d_out.view(),
        lse: lse.view(),
    };
    let grads = GradientViews {
        dq: gq.view().clone(),
        dk: gk.view().clone(),
        dv: gv.view().clone(),
        dbias: None,
        dsink: None,
    };
    let e = ctx
        .attention_backward_into_blocking(&inputs, &grads, &plain().paged(good()))
        .expect_err("paged backward");
    assert!(
        matches!(&e, Error::Unsupported(_)) && e.to_string().contains("paged"),
        "{e}"
    );
}

/// The paged cache's inputs: its pool's sizes, new tokens of the wrong dtype, shape or
/// memory order, sequences that do not exist or repeat, and a pool out of pages (which
/// changes nothing).
#[test]
fn paged_cache_rejects_bad_input() {
    use wgpu_attention::PagedKvCache;
    let ctx = ctx();
    // heads · head_dim · 2 bytes must be a multiple of 4.
    let e = invalid(PagedKvCache::new(ctx, 4, 4, 1, 3, DType::F16).expect_err("odd f16 tokens"));
    assert_eq!(e.tensor, TensorRole::KvCache);
    let e = invalid(PagedKvCache::new(ctx, 0, 4, 1, 4, DType::F32).expect_err("no pages"));
    assert_eq!(e.tensor, TensorRole::KvCache);
    let e = invalid(PagedKvCache::new(ctx, 4, 4, 1, 4, DType::Bool).expect_err("bool"));
    assert!(matches!(e.problem, InputProblem::WrongDType { .. }), "{e}");

    let (h, d) = (2, 4);
    let mut cache = PagedKvCache::new(ctx, 2, 4, h, d, DType::F32).unwrap();
    let a = cache.add_sequence();
    let tokens = |n: usize| {
        let t = ctx.upload_f32(&random(n * h * d, 5), [1, n, h, d]).unwrap();
        let v = TensorView::bshd(t.buffer().clone(), DType::F32, [1, n, h, d]);
        t.reshaped(DType::F32, v.shape, v.strides, 0)
    };
    let t3 = tokens(3);
    // BHSD memory with more than one token: not token-major.
    let bhsd = ctx.upload_f32(&random(3 * h * d, 6), [1, h, 3, d]).unwrap();
    let e = invalid(
        cache
            .append_blocking(ctx, &[a], bhsd.view(), bhsd.view())
            .expect_err("bhsd"),
    );
    assert_eq!(e.tensor, TensorRole::KvCache);
    assert!(e.to_string().contains("token"), "{e}");
    // Token-major but padded: heads 5 apart (not 4), tokens 12 apart (not 8), or two
    // sequences' tokens 9 apart (not 8).
    let spare = ctx.upload_f32(&random(64, 8), [1, 1, 1, 64]).unwrap();
    let other = cache.add_sequence();
    for (shape, strides) in [
        ([1, h, 1, d], [10, 5, 10, 1]),
        ([1, h, 3, d], [36, 4, 12, 1]),
        ([2, h, 1, d], [9, 4, 9, 1]),
    ] {
        let padded = spare.reshaped(DType::F32, shape, strides, 0);
        let seqs = [a, other];
        let e = invalid(
            cache
                .append_blocking(ctx, &seqs[..shape[0]], padded.view(), padded.view())
                .expect_err("padded"),
        );
        assert!(e.to_string().contains("token"), "{strides:?}: {e}");
    }
    // Another dtype, another head count.
    let f16 = ctx
        .upload_f16(&vec![half::f16::ZERO; h * d], [1, h, 1, d])
        .unwrap();
    let e = invalid(
        cache
            .append_blocking(ctx, &[a], f16.view(), f16.view())
            .expect_err("f16"),
    );
    assert!(matches!(e.problem, InputProblem::WrongDType { .. }), "{e}");
    let e = invalid(
        cache
            .append_blocking(ctx, &[a, a], t3.view(), t3.view())
            .expect_err("two sequences, one's tokens"),
    );
    assert!(
        matches!(
            e.problem,
            InputProblem::ShapeMismatch {
                dim: Dim::Batch,
                ..
            }
        ),
        "{e}"
    );
    // The same sequence twice.
    let two = ctx.upload_f32(&random(2 * h * d, 7), [2, h, 1, d]).unwrap();
    let e = invalid(
        cache
            .append_blocking(ctx, &[a, a], two.view(), two.view())
            .expect_err("twice"),
    );
    assert!(e.to_string().contains("twice"), "{e}");
    // Out of pages: 3 + 6 tokens need 3 pages of 4; the pool has 2. Nothing changes.
    cache
        .append_blocking(ctx, &[a], t3.view(), t3.view())
        .unwrap();
    let t6 = tokens(6);
    let e = invalid(
        cache
            .append_blocking(ctx, &[a], t6.view(), t6.view())
            .expect_err("full"),
    );
    assert!(e.to_string().contains("free pages"), "{e}");
    assert_eq!((cache.len(a).unwrap(), cache.free_pages()), (3, 1));
    // A forked sequence appending needs a page for its copy of the shared one.
    let b = cache.fork(a).unwrap();
    let t1 = tokens(1);
    cache
        .append_blocking(ctx, &[b], t1.view(), t1.view())
        .unwrap();
    assert_eq!(cache.free_pages(), 0);
    let e = invalid(
        cache
            .append_blocking(ctx, &[a], t3.view(), t3.view())
            .expect_err("full"),
    );
    assert!(e.to_string().contains("free pages"), "{e}");
    // A removed sequence.
    cache.remove(b).unwrap();
    assert_eq!(cache.free_pages(), 1);
    for e in [
        cache.len(b).expect_err("removed"),
        cache.fork(b).expect_err("removed"),
        cache.remove(b).expect_err("removed"),
        cache.options(&[a, b]).expect_err("removed"),
        cache
            .append_blocking(ctx, &[b], t1.view(), t1.view())
            .expect_err("removed"),
    ] {
        let e = invalid(e);
        assert_eq!(e.tensor, TensorRole::KvCache);
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
    // A sequence of another cache, though this cache has one at the same index.
    let mut other = PagedKvCache::new(ctx, 2, 4, h, d, DType::F32).unwrap();
    let foreign = other.add_sequence();
    assert_eq!(other.len(foreign).unwrap(), 0);
    let e = invalid(cache.len(foreign).expect_err("another cache's sequence"));
    assert!(e.to_string().contains("another cache"), "{e}");
}

/// Quantized K/V (issue 25): every check of the formats and their scales, each refused with
/// the tensor it names; a good call of each kind runs first.
#[test]
fn quantized_kv_rejects_bad_formats_and_scales() {
    use wgpu_attention::{BackwardInputs, GradientViews, KvScales};
    let ctx = ctx();
    let (b, h, s, d) = (1, 2, 5, 64);
    let q = ctx
        .upload_f32(&random(b * h * s * d, 1), [b, h, s, d])
        .unwrap();
    // One buffer holding K's rows (q8_0: 34 bytes a block) and room after them for scales.
    let words = 2048;
    let buf = ctx.upload_f32(&vec![0.0; words], [1, 1, 1, words]).unwrap();
    let other = ctx.upload_f32(&vec![0.0; words], [1, 1, 1, words]).unwrap();
    let view = |t: &Tensor, dt: DType, shape: [usize; 4], strides: [usize; 4], off: u64| {
        t.reshaped(dt, shape, strides, off)
    };
    let kv = |dt: DType| view(&buf, dt, [b, h, s, d], [h * s * d, s * d, d, 1], 0);
    let scales = |t: &Tensor, off: u64| view(t, DType::F32, [b, h, s, 1], [h * s, s, 1, 1], off);
    let call = |k: &Tensor, v: &Tensor, opts: AttentionOptions| {
        ctx.attention_blocking(&q, k, v, &opts)
            .expect_err("bad quantized input must be rejected")
    };
    let plain = AttentionOptions::default;
    let per_token = |k: Tensor, v: Tensor| {
        plain().kv_scales(KvScales::PerToken {
            k: k.view().clone(),
            v: v.view().clone(),
        })
    };
    // Good calls: q8_0 alone, i8 with its scales behind the rows, e4m3 with per-head scales.
    let (k8, kq) = (kv(DType::I8), kv(DType::Q8_0));
    ctx.attention_blocking(&q, &kq, &kq, &plain())
        .expect("q8_0");
    let good_i8 = || per_token(scales(&buf, 2048), scales(&buf, 2048));
    ctx.attention_blocking(&q, &k8, &k8, &good_i8())
        .expect("i8");
    let fp8 = kv(DType::E4M3);
    let heads = |k: Vec<f32>, v: Vec<f32>| plain().kv_scales(KvScales::PerHead { k, v });
    ctx.attention_blocking(&q, &fp8, &fp8, &heads(vec![0.5, 2.0], vec![1.0]))
        .expect("e4m3");

    // A mix of formats, either way round; a quantized query.
    let f32_kv = ctx
        .upload_f32(&random(b * h * s * d, 2), [b, h, s, d])
        .unwrap();
    let e = invalid(call(&kq, &f32_kv, plain()));
    assert_eq!(e.tensor, TensorRole::Value);
    assert!(
        matches!(&e.problem, InputProblem::WrongDType { expected, got } if expected.contains("q8_0") && got == "f32"),
        "{e}"
    );
    let e = invalid(call(&f32_kv, &kq, plain()));
    assert_eq!(e.tensor, TensorRole::Value);
    let e = invalid(call(&kq, &kv(DType::Q4_0), plain()));
    assert_eq!(e.tensor, TensorRole::Value);
    let e = invalid(
        ctx.attention_blocking(&kq, &kq, &kq, &plain())
            .expect_err("a quantized query"),
    );
    assert_eq!(e.tensor, TensorRole::Query);
    // Block formats: head dims of whole blocks, contiguous head dims, whole-block strides,
    // an even offset.
    let q48 = ctx
        .upload_f32(&random(b * h * s * 48, 1), [b, h, s, 48])
        .unwrap();
    let k48 = view(
        &buf,
        DType::Q8_0,
        [b, h, s, 48],
        [h * s * 48, s * 48, 48, 1],
        0,
    );
    let e = invalid(
        ctx.attention_blocking(&q48, &k48, &k48, &plain())
            .expect_err("48"),
    );
    assert_eq!(e.tensor, TensorRole::Key);
    assert!(
        matches!(&e.problem, InputProblem::ShapeMismatch { dim: Dim::HeadDim, got: 48, expected } if expected.contains("32")),
        "{e}"
    );
    let strided = view(&buf, DType::Q8_0, [b, h, s, d], [h * s * d, s * d, d, 2], 0);
    let e = invalid(call(&strided, &strided, plain()));
    assert_eq!(e.tensor, TensorRole::Key);
    assert!(
        matches!(
            e.problem,
            InputProblem::BlockStride {
                dim: Dim::HeadDim,
                stride: 2,
                ..
            }
        ),
        "{e}"
    );
    let ragged = view(
        &buf,
        DType::Q4_0,
        [b, h, s, d],
        [h * s * 96, s * 96, 80, 1],
        0,
    );
    let e = invalid(call(&kv(DType::Q4_0), &ragged, plain()));
    assert_eq!(e.tensor, TensorRole::Value);
    assert!(
        matches!(
            e.problem,
            InputProblem::BlockStride {
                dim: Dim::Seq,
                stride: 80,
                ..
            }
        ),
        "{e}"
    );
    // (A head dim of one value has no stride to speak of: any is taken.)
    let q1 = ctx.upload_f32(&random(b * h * s, 1), [b, h, s, 1]).unwrap();
    let k1 = view(&buf, DType::E5M2, [b, h, s, 1], [h * s * 2, s * 2, 2, 2], 0);
    ctx.attention_blocking(&q1, &k1, &k1, &plain())
        .expect("a one-value head dim, any stride");
    let odd = view(&buf, DType::Q8_0, [b, h, s, d], [h * s * d, s * d, d, 1], 3);
    let e = invalid(call(&odd, &odd, plain()));
    assert_eq!(
        e.problem,
        InputProblem::MisalignedOffset {
            offset: 3,
            align: 2
        }
    );

    // i8: scales needed, f32, K's first three dims, in K's (V's) buffer.
    let e = invalid(call(&k8, &k8, plain()));
    assert_eq!(e.tensor, TensorRole::KeyScales);
    assert!(e.to_string().contains("PerToken"), "{e}");
    let f16_scales = view(&buf, DType::F16, [b, h, s, 1], [h * s, s, 1, 1], 2048);
    let e = invalid(call(&k8, &k8, per_token(f16_scales, scales(&buf, 2048))));
    assert_eq!(e.tensor, TensorRole::KeyScales);
    assert!(matches!(e.problem, InputProblem::WrongDType { .. }), "{e}");
    let short = view(&buf, DType::F32, [b, h, s - 1, 1], [h * s, s, 1, 1], 2048);
    let e = invalid(call(&k8, &k8, per_token(scales(&buf, 2048), short)));
    assert_eq!(e.tensor, TensorRole::ValueScales);
    assert!(
        matches!(e.problem, InputProblem::ShapeMismatch { dim: Dim::Seq, .. }),
        "{e}"
    );
    let e = invalid(call(
        &k8,
        &k8,
        per_token(scales(&other, 0), scales(&buf, 2048)),
    ));
    assert_eq!(e.tensor, TensorRole::KeyScales);
    assert_eq!(
        e.problem,
        InputProblem::NotInBufferOf {
            of: TensorRole::Key
        }
    );
    let e = invalid(call(
        &k8,
        &k8,
        per_token(scales(&buf, 2048), scales(&other, 0)),
    ));
    assert_eq!(
        e.problem,
        InputProblem::NotInBufferOf {
            of: TensorRole::Value
        }
    );
    let past = scales(&buf, (words * 4) as u64 - 8);
    let e = invalid(call(&k8, &k8, per_token(past, scales(&buf, 2048))));
    assert_eq!(e.tensor, TensorRole::KeyScales);
    assert!(matches!(e.problem, InputProblem::OutOfBounds { .. }), "{e}");
    // The 8-bit floats: one scale per head or one for all, finite.
    let e = invalid(call(&fp8, &fp8, heads(vec![1.0; 3], vec![1.0])));
    assert_eq!(e.tensor, TensorRole::KeyScales);
    assert!(
        matches!(
            e.problem,
            InputProblem::WrongCount {
                expected: 2,
                got: 3,
                ..
            }
        ),
        "{e}"
    );
    let e = invalid(call(&fp8, &fp8, heads(vec![1.0], vec![f32::NAN, 1.0])));
    assert_eq!(e.tensor, TensorRole::ValueScales);
    assert!(matches!(e.problem, InputProblem::NonFinite { .. }), "{e}");
    // Scales a format does not take.
    for (k, opts) in [
        (&kq, heads(vec![1.0], vec![1.0])),
        (&fp8, good_i8()),
        (&k8, heads(vec![1.0], vec![1.0])),
    ] {
        let e = invalid(call(k, k, opts));
        assert_eq!(e.tensor, TensorRole::KeyScales, "{e}");
    }
    let e = invalid(call(&f32_kv, &f32_kv, heads(vec![1.0], vec![1.0])));
    assert_eq!(e.tensor, TensorRole::KeyScales);
    assert!(e.to_string().contains("not quantized"), "{e}");
    // An output over the scales.
    let out = view(
        &buf,
        DType::F32,
        [b, h, s, d],
        [h * s * d, s * d, d, 1],
        2048,
    );
    let e = invalid(
        ctx.attention_into_blocking(&q, &k8, &k8, &out, &good_i8())
            .expect_err("output over the scales"),
    );
    assert_eq!(e.tensor, TensorRole::Output);
    assert!(
        matches!(e.problem, InputProblem::OutputAliasesInput { .. }),
        "{e}"
    );
    // No backward pass over quantized K/V.
    let g = || ctx.empty([b, h, s, d], DType::F32).unwrap();
    let (o, dout, dq, dk, dv) = (g(), g(), g(), g(), g());
    let lse = ctx.empty([b, h, s, 1], DType::F32).unwrap();
    let x = BackwardInputs {
        q: q.view(),
        k: kq.view(),
        v: kq.view(),
        out: o.view(),
        d_out: dout.view(),
        lse: lse.view(),
    };
    let grads = GradientViews {
        dq: dq.view().clone(),
        dk: dk.view().clone(),
        dv: dv.view().clone(),
        dbias: None,
        dsink: None,
    };
    let err = ctx
        .attention_backward_into_blocking(&x, &grads, &plain())
        .expect_err("quantized backward");
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("quantized"), "{err}");
}

/// Quantized caches: head dims of whole blocks, pages of whole words, new rows in a float
/// dtype.
#[test]
fn quantized_caches_reject_bad_shapes_and_rows() {
    use wgpu_attention::{KvCache, PagedKvCache};
    let ctx = ctx();
    for (what, r) in [
        (
            "head dim 48 in q8_0",
            KvCache::new(ctx, 1, 1, 8, 48, DType::Q8_0).map(|_| ()),
        ),
        (
            "zero capacity",
            KvCache::new(ctx, 1, 1, 0, 32, DType::I8).map(|_| ()),
        ),
        (
            "pages of 7 q8_0 tokens of one head (238 bytes)",
            PagedKvCache::new(ctx, 4, 7, 1, 32, DType::Q8_0).map(|_| ()),
        ),
    ] {
        let e = invalid(r.expect_err(what));
        assert_eq!(e.tensor, TensorRole::KvCache, "{what}");
    }
    // A cache larger than the device's largest buffer (or 32-bit byte addresses).
    let huge = KvCache::new(ctx, 64, 64, 1 << 24, 128, DType::Q8_0).expect_err("huge cache");
    assert!(
        matches!(huge, Error::Unsupported(_) | Error::InvalidInput(_)),
        "{huge}"
    );
    let mut cache = KvCache::new(ctx, 1, 2, 8, 32, DType::Q4_0).unwrap();
    let rows = ctx.upload_bool(&[true; 2 * 32], [1, 2, 1, 32]).unwrap();
    let e = invalid(
        cache
            .append_blocking(ctx, &rows, &rows)
            .expect_err("bool rows"),
    );
    assert!(matches!(e.problem, InputProblem::WrongDType { .. }), "{e}");
    let wrong = ctx.upload_f32(&random(3 * 32, 1), [1, 3, 1, 32]).unwrap();
    let e = invalid(
        cache
            .append_blocking(ctx, &wrong, &wrong)
            .expect_err("3 heads"),
    );
    assert!(
        matches!(
            e.problem,
            InputProblem::ShapeMismatch {
                dim: Dim::Heads,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(cache.lengths(), &[0], "a refused append changes nothing");
}
