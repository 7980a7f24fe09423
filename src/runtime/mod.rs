//! The runtime layer: one device handle ([`Runtime`]) that the kernels and operations take
//! instead of the whole [`crate::Context`]: the device and queue, what the dispatcher knows
//! of them, the pipeline cache, the ring and scratch that warm calls reuse, error scopes and
//! submission, and the GL gate.

pub(crate) mod arena;
pub(crate) mod device;
pub(crate) mod io;
pub(crate) mod open;
pub(crate) mod pipeline;
pub(crate) mod submit;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::data::options::{AttentionOptions, Subgroups, Tuning};
use crate::data::problem::Problem;
use crate::data::tensor::{Tensor, TensorView};
use crate::error::{Error, Result};
use crate::gate::{self, DeviceGuard, Gate};
use crate::plan::dispatch::{self, DeviceCaps, Plan};
use crate::plan::tuning::{ShapeBucket, TuningTable};
use crate::plan::variant::ModuleKey;
use arena::{Arena, BIND_GROUPS_KEPT, GroupKey, MAX_BINDINGS, Range};
use device::{Counts, Dev};
use pipeline::{Compiled, PipelineCache, PipelineSpec, Slot};

/// How many GPU resources a context has created ([`crate::Context::created_resources`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResourceCounts {
    /// Buffers: tensors, caches, and the ring and scratch buffers of calls.
    pub buffers: u64,
    /// Bind groups.
    pub bind_groups: u64,
    /// Compute pipelines created (each with its shader module and two layouts, counted in
    /// `other`).
    pub pipelines: u64,
    /// Everything else the context asked wgpu to create: shader modules, bind group and
    /// pipeline layouts, command encoders, driver pipeline caches. A warm recorded call creates none; a call that
    /// submits for you creates one command encoder.
    pub other: u64,
    /// Bytes of the scratch buffers kept for calls now (the parameter ring excluded): what
    /// a call needs beyond its tensors, at its largest so far.
    pub scratch_bytes: u64,
}

/// The plan inputs that decide a plan (the problem with its scale as bits, and the options
/// the dispatcher reads), for the plan cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    dims: [usize; 7],
    dtypes: [crate::data::tensor::DType; 4],
    scale: u32,
    mask: crate::data::problem::MaskKinds,
    varlen: bool,
    lse: bool,
    softcap: bool,
    sinks: bool,
    paged: bool,
    backend: crate::data::options::Backend,
    subgroups: Subgroups,
    tuning: Tuning,
}

impl PlanKey {
    fn new(p: &Problem, opts: &AttentionOptions) -> Self {
        PlanKey {
            dims: [
                p.batch,
                p.heads_q,
                p.heads_kv,
                p.seq_q,
                p.seq_k,
                p.head_dim_qk,
                p.head_dim_v,
            ],
            dtypes: [p.dtype_q, p.dtype_k, p.dtype_v, p.dtype_o],
            scale: p.scale.to_bits(),
            mask: p.mask.clone(),
            varlen: p.varlen,
            lse: p.lse,
            softcap: p.softcap,
            sinks: p.sinks,
            paged: p.paged,
            backend: opts.backend,
            subgroups: opts.subgroups,
            tuning: opts.tuning,
        }
    }
}

/// Plans kept before the cache starts over.
const PLANS_KEPT: usize = 256;

/// A device and everything the crate keeps for it.
#[derive(Debug)]
pub(crate) struct Runtime {
    /// Serialises device use on GL (`None` elsewhere); see [`crate::gate`].
    gate: Option<Arc<Gate>>,
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    caps: DeviceCaps,
    cache: PipelineCache,
    tuning: TuningTable,
    plans: Mutex<HashMap<PlanKey, Plan>>,
    dummy: wgpu::Buffer,
    dummy_rw: wgpu::Buffer,
    /// The destination of [`Runtime::is_foreign`]'s copies.
    probe_dst: wgpu::Buffer,
    arena: Mutex<Arena>,
    counts: Counts,
}

fn poisoned(what: &str) -> Error {
    Error::device_msg(what.to_string(), "a thread panicked while holding its lock")
}

impl Runtime {
    pub(crate) fn new(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: &wgpu::AdapterInfo,
        checks: Option<wgpu::ShaderRuntimeChecks>,
        gate: Option<Arc<Gate>>,
        coop: &[wgpu::CooperativeMatrixProperties],
    ) -> Self {
        let held = gate::hold(gate.as_ref());
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
        let counts = Counts::default();
        let dev = Dev {
            device: &device,
            counts: &counts,
        };
        let small = |label, usage| {
            dev.new_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        let dummy = small("wgpu-attention unused binding", wgpu::BufferUsages::STORAGE);
        let dummy_rw = small(
            "wgpu-attention unused output binding",
            wgpu::BufferUsages::STORAGE,
        );
        let probe_dst = small("wgpu-attention probe", wgpu::BufferUsages::COPY_DST);
        log::debug!(
            "wgpu-attention context on {} ({:?}): {caps:?}",
            info.name,
            info.backend
        );
        drop(held);
        // Native GL (llvmpipe under it) and Mesa's CPU drivers (lavapipe) compile a compute
        // pipeline on its first dispatch: run each new one once, so that the compile happens
        // where the pipeline is made (`prepare` compiles, and its time is the pipeline's).
        let warm_up = gate.is_some() || info.device_type == wgpu::DeviceType::Cpu;
        Runtime {
            cache: PipelineCache::new(
                checks,
                warm_up,
                info.backend == wgpu::Backend::BrowserWebGpu,
            ),
            gate,
            device,
            queue,
            info: info.clone(),
            limits,
            caps,
            tuning: TuningTable::default(),
            plans: Mutex::default(),
            dummy,
            dummy_rw,
            probe_dst,
            arena: Mutex::default(),
            counts,
        }
    }

    pub(crate) fn hold(&self) -> DeviceGuard<'_> {
        gate::hold(self.gate.as_ref())
    }

    pub(crate) fn gate(&self) -> Option<&Arc<Gate>> {
        self.gate.as_ref()
    }

    /// A tensor owning `view`'s buffer, dropped under this runtime's gate.
    pub(crate) fn tensor(&self, view: TensorView) -> Tensor {
        Tensor::gated(view, self.gate.clone())
    }

    pub(crate) fn device(&self) -> &wgpu::Device {
        &self.device
    }

    pub(crate) fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    pub(crate) fn info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    pub(crate) fn caps(&self) -> &DeviceCaps {
        &self.caps
    }

    pub(crate) fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    pub(crate) fn tuning(&self) -> &TuningTable {
        &self.tuning
    }

    pub(crate) fn dummy(&self) -> &wgpu::Buffer {
        &self.dummy
    }

    pub(crate) fn dummy_rw(&self) -> &wgpu::Buffer {
        &self.dummy_rw
    }

    pub(crate) fn probe_dst(&self) -> &wgpu::Buffer {
        &self.probe_dst
    }

    pub(crate) fn created(&self) -> ResourceCounts {
        ResourceCounts {
            buffers: Counts::get(&self.counts.buffers),
            bind_groups: Counts::get(&self.counts.bind_groups),
            pipelines: Counts::get(&self.counts.pipelines),
            other: Counts::get(&self.counts.layouts)
                + Counts::get(&self.counts.modules)
                + Counts::get(&self.counts.caches)
                + Counts::get(&self.counts.encoders),
            scratch_bytes: self
                .lock_arena()
                .map_or(0, |a| a.scratch.values().map(|b| b.size()).sum()),
        }
    }

    pub(crate) fn compiled_pipelines(&self) -> usize {
        self.cache.len()
    }

    pub(crate) fn compile_times(&self) -> Vec<(String, std::time::Duration)> {
        self.cache.compile_times()
    }

    /// See [`crate::Context::pipeline_cache_key`].
    pub(crate) fn pipeline_cache_key(&self) -> Option<String> {
        if !self
            .device
            .features()
            .contains(wgpu::Features::PIPELINE_CACHE)
        {
            return None;
        }
        wgpu::util::pipeline_cache_key(&self.info)
    }

    /// See [`crate::Context::use_pipeline_cache`].
    ///
    /// # Safety
    /// That method's contract.
    pub(crate) unsafe fn use_pipeline_cache(&self, data: Option<&[u8]>) -> Result<()> {
        if self.pipeline_cache_key().is_none() {
            return Err(crate::error::Unsupported {
                reason: crate::error::UnsupportedReason::Feature(format!(
                    "PIPELINE_CACHE (wgpu keeps a driver pipeline cache on Vulkan only; this \
                     device is on {:?}{})",
                    self.info.backend,
                    if self.info.backend == wgpu::Backend::Vulkan {
                        " without the feature"
                    } else {
                        ""
                    }
                )),
            }
            .into());
        }
        let _held = self.hold();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        // `fallback`: data that wgpu's header check refuses (another adapter or driver, a
        // truncated file) starts an empty cache instead of failing.
        // SAFETY: the caller's contract (the data came from `pipeline_cache_data`).
        let cache = unsafe {
            self.dev()
                .new_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                    label: Some("wgpu-attention pipelines"),
                    data,
                    fallback: true,
                })
        };
        if let Some(Some(e)) = pipeline::ready(scope.pop()) {
            return Err(Error::device_msg(
                "creating a pipeline cache",
                crate::error::chain(&e),
            ));
        }
        self.cache.set_driver_cache(cache)
    }

    /// See [`crate::Context::pipeline_cache_data`].
    pub(crate) fn pipeline_cache_data(&self) -> Option<Vec<u8>> {
        let _held = self.hold();
        self.cache.driver_cache_data()
    }

    // ------------------------------------------------------------------ resources

    /// The device, its creations counted (the only way the crate creates anything).
    pub(crate) fn dev(&self) -> Dev<'_> {
        Dev {
            device: &self.device,
            counts: &self.counts,
        }
    }

    /// Creates a buffer, counted.
    pub(crate) fn new_buffer(&self, desc: &wgpu::BufferDescriptor<'_>) -> wgpu::Buffer {
        self.dev().new_buffer(desc)
    }

    /// Creates a buffer holding `contents`, counted.
    pub(crate) fn new_buffer_init(
        &self,
        label: &str,
        contents: &[u8],
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        self.dev()
            .new_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage,
            })
    }

    fn lock_arena(&self) -> Result<std::sync::MutexGuard<'_, Arena>> {
        self.arena.lock().map_err(|_| poisoned("the ring"))
    }

    /// The pipeline of `key`'s `entry`, built on first use from the kernel's spec.
    pub(crate) fn pipeline(
        &self,
        key: ModuleKey,
        entry: &'static str,
        spec: impl FnOnce() -> PipelineSpec,
    ) -> Result<Arc<Compiled>> {
        let _held = self.hold();
        self.cache.get(self.dev(), &self.queue, key, entry, spec)
    }

    /// [`Runtime::pipeline`], waiting for wgpu's verdict on a new pipeline.
    pub(crate) async fn pipeline_async(
        &self,
        key: ModuleKey,
        entry: &'static str,
        spec: impl FnOnce() -> PipelineSpec,
    ) -> Result<Arc<Compiled>> {
        // The device work happens under the gate; only the scope's pop is awaited.
        #[cfg(not(target_arch = "wasm32"))]
        let since = std::time::Instant::now();
        let started = {
            let _held = self.hold();
            self.cache.start(self.dev(), key, entry, spec)?
        };
        match started {
            pipeline::Started::Cached(c) => Ok(c),
            pipeline::Started::Built {
                compiled,
                spec,
                scope,
            } => {
                let error = scope.await;
                let _held = self.hold();
                let done = self
                    .cache
                    .finish(self.dev(), &self.queue, &spec, compiled, error);
                #[cfg(not(target_arch = "wasm32"))]
                self.cache.note_time(&spec.label, since);
                done
            }
        }
    }

    /// Writes `bytes` into the next slot of the ring; returns the ring and the slot's
    /// offset (see [`arena`] for the ring's contract). Within one recorded call (see
    /// [`arena::CallScope`]) the ring never laps: a call that would write more than half of
    /// it moves on to a fresh ring.
    pub(crate) fn ring_write(&self, bytes: &[u8]) -> Result<(wgpu::Buffer, u32)> {
        let align = (self.limits.min_uniform_buffer_offset_alignment as u64)
            .max(self.limits.min_storage_buffer_offset_alignment as u64)
            .max(16);
        let need = (bytes.len() as u64).max(16).next_multiple_of(align);
        let mut a = self.lock_arena()?;
        let in_call = arena::CallScope::add(need);
        if !a.fits(need, self.caps.max_buffer_size) || in_call > a.ring_size / 2 {
            let size = Arena::ring_size_for(need)
                .max(a.ring_size)
                .min(self.caps.max_buffer_size);
            if need > size {
                return Err(Error::limit("max_buffer_size", need, size));
            }
            let ring = self.new_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-attention ring"),
                size,
                usage: wgpu::BufferUsages::UNIFORM
                    | wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            // Bind groups of the old ring are never asked for again.
            a.groups.clear();
            a.ring = Some(ring);
            a.ring_size = size;
            a.head = 0;
            arena::CallScope::restart(need);
        }
        if a.head + need > a.ring_size {
            a.head = 0;
        }
        let offset = a.head;
        a.head += need;
        let ring = a.ring.clone().ok_or_else(|| poisoned("the ring"))?;
        drop(a);
        if bytes.len().is_multiple_of(4) {
            self.queue.write_buffer(&ring, offset, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4), 0);
            self.queue.write_buffer(&ring, offset, &padded);
        }
        Ok((ring, offset as u32))
    }

    /// A scratch buffer of at least `bytes` for `purpose` (GPU-written and read within one
    /// call), reused across calls.
    pub(crate) fn scratch(&self, purpose: &'static str, bytes: u64) -> Result<wgpu::Buffer> {
        let bytes = bytes.max(16).next_multiple_of(4);
        let mut a = self.lock_arena()?;
        if let Some(b) = a.scratch.get(purpose)
            && b.size() >= bytes
        {
            return Ok(b.clone());
        }
        let max = self.caps.max_buffer_size;
        if bytes > max {
            return Err(Error::limit("max_buffer_size", bytes, max));
        }
        let size = bytes.next_power_of_two().min(max).max(bytes);
        // Bind groups of the buffer this one replaces would keep it alive.
        if let Some(old) = a.scratch.get(purpose).cloned() {
            a.groups
                .retain(|k, _| !k.entries.iter().flatten().any(|(b, ..)| *b == old));
        }
        let b = self.new_buffer(&wgpu::BufferDescriptor {
            label: Some(purpose),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        a.scratch.insert(purpose, b.clone());
        Ok(b)
    }

    /// The bind group of `compiled` over `entries` (`(binding, buffer, offset, size)`; the
    /// dynamic ones at offset 0), made once and kept.
    pub(crate) fn bind_group(
        &self,
        compiled: &Compiled,
        entries: [Option<Range>; MAX_BINDINGS],
    ) -> Result<wgpu::BindGroup> {
        let key = GroupKey {
            pipeline: compiled.key,
            entries,
        };
        let mut a = self.lock_arena()?;
        if let Some(g) = a.groups.get(&key) {
            return Ok(g.clone());
        }
        let mut list = Vec::with_capacity(compiled.bindings.len());
        for b in compiled.bindings {
            let Some((buffer, offset, size)) = &key.entries[b.number as usize] else {
                return Err(Error::device_msg(
                    "binding a kernel",
                    format!(
                        "internal: no resource for binding {} ({})",
                        b.number, b.name
                    ),
                ));
            };
            let dynamic = matches!(b.slot, Slot::Params | Slot::Aux);
            list.push(wgpu::BindGroupEntry {
                binding: b.number,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset: if dynamic { 0 } else { *offset },
                    size: wgpu::BufferSize::new(*size),
                }),
            });
        }
        let create = || {
            self.dev().new_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("wgpu-attention bind group"),
                layout: &compiled.layout,
                entries: &list,
            })
        };
        // A group wgpu refuses (a buffer of another device, a destroyed one) is not kept:
        // it is made again outside this scope, so that the caller's scope sees the error.
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let group = create();
        if let Some(Some(_)) = pipeline::ready(scope.pop()) {
            return Ok(create());
        }
        if a.groups.len() >= BIND_GROUPS_KEPT {
            a.groups.clear();
        }
        a.groups.insert(key, group.clone());
        Ok(group)
    }

    /// Drops the cached bind groups and scratch (and with them the caller's buffers they
    /// bind); the ring and the pipelines stay.
    pub(crate) fn release_cached(&self) -> Result<()> {
        let _held = self.hold();
        let mut a = self.lock_arena()?;
        a.groups.clear();
        a.scratch.clear();
        self.plans
            .lock()
            .map_err(|_| poisoned("the plan cache"))?
            .clear();
        Ok(())
    }

    // ------------------------------------------------------------------ planning

    /// The plan for `p` with this runtime's tuned tiles (unless the call sets its own),
    /// cached: a warm call clones it (its reason is shared, not rebuilt).
    pub(crate) fn plan(&self, p: &Problem, opts: &AttentionOptions) -> Result<Plan> {
        let tuned = (opts.tuning.simt() == Tuning::default())
            .then(|| self.tuning.get(&ShapeBucket::of(p)))
            .flatten();
        let mut key = PlanKey::new(p, opts);
        if let Some(t) = tuned {
            key.tuning = Tuning {
                coop_rescale_slack: opts.tuning.coop_rescale_slack,
                ..t
            };
        }
        if let Some(plan) = self
            .plans
            .lock()
            .map_err(|_| poisoned("the plan cache"))?
            .get(&key)
        {
            return Ok(plan.clone());
        }
        let plan = match tuned {
            Some(t) => {
                let tuned_opts = AttentionOptions {
                    tuning: Tuning {
                        coop_rescale_slack: opts.tuning.coop_rescale_slack,
                        ..t
                    },
                    ..opts.clone()
                };
                let mut plan = dispatch::plan(p, &self.caps, &tuned_opts)?;
                if plan.backend == crate::data::options::Backend::Flash {
                    plan.reason = format!(
                        "{} Tiles tuned on this adapter: {} keys, {} rows per thread.",
                        plan.reason,
                        plan.variant.block_k(),
                        plan.variant.rows_per_thread()
                    )
                    .into();
                }
                plan
            }
            None => dispatch::plan(p, &self.caps, opts)?,
        };
        let mut plans = self.plans.lock().map_err(|_| poisoned("the plan cache"))?;
        if plans.len() >= PLANS_KEPT {
            plans.clear();
        }
        plans.insert(key, plan.clone());
        Ok(plan)
    }
}
