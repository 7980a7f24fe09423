//! Host side of the naive shader (`shaders/naive.wgsl`): scores, softmax, P·V, over
//! chunks of query rows sized so the score scratch fits the storage binding limit.

use crate::data::problem::Problem;
use crate::error::{Error, Result};
use crate::kernels::attention::{self, Bound};
use crate::kernels::{bindings, spec};
use crate::plan::variant::{ModuleKey, ShaderVariant};
use crate::runtime::Runtime;

/// Upper bound on the score scratch of one chunk, whatever the adapter allows.
pub const NAIVE_SCRATCH_MAX: u64 = 256 << 20;
const WG: u64 = 64;

/// The score scratch's limit and one row's bytes (f32 logits over every key), or the limit
/// error when one row does not fit: shared with the naive backward.
pub(crate) fn score_rows(rt: &Runtime, p: &Problem) -> Result<(u64, u64)> {
    let caps = rt.caps();
    let limit = NAIVE_SCRATCH_MAX
        .min(caps.max_storage_binding)
        .min(caps.max_buffer_size);
    let row_bytes = p.seq_k as u64 * 4;
    if row_bytes > limit {
        return Err(Error::limit(
            "max_storage_buffer_binding_size",
            row_bytes,
            limit,
        ));
    }
    Ok((limit, row_bytes))
}

/// Records the three naive passes for every chunk of rows.
pub(crate) fn record(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    p: &Problem,
    variant: ShaderVariant,
    bound: &Bound,
) -> Result<()> {
    let caps = rt.caps();
    let (limit, row_bytes) = score_rows(rt, p)?;
    let total_rows = (p.batch * p.heads_q * p.seq_q) as u64;
    let max_dim = caps.max_workgroups_per_dim as u64;
    // Rows per chunk: scratch within the limit, and each pass's grid within max_dim^2.
    let by_grid = (max_dim * max_dim * WG / (p.seq_k.max(p.head_dim_v) as u64)).max(1);
    let rows_per_chunk = (limit / row_bytes)
        .min(by_grid)
        .min(max_dim * max_dim)
        .min(total_rows)
        .max(1);
    let bytes = rows_per_chunk * row_bytes;
    let scratch = rt.scratch("wgpu-attention naive scores", bytes)?;
    let key = ModuleKey::Attention {
        variant,
        counters: false,
    };
    let passes = ["scores", "softmax", "pv"];
    let compiled: Vec<_> = passes
        .iter()
        .map(|e| rt.pipeline(key, e, || spec(&key, e)))
        .collect::<Result<_>>()?;
    let mut row = 0u64;
    while row < total_rows {
        let rows = rows_per_chunk.min(total_rows - row);
        let grids = [
            (rows * p.seq_k as u64).div_ceil(WG),
            rows,
            (rows * p.head_dim_v as u64).div_ceil(WG),
        ];
        for (comp, n) in compiled.iter().zip(grids) {
            let g = attention::split_grid(n, caps.max_workgroups_per_dim)?;
            // rows_per_chunk keeps every grid within one dispatch.
            let c = g[0];
            let mut params = bound.params;
            params.row_start = row as u32;
            params.row_count = rows as u32;
            params.wg_x = c.x;
            params.scratch_stride = p.seq_k as u32;
            let s = [(bindings::SCRATCH, (scratch.clone(), 0, bytes))];
            let label = "wgpu-attention naive";
            attention::launch(rt, encoder, label, comp, bound, &params, &s, (c.x, c.y))?;
        }
        row += rows;
    }
    Ok(())
}
