//! The pure planning layer: validation, the dispatcher, the closed set of variants, the
//! splitting of calls too large for one binding, and the tuning table. Plain data in, plain
//! data out: nothing here touches a device.

pub mod backward;
pub mod dispatch;
pub mod split;
pub mod tuning;
pub mod validate;
pub mod variant;
