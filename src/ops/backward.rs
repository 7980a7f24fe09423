//! A backward call, recorded: validated, planned, gradients that share a buffer with an
//! input staged through scratch, and run through the backward kernels.

use crate::data::backward::{BackwardInputs, GradientViews};
use crate::data::options::{AttentionOptions, Backend};
use crate::data::problem::Problem;
use crate::data::tensor::{DType, TensorView};
use crate::error::{Result, TensorRole};
use crate::kernels::backward;
use crate::ops::attention::{Staged, stage};
use crate::plan::backward::BackwardPlan;
use crate::plan::validate;
use crate::plan::variant::{ModuleKey, ShaderVariant};
use crate::runtime::Runtime;
use crate::runtime::arena::CallScope;

/// Every buffer a backward call reads or writes, with the tensor it holds.
pub(crate) fn call_buffers<'a>(
    x: &BackwardInputs<'a>,
    g: &'a GradientViews,
    opts: &'a AttentionOptions,
) -> Vec<(&'a wgpu::Buffer, TensorRole)> {
    let mut b = crate::ops::attention::call_buffers(x.q, x.k, x.v, Some(x.out), opts);
    b.extend([
        (&x.d_out.buffer, TensorRole::OutputGrad),
        (&x.lse.buffer, TensorRole::Lse),
        (&g.dq.buffer, TensorRole::QueryGrad),
        (&g.dk.buffer, TensorRole::KeyGrad),
        (&g.dv.buffer, TensorRole::ValueGrad),
    ]);
    b.extend(g.dbias.as_ref().map(|x| (&x.buffer, TensorRole::BiasGrad)));
    b.extend(g.dsink.as_ref().map(|x| (&x.buffer, TensorRole::SinkGrad)));
    b
}

/// The validated problem and plan of a backward call.
pub(crate) fn plan(
    rt: &Runtime,
    x: &BackwardInputs<'_>,
    g: &GradientViews,
    opts: &AttentionOptions,
) -> Result<(Problem, BackwardPlan)> {
    let p = validate::validate_backward(x, g, opts)?;
    let plan = crate::plan::backward::plan_backward(&p, rt.caps(), opts)?;
    Ok((p, plan))
}

/// Every pipeline a backward call with this plan records.
pub(crate) fn pipelines(
    plan: &BackwardPlan,
    opts: &AttentionOptions,
    dbias: bool,
) -> Vec<(ModuleKey, &'static str)> {
    let key = |entry| (backward::module_for(plan.tile, entry), entry);
    let mut keys = vec![key("prep"), key("finish")];
    if opts.sinks.is_some() {
        keys.push(key("dsink"));
    }
    if plan.backend == Backend::Naive {
        let fwd = ModuleKey::Attention {
            variant: ShaderVariant::Naive,
            counters: false,
        };
        keys.extend([(fwd, "scores"), (fwd, "softmax")]);
        keys.extend(["n_dv", "n_ds", "n_dk", "n_dq"].map(key));
        if dbias {
            keys.push(key("n_dbias"));
        }
        if opts.softcap.is_some() {
            keys.push(key("n_slope"));
        }
    } else {
        keys.extend([key("kv"), key("dq")]);
        if dbias {
            keys.push(key("dbias"));
        }
        if opts
            .mask
            .bool_mask
            .as_ref()
            .is_some_and(|b| b.summary.is_none())
        {
            keys.push((ModuleKey::Summary, "main"));
        }
    }
    keys
}

/// Records the backward pass into `encoder`; returns the plan that ran.
pub(crate) fn record(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    x: &BackwardInputs<'_>,
    g: &GradientViews,
    opts: &AttentionOptions,
) -> Result<BackwardPlan> {
    let _call = CallScope::begin();
    let (p, plan) = plan(rt, x, g, opts)?;
    log::debug!("wgpu-attention backward {}: {plan}", opts.mask.describe());
    let m = &opts.mask;
    let inputs = [x.q, x.k, x.v, x.out, x.d_out, x.lse];
    let shares = |w: &TensorView| {
        inputs
            .iter()
            .copied()
            .chain(m.bias.as_ref())
            .chain(m.bool_mask.as_ref().map(|b| &b.view))
            .any(|x| x.buffer == w.buffer)
    };
    // Gradients that share a buffer with an input are written through scratch: all those
    // of one buffer through one span of it, copied in and back once, so that copying one
    // back cannot restore a word another wrote (16-bit gradients may share a word).
    let grads = [
        Some(&g.dq),
        Some(&g.dk),
        Some(&g.dv),
        g.dbias.as_ref(),
        g.dsink.as_ref(),
    ];
    let roles = [
        TensorRole::QueryGrad,
        TensorRole::KeyGrad,
        TensorRole::ValueGrad,
        TensorRole::BiasGrad,
        TensorRole::SinkGrad,
    ];
    // (buffer, first byte, end byte, the first gradient's role), word-aligned.
    let mut spans: Vec<(wgpu::Buffer, u64, u64, TensorRole)> = Vec::new();
    for (w, role) in grads.iter().zip(roles) {
        let Some(w) = w.filter(|w| shares(w)) else {
            continue;
        };
        let start = w.offset / 4 * 4;
        let end = w.end_byte().unwrap_or(u64::MAX).div_ceil(4) * 4;
        match spans.iter_mut().find(|x| x.0 == w.buffer) {
            Some(x) => (x.1, x.2) = (x.1.min(start), x.2.max(end)),
            None => spans.push((w.buffer.clone(), start, end, role)),
        }
    }
    const PURPOSES: [&str; 5] = [
        "wgpu-attention staged gradients 0",
        "wgpu-attention staged gradients 1",
        "wgpu-attention staged gradients 2",
        "wgpu-attention staged gradients 3",
        "wgpu-attention staged gradients 4",
    ];
    let mut staged: Vec<(u64, Staged)> = Vec::new();
    for ((buffer, start, end, role), purpose) in spans.iter().zip(PURPOSES) {
        let words = ((end - start) / 4) as usize;
        let span = TensorView::new(
            buffer.clone(),
            DType::F32,
            [1, 1, 1, words],
            [words, words, words, 1],
            *start,
        );
        staged.push((*start, stage(rt, encoder, &span, *role, purpose)?));
    }
    // A gradient's view, moved into its span's scratch where it is staged.
    let pick = |w: &TensorView| -> TensorView {
        staged
            .iter()
            .find(|(_, s)| s.back_buffer() == &w.buffer)
            .map_or_else(
                || w.clone(),
                |(start, s)| TensorView {
                    buffer: s.view.buffer.clone(),
                    offset: w.offset - start,
                    ..w.clone()
                },
            )
    };
    let dq = pick(&g.dq);
    let dk = pick(&g.dk);
    let dv = pick(&g.dv);
    let dbias = g.dbias.as_ref().map(pick);
    let dsink = g.dsink.as_ref().map(pick);
    let views = backward::Views {
        q: x.q,
        k: x.k,
        v: x.v,
        out: x.out,
        d_out: x.d_out,
        lse: x.lse,
        dq: &dq,
        dk: &dk,
        dv: &dv,
        dbias: dbias.as_ref(),
        dsink: dsink.as_ref(),
    };
    let fwd_opts = AttentionOptions {
        lse_output: None,
        ..opts.clone()
    };
    let flash = plan.backend == Backend::Flash;
    backward::record(rt, encoder, &p, plan.tile, flash, &views, &fwd_opts)?;
    for (_, s) in &staged {
        s.unstage(encoder);
    }
    Ok(plan)
}
