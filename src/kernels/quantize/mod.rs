//! Host side of `shaders/kv_append.wgsl`: new K/V rows quantized on the GPU into a quantized
//! KV cache's rows ([`crate::KvCache`], [`crate::PagedKvCache`]), one dispatch for every
//! sequence, head and token of an append.

pub(crate) mod params;

use crate::data::tensor::{DType, TensorView};
use crate::error::{Error, Result, TensorRole};
use crate::kernels::attention;
use crate::kernels::{bindings, spec};
use crate::plan::variant::ModuleKey;
use crate::runtime::Runtime;
use crate::runtime::arena::{MAX_BINDINGS, Range};
use params::QuantParams;

/// Where an append's rows go in a quantized cache buffer.
pub(crate) struct Dest<'a> {
    /// The cache's buffer (bound whole).
    pub buffer: &'a wgpu::Buffer,
    /// Its format.
    pub format: DType,
    /// The destination row of head 0 of token `t` of sequence `s`, at `s * n + t`.
    pub rows: &'a [u32],
    /// Rows between one head's row and the next's.
    pub head_rows: u32,
    /// Where i8's per-row scales start, in words.
    pub scale_word: u32,
}

/// Records the quantization of `src` (`[seqs, heads, n, d]`, a float dtype, any strides)
/// into `dst`'s rows.
pub(crate) fn record(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    src: &TensorView,
    dst: &Dest<'_>,
) -> Result<()> {
    let [seqs, heads, n, d] = src.shape;
    let max = rt.caps().max_storage_binding;
    if dst.buffer.size() > max {
        return Err(Error::binding(TensorRole::KvCache, dst.buffer.size(), max));
    }
    let sw = attention::window(rt, src, TensorRole::KvCache)?;
    let st = attention::strides(src, &sw);
    let nblk = if dst.format.block_len() > 1 {
        d / 32
    } else {
        1
    };
    let items = (seqs * heads * n * nblk) as u64;
    let mut p = QuantParams {
        seqs: seqs as u32,
        heads: heads as u32,
        n: n as u32,
        d: d as u32,
        fmt: dst.format.kv_code(),
        src_dt: src.dtype.code(),
        head_rows: dst.head_rows,
        src: st,
        row_bytes: dst.format.bytes(d as u64) as u32,
        scale_word: dst.scale_word,
        ..Default::default()
    };
    let key = ModuleKey::Quantize;
    let compiled = rt.pipeline(key, "main", || spec(&key, "main"))?;
    // The destination rows in a slot of the runtime's ring (at a dynamic offset, as the aux
    // words): a warm append makes no buffer.
    let row_bytes = std::mem::size_of_val(dst.rows) as u64;
    let (ring, rows_off) = rt.ring_write(bytemuck::cast_slice(dst.rows))?;
    let mut e: [Option<Range>; MAX_BINDINGS] = Default::default();
    e[bindings::QUANT_SRC as usize] = Some(sw.range());
    e[bindings::QUANT_DST as usize] = Some((dst.buffer.clone(), 0, dst.buffer.size()));
    e[bindings::QUANT_ROWS as usize] = Some((ring, 0, row_bytes));
    let max = rt.caps().max_workgroups_per_dim;
    if let Some(c) = attention::single_grid(items.div_ceil(64), max, "kv append workgroups")? {
        p.wg_x = c.x;
        let (params, off) = rt.ring_write(bytemuck::bytes_of(&p))?;
        e[bindings::PARAMS as usize] = Some((params, 0, std::mem::size_of::<QuantParams>() as u64));
        let bg = rt.bind_group(&compiled, e.clone())?;
        let label = "wgpu-attention kv append";
        attention::dispatch(encoder, label, &compiled, &bg, &[off, rows_off], c.x, c.y);
    }
    Ok(())
}
