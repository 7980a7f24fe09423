//! Host code shared by the attention kernels (flash, memory-efficient, naive): storage
//! windows over the caller's views, the aux words (lengths, ALiBi slopes, block summary),
//! the parameter block, the bind group, and the splitting of large grids into dispatches
//! that respect the adapter's limits.

pub(crate) mod params;

use crate::data::mask::CausalAlignment;
use crate::data::options::{AttentionOptions, KvScales, Varlen};
use crate::data::problem::Problem;
use crate::data::tensor::{DType, TensorView};
use crate::error::{Error, Result, TensorRole};
use crate::kernels::bindings;
use crate::plan::dispatch::{SUMMARY_BLOCK_K, SUMMARY_BLOCK_Q};
use crate::plan::split::{PartRows, binding_extent};
use crate::runtime::Runtime;
use crate::runtime::arena::{AUX_IN_RING_MAX, MAX_BINDINGS, Range};
use crate::runtime::pipeline::Compiled;
use params::{AttnParams, flags};

/// A storage binding covering one tensor view.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
    /// Offset of element `[0,0,0,0]` from the window's start, in elements.
    pub elem_off: u32,
}

impl Window {
    /// The bound range.
    pub(crate) fn range(&self) -> Range {
        (self.buffer.clone(), self.offset, self.size)
    }
}

/// The smallest aligned window of `view`'s buffer that holds the view.
pub(crate) fn window(rt: &Runtime, view: &TensorView, role: TensorRole) -> Result<Window> {
    window_with(rt, view, None, role)
}

/// The smallest aligned window of `view`'s buffer that holds the view and `also` (a view in
/// the same buffer: i8 K/V's per-token scales). A quantized view's element offset is 0:
/// its byte offset in the window is [`Window::byte_off`]'s.
fn window_with(
    rt: &Runtime,
    view: &TensorView,
    also: Option<&TensorView>,
    role: TensorRole,
) -> Result<Window> {
    let align = rt.limits().min_storage_buffer_offset_alignment as u64;
    let mut range = view.offset..view.end_byte().unwrap_or(u64::MAX);
    if let Some(a) = also {
        range.start = range.start.min(a.offset);
        range.end = range.end.max(a.end_byte().unwrap_or(u64::MAX));
    }
    let (start, size) = binding_extent(range.start, range.end, align);
    let max = rt.caps().max_storage_binding;
    if size > max {
        return Err(Error::binding(role, size, max));
    }
    let elem_off = if view.dtype.is_quantized() {
        0
    } else {
        ((view.offset - start) / view.dtype.size()) as u32
    };
    Ok(Window {
        buffer: view.buffer.clone(),
        offset: start,
        size,
        elem_off,
    })
}

impl Window {
    /// The byte offset of `view` (in this window's buffer) from the window's start.
    fn byte_off(&self, view: &TensorView) -> u32 {
        (view.offset - self.offset) as u32
    }
}

/// A view's element offset within its window and its strides (b, h, s, d), as the shaders
/// read them: 0 for a dimension of size 1, so it broadcasts.
pub(crate) fn strides(view: &TensorView, w: &Window) -> [u32; 5] {
    let s = |i: usize| {
        if view.shape[i] > 1 {
            view.strides[i] as u32
        } else {
            0
        }
    };
    [w.elem_off, s(0), s(1), s(2), s(3)]
}

/// Everything a backend binds for one call.
#[derive(Clone)]
pub(crate) struct Bound {
    pub params: AttnParams,
    pub q: Window,
    pub k: Window,
    pub v: Window,
    pub o: Window,
    pub mask: Option<Window>,
    pub bias: Option<Window>,
    pub aux: Aux,
    pub lse: Option<Window>,
    /// Where the block summary goes in `aux` (in u32 words), and its shape.
    pub summary: Option<SummarySlot>,
}

/// The aux words of a call: a ring slot (bound at its dynamic offset), or, when the GPU
/// writes a block summary behind them, scratch that the host words are copied into first.
#[derive(Clone)]
pub(crate) struct Aux {
    pub buffer: wgpu::Buffer,
    /// The dynamic offset.
    pub offset: u32,
    /// The binding's size.
    pub size: u64,
    /// With a summary: the ring slot (buffer, offset, bytes) of the host words to copy in.
    pub host: Option<(wgpu::Buffer, u32, u64)>,
}

impl Aux {
    /// Records the copy of the host words into the scratch (with a summary).
    pub(crate) fn stage(&self, encoder: &mut wgpu::CommandEncoder) {
        if let Some((ring, off, bytes)) = &self.host {
            encoder.copy_buffer_to_buffer(ring, *off as u64, &self.buffer, 0, *bytes);
        }
    }
}

/// The block-summary region of the aux buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SummarySlot {
    pub offset: u32,
    pub nqb: u32,
    pub nkb: u32,
    pub mb: u32,
    pub mh: u32,
}

/// Validated views plus options, bound into windows and a parameter block. `stat_words`
/// reserves words after the host words and the block summary for the GPU to fill (the
/// backward pass's row statistics, at `params.stat_off`).
pub(crate) fn bind(
    rt: &Runtime,
    p: &Problem,
    views: [&TensorView; 4],
    opts: &AttentionOptions,
    with_summary: bool,
    part: Option<&PartRows>,
    stat_words: usize,
) -> Result<Bound> {
    let [q, k, v, o] = views;
    let (k_scales, v_scales) = match &opts.kv_scales {
        Some(KvScales::PerToken { k, v }) => (Some(k), Some(v)),
        _ => (None, None),
    };
    let qw = window(rt, q, TensorRole::Query)?;
    let kw = window_with(rt, k, k_scales, TensorRole::Key)?;
    let vw = window_with(rt, v, v_scales, TensorRole::Value)?;
    let ow = window(rt, o, TensorRole::Output)?;
    let m = &opts.mask;
    let mw = match &m.bool_mask {
        Some(bm) => Some(window(rt, &bm.view, TensorRole::BoolMask)?),
        None => None,
    };
    let bw = match &m.bias {
        Some(b) => Some(window(rt, b, TensorRole::Bias)?),
        None => None,
    };

    let mut f = 0u32;
    let mut set = |cond: bool, bit: u32| {
        if cond {
            f |= bit;
        }
    };
    set(m.causal, flags::CAUSAL);
    set(
        m.alignment == CausalAlignment::BottomRight,
        flags::BOTTOM_RIGHT,
    );
    let vl = opts.varlen.as_ref();
    set(m.key_lengths.is_some() || vl.is_some(), flags::KLEN);
    set(m.query_lengths.is_some() || vl.is_some(), flags::QLEN);
    set(vl.is_some(), flags::VARLEN);
    set(part.is_some(), flags::QLEN | flags::KLEN | flags::DIAG);
    set(opts.lse_output.is_some(), flags::LSE);
    set(m.window.is_some_and(|w| w.left.is_some()), flags::WLEFT);
    set(m.window.is_some_and(|w| w.right.is_some()), flags::WRIGHT);
    set(m.bool_mask.is_some(), flags::BOOL);
    set(m.bias.is_some(), flags::BIAS);
    set(m.alibi_slopes.is_some(), flags::ALIBI);
    set(opts.sinks.is_some(), flags::SINK);
    set(opts.softcap.is_some(), flags::SOFTCAP);
    set(opts.paged.is_some(), flags::PAGED);
    f |= p.dtype_q.code() << flags::DT_Q;
    f |= p.dtype_k.code() << flags::DT_K;
    f |= p.dtype_v.code() << flags::DT_V;
    f |= p.dtype_o.code() << flags::DT_O;
    f |= m.bias.as_ref().map_or(0, |b| b.dtype.code()) << flags::DT_BIAS;

    // Aux: [query lengths | key lengths | diagonals | cu_seqlens q | cu_seqlens k | alibi |
    // sinks | page table | summary].
    let mut aux: Vec<u32> = Vec::new();
    let qlen_off = aux.len() as u32;
    match (vl, part) {
        (Some(vl), _) => aux.extend(Varlen::lengths(&vl.cu_seqlens_q)),
        (None, Some(part)) => aux.extend(&part.qlen),
        (None, None) => aux.extend(m.query_lengths.iter().flatten()),
    }
    let klen_off = aux.len() as u32;
    match (vl, part) {
        (Some(vl), _) => aux.extend(Varlen::lengths(&vl.cu_seqlens_k)),
        (None, Some(part)) => aux.extend(&part.klen),
        (None, None) => aux.extend(m.key_lengths.iter().flatten()),
    }
    let diag_off = aux.len() as u32;
    aux.extend(part.iter().flat_map(|p| p.diag.iter().map(|&d| d as u32)));
    let cuq_off = aux.len() as u32;
    aux.extend(vl.iter().flat_map(|v| v.cu_seqlens_q.iter()));
    let cuk_off = aux.len() as u32;
    aux.extend(vl.iter().flat_map(|v| v.cu_seqlens_k.iter()));
    let alibi_off = aux.len() as u32;
    aux.extend(m.alibi_slopes.iter().flatten().map(|x| x.to_bits()));
    let sink_off = aux.len() as u32;
    aux.extend(opts.sinks.iter().flatten().map(|x| x.to_bits()));
    let pt_off = aux.len() as u32;
    aux.extend(opts.paged.iter().flat_map(|pg| pg.table.iter()));
    // The 8-bit floats' per-head scales: K's heads_kv, then V's (one for all repeated; 1
    // when none are given).
    let kvs_off = aux.len() as u32;
    if matches!(p.dtype_k, DType::E4M3 | DType::E5M2) {
        let per_head = |s: Option<&Vec<f32>>| -> Vec<u32> {
            (0..p.heads_kv)
                .map(|h| {
                    s.map_or(1.0, |s| s[if s.len() == 1 { 0 } else { h }])
                        .to_bits()
                })
                .collect()
        };
        let (ks, vs) = match &opts.kv_scales {
            Some(KvScales::PerHead { k, v }) => (Some(k), Some(v)),
            _ => (None, None),
        };
        aux.extend(per_head(ks));
        aux.extend(per_head(vs));
    }
    let host_words = aux.len();
    let mut summary = None;
    if let (true, Some(bm)) = (with_summary, &m.bool_mask) {
        let slot = SummarySlot {
            offset: aux.len() as u32,
            nqb: (p.seq_q as u32).div_ceil(SUMMARY_BLOCK_Q),
            nkb: (p.seq_k as u32).div_ceil(SUMMARY_BLOCK_K),
            mb: bm.view.shape[0] as u32,
            mh: bm.view.shape[1] as u32,
        };
        summary = Some(slot);
        f |= flags::SUMMARY;
    }
    aux.resize(aux.len().max(4), 0);
    let host_bytes = (aux.len() * 4) as u64;
    // Long aux words (varlen batches of hundreds of sequences) get a buffer of their own:
    // the ring's slots stay small.
    let (ring, ring_off) = if host_bytes > AUX_IN_RING_MAX {
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let own = rt.new_buffer_init("wgpu-attention aux", bytemuck::cast_slice(&aux), usage);
        (own, 0)
    } else {
        rt.ring_write(bytemuck::cast_slice(&aux))?
    };
    let summary_words = summary.map_or(0, |s| {
        s.mb as usize * s.mh as usize * s.nqb as usize * s.nkb as usize
    });
    let stat_off = (host_words + summary_words) as u32;
    let aux = if summary.is_none() && stat_words == 0 {
        Aux {
            buffer: ring,
            offset: ring_off,
            size: host_bytes,
            host: None,
        }
    } else {
        let words = host_words + summary_words + stat_words;
        let bytes = (words.max(4) * 4) as u64;
        let max = rt.caps().max_storage_binding;
        if bytes > max {
            let role = match summary {
                Some(_) => TensorRole::BoolMask,
                None => TensorRole::Lse,
            };
            return Err(Error::binding(role, bytes, max));
        }
        Aux {
            buffer: rt.scratch("wgpu-attention aux scratch", bytes)?,
            offset: 0,
            size: bytes,
            host: Some((ring, ring_off, host_bytes)),
        }
    };

    // 16-bit K and V whose head-dim elements pair up into aligned 32-bit words.
    let pairs = |v: &TensorView, w: &Window, d: usize| {
        let st = strides(v, w);
        matches!(v.dtype, DType::F16 | DType::BF16)
            && st[4] == 1
            && d.is_multiple_of(2)
            && st[..4].iter().all(|x| x.is_multiple_of(2))
    };
    if pairs(k, &kw, p.head_dim_qk) && pairs(v, &vw, p.head_dim_v) {
        f |= flags::KV_PAIRS;
    }
    let window_opt = m.window.unwrap_or_default();
    let mut params = AttnParams {
        batch: p.batch as u32,
        heads_q: p.heads_q as u32,
        heads_kv: p.heads_kv as u32,
        seq_q: p.seq_q as u32,
        seq_k: p.seq_k as u32,
        dk: p.head_dim_qk as u32,
        dv: p.head_dim_v as u32,
        flags: f,
        scale: p.scale,
        // A window wider than both sequences together sees everything: clamp to that, so the
        // shaders' diagonal arithmetic stays far from i32 overflow.
        wleft: window_opt.left.unwrap_or(0).min((p.seq_q + p.seq_k) as u32),
        wright: window_opt
            .right
            .unwrap_or(0)
            .min((p.seq_q + p.seq_k) as u32),
        group: (p.heads_q / p.heads_kv) as u32,
        q: strides(q, &qw),
        k: strides(k, &kw),
        v: strides(v, &vw),
        o: strides(o, &ow),
        qlen_off,
        klen_off,
        alibi_off,
        sink_off,
        softcap: opts.softcap.unwrap_or(0.0),
        pt_off,
        page_size: opts.paged.as_ref().map_or(0, |pg| pg.page_size as u32),
        pt_cols: opts.paged.as_ref().map_or(0, |pg| pg.pages_per_seq as u32),
        cuq_off,
        cuk_off,
        n_splits: 1,
        split_len: u32::MAX,
        diag_off,
        stat_off,
        kvs_off,
        kvq: p.dtype_k.kv_code(),
        ..Default::default()
    };
    if p.dtype_k.is_quantized() {
        params.kq_byte = kw.byte_off(k);
        params.vq_byte = vw.byte_off(v);
    }
    let scale_strides = |s: &TensorView, w: &Window| {
        let st = strides(s, w);
        [w.byte_off(s) / 4, st[1], st[2], st[3]]
    };
    if let (Some(ks), Some(vs)) = (k_scales, v_scales) {
        params.ks = scale_strides(ks, &kw);
        params.vs = scale_strides(vs, &vw);
    }
    let lw = match &opts.lse_output {
        Some(l) => {
            let w = window(rt, l, TensorRole::Lse)?;
            let st = strides(l, &w);
            params.lse = [st[0], st[1], st[2], st[3]];
            Some(w)
        }
        None => None,
    };
    if let (Some(bm), Some(w)) = (&m.bool_mask, &mw) {
        params.m = strides(&bm.view, w);
    }
    if let (Some(b), Some(w)) = (&m.bias, &bw) {
        params.bias = strides(b, w);
    }
    if let Some(s) = summary {
        params.sum_off = s.offset;
        params.sum_nqb = s.nqb;
        params.sum_nkb = s.nkb;
        params.sum_sh = if s.mh > 1 { s.nqb * s.nkb } else { 0 };
        params.sum_sb = if s.mb > 1 { s.mh * s.nqb * s.nkb } else { 0 };
    }
    Ok(Bound {
        params,
        q: qw,
        k: kw,
        v: vw,
        o: ow,
        mask: mw,
        bias: bw,
        aux,
        lse: lw,
        summary,
    })
}

/// One dispatch of a split grid: workgroups `[start, start + count)` laid out as `x * y`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GridChunk {
    pub start: u32,
    pub count: u32,
    pub x: u32,
    pub y: u32,
}

/// The one dispatch of `n` workgroups for a kernel that reads no first-workgroup offset
/// (`None` for no workgroups); more than one `x * y` grid holds is a limit error naming
/// `what`.
pub(crate) fn single_grid(n: u64, max: u32, what: &'static str) -> Result<Option<GridChunk>> {
    let chunks = split_grid(n, max)?;
    if let Some(second) = chunks.get(1) {
        return Err(Error::limit(what, n, second.start as u64));
    }
    Ok(chunks.first().copied())
}

/// Splits `n` workgroups into dispatches of at most `max` per dimension.
pub(crate) fn split_grid(n: u64, max: u32) -> Result<Vec<GridChunk>> {
    let max = max.max(1) as u64;
    let cap = max * max;
    if n > u32::MAX as u64 {
        return Err(Error::limit(
            "workgroups addressable with 32-bit indices",
            n,
            u32::MAX as u64,
        ));
    }
    let mut out = Vec::new();
    let mut start = 0u64;
    while start < n {
        let count = cap.min(n - start);
        let x = count.min(max);
        let y = count.div_ceil(x);
        out.push(GridChunk {
            start: start as u32,
            count: count as u32,
            x: x as u32,
            y: y as u32,
        });
        start += count;
    }
    Ok(out)
}

/// The bind group of an attention kernel over `bound`'s views, the ring slot of its
/// parameter block (`params`, a range of the ring) and the kernel's own bindings in `extra`
/// (the naive kernel's score scratch, the flash kernels' counters, the backward pass's
/// buffers).
pub(crate) fn bind_group(
    rt: &Runtime,
    compiled: &Compiled,
    bound: &Bound,
    params: &wgpu::Buffer,
    extra: &[(u32, Range)],
) -> Result<wgpu::BindGroup> {
    let dummy = || (rt.dummy().clone(), 0, 16);
    let mut e: [Option<Range>; MAX_BINDINGS] = Default::default();
    e[bindings::PARAMS as usize] =
        Some((params.clone(), 0, std::mem::size_of::<AttnParams>() as u64));
    e[bindings::Q as usize] = Some(bound.q.range());
    e[bindings::K as usize] = Some(bound.k.range());
    e[bindings::V as usize] = Some(bound.v.range());
    e[bindings::O as usize] = Some(bound.o.range());
    e[bindings::MASK as usize] = Some(bound.mask.as_ref().map_or_else(dummy, Window::range));
    e[bindings::BIAS as usize] = Some(bound.bias.as_ref().map_or_else(dummy, Window::range));
    e[bindings::AUX as usize] = Some((bound.aux.buffer.clone(), 0, bound.aux.size));
    e[bindings::LSE as usize] = Some(
        bound
            .lse
            .as_ref()
            .map_or_else(|| (rt.dummy_rw().clone(), 0, 16), Window::range),
    );
    for (n, range) in extra {
        e[*n as usize] = Some(range.clone());
    }
    // Only the bindings the entry point declares take part in its group.
    for (n, slot) in e.iter_mut().enumerate() {
        if !compiled.bindings.iter().any(|b| b.number as usize == n) {
            *slot = None;
        }
    }
    rt.bind_group(compiled, e)
}

/// Records an attention kernel over `n` workgroups, in as many dispatches as the adapter's
/// grid limits need (each told its first workgroup and count), with the kernel's own
/// bindings in `extra`.
pub(crate) fn launch_grid(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    label: &str,
    compiled: &Compiled,
    bound: &Bound,
    n: u64,
    extra: &[(u32, Range)],
) -> Result<()> {
    for c in split_grid(n, rt.caps().max_workgroups_per_dim)? {
        let params = AttnParams {
            row_start: c.start,
            row_count: c.count,
            wg_x: c.x,
            ..bound.params
        };
        launch(
            rt,
            encoder,
            label,
            compiled,
            bound,
            &params,
            extra,
            (c.x, c.y),
        )?;
    }
    Ok(())
}

/// Records one dispatch of an attention kernel over `bound`: its parameter block into the
/// ring, its (kept) bind group, the pass.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    label: &str,
    compiled: &Compiled,
    bound: &Bound,
    params: &AttnParams,
    extra: &[(u32, Range)],
    (x, y): (u32, u32),
) -> Result<()> {
    let (ring, off) = rt.ring_write(bytemuck::bytes_of(params))?;
    let bg = bind_group(rt, compiled, bound, &ring, extra)?;
    dispatch(
        encoder,
        label,
        compiled,
        &bg,
        &[off, bound.aux.offset],
        x,
        y,
    );
    Ok(())
}

/// Records one compute pass: `compiled` with `bind_group` (at the dynamic `offsets` of its
/// parameter block and aux words) over an `x * y` grid.
pub(crate) fn dispatch(
    encoder: &mut wgpu::CommandEncoder,
    label: &str,
    compiled: &Compiled,
    bind_group: &wgpu::BindGroup,
    offsets: &[u32],
    x: u32,
    y: u32,
) {
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: None,
    });
    pass.set_pipeline(&compiled.pipeline);
    pass.set_bind_group(0, bind_group, offsets);
    pass.dispatch_workgroups(x, y, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_grid_respects_limits() {
        let c = split_grid(10, 65535).unwrap();
        assert_eq!(
            c,
            vec![GridChunk {
                start: 0,
                count: 10,
                x: 10,
                y: 1
            }]
        );
        let c = split_grid(100_000, 65535).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].x, c[0].y), (65535, 2));
        let c = split_grid(50, 4).unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(c.iter().map(|c| c.count).sum::<u32>(), 50);
        assert!(
            c.iter()
                .all(|c| c.x <= 4 && c.y <= 4 && c.x * c.y >= c.count)
        );
        assert_eq!(c[3].start, 48);
    }
}
