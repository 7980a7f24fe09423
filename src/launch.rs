//! Host-side preparation shared by the three backends: storage-binding windows, the
//! auxiliary buffer (lengths, ALiBi slopes, block summary), the parameter block, and the
//! splitting of large grids into dispatches that respect the adapter's limits.

use wgpu::util::DeviceExt;

use crate::context::Context;
use crate::dispatch::{SUMMARY_BLOCK_K, SUMMARY_BLOCK_Q};
use crate::error::{Error, Result, TensorRole};
use crate::mask::CausalAlignment;
use crate::options::{AttentionOptions, Varlen};
use crate::params::{AttnParams, flags};
use crate::pipeline::Compiled;
use crate::split::PartRows;
use crate::tensor::{DType, TensorView};
use crate::validate::Problem;

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
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.size),
        })
    }
}

/// The start and size of the smallest binding, aligned to `align` bytes, that covers bytes
/// `offset..end` (whole 32-bit words, at least one).
pub(crate) fn binding_extent(offset: u64, end: u64, align: u64) -> (u64, u64) {
    let start = offset / align * align;
    let end = end.div_ceil(4).saturating_mul(4).max(start + 4);
    (start, end - start)
}

/// The bytes of the binding `window` makes for `view`.
pub(crate) fn binding_size(view: &TensorView, align: u64) -> u64 {
    binding_extent(view.offset, view.end_byte().unwrap_or(u64::MAX), align).1
}

/// The smallest aligned window of `view`'s buffer that holds the view.
pub(crate) fn window(ctx: &Context, view: &TensorView, role: TensorRole) -> Result<Window> {
    let align = ctx.limits().min_storage_buffer_offset_alignment as u64;
    let (start, size) = binding_extent(view.offset, view.end_byte().unwrap_or(u64::MAX), align);
    let max = ctx.caps().max_storage_binding;
    if size > max {
        return Err(Error::binding(role, size, max));
    }
    Ok(Window {
        buffer: view.buffer.clone(),
        offset: start,
        size,
        elem_off: ((view.offset - start) / view.dtype.size()) as u32,
    })
}

fn strides(view: &TensorView, w: &Window) -> [u32; 5] {
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
    pub aux: wgpu::Buffer,
    pub lse: Option<Window>,
    /// Where the block summary goes in `aux` (in u32 words), and its shape.
    pub summary: Option<SummarySlot>,
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

/// Validated views plus options, bound into windows and a parameter block.
pub(crate) fn bind(
    ctx: &Context,
    p: &Problem,
    views: [&TensorView; 4],
    opts: &AttentionOptions,
    with_summary: bool,
    part: Option<&PartRows>,
) -> Result<Bound> {
    let [q, k, v, o] = views;
    let qw = window(ctx, q, TensorRole::Query)?;
    let kw = window(ctx, k, TensorRole::Key)?;
    let vw = window(ctx, v, TensorRole::Value)?;
    let ow = window(ctx, o, TensorRole::Output)?;
    let m = &opts.mask;
    let mw = match &m.bool_mask {
        Some(bm) => Some(window(ctx, &bm.view, TensorRole::BoolMask)?),
        None => None,
    };
    let bw = match &m.bias {
        Some(b) => Some(window(ctx, b, TensorRole::Bias)?),
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
    f |= p.dtype_q.code() << flags::DT_Q;
    f |= p.dtype_k.code() << flags::DT_K;
    f |= p.dtype_v.code() << flags::DT_V;
    f |= p.dtype_o.code() << flags::DT_O;
    f |= m.bias.as_ref().map_or(0, |b| b.dtype.code()) << flags::DT_BIAS;

    // Aux: [query lengths | key lengths | cu_seqlens q | cu_seqlens k | alibi | summary].
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
    let mut summary = None;
    if let (true, Some(bm)) = (with_summary, &m.bool_mask) {
        let slot = SummarySlot {
            offset: aux.len() as u32,
            nqb: (p.seq_q as u32).div_ceil(SUMMARY_BLOCK_Q),
            nkb: (p.seq_k as u32).div_ceil(SUMMARY_BLOCK_K),
            mb: bm.view.shape[0] as u32,
            mh: bm.view.shape[1] as u32,
        };
        let n = slot.mb as usize * slot.mh as usize * slot.nqb as usize * slot.nkb as usize;
        aux.resize(aux.len() + n, 2);
        summary = Some(slot);
        f |= flags::SUMMARY;
    }
    aux.resize(aux.len().max(4), 0);
    let aux_buf = ctx
        .device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("wgpu-attention aux"),
            contents: bytemuck::cast_slice(&aux),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        });

    // f16 K and V whose head-dim elements pair up into aligned 32-bit words.
    let pairs = |v: &TensorView, w: &Window, d: usize| {
        let st = strides(v, w);
        v.dtype == DType::F16
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
        cuq_off,
        cuk_off,
        n_splits: 1,
        split_len: u32::MAX,
        diag_off,
        ..Default::default()
    };
    let lw = match &opts.lse_output {
        Some(l) => {
            let w = window(ctx, l, TensorRole::Lse)?;
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
        aux: aux_buf,
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

/// A uniform buffer holding `params`.
pub(crate) fn uniform<T: bytemuck::Pod>(ctx: &Context, params: &T) -> wgpu::Buffer {
    ctx.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("wgpu-attention params"),
            contents: bytemuck::bytes_of(params),
            usage: wgpu::BufferUsages::UNIFORM,
        })
}

/// Builds the bind group of `compiled` from `(binding, resource)` pairs, keeping only
/// the bindings its layout declares.
pub(crate) fn bind_group(
    ctx: &Context,
    compiled: &Compiled,
    slots: &[(u32, wgpu::BindingResource<'_>)],
    wanted: &[(u32, crate::pipeline::Slot)],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = wanted
        .iter()
        .filter_map(|(b, _)| {
            slots
                .iter()
                .find(|(s, _)| s == b)
                .map(|(s, r)| wgpu::BindGroupEntry {
                    binding: *s,
                    resource: r.clone(),
                })
        })
        .collect();
    ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("wgpu-attention bind group"),
        layout: &compiled.layout,
        entries: &entries,
    })
}

/// Records one compute pass: `compiled` with `bind_group` over an `x * y` grid.
pub(crate) fn dispatch(
    encoder: &mut wgpu::CommandEncoder,
    label: &str,
    compiled: &Compiled,
    bind_group: &wgpu::BindGroup,
    x: u32,
    y: u32,
) {
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: None,
    });
    pass.set_pipeline(&compiled.pipeline);
    pass.set_bind_group(0, bind_group, &[]);
    pass.dispatch_workgroups(x, y, 1);
}

/// The common bindings of a call with params buffer `params`.
pub(crate) fn common_slots<'a>(
    ctx: &'a Context,
    bound: &'a Bound,
    params: &'a wgpu::Buffer,
) -> Vec<(u32, wgpu::BindingResource<'a>)> {
    let dummy = ctx.dummy();
    vec![
        (0, params.as_entire_binding()),
        (1, bound.q.binding()),
        (2, bound.k.binding()),
        (3, bound.v.binding()),
        (4, bound.o.binding()),
        (
            5,
            bound
                .mask
                .as_ref()
                .map(|w| w.binding())
                .unwrap_or_else(|| dummy.as_entire_binding()),
        ),
        (
            6,
            bound
                .bias
                .as_ref()
                .map(|w| w.binding())
                .unwrap_or_else(|| dummy.as_entire_binding()),
        ),
        (7, bound.aux.as_entire_binding()),
        (
            9,
            bound
                .lse
                .as_ref()
                .map(|w| w.binding())
                .unwrap_or_else(|| ctx.dummy_rw().as_entire_binding()),
        ),
    ]
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
