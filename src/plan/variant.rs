//! The closed set of compiled kernels: one configuration type per attention family, the
//! [`ShaderVariant`] enum over them, and the [`ModuleKey`] that names every pipeline the
//! crate builds. A variant's `Hash` (with its entry point) is the pipeline-cache key; its
//! fields become typed `const` lines at the top of the shader source.

use crate::data::tensor::DType;

/// Threads per workgroup of the memory-efficient shader (one query row per workgroup).
pub const MEMEFF_THREADS: u32 = 64;

/// Shader family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Family {
    /// `shaders/flash.wgsl`.
    Flash,
    /// Flash generated with its per-row loops unrolled (`src/kernels/flash/unrolled.rs`): the
    /// default on CPU adapters for head dims up to 128, selected anywhere by 8 rows per thread
    /// ([`Tuning::rows_per_thread`](crate::Tuning::rows_per_thread)).
    FlashUnrolled,
    /// `shaders/flash_coop.wgsl`: flash on cooperative matrices (tensor cores).
    FlashCoop,
    /// `shaders/memeff.wgsl`.
    MemoryEfficient,
    /// `shaders/naive.wgsl`.
    Naive,
}

/// The SIMT flash kernel's tile (`shaders/flash.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlashTile {
    /// Q/K head-dim bucket (register and tile width).
    pub head_dim_qk: u32,
    /// V head-dim bucket.
    pub head_dim_v: u32,
    /// Query rows per workgroup.
    pub block_q: u32,
    /// Keys per tile.
    pub block_k: u32,
    /// Threads cooperating on one query row (> 1 only with subgroups).
    pub threads_per_row: u32,
    /// Query rows each thread (group) owns: every K/V vector read from workgroup memory
    /// serves this many rows.
    pub rows_per_thread: u32,
    /// Whether subgroup operations are used.
    pub subgroups: bool,
    /// Built to read K and V through a page table ([`crate::PagedKv`]); without, that code
    /// is absent (the dispatcher sets it from the call).
    pub paged: bool,
    /// The quantized format of K and V ([`DType::is_quantized`]), decoded as they load;
    /// `None` for f32, f16 and bf16 K/V (no decoding code).
    pub quant: Option<DType>,
}

/// The unrolled flash kernel's configuration (generated per variant, for CPU drivers).
///
/// Only this kernel is specialised on the mask terms (`bias`, `alibi`, `bool_mask`): CPU
/// drivers run both sides of a branch, so code for a mask that is absent still costs there
/// (about 30% of an unmasked call on lavapipe), and so does decoding a dtype at run time.
/// The other families test the mask flags at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnrolledTile {
    /// Q/K head-dim bucket.
    pub head_dim_qk: u32,
    /// V head-dim bucket.
    pub head_dim_v: u32,
    /// Query rows per workgroup.
    pub block_q: u32,
    /// Keys per tile.
    pub block_k: u32,
    /// Query rows each thread owns, as named variables.
    pub rows_per_thread: u32,
    /// The storage dtype of the additive bias the kernel adds to every visible score, if any.
    pub bias: Option<DType>,
    /// Whether the kernel adds ALiBi's distance term to every visible score.
    pub alibi: bool,
    /// Whether the kernel reads a bool mask, key by key, in the tiles its block summary
    /// marks mixed (tiles marked all visible run through a key loop without it).
    pub bool_mask: bool,
    /// Whether the kernel soft-caps every score ([`crate::AttentionOptions::softcap`]).
    pub softcap: bool,
    /// Built for a driver that loads memory one SIMD lane at a time and turns indexed local
    /// arrays into branch ladders ([`DeviceCaps::cpu_serial_loads`](crate::dispatch::DeviceCaps::cpu_serial_loads)):
    /// Q and O then move between workgroup memory and named variables with one written-out
    /// load or store per vector; otherwise through a local array in a rolled loop, which
    /// lavapipe from Mesa 23 compiles 4-6x faster.
    pub serial_loads: bool,
    /// Built to read K and V through a page table ([`crate::PagedKv`]); without, that code
    /// is absent (the dispatcher sets it from the call).
    pub paged: bool,
    /// The quantized format of K and V ([`DType::is_quantized`]), decoded as they load;
    /// `None` for f32, f16 and bf16 K/V (no decoding code).
    pub quant: Option<DType>,
}

/// The cooperative-matrix flash kernel's configuration (`shaders/flash_coop.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoopTile {
    /// Q/K head-dim bucket.
    pub head_dim_qk: u32,
    /// V head-dim bucket.
    pub head_dim_v: u32,
    /// Query rows per workgroup (one subgroup per `fragment` rows).
    pub block_q: u32,
    /// Keys per tile.
    pub block_k: u32,
    /// The fragment size (8 or 16: FR×FR×FR f16 products into f32).
    pub fragment: u32,
    /// The adapter's largest subgroup size: the workgroup has one subgroup of this size per
    /// `fragment` rows.
    pub subgroup_size: u32,
    /// How many subgroups of the adapter's smallest size share a row block: its largest
    /// subgroup size over its smallest (RADV: 64 / 32). The driver picks the size when it
    /// compiles; where it picks a smaller one, the subgroups sharing a row block split its
    /// score and accumulator fragments.
    pub ways: u32,
    /// Built with the code for terms applied to the logits (an additive bias, ALiBi, the
    /// soft cap): the softmax then applies them in a loop over each lane's visible keys.
    /// Without, that code is absent (the dispatcher sets it from the call).
    pub extra: bool,
    /// Built with the bool mask's code (the block summary's scan for the next tile, the
    /// per-key mask of mixed tiles).
    pub bool_mask: bool,
    /// K and V staged a word pair at a time (16-bit elements, contiguous head dims, even
    /// offsets and strides); else element by element. The dispatcher plans the former, the
    /// launch picks the one the call's views allow.
    pub pairs: bool,
    /// The dtypes of Q, K, V and the output, built in (each kernel reads and writes only
    /// these).
    pub dtypes: [DType; 4],
    /// The lazy rescale's slack (natural-log units): a row's accumulators are rescaled when
    /// its max rises by more than this ([`crate::Tuning::coop_rescale_slack`]).
    pub slack: u32,
    /// Built to read K and V through a page table ([`crate::PagedKv`]); without, that code
    /// is absent (the dispatcher sets it from the call).
    pub paged: bool,
    /// The quantized format of K and V ([`DType::is_quantized`]), decoded as they load;
    /// `None` for f32, f16 and bf16 K/V (no decoding code).
    pub quant: Option<DType>,
}

/// The memory-efficient kernel's configuration (`shaders/memeff.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemEffConfig {
    /// Q/K head-dim bucket.
    pub head_dim_qk: u32,
    /// V head-dim bucket.
    pub head_dim_v: u32,
    /// Built to read K and V through a page table ([`crate::PagedKv`]); without, that code
    /// is absent (the dispatcher sets it from the call).
    pub paged: bool,
    /// The quantized format of K and V ([`DType::is_quantized`]), decoded as they load;
    /// `None` for f32, f16 and bf16 K/V (no decoding code).
    pub quant: Option<DType>,
}

/// A compiled specialisation of an attention family: a closed set, one configuration type
/// per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ShaderVariant {
    /// SIMT flash.
    Flash(FlashTile),
    /// Unrolled flash (CPU adapters).
    FlashUnrolled(UnrolledTile),
    /// Flash on cooperative matrices.
    FlashCoop(CoopTile),
    /// Memory-efficient (and, with key splits, the decode path).
    MemoryEfficient(MemEffConfig),
    /// Scores, softmax, P·V: loops over head dims at run time.
    Naive,
}

/// The backward pass's tile (`shaders/backward.wgsl`): its flash kernels, and the module
/// the naive backward's passes are built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackwardTile {
    /// Q/K head-dim bucket (register and tile width).
    pub head_dim_qk: u32,
    /// V head-dim bucket.
    pub head_dim_v: u32,
    /// Query rows per tile, and keys per tile: the `kv` kernel owns this many keys and loads
    /// this many query rows at a time; `dq` owns this many rows and loads this many keys.
    pub block: u32,
    /// Threads cooperating on one row (> 1 only with subgroups).
    pub threads_per_row: u32,
    /// Rows (`dq`, `dbias`) or keys (`kv`) each thread (group) owns: every vector read from
    /// workgroup memory serves this many of them.
    pub per_thread: u32,
    /// `kv` and `dq` generated with named variables for CPU drivers
    /// (`src/kernels/backward/unrolled.rs`; one thread per row).
    pub unrolled: bool,
    /// Unrolled only: the mask terms the generated code reads (an additive bias, ALiBi, a
    /// bool mask). A CPU driver runs both sides of a branch, so code for a term that is
    /// absent would still cost there; the SIMT kernels test the flags at run time. The
    /// dispatcher sets all three or none.
    pub bias: bool,
    /// See [`BackwardTile::bias`].
    pub alibi: bool,
    /// See [`BackwardTile::bias`].
    pub bool_mask: bool,
    /// Unrolled only: the soft cap's code (applied where the call sets it). Set with the
    /// mask terms: the dispatcher sets all four or none.
    pub softcap: bool,
}

impl BackwardTile {
    /// Threads per workgroup.
    pub fn workgroup_size(&self) -> u32 {
        self.block / self.per_thread * self.threads_per_row
    }

    /// Workgroup memory of the largest kernel, in bytes: `kv`'s Q/dO tile with its row
    /// statistics, or `dbias`'s K/V tile with its block of bias gradients (`dq` has the K/V
    /// tile alone; each entry point allocates only what it uses).
    pub fn workgroup_storage(&self) -> u32 {
        let tile = self.block * (self.head_dim_qk + self.head_dim_v) * 4;
        (tile + self.block * 8 + 32).max(tile + self.block * self.block * 4 + 16)
    }
}

/// Every pipeline module the crate builds: an attention variant (with the debug counters
/// or without), the block-summary kernel and the merge kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModuleKey {
    /// An attention kernel; `counters` adds the debug counters of `shaders/count_on.wgsl`.
    Attention {
        /// The variant.
        variant: ShaderVariant,
        /// Debug builds of the flash kernels count tiles and rescales.
        counters: bool,
    },
    /// `shaders/block_summary.wgsl`.
    Summary,
    /// `shaders/merge.wgsl`.
    Merge,
    /// `shaders/kv_append.wgsl`: quantizing appends to a KV cache.
    Quantize,
    /// `shaders/backward.wgsl`: the flash and naive backward passes.
    Backward(BackwardTile),
}

impl ShaderVariant {
    /// The family.
    pub fn family(&self) -> Family {
        match self {
            ShaderVariant::Flash(_) => Family::Flash,
            ShaderVariant::FlashUnrolled(_) => Family::FlashUnrolled,
            ShaderVariant::FlashCoop(_) => Family::FlashCoop,
            ShaderVariant::MemoryEfficient(_) => Family::MemoryEfficient,
            ShaderVariant::Naive => Family::Naive,
        }
    }

    /// Whether this is one of the flash families (tiles of queries, block summaries).
    pub fn is_flash(&self) -> bool {
        matches!(
            self,
            ShaderVariant::Flash(_) | ShaderVariant::FlashUnrolled(_) | ShaderVariant::FlashCoop(_)
        )
    }

    /// Q/K head-dim bucket (0 where the shader loops at run time).
    pub fn head_dim_qk(&self) -> u32 {
        match self {
            ShaderVariant::Flash(t) => t.head_dim_qk,
            ShaderVariant::FlashUnrolled(t) => t.head_dim_qk,
            ShaderVariant::FlashCoop(t) => t.head_dim_qk,
            ShaderVariant::MemoryEfficient(c) => c.head_dim_qk,
            ShaderVariant::Naive => 0,
        }
    }

    /// V head-dim bucket (0 where the shader loops at run time).
    pub fn head_dim_v(&self) -> u32 {
        match self {
            ShaderVariant::Flash(t) => t.head_dim_v,
            ShaderVariant::FlashUnrolled(t) => t.head_dim_v,
            ShaderVariant::FlashCoop(t) => t.head_dim_v,
            ShaderVariant::MemoryEfficient(c) => c.head_dim_v,
            ShaderVariant::Naive => 0,
        }
    }

    /// Whether the variant reads K and V through a page table (naive's test at run time).
    pub fn paged(&self) -> bool {
        match self {
            ShaderVariant::Flash(t) => t.paged,
            ShaderVariant::FlashUnrolled(t) => t.paged,
            ShaderVariant::FlashCoop(t) => t.paged,
            ShaderVariant::MemoryEfficient(c) => c.paged,
            ShaderVariant::Naive => true,
        }
    }

    /// The quantized K/V format code the variant is built for (`KVQ` in the shaders; 0
    /// none). The naive kernel serves every format: 255, its code read at run time.
    pub(crate) fn kv_code(&self) -> u32 {
        let q = match self {
            ShaderVariant::Flash(t) => t.quant,
            ShaderVariant::FlashUnrolled(t) => t.quant,
            ShaderVariant::FlashCoop(t) => t.quant,
            ShaderVariant::MemoryEfficient(c) => c.quant,
            ShaderVariant::Naive => return 255,
        };
        q.map_or(0, DType::kv_code)
    }

    /// Query rows per workgroup.
    pub fn block_q(&self) -> u32 {
        match self {
            ShaderVariant::Flash(t) => t.block_q,
            ShaderVariant::FlashUnrolled(t) => t.block_q,
            ShaderVariant::FlashCoop(t) => t.block_q,
            ShaderVariant::MemoryEfficient(_) | ShaderVariant::Naive => 1,
        }
    }

    /// Keys per tile (memory-efficient: per block; naive: per workgroup of scores).
    pub fn block_k(&self) -> u32 {
        match self {
            ShaderVariant::Flash(t) => t.block_k,
            ShaderVariant::FlashUnrolled(t) => t.block_k,
            ShaderVariant::FlashCoop(t) => t.block_k,
            ShaderVariant::MemoryEfficient(_) => MEMEFF_THREADS,
            ShaderVariant::Naive => 64,
        }
    }

    /// Threads cooperating on one query row.
    pub fn threads_per_row(&self) -> u32 {
        match self {
            ShaderVariant::Flash(t) => t.threads_per_row,
            ShaderVariant::FlashCoop(t) => (t.subgroup_size / t.fragment.max(1)).max(1),
            ShaderVariant::MemoryEfficient(_) => MEMEFF_THREADS,
            ShaderVariant::FlashUnrolled(_) | ShaderVariant::Naive => 1,
        }
    }

    /// Query rows each thread (group) owns.
    pub fn rows_per_thread(&self) -> u32 {
        match self {
            ShaderVariant::Flash(t) => t.rows_per_thread,
            ShaderVariant::FlashUnrolled(t) => t.rows_per_thread,
            _ => 1,
        }
    }

    /// Whether subgroup operations are used.
    pub fn subgroups(&self) -> bool {
        match self {
            ShaderVariant::Flash(t) => t.subgroups,
            ShaderVariant::FlashCoop(_) => true,
            _ => false,
        }
    }

    /// Threads per workgroup.
    pub fn workgroup_size(&self) -> u32 {
        match self {
            ShaderVariant::Flash(t) => t.block_q / t.rows_per_thread * t.threads_per_row,
            ShaderVariant::FlashUnrolled(t) => t.block_q / t.rows_per_thread,
            ShaderVariant::FlashCoop(t) => t.block_q / t.fragment.max(1) * t.subgroup_size,
            ShaderVariant::MemoryEfficient(_) => MEMEFF_THREADS,
            ShaderVariant::Naive => 64,
        }
    }

    /// Workgroup memory the variant uses, in bytes.
    pub fn workgroup_storage(&self) -> u32 {
        match self {
            ShaderVariant::Flash(_) | ShaderVariant::FlashUnrolled(_) => {
                self.block_k() * (self.head_dim_qk() + self.head_dim_v()) * 4 + 16
            }
            ShaderVariant::FlashCoop(t) => {
                // f16 K/V tile (Q staged there first), f32 scores and f16 weights per row.
                let (br, bc) = (t.block_q, t.block_k);
                let kv = (br * t.head_dim_qk).max(bc * (t.head_dim_qk + t.head_dim_v));
                kv * 2 + br * bc * 6 + 32
            }
            ShaderVariant::MemoryEfficient(c) => {
                // Paged: each block's V rows too; quantized: their scales, the query as
                // vectors, and each thread's 32 columns of P·V for the final sum.
                let per_key = 2 + u32::from(c.paged) + u32::from(c.quant.is_some());
                let quant = if c.quant.is_some() {
                    c.head_dim_qk.div_ceil(4) * 4 + MEMEFF_THREADS * 32
                } else {
                    0
                };
                (c.head_dim_qk + per_key * MEMEFF_THREADS + quant + 8) * 4
            }
            ShaderVariant::Naive => 64 * 4 * 2,
        }
    }

    /// What one workgroup of this variant costs per key tile: the figures that decide its
    /// speed on a GPU (bytes of K/V staged per row served, barriers, workgroup memory).
    ///
    /// The barrier figures are the shaders' own: `tests/shaders.rs`
    /// (`cost_barriers_per_tile_match_the_naga_ir`) counts them in naga's IR of every
    /// variant's key loop and fails where they differ.
    pub fn cost(&self) -> Cost {
        let (name, barriers) = match self {
            // Barrier 1 ends the previous tile's reads, barrier 2 the load (tile_state is
            // worked out by every thread, not agreed through a third).
            ShaderVariant::Flash(t) if t.subgroups => ("flash_simt_subgroup", 2),
            ShaderVariant::Flash(_) => ("flash_simt", 2),
            ShaderVariant::FlashUnrolled(_) => ("flash_unrolled_cpu", 2),
            ShaderVariant::FlashCoop(t) if t.fragment == 8 => ("flash_coop_8x8", 2),
            ShaderVariant::FlashCoop(_) => ("flash_coop_16x16", 2),
            // A block of 64 keys: scores, their max, the weights, the accumulation.
            ShaderVariant::MemoryEfficient(_) => ("memeff", 4),
            ShaderVariant::Naive => ("naive", 0),
        };
        let rescale = match self {
            // The lazy rescale's round trip (`rescale_source`, src/kernels/flash/coop.rs): the
            // accumulators in rounds of BC / FR fragments, three barriers a round (after the
            // stores, after the scaling, after the loads back).
            ShaderVariant::FlashCoop(t) => {
                let fr = t.fragment.max(1);
                3 * (t.head_dim_v / fr).div_ceil((t.block_k / fr).max(1))
            }
            _ => 0,
        };
        Cost {
            variant: name,
            rows_per_workgroup: self.block_q(),
            keys_per_tile: self.block_k(),
            barriers_per_tile: barriers,
            rescale_barriers: rescale,
            workgroup_bytes: self.workgroup_storage(),
        }
    }
}

/// The cost line of a [`ShaderVariant`] (see [`ShaderVariant::cost`]). Its `Display` is one
/// line of JSON fields, as the benchmark harness prints them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cost {
    /// The variant's name (`flash_coop_8x8`, `flash_simt`, ...).
    pub variant: &'static str,
    /// Query rows a workgroup owns: every K/V byte it stages serves this many rows.
    pub rows_per_workgroup: u32,
    /// Keys per tile staged in workgroup memory (memory-efficient: per block).
    pub keys_per_tile: u32,
    /// Workgroup barriers per key tile that is loaded (a `workgroupUniformLoad` counts two;
    /// a tile the block summary skips takes fewer).
    pub barriers_per_tile: u32,
    /// Workgroup barriers a tile adds when the cooperative-matrix kernel's lazy rescale runs
    /// (some row's max rose by more than the slack): 3·⌈Dv / BC⌉. 0 for the other families.
    /// Not in the cost line (`Display`).
    pub rescale_barriers: u32,
    /// Workgroup memory, in bytes.
    pub workgroup_bytes: u32,
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "\"variant\":\"{}\",\"rows_per_workgroup\":{},\"keys_per_tile\":{},\"barriers_per_tile\":{},\"workgroup_bytes\":{}",
            self.variant,
            self.rows_per_workgroup,
            self.keys_per_tile,
            self.barriers_per_tile,
            self.workgroup_bytes
        )
    }
}
