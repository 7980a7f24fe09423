//! Benchmark harness: `cargo bench --bench attention -- [flags]`.
//!
//! Flags: `--backend auto|flash|memeff|naive`, `--mask none|causal|pad50|boolmask50|bias`,
//! `--dtype f32|f16`, `--b N --h N --sq N --sk N --d N`, `--iters N`,
//! `--grid default|sweep|gpu|backward` (sweep: the plot's data; gpu: the real-GPU shapes;
//! backward: the backward pass's targets),
//! `--subgroups on|off`, `--rpt N`, `--bk N`, `--tpr N` (tile overrides), `--unchecked` (shaders without
//! wgpu's injected bounds checks: `Context::from_device_unchecked`), `--experimental`
//! (wgpu's cooperative matrices where the adapter has them: `Context::new_experimental`),
//! `--max-binding BYTES` (a device whose storage bindings hold at most that many bytes, as
//! `wgpu::Limits::default()`'s 128 MiB: calls with larger tensors run split, see `"parts"`),
//! `--pass forward|backward` (backward: `Context::record_attention_backward` from the
//! forward's output and log-sum-exp; GFLOP/s counted as 2.5x the forward's FLOPs, and
//! `scratch_mb` the scratch the context keeps after the case, its forward's included),
//! `--pipeline-cache FILE` (the driver pipeline cache, `Context::use_pipeline_cache`: seeded
//! from FILE if it exists, its data written back at the end; Vulkan only),
//! `--softcap C` and `--sinks` (the score terms of `AttentionOptions::softcap` and `::sinks`,
//! a sink of 0.5 per head; the line's `terms`),
//! `--kv q8_0|q4_0|i8|e4m3|e5m2` (K and V quantized: GGUF blocks, i8 with per-token
//! scales, the 8-bit floats with scale 1; `f16` keeps `--dtype`'s),
//! `--hkv N` (key/value heads, a divisor of `--h`: GQA), `--paged N` (K and V in a pool of
//! N-key pages read through a page table, `AttentionOptions::paged`; the pages in reverse
//! order; the line's `kv`),
//! `--gain X` (Q uniform in [-X, X): wider logits), `--counts` (one more run with the kernel's debug counters: key tiles loaded and the
//! cooperative-matrix kernel's rescale round trips).
//! Each line says how many pipelines the case's first call compiled and in how long
//! (`compiled`, `compile_s`: host time, warm-up run included; 0 when an earlier case compiled
//! them). Each line carries the variant's cost line (`variant`, `rows_per_workgroup`,
//! `keys_per_tile`, `barriers_per_tile`, `workgroup_bytes`; see `ShaderVariant::cost`).
//! Each case prints one JSON line. With no case flags it runs the default grid.
//! GPU timestamp queries are used when the adapter has them, else wall clock around a
//! completed submission; one warm-up run first; the median of `iters` runs is reported.

use std::time::Instant;

use wgpu_attention::{
    AttentionOptions, Backend, BackwardInputs, CausalAlignment, Context, DType, Gradients, Mask,
    Subgroups, TensorView,
};

#[derive(Clone, Debug)]
struct Case {
    backend: String,
    mask: String,
    dtype: String,
    b: usize,
    h: usize,
    sq: usize,
    sk: usize,
    d: usize,
    iters: usize,
    subgroups: bool,
    rpt: Option<u32>,
    bk: Option<u32>,
    tpr: Option<u32>,
    /// Q's inputs are uniform in [-gain, gain) (`--gain`; K and V in [-1, 1)).
    gain: f32,
    /// `--pass backward`: time the backward pass.
    backward: bool,
    /// `--softcap C`: logits soft-capped at C.
    softcap: Option<f32>,
    /// `--sinks`: a sink logit per head (0.5 each).
    sinks: bool,
    /// `--hkv N`: key/value heads (default: `h`).
    hkv: Option<usize>,
    /// `--paged N`: K and V in pages of N keys.
    paged: Option<usize>,
    /// `--kv FORMAT`: K and V quantized (q8_0, q4_0, i8, e4m3, e5m2); without, `--dtype`'s.
    kv: Option<DType>,
}

impl Case {
    /// The score terms, for the JSON line: `none`, `softcap<C>`, `sinks`, or both.
    fn terms(&self) -> String {
        let mut t: Vec<String> = self.softcap.iter().map(|c| format!("softcap{c}")).collect();
        if self.sinks {
            t.push("sinks".into());
        }
        if t.is_empty() {
            "none".into()
        } else {
            t.join("+")
        }
    }
}

use wgpu_attention::reference::random_uniform as random;

fn upload(
    ctx: &Context,
    data: &[f32],
    shape: [usize; 4],
    dtype: &str,
) -> Result<TensorView, String> {
    let t = if dtype == "f16" {
        let h: Vec<half::f16> = data.iter().map(|&x| half::f16::from_f32(x)).collect();
        ctx.upload_f16(&h, shape)
    } else {
        ctx.upload_f32(data, shape)
    };
    t.map(|t| t.view().clone()).map_err(|e| e.to_string())
}

/// A logical BHSD tensor quantized to `fmt` (rows of `shape[3]` values), contiguous, and
/// i8's per-token scales after the rows in the same buffer.
fn upload_quant(
    ctx: &Context,
    data: &[f32],
    shape: [usize; 4],
    fmt: DType,
) -> Result<(TensorView, Option<TensorView>), String> {
    let [b, h, s, d] = shape;
    let (mut bytes, scales) = wgpu_attention::quant::quantize_rows(fmt, data, d, None);
    bytes.resize(bytes.len().div_ceil(4) * 4, 0);
    let scale_off = bytes.len() as u64;
    if fmt == DType::I8 {
        bytes.extend(scales.iter().flat_map(|x| x.to_le_bytes()));
    }
    let words: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let t = ctx
        .upload_f32(&words, [1, 1, 1, words.len()])
        .map_err(|e| e.to_string())?;
    let buf = t.buffer().clone();
    let view = TensorView::new(buf.clone(), fmt, shape, [h * s * d, s * d, d, 1], 0);
    let scales = (fmt == DType::I8)
        .then(|| TensorView::new(buf, DType::F32, [b, h, s, 1], [h * s, s, 1, 1], scale_off));
    Ok((view, scales))
}

struct Timer {
    set: Option<wgpu::QuerySet>,
    resolve: Option<wgpu::Buffer>,
    period_ns: f64,
}

fn run_case(ctx: &Context, c: &Case, timer: &Timer) -> Result<String, String> {
    let compiled_before = ctx.pipeline_compile_times().len();
    let backend = match c.backend.as_str() {
        "auto" => Backend::Auto,
        "flash" => Backend::Flash,
        "memeff" => Backend::MemoryEfficient,
        "naive" => Backend::Naive,
        other => return Err(format!("unknown backend {other}")),
    };
    let hkv = c.hkv.unwrap_or(c.h);
    let qs = [c.b, c.h, c.sq, c.d];
    let ks = [c.b, hkv, c.sk, c.d];
    let qh: Vec<f32> = random(qs.iter().product(), 1)
        .iter()
        .map(|x| x * c.gain)
        .collect();
    let q = upload(ctx, &qh, qs, &c.dtype)?;
    // Paged: a pool of exactly the pages the batch needs, handed out in reverse order.
    let (pool, paged) = match c.paged {
        Some(ps) => {
            let pps = c.sk.div_ceil(ps);
            let pages = c.b * pps;
            let table = (0..pages as u32).rev().collect();
            let pg = wgpu_attention::PagedKv::new(ps, pps, table).seq_len(c.sk);
            ([pages, hkv, ps, c.d], Some(pg))
        }
        None => (ks, None),
    };
    let (k, v, kv_scales) = match c.kv {
        Some(fmt) => {
            let (k, ks) = upload_quant(ctx, &random(pool.iter().product(), 2), pool, fmt)?;
            let (v, vs) = upload_quant(ctx, &random(pool.iter().product(), 3), pool, fmt)?;
            let scales = match (ks, vs) {
                (Some(k), Some(v)) => Some(wgpu_attention::KvScales::PerToken { k, v }),
                _ => None,
            };
            (k, v, scales)
        }
        None => (
            upload(ctx, &random(pool.iter().product(), 2), pool, &c.dtype)?,
            upload(ctx, &random(pool.iter().product(), 3), pool, &c.dtype)?,
            None,
        ),
    };
    let mask = match c.mask.as_str() {
        "none" => Mask::none(),
        "causal" => Mask::none().causal(CausalAlignment::TopLeft),
        "pad50" => Mask::none().key_lengths(vec![(c.sk / 2) as u32; c.b]),
        "boolmask50" => {
            let mut m = vec![false; c.sq * c.sk];
            for i in 0..c.sq {
                for j in 0..c.sk / 2 {
                    m[i * c.sk + j] = true;
                }
            }
            let t = ctx
                .upload_bool(&m, [1, 1, c.sq, c.sk])
                .map_err(|e| e.to_string())?;
            let summary = ctx
                .block_mask_blocking(t.view())
                .map_err(|e| e.to_string())?;
            Mask::none().bool_mask_with_summary(t.view().clone(), summary)
        }
        "bias" => {
            let t = upload(
                ctx,
                &random(c.h * c.sq * c.sk, 4),
                [1, c.h, c.sq, c.sk],
                &c.dtype,
            )?;
            Mask::none().bias(t)
        }
        other => return Err(format!("unknown mask {other}")),
    };
    let mut opts = AttentionOptions::with_mask(mask).backend(backend);
    if !c.subgroups {
        opts.subgroups = Subgroups::Off;
    }
    opts.tuning.flash_rows_per_thread = c.rpt;
    opts.tuning.flash_block_k = c.bk;
    opts.tuning.flash_threads_per_row = c.tpr;
    opts.softcap = c.softcap;
    if c.sinks {
        opts.sinks = Some(vec![0.5; c.h]);
    }
    opts.paged = paged;
    opts.kv_scales = kv_scales;
    let plan = ctx.plan(&q, &k, &v, &opts).map_err(|e| e.to_string())?;
    let dtype = if c.dtype == "f16" {
        DType::F16
    } else {
        DType::F32
    };
    let out = ctx
        .empty([c.b, c.h, c.sq, c.d], dtype)
        .map_err(|e| e.to_string())?;
    // The backward pass reads the forward's output and log-sum-exp, and writes gradients.
    let backward = if c.backward {
        let e = |e: wgpu_attention::Error| e.to_string();
        // So that `scratch_mb` is this call's, not the largest of the cases before it.
        ctx.release_cached().map_err(e)?;
        let lse = ctx.empty([c.b, c.h, c.sq, 1], DType::F32).map_err(e)?;
        let fwd = opts.clone().lse_output(lse.view().clone());
        ctx.attention_into_blocking(&q, &k, &v, out.view(), &fwd)
            .map_err(e)?;
        let d_out = upload(ctx, &random(qs.iter().product(), 5), qs, &c.dtype)?;
        let grads = Gradients {
            dq: ctx.empty(qs, dtype).map_err(e)?,
            dk: ctx.empty(pool, dtype).map_err(e)?,
            dv: ctx.empty(pool, dtype).map_err(e)?,
            dbias: None,
            dsink: if c.sinks {
                Some(ctx.empty([1, c.h, 1, 1], DType::F32).map_err(e)?)
            } else {
                None
            },
        };
        Some((lse, d_out, grads))
    } else {
        None
    };
    let mut bplan = None;
    let mut times = Vec::new();
    for it in 0..=c.iters {
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        if let Some(set) = &timer.set {
            enc.write_timestamp(set, 0);
        }
        match &backward {
            Some((lse, d_out, grads)) => {
                let inputs = BackwardInputs {
                    q: &q,
                    k: &k,
                    v: &v,
                    out: out.view(),
                    d_out,
                    lse: lse.view(),
                };
                let p = ctx
                    .record_attention_backward(&mut enc, &inputs, &grads.views(), &opts)
                    .map_err(|e| e.to_string())?;
                bplan = Some(p);
            }
            None => {
                ctx.record_attention(&mut enc, &q, &k, &v, out.view(), &opts)
                    .map_err(|e| e.to_string())?;
            }
        }
        if let (Some(set), Some(res)) = (&timer.set, &timer.resolve) {
            enc.write_timestamp(set, 1);
            enc.resolve_query_set(set, 0..2, res, 0);
        }
        let t0 = Instant::now();
        ctx.queue().submit([enc.finish()]);
        ctx.wait_blocking().map_err(|e| e.to_string())?;
        let wall = t0.elapsed().as_secs_f64() * 1e3;
        let ms = match &timer.resolve {
            Some(res) => {
                let view = TensorView::new(res.clone(), DType::F32, [1, 1, 1, 4], [4, 4, 4, 1], 0);
                let raw = ctx
                    .download_f32_blocking(&view)
                    .map_err(|e| e.to_string())?;
                let bits: Vec<u32> = raw.iter().map(|x| x.to_bits()).collect();
                let t0 = bits[0] as u64 | (bits[1] as u64) << 32;
                let t1 = bits[2] as u64 | (bits[3] as u64) << 32;
                let ms = t1.saturating_sub(t0) as f64 * timer.period_ns / 1e6;
                if ms > 0.0 { ms } else { wall }
            }
            None => wall,
        };
        if it > 0 {
            times.push(ms);
        }
    }
    // `--counts`: what the flash kernel counted in one more run (tiles loaded, and the
    // cooperative-matrix kernel's rescale round trips).
    let counts = if std::env::args().any(|a| a == "--counts") {
        let k = ctx
            .debug_kernel_counts(&q, &k, &v, out.view(), &opts)
            .map_err(|e| e.to_string())?;
        format!(",\"key_tiles\":{},\"rescales\":{}", k.key_tiles, k.rescales)
    } else {
        String::new()
    };
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    let flops_per = if c.backward { 10.0 } else { 4.0 };
    let gflops = flops_per * (c.b * c.h * c.sq * c.sk * c.d) as f64 / (median * 1e-3) / 1e9;
    // The least traffic a call needs (Q, K, V read once, O written once): what decode is
    // bound by.
    let elem = if c.dtype == "f16" { 2.0 } else { 4.0 };
    let kv_elem =
        c.kv.map_or(elem, |f| f.size() as f64 / f.block_len() as f64);
    let bytes =
        (2 * c.b * c.h * c.sq * c.d) as f64 * elem + (2 * c.b * hkv * c.sk * c.d) as f64 * kv_elem;
    let gbps = bytes / (median * 1e-3) / 1e9;
    // What the case's first call compiled (nothing when an earlier case compiled it), each
    // pipeline with its time.
    let compiled = ctx.pipeline_compile_times();
    let compile = &compiled[compiled_before.min(compiled.len())..];
    let compile_s: f64 = compile.iter().map(|(_, t)| t.as_secs_f64()).sum();
    let each: Vec<String> = compile
        .iter()
        .map(|(label, t)| {
            let short = label
                .trim_start_matches("wgpu-attention ")
                .replace('"', "'");
            format!("\"{short}\":{:.3}", t.as_secs_f64())
        })
        .collect();
    let compiled = format!(
        "\"compiled\":{},\"compile_s\":{compile_s:.3},\"compile_each\":{{{}}}",
        compile.len(),
        each.join(",")
    );
    if let Some(p) = &bplan {
        let scratch_mb = ctx.created_resources().scratch_bytes as f64 / (1 << 20) as f64;
        let t = p.tile;
        return Ok(format!(
            "{{\"pass\":\"backward\",\"backend\":\"{}\",\"mask\":\"{}\",\"dtype\":\"{}\",\"b\":{},\"h\":{},\"sq\":{},\"sk\":{},\"d\":{},\"median_ms\":{:.3},\"gflops\":{:.2},\"ran\":\"{}\",\"tile\":\"{}x{} tpr{}\",\"scratch_mb\":{:.2},{}}}",
            c.backend,
            c.mask,
            c.dtype,
            c.b,
            c.h,
            c.sq,
            c.sk,
            c.d,
            median,
            gflops,
            p.backend.name(),
            t.block,
            t.block,
            t.threads_per_row,
            scratch_mb,
            compiled
        ));
    }
    Ok(format!(
        "{{\"backend\":\"{}\",\"mask\":\"{}\",\"terms\":\"{}\",\"kv\":\"{}\",\"dtype\":\"{}\",\"b\":{},\"h\":{},\"hkv\":{hkv},\"sq\":{},\"sk\":{},\"d\":{},\"median_ms\":{:.3},\"gflops\":{:.2},\"gbps\":{:.1},\"ran\":\"{}\",\"parts\":{},\"tile\":\"bk{} rpt{} tpr{}\",{},{}{}}}",
        c.backend,
        c.mask,
        c.terms(),
        c.paged
            .map_or("contiguous".to_string(), |n| format!("paged{n}"))
            + &c.kv.map_or(String::new(), |f| format!(" {f}")),
        c.dtype,
        c.b,
        c.h,
        c.sq,
        c.sk,
        c.d,
        median,
        gflops,
        gbps,
        plan.backend.name(),
        plan.parts,
        plan.variant.block_k(),
        plan.variant.rows_per_thread(),
        plan.variant.threads_per_row(),
        compiled,
        plan.variant.cost(),
        counts
    ))
}

/// A context on a device of the default adapter whose storage bindings hold at most `max`
/// bytes (`--max-binding`), with the crate's optional features.
fn limited_context(max: u64) -> Context {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .unwrap_or_else(|e| panic!("no adapter: {e}"));
    let limits = adapter.limits();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: adapter.features() & (wgpu_attention::OPTIONAL_FEATURES | TIMESTAMPS),
        required_limits: wgpu::Limits {
            max_storage_buffer_binding_size: max.min(limits.max_storage_buffer_binding_size),
            ..limits
        },
        ..Default::default()
    }))
    .unwrap_or_else(|e| panic!("no device: {e}"));
    Context::from_device(device, queue, &adapter.get_info())
}

/// A context whose shaders run without wgpu's runtime checks (`--unchecked`), or with its
/// bounds checks only (`--checks bounds`); with wgpu's experimental cooperative matrices too
/// when `experimental`.
fn unchecked_context(experimental: bool) -> Context {
    let bounds_only = std::env::args().any(|a| a == "bounds");
    let checks = wgpu::ShaderRuntimeChecks {
        bounds_checks: bounds_only,
        ..wgpu::ShaderRuntimeChecks::unchecked()
    };
    // SAFETY: benchmarking the crate's own shaders, whose views are validated before dispatch,
    // with wgpu's experimental features only when asked for.
    unsafe { Context::open_blocking(experimental, Some(checks), TIMESTAMPS) }
        .unwrap_or_else(|e| panic!("no adapter: {e}"))
}

/// The features the timer needs, requested where the adapter has them.
const TIMESTAMPS: wgpu::Features =
    wgpu::Features::TIMESTAMP_QUERY.union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS);

fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<String> = all
        .iter()
        .filter(|a| {
            !matches!(
                a.as_str(),
                "--bench"
                    | "--unchecked"
                    | "--experimental"
                    | "--checks"
                    | "bounds"
                    | "--counts"
                    | "--sinks"
            )
        })
        .cloned()
        .collect();
    let mut base = Case {
        backend: "auto".into(),
        mask: "none".into(),
        dtype: "f32".into(),
        b: 1,
        h: 8,
        sq: 1024,
        sk: 1024,
        d: 64,
        iters: 3,
        subgroups: true,
        rpt: None,
        bk: None,
        tpr: None,
        gain: 1.0,
        backward: false,
        softcap: None,
        sinks: false,
        hkv: None,
        paged: None,
        kv: None,
    };
    let mut explicit = false;
    let mut grid = "default".to_string();
    let mut max_binding = None;
    let mut pipeline_cache: Option<std::path::PathBuf> = None;
    let mut i = 0;
    while i < args.len() {
        let val = args.get(i + 1).cloned().unwrap_or_default();
        let num = || {
            val.parse::<usize>()
                .unwrap_or_else(|_| panic!("{} needs a number, got {val:?}", args[i]))
        };
        match args[i].as_str() {
            "--backend" => base.backend = val.clone(),
            "--mask" => base.mask = val.clone(),
            "--dtype" => base.dtype = val.clone(),
            "--b" => base.b = num(),
            "--h" => base.h = num(),
            "--sq" => base.sq = num(),
            "--sk" => base.sk = num(),
            "--d" => base.d = num(),
            "--hkv" => base.hkv = Some(num()),
            "--paged" => base.paged = Some(num()),
            "--kv" => {
                base.kv = match val.as_str() {
                    "f16" | "f32" | "bf16" => None,
                    "q8_0" => Some(DType::Q8_0),
                    "q4_0" => Some(DType::Q4_0),
                    "i8" | "int8" => Some(DType::I8),
                    "e4m3" => Some(DType::E4M3),
                    "e5m2" => Some(DType::E5M2),
                    other => panic!("--kv takes f16, q8_0, q4_0, i8, e4m3 or e5m2, got {other:?}"),
                }
            }
            "--iters" => base.iters = num().max(1),
            "--grid" => grid = val.clone(),
            "--subgroups" => base.subgroups = val != "off",
            "--rpt" => base.rpt = Some(num() as u32),
            "--bk" => base.bk = Some(num() as u32),
            "--tpr" => base.tpr = Some(num() as u32),
            "--max-binding" => max_binding = Some(num() as u64),
            "--pipeline-cache" => pipeline_cache = Some(val.clone().into()),
            "--softcap" => {
                base.softcap = Some(
                    val.parse()
                        .unwrap_or_else(|_| panic!("--softcap needs a number, got {val:?}")),
                )
            }
            "--pass" => match val.as_str() {
                "forward" => base.backward = false,
                "backward" => base.backward = true,
                other => panic!("--pass is forward or backward, not {other:?}"),
            },
            "--gain" => {
                base.gain = val
                    .parse()
                    .unwrap_or_else(|_| panic!("--gain needs a number, got {val:?}"))
            }
            other => panic!("unknown flag {other}"),
        }
        if !matches!(
            args[i].as_str(),
            "--iters"
                | "--grid"
                | "--subgroups"
                | "--rpt"
                | "--bk"
                | "--tpr"
                | "--max-binding"
                | "--pipeline-cache"
                | "--pass"
        ) {
            explicit = true;
        }
        i += 2;
    }
    base.sinks = all.iter().any(|a| a == "--sinks");
    let experimental = all.iter().any(|a| a == "--experimental");
    let ctx = if let Some(max) = max_binding {
        limited_context(max)
    } else if all.iter().any(|a| a == "--unchecked" || a == "--checks") {
        unchecked_context(experimental)
    } else {
        // SAFETY: wgpu's experimental cooperative matrices only with --experimental.
        unsafe { Context::open_blocking(experimental, None, TIMESTAMPS) }
            .unwrap_or_else(|e| panic!("no adapter: {e}"))
    };
    let info = ctx.adapter_info();
    eprintln!(
        "adapter: {} ({:?}), date via `date -u`",
        info.name, info.backend
    );
    if let Some(path) = &pipeline_cache {
        let data = std::fs::read(path).ok();
        eprintln!(
            "pipeline cache {}: {} bytes read",
            path.display(),
            data.as_ref().map_or(0, Vec::len)
        );
        // SAFETY: the file holds what an earlier run of this bench wrote from
        // `pipeline_cache_data`, on this machine's adapter.
        unsafe { ctx.use_pipeline_cache(data.as_deref()) }
            .unwrap_or_else(|e| panic!("--pipeline-cache: {e}"));
    }
    let timer = if ctx.caps().timestamp_query {
        let set = ctx.device().create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("bench"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("bench resolve"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Timer {
            set: Some(set),
            resolve: Some(resolve),
            period_ns: ctx.queue().get_timestamp_period() as f64,
        }
    } else {
        Timer {
            set: None,
            resolve: None,
            period_ns: 1.0,
        }
    };
    // Every grid case starts from `base`, so --iters, --subgroups, --rpt and --bk apply.
    let case =
        |backend: &str, mask: &str, dtype: &str, b: usize, h: usize, s: usize, d: usize| Case {
            backend: backend.into(),
            mask: mask.into(),
            dtype: dtype.into(),
            b,
            h,
            sq: s,
            sk: s,
            d,
            ..base.clone()
        };
    let mut cases = Vec::new();
    if explicit {
        cases.push(base.clone());
    } else if grid == "sweep" {
        // The plot's data: time against sequence length per backend and mask.
        for s in [256, 512, 1024, 2048] {
            for m in ["none", "causal", "pad50", "boolmask50", "bias"] {
                cases.push(case("flash", m, "f32", 1, 8, s, 64));
            }
            cases.push(case("flash", "none", "f16", 1, 8, s, 64));
            cases.push(case("memeff", "none", "f32", 1, 8, s, 64));
            cases.push(case("naive", "none", "f32", 1, 8, s, 64));
        }
    } else if grid == "backward" {
        // The backward pass's targets (BENCHMARKS.md): against the forward, against naive,
        // masked against unmasked, and a long sequence's memory.
        for backward in [false, true] {
            cases.push(Case {
                backward,
                ..case("flash", "none", "f32", 1, 8, 1024, 64)
            });
        }
        for b in ["flash", "naive"] {
            cases.push(Case {
                backward: true,
                ..case(b, "none", "f32", 1, 8, 2048, 64)
            });
        }
        for m in ["pad50", "causal"] {
            cases.push(Case {
                backward: true,
                ..case("flash", m, "f32", 1, 8, 2048, 64)
            });
        }
        cases.push(Case {
            backward: true,
            iters: 1,
            ..case("flash", "causal", "f32", 1, 1, 16384, 64)
        });
    } else if grid == "gpu" {
        // The real-GPU comparison with PyTorch (benches/torch_sdpa.py runs the same shapes).
        for s in [1024, 4096] {
            for d in [64, 128] {
                for m in ["none", "causal", "pad50"] {
                    cases.push(case("auto", m, "f16", 8, 16, s, d));
                }
            }
        }
    } else {
        // Decode: one query row over 8192 keys, flash forced vs the decode path (Auto).
        for backend in ["flash", "auto"] {
            cases.push(Case {
                sq: 1,
                sk: 8192,
                ..case(backend, "none", "f32", 1, 32, 1, 128)
            });
        }
        cases.push(case("naive", "none", "f32", 1, 8, 2048, 64));
        for m in ["none", "causal", "pad50", "boolmask50", "bias"] {
            cases.push(case("flash", m, "f32", 1, 8, 2048, 64));
        }
        cases.push(case("flash", "none", "f16", 1, 8, 2048, 64));
        for s in [256, 512, 1024] {
            for b in ["flash", "memeff", "naive"] {
                cases.push(case(b, "none", "f32", 1, 8, s, 64));
            }
        }
    }
    let mut failed = false;
    for c in cases {
        match run_case(&ctx, &c, &timer) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("case {c:?} failed: {e}");
                failed = true;
            }
        }
    }
    if let (Some(path), Some(data)) = (&pipeline_cache, ctx.pipeline_cache_data()) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &data)
            .and_then(|()| std::fs::rename(&tmp, path))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        eprintln!(
            "pipeline cache {}: {} bytes written",
            path.display(),
            data.len()
        );
    }
    if failed {
        std::process::exit(1);
    }
}
