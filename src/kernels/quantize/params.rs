//! The `#[repr(C)]` parameter block of `shaders/kv_append.wgsl`, checked field by field
//! against its WGSL mirror (`tests/shaders.rs`).

use bytemuck::{Pod, Zeroable};

#[cfg(feature = "test-hooks")]
use crate::kernels::attention::params::spread;

/// The `QuantParams` uniform of `shaders/kv_append.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct QuantParams {
    pub seqs: u32,
    pub heads: u32,
    pub n: u32,
    pub d: u32,
    /// The cache's format ([`crate::DType`]'s K/V code: 1 q8_0 .. 5 e5m2).
    pub fmt: u32,
    /// The new rows' storage dtype code (0 f32, 1 f16, 2 bf16).
    pub src_dt: u32,
    pub wg_x: u32,
    /// Destination rows between one head's row and the next's.
    pub head_rows: u32,
    /// The new rows: element offset and strides (sequence, head, token, dim).
    pub src: [u32; 5],
    pub row_bytes: u32,
    /// Where i8's per-row scales start in the cache's buffer, in words.
    pub scale_word: u32,
    pub _pad: u32,
}

const _: () = assert!(std::mem::size_of::<QuantParams>() == 16 * 4);

#[cfg(feature = "test-hooks")]
impl QuantParams {
    /// `(WGSL field name, byte offset)` of every field, in order.
    pub(crate) fn fields() -> Vec<(String, usize)> {
        use std::mem::offset_of;
        let mut f: Vec<(String, usize)> = [
            ("seqs", offset_of!(Self, seqs)),
            ("heads", offset_of!(Self, heads)),
            ("n", offset_of!(Self, n)),
            ("d", offset_of!(Self, d)),
            ("fmt", offset_of!(Self, fmt)),
            ("src_dt", offset_of!(Self, src_dt)),
            ("wg_x", offset_of!(Self, wg_x)),
            ("head_rows", offset_of!(Self, head_rows)),
        ]
        .into_iter()
        .map(|(n, o)| (n.to_string(), o))
        .collect();
        f.extend(spread(
            "src",
            offset_of!(Self, src),
            &["off", "sb", "sh", "ss", "sd"],
        ));
        f.push(("row_bytes".into(), offset_of!(Self, row_bytes)));
        f.push(("scale_word".into(), offset_of!(Self, scale_word)));
        f.push(("_pad0".into(), offset_of!(Self, _pad)));
        f
    }
}
