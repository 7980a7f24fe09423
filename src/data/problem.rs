//! The validated problem: what the planning layer decides from, as plain data.

use crate::data::mask::{CausalAlignment, Window};
use crate::data::tensor::DType;

/// The mask kinds of a call, as plain data (no buffers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MaskKinds {
    /// Causal masking.
    pub causal: bool,
    /// Diagonal alignment.
    pub alignment: CausalAlignment,
    /// Per-batch key lengths are given.
    pub key_lengths: bool,
    /// Per-batch query lengths are given.
    pub query_lengths: bool,
    /// A sliding window.
    pub window: Option<Window>,
    /// A boolean mask tensor is given.
    pub bool_mask: bool,
    /// The dtype of the additive bias, if any.
    pub bias: Option<DType>,
    /// ALiBi slopes are given.
    pub alibi: bool,
}

impl MaskKinds {
    /// Whether any kind is set.
    pub fn any(&self) -> bool {
        self.causal
            || self.key_lengths
            || self.query_lengths
            || self.window.is_some()
            || self.bool_mask
            || self.bias.is_some()
            || self.alibi
    }

    /// Whether a kind adds a term read at run time to every visible score (an additive bias,
    /// ALiBi), as opposed to kinds that bound each row's key range or hide single keys.
    pub fn score_terms(&self) -> bool {
        self.bias.is_some() || self.alibi
    }
}

/// A validated attention problem: shapes, dtypes, scale and mask kinds.
///
/// This is what the dispatcher ([`crate::plan::dispatch::plan`]) decides from; it can be
/// built by hand to ask what would run without any GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// Batch size.
    pub batch: usize,
    /// Query heads.
    pub heads_q: usize,
    /// Key/value heads (a divisor of `heads_q`: GQA/MQA).
    pub heads_kv: usize,
    /// Query sequence length.
    pub seq_q: usize,
    /// Key/value sequence length.
    pub seq_k: usize,
    /// Head dim of Q and K.
    pub head_dim_qk: usize,
    /// Head dim of V and the output.
    pub head_dim_v: usize,
    /// Dtype of Q.
    pub dtype_q: DType,
    /// Dtype of K.
    pub dtype_k: DType,
    /// Dtype of V.
    pub dtype_v: DType,
    /// Dtype of the output.
    pub dtype_o: DType,
    /// The softmax scale in use.
    pub scale: f32,
    /// The mask kinds.
    pub mask: MaskKinds,
    /// A packed variable-length batch (`seq_q`/`seq_k` are then the longest sequences).
    pub varlen: bool,
    /// A log-sum-exp output is requested.
    pub lse: bool,
    /// Logits are soft-capped ([`crate::AttentionOptions::softcap`]).
    pub softcap: bool,
    /// Rows have attention sinks ([`crate::AttentionOptions::sinks`]).
    pub sinks: bool,
    /// K and V are read through a page table ([`crate::PagedKv`]).
    pub paged: bool,
}

impl Problem {
    /// A problem with these shapes, f32 everywhere, no mask, default scale.
    pub fn new(batch: usize, heads: usize, seq_q: usize, seq_k: usize, head_dim: usize) -> Self {
        Problem {
            batch,
            heads_q: heads,
            heads_kv: heads,
            seq_q,
            seq_k,
            head_dim_qk: head_dim,
            head_dim_v: head_dim,
            dtype_q: DType::F32,
            dtype_k: DType::F32,
            dtype_v: DType::F32,
            dtype_o: DType::F32,
            scale: 1.0 / (head_dim as f32).sqrt(),
            mask: MaskKinds::default(),
            varlen: false,
            lse: false,
            softcap: false,
            sinks: false,
            paged: false,
        }
    }

    /// Floating-point operations counted as `4 * b * h * sq * sk * d` (masked or not).
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.heads_q * self.seq_q * self.seq_k) as f64
            * (self.head_dim_qk + self.head_dim_v) as f64
    }
}

/// The longest sequence a call may have (keeps every shader loop counter and diagonal
/// offset far from 32-bit overflow).
pub const MAX_SEQ: usize = 1 << 30;

/// The largest softmax scale a call takes, in magnitude (2^32); a larger one is refused
/// with [`InputProblem::OutOfRange`](crate::error::InputProblem::OutOfRange). Scores
/// `scale · q·k (+ bias)` are computed in f32, as in PyTorch: under this bound no score of
/// f16 inputs can overflow (|q·k| ≤ 512 · 65504² < f32::MAX / 2^32), while a scale near
/// `f32::MAX` would turn every score into ±inf and the output into NaN where the exact
/// result is finite. With f32 or bf16 inputs the scores must still be finite in f32.
pub const MAX_SCALE: f32 = 4_294_967_296.0;
