//! [`Context`]: the facade. It opens or wraps a device and forwards each call to the
//! operations (`ops`) on its [`Runtime`], submitting and waiting where the call does. Every
//! call that waits is `async`; its `_blocking` form (feature `blocking`, native only) drives
//! the same future.

use std::sync::Arc;

use crate::data::backward::{BackwardInputs, GradientViews, Gradients};
use crate::data::block_mask::BlockMask;
use crate::data::options::AttentionOptions;
use crate::data::options::Tuning;
use crate::data::problem::Problem;
use crate::data::tensor::{DType, Tensor, TensorView};
use crate::error::{Error, InputProblem, Result, TensorRole};
use crate::gate;
use crate::gate::{DeviceGuard, Gate, Gated};
use crate::kernels::{self, summary};
use crate::ops;
use crate::ops::attention::call_buffers;
use crate::plan::backward::BackwardPlan;
use crate::plan::dispatch::{DeviceCaps, Plan};
use crate::plan::tuning::ShapeBucket;
use crate::plan::variant::ModuleKey;
use crate::runtime::open::{self, backends_from_env};
use crate::runtime::submit::Waiting;
use crate::runtime::{ResourceCounts, Runtime};

/// Everything the crate needs to run attention on one device. Cheap to clone, `Send + Sync`.
///
/// Create it from its own adapter with [`Context::new`] (honouring wgpu's `WGPU_BACKEND`,
/// `WGPU_ADAPTER_NAME` and `WGPU_POWER_PREF`), or from your own device with
/// [`Context::from_device`]. Every call that waits for the GPU is `async`; with the default
/// `blocking` feature each has a `_blocking` form for native code.
#[derive(Clone, Debug)]
pub struct Context {
    inner: Arc<Gated<Runtime>>,
}

/// What a flash kernel counted in a debug run ([`Context::debug_kernel_counts`]).
#[cfg(feature = "test-hooks")]
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

impl Context {
    // On the web wgpu's handles are neither `Send` nor `Sync`, so the `Arc` shares nothing
    // across threads there; it stays an `Arc` so that `Context` is one type on every target.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    fn wrap(rt: Runtime) -> Self {
        let gate = rt.gate().cloned();
        Context {
            inner: Arc::new(Gated::new(rt, gate)),
        }
    }

    pub(crate) fn rt(&self) -> &Runtime {
        &self.inner
    }

    // ------------------------------------------------------------------ opening

    /// Opens the adapter chosen by wgpu's environment variables (`WGPU_BACKEND`,
    /// `WGPU_ADAPTER_NAME`, `WGPU_POWER_PREF`) or the default one, and a device on it with
    /// the adapter's full limits and the optional features it has
    /// ([`OPTIONAL_FEATURES`](crate::OPTIONAL_FEATURES)).
    pub async fn new() -> Result<Self> {
        Self::with_backends(backends_from_env()).await
    }

    /// Like [`Context::new`] but only on `backends` (e.g. `wgpu::Backends::GL` to test
    /// the GL fallback). `WGPU_ADAPTER_NAME` and `WGPU_POWER_PREF` still apply.
    pub async fn with_backends(backends: wgpu::Backends) -> Result<Self> {
        Ok(Self::wrap(
            open::open(backends, false, None, wgpu::Features::empty()).await?,
        ))
    }

    /// Like [`Context::with_backends`], also requesting `features` where the adapter has
    /// them (for instance `TIMESTAMP_QUERY` for your own timing on [`Context::device`]).
    pub async fn with_features(backends: wgpu::Backends, features: wgpu::Features) -> Result<Self> {
        Ok(Self::wrap(
            open::open(backends, false, None, features).await?,
        ))
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
        Ok(Self::wrap(
            open::open(backends_from_env(), true, None, wgpu::Features::empty()).await?,
        ))
    }

    /// Wraps your own device and queue. `info` is your adapter's `get_info()`; the crate
    /// uses the features and limits the *device* was created with.
    ///
    /// On wgpu's GL backend the context serialises its use of the device (see
    /// [`Context::lock_device`]); a device shared with other code should then be used
    /// through one context, or under its guard.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, info: &wgpu::AdapterInfo) -> Self {
        let gate = Self::own_gate(&device, info);
        Self::wrap(Runtime::new(device, queue, info, None, gate, &[]))
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
        Self::wrap(Runtime::new(device, queue, &info, None, gate, &coop))
    }

    /// [`Context::from_adapter_device`] with the adapter described by `info` rather than
    /// by the adapter itself: the crate's tests use it to build the kernels for another
    /// subgroup range than the adapter's (a subgroup of twice the smallest size then owns
    /// two row blocks of the cooperative-matrix kernel).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn from_adapter_device_as(
        adapter: &wgpu::Adapter,
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: &wgpu::AdapterInfo,
    ) -> Self {
        let gate = Self::own_gate(&device, info);
        let coop = adapter.cooperative_matrix_properties();
        Self::wrap(Runtime::new(device, queue, info, None, gate, &coop))
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
        let checks = Some(wgpu::ShaderRuntimeChecks::unchecked());
        Self::wrap(Runtime::new(device, queue, info, checks, gate, &[]))
    }

    // ------------------------------------------------------------------ the device

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
        self.rt().hold()
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        self.rt().device()
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        self.rt().queue()
    }

    /// The adapter's description.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        self.rt().info()
    }

    /// What the dispatcher knows of this device.
    pub fn caps(&self) -> &DeviceCaps {
        self.rt().caps()
    }

    /// The device's limits.
    pub fn limits(&self) -> &wgpu::Limits {
        self.rt().limits()
    }

    /// The number of pipelines compiled so far.
    pub fn compiled_pipelines(&self) -> usize {
        self.rt().compiled_pipelines()
    }

    /// Each pipeline this context has built, in order, with the host time its creation took
    /// (its label names the kernel and variant). This is what cold calls pay: a driver that
    /// compiles on the CPU (lavapipe, llvmpipe under GL) takes from a fraction of a second
    /// to tens of seconds per pipeline. Empty on the web, which has no `Instant`.
    pub fn pipeline_compile_times(&self) -> Vec<(String, std::time::Duration)> {
        self.rt().compile_times()
    }

    /// How many buffers, bind groups and pipelines this context has created so far: a warm
    /// call ([`Context::record_attention`] with shapes, buffers and options seen before)
    /// adds none.
    pub fn created_resources(&self) -> ResourceCounts {
        self.rt().created()
    }

    /// Forgets the bind groups, scratch buffers and plans this context keeps for warm
    /// calls. The bind groups hold the buffers they bind (yours included): up to
    /// [`BIND_GROUPS_KEPT`](crate::BIND_GROUPS_KEPT) of them are kept, and this lets your
    /// buffers go at once.
    pub fn release_cached(&self) -> Result<()> {
        self.rt().release_cached()
    }

    // ------------------------------------------------------------------ driver pipeline cache

    /// The name to keep this device's driver pipeline cache under
    /// ([`wgpu::util::pipeline_cache_key`]: backend, vendor and device), or `None` where the
    /// device keeps none: that needs wgpu's `PIPELINE_CACHE` feature, which only Vulkan
    /// devices have and which the crate's own constructors request where the adapter offers
    /// it (a device you open yourself needs it among its features).
    ///
    /// What a cache saves is the driver's own compile, once the data of an earlier run is
    /// given back: on a GPU driver that keeps no cache of its own (Android's, for one) that
    /// is most of a cold call. Mesa's drivers, lavapipe included, keep their own cache on
    /// disk anyway, and lavapipe compiles a pipeline on its first dispatch, past the reach
    /// of this cache (BENCHMARKS.md has the measurement).
    pub fn pipeline_cache_key(&self) -> Option<String> {
        self.rt().pipeline_cache_key()
    }

    /// Builds every pipeline this context compiles from now on with a driver pipeline cache,
    /// seeded with `data` from an earlier [`Context::pipeline_cache_data`] (`None`: empty).
    /// Data that wgpu's header check refuses (another adapter, driver or wgpu version, a
    /// truncated copy) starts an empty cache instead; it is not an error. Pipelines this
    /// context compiled before are not in it, so call this first.
    ///
    /// # Safety
    ///
    /// wgpu's contract for [`wgpu::Device::create_pipeline_cache`]: `data` must be bytes
    /// [`Context::pipeline_cache_data`] returned on a device with the same
    /// [`Context::pipeline_cache_key`], unaltered. The driver trusts what its header check
    /// lets through, so other bytes are undefined behaviour.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] where [`Context::pipeline_cache_key`] is `None`;
    /// [`Error::Device`] if wgpu refuses to create the cache.
    ///
    /// ```no_run
    /// # fn main() -> wgpu_attention::Result<()> {
    /// let ctx = wgpu_attention::Context::new_blocking()?;
    /// if let Some(key) = ctx.pipeline_cache_key() {
    ///     let path = std::env::temp_dir().join(key);
    ///     let data = std::fs::read(&path).ok();
    ///     // SAFETY: the file holds only what `pipeline_cache_data` returned for this key.
    ///     unsafe { ctx.use_pipeline_cache(data.as_deref())? };
    ///     // ... attention calls, which compile their pipelines through the cache ...
    ///     if let Some(bytes) = ctx.pipeline_cache_data() {
    ///         let _ = std::fs::write(&path, bytes);
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub unsafe fn use_pipeline_cache(&self, data: Option<&[u8]>) -> Result<()> {
        // SAFETY: this method's contract, passed on.
        unsafe { self.rt().use_pipeline_cache(data) }
    }

    /// The driver pipeline cache's contents, to keep for the next run's
    /// [`Context::use_pipeline_cache`] (write them to a temporary file and rename it over
    /// the old one, so that a crash never leaves half a file). `None` before
    /// `use_pipeline_cache`, or where the driver gives no data.
    pub fn pipeline_cache_data(&self) -> Option<Vec<u8>> {
        self.rt().pipeline_cache_data()
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
        Ok(ops::attention::plan(self.rt(), [q, k, v], None, opts)?.1)
    }

    /// The dispatcher's decision for a problem described as plain data (with this
    /// context's tuned tiles, if any).
    pub fn plan_problem(&self, problem: &Problem, opts: &AttentionOptions) -> Result<Plan> {
        self.rt().plan(problem, opts)
    }

    /// Compiles every pipeline a call with these views and options needs, waiting for the
    /// driver's verdict, and returns its plan: the explicit warm-up for the calls you will
    /// record. The call is planned with the contiguous output [`Context::attention`] would
    /// allocate; an output of another layout that makes the call split over chunks of keys
    /// compiles the merge kernel when first recorded. Where a driver compiles late (the
    /// web), recording a prepared call then never compiles.
    pub async fn prepare(
        &self,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        opts: &AttentionOptions,
    ) -> Result<Plan> {
        let (_, plan, split) = ops::attention::plan(self.rt(), [q, k, v], None, opts)?;
        for (key, entry) in ops::attention::pipelines(&plan, split.as_ref(), opts) {
            self.await_pipeline(key, entry).await?;
        }
        Ok(plan)
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
    /// caught here on native backends; on the web, compile first with
    /// [`Context::prepare`], which waits for them. Errors wgpu reports when the encoder is
    /// finished or submitted are yours to catch (error scopes), as with any wgpu encoder.
    ///
    /// This never blocks and, once warm (the same shapes, buffers and options before),
    /// creates no buffer or bind group: the parameters go to a ring of slots, written
    /// with `Queue::write_buffer` and read when the encoder runs. So **at most
    /// [`RING_CALLS`](crate::RING_CALLS) calls may be recorded into encoders that are not yet submitted**
    /// (see [`Context::created_resources`] for the counts).
    pub fn record_attention(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        out: &TensorView,
        opts: &AttentionOptions,
    ) -> Result<Plan> {
        let rt = self.rt();
        // Errors wgpu raises while this call records (a buffer of another device among the
        // views) are this call's, not the caller's encoder's.
        rt.record_scoped(
            "recording attention",
            || call_buffers(q, k, v, Some(out), opts),
            || ops::attention::record(rt, encoder, q, k, v, out, opts, None),
        )
    }

    /// Runs attention into `out` and submits. Returns the plan that ran. wgpu validation
    /// and out-of-memory errors come back as [`Error::Device`]. `out` (and the log-sum-exp
    /// output) may share a buffer with the inputs at byte ranges that do not overlap them.
    pub async fn attention_into(
        &self,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        out: &TensorView,
        opts: &AttentionOptions,
    ) -> Result<Plan> {
        // The browser reports a pipeline's compile errors only asynchronously: wait for the
        // verdict on the pipelines this call needs (cached after the first call), so that a
        // shader the browser refuses is a device error naming it, not an invalid dispatch.
        #[cfg(target_arch = "wasm32")]
        self.prepare(q, k, v, opts).await?;
        let buffers = || call_buffers(q, k, v, Some(out), opts);
        self.rt()
            .submit_scoped("running attention", buffers, |rt, enc| {
                ops::attention::record(rt, enc, q, k, v, out, opts, None)
            })
            .await
    }

    /// Runs attention into a new output tensor (BHSD, dtype `opts.output_dtype` or Q's)
    /// and submits. Download it with [`Context::download_f32`].
    pub async fn attention(
        &self,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        opts: &AttentionOptions,
    ) -> Result<Tensor> {
        let out = self.output_for(q, k, v, opts)?;
        self.attention_into(q, k, v, out.view(), opts).await?;
        Ok(out)
    }

    // ------------------------------------------------------------------ backward

    /// Validates a backward call and says which backend would run it, and why, without
    /// running anything.
    pub fn plan_backward(
        &self,
        inputs: &BackwardInputs<'_>,
        grads: &GradientViews,
        opts: &AttentionOptions,
    ) -> Result<BackwardPlan> {
        Ok(ops::backward::plan(self.rt(), inputs, grads, opts)?.1)
    }

    /// Compiles every pipeline a backward call needs, waiting for the driver's verdict
    /// (the warm-up, and the way on the web), and returns its plan.
    pub async fn prepare_backward(
        &self,
        inputs: &BackwardInputs<'_>,
        grads: &GradientViews,
        opts: &AttentionOptions,
    ) -> Result<BackwardPlan> {
        let (_, plan) = ops::backward::plan(self.rt(), inputs, grads, opts)?;
        for (key, entry) in ops::backward::pipelines(&plan, opts, grads.dbias.is_some()) {
            self.await_pipeline(key, entry).await?;
        }
        Ok(plan)
    }

    /// Records the backward pass into your command encoder, writing the gradients. Nothing
    /// is submitted; the same rules as [`Context::record_attention`] hold (a backward call
    /// counts as one call of the ring's [`RING_CALLS`](crate::RING_CALLS), or one per chunk
    /// of rows on the naive backend).
    pub fn record_attention_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &BackwardInputs<'_>,
        grads: &GradientViews,
        opts: &AttentionOptions,
    ) -> Result<BackwardPlan> {
        let rt = self.rt();
        rt.record_scoped(
            "recording the attention backward pass",
            || ops::backward::call_buffers(inputs, grads, opts),
            || ops::backward::record(rt, encoder, inputs, grads, opts),
        )
    }

    /// Runs the backward pass of attention into `grads` and submits: from the forward's
    /// inputs, output and log-sum-exp and the output's gradient dO, the gradients dQ, dK,
    /// dV and, if `grads.dbias` is given, the additive bias's. `opts` are the forward
    /// call's (its `lse_output` is not read: the log-sum-exp is `inputs.lse`).
    ///
    /// Gradients may share a buffer with the inputs and each other at byte ranges that do
    /// not overlap. Every element of every gradient is written: rows and keys that no
    /// visible logit touches get zeros.
    ///
    /// ```
    /// # fn main() -> Result<(), wgpu_attention::Error> {
    /// use wgpu_attention::{AttentionOptions, BackwardInputs, Context};
    /// let ctx = Context::new_blocking()?;
    /// let x: Vec<f32> = (0..2 * 4 * 8).map(|i| (i as f32 * 0.37).sin()).collect();
    /// let q = ctx.upload_f32(&x, [1, 2, 4, 8])?;
    /// let k = ctx.upload_f32(&x, [1, 2, 4, 8])?;
    /// let v = ctx.upload_f32(&x, [1, 2, 4, 8])?;
    /// // The forward, keeping its log-sum-exp.
    /// let lse = ctx.empty([1, 2, 4, 1], wgpu_attention::DType::F32)?;
    /// let fwd = AttentionOptions::default().lse_output(lse.view().clone());
    /// let out = ctx.attention_blocking(q.view(), k.view(), v.view(), &fwd)?;
    /// // A loss whose gradient with respect to the output is all ones.
    /// let d_out = ctx.upload_f32(&[1.0; 2 * 4 * 8], [1, 2, 4, 8])?;
    /// let inputs = BackwardInputs {
    ///     q: q.view(), k: k.view(), v: v.view(),
    ///     out: out.view(), d_out: d_out.view(), lse: lse.view(),
    /// };
    /// let grads = ctx.attention_backward_blocking(&inputs, &AttentionOptions::default())?;
    /// let dq = ctx.download_f32_blocking(grads.dq.view())?;
    /// assert!(dq.iter().all(|x| x.is_finite()));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn attention_backward_into(
        &self,
        inputs: &BackwardInputs<'_>,
        grads: &GradientViews,
        opts: &AttentionOptions,
    ) -> Result<BackwardPlan> {
        #[cfg(target_arch = "wasm32")]
        self.prepare_backward(inputs, grads, opts).await?;
        self.rt()
            .submit_scoped(
                "running the attention backward pass",
                || ops::backward::call_buffers(inputs, grads, opts),
                |rt, enc| ops::backward::record(rt, enc, inputs, grads, opts),
            )
            .await
    }

    /// Runs the backward pass into new gradient tensors (each its input's shape and dtype,
    /// contiguous; packed like the inputs for variable-length batches) and submits. The
    /// bias gradient is computed whenever the mask has an additive bias, the sinks' (f32)
    /// whenever the call has sinks.
    pub async fn attention_backward(
        &self,
        inputs: &BackwardInputs<'_>,
        opts: &AttentionOptions,
    ) -> Result<Gradients> {
        let like = |v: &TensorView| -> Result<Tensor> {
            if opts.varlen.is_some() {
                let [_, h, total, d] = v.shape;
                let t = self.empty([1, 1, 1, total * h * d], v.dtype)?;
                let packed = TensorView::packed_varlen(t.buffer().clone(), v.dtype, total, h, d);
                Ok(self.rt().tensor(packed))
            } else {
                self.empty(v.shape, v.dtype)
            }
        };
        let grads = Gradients {
            dq: like(inputs.q)?,
            dk: like(inputs.k)?,
            dv: like(inputs.v)?,
            dbias: match &opts.mask.bias {
                Some(b) => Some(self.empty(b.shape, b.dtype)?),
                None => None,
            },
            dsink: match &opts.sinks {
                Some(s) => Some(self.empty([1, s.len(), 1, 1], DType::F32)?),
                None => None,
            },
        };
        self.attention_backward_into(inputs, &grads.views(), opts)
            .await?;
        Ok(grads)
    }

    /// The output tensor [`Context::attention`] allocates for a call.
    fn output_for(
        &self,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        opts: &AttentionOptions,
    ) -> Result<Tensor> {
        let p = crate::plan::validate::validate(q, k, v, None, opts)?;
        if opts.varlen.is_some() {
            // Packed like the inputs: [total_q, Hq, Dv] as a [1, Hq, total_q, Dv] view.
            let total = q.shape[2];
            let t = self.empty([1, 1, 1, total * p.heads_q * p.head_dim_v], p.dtype_o)?;
            Ok(self.rt().tensor(TensorView::packed_varlen(
                t.buffer().clone(),
                p.dtype_o,
                total,
                p.heads_q,
                p.head_dim_v,
            )))
        } else {
            self.empty([p.batch, p.heads_q, p.seq_q, p.head_dim_v], p.dtype_o)
        }
    }

    /// Combines partial results computed over **disjoint key sets** into the exact result,
    /// by their log-sum-exps (from [`AttentionOptions::lse_output`]), and submits.
    /// `out` and `lse_out` may share a buffer with the parts at disjoint byte ranges.
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
    ///     let opts = AttentionOptions::default().lse_output(lse.view().clone());
    ///     let o = ctx.attention_blocking(q.view(), kv, kv, &opts)?;
    ///     parts.push((o, lse));
    /// }
    /// let merged = ctx.empty([b, h, sq, d], DType::F32)?;
    /// let pairs: Vec<_> = parts.iter().map(|(o, l)| (o.view(), l.view())).collect();
    /// ctx.merge_blocking(&pairs, merged.view(), None)?;
    /// let full = ctx.attention_blocking(q.view(), &all, &all, &AttentionOptions::default())?;
    /// let (m, f) = (ctx.download_f32_blocking(merged.view())?, ctx.download_f32_blocking(full.view())?);
    /// assert!(m.iter().zip(&f).all(|(x, y)| (x - y).abs() < 1e-5));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn merge(
        &self,
        parts: &[(&TensorView, &TensorView)],
        out: &TensorView,
        lse_out: Option<&TensorView>,
    ) -> Result<()> {
        #[cfg(target_arch = "wasm32")]
        self.await_pipeline(ModuleKey::Merge, "main").await?;
        let buffers = || {
            let mut b: Vec<(&wgpu::Buffer, TensorRole)> = Vec::new();
            for (o, l) in parts {
                b.push((&o.buffer, TensorRole::Output));
                b.push((&l.buffer, TensorRole::Lse));
            }
            b.push((&out.buffer, TensorRole::Output));
            b.extend(lse_out.map(|l| (&l.buffer, TensorRole::Lse)));
            b
        };
        self.rt()
            .submit_scoped("merging partial results", buffers, |rt, enc| {
                ops::merge::record(rt, enc, parts, out, lse_out)
            })
            .await
    }

    /// Records [`Context::merge`] into your encoder (nothing is submitted).
    pub fn record_merge(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        parts: &[(&TensorView, &TensorView)],
        out: &TensorView,
        lse_out: Option<&TensorView>,
    ) -> Result<()> {
        let rt = self.rt();
        rt.record_scoped("recording a merge", Vec::new, || {
            ops::merge::record(rt, encoder, parts, out, lse_out)
        })
    }

    /// Computes the block summary of a boolean mask (and submits), for reuse across
    /// calls with [`crate::Mask::bool_mask_with_summary`].
    pub async fn block_mask(&self, mask: &TensorView) -> Result<BlockMask> {
        #[cfg(target_arch = "wasm32")]
        self.await_pipeline(ModuleKey::Summary, "main").await?;
        let buffers = || vec![(&mask.buffer, TensorRole::BoolMask)];
        self.rt()
            .submit_scoped("computing a block mask", buffers, |rt, enc| {
                summary::create(rt, enc, mask)
            })
            .await
    }

    /// Compiles a pipeline if it is new and waits for the driver's verdict (the browser
    /// gives it only asynchronously; see [`Context::attention_into`]).
    async fn await_pipeline(&self, key: ModuleKey, entry: &'static str) -> Result<()> {
        self.rt()
            .pipeline_async(key, entry, || kernels::spec(&key, entry))
            .await
            .map(drop)
    }

    /// Waits until the device has finished all submitted work.
    pub async fn wait(&self) -> Result<()> {
        self.rt().wait(Waiting::Yield).await
    }

    // ------------------------------------------------------------------ tuning

    /// Times the flash tile configurations that fit this adapter on these inputs (random
    /// data of the caller's shapes, outputs discarded), remembers the fastest for the
    /// problem's [`ShapeBucket`] for the life of this context, and reports what it measured.
    /// Later calls of that bucket (and [`Context::plan`]) use the tuned tiles unless the
    /// call sets [`AttentionOptions::tuning`] itself. Native only (it reads the wall clock).
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn tune(
        &self,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        opts: &AttentionOptions,
        iters: usize,
    ) -> Result<crate::plan::tuning::TuneReport> {
        ops::tune::tune(self.rt(), [q, k, v], opts, iters, Waiting::Yield).await
    }

    /// The tuned tiles for a problem's bucket, if any.
    pub fn tuned(&self, problem: &Problem) -> Option<Tuning> {
        self.rt().tuning().get(&ShapeBucket::of(problem))
    }

    /// The tuned table as text (one line per bucket), as [`Context::save_tuning`] writes it.
    pub fn tuning_text(&self) -> String {
        self.rt().tuning().to_text()
    }

    /// Reads a table in the form of [`Context::tuning_text`] into this context; returns
    /// how many buckets it held. A table from another adapter loads, but a tile that does
    /// not fit this adapter makes its calls fail with [`Error::Unsupported`]: tune per
    /// adapter.
    pub fn load_tuning_text(&self, text: &str) -> Result<usize> {
        self.rt().tuning().load_text(text)
    }

    /// Writes the tuned table to `path` (one line per bucket). Native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_tuning(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.tuning_text()).map_err(|e| bad_file(path, e.to_string()))
    }

    /// Reads a table written by [`Context::save_tuning`] into this context; returns how many
    /// buckets it held (see [`Context::load_tuning_text`]). Native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_tuning(&self, path: impl AsRef<std::path::Path>) -> Result<usize> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| bad_file(path, e.to_string()))?;
        self.load_tuning_text(&text).map_err(|e| match e {
            Error::InvalidInput(i) => bad_file(path, i.problem.to_string()),
            e => e,
        })
    }

    // ------------------------------------------------------------------ memory

    /// A storage buffer holding `data` (padded to whole words), for building your own views.
    pub fn buffer_from_f32(&self, data: &[f32]) -> wgpu::Buffer {
        self.rt()
            .buffer_init("wgpu-attention f32", bytemuck::cast_slice(data))
    }

    /// A storage buffer holding `data` as f16 (padded to whole words).
    pub fn buffer_from_f16(&self, data: &[half::f16]) -> wgpu::Buffer {
        self.rt()
            .buffer_init("wgpu-attention f16", bytemuck::cast_slice(data))
    }

    /// A storage buffer holding `data` as bf16 (padded to whole words).
    pub fn buffer_from_bf16(&self, data: &[half::bf16]) -> wgpu::Buffer {
        self.rt()
            .buffer_init("wgpu-attention bf16", bytemuck::cast_slice(data))
    }

    /// A storage buffer holding `data` as bytes, 1 = true (padded to whole words).
    pub fn buffer_from_bool(&self, data: &[bool]) -> wgpu::Buffer {
        let bytes: Vec<u8> = data.iter().map(|&b| b as u8).collect();
        self.rt().buffer_init("wgpu-attention bool", &bytes)
    }

    fn check_host_len(shape: [usize; 4], got: usize) -> Result<()> {
        let expected = crate::data::tensor::checked_product(&shape)
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

    fn upload(&self, buffer: wgpu::Buffer, dtype: DType, shape: [usize; 4]) -> Tensor {
        self.rt().tensor(TensorView::bhsd(buffer, dtype, shape))
    }

    /// Uploads a contiguous BHSD f32 tensor.
    pub fn upload_f32(&self, data: &[f32], shape: [usize; 4]) -> Result<Tensor> {
        Self::check_host_len(shape, data.len())?;
        Ok(self.upload(self.buffer_from_f32(data), DType::F32, shape))
    }

    /// Uploads a contiguous BHSD f16 tensor.
    pub fn upload_f16(&self, data: &[half::f16], shape: [usize; 4]) -> Result<Tensor> {
        Self::check_host_len(shape, data.len())?;
        Ok(self.upload(self.buffer_from_f16(data), DType::F16, shape))
    }

    /// Uploads a contiguous BHSD bf16 tensor.
    pub fn upload_bf16(&self, data: &[half::bf16], shape: [usize; 4]) -> Result<Tensor> {
        Self::check_host_len(shape, data.len())?;
        Ok(self.upload(self.buffer_from_bf16(data), DType::BF16, shape))
    }

    /// Uploads a contiguous bool mask of shape `[B|1, H|1, Sq, Sk]` (true = attend).
    pub fn upload_bool(&self, data: &[bool], shape: [usize; 4]) -> Result<Tensor> {
        Self::check_host_len(shape, data.len())?;
        Ok(self.upload(self.buffer_from_bool(data), DType::Bool, shape))
    }

    /// A new contiguous tensor (contents unspecified: zeros on most backends).
    pub fn empty(&self, shape: [usize; 4], dtype: DType) -> Result<Tensor> {
        self.rt().empty(shape, dtype)
    }

    /// Downloads any f32, f16 or bf16 view (any strides) as f32 values in logical BHSD order.
    pub async fn download_f32(&self, view: &TensorView) -> Result<Vec<f32>> {
        self.rt().download_f32(view, Waiting::Yield).await
    }

    /// Downloads an f16 view as f16 values in logical BHSD order.
    pub async fn download_f16(&self, view: &TensorView) -> Result<Vec<half::f16>> {
        let v = self.download_f32(view).await?;
        Ok(v.into_iter().map(half::f16::from_f32).collect())
    }

    /// Downloads a view as bf16 values in logical BHSD order.
    pub async fn download_bf16(&self, view: &TensorView) -> Result<Vec<half::bf16>> {
        let v = self.download_f32(view).await?;
        Ok(v.into_iter().map(half::bf16::from_f32).collect())
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn bad_file(path: &std::path::Path, what: String) -> Error {
    Error::invalid(
        TensorRole::Options,
        InputProblem::Other(format!("tuning file {}: {what}", path.display())),
    )
}

/// The blocking forms: each drives its `async` counterpart to completion on this thread,
/// letting wgpu's poll sleep until the GPU is done.
#[cfg(all(feature = "blocking", not(target_arch = "wasm32")))]
impl Context {
    /// [`Context::new`], blocking.
    pub fn new_blocking() -> Result<Self> {
        pollster::block_on(Self::new())
    }

    /// [`Context::with_backends`], blocking.
    pub fn with_backends_blocking(backends: wgpu::Backends) -> Result<Self> {
        pollster::block_on(Self::with_backends(backends))
    }

    /// [`Context::new_experimental`], blocking.
    ///
    /// # Safety
    ///
    /// As for [`Context::new_experimental`].
    pub unsafe fn new_experimental_blocking() -> Result<Self> {
        pollster::block_on(unsafe { Self::new_experimental() })
    }

    /// [`Context::prepare`], blocking.
    pub fn prepare_blocking(
        &self,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        opts: &AttentionOptions,
    ) -> Result<Plan> {
        pollster::block_on(self.prepare(q, k, v, opts))
    }

    /// [`Context::attention_into`], blocking (on the submission's error scopes only; it does
    /// not wait for the GPU).
    pub fn attention_into_blocking(
        &self,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        out: &TensorView,
        opts: &AttentionOptions,
    ) -> Result<Plan> {
        pollster::block_on(self.attention_into(q, k, v, out, opts))
    }

    /// [`Context::attention`], blocking (on the submission's error scopes only).
    pub fn attention_blocking(
        &self,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        opts: &AttentionOptions,
    ) -> Result<Tensor> {
        pollster::block_on(self.attention(q, k, v, opts))
    }

    /// [`Context::attention_backward_into`], blocking (on the submission's error scopes only).
    pub fn attention_backward_into_blocking(
        &self,
        inputs: &BackwardInputs<'_>,
        grads: &GradientViews,
        opts: &AttentionOptions,
    ) -> Result<BackwardPlan> {
        pollster::block_on(self.attention_backward_into(inputs, grads, opts))
    }

    /// [`Context::attention_backward`], blocking (on the submission's error scopes only).
    pub fn attention_backward_blocking(
        &self,
        inputs: &BackwardInputs<'_>,
        opts: &AttentionOptions,
    ) -> Result<Gradients> {
        pollster::block_on(self.attention_backward(inputs, opts))
    }

    /// [`Context::prepare_backward`], blocking.
    pub fn prepare_backward_blocking(
        &self,
        inputs: &BackwardInputs<'_>,
        grads: &GradientViews,
        opts: &AttentionOptions,
    ) -> Result<BackwardPlan> {
        pollster::block_on(self.prepare_backward(inputs, grads, opts))
    }

    /// [`Context::merge`], blocking (on the submission's error scopes only).
    pub fn merge_blocking(
        &self,
        parts: &[(&TensorView, &TensorView)],
        out: &TensorView,
        lse_out: Option<&TensorView>,
    ) -> Result<()> {
        pollster::block_on(self.merge(parts, out, lse_out))
    }

    /// [`Context::block_mask`], blocking (on the submission's error scopes only).
    pub fn block_mask_blocking(&self, mask: &TensorView) -> Result<BlockMask> {
        pollster::block_on(self.block_mask(mask))
    }

    /// [`Context::wait`], blocking.
    pub fn wait_blocking(&self) -> Result<()> {
        pollster::block_on(self.rt().wait(Waiting::Block))
    }

    /// [`Context::tune`], blocking.
    pub fn tune_blocking(
        &self,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        opts: &AttentionOptions,
        iters: usize,
    ) -> Result<crate::plan::tuning::TuneReport> {
        pollster::block_on(ops::tune::tune(
            self.rt(),
            [q, k, v],
            opts,
            iters,
            Waiting::Block,
        ))
    }

    /// [`Context::download_f32`], blocking.
    pub fn download_f32_blocking(&self, view: &TensorView) -> Result<Vec<f32>> {
        pollster::block_on(self.rt().download_f32(view, Waiting::Block))
    }

    /// [`Context::download_f16`], blocking.
    pub fn download_f16_blocking(&self, view: &TensorView) -> Result<Vec<half::f16>> {
        let v = self.download_f32_blocking(view)?;
        Ok(v.into_iter().map(half::f16::from_f32).collect())
    }

    /// [`Context::download_bf16`], blocking.
    pub fn download_bf16_blocking(&self, view: &TensorView) -> Result<Vec<half::bf16>> {
        let v = self.download_f32_blocking(view)?;
        Ok(v.into_iter().map(half::bf16::from_f32).collect())
    }
}

/// Test and debug hooks (feature `test-hooks`; not part of the public API).
#[cfg(all(feature = "test-hooks", not(target_arch = "wasm32")))]
impl Context {
    /// [`Context::new_blocking`] (or, with `experimental`, [`Context::new_experimental_blocking`])
    /// with the given runtime checks in every shader: for measuring what each check costs.
    ///
    /// # Safety
    ///
    /// As for [`Context::from_device_unchecked`] for each check turned off, and as for
    /// [`Context::new_experimental`] when `experimental` is set.
    pub unsafe fn new_with_checks_blocking(
        experimental: bool,
        checks: wgpu::ShaderRuntimeChecks,
    ) -> Result<Self> {
        unsafe { Self::open_blocking(experimental, Some(checks), wgpu::Features::empty()) }
    }

    /// Opens the default adapter as [`Context::new`] does, with cooperative matrices when
    /// `experimental`, these runtime checks (`None`: the crate's), and `features` where the
    /// adapter has them (the benchmarks' timestamp queries).
    ///
    /// # Safety
    ///
    /// As for [`Context::new_with_checks_blocking`].
    pub unsafe fn open_blocking(
        experimental: bool,
        checks: Option<wgpu::ShaderRuntimeChecks>,
        features: wgpu::Features,
    ) -> Result<Self> {
        let rt = pollster::block_on(open::open(
            backends_from_env(),
            experimental,
            checks,
            features,
        ))?;
        Ok(Self::wrap(rt))
    }

    /// Runs the flash backend with a tile counter and returns `(key tiles loaded, tiles
    /// that needed per-element bool-mask loads)`.
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

    /// Runs the call's flash kernel with counters on and returns what it counted.
    pub fn debug_kernel_counts(
        &self,
        q: &TensorView,
        k: &TensorView,
        v: &TensorView,
        out: &TensorView,
        opts: &AttentionOptions,
    ) -> Result<KernelCounts> {
        let rt = self.rt();
        let counter = {
            let _held = rt.hold();
            Gated::new(
                rt.new_buffer_init(
                    "wgpu-attention tile counter",
                    bytemuck::cast_slice(&[0u32; 4]),
                    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                ),
                rt.gate().cloned(),
            )
        };
        let buffers = || call_buffers(q, k, v, Some(out), opts);
        pollster::block_on(rt.submit_scoped("counting tiles", buffers, |rt, enc| {
            ops::attention::record(rt, enc, q, k, v, out, opts, Some(&*counter))
        }))?;
        let view = Gated::new(
            TensorView::new(
                (*counter).clone(),
                DType::F32,
                [1, 1, 1, 4],
                [4, 4, 4, 1],
                0,
            ),
            rt.gate().cloned(),
        );
        let words = pollster::block_on(rt.read_bytes(&view, Waiting::Block))?;
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
}
