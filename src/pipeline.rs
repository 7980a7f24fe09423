//! Shader assembly and the pipeline cache.
//!
//! A shader's source is: typed `const` lines generated from its [`ShaderVariant`], the
//! shared prelude `shaders/common.wgsl` (bindings, loads, mask algebra), a small
//! reduction snippet (plain or subgroup), and the family's own file. The variant's
//! `Hash` (with the entry point) is the cache key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::dispatch::{Family, SUMMARY_BLOCK_K, SUMMARY_BLOCK_Q, ShaderVariant};
use crate::error::{Error, Result};

/// Shader files, embedded at build time.
pub mod sources {
    /// Storage dtype helpers (f32, f16, bf16 through 32-bit words).
    pub const DTYPE: &str = include_str!("../shaders/dtype.wgsl");
    /// Merging partial results by their log-sum-exp.
    pub const MERGE: &str = include_str!("../shaders/merge.wgsl");
    /// Bindings, parameter block, loads/stores and the mask algebra.
    pub const COMMON: &str = include_str!("../shaders/common.wgsl");
    /// The flash family.
    pub const FLASH: &str = include_str!("../shaders/flash.wgsl");
    /// K/V tiles shared by the SIMT flash kernels.
    pub const FLASH_TILES: &str = include_str!("../shaders/flash_tiles.wgsl");
    /// The flash family on cooperative matrices.
    pub const FLASH_COOP: &str = include_str!("../shaders/flash_coop.wgsl");
    /// The masked online softmax, shared by the flash families and memory-efficient.
    pub const ONLINE_SOFTMAX: &str = include_str!("../shaders/online_softmax.wgsl");
    /// The memory-efficient family.
    pub const MEMEFF: &str = include_str!("../shaders/memeff.wgsl");
    /// The naive family.
    pub const NAIVE: &str = include_str!("../shaders/naive.wgsl");
    /// Block summaries of bool masks.
    pub const BLOCK_SUMMARY: &str = include_str!("../shaders/block_summary.wgsl");
    /// Row reduction for one thread per row.
    pub const REDUCE_PLAIN: &str = include_str!("../shaders/reduce_plain.wgsl");
    /// Row reduction across a subgroup.
    pub const REDUCE_SUBGROUP: &str = include_str!("../shaders/reduce_subgroup.wgsl");
    /// Tile counting off.
    pub const COUNT_OFF: &str = include_str!("../shaders/count_off.wgsl");
    /// Tile counting on (tests).
    pub const COUNT_ON: &str = include_str!("../shaders/count_on.wgsl");
}

/// Which module a pipeline is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ModuleKey {
    Attention(ShaderVariant),
    Summary,
    Merge,
}

/// The typed `const` lines of a variant (and, on cooperative matrices, the aliases of its
/// fragment types).
fn const_lines(v: &ShaderVariant) -> String {
    let wg = v.workgroup_size();
    let fr = v.fragment.max(1);
    let aliases = if v.family == Family::FlashCoop {
        format!(
            "alias CA = coop_mat{fr}x{fr}<f16, A>;\nalias CB = coop_mat{fr}x{fr}<f16, B>;\nalias CC = coop_mat{fr}x{fr}<f32, C>;\n"
        )
    } else {
        String::new()
    };
    format!(
        "{aliases}const FR: u32 = {fr}u;\nconst SGS: u32 = {}u;\n\
         const DKB: u32 = {}u;\nconst DVB: u32 = {}u;\nconst BR: u32 = {}u;\nconst BC: u32 = {}u;\n\
         const TPR: u32 = {}u;\nconst RPT: u32 = {}u;\nconst WG: u32 = {}u;\nconst SUM_BQ: u32 = {}u;\nconst SUM_BK: u32 = {}u;\n",
        v.subgroup_size.max(1),
        v.head_dim_qk.max(1),
        v.head_dim_v.max(1),
        v.block_q,
        v.block_k,
        v.threads_per_row,
        v.rows_per_thread.max(1),
        wg,
        SUMMARY_BLOCK_Q,
        SUMMARY_BLOCK_K
    )
}

/// The full WGSL source of a module.
pub(crate) fn module_source(key: &ModuleKey) -> String {
    match key {
        ModuleKey::Attention(v) => {
            let count = if v.count_tiles {
                sources::COUNT_ON
            } else {
                sources::COUNT_OFF
            };
            let generated;
            let softmax = sources::ONLINE_SOFTMAX;
            let snippets = match v.family {
                Family::Flash => [
                    if v.subgroups {
                        sources::REDUCE_SUBGROUP
                    } else {
                        sources::REDUCE_PLAIN
                    },
                    count,
                    softmax,
                    sources::FLASH_TILES,
                    sources::FLASH,
                ],
                Family::FlashUnrolled => {
                    generated = crate::flash_unrolled::main_source(v);
                    ["", count, softmax, sources::FLASH_TILES, generated.as_str()]
                }
                Family::FlashCoop => ["", count, softmax, "", sources::FLASH_COOP],
                Family::MemoryEfficient => ["", "", softmax, "", sources::MEMEFF],
                Family::Naive => ["", "", "", "", sources::NAIVE],
            };
            // Enable directives must precede every declaration.
            let enables = if v.family == Family::FlashCoop {
                "enable f16;\nenable wgpu_cooperative_matrix;\n"
            } else {
                ""
            };
            format!(
                "{enables}{}\n{}\n{}\n{}",
                const_lines(v),
                sources::DTYPE,
                sources::COMMON,
                snippets.join("\n")
            )
        }
        ModuleKey::Summary => format!(
            "const SUM_BQ: u32 = {SUMMARY_BLOCK_Q}u;\nconst SUM_BK: u32 = {SUMMARY_BLOCK_K}u;\n{}",
            sources::BLOCK_SUMMARY
        ),
        ModuleKey::Merge => format!("{}\n{}", sources::DTYPE, sources::MERGE),
    }
}

/// Every module source the crate can build for the given variants (for the naga test).
#[doc(hidden)]
pub fn all_sources_for(variants: &[ShaderVariant]) -> Vec<(String, String)> {
    let mut out = vec![(
        "block_summary".to_string(),
        module_source(&ModuleKey::Summary),
    )];
    for v in variants {
        out.push((format!("{v:?}"), module_source(&ModuleKey::Attention(*v))));
    }
    out
}

/// How a binding is declared.
#[derive(Clone, Copy)]
pub(crate) enum Slot {
    Uniform,
    Read,
    Write,
}

/// Bindings of each entry point, in order.
pub(crate) fn entry_bindings(key: &ModuleKey, entry: &str) -> &'static [(u32, Slot)] {
    use Slot::*;
    match (key, entry) {
        (ModuleKey::Summary, _) => &[(0, Uniform), (1, Read), (2, Write)],
        (ModuleKey::Merge, _) => &[
            (0, Uniform),
            (1, Read),
            (2, Read),
            (3, Read),
            (4, Read),
            (5, Write),
            (6, Write),
        ],
        (ModuleKey::Attention(v), e) => match (v.family, e) {
            (Family::Naive, "scores") => &[
                (0, Uniform),
                (1, Read),
                (2, Read),
                (5, Read),
                (6, Read),
                (7, Read),
                (8, Write),
            ],
            (Family::Naive, "softmax") => &[(0, Uniform), (7, Read), (8, Write), (9, Write)],
            (Family::Naive, _) => &[(0, Uniform), (3, Read), (4, Write), (7, Read), (8, Write)],
            (Family::Flash | Family::FlashUnrolled | Family::FlashCoop, _) if v.count_tiles => &[
                (0, Uniform),
                (1, Read),
                (2, Read),
                (3, Read),
                (4, Write),
                (5, Read),
                (6, Read),
                (7, Read),
                (8, Write),
                (9, Write),
            ],
            _ => &[
                (0, Uniform),
                (1, Read),
                (2, Read),
                (3, Read),
                (4, Write),
                (5, Read),
                (6, Read),
                (7, Read),
                (9, Write),
            ],
        },
    }
}

/// A compiled pipeline with its bind group layout.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// Compiled pipelines, keyed by module and entry point.
#[derive(Debug, Default)]
pub(crate) struct PipelineCache {
    map: Mutex<HashMap<(ModuleKey, &'static str), Arc<Compiled>>>,
    /// The runtime checks wgpu injects into the shaders (`None`: all of them).
    checks: Option<wgpu::ShaderRuntimeChecks>,
    /// Run each new pipeline once, so that a driver that compiles on first dispatch
    /// (llvmpipe under GL) compiles here rather than inside a caller's submit.
    warm_up: bool,
}

/// Formats an error with its whole source chain, each text once: wgpu's errors already
/// print their causes, which their `source` returns again.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(text.trim()) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

impl PipelineCache {
    pub(crate) fn new(checks: Option<wgpu::ShaderRuntimeChecks>, warm_up: bool) -> Self {
        PipelineCache {
            map: Mutex::default(),
            checks,
            warm_up,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Returns the pipeline for `(key, entry)`, compiling it on first use.
    pub(crate) fn get(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        key: ModuleKey,
        entry: &'static str,
    ) -> Result<Arc<Compiled>> {
        let checks = self.checks;
        if let Some(c) = self
            .map
            .lock()
            .map_err(|_| {
                Error::device_msg(
                    "pipeline cache",
                    "a thread panicked while holding the cache lock",
                )
            })?
            .get(&(key, entry))
        {
            return Ok(c.clone());
        }
        let compiled = Arc::new(compile(device, &key, entry, checks)?);
        if self.warm_up {
            warm_up(device, queue, &key, entry, &compiled)?;
        }
        let mut map = self.map.lock().map_err(|_| {
            Error::device_msg(
                "pipeline cache",
                "a thread panicked while holding the cache lock",
            )
        })?;
        Ok(map.entry((key, entry)).or_insert(compiled).clone())
    }
}

fn compile(
    device: &wgpu::Device,
    key: &ModuleKey,
    entry: &'static str,
    checks: Option<wgpu::ShaderRuntimeChecks>,
) -> Result<Compiled> {
    let src = module_source(key);
    let label = format!("wgpu-attention {key:?} {entry}");
    log::debug!("compiling pipeline {label}");
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some(&label),
        source: wgpu::ShaderSource::Wgsl(src.into()),
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
    // Measured on an H100 (BENCHMARKS.md): 1.75-2.2x faster flash on cooperative matrices.
    let checks = checks.unwrap_or(wgpu::ShaderRuntimeChecks {
        force_loop_bounding: false,
        int_div_checks: false,
        ..wgpu::ShaderRuntimeChecks::checked()
    });
    let module = unsafe { device.create_shader_module_trusted(desc, checks) };
    let entries: Vec<wgpu::BindGroupLayoutEntry> = entry_bindings(key, entry)
        .iter()
        .map(|&(binding, slot)| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: match slot {
                Slot::Uniform => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                Slot::Read | Slot::Write => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: matches!(slot, Slot::Read),
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
            },
            count: None,
        })
        .collect();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(&label),
        entries: &entries,
    });
    let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&label),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&label),
        layout: Some(&pl),
        module: &module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &[],
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(Error::device_msg(format!("compiling {label}"), chain(&e)));
    }
    Ok(Compiled { pipeline, layout })
}

/// Runs `compiled` once on one workgroup of a one-element problem (every size 1, no mask,
/// scratch bindings of its own), so that a driver that compiles a pipeline on its first
/// dispatch does so now. llvmpipe under GL does: a flash variant takes tens of seconds
/// there, and inside a caller's submit that would hold wgpu's GL context lock long enough
/// for another thread waiting on it to panic (see [`crate::gate`]).
fn warm_up(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    key: &ModuleKey,
    entry: &'static str,
    compiled: &Compiled,
) -> Result<()> {
    use crate::params::{AttnParams, MergeParams, SummaryParams};
    use wgpu::util::DeviceExt;
    let params: Vec<u8> = match key {
        ModuleKey::Attention(_) => bytemuck::bytes_of(&AttnParams {
            batch: 1,
            heads_q: 1,
            heads_kv: 1,
            seq_q: 1,
            seq_k: 1,
            dk: 1,
            dv: 1,
            scale: 1.0,
            group: 1,
            row_count: 1,
            wg_x: 1,
            scratch_stride: 1,
            n_splits: 1,
            split_len: u32::MAX,
            ..Default::default()
        })
        .to_vec(),
        ModuleKey::Merge => bytemuck::bytes_of(&MergeParams {
            batch: 1,
            heads: 1,
            seq: 1,
            dv: 1,
            n_a: 1,
            n_b: 1,
            wg_x: 1,
            ..Default::default()
        })
        .to_vec(),
        ModuleKey::Summary => bytemuck::bytes_of(&SummaryParams {
            mb: 1,
            mh: 1,
            seq_q: 1,
            seq_k: 1,
            nqb: 1,
            nkb: 1,
            wg_x: 1,
            n_blocks: 1,
            ..Default::default()
        })
        .to_vec(),
    };
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("wgpu-attention warm-up params"),
        contents: &params,
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let slots = entry_bindings(key, entry);
    // One small zeroed buffer per storage slot: the bindings never alias.
    let buffers: Vec<wgpu::Buffer> = slots
        .iter()
        .map(|_| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-attention warm-up binding"),
                size: 64,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        })
        .collect();
    let entries: Vec<wgpu::BindGroupEntry> = slots
        .iter()
        .zip(&buffers)
        .map(|(&(binding, slot), buffer)| wgpu::BindGroupEntry {
            binding,
            resource: match slot {
                Slot::Uniform => uniform.as_entire_binding(),
                Slot::Read | Slot::Write => buffer.as_entire_binding(),
            },
        })
        .collect();
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("wgpu-attention warm-up"),
        layout: &compiled.layout,
        entries: &entries,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&compiled.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    queue.submit([encoder.finish()]);
    let polled = device.poll(wgpu::PollType::wait_indefinitely());
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(Error::device_msg(
            format!("warming up {key:?} {entry}"),
            chain(&e),
        ));
    }
    polled.map_err(|e| Error::device(format!("warming up {key:?} {entry}"), e))?;
    Ok(())
}
