//! LLM serving over a paged, quantized KV cache (q8_0 unless `--kv` says otherwise), with
//! random activations in place of a model: a shared
//! system prompt is prefilled once; users fork it (sharing its pages), prefill their own
//! prompts as chunks that attend to the prefix and to themselves bottom-right causally, then
//! decode together, one batched call per step, with gpt-oss's sinks and Gemma 2's soft cap.
//! Users finish and their pages return to the pool; new users join and reuse them. Every
//! call is checked against the f64 CPU reference over each user's own tokens (as the host's
//! quantizer, `quant::quantize_rows`, makes them: the cache quantizes on the GPU as it
//! appends). Prints the pool's use and the attention calls' tokens/s (host time, the checks
//! excluded).
//!
//! `cargo run --release --example serve [-- --small] [--kv f32|q8_0|q4_0|i8|e4m3|e5m2]`
//! (`--small`: the sizes CI runs).

use std::time::Instant;

use wgpu_attention::reference::{self, HostMask, HostTensor, random_uniform as random};
use wgpu_attention::{Context, DType, PagedKvCache, SeqId, Tensor, TensorView, quant};

/// What one model layer's attention looks like.
struct Shape {
    hq: usize,
    hkv: usize,
    d: usize,
    page: usize,
    pages: usize,
    system: usize,
    prompt: usize,
    steps: usize,
    users: usize,
    /// The cache's dtype.
    kv: DType,
}

/// A user: its sequence in the cache and its tokens' K and V (`[hkv * d]` each), for the
/// reference.
struct User {
    seq: SeqId,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

/// `n` tokens of each of `count` sequences as the `[count, hkv, n, d]` view over token-major
/// memory that appends take, and the host data.
fn tokens(
    ctx: &Context,
    count: usize,
    n: usize,
    s: &Shape,
    seed: u64,
) -> Result<(Vec<f32>, Tensor), Box<dyn std::error::Error>> {
    let data = random(count * n * s.hkv * s.d, seed);
    let t = ctx.upload_f32(&data, [1, 1, 1, data.len()])?;
    let v = TensorView::bshd(t.buffer().clone(), DType::F32, [count, n, s.hkv, s.d]);
    Ok((data, t.reshaped(DType::F32, v.shape, v.strides, 0)))
}

/// Appends `n` new tokens to each of `users` (in one submission) and records them.
fn append(
    ctx: &Context,
    cache: &mut PagedKvCache,
    users: &mut [&mut User],
    n: usize,
    s: &Shape,
    seed: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let (kd, kt) = tokens(ctx, users.len(), n, s, seed)?;
    let (vd, vt) = tokens(ctx, users.len(), n, s, seed + 1)?;
    let seqs: Vec<SeqId> = users.iter().map(|u| u.seq).collect();
    cache.append_blocking(ctx, &seqs, kt.view(), vt.view())?;
    // What the cache holds: the tokens as the quantizer makes them.
    let stored = |x: Vec<f32>| {
        if !s.kv.is_quantized() {
            return x;
        }
        let (bytes, scales) = quant::quantize_rows(s.kv, &x, s.d, None);
        quant::dequantize_rows(s.kv, &bytes, s.d, &scales)
    };
    let (kd, vd) = (stored(kd), stored(vd));
    let row = s.hkv * s.d;
    for (i, u) in users.iter_mut().enumerate() {
        for t in 0..n {
            let at = (i * n + t) * row;
            u.k.push(kd[at..at + row].to_vec());
            u.v.push(vd[at..at + row].to_vec());
        }
    }
    Ok(())
}

/// `sq` new queries per user attend over their caches in one call; each user's rows are
/// checked against the reference. Returns the call's host time (s) and the worst error.
fn attend(
    ctx: &Context,
    cache: &PagedKvCache,
    users: &[&User],
    sq: usize,
    s: &Shape,
    seed: u64,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let b = users.len();
    let qd = random(b * s.hq * sq * s.d, seed);
    let q = ctx.upload_f32(&qd, [b, s.hq, sq, s.d])?;
    let sinks: Vec<f32> = (0..s.hq).map(|h| 0.5 - 0.25 * (h % 4) as f32).collect();
    let seqs: Vec<SeqId> = users.iter().map(|u| u.seq).collect();
    let opts = cache.options(&seqs)?.sinks(sinks.clone()).softcap(30.0);
    let t0 = Instant::now();
    let out = ctx.attention_blocking(q.view(), &cache.keys(), &cache.values(), &opts)?;
    let got = ctx.download_f32_blocking(out.view())?;
    let took = t0.elapsed().as_secs_f64();
    let mut worst = 0.0f64;
    let per = s.hq * sq * s.d;
    for (i, u) in users.iter().enumerate() {
        let len = u.k.len();
        // [1, hkv, len, d] from the user's tokens.
        let gather = |x: &[Vec<f32>]| -> Vec<f32> {
            (0..s.hkv)
                .flat_map(|h| {
                    x.iter()
                        .flat_map(move |t| t[h * s.d..(h + 1) * s.d].to_vec())
                })
                .collect()
        };
        let (k, v) = (gather(&u.k), gather(&u.v));
        let want = reference::attention(
            &HostTensor {
                data: &qd[i * per..(i + 1) * per],
                shape: [1, s.hq, sq, s.d],
            },
            &HostTensor {
                data: &k,
                shape: [1, s.hkv, len, s.d],
            },
            &HostTensor {
                data: &v,
                shape: [1, s.hkv, len, s.d],
            },
            1.0 / (s.d as f64).sqrt(),
            &HostMask {
                causal: true,
                alignment: wgpu_attention::CausalAlignment::BottomRight,
                sinks: Some(&sinks),
                softcap: Some(30.0),
                ..Default::default()
            },
        );
        for (g, w) in got[i * per..(i + 1) * per].iter().zip(&want) {
            worst = worst.max((*g as f64 - w).abs() / (1.0 + w.abs()));
        }
    }
    if worst > 1e-5 {
        return Err(format!("an attention call is off the reference by {worst:e}").into());
    }
    Ok((took, worst))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let args: Vec<String> = std::env::args().collect();
    let small = args.iter().any(|a| a == "--small");
    let kv = match args
        .iter()
        .position(|a| a == "--kv")
        .map(|i| args.get(i + 1))
    {
        None => DType::Q8_0,
        Some(f) => match f.map(String::as_str) {
            Some("f32") => DType::F32,
            Some("q8_0") => DType::Q8_0,
            Some("q4_0") => DType::Q4_0,
            Some("i8") => DType::I8,
            Some("e4m3") => DType::E4M3,
            Some("e5m2") => DType::E5M2,
            other => {
                return Err(
                    format!("--kv takes f32, q8_0, q4_0, i8, e4m3 or e5m2, not {other:?}").into(),
                );
            }
        },
    };
    let s = if small {
        Shape {
            hq: 4,
            hkv: 2,
            d: 32,
            page: 16,
            pages: 64,
            system: 40,
            prompt: 9,
            steps: 6,
            users: 3,
            kv,
        }
    } else {
        Shape {
            hq: 32,
            hkv: 8,
            d: 128,
            page: 16,
            pages: 2048,
            system: 1000,
            prompt: 200,
            steps: 64,
            users: 8,
            kv,
        }
    };
    let ctx = Context::new_blocking()?;
    println!(
        "adapter: {} ({:?})",
        ctx.adapter_info().name,
        ctx.adapter_info().backend
    );
    println!(
        "hq {} hkv {} d {}; {} pages of {} tokens in {}; system prompt {}, user prompts {}, {} users, {} steps",
        s.hq, s.hkv, s.d, s.pages, s.page, s.kv, s.system, s.prompt, s.users, s.steps
    );
    let mut cache = PagedKvCache::new(&ctx, s.pages, s.page, s.hkv, s.d, s.kv)?;
    let mut seed = 1;
    let mut next_seed = || {
        seed += 2;
        seed
    };
    let mut attn_s = 0.0;
    let mut calls = 0;
    let mut worst = 0.0f64;
    // Query tokens attended (each call's queries over all its users).
    let mut tokens = 0;

    // The system prompt, prefilled once: its tokens attend to themselves causally.
    let mut system = User {
        seq: cache.add_sequence(),
        k: Vec::new(),
        v: Vec::new(),
    };
    append(
        &ctx,
        &mut cache,
        &mut [&mut system],
        s.system,
        &s,
        next_seed(),
    )?;
    let (t, e) = attend(&ctx, &cache, &[&system], s.system, &s, next_seed())?;
    (attn_s, calls, worst) = (attn_s + t, calls + 1, worst.max(e));
    tokens += s.system;
    println!(
        "system prompt: {} tokens in {} pages",
        system.k.len(),
        cache.pages(system.seq)?.len()
    );

    // Users fork it, then prefill their own prompts as chunks over the shared prefix.
    let join =
        |cache: &mut PagedKvCache, system: &User| -> Result<User, Box<dyn std::error::Error>> {
            Ok(User {
                seq: cache.fork(system.seq)?,
                k: system.k.clone(),
                v: system.v.clone(),
            })
        };
    let mut users: Vec<User> = (0..s.users)
        .map(|_| join(&mut cache, &system))
        .collect::<Result<_, _>>()?;
    {
        let mut all: Vec<&mut User> = users.iter_mut().collect();
        append(&ctx, &mut cache, &mut all, s.prompt, &s, next_seed())?;
    }
    let refs: Vec<&User> = users.iter().collect();
    let (t, e) = attend(&ctx, &cache, &refs, s.prompt, &s, next_seed())?;
    (attn_s, calls, worst) = (attn_s + t, calls + 1, worst.max(e));
    tokens += s.prompt * refs.len();
    println!(
        "{} users prefilled: {} pages free of {}",
        users.len(),
        cache.free_pages(),
        s.pages
    );

    for step in 0..s.steps {
        // Halfway, the first user finishes and a new one joins in its place.
        if step == s.steps / 2 {
            let done = users.remove(0);
            cache.remove(done.seq)?;
            let freed = cache.free_pages();
            let mut fresh = join(&mut cache, &system)?;
            append(
                &ctx,
                &mut cache,
                &mut [&mut fresh],
                s.prompt,
                &s,
                next_seed(),
            )?;
            let (t, e) = attend(&ctx, &cache, &[&fresh], s.prompt, &s, next_seed())?;
            (attn_s, calls, worst) = (attn_s + t, calls + 1, worst.max(e));
            tokens += s.prompt;
            users.push(fresh);
            println!(
                "step {step}: a user left ({freed} pages free), a new one joined ({} free)",
                cache.free_pages()
            );
        }
        {
            let mut all: Vec<&mut User> = users.iter_mut().collect();
            append(&ctx, &mut cache, &mut all, 1, &s, next_seed())?;
        }
        let refs: Vec<&User> = users.iter().collect();
        let (t, e) = attend(&ctx, &cache, &refs, 1, &s, next_seed())?;
        (attn_s, calls, worst) = (attn_s + t, calls + 1, worst.max(e));
        tokens += refs.len();
    }
    let held: usize = users
        .iter()
        .map(|u| cache.pages(u.seq).map_or(0, |p| p.len()))
        .sum();
    println!(
        "done: {} users hold {held} page references in {} pages ({} free): the system prompt's full pages are shared",
        users.len(),
        s.pages - cache.free_pages(),
        cache.free_pages()
    );
    println!(
        "{calls} attention calls over {tokens} query tokens: {:.3} s host time in all (upload, call, download; the checks excluded), {:.0} tokens/s; worst relative error {worst:.1e}",
        attn_s,
        tokens as f64 / attn_s
    );
    Ok(())
}
