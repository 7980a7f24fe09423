//! Per-call options.

use crate::mask::Mask;
use crate::tensor::DType;

/// Which shader family runs a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Let the dispatcher choose (see [`crate::Context::plan`]).
    #[default]
    Auto,
    /// Tiled flash attention with online softmax; K/V tiles in workgroup memory.
    Flash,
    /// Streams K/V with no score matrix and little workgroup memory.
    MemoryEfficient,
    /// Scores, softmax, then P·V: the exact reference.
    Naive,
}

impl Backend {
    /// Lower-case name used in logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Flash => "flash",
            Backend::MemoryEfficient => "memeff",
            Backend::Naive => "naive",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether shaders may use subgroup operations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Subgroups {
    /// Use them when the device has `SUBGROUP` and the variant benefits.
    #[default]
    Auto,
    /// Never use them.
    Off,
}

/// Options of one attention call.
#[derive(Clone, Debug, Default)]
pub struct AttentionOptions {
    /// Softmax scale; `None` means `1 / sqrt(head_dim)` (of Q/K).
    pub scale: Option<f32>,
    /// The mask (any combination of kinds).
    pub mask: Mask,
    /// Which backend runs the call.
    pub backend: Backend,
    /// Whether subgroup operations may be used.
    pub subgroups: Subgroups,
    /// Output dtype when the output is allocated by the call; `None` means the query's dtype.
    pub output_dtype: Option<DType>,
}

impl AttentionOptions {
    /// Default options with this mask.
    pub fn with_mask(mask: Mask) -> Self {
        AttentionOptions {
            mask,
            ..Default::default()
        }
    }

    /// Sets the backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Sets the scale.
    pub fn scale(mut self, scale: f32) -> Self {
        self.scale = Some(scale);
        self
    }

    /// Sets the mask.
    pub fn mask(mut self, mask: Mask) -> Self {
        self.mask = mask;
        self
    }
}
