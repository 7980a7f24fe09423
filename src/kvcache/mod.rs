//! A key/value cache for autoregressive decoding: preallocated K and V buffers of a fixed
//! capacity, per-batch lengths, and an on-GPU append: a decode step (append, then a
//! recorded attention call) creates no buffer and no bind group once warm. [`paged`] holds
//! the paged cache.

pub(crate) mod paged;

use crate::context::Context;
use crate::data::mask::{CausalAlignment, Mask};
use crate::data::options::{AttentionOptions, KvScales};
use crate::data::tensor::{DType, TensorView};
use crate::error::{Result, TensorRole};
use crate::gate::Gated;
use crate::kernels::quantize;
use crate::runtime::Runtime;

/// Preallocated K/V storage `[batch, heads_kv, capacity, head_dim]` with per-batch lengths.
///
/// Attend over the first `len[b]` rows with [`KvCache::options`] (key lengths plus
/// bottom-right causal alignment, so a chunk of `n` new queries sees the cache and itself
/// causally; and a quantized cache's scales).
///
/// A cache of a quantized dtype ([`DType::Q8_0`], [`DType::Q4_0`], [`DType::I8`],
/// [`DType::E4M3`], [`DType::E5M2`]) takes new rows in f32, f16 or bf16 and quantizes them on
/// the GPU as it appends them (one dispatch), as [`crate::quant::quantize_rows`] does on the
/// host (the 8-bit floats with scale 1). i8's per-row scales live in the same buffer, after
/// the rows ([`KvCache::options`] names them).
///
/// ```
/// use wgpu_attention::{AttentionOptions, Context, DType, KvCache};
/// # fn main() -> Result<(), wgpu_attention::Error> {
/// let ctx = Context::new_blocking()?;
/// let (b, h, d) = (1, 2, 16);
/// let mut cache = KvCache::new(&ctx, b, h, 128, d, DType::F32)?;
/// for step in 0..3 {
///     let k = ctx.upload_f32(&vec![0.1 * step as f32; b * h * d], [b, h, 1, d])?;
///     let v = ctx.upload_f32(&vec![1.0 + step as f32; b * h * d], [b, h, 1, d])?;
///     cache.append_blocking(&ctx, k.view(), v.view())?;
///     let q = ctx.upload_f32(&vec![0.0; b * h * d], [b, h, 1, d])?;
///     let opts = AttentionOptions::with_mask(cache.mask());
///     let out = ctx.attention_blocking(q.view(), &cache.keys(), &cache.values(), &opts)?;
///     let o = ctx.download_f32_blocking(out.view())?;
///     // Q = 0: the mean of the values so far, 1 .. step + 1.
///     assert!((o[0] - (2.0 + step as f32) / 2.0).abs() < 1e-6);
/// }
/// assert_eq!(cache.lengths(), &[3]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct KvCache {
    k: Gated<wgpu::Buffer>,
    v: Gated<wgpu::Buffer>,
    batch: usize,
    heads: usize,
    capacity: usize,
    head_dim: usize,
    dtype: DType,
    lengths: Vec<u32>,
    /// Quantized: the bytes of the rows, where i8's per-row scales start.
    scales_at: u64,
}

impl KvCache {
    /// An empty cache. For f32, f16 and bf16, `head_dim * dtype size` must be a multiple of 4
    /// bytes (appends are buffer copies); for the block formats `head_dim` a multiple of 32.
    pub fn new(
        ctx: &Context,
        batch: usize,
        heads_kv: usize,
        capacity: usize,
        head_dim: usize,
        dtype: DType,
    ) -> Result<Self> {
        let dims = [batch, heads_kv, capacity, head_dim];
        let max = ctx.caps().max_buffer_size;
        let (scales_at, bytes) = if dtype.is_quantized() {
            let rows = batch.saturating_mul(heads_kv).saturating_mul(capacity);
            crate::plan::validate::quant_cache_bytes(rows, head_dim, dtype, max)?
        } else {
            (0, crate::plan::validate::kv_cache(dims, dtype, max)?)
        };
        let rt = ctx.rt();
        let _held = rt.hold();
        let make = |label| cache_buffer(rt, label, bytes);
        Ok(KvCache {
            k: make("wgpu-attention kv cache keys"),
            v: make("wgpu-attention kv cache values"),
            batch,
            heads: heads_kv,
            capacity,
            head_dim,
            dtype,
            lengths: vec![0; batch],
            scales_at,
        })
    }

    /// Valid rows per batch item.
    pub fn lengths(&self) -> &[u32] {
        &self.lengths
    }

    /// Rows each batch item can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The whole key buffer as a `[batch, heads_kv, capacity, head_dim]` view.
    pub fn keys(&self) -> TensorView {
        TensorView::bhsd(
            (*self.k).clone(),
            self.dtype,
            [self.batch, self.heads, self.capacity, self.head_dim],
        )
    }

    /// The whole value buffer as a `[batch, heads_kv, capacity, head_dim]` view.
    pub fn values(&self) -> TensorView {
        TensorView::bhsd(
            (*self.v).clone(),
            self.dtype,
            [self.batch, self.heads, self.capacity, self.head_dim],
        )
    }

    /// The mask for attending over the cache: its lengths as key lengths, with bottom-right
    /// causal alignment (each new query sees every cached row and the new rows up to itself).
    pub fn mask(&self) -> Mask {
        Mask::none()
            .causal(CausalAlignment::BottomRight)
            .key_lengths(self.lengths.clone())
    }

    /// The scales of a quantized cache's K and V: i8's per-row scales (views into the
    /// cache's buffers); `None` for the other formats (the block formats carry theirs, the
    /// 8-bit floats have scale 1) and for f32, f16 and bf16.
    pub fn kv_scales(&self) -> Option<KvScales> {
        (self.dtype == DType::I8).then(|| {
            let (b, h, c) = (self.batch, self.heads, self.capacity);
            let view = |buf: &wgpu::Buffer| {
                TensorView::new(
                    buf.clone(),
                    DType::F32,
                    [b, h, c, 1],
                    [h * c, c, 1, 1],
                    self.scales_at,
                )
            };
            KvScales::PerToken {
                k: view(&self.k),
                v: view(&self.v),
            }
        })
    }

    /// Options for attending over the cache: [`KvCache::mask`], and a quantized cache's
    /// scales ([`KvCache::kv_scales`]). Add further options to them.
    pub fn options(&self) -> AttentionOptions {
        let mut opts = AttentionOptions::with_mask(self.mask());
        opts.kv_scales = self.kv_scales();
        opts
    }

    /// Forgets every row (the buffers are kept).
    pub fn clear(&mut self) {
        self.lengths.iter_mut().for_each(|l| *l = 0);
    }

    fn check_new(&self, view: &TensorView, n: usize) -> Result<()> {
        let want = [self.batch, self.heads, n, self.head_dim];
        if self.dtype.is_quantized() {
            return crate::plan::validate::quant_rows(view, want);
        }
        crate::plan::validate::kv_rows(view, want, self.dtype)
    }

    /// Records the append of `n` new rows per batch item (`new_k`, `new_v`: `[batch,
    /// heads_kv, n, head_dim]`) behind each item's current length: copies for f32, f16 and
    /// bf16 caches (of contiguous rows in the cache's dtype), one quantizing dispatch each
    /// for K and V in a quantized cache (of f32, f16 or bf16 rows, any strides).
    pub fn record_append(
        &mut self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        new_k: &TensorView,
        new_v: &TensorView,
    ) -> Result<()> {
        let n = new_k.shape[2];
        self.check_new(new_k, n)?;
        self.check_new(new_v, n)?;
        crate::plan::validate::kv_room(&self.lengths, n, self.capacity)?;
        if self.dtype.is_quantized() {
            let rows: Vec<u32> = (0..self.batch)
                .flat_map(|b| {
                    let first = (b * self.heads * self.capacity) as u32 + self.lengths[b];
                    (0..n as u32).map(move |t| first + t)
                })
                .collect();
            for (src, buf) in [(new_k, &*self.k), (new_v, &*self.v)] {
                let dst = quantize::Dest {
                    buffer: buf,
                    format: self.dtype,
                    rows: &rows,
                    head_rows: self.capacity as u32,
                    scale_word: (self.scales_at / 4) as u32,
                };
                quantize::record(ctx.rt(), encoder, src, &dst)?;
            }
            for l in &mut self.lengths {
                *l += n as u32;
            }
            return Ok(());
        }
        let es = self.dtype.size();
        let row = self.head_dim as u64 * es;
        for (b, &len) in self.lengths.iter().enumerate() {
            for h in 0..self.heads {
                let bh = (b * self.heads + h) as u64;
                let src = bh * n as u64 * row;
                let dst = (bh * self.capacity as u64 + len as u64) * row;
                let size = n as u64 * row;
                encoder.copy_buffer_to_buffer(
                    &new_k.buffer,
                    new_k.offset + src,
                    &self.k,
                    dst,
                    size,
                );
                encoder.copy_buffer_to_buffer(
                    &new_v.buffer,
                    new_v.offset + src,
                    &self.v,
                    dst,
                    size,
                );
            }
        }
        for l in &mut self.lengths {
            *l += n as u32;
        }
        Ok(())
    }

    /// [`KvCache::record_append`] in its own submission. If wgpu refuses it (a buffer of
    /// another device, a destroyed buffer), nothing is appended.
    pub async fn append(
        &mut self,
        ctx: &Context,
        new_k: &TensorView,
        new_v: &TensorView,
    ) -> Result<()> {
        let lengths = self.lengths.clone();
        let res = submit_append(ctx, "appending to a kv cache", [new_k, new_v], |enc| {
            self.record_append(ctx, enc, new_k, new_v)
        })
        .await;
        if res.is_err() {
            self.lengths = lengths;
        }
        res
    }

    /// [`KvCache::append`], blocking (on the submission's error scopes only).
    #[cfg(all(feature = "blocking", not(target_arch = "wasm32")))]
    pub fn append_blocking(
        &mut self,
        ctx: &Context,
        new_k: &TensorView,
        new_v: &TensorView,
    ) -> Result<()> {
        pollster::block_on(self.append(ctx, new_k, new_v))
    }
}

/// Records an append (reading `new`, the new keys and values) in its own submission, inside
/// error scopes.
pub(crate) async fn submit_append(
    ctx: &Context,
    what: &str,
    new: [&TensorView; 2],
    record: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<()>,
) -> Result<()> {
    let buffers = || new.map(|t| (&t.buffer, TensorRole::KvCache)).to_vec();
    ctx.rt()
        .submit_scoped(what, buffers, |_, enc| record(enc))
        .await
}

/// A cache buffer: bound as storage, appended to and copied from by copies.
pub(crate) fn cache_buffer(rt: &Runtime, label: &str, size: u64) -> Gated<wgpu::Buffer> {
    Gated::new(
        rt.new_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        }),
        rt.gate().cloned(),
    )
}
