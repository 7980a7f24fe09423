//! Host side of `shaders/block_summary.wgsl`: the block summary of a boolean mask (see
//! [`BlockMask`]), computed into a call's aux words or into a buffer of its own.

pub(crate) mod params;

use crate::data::block_mask::BlockMask;
use crate::data::tensor::TensorView;
use crate::error::{Error, Result, TensorRole};
use crate::gate::Gated;
use crate::kernels::{attention, bindings, launch_with_params, spec};
use crate::plan::dispatch::{SUMMARY_BLOCK_K, SUMMARY_BLOCK_Q};
use crate::plan::variant::ModuleKey;
use crate::runtime::Runtime;
use crate::runtime::arena::{MAX_BINDINGS, Range};
use params::SummaryParams;

fn counts(view: &TensorView) -> (u32, u32, u32) {
    let nqb = (view.shape[2] as u32).div_ceil(SUMMARY_BLOCK_Q);
    let nkb = (view.shape[3] as u32).div_ceil(SUMMARY_BLOCK_K);
    let n = view.shape[0] as u32 * view.shape[1] as u32 * nqb * nkb;
    (nqb, nkb, n)
}

/// Records the summary kernel for `view`, writing into `out` at `out_off` words. A mask
/// larger than one storage binding is summarised one (batch, head) at a time, and each of
/// those in runs of whole query blocks if it must.
pub(crate) fn record(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    view: &TensorView,
    out: &wgpu::Buffer,
    out_off: u32,
) -> Result<()> {
    let align = rt.limits().min_storage_buffer_offset_alignment as u64;
    let max = rt.caps().max_storage_binding;
    let fits = |v: &TensorView| crate::plan::split::binding_size(v, align) <= max;
    if fits(view) {
        return record_one(rt, encoder, view, out, out_off);
    }
    let (nqb, nkb, _) = counts(view);
    let [mb, mh, sq, _] = view.shape;
    for b in 0..mb {
        for h in 0..mh {
            let one = view.narrowed(0, b, 1).narrowed(1, h, 1);
            let base = out_off + ((b * mh + h) as u32 * nqb) * nkb;
            if fits(&one) {
                record_one(rt, encoder, &one, out, base)?;
                continue;
            }
            let bq = SUMMARY_BLOCK_Q as usize;
            let mut r0 = 0;
            while r0 < sq {
                let rows = |blocks: usize| one.narrowed(2, r0, (blocks * bq).min(sq - r0));
                let left = (sq - r0).div_ceil(bq);
                let Some(blocks) = crate::plan::split::largest(left, |n| fits(&rows(n))) else {
                    let needed = crate::plan::split::binding_size(&rows(1), align);
                    return Err(Error::binding(TensorRole::BoolMask, needed, max));
                };
                record_one(
                    rt,
                    encoder,
                    &rows(blocks),
                    out,
                    base + (r0 / bq) as u32 * nkb,
                )?;
                r0 += blocks * bq;
            }
        }
    }
    Ok(())
}

fn record_one(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    view: &TensorView,
    out: &wgpu::Buffer,
    out_off: u32,
) -> Result<()> {
    let w = attention::window(rt, view, TensorRole::BoolMask)?;
    let (nqb, nkb, n) = counts(view);
    let key = ModuleKey::Summary;
    let compiled = rt.pipeline(key, "main", || spec(&key, "main"))?;
    let m = attention::strides(view, &w);
    for c in attention::split_grid(n as u64, rt.caps().max_workgroups_per_dim)? {
        let params = SummaryParams {
            m,
            mb: view.shape[0] as u32,
            mh: view.shape[1] as u32,
            seq_q: view.shape[2] as u32,
            seq_k: view.shape[3] as u32,
            nqb,
            nkb,
            out_off,
            wg_x: c.x,
            n_blocks: n,
            blk_base: c.start,
            _pad: 0,
        };
        let mut e: [Option<Range>; MAX_BINDINGS] = Default::default();
        e[bindings::SUMMARY_MASK as usize] = Some(w.range());
        let words = (out_off + n) as u64 * 4;
        e[bindings::SUMMARY_OUT as usize] = Some((out.clone(), 0, words));
        let label = "wgpu-attention block summary";
        launch_with_params(rt, encoder, label, &compiled, &params, e, (c.x, c.y))?;
    }
    Ok(())
}

/// Computes a summary into a buffer of its own.
pub(crate) fn create(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    view: &TensorView,
) -> Result<BlockMask> {
    crate::plan::validate::block_mask(view)?;
    let _call = crate::runtime::arena::CallScope::begin();
    let (_, _, n) = counts(view);
    let buffer = rt.new_buffer(&wgpu::BufferDescriptor {
        label: Some("wgpu-attention block mask"),
        size: (n.max(1) as u64) * 4,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    record(rt, encoder, view, &buffer, 0)?;
    Ok(BlockMask {
        buffer: Gated::new(buffer, rt.gate().cloned()),
        words: n,
        shape: view.shape,
    })
}
