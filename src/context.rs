//! The [`Context`]: a device, its queue, what the adapter can do, and the pipeline cache.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use crate::blockmask::{self, BlockMask};
use crate::dispatch::{self, DeviceCaps, Family, Plan};
use crate::error::{Error, InputProblem, Result, TensorRole};
use crate::gate::{self, DeviceGuard, Gate, Gated};
use crate::options::{AttentionOptions, Backend, Tuning};
use crate::pipeline::{PipelineCache, chain};
use crate::split::{self, Layout, Part, PartRows, Split};
use crate::tensor::{DType, Tensor, TensorView};
use crate::tuning::{ShapeBucket, TuningTable};
use crate::validate::{self, Problem};
use crate::{flash, launch, memeff, merge, naive};

#[derive(Debug)]
struct Inner {
    /// Serialises device use on GL (`None` elsewhere); see [`crate::gate`].
    gate: Option<Arc<Gate>>,
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    caps: DeviceCaps,
    cache: PipelineCache,
    tuning: TuningTable,
    dummy: wgpu::Buffer,
    dummy_rw: wgpu::Buffer,
    /// The destination of [`Context::is_foreign`]'s copies.
    probe_dst: wgpu::Buffer,
}

/// Everything the crate needs to run attention on one device. Cheap to clone, `Send + Sync`.
///
/// Create it from its own adapter with [`Context::new`] / [`Context::new_blocking`]
/// (honouring wgpu's `WGPU_BACKEND`, `WGPU_ADAPTER_NAME` and `WGPU_POWER_PREF`), or from
/// your own device with [`Context::from_device`].
#[derive(Clone, Debug)]
pub struct Context {
    inner: Arc<Gated<Inner>>,
}

/// What a flash kernel counted in a debug run ([`Context::debug_kernel_counts`]).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounts {
    /// Key tiles the workgroups loaded (one per workgroup and tile).
    pub key_tiles: u32,
    /// Of those, tiles that needed per-element bool-mask loads.
    pub mixed_tiles: u32,
    /// Cooperative-matrix kernel: round trips of a subgroup's accumulators through
    /// workgroup memory to rescale them (lazy rescaling); one per workgroup and tile that needed it.
    pub rescales: u32,
}

/// Optional features this crate uses when the adapter has them.
pub const OPTIONAL_FEATURES: wgpu::Features = wgpu::Features::SUBGROUP
    .union(wgpu::Features::SHADER_F16)
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS);

fn backends_from_env() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all())
}

impl Context {
    /// Opens the adapter chosen by wgpu's environment variables (`WGPU_BACKEND`,
    /// `WGPU_ADAPTER_NAME`, `WGPU_POWER_PREF`) or the default one, and a device on it with
    /// the adapter's full limits and the optional features it has ([`OPTIONAL_FEATURES`]).
    pub async fn new() -> Result<Self> {
        Self::with_backends(backends_from_env()).await
    }

    /// [`Context::new`], blocking.
    pub fn new_blocking() -> Result<Self> {
        pollster::block_on(Self::new())
    }

    /// Like [`Context::new`] but only on `backends` (e.g. `wgpu::Backends::GL` to test
    /// the GL fallback). `WGPU_ADAPTER_NAME` and `WGPU_POWER_PREF` still apply.
    pub async fn with_backends(backends: wgpu::Backends) -> Result<Self> {
        Self::open(backends, false, None).await
    }

    /// [`Context::new`], also enabling wgpu's experimental cooperative matrices when the
    /// adapter offers 16×16×16 f16 → f32 tiles: flash on f16 inputs then runs on tensor
    /// cores (Vulkan, Metal).
    ///
    /// # Safety
    ///
    /// wgpu's experimental features may contain bugs with undefined behaviour
    /// ([`wgpu::ExperimentalFeatures::enabled`]); by calling this you accept that.
    pub async unsafe fn new_experimental() -> Result<Self> {
        Self::open(backends_from_env(), true, None).await
    }

    /// [`Context::new_experimental`], blocking.
    ///
    /// # Safety
    ///
    /// As for [`Context::new_experimental`].
    pub unsafe fn new_experimental_blocking() -> Result<Self> {
        pollster::block_on(Self::open(backends_from_env(), true, None))
    }

    async fn open(
        backends: wgpu::Backends,
        experimental: bool,
        checks: Option<wgpu::ShaderRuntimeChecks>,
    ) -> Result<Self> {
        let (instance, gate) = gate::shared_instance(backends);
        // The instance's GL adapters share one EGL context: creating one makes that context
        // current on this thread, which must not happen while another context of this
        // instance works on it. wgpu does this work when each call is made (the futures come
        // back ready), so the gate is held for the calls and released before each await.
        let held = || gate::hold(Some(&gate));
        let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(name) => {
                let name = name.to_lowercase();
                let adapters = {
                    let _held = held();
                    instance.enumerate_adapters(backends)
                }
                .await;
                let _held = held();
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&name))
                    .ok_or_else(|| {
                        Error::device_msg(
                            "choosing an adapter",
                            format!("WGPU_ADAPTER_NAME={name:?} matches none of {names:?}"),
                        )
                    })?
            }
            Err(_) => {
                let _held = held();
                instance.request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::from_env().unwrap_or_default(),
                    compatible_surface: None,
                    ..Default::default()
                })
            }
            .await
            .map_err(|e| Error::device(format!("requesting a wgpu adapter on {backends:?}"), e))?,
        };
        let mut features = adapter.features() & OPTIONAL_FEATURES;
        let coop = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        let coop_props = adapter.cooperative_matrix_properties();
        if experimental
            && adapter.features().contains(coop)
            && dispatch::coop_fragment(&coop_props) > 0
        {
            features |= coop;
        }
        let requested = {
            let _held = held();
            adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("wgpu-attention"),
                required_features: features,
                required_limits: adapter.limits(),
                experimental_features: if features.contains(coop) {
                    // SAFETY: the caller of `new_experimental` accepted wgpu's experimental features.
                    unsafe { wgpu::ExperimentalFeatures::enabled() }
                } else {
                    wgpu::ExperimentalFeatures::disabled()
                },
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
        }
        .await;
        let _held = held();
        let (device, queue) = match requested {
            Ok(x) => x,
            Err(e) => {
                drop(adapter); // under the gate, like every GL object
                return Err(Error::device("requesting a wgpu device", e));
            }
        };
        let info = adapter.get_info();
        let ctx_gate = (info.backend == wgpu::Backend::Gl).then(|| gate.clone());
        let ctx = Self::build(device, queue, &info, checks, ctx_gate, &coop_props);
        drop(adapter);
        Ok(ctx)
    }

    /// [`Context::with_backends`], blocking.
    pub fn with_backends_blocking(backends: wgpu::Backends) -> Result<Self> {
        pollster::block_on(Self::with_backends(backends))
    }

    /// Wraps your own device and queue. `info` is your adapter's `get_info()`; the crate
    /// uses the features and limits the *device* was created with.
    ///
    /// On wgpu's GL backend the context serialises its use of the device (see
    /// [`Context::lock_device`]); a device shared with other code should then be used
    /// through one context, or under its guard.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, info: &wgpu::AdapterInfo) -> Self {
        let gate = Self::own_gate(&device, info);
        Self::build(device, queue, info, None, gate, &[])
    }

    /// [`Context::from_device`] for a device of `adapter`, whose cooperative-matrix
    /// configurations it reads too: a device created with
    /// `EXPERIMENTAL_COOPERATIVE_MATRIX` (and `SHADER_F16`, `SUBGROUP`) then runs 16-bit
    /// flash on the tensor cores, as [`Context::new_experimental`] does.
    pub fn from_adapter_device(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Self {
        let info = adapter.get_info();
        let gate = Self::own_gate(&device, &info);
        let coop = adapter.cooperative_matrix_properties();
        Self::build(device, queue, &info, None, gate, &coop)
    }

    /// The gate of a device the caller brought (GL only), shared by every context over it.
    fn own_gate(device: &wgpu::Device, info: &wgpu::AdapterInfo) -> Option<Arc<Gate>> {
        (info.backend == wgpu::Backend::Gl).then(|| gate::device_gate(device))
    }

    /// [`Context::from_device`], but the shaders are compiled without the bounds checks
    /// wgpu injects into every array access (measured 1.15–1.2× faster flash on
    /// cooperative matrices on an H100; see BENCHMARKS.md).
    ///
    /// # Safety
    ///
    /// Out-of-bounds shader accesses are then undefined behaviour on platforms whose driver
    /// does not check them itself. This crate validates every view against its buffer before
    /// dispatching and its shaders index only inside the views they are given; the flag
    /// trusts that. Use it when you trust this crate's shaders as you trust your own.
    ///
    /// On CPU adapters ([`DeviceCaps::cpu`]: lavapipe, WARP, SwiftShader) the bounds checks
    /// stay on: without them the driver unrolls the flash loops into a shader that takes
    /// minutes to compile, for about 10% speed.
    pub unsafe fn from_device_unchecked(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: &wgpu::AdapterInfo,
    ) -> Self {
        let gate = Self::own_gate(&device, info);
        Self::build(
            device,
            queue,
            info,
            Some(wgpu::ShaderRuntimeChecks::unchecked()),
            gate,
            &[],
        )
    }

    /// [`Context::new_blocking`] (or, with `experimental`, [`Context::new_experimental_blocking`])
    /// with the given runtime checks in every shader: for measuring what each check costs.
    ///
    /// # Safety
    ///
    /// As for [`Context::from_device_unchecked`] for each check turned off, and as for
    /// [`Context::new_experimental`] when `experimental` is set.
    #[doc(hidden)]
    pub unsafe fn new_with_checks_blocking(
        experimental: bool,
        checks: wgpu::ShaderRuntimeChecks,
    ) -> Result<Self> {
        pollster::block_on(Self::open(backends_from_env(), experimental, Some(checks)))
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: &wgpu::AdapterInfo,
        checks: Option<wgpu::ShaderRuntimeChecks>,
        gate: Option<Arc<Gate>>,
        coop: &[wgpu::CooperativeMatrixProperties],
    ) -> Self {
        let _held = gate::hold(gate.as_ref());
        let limits = device.limits();
        let caps = DeviceCaps::from_limits(&limits, device.features(), info.subgroup_min_size)
            .with_adapter_info(info)
            .with_cooperative_matrices(coop);
        // On CPU adapters wgpu's bounds checks stay on even where the caller turned them off:
        // without them lavapipe's compiler unrolls the flash loops into a shader that takes
        // minutes to compile (116 s for one variant, measured), for about 10% speed.
        let checks = checks.map(|c| wgpu::ShaderRuntimeChecks {
            bounds_checks: c.bounds_checks || caps.cpu,
            ..c
        });
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-attention unused binding"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let dummy_rw = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-attention unused output binding"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let probe_dst = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-attention probe"),
            size: 16,
            usage: wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        log::debug!(
            "wgpu-attention context on {} ({:?}): {caps:?}",
            info.name,
            info.backend
        );
        Context {
            inner: Arc::new(Gated::new(
                Inner {
                    gate: gate.clone(),
                    device,
                    queue,
                    info: info.clone(),
                    limits,
                    caps,
                    cache: PipelineCache::new(checks, gate.is_some()),
                    tuning: TuningTable::default(),
                    dummy,
                    dummy_rw,
                    probe_dst,
                },
                gate.clone(),
            )),
        }
    }

    /// Holds this context's device until the guard is dropped.
    ///
    /// On wgpu's GL backend every operation of this crate takes this lock first, because
    /// wgpu-hal panics when a thread waits over 6 s for the GL context while another holds
    /// it (llvmpipe compiles a flash pipeline for tens of seconds). Code that uses the
    /// device itself ([`Context::device`], buffers it made, dropping the last handle of a
    /// buffer) from other threads while this context may be working should hold the guard
    /// meanwhile. [`crate::Tensor`]s, [`crate::KvCache`]s and [`crate::BlockMask`]s drop
    /// their buffers under it by themselves. The lock is reentrant, and every context of
    /// one GL instance shares it. On every other backend it holds nothing and costs
    /// nothing.
    pub fn lock_device(&self) -> DeviceGuard<'_> {
        self.hold()
    }

    pub(crate) fn hold(&self) -> DeviceGuard<'_> {
        gate::hold(self.inner.gate.as_ref())
    }

    /// A tensor owning `view`'s buffer, dropped under this context's gate.
    pub(crate) fn tensor(&self, view: TensorView) -> Tensor {
        Tensor::gated(view, self.inner.gate.clone())
    }

    pub(crate) fn gate(&self) -> Option<&Arc<Gate>> {
        self.inner.gate.as_ref()
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// The adapter's description.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }

    /// What the dispatcher knows of this device.
    pub fn caps(&self) -> &DeviceCaps {
        &self.inner.caps
    }

    /// The device's limits.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// The number of pipelines compiled so far.
    pub fn compiled_pipelines(&self) -> usize {
        self.inner.cache.len()
    }

    pub(crate) fn cache(&self) -> &PipelineCache {
        &self.inner.cache
    }

    /// The pipeline of `key`'s `entry`, compiled (and on GL run once) on first use.
    pub(crate) fn pipeline(
        &self,
        key: crate::pipeline::ModuleKey,
        entry: &'static str,
    ) -> Result<Arc<crate::pipeline::Compiled>> {
        let _held = self.hold();
        self.cache().get(self.device(), self.queue(), key, entry)
    }

    pub(crate) fn tuning_table(&self) -> &TuningTable {
        &self.inner.tuning
    }

    /// `opts` with this context's tuned tiles for `p`, unless the call sets its own.
    fn with_tuning(&self, p: &Problem, opts: &AttentionOptions) -> Option<AttentionOptions> {
        if opts.tuning != Tuning::default() {
            return None;
        }
        let t = self.tuning_table().get(&ShapeBucket::of(p))?;
        Some(AttentionOptions {
            tuning: t,
            ..opts.clone()
        })
    }

    fn plan_tuned(&self, p: &Problem, opts: &AttentionOptions) -> Result<Plan> {
        match self.with_tuning(p, opts) {
            Some(tuned) => {
                let mut plan = dispatch::plan(p, self.caps(), &tuned)?;
                if plan.backend == Backend::Flash {
                    plan.reason.push_str(&format!(
                        " Tiles tuned on this adapter: {} keys, {} rows per thread.",
                        plan.variant.block_k, plan.variant.rows_per_thread
                    ));
                }
                Ok(plan)
            }
            None => dispatch::plan(p, self.caps(), opts),
        }
    }

    pub(crate) fn dummy(&self) -> &wgpu::Buffer {
        &self.inner.dummy
    }

    pub(crate) fn dummy_rw(&self) -> &wgpu::Buffer {
        &self.inner.dummy_rw
    }

    // ------------------------------------------------------------------ planning

    /// Validates a call and says which backend and variant would run it, and why,
    /// without running anything. `RUST_LOG=debug` logs the same decision on every call.
    /// [`Plan::parts`] says into how many calls it is split when a tensor is larger than
    /// one storage binding (the output counted as the contiguous tensor
    /// [`Context::attention`] allocates).
    pub fn plan(
        &self,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        opts: &AttentionOptions,
    ) -> Result<Plan> {
        let p = validate::validate(q, k, v, None, opts)?;
        let mut plan = self.plan_tuned(&p, opts)?;
        let layout = Layout::new(&p, [q, k, v], None, opts).for_plan(&plan);
        self.split(&layout, &mut plan)?;
        Ok(plan)
    }

    /// The dispatcher's decision for a problem described as plain data (with this
    /// context's tuned tiles, if any).
    pub fn plan_problem(&self, problem: &Problem, opts: &AttentionOptions) -> Result<Plan> {
        self.plan_tuned(problem, opts)
    }

    // ------------------------------------------------------------------ running

    /// Records attention into your command encoder, writing `out`. Nothing is submitted.
    /// Returns the plan that ran.
    ///
    /// After an error that wgpu raised while recording (a buffer of another device, a
    /// destroyed buffer), the encoder may hold invalid commands: discard it rather than
    /// finishing it.
    ///
    /// Validation happens before anything is recorded. Pipeline compilation errors are
    /// caught here; errors wgpu reports when the encoder is finished or submitted are yours
    /// to catch (error scopes), as with any wgpu encoder.
    pub fn record_attention(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        out: &TensorView,
        opts: &AttentionOptions,
    ) -> Result<Plan> {
        self.record_inner(encoder, q, k, v, out, opts, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn record_inner(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        out: &TensorView,
        opts: &AttentionOptions,
        counter: Option<&wgpu::Buffer>,
    ) -> Result<Plan> {
        let _held = self.hold();
        // Errors wgpu raises while this call records (a buffer of another device among the
        // views) are this call's, not the caller's encoder's.
        let scope = self
            .device()
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let res = (|| -> Result<Plan> {
            let p = validate::validate(q, k, v, Some(out), opts)?;
            let mut plan = self.plan_tuned(&p, opts)?;
            if counter.is_some() {
                if plan.backend != Backend::Flash {
                    return Err(Error::backend("tile counting needs the flash backend"));
                }
                plan.variant.count_tiles = true;
            }
            let layout = Layout::new(&p, [q, k, v], Some(out), opts).for_plan(&plan);
            let split = self.split(&layout, &mut plan)?;
            log::debug!("wgpu-attention {}: {plan}", opts.mask.describe());
            let views = [q, k, v, out];
            match split {
                None => self.record_part(encoder, &p, &plan, views, opts, counter, None)?,
                Some(split) if split.keys.len() == 1 => {
                    for part in &split.parts {
                        let c = layout.part_call(&p, views, opts, part);
                        self.record_part(
                            encoder,
                            &c.problem,
                            &plan,
                            [&c.q, &c.k, &c.v, &c.o],
                            &c.opts,
                            counter,
                            c.rows.as_ref(),
                        )?;
                    }
                }
                Some(split) => self
                    .record_key_chunks(encoder, &p, &plan, &layout, &split, views, opts, counter)?,
            }
            Ok(plan)
        })();
        let err = pollster::block_on(scope.pop());
        let plan = res?;
        match err {
            Some(e) => Err(self.device_error(
                "recording attention",
                &e,
                &call_buffers(q, k, v, Some(out), opts),
            )),
            None => Ok(plan),
        }
    }

    /// Records a call split over keys too: each part runs once per chunk of keys into f32
    /// scratch with its log-sum-exp, and the chunks are merged (two accumulators in turn)
    /// into the part's output, and log-sum-exp output if the call asks for one.
    #[allow(clippy::too_many_arguments)]
    fn record_key_chunks(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        p: &Problem,
        plan: &Plan,
        layout: &Layout<'_>,
        split: &Split,
        views: [&TensorView; 4],
        opts: &AttentionOptions,
        counter: Option<&wgpu::Buffer>,
    ) -> Result<()> {
        let dv = p.head_dim_v;
        let rows = split
            .parts
            .iter()
            .map(|x| x.nb * x.nh * x.nr)
            .max()
            .unwrap_or(1);
        // The first chunk goes to the fold's accumulator, each later one to this scratch and
        // is then merged into it.
        let mut fold = merge::Fold::new(self, rows, dv)?;
        let scratch_o = self.empty([1, 1, rows, dv], DType::F32)?;
        let scratch_l = self.empty([1, 1, rows, 1], DType::F32)?;
        for part in &split.parts {
            let shape = [part.nb, part.nh, part.nr];
            fold.reshape(shape);
            let scratch = (
                TensorView::bhsd(
                    scratch_o.buffer().clone(),
                    DType::F32,
                    [shape[0], shape[1], shape[2], dv],
                ),
                TensorView::bhsd(
                    scratch_l.buffer().clone(),
                    DType::F32,
                    [shape[0], shape[1], shape[2], 1],
                ),
            );
            for (n, &keys) in split.keys.iter().enumerate() {
                let c = layout.part_call(p, views, opts, &part.keys(keys));
                let (o, l) = if n == 0 {
                    fold.current()
                } else {
                    scratch.clone()
                };
                let mut part_opts = c.opts.clone();
                part_opts.lse_output = Some(l.clone());
                let problem = Problem {
                    dtype_o: DType::F32,
                    lse: true,
                    ..c.problem.clone()
                };
                self.record_part(
                    encoder,
                    &problem,
                    plan,
                    [&c.q, &c.k, &c.v, &o],
                    &part_opts,
                    counter,
                    c.rows.as_ref(),
                )?;
                if n == 0 {
                    continue;
                }
                let (ao, al) = fold.current();
                let last =
                    (n + 1 == split.keys.len()).then_some((&c.o, c.opts.lse_output.as_ref()));
                fold.merge(
                    self,
                    encoder,
                    merge::Input::one(&ao, &al),
                    merge::Input::one(&o, &l),
                    last,
                )?;
            }
        }
        Ok(())
    }

    /// The parts a call runs as when a tensor is larger than one storage binding (`None`:
    /// one call), noted in `plan`.
    fn split(&self, layout: &Layout<'_>, plan: &mut Plan) -> Result<Option<Split>> {
        let max = self.caps().max_storage_binding;
        let align = self.limits().min_storage_buffer_offset_alignment as u64;
        let split = layout.split(max, align)?;
        if let Some(split) = &split {
            plan.parts = split.calls() as u32;
            let keys = if split.keys.len() > 1 {
                format!(
                    ", each over {} chunks of keys merged by log-sum-exp",
                    split.keys.len()
                )
            } else {
                String::new()
            };
            plan.reason.push_str(&format!(
                " Split into {} calls (over batch items, groups of heads, single heads, then query rows{keys}) so that no tensor needs a storage binding over max_storage_buffer_binding_size ({max} bytes).",
                split.calls()
            ));
        }
        Ok(split)
    }

    /// Records one call (or one part of a split call: `rows` then rebases its mask).
    #[allow(clippy::too_many_arguments)]
    fn record_part(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        p: &Problem,
        plan: &Plan,
        [q, k, v, out]: [&TensorView; 4],
        opts: &AttentionOptions,
        counter: Option<&wgpu::Buffer>,
        rows: Option<&PartRows>,
    ) -> Result<()> {
        let with_summary = matches!(
            plan.variant.family,
            Family::Flash | Family::FlashUnrolled | Family::FlashCoop
        );
        let bound = launch::bind(self, p, [q, k, v, out], opts, with_summary, rows)?;
        match plan.variant.family {
            Family::Flash | Family::FlashUnrolled | Family::FlashCoop => {
                flash::record(self, encoder, p, plan.variant, &bound, opts, counter)
            }
            Family::MemoryEfficient => memeff::record(
                self,
                encoder,
                p,
                plan.variant,
                &bound,
                plan.key_splits,
                out,
                opts.lse_output.as_ref(),
            ),
            Family::Naive => naive::record(self, encoder, p, plan.variant, &bound),
        }
    }

    /// Runs attention into `out` and submits. Returns the plan that ran. wgpu validation
    /// and out-of-memory errors come back as [`Error::Device`].
    pub fn attention_into(
        &self,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        out: &TensorView,
        opts: &AttentionOptions,
    ) -> Result<Plan> {
        let buffers = || call_buffers(q, k, v, Some(out), opts);
        self.submit_scoped("running attention", buffers, |ctx, enc| {
            ctx.record_attention(enc, q, k, v, out, opts)
        })
    }

    /// Runs attention into a new output tensor (BHSD, dtype `opts.output_dtype` or Q's)
    /// and submits. Download it with [`Context::download_f32_blocking`].
    pub fn attention(
        &self,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        opts: &AttentionOptions,
    ) -> Result<Tensor> {
        let _held = self.hold();
        let p = validate::validate(q, k, v, None, opts)?;
        let out = if opts.varlen.is_some() {
            // Packed like the inputs: [total_q, Hq, Dv] as a [1, Hq, total_q, Dv] view.
            let total = q.shape[2];
            let t = self.empty([1, 1, 1, total * p.heads_q * p.head_dim_v], p.dtype_o)?;
            self.tensor(TensorView::packed_varlen(
                t.buffer().clone(),
                p.dtype_o,
                total,
                p.heads_q,
                p.head_dim_v,
            ))
        } else {
            self.empty([p.batch, p.heads_q, p.seq_q, p.head_dim_v], p.dtype_o)?
        };
        self.attention_into(q, k, v, out.view(), opts)?;
        Ok(out)
    }

    /// Debug aid and test evidence: runs the flash backend with a tile counter and
    /// returns `(key tiles loaded, tiles that needed per-element bool-mask loads)`.
    #[doc(hidden)]
    pub fn debug_tile_counts(
        &self,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        out: &TensorView,
        opts: &AttentionOptions,
    ) -> Result<(u32, u32)> {
        let c = self.debug_kernel_counts(q, k, v, out, opts)?;
        Ok((c.key_tiles, c.mixed_tiles))
    }

    /// Debug aid and test evidence: runs the call's flash kernel with counters on and
    /// returns what it counted.
    #[doc(hidden)]
    pub fn debug_kernel_counts(
        &self,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        out: &TensorView,
        opts: &AttentionOptions,
    ) -> Result<KernelCounts> {
        let _held = self.hold();
        let counter = self
            .device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("wgpu-attention tile counter"),
                contents: bytemuck::cast_slice(&[0u32; 4]),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            });
        let buffers = || call_buffers(q, k, v, Some(out), opts);
        self.submit_scoped("counting tiles", buffers, |ctx, enc| {
            ctx.record_inner(enc, q, k, v, out, opts, Some(&counter))
        })?;
        let view = TensorView::new(counter, DType::F32, [1, 1, 1, 4], [4, 4, 4, 1], 0);
        let words = self.read_bytes_blocking(&view)?;
        let w: Vec<u32> = words
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(KernelCounts {
            key_tiles: w[0],
            mixed_tiles: w[1],
            rescales: w[2],
        })
    }

    /// Combines partial results computed over **disjoint key sets** into the exact result,
    /// by their log-sum-exps (from [`AttentionOptions::lse_output`]), and submits.
    ///
    /// `parts` are `(output, lse)` pairs: outputs `[B, H, Sq, Dv]` (any float dtype), lse f32
    /// `[B, H, Sq, 1]`. `out` receives the merged output and `lse_out`, if given, the merged
    /// log-sum-exp, so merges can be chained. This is what splitting keys across devices
    /// (ring or context-parallel attention) or decoding over a shared prefix needs:
    ///
    /// ```
    /// use wgpu_attention::{AttentionOptions, Context, DType, TensorView};
    /// # fn main() -> Result<(), wgpu_attention::Error> {
    /// let ctx = Context::new_blocking()?;
    /// let (b, h, sq, d) = (1, 2, 4, 8);
    /// let q = ctx.upload_f32(&vec![0.5; b * h * sq * d], [b, h, sq, d])?;
    /// let data: Vec<f32> = (0..b * h * 10 * d).map(|i| (i % 7) as f32 / 7.0).collect();
    /// let keys = ctx.buffer_from_f32(&data);
    /// let all = TensorView::bhsd(keys, DType::F32, [b, h, 10, d]);
    /// // Keys 0..6 on one "device", 6..10 on another: two views of the same buffer here.
    /// let first = TensorView::new(all.buffer.clone(), DType::F32, [b, h, 6, d], all.strides, 0);
    /// let second = first.clone().with_offset(6 * d as u64 * 4);
    /// let second = TensorView { shape: [b, h, 4, d], ..second };
    /// let mut parts = Vec::new();
    /// for kv in [&first, &second] {
    ///     let lse = ctx.empty([b, h, sq, 1], DType::F32)?;
    ///     let opts = AttentionOptions { lse_output: Some(lse.view().clone()), ..Default::default() };
    ///     let o = ctx.attention(q.view(), kv, kv, &opts)?;
    ///     parts.push((o, lse));
    /// }
    /// let merged = ctx.empty([b, h, sq, d], DType::F32)?;
    /// let pairs: Vec<_> = parts.iter().map(|(o, l)| (o.view(), l.view())).collect();
    /// ctx.merge(&pairs, merged.view(), None)?;
    /// let full = ctx.attention(q.view(), &all, &all, &AttentionOptions::default())?;
    /// let (m, f) = (ctx.download_f32_blocking(merged.view())?, ctx.download_f32_blocking(full.view())?);
    /// assert!(m.iter().zip(&f).all(|(x, y)| (x - y).abs() < 1e-5));
    /// # Ok(())
    /// # }
    /// ```
    pub fn merge(
        &self,
        parts: &[(&TensorView, &TensorView)],
        out: &TensorView,
        lse_out: Option<&TensorView>,
    ) -> Result<()> {
        let _held = self.hold();
        merge::validate(parts, out, lse_out)?;
        // Tensors larger than one storage binding: merged in parts over batch items, heads
        // and rows, as attention calls are split.
        let [b, h, s, dv] = out.shape;
        let max = self.caps().max_storage_binding;
        let align = self.limits().min_storage_buffer_offset_alignment as u64;
        let mut views: Vec<(&TensorView, TensorRole)> = Vec::new();
        for (o, l) in parts {
            views.push((o, TensorRole::Output));
            views.push((l, TensorRole::Lse));
        }
        views.push((out, TensorRole::Output));
        views.extend(lse_out.map(|l| (l, TensorRole::Lse)));
        let narrow = |v: &TensorView, p: &Part| {
            v.narrowed(0, p.b0, p.nb)
                .narrowed(1, p.h0, p.nh)
                .narrowed(2, p.r0, p.nr)
        };
        // The first view of `p` that does not fit, with its bytes (the f32 fold
        // intermediates of more than two parts count as the output).
        let too_large = |p: &Part| {
            let fold = (p.nb * p.nh * p.nr * dv) as u64 * 4;
            if parts.len() > 2 && fold > max {
                return Some((TensorRole::Output, fold));
            }
            views.iter().find_map(|&(v, role)| {
                let size = launch::binding_size(&narrow(v, p), align);
                (size > max).then_some((role, size))
            })
        };
        let whole = Part {
            b0: 0,
            nb: b,
            h0: 0,
            nh: h,
            r0: 0,
            nr: s,
            k0: 0,
            nk: 0,
        };
        let tiles = if too_large(&whole).is_none() {
            vec![whole]
        } else {
            split::tile(whole, 1, true, |p| too_large(p).is_none()).map_err(|p| {
                let (role, size) = too_large(&p).unwrap_or((TensorRole::Output, 0));
                Error::binding(role, size, max)
            })?
        };
        // f32 accumulators for folds of more than two parts, sized for the largest tile.
        let rows = tiles.iter().map(|t| t.nb * t.nh * t.nr).max().unwrap_or(1);
        let mut fold = merge::Fold::new(self, if parts.len() > 2 { rows } else { 1 }, dv)?;
        let buffers = || views.iter().map(|&(v, role)| (&v.buffer, role)).collect();
        self.submit_scoped("merging partial results", buffers, |ctx, enc| {
            for t in &tiles {
                let narrowed: Vec<(TensorView, TensorView)> = parts
                    .iter()
                    .map(|(o, l)| (narrow(o, t), narrow(l, t)))
                    .collect();
                let pairs: Vec<(&TensorView, &TensorView)> =
                    narrowed.iter().map(|(o, l)| (o, l)).collect();
                let lse = lse_out.map(|l| narrow(l, t));
                ctx.record_merge(enc, &pairs, &narrow(out, t), lse.as_ref(), &mut fold)?;
            }
            Ok(())
        })
    }

    /// Records a merge of `parts` (two at a time, through the f32 accumulators of `fold`).
    fn record_merge(
        &self,
        enc: &mut wgpu::CommandEncoder,
        parts: &[(&TensorView, &TensorView)],
        out: &TensorView,
        lse_out: Option<&TensorView>,
        fold: &mut merge::Fold,
    ) -> Result<()> {
        let one = |i: usize| merge::Input::one(parts[i].0, parts[i].1);
        if parts.len() <= 2 {
            let b = (parts.len() == 2).then(|| one(1));
            return merge::record(self, enc, one(0), b, out, lse_out);
        }
        // More than two: fold left through the accumulators.
        let [b, h, s, _] = out.shape;
        fold.reshape([b, h, s]);
        fold.merge(self, enc, one(0), one(1), None)?;
        for n in 2..parts.len() {
            let (o, l) = fold.current();
            let last = (n + 1 == parts.len()).then_some((out, lse_out));
            fold.merge(self, enc, merge::Input::one(&o, &l), one(n), last)?;
        }
        Ok(())
    }

    /// Computes the block summary of a boolean mask (and submits), for reuse across
    /// calls with [`crate::Mask::bool_mask_with_summary`].
    pub fn block_mask(&self, mask: &TensorView) -> Result<BlockMask> {
        let buffers = || vec![(&mask.buffer, TensorRole::BoolMask)];
        self.submit_scoped("computing a block mask", buffers, |ctx, enc| {
            blockmask::create(ctx, enc, mask)
        })
    }

    /// Records into a fresh encoder under an error scope, then submits.
    fn submit_scoped<'a, T>(
        &self,
        what: &str,
        buffers: impl FnOnce() -> Vec<(&'a wgpu::Buffer, TensorRole)>,
        f: impl FnOnce(&Self, &mut wgpu::CommandEncoder) -> Result<T>,
    ) -> Result<T> {
        let _held = self.hold();
        let device = self.device();
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("wgpu-attention"),
        });
        let res = f(self, &mut enc);
        if res.is_ok() {
            self.queue().submit([enc.finish()]);
        }
        let verr = pollster::block_on(val.pop());
        let merr = pollster::block_on(oom.pop());
        let out = res?;
        if let Some(e) = verr.or(merr) {
            return Err(self.device_error(what, &e, &buffers()));
        }
        Ok(out)
    }

    // ------------------------------------------------------------------ memory

    fn buffer_init(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        // Pad to a whole number of words: shaders read u32 words.
        let mut padded;
        let contents = if !bytes.len().is_multiple_of(4) || bytes.is_empty() {
            padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
            &padded[..]
        } else {
            bytes
        };
        let _held = self.hold();
        self.device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// A storage buffer holding `data` (padded to whole words), for building your own views.
    pub fn buffer_from_f32(&self, data: &[f32]) -> wgpu::Buffer {
        self.buffer_init("wgpu-attention f32", bytemuck::cast_slice(data))
    }

    /// A storage buffer holding `data` as f16 (padded to whole words).
    pub fn buffer_from_f16(&self, data: &[half::f16]) -> wgpu::Buffer {
        self.buffer_init("wgpu-attention f16", bytemuck::cast_slice(data))
    }

    /// A storage buffer holding `data` as bf16 (padded to whole words).
    pub fn buffer_from_bf16(&self, data: &[half::bf16]) -> wgpu::Buffer {
        self.buffer_init("wgpu-attention bf16", bytemuck::cast_slice(data))
    }

    /// A storage buffer holding `data` as bytes, 1 = true (padded to whole words).
    pub fn buffer_from_bool(&self, data: &[bool]) -> wgpu::Buffer {
        let bytes: Vec<u8> = data.iter().map(|&b| b as u8).collect();
        self.buffer_init("wgpu-attention bool", &bytes)
    }

    fn check_host_len(shape: [usize; 4], got: usize) -> Result<()> {
        let expected = crate::tensor::checked_product(&shape)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                Error::invalid(
                    TensorRole::HostData,
                    InputProblem::TooLarge {
                        what: format!("the shape {shape:?}, whose element count overflows,"),
                    },
                )
            })?;
        if expected != got {
            return Err(Error::invalid(
                TensorRole::HostData,
                InputProblem::HostLength { expected, got },
            ));
        }
        Ok(())
    }

    /// Uploads a contiguous BHSD f32 tensor.
    pub fn upload_f32(&self, data: &[f32], shape: [usize; 4]) -> Result<Tensor> {
        Self::check_host_len(shape, data.len())?;
        let b = self.buffer_from_f32(data);
        Ok(self.tensor(TensorView::bhsd(b, DType::F32, shape)))
    }

    /// Uploads a contiguous BHSD f16 tensor.
    pub fn upload_f16(&self, data: &[half::f16], shape: [usize; 4]) -> Result<Tensor> {
        Self::check_host_len(shape, data.len())?;
        let b = self.buffer_from_f16(data);
        Ok(self.tensor(TensorView::bhsd(b, DType::F16, shape)))
    }

    /// Uploads a contiguous BHSD bf16 tensor.
    pub fn upload_bf16(&self, data: &[half::bf16], shape: [usize; 4]) -> Result<Tensor> {
        Self::check_host_len(shape, data.len())?;
        let b = self.buffer_from_bf16(data);
        Ok(self.tensor(TensorView::bhsd(b, DType::BF16, shape)))
    }

    /// Uploads a contiguous bool mask of shape `[B|1, H|1, Sq, Sk]` (true = attend).
    pub fn upload_bool(&self, data: &[bool], shape: [usize; 4]) -> Result<Tensor> {
        Self::check_host_len(shape, data.len())?;
        let b = self.buffer_from_bool(data);
        Ok(self.tensor(TensorView::bhsd(b, DType::Bool, shape)))
    }

    /// A new contiguous tensor (contents unspecified: zeros on most backends).
    pub fn empty(&self, shape: [usize; 4], dtype: DType) -> Result<Tensor> {
        let bytes = crate::tensor::checked_product(&shape)
            .and_then(|n| n.checked_mul(dtype.size()))
            .and_then(|b| b.checked_next_multiple_of(4))
            .ok_or_else(|| {
                Error::invalid(
                    TensorRole::NewTensor,
                    InputProblem::TooLarge {
                        what: format!("the byte size of shape {shape:?} ({dtype})"),
                    },
                )
            })?
            .max(4);
        if bytes > self.caps().max_buffer_size {
            return Err(Error::limit(
                "max_buffer_size",
                bytes,
                self.caps().max_buffer_size,
            ));
        }
        let _held = self.hold();
        let b = self.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-attention tensor"),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(self.tensor(TensorView::bhsd(b, dtype, shape)))
    }

    /// Reads the bytes a view spans (from the word holding its first element to the word
    /// holding its last) and returns them, with the view's first element at byte
    /// `view.offset % 4`.
    async fn read_bytes(&self, view: &TensorView) -> Result<Vec<u8>> {
        view.check_memory(TensorRole::Download, wgpu::BufferUsages::COPY_SRC)?;
        let start = view.offset / 4 * 4;
        let end = view.end_byte().unwrap_or(u64::MAX).div_ceil(4) * 4;
        let size = end - start;
        // The guard is not held across the await: the future stays `Send`.
        let (staging, rx) = {
            let _held = self.hold();
            let scope = self
                .device()
                .push_error_scope(wgpu::ErrorFilter::Validation);
            let staging = Gated::new(
                self.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-attention download"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                self.gate().cloned(),
            );
            let mut enc = self.device().create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(&view.buffer, start, &staging, 0, size);
            self.queue().submit([enc.finish()]);
            if let Some(e) = pollster::block_on(scope.pop()) {
                return Err(self.device_error(
                    "downloading a tensor",
                    &e,
                    &[(&view.buffer, TensorRole::Download)],
                ));
            }
            let (tx, rx) = futures::channel::oneshot::channel();
            staging.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
            (staging, rx)
        };
        self.wait()?;
        rx.await
            .map_err(|e| Error::device("waiting for a buffer mapping", e))?
            .map_err(|e| Error::device("mapping a download buffer", e))?;
        let _held = self.hold();
        let bytes = staging
            .get_mapped_range(..)
            .map_err(|e| Error::device("reading a mapped buffer", e))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }

    /// The error for a wgpu validation error `e` raised while working on `buffers`: a buffer
    /// of another device (another context) among them is the caller's input error, named;
    /// anything else is a device error.
    pub(crate) fn device_error(
        &self,
        what: &str,
        e: &wgpu::Error,
        buffers: &[(&wgpu::Buffer, TensorRole)],
    ) -> Error {
        for &(buffer, role) in buffers {
            if self.is_foreign(buffer) {
                return Error::invalid(role, InputProblem::ForeignBuffer);
            }
        }
        Error::device_msg(what.to_string(), chain(e))
    }

    /// Whether wgpu says `buffer` belongs to another device (of this context's instance):
    /// wgpu's `DeviceMismatch`, recognised by its message (wgpu-core's error types are not
    /// part of wgpu's API).
    fn is_foreign(&self, buffer: &wgpu::Buffer) -> bool {
        let device = self.device();
        if buffer.size() < 4 {
            return false;
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        if buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("wgpu-attention ownership probe"),
                entries: &[wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: true },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                }],
            });
            let _probe = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("wgpu-attention ownership probe"),
                layout: &layout,
                entries: &[wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset: 0,
                        size: wgpu::BufferSize::new(4),
                    }),
                }],
            });
        } else if buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
            let mut enc = device.create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(buffer, 0, &self.inner.probe_dst, 0, 4);
            drop(enc.finish());
        } else {
            drop(scope);
            return false;
        }
        // Only wgpu's device-mismatch error says this; a destroyed buffer fails the probe too.
        pollster::block_on(scope.pop()).is_some_and(|e| chain(&e).contains("doesn't match"))
    }

    fn read_bytes_blocking(&self, view: &TensorView) -> Result<Vec<u8>> {
        pollster::block_on(self.read_bytes(view))
    }

    /// Waits until the device has finished all submitted work.
    pub fn wait(&self) -> Result<()> {
        let _held = self.hold();
        self.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::device("waiting for the GPU", e))?;
        Ok(())
    }

    /// Downloads any f32, f16 or bf16 view (any strides) as f32 values in logical BHSD order.
    pub async fn download_f32(&self, view: &TensorView) -> Result<Vec<f32>> {
        if !view.dtype.is_float() {
            return Err(Error::invalid(
                TensorRole::Download,
                InputProblem::WrongDType {
                    expected: "f32, f16 or bf16".into(),
                    got: view.dtype.to_string(),
                },
            ));
        }
        let bytes = self.read_bytes(view).await?;
        let base = (view.offset % 4) as usize;
        let es = view.dtype.size() as usize;
        let [b, h, s, d] = view.shape;
        let mut out = Vec::with_capacity(view.numel());
        for ib in 0..b {
            for ih in 0..h {
                for is in 0..s {
                    for id in 0..d {
                        let e = ib * view.strides[0]
                            + ih * view.strides[1]
                            + is * view.strides[2]
                            + id * view.strides[3];
                        let at = base + e * es;
                        out.push(match view.dtype {
                            DType::BF16 => {
                                half::bf16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
                            }
                            DType::F16 => {
                                half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
                            }
                            _ => f32::from_le_bytes([
                                bytes[at],
                                bytes[at + 1],
                                bytes[at + 2],
                                bytes[at + 3],
                            ]),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// [`Context::download_f32`], blocking.
    pub fn download_f32_blocking(&self, view: &TensorView) -> Result<Vec<f32>> {
        pollster::block_on(self.download_f32(view))
    }

    /// Downloads an f16 view as f16 values in logical BHSD order.
    pub async fn download_f16(&self, view: &TensorView) -> Result<Vec<half::f16>> {
        Ok(self
            .download_f32(view)
            .await?
            .into_iter()
            .map(half::f16::from_f32)
            .collect())
    }

    /// [`Context::download_f16`], blocking.
    pub fn download_f16_blocking(&self, view: &TensorView) -> Result<Vec<half::f16>> {
        pollster::block_on(self.download_f16(view))
    }

    /// Downloads a view as bf16 values in logical BHSD order.
    pub async fn download_bf16(&self, view: &TensorView) -> Result<Vec<half::bf16>> {
        Ok(self
            .download_f32(view)
            .await?
            .into_iter()
            .map(half::bf16::from_f32)
            .collect())
    }

    /// [`Context::download_bf16`], blocking.
    pub fn download_bf16_blocking(&self, view: &TensorView) -> Result<Vec<half::bf16>> {
        pollster::block_on(self.download_bf16(view))
    }
}

/// Every buffer an attention call reads or writes, with the tensor it holds.
fn call_buffers<'a>(
    q: &'a TensorView,
    k: &'a TensorView,
    v: &'a TensorView,
    out: Option<&'a TensorView>,
    opts: &'a AttentionOptions,
) -> Vec<(&'a wgpu::Buffer, TensorRole)> {
    let m = &opts.mask;
    let mut b = vec![
        (&q.buffer, TensorRole::Query),
        (&k.buffer, TensorRole::Key),
        (&v.buffer, TensorRole::Value),
    ];
    b.extend(out.map(|o| (&o.buffer, TensorRole::Output)));
    if let Some(bm) = &m.bool_mask {
        b.push((&bm.view.buffer, TensorRole::BoolMask));
        b.extend(
            bm.summary
                .as_ref()
                .map(|s| (s.buffer(), TensorRole::BoolMask)),
        );
    }
    b.extend(m.bias.as_ref().map(|x| (&x.buffer, TensorRole::Bias)));
    b.extend(
        opts.lse_output
            .as_ref()
            .map(|x| (&x.buffer, TensorRole::Lse)),
    );
    b
}
