//! Host side of the flash shader (`shaders/flash.wgsl`).

use crate::blockmask;
use crate::context::Context;
use crate::dispatch::ShaderVariant;
use crate::error::Result;
use crate::launch::{self, Bound};
use crate::pipeline::{ModuleKey, entry_bindings};
use crate::validate::Problem;

/// Records the flash kernel: one workgroup per (batch, head, block of `block_q` rows).
pub(crate) fn record(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    p: &Problem,
    variant: ShaderVariant,
    bound: &Bound,
    opts: &crate::AttentionOptions,
    counter: Option<&wgpu::Buffer>,
) -> Result<()> {
    if let (Some(slot), Some(bm)) = (bound.summary, &opts.mask.bool_mask) {
        match &bm.summary {
            Some(pre) => pre.copy_into(encoder, &bound.aux, slot.offset),
            None => blockmask::record(ctx, encoder, &bm.view, &bound.aux, slot.offset)?,
        }
    }
    let key = ModuleKey::Attention(variant);
    let compiled = ctx.pipeline(key, "main")?;
    let n_qt = (p.seq_q as u64).div_ceil(variant.block_q as u64);
    let n = p.batch as u64 * p.heads_q as u64 * n_qt;
    let chunks = launch::split_grid(n, ctx.caps().max_workgroups_per_dim)?;
    let wanted = entry_bindings(&key, "main");
    for c in chunks {
        let mut params = bound.params;
        params.row_start = c.start;
        params.row_count = c.count;
        params.wg_x = c.x;
        let ub = launch::uniform(ctx, &params);
        let mut slots = launch::common_slots(ctx, bound, &ub);
        if let Some(c) = counter {
            slots.push((8, c.as_entire_binding()));
        }
        let bg = launch::bind_group(ctx, &compiled, &slots, wanted);
        launch::dispatch(encoder, "wgpu-attention flash", &compiled, &bg, c.x, c.y);
    }
    Ok(())
}
