//! Shared test machinery: one context per test binary, seeded inputs, NaN-poisoned
//! outputs, the f64 reference, and the tolerances (stated once, here).
#![allow(dead_code)]

use std::sync::OnceLock;

use half::f16;
use wgpu_attention::reference::{self, HostMask, HostTensor};
use wgpu_attention::{
    AttentionOptions, Backend, CausalAlignment, Context, DType, KvScales, Mask, PagedKv, Subgroups,
    Tensor, TensorView, Tuning, Window, quant,
};

/// Unit roundoff u of a dtype, half its machine epsilon: 2^-24 (f32), 2^-11 (f16), 2^-8
/// (bf16). Rounding to nearest moves a value by at most u relative.
pub fn unit_roundoff(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 2f64.powi(-11),
        DType::BF16 => 2f64.powi(-8),
        _ => 2f64.powi(-24),
    }
}

/// The longest reduction in these suites: keys per row (1023) and query rows per key.
pub const MAX_REDUCTION: usize = 1024;

/// The forward's tolerance, `|gpu − ref| ≤ atol + rtol·|ref|`, for an output stored as `out`
/// that is a convex combination of values held as `inner`: the softmax weights (f32 in
/// every kernel but the cooperative-matrix one, whose P·V multiplies f16 weights), or the
/// partial outputs a merge combines (stored in their own dtype). Derived, not fitted: the
/// inputs are rounded to their dtype before the reference sees them, so only the kernel's
/// own roundings count, and |V| ≤ 1 in every suite:
/// - the stored output: rounding moves it by at most u(out)·|O|; rtol = 2·u(out), the factor
///   2 covering the f32 value's own relative error before the store;
/// - the inner values: each weight is off by at most u(inner) relative and they sum to 1, so
///   the weighted sum of V is off by at most u(inner)·max|V| (likewise a merge of partial
///   outputs, each off by u(inner)·|O| ≤ u(inner), with weights summing to 1): 2·u(inner)
///   absolute;
/// - f32 sums over the reduction (the head dim's dot products, the keys' P·V): errors of
///   random sign grow as √n·u(f32); with n ≤ `MAX_REDUCTION`, 4·√n·u(f32) bounds them.
pub fn tolerance_for(out: DType, inner: DType) -> (f64, f64) {
    let u32_ = unit_roundoff(DType::F32);
    let atol = 2.0 * unit_roundoff(inner) + 4.0 * (MAX_REDUCTION as f64).sqrt() * u32_;
    (atol, 2.0 * unit_roundoff(out))
}

/// [`tolerance_for`] with f32 inner values: every kernel but the cooperative-matrix one.
pub fn tolerance(out: DType) -> (f64, f64) {
    tolerance_for(out, DType::F32)
}

/// The test tier. The default run (the README's `cargo test --release`) covers every
/// backend, mask kind, dtype and layout at least once, within minutes on a CPU adapter;
/// `WGPU_ATTENTION_TESTS=full` (what `.ci/run` sets) runs every product in full. Any other
/// value is a mistake, not a quiet default.
pub fn full_tier() -> bool {
    match std::env::var("WGPU_ATTENTION_TESTS").as_deref() {
        Ok("full") => true,
        Ok("default") | Err(_) => false,
        Ok(other) => panic!("WGPU_ATTENTION_TESTS={other}: expected `full` or `default`"),
    }
}

/// The items of a product the tier runs: all of them in the full tier, else those `keep`
/// picks by index.
pub fn tiered<T>(items: impl IntoIterator<Item = T>, keep: impl Fn(usize) -> bool) -> Vec<T> {
    let full = full_tier();
    items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| full || keep(*i))
        .map(|(_, x)| x)
        .collect()
}

/// The context of this test binary. No adapter is a failure, never a skip.
pub fn ctx() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        // RUST_LOG=wgpu_attention=debug names each pipeline compiled and its time, after
        // the test that compiled it.
        let _ = env_logger::builder()
            .is_test(true)
            .format(|f, r| {
                use std::io::Write;
                let t = std::thread::current();
                writeln!(f, "[{}] {}", t.name().unwrap_or("?"), r.args())
            })
            .try_init();
        open_ctx()
    })
}

fn open_ctx() -> Context {
    match Context::new_blocking() {
        Ok(c) => {
            let i = c.adapter_info();
            eprintln!("testing on {} ({:?}, {})", i.name, i.backend, i.driver_info);
            // CI's GL pass must not run on another backend unnoticed.
            if let Ok(want) = std::env::var("WGPU_ATTENTION_EXPECT_BACKEND") {
                assert_eq!(
                    format!("{:?}", i.backend).to_lowercase(),
                    want.to_lowercase(),
                    "WGPU_ATTENTION_EXPECT_BACKEND"
                );
            }
            // CI's second lavapipe run must not fall back to the system driver unnoticed.
            if let Ok(min) = std::env::var("WGPU_ATTENTION_EXPECT_MESA") {
                let min: u32 = min
                    .parse()
                    .expect("WGPU_ATTENTION_EXPECT_MESA: a major version");
                let got = wgpu_attention::test_hooks::mesa_major(&i.driver_info);
                assert!(
                    got.is_some_and(|v| v >= min),
                    "expected Mesa {min} or newer, the adapter's driver is {:?}",
                    i.driver_info
                );
            }
            c
        }
        Err(e) => panic!(
            "no wgpu adapter for the GPU tests: {e} (install mesa-vulkan-drivers for lavapipe)"
        ),
    }
}

/// A device of the default adapter with the crate's optional features and the limits that
/// `limits` makes of the adapter's: for contexts built with `Context::from_device*`.
pub fn own_device(
    limits: impl FnOnce(wgpu::Limits) -> wgpu::Limits,
) -> (wgpu::AdapterInfo, wgpu::Device, wgpu::Queue) {
    // On GL every instance of the process shares one EGL context: the shared context is
    // opened first, and this instance's adapter and device are made under its lock, so that
    // neither races the other (CI's GL pass saw `BadAccess` when a test binary's threads
    // opened both at once).
    let shared = ctx();
    let _held = shared.lock_device();
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("adapter");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: adapter.features() & wgpu_attention::OPTIONAL_FEATURES,
        required_limits: limits(adapter.limits()),
        ..Default::default()
    }))
    .expect("device");
    (adapter.get_info(), device, queue)
}

/// Seeded uniform values in [-1, 1), never all zeros.
pub use wgpu_attention::reference::random_uniform as random;

pub fn round_to(dtype: DType, x: &[f32]) -> Vec<f32> {
    match dtype {
        DType::F16 => x.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        DType::BF16 => x
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect(),
        _ => x.to_vec(),
    }
}

/// Memory layout of Q/K/V in a test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layout {
    Bhsd,
    Bshd,
    /// BHSD placed at an odd element offset inside a larger buffer.
    Offset,
}

/// Uploads a logical BHSD host tensor in `layout`. The tensor owns its buffer and drops it
/// under the context's device lock (on GL a raw buffer dropped while another test thread
/// compiles would make wgpu panic), so tests keep tensors and lend out their views.
pub fn upload(
    ctx: &Context,
    data: &[f32],
    shape: [usize; 4],
    dtype: DType,
    layout: Layout,
) -> Tensor {
    let [b, h, s, d] = shape;
    type ViewOf = Box<dyn Fn(&Tensor) -> Tensor>;
    let (mem, view_of): (Vec<f32>, ViewOf) = match layout {
        Layout::Bhsd => (
            data.to_vec(),
            Box::new(move |t| t.reshaped(dtype, shape, bhsd_strides(shape), 0)),
        ),
        Layout::Bshd => {
            let mut m = vec![0.0; data.len()];
            for ib in 0..b {
                for ih in 0..h {
                    for is in 0..s {
                        for id in 0..d {
                            m[((ib * s + is) * h + ih) * d + id] =
                                data[((ib * h + ih) * s + is) * d + id];
                        }
                    }
                }
            }
            (
                m,
                Box::new(move |t| {
                    let v = TensorView::bshd(t.buffer().clone(), dtype, [b, s, h, d]);
                    t.reshaped(dtype, v.shape, v.strides, 0)
                }),
            )
        }
        Layout::Offset => {
            let pad = 3;
            let mut m = random(pad, 99);
            m.extend_from_slice(data);
            m.extend(random(5, 98));
            let off = pad as u64 * dtype.size();
            (
                m,
                Box::new(move |t| t.reshaped(dtype, shape, bhsd_strides(shape), off)),
            )
        }
    };
    view_of(&buffer_of(ctx, &mem, dtype))
}

/// A case's K and V (logical BHSD host data) scattered into pools of `ps`-key pages in the
/// case's layout (BHSD: head-major pages; BSHD: token-major, vLLM's), the pages of every
/// batch item shuffled among two spare pages. Every slot no key lands in holds large junk,
/// so a key read from the wrong place cannot pass. Checks `reference::gather_pages` against
/// the contiguous data on the way.
pub fn paged_pool(
    ctx: &Context,
    c: &Case,
    kh: &[f32],
    vh: &[f32],
    ps: usize,
) -> (Tensor, Tensor, PagedKv) {
    let (pool_k, pool_v, paged) = paged_layout(c, kh, vh, ps);
    let pages = pool_k.len() / (c.hkv * ps * c.dk);
    let k = upload(ctx, &pool_k, [pages, c.hkv, ps, c.dk], c.dtype, c.layout);
    let v = upload(ctx, &pool_v, [pages, c.hkv, ps, c.dv], c.dtype, c.layout);
    (k, v, paged)
}

/// The pages of `paged_pool` (the case's batch items' pages among two spare ones, shuffled):
/// the pool's page count, the table, and the `PagedKv` reading through it.
fn page_order(c: &Case, ps: usize) -> (usize, Vec<u32>, PagedKv) {
    let pps = c.sk.div_ceil(ps);
    let pages = c.b * pps + 2;
    // A seeded shuffle of the pages (Fisher-Yates on the reference's generator).
    let mut order: Vec<u32> = (0..pages as u32).collect();
    let r = random(pages, c.seed + 17);
    for i in (1..pages).rev() {
        let j = (((r[i] + 1.0) / 2.0) * (i + 1) as f32) as usize % (i + 1);
        order.swap(i, j);
    }
    let table: Vec<u32> = order[..c.b * pps].to_vec();
    let paged = PagedKv::new(ps, pps, table.clone()).seq_len(c.sk);
    (pages, table, paged)
}

/// `paged_pool`'s pools on the host (logical `[pages, hkv, ps, d]`) and their table.
pub fn paged_layout(c: &Case, kh: &[f32], vh: &[f32], ps: usize) -> (Vec<f32>, Vec<f32>, PagedKv) {
    let (pages, table, paged) = page_order(c, ps);
    let pps = paged.pages_per_seq;
    let pool = |data: &[f32], d: usize, seed: u64| {
        let mut m: Vec<f32> = random(pages * c.hkv * ps * d, seed)
            .iter()
            .map(|x| 300.0 + 100.0 * x)
            .collect();
        for ib in 0..c.b {
            for ih in 0..c.hkv {
                for j in 0..c.sk {
                    let page = table[ib * pps + j / ps] as usize;
                    let at = ((page * c.hkv + ih) * ps + j % ps) * d;
                    let from = ((ib * c.hkv + ih) * c.sk + j) * d;
                    m[at..at + d].copy_from_slice(&data[from..from + d]);
                }
            }
        }
        let shape = [pages, c.hkv, ps, d];
        let host = HostTensor { data: &m, shape };
        assert_eq!(reference::gather_pages(&host, &paged), data, "gather_pages");
        m
    };
    (
        pool(kh, c.dk, c.seed + 18),
        pool(vh, c.dv, c.seed + 19),
        paged,
    )
}

/// The per-head scales of a test's 8-bit float K (`base` 0.25) or V (0.5): a different one
/// per head, so that a kernel reading another head's scale cannot pass.
pub fn fp8_head_scales(heads: usize, base: f32) -> Vec<f32> {
    (0..heads).map(|h| base * (1.0 + h as f32)).collect()
}

/// A quantized K or V on the GPU: the view, and i8's per-token scales (a view into the same
/// buffer).
pub struct QuantTensor {
    pub tensor: Tensor,
    pub scales: Option<Tensor>,
}

/// Uploads a logical BHSD host tensor quantized to `fmt` in `layout` (rows of `shape[3]`
/// values, one per token and head; `Offset` puts the first row at an odd byte where the
/// format allows, an even one for the block formats), with i8's per-token scales in the same
/// buffer after the rows. 8-bit floats are scaled by `head_scales` per head. Returns the
/// tensor and the values it holds, dequantized (`quant::dequantize_rows`), in BHSD order.
pub fn quantized_upload(
    ctx: &Context,
    data: &[f32],
    shape: [usize; 4],
    fmt: DType,
    layout: Layout,
    head_scales: &[f32],
) -> (QuantTensor, Vec<f32>) {
    let [b, h, s, d] = shape;
    let rows = b * h * s;
    let row_scales: Vec<f32> = (0..rows).map(|r| head_scales[(r / s) % h]).collect();
    let (bytes, scales) = quant::quantize_rows(fmt, data, d, Some(&row_scales));
    let deq = quant::dequantize_rows(fmt, &bytes, d, &scales);
    let row_bytes = fmt.bytes(d as u64) as usize;
    // Memory row of logical row (b, h, s), and the view's strides.
    let bshd = layout == Layout::Bshd;
    let mem_row = |ib: usize, ih: usize, is: usize| {
        if bshd {
            (ib * s + is) * h + ih
        } else {
            (ib * h + ih) * s + is
        }
    };
    let strides = if bshd {
        [s * h * d, d, h * d, 1]
    } else {
        bhsd_strides(shape)
    };
    let off = match layout {
        Layout::Offset if fmt.block_len() > 1 => 6,
        Layout::Offset => 3,
        _ => 0,
    };
    let scale_off = (off + rows * row_bytes).div_ceil(4) * 4;
    let mut mem = vec![0xa5u8; scale_off + rows * 4 + 8];
    for ib in 0..b {
        for ih in 0..h {
            for is in 0..s {
                let r = (ib * h + ih) * s + is;
                let m = mem_row(ib, ih, is);
                mem[off + m * row_bytes..][..row_bytes]
                    .copy_from_slice(&bytes[r * row_bytes..][..row_bytes]);
                if fmt == DType::I8 {
                    mem[scale_off + m * 4..][..4].copy_from_slice(&scales[r].to_le_bytes());
                }
            }
        }
    }
    let words: Vec<f32> = mem
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let t = buffer_of(ctx, &words, DType::F32);
    let tensor = t.reshaped(fmt, shape, strides, off as u64);
    let scales = (fmt == DType::I8).then(|| {
        let st = [strides[0] / d, strides[1] / d, strides[2] / d, 1];
        t.reshaped(DType::F32, [b, h, s, 1], st, scale_off as u64)
    });
    (QuantTensor { tensor, scales }, deq)
}

/// A case's K and V quantized to `fmt` (contiguous, or in a shuffled pool of `ps`-key pages
/// as `paged_pool` lays them out); returns them, the page table, and the dequantized K and V
/// (logical BHSD) the reference reads.
#[allow(clippy::type_complexity)]
pub fn quantized_kv(
    ctx: &Context,
    c: &Case,
    fmt: DType,
    kh: &[f32],
    vh: &[f32],
    ps: Option<usize>,
) -> (
    QuantTensor,
    QuantTensor,
    Option<PagedKv>,
    Vec<f32>,
    Vec<f32>,
) {
    let (ks, vs) = (fp8_head_scales(c.hkv, 0.25), fp8_head_scales(c.hkv, 0.5));
    let Some(ps) = ps else {
        let (k, kd) = quantized_upload(ctx, kh, [c.b, c.hkv, c.sk, c.dk], fmt, c.layout, &ks);
        let (v, vd) = quantized_upload(ctx, vh, [c.b, c.hkv, c.sk, c.dv], fmt, c.layout, &vs);
        return (k, v, None, kd, vd);
    };
    let (pool_k, pool_v, table) = paged_layout(c, kh, vh, ps);
    let pages = pool_k.len() / (c.hkv * ps * c.dk);
    let (k, kd) = quantized_upload(ctx, &pool_k, [pages, c.hkv, ps, c.dk], fmt, c.layout, &ks);
    let (v, vd) = quantized_upload(ctx, &pool_v, [pages, c.hkv, ps, c.dv], fmt, c.layout, &vs);
    let gather = |pool: &[f32], d: usize| {
        let host = HostTensor {
            data: pool,
            shape: [pages, c.hkv, ps, d],
        };
        reference::gather_pages(&host, &table)
    };
    let (kg, vg) = (gather(&kd, c.dk), gather(&vd, c.dv));
    (k, v, Some(table), kg, vg)
}

/// Contiguous BHSD strides of `shape`.
pub fn bhsd_strides([_, h, s, d]: [usize; 4]) -> [usize; 4] {
    [h * s * d, s * d, d, 1]
}

/// A flat tensor `[1, 1, 1, n]` holding `data` in `dtype`.
pub fn buffer_of(ctx: &Context, data: &[f32], dtype: DType) -> Tensor {
    let shape = [1, 1, 1, data.len()];
    match dtype {
        DType::F16 => ctx.upload_f16(
            &data.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(),
            shape,
        ),
        DType::BF16 => ctx.upload_bf16(
            &data
                .iter()
                .map(|&x| half::bf16::from_f32(x))
                .collect::<Vec<_>>(),
            shape,
        ),
        _ => ctx.upload_f32(data, shape),
    }
    .expect("upload")
}

/// A packed variable-length f32 tensor `[total, heads, d]` as the `[1, heads, total, d]`
/// view varlen calls take.
pub fn packed_varlen(ctx: &Context, data: &[f32], total: usize, heads: usize, d: usize) -> Tensor {
    let t = buffer_of(ctx, data, DType::F32);
    let v = TensorView::packed_varlen(t.buffer().clone(), DType::F32, total, heads, d);
    t.reshaped(DType::F32, v.shape, v.strides, 0)
}

/// A NaN-filled output tensor, so an unwritten element cannot pass.
pub fn nan_output(ctx: &Context, shape: [usize; 4], dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    buffer_of(ctx, &vec![f32::NAN; n], dtype).reshaped(dtype, shape, bhsd_strides(shape), 0)
}

/// Mask kinds of a test case, as host data.
#[derive(Clone, Debug, Default)]
pub struct MaskSpec {
    pub causal: Option<CausalAlignment>,
    pub alignment: CausalAlignment,
    pub key_lengths: Option<Vec<u32>>,
    pub query_lengths: Option<Vec<u32>>,
    pub window: Option<Window>,
    /// (data, shape)
    pub bool_mask: Option<(Vec<bool>, [usize; 4])>,
    /// (data, shape, dtype)
    pub bias: Option<(Vec<f32>, [usize; 4], DType)>,
    pub alibi: Option<Vec<f32>>,
    /// Pass a precomputed block summary with the bool mask.
    pub summary: bool,
}

impl MaskSpec {
    pub fn name(&self) -> String {
        let mut v = Vec::new();
        if let Some(a) = self.causal {
            v.push(format!("causal{a:?}"));
        }
        if self.key_lengths.is_some() {
            v.push("klen".into());
        }
        if self.query_lengths.is_some() {
            v.push("qlen".into());
        }
        if let Some(w) = self.window {
            v.push(format!("win{:?}/{:?}", w.left, w.right));
        }
        if let Some((_, s)) = &self.bool_mask {
            v.push(format!("bool{s:?}"));
        }
        if let Some((_, s, d)) = &self.bias {
            v.push(format!("bias{s:?}{d}"));
        }
        if self.alibi.is_some() {
            v.push("alibi".into());
        }
        if v.is_empty() {
            "none".into()
        } else {
            v.join("+")
        }
    }
}

/// One GPU-vs-reference comparison.
#[derive(Clone, Debug)]
pub struct Case {
    pub b: usize,
    pub hq: usize,
    pub hkv: usize,
    pub sq: usize,
    pub sk: usize,
    pub dk: usize,
    pub dv: usize,
    pub dtype: DType,
    pub out_dtype: DType,
    pub layout: Layout,
    pub backend: Backend,
    pub subgroups: Subgroups,
    /// Tile overrides (default: the dispatcher's choice for this adapter).
    pub tuning: Tuning,
    pub scale: Option<f32>,
    pub mask: MaskSpec,
    pub seed: u64,
    /// Multiplier of Q (large values test overflow).
    pub q_gain: f32,
    /// Also request and check the log-sum-exp output.
    pub lse: bool,
    /// Logit soft cap (`AttentionOptions::softcap`).
    pub softcap: Option<f32>,
    /// Sink logits, one per query head (`AttentionOptions::sinks`).
    pub sinks: Option<Vec<f32>>,
    /// K and V in a shuffled pool of pages of this many keys (`AttentionOptions::paged`).
    pub paged: Option<usize>,
    /// K and V quantized to this format (`DType::Q8_0`, ...; `quantized_upload`).
    pub kv: Option<DType>,
}

impl Case {
    pub fn new(b: usize, h: usize, sq: usize, sk: usize, d: usize) -> Self {
        Case {
            b,
            hq: h,
            hkv: h,
            sq,
            sk,
            dk: d,
            dv: d,
            dtype: DType::F32,
            out_dtype: DType::F32,
            layout: Layout::Bhsd,
            backend: Backend::Auto,
            subgroups: Subgroups::Auto,
            tuning: Tuning::default(),
            scale: None,
            mask: MaskSpec::default(),
            seed: 7,
            q_gain: 1.0,
            lse: false,
            softcap: None,
            sinks: None,
            paged: None,
            kv: None,
        }
    }

    pub fn dtype(mut self, d: DType) -> Self {
        self.dtype = d;
        self.out_dtype = d;
        self
    }

    pub fn backend(mut self, b: Backend) -> Self {
        self.backend = b;
        self
    }

    pub fn mask(mut self, m: MaskSpec) -> Self {
        self.mask = m;
        self
    }

    pub fn label(&self) -> String {
        format!(
            "{:?} b{} h{}/{} sq{} sk{} d{}/{} {}->{} {:?} {:?} {:?} mask={} softcap={:?} sinks={:?} paged={:?} kv={:?}",
            self.backend,
            self.b,
            self.hq,
            self.hkv,
            self.sq,
            self.sk,
            self.dk,
            self.dv,
            self.dtype,
            self.out_dtype,
            self.layout,
            self.subgroups,
            self.tuning,
            self.mask.name(),
            self.softcap,
            self.sinks,
            self.paged,
            self.kv
        )
    }
}

/// Runs a case on the GPU and returns (gpu output, reference output).
pub fn run(ctx: &Context, c: &Case) -> (Vec<f32>, Vec<f64>) {
    let (got, want, _) = run_plan(ctx, c);
    (got, want)
}

/// A case's inputs: seeded host data (rounded to the case's dtype) and the GPU tensors
/// holding it, with the mask's tensors.
pub struct Prepared {
    pub qs: [usize; 4],
    pub ks: [usize; 4],
    pub vs: [usize; 4],
    pub qh: Vec<f32>,
    pub kh: Vec<f32>,
    pub vh: Vec<f32>,
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub bias_rounded: Option<(Vec<f32>, [usize; 4], DType)>,
    pub bias: Option<Tensor>,
    pub bools: Option<Tensor>,
    /// With `Case::paged`: `k` and `v` are the page pool, read through this table.
    pub paged: Option<PagedKv>,
    /// With `Case::kv`: the scales of the quantized K and V.
    pub kv_scales: Option<KvScales>,
}

impl Prepared {
    pub fn new(ctx: &Context, c: &Case) -> Self {
        let qs = [c.b, c.hq, c.sq, c.dk];
        let ks = [c.b, c.hkv, c.sk, c.dk];
        let vs = [c.b, c.hkv, c.sk, c.dv];
        let qh: Vec<f32> = round_to(
            c.dtype,
            &random(qs.iter().product(), c.seed)
                .iter()
                .map(|x| x * c.q_gain)
                .collect::<Vec<_>>(),
        );
        let mut kh = round_to(c.dtype, &random(ks.iter().product(), c.seed + 1));
        let mut vh = round_to(c.dtype, &random(vs.iter().product(), c.seed + 2));
        let q = upload(ctx, &qh, qs, c.dtype, c.layout);
        let mut kv_scales = None;
        let (k, v, paged) = match (c.kv, c.paged) {
            (Some(fmt), ps) => {
                // The reference reads the values the kernels decode: the data dequantized.
                let (kq, vq, table);
                (kq, vq, table, kh, vh) = quantized_kv(ctx, c, fmt, &kh, &vh, ps);
                kv_scales = match (&kq.scales, &vq.scales) {
                    (Some(a), Some(b)) => Some(KvScales::PerToken {
                        k: a.view().clone(),
                        v: b.view().clone(),
                    }),
                    _ if matches!(fmt, DType::E4M3 | DType::E5M2) => Some(KvScales::PerHead {
                        k: fp8_head_scales(c.hkv, 0.25),
                        v: fp8_head_scales(c.hkv, 0.5),
                    }),
                    _ => None,
                };
                (kq.tensor, vq.tensor, table)
            }
            (None, Some(ps)) => {
                let (k, v, table) = paged_pool(ctx, c, &kh, &vh, ps);
                (k, v, Some(table))
            }
            (None, None) => (
                upload(ctx, &kh, ks, c.dtype, c.layout),
                upload(ctx, &vh, vs, c.dtype, c.layout),
                None,
            ),
        };
        let bias_rounded = c
            .mask
            .bias
            .as_ref()
            .map(|(data, shape, dt)| (round_to(*dt, data), *shape, *dt));
        let bias = bias_rounded
            .as_ref()
            .map(|(data, shape, dt)| upload(ctx, data, *shape, *dt, Layout::Bhsd));
        let bools = c
            .mask
            .bool_mask
            .as_ref()
            .map(|(data, shape)| ctx.upload_bool(data, *shape).expect("upload bool"));
        Prepared {
            qs,
            ks,
            vs,
            qh,
            kh,
            vh,
            q,
            k,
            v,
            bias_rounded,
            bias,
            bools,
            paged,
            kv_scales,
        }
    }

    /// The case's options over these tensors (no log-sum-exp output).
    pub fn opts(&self, ctx: &Context, c: &Case) -> AttentionOptions {
        let m = &c.mask;
        let mut mask = Mask::none().with_alignment(m.alignment);
        if let Some(a) = m.causal {
            mask = mask.causal(a);
        }
        if let Some(l) = &m.key_lengths {
            mask = mask.key_lengths(l.clone());
        }
        if let Some(l) = &m.query_lengths {
            mask = mask.query_lengths(l.clone());
        }
        if let Some(w) = m.window {
            mask = mask.window(w.left, w.right);
        }
        if let Some(t) = &self.bools {
            mask = if m.summary {
                let s = ctx.block_mask_blocking(t.view()).expect("block mask");
                mask.bool_mask_with_summary(t.view().clone(), s)
            } else {
                mask.bool_mask(t.view().clone())
            };
        }
        if let Some(t) = &self.bias {
            mask = mask.bias(t.view().clone());
        }
        if let Some(s) = &m.alibi {
            mask = mask.alibi(s.clone());
        }
        let mut opts = AttentionOptions::with_mask(mask).backend(c.backend);
        opts.subgroups = c.subgroups;
        opts.tuning = c.tuning;
        opts.scale = c.scale;
        opts.softcap = c.softcap;
        opts.sinks = c.sinks.clone();
        opts.paged = self.paged.clone();
        opts.kv_scales = self.kv_scales.clone();
        opts
    }

    /// The reference's view of the case's mask.
    pub fn host_mask<'a>(&'a self, c: &'a Case) -> HostMask<'a> {
        let m = &c.mask;
        HostMask {
            causal: m.causal.is_some(),
            alignment: m.causal.unwrap_or(m.alignment),
            key_lengths: m.key_lengths.as_deref(),
            query_lengths: m.query_lengths.as_deref(),
            window: m.window,
            bool_mask: m.bool_mask.as_ref().map(|(d, s)| (&d[..], *s)),
            bias: self
                .bias_rounded
                .as_ref()
                .map(|(d, s, _)| HostTensor { data: d, shape: *s }),
            alibi: m.alibi.as_deref(),
            softcap: c.softcap,
            sinks: c.sinks.as_deref(),
        }
    }

    pub fn host(&self) -> [HostTensor<'_>; 3] {
        [
            HostTensor {
                data: &self.qh,
                shape: self.qs,
            },
            HostTensor {
                data: &self.kh,
                shape: self.ks,
            },
            HostTensor {
                data: &self.vh,
                shape: self.vs,
            },
        ]
    }
}

/// The scale a case runs with.
pub fn scale_of(c: &Case) -> f64 {
    c.scale
        .map(|s| s as f64)
        .unwrap_or(1.0 / (c.dk as f64).sqrt())
}

/// [`run`], also returning the plan that ran.
pub fn run_plan(ctx: &Context, c: &Case) -> (Vec<f32>, Vec<f64>, wgpu_attention::dispatch::Plan) {
    let x = Prepared::new(ctx, c);
    let lse_out = nan_output(ctx, [c.b, c.hq, c.sq, 1], DType::F32);
    let out = nan_output(ctx, [c.b, c.hq, c.sq, c.dv], c.out_dtype);
    let mut opts = x.opts(ctx, c);
    if c.lse {
        opts.lse_output = Some(lse_out.view().clone());
    }
    let plan = ctx
        .attention_into_blocking(x.q.view(), x.k.view(), x.v.view(), out.view(), &opts)
        .unwrap_or_else(|e| panic!("{}: {e}", c.label()));
    if c.backend != Backend::Auto {
        assert_eq!(plan.backend, c.backend, "{}", c.label());
    }
    let got = ctx.download_f32_blocking(out.view()).expect("download");
    let got_lse = if c.lse {
        ctx.download_f32_blocking(lse_out.view())
            .expect("download lse")
    } else {
        Vec::new()
    };
    let [qh, kh, vh] = x.host();
    let (want, want_lse) =
        reference::attention_with_lse(&qh, &kh, &vh, scale_of(c), &x.host_mask(c));
    if c.lse {
        assert_close_lse(&got_lse, &want_lse, &format!("{} lse", c.label()));
    }
    (got, want, plan)
}

/// Asserts that log-sum-exps match within the f32 tolerance (rows with no visible key are
/// -inf in both).
pub fn assert_close_lse(got: &[f32], want: &[f64], label: &str) {
    let finite = |x: f64| if x == f64::NEG_INFINITY { -1e30 } else { x };
    let got: Vec<f32> = got.iter().map(|&x| finite(x as f64) as f32).collect();
    let want: Vec<f64> = want.iter().map(|&x| finite(x)).collect();
    assert_close(&got, &want, DType::F32, label);
}

/// Asserts that a case matches the reference within the output dtype's tolerance.
pub fn check(ctx: &Context, c: &Case) {
    let (got, want) = run(ctx, c);
    assert_close(&got, &want, c.out_dtype, &c.label());
}

pub fn assert_close(got: &[f32], want: &[f64], dtype: DType, label: &str) {
    assert_within(got, want, tolerance(dtype), label);
}

/// Asserts `|got − want| ≤ atol + rtol·|want|` element by element (NaN never is).
pub fn assert_within(got: &[f32], want: &[f64], (atol, rtol): (f64, f64), label: &str) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        // A NaN (an unwritten element) is not within tolerance either.
        let within = err <= atol + rtol * w.abs();
        assert!(
            within,
            "{label}: element {i}: got {g}, want {w} (err {err:.3e}, tol {atol:e}+{rtol:e}*|want|)"
        );
    }
}

/// A random bool mask with about `keep` of its entries true.
pub fn random_bool(n: usize, seed: u64, keep: f32) -> Vec<bool> {
    random(n, seed)
        .iter()
        .map(|&x| (x + 1.0) / 2.0 < keep)
        .collect()
}

/// The reference of a packed variable-length batch (`[total, heads, d]` host data), each
/// sequence on its own with `mask`, in the logical `[1, hq, total_q, d]` order a download of
/// the packed output gives.
pub fn varlen_reference(
    vl: &wgpu_attention::Varlen,
    (hq, hkv, d): (usize, usize, usize),
    [qh, kh, vh]: [&[f32]; 3],
    mask: &HostMask<'_>,
) -> Vec<f64> {
    let tq = *vl.cu_seqlens_q.last().expect("cu_seqlens") as usize;
    let mut want = vec![0.0; hq * tq * d];
    for s in 0..vl.batch() {
        let (q0, k0) = (vl.cu_seqlens_q[s] as usize, vl.cu_seqlens_k[s] as usize);
        let ql = vl.cu_seqlens_q[s + 1] as usize - q0;
        let kl = vl.cu_seqlens_k[s + 1] as usize - k0;
        // Unpack this sequence into BHSD.
        let take = |src: &[f32], heads: usize, start: usize, n: usize| {
            let mut t = vec![0.0; heads * n * d];
            for hh in 0..heads {
                for i in 0..n {
                    for c in 0..d {
                        t[(hh * n + i) * d + c] = src[((start + i) * heads + hh) * d + c];
                    }
                }
            }
            t
        };
        let (sq, sk, sv) = (
            take(qh, hq, q0, ql),
            take(kh, hkv, k0, kl),
            take(vh, hkv, k0, kl),
        );
        let t = |data, heads, n| HostTensor {
            data,
            shape: [1, heads, n, d],
        };
        let (q, k, v) = (t(&sq, hq, ql), t(&sk, hkv, kl), t(&sv, hkv, kl));
        let o = reference::attention(&q, &k, &v, 1.0 / (d as f64).sqrt(), mask);
        for hh in 0..hq {
            for i in 0..ql {
                for c in 0..d {
                    want[(hh * tq + q0 + i) * d + c] = o[(hh * ql + i) * d + c];
                }
            }
        }
    }
    want
}

pub fn key_lengths(b: usize, sk: usize) -> Vec<u32> {
    (0..b)
        .map(|i| [(sk * 2 / 3).max(1), 0, sk, 1][i % 4].min(sk) as u32)
        .collect()
}

pub fn query_lengths(b: usize, sq: usize) -> Vec<u32> {
    (0..b)
        .map(|i| [(sq * 3 / 4).max(1), sq, 1, 0][i % 4].min(sq) as u32)
        .collect()
}

/// The mask combinations every backend is tested with, for one shape.
pub fn masks(b: usize, h: usize, sq: usize, sk: usize, seed: u64) -> Vec<MaskSpec> {
    let bool_mask = |shape: [usize; 4], s: u64| {
        let mut m = random_bool(shape.iter().product(), s, 0.7);
        // Row 0 of the first mask item is fully masked: it must come out as zeros.
        m[..sk].fill(false);
        (m, shape)
    };
    vec![
        MaskSpec::default(),
        MaskSpec {
            causal: Some(CausalAlignment::TopLeft),
            ..Default::default()
        },
        MaskSpec {
            causal: Some(CausalAlignment::BottomRight),
            key_lengths: Some(key_lengths(b, sk)),
            ..Default::default()
        },
        MaskSpec {
            key_lengths: Some(key_lengths(b, sk)),
            query_lengths: Some(query_lengths(b, sq)),
            ..Default::default()
        },
        MaskSpec {
            window: Some(Window {
                left: Some(5),
                right: Some(3),
            }),
            alignment: CausalAlignment::BottomRight,
            ..Default::default()
        },
        MaskSpec {
            bool_mask: Some(bool_mask([b, 1, sq, sk], seed)),
            ..Default::default()
        },
        MaskSpec {
            bias: Some((
                random(h * sq * sk, seed + 5)
                    .iter()
                    .map(|x| x * 3.0)
                    .collect(),
                [1, h, sq, sk],
                DType::F16,
            )),
            alibi: Some((0..h).map(|i| 0.5f32.powi(i as i32 + 1)).collect()),
            ..Default::default()
        },
        MaskSpec {
            causal: Some(CausalAlignment::TopLeft),
            key_lengths: Some(key_lengths(b, sk)),
            window: Some(Window {
                left: Some(17),
                right: None,
            }),
            bool_mask: Some(bool_mask([1, h, sq, sk], seed + 9)),
            summary: true,
            bias: Some((
                random(b * h * sq * sk, seed + 6),
                [b, h, sq, sk],
                DType::F32,
            )),
            alibi: Some((0..h).map(|i| 0.25 * (i as f32 + 1.0)).collect()),
            ..Default::default()
        },
    ]
}
