//! The pipeline cache: pipelines built from the specs the kernels give it, keyed by module
//! and entry point, compiled once. Compilation errors come back from wgpu's error scope,
//! awaited where the caller can wait ([`crate::Context::prepare`]) and read at once where
//! it cannot (native wgpu reports them at once; see [`ready`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result, chain};
use crate::plan::variant::ModuleKey;
use crate::runtime::device::Dev;

/// How a binding is declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The parameter block: a uniform at a dynamic offset into the runtime's ring.
    Params,
    /// Read-only storage at a dynamic offset (the aux words: a ring slot, or scratch).
    Aux,
    /// Read-only storage.
    Read,
    /// Read-write storage.
    Write,
}

impl Slot {
    /// Whether the shader may write it.
    pub(crate) fn writes(self) -> bool {
        self == Slot::Write
    }

    fn dynamic(self) -> bool {
        matches!(self, Slot::Params | Slot::Aux)
    }
}

/// One binding of an entry point.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Binding {
    /// `@binding(number)`.
    pub number: u32,
    /// The WGSL global's name.
    pub name: &'static str,
    /// How it is declared.
    pub slot: Slot,
}

/// What a kernel hands the runtime to build a pipeline.
pub(crate) struct PipelineSpec {
    pub label: String,
    pub source: String,
    pub entry: &'static str,
    /// The module calls subgroup builtins.
    pub subgroups: bool,
    pub bindings: &'static [Binding],
    /// A parameter block for a one-element problem (the warm-up run, native GL only).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub warm_params: Vec<u8>,
}

/// A compiled pipeline with its bind group layout.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub bindings: &'static [Binding],
    /// The cache key, which also keys the bind groups made for this pipeline.
    pub key: (ModuleKey, &'static str),
}

/// A pipeline [`PipelineCache::start`] found or built.
// (A `Built` lives only until its pipeline is kept, once per new pipeline: boxing it would
// buy nothing.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum Started {
    Cached(Arc<Compiled>),
    Built {
        compiled: Compiled,
        spec: PipelineSpec,
        scope: ScopeFuture,
    },
}

/// An error scope's pop, boxed (`Send` where wgpu's is: not on the web).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) type ScopeFuture = std::pin::Pin<Box<dyn Future<Output = Option<wgpu::Error>> + Send>>;
#[cfg(target_arch = "wasm32")]
pub(crate) type ScopeFuture = std::pin::Pin<Box<dyn Future<Output = Option<wgpu::Error>>>>;

/// Compiled pipelines, keyed by module and entry point.
#[derive(Debug, Default)]
pub(crate) struct PipelineCache {
    map: Mutex<HashMap<(ModuleKey, &'static str), Arc<Compiled>>>,
    /// Each pipeline built so far with the host time its creation (and warm-up) took: what
    /// a cold call pays, per variant (native only: the web's clock is not `Instant`).
    times: Mutex<Vec<(String, std::time::Duration)>>,
    /// The driver's pipeline cache every new pipeline is built with, once the caller gave
    /// one ([`crate::Context::use_pipeline_cache`]).
    driver: Mutex<Option<wgpu::PipelineCache>>,
    /// The runtime checks wgpu injects into the shaders (`None`: all of them).
    checks: Option<wgpu::ShaderRuntimeChecks>,
    /// Run each new pipeline once, so that a driver that compiles a pipeline on its first
    /// dispatch (llvmpipe under GL, lavapipe) compiles here rather than inside a caller's
    /// submit.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    warm_up: bool,
    /// The shaders go to a browser's WebGPU, whose WGSL compiler wants an `enable
    /// subgroups;` directive before subgroup builtins (naga, on every other backend, does
    /// not know the directive and refuses it).
    browser: bool,
}

/// A module's WGSL as the device's compiler takes it: a browser's wants `enable subgroups;`
/// before a module that calls subgroup builtins (naga refuses the directive).
fn dialect(source: &str, enable_subgroups: bool) -> std::borrow::Cow<'_, str> {
    if enable_subgroups {
        format!("enable subgroups;\n{source}").into()
    } else {
        source.into()
    }
}

/// The output of a future that is already complete, without waiting: wgpu's native
/// backends resolve error-scope pops at once. `None` when it is not (on the web), where
/// code that must not block cannot learn the answer now.
pub(crate) fn ready<F: Future>(f: F) -> Option<F::Output> {
    use futures::FutureExt;
    f.now_or_never()
}

fn poisoned() -> Error {
    Error::device_msg(
        "pipeline cache",
        "a thread panicked while holding the cache lock",
    )
}

impl PipelineCache {
    pub(crate) fn new(
        checks: Option<wgpu::ShaderRuntimeChecks>,
        warm_up: bool,
        browser: bool,
    ) -> Self {
        PipelineCache {
            map: Mutex::default(),
            times: Mutex::default(),
            driver: Mutex::default(),
            checks,
            warm_up,
            browser,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// The pipelines built so far, each with the host time its creation took.
    pub(crate) fn compile_times(&self) -> Vec<(String, std::time::Duration)> {
        self.times.lock().map(|t| t.clone()).unwrap_or_default()
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn note_time(&self, label: &str, since: std::time::Instant) {
        let took = since.elapsed();
        log::debug!("compiled pipeline {label} in {:.3} s", took.as_secs_f64());
        if let Ok(mut t) = self.times.lock() {
            t.push((label.to_string(), took));
        }
    }

    /// Builds every pipeline from now on with `cache`.
    pub(crate) fn set_driver_cache(&self, cache: wgpu::PipelineCache) -> Result<()> {
        *self.driver.lock().map_err(|_| poisoned())? = Some(cache);
        Ok(())
    }

    /// The driver cache's contents (`None` without one, or where the driver gives none).
    pub(crate) fn driver_cache_data(&self) -> Option<Vec<u8>> {
        self.driver.lock().ok()?.as_ref()?.get_data()
    }

    fn cached(&self, key: &(ModuleKey, &'static str)) -> Result<Option<Arc<Compiled>>> {
        Ok(self.map.lock().map_err(|_| poisoned())?.get(key).cloned())
    }

    fn insert(&self, key: (ModuleKey, &'static str), c: Compiled) -> Result<Arc<Compiled>> {
        let mut map = self.map.lock().map_err(|_| poisoned())?;
        Ok(map.entry(key).or_insert_with(|| Arc::new(c)).clone())
    }

    /// The pipeline for `(key, entry)`, built from `spec()` on first use. Does not block: a
    /// compilation error that wgpu cannot report at once (on the web) goes to the device's
    /// uncaptured-error handler; [`PipelineCache::start`] lets a caller wait for it instead.
    pub(crate) fn get(
        &self,
        dev: Dev<'_>,
        queue: &wgpu::Queue,
        key: ModuleKey,
        entry: &'static str,
        spec: impl FnOnce() -> PipelineSpec,
    ) -> Result<Arc<Compiled>> {
        if let Some(c) = self.cached(&(key, entry))? {
            return Ok(c);
        }
        let spec = spec();
        #[cfg(not(target_arch = "wasm32"))]
        let since = std::time::Instant::now();
        let (compiled, scope) = self.build(dev, key, &spec);
        let error = ready(scope).flatten();
        let done = self.finish(dev, queue, &spec, compiled, error);
        #[cfg(not(target_arch = "wasm32"))]
        self.note_time(&spec.label, since);
        done
    }

    /// The first half of [`PipelineCache::get`] for callers that wait for wgpu's verdict:
    /// the cached pipeline, or a new one with its error scope's pop to await (the device
    /// work done here, where the caller holds the device; see [`crate::gate`]).
    pub(crate) fn start(
        &self,
        dev: Dev<'_>,
        key: ModuleKey,
        entry: &'static str,
        spec: impl FnOnce() -> PipelineSpec,
    ) -> Result<Started> {
        if let Some(c) = self.cached(&(key, entry))? {
            return Ok(Started::Cached(c));
        }
        let spec = spec();
        let (compiled, scope) = self.build(dev, key, &spec);
        Ok(Started::Built {
            compiled,
            spec,
            scope: Box::pin(scope),
        })
    }

    /// Keeps a new pipeline that wgpu raised no `error` for (after its warm-up run).
    pub(crate) fn finish(
        &self,
        dev: Dev<'_>,
        queue: &wgpu::Queue,
        spec: &PipelineSpec,
        compiled: Compiled,
        error: Option<wgpu::Error>,
    ) -> Result<Arc<Compiled>> {
        if let Some(e) = error {
            return Err(Error::device_msg(
                format!("compiling {}", spec.label),
                chain(&e),
            ));
        }
        self.warm(dev, queue, spec, &compiled)?;
        self.insert(compiled.key, compiled)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn warm(
        &self,
        dev: Dev<'_>,
        queue: &wgpu::Queue,
        spec: &PipelineSpec,
        compiled: &Compiled,
    ) -> Result<()> {
        if self.warm_up {
            warm_up(dev, queue, spec, compiled)?;
        }
        Ok(())
    }

    #[cfg(target_arch = "wasm32")]
    fn warm(&self, _: Dev<'_>, _: &wgpu::Queue, _: &PipelineSpec, _: &Compiled) -> Result<()> {
        Ok(())
    }

    /// Creates the module, layout and pipeline under an error scope; returns the scope's pop.
    fn build(
        &self,
        dev: Dev<'_>,
        key: ModuleKey,
        spec: &PipelineSpec,
    ) -> (Compiled, impl Future<Output = Option<wgpu::Error>> + use<>) {
        let label = &spec.label;
        log::debug!("compiling pipeline {label}");
        let driver = self.driver.lock().ok().and_then(|d| d.clone());
        let scope = dev.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let source = dialect(&spec.source, self.browser && spec.subgroups);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(source),
        };
        // SAFETY: these are the crate's own shaders. wgpu's bounds checks stay on unless the
        // caller of `Context::from_device_unchecked` / `from_device_with_checks` turned them off
        // (their contract). The checks turned off by default are the two whose contracts the
        // shaders meet by construction, given validated inputs:
        // - loop bounding: every loop runs over constant bounds or up to a sequence length or
        //   head dim with a positive step, and validation keeps lengths below 2^30
        //   (`validate::MAX_SEQ`), so no loop counter can wrap;
        // - integer-division checks: every divisor is a constant, or a batch, head, sequence,
        //   head-dim, group or split count that validation requires to be at least 1, and no
        //   division is signed.
        // (What the two checks cost flash on cooperative matrices is measured in BENCHMARKS.md.)
        let checks = self.checks.unwrap_or(wgpu::ShaderRuntimeChecks {
            force_loop_bounding: false,
            int_div_checks: false,
            ..wgpu::ShaderRuntimeChecks::checked()
        });
        let module = unsafe { dev.new_shader_module_trusted(desc, checks) };
        let entries: Vec<wgpu::BindGroupLayoutEntry> = spec
            .bindings
            .iter()
            .map(|b| wgpu::BindGroupLayoutEntry {
                binding: b.number,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b.slot {
                        Slot::Params => wgpu::BufferBindingType::Uniform,
                        s => wgpu::BufferBindingType::Storage {
                            read_only: !s.writes(),
                        },
                    },
                    has_dynamic_offset: b.slot.dynamic(),
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let layout = dev.new_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(label),
            entries: &entries,
        });
        let pl = dev.new_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = dev.new_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: Some(&pl),
            module: &module,
            entry_point: Some(spec.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[],
                zero_initialize_workgroup_memory: false,
            },
            cache: driver.as_ref(),
        });
        let compiled = Compiled {
            pipeline,
            layout,
            bindings: spec.bindings,
            key: (key, spec.entry),
        };
        (compiled, scope.pop())
    }
}

/// Runs `compiled` once on one workgroup of a one-element problem (every size 1, no mask,
/// scratch bindings of its own), so that a driver that compiles a pipeline on its first
/// dispatch does so now. llvmpipe under GL does: a flash variant takes tens of seconds
/// there, and inside a caller's submit that would hold wgpu's GL context lock long enough
/// for another thread waiting on it to panic (see [`crate::gate`]). lavapipe does too, and
/// there the warm-up makes [`crate::Context::prepare`] compile what it names. Native GL and
/// CPU adapters only.
#[cfg(not(target_arch = "wasm32"))]
fn warm_up(
    dev: Dev<'_>,
    queue: &wgpu::Queue,
    spec: &PipelineSpec,
    compiled: &Compiled,
) -> Result<()> {
    let what = || format!("warming up {}", spec.label);
    let scope = dev.device.push_error_scope(wgpu::ErrorFilter::Validation);
    // One small zeroed buffer per binding (the parameter block in a buffer of its own): the
    // bindings never alias.
    let params = dev.new_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("wgpu-attention warm-up params"),
        contents: &spec.warm_params,
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let buffers: Vec<wgpu::Buffer> = spec
        .bindings
        .iter()
        .map(|_| {
            dev.new_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-attention warm-up binding"),
                size: 64,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        })
        .collect();
    let entries: Vec<wgpu::BindGroupEntry> = spec
        .bindings
        .iter()
        .zip(&buffers)
        .map(|(b, buffer)| wgpu::BindGroupEntry {
            binding: b.number,
            resource: match b.slot {
                Slot::Params => params.as_entire_binding(),
                _ => buffer.as_entire_binding(),
            },
        })
        .collect();
    let bind_group = dev.new_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("wgpu-attention warm-up"),
        layout: &compiled.layout,
        entries: &entries,
    });
    let offsets: Vec<u32> = spec
        .bindings
        .iter()
        .filter(|b| b.slot.dynamic())
        .map(|_| 0)
        .collect();
    let mut encoder = dev.new_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&compiled.pipeline);
        pass.set_bind_group(0, &bind_group, &offsets);
        pass.dispatch_workgroups(1, 1, 1);
    }
    queue.submit([encoder.finish()]);
    let polled = dev.device.poll(wgpu::PollType::wait_indefinitely());
    if let Some(Some(e)) = ready(scope.pop()) {
        return Err(Error::device_msg(what(), chain(&e)));
    }
    polled.map_err(|e| Error::device(what(), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::dialect;

    #[test]
    fn browsers_get_the_subgroups_directive_first() {
        let src = "fn f() {}";
        assert_eq!(dialect(src, false), src);
        let web = dialect(src, true);
        assert!(web.starts_with("enable subgroups;\n"), "{web}");
        assert!(web.ends_with(src));
    }
}
