//! Plain data: tensor views, masks, options and the validated problem.

pub mod backward;
pub mod block_mask;
pub mod mask;
pub mod options;
pub mod problem;
pub mod quant;
pub mod tensor;
