//! Operations: what a call records through the kernels (planning, splitting, staging,
//! folding), on a [`crate::runtime::Runtime`], into an encoder. Submitting and waiting is
//! the facade's ([`crate::Context`]).

pub(crate) mod attention;
pub(crate) mod backward;
pub(crate) mod merge;
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod tune;
