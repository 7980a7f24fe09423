//! The dispatcher: a pure function from (problem, device capabilities, options) to
//! (backend, shader variant, reason). No GPU needed: see [`plan`].

use crate::data::options::{AttentionOptions, Backend, Subgroups};
use crate::data::tensor::DType;
use crate::error::{Error, InputProblem, Result, TensorRole};
use crate::plan::validate::Problem;
pub use crate::plan::variant::{
    CoopTile, Family, FlashTile, MEMEFF_THREADS, MemEffConfig, ShaderVariant, UnrolledTile,
};

/// Head-dim buckets of the flash shader (rounded up, tail masked), as in FlashAttention.
pub const FLASH_HEAD_DIMS: [u32; 8] = [32, 64, 96, 128, 160, 192, 224, 256];
/// Head-dim buckets of the memory-efficient shader.
pub const MEMEFF_HEAD_DIMS: [u32; 5] = [64, 128, 256, 512, 1024];
/// Query rows per flash workgroup (one query row per thread group).
pub const FLASH_BLOCK_Q: u32 = 64;
/// Registers (floats) a flash thread may hold for its rows before the dispatcher gives it
/// fewer rows: q and the accumulator of each row, plus its tile of scores.
pub const FLASH_REGISTER_BUDGET: u32 = 128;

/// Rows per flash thread: as many (up to 4) as fit [`FLASH_REGISTER_BUDGET`], since each
/// K/V vector read from workgroup memory then serves that many rows.
pub fn default_rows_per_thread(dk_plus_dv: u32, threads_per_row: u32) -> u32 {
    let per_row = dk_plus_dv / threads_per_row + FLASH_DEFAULT_BLOCK_K;
    [4, 2, 1]
        .into_iter()
        .find(|&r| r * per_row <= FLASH_REGISTER_BUDGET)
        .unwrap_or(1)
}
/// The flash key tile the dispatcher starts from (16 measured faster than 32 on an H100;
/// see BENCHMARKS.md).
pub const FLASH_DEFAULT_BLOCK_K: u32 = 16;
/// Smallest key tile of the flash shader.
pub const FLASH_MIN_BLOCK_K: u32 = 4;
/// Rows of a block-mask summary block (equal to [`FLASH_BLOCK_Q`]).
pub const SUMMARY_BLOCK_Q: u32 = FLASH_BLOCK_Q;
/// Columns of a block-mask summary block. Flash tiles narrower than this read the
/// summary of the block that covers them (a conservative answer).
pub const SUMMARY_BLOCK_K: u32 = 8;
/// The decode path applies to at most this many query rows...
pub const DECODE_MAX_QUERIES: usize = 8;
/// ...over at least this many keys.
pub const DECODE_MIN_KEYS: usize = 1024;
/// Keys per split the decode path aims for (between 2 and [`DECODE_MAX_SPLITS`] splits).
pub const DECODE_KEYS_PER_SPLIT: usize = 256;
/// The most key splits (the merge shader combines at most this many parts).
pub const DECODE_MAX_SPLITS: u32 = 64;
/// Threads per query row of the subgroup flash variant.
pub const SUBGROUP_THREADS_PER_ROW: u32 = 4;
/// Rows per flash thread (group) on CPU adapters (lavapipe, WARP, SwiftShader): their
/// "registers" are memory, so the most rows per K/V read wins (measured on lavapipe:
/// BENCHMARKS.md).
pub const CPU_ROWS_PER_THREAD: u32 = 4;
/// The key tile CPU adapters start from (halved until it fits workgroup memory).
pub const CPU_BLOCK_K: u32 = 32;
/// Rows per thread of the unrolled flash kernel (`src/kernels/flash/unrolled.rs`): one thread per
/// row, each thread's rows and head-dim vectors written out as named variables. CPU adapters
/// run it by default (head dims up to [`UNROLLED_MAX_HEAD_DIM`]); asking for this many rows
/// per thread selects it anywhere.
pub const UNROLLED_ROWS_PER_THREAD: u32 = 8;
/// The largest head-dim bucket the unrolled kernel is generated for (its code, and the
/// driver's compile time, grow with rows x head dim).
pub const UNROLLED_MAX_HEAD_DIM: u32 = 128;

/// What the dispatcher needs to know about a device: limits and optional features.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCaps {
    /// `max_compute_workgroup_storage_size`.
    pub max_workgroup_storage: u32,
    /// `max_compute_invocations_per_workgroup`.
    pub max_invocations: u32,
    /// `max_compute_workgroups_per_dimension`.
    pub max_workgroups_per_dim: u32,
    /// `max_storage_buffer_binding_size`.
    pub max_storage_binding: u64,
    /// `max_buffer_size`.
    pub max_buffer_size: u64,
    /// `max_storage_buffers_per_shader_stage`.
    pub max_storage_buffers: u32,
    /// The device has `Features::SUBGROUP`.
    pub subgroup: bool,
    /// Smallest subgroup size the adapter may use.
    pub subgroup_min_size: u32,
    /// Largest subgroup size the adapter may use (set by [`DeviceCaps::with_adapter_info`];
    /// `from_limits` assumes the smallest).
    pub subgroup_max_size: u32,

    /// The device has `Features::SHADER_F16`.
    pub shader_f16: bool,
    /// The device has `EXPERIMENTAL_COOPERATIVE_MATRIX` and `SHADER_F16`.
    pub coop_matrix: bool,
    /// The cooperative-matrix fragment the kernel uses: 16 where the adapter multiplies
    /// 16×16×16 f16 into f32, else 8 for 8×8×8, else 0 (set by
    /// [`DeviceCaps::with_cooperative_matrices`]).
    pub coop_fragment: u32,
    /// The device has `Features::TIMESTAMP_QUERY` and `TIMESTAMP_QUERY_INSIDE_ENCODERS`.
    pub timestamp_query: bool,
    /// The adapter is a CPU implementation (`wgpu::DeviceType::Cpu`: lavapipe, WARP,
    /// SwiftShader; not on GL, see [`DeviceCaps::with_adapter_info`]). The flash defaults
    /// then favour many rows per thread.
    pub cpu: bool,
    /// The device is a browser's WebGPU (`wgpu::Backend::BrowserWebGpu`): the plan's reason
    /// then says what WebGPU's rules decided.
    pub browser: bool,
    /// A CPU adapter whose shader compiler loads every storage and workgroup-memory value
    /// one SIMD lane at a time (lavapipe from Mesa 22 or older). Each K/V read is then so
    /// costly that one thread per row, with no subgroup split, wins.
    pub cpu_serial_loads: bool,
}

impl DeviceCaps {
    /// The caps of a device with wgpu's default limits and no optional feature.
    pub fn webgpu_default() -> Self {
        Self::from_limits(&wgpu::Limits::default(), wgpu::Features::empty(), 0)
    }

    /// Builds caps from a device's limits, features, and the adapter's minimum subgroup size.
    pub fn from_limits(
        limits: &wgpu::Limits,
        features: wgpu::Features,
        subgroup_min_size: u32,
    ) -> Self {
        DeviceCaps {
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_invocations: limits.max_compute_invocations_per_workgroup,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffers: limits.max_storage_buffers_per_shader_stage,
            subgroup: features.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size,
            subgroup_max_size: subgroup_min_size,
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            coop_matrix: features.contains(
                wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16,
            ),
            coop_fragment: 0,
            timestamp_query: features.contains(
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
            ),
            cpu: false,
            browser: false,
            cpu_serial_loads: false,
        }
    }

    /// The same caps for the adapter `info` describes: [`DeviceCaps::cpu`] is set for CPU
    /// adapters on every backend but GL, whose GLSL compiler unrolls the wide CPU variant
    /// into a shader that takes minutes to compile on llvmpipe (measured: the GL tests went
    /// from under a minute to 4).
    ///
    /// [`DeviceCaps::cpu_serial_loads`] is set for those CPU adapters whose driver reports
    /// Mesa 22 or older (measured on 22.3.6, against 25.0.7; BENCHMARKS.md).
    pub fn with_adapter_info(mut self, info: &wgpu::AdapterInfo) -> Self {
        self.subgroup_max_size = info.subgroup_max_size.max(self.subgroup_min_size);
        // wgpu reports Metal's possible SIMD widths (4..64); an Apple GPU's are always 32.
        if info.backend == wgpu::Backend::Metal && info.name.starts_with("Apple") {
            self.subgroup_min_size = 32;
            self.subgroup_max_size = 32;
        }
        self.cpu = info.device_type == wgpu::DeviceType::Cpu && info.backend != wgpu::Backend::Gl;
        self.browser = info.backend == wgpu::Backend::BrowserWebGpu;
        self.cpu_serial_loads =
            self.cpu && mesa_major(&info.driver_info).is_some_and(|v| v <= MESA_SERIAL_LOADS_UP_TO);
        self
    }
}

impl DeviceCaps {
    /// The same caps with the cooperative-matrix fragment chosen from the adapter's
    /// configurations (`wgpu::Adapter::cooperative_matrix_properties`): 16 where it has
    /// 16×16×16 f16 × f16 → f32, else 8 for 8×8×8, else none.
    pub fn with_cooperative_matrices(
        mut self,
        props: &[wgpu::CooperativeMatrixProperties],
    ) -> Self {
        self.coop_fragment = coop_fragment(props);
        self
    }
}

/// The cooperative-matrix fragment the kernel would use among an adapter's configurations:
/// 16 for 16×16×16 f16 × f16 → f32, else 8 for 8×8×8, else 0.
pub fn coop_fragment(props: &[wgpu::CooperativeMatrixProperties]) -> u32 {
    let has = |n: u32| {
        props.iter().any(|p| {
            (p.m_size, p.n_size, p.k_size) == (n, n, n)
                && p.ab_type == wgpu::CooperativeScalarType::F16
                && p.cr_type == wgpu::CooperativeScalarType::F32
        })
    };
    [16, 8].into_iter().find(|&n| has(n)).unwrap_or(0)
}

/// The newest Mesa major version whose lavapipe loads memory one lane at a time in a loop
/// (`emit_load_mem` in gallivm; Mesa 23 and later broadcast uniform loads).
pub const MESA_SERIAL_LOADS_UP_TO: u32 = 22;

/// The major version in a Mesa driver string such as `"Mesa 22.3.6 (LLVM 15.0.6)"`.
pub fn mesa_major(driver_info: &str) -> Option<u32> {
    let rest = &driver_info[driver_info.find("Mesa ")? + 5..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// The dispatcher's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Plan {
    /// The backend that runs.
    pub backend: Backend,
    /// The shader variant.
    pub variant: ShaderVariant,
    /// Key splits of the decode path (1 for every other backend).
    pub key_splits: u32,
    /// How many calls the problem runs as: more than 1 when a tensor is larger than one
    /// storage binding may be (`max_storage_buffer_binding_size`), so the call is split over
    /// batch items, groups of heads, single heads, query rows and, if one head's keys do not
    /// fit, chunks of keys. Every part runs this plan.
    pub parts: u32,
    /// Why, in words (shared: a plan is cloned cheaply on every call).
    pub reason: std::sync::Arc<str>,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = &self.variant;
        write!(
            f,
            "{} (d_qk bucket {}, d_v bucket {}, tile {}x{}, threads/row {}, subgroups {}, key splits {}, parts {}; cost {{{}}}): {}",
            self.backend,
            v.head_dim_qk(),
            v.head_dim_v(),
            v.block_q(),
            v.block_k(),
            v.threads_per_row(),
            if v.subgroups() { "on" } else { "off" },
            self.key_splits,
            self.parts,
            v.cost(),
            self.reason
        )
    }
}

pub(crate) fn bucket(buckets: &[u32], d: usize) -> Option<u32> {
    buckets.iter().copied().find(|&b| b as usize >= d)
}

/// Whether the call may split a row across [`SUBGROUP_THREADS_PER_ROW`] threads of a
/// subgroup (the forward's and the backward's flash kernels).
pub(crate) fn subgroup_rows_ok(caps: &DeviceCaps, opts: &AttentionOptions) -> bool {
    opts.subgroups == Subgroups::Auto
        && caps.subgroup
        && caps.subgroup_min_size >= SUBGROUP_THREADS_PER_ROW
}

/// The flash variant for a problem, or why there is none.
pub fn flash_variant(
    p: &Problem,
    caps: &DeviceCaps,
    opts: &AttentionOptions,
) -> Result<ShaderVariant, String> {
    fused_buffers_fit("flash", caps)?;
    let max = *FLASH_HEAD_DIMS.last().unwrap_or(&0);
    let dk = bucket(&FLASH_HEAD_DIMS, p.head_dim_qk).ok_or_else(|| {
        format!(
            "flash supports head dims up to {max}; Q/K head dim is {}",
            p.head_dim_qk
        )
    })?;
    let dv = bucket(&FLASH_HEAD_DIMS, p.head_dim_v).ok_or_else(|| {
        format!(
            "flash supports head dims up to {max}; V head dim is {}",
            p.head_dim_v
        )
    })?;
    // The default key tile, halved until it fits the adapter's workgroup memory.
    let need = |bk: u32| bk * (dk + dv) * 4 + 16;
    let fits = |bk: u32, budget: u32| need(bk) <= budget;
    let mut block_k = if caps.cpu {
        CPU_BLOCK_K
    } else {
        FLASH_DEFAULT_BLOCK_K
    };
    while block_k > FLASH_MIN_BLOCK_K && !fits(block_k, caps.max_workgroup_storage) {
        block_k /= 2;
    }
    if !fits(block_k, caps.max_workgroup_storage) {
        return Err(format!(
            "flash K/V tiles of {FLASH_MIN_BLOCK_K} rows at head dims {dk}+{dv} need {} bytes of workgroup memory; the adapter offers {}",
            need(FLASH_MIN_BLOCK_K),
            caps.max_workgroup_storage
        ));
    }
    let unrolled_dims = dk <= UNROLLED_MAX_HEAD_DIM && dv <= UNROLLED_MAX_HEAD_DIM;
    let unrolled_default = caps.cpu && unrolled_dims;
    let sg_ok = subgroup_rows_ok(caps, opts);
    let threads_per_row = match opts.tuning.flash_threads_per_row {
        Some(1) => 1,
        Some(SUBGROUP_THREADS_PER_ROW) if sg_ok => SUBGROUP_THREADS_PER_ROW,
        Some(SUBGROUP_THREADS_PER_ROW) => {
            return Err(format!(
                "{SUBGROUP_THREADS_PER_ROW} threads per row need subgroups of at least {SUBGROUP_THREADS_PER_ROW} (and Subgroups::Auto); the device has {}",
                if caps.subgroup {
                    format!("subgroups of {} or more", caps.subgroup_min_size)
                } else {
                    "no subgroups".to_string()
                }
            ));
        }
        Some(t) => {
            return Err(format!(
                "flash threads per row must be 1 or {SUBGROUP_THREADS_PER_ROW}, not {t}"
            ));
        }
        // CPU adapters run the unrolled kernel, one thread per row, where it is generated.
        None if unrolled_default => 1,
        None if sg_ok && dk >= 64 && !caps.cpu_serial_loads => SUBGROUP_THREADS_PER_ROW,
        None => 1,
    };
    let use_sg = threads_per_row > 1;
    let mut rows_per_thread = match opts.tuning.flash_rows_per_thread {
        Some(r @ (1 | 2 | 4 | UNROLLED_ROWS_PER_THREAD)) => r,
        Some(r) => {
            return Err(format!(
                "flash rows per thread must be 1, 2, 4 or {UNROLLED_ROWS_PER_THREAD} (the unrolled kernel), not {r}"
            ));
        }
        None if unrolled_default && threads_per_row == 1 => UNROLLED_ROWS_PER_THREAD,
        None if caps.cpu => CPU_ROWS_PER_THREAD,
        None => default_rows_per_thread(dk + dv, threads_per_row),
    };
    if let Some(bk) = opts.tuning.flash_block_k {
        if !matches!(bk, 4 | 8 | 16 | 32) {
            return Err(format!("flash key tile must be 4, 8, 16 or 32, not {bk}"));
        }
        if !fits(bk, caps.max_workgroup_storage) {
            return Err(format!(
                "a flash key tile of {bk} at head dims {dk}+{dv} needs {} bytes of workgroup memory; the adapter offers {}",
                need(bk),
                caps.max_workgroup_storage
            ));
        }
        block_k = bk;
    }
    // The unrolled kernel stages Q and O through the K/V tiles, one thread's row each.
    let unrolled_rows = FLASH_BLOCK_Q / UNROLLED_ROWS_PER_THREAD;
    if rows_per_thread == UNROLLED_ROWS_PER_THREAD {
        let why_not = if threads_per_row != 1 {
            Some("one thread per row".to_string())
        } else if !unrolled_dims {
            Some(format!(
                "head dims up to {UNROLLED_MAX_HEAD_DIM} (the buckets here are {dk}/{dv})"
            ))
        } else if block_k < unrolled_rows {
            Some(format!(
                "key tiles of at least {unrolled_rows} (this one is {block_k})"
            ))
        } else {
            None
        };
        if let Some(need) = why_not {
            if opts.tuning.flash_rows_per_thread.is_some() {
                return Err(format!(
                    "the unrolled flash kernel ({UNROLLED_ROWS_PER_THREAD} rows per thread) needs {need}"
                ));
            }
            rows_per_thread = CPU_ROWS_PER_THREAD;
        }
    }
    if FLASH_BLOCK_Q / rows_per_thread * threads_per_row > caps.max_invocations {
        return Err(format!(
            "flash needs {} invocations per workgroup; the adapter offers {}",
            FLASH_BLOCK_Q / rows_per_thread * threads_per_row,
            caps.max_invocations
        ));
    }
    if rows_per_thread == UNROLLED_ROWS_PER_THREAD {
        return Ok(ShaderVariant::FlashUnrolled(UnrolledTile {
            head_dim_qk: dk,
            head_dim_v: dv,
            block_q: FLASH_BLOCK_Q,
            block_k,
            rows_per_thread,
            bias: p.mask.bias,
            alibi: p.mask.alibi,
            bool_mask: p.mask.bool_mask,
            softcap: p.softcap,
            serial_loads: caps.cpu_serial_loads,
            paged: p.paged,
            quant: p.dtype_k.is_quantized().then_some(p.dtype_k),
        }));
    }
    Ok(ShaderVariant::Flash(FlashTile {
        head_dim_qk: dk,
        head_dim_v: dv,
        block_q: FLASH_BLOCK_Q,
        block_k,
        threads_per_row,
        rows_per_thread,
        subgroups: use_sg,
        paged: p.paged,
        quant: p.dtype_k.is_quantized().then_some(p.dtype_k),
    }))
}

/// Query rows per workgroup of the cooperative-matrix kernel.
pub const COOP_BLOCK_Q: u32 = 64;
/// Keys per tile of the cooperative-matrix kernel.
pub const COOP_BLOCK_K: u32 = 32;
/// Largest head dim of the cooperative-matrix kernel (its accumulators stay in registers).
pub const COOP_MAX_HEAD_DIM: u32 = 128;
/// The cooperative-matrix kernel's default rescale slack, and the largest it takes: weights
/// up to e^8 (about 2981) stay in range for its f16 products.
pub const COOP_RESCALE_SLACK: u32 = 8;

/// The cooperative-matrix flash variant, or why there is none: it needs the adapter's
/// FR×FR×FR f16 → f32 cooperative matrices (FR 16 or 8, [`DeviceCaps::coop_fragment`]) with
/// subgroups of one fixed size, 16-bit Q/K/V (f16, or bf16 converted to
/// f16 on load), and head dims up to 128.
pub fn coop_variant(p: &Problem, caps: &DeviceCaps) -> Result<ShaderVariant, String> {
    if !caps.coop_matrix || caps.coop_fragment == 0 {
        return Err("the device has no f16 cooperative matrices with f32 accumulation (Context::new_experimental enables them where the adapter has them)".into());
    }
    if !caps.subgroup {
        return Err("the cooperative-matrix kernel needs subgroups".into());
    }
    fused_buffers_fit("the cooperative-matrix kernel", caps)?;
    // The workgroup has one subgroup of the largest size per row block; where the driver
    // picks a smaller one, `ways` subgroups share a row block. A row's LPR = largest / fragment
    // lanes must sit in one subgroup of the smallest size, and hold a column of the fragment
    // each.
    let (min, max) = (
        caps.subgroup_min_size,
        caps.subgroup_max_size.max(caps.subgroup_min_size),
    );
    let ways = max / min.max(1);
    let lanes_per_row = (max / caps.coop_fragment).max(1);
    if !min.is_power_of_two()
        || !max.is_power_of_two()
        || lanes_per_row > min
        || lanes_per_row > caps.coop_fragment
        || ways > COOP_BLOCK_K / caps.coop_fragment
    {
        return Err(format!(
            "the cooperative-matrix kernel needs power-of-two subgroup sizes whose largest is at most the fragment's square and the fragment times the smallest, and at most {} subgroups a row block; the adapter's range from {min} to {max}",
            COOP_BLOCK_K / caps.coop_fragment
        ));
    }
    if [p.dtype_q, p.dtype_k, p.dtype_v].contains(&DType::F32) {
        return Err("cooperative matrices multiply f16: Q, K and V must be f16 or bf16".into());
    }
    let dk = bucket(&FLASH_HEAD_DIMS, p.head_dim_qk).filter(|&d| d <= COOP_MAX_HEAD_DIM);
    let dv = bucket(&FLASH_HEAD_DIMS, p.head_dim_v).filter(|&d| d <= COOP_MAX_HEAD_DIM);
    let (Some(dk), Some(dv)) = (dk, dv) else {
        return Err(format!(
            "the cooperative-matrix kernel holds head dims up to {COOP_MAX_HEAD_DIM}"
        ));
    };
    let v = ShaderVariant::FlashCoop(CoopTile {
        head_dim_qk: dk,
        head_dim_v: dv,
        block_q: COOP_BLOCK_Q,
        block_k: COOP_BLOCK_K,
        fragment: caps.coop_fragment,
        subgroup_size: max,
        ways,
        extra: p.mask.bias.is_some() || p.mask.alibi || p.softcap,
        bool_mask: p.mask.bool_mask,
        // Quantized K/V are decoded element by element: no word-pair form to build.
        pairs: !p.dtype_k.is_quantized(),
        dtypes: [p.dtype_q, p.dtype_k, p.dtype_v, p.dtype_o],
        slack: COOP_RESCALE_SLACK,
        paged: p.paged,
        quant: p.dtype_k.is_quantized().then_some(p.dtype_k),
    });
    if v.workgroup_storage() > caps.max_workgroup_storage
        || v.workgroup_size() > caps.max_invocations
    {
        return Err(format!(
            "the cooperative-matrix kernel needs {} bytes of workgroup memory and {} invocations",
            v.workgroup_storage(),
            v.workgroup_size()
        ));
    }
    Ok(v)
}

/// The memory-efficient variant for a problem, or why there is none.
pub fn memeff_variant(p: &Problem, caps: &DeviceCaps) -> Result<ShaderVariant, String> {
    fused_buffers_fit("memory-efficient", caps)?;
    let max = *MEMEFF_HEAD_DIMS.last().unwrap_or(&0);
    let dk = bucket(&MEMEFF_HEAD_DIMS, p.head_dim_qk).ok_or_else(|| {
        format!(
            "memory-efficient supports head dims up to {max}; Q/K head dim is {}",
            p.head_dim_qk
        )
    })?;
    let dv = bucket(&MEMEFF_HEAD_DIMS, p.head_dim_v).ok_or_else(|| {
        format!(
            "memory-efficient supports head dims up to {max}; V head dim is {}",
            p.head_dim_v
        )
    })?;
    let v = ShaderVariant::MemoryEfficient(MemEffConfig {
        head_dim_qk: dk,
        head_dim_v: dv,
        paged: p.paged,
        quant: p.dtype_k.is_quantized().then_some(p.dtype_k),
    });
    if v.workgroup_storage() > caps.max_workgroup_storage {
        return Err(format!(
            "memory-efficient needs {} bytes of workgroup memory; the adapter offers {}",
            v.workgroup_storage(),
            caps.max_workgroup_storage
        ));
    }
    if MEMEFF_THREADS > caps.max_invocations {
        return Err(format!(
            "memory-efficient needs {MEMEFF_THREADS} invocations per workgroup; the adapter offers {}",
            caps.max_invocations
        ));
    }
    Ok(v)
}

/// Storage buffers one stage of the fused kernels (flash, memory-efficient, decode) binds: Q,
/// K, V, O, the bool mask, the bias, the aux words and the log-sum-exp. WebGPU's default
/// `max_storage_buffers_per_shader_stage` is exactly this; unused ones get a dummy buffer.
pub const FUSED_STORAGE_BUFFERS: u32 = 8;
/// The most storage buffers a pass of the naive kernel binds (Q, K, V, the bool mask, the
/// bias, the aux words and the scores: quantized K/V's decoding reads K or V by an argument
/// known at run time, so the scores pass binds V too).
pub const NAIVE_STORAGE_BUFFERS: u32 = 7;

/// Whether the device lets a stage bind the fused kernels' storage buffers.
pub(crate) fn fused_buffers_fit(kernel: &str, caps: &DeviceCaps) -> Result<(), String> {
    if caps.max_storage_buffers < FUSED_STORAGE_BUFFERS {
        return Err(format!(
            "{kernel} binds {FUSED_STORAGE_BUFFERS} storage buffers per stage; the device allows {}",
            caps.max_storage_buffers
        ));
    }
    Ok(())
}

/// The naive variant (always available; it loops over head dims at run time).
pub fn naive_variant() -> ShaderVariant {
    ShaderVariant::Naive
}

/// How many ways the decode path splits `seq_k` keys.
pub fn split_count(seq_k: usize) -> u32 {
    (seq_k.div_ceil(DECODE_KEYS_PER_SPLIT) as u32).clamp(2, DECODE_MAX_SPLITS)
}

/// The decode path's key splits, when the shape calls for it: few query rows, long keys.
pub fn decode_splits(p: &Problem) -> Option<u32> {
    (p.seq_q <= DECODE_MAX_QUERIES && p.seq_k >= DECODE_MIN_KEYS && !p.varlen)
        .then(|| split_count(p.seq_k))
}

/// Decides which backend and variant run `problem` on a device with `caps`.
///
/// `Auto` picks the decode path for at most 8 query rows over at least 1024 keys; otherwise flash whenever its tiles fit the adapter, then
/// memory-efficient, then naive. A mask never changes the backend. A forced backend that cannot run returns
/// [`Error::Unsupported`] with the reason.
///
/// ```
/// use wgpu_attention::dispatch::{plan, DeviceCaps};
/// use wgpu_attention::{AttentionOptions, Backend, Problem};
/// let p = Problem::new(1, 8, 1024, 1024, 64);
/// let small = plan(&p, &DeviceCaps::webgpu_default(), &AttentionOptions::default()).unwrap();
/// assert_eq!(small.backend, Backend::Flash);
/// let big = Problem::new(1, 8, 1024, 1024, 512);
/// let large = plan(&big, &DeviceCaps::webgpu_default(), &AttentionOptions::default()).unwrap();
/// assert_eq!(large.backend, Backend::MemoryEfficient);
/// println!("{large}");
/// ```
pub fn plan(problem: &Problem, caps: &DeviceCaps, opts: &AttentionOptions) -> Result<Plan> {
    let mask = problem.mask.clone();
    let mask_note = match (mask.any(), problem.paged) {
        (true, false) => " The mask is applied inside the kernel; fully masked tiles are skipped.",
        (true, true) => {
            " The mask is applied inside the kernel; fully masked tiles are skipped. K and V are read through the page table, each key from its page."
        }
        (false, true) => " K and V are read through the page table, each key from its page.",
        (false, false) => "",
    };
    let quant_note = if problem.dtype_k.is_quantized() {
        format!(" K and V are {}, decoded as they load.", problem.dtype_k)
    } else {
        String::new()
    };
    let mask_note = format!("{mask_note}{quant_note}");
    let mask_note = mask_note.as_str();
    let slack = opts.tuning.coop_rescale_slack.unwrap_or(COOP_RESCALE_SLACK);
    if slack > COOP_RESCALE_SLACK {
        return Err(Error::invalid(
            TensorRole::Options,
            InputProblem::OutOfRange {
                what: "coop_rescale_slack",
                value: slack as f32,
                max: COOP_RESCALE_SLACK as f32,
            },
        ));
    }
    let coop = (opts.tuning.simt() == Default::default() && opts.subgroups == Subgroups::Auto)
        .then(|| coop_variant(problem, caps).ok())
        .flatten()
        .map(|v| match v {
            ShaderVariant::FlashCoop(t) => ShaderVariant::FlashCoop(CoopTile { slack, ..t }),
            v => v,
        });
    let splits = decode_splits(problem);
    let decode_plan = |v: ShaderVariant, splits: u32, why: &str| {
        Plan {
        backend: Backend::Decode,
        variant: v,
        key_splits: splits,
        parts: 1,
        reason: format!(
            "decode: {why}; {} keys split {splits} ways across workgroups, partial results merged by log-sum-exp.{mask_note}",
            problem.seq_k
        ).into(),
    }
    };
    let out = match opts.backend {
        Backend::Decode => {
            let v = memeff_variant(problem, caps)
                .map_err(|r| Error::backend(format!("decode cannot run: {r}")))?;
            if problem.varlen {
                return Err(Error::backend(
                    "decode cannot run: packed variable-length batches are not split",
                ));
            }
            let n = splits.unwrap_or_else(|| split_count(problem.seq_k));
            decode_plan(v, n, "decode was forced")
        }
        Backend::Auto if splits.is_some() && memeff_variant(problem, caps).is_ok() => {
            let v = memeff_variant(problem, caps).map_err(Error::backend)?;
            decode_plan(
                v,
                splits.unwrap_or(1),
                &format!(
                    "{} query rows over {} keys would leave flash's {}-row tiles mostly idle",
                    problem.seq_q, problem.seq_k, FLASH_BLOCK_Q
                ),
            )
        }
        // Flash, forced or chosen, runs on cooperative matrices where it can (and the
        // caller did not tune the SIMT tiles or turn subgroups off).
        Backend::Flash | Backend::Auto if coop.is_some() => {
            let fr = caps.coop_fragment;
            Plan {
                backend: Backend::Flash,
                variant: coop.unwrap_or_else(naive_variant),
                key_splits: 1,
                parts: 1,
                reason: format!(
                    "{}flash on cooperative matrices: 16-bit inputs, head dims {}/{}, {fr}x{fr}x{fr} f16 fragments with f32 accumulation, subgroups of {}.{mask_note}",
                    if opts.backend == Backend::Flash {
                        "flash was forced; "
                    } else {
                        ""
                    },
                    problem.head_dim_qk,
                    problem.head_dim_v,
                    if caps.subgroup_max_size > caps.subgroup_min_size {
                        format!("{} to {} (smaller subgroups share a row block)", caps.subgroup_min_size, caps.subgroup_max_size)
                    } else {
                        caps.subgroup_min_size.to_string()
                    }
                ).into(),
            }
        }
        Backend::Flash => {
            let v = flash_variant(problem, caps, opts)
                .map_err(|r| Error::backend(format!("flash cannot run: {r}")))?;
            Plan {
                backend: Backend::Flash,
                variant: v,
                key_splits: 1,
                parts: 1,
                reason: format!("flash was forced.{mask_note}").into(),
            }
        }
        Backend::MemoryEfficient => {
            let v = memeff_variant(problem, caps)
                .map_err(|r| Error::backend(format!("memory-efficient cannot run: {r}")))?;
            Plan {
                backend: Backend::MemoryEfficient,
                variant: v,
                key_splits: 1,
                parts: 1,
                reason: format!("memory-efficient was forced.{mask_note}").into(),
            }
        }
        Backend::Naive => Plan {
            backend: Backend::Naive,
            variant: naive_variant(),
            key_splits: 1,
            parts: 1,
            reason: "naive was forced (exact reference: scores, softmax, P.V).".into(),
        },
        Backend::Auto => match flash_variant(problem, caps, opts) {
            Ok(v) => {
                let cpu_note = match (caps.cpu, v.family()) {
                    (true, Family::FlashUnrolled) => format!(
                        ", CPU adapter: the unrolled kernel, {} rows per thread in named registers",
                        v.rows_per_thread()
                    ),
                    (true, _) => format!(", CPU adapter: {} rows per thread", v.rows_per_thread()),
                    _ => String::new(),
                };
                let thread_note = if v.subgroups() {
                    ", subgroup reductions on"
                } else if caps.cpu_serial_loads {
                    ", one thread per row (this driver loads memory one lane at a time)"
                } else if caps.browser && !caps.subgroup {
                    ", one thread per row (this WebGPU device has no subgroups to split rows across)"
                } else {
                    ""
                };
                Plan {
                    backend: Backend::Flash,
                    variant: v,
                    key_splits: 1,
                    parts: 1,
                    reason: format!(
                        "flash fits: head dims {}/{} within its buckets, {}x{} tiles use {} of {} bytes of workgroup memory{cpu_note}{thread_note}.{mask_note}",
                        problem.head_dim_qk,
                        problem.head_dim_v,
                        v.block_q(),
                        v.block_k(),
                        v.workgroup_storage(),
                        caps.max_workgroup_storage,
                    ).into(),
                }
            }
            Err(why_not_flash) if opts.tuning.simt() != Default::default() => {
                return Err(Error::backend(format!(
                    "the flash tile overrides cannot run: {why_not_flash}"
                )));
            }
            Err(why_not_flash) => match memeff_variant(problem, caps) {
                Ok(v) => Plan {
                    backend: Backend::MemoryEfficient,
                    variant: v,
                    key_splits: 1,
                    parts: 1,
                    reason: format!("memory-efficient, because {why_not_flash}.{mask_note}").into(),
                },
                Err(why_not_memeff) => Plan {
                    backend: Backend::Naive,
                    variant: naive_variant(),
                    key_splits: 1,
                    parts: 1,
                    reason: format!("naive, because {why_not_flash}, and {why_not_memeff}.").into(),
                },
            },
        },
    };
    if out.backend == Backend::Naive && caps.max_storage_buffers < NAIVE_STORAGE_BUFFERS {
        return Err(Error::limit(
            "max_storage_buffers_per_shader_stage",
            NAIVE_STORAGE_BUFFERS as u64,
            caps.max_storage_buffers as u64,
        ));
    }
    if out.variant.workgroup_storage() > caps.max_workgroup_storage {
        return Err(Error::limit(
            "max_compute_workgroup_storage_size",
            out.variant.workgroup_storage() as u64,
            caps.max_workgroup_storage as u64,
        ));
    }
    Ok(out)
}
