#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod blockmask;
mod context;
pub mod dispatch;
pub mod error;
mod flash;
mod flash_unrolled;
mod gate;
#[doc = include_str!("../docs/guide.md")]
pub mod guide {}
pub mod kvcache;
mod launch;
pub mod mask;
mod memeff;
mod merge;
mod naive;
pub mod options;
mod params;
#[doc(hidden)]
pub use params::param_block_sizes;
pub mod pipeline;
pub mod reference;
mod split;
pub mod tensor;
pub mod tuning;
pub mod validate;

pub use blockmask::BlockMask;
pub use context::{Context, KernelCounts, OPTIONAL_FEATURES};
pub use dispatch::{Cost, DeviceCaps, Plan, ShaderVariant};
pub use error::{Error, Result};
pub use gate::DeviceGuard;
pub use kvcache::KvCache;
pub use mask::{CausalAlignment, Mask, Window};
pub use options::{AttentionOptions, Backend, Subgroups, Tuning, Varlen};
pub use tensor::{DType, Tensor, TensorView};
pub use tuning::{ShapeBucket, TuneReport};
pub use validate::Problem;
