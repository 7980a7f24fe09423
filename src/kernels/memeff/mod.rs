//! Host side of the memory-efficient shader (`shaders/memeff.wgsl`).

use crate::data::problem::Problem;
use crate::data::tensor::{DType, TensorView};
use crate::error::{Result, TensorRole};
use crate::kernels::attention::params::flags;
use crate::kernels::attention::{self, Bound};
use crate::kernels::{merge, spec};
use crate::plan::dispatch::MEMEFF_THREADS;
use crate::plan::variant::{ModuleKey, ShaderVariant};
use crate::runtime::Runtime;

/// Records the memory-efficient kernel: one workgroup per (batch, head, query row), and
/// with `splits > 1` (the decode path) one per key split too, followed by the merge.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    p: &Problem,
    variant: ShaderVariant,
    bound: &Bound,
    splits: u32,
    out: &TensorView,
    lse_out: Option<&TensorView>,
) -> Result<()> {
    if splits > 1 {
        return record_split(rt, encoder, p, variant, bound, splits, out, lse_out);
    }
    dispatch(rt, encoder, p, variant, bound, 1)
}

fn dispatch(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    p: &Problem,
    variant: ShaderVariant,
    bound: &Bound,
    splits: u32,
) -> Result<()> {
    let key = ModuleKey::Attention {
        variant,
        counters: false,
    };
    let compiled = rt.pipeline(key, "main", || spec(&key, "main"))?;
    let n = p.batch as u64 * p.heads_q as u64 * p.seq_q as u64 * splits as u64;
    attention::launch_grid(
        rt,
        encoder,
        "wgpu-attention memeff",
        &compiled,
        bound,
        n,
        &[],
    )
}

/// The decode path: partial outputs and log-sum-exps of every key split go to f32 scratch
/// buffers `[splits, B, H, Sq, (Dv)]`, then the merge shader combines them into `out`.
#[allow(clippy::too_many_arguments)]
fn record_split(
    rt: &Runtime,
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
    let so = rt.scratch(
        "wgpu-attention decode partial outputs",
        part * splits as u64 * 4,
    )?;
    let sl = rt.scratch(
        "wgpu-attention decode partial lse",
        lpart * splits as u64 * 4,
    )?;
    let o_view = TensorView::bhsd(so.clone(), DType::F32, [b, h, s, dv]);
    let l_view = TensorView::bhsd(sl.clone(), DType::F32, [b, h, s, 1]);
    let mut split_bound = Bound {
        o: attention::window(
            rt,
            &TensorView::bhsd(so, DType::F32, [splits as usize, b, h, s * dv]),
            TensorRole::Output,
        )?,
        lse: Some(attention::window(
            rt,
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
    dispatch(rt, encoder, p, variant, &split_bound, splits)?;
    merge::record(
        rt,
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
