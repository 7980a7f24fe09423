//! Times `burn::tensor::module::attention` (Burn 0.22.1, wgpu backend, autotune on) on the
//! shapes of `benches/burn_compare.sh`: b=1, h=8, sq=sk=s, f32, with no mask, causal, a bool
//! mask hiding the last half of the keys, and a dense additive bias. Wall clock around the
//! call, a read-back of the output and a device sync (one warm-up call that also runs Burn's autotune and is
//! checked against Burn's unfused `attention_fallback`, then
//! the median of `iters`). One JSON line per case, in the fields of `benches/attention.rs`.
//!
//! Usage: `cargo run --release -- <s> <d> <iters>`

use burn::prelude::{Device, Tensor};
use burn::tensor::module::{attention, attention_fallback};
use burn::tensor::{Bool, DeviceKind, Distribution, Int, ops::AttentionModuleOptions};
use std::time::Instant;

fn arg(args: &[String], i: usize, default: usize) -> usize {
    args.get(i)
        .map(|x| x.parse().expect("arguments are numbers: s d iters"))
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (s, d, iters) = (
        arg(&args, 1, 1024),
        arg(&args, 2, 64),
        arg(&args, 3, 3).max(1),
    );
    let (b, h) = (1usize, 8usize);
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    let normal = Distribution::Normal(0.0, 1.0);
    let q = Tensor::<4>::random([b, h, s, d], normal, &device);
    let k = Tensor::<4>::random([b, h, s, d], normal, &device);
    let v = Tensor::<4>::random([b, h, s, d], normal, &device);
    // Burn's bool mask: true = masked out. The last half of the keys, for every query.
    let key = Tensor::<1, Int>::arange(0..s as i64, &device).reshape([1, 1, 1, s]);
    let masked: Tensor<4, Bool> = key.greater_equal_elem((s / 2) as i64).expand([b, h, s, s]);
    let bias = Tensor::<4>::random([b, h, s, s], normal, &device);
    let flops = 4.0 * (b * h * s * s * d) as f64;
    for case in ["none", "causal", "boolmask50", "bias"] {
        let options = AttentionModuleOptions {
            is_causal: case == "causal",
            ..Default::default()
        };
        let mask = || (case == "boolmask50").then(|| masked.clone());
        let add = || (case == "bias").then(|| bias.clone());
        let call =
            |q: &Tensor<4>| attention(q.clone(), k.clone(), v.clone(), mask(), add(), options);
        // The warm-up call (Burn's autotune runs here), checked against Burn's unfused path.
        let got = call(&q)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32 output");
        let want = attention_fallback(q.clone(), k.clone(), v.clone(), mask(), add(), options)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32 output");
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, |m, e| if e.is_nan() { f32::NAN } else { m.max(e) });
        // A fresh query per timed call, made and synced before the clock starts, so that no
        // call can reuse an earlier result.
        let mut times: Vec<f64> = (0..iters)
            .map(|_| {
                let qi = Tensor::<4>::random([b, h, s, d], normal, &device);
                device.sync().expect("device sync");
                let t0 = Instant::now();
                let _ = call(&qi).into_data();
                // into_data alone can return before the device is idle.
                device.sync().expect("device sync");
                t0.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        println!(
            "{{\"impl\":\"burn 0.22.1\",\"mask\":\"{case}\",\"dtype\":\"f32\",\"b\":{b},\"h\":{h},\"sq\":{s},\"sk\":{s},\"d\":{d},\"median_ms\":{:.3},\"gflops\":{:.2},\"max_abs_err_vs_burn_fallback\":{err:e}}}",
            med * 1e3,
            flops / med / 1e9
        );
    }
}
