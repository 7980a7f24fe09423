//! Trains a Conformer-style self-attention layer with this crate's backward pass: Q, K and
//! V projections and a learned relative-position bias (one scalar per head and offset
//! `j - i`, as in Conformer, Transformer-XL and T5), over a padded batch, by plain SGD.
//!
//! The bias table is expanded on the host into the dense `[1, H, S, S]` float bias that
//! WeNet hands to SDPA, and the table's gradient is the crate's bias gradient summed along
//! each diagonal. The target is the output of a fixed "teacher" layer whose heads attend
//! to the previous token and to a local window, so the student has a pattern to find and
//! its loss falls. Step 0's gradients are checked against the naive backend.
//!
//! `cargo run --release --example train_relpos`

use std::time::Instant;

use wgpu_attention::reference::random_uniform as random;
use wgpu_attention::{
    AttentionOptions, Backend, BackwardInputs, Context, DType, Gradients, Mask, Tensor,
};

// Small enough that a step takes a few milliseconds even on a CPU Vulkan driver.
const B: usize = 4;
const H: usize = 2;
const S: usize = 24;
const DH: usize = 16;
const D: usize = H * DH;
/// Rel-pos offsets `j - i` run over `-(S - 1)..=S - 1`.
const OFFSETS: usize = 2 * S - 1;
const LENGTHS: [u32; B] = [24, 17, 9, 20];
const STEPS: usize = 300;
// The loss is a mean, so dO (and every gradient) carries a 1/N: hence the large rates, picked
// by hand so that the loss falls steadily over these steps.
const LR_W: f32 = 2.0;
const LR_REL: f32 = 100.0;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The trained parameters. Projections are `[D, D]`, column `h * DH + c` feeding head `h`.
struct Layer {
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    /// `rel[h * OFFSETS + (j - i + S - 1)]`.
    rel: Vec<f32>,
}

impl Layer {
    fn random(seed: u64, qk_scale: f32, v_scale: f32, rel: Vec<f32>) -> Self {
        let w = |s, scale: f32| random(D * D, s).iter().map(|x| x * scale).collect();
        Layer {
            wq: w(seed, qk_scale),
            wk: w(seed + 1, qk_scale),
            wv: w(seed + 2, v_scale),
            rel,
        }
    }
}

/// `x W` for `x: [B, S, D]`, split into heads as a BHSD `[B, H, S, DH]` tensor.
fn project(x: &[f32], w: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; B * H * S * DH];
    for b in 0..B {
        for i in 0..S {
            let row = &x[(b * S + i) * D..][..D];
            for h in 0..H {
                let o = &mut out[((b * H + h) * S + i) * DH..][..DH];
                for (k, &xk) in row.iter().enumerate() {
                    let wrow = &w[k * D + h * DH..][..DH];
                    for (oc, &wc) in o.iter_mut().zip(wrow) {
                        *oc += xk * wc;
                    }
                }
            }
        }
    }
    out
}

/// The gradient of `W` from that of `x W` (heads merged back): `xᵀ d`.
fn project_grad(x: &[f32], d: &[f32]) -> Vec<f32> {
    let mut dw = vec![0f32; D * D];
    for b in 0..B {
        for i in 0..S {
            let row = &x[(b * S + i) * D..][..D];
            for h in 0..H {
                let g = &d[((b * H + h) * S + i) * DH..][..DH];
                for (k, &xk) in row.iter().enumerate() {
                    let dwrow = &mut dw[k * D + h * DH..][..DH];
                    for (dc, &gc) in dwrow.iter_mut().zip(g) {
                        *dc += xk * gc;
                    }
                }
            }
        }
    }
    dw
}

/// The rel-pos table as the dense `[1, H, S, S]` bias SDPA takes.
fn expand_rel(rel: &[f32]) -> Vec<f32> {
    let mut bias = vec![0f32; H * S * S];
    for h in 0..H {
        for i in 0..S {
            for j in 0..S {
                bias[(h * S + i) * S + j] = rel[h * OFFSETS + j + S - 1 - i];
            }
        }
    }
    bias
}

/// The table's gradient: each entry is shared by one diagonal of the dense bias.
fn reduce_rel(dbias: &[f32]) -> Vec<f32> {
    let mut drel = vec![0f32; H * OFFSETS];
    for h in 0..H {
        for i in 0..S {
            for j in 0..S {
                drel[h * OFFSETS + j + S - 1 - i] += dbias[(h * S + i) * S + j];
            }
        }
    }
    drel
}

fn sgd(param: &mut [f32], grad: &[f32], lr: f32) {
    for (p, g) in param.iter_mut().zip(grad) {
        *p -= lr * g;
    }
}

/// Overwrites a tensor in place, so the options (which hold the bias view) and the cached
/// bind groups stay valid across steps.
fn write(ctx: &Context, t: &Tensor, data: &[f32]) {
    ctx.queue()
        .write_buffer(t.buffer(), 0, bytemuck::cast_slice(data));
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().map(|x| x.abs()).fold(0.0, f32::max)
}

fn main() -> Res<()> {
    env_logger::init();
    let t0 = Instant::now();
    let ctx = Context::new_blocking()?;
    println!(
        "adapter: {} ({:?})",
        ctx.adapter_info().name,
        ctx.adapter_info().backend
    );
    println!("layer: b={B} h={H} s={S} d_head={DH}, lengths {LENGTHS:?}, {STEPS} SGD steps");

    let x = random(B * S * D, 1);
    // Rows and keys at or past each utterance's length are padding.
    let valid = |b: usize, i: usize| i < LENGTHS[b] as usize;

    let shape = [B, H, S, DH];
    let zeros = vec![0f32; B * H * S * DH];
    let q = ctx.upload_f32(&zeros, shape)?;
    let k = ctx.upload_f32(&zeros, shape)?;
    let v = ctx.upload_f32(&zeros, shape)?;
    let out = ctx.empty(shape, DType::F32)?;
    let d_out = ctx.empty(shape, DType::F32)?;
    let lse = ctx.empty([B, H, S, 1], DType::F32)?;
    let bias = ctx.upload_f32(&vec![0f32; H * S * S], [1, H, S, S])?;
    let mask = Mask::none()
        .bias(bias.view().clone())
        .key_lengths(LENGTHS.to_vec())
        .query_lengths(LENGTHS.to_vec());
    let opts = AttentionOptions::with_mask(mask).lse_output(lse.view().clone());
    let grads = Gradients {
        dq: ctx.empty(shape, DType::F32)?,
        dk: ctx.empty(shape, DType::F32)?,
        dv: ctx.empty(shape, DType::F32)?,
        dbias: Some(ctx.empty([1, H, S, S], DType::F32)?),
        dsink: None,
    };
    let grad_views = grads.views();
    let inputs = BackwardInputs {
        q: q.view(),
        k: k.view(),
        v: v.view(),
        out: out.view(),
        d_out: d_out.view(),
        lse: lse.view(),
    };

    let forward = |layer: &Layer| -> Res<Vec<f32>> {
        write(&ctx, &q, &project(&x, &layer.wq));
        write(&ctx, &k, &project(&x, &layer.wk));
        write(&ctx, &v, &project(&x, &layer.wv));
        write(&ctx, &bias, &expand_rel(&layer.rel));
        ctx.attention_into_blocking(q.view(), k.view(), v.view(), out.view(), &opts)?;
        Ok(ctx.download_f32_blocking(out.view())?)
    };

    // The teacher: weak content attention, so its rel-pos pattern dominates. Head 0 looks
    // at the previous token, head 1 at a window that decays with distance.
    let mut teacher_rel = vec![0f32; H * OFFSETS];
    for off in 0..OFFSETS {
        let dist = off as f32 - (S - 1) as f32;
        teacher_rel[off] = if dist == -1.0 { 4.0 } else { 0.0 };
        teacher_rel[OFFSETS + off] = -0.7 * dist.abs();
    }
    let unit = 1.0 / (D as f32).sqrt();
    let teacher = Layer::random(100, 0.3 * unit, 2.0 * unit, teacher_rel.clone());
    let target = forward(&teacher)?;

    let mut layer = Layer::random(10, unit, unit, vec![0f32; H * OFFSETS]);
    let n_valid = LENGTHS.iter().map(|&l| l as usize).sum::<usize>() * H * DH;
    let mut first_loss = None;
    let mut loss = f32::NAN;
    let train = Instant::now();
    for step in 0..=STEPS {
        let o = forward(&layer)?;

        // Mean squared error over the valid rows only: padded rows (zeros in both the output
        // and the target) are no part of the loss, so their dO is 0.
        let mut d = vec![0f32; o.len()];
        let mut sum = 0f64;
        for b in 0..B {
            for h in 0..H {
                for i in (0..S).filter(|&i| valid(b, i)) {
                    let at = ((b * H + h) * S + i) * DH;
                    for c in at..at + DH {
                        let e = o[c] - target[c];
                        sum += (e * e) as f64;
                        d[c] = 2.0 * e / n_valid as f32;
                    }
                }
            }
        }
        loss = (sum / n_valid as f64) as f32;
        let first = *first_loss.get_or_insert(loss);
        if step % 25 == 0 {
            println!(
                "step {step:4}  loss {loss:.6}  ({:.3} of step 0)",
                loss / first
            );
        }
        if step == STEPS {
            break;
        }

        write(&ctx, &d_out, &d);
        let plan = ctx.attention_backward_into_blocking(&inputs, &grad_views, &opts)?;
        let dq = ctx.download_f32_blocking(grads.dq.view())?;
        let dk = ctx.download_f32_blocking(grads.dk.view())?;
        let dv = ctx.download_f32_blocking(grads.dv.view())?;
        let dbias = ctx.download_f32_blocking(grads.dbias.as_ref().ok_or("no dbias")?.view())?;

        if step == 0 {
            println!("  backward: {plan}");
            check_step0(&ctx, &inputs, &opts, [&dq, &dk, &dv, &dbias], &valid)?;
        }

        sgd(&mut layer.wq, &project_grad(&x, &dq), LR_W);
        sgd(&mut layer.wk, &project_grad(&x, &dk), LR_W);
        sgd(&mut layer.wv, &project_grad(&x, &dv), LR_W);
        sgd(&mut layer.rel, &reduce_rel(&dbias), LR_REL);
    }
    let first = first_loss.ok_or("no steps ran")?;
    let train_s = train.elapsed().as_secs_f64();

    // Adding a constant to a head's whole table adds it to every logit of every row, which
    // the softmax ignores: the tables are only comparable relative to one offset.
    let near = |rel: &[f32], h: usize| -> Vec<String> {
        let centre = rel[h * OFFSETS + S - 1];
        (S - 4..=S + 2)
            .map(|off| format!("{:+.2}", rel[h * OFFSETS + off] - centre))
            .collect()
    };
    println!("rel-pos bias at offsets j-i = -3..=3, relative to offset 0:");
    for h in 0..H {
        println!("  head {h} learned {:?}", near(&layer.rel, h));
        println!("         teacher {:?}", near(&teacher_rel, h));
    }
    println!(
        "loss {first:.6} -> {loss:.6} ({:.3}x) in {STEPS} steps, {:.1} ms/step; total {:.1} s",
        loss / first,
        train_s * 1e3 / STEPS as f64,
        t0.elapsed().as_secs_f64()
    );
    if !loss.is_finite() || loss >= 0.5 * first {
        return Err(format!("the loss did not halve: {first:.6} -> {loss:.6}").into());
    }
    Ok(())
}

/// Runs the same backward on the naive backend and compares every gradient; also checks
/// that padding gets no gradient.
fn check_step0(
    ctx: &Context,
    inputs: &BackwardInputs<'_>,
    opts: &AttentionOptions,
    flash: [&[f32]; 4],
    valid: &dyn Fn(usize, usize) -> bool,
) -> Res<()> {
    let naive_opts = opts.clone().backend(Backend::Naive);
    let naive = ctx.attention_backward_blocking(inputs, &naive_opts)?;
    let naive_dbias = naive.dbias.as_ref().ok_or("naive gave no dbias")?;
    let names = ["dq", "dk", "dv", "dbias"];
    let views = [
        naive.dq.view(),
        naive.dk.view(),
        naive.dv.view(),
        naive_dbias.view(),
    ];
    // The gradients are small (dO carries the mean's 1/N), so the difference is also
    // reported relative to each gradient's largest element.
    let mut worst = 0f32;
    for ((name, view), got) in names.iter().zip(views).zip(flash) {
        let want = ctx.download_f32_blocking(view)?;
        let (diff, scale) = (max_abs_diff(got, &want), max_abs(&want));
        let rel = diff / scale.max(f32::MIN_POSITIVE);
        println!(
            "  step 0 {name:<5} vs naive: max_abs_diff {diff:.2e} (max |grad| {scale:.2e}, relative {rel:.2e})"
        );
        worst = worst.max(diff).max(rel);
    }
    if worst > 1e-4 {
        return Err(format!("flash and naive gradients differ by {worst:.2e}").into());
    }

    let mut padded = 0f32;
    for b in 0..B {
        for h in 0..H {
            for i in (0..S).filter(|&i| !valid(b, i)) {
                let at = ((b * H + h) * S + i) * DH;
                for g in &flash[..3] {
                    padded = padded.max(max_abs(&g[at..at + DH]));
                }
            }
        }
    }
    println!("  step 0 padded rows/keys: max |dq|,|dk|,|dv| = {padded:.1e}");
    if padded != 0.0 {
        return Err("padding received a gradient".into());
    }
    Ok(())
}
