//! The browser suite: every backend and mask kind on small ragged shapes, f32 and f16, on
//! three WebGPU devices (the adapter's limits and features; WebGPU's default limits; default
//! limits and no optional feature), each result NaN-poisoned and checked against the f64
//! reference; and bad input getting its typed error. `run_suite` logs a line per case and
//! returns the `RESULT:` line `.ci/browser` looks for. No adapter is a failure.

use half::f16;
use wasm_bindgen::prelude::*;
use wgpu_attention::error::{InputProblem, TensorRole};
use wgpu_attention::reference::{self, HostMask, HostTensor, random_uniform as random};
use wgpu_attention::{
    AttentionOptions, Backend, CausalAlignment, Context, DType, Error, KvScales, Mask, PagedKv,
    Tensor, TensorView, Window, quant, wgpu,
};

fn log(line: &str) {
    web_sys::console::log_1(&line.into());
}

/// |got - want| <= atol + rtol * |want|, per dtype (the native suites' tolerances).
fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 2e-3,
        _ => 1e-5,
    }
}

fn round(dtype: DType, x: &[f32]) -> Vec<f32> {
    match dtype {
        DType::F16 => x.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        _ => x.to_vec(),
    }
}

fn upload(ctx: &Context, x: &[f32], shape: [usize; 4], dtype: DType) -> Result<Tensor, Error> {
    match dtype {
        DType::F16 => {
            let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
            ctx.upload_f16(&h, shape)
        }
        _ => ctx.upload_f32(x, shape),
    }
}

/// The mask kinds of a case.
#[derive(Clone, Copy, Debug)]
enum Kind {
    None,
    CausalTopLeft,
    CausalBottomRight,
    KeyLengths,
    QueryLengths,
    Window,
    BoolMask,
    Bias,
    Alibi,
    /// Bottom-right causal, key lengths and a bias at once.
    Combined,
    /// LLM serving's score terms: Gemma 2's soft cap and gpt-oss's sinks, with causal.
    Serving,
    /// K and V in a pool of pages (token-major, shuffled) read through a page table, with
    /// bottom-right causal and key lengths.
    Paged,
    /// K and V quantized (a format per backend: q8_0, q4_0, i8, e4m3, e5m2), with
    /// bottom-right causal and key lengths; head dims of whole 32-value blocks.
    Quant,
}

/// The quantized K/V format a `Quant` case of `backend` runs.
fn quant_format(backend: Backend) -> DType {
    match backend {
        Backend::Flash => DType::Q8_0,
        Backend::MemoryEfficient => DType::Q4_0,
        Backend::Naive => DType::I8,
        Backend::Decode => DType::E4M3,
        _ => DType::E5M2,
    }
}

/// `[b, h, s, d]` host data quantized to `fmt` (the 8-bit floats with scale 0.5 for every
/// head) in one buffer, i8's per-token scales after the rows: the tensor, the scales' view,
/// and the values it holds (what the reference reads).
fn quant_upload(
    ctx: &Context,
    x: &[f32],
    shape: [usize; 4],
    fmt: DType,
) -> Result<(Tensor, Option<TensorView>, Vec<f32>), Error> {
    let [b, h, sk, d] = shape;
    let rows = b * h * sk;
    let (mut bytes, scales) = quant::quantize_rows(fmt, x, d, Some(&vec![0.5; rows]));
    let held = quant::dequantize_rows(fmt, &bytes, d, &scales);
    bytes.resize(bytes.len().div_ceil(4) * 4, 0);
    let at = bytes.len() as u64;
    if fmt == DType::I8 {
        bytes.extend(scales.iter().flat_map(|s| s.to_le_bytes()));
    }
    let words: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let t = ctx.upload_f32(&words, [1, 1, 1, words.len()])?;
    let view = t.reshaped(fmt, shape, [h * sk * d, sk * d, d, 1], 0);
    let sv = (fmt == DType::I8).then(|| {
        TensorView::new(
            t.buffer().clone(),
            DType::F32,
            [b, h, sk, 1],
            [h * sk, sk, 1, 1],
            at,
        )
    });
    Ok((view, sv, held))
}

const KINDS: [Kind; 12] = [
    Kind::None,
    Kind::CausalTopLeft,
    Kind::CausalBottomRight,
    Kind::KeyLengths,
    Kind::QueryLengths,
    Kind::Window,
    Kind::BoolMask,
    Kind::Bias,
    Kind::Alibi,
    Kind::Combined,
    Kind::Serving,
    Kind::Paged,
];

/// Keys per page of the `Paged` kind: pages end inside every key tile.
const PAGE: usize = 7;

/// `[b, h, sk, d]` host data in a pool of `PAGE`-key token-major pages (`[pages, PAGE, h, d]`
/// memory): batch item `b`'s page `c` is pool page `table[b * pps + c]`, the pages handed out
/// in reverse behind one spare page of junk. Returns the pool and the table.
fn paged_pool(x: &[f32], [b, h, sk, d]: [usize; 4]) -> (Vec<f32>, Vec<u32>) {
    let pps = sk.div_ceil(PAGE);
    let pages = b * pps + 1;
    let table: Vec<u32> = (0..(b * pps) as u32)
        .map(|i| pages as u32 - 1 - i)
        .collect();
    let mut pool = vec![100.0; pages * PAGE * h * d];
    for ib in 0..b {
        for ih in 0..h {
            for j in 0..sk {
                let page = table[ib * pps + j / PAGE] as usize;
                let at = ((page * PAGE + j % PAGE) * h + ih) * d;
                let from = ((ib * h + ih) * sk + j) * d;
                pool[at..at + d].copy_from_slice(&x[from..from + d]);
            }
        }
    }
    (pool, table)
}

struct Case {
    backend: Backend,
    kind: Kind,
    dtype: DType,
    /// (batch, query heads, key/value heads, query rows, keys, head dim)
    shape: (usize, usize, usize, usize, usize, usize),
    /// The backend the dispatcher must choose (for `Backend::Auto`).
    expect: Option<Backend>,
}

/// Runs one case; `Ok(max error)` or why it failed.
async fn run_case(ctx: &Context, c: &Case) -> Result<f64, String> {
    let (b, hq, hkv, sq, sk, d) = c.shape;
    let (qs, ks) = ([b, hq, sq, d], [b, hkv, sk, d]);
    let e = |e: Error| e.to_string();
    let qh = round(c.dtype, &random(b * hq * sq * d, 1));
    let mut kh = round(c.dtype, &random(b * hkv * sk * d, 2));
    let mut vh = round(c.dtype, &random(b * hkv * sk * d, 3));
    let q = upload(ctx, &qh, qs, c.dtype).map_err(e)?;
    let (mut k, mut v) = (
        upload(ctx, &kh, ks, c.dtype).map_err(e)?,
        upload(ctx, &vh, ks, c.dtype).map_err(e)?,
    );
    // Quantized: K and V replaced by their quantized forms, and the reference reads their
    // values.
    let mut kv_scales = None;
    if let Kind::Quant = c.kind {
        let fmt = quant_format(c.backend);
        let (kq, ksc, kd) = quant_upload(ctx, &kh, ks, fmt).map_err(e)?;
        let (vq, vsc, vd) = quant_upload(ctx, &vh, ks, fmt).map_err(e)?;
        kv_scales = match (ksc, vsc) {
            (Some(k), Some(v)) => Some(KvScales::PerToken { k, v }),
            // The block formats carry their scales; the 8-bit floats take one for all heads.
            _ => (fmt.block_len() == 1).then(|| KvScales::PerHead {
                k: vec![0.5],
                v: vec![0.5],
            }),
        };
        (k, v, kh, vh) = (kq, vq, kd, vd);
    }
    let out = upload(ctx, &vec![f32::NAN; b * hq * sq * d], qs, c.dtype).map_err(e)?;

    let key_lengths: Vec<u32> = (0..b).map(|i| (sk - i * sk / 3).max(1) as u32).collect();
    let query_lengths: Vec<u32> = (0..b).map(|i| (sq - i * sq / 2).max(1) as u32).collect();
    let window = Window {
        left: Some(5),
        right: Some(2),
    };
    let bool_shape = [b, 1, sq, sk];
    let bool_h: Vec<bool> = random(b * sq * sk, 4).iter().map(|&x| x > -0.4).collect();
    let bias_shape = [1, hq, sq, sk];
    let bias_h = random(hq * sq * sk, 5);
    let slopes: Vec<f32> = (0..hq).map(|i| 0.5f32.powi(i as i32 + 1)).collect();
    let sinks: Vec<f32> = (0..hq).map(|i| [0.5, -2.0, 3.0][i % 3]).collect();
    // (Logits of these inputs stay within about ±1: a cap of 0.3 bends them.)
    let cap = 0.3;
    let bool_t = ctx.upload_bool(&bool_h, bool_shape).map_err(e)?;
    let bias_t = ctx.upload_f32(&bias_h, bias_shape).map_err(e)?;
    let bias_host = HostTensor {
        data: &bias_h,
        shape: bias_shape,
    };

    let mut host = HostMask::default();
    let mask = match c.kind {
        Kind::None => Mask::none(),
        Kind::CausalTopLeft => {
            host.causal = true;
            Mask::none().causal(CausalAlignment::TopLeft)
        }
        Kind::CausalBottomRight | Kind::Combined => {
            host.causal = true;
            host.alignment = CausalAlignment::BottomRight;
            let m = Mask::none().causal(CausalAlignment::BottomRight);
            if let Kind::Combined = c.kind {
                host.key_lengths = Some(&key_lengths);
                host.bias = Some(bias_host);
                m.key_lengths(key_lengths.clone())
                    .bias(bias_t.view().clone())
            } else {
                m
            }
        }
        Kind::KeyLengths => {
            host.key_lengths = Some(&key_lengths);
            Mask::none().key_lengths(key_lengths.clone())
        }
        Kind::QueryLengths => {
            host.query_lengths = Some(&query_lengths);
            Mask::none().query_lengths(query_lengths.clone())
        }
        Kind::Window => {
            host.window = Some(window);
            Mask::none().window(window.left, window.right)
        }
        Kind::BoolMask => {
            host.bool_mask = Some((&bool_h, bool_shape));
            Mask::none().bool_mask(bool_t.view().clone())
        }
        Kind::Bias => {
            host.bias = Some(bias_host);
            Mask::none().bias(bias_t.view().clone())
        }
        Kind::Alibi => {
            host.alibi = Some(&slopes);
            Mask::none().alibi(slopes.clone())
        }
        Kind::Serving => {
            host.causal = true;
            host.softcap = Some(cap);
            host.sinks = Some(&sinks);
            Mask::none().causal(CausalAlignment::TopLeft)
        }
        Kind::Paged | Kind::Quant => {
            host.causal = true;
            host.alignment = CausalAlignment::BottomRight;
            host.key_lengths = Some(&key_lengths);
            Mask::none()
                .causal(CausalAlignment::BottomRight)
                .key_lengths(key_lengths.clone())
        }
    };
    let mut opts = AttentionOptions::with_mask(mask).backend(c.backend);
    if let Kind::Serving = c.kind {
        opts = opts.softcap(cap).sinks(sinks.clone());
    }
    if let Some(s) = kv_scales {
        opts = opts.kv_scales(s);
    }
    // Paged: K and V replaced by their pools (the reference reads the contiguous data).
    let pools = if let Kind::Paged = c.kind {
        let (kp, table) = paged_pool(&kh, ks);
        let (vp, _) = paged_pool(&vh, ks);
        let pages = kp.len() / (PAGE * hkv * d);
        let pool = |x: &[f32]| -> Result<Tensor, Error> {
            let t = upload(ctx, x, [1, 1, 1, x.len()], c.dtype)?;
            let v = TensorView::bshd(t.buffer().clone(), c.dtype, [pages, PAGE, hkv, d]);
            Ok(t.reshaped(c.dtype, v.shape, v.strides, 0))
        };
        opts = opts.paged(PagedKv::new(PAGE, sk.div_ceil(PAGE), table).seq_len(sk));
        Some((pool(&kp).map_err(e)?, pool(&vp).map_err(e)?))
    } else {
        None
    };
    let (k, v) = match &pools {
        Some((kp, vp)) => (kp, vp),
        None => (&k, &v),
    };
    if let Some(want) = c.expect {
        let plan = ctx.plan(q.view(), k.view(), v.view(), &opts).map_err(e)?;
        if plan.backend != want {
            return Err(format!(
                "the dispatcher chose {:?}, not {want:?}",
                plan.backend
            ));
        }
    }
    ctx.attention_into(q.view(), k.view(), v.view(), out.view(), &opts)
        .await
        .map_err(e)?;
    let got = ctx.download_f32(out.view()).await.map_err(e)?;
    let want = reference::attention(
        &HostTensor {
            data: &qh,
            shape: qs,
        },
        &HostTensor {
            data: &kh,
            shape: ks,
        },
        &HostTensor {
            data: &vh,
            shape: ks,
        },
        1.0 / (d as f64).sqrt(),
        &host,
    );
    check(&got, &want, tolerance(c.dtype))
}

/// The largest error of `got` against `want`, or the first element past the tolerance
/// (NaN, from a poisoned output that was never written, is past every tolerance).
fn check(got: &[f32], want: &[f64], tol: f64) -> Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!("{} values, want {}", got.len(), want.len()));
    }
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let within = err <= tol + tol * w.abs(); // false for NaN
        if !within {
            return Err(format!("element {i}: got {g}, want {w}"));
        }
        worst = worst.max(err);
    }
    Ok(worst)
}

/// Q, K, V and the output in one buffer at byte offsets that are not multiples of 256 (as a
/// pool sub-allocates them): WebGPU binds no buffer read-only and read-write in one
/// dispatch, so the output goes through scratch.
async fn shared_page(ctx: &Context) -> Result<f64, String> {
    let e = |e: Error| e.to_string();
    let (b, h, s, d) = (1, 2, 7, 16);
    let n = b * h * s * d;
    let (qh, kh, vh) = (random(n, 11), random(n, 12), random(n, 13));
    // [pad 3 | Q | K | V | pad 1 | O]
    let at = [3, 3 + n, 3 + 2 * n, 4 + 3 * n];
    let mut page = vec![f32::NAN; 4 + 4 * n];
    page[at[0]..at[0] + n].copy_from_slice(&qh);
    page[at[1]..at[1] + n].copy_from_slice(&kh);
    page[at[2]..at[2] + n].copy_from_slice(&vh);
    let t = ctx.upload_f32(&page, [1, 1, 1, page.len()]).map_err(e)?;
    let view = |i: usize| {
        wgpu_attention::TensorView::bhsd(t.buffer().clone(), DType::F32, [b, h, s, d])
            .with_offset((at[i] * 4) as u64)
    };
    ctx.attention_into(
        &view(0),
        &view(1),
        &view(2),
        &view(3),
        &AttentionOptions::default(),
    )
    .await
    .map_err(e)?;
    let got = ctx.download_f32(&view(3)).await.map_err(e)?;
    let host = |data| HostTensor {
        data,
        shape: [b, h, s, d],
    };
    let want = reference::attention(
        &host(&qh),
        &host(&kh),
        &host(&vh),
        1.0 / (d as f64).sqrt(),
        &HostMask::default(),
    );
    let worst = check(&got, &want, tolerance(DType::F32))?;
    // The bytes around the output come back unchanged: Q before it, NaN padding.
    let whole = ctx.download_f32(t.view()).await.map_err(e)?;
    if whole[at[0]..at[0] + n] != qh[..] || !whole[at[3] - 1].is_nan() {
        return Err("the bytes around the output changed".into());
    }
    Ok(worst)
}

/// Bad input gets its typed error on WebGPU too.
async fn bad_input(ctx: &Context) -> Result<(), String> {
    let e = |e: Error| e.to_string();
    let q = ctx
        .upload_f32(&random(2 * 7 * 16, 1), [1, 2, 7, 16])
        .map_err(e)?;
    let k = ctx
        .upload_f32(&random(2 * 9 * 8, 2), [1, 2, 9, 8])
        .map_err(e)?;
    let opts = AttentionOptions::default();
    match ctx.attention(q.view(), k.view(), k.view(), &opts).await {
        Err(Error::InvalidInput(i)) if i.tensor == TensorRole::Key => {
            log(&format!("ok   bad input: {}", Error::InvalidInput(i)));
        }
        other => return Err(format!("a head-dim mismatch gave {other:?}")),
    }
    // The output over the query's bytes.
    match ctx
        .attention_into(q.view(), q.view(), q.view(), q.view(), &opts)
        .await
    {
        Err(Error::InvalidInput(i))
            if i.tensor == TensorRole::Output
                && matches!(i.problem, InputProblem::OutputAliasesInput { .. }) =>
        {
            log(&format!("ok   bad input: {}", Error::InvalidInput(i)));
        }
        other => return Err(format!("an output over the query gave {other:?}")),
    }
    let big = ctx
        .upload_f32(&random(4 * 512, 3), [1, 1, 4, 512])
        .map_err(e)?;
    match ctx
        .attention(
            big.view(),
            big.view(),
            big.view(),
            &opts.clone().backend(Backend::Flash),
        )
        .await
    {
        Err(err @ Error::Unsupported(_)) => log(&format!("ok   unsupported: {err}")),
        other => return Err(format!("forced flash at head dim 512 gave {other:?}")),
    }
    Ok(())
}

/// A device of this browser's adapter with WebGPU's default limits.
async fn default_limits_context(features: wgpu::Features) -> Result<Context, String> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::BROWSER_WEBGPU,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions::default())
        .await
        .map_err(|e| format!("no WebGPU adapter: {e}"))?;
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("default limits"),
            required_features: adapter.features() & features,
            required_limits: wgpu::Limits::default(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("requesting a device: {e}"))?;
    Ok(Context::from_device(device, queue, &adapter.get_info()))
}

fn describe(ctx: &Context) -> String {
    let i = ctx.adapter_info();
    let c = ctx.caps();
    format!(
        "{} ({:?}, {:?}); subgroups {}, shader-f16 {}, {} storage buffers per stage, {} bytes of workgroup memory",
        i.name,
        i.backend,
        i.device_type,
        c.subgroup,
        c.shader_f16,
        c.max_storage_buffers,
        c.max_workgroup_storage
    )
}

/// Runs the suite; returns the `RESULT:` line.
#[wasm_bindgen]
pub async fn run_suite() -> String {
    std::panic::set_hook(Box::new(|p| {
        web_sys::console::error_1(&format!("RESULT: FAIL (panic: {p})").into());
    }));
    let t0 = js_sys::Date::now();
    let own = match Context::new().await {
        Ok(c) => c,
        Err(e) => return format!("RESULT: FAIL (no WebGPU context: {e})"),
    };
    let mut devices = vec![("adapter limits", own)];
    for (name, features) in [
        ("default limits", wgpu_attention::OPTIONAL_FEATURES),
        ("default limits, no features", wgpu::Features::empty()),
    ] {
        match default_limits_context(features).await {
            Ok(c) => devices.push((name, c)),
            Err(e) => return format!("RESULT: FAIL ({name}: {e})"),
        }
    }
    let (mut passed, mut failed) = (0, 0);
    for (name, ctx) in &devices {
        log(&format!("device {name}: {}", describe(ctx)));
        let mut cases = Vec::new();
        // Every backend and mask kind on every device: the limits and features change the
        // kernels' variants.
        for backend in [
            Backend::Auto,
            Backend::Flash,
            Backend::MemoryEfficient,
            Backend::Naive,
            Backend::Decode,
        ] {
            for kind in KINDS {
                cases.push(Case {
                    backend,
                    kind,
                    dtype: DType::F32,
                    shape: (2, 4, 2, 7, 59, 16),
                    expect: None,
                });
            }
            for kind in [
                Kind::None,
                Kind::CausalBottomRight,
                Kind::Bias,
                Kind::Serving,
                Kind::Paged,
                Kind::Quant,
            ] {
                cases.push(Case {
                    backend,
                    kind,
                    dtype: DType::F16,
                    shape: (1, 2, 1, 59, 113, 64),
                    expect: None,
                });
            }
        }
        // A decode step: one query over 1031 keys with padding, split across workgroups and
        // merged (the dispatcher's choice, checked).
        cases.push(Case {
            backend: Backend::Auto,
            kind: Kind::KeyLengths,
            dtype: DType::F32,
            shape: (2, 4, 4, 1, 1031, 64),
            expect: Some(Backend::Decode),
        });
        for c in &cases {
            let (b, hq, hkv, sq, sk, d) = c.shape;
            let label = format!(
                "{name}: {:?} {:?} {:?} b={b} hq={hq} hkv={hkv} sq={sq} sk={sk} d={d}",
                c.backend, c.kind, c.dtype
            );
            match run_case(ctx, c).await {
                Ok(err) => {
                    passed += 1;
                    log(&format!("ok   {label}: max abs err {err:.2e}"));
                }
                Err(why) => {
                    failed += 1;
                    log(&format!("FAIL {label}: {why}"));
                }
            }
        }
        let probe = ctx.upload_f32(&random(2 * 4 * 64 * 64, 9), [2, 4, 64, 64]);
        if let Ok(t) = probe {
            match ctx.plan(t.view(), t.view(), t.view(), &AttentionOptions::default()) {
                Ok(p) => log(&format!("plan on {name} for b=2 h=4 s=64 d=64: {p}")),
                Err(e) => log(&format!("plan on {name}: {e}")),
            }
        }
        match shared_page(ctx).await {
            Ok(err) => {
                passed += 1;
                log(&format!(
                    "ok   {name}: Q, K, V and the output in one buffer at unaligned offsets: max abs err {err:.2e}"
                ));
            }
            Err(why) => {
                failed += 1;
                log(&format!("FAIL {name}: shared page: {why}"));
            }
        }
        match bad_input(ctx).await {
            Ok(()) => passed += 1,
            Err(why) => {
                failed += 1;
                log(&format!("FAIL {name}: bad input: {why}"));
            }
        }
    }
    let secs = (js_sys::Date::now() - t0) / 1e3;
    if failed == 0 {
        format!(
            "RESULT: PASS ({passed} checks on {} devices, {secs:.1} s)",
            devices.len()
        )
    } else {
        format!(
            "RESULT: FAIL ({failed} of {} checks failed, {secs:.1} s)",
            passed + failed
        )
    }
}
