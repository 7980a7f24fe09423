//! The backward pass's dispatcher: flash (the kernels of `shaders/backward.wgsl`) where its
//! tiles fit the device, the naive backward otherwise or when asked for, with the reason in
//! words. Pure: no GPU.

use std::sync::Arc;

use crate::data::options::{AttentionOptions, Backend};
use crate::data::problem::Problem;
use crate::error::{Error, Result};
use crate::plan::dispatch::{
    DeviceCaps, FLASH_HEAD_DIMS, NAIVE_STORAGE_BUFFERS, SUBGROUP_THREADS_PER_ROW,
    UNROLLED_MAX_HEAD_DIM, bucket, fused_buffers_fit, subgroup_rows_ok,
};
use crate::plan::variant::BackwardTile;

/// Query rows and keys per tile of the flash backward, largest first: the first whose Q/dO
/// and K/V tiles fit the device's workgroup memory is used.
pub const BACKWARD_BLOCKS: [u32; 3] = [32, 16, 8];

/// Threads per row of the flash backward at head dims of 128 and more on GPUs (subgroups of
/// at least this many).
pub const BACKWARD_WIDE_THREADS_PER_ROW: u32 = 8;

/// Rows or keys per thread of the flash backward on CPU adapters.
pub const CPU_PER_THREAD: u32 = 4;

/// The module of the passes that do not depend on the tile: the row statistics, the stores
/// of the f32 gradients and the naive backward (their code loops over head dims at run time;
/// the tile only sets their 64 threads per workgroup). One module for every call, so that
/// each of them compiles once.
pub const BACKWARD_AUX_TILE: BackwardTile = BackwardTile {
    head_dim_qk: 32,
    head_dim_v: 32,
    block: 64,
    threads_per_row: 1,
    per_thread: 1,
    unrolled: false,
    bias: false,
    alibi: false,
    bool_mask: false,
    softcap: false,
};

/// The dispatcher's decision for a backward call.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct BackwardPlan {
    /// [`Backend::Flash`] or [`Backend::Naive`].
    pub backend: Backend,
    /// The tile of the flash kernels (the auxiliary passes' tile for naive).
    pub tile: BackwardTile,
    /// Why, in words.
    pub reason: Arc<str>,
}

impl std::fmt::Display for BackwardPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.tile;
        write!(
            f,
            "{} backward (d_qk bucket {}, d_v bucket {}, tile {}x{}, threads/row {}): {}",
            self.backend,
            t.head_dim_qk,
            t.head_dim_v,
            t.block,
            t.block,
            t.threads_per_row,
            self.reason
        )
    }
}

/// The flash backward's tile for a problem, or why there is none.
pub fn backward_tile(
    p: &Problem,
    caps: &DeviceCaps,
    opts: &AttentionOptions,
) -> std::result::Result<BackwardTile, String> {
    fused_buffers_fit("the flash backward", caps)?;
    let max = FLASH_HEAD_DIMS[FLASH_HEAD_DIMS.len() - 1];
    let too_wide = |what: &str, d: usize| {
        format!("the flash backward supports head dims up to {max}; {what} head dim is {d}")
    };
    let dk =
        bucket(&FLASH_HEAD_DIMS, p.head_dim_qk).ok_or_else(|| too_wide("Q/K", p.head_dim_qk))?;
    let dv = bucket(&FLASH_HEAD_DIMS, p.head_dim_v).ok_or_else(|| too_wide("V", p.head_dim_v))?;
    // Subgroups split each row's dot products across threads on GPUs (fewer registers per
    // thread: the kv kernel holds K, V, dK and dV slices); CPU drivers run one thread per
    // row. The forward's tuning of threads per row applies here too.
    let sg_ok = subgroup_rows_ok(caps, opts);
    let wide_ok = sg_ok && caps.subgroup_min_size >= BACKWARD_WIDE_THREADS_PER_ROW;
    let threads_per_row = match opts.tuning.flash_threads_per_row {
        Some(1) => 1,
        Some(SUBGROUP_THREADS_PER_ROW) if sg_ok => SUBGROUP_THREADS_PER_ROW,
        Some(BACKWARD_WIDE_THREADS_PER_ROW) if wide_ok => BACKWARD_WIDE_THREADS_PER_ROW,
        Some(t) => {
            return Err(format!(
                "{t} threads per row: the flash backward runs 1, or {SUBGROUP_THREADS_PER_ROW} with subgroups of at least {SUBGROUP_THREADS_PER_ROW}, or {BACKWARD_WIDE_THREADS_PER_ROW} with subgroups of at least {BACKWARD_WIDE_THREADS_PER_ROW} (and Subgroups::Auto)"
            ));
        }
        // At head dims of 128 and more, eight threads a row: the kv kernel's K, V, dK and dV
        // slices then fit registers that leave 16 warps per SM on NVIDIA Ampere (measured
        // through NAK: 4 threads a row need 216 registers, 8 warps).
        None if wide_ok && !caps.cpu && dk.max(dv) >= 128 => BACKWARD_WIDE_THREADS_PER_ROW,
        None if sg_ok && !caps.cpu && dk >= 64 => SUBGROUP_THREADS_PER_ROW,
        None => 1,
    };
    // CPU drivers keep a workgroup of one SIMD batch (8 lanes) free of switches at barriers,
    // and each vector read from workgroup memory (a loop over the lanes there) should serve
    // several rows: four rows or keys per thread. GPUs run one per thread (registers).
    let per_thread = if caps.cpu { CPU_PER_THREAD } else { 1 };
    let unrolled = caps.cpu
        && threads_per_row == 1
        && dk <= UNROLLED_MAX_HEAD_DIM
        && dv <= UNROLLED_MAX_HEAD_DIM;
    let terms =
        unrolled && (p.mask.bias.is_some() || p.mask.alibi || p.mask.bool_mask || p.softcap);
    let tile = |block: u32| BackwardTile {
        head_dim_qk: dk,
        head_dim_v: dv,
        block,
        threads_per_row,
        per_thread: per_thread.min(block),
        // Generated where the forward's unrolled kernel would be: CPU adapters, one thread
        // per row, head dims up to the unrolled kernel's bound.
        unrolled,
        // All the per-key terms or none: two variants per head-dim bucket, not eight (each
        // compiles for tens of seconds on a CPU driver), and unmasked calls carry no mask
        // code.
        bias: terms,
        alibi: terms,
        bool_mask: terms,
        softcap: terms,
    };
    BACKWARD_BLOCKS
        .iter()
        .map(|&b| tile(b))
        .find(|t| {
            t.workgroup_storage() <= caps.max_workgroup_storage
                && t.workgroup_size() <= caps.max_invocations
        })
        .ok_or_else(|| {
            let t = tile(BACKWARD_BLOCKS[BACKWARD_BLOCKS.len() - 1]);
            format!(
                "the flash backward's tiles of {} rows at head dims {dk}+{dv} need {} bytes of workgroup memory; the adapter offers {}",
                t.block,
                t.workgroup_storage(),
                caps.max_workgroup_storage
            )
        })
}

/// Plans a backward call: the backend, its tile and why.
///
/// [`Backend::Auto`] (and the forward-only [`Backend::MemoryEfficient`] and
/// [`Backend::Decode`], which have no backward of their own) runs flash where its tiles fit,
/// naive otherwise; [`Backend::Flash`] fails with the reason where they do not.
pub fn plan_backward(
    p: &Problem,
    caps: &DeviceCaps,
    opts: &AttentionOptions,
) -> Result<BackwardPlan> {
    let flash = backward_tile(p, caps, opts);
    let mask_note = if p.mask.any() {
        " Masks are applied inside the kernels; tiles no row sees are skipped."
    } else {
        ""
    };
    let forward_only = match opts.backend {
        Backend::MemoryEfficient | Backend::Decode => {
            format!("{} has no backward of its own; ", opts.backend)
        }
        _ => String::new(),
    };
    let naive = |reason: String| -> Result<BackwardPlan> {
        if caps.max_storage_buffers < NAIVE_STORAGE_BUFFERS {
            return Err(Error::limit(
                "max_storage_buffers_per_shader_stage",
                NAIVE_STORAGE_BUFFERS as u64,
                caps.max_storage_buffers as u64,
            ));
        }
        Ok(BackwardPlan {
            backend: Backend::Naive,
            tile: BACKWARD_AUX_TILE,
            reason: reason.into(),
        })
    };
    match (opts.backend, &flash) {
        (Backend::Naive, _) => {
            naive("naive was forced (exact reference: P and dS materialised per chunk of rows).".into())
        }
        (Backend::Flash, Err(why)) => Err(Error::backend(format!(
            "the flash backward cannot run: {why}"
        ))),
        (_, Ok(t)) => Ok(BackwardPlan {
            backend: Backend::Flash,
            tile: *t,
            reason: format!(
                "{forward_only}flash backward (FlashAttention-2): a pre-pass for rowsum(dO*O), a kernel per {b} keys accumulating dK and dV in registers over every query head of its group, then dQ in a second pass over {b}-row tiles (deterministic: WGSL has no float atomics); P is recomputed from the forward's log-sum-exp and never stored.{mask_note}",
                b = t.block
            )
            .into(),
        }),
        (_, Err(why)) => naive(format!("{forward_only}naive, because {why}.")),
    }
}
