//! The runtime: warm calls create nothing (counted at the wgpu boundary: every `create_*`
//! the crate calls goes through one counted door, `src/runtime/device.rs`),
//! calls recorded into one encoder each read their own parameters from the ring, outputs
//! sub-allocated from one buffer with their inputs (Burn and cubecl's pools) work and
//! overlaps are refused, and the async core runs under any executor.

mod common;

use common::{assert_close, random};
use wgpu_attention::reference::{self, HostMask, HostTensor};
use wgpu_attention::{
    AttentionOptions, Backend, CausalAlignment, Context, DType, Error, KvCache, Mask,
    ResourceCounts, TensorView,
};

/// A context of its own: its counters see this test's work only.
fn own_ctx() -> Context {
    Context::new_blocking().expect("an adapter (lavapipe or GL) for the GPU tests")
}

fn host<'a>(data: &'a [f32], shape: [usize; 4]) -> HostTensor<'a> {
    HostTensor { data, shape }
}

/// What a context created between two counts: buffers, bind groups, pipelines, and the rest
/// (layouts, shader modules, command encoders), every `create_*` the crate calls.
fn created_since(ctx: &Context, before: ResourceCounts) -> [u64; 4] {
    let after = ctx.created_resources();
    [
        after.buffers - before.buffers,
        after.bind_groups - before.bind_groups,
        after.pipelines - before.pipelines,
        after.other - before.other,
    ]
}

/// A call recorded and submitted; returns what it created (see `created_since`).
fn record_counted(
    ctx: &Context,
    [q, k, v, out]: [&TensorView; 4],
    opts: &AttentionOptions,
) -> [u64; 4] {
    // Our own use of the device: under its lock (on GL the context serialises its work).
    let _held = ctx.lock_device();
    let before = ctx.created_resources();
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    ctx.record_attention(&mut enc, q, k, v, out, opts).unwrap();
    ctx.queue().submit([enc.finish()]);
    created_since(ctx, before)
}

/// A call recorded and submitted, then downloaded (the download's staging buffer is the
/// test's).
fn run_recorded(ctx: &Context, views: [&TensorView; 4], opts: &AttentionOptions) -> Vec<f32> {
    record_counted(ctx, views, opts);
    ctx.download_f32_blocking(views[3]).unwrap()
}

#[test]
fn warm_calls_create_no_buffer_and_no_bind_group() {
    let ctx = own_ctx();
    let (b, h, d) = (1, 8, 64);
    let n = |s: [usize; 4]| s.iter().product::<usize>();
    let mask_data = common::random_bool(64 * 64, 7, 0.5);
    let mask = ctx.upload_bool(&mask_data, [1, 1, 64, 64]).unwrap();
    let bias_data = random(64 * 64, 8);
    let bias = ctx.upload_f32(&bias_data, [1, 1, 64, 64]).unwrap();
    let lengths = [1000u32];
    // (name, q rows, keys, mask, its reference, backend): the decode call of a KV cache, a
    // 64x64 call, a bool mask (its block summary goes through scratch), a bias, and every
    // backend.
    let cases: Vec<(&str, usize, usize, Mask, HostMask, Backend)> = vec![
        (
            "decode",
            1,
            1024,
            Mask::none()
                .causal(CausalAlignment::BottomRight)
                .key_lengths(lengths.to_vec()),
            HostMask {
                causal: true,
                alignment: CausalAlignment::BottomRight,
                key_lengths: Some(&lengths),
                ..Default::default()
            },
            Backend::Auto,
        ),
        (
            "64x64",
            64,
            64,
            Mask::none(),
            HostMask::default(),
            Backend::Auto,
        ),
        (
            "bool mask",
            64,
            64,
            Mask::none().bool_mask(mask.view().clone()),
            HostMask {
                bool_mask: Some((&mask_data, [1, 1, 64, 64])),
                ..Default::default()
            },
            Backend::Flash,
        ),
        (
            "bias",
            64,
            64,
            Mask::none().bias(bias.view().clone()),
            HostMask {
                bias: Some(host(&bias_data, [1, 1, 64, 64])),
                ..Default::default()
            },
            Backend::Auto,
        ),
        (
            "memeff",
            64,
            64,
            Mask::none(),
            HostMask::default(),
            Backend::MemoryEfficient,
        ),
        (
            "naive",
            7,
            59,
            Mask::none(),
            HostMask::default(),
            Backend::Naive,
        ),
    ];
    for (name, sq, sk, mask, host_mask, backend) in cases {
        let (qs, ks) = ([b, h, sq, d], [b, h, sk, d]);
        let (qh, kh, vh) = (random(n(qs), 1), random(n(ks), 2), random(n(ks), 3));
        let q = ctx.upload_f32(&qh, qs).unwrap();
        let k = ctx.upload_f32(&kh, ks).unwrap();
        let v = ctx.upload_f32(&vh, ks).unwrap();
        let out = ctx.empty(qs, DType::F32).unwrap();
        let opts = AttentionOptions::with_mask(mask).backend(backend);
        let views = [q.view(), k.view(), v.view(), out.view()];
        // The first call compiles and allocates; the second may still fill a cache.
        run_recorded(&ctx, views, &opts);
        run_recorded(&ctx, views, &opts);
        // The warm calls write an output poisoned with NaN.
        {
            let _held = ctx.lock_device();
            let nan = vec![f32::NAN; n(qs)];
            ctx.queue()
                .write_buffer(out.buffer(), 0, bytemuck::cast_slice(&nan));
        }
        for i in 0..3 {
            assert_eq!(
                record_counted(&ctx, views, &opts),
                [0; 4],
                "{name}: warm call {i} created buffers or bind groups"
            );
        }
        let after = ctx.created_resources();
        assert!(after.buffers > 0 && after.bind_groups > 0, "{after:?}");
        // The warm calls are still right.
        let got = ctx.download_f32_blocking(out.view()).unwrap();
        let want = reference::attention(
            &host(&qh, qs),
            &host(&kh, ks),
            &host(&vh, ks),
            1.0 / (d as f64).sqrt(),
            &host_mask,
        );
        assert_close(&got, &want, DType::F32, name);
    }
}

#[test]
fn a_kv_cache_decode_step_creates_nothing_once_warm() {
    let ctx = own_ctx();
    let (b, h, d, cap) = (2, 4, 32, 64);
    let mut cache = KvCache::new(&ctx, b, h, cap, d, DType::F32).unwrap();
    let (mut k_all, mut v_all) = (vec![Vec::new(); b * h], vec![Vec::new(); b * h]);
    let out = common::nan_output(&ctx, [b, h, 1, d], DType::F32);
    // A decode loop writes each step's new rows and query into buffers it reuses.
    let k = ctx.empty([b, h, 1, d], DType::F32).unwrap();
    let v = ctx.empty([b, h, 1, d], DType::F32).unwrap();
    let q = ctx.empty([b, h, 1, d], DType::F32).unwrap();
    let mut warm = 0;
    for step in 0..12 {
        let kh = random(b * h * d, 100 + step);
        let vh = random(b * h * d, 200 + step);
        let qh = random(b * h * d, 300 + step);
        for bh in 0..b * h {
            k_all[bh].extend_from_slice(&kh[bh * d..(bh + 1) * d]);
            v_all[bh].extend_from_slice(&vh[bh * d..(bh + 1) * d]);
        }
        for (t, x) in [(&k, &kh), (&v, &vh), (&q, &qh)] {
            let _held = ctx.lock_device();
            ctx.queue()
                .write_buffer(t.buffer(), 0, bytemuck::cast_slice(x));
        }
        let before = ctx.created_resources();
        cache.append_blocking(&ctx, k.view(), v.view()).unwrap();
        let opts = AttentionOptions::with_mask(cache.mask());
        let views = [q.view(), &cache.keys(), &cache.values(), out.view()];
        let in_call = record_counted(&ctx, views, &opts);
        let after = ctx.created_resources();
        if step >= 2 {
            // The append submits for itself: one command encoder, nothing else.
            assert_eq!(
                created_since(&ctx, before),
                [0, 0, 0, 1],
                "step {step}: {before:?} -> {after:?} ({in_call:?} in the call)"
            );
            warm += 1;
        }
        let got = ctx.download_f32_blocking(out.view()).unwrap();
        // Against the reference over the rows appended so far.
        let len = step as usize + 1;
        let kc: Vec<f32> = k_all.iter().flatten().copied().collect();
        let vc: Vec<f32> = v_all.iter().flatten().copied().collect();
        let want = reference::attention(
            &host(&qh, [b, h, 1, d]),
            &host(&kc, [b, h, len, d]),
            &host(&vc, [b, h, len, d]),
            1.0 / (d as f64).sqrt(),
            &HostMask::default(),
        );
        assert_close(&got, &want, DType::F32, &format!("step {step}"));
    }
    assert_eq!(warm, 10);
}

/// Calls recorded into one encoder before it is submitted each read their own parameter
/// slot: as many as the ring promises ([`wgpu_attention::RING_CALLS`]), each with its own
/// key length, writing its own rows of one output buffer.
#[test]
fn calls_recorded_into_one_encoder_read_their_own_parameters() {
    let ctx = own_ctx();
    let calls = wgpu_attention::RING_CALLS as usize;
    let (sk, d) = (64, 16);
    let qh = random(d, 1);
    let (kh, vh) = (random(sk * d, 2), random(sk * d, 3));
    let q = ctx.upload_f32(&qh, [1, 1, 1, d]).unwrap();
    let k = ctx.upload_f32(&kh, [1, 1, sk, d]).unwrap();
    let v = ctx.upload_f32(&vh, [1, 1, sk, d]).unwrap();
    let out = common::nan_output(&ctx, [1, 1, calls, d], DType::F32);
    let held = ctx.lock_device();
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    for i in 0..calls {
        let row = out.view().narrowed(2, i, 1);
        let opts = AttentionOptions::with_mask(Mask::none().key_lengths(vec![(i % sk) as u32 + 1]));
        ctx.record_attention(&mut enc, q.view(), k.view(), v.view(), &row, &opts)
            .unwrap();
    }
    ctx.queue().submit([enc.finish()]);
    drop(held);
    let got = ctx.download_f32_blocking(out.view()).unwrap();
    for len in 1..=sk {
        let want = reference::attention(
            &host(&qh, [1, 1, 1, d]),
            &host(&kh[..len * d], [1, 1, len, d]),
            &host(&vh[..len * d], [1, 1, len, d]),
            1.0 / (d as f64).sqrt(),
            &HostMask::default(),
        );
        for i in (len - 1..calls).step_by(sk) {
            assert_close(
                &got[i * d..(i + 1) * d],
                &want,
                DType::F32,
                &format!("call {i} (key length {len})"),
            );
        }
    }
}

/// A warm `attention_into` whose output shares a buffer with its inputs (staged through
/// scratch and copied back) creates one command encoder per call (it submits for you) and
/// nothing else: no buffer, bind group, layout, module or pipeline.
#[test]
fn warm_attention_into_with_a_staged_shared_output_creates_one_encoder() {
    let ctx = own_ctx();
    let (b, h, sq, sk, d) = (1, 2, 9, 33, 16);
    let (nq, nk) = (b * h * sq * d, b * h * sk * d);
    let (qh, kh, vh) = (random(nq, 21), random(nk, 22), random(nk, 23));
    // The page: [Q | K | V | O], O right after V.
    let mut page = vec![f32::NAN; nq + 2 * nk + nq];
    page[..nq].copy_from_slice(&qh);
    page[nq..nq + nk].copy_from_slice(&kh);
    page[nq + nk..nq + 2 * nk].copy_from_slice(&vh);
    let buf = common::buffer_of(&ctx, &page, DType::F32);
    let view = |at: usize, shape| {
        TensorView::bhsd(buf.buffer().clone(), DType::F32, shape).with_offset((at * 4) as u64)
    };
    let (q, k, v) = (
        view(0, [b, h, sq, d]),
        view(nq, [b, h, sk, d]),
        view(nq + nk, [b, h, sk, d]),
    );
    let o = view(nq + 2 * nk, [b, h, sq, d]);
    let opts = AttentionOptions::with_mask(Mask::none().causal(CausalAlignment::BottomRight));
    for _ in 0..2 {
        ctx.attention_into_blocking(&q, &k, &v, &o, &opts).unwrap();
    }
    for i in 0..3 {
        let before = ctx.created_resources();
        ctx.attention_into_blocking(&q, &k, &v, &o, &opts).unwrap();
        assert_eq!(created_since(&ctx, before), [0, 0, 0, 1], "warm call {i}");
    }
    let want = reference::attention(
        &host(&qh, [b, h, sq, d]),
        &host(&kh, [b, h, sk, d]),
        &host(&vh, [b, h, sk, d]),
        1.0 / (d as f64).sqrt(),
        &HostMask {
            causal: true,
            alignment: CausalAlignment::BottomRight,
            ..Default::default()
        },
    );
    assert_close(
        &ctx.download_f32_blocking(&o).unwrap(),
        &want,
        DType::F32,
        "shared",
    );
}

/// Burn and cubecl sub-allocate tensors from shared pages: Q, K, V, the output and the
/// log-sum-exp output here live in one buffer at disjoint (and unaligned) byte ranges.
#[test]
fn outputs_may_share_a_buffer_with_inputs_at_disjoint_bytes() {
    let ctx = common::ctx();
    for (dtype, backend) in [
        (DType::F32, Backend::Auto),
        (DType::F16, Backend::Auto),
        (DType::F32, Backend::Naive),
        (DType::F32, Backend::Decode),
    ] {
        let (b, h, sq, sk, d) = (2, 3, 7, 59, 16);
        let es = dtype.size() as usize;
        let (nq, nk) = (b * h * sq * d, b * h * sk * d);
        let (qh, kh, vh) = (
            common::round_to(dtype, &random(nq, 11)),
            common::round_to(dtype, &random(nk, 12)),
            common::round_to(dtype, &random(nk, 13)),
        );
        // The page: [pad | Q | K | V | O | pad | lse | pad], 2 and 6 elements apart.
        let (q0, k0) = (2, 2 + nq);
        let (v0, o0) = (k0 + nk, k0 + 2 * nk);
        let l_byte = ((o0 + nq + 6) * es).next_multiple_of(4) as u64;
        let total = l_byte as usize / es + b * h * sq * 4 / es + 8;
        let mut page = vec![f32::NAN; total];
        page[q0..q0 + nq].copy_from_slice(&qh);
        page[k0..k0 + nk].copy_from_slice(&kh);
        page[v0..v0 + nk].copy_from_slice(&vh);
        let buf = common::buffer_of(ctx, &page, dtype);
        let view = |at: usize, shape| {
            TensorView::bhsd(buf.buffer().clone(), dtype, shape).with_offset((at * es) as u64)
        };
        let (q, k, v) = (
            view(q0, [b, h, sq, d]),
            view(k0, [b, h, sk, d]),
            view(v0, [b, h, sk, d]),
        );
        let o = view(o0, [b, h, sq, d]);
        let lse =
            TensorView::bhsd(buf.buffer().clone(), DType::F32, [b, h, sq, 1]).with_offset(l_byte);
        let opts = AttentionOptions::with_mask(Mask::none().key_lengths(vec![41, 59]))
            .backend(backend)
            .lse_output(lse.clone());
        ctx.attention_into_blocking(&q, &k, &v, &o, &opts)
            .unwrap_or_else(|e| panic!("{dtype} {backend}: {e}"));
        let got = ctx.download_f32_blocking(&o).unwrap();
        let mask = HostMask {
            key_lengths: Some(&[41, 59]),
            ..Default::default()
        };
        let (want, want_lse) = reference::attention_with_lse(
            &host(&qh, [b, h, sq, d]),
            &host(&kh, [b, h, sk, d]),
            &host(&vh, [b, h, sk, d]),
            1.0 / (d as f64).sqrt(),
            &mask,
        );
        let label = format!("{dtype} {backend}");
        assert_close(&got, &want, dtype, &label);
        common::assert_close_lse(&ctx.download_f32_blocking(&lse).unwrap(), &want_lse, &label);
        // The inputs, and the padding between the tensors, are untouched.
        let after = ctx
            .download_f32_blocking(&view(0, [1, 1, 1, total]))
            .unwrap();
        assert_eq!(&after[q0..q0 + nq], &qh[..], "{label}: Q");
        assert_eq!(
            &after[k0..v0 + nk],
            &[&kh[..], &vh[..]].concat()[..],
            "{label}: K, V"
        );
        assert!(
            after[..q0].iter().all(|x| x.is_nan()),
            "{label}: the padding before Q"
        );
        assert!(
            after[o0 + nq..o0 + nq + 6].iter().all(|x| x.is_nan()),
            "{label}: the padding after O"
        );
    }
}

#[test]
fn overlapping_outputs_are_refused_naming_both_tensors() {
    let ctx = common::ctx();
    let (b, h, s, d) = (1, 2, 8, 16);
    let n = b * h * s * d;
    let buf = ctx.buffer_from_f32(&random(4 * n, 5));
    let at = |i: usize| {
        TensorView::bhsd(buf.clone(), DType::F32, [b, h, s, d]).with_offset((i * 4) as u64)
    };
    let (q, k, v) = (at(0), at(n), at(2 * n));
    // One element of overlap with V, and an output on top of Q.
    for (out, input) in [(at(3 * n - 1), "value"), (at(5), "query")] {
        let err = ctx
            .attention_into_blocking(&q, &k, &v, &out, &AttentionOptions::default())
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::InvalidInput(_)), "{text}");
        assert!(text.contains("output") && text.contains(input), "{text}");
    }
    // A log-sum-exp output over the output.
    let lse =
        TensorView::bhsd(buf.clone(), DType::F32, [b, h, s, 1]).with_offset((3 * n * 4) as u64);
    let opts = AttentionOptions::default().lse_output(lse);
    let err = ctx
        .attention_into_blocking(&q, &k, &v, &at(3 * n), &opts)
        .unwrap_err();
    assert!(
        err.to_string().contains("log-sum-exp") && err.to_string().contains("output"),
        "{err}"
    );
}

/// The async core under a plain executor: nothing in it waits on a blocking poll.
#[test]
fn the_async_core_runs_under_any_executor() {
    use futures::executor::block_on;
    let ctx = block_on(Context::new()).unwrap();
    let (b, h, s, d) = (1, 2, 33, 16);
    let x = random(b * h * s * d, 9);
    let t = ctx.upload_f32(&x, [b, h, s, d]).unwrap();
    let opts = AttentionOptions::with_mask(Mask::none().causal(CausalAlignment::TopLeft));
    block_on(ctx.prepare(t.view(), t.view(), t.view(), &opts)).unwrap();
    let out = block_on(ctx.attention(t.view(), t.view(), t.view(), &opts)).unwrap();
    block_on(ctx.wait()).unwrap();
    let got = block_on(ctx.download_f32(out.view())).unwrap();
    let want = reference::attention(
        &host(&x, [b, h, s, d]),
        &host(&x, [b, h, s, d]),
        &host(&x, [b, h, s, d]),
        1.0 / (d as f64).sqrt(),
        &HostMask {
            causal: true,
            ..Default::default()
        },
    );
    assert_close(&got, &want, DType::F32, "async");
}

/// One call that writes more parameter slots than half the ring (here: a device whose
/// bindings hold 8 KiB, so the naive backend runs one query row per chunk, thousands of
/// dispatches) moves on to a fresh ring instead of overwriting its own slots.
#[test]
fn a_call_larger_than_the_ring_never_overwrites_its_own_slots() {
    let (info, device, queue) = common::own_device(|l| wgpu::Limits {
        max_storage_buffer_binding_size: 8 << 10,
        ..l
    });
    let ctx = Context::from_device(device, queue, &info);
    let (b, h, sq, sk, d) = (1, 2, 8192, 1024, 1);
    let qh = random(b * h * sq * d, 21);
    let (kh, vh) = (random(b * h * sk * d, 22), random(b * h * sk * d, 23));
    let q = ctx.upload_f32(&qh, [b, h, sq, d]).unwrap();
    let k = ctx.upload_f32(&kh, [b, h, sk, d]).unwrap();
    let v = ctx.upload_f32(&vh, [b, h, sk, d]).unwrap();
    let out = common::nan_output(&ctx, [b, h, sq, d], DType::F32);
    let opts = AttentionOptions::default().backend(Backend::Naive);
    let before = ctx.created_resources();
    ctx.attention_into_blocking(q.view(), k.view(), v.view(), out.view(), &opts)
        .unwrap();
    let rings = ctx.created_resources().buffers - before.buffers;
    assert!(
        rings >= 3,
        "{rings} buffers: the call should have needed fresh rings"
    );
    let want = reference::attention(
        &host(&qh, [b, h, sq, d]),
        &host(&kh, [b, h, sk, d]),
        &host(&vh, [b, h, sk, d]),
        1.0,
        &HostMask::default(),
    );
    let got = ctx.download_f32_blocking(out.view()).unwrap();
    assert_close(&got, &want, DType::F32, "naive, one row per chunk");
}

/// An output that shares its buffer with an input is written through scratch, which needs
/// the buffer's copy usages: without them the call is an input error naming the output,
/// not a wgpu panic or validation error.
#[test]
fn a_shared_output_without_copy_usage_is_a_typed_error() {
    use wgpu_attention::error::{InputProblem, TensorRole};
    let ctx = common::ctx();
    let (b, h, s, d) = (1, 2, 7, 16);
    let n = b * h * s * d;
    // A buffer of our own, made and dropped under the device lock: on GL every context of
    // the process shares one EGL context, and a buffer destroyed without the lock while
    // another test thread works makes wgpu-hal panic (`BadAccess`).
    let held = ctx.lock_device();
    let page = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("storage only"),
        size: (4 * n * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let at = |i: usize| {
        TensorView::bhsd(page.clone(), DType::F32, [b, h, s, d]).with_offset((i * n * 4) as u64)
    };
    let err = ctx
        .attention_into_blocking(&at(0), &at(1), &at(2), &at(3), &AttentionOptions::default())
        .unwrap_err();
    let Error::InvalidInput(e) = &err else {
        panic!("expected an input error, got {err:?}");
    };
    assert_eq!(e.tensor, TensorRole::Output, "{err}");
    assert!(
        matches!(e.problem, InputProblem::MissingUsage { .. }),
        "{err}"
    );
    drop(page);
    drop(held);
}

/// A warm recorded merge of partial results (what a split-KV or context-parallel caller
/// records per step) creates nothing.
#[test]
fn warm_recorded_merges_create_nothing() {
    let ctx = own_ctx();
    let shape = [1, 2, 5, 8];
    let n: usize = shape.iter().product();
    let lse_shape = [1, 2, 5, 1];
    let o = [1u64, 2].map(|s| ctx.upload_f32(&random(n, s), shape).unwrap());
    let l = [3u64, 4].map(|s| ctx.upload_f32(&random(10, s), lse_shape).unwrap());
    let out = ctx.empty(shape, DType::F32).unwrap();
    let lse = ctx.empty(lse_shape, DType::F32).unwrap();
    let pairs = [(o[0].view(), l[0].view()), (o[1].view(), l[1].view())];
    let record = || {
        let _held = ctx.lock_device();
        let before = ctx.created_resources();
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        ctx.record_merge(&mut enc, &pairs, out.view(), Some(lse.view()))
            .unwrap();
        ctx.queue().submit([enc.finish()]);
        created_since(&ctx, before)
    };
    record();
    record();
    for i in 0..3 {
        assert_eq!(record(), [0; 4], "warm merge {i}");
    }
}

/// The driver pipeline cache: on Vulkan a context builds its pipelines through the cache it
/// is given, another context seeded with the first's data computes the same output, and
/// bytes wgpu's header check refuses start an empty cache rather than fail; without the
/// feature (GL) asking for one is a typed `Unsupported` and there is no data.
#[test]
fn a_driver_pipeline_cache_round_trips_where_the_device_has_one() {
    let (b, h, s, d) = (1, 2, 37, 16);
    let shape = [b, h, s, d];
    let n = b * h * s * d;
    let (qh, kh, vh) = (random(n, 61), random(n, 62), random(n, 63));
    let run = |ctx: &Context| {
        let q = ctx.upload_f32(&qh, shape).unwrap();
        let k = ctx.upload_f32(&kh, shape).unwrap();
        let v = ctx.upload_f32(&vh, shape).unwrap();
        let opts = AttentionOptions::with_mask(Mask::none().causal(CausalAlignment::TopLeft));
        let out = ctx
            .attention_blocking(q.view(), k.view(), v.view(), &opts)
            .unwrap();
        ctx.download_f32_blocking(out.view()).unwrap()
    };
    let ctx = own_ctx();
    let has_feature = ctx
        .device()
        .features()
        .contains(wgpu::Features::PIPELINE_CACHE);
    assert_eq!(ctx.pipeline_cache_key().is_some(), has_feature);
    assert!(
        ctx.pipeline_cache_data().is_none(),
        "no cache before one is asked for"
    );
    if !has_feature {
        assert_ne!(
            ctx.adapter_info().backend,
            wgpu::Backend::Vulkan,
            "wgpu offers it on Vulkan"
        );
        // SAFETY: no data.
        match unsafe { ctx.use_pipeline_cache(None) } {
            Err(Error::Unsupported(u)) => assert!(u.to_string().contains("PIPELINE_CACHE"), "{u}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
        assert!(ctx.pipeline_cache_data().is_none());
        return;
    }
    let before = ctx.created_resources();
    // SAFETY: no data.
    unsafe { ctx.use_pipeline_cache(None) }.unwrap();
    assert_eq!(
        created_since(&ctx, before),
        [0, 0, 0, 1],
        "the cache is counted"
    );
    let want = reference::attention(
        &host(&qh, shape),
        &host(&kh, shape),
        &host(&vh, shape),
        1.0 / (d as f64).sqrt(),
        &HostMask {
            causal: true,
            ..Default::default()
        },
    );
    let first = run(&ctx);
    assert_close(&first, &want, DType::F32, "through an empty cache");
    let data = ctx.pipeline_cache_data().expect("the driver's cache data");
    assert!(!data.is_empty());

    let seeded = own_ctx();
    // SAFETY: `data` is what `pipeline_cache_data` returned on this adapter, unaltered.
    unsafe { seeded.use_pipeline_cache(Some(&data)) }.unwrap();
    assert_eq!(run(&seeded), first, "seeded with the first context's cache");

    let refused = own_ctx();
    // SAFETY: not from `pipeline_cache_data`, but wgpu's header check refuses it (too
    // short for its header) before any driver sees it.
    unsafe { refused.use_pipeline_cache(Some(b"not a pipeline cache")) }.unwrap();
    assert_eq!(
        run(&refused),
        first,
        "an empty cache instead of refused bytes"
    );
}
