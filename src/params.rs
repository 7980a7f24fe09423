//! `#[repr(C)]` parameter blocks, mirrored field by field in the shaders.

use bytemuck::{Pod, Zeroable};

/// Flags of [`AttnParams::flags`] (same values as the `F_*` constants in `common.wgsl`).
pub(crate) mod flags {
    pub const CAUSAL: u32 = 1;
    pub const BOTTOM_RIGHT: u32 = 2;
    pub const KLEN: u32 = 4;
    pub const QLEN: u32 = 8;
    pub const WLEFT: u32 = 16;
    pub const WRIGHT: u32 = 32;
    pub const BOOL: u32 = 64;
    pub const BIAS: u32 = 128;
    pub const ALIBI: u32 = 256;
    pub const SUMMARY: u32 = 512;
    pub const Q16: u32 = 1024;
    pub const K16: u32 = 2048;
    pub const V16: u32 = 4096;
    pub const O16: u32 = 8192;
    pub const BIAS16: u32 = 16384;
}

/// The `Params` uniform of `shaders/common.wgsl` (flash, memory-efficient and naive).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct AttnParams {
    pub batch: u32,
    pub heads_q: u32,
    pub heads_kv: u32,
    pub seq_q: u32,
    pub seq_k: u32,
    pub dk: u32,
    pub dv: u32,
    pub flags: u32,
    pub scale: f32,
    pub wleft: u32,
    pub wright: u32,
    pub group: u32,
    /// Q: offset and strides (b, h, s, d), in elements.
    pub q: [u32; 5],
    pub k: [u32; 5],
    pub v: [u32; 5],
    pub o: [u32; 5],
    /// Bool mask: offset and strides (b, h, q, k), in bytes.
    pub m: [u32; 5],
    /// Bias: offset and strides (b, h, q, k), in elements.
    pub bias: [u32; 5],
    pub qlen_off: u32,
    pub klen_off: u32,
    pub alibi_off: u32,
    pub sum_off: u32,
    pub sum_nqb: u32,
    pub sum_nkb: u32,
    pub sum_sb: u32,
    pub sum_sh: u32,
    pub row_start: u32,
    pub row_count: u32,
    pub wg_x: u32,
    pub scratch_stride: u32,
    pub _pad: [u32; 2],
}

const _: () = assert!(std::mem::size_of::<AttnParams>() == 56 * 4);
const _: () = assert!(std::mem::size_of::<AttnParams>().is_multiple_of(16));

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
