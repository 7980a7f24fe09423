#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The layers, from the bottom: `error` and `gate` (no dependencies), plain data (`data`),
// the pure planning layer (`plan`), the runtime (`runtime`: device handle, pipeline cache,
// ring, submission), the kernels (`kernels`, one folder per family), the operations that
// record a call through them (`ops`), and the facade (`context`, `kvcache`). Each imports
// only from the layers below it (`tests/layers.rs` checks).

mod context;
pub(crate) mod data;
pub mod error;
mod gate;
#[doc = include_str!("../docs/guide.md")]
pub mod guide {}
pub(crate) mod kernels;
mod kvcache;
mod ops;
pub(crate) mod plan;
pub mod reference;
pub(crate) mod runtime;

/// The crate's wgpu, re-exported: build your device and buffers with this one.
pub use wgpu;

/// The dispatcher: a pure function from (problem, device capabilities, options) to (backend,
/// shader variant, reason), and the plans it makes.
pub mod dispatch {
    pub use crate::plan::backward::{BackwardPlan, plan_backward};
    pub use crate::plan::dispatch::{
        DeviceCaps, FLASH_HEAD_DIMS, MEMEFF_HEAD_DIMS, Plan, coop_variant, plan,
    };
    pub use crate::plan::variant::{
        BackwardTile, CoopTile, Cost, Family, FlashTile, MemEffConfig, ShaderVariant, UnrolledTile,
    };
}
/// The limits validation applies, and what it makes of a call's mask.
pub mod validate {
    pub use crate::data::problem::{MAX_SCALE, MAX_SEQ, MaskKinds};
}
/// Per-adapter tuning of the flash tiles.
pub mod tuning {
    pub use crate::plan::tuning::{ShapeBucket, TuneReport};
}

pub use context::Context;
#[cfg(all(feature = "test-hooks", not(target_arch = "wasm32")))]
pub use context::KernelCounts;
pub use data::backward::{BackwardInputs, GradientViews, Gradients};
pub use data::block_mask::BlockMask;
pub use data::mask::{BoolMask, CausalAlignment, Mask, Window};
pub use data::options::{AttentionOptions, Backend, KvScales, PagedKv, Subgroups, Tuning, Varlen};
pub use data::problem::Problem;
pub use data::quant;
pub use data::tensor::{DType, Tensor, TensorView};
pub use error::{Error, Result};
pub use gate::DeviceGuard;
pub use kvcache::KvCache;
pub use kvcache::paged::{PagedKvCache, SeqId};
pub use runtime::ResourceCounts;
pub use runtime::arena::{BIND_GROUPS_KEPT, RING_CALLS};
pub use runtime::open::OPTIONAL_FEATURES;

/// Test hooks (feature `test-hooks`): shader sources, binding and parameter tables for the
/// naga checks. Not part of the public API.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod test_hooks {
    pub use crate::kernels::{all_sources_for, backward_sources, binding_table, param_layouts};
    /// The dispatcher's tuning constants and helpers, which tests pin.
    pub use crate::plan::backward::{
        BACKWARD_AUX_TILE, BACKWARD_BLOCKS, BACKWARD_WIDE_THREADS_PER_ROW, CPU_PER_THREAD,
        backward_tile,
    };
    pub use crate::plan::dispatch::*;
    pub use crate::plan::variant::BackwardTile;
}
