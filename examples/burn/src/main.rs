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

/// An attention over Burn's Q, K, V and masks: this crate's (`ours`) or Burn's (`burns`).
type Attend<'a> =
    dyn Fn(&Tensor<4>, &Tensor<4>, &Tensor<4>, &Masks) -> Result<Tensor<4>, Error> + 'a;

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
        .into_iter()
        .chain(&lent)
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
    // NaN anywhere is NaN overall (f32::max would drop it).
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, e| {
            if m.is_nan() || e.is_nan() {
                f32::NAN
            } else {
                m.max(e)
            }
        }))
}

/// The small model: multi-head attention from `x` over `memory` (`x` itself for
/// self-attention). Projections, head splits and merges are Burn's; the attention is either
/// this crate's (on Burn's tensors, in place) or Burn's own.
struct AttentionLayer {
    wq: Tensor<3>,
    wk: Tensor<3>,
    wv: Tensor<3>,
    wo: Tensor<3>,
    heads: usize,
}

impl AttentionLayer {
    fn new(model: usize, heads: usize, dev: &Device) -> Self {
        let w = || {
            let std = (1.0 / model as f64).sqrt();
            Tensor::<3>::random([1, model, model], Distribution::Normal(0.0, std), dev)
        };
        AttentionLayer {
            wq: w(),
            wk: w(),
            wv: w(),
            wo: w(),
            heads,
        }
    }

    /// `[b, s, model]` projected by `w` and split into heads: `[b, heads, s, d]`, a strided
    /// view of the projection (not copied).
    fn split(&self, x: &Tensor<3>, w: &Tensor<3>) -> Tensor<4> {
        let [b, s, model] = x.shape().dims::<3>();
        x.clone()
            .matmul(w.clone())
            .reshape([b, s, self.heads, model / self.heads])
            .swap_dims(1, 2)
    }

    fn forward(
        &self,
        x: &Tensor<3>,
        memory: &Tensor<3>,
        masks: &Masks,
        attend: impl Fn(&Tensor<4>, &Tensor<4>, &Tensor<4>, &Masks) -> Result<Tensor<4>, Error>,
    ) -> Result<Tensor<3>, Error> {
        let [b, s, model] = x.shape().dims::<3>();
        let (q, k, v) = (
            self.split(x, &self.wq),
            self.split(memory, &self.wk),
            self.split(memory, &self.wv),
        );
        let o = attend(&q, &k, &v, masks)?;
        Ok(o.swap_dims(1, 2)
            .reshape([b, s, model])
            .matmul(self.wo.clone()))
    }
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

    let (b, s, mem, h, d) = (2, 50, 63, 4, 16);
    let layer = AttentionLayer::new(h * d, h, &dev);
    let normal = Distribution::Normal(0.0, 1.0);
    let x = Tensor::<3>::random([b, s, h * d], normal, &dev);
    let memory = Tensor::<3>::random([b, mem, h * d], normal, &dev);
    // Cross-attention masks: the second memory has 41 valid frames; a dense
    // relative-position-like bias; causal aligned bottom-right (50 queries over 63 keys).
    let lengths = [mem, 41];
    let padding: Vec<bool> = (0..b * s * mem)
        .map(|i| i % mem >= lengths[i / (s * mem)])
        .collect();
    let masked = Tensor::<4, Bool>::from_data(TensorData::new(padding, [b, 1, s, mem]), &dev);
    let bias = Tensor::<4>::random([b, h, s, mem], normal, &dev);

    let cases = [
        (
            "self-attention, no mask",
            &x,
            Masks {
                causal: false,
                masked: None,
                bias: None,
            },
        ),
        (
            "cross, causal+pad+bias",
            &memory,
            Masks {
                causal: true,
                masked: Some(masked),
                bias: Some(bias),
            },
        ),
    ];
    let here =
        |q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>, m: &Masks| ours(&ctx, &dev, q, k, v, m);
    let burn = |q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>, m: &Masks| Ok(burns(q, k, v, m));
    let mut worst = 0.0f32;
    for (name, memory, m) in &cases {
        let y = layer.forward(&x, memory, m, here)?;
        let want = layer.forward(&x, memory, m, burn)?;
        let err = max_diff(&y, &want)?;
        worst = if err.is_nan() || worst.is_nan() {
            f32::NAN
        } else {
            worst.max(err)
        };
        // One more forward each, timed to a device sync (for the record: a CPU adapter's
        // times are not a GPU's).
        let time = |attend: &Attend<'_>| -> Result<f64, Error> {
            dev.sync()?;
            let t0 = Instant::now();
            let _ = layer.forward(&x, memory, m, attend)?.into_data();
            dev.sync()?;
            Ok(t0.elapsed().as_secs_f64() * 1e3)
        };
        let (t_here, t_burn) = (time(&here)?, time(&burn)?);
        println!(
            "{name:<24} layer output vs Burn's: max abs diff {err:.2e}; layer {t_here:.2} ms with this crate's attention, {t_burn:.2} ms with Burn's"
        );
    }
    let agrees = worst <= 1e-4; // false for NaN
    if !agrees {
        return Err(format!("the layer differs from Burn's by {worst:e}").into());
    }
    println!(
        "zero copies: Q, K, V, the bool mask, the bias and the output stayed in Burn's buffers"
    );
    Ok(())
}
