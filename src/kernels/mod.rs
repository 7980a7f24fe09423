//! The kernels, one folder per family with its host code and parameter block; the WGSL
//! stays under `shaders/`. This module assembles a shader's source from its variant and
//! holds the one table of binding numbers.
//!
//! A shader's source is: typed `const` lines generated from its [`ShaderVariant`], the
//! shared prelude `shaders/common.wgsl` (bindings, loads, mask algebra), a small reduction
//! snippet (plain or subgroup), and the family's own file.

pub(crate) mod attention;
pub(crate) mod backward;
pub(crate) mod flash;
pub(crate) mod memeff;
pub(crate) mod merge;
pub(crate) mod naive;
pub(crate) mod quantize;
pub(crate) mod summary;

use crate::error::Result;
use crate::kernels::attention::params::AttnParams;
use crate::kernels::merge::params::MergeParams;
use crate::kernels::summary::params::SummaryParams;
use crate::plan::dispatch::{SUMMARY_BLOCK_K, SUMMARY_BLOCK_Q};
use crate::plan::variant::{ModuleKey, ShaderVariant};
use crate::runtime::Runtime;
use crate::runtime::arena::{MAX_BINDINGS, Range};
use crate::runtime::pipeline::{Binding, Compiled, PipelineSpec};

/// Shader files, embedded at build time.
pub mod sources {
    /// Storage dtype helpers (f32, f16, bf16 through 32-bit words).
    pub const DTYPE: &str = include_str!("../../shaders/dtype.wgsl");
    /// Merging partial results by their log-sum-exp.
    pub const MERGE: &str = include_str!("../../shaders/merge.wgsl");
    /// Bindings, parameter block, loads/stores and the mask algebra.
    pub const COMMON: &str = include_str!("../../shaders/common.wgsl");
    /// Quantized K/V decoding.
    pub const KV_QUANT: &str = include_str!("../../shaders/kv_quant.wgsl");
    /// Appending to a quantized KV cache: quantizing on the GPU.
    pub const KV_APPEND: &str = include_str!("../../shaders/kv_append.wgsl");
    /// The flash family.
    pub const FLASH: &str = include_str!("../../shaders/flash.wgsl");
    /// K/V tiles shared by the SIMT flash kernels.
    pub const FLASH_TILES: &str = include_str!("../../shaders/flash_tiles.wgsl");
    /// The flash family on cooperative matrices.
    pub const FLASH_COOP: &str = include_str!("../../shaders/flash_coop.wgsl");
    /// The masked online softmax, shared by the flash families and memory-efficient.
    pub const ONLINE_SOFTMAX: &str = include_str!("../../shaders/online_softmax.wgsl");
    /// The memory-efficient family.
    pub const MEMEFF: &str = include_str!("../../shaders/memeff.wgsl");
    /// The naive family.
    pub const NAIVE: &str = include_str!("../../shaders/naive.wgsl");
    /// Block summaries of bool masks.
    pub const BLOCK_SUMMARY: &str = include_str!("../../shaders/block_summary.wgsl");
    /// Row reduction for one thread per row.
    pub const REDUCE_PLAIN: &str = include_str!("../../shaders/reduce_plain.wgsl");
    /// Row reduction across a subgroup.
    pub const REDUCE_SUBGROUP: &str = include_str!("../../shaders/reduce_subgroup.wgsl");
    /// Tile counting off.
    pub const COUNT_OFF: &str = include_str!("../../shaders/count_off.wgsl");
    /// Tile counting on (tests).
    pub const COUNT_ON: &str = include_str!("../../shaders/count_on.wgsl");
    /// The backward pass (flash and naive).
    pub const BACKWARD: &str = include_str!("../../shaders/backward.wgsl");
    /// The flash backward's `kv` and `dq` kernels, SIMT form.
    pub const BACKWARD_FLASH: &str = include_str!("../../shaders/backward_flash.wgsl");
}

/// The typed `const` lines of a variant (and, on cooperative matrices, the aliases of its
/// fragment types).
fn const_lines(v: &ShaderVariant) -> String {
    let (fr, sgs) = match v {
        ShaderVariant::FlashCoop(t) => (t.fragment, t.subgroup_size),
        _ => (1, 1),
    };
    let aliases = if let ShaderVariant::FlashCoop(t) = v {
        format!(
            "alias CA = coop_mat{fr}x{fr}<f16, A>;\nalias CB = coop_mat{fr}x{fr}<f16, B>;\nalias CC = coop_mat{fr}x{fr}<f32, C>;\n\
             const EXTRA_TERMS: bool = {};\nconst BOOL_MASK: bool = {};\nconst KV_PAIRS: bool = {};\n\
             const DTQ: u32 = {}u;\nconst DTK: u32 = {}u;\nconst DTV: u32 = {}u;\nconst DTO: u32 = {}u;\n\
             const SLACK: f32 = {}.0;\n",
            t.extra,
            t.bool_mask,
            t.pairs,
            t.dtypes[0].code(),
            t.dtypes[1].code(),
            t.dtypes[2].code(),
            t.dtypes[3].code(),
            t.slack
        )
    } else {
        String::new()
    };
    format!(
        "{aliases}const FR: u32 = {fr}u;\nconst SGS: u32 = {sgs}u;\n\
         const DKB: u32 = {}u;\nconst DVB: u32 = {}u;\nconst BR: u32 = {}u;\nconst BC: u32 = {}u;\n\
         const TPR: u32 = {}u;\nconst RPT: u32 = {}u;\nconst WG: u32 = {}u;\nconst SUM_BQ: u32 = {}u;\nconst SUM_BK: u32 = {}u;\nconst PAGED: bool = {};\nconst KVQ: u32 = {}u;\n",
        v.head_dim_qk().max(1),
        v.head_dim_v().max(1),
        v.block_q(),
        v.block_k(),
        v.threads_per_row(),
        v.rows_per_thread(),
        v.workgroup_size(),
        SUMMARY_BLOCK_Q,
        SUMMARY_BLOCK_K,
        v.paged(),
        v.kv_code()
    )
}

/// The full WGSL source of a module.
pub(crate) fn module_source(key: &ModuleKey) -> String {
    match key {
        ModuleKey::Attention {
            variant: v,
            counters,
        } => {
            let count = if *counters {
                sources::COUNT_ON
            } else {
                sources::COUNT_OFF
            };
            let generated;
            let softmax = sources::ONLINE_SOFTMAX;
            let snippets = match v {
                ShaderVariant::Flash(t) => [
                    if t.subgroups {
                        sources::REDUCE_SUBGROUP
                    } else {
                        sources::REDUCE_PLAIN
                    },
                    count,
                    softmax,
                    sources::FLASH_TILES,
                    sources::FLASH,
                ],
                ShaderVariant::FlashUnrolled(t) => {
                    generated = flash::unrolled::main_source(t);
                    ["", count, softmax, sources::FLASH_TILES, generated.as_str()]
                }
                ShaderVariant::FlashCoop(t) => {
                    generated = sources::FLASH_COOP
                        .replace("    //@RESCALE\n", &flash::coop::rescale_source(t))
                        .replace("    //@OUTPUT\n", &flash::coop::output_source(t));
                    ["", count, softmax, "", generated.as_str()]
                }
                ShaderVariant::MemoryEfficient(_) => ["", "", softmax, "", sources::MEMEFF],
                ShaderVariant::Naive => ["", "", softmax, "", sources::NAIVE],
            };
            // Enable directives must precede every declaration.
            let enables = if let ShaderVariant::FlashCoop(_) = v {
                "enable f16;\nenable wgpu_cooperative_matrix;\n"
            } else {
                ""
            };
            format!(
                "{enables}{}\n{}\n{}\n{}\n{}",
                const_lines(v),
                sources::DTYPE,
                sources::COMMON,
                sources::KV_QUANT,
                snippets.join("\n")
            )
        }
        ModuleKey::Summary => format!(
            "const SUM_BQ: u32 = {SUMMARY_BLOCK_Q}u;\nconst SUM_BK: u32 = {SUMMARY_BLOCK_K}u;\n{}",
            sources::BLOCK_SUMMARY
        ),
        ModuleKey::Merge => format!("{}\n{}", sources::DTYPE, sources::MERGE),
        ModuleKey::Quantize => format!("{}\n{}", sources::DTYPE, sources::KV_APPEND),
        ModuleKey::Backward(t) => {
            let generated;
            let flash = if t.unrolled {
                generated = backward::unrolled::source(t);
                generated.as_str()
            } else {
                sources::BACKWARD_FLASH
            };
            let reduce = if t.threads_per_row > 1 {
                sources::REDUCE_SUBGROUP
            } else {
                sources::REDUCE_PLAIN
            };
            format!(
                "const DKB: u32 = {}u;\nconst DVB: u32 = {}u;\nconst BR: u32 = {b}u;\nconst BC: u32 = {b}u;\n\
                 const TPR: u32 = {}u;\nconst RPT: u32 = {}u;\nconst WG: u32 = {}u;\nconst SUM_BQ: u32 = {SUMMARY_BLOCK_Q}u;\nconst SUM_BK: u32 = {SUMMARY_BLOCK_K}u;\nconst PAGED: bool = false;\nconst KVQ: u32 = 0u;\n{}\n{}\n{}\n{reduce}\n{}\n{}\n{}\n{flash}",
                t.head_dim_qk,
                t.head_dim_v,
                t.threads_per_row,
                t.per_thread,
                t.workgroup_size(),
                sources::DTYPE,
                sources::COMMON,
                sources::KV_QUANT,
                sources::COUNT_OFF,
                sources::FLASH_TILES,
                sources::BACKWARD,
                b = t.block,
            )
        }
    }
}

#[cfg(feature = "test-hooks")]
/// Every module source the crate can build for the given variants (for the naga test).
pub fn all_sources_for(variants: &[(ShaderVariant, bool)]) -> Vec<(String, String)> {
    let mut out = vec![
        (
            "block_summary".to_string(),
            module_source(&ModuleKey::Summary),
        ),
        ("merge".to_string(), module_source(&ModuleKey::Merge)),
        ("kv_append".to_string(), module_source(&ModuleKey::Quantize)),
    ];
    for &(variant, counters) in variants {
        let key = ModuleKey::Attention { variant, counters };
        out.push((format!("{key:?}"), module_source(&key)));
    }
    out
}

#[cfg(feature = "test-hooks")]
/// The backward module of every tile the dispatcher can build, for the naga tests: head-dim
/// buckets, one or four threads per row, one or several rows per thread, and the unrolled
/// form with each combination of its mask terms.
pub fn backward_sources() -> Vec<(String, String, bool)> {
    use crate::plan::backward::{BACKWARD_AUX_TILE, BACKWARD_BLOCKS};
    use crate::plan::dispatch::{FLASH_HEAD_DIMS, UNROLLED_MAX_HEAD_DIM};
    use crate::plan::variant::BackwardTile;
    let mut tiles = vec![BACKWARD_AUX_TILE];
    for &dk in &FLASH_HEAD_DIMS {
        for dv in [32, dk] {
            for (block, tpr, per_thread) in [
                (BACKWARD_BLOCKS[0], 1, 1),
                (16, 4, 1),
                (32, 8, 1),
                (32, 4, 2),
                (8, 1, 1),
            ] {
                tiles.push(BackwardTile {
                    head_dim_qk: dk,
                    head_dim_v: dv,
                    block,
                    threads_per_row: tpr,
                    per_thread,
                    unrolled: false,
                    bias: false,
                    alibi: false,
                    bool_mask: false,
                    softcap: false,
                });
            }
            if dk <= UNROLLED_MAX_HEAD_DIM && dv <= UNROLLED_MAX_HEAD_DIM {
                for (n, (bias, alibi, bool_mask)) in [
                    (false, false, false),
                    (true, false, false),
                    (false, true, true),
                    (true, true, true),
                ]
                .into_iter()
                .enumerate()
                {
                    tiles.push(BackwardTile {
                        head_dim_qk: dk,
                        head_dim_v: dv,
                        block: [32, 16, 8, 32][n],
                        threads_per_row: 1,
                        per_thread: [4, 4, 2, 1][n],
                        unrolled: true,
                        bias,
                        alibi,
                        bool_mask,
                        softcap: bool_mask,
                    });
                }
            }
        }
    }
    tiles
        .into_iter()
        .map(|t| {
            let key = ModuleKey::Backward(t);
            (
                format!("{key:?}"),
                module_source(&key),
                t.threads_per_row > 1,
            )
        })
        .collect()
}

/// Every binding of every entry point, in one place: its number, its name in the WGSL,
/// and how it is declared. `tests/shaders.rs` checks each against the WGSL's globals with
/// naga; the layouts, the bind groups and the warm-up runs are all built from this table.
pub(crate) mod bindings {
    use crate::runtime::pipeline::{Binding, Slot};

    const fn b(number: u32, name: &'static str, slot: Slot) -> Binding {
        Binding { number, name, slot }
    }

    /// The parameter block (a slot of the runtime's ring, at a dynamic offset).
    pub const PARAMS: u32 = 0;
    /// Q, K, V, the output, the bool mask, the bias.
    pub const Q: u32 = 1;
    pub const K: u32 = 2;
    pub const V: u32 = 3;
    pub const O: u32 = 4;
    pub const MASK: u32 = 5;
    pub const BIAS: u32 = 6;
    /// Lengths, cumulative sequence offsets, ALiBi slopes, diagonal offsets, then the block
    /// summary (a ring slot at a dynamic offset, or scratch when a summary is computed).
    pub const AUX: u32 = 7;
    /// The naive kernel's score scratch, or the flash kernels' debug counters.
    pub const SCRATCH: u32 = 8;
    /// The log-sum-exp output.
    pub const LSE: u32 = 9;
    /// Backward: the f32 gradient scratch (dK, dV, naive dBias accumulators).
    pub const GACC: u32 = 8;
    /// Backward: dO, the forward's output and log-sum-exp (read by `prep`), the row
    /// statistics `prep` writes, and the naive backward's P/dS scratch.
    pub const D_OUT: u32 = 10;
    pub const O_IN: u32 = 11;
    pub const LSE_IN: u32 = 12;
    pub const STATS_OUT: u32 = 13;
    pub const PMAT: u32 = 14;

    const P: Binding = b(PARAMS, "P", Slot::Params);
    const QB: Binding = b(Q, "q_buf", Slot::Read);
    const KB: Binding = b(K, "k_buf", Slot::Read);
    const VB: Binding = b(V, "v_buf", Slot::Read);
    const OB: Binding = b(O, "o_buf", Slot::Write);
    const MB: Binding = b(MASK, "m_buf", Slot::Read);
    const BB: Binding = b(BIAS, "bias_buf", Slot::Read);
    const AB: Binding = b(AUX, "aux_buf", Slot::Aux);
    const LB: Binding = b(LSE, "lse_buf", Slot::Write);

    /// Flash and memory-efficient.
    pub const ATTENTION: &[Binding] = &[P, QB, KB, VB, OB, MB, BB, AB, LB];
    /// Flash with its debug counters.
    pub const ATTENTION_COUNTED: &[Binding] = &[
        P,
        QB,
        KB,
        VB,
        OB,
        MB,
        BB,
        AB,
        b(SCRATCH, "tile_counts", Slot::Write),
        LB,
    ];
    /// The naive kernel's three passes.
    // Scores and P·V bind both K and V: quantized K/V's decoding reads either, by an
    // argument known only at run time in the one naive module.
    pub const NAIVE_SCORES: &[Binding] = &[
        P,
        QB,
        KB,
        VB,
        MB,
        BB,
        AB,
        b(SCRATCH, "scratch", Slot::Write),
    ];
    pub const NAIVE_SOFTMAX: &[Binding] = &[P, AB, b(SCRATCH, "scratch", Slot::Write), LB];
    pub const NAIVE_PV: &[Binding] = &[P, KB, VB, OB, AB, b(SCRATCH, "scratch", Slot::Write)];
    const GB: Binding = b(GACC, "gacc", Slot::Write);
    const DB: Binding = b(D_OUT, "do_buf", Slot::Read);
    const PM: Binding = b(PMAT, "pmat", Slot::Write);
    /// The backward pass's entry points (`shaders/backward.wgsl`).
    pub const BWD_PREP: &[Binding] = &[
        P,
        AB,
        DB,
        b(O_IN, "o_in", Slot::Read),
        b(LSE_IN, "lse_in", Slot::Read),
        b(STATS_OUT, "stats_out", Slot::Write),
    ];
    pub const BWD_KV: &[Binding] = &[P, QB, KB, VB, MB, BB, AB, GB, DB];
    pub const BWD_DQ: &[Binding] = &[P, QB, KB, VB, OB, MB, BB, AB, DB];
    pub const BWD_FINISH: &[Binding] = &[P, OB, AB, GB];
    /// dV and dK share their code (one reads dO, the other Q).
    pub const BWD_N_KV: &[Binding] = &[P, QB, AB, GB, DB, PM];
    pub const BWD_N_DS: &[Binding] = &[P, VB, AB, DB, PM];
    pub const BWD_N_DQ: &[Binding] = &[P, KB, OB, AB, PM];
    pub const BWD_N_DBIAS: &[Binding] = &[P, AB, GB, PM];
    /// The soft cap's slope applied to dS (recomputing each score from Q and K).
    pub const BWD_N_SLOPE: &[Binding] = &[P, QB, KB, AB, PM];
    /// The sinks' gradient, from the row statistics in aux.
    pub const BWD_DSINK: &[Binding] = &[P, OB, AB];
    /// The block summary's mask and its output words.
    pub const SUMMARY_MASK: u32 = 1;
    pub const SUMMARY_OUT: u32 = 2;
    /// `shaders/block_summary.wgsl`.
    pub const SUMMARY: &[Binding] = &[
        b(PARAMS, "S", Slot::Params),
        b(SUMMARY_MASK, "mask", Slot::Read),
        b(SUMMARY_OUT, "out", Slot::Write),
    ];
    /// The merge's inputs A and B (outputs and log-sum-exps) and its outputs.
    pub const MERGE_OA: u32 = 1;
    pub const MERGE_LA: u32 = 2;
    pub const MERGE_OB: u32 = 3;
    pub const MERGE_LB: u32 = 4;
    pub const MERGE_OUT: u32 = 5;
    pub const MERGE_LSE_OUT: u32 = 6;
    /// `shaders/kv_append.wgsl`: the new rows, the cache's buffer, the destination rows (a
    /// ring slot at a dynamic offset).
    pub const QUANT_SRC: u32 = 1;
    pub const QUANT_DST: u32 = 2;
    pub const QUANT_ROWS: u32 = 3;
    pub const QUANT: &[Binding] = &[
        b(PARAMS, "Q", Slot::Params),
        b(QUANT_SRC, "src", Slot::Read),
        b(QUANT_DST, "dst", Slot::Write),
        b(QUANT_ROWS, "rows", Slot::Aux),
    ];
    /// `shaders/merge.wgsl`.
    pub const MERGE: &[Binding] = &[
        b(PARAMS, "M", Slot::Params),
        b(MERGE_OA, "oa", Slot::Read),
        b(MERGE_LA, "la", Slot::Read),
        b(MERGE_OB, "ob", Slot::Read),
        b(MERGE_LB, "lb", Slot::Read),
        b(MERGE_OUT, "out", Slot::Write),
        b(MERGE_LSE_OUT, "lse_out", Slot::Write),
    ];
}

/// The bindings of `entry` of `key`'s module.
pub(crate) fn entry_bindings(key: &ModuleKey, entry: &str) -> &'static [Binding] {
    match (key, entry) {
        (ModuleKey::Summary, _) => bindings::SUMMARY,
        (ModuleKey::Merge, _) => bindings::MERGE,
        (ModuleKey::Quantize, _) => bindings::QUANT,
        (ModuleKey::Backward(_), e) => match e {
            "prep" => bindings::BWD_PREP,
            "kv" => bindings::BWD_KV,
            "dq" | "dbias" => bindings::BWD_DQ,
            "finish" => bindings::BWD_FINISH,
            "n_dv" | "n_dk" => bindings::BWD_N_KV,
            "n_ds" => bindings::BWD_N_DS,
            "n_dq" => bindings::BWD_N_DQ,
            "n_slope" => bindings::BWD_N_SLOPE,
            "dsink" => bindings::BWD_DSINK,
            _ => bindings::BWD_N_DBIAS,
        },
        (ModuleKey::Attention { variant, counters }, e) => match (variant, e) {
            (ShaderVariant::Naive, "scores") => bindings::NAIVE_SCORES,
            (ShaderVariant::Naive, "softmax") => bindings::NAIVE_SOFTMAX,
            (ShaderVariant::Naive, _) => bindings::NAIVE_PV,
            (v, _) if v.is_flash() && *counters => bindings::ATTENTION_COUNTED,
            _ => bindings::ATTENTION,
        },
    }
}

/// `(binding number, WGSL name, writable)` of an entry point's bindings.
#[cfg(feature = "test-hooks")]
pub type BindingRows = Vec<(u32, &'static str, bool)>;

/// `(WGSL field name, byte offset)` of a parameter block's fields.
#[cfg(feature = "test-hooks")]
pub type FieldOffsets = Vec<(String, usize)>;

/// The bindings of every entry point, by module kind, for the naga test.
#[cfg(feature = "test-hooks")]
pub fn binding_table() -> Vec<(&'static str, &'static str, BindingRows)> {
    let list = |b: &[Binding]| {
        b.iter()
            .map(|b| (b.number, b.name, b.slot.writes()))
            .collect::<Vec<_>>()
    };
    vec![
        ("attention", "main", list(bindings::ATTENTION)),
        (
            "attention+counters",
            "main",
            list(bindings::ATTENTION_COUNTED),
        ),
        ("naive", "scores", list(bindings::NAIVE_SCORES)),
        ("naive", "softmax", list(bindings::NAIVE_SOFTMAX)),
        ("naive", "pv", list(bindings::NAIVE_PV)),
        ("summary", "main", list(bindings::SUMMARY)),
        ("merge", "main", list(bindings::MERGE)),
        ("kv_append", "main", list(bindings::QUANT)),
        ("backward", "prep", list(bindings::BWD_PREP)),
        ("backward", "kv", list(bindings::BWD_KV)),
        ("backward", "dq", list(bindings::BWD_DQ)),
        ("backward", "dbias", list(bindings::BWD_DQ)),
        ("backward", "finish", list(bindings::BWD_FINISH)),
        ("backward", "n_dv", list(bindings::BWD_N_KV)),
        ("backward", "n_dk", list(bindings::BWD_N_KV)),
        ("backward", "n_ds", list(bindings::BWD_N_DS)),
        ("backward", "n_dq", list(bindings::BWD_N_DQ)),
        ("backward", "n_dbias", list(bindings::BWD_N_DBIAS)),
        ("backward", "n_slope", list(bindings::BWD_N_SLOPE)),
        ("backward", "dsink", list(bindings::BWD_DSINK)),
    ]
}

/// A one-element problem's parameter block for each module (every size 1, no mask), for
/// the warm-up run of a new pipeline on drivers that compile on first dispatch.
fn warm_params(key: &ModuleKey) -> Vec<u8> {
    match key {
        ModuleKey::Attention { .. } | ModuleKey::Backward(_) => bytemuck::bytes_of(&AttnParams {
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
            fin: [1; 4],
            bg_b: 1,
            bg_h: 1,
            ..Default::default()
        })
        .to_vec(),
        // No rows: the warm-up dispatch writes nothing.
        ModuleKey::Quantize => {
            bytemuck::bytes_of(&quantize::params::QuantParams::default()).to_vec()
        }
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
    }
}

/// Records one dispatch of a kernel whose only dynamic binding is its parameter block (the
/// block summary, the merge): `params` into the ring, the kept bind group over `entries`,
/// the pass.
pub(crate) fn launch_with_params<P: bytemuck::Pod>(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    label: &str,
    compiled: &Compiled,
    params: &P,
    mut entries: [Option<Range>; MAX_BINDINGS],
    (x, y): (u32, u32),
) -> Result<()> {
    let (ring, off) = rt.ring_write(bytemuck::bytes_of(params))?;
    entries[bindings::PARAMS as usize] = Some((ring, 0, std::mem::size_of::<P>() as u64));
    let bg = rt.bind_group(compiled, entries)?;
    attention::dispatch(encoder, label, compiled, &bg, &[off], x, y);
    Ok(())
}

/// Everything the runtime needs to build `entry` of `key`'s module.
pub(crate) fn spec(key: &ModuleKey, entry: &'static str) -> PipelineSpec {
    PipelineSpec {
        label: format!("wgpu-attention {key:?} {entry}"),
        source: module_source(key),
        entry,
        subgroups: match key {
            ModuleKey::Attention { variant, .. } => variant.subgroups(),
            ModuleKey::Backward(t) => t.threads_per_row > 1,
            _ => false,
        },
        bindings: entry_bindings(key, entry),
        warm_params: warm_params(key),
    }
}

#[cfg(feature = "test-hooks")]
/// Every parameter block's WGSL struct name, size and `(field, offset)` list, for the test
/// that checks each against naga's layout of its WGSL mirror.
pub fn param_layouts() -> Vec<(&'static str, usize, FieldOffsets)> {
    vec![
        (
            "Params",
            std::mem::size_of::<AttnParams>(),
            AttnParams::fields(),
        ),
        (
            "SummaryParams",
            std::mem::size_of::<SummaryParams>(),
            SummaryParams::fields(),
        ),
        (
            "MergeParams",
            std::mem::size_of::<MergeParams>(),
            MergeParams::fields(),
        ),
        (
            "QuantParams",
            std::mem::size_of::<quantize::params::QuantParams>(),
            quantize::params::QuantParams::fields(),
        ),
    ]
}
