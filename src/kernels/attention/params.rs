//! The `#[repr(C)]` parameter block of the attention kernels (`Params` in
//! `shaders/common.wgsl`), checked field by field against its WGSL mirror (`tests/shaders.rs`).

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
    /// Attention sinks: one logit per query head in aux, at `sink_off`.
    pub const SINK: u32 = 16384;
    /// Soft-capped logits (`softcap`).
    pub const SOFTCAP: u32 = 32768;
    /// Two-bit storage dtype codes (0 f32, 1 f16, 2 bf16) at these shifts.
    pub const DT_Q: u32 = 16;
    pub const DT_K: u32 = 18;
    pub const DT_V: u32 = 20;
    pub const DT_O: u32 = 22;
    pub const DT_BIAS: u32 = 24;
    /// The backward pass's dO.
    pub const DT_DO: u32 = 26;
    /// K and V in pages through a page table in aux (`pt_off`, `page_size`, `pt_cols`).
    pub const PAGED: u32 = 1 << 28;
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
    /// The backward pass's dO: offset and strides (b, h, s, d), in elements.
    pub d_o: [u32; 5],
    /// Backward: where the (lse, D) pairs of the rows start in aux.
    pub stat_off: u32,
    /// Backward: the f32 scratch region a pass reads or accumulates (`finish`, naive dBias).
    pub g_off: u32,
    /// Backward: where dV's region starts in the f32 scratch (dK's is at 0).
    pub g_dv: u32,
    /// Backward `finish`: the scratch region's shape (batch, heads, rows, columns); naive
    /// passes: the chunk's first KV row (b * heads_kv + hk) and their count in the first two.
    pub fin: [u32; 4],
    /// Backward: the bias's batch and head sizes (1 where it broadcasts).
    pub bg_b: u32,
    pub bg_h: u32,
    /// With [`flags::SOFTCAP`]: the cap.
    pub softcap: f32,
    /// With [`flags::SINK`]: where the sink logits (f32 bits, one per query head) start in aux.
    pub sink_off: u32,
    /// With [`flags::PAGED`]: where the page table (`pt_cols` page indices per batch item)
    /// starts in aux, and the keys per page.
    pub pt_off: u32,
    pub page_size: u32,
    pub pt_cols: u32,
    /// Quantized K/V ([`crate::DType::is_quantized`]): the byte offsets of K's and V's first
    /// elements in their windows (the element offsets of `k` and `v` are then 0), where the
    /// per-head scales of the 8-bit floats start in aux (K's `heads_kv`, then V's), and the
    /// format's code (read by the naive kernel, built for every format).
    pub kq_byte: u32,
    pub vq_byte: u32,
    pub kvs_off: u32,
    pub kvq: u32,
    /// Per-token scales of i8 K and V: word offset in K's (V's) window and strides (b, h, s).
    pub ks: [u32; 4],
    pub vs: [u32; 4],
}

const _: () = assert!(std::mem::size_of::<AttnParams>() == 96 * 4);
const _: () = assert!(std::mem::size_of::<AttnParams>().is_multiple_of(16));

#[cfg(feature = "test-hooks")]
/// `(prefix_suffix, offset)` for each `u32` of an array field that the WGSL spells out as
/// separate fields.
pub(crate) fn spread(prefix: &str, at: usize, suffixes: &[&str]) -> Vec<(String, usize)> {
    suffixes
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("{prefix}_{s}"), at + 4 * i))
        .collect()
}

#[cfg(feature = "test-hooks")]
impl AttnParams {
    /// `(WGSL field name, byte offset)` of every field, in order.
    pub(crate) fn fields() -> Vec<(String, usize)> {
        use std::mem::offset_of;
        let one = |n: &str, o: usize| vec![(n.to_string(), o)];
        let view = ["off", "sb", "sh", "ss", "sd"];
        let scores = ["off", "sb", "sh", "sq", "sk"];
        [
            one("batch", offset_of!(Self, batch)),
            one("heads_q", offset_of!(Self, heads_q)),
            one("heads_kv", offset_of!(Self, heads_kv)),
            one("seq_q", offset_of!(Self, seq_q)),
            one("seq_k", offset_of!(Self, seq_k)),
            one("dk", offset_of!(Self, dk)),
            one("dv", offset_of!(Self, dv)),
            one("flags", offset_of!(Self, flags)),
            one("scale", offset_of!(Self, scale)),
            one("wleft", offset_of!(Self, wleft)),
            one("wright", offset_of!(Self, wright)),
            one("group", offset_of!(Self, group)),
            spread("q", offset_of!(Self, q), &view),
            spread("k", offset_of!(Self, k), &view),
            spread("v", offset_of!(Self, v), &view),
            spread("o", offset_of!(Self, o), &view),
            spread("m", offset_of!(Self, m), &scores),
            spread("b", offset_of!(Self, bias), &scores),
            one("qlen_off", offset_of!(Self, qlen_off)),
            one("klen_off", offset_of!(Self, klen_off)),
            one("alibi_off", offset_of!(Self, alibi_off)),
            one("sum_off", offset_of!(Self, sum_off)),
            one("sum_nqb", offset_of!(Self, sum_nqb)),
            one("sum_nkb", offset_of!(Self, sum_nkb)),
            one("sum_sb", offset_of!(Self, sum_sb)),
            one("sum_sh", offset_of!(Self, sum_sh)),
            one("row_start", offset_of!(Self, row_start)),
            one("row_count", offset_of!(Self, row_count)),
            one("wg_x", offset_of!(Self, wg_x)),
            one("scratch_stride", offset_of!(Self, scratch_stride)),
            spread("l", offset_of!(Self, lse), &["off", "sb", "sh", "ss"]),
            one("cuq_off", offset_of!(Self, cuq_off)),
            one("cuk_off", offset_of!(Self, cuk_off)),
            one("n_splits", offset_of!(Self, n_splits)),
            one("split_len", offset_of!(Self, split_len)),
            one("o_split", offset_of!(Self, o_split)),
            one("l_split", offset_of!(Self, l_split)),
            one("diag_off", offset_of!(Self, diag_off)),
            spread("do", offset_of!(Self, d_o), &view),
            one("stat_off", offset_of!(Self, stat_off)),
            one("g_off", offset_of!(Self, g_off)),
            one("g_dv", offset_of!(Self, g_dv)),
            spread("f", offset_of!(Self, fin), &["n0", "n1", "n2", "n3"]),
            one("bg_b", offset_of!(Self, bg_b)),
            one("bg_h", offset_of!(Self, bg_h)),
            one("softcap", offset_of!(Self, softcap)),
            one("sink_off", offset_of!(Self, sink_off)),
            one("pt_off", offset_of!(Self, pt_off)),
            one("page_size", offset_of!(Self, page_size)),
            one("pt_cols", offset_of!(Self, pt_cols)),
            one("kq_byte", offset_of!(Self, kq_byte)),
            one("vq_byte", offset_of!(Self, vq_byte)),
            one("kvs_off", offset_of!(Self, kvs_off)),
            one("kvq", offset_of!(Self, kvq)),
            spread("ks", offset_of!(Self, ks), &["off", "sb", "sh", "ss"]),
            spread("vs", offset_of!(Self, vs), &["off", "sb", "sh", "ss"]),
        ]
        .concat()
    }
}
