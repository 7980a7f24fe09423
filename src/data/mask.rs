//! The mask algebra: every kind can be combined with every other, and every backend
//! applies all of them.
//!
//! A key `j` is visible to query `i` of batch `b`, head `h` when **all** of these hold:
//!
//! | kind | rule | PyTorch equivalent |
//! |---|---|---|
//! | key lengths `kl` | `j < kl[b]` | bool mask with padding keys false |
//! | query lengths `ql` | `i < ql[b]`; rows at or past `ql[b]` give **zeros** | none (PyTorch would give NaN) |
//! | causal | `j <= i + off` | `is_causal=True` (top-left) |
//! | window `(left, right)` | `i + off - left <= j <= i + off + right` | a banded bool mask |
//! | bool mask `m` | `m[b, h, i, j] != 0` (**true = attend**, broadcast over batch/heads of size 1) | `attn_mask` of dtype bool |
//!
//! and each visible logit is `scale * q_i . k_j + bias[b, h, i, j] - slope[h] * |j - (i + off)|`
//! (bias: an additive float tensor like PyTorch's float `attn_mask`; the last term is ALiBi).
//!
//! `off` is the diagonal's offset, fixed by [`CausalAlignment`] and shared by causal,
//! window and ALiBi: `0` for top-left (PyTorch), `kv_len - q_len` for bottom-right
//! (FlashAttention), with `kv_len`/`q_len` the per-batch lengths when given, else `Sk`/`Sq`.
//!
//! ```text
//!  Sq = 3, Sk = 5          top-left (PyTorch is_causal)    bottom-right (FlashAttention)
//!                          k: 0 1 2 3 4                    k: 0 1 2 3 4
//!                     q0      x . . . .                       x x x . .
//!                     q1      x x . . .                       x x x x .
//!                     q2      x x x . .                       x x x x x
//!
//!  window (left=1, right=0), top-left:                 window (left=1, right=1), top-left:
//!                          k: 0 1 2 3 4                    k: 0 1 2 3 4
//!                     q0      x . . . .                       x x . . .
//!                     q1      x x . . .                       x x x . .
//!                     q2      . x x . .                       . x x x .
//! ```
//!
//! **Fully masked rows** (no visible key) give **zeros**, never NaN; PyTorch gives NaN.
//! **Finite sentinels** in the bias (WeNet's `-1e10`, transformers' `finfo.min`) are not masks:
//! a row whose every logit is such a sentinel gives the mean of V over its visible keys,
//! exactly as in PyTorch. A bias of `-inf` masks that element like `false` in a bool mask.
//! More generally **every non-finite logit is masked**: NaN or ±inf, whether it comes from Q·K
//! (a NaN or infinity in Q or K), from the bias (`-inf`, `+inf`, NaN) or from their sum, takes
//! no part in the softmax (PyTorch would give NaN).

use crate::data::tensor::TensorView;

/// Where the causal diagonal (and the window and ALiBi centre) lies when `Sq != Sk`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CausalAlignment {
    /// Query `i` sees keys `0..=i` (PyTorch's `is_causal`).
    #[default]
    TopLeft,
    /// Query `i` sees keys `0..=i + (Sk - Sq)`: the last query sees every key
    /// (FlashAttention; what a decoder with a KV cache needs).
    BottomRight,
}

/// A sliding window around the (aligned) diagonal. `None` on a side means unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Window {
    /// Keys at most this far before the diagonal are visible.
    pub left: Option<u32>,
    /// Keys at most this far after the diagonal are visible.
    pub right: Option<u32>,
}

/// A boolean mask tensor (dtype [`crate::DType::Bool`], shape `[B|1, H|1, Sq, Sk]`,
/// non-zero = attend), optionally with a precomputed block summary.
#[derive(Clone, Debug)]
pub struct BoolMask {
    /// The mask.
    pub view: TensorView,
    /// A summary computed earlier with [`crate::Context::block_mask`] for this mask's
    /// current contents. Without one, the flash backend computes it on the fly (one small
    /// extra dispatch per call).
    pub summary: Option<crate::data::block_mask::BlockMask>,
}

/// Any combination of mask kinds. Build it with the chained methods:
///
/// ```
/// use wgpu_attention::{Mask, CausalAlignment};
/// let mask = Mask::none()
///     .causal(CausalAlignment::BottomRight)
///     .key_lengths(vec![7, 3])
///     .window(Some(128), Some(0));
/// assert!(mask.is_causal());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Mask {
    pub(crate) causal: bool,
    pub(crate) alignment: CausalAlignment,
    pub(crate) key_lengths: Option<Vec<u32>>,
    pub(crate) query_lengths: Option<Vec<u32>>,
    pub(crate) window: Option<Window>,
    pub(crate) bool_mask: Option<BoolMask>,
    pub(crate) bias: Option<TensorView>,
    pub(crate) alibi_slopes: Option<Vec<f32>>,
}

impl Mask {
    /// No mask.
    pub fn none() -> Self {
        Self::default()
    }

    /// Causal, with the given alignment (which also aligns the window and ALiBi).
    pub fn causal(mut self, alignment: CausalAlignment) -> Self {
        self.causal = true;
        self.alignment = alignment;
        self
    }

    /// Sets the diagonal's alignment without making the mask causal (for windows and ALiBi).
    pub fn with_alignment(mut self, alignment: CausalAlignment) -> Self {
        self.alignment = alignment;
        self
    }

    /// Per-batch numbers of valid keys: keys at or past `len[b]` are masked.
    pub fn key_lengths(mut self, lengths: Vec<u32>) -> Self {
        self.key_lengths = Some(lengths);
        self
    }

    /// Per-batch numbers of valid queries: rows at or past `len[b]` give zeros.
    pub fn query_lengths(mut self, lengths: Vec<u32>) -> Self {
        self.query_lengths = Some(lengths);
        self
    }

    /// A sliding window around the diagonal; `None` on a side means unbounded.
    pub fn window(mut self, left: Option<u32>, right: Option<u32>) -> Self {
        self.window = Some(Window { left, right });
        self
    }

    /// A boolean mask tensor, true (non-zero) = attend.
    pub fn bool_mask(mut self, view: TensorView) -> Self {
        self.bool_mask = Some(BoolMask {
            view,
            summary: None,
        });
        self
    }

    /// A boolean mask tensor with a block summary computed earlier for it.
    pub fn bool_mask_with_summary(
        mut self,
        view: TensorView,
        summary: crate::data::block_mask::BlockMask,
    ) -> Self {
        self.bool_mask = Some(BoolMask {
            view,
            summary: Some(summary),
        });
        self
    }

    /// An additive float bias (f32 or f16), shape `[B|1, H|1, Sq, Sk]`.
    pub fn bias(mut self, view: TensorView) -> Self {
        self.bias = Some(view);
        self
    }

    /// ALiBi slopes, one per query head.
    pub fn alibi(mut self, slopes: Vec<f32>) -> Self {
        self.alibi_slopes = Some(slopes);
        self
    }

    /// Whether the mask is causal.
    pub fn is_causal(&self) -> bool {
        self.causal
    }

    /// The diagonal's alignment.
    pub fn alignment(&self) -> CausalAlignment {
        self.alignment
    }

    /// Whether no mask kind is set.
    pub fn is_empty(&self) -> bool {
        !self.causal
            && self.key_lengths.is_none()
            && self.query_lengths.is_none()
            && self.window.is_none()
            && self.bool_mask.is_none()
            && self.bias.is_none()
            && self.alibi_slopes.is_none()
    }

    /// A short description of the kinds set, such as `"causal(top-left)+key_lengths"`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.causal {
            parts.push(match self.alignment {
                CausalAlignment::TopLeft => "causal(top-left)".to_string(),
                CausalAlignment::BottomRight => "causal(bottom-right)".to_string(),
            });
        }
        if self.key_lengths.is_some() {
            parts.push("key_lengths".into());
        }
        if self.query_lengths.is_some() {
            parts.push("query_lengths".into());
        }
        if let Some(w) = self.window {
            parts.push(format!("window({:?},{:?})", w.left, w.right));
        }
        if self.bool_mask.is_some() {
            parts.push("bool_mask".into());
        }
        if self.bias.is_some() {
            parts.push("bias".into());
        }
        if self.alibi_slopes.is_some() {
            parts.push("alibi".into());
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("+")
        }
    }
}
