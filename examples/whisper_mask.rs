//! Whisper-style attention with and without a padding mask, through `Backend::Auto`.
//!
//! In PyTorch a padding mask pushes SDPA off its flash kernel (0.028 s -> 0.138 s for
//! Whisper). Here the mask stays inside the flash kernel and padded key tiles are skipped,
//! so the masked call costs less than the unmasked one.
//!
//! `cargo run --release --example whisper_mask [-- --small]`

use std::time::Instant;

use wgpu_attention::{AttentionOptions, Backend, Context, Mask, Tensor};

use wgpu_attention::reference::random_uniform as random;

struct Workload {
    name: &'static str,
    b: usize,
    h: usize,
    sq: usize,
    sk: usize,
    d: usize,
    /// Valid encoder frames per batch item.
    frames: Vec<u32>,
    /// Whether the queries are the (padded) encoder frames too.
    self_attention: bool,
}

fn time_ms(
    ctx: &Context,
    f: impl Fn() -> Result<(), wgpu_attention::Error>,
) -> Result<f64, wgpu_attention::Error> {
    f()?; // warm-up: compiles the pipeline
    ctx.wait_blocking()?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = Instant::now();
        f()?;
        ctx.wait_blocking()?;
        best = best.min(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

fn run(ctx: &Context, w: &Workload) -> Result<(), Box<dyn std::error::Error>> {
    let up = |s: usize, d: usize, seed: u64| -> Result<Tensor, wgpu_attention::Error> {
        ctx.upload_f32(&random(w.b * w.h * s * d, seed), [w.b, w.h, s, d])
    };
    let q = up(w.sq, w.d, 1)?;
    let k = up(w.sk, w.d, 2)?;
    let v = up(w.sk, w.d, 3)?;
    let mut mask = Mask::none().key_lengths(w.frames.clone());
    if w.self_attention {
        mask = mask.query_lengths(w.frames.clone());
    }
    let plain = AttentionOptions::default();
    let masked = AttentionOptions::with_mask(mask);
    let out = ctx.empty([w.b, w.h, w.sq, w.d], wgpu_attention::DType::F32)?;
    let plan_plain = ctx.plan(q.view(), k.view(), v.view(), &plain)?;
    let plan_masked = ctx.plan(q.view(), k.view(), v.view(), &masked)?;
    let t_plain = time_ms(ctx, || {
        ctx.attention_into_blocking(q.view(), k.view(), v.view(), out.view(), &plain)
            .map(|_| ())
    })?;
    let t_masked = time_ms(ctx, || {
        ctx.attention_into_blocking(q.view(), k.view(), v.view(), out.view(), &masked)
            .map(|_| ())
    })?;

    // Check the masked result against the naive backend.
    let got = ctx.download_f32_blocking(out.view())?;
    let reference = ctx.attention_blocking(
        q.view(),
        k.view(),
        v.view(),
        &masked.clone().backend(Backend::Naive),
    )?;
    let want = ctx.download_f32_blocking(reference.view())?;
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);

    println!(
        "{} (b={} h={} sq={} sk={} d={}, valid frames {:?})",
        w.name, w.b, w.h, w.sq, w.sk, w.d, w.frames
    );
    println!(
        "  no mask : backend={:<7} {t_plain:9.1} ms",
        plan_plain.backend.name()
    );
    println!(
        "  padding : backend={:<7} {t_masked:9.1} ms",
        plan_masked.backend.name()
    );
    println!(
        "  masked/unmasked = {:.2}x   max_abs_err vs naive = {err:.2e}",
        t_masked / t_plain
    );
    if err > 1e-4 {
        return Err(format!("{}: masked result differs from naive by {err}", w.name).into());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let small = std::env::args().any(|a| a == "--small");
    let ctx = Context::new_blocking()?;
    let info = ctx.adapter_info();
    println!("adapter: {} ({:?})", info.name, info.backend);
    // Whisper: 1500 encoder frames (30 s of audio), 8 heads of 64 (base), up to 448 decoder tokens.
    let (frames, tokens, b) = if small { (375, 56, 2) } else { (1500, 224, 4) };
    let valid: Vec<u32> = (0..b)
        .map(|i| (frames - i * frames / (2 * b)) as u32)
        .collect();
    let workloads = [
        Workload {
            name: "encoder self-attention",
            b,
            h: 8,
            sq: frames,
            sk: frames,
            d: 64,
            frames: valid.clone(),
            self_attention: true,
        },
        Workload {
            name: "decoder cross-attention",
            b,
            h: 8,
            sq: tokens,
            sk: frames,
            d: 64,
            frames: valid,
            self_attention: false,
        },
    ];
    for w in &workloads {
        run(&ctx, w)?;
    }
    Ok(())
}
