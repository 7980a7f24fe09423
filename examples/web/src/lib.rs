//! The demo in the browser: attention over the browser's WebGPU for four mask kinds, each
//! timed (after a warm-up call that compiles its pipeline) and checked against the f64 CPU
//! reference. `index.html` calls [`run_demo`] with a function that prints a line.
//!
//! Everything that waits is `async` and awaited: the browser cannot block.

use wasm_bindgen::prelude::*;
use wgpu_attention::reference::{self, HostMask, HostTensor, random_uniform as random};
use wgpu_attention::{AttentionOptions, CausalAlignment, Context, Error, Mask};

/// Milliseconds from the page's clock (`std::time::Instant` does not exist on wasm32).
fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now())
}

/// Runs the four cases, printing a line each through `print`; an error names what failed.
#[wasm_bindgen]
pub async fn run_demo(print: js_sys::Function) -> Result<(), JsValue> {
    let say = |line: String| {
        let _ = print.call1(&JsValue::NULL, &line.into());
    };
    demo(&say).await.map_err(|e| JsValue::from_str(&e))
}

async fn demo(say: &dyn Fn(String)) -> Result<(), String> {
    let e = |e: Error| e.to_string();
    let ctx = Context::new().await.map_err(e)?;
    let info = ctx.adapter_info();
    say(format!(
        "adapter: {} ({:?}, {:?})",
        info.name, info.backend, info.device_type
    ));

    let (b, h, s, d) = (2, 4, 256, 64);
    let shape = [b, h, s, d];
    let n = b * h * s * d;
    let (qh, kh, vh) = (random(n, 1), random(n, 2), random(n, 3));
    let q = ctx.upload_f32(&qh, shape).map_err(e)?;
    let k = ctx.upload_f32(&kh, shape).map_err(e)?;
    let v = ctx.upload_f32(&vh, shape).map_err(e)?;
    let bias_shape = [1, h, s, s];
    let bias_h = random(h * s * s, 4);
    let bias = ctx.upload_f32(&bias_h, bias_shape).map_err(e)?;
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
    for (name, mask, host_mask) in cases {
        let opts = AttentionOptions::with_mask(mask);
        let plan = ctx.plan(q.view(), k.view(), v.view(), &opts).map_err(e)?;
        // Warm-up (compiles the pipeline), then one timed call.
        let out = ctx
            .attention(q.view(), k.view(), v.view(), &opts)
            .await
            .map_err(e)?;
        ctx.wait().await.map_err(e)?;
        let t0 = now_ms();
        ctx.attention_into(q.view(), k.view(), v.view(), out.view(), &opts)
            .await
            .map_err(e)?;
        ctx.wait().await.map_err(e)?;
        let ms = now_ms() - t0;
        let got = ctx.download_f32(out.view()).await.map_err(e)?;
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
        let verdict = if err <= 1e-5 { "ok" } else { "WRONG" };
        say(format!(
            "{name:<14} backend={:<16} time={ms:8.2} ms  max_abs_err={err:.3e} {verdict}",
            plan.backend.name()
        ));
        say(format!("               why: {}", plan.reason));
    }
    // Bad input gets a typed error, in the browser as anywhere.
    let short = ctx
        .upload_f32(&random(b * h * 7 * 32, 5), [b, h, 7, 32])
        .map_err(e)?;
    match ctx
        .attention(
            q.view(),
            short.view(),
            short.view(),
            &AttentionOptions::default(),
        )
        .await
    {
        Err(e @ Error::InvalidInput(_)) => say(format!("bad input      error: {e}")),
        Err(e) => return Err(format!("bad input gave another kind of error: {e}")),
        Ok(_) => return Err("bad input was accepted".into()),
    }
    if worst > 1e-5 {
        return Err(format!("max_abs_err {worst:.3e} exceeds 1e-5"));
    }
    Ok(())
}
