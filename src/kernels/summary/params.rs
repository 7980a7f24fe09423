//! The `#[repr(C)]` parameter block of `shaders/block_summary.wgsl`, checked field by field
//! against its WGSL mirror (`tests/shaders.rs`).

use bytemuck::{Pod, Zeroable};

#[cfg(feature = "test-hooks")]
use crate::kernels::attention::params::spread;

/// The `SummaryParams` uniform of `shaders/block_summary.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct SummaryParams {
    /// Mask offset and strides (b, h, q, k), in bytes.
    pub m: [u32; 5],
    pub mb: u32,
    pub mh: u32,
    pub seq_q: u32,
    pub seq_k: u32,
    pub nqb: u32,
    pub nkb: u32,
    pub out_off: u32,
    pub wg_x: u32,
    pub n_blocks: u32,
    pub blk_base: u32,
    pub _pad: u32,
}

const _: () = assert!(std::mem::size_of::<SummaryParams>() == 16 * 4);

#[cfg(feature = "test-hooks")]
impl SummaryParams {
    /// `(WGSL field name, byte offset)` of every field, in order.
    pub(crate) fn fields() -> Vec<(String, usize)> {
        use std::mem::offset_of;
        let mut f = spread("m", offset_of!(Self, m), &["off", "sb", "sh", "sq", "sk"]);
        for (n, o) in [
            ("mb", offset_of!(Self, mb)),
            ("mh", offset_of!(Self, mh)),
            ("seq_q", offset_of!(Self, seq_q)),
            ("seq_k", offset_of!(Self, seq_k)),
            ("nqb", offset_of!(Self, nqb)),
            ("nkb", offset_of!(Self, nkb)),
            ("out_off", offset_of!(Self, out_off)),
            ("wg_x", offset_of!(Self, wg_x)),
            ("n_blocks", offset_of!(Self, n_blocks)),
            ("blk_base", offset_of!(Self, blk_base)),
            ("_pad0", offset_of!(Self, _pad)),
        ] {
            f.push((n.to_string(), o));
        }
        f
    }
}
