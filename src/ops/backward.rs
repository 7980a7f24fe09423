//! A backward call, recorded: validated, planned, gradients that share a buffer with an
//! input staged through scratch, and run through the backward kernels.

use crate::data::backward::{BackwardInputs, GradientViews};
use crate::data::options::{AttentionOptions, Backend};
use crate::data::problem::Problem;
use crate::data::tensor::TensorView;
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
    let mut staged_all: Vec<Option<Staged>> = Vec::new();
    let grads = [
        (
            Some(&g.dq),
            TensorRole::QueryGrad,
            "wgpu-attention staged dq",
        ),
        (Some(&g.dk), TensorRole::KeyGrad, "wgpu-attention staged dk"),
        (
            Some(&g.dv),
            TensorRole::ValueGrad,
            "wgpu-attention staged dv",
        ),
        (
            g.dbias.as_ref(),
            TensorRole::BiasGrad,
            "wgpu-attention staged dbias",
        ),
    ];
    for (view, role, purpose) in grads {
        let s = match view {
            Some(w) if shares(w) => Some(stage(rt, encoder, w, role, purpose)?),
            _ => None,
        };
        staged_all.push(s);
    }
    let pick = |n: usize, w: &'_ TensorView| -> TensorView {
        staged_all[n]
            .as_ref()
            .map_or_else(|| w.clone(), |s| s.view.clone())
    };
    let dq = pick(0, &g.dq);
    let dk = pick(1, &g.dk);
    let dv = pick(2, &g.dv);
    let dbias = g.dbias.as_ref().map(|w| pick(3, w));
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
    };
    let fwd_opts = AttentionOptions {
        lse_output: None,
        ..opts.clone()
    };
    let flash = plan.backend == Backend::Flash;
    backward::record(rt, encoder, &p, plan.tile, flash, &views, &fwd_opts)?;
    for s in staged_all.iter().flatten() {
        s.unstage(encoder);
    }
    Ok(plan)
}
