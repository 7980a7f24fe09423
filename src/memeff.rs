//! Host side of the memory-efficient shader (`shaders/memeff.wgsl`).

use crate::context::Context;
use crate::dispatch::{MEMEFF_THREADS, ShaderVariant};
use crate::error::{Result, TensorRole};
use crate::launch::{self, Bound};
use crate::merge;
use crate::params::flags;
use crate::pipeline::{ModuleKey, entry_bindings};
use crate::tensor::{DType, TensorView};
use crate::validate::Problem;

/// Records the memory-efficient kernel: one workgroup per (batch, head, query row), and
/// with `splits > 1` (the decode path) one per key split too, followed by the merge.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    p: &Problem,
    variant: ShaderVariant,
    bound: &Bound,
    splits: u32,
    out: &TensorView,
    lse_out: Option<&TensorView>,
) -> Result<()> {
    if splits > 1 {
        return record_split(ctx, encoder, p, variant, bound, splits, out, lse_out);
    }
    dispatch(ctx, encoder, p, variant, bound, 1)
}

fn dispatch(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    p: &Problem,
    variant: ShaderVariant,
    bound: &Bound,
    splits: u32,
) -> Result<()> {
    let key = ModuleKey::Attention(variant);
    let compiled = ctx.pipeline(key, "main")?;
    let n = p.batch as u64 * p.heads_q as u64 * p.seq_q as u64 * splits as u64;
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
        launch::dispatch(encoder, "wgpu-attention memeff", &compiled, &bg, c.x, c.y);
    }
    Ok(())
}

/// The decode path: partial outputs and log-sum-exps of every key split go to f32 scratch
/// buffers `[splits, B, H, Sq, (Dv)]`, then the merge shader combines them into `out`.
#[allow(clippy::too_many_arguments)]
fn record_split(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    p: &Problem,
    variant: ShaderVariant,
    bound: &Bound,
    splits: u32,
    out: &TensorView,
    lse_out: Option<&TensorView>,
) -> Result<()> {
    let (b, h, s, dv) = (p.batch, p.heads_q, p.seq_q, p.head_dim_v);
    let part = (b * h * s * dv) as u64;
    let lpart = (b * h * s) as u64;
    let scratch = |n: u64, label: &str| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: n.max(1) * 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let so = scratch(
        part * splits as u64,
        "wgpu-attention decode partial outputs",
    );
    let sl = scratch(lpart * splits as u64, "wgpu-attention decode partial lse");
    let o_view = TensorView::bhsd(so.clone(), DType::F32, [b, h, s, dv]);
    let l_view = TensorView::bhsd(sl.clone(), DType::F32, [b, h, s, 1]);
    let mut split_bound = Bound {
        o: launch::window(
            ctx,
            &TensorView::bhsd(so, DType::F32, [splits as usize, b, h, s * dv]),
            TensorRole::Output,
        )?,
        lse: Some(launch::window(
            ctx,
            &TensorView::bhsd(sl, DType::F32, [splits as usize, b, h, s]),
            TensorRole::Lse,
        )?),
        ..bound.clone()
    };
    let pr = &mut split_bound.params;
    let keys_per_split =
        (p.seq_k as u32).div_ceil(splits).div_ceil(MEMEFF_THREADS) * MEMEFF_THREADS;
    pr.n_splits = splits;
    pr.split_len = keys_per_split;
    pr.flags = (pr.flags & !(3 << flags::DT_O)) | flags::LSE;
    pr.o = [0, (h * s * dv) as u32, (s * dv) as u32, dv as u32, 1];
    pr.o_split = part as u32;
    pr.lse = [0, (h * s) as u32, s as u32, 1];
    pr.l_split = lpart as u32;
    dispatch(ctx, encoder, p, variant, &split_bound, splits)?;
    merge::record(
        ctx,
        encoder,
        merge::Input {
            o: &o_view,
            lse: &l_view,
            parts: splits,
            o_part_stride: part as u32,
            lse_part_stride: lpart as u32,
        },
        None,
        out,
        lse_out,
    )
}
