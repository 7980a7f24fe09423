//! One rejection per check of the validation that guards the calls other than attention
//! itself (`plan::validate`'s merge, KV-cache, block-summary and download checks) and of
//! the check that keeps outputs and gradients out of a block summary's buffer: each names
//! the tensor and the problem, and deleting or weakening a check fails one of these (most
//! would otherwise let bad input through as `Ok`). `tests/errors.rs` does the same for the
//! attention and backward calls.

mod common;

use common::*;
use wgpu_attention::error::{Dim, InputProblem, InvalidInput, TensorRole};
use wgpu_attention::{
    AttentionOptions, BackwardInputs, Context, DType, Error, GradientViews, KvCache, Mask, Tensor,
    TensorView,
};

fn invalid(what: &str, r: Result<impl std::fmt::Debug, Error>) -> InvalidInput {
    match r {
        Err(Error::InvalidInput(i)) => i,
        other => panic!("{what}: expected InvalidInput, got {other:?}"),
    }
}

fn view(t: &Tensor, dtype: DType, shape: [usize; 4], offset: u64) -> Tensor {
    t.reshaped(dtype, shape, bhsd_strides(shape), offset)
}

/// A buffer of our own with `usage`, as a tensor (made under the device lock, and dropped
/// by the tensor under it: GL, see `Context::lock_device`).
fn raw(ctx: &Context, bytes: u64, usage: wgpu::BufferUsages, dtype: DType) -> Tensor {
    let _held = ctx.lock_device();
    let buf = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage,
        mapped_at_creation: false,
    });
    let n = (bytes / dtype.size()) as usize;
    Tensor::from_view(TensorView::bhsd(buf, dtype, [1, 1, 1, n]))
}

/// Two partial results of b=1, h=2, s=4, dv=8 (O and log-sum-exp each) and an output.
struct Parts {
    o: [Tensor; 2],
    l: [Tensor; 2],
    out: Tensor,
    lse_out: Tensor,
}

fn parts(ctx: &Context) -> Parts {
    let o = |seed| ctx.upload_f32(&random(64, seed), [1, 2, 4, 8]).unwrap();
    let l = |seed| ctx.upload_f32(&random(8, seed), [1, 2, 4, 1]).unwrap();
    Parts {
        o: [o(1), o(2)],
        l: [l(3), l(4)],
        out: nan_output(ctx, [1, 2, 4, 8], DType::F32),
        lse_out: nan_output(ctx, [1, 2, 4, 1], DType::F32),
    }
}

#[test]
fn every_merge_check_names_its_tensor() {
    use InputProblem as P;
    use TensorRole::*;
    let ctx = ctx();
    let p = parts(ctx);
    let good = |p: &Parts| {
        ctx.merge_blocking(
            &[
                (p.o[0].view(), p.l[0].view()),
                (p.o[1].view(), p.l[1].view()),
            ],
            p.out.view(),
            Some(p.lse_out.view()),
        )
    };
    good(&p).expect("a good merge");
    let merge =
        |what: &str, pairs: &[(&Tensor, &Tensor)], out: &Tensor, lse_out: Option<&Tensor>| {
            let pairs: Vec<(&TensorView, &TensorView)> =
                pairs.iter().map(|(o, l)| (o.view(), l.view())).collect();
            invalid(
                what,
                ctx.merge_blocking(&pairs, out.view(), lse_out.map(|t| t.view())),
            )
        };
    // The two parts with part `i` replaced.
    let with = |i: usize, o: &Tensor, l: &Tensor| {
        let mut x = vec![
            (p.o[0].clone(), p.l[0].clone()),
            (p.o[1].clone(), p.l[1].clone()),
        ];
        x[i] = (o.clone(), l.clone());
        x
    };
    let run = |what: &str, x: &[(Tensor, Tensor)], out: &Tensor, lse_out: Option<&Tensor>| {
        let pairs: Vec<(&Tensor, &Tensor)> = x.iter().map(|(a, b)| (a, b)).collect();
        merge(what, &pairs, out, lse_out)
    };
    let all: Vec<(Tensor, Tensor)> = with(0, &p.o[0], &p.l[0]);

    // No part at all.
    let e = merge("no parts", &[], &p.out, None);
    assert_eq!(e.tensor, Lse);
    assert!(
        matches!(
            e.problem,
            P::WrongCount {
                expected: 1,
                got: 0,
                ..
            }
        ),
        "{e}"
    );
    // The output: a zero size, an integer dtype, past its buffer, writing one element twice.
    let e = run(
        "zero-sized out",
        &all,
        &view(&p.out, DType::F32, [1, 2, 0, 8], 0),
        None,
    );
    assert_eq!(
        (e.tensor, e.problem),
        (Output, P::ZeroDim { dim: Dim::Seq })
    );
    let e = run(
        "bool out",
        &all,
        &view(&p.out, DType::Bool, [1, 2, 4, 8], 0),
        None,
    );
    assert_eq!(e.tensor, Output);
    assert!(matches!(e.problem, P::WrongDType { .. }), "{e}");
    let e = run(
        "out past its buffer",
        &all,
        &view(&p.out, DType::F32, [1, 2, 4, 8], 64),
        None,
    );
    assert_eq!(e.tensor, Output);
    assert!(matches!(e.problem, P::OutOfBounds { .. }), "{e}");
    let e = run(
        "out writing twice",
        &all,
        &p.out.reshaped(DType::F32, [1, 2, 4, 8], [64, 0, 8, 1], 0),
        None,
    );
    assert_eq!(
        (e.tensor, e.problem),
        (Output, P::OverlappingOutput { dim: Dim::Heads })
    );
    // The merged log-sum-exp: f16, the wrong shape, writing twice, overlapping the output.
    let lse16 = nan_output(ctx, [1, 2, 4, 1], DType::F16);
    let e = run("f16 lse_out", &all, &p.out, Some(&lse16));
    assert_eq!(e.tensor, Lse);
    assert!(matches!(e.problem, P::WrongDType { .. }), "{e}");
    let e = run(
        "lse_out seq",
        &all,
        &p.out,
        Some(&view(&p.lse_out, DType::F32, [1, 2, 3, 1], 0)),
    );
    assert_eq!(e.tensor, Lse);
    assert!(
        matches!(
            e.problem,
            P::ShapeMismatch {
                dim: Dim::Seq,
                got: 3,
                ..
            }
        ),
        "{e}"
    );
    let e = run(
        "lse_out writing twice",
        &all,
        &p.out,
        Some(
            &p.lse_out
                .reshaped(DType::F32, [1, 2, 4, 1], [8, 4, 0, 1], 0),
        ),
    );
    assert_eq!(
        (e.tensor, e.problem),
        (Lse, P::OverlappingOutput { dim: Dim::Seq })
    );
    let e = run(
        "lse_out over out",
        &all,
        &p.out,
        Some(&view(&p.out, DType::F32, [1, 2, 4, 1], 0)),
    );
    assert_eq!(
        (e.tensor, e.problem),
        (Lse, P::OutputAliasesInput { input: Output })
    );
    // A part: an integer dtype, another shape, past its buffer; its log-sum-exp in f16, of
    // another shape, without storage usage.
    let e = run(
        "bool part",
        &with(1, &view(&p.o[1], DType::Bool, [1, 2, 4, 8], 0), &p.l[1]),
        &p.out,
        None,
    );
    assert_eq!(e.tensor, Output);
    assert!(matches!(e.problem, P::WrongDType { .. }), "{e}");
    let e = run(
        "part dv",
        &with(1, &view(&p.o[1], DType::F32, [1, 2, 4, 7], 0), &p.l[1]),
        &p.out,
        None,
    );
    assert_eq!(e.tensor, Output);
    assert!(
        matches!(
            e.problem,
            P::ShapeMismatch {
                dim: Dim::HeadDim,
                got: 7,
                ..
            }
        ),
        "{e}"
    );
    let e = run(
        "part past its buffer",
        &with(0, &view(&p.o[0], DType::F32, [1, 2, 4, 8], 4), &p.l[0]),
        &p.out,
        None,
    );
    assert_eq!(e.tensor, Output);
    assert!(matches!(e.problem, P::OutOfBounds { .. }), "{e}");
    let e = run(
        "f16 part lse",
        &with(1, &p.o[1], &view(&p.l[1], DType::F16, [1, 2, 4, 1], 0)),
        &p.out,
        None,
    );
    assert_eq!(e.tensor, Lse);
    assert!(matches!(e.problem, P::WrongDType { .. }), "{e}");
    let e = run(
        "part lse heads",
        &with(1, &p.o[1], &view(&p.l[1], DType::F32, [1, 1, 4, 1], 0)),
        &p.out,
        None,
    );
    assert_eq!(e.tensor, Lse);
    assert!(
        matches!(
            e.problem,
            P::ShapeMismatch {
                dim: Dim::Heads,
                got: 1,
                ..
            }
        ),
        "{e}"
    );
    let copy_only = raw(ctx, 32, wgpu::BufferUsages::COPY_DST, DType::F32);
    let e = run(
        "part lse without storage",
        &with(1, &p.o[1], &view(&copy_only, DType::F32, [1, 2, 4, 1], 0)),
        &p.out,
        None,
    );
    assert_eq!(e.tensor, Lse);
    assert!(matches!(e.problem, P::MissingUsage { .. }), "{e}");
    // The outputs over a part's O or log-sum-exp.
    let e = run("out over a part", &all, &p.o[1], None);
    assert_eq!(
        (e.tensor, e.problem),
        (Output, P::OutputAliasesInput { input: Output })
    );
    let e = run("lse_out over a part's lse", &all, &p.out, Some(&p.l[0]));
    assert_eq!(
        (e.tensor, e.problem),
        (Output, P::OutputAliasesInput { input: Lse })
    );
    drop(copy_only);
    // Still fine.
    good(&p).expect("the device survives");
}

#[test]
fn every_kv_cache_check_names_the_cache() {
    use InputProblem as P;
    let ctx = ctx();
    let role = TensorRole::KvCache;
    // Making one: an integer dtype, a zero size, rows that are not whole words, too large.
    let e = invalid("bool cache", KvCache::new(ctx, 1, 2, 8, 4, DType::Bool));
    assert_eq!(e.tensor, role);
    assert!(matches!(e.problem, P::WrongDType { .. }), "{e}");
    let e = invalid("zero capacity", KvCache::new(ctx, 1, 2, 0, 4, DType::F32));
    assert_eq!(e.tensor, role);
    assert!(e.to_string().contains("capacity 0"), "{e}");
    let e = invalid("f16 rows of 3", KvCache::new(ctx, 1, 2, 8, 3, DType::F16));
    assert_eq!(e.tensor, role);
    assert!(e.to_string().contains("head_dim 3"), "{e}");
    match KvCache::new(ctx, 1 << 20, 64, 1 << 20, 256, DType::F32) {
        Err(Error::Unsupported(u)) => assert!(u.to_string().contains("max_buffer_size"), "{u}"),
        other => panic!("too large a cache: {other:?}"),
    }
    // Appending to one of b=1, h=2, capacity 8, d=4: the wrong dtype, shape, a strided or
    // unaligned view, a buffer that cannot be copied from, more rows than fit.
    let mut cache = KvCache::new(ctx, 1, 2, 8, 4, DType::F32).unwrap();
    let rows = ctx.upload_f32(&random(64, 5), [1, 2, 8, 4]).unwrap();
    let three = view(&rows, DType::F32, [1, 2, 3, 4], 0);
    let mut append = |what: &str, k: &Tensor| invalid(what, cache.append_blocking(ctx, k, &three));
    let e = append("f16 rows", &view(&rows, DType::F16, [1, 2, 3, 4], 0));
    assert_eq!(e.tensor, role);
    assert!(matches!(e.problem, P::WrongDType { .. }), "{e}");
    let e = append("rows of 3 heads", &view(&rows, DType::F32, [1, 3, 3, 4], 0));
    assert_eq!(e.tensor, role);
    assert!(
        matches!(
            e.problem,
            P::ShapeMismatch {
                dim: Dim::Heads,
                got: 3,
                ..
            }
        ),
        "{e}"
    );
    let strided = rows.reshaped(DType::F32, [1, 2, 3, 4], [64, 32, 8, 1], 0);
    let e = append("strided rows", &strided);
    assert!(e.to_string().contains("contiguous"), "{e}");
    let e = append("unaligned rows", &view(&rows, DType::F32, [1, 2, 3, 4], 2));
    assert!(e.to_string().contains("aligned"), "{e}");
    let storage_only = raw(ctx, 256, wgpu::BufferUsages::STORAGE, DType::F32);
    let e = append(
        "rows without COPY_SRC",
        &view(&storage_only, DType::F32, [1, 2, 3, 4], 0),
    );
    assert_eq!(e.tensor, role);
    assert!(matches!(e.problem, P::MissingUsage { .. }), "{e}");
    cache
        .append_blocking(ctx, &three, &three)
        .expect("three rows fit");
    cache
        .append_blocking(ctx, &three, &three)
        .expect("six rows fit");
    let e = invalid(
        "rows beyond capacity",
        cache.append_blocking(ctx, &three, &three),
    );
    assert_eq!(e.tensor, role);
    assert_eq!(
        e.problem,
        P::LengthTooLong {
            batch: 0,
            len: 9,
            max: 8
        }
    );
    assert_eq!(cache.lengths(), &[6]);
    drop(storage_only);
}

#[test]
fn block_mask_and_download_checks() {
    let ctx = ctx();
    let f = ctx.upload_f32(&random(16, 1), [1, 1, 4, 4]).unwrap();
    let e = invalid("a float block mask", ctx.block_mask_blocking(f.view()));
    assert_eq!(e.tensor, TensorRole::BoolMask);
    assert!(matches!(e.problem, InputProblem::WrongDType { .. }), "{e}");
    let copy_only = raw(ctx, 64, wgpu::BufferUsages::COPY_DST, DType::Bool);
    let e = invalid(
        "a block mask without storage",
        ctx.block_mask_blocking(view(&copy_only, DType::Bool, [1, 1, 4, 4], 0).view()),
    );
    assert_eq!(e.tensor, TensorRole::BoolMask);
    assert!(
        matches!(e.problem, InputProblem::MissingUsage { .. }),
        "{e}"
    );
    let b = ctx.upload_bool(&[true; 16], [1, 1, 4, 4]).unwrap();
    let e = invalid("a bool download", ctx.download_f32_blocking(b.view()));
    assert_eq!(e.tensor, TensorRole::Download);
    assert!(matches!(e.problem, InputProblem::WrongDType { .. }), "{e}");
    drop(copy_only);
}

/// An output, a log-sum-exp or a gradient placed in the buffer of the block summary the call
/// reads is refused, naming it (the summary is an input the kernels read while they write).
#[test]
fn outputs_in_the_block_summary_buffer_are_refused() {
    let ctx = ctx();
    // A mask of 8 x 512: 64 blocks of 8 keys, 256 bytes of summary, the size of an
    // [1, 1, 8, 8] f32 tensor.
    let (sq, sk, d) = (8, 512, 8);
    let q = ctx.upload_f32(&random(sq * d, 1), [1, 1, sq, d]).unwrap();
    let k = ctx.upload_f32(&random(sk * d, 2), [1, 1, sk, d]).unwrap();
    let v = ctx.upload_f32(&random(sk * d, 3), [1, 1, sk, d]).unwrap();
    let bools: Vec<bool> = (0..sq * sk).map(|i| i % 3 != 0).collect();
    let m = ctx.upload_bool(&bools, [1, 1, sq, sk]).unwrap();
    let summary = ctx.block_mask_blocking(m.view()).unwrap();
    assert!(
        summary.buffer().size() >= (sq * d * 4) as u64,
        "{}",
        summary.buffer().size()
    );
    let in_summary = |shape: [usize; 4]| {
        Tensor::from_view(TensorView::bhsd(
            summary.buffer().clone(),
            DType::F32,
            shape,
        ))
    };
    let opts = AttentionOptions::with_mask(
        Mask::none().bool_mask_with_summary(m.view().clone(), summary.clone()),
    );
    let out = nan_output(ctx, [1, 1, sq, d], DType::F32);
    let lse = nan_output(ctx, [1, 1, sq, 1], DType::F32);
    ctx.attention_into_blocking(
        &q,
        &k,
        &v,
        &out,
        &opts.clone().lse_output(lse.view().clone()),
    )
    .expect("a good call");
    let bad_out = in_summary([1, 1, sq, d]);
    let e = invalid(
        "output in the summary",
        ctx.attention_into_blocking(&q, &k, &v, &bad_out, &opts),
    );
    assert_eq!(
        (e.tensor, e.problem),
        (
            TensorRole::Output,
            InputProblem::OutputAliasesInput {
                input: TensorRole::BoolMask
            }
        )
    );
    let bad_lse = in_summary([1, 1, sq, 1]);
    let e = invalid(
        "log-sum-exp in the summary",
        ctx.attention_into_blocking(
            &q,
            &k,
            &v,
            &out,
            &opts.clone().lse_output(bad_lse.view().clone()),
        ),
    );
    assert_eq!(
        (e.tensor, e.problem),
        (
            TensorRole::Lse,
            InputProblem::OutputAliasesInput {
                input: TensorRole::BoolMask
            }
        )
    );
    // The backward: dQ there.
    let d_out = ctx.upload_f32(&random(sq * d, 4), [1, 1, sq, d]).unwrap();
    let (dk, dv) = (
        nan_output(ctx, [1, 1, sk, d], DType::F32),
        nan_output(ctx, [1, 1, sk, d], DType::F32),
    );
    let inputs = BackwardInputs {
        q: q.view(),
        k: k.view(),
        v: v.view(),
        out: out.view(),
        d_out: d_out.view(),
        lse: lse.view(),
    };
    let grads = |dq: &Tensor| GradientViews {
        dq: dq.view().clone(),
        dk: dk.view().clone(),
        dv: dv.view().clone(),
        dbias: None,
        dsink: None,
    };
    let dq = nan_output(ctx, [1, 1, sq, d], DType::F32);
    ctx.attention_backward_into_blocking(&inputs, &grads(&dq), &opts)
        .expect("a good backward call");
    let e = invalid(
        "dQ in the summary",
        ctx.attention_backward_into_blocking(&inputs, &grads(&bad_out), &opts),
    );
    assert_eq!(
        (e.tensor, e.problem),
        (
            TensorRole::QueryGrad,
            InputProblem::OutputAliasesInput {
                input: TensorRole::BoolMask
            }
        )
    );
    drop((bad_out, bad_lse));
}

/// cu_seqlens with fewer than two entries is a count error naming `cu_seqlens_q` (with its
/// count); exactly two, one packed sequence, runs. (A mutation of the count check survived
/// the role-only assertions of the other varlen tests.)
#[test]
fn varlen_needs_two_cumulative_entries() {
    use wgpu_attention::Varlen;
    let ctx = ctx();
    let t = packed_varlen(ctx, &random(10 * 2 * 8, 1), 10, 2, 8);
    for cu in [vec![], vec![0]] {
        let opts = AttentionOptions::default().varlen(Varlen::new(cu.clone(), cu.clone()));
        let e = invalid(
            "short cu_seqlens",
            ctx.attention_blocking(&t, &t, &t, &opts),
        );
        assert_eq!(e.tensor, TensorRole::CuSeqlensQ);
        assert!(
            matches!(e.problem, InputProblem::WrongCount { expected: 2, got, .. } if got == cu.len()),
            "{e}"
        );
    }
    let one = AttentionOptions::default().varlen(Varlen::new(vec![0, 10], vec![0, 10]));
    ctx.attention_blocking(&t, &t, &t, &one)
        .expect("one packed sequence");
}

/// Each cu_seqlens check with the problem it names, so that one check cannot stand in for
/// another (the role alone could not tell them apart: a mutation run found four checks'
/// mutants surviving): a start past 0, a decrease, Q ending short of its rows; and what is
/// allowed: an empty sequence (two equal ends), K/V rows past cu_seqlens_k's end.
#[test]
fn every_varlen_check_names_its_problem() {
    use wgpu_attention::Varlen;
    let ctx = ctx();
    let t = packed_varlen(ctx, &random(10 * 2 * 8, 2), 10, 2, 8);
    let run = |q: &[u32], k: &[u32]| {
        let opts = AttentionOptions::default().varlen(Varlen::new(q.to_vec(), k.to_vec()));
        ctx.attention_blocking(&t, &t, &t, &opts)
    };
    let e = invalid("a start past 0", run(&[1, 4, 10], &[0, 4, 10]));
    assert_eq!(e.tensor, TensorRole::CuSeqlensQ);
    assert!(e.to_string().contains("must start at 0"), "{e}");
    let e = invalid("a decrease", run(&[0, 6, 4, 10], &[0, 4, 6, 10]));
    assert_eq!(e.tensor, TensorRole::CuSeqlensQ);
    assert!(e.to_string().contains("never decrease"), "{e}");
    let e = invalid("Q short of its rows", run(&[0, 4, 8], &[0, 4, 10]));
    assert_eq!(
        (e.tensor, e.problem),
        (
            TensorRole::CuSeqlensQ,
            InputProblem::CumulativeEnd { end: 8, rows: 10 }
        )
    );
    run(&[0, 4, 4, 10], &[0, 4, 4, 10]).expect("an empty sequence");
    run(&[0, 4, 10], &[0, 4, 9]).expect("K/V rows past cu_seqlens_k's end are spare");
}
