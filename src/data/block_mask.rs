//! Block summaries of boolean masks (the idea of FlexAttention's `BlockMask`).
//!
//! For every block of [`SUMMARY_BLOCK_Q`](crate::dispatch::SUMMARY_BLOCK_Q) query rows by
//! [`SUMMARY_BLOCK_K`](crate::dispatch::SUMMARY_BLOCK_K) keys the summary says: all masked
//! (the flash kernel skips the tile), all visible (it skips the per-element mask loads), or
//! mixed. It is computed on the GPU; compute it once per mask with
//! [`crate::Context::block_mask`] and reuse it across calls while the mask's contents stay
//! the same.

use crate::data::tensor::TensorView;
use crate::error::{Dim, Error, InputProblem, Result, TensorRole};
use crate::gate::Gated;

/// A precomputed block summary of a boolean mask.
#[derive(Clone, Debug)]
pub struct BlockMask {
    pub(crate) buffer: Gated<wgpu::Buffer>,
    pub(crate) words: u32,
    pub(crate) shape: [usize; 4],
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
