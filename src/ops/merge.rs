//! A user merge of partial results ([`crate::Context::merge`]), recorded: tiled where a
//! tensor is larger than one binding, folded two parts at a time.

use crate::data::tensor::TensorView;
use crate::error::{Error, Result, TensorRole};
use crate::kernels::merge;
use crate::ops::attention::stage_outputs;
use crate::plan::split::binding_size;
use crate::plan::split::{self, Part};
use crate::runtime::Runtime;
use crate::runtime::arena::CallScope;

/// Validates a merge and records it.
pub(crate) fn record(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    parts: &[(&TensorView, &TensorView)],
    out: &TensorView,
    lse_out: Option<&TensorView>,
) -> Result<()> {
    let _call = CallScope::begin();
    crate::plan::validate::merge(parts, out, lse_out)?;
    let shares = |w: &TensorView| {
        parts
            .iter()
            .any(|(o, l)| o.buffer == w.buffer || l.buffer == w.buffer)
    };
    let [staged_o, staged_l] = stage_outputs(rt, encoder, out, lse_out, shares)?;
    let out = staged_o.as_ref().map_or(out, |s| &s.view);
    let lse_out = staged_l.as_ref().map(|s| &s.view).or(lse_out);
    record_tiles(rt, encoder, parts, out, lse_out)?;
    for s in staged_o.iter().chain(&staged_l) {
        s.unstage(encoder);
    }
    Ok(())
}

fn record_tiles(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    parts: &[(&TensorView, &TensorView)],
    out: &TensorView,
    lse_out: Option<&TensorView>,
) -> Result<()> {
    // Tensors larger than one storage binding: merged in parts over batch items, heads and
    // rows, as attention calls are split.
    let [b, h, s, dv] = out.shape;
    let max = rt.caps().max_storage_binding;
    let align = rt.limits().min_storage_buffer_offset_alignment as u64;
    let mut views: Vec<(&TensorView, TensorRole)> = Vec::new();
    for (o, l) in parts {
        views.push((o, TensorRole::Output));
        views.push((l, TensorRole::Lse));
    }
    views.push((out, TensorRole::Output));
    views.extend(lse_out.map(|l| (l, TensorRole::Lse)));
    let narrow = |v: &TensorView, p: &Part| {
        v.narrowed(0, p.b0, p.nb)
            .narrowed(1, p.h0, p.nh)
            .narrowed(2, p.r0, p.nr)
    };
    // The first view of `p` that does not fit, with its bytes (the f32 fold intermediates
    // of more than two parts count as the output).
    let too_large = |p: &Part| {
        let fold = (p.nb * p.nh * p.nr * dv) as u64 * 4;
        if parts.len() > 2 && fold > max {
            return Some((TensorRole::Output, fold));
        }
        views.iter().find_map(|&(v, role)| {
            let size = binding_size(&narrow(v, p), align);
            (size > max).then_some((role, size))
        })
    };
    let whole = Part {
        b0: 0,
        nb: b,
        h0: 0,
        nh: h,
        r0: 0,
        nr: s,
        k0: 0,
        nk: 0,
    };
    let tiles = if too_large(&whole).is_none() {
        vec![whole]
    } else {
        split::tile(whole, 1, true, |p| too_large(p).is_none()).map_err(|p| {
            let (role, size) = too_large(&p).unwrap_or((TensorRole::Output, 0));
            Error::binding(role, size, max)
        })?
    };
    // f32 accumulators for folds of more than two parts, sized for the largest tile.
    let rows = tiles.iter().map(|t| t.nb * t.nh * t.nr).max().unwrap_or(1);
    let mut fold = merge::Fold::new(rt, if parts.len() > 2 { rows } else { 1 }, dv)?;
    for t in &tiles {
        let narrowed: Vec<(TensorView, TensorView)> = parts
            .iter()
            .map(|(o, l)| (narrow(o, t), narrow(l, t)))
            .collect();
        let pairs: Vec<(&TensorView, &TensorView)> = narrowed.iter().map(|(o, l)| (o, l)).collect();
        let lse = lse_out.map(|l| narrow(l, t));
        record_tile(
            rt,
            encoder,
            &pairs,
            &narrow(out, t),
            lse.as_ref(),
            &mut fold,
        )?;
    }
    Ok(())
}

/// Records a merge of `parts` (two at a time, through the f32 accumulators of `fold`).
fn record_tile(
    rt: &Runtime,
    enc: &mut wgpu::CommandEncoder,
    parts: &[(&TensorView, &TensorView)],
    out: &TensorView,
    lse_out: Option<&TensorView>,
    fold: &mut merge::Fold,
) -> Result<()> {
    let one = |i: usize| merge::Input::one(parts[i].0, parts[i].1);
    if parts.len() <= 2 {
        let b = (parts.len() == 2).then(|| one(1));
        return merge::record(rt, enc, one(0), b, out, lse_out);
    }
    // More than two: fold left through the accumulators.
    let [b, h, s, _] = out.shape;
    fold.reshape([b, h, s]);
    fold.merge(rt, enc, one(0), one(1), None)?;
    for n in 2..parts.len() {
        let (o, l) = fold.current();
        let last = (n + 1 == parts.len()).then_some((out, lse_out));
        fold.merge(rt, enc, merge::Input::one(&o, &l), one(n), last)?;
    }
    Ok(())
}
