//! Runs attention on the default adapter for a few mask kinds and checks each result
//! against the f64 CPU reference.
//!
//! `cargo run --release --example demo`

use std::time::Instant;

use wgpu_attention::reference::{self, HostMask, HostTensor};
use wgpu_attention::{AttentionOptions, CausalAlignment, Context, Mask};

use wgpu_attention::reference::random_uniform as random;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let ctx = Context::new_blocking()?;
    let info = ctx.adapter_info();
    println!(
        "adapter: {} ({:?}, {:?})",
        info.name, info.backend, info.device_type
    );

    let (b, h, s, d) = (2, 4, 256, 64);
    let shape = [b, h, s, d];
    let n = b * h * s * d;
    let (qh, kh, vh) = (random(n, 1), random(n, 2), random(n, 3));
    let q = ctx.upload_f32(&qh, shape)?;
    let k = ctx.upload_f32(&kh, shape)?;
    let v = ctx.upload_f32(&vh, shape)?;
    let bias_shape = [1, h, s, s];
    let bias_h = random(h * s * s, 4);
    let bias = ctx.upload_f32(&bias_h, bias_shape)?;
    let key_lengths = vec![s as u32, (s / 2 + 3) as u32];

    let cases: Vec<(&str, Mask, HostMask)> = vec![
        ("no mask", Mask::none(), HostMask::default()),
        (
            "causal",
            Mask::none().causal(CausalAlignment::TopLeft),
            HostMask {
                causal: true,
                ..Default::default()
            },
        ),
        (
            "key padding",
            Mask::none().key_lengths(key_lengths.clone()),
            HostMask {
                key_lengths: Some(&key_lengths),
                ..Default::default()
            },
        ),
        (
            "additive bias",
            Mask::none().bias(bias.view().clone()),
            HostMask {
                bias: Some(HostTensor {
                    data: &bias_h,
                    shape: bias_shape,
                }),
                ..Default::default()
            },
        ),
    ];

    let scale = 1.0 / (d as f64).sqrt();
    let mut worst = 0.0f64;
    let mut first_calls = 0.0f64;
    for (name, mask, host_mask) in cases {
        let opts = AttentionOptions::with_mask(mask);
        let plan = ctx.plan(q.view(), k.view(), v.view(), &opts)?;
        // The first call compiles the pipeline (what a cold start costs), then one warm run
        // is timed.
        let t_first = Instant::now();
        let out = ctx.attention_blocking(q.view(), k.view(), v.view(), &opts)?;
        ctx.wait_blocking()?;
        let first = t_first.elapsed().as_secs_f64();
        first_calls += first;
        let t0 = Instant::now();
        ctx.attention_into_blocking(q.view(), k.view(), v.view(), out.view(), &opts)?;
        ctx.wait_blocking()?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let got = ctx.download_f32_blocking(out.view())?;
        let want = reference::attention(
            &HostTensor { data: &qh, shape },
            &HostTensor { data: &kh, shape },
            &HostTensor { data: &vh, shape },
            scale,
            &host_mask,
        );
        let err = got
            .iter()
            .zip(&want)
            .map(|(&g, &w)| {
                if g.is_finite() {
                    (g as f64 - w).abs()
                } else {
                    f64::INFINITY
                }
            })
            .fold(0.0, f64::max);
        worst = worst.max(err);
        println!(
            "{name:<14} backend={:<7} time={ms:8.2} ms  first call={:7.1} ms  max_abs_err={err:.3e}",
            plan.backend.name(),
            first * 1e3
        );
    }
    let compiled = ctx.pipeline_compile_times();
    println!(
        "first calls: {first_calls:.2} s in all, {} pipelines compiled in {:.2} s",
        compiled.len(),
        compiled.iter().map(|(_, t)| t.as_secs_f64()).sum::<f64>()
    );
    if worst > 1e-5 {
        return Err(format!("max_abs_err {worst:.3e} exceeds 1e-5").into());
    }
    Ok(())
}
