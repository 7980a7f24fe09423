//! Block summaries of boolean masks (the idea of FlexAttention's `BlockMask`).
//!
//! For every block of [`SUMMARY_BLOCK_Q`] query rows by [`SUMMARY_BLOCK_K`] keys the
//! summary says: all masked (the flash kernel skips the tile), all visible (it skips the
//! per-element mask loads), or mixed. It is computed on the GPU; compute it once per mask
//! with [`crate::Context::block_mask`] and reuse it across calls while the mask's contents
//! stay the same.

use crate::context::Context;
use crate::dispatch::{SUMMARY_BLOCK_K, SUMMARY_BLOCK_Q};
use crate::error::{Dim, Error, InputProblem, Result, TensorRole};
use crate::gate::Gated;
use crate::launch;
use crate::params::SummaryParams;
use crate::pipeline::{ModuleKey, entry_bindings};
use crate::tensor::{DType, TensorView};

/// A precomputed block summary of a boolean mask.
#[derive(Clone, Debug)]
pub struct BlockMask {
    buffer: Gated<wgpu::Buffer>,
    words: u32,
    shape: [usize; 4],
}

impl BlockMask {
    /// The shape of the mask it summarises.
    pub fn mask_shape(&self) -> [usize; 4] {
        self.shape
    }

    /// The summary's buffer: one u32 per block, 0 = all masked, 1 = all visible, 2 = mixed,
    /// ordered `[mask batch, mask heads, query block, key block]`.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    pub(crate) fn check_matches(&self, view: &TensorView) -> Result<()> {
        for i in 0..4 {
            if self.shape[i] != view.shape[i] {
                return Err(Error::invalid(
                    TensorRole::BoolMask,
                    InputProblem::ShapeMismatch {
                        dim: Dim::ALL[i],
                        expected: format!(
                            "{} (the shape its block summary was made for)",
                            self.shape[i]
                        ),
                        got: view.shape[i],
                    },
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn copy_into(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        dst: &wgpu::Buffer,
        offset_words: u32,
    ) {
        encoder.copy_buffer_to_buffer(
            &self.buffer,
            0,
            dst,
            offset_words as u64 * 4,
            self.words as u64 * 4,
        );
    }
}

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
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    view: &TensorView,
    out: &wgpu::Buffer,
    out_off: u32,
) -> Result<()> {
    let align = ctx.limits().min_storage_buffer_offset_alignment as u64;
    let max = ctx.caps().max_storage_binding;
    let fits = |v: &TensorView| launch::binding_size(v, align) <= max;
    if fits(view) {
        return record_one(ctx, encoder, view, out, out_off);
    }
    let (nqb, nkb, _) = counts(view);
    let [mb, mh, sq, _] = view.shape;
    for b in 0..mb {
        for h in 0..mh {
            let one = view.narrowed(0, b, 1).narrowed(1, h, 1);
            let base = out_off + ((b * mh + h) as u32 * nqb) * nkb;
            if fits(&one) {
                record_one(ctx, encoder, &one, out, base)?;
                continue;
            }
            let bq = SUMMARY_BLOCK_Q as usize;
            let mut r0 = 0;
            while r0 < sq {
                let rows = |blocks: usize| one.narrowed(2, r0, (blocks * bq).min(sq - r0));
                let left = (sq - r0).div_ceil(bq);
                let Some(blocks) = crate::split::largest(left, |n| fits(&rows(n))) else {
                    let needed = launch::binding_size(&rows(1), align);
                    return Err(Error::binding(TensorRole::BoolMask, needed, max));
                };
                record_one(
                    ctx,
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
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    view: &TensorView,
    out: &wgpu::Buffer,
    out_off: u32,
) -> Result<()> {
    let w = launch::window(ctx, view, TensorRole::BoolMask)?;
    let (nqb, nkb, n) = counts(view);
    let compiled = ctx.pipeline(ModuleKey::Summary, "main")?;
    let st = |i: usize| {
        if view.shape[i] > 1 {
            view.strides[i] as u32
        } else {
            0
        }
    };
    for c in launch::split_grid(n as u64, ctx.caps().max_workgroups_per_dim)? {
        let params = SummaryParams {
            m: [w.elem_off, st(0), st(1), st(2), st(3)],
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
        let ub = launch::uniform(ctx, &params);
        let slots = [
            (0, ub.as_entire_binding()),
            (1, w.binding()),
            (2, out.as_entire_binding()),
        ];
        let bg = launch::bind_group(
            ctx,
            &compiled,
            &slots,
            entry_bindings(&ModuleKey::Summary, "main"),
        );
        launch::dispatch(
            encoder,
            "wgpu-attention block summary",
            &compiled,
            &bg,
            c.x,
            c.y,
        );
    }
    Ok(())
}

/// Computes a summary into a buffer of its own.
pub(crate) fn create(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    view: &TensorView,
) -> Result<BlockMask> {
    if view.dtype != DType::Bool {
        return Err(Error::invalid(
            TensorRole::BoolMask,
            InputProblem::WrongDType {
                expected: "bool".into(),
                got: view.dtype.to_string(),
            },
        ));
    }
    if let Some(i) = view.shape.iter().position(|&n| n == 0) {
        return Err(Error::invalid(
            TensorRole::BoolMask,
            InputProblem::ZeroDim { dim: Dim::ALL[i] },
        ));
    }
    view.check_memory(TensorRole::BoolMask, wgpu::BufferUsages::STORAGE)?;
    let (_, _, n) = counts(view);
    let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("wgpu-attention block mask"),
        size: (n.max(1) as u64) * 4,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    record(ctx, encoder, view, &buffer, 0)?;
    Ok(BlockMask {
        buffer: Gated::new(buffer, ctx.gate().cloned()),
        words: n,
        shape: view.shape,
    })
}
