//! The `#[repr(C)]` parameter block of `shaders/merge.wgsl`, checked field by field
//! against its WGSL mirror (`tests/shaders.rs`).

use bytemuck::{Pod, Zeroable};

#[cfg(feature = "test-hooks")]
use crate::kernels::attention::params::spread;

/// The `MergeParams` uniform of `shaders/merge.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct MergeParams {
    pub batch: u32,
    pub heads: u32,
    pub seq: u32,
    pub dv: u32,
    pub n_a: u32,
    pub n_b: u32,
    pub flags: u32,
    pub wg_x: u32,
    /// O of input A: offset, part stride, strides (b, h, s, d).
    pub a: [u32; 6],
    pub b: [u32; 6],
    /// Output: offset, strides (b, h, s, d).
    pub o: [u32; 5],
    /// LSE of input A: offset, part stride, strides (b, h, s).
    pub la: [u32; 5],
    pub lb: [u32; 5],
    /// LSE output: offset, strides (b, h, s).
    pub lo: [u32; 4],
    pub _pad: u32,
}

const _: () = assert!(std::mem::size_of::<MergeParams>() == 40 * 4);
const _: () = assert!(std::mem::size_of::<MergeParams>().is_multiple_of(16));

#[cfg(feature = "test-hooks")]
impl MergeParams {
    /// `(WGSL field name, byte offset)` of every field, in order.
    pub(crate) fn fields() -> Vec<(String, usize)> {
        use std::mem::offset_of;
        let mut f: Vec<(String, usize)> = [
            ("batch", offset_of!(Self, batch)),
            ("heads", offset_of!(Self, heads)),
            ("seq", offset_of!(Self, seq)),
            ("dv", offset_of!(Self, dv)),
            ("n_a", offset_of!(Self, n_a)),
            ("n_b", offset_of!(Self, n_b)),
            ("flags", offset_of!(Self, flags)),
            ("wg_x", offset_of!(Self, wg_x)),
        ]
        .into_iter()
        .map(|(n, o)| (n.to_string(), o))
        .collect();
        let o = ["off", "ps", "sb", "sh", "ss", "sd"];
        f.extend(spread("a", offset_of!(Self, a), &o));
        f.extend(spread("b", offset_of!(Self, b), &o));
        f.extend(spread(
            "o",
            offset_of!(Self, o),
            &["off", "sb", "sh", "ss", "sd"],
        ));
        let l = ["off", "ps", "sb", "sh", "ss"];
        f.extend(spread("la", offset_of!(Self, la), &l));
        f.extend(spread("lb", offset_of!(Self, lb), &l));
        f.extend(spread(
            "lo",
            offset_of!(Self, lo),
            &["off", "sb", "sh", "ss"],
        ));
        f.push(("_pad0".to_string(), offset_of!(Self, _pad)));
        f
    }
}
