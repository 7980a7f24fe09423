//! The backward pass's tensors: what the forward saved, and where the gradients go.

use crate::data::tensor::{Tensor, TensorView};

/// What [`Context::attention_backward`](crate::Context::attention_backward) reads: the
/// forward call's inputs, its output and log-sum-exp, and the gradient of the loss with
/// respect to that output.
///
/// `out` and `lse` must come from the forward call with the same options (the log-sum-exp
/// through [`AttentionOptions::lse_output`](crate::AttentionOptions::lse_output)): the
/// backward pass recomputes the attention weights from them instead of storing them.
#[derive(Clone, Copy, Debug)]
pub struct BackwardInputs<'a> {
    /// Q, `[B, Hq, Sq, Dk]`.
    pub q: &'a TensorView,
    /// K, `[B, Hkv, Sk, Dk]`.
    pub k: &'a TensorView,
    /// V, `[B, Hkv, Sk, Dv]`.
    pub v: &'a TensorView,
    /// The forward's output O, `[B, Hq, Sq, Dv]`.
    pub out: &'a TensorView,
    /// dO, the gradient of the loss with respect to O: O's shape, any float dtype.
    pub d_out: &'a TensorView,
    /// The forward's log-sum-exp, f32 `[B, Hq, Sq, 1]`.
    pub lse: &'a TensorView,
}

/// Where [`Context::attention_backward_into`](crate::Context::attention_backward_into)
/// writes the gradients: each with the shape of its input, any float dtype and layout.
#[derive(Clone, Debug)]
pub struct GradientViews {
    /// dQ, Q's shape.
    pub dq: TensorView,
    /// dK, K's shape: summed over the query heads that share each KV head.
    pub dk: TensorView,
    /// dV, V's shape: summed likewise.
    pub dv: TensorView,
    /// The additive bias's gradient, the bias's shape (summed over the dimensions it
    /// broadcasts over); `None` skips it. Only with [`Mask::bias`](crate::Mask::bias).
    pub dbias: Option<TensorView>,
    /// The attention sinks' gradient, `[1, Hq, 1, 1]` (summed over batch items and rows);
    /// `None` skips it. Only with [`AttentionOptions::sinks`](crate::AttentionOptions::sinks).
    pub dsink: Option<TensorView>,
}

/// The gradients [`Context::attention_backward`](crate::Context::attention_backward)
/// allocates: each contiguous BHSD in its input's dtype.
#[derive(Debug)]
pub struct Gradients {
    /// dQ.
    pub dq: Tensor,
    /// dK.
    pub dk: Tensor,
    /// dV.
    pub dv: Tensor,
    /// The bias gradient, when the mask has an additive bias.
    pub dbias: Option<Tensor>,
    /// The sinks' gradient (f32, `[1, Hq, 1, 1]`), when the call has sinks.
    pub dsink: Option<Tensor>,
}

impl Gradients {
    /// The views to write, for [`Context::attention_backward_into`](crate::Context::attention_backward_into).
    pub fn views(&self) -> GradientViews {
        GradientViews {
            dq: self.dq.view().clone(),
            dk: self.dk.view().clone(),
            dv: self.dv.view().clone(),
            dbias: self.dbias.as_ref().map(|t| t.view().clone()),
            dsink: self.dsink.as_ref().map(|t| t.view().clone()),
        }
    }
}
