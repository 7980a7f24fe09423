//! Bad input never panics: every case returns a typed error naming the tensor, the
//! dimension, and what was expected versus got, before anything is dispatched.

mod common;

use common::*;
use wgpu_attention::error::{Dim, InputProblem, InvalidInput, TensorRole, UnsupportedReason};
use wgpu_attention::{AttentionOptions, Backend, Context, DType, Error, Mask, TensorView};

struct Qkv {
    q: TensorView,
    k: TensorView,
    v: TensorView,
}

fn qkv(ctx: &Context, b: usize, h: usize, s: usize, d: usize) -> Qkv {
    let shape = [b, h, s, d];
    let n = b * h * s * d;
    Qkv {
        q: ctx.upload_f32(&random(n, 1), shape).unwrap().view().clone(),
        k: ctx.upload_f32(&random(n, 2), shape).unwrap().view().clone(),
        v: ctx.upload_f32(&random(n, 3), shape).unwrap().view().clone(),
    }
}

fn invalid(err: Error) -> InvalidInput {
    match err {
        Error::InvalidInput(i) => i,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

fn run(ctx: &Context, t: &Qkv, opts: &AttentionOptions) -> Error {
    ctx.attention(&t.q, &t.k, &t.v, opts)
        .expect_err("bad input must be rejected")
}

#[test]
fn key_head_dim_mismatch() {
    let ctx = ctx();
    let mut t = qkv(ctx, 1, 2, 8, 16);
    t.k = ctx
        .upload_f32(&random(2 * 8 * 12, 4), [1, 2, 8, 12])
        .unwrap()
        .view()
        .clone();
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
        .unwrap()
        .view()
        .clone();
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
    t.k = kv.view().clone();
    t.v = kv.view().clone();
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
    t.q = TensorView::bhsd(t.q.buffer.clone(), DType::F32, [1, 1, 4, 0]);
    let e = invalid(run(ctx, &t, &AttentionOptions::default()));
    assert_eq!(e.tensor, TensorRole::Query);
    assert_eq!(e.problem, InputProblem::ZeroDim { dim: Dim::HeadDim });
}

#[test]
fn view_out_of_bounds() {
    let ctx = ctx();
    let mut t = qkv(ctx, 1, 1, 4, 4);
    t.k = t.k.clone().with_offset(8);
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
    t.v = TensorView::bhsd(t.v.buffer.clone(), DType::F32, [1, 1, 2, 4]).with_offset(6);
    t.k = TensorView::bhsd(t.k.buffer.clone(), DType::F32, [1, 1, 2, 4]);
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
    let buf = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 64,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    t.q = TensorView::bhsd(buf, DType::F32, [1, 1, 4, 4]);
    let e = invalid(run(ctx, &t, &AttentionOptions::default()));
    assert_eq!(e.tensor, TensorRole::Query);
    assert!(matches!(e.problem, InputProblem::MissingUsage { .. }));
}

#[test]
fn bool_dtype_for_query() {
    let ctx = ctx();
    let mut t = qkv(ctx, 1, 1, 4, 4);
    t.q = TensorView::bhsd(t.q.buffer.clone(), DType::Bool, [1, 1, 4, 4]);
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
            got: 1
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
            got: 1
        }
    );
    let e = invalid(run(
        ctx,
        &t,
        &AttentionOptions::with_mask(Mask::none().alibi(vec![0.5, f32::NAN])),
    ));
    assert!(matches!(e.problem, InputProblem::NonFinite { .. }));
}

#[test]
fn output_shape_overlap_and_alias() {
    let ctx = ctx();
    let t = qkv(ctx, 1, 2, 8, 4);
    let opts = AttentionOptions::default();
    let out = nan_output(ctx, [1, 2, 8, 5], DType::F32);
    let e = invalid(
        ctx.attention_into(&t.q, &t.k, &t.v, &out, &opts)
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
    let overlapping = TensorView::new(
        out.buffer.clone(),
        DType::F32,
        [1, 2, 8, 4],
        [64, 0, 4, 1],
        0,
    );
    let e = invalid(
        ctx.attention_into(&t.q, &t.k, &t.v, &overlapping, &opts)
            .unwrap_err(),
    );
    assert_eq!(
        e.problem,
        InputProblem::OverlappingOutput { dim: Dim::Heads }
    );

    let e = invalid(
        ctx.attention_into(&t.q, &t.k, &t.v, &t.k, &opts)
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
    ctx.attention(&t.q, &t.k, &t.v, &AttentionOptions::default())
        .unwrap();
}

#[test]
fn block_summary_for_another_shape() {
    let ctx = ctx();
    let t = qkv(ctx, 1, 1, 8, 4);
    let m1 = ctx.upload_bool(&[true; 64], [1, 1, 8, 8]).unwrap();
    let m2 = ctx.upload_bool(&[true; 128], [1, 2, 8, 8]).unwrap();
    let s = ctx.block_mask(m2.view()).unwrap();
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
    let _ = ctx.attention(
        &t.q,
        &t.k,
        &t.v,
        &AttentionOptions::default().scale(f32::NAN),
    );
    check(ctx, &Case::new(1, 1, 8, 8, 4));
}

#[test]
fn sequence_beyond_the_shader_limit() {
    let ctx = ctx();
    let mut t = qkv(ctx, 1, 1, 4, 4);
    t.k = TensorView::bhsd(
        t.k.buffer.clone(),
        DType::F32,
        [1, 1, wgpu_attention::validate::MAX_SEQ, 4],
    );
    let e = invalid(run(ctx, &t, &AttentionOptions::default()));
    assert_eq!(e.tensor, TensorRole::Key);
    assert!(matches!(e.problem, InputProblem::TooLarge { .. }), "{e}");
}

#[test]
fn zero_sized_block_mask_and_merge() {
    let ctx = ctx();
    let m = ctx.upload_bool(&[true; 4], [1, 1, 2, 2]).unwrap();
    let empty = TensorView::bhsd(m.buffer().clone(), DType::Bool, [1, 1, 0, 2]);
    let e = invalid(ctx.block_mask(&empty).unwrap_err());
    assert_eq!(e.problem, InputProblem::ZeroDim { dim: Dim::Seq });
    let o = ctx.upload_f32(&[1.0; 4], [1, 1, 1, 4]).unwrap();
    let l = ctx.upload_f32(&[0.0], [1, 1, 1, 1]).unwrap();
    let out = TensorView::bhsd(ctx.buffer_from_f32(&[0.0; 4]), DType::F32, [1, 1, 1, 0]);
    let e = invalid(ctx.merge(&[(o.view(), l.view())], &out, None).unwrap_err());
    assert_eq!(e.problem, InputProblem::ZeroDim { dim: Dim::HeadDim });
}
