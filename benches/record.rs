//! Host time to record one warm call: `cargo bench --bench record`.
//!
//! Records the same call 500 times into one encoder (after warm-up calls, so the pipelines
//! are compiled and every cache is filled) and prints one JSON line per shape with the
//! median over 7 rounds of the mean host time per `record_attention`, in microseconds. The
//! encoder is submitted after each round (so the ring's contract of at most
//! `RING_CALLS` unsubmitted calls holds: 500 < 1024). Shapes: the decode call of a KV cache
//! (b=1 h=8 sq=1 sk=1024 d=64 f32, bottom-right causal with key lengths) and a 64x64
//! prefill call (b=1 h=8 s=64 d=64, no mask).

use std::time::Instant;

use wgpu_attention::{AttentionOptions, CausalAlignment, Context, DType, Mask};

const CALLS: usize = 500;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = Context::new_blocking()?;
    let info = ctx.adapter_info().clone();
    let cases: [(&str, [usize; 4], [usize; 4], Mask); 2] = [
        (
            "decode",
            [1, 8, 1, 64],
            [1, 8, 1024, 64],
            Mask::none()
                .causal(CausalAlignment::BottomRight)
                .key_lengths(vec![1000]),
        ),
        ("prefill64", [1, 8, 64, 64], [1, 8, 64, 64], Mask::none()),
    ];
    for (name, qs, ks, mask) in cases {
        let n = |s: [usize; 4]| s.iter().product::<usize>();
        let q = ctx.upload_f32(&wgpu_attention::reference::random_uniform(n(qs), 1), qs)?;
        let k = ctx.upload_f32(&wgpu_attention::reference::random_uniform(n(ks), 2), ks)?;
        let v = ctx.upload_f32(&wgpu_attention::reference::random_uniform(n(ks), 3), ks)?;
        let out = ctx.empty(qs, DType::F32)?;
        let opts = AttentionOptions::with_mask(mask);
        let device = ctx.device().clone();
        let record = |calls: usize| -> Result<f64, Box<dyn std::error::Error>> {
            let mut enc = device.create_command_encoder(&Default::default());
            let t0 = Instant::now();
            for _ in 0..calls {
                ctx.record_attention(&mut enc, q.view(), k.view(), v.view(), out.view(), &opts)?;
            }
            let us = t0.elapsed().as_secs_f64() * 1e6 / calls as f64;
            ctx.queue().submit([enc.finish()]);
            device.poll(wgpu::PollType::wait_indefinitely())?;
            Ok(us)
        };
        record(10)?;
        let mut rounds: Vec<f64> = (0..7).map(|_| record(CALLS)).collect::<Result<_, _>>()?;
        rounds.sort_by(f64::total_cmp);
        println!(
            "{{\"bench\":\"record\",\"case\":\"{name}\",\"calls\":{CALLS},\"us_per_call\":{:.2},\"min_us\":{:.2},\"adapter\":\"{}\"}}",
            rounds[3], rounds[0], info.name
        );
    }
    Ok(())
}
