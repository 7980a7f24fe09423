//! Burn and wgpu-attention on one wgpu device: a small Burn attention layer (projections in
//! Burn) whose attention runs in this crate, reading Burn's Q, K, V, bool mask and bias
//! tensors and writing Burn's output tensor in place, with no copy; checked against Burn's own
//! `attention` on the same inputs.
//!
//! Burn opens the device and hands over its wgpu handles (`init_with_setup`); each Burn tensor's
//! storage is a `wgpu::Buffer` at an offset, reached through its CubeCL primitive. Burn's
//! exclusive-pages memory keeps every tensor in a buffer of its own: with pooled pages an
//! output can share a buffer with an input, and this crate then writes it through scratch
//! (one copy of the output's bytes there and back), since wgpu refuses one buffer bound
//! read-only and read-write in a dispatch.
//!
//! `cd examples/burn && cargo run --release`

use std::time::Instant;

use burn::backend::Cube;
use burn::backend::wgpu::{AutoCompiler, CubeTensor, MemoryConfiguration, WgpuResource};
use burn::cubecl::wgpu::WgpuServer;
use burn::prelude::{Device, Tensor};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Distribution, TensorData};
use wgpu_attention::{AttentionOptions, CausalAlignment, Context, DType, Mask, TensorView};

type Error = Box<dyn std::error::Error>;

/// A Burn tensor's storage lent to this crate: the view, and what keeps the storage alive
/// and in place (CubeCL may move an allocation that nobody holds) until it is dropped.
struct Lent {
    view: TensorView,
    _hold: Box<dyn std::any::Any>,
}

/// Lends a Burn tensor's primitive as a view of `dtype` (a Burn bool is a 32-bit 0/1 on
/// WGSL: its low byte is read as this crate's one-byte bool, at 4x the element strides).
fn lend(t: CubeTensor, dtype: DType) -> Result<Lent, Error> {
    let guard = t
        .client
        .get_resource::<WgpuServer<AutoCompiler>>(t.handle.clone())
        .map_err(|e| format!("Burn's storage: {e:?}"))?;
    let r: &WgpuResource = guard.resource();
    let per = t.dtype.size() / dtype.size() as usize;
    let shape: [usize; 4] = t.meta.shape().dims::<4>();
    let strides = t.meta.strides();
    let strides = [0, 1, 2, 3].map(|i| strides[i] * per);
    let view = TensorView::new(r.buffer.clone(), dtype, shape, strides, r.offset);
    Ok(Lent {
        view,
        _hold: Box::new((guard, t)),
    })
}

fn float(t: &Tensor<4>) -> Result<Lent, Error> {
    let p = t
        .clone()
        .try_into_primitive::<Cube>()
        .map_err(|e| format!("not a CubeCL tensor: {e:?}"))?;
    lend(p, DType::F32)
}

fn boolean(t: &Tensor<4, Bool>) -> Result<Lent, Error> {
    let p = t
        .clone()
        .try_into_primitive::<Cube>()
        .map_err(|e| format!("not a CubeCL tensor: {e:?}"))?;
    lend(p, DType::Bool)
}

/// The masks of a call, as Burn tensors.
struct Masks {
    causal: bool,
    /// true = masked out (Burn's convention), `[b, 1, s, s]`.
    masked: Option<Tensor<4, Bool>>,
    bias: Option<Tensor<4>>,
}

/// Attention by this crate into a new Burn tensor, on Burn's device and queue.
fn ours(
    ctx: &Context,
    dev: &Device,
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    m: &Masks,
) -> Result<Tensor<4>, Error> {
    let out = Tensor::<4>::empty(q.shape(), dev);
    // This crate attends where the bool mask is true: Burn computes the complement.
    let attend = m.masked.as_ref().map(|x| x.clone().bool_not());
    // Everything Burn recorded so far goes to the queue before our commands.
    dev.flush()?;
    let (lq, lk, lv, lo) = (float(q)?, float(k)?, float(v)?, float(&out)?);
    let mut mask = Mask::none();
    if m.causal {
        mask = mask.causal(CausalAlignment::BottomRight);
    }
    let mut lent = Vec::new();
    if let Some(a) = &attend {
        let l = boolean(a)?;
        mask = mask.bool_mask(l.view.clone());
        lent.push(l);
    }
    if let Some(b) = &m.bias {
        let l = float(b)?;
        mask = mask.bias(l.view.clone());
        lent.push(l);
    }
    let shared = [&lq, &lk, &lv]
        .iter()
        .chain(lent.iter().collect::<Vec<_>>().iter())
        .any(|l| l.view.buffer == lo.view.buffer);
    if shared {
        return Err("Burn put the output in an input's buffer: not zero-copy".into());
    }
    ctx.attention_into_blocking(
        &lq.view,
        &lk.view,
        &lv.view,
        &lo.view,
        &AttentionOptions::with_mask(mask),
    )?;
    // Submitted: Burn's later work (reading `out`) reaches the queue after it.
    drop((lq, lk, lv, lo, lent));
    Ok(out)
}

/// Burn's own attention on the same inputs (fused where Burn can, unfused with a bias).
fn burns(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>, m: &Masks) -> Tensor<4> {
    let [b, h, s, _] = q.shape().dims::<4>();
    let sk = k.shape().dims::<4>()[2];
    let options = AttentionModuleOptions {
        is_causal: m.causal,
        ..Default::default()
    };
    let masked = m.masked.as_ref().map(|x| x.clone().expand([b, h, s, sk]));
    attention(
        q.clone(),
        k.clone(),
        v.clone(),
        masked,
        m.bias.clone(),
        options,
    )
}

fn max_diff(a: &Tensor<3>, b: &Tensor<3>) -> Result<f32, Error> {
    let (a, b) = (
        a.clone()
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?,
        b.clone()
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?,
    );
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, e| if e.is_nan() { f32::NAN } else { m.max(e) }))
}

fn main() -> Result<(), Error> {
    // Burn opens the device and lends us its handles: one device, one queue.
    let (dev, setup) = Device::wgpu_options()
        .memory_config(MemoryConfiguration::ExclusivePages)
        .init_with_setup()?;
    let ctx =
        Context::from_adapter_device(&setup.adapter, setup.device.clone(), setup.queue.clone());
    let info = ctx.adapter_info();
    println!(
        "one device for Burn and wgpu-attention: {} ({:?})",
        info.name, info.backend
    );

    // The layer: x [b, s, model] -> Q, K, V projections (Burn) -> heads [b, h, s, d] (strided
    // views, not copied) -> attention -> merge heads -> output projection (Burn).
    let (b, s, h, d) = (2, 50, 4, 16);
    let model = h * d;
    let normal = Distribution::Normal(0.0, 1.0);
    let weight = Distribution::Normal(0.0, (1.0 / model as f64).sqrt());
    let x = Tensor::<3>::random([b, s, model], normal, &dev);
    let [wq, wk, wv, wo] = [(); 4].map(|_| Tensor::<3>::random([1, model, model], weight, &dev));
    let heads = |w: &Tensor<3>| {
        x.clone()
            .matmul(w.clone())
            .reshape([b, s, h, d])
            .swap_dims(1, 2)
    };
    let (q, k, v) = (heads(&wq), heads(&wk), heads(&wv));
    let merge = |o: Tensor<4>| o.swap_dims(1, 2).reshape([b, s, model]).matmul(wo.clone());

    // Padding: the second sequence has 37 valid keys. A relative-position-like dense bias.
    let lengths = [s, 37];
    let padding: Vec<bool> = (0..b * s * s)
        .map(|i| i % s >= lengths[i / (s * s)])
        .collect();
    let masked = Tensor::<4, Bool>::from_data(TensorData::new(padding, [b, 1, s, s]), &dev);
    let bias = Tensor::<4>::random([b, h, s, s], normal, &dev);

    let cases = [
        (
            "no mask",
            Masks {
                causal: false,
                masked: None,
                bias: None,
            },
        ),
        (
            "causal + padding + bias",
            Masks {
                causal: true,
                masked: Some(masked),
                bias: Some(bias),
            },
        ),
    ];
    let mut worst = 0.0f32;
    for (name, m) in &cases {
        let y = merge(ours(&ctx, &dev, &q, &k, &v, m)?);
        let want = merge(burns(&q, &k, &v, m));
        let err = max_diff(&y, &want)?;
        worst = if err.is_nan() {
            f32::NAN
        } else {
            worst.max(err)
        };
        // One more call each, timed to a device sync (for the record: CPU adapters' times are
        // not GPU times).
        dev.sync()?;
        let t0 = Instant::now();
        let _ = ours(&ctx, &dev, &q, &k, &v, m)?;
        ctx.wait_blocking()?;
        let t_ours = t0.elapsed().as_secs_f64() * 1e3;
        let t0 = Instant::now();
        let _ = burns(&q, &k, &v, m).into_data();
        dev.sync()?;
        let t_burn = t0.elapsed().as_secs_f64() * 1e3;
        println!(
            "{name:<24} layer output vs Burn's attention: max abs diff {err:.2e}; attention {t_ours:.2} ms here, {t_burn:.2} ms in Burn"
        );
    }
    if !(worst <= 1e-4) {
        return Err(format!("the layer differs from Burn's by {worst:e}").into());
    }
    println!(
        "zero copies: Q, K, V, the bool mask, the bias and the output stayed in Burn's buffers"
    );
    Ok(())
}
