//! Host side of `shaders/merge.wgsl`: combining partial attention results over disjoint key
//! sets by their log-sum-exp. Used by the decode path (key splits) and by
//! [`crate::Context::merge`].

pub(crate) mod params;

use crate::data::tensor::{DType, TensorView};
use crate::error::{Error, Result, TensorRole};
use crate::kernels::attention::{self, Window};
use crate::kernels::{bindings, launch_with_params, spec};
use crate::plan::variant::ModuleKey;
use crate::runtime::Runtime;
use crate::runtime::arena::{MAX_BINDINGS, Range};
use params::MergeParams;

/// The most parts one merge dispatch combines (the shader's `MAX_PARTS`).
pub const MAX_PARTS: u32 = 64;

/// One merge input: `parts` partial outputs (and their log-sum-exps) a part stride apart.
pub(crate) struct Input<'a> {
    pub o: &'a TensorView,
    pub lse: &'a TensorView,
    pub parts: u32,
    pub o_part_stride: u32,
    pub lse_part_stride: u32,
}

impl<'a> Input<'a> {
    /// One partial result.
    pub(crate) fn one(o: &'a TensorView, lse: &'a TensorView) -> Self {
        Input {
            o,
            lse,
            parts: 1,
            o_part_stride: 0,
            lse_part_stride: 0,
        }
    }
}

/// Two f32 accumulators (output and log-sum-exp) that a left fold of merges writes in
/// turn: each merge reads the current one and writes the other, or the fold's destination.
pub(crate) struct Fold {
    o: [wgpu::Buffer; 2],
    l: [wgpu::Buffer; 2],
    cur: usize,
    shape: [usize; 3],
    dv: usize,
}

impl Fold {
    /// Accumulators for up to `rows` rows of `dv` values (the runtime's scratch).
    pub(crate) fn new(rt: &Runtime, rows: usize, dv: usize) -> Result<Fold> {
        let o = (rows * dv) as u64 * 4;
        let l = rows as u64 * 4;
        Ok(Fold {
            o: [
                rt.scratch("wgpu-attention merge accumulator output 0", o)?,
                rt.scratch("wgpu-attention merge accumulator output 1", o)?,
            ],
            l: [
                rt.scratch("wgpu-attention merge accumulator lse 0", l)?,
                rt.scratch("wgpu-attention merge accumulator lse 1", l)?,
            ],
            cur: 0,
            shape: [1, 1, rows],
            dv,
        })
    }

    /// Starts a fold over `[b, h, s]` rows (at most the rows the fold was made for).
    pub(crate) fn reshape(&mut self, [b, h, s]: [usize; 3]) {
        self.shape = [b, h, s];
    }

    fn views(&self, i: usize) -> (TensorView, TensorView) {
        let [b, h, s] = self.shape;
        (
            TensorView::bhsd(self.o[i].clone(), DType::F32, [b, h, s, self.dv]),
            TensorView::bhsd(self.l[i].clone(), DType::F32, [b, h, s, 1]),
        )
    }

    /// The current accumulator (output, log-sum-exp).
    pub(crate) fn current(&self) -> (TensorView, TensorView) {
        self.views(self.cur)
    }

    /// Records the merge of `a` and `b` into `last`'s output (and log-sum-exp) when given,
    /// else into the other accumulator, which becomes the current one.
    pub(crate) fn merge(
        &mut self,
        rt: &Runtime,
        encoder: &mut wgpu::CommandEncoder,
        a: Input<'_>,
        b: Input<'_>,
        last: Option<(&TensorView, Option<&TensorView>)>,
    ) -> Result<()> {
        if let Some((out, lse_out)) = last {
            return record(rt, encoder, a, Some(b), out, lse_out);
        }
        let (o, l) = self.views(1 - self.cur);
        record(rt, encoder, a, Some(b), &o, Some(&l))?;
        self.cur = 1 - self.cur;
        Ok(())
    }
}

/// A binding covering `parts` copies of `view`, `part_stride` elements apart.
fn window_parts(
    rt: &Runtime,
    view: &TensorView,
    parts: u32,
    part_stride: u32,
    role: TensorRole,
) -> Result<Window> {
    let mut w = attention::window(rt, view, role)?;
    let extra = (parts.saturating_sub(1) as u64) * part_stride as u64 * view.dtype.size();
    w.size = (w.size + extra).min(view.buffer.size() - w.offset);
    if w.size > rt.caps().max_storage_binding {
        return Err(Error::binding(role, w.size, rt.caps().max_storage_binding));
    }
    Ok(w)
}

/// Records one merge dispatch of `a` (and `b`) into `out` (and `lse_out`).
pub(crate) fn record(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    a: Input<'_>,
    b: Option<Input<'_>>,
    out: &TensorView,
    lse_out: Option<&TensorView>,
) -> Result<()> {
    let [batch, heads, seq, dv] = out.shape;
    let wa = window_parts(rt, a.o, a.parts, a.o_part_stride, TensorRole::Output)?;
    let wla = window_parts(rt, a.lse, a.parts, a.lse_part_stride, TensorRole::Lse)?;
    let (wb, wlb) = match &b {
        Some(b) => (
            Some(attention::window(rt, b.o, TensorRole::Output)?),
            Some(attention::window(rt, b.lse, TensorRole::Lse)?),
        ),
        None => (None, None),
    };
    let wo = attention::window(rt, out, TensorRole::Output)?;
    let wlo = match lse_out {
        Some(l) => Some(attention::window(rt, l, TensorRole::Lse)?),
        None => None,
    };
    let sa = attention::strides(a.o, &wa);
    let sla = attention::strides(a.lse, &wla);
    let so = attention::strides(out, &wo);
    let mut p = MergeParams {
        batch: batch as u32,
        heads: heads as u32,
        seq: seq as u32,
        dv: dv as u32,
        n_a: a.parts,
        flags: a.o.dtype.code() | out.dtype.code() << 4,
        a: [sa[0], a.o_part_stride, sa[1], sa[2], sa[3], sa[4]],
        o: so,
        la: [sla[0], a.lse_part_stride, sla[1], sla[2], sla[3]],
        ..Default::default()
    };
    if let (Some(b), Some(wb), Some(wlb)) = (&b, &wb, &wlb) {
        let sb = attention::strides(b.o, wb);
        let slb = attention::strides(b.lse, wlb);
        p.n_b = b.parts;
        p.flags |= b.o.dtype.code() << 2;
        p.b = [sb[0], b.o_part_stride, sb[1], sb[2], sb[3], sb[4]];
        p.lb = [slb[0], b.lse_part_stride, slb[1], slb[2], slb[3]];
    }
    if let (Some(l), Some(w)) = (lse_out, &wlo) {
        let s = attention::strides(l, w);
        p.lo = [s[0], s[1], s[2], s[3]];
        p.flags |= 64;
    }
    if p.n_a + p.n_b > MAX_PARTS {
        return Err(Error::limit(
            "parts merged in one dispatch",
            (p.n_a + p.n_b) as u64,
            MAX_PARTS as u64,
        ));
    }
    let key = ModuleKey::Merge;
    let compiled = rt.pipeline(key, "main", || spec(&key, "main"))?;
    let n = (batch * heads * seq * dv) as u64;
    let dummy = || (rt.dummy().clone(), 0, 16);
    let mut e: [Option<Range>; MAX_BINDINGS] = Default::default();
    e[bindings::MERGE_OA as usize] = Some(wa.range());
    e[bindings::MERGE_LA as usize] = Some(wla.range());
    e[bindings::MERGE_OB as usize] = Some(wb.as_ref().map_or_else(dummy, Window::range));
    e[bindings::MERGE_LB as usize] = Some(wlb.as_ref().map_or_else(dummy, Window::range));
    e[bindings::MERGE_OUT as usize] = Some(wo.range());
    e[bindings::MERGE_LSE_OUT as usize] = Some(
        wlo.as_ref()
            .map_or_else(|| (rt.dummy_rw().clone(), 0, 16), Window::range),
    );
    let max = rt.caps().max_workgroups_per_dim;
    if let Some(c) = attention::single_grid(n.div_ceil(64), max, "merge workgroups")? {
        p.wg_x = c.x;
        let label = "wgpu-attention merge";
        launch_with_params(rt, encoder, label, &compiled, &p, e.clone(), (c.x, c.y))?;
    }
    Ok(())
}
