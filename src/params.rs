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
    pub const LSE: u32 = 1024;
    pub const VARLEN: u32 = 2048;
    pub const KV_PAIRS: u32 = 4096;
    /// A part of a split call: local lengths, and per-batch diagonal offsets in aux.
    pub const DIAG: u32 = 8192;
    /// Two-bit storage dtype codes (0 f32, 1 f16, 2 bf16) at these shifts.
    pub const DT_Q: u32 = 16;
    pub const DT_K: u32 = 18;
    pub const DT_V: u32 = 20;
    pub const DT_O: u32 = 22;
    pub const DT_BIAS: u32 = 24;
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
    /// LSE output: offset and strides (b, h, s), in f32 elements.
    pub lse: [u32; 4],
    pub cuq_off: u32,
    pub cuk_off: u32,
    pub n_splits: u32,
    pub split_len: u32,
    pub o_split: u32,
    pub l_split: u32,
    /// With [`flags::DIAG`]: where the per-batch diagonal offsets (i32) start in aux.
    pub diag_off: u32,
    pub _pad: [u32; 3],
}

const _: () = assert!(std::mem::size_of::<AttnParams>() == 68 * 4);
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

/// `(WGSL struct name, size in bytes)` of every parameter block, for the test that checks
/// each against the size naga computes for its WGSL mirror.
#[doc(hidden)]
pub fn param_block_sizes() -> [(&'static str, usize); 3] {
    [
        ("Params", std::mem::size_of::<AttnParams>()),
        ("SummaryParams", std::mem::size_of::<SummaryParams>()),
        ("MergeParams", std::mem::size_of::<MergeParams>()),
    ]
}
