//! Calls larger than one storage binding run as several calls over batch items, groups of
//! heads, single heads and query rows, and still match the reference: on devices created
//! with a small `max_storage_buffer_binding_size`, every mask kind (including those that
//! depend on a row's index: causal in both alignments, window, ALiBi, query lengths) ×
//! GQA × layout × dtype × backend, with the log-sum-exp output.

mod common;

use common::*;
use wgpu_attention::error::{TensorRole, UnsupportedReason};
use wgpu_attention::{
    AttentionOptions, Backend, CausalAlignment, Context, DType, Error, TensorView, Varlen, Window,
};

/// A context on a device whose storage bindings hold at most `max` bytes.
fn small(max: u64) -> Context {
    let (info, device, queue) = own_device(|l| wgpu::Limits {
        max_storage_buffer_binding_size: max,
        ..l
    });
    let ctx = Context::from_device(device, queue, &info);
    assert_eq!(ctx.caps().max_storage_binding, max);
    ctx
}

/// The masks of the product: none, and combinations covering every kind.
fn masks(b: usize, h: usize, sq: usize, sk: usize) -> Vec<MaskSpec> {
    vec![
        MaskSpec::default(),
        MaskSpec {
            causal: Some(CausalAlignment::TopLeft),
            query_lengths: Some((0..b).map(|i| (sq - 5 * i) as u32).collect()),
            key_lengths: Some((0..b).map(|i| (sk - 9 * i) as u32).collect()),
            ..Default::default()
        },
        MaskSpec {
            causal: Some(CausalAlignment::BottomRight),
            window: Some(Window {
                left: Some(9),
                right: None,
            }),
            key_lengths: Some((0..b).map(|i| (sk - 3 * i) as u32).collect()),
            ..Default::default()
        },
        MaskSpec {
            alignment: CausalAlignment::BottomRight,
            key_lengths: Some((0..b).map(|i| (sk - 7 * i - 2) as u32).collect()),
            alibi: Some((0..h).map(|i| 0.05 * (i + 1) as f32).collect()),
            bias: Some((random(h * sq * sk, 5), [1, h, sq, sk], DType::F32)),
            ..Default::default()
        },
        MaskSpec {
            bool_mask: Some((random_bool(b * sq * sk, 6, 0.6), [b, 1, sq, sk])),
            summary: true,
            window: Some(Window {
                left: Some(20),
                right: Some(4),
            }),
            ..Default::default()
        },
    ]
}

/// Binding limits (bytes) at which the cases below split at each level: batch items,
/// groups of heads, single heads and query rows.
const LEVELS: [(u64, &str); 4] = [
    (24 * 1024, "batch"),
    (12 * 1024, "groups"),
    (6 * 1024, "heads"),
    (3 * 1024, "rows"),
];

#[test]
fn split_calls_match_the_reference() {
    let (b, hq, hkv, sq, sk, d) = (3, 4, 2, 77, 23, 16);
    for (max, level) in LEVELS {
        let ctx = small(max);
        for (mi, mask) in masks(b, hq, sq, sk).into_iter().enumerate() {
            for (li, layout) in [Layout::Bhsd, Layout::Bshd].into_iter().enumerate() {
                let dtype = [DType::F32, DType::F16][(mi + li) % 2];
                let backends = [Backend::Auto, Backend::MemoryEfficient, Backend::Naive];
                let backend = backends[(mi + li + level.len()) % 3];
                let mut c = Case::new(b, hq, sq, sk, d)
                    .dtype(dtype)
                    .backend(backend)
                    .mask(mask.clone());
                c.hkv = hkv;
                c.layout = layout;
                c.lse = mi % 2 == 1;
                c.seed = mi as u64 * 10 + li as u64;
                let label = format!("{level} ({max} bytes): {}", c.label());
                let (got, want, plan) = run_plan(&ctx, &c);
                assert!(plan.parts > 1, "{label}: not split ({plan})");
                if level == "rows" && dtype == DType::F32 {
                    assert!(plan.parts as usize > b * hq, "{label}: {plan}");
                }
                assert_close(&got, &want, c.out_dtype, &label);
            }
        }
    }
}

/// Keys and values of one head too long for a binding (BSHD interleaves the heads): each
/// part runs over chunks of keys, merged by their log-sum-exps.
#[test]
fn key_chunks_match_the_reference() {
    let (b, hq, hkv, sq, sk, d) = (2, 4, 2, 37, 150, 16);
    let ctx = small(6 * 1024);
    for (mi, mask) in masks(b, hq, sq, sk).into_iter().enumerate() {
        for (di, dtype) in [DType::F32, DType::F16].into_iter().enumerate() {
            let backends = [Backend::Auto, Backend::MemoryEfficient, Backend::Naive];
            let mut c = Case::new(b, hq, sq, sk, d)
                .dtype(dtype)
                .backend(backends[(mi + di) % 3])
                .mask(mask.clone());
            c.hkv = hkv;
            c.layout = Layout::Bshd;
            c.lse = (mi + di) % 2 == 0;
            c.seed = 40 + mi as u64;
            let label = format!("key chunks: {}", c.label());
            let (got, want, plan) = run_plan(&ctx, &c);
            assert!(plan.reason.contains("chunks of keys"), "{label}: {plan}");
            assert_close(&got, &want, c.out_dtype, &label);
        }
    }
}

/// The decode path (key splits merged by log-sum-exp) inside a split call.
#[test]
fn split_decode_calls_match_the_reference() {
    let ctx = small(4 * 1024);
    let mut c = Case::new(2, 8, 3, 50, 16).backend(Backend::Decode);
    c.hkv = 2;
    c.lse = true;
    c.mask = MaskSpec {
        causal: Some(CausalAlignment::BottomRight),
        key_lengths: Some(vec![50, 31]),
        ..Default::default()
    };
    let (got, want, plan) = run_plan(&ctx, &c);
    assert!(plan.parts > 1, "{plan}");
    assert_close(&got, &want, DType::F32, &c.label());
}

/// A packed variable-length batch splits over sequences and heads.
#[test]
fn split_varlen_calls_match_the_reference() {
    let ctx = small(3 * 1024);
    let (h, d) = (2, 8);
    let q_lens = [13u32, 1, 22, 9];
    let k_lens = [17u32, 30, 22, 4];
    let vl = Varlen::from_lengths(&q_lens, &k_lens);
    let (tq, tk) = (
        *vl.cu_seqlens_q.last().unwrap() as usize,
        *vl.cu_seqlens_k.last().unwrap() as usize,
    );
    let (qh, kh, vh) = (
        random(tq * h * d, 1),
        random(tk * h * d, 2),
        random(tk * h * d, 3),
    );
    let view = |data: &[f32], t| packed_varlen(&ctx, data, t, h, d);
    let (q, k, v) = (view(&qh, tq), view(&kh, tk), view(&vh, tk));
    let out = view(&vec![f32::NAN; tq * h * d], tq);
    let opts = AttentionOptions::default()
        .mask(wgpu_attention::Mask::none().causal(CausalAlignment::BottomRight))
        .varlen(vl.clone());
    let plan = ctx
        .attention_into_blocking(&q, &k, &v, &out, &opts)
        .unwrap();
    assert!(plan.parts > 1, "{plan}");
    let got = ctx.download_f32_blocking(&out).unwrap();
    let mask = wgpu_attention::reference::HostMask {
        causal: true,
        alignment: CausalAlignment::BottomRight,
        ..Default::default()
    };
    let want = varlen_reference(&vl, (h, h, d), [&qh, &kh, &vh], &mask);
    assert_close(&got, &want, DType::F32, "varlen split");
}

/// When even one key of one head does not fit a binding (here K's head dims lie 1000
/// elements apart), the call is an `Unsupported` error naming the tensor and the binding it
/// needs; `plan` says so too.
#[test]
fn unsplittable_calls_name_the_tensor() {
    let ctx = small(4 * 1024);
    let (sk, d) = (1000, 16);
    let q = ctx.upload_f32(&random(4 * d, 1), [1, 1, 4, d]).unwrap();
    let v = ctx.upload_f32(&random(sk * d, 2), [1, 1, sk, d]).unwrap();
    let k_buf = buffer_of(&ctx, &random(sk * d, 3), DType::F32);
    // Element (key j, dim e) at j + 1000 e: one key spans 15 * 1000 + 1 elements.
    let k = k_buf.reshaped(DType::F32, [1, 1, sk, d], [sk * d, sk * d, 1, sk], 0);
    let opts = AttentionOptions::default();
    for result in [
        ctx.plan(q.view(), &k, v.view(), &opts).map(|_| ()),
        ctx.attention_blocking(q.view(), &k, v.view(), &opts)
            .map(|_| ()),
    ] {
        match result {
            Err(Error::Unsupported(u)) => assert_eq!(
                u.reason,
                UnsupportedReason::Binding {
                    tensor: TensorRole::Key,
                    needed: (15 * 1000 + 1) * 4,
                    available: 4 * 1024
                }
            ),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
}

/// A block summary of a mask larger than one binding is computed in parts, and equals the
/// summary computed in one piece.
#[test]
fn block_mask_of_a_large_mask_splits() {
    let shape = [2, 3, 150, 40];
    let data = random_bool(shape.iter().product(), 12, 0.5);
    // Some blocks all visible and some all masked, not only mixed ones.
    let data: Vec<bool> = data
        .iter()
        .enumerate()
        .map(|(e, &x)| match (e / 40 / 64) % 3 {
            0 => x,
            1 => e % 40 < 16,
            _ => e % 40 >= 24 && x,
        })
        .collect();
    let summary = |ctx: &Context| {
        let mask = ctx.upload_bool(&data, shape).unwrap();
        let s = ctx.block_mask_blocking(mask.view()).unwrap();
        let n = s.buffer().size() as usize / 4;
        let view = TensorView::new(
            s.buffer().clone(),
            DType::F32,
            [1, 1, 1, n],
            [n, n, n, 1],
            0,
        );
        ctx.download_f32_blocking(&view)
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<u32>>()
    };
    let whole = summary(ctx());
    let split = summary(&small(4 * 1024));
    assert_eq!(whole, split);
    for state in 0..3 {
        assert!(whole.contains(&state), "no block in state {state}");
    }
}

/// Merging partial results larger than one binding runs in parts too, and is exact.
#[test]
fn merge_of_large_partials_splits() {
    let ctx = small(2 * 1024);
    let (b, h, sq, sk, d) = (2, 3, 40, 60, 8);
    let (qh, kh, vh) = (
        random(b * h * sq * d, 1),
        random(b * h * sk * d, 2),
        random(b * h * sk * d, 3),
    );
    let q = ctx.upload_f32(&qh, [b, h, sq, d]).unwrap();
    let (k, v) = (
        ctx.upload_f32(&kh, [b, h, sk, d]).unwrap(),
        ctx.upload_f32(&vh, [b, h, sk, d]).unwrap(),
    );
    // Keys 0..20, 20..45 and 45..60 of every batch item and head.
    let keys = |t: &TensorView, k0: usize, n: usize| TensorView {
        offset: (k0 * d * 4) as u64,
        shape: [b, h, n, d],
        ..t.clone()
    };
    let mut partials = Vec::new();
    for (k0, n) in [(0, 20), (20, 25), (45, 15)] {
        let o = nan_output(&ctx, [b, h, sq, d], DType::F32);
        let lse = nan_output(&ctx, [b, h, sq, 1], DType::F32);
        let opts = AttentionOptions::default().lse_output(lse.view().clone());
        ctx.attention_into_blocking(
            q.view(),
            &keys(k.view(), k0, n),
            &keys(v.view(), k0, n),
            &o,
            &opts,
        )
        .unwrap();
        partials.push((o, lse));
    }
    let merged = nan_output(&ctx, [b, h, sq, d], DType::F32);
    let merged_lse = nan_output(&ctx, [b, h, sq, 1], DType::F32);
    let pairs: Vec<_> = partials.iter().map(|(o, l)| (o.view(), l.view())).collect();
    ctx.merge_blocking(&pairs, &merged, Some(&merged_lse))
        .unwrap();
    let t = |data, n| wgpu_attention::reference::HostTensor {
        data,
        shape: [b, h, n, d],
    };
    let (want, want_lse) = wgpu_attention::reference::attention_with_lse(
        &t(&qh, sq),
        &t(&kh, sk),
        &t(&vh, sk),
        1.0 / (d as f64).sqrt(),
        &Default::default(),
    );
    let got = ctx.download_f32_blocking(&merged).unwrap();
    assert_close(&got, &want, DType::F32, "merged");
    let got_lse = ctx.download_f32_blocking(&merged_lse).unwrap();
    assert_close_lse(&got_lse, &want_lse, "merged lse");
}

/// Sinks and the soft cap in calls split over heads and chunks of keys: each part gets its
/// heads' sinks, each sink joins its rows once (in the first chunk of keys, whose
/// log-sum-exp carries it into the merge), and the cap applies in every chunk.
#[test]
fn split_calls_count_each_sink_once() {
    let (b, hq, hkv, sq, sk, d) = (2, 4, 2, 37, 150, 16);
    let ctx = small(6 * 1024);
    for (i, backend) in [Backend::Auto, Backend::MemoryEfficient, Backend::Naive]
        .into_iter()
        .enumerate()
    {
        let mut c = Case::new(b, hq, sq, sk, d).backend(backend);
        c.hkv = hkv;
        c.layout = Layout::Bshd;
        c.lse = true;
        c.q_gain = 6.0;
        c.softcap = Some(2.5);
        c.sinks = Some(vec![0.5, -2.0, 3.0, 9.0]);
        c.seed = 70 + i as u64;
        let label = format!("sinks, key chunks: {}", c.label());
        let (got, want, plan) = run_plan(&ctx, &c);
        assert!(plan.reason.contains("chunks of keys"), "{label}: {plan}");
        assert_close(&got, &want, c.out_dtype, &label);
    }
}

/// Paged calls too large for a binding run in parts too: Q, the output, the log-sum-exp and
/// the mask tensors split over batch items and groups of heads, each part reading its rows
/// of the page table from the whole pool (narrowed to its heads). A pool larger than one
/// binding cannot be split (every part may read any page): that names the key tensor.
#[test]
fn paged_calls_split_over_batch_items_and_heads() {
    let (b, hq, hkv, sq, sk, d) = (3, 4, 2, 77, 23, 16);
    for (max, level) in &LEVELS[..2] {
        let ctx = small(*max);
        for (mi, mask) in masks(b, hq, sq, sk).into_iter().enumerate() {
            let mut c = Case::new(b, hq, sq, sk, d)
                .dtype([DType::F32, DType::F16][mi % 2])
                .backend([Backend::Auto, Backend::MemoryEfficient, Backend::Naive][mi % 3])
                .mask(mask);
            c.hkv = hkv;
            c.layout = [Layout::Bhsd, Layout::Bshd][mi % 2];
            c.paged = Some([8, 5][mi % 2]);
            c.lse = mi % 2 == 1;
            c.seed = 90 + mi as u64;
            let label = format!("{level} ({max} bytes): {}", c.label());
            let (got, want, plan) = run_plan(&ctx, &c);
            assert!(plan.parts > 1, "{label}: not split ({plan})");
            assert_close(&got, &want, c.out_dtype, &label);
        }
    }
    // A pool of 11 pages of 8 keys of 2 heads of 16 f32 (11 KiB) in 3 KiB bindings.
    let ctx = small(3 * 1024);
    let mut c = Case::new(b, hq, sq, sk, d);
    c.hkv = hkv;
    c.paged = Some(8);
    refused_naming(&ctx, &c, TensorRole::Key);
}

/// Paged keys are never split into chunks (a chunk's keys would be read from the wrong
/// pages): a paged call whose bias row alone exceeds a binding, though its pool fits, is
/// refused naming the bias (f16 keys of head dim 1: the pool is half a bias row).
#[test]
fn paged_calls_never_split_their_keys() {
    let ctx = small(3 * 1024);
    let (sk, ps) = (1000, 16);
    let mut c = Case::new(1, 1, 2, sk, 1).dtype(DType::F16);
    c.out_dtype = DType::F32;
    c.paged = Some(ps);
    c.mask.bias = Some((random(2 * sk, 4), [1, 1, 2, sk], DType::F32));
    refused_naming(&ctx, &c, TensorRole::Bias);
}

/// Asserts that a paged case is refused as too large for a binding, naming `role`.
fn refused_naming(ctx: &Context, c: &Case, role: TensorRole) {
    let x = Prepared::new(ctx, c);
    let opts = x.opts(ctx, c);
    match ctx.attention_blocking(x.q.view(), x.k.view(), x.v.view(), &opts) {
        Err(Error::Unsupported(u)) => assert!(
            matches!(u.reason, UnsupportedReason::Binding { tensor, .. } if tensor == role),
            "{u:?}"
        ),
        other => panic!("expected Unsupported naming {role:?}, got {other:?}"),
    }
}
