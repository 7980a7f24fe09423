//! Host side of the memory-efficient shader (`shaders/memeff.wgsl`).

use crate::context::Context;
use crate::dispatch::ShaderVariant;
use crate::error::Result;
use crate::launch::{self, Bound};
use crate::pipeline::{ModuleKey, entry_bindings};
use crate::validate::Problem;

/// Records the memory-efficient kernel: one workgroup per (batch, head, query row).
pub(crate) fn record(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    p: &Problem,
    variant: ShaderVariant,
    bound: &Bound,
) -> Result<()> {
    let key = ModuleKey::Attention(variant);
    let compiled = ctx.cache().get(ctx.device(), key, "main")?;
    let n = p.batch as u64 * p.heads_q as u64 * p.seq_q as u64;
    let chunks = launch::split_grid(n, ctx.caps().max_workgroups_per_dim)?;
    let wanted = entry_bindings(&key, "main");
    for c in chunks {
        let mut params = bound.params;
        params.row_start = c.start;
        params.row_count = c.count;
        params.wg_x = c.x;
        let ub = launch::uniform(ctx, &params);
        let slots = launch::common_slots(ctx, bound, &ub);
        let bg = launch::bind_group(ctx, &compiled, &slots, wanted);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("wgpu-attention memeff"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&compiled.pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(c.x, c.y, 1);
    }
    Ok(())
}
