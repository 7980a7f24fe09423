//! Conformer relative-position attention as WeNet computes it with SDPA: the `matrix_bd`
//! term ((q + pos_bias_v) · pᵀ / sqrt(d_k)) is passed as an additive float bias, together
//! with a key-padding mask, and `q + pos_bias_u` is the query.
//!
//! The result is compared with the naive backend and with a plain CPU computation of the
//! same layer. Like WeNet's `use_sdpa` flag, the backend is an explicit, reversible choice:
//!
//! `cargo run --release --example conformer_relpos [-- --backend auto|flash|memeff|naive]`

use wgpu_attention::{AttentionOptions, Backend, Context, Mask};

use wgpu_attention::reference::random_uniform as random;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let args: Vec<String> = std::env::args().collect();
    let backend = match args
        .iter()
        .position(|a| a == "--backend")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
    {
        None | Some("auto") => Backend::Auto,
        Some("flash") => Backend::Flash,
        Some("memeff") => Backend::MemoryEfficient,
        Some("naive") => Backend::Naive,
        Some(other) => return Err(format!("unknown backend {other}").into()),
    };
    let ctx = Context::new_blocking()?;
    println!(
        "adapter: {} ({:?})",
        ctx.adapter_info().name,
        ctx.adapter_info().backend
    );

    // A Conformer block: 4 heads of 64, 2 utterances of up to 200 frames.
    let (b, h, t, dk) = (2usize, 4usize, 200usize, 64usize);
    let lengths = [200u32, 143];
    let q = random(b * h * t * dk, 1); // already projected, per head
    let k = random(b * h * t * dk, 2);
    let v = random(b * h * t * dk, 3);
    let p = random(h * t * dk, 4); // linear_pos(pos_emb), per head; WeNet's pos_emb has batch 1
    let pos_bias_u = random(h * dk, 5);
    let pos_bias_v = random(h * dk, 6);
    let scale = 1.0 / (dk as f32).sqrt();
    let idx = |ib: usize, ih: usize, i: usize| ((ib * h + ih) * t + i) * dk;

    // q_with_bias_u, and matrix_bd = (q + pos_bias_v) · pᵀ, scaled: WeNet's float mask.
    let mut q_u = q.clone();
    let mut bd = vec![0f32; b * h * t * t];
    for ib in 0..b {
        for ih in 0..h {
            for i in 0..t {
                for c in 0..dk {
                    q_u[idx(ib, ih, i) + c] += pos_bias_u[ih * dk + c];
                }
                for j in 0..t {
                    let mut s = 0.0f64;
                    for c in 0..dk {
                        s += (q[idx(ib, ih, i) + c] + pos_bias_v[ih * dk + c]) as f64
                            * p[(ih * t + j) * dk + c] as f64;
                    }
                    bd[((ib * h + ih) * t + i) * t + j] = s as f32 * scale;
                }
            }
        }
    }

    let shape = [b, h, t, dk];
    let qg = ctx.upload_f32(&q_u, shape)?;
    let kg = ctx.upload_f32(&k, shape)?;
    let vg = ctx.upload_f32(&v, shape)?;
    let bias = ctx.upload_f32(&bd, [b, h, t, t])?;
    let mask = Mask::none()
        .bias(bias.view().clone())
        .key_lengths(lengths.to_vec());
    let opts = AttentionOptions::with_mask(mask).backend(backend);
    let plan = ctx.plan(qg.view(), kg.view(), vg.view(), &opts)?;
    let out = ctx.attention_blocking(qg.view(), kg.view(), vg.view(), &opts)?;
    let got = ctx.download_f32_blocking(out.view())?;
    let naive = ctx.attention_blocking(
        qg.view(),
        kg.view(),
        vg.view(),
        &opts.clone().backend(Backend::Naive),
    )?;
    let naive = ctx.download_f32_blocking(naive.view())?;

    // The layer on the CPU: scores = (matrix_ac + matrix_bd) / sqrt(d_k), padded keys masked.
    let mut cpu = vec![0f64; b * h * t * dk];
    for ib in 0..b {
        let valid = lengths[ib] as usize;
        for ih in 0..h {
            for i in 0..t {
                let scores: Vec<f64> = (0..valid)
                    .map(|j| {
                        let ac: f64 = (0..dk)
                            .map(|c| q_u[idx(ib, ih, i) + c] as f64 * k[idx(ib, ih, j) + c] as f64)
                            .sum();
                        ac * scale as f64 + bd[((ib * h + ih) * t + i) * t + j] as f64
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                for (j, s) in scores.iter().enumerate() {
                    let pj = (s - m).exp() / z;
                    for c in 0..dk {
                        cpu[idx(ib, ih, i) + c] += pj * v[idx(ib, ih, j) + c] as f64;
                    }
                }
            }
        }
    }
    let err_naive = got
        .iter()
        .zip(&naive)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let err_cpu = got
        .iter()
        .zip(&cpu)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0f64, f64::max);
    println!("relative-position attention: b={b} h={h} t={t} d_k={dk}, lengths {lengths:?}");
    println!("  backend: {} ({})", plan.backend.name(), plan.reason);
    println!("  max_abs_err vs naive backend = {err_naive:.2e}");
    println!("  max_abs_err vs CPU layer     = {err_cpu:.2e}");
    if err_naive > 1e-5 || err_cpu > 1e-5 {
        return Err("results differ beyond 1e-5".into());
    }
    Ok(())
}
