//! What LLM and speech inference need: GQA, the decode path (key splits), log-sum-exp
//! outputs and merging partial results, bf16, packed variable-length batches, KV caches.
//! All against the f64 reference, in combination with masks and dtypes.

mod common;

use common::*;
use wgpu_attention::reference::{self, HostMask, HostTensor};
use wgpu_attention::{
    AttentionOptions, Backend, CausalAlignment, DType, Mask, Tensor, TensorView, Varlen, Window,
};

fn decode_masks(b: usize, h: usize, sq: usize, sk: usize) -> Vec<MaskSpec> {
    vec![
        MaskSpec::default(),
        MaskSpec {
            causal: Some(CausalAlignment::BottomRight),
            key_lengths: Some((0..b).map(|i| [sk, sk / 3, 1, 0][i % 4] as u32).collect()),
            ..Default::default()
        },
        MaskSpec {
            window: Some(Window {
                left: Some(700),
                right: Some(0),
            }),
            alignment: CausalAlignment::BottomRight,
            alibi: Some((0..h).map(|i| 0.01 * (i + 1) as f32).collect()),
            ..Default::default()
        },
        MaskSpec {
            bool_mask: Some((random_bool(b * sq * sk, 3, 0.6), [b, 1, sq, sk])),
            bias: Some((random(h * sq * sk, 4), [1, h, sq, sk], DType::F16)),
            ..Default::default()
        },
    ]
}

/// GQA x mask x decode x dtype: Auto picks the decode path for few queries over long keys.
#[test]
fn decode_gqa_masks_dtypes() {
    let ctx = ctx();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for &(b, sq, sk) in &[(2usize, 1usize, 1500usize), (1, 5, 1100), (3, 8, 1024)] {
            for (mi, mask) in decode_masks(b, 8, sq, sk).into_iter().enumerate() {
                let mut c = Case::new(b, 8, sq, sk, 64).dtype(dtype).mask(mask);
                c.hkv = 2;
                c.seed = mi as u64 + sq as u64;
                c.lse = mi % 2 == 0;
                let p = ctx
                    .plan_problem(
                        &wgpu_attention::Problem {
                            heads_kv: 2,
                            ..wgpu_attention::Problem::new(b, 8, sq, sk, 64)
                        },
                        &Default::default(),
                    )
                    .unwrap();
                assert_eq!(p.backend, Backend::Decode, "{}", p.reason);
                assert!(p.key_splits >= 2);
                check(ctx, &c);
            }
        }
    }
}

/// Forcing the decode path on a short sequence, and with a large head dim.
#[test]
fn decode_forced_and_large_head_dim() {
    let ctx = ctx();
    check(ctx, &Case::new(1, 2, 3, 40, 16).backend(Backend::Decode));
    let mut c = Case::new(1, 2, 2, 1300, 300).backend(Backend::Decode);
    c.lse = true;
    check(ctx, &c);
}

/// Every backend writes the log-sum-exp, masks included (fully masked rows give -inf).
#[test]
fn lse_output_every_backend() {
    let ctx = ctx();
    for backend in [Backend::Flash, Backend::MemoryEfficient, Backend::Naive] {
        for dtype in [DType::F32, DType::F16] {
            let mask = MaskSpec {
                causal: Some(CausalAlignment::TopLeft),
                query_lengths: Some(vec![20, 7]),
                key_lengths: Some(vec![33, 0]),
                bias: Some((random(2 * 2 * 29 * 33, 9), [2, 2, 29, 33], DType::F32)),
                ..Default::default()
            };
            let mut c = Case::new(2, 2, 29, 33, 40)
                .backend(backend)
                .dtype(dtype)
                .mask(mask);
            c.lse = true;
            check(ctx, &c);
        }
    }
}

/// Attention of `q` over disjoint key ranges of one K/V buffer, each with its log-sum-exp:
/// the partial results a context-parallel run would produce. Returns the parts and the
/// host data (q, k, v) for the reference.
#[allow(clippy::type_complexity)]
fn partials(
    shape: (usize, usize, usize, usize),
    ranges: &[(usize, DType)],
    seed: u64,
) -> (Vec<(Tensor, Tensor)>, [Vec<f32>; 3], usize) {
    let ctx = ctx();
    let (b, h, sq, d) = shape;
    let total: usize = ranges.iter().map(|r| r.0).sum();
    let qh = random(b * h * sq * d, seed);
    let kh = random(b * h * total * d, seed + 1);
    let vh = random(b * h * total * d, seed + 2);
    let q = ctx.upload_f32(&qh, [b, h, sq, d]).unwrap();
    let (kb, vb) = (
        buffer_of(ctx, &kh, DType::F32),
        buffer_of(ctx, &vh, DType::F32),
    );
    let strides = [h * total * d, total * d, d, 1];
    let mut parts = Vec::new();
    let mut start = 0;
    for &(n, out_dtype) in ranges {
        let off = (start * d * 4) as u64;
        let k = kb.reshaped(DType::F32, [b, h, n, d], strides, off);
        let v = vb.reshaped(DType::F32, [b, h, n, d], strides, off);
        let lse = nan_output(ctx, [b, h, sq, 1], DType::F32);
        let out = nan_output(ctx, [b, h, sq, d], out_dtype);
        let opts = AttentionOptions::default().lse_output(lse.view().clone());
        ctx.attention_into_blocking(q.view(), k.view(), v.view(), out.view(), &opts)
            .unwrap();
        parts.push((out, lse));
        start += n;
    }
    (parts, [qh, kh, vh], total)
}

fn full_reference(
    shape: (usize, usize, usize, usize),
    host: &[Vec<f32>; 3],
    total: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (b, h, sq, d) = shape;
    reference::attention_with_lse(
        &HostTensor {
            data: &host[0],
            shape: [b, h, sq, d],
        },
        &HostTensor {
            data: &host[1],
            shape: [b, h, total, d],
        },
        &HostTensor {
            data: &host[2],
            shape: [b, h, total, d],
        },
        1.0 / (d as f64).sqrt(),
        &HostMask::default(),
    )
}

/// Three partial results over disjoint key sets merge into the full result, with its lse.
#[test]
fn merge_three_partials() {
    let ctx = ctx();
    let shape = (2, 3, 17, 24);
    let (parts, host, total) = partials(
        shape,
        &[(13, DType::F32), (29, DType::F16), (7, DType::F32)],
        1,
    );
    let (b, h, sq, d) = shape;
    let merged = nan_output(ctx, [b, h, sq, d], DType::F32);
    let merged_lse = nan_output(ctx, [b, h, sq, 1], DType::F32);
    let pairs: Vec<(&TensorView, &TensorView)> =
        parts.iter().map(|(o, l)| (o.view(), l.view())).collect();
    ctx.merge_blocking(&pairs, merged.view(), Some(merged_lse.view()))
        .unwrap();
    let (want, want_lse) = full_reference(shape, &host, total);
    // One part was stored in f16: the merged f32 result carries its rounding.
    assert_within(
        &ctx.download_f32_blocking(merged.view()).unwrap(),
        &want,
        tolerance_for(DType::F32, DType::F16),
        "merge of three partials",
    );
    assert_close(
        &ctx.download_f32_blocking(merged_lse.view()).unwrap(),
        &want_lse,
        DType::F32,
        "merged lse",
    );
}

/// Three f32 partials merge within the f32 tolerance.
#[test]
fn merge_exactly_three_f32_partials_within_f32_tolerance() {
    let ctx = ctx();
    let shape = (1, 2, 9, 16);
    let (parts, host, total) = partials(
        shape,
        &[(20, DType::F32), (25, DType::F32), (15, DType::F32)],
        11,
    );
    let (b, h, sq, d) = shape;
    let merged = nan_output(ctx, [b, h, sq, d], DType::F32);
    let pairs: Vec<(&TensorView, &TensorView)> =
        parts.iter().map(|(o, l)| (o.view(), l.view())).collect();
    ctx.merge_blocking(&pairs, merged.view(), None).unwrap();
    let (want, _) = full_reference(shape, &host, total);
    assert_close(
        &ctx.download_f32_blocking(merged.view()).unwrap(),
        &want,
        DType::F32,
        "merge of three f32 partials",
    );
}

/// bf16 storage for Q, K, V, bias and output on every backend.
#[test]
fn bf16_every_backend() {
    let ctx = ctx();
    for backend in [Backend::Flash, Backend::MemoryEfficient, Backend::Naive] {
        let mask = MaskSpec {
            causal: Some(CausalAlignment::BottomRight),
            bias: Some((random(2 * 21 * 37, 5), [1, 2, 21, 37], DType::BF16)),
            ..Default::default()
        };
        let mut c = Case::new(2, 2, 21, 37, 64)
            .backend(backend)
            .dtype(DType::BF16)
            .mask(mask);
        c.layout = Layout::Bshd;
        check(ctx, &c);
    }
}

/// Packed variable-length batches: each sequence equals its own unpadded run.
#[test]
fn varlen_matches_per_sequence_reference() {
    let ctx = ctx();
    let (h, hkv, d) = (4, 2, 32);
    let q_lens = [5u32, 0, 70, 1, 33];
    let k_lens = [9u32, 4, 70, 1, 65];
    let vl = Varlen::from_lengths(&q_lens, &k_lens);
    let tq = *vl.cu_seqlens_q.last().unwrap() as usize;
    let tk = *vl.cu_seqlens_k.last().unwrap() as usize;
    for backend in [Backend::Flash, Backend::MemoryEfficient, Backend::Naive] {
        for (causal, window) in [
            (false, None),
            (
                true,
                Some(Window {
                    left: Some(8),
                    right: None,
                }),
            ),
        ] {
            let qh = random(tq * h * d, 1); // packed [total, heads, dim]
            let kh = random(tk * hkv * d, 2);
            let vh = random(tk * hkv * d, 3);
            let q = packed_varlen(ctx, &qh, tq, h, d);
            let k = packed_varlen(ctx, &kh, tk, hkv, d);
            let v = packed_varlen(ctx, &vh, tk, hkv, d);
            let out = packed_varlen(ctx, &vec![f32::NAN; tq * h * d], tq, h, d);
            let mut mask = Mask::none();
            if causal {
                mask = mask.causal(CausalAlignment::BottomRight);
            }
            if let Some(w) = window {
                mask = mask.window(w.left, w.right);
            }
            let opts = AttentionOptions::with_mask(mask)
                .backend(backend)
                .varlen(vl.clone());
            ctx.attention_into_blocking(&q, &k, &v, &out, &opts)
                .unwrap();
            let got = ctx.download_f32_blocking(&out).unwrap(); // logical [1, h, tq, d]
            let mask = HostMask {
                causal,
                alignment: CausalAlignment::BottomRight,
                window,
                ..Default::default()
            };
            let want = varlen_reference(&vl, (h, hkv, d), [&qh, &kh, &vh], &mask);
            assert_close(
                &got,
                &want,
                DType::F32,
                &format!("varlen {backend:?} causal={causal}"),
            );
        }
    }
}

/// Bad varlen descriptions are typed errors.
#[test]
fn varlen_validation() {
    let ctx = ctx();
    let t = packed_varlen(ctx, &vec![0.5; 10 * 2 * 8], 10, 2, 8);
    use wgpu_attention::error::{InputProblem, TensorRole};
    let vl = |q: &[u32], k: &[u32]| Varlen::new(q.to_vec(), k.to_vec());
    let bad = [
        // Past the packed rows.
        (vl(&[0, 4, 11], &[0, 4, 10]), TensorRole::CuSeqlensQ),
        // Short of them: rows 8 and 9 would be left unwritten.
        (vl(&[0, 4, 8], &[0, 4, 10]), TensorRole::CuSeqlensQ),
        (vl(&[0, 4, 10], &[0, 4, 11]), TensorRole::CuSeqlensK),
        (vl(&[0, 6, 4], &[0, 4, 10]), TensorRole::CuSeqlensQ),
        (vl(&[1, 4, 10], &[0, 4, 10]), TensorRole::CuSeqlensQ),
        (vl(&[0, 4, 10], &[0, 5, 4]), TensorRole::CuSeqlensK),
        (vl(&[0, 10], &[0, 4, 10]), TensorRole::CuSeqlensK),
        (vl(&[10], &[10]), TensorRole::CuSeqlensQ),
        (vl(&[], &[]), TensorRole::CuSeqlensQ),
    ];
    for (vl, role) in bad {
        let opts = AttentionOptions::default().varlen(vl.clone());
        match ctx.attention_blocking(&t, &t, &t, &opts) {
            Err(wgpu_attention::Error::InvalidInput(e)) => {
                assert_eq!(e.tensor, role, "{vl:?}: {e}");
                let msg = e.to_string();
                assert!(!msg.contains("one per batch"), "{msg}");
                if let InputProblem::CumulativeEnd { end, rows } = e.problem {
                    assert_eq!(rows, 10, "{msg}");
                    assert_ne!(end, 10, "{msg}");
                    assert!(msg.contains("last"), "{msg}");
                }
            }
            other => panic!("{vl:?}: {other:?}"),
        }
    }
    // Key rows past cu_seqlens_k's end are spare room, never read: allowed.
    let spare = AttentionOptions::default().varlen(vl(&[0, 4, 10], &[0, 4, 9]));
    ctx.attention_blocking(&t, &t, &t, &spare)
        .expect("K/V rows past cu_seqlens_k's end are spare");
}

/// A KV cache filled in chunks on the GPU: each chunk of new queries attends over the cache
/// (per-batch lengths, bottom-right causal), checked against the reference.
#[test]
fn kv_cache_chunks_match_reference() {
    let ctx = ctx();
    let (b, hq, hkv, d, cap) = (2, 4, 2, 32, 40);
    for dtype in [DType::F32, DType::F16] {
        let mut cache = wgpu_attention::KvCache::new(ctx, b, hkv, cap, d, dtype).unwrap();
        let mut k_all: Vec<Vec<f32>> = vec![vec![]; b * hkv];
        let mut v_all: Vec<Vec<f32>> = vec![vec![]; b * hkv];
        for (step, n) in [3usize, 1, 4, 1].into_iter().enumerate() {
            let kh = round_to(dtype, &random(b * hkv * n * d, 10 + step as u64));
            let vh = round_to(dtype, &random(b * hkv * n * d, 20 + step as u64));
            let qh = round_to(dtype, &random(b * hq * n * d, 30 + step as u64));
            for bh in 0..b * hkv {
                k_all[bh].extend_from_slice(&kh[bh * n * d..(bh + 1) * n * d]);
                v_all[bh].extend_from_slice(&vh[bh * n * d..(bh + 1) * n * d]);
            }
            let kv_shape = [b, hkv, n, d];
            cache
                .append_blocking(
                    ctx,
                    upload(ctx, &kh, kv_shape, dtype, Layout::Bhsd).view(),
                    upload(ctx, &vh, kv_shape, dtype, Layout::Bhsd).view(),
                )
                .unwrap();
            let q = upload(ctx, &qh, [b, hq, n, d], dtype, Layout::Bhsd);
            let out = nan_output(ctx, [b, hq, n, d], DType::F32);
            let opts = AttentionOptions::with_mask(cache.mask()).output_dtype(DType::F32);
            ctx.attention_into_blocking(
                q.view(),
                &cache.keys(),
                &cache.values(),
                out.view(),
                &opts,
            )
            .unwrap();
            let len = cache.lengths()[0] as usize;
            let (kf, vf) = (k_all.concat(), v_all.concat());
            let want = reference::attention(
                &HostTensor {
                    data: &qh,
                    shape: [b, hq, n, d],
                },
                &HostTensor {
                    data: &kf,
                    shape: [b, hkv, len, d],
                },
                &HostTensor {
                    data: &vf,
                    shape: [b, hkv, len, d],
                },
                1.0 / (d as f64).sqrt(),
                &HostMask {
                    causal: true,
                    alignment: CausalAlignment::BottomRight,
                    ..Default::default()
                },
            );
            assert_close(
                &ctx.download_f32_blocking(out.view()).unwrap(),
                &want,
                DType::F32,
                &format!("{dtype} chunk {step}"),
            );
        }
        assert_eq!(cache.lengths(), &[9, 9]);
        // Appending past the capacity is a typed error, and changes nothing.
        let big = upload(
            ctx,
            &random(b * hkv * 32 * d, 5),
            [b, hkv, 32, d],
            dtype,
            Layout::Bhsd,
        );
        match cache.append_blocking(ctx, big.view(), big.view()) {
            Err(wgpu_attention::Error::InvalidInput(e)) => {
                assert_eq!(e.tensor, wgpu_attention::error::TensorRole::KvCache);
                assert!(
                    matches!(
                        e.problem,
                        wgpu_attention::error::InputProblem::LengthTooLong {
                            len: 41,
                            max: 40,
                            ..
                        }
                    ),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cache.lengths(), &[9, 9]);
    }
}
