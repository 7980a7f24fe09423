//! A small autoregressive loop over a KV cache, with random weights: each step projects
//! one new token to q, k, v, appends k and v to the cache on the GPU (no reallocation),
//! attends over the cache through `Backend::Auto` (the decode path once the cache is long),
//! and checks the step against the f64 CPU reference. Prints tokens/s of the attention part.
//!
//! `cargo run --release --example decode [-- --steps N]`

use std::time::Instant;

use wgpu_attention::reference::{self, HostMask, HostTensor};
use wgpu_attention::{AttentionOptions, CausalAlignment, Context, DType, KvCache};

use wgpu_attention::reference::random_uniform as random;

/// y = W x for a row-major `out x inp` matrix.
fn matvec(w: &[f32], x: &[f32], out: usize) -> Vec<f32> {
    let inp = x.len();
    (0..out)
        .map(|o| (0..inp).map(|i| w[o * inp + i] * x[i]).sum())
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let args: Vec<String> = std::env::args().collect();
    let steps: usize = args
        .iter()
        .position(|a| a == "--steps")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1100);
    let ctx = Context::new_blocking()?;
    println!(
        "adapter: {} ({:?})",
        ctx.adapter_info().name,
        ctx.adapter_info().backend
    );

    // A GQA layer: 8 query heads sharing 2 key/value heads of 64.
    let (model, hq, hkv, d) = (256usize, 8usize, 2usize, 64usize);
    let wq = random(hq * d * model, 1)
        .iter()
        .map(|x| x * 0.1)
        .collect::<Vec<_>>();
    let wk = random(hkv * d * model, 2)
        .iter()
        .map(|x| x * 0.1)
        .collect::<Vec<_>>();
    let wv = random(hkv * d * model, 3)
        .iter()
        .map(|x| x * 0.1)
        .collect::<Vec<_>>();
    let mut cache = KvCache::new(&ctx, 1, hkv, steps.max(1), d, DType::F32)?;
    // Host copies of the cache, for the reference.
    let mut k_host = vec![vec![]; hkv];
    let mut v_host = vec![vec![]; hkv];
    let mut x = random(model, 4);
    let mut attention_time = 0.0;
    let mut worst = 0.0f64;
    let mut last_backend;
    for step in 0..steps {
        let q = matvec(&wq, &x, hq * d); // [hq, d] = [1, hq, 1, d]
        let k = matvec(&wk, &x, hkv * d);
        let v = matvec(&wv, &x, hkv * d);
        for h in 0..hkv {
            k_host[h].extend_from_slice(&k[h * d..(h + 1) * d]);
            v_host[h].extend_from_slice(&v[h * d..(h + 1) * d]);
        }
        let qg = ctx.upload_f32(&q, [1, hq, 1, d])?;
        let kg = ctx.upload_f32(&k, [1, hkv, 1, d])?;
        let vg = ctx.upload_f32(&v, [1, hkv, 1, d])?;
        let out = ctx.empty([1, hq, 1, d], DType::F32)?;

        let t0 = Instant::now();
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        cache.record_append(&ctx, &mut enc, kg.view(), vg.view())?;
        let opts = AttentionOptions::with_mask(cache.mask());
        let plan = ctx.record_attention(
            &mut enc,
            qg.view(),
            &cache.keys(),
            &cache.values(),
            out.view(),
            &opts,
        )?;
        ctx.queue().submit([enc.finish()]);
        ctx.wait_blocking()?;
        attention_time += t0.elapsed().as_secs_f64();
        last_backend = format!("{} ({} key splits)", plan.backend, plan.key_splits);

        let got = ctx.download_f32_blocking(out.view())?;
        let len = step + 1;
        let kf: Vec<f32> = k_host.concat();
        let vf: Vec<f32> = v_host.concat();
        let want = reference::attention(
            &HostTensor {
                data: &q,
                shape: [1, hq, 1, d],
            },
            &HostTensor {
                data: &kf,
                shape: [1, hkv, len, d],
            },
            &HostTensor {
                data: &vf,
                shape: [1, hkv, len, d],
            },
            1.0 / (d as f64).sqrt(),
            &HostMask {
                causal: true,
                alignment: CausalAlignment::BottomRight,
                ..Default::default()
            },
        );
        let err = got
            .iter()
            .zip(&want)
            .map(|(&g, &w)| (g as f64 - w).abs())
            .fold(0.0, f64::max);
        worst = worst.max(err);
        // The crate's f32 tolerance: |got - want| <= 1e-5 + 1e-5 |want|.
        if let Some((g, w)) = got
            .iter()
            .zip(&want)
            .find(|(g, w)| (**g as f64 - **w).abs() > 1e-5 + 1e-5 * w.abs())
        {
            return Err(format!("step {step}: got {g}, want {w}: beyond the f32 tolerance").into());
        }
        // Next token's input: this step's output mixed back to the model width, at unit RMS.
        x = (0..model)
            .map(|i| got[i % got.len()] + 0.5 * x[i])
            .collect();
        let rms = (x.iter().map(|v| v * v).sum::<f32>() / model as f32)
            .sqrt()
            .max(1e-6);
        x.iter_mut().for_each(|v| *v /= rms);
        if (step + 1) % 256 == 0 || step + 1 == steps {
            println!(
                "step {:5}: cache {len:5} rows, backend {last_backend}, max_abs_err so far {worst:.2e}",
                step + 1
            );
        }
    }
    println!(
        "{steps} steps: {:.1} tokens/s for append + attention (mean {:.2} ms/step), max_abs_err={worst:.3e}",
        steps as f64 / attention_time,
        attention_time * 1e3 / steps as f64
    );
    Ok(())
}
