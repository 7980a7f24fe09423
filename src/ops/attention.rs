//! An attention call, recorded: validated, planned, split where a tensor is larger than one
//! storage binding, run through its kernel family, with outputs that share a buffer with an
//! input staged through scratch.

use crate::data::options::AttentionOptions;
use crate::data::problem::Problem;
use crate::data::tensor::{DType, TensorView};
use crate::error::{Error, Result, TensorRole};
use crate::kernels::{attention, flash, memeff, merge, naive};
use crate::plan::dispatch::Plan;
use crate::plan::split::{Layout, PartRows, Split};
use crate::plan::validate;
use crate::plan::variant::{CoopTile, ModuleKey, ShaderVariant};
use crate::runtime::Runtime;
use crate::runtime::arena::CallScope;

/// Every buffer an attention call reads or writes, with the tensor it holds.
pub(crate) fn call_buffers<'a>(
    q: &'a TensorView,
    k: &'a TensorView,
    v: &'a TensorView,
    out: Option<&'a TensorView>,
    opts: &'a AttentionOptions,
) -> Vec<(&'a wgpu::Buffer, TensorRole)> {
    let m = &opts.mask;
    let mut b = vec![
        (&q.buffer, TensorRole::Query),
        (&k.buffer, TensorRole::Key),
        (&v.buffer, TensorRole::Value),
    ];
    b.extend(out.map(|o| (&o.buffer, TensorRole::Output)));
    if let Some(bm) = &m.bool_mask {
        b.push((&bm.view.buffer, TensorRole::BoolMask));
        b.extend(
            bm.summary
                .as_ref()
                .map(|s| (s.buffer(), TensorRole::BoolMask)),
        );
    }
    b.extend(m.bias.as_ref().map(|x| (&x.buffer, TensorRole::Bias)));
    b.extend(
        opts.lse_output
            .as_ref()
            .map(|x| (&x.buffer, TensorRole::Lse)),
    );
    b
}

/// The plan of a call (with its split noted), validated, without recording anything.
pub(crate) fn plan(
    rt: &Runtime,
    [q, k, v]: [&TensorView; 3],
    out: Option<&TensorView>,
    opts: &AttentionOptions,
) -> Result<(Problem, Plan, Option<Split>)> {
    let p = validate::validate(q, k, v, out, opts)?;
    let mut plan = rt.plan(&p, opts)?;
    let layout = Layout::new(&p, [q, k, v], out, opts).for_plan(&plan);
    let split = split(rt, &layout, &mut plan)?;
    Ok((p, plan, split))
}

/// Every pipeline a call with this plan records (for [`crate::Context::prepare`]).
pub(crate) fn pipelines(
    plan: &Plan,
    split: Option<&Split>,
    opts: &AttentionOptions,
) -> Vec<(ModuleKey, &'static str)> {
    let variant = plan.variant;
    let key = ModuleKey::Attention {
        variant,
        counters: false,
    };
    let entries: &[&'static str] = match variant {
        ShaderVariant::Naive => &["scores", "softmax", "pv"],
        _ => &["main"],
    };
    let mut keys: Vec<(ModuleKey, &'static str)> = entries.iter().map(|e| (key, *e)).collect();
    // The launch picks the cooperative-matrix kernel's K/V staging from the views.
    if let ShaderVariant::FlashCoop(t) = variant {
        let elements = ShaderVariant::FlashCoop(CoopTile { pairs: false, ..t });
        keys.push((
            ModuleKey::Attention {
                variant: elements,
                counters: false,
            },
            "main",
        ));
    }
    let bool_mask = opts.mask.bool_mask.as_ref();
    // The parts of a split call compute their own summaries.
    if variant.is_flash() && bool_mask.is_some_and(|b| b.summary.is_none() || split.is_some()) {
        keys.push((ModuleKey::Summary, "main"));
    }
    if plan.key_splits > 1 || split.is_some_and(|s| s.keys.len() > 1) {
        keys.push((ModuleKey::Merge, "main"));
    }
    keys
}

/// An output written through scratch because it shares its buffer with an input: wgpu
/// refuses one buffer bound read-only and read-write in one dispatch, even at disjoint
/// ranges. The words it spans are copied in first (so the bytes around it come back
/// unchanged) and back after the kernels.
pub(crate) struct Staged {
    pub view: TensorView,
    back: (wgpu::Buffer, u64, u64),
}

pub(crate) fn stage(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    w: &TensorView,
    role: TensorRole,
    purpose: &'static str,
) -> Result<Staged> {
    w.check_memory(
        role,
        wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
    )?;
    let start = w.offset / 4 * 4;
    let end = w.end_byte().unwrap_or(u64::MAX).div_ceil(4) * 4;
    let size = end - start;
    let scratch = rt.scratch(purpose, size)?;
    encoder.copy_buffer_to_buffer(&w.buffer, start, &scratch, 0, size);
    Ok(Staged {
        view: TensorView {
            buffer: scratch,
            offset: w.offset - start,
            ..w.clone()
        },
        back: (w.buffer.clone(), start, size),
    })
}

/// `out` and `lse`, each staged where `shares` says it shares a buffer with an input.
pub(crate) fn stage_outputs(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    out: &TensorView,
    lse: Option<&TensorView>,
    shares: impl Fn(&TensorView) -> bool,
) -> Result<[Option<Staged>; 2]> {
    let o = match shares(out) {
        true => Some(stage(
            rt,
            encoder,
            out,
            TensorRole::Output,
            "wgpu-attention staged output",
        )?),
        false => None,
    };
    let l = match lse {
        Some(l) if shares(l) => Some(stage(
            rt,
            encoder,
            l,
            TensorRole::Lse,
            "wgpu-attention staged lse",
        )?),
        _ => None,
    };
    Ok([o, l])
}

impl Staged {
    /// The caller's buffer the staged bytes go back to.
    pub(crate) fn back_buffer(&self) -> &wgpu::Buffer {
        &self.back.0
    }

    pub(crate) fn unstage(&self, encoder: &mut wgpu::CommandEncoder) {
        let (buffer, start, size) = &self.back;
        encoder.copy_buffer_to_buffer(&self.view.buffer, 0, buffer, *start, *size);
    }
}

/// Whether `w` shares its buffer with any input of the call.
fn shares_input(w: &TensorView, [q, k, v]: [&TensorView; 3], opts: &AttentionOptions) -> bool {
    let m = &opts.mask;
    [Some(q), Some(k), Some(v), m.bias.as_ref()]
        .into_iter()
        .chain([m.bool_mask.as_ref().map(|b| &b.view)])
        .flatten()
        .any(|x| x.buffer == w.buffer)
}

/// Records attention into `encoder`, writing `out`; returns the plan that ran. With
/// `counter`, the flash kernel counts its tiles there.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    q: &TensorView,
    k: &TensorView,
    v: &TensorView,
    out: &TensorView,
    opts: &AttentionOptions,
    counter: Option<&wgpu::Buffer>,
) -> Result<Plan> {
    let _call = CallScope::begin();
    let (p, plan, split) = plan(rt, [q, k, v], Some(out), opts)?;
    if counter.is_some() && !plan.variant.is_flash() {
        return Err(Error::backend("tile counting needs the flash backend"));
    }
    log::debug!("wgpu-attention {}: {plan}", opts.mask.describe());
    let [staged_o, staged_l] = stage_outputs(rt, encoder, out, opts.lse_output.as_ref(), |w| {
        shares_input(w, [q, k, v], opts)
    })?;
    let staged_opts;
    let opts = match &staged_l {
        Some(s) => {
            staged_opts = AttentionOptions {
                lse_output: Some(s.view.clone()),
                ..opts.clone()
            };
            &staged_opts
        }
        None => opts,
    };
    let out = staged_o.as_ref().map_or(out, |s| &s.view);
    let views = [q, k, v, out];
    match &split {
        None => record_part(rt, encoder, &p, &plan, views, opts, counter, None)?,
        Some(split) => {
            let layout = Layout::new(&p, [q, k, v], Some(out), opts).for_plan(&plan);
            if split.keys.len() == 1 {
                for part in &split.parts {
                    let c = layout.part_call(&p, views, opts, part);
                    record_part(
                        rt,
                        encoder,
                        &c.problem,
                        &plan,
                        [&c.q, &c.k, &c.v, &c.o],
                        &c.opts,
                        counter,
                        c.rows.as_ref(),
                    )?;
                }
            } else {
                record_key_chunks(rt, encoder, &p, &plan, &layout, split, views, opts, counter)?;
            }
        }
    }
    for s in staged_o.iter().chain(&staged_l) {
        s.unstage(encoder);
    }
    Ok(plan)
}

/// Records a call split over keys too: each part runs once per chunk of keys into f32
/// scratch with its log-sum-exp, and the chunks are merged (two accumulators in turn) into
/// the part's output, and log-sum-exp output if the call asks for one.
#[allow(clippy::too_many_arguments)]
fn record_key_chunks(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    p: &Problem,
    plan: &Plan,
    layout: &Layout<'_>,
    split: &Split,
    views: [&TensorView; 4],
    opts: &AttentionOptions,
    counter: Option<&wgpu::Buffer>,
) -> Result<()> {
    let dv = p.head_dim_v;
    let rows = split
        .parts
        .iter()
        .map(|x| x.nb * x.nh * x.nr)
        .max()
        .unwrap_or(1);
    // The first chunk goes to the fold's accumulator, each later one to this scratch and is
    // then merged into it.
    let mut fold = merge::Fold::new(rt, rows, dv)?;
    let scratch_o = rt.scratch("wgpu-attention key chunk output", (rows * dv) as u64 * 4)?;
    let scratch_l = rt.scratch("wgpu-attention key chunk lse", rows as u64 * 4)?;
    for part in &split.parts {
        let shape = [part.nb, part.nh, part.nr];
        fold.reshape(shape);
        let scratch = (
            TensorView::bhsd(
                scratch_o.clone(),
                DType::F32,
                [shape[0], shape[1], shape[2], dv],
            ),
            TensorView::bhsd(
                scratch_l.clone(),
                DType::F32,
                [shape[0], shape[1], shape[2], 1],
            ),
        );
        for (n, &keys) in split.keys.iter().enumerate() {
            let c = layout.part_call(p, views, opts, &part.keys(keys));
            let (o, l) = if n == 0 {
                fold.current()
            } else {
                scratch.clone()
            };
            let mut part_opts = c.opts.clone();
            part_opts.lse_output = Some(l.clone());
            let problem = Problem {
                dtype_o: DType::F32,
                lse: true,
                ..c.problem.clone()
            };
            record_part(
                rt,
                encoder,
                &problem,
                plan,
                [&c.q, &c.k, &c.v, &o],
                &part_opts,
                counter,
                c.rows.as_ref(),
            )?;
            if n == 0 {
                continue;
            }
            let (ao, al) = fold.current();
            let last = (n + 1 == split.keys.len()).then_some((&c.o, c.opts.lse_output.as_ref()));
            fold.merge(
                rt,
                encoder,
                merge::Input::one(&ao, &al),
                merge::Input::one(&o, &l),
                last,
            )?;
        }
    }
    Ok(())
}

/// The parts a call runs as when a tensor is larger than one storage binding (`None`: one
/// call), noted in `plan`.
fn split(rt: &Runtime, layout: &Layout<'_>, plan: &mut Plan) -> Result<Option<Split>> {
    let max = rt.caps().max_storage_binding;
    let align = rt.limits().min_storage_buffer_offset_alignment as u64;
    let split = layout.split(max, align)?;
    if let Some(split) = &split {
        plan.parts = split.calls() as u32;
        let keys = if split.keys.len() > 1 {
            format!(
                ", each over {} chunks of keys merged by log-sum-exp",
                split.keys.len()
            )
        } else {
            String::new()
        };
        plan.reason = format!(
            "{} Split into {} calls (over batch items, groups of heads, single heads, then query rows{keys}) so that no tensor needs a storage binding over max_storage_buffer_binding_size ({max} bytes).",
            plan.reason,
            split.calls()
        )
        .into();
    }
    Ok(split)
}

/// Records one call (or one part of a split call: `rows` then rebases its mask).
#[allow(clippy::too_many_arguments)]
fn record_part(
    rt: &Runtime,
    encoder: &mut wgpu::CommandEncoder,
    p: &Problem,
    plan: &Plan,
    [q, k, v, out]: [&TensorView; 4],
    opts: &AttentionOptions,
    counter: Option<&wgpu::Buffer>,
    rows: Option<&PartRows>,
) -> Result<()> {
    let v_ = plan.variant;
    let bound = attention::bind(rt, p, [q, k, v, out], opts, v_.is_flash(), rows, 0)?;
    match v_ {
        ShaderVariant::MemoryEfficient(_) => memeff::record(
            rt,
            encoder,
            p,
            v_,
            &bound,
            plan.key_splits,
            out,
            opts.lse_output.as_ref(),
        ),
        ShaderVariant::Naive => naive::record(rt, encoder, p, v_, &bound),
        _ => flash::record(rt, encoder, p, v_, &bound, opts, counter),
    }
}
