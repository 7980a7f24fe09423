//! A paged key/value cache: one pool of fixed-size pages shared by many sequences, each
//! holding a list of pages (its row of the page table), appended to on the GPU, and forked
//! so that sequences share their prefix's pages (copy on write of the page being filled).
//! The bookkeeping is host data; the pages stay on the GPU.

use crate::context::Context;
use crate::data::mask::{CausalAlignment, Mask};
use crate::data::options::{AttentionOptions, KvScales, PagedKv};
use crate::data::tensor::{DType, TensorView};
use crate::error::{Error, InputProblem, Result, TensorRole};
use crate::gate::Gated;
use crate::kernels::quantize;

/// A sequence of a [`PagedKvCache`] (from [`PagedKvCache::add_sequence`] or
/// [`PagedKvCache::fork`]): it names its cache too, so another cache refuses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqId {
    cache: u64,
    index: usize,
}

/// Cache identities, for [`SeqId`].
static NEXT_CACHE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[derive(Clone, Debug, Default)]
struct Sequence {
    pages: Vec<u32>,
    len: usize,
}

/// The host bookkeeping, cloned before an append so that a refused submission changes
/// nothing.
#[derive(Clone, Debug)]
struct Book {
    /// This cache's identity (its sequences carry it).
    id: u64,
    /// References to each page (0: free).
    refs: Vec<u32>,
    /// Free pages, taken from the end.
    free: Vec<u32>,
    /// Sequences by id (`None`: removed).
    seqs: Vec<Option<Sequence>>,
}

/// K and V in a pool of `num_pages` pages of `page_size` tokens, token-major
/// (`[num_pages, page_size, heads_kv, head_dim]` memory, vLLM's layout), shared by sequences
/// that each own a list of pages.
///
/// Attention reads the pages in its kernels: pass [`PagedKvCache::keys`] and
/// [`PagedKvCache::values`] as K and V, with [`PagedKvCache::options`] for the sequences of
/// the call (their page table, their lengths as key lengths and bottom-right causal
/// alignment, so a chunk of new queries sees its sequence's cache and itself causally).
///
/// ```
/// use wgpu_attention::{Context, DType, PagedKvCache};
/// # fn main() -> Result<(), wgpu_attention::Error> {
/// let ctx = Context::new_blocking()?;
/// let (h, d) = (2, 16);
/// let mut cache = PagedKvCache::new(&ctx, 8, 4, h, d, DType::F32)?;
/// let a = cache.add_sequence();
/// // A prompt of 6 tokens ([sequences, heads, tokens, d] over token-major memory).
/// let k = ctx.upload_f32(&vec![0.5; 6 * h * d], [1, 6, h, d])?;
/// let v = ctx.upload_f32(&(0..6 * h * d).map(|i| (i / (h * d)) as f32).collect::<Vec<_>>(), [1, 6, h, d])?;
/// let as_tokens = |t: &wgpu_attention::Tensor| {
///     wgpu_attention::TensorView::bshd(t.buffer().clone(), DType::F32, [1, 6, h, d])
/// };
/// cache.append_blocking(&ctx, &[a], &as_tokens(&k), &as_tokens(&v))?;
/// // A second sequence sharing the prompt's pages.
/// let b = cache.fork(a)?;
/// assert_eq!(cache.free_pages(), 6);
/// // One query per sequence: equal keys, so each output is the mean of its values, 0 .. 5.
/// let q = ctx.upload_f32(&vec![0.0; 2 * h * d], [2, h, 1, d])?;
/// let opts = cache.options(&[a, b])?;
/// let out = ctx.attention_blocking(q.view(), &cache.keys(), &cache.values(), &opts)?;
/// let o = ctx.download_f32_blocking(out.view())?;
/// assert!((o[0] - 2.5).abs() < 1e-5 && (o[2 * h * d - 1] - 2.5).abs() < 1e-5);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PagedKvCache {
    k: Gated<wgpu::Buffer>,
    v: Gated<wgpu::Buffer>,
    /// One page: a shared page is copied through it (wgpu copies between two buffers only).
    spare: Gated<wgpu::Buffer>,
    pages: usize,
    page_size: usize,
    heads: usize,
    head_dim: usize,
    dtype: DType,
    book: Book,
    /// Quantized: the bytes of the pages, where i8's per-token scales start.
    scales_at: u64,
}

impl PagedKvCache {
    /// An empty cache of `num_pages` pages of `page_size` tokens. For f32, f16 and bf16,
    /// `heads_kv * head_dim * dtype size` must be a multiple of 4 bytes (appends are buffer
    /// copies). A quantized dtype ([`DType::is_quantized`]) quantizes appended tokens on the
    /// GPU, as [`crate::KvCache`] does; its pages must be a whole number of words (page
    /// copies), and for the block formats `head_dim` a multiple of 32.
    pub fn new(
        ctx: &Context,
        num_pages: usize,
        page_size: usize,
        heads_kv: usize,
        head_dim: usize,
        dtype: DType,
    ) -> Result<Self> {
        let dims = [num_pages, page_size, heads_kv, head_dim];
        let max = ctx.caps().max_buffer_size;
        let (scales_at, bytes, spare) = if dtype.is_quantized() {
            let rows = num_pages.saturating_mul(page_size).saturating_mul(heads_kv);
            let (data, bytes) =
                crate::plan::validate::quant_cache_bytes(rows, head_dim, dtype, max)?;
            let page = (page_size * heads_kv) as u64 * dtype.bytes(head_dim as u64);
            if !page.is_multiple_of(4) {
                return Err(Error::invalid(
                    TensorRole::KvCache,
                    InputProblem::Other(format!(
                        "a paged {dtype} cache's pages must be whole words (they are copied): page_size {page_size} * heads {heads_kv} * {} bytes a token's head is {page} bytes",
                        dtype.bytes(head_dim as u64)
                    )),
                ));
            }
            let scales = if dtype == DType::I8 {
                (page_size * heads_kv) as u64 * 4
            } else {
                0
            };
            (data, bytes, page + scales)
        } else {
            let bytes = crate::plan::validate::paged_kv_pool(dims, dtype, max)?;
            (0, bytes, bytes / num_pages as u64)
        };
        let rt = ctx.rt();
        let _held = rt.hold();
        let make = |label, size| super::cache_buffer(rt, label, size);
        Ok(PagedKvCache {
            k: make("wgpu-attention paged kv cache keys", bytes),
            v: make("wgpu-attention paged kv cache values", bytes),
            spare: make("wgpu-attention paged kv cache spare page", spare),
            pages: num_pages,
            page_size,
            heads: heads_kv,
            head_dim,
            dtype,
            book: Book {
                id: NEXT_CACHE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                refs: vec![0; num_pages],
                // Taken from the end: page 0 first.
                free: (0..num_pages as u32).rev().collect(),
                seqs: Vec::new(),
            },
            scales_at,
        })
    }

    /// A new, empty sequence.
    pub fn add_sequence(&mut self) -> SeqId {
        self.book.seqs.push(Some(Sequence::default()));
        self.book.last_id()
    }

    /// A new sequence with `seq`'s tokens, sharing its pages: a page is copied only when one
    /// of the sequences appends into a page another still holds.
    pub fn fork(&mut self, seq: SeqId) -> Result<SeqId> {
        let s = self.book.seq(seq)?.clone();
        for &p in &s.pages {
            self.book.refs[p as usize] += 1;
        }
        self.book.seqs.push(Some(s));
        Ok(self.book.last_id())
    }

    /// Forgets a sequence; pages no other sequence holds become free.
    pub fn remove(&mut self, seq: SeqId) -> Result<()> {
        let s = self.book.seq(seq)?.clone();
        for &p in &s.pages {
            self.book.release(p);
        }
        self.book.seqs[seq.index] = None;
        Ok(())
    }

    /// The tokens a sequence holds.
    pub fn len(&self, seq: SeqId) -> Result<usize> {
        Ok(self.book.seq(seq)?.len)
    }

    /// Whether a sequence holds no token.
    pub fn is_empty(&self, seq: SeqId) -> Result<bool> {
        Ok(self.len(seq)? == 0)
    }

    /// The pages a sequence holds, in token order (its page-table row).
    pub fn pages(&self, seq: SeqId) -> Result<&[u32]> {
        Ok(&self.book.seq(seq)?.pages)
    }

    /// Pages no sequence holds.
    pub fn free_pages(&self) -> usize {
        self.book.free.len()
    }

    /// Tokens per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    fn pool_view(&self, buffer: &wgpu::Buffer) -> TensorView {
        TensorView::bshd(
            buffer.clone(),
            self.dtype,
            [self.pages, self.page_size, self.heads, self.head_dim],
        )
    }

    /// The key pool, as the `[num_pages, heads_kv, page_size, head_dim]` view paged
    /// attention takes.
    pub fn keys(&self) -> TensorView {
        self.pool_view(&self.k)
    }

    /// The value pool (see [`PagedKvCache::keys`]).
    pub fn values(&self) -> TensorView {
        self.pool_view(&self.v)
    }

    /// The page table of `seqs` (one batch item each, in order): as many columns as the
    /// longest holds pages (at least one); the shorter rows padded with page 0, whose keys
    /// their key lengths mask.
    pub fn page_table(&self, seqs: &[SeqId]) -> Result<PagedKv> {
        let rows = seqs
            .iter()
            .map(|&s| self.book.seq(s))
            .collect::<Result<Vec<_>>>()?;
        let cols = rows.iter().map(|s| s.pages.len()).max().unwrap_or(0).max(1);
        let mut table = Vec::with_capacity(rows.len() * cols);
        for s in rows {
            table.extend(&s.pages);
            table.resize(table.len() + cols - s.pages.len(), 0);
        }
        Ok(PagedKv::new(self.page_size, cols, table))
    }

    /// The mask for attending over `seqs`: their lengths as key lengths, with bottom-right
    /// causal alignment.
    pub fn mask(&self, seqs: &[SeqId]) -> Result<Mask> {
        let lengths = seqs
            .iter()
            .map(|&s| Ok(self.book.seq(s)?.len as u32))
            .collect::<Result<Vec<_>>>()?;
        Ok(Mask::none()
            .causal(CausalAlignment::BottomRight)
            .key_lengths(lengths))
    }

    /// Options for attending over `seqs` (batch item `b` is `seqs[b]`): their page table,
    /// [`PagedKvCache::mask`] and a quantized cache's scales ([`PagedKvCache::kv_scales`]).
    /// Add further options (a bias, sinks, the soft cap) to them.
    pub fn options(&self, seqs: &[SeqId]) -> Result<AttentionOptions> {
        let mut opts = AttentionOptions::with_mask(self.mask(seqs)?).paged(self.page_table(seqs)?);
        opts.kv_scales = self.kv_scales();
        Ok(opts)
    }

    /// The scales of an i8 cache's K and V pools (views into their buffers, `[num_pages,
    /// heads_kv, page_size, 1]`); `None` for the other dtypes.
    pub fn kv_scales(&self) -> Option<KvScales> {
        (self.dtype == DType::I8).then(|| {
            let (p, ps, h) = (self.pages, self.page_size, self.heads);
            let view = |buf: &wgpu::Buffer| {
                TensorView::new(
                    buf.clone(),
                    DType::F32,
                    [p, h, ps, 1],
                    [ps * h, 1, h, 1],
                    self.scales_at,
                )
            };
            KvScales::PerToken {
                k: view(&self.k),
                v: view(&self.v),
            }
        })
    }

    /// Records the copies of `n` new tokens of each of `seqs` (`new_k`, `new_v`: `[seqs,
    /// heads_kv, n, head_dim]` views over token-major memory, [`TensorView::bshd`]; for one
    /// token BHSD is the same) behind each sequence's tokens: one copy per page touched,
    /// taking free pages as needed, and first copying a page being filled that another
    /// sequence shares. Nothing is recorded or changed if the pool has too few free pages.
    pub fn record_append(
        &mut self,
        ctx: &Context,
        encoder: &mut wgpu::CommandEncoder,
        seqs: &[SeqId],
        new_k: &TensorView,
        new_v: &TensorView,
    ) -> Result<()> {
        let n = new_k.shape[2];
        let want = [seqs.len(), self.heads, n, self.head_dim];
        // A quantizing append binds the pool whole: refused before anything changes.
        let max = ctx.caps().max_storage_binding;
        if self.dtype.is_quantized() && self.k.size() > max {
            return Err(Error::binding(TensorRole::KvCache, self.k.size(), max));
        }
        for view in [new_k, new_v] {
            if self.dtype.is_quantized() {
                crate::plan::validate::quant_rows(view, want)?;
            } else {
                crate::plan::validate::paged_rows(view, want, self.dtype)?;
            }
        }
        // Pages needed: new ones, and a copy of each shared page that will be written.
        let ps = self.page_size;
        let mut need = 0;
        for (i, s) in seqs.iter().enumerate() {
            let q = self.book.seq(*s)?;
            if seqs[..i].contains(s) {
                return Err(Error::invalid(
                    TensorRole::KvCache,
                    InputProblem::Other(format!(
                        "sequence {} appears twice in one append",
                        s.index
                    )),
                ));
            }
            need += (q.len + n).div_ceil(ps).saturating_sub(q.pages.len());
            need += usize::from(self.book.shared_tail(q, n, ps).is_some());
        }
        if need > self.book.free.len() {
            return Err(Error::invalid(
                TensorRole::KvCache,
                InputProblem::Other(format!(
                    "appending {n} tokens to {} sequences needs {need} free pages; the pool has {} of {}",
                    seqs.len(),
                    self.book.free.len(),
                    self.pages
                )),
            ));
        }
        let token = (self.heads as u64) * self.dtype.bytes(self.head_dim as u64);
        let page_bytes = ps as u64 * token;
        // A page's i8 scales (a region of their own, after the pages).
        let scale_page = if self.dtype == DType::I8 {
            (ps * self.heads) as u64 * 4
        } else {
            0
        };
        let quantized = self.dtype.is_quantized();
        let mut rows = Vec::new();
        for (b, &s) in seqs.iter().enumerate() {
            let mut seq = self.book.seqs[s.index].take().unwrap_or_default();
            let len = seq.len;
            if let Some(tail) = self.book.shared_tail(&seq, n, ps) {
                let copy = self.book.take();
                for buf in [&*self.k, &*self.v] {
                    let spare = &*self.spare;
                    let mut regions = vec![(0, page_bytes)];
                    if scale_page > 0 {
                        regions.push((self.scales_at, scale_page));
                    }
                    for (base, size) in regions {
                        encoder.copy_buffer_to_buffer(
                            buf,
                            base + tail as u64 * size,
                            spare,
                            0,
                            size,
                        );
                        encoder.copy_buffer_to_buffer(
                            spare,
                            0,
                            buf,
                            base + copy as u64 * size,
                            size,
                        );
                    }
                }
                self.book.release(tail);
                seq.pages[len / ps] = copy;
            }
            while seq.pages.len() < (len + n).div_ceil(ps) {
                let p = self.book.take();
                seq.pages.push(p);
            }
            if quantized {
                // Token t's row of head 0 (heads follow it): quantized below, in one
                // dispatch for every sequence.
                rows.extend((len..len + n).map(|pos| {
                    ((seq.pages[pos / ps] as usize * ps + pos % ps) * self.heads) as u32
                }));
                seq.len = len + n;
                self.book.seqs[s.index] = Some(seq);
                continue;
            }
            let es = self.dtype.size();
            // Runs of tokens within one page: one copy each, for K and for V.
            let mut t = 0;
            while t < n {
                let pos = len + t;
                let run = (ps - pos % ps).min(n - t);
                let dst = (seq.pages[pos / ps] as u64 * ps as u64 + (pos % ps) as u64) * token;
                for (src, dst_buf) in [(new_k, &*self.k), (new_v, &*self.v)] {
                    let at = (b * src.strides[0] + t * src.strides[2]) as u64 * es;
                    encoder.copy_buffer_to_buffer(
                        &src.buffer,
                        src.offset + at,
                        dst_buf,
                        dst,
                        run as u64 * token,
                    );
                }
                t += run;
            }
            seq.len = len + n;
            self.book.seqs[s.index] = Some(seq);
        }
        if quantized && !rows.is_empty() {
            for (src, buf) in [(new_k, &*self.k), (new_v, &*self.v)] {
                let dst = quantize::Dest {
                    buffer: buf,
                    format: self.dtype,
                    rows: &rows,
                    head_rows: 1,
                    scale_word: (self.scales_at / 4) as u32,
                };
                quantize::record(ctx.rt(), encoder, src, &dst)?;
            }
        }
        Ok(())
    }

    /// [`PagedKvCache::record_append`] in its own submission. If wgpu refuses it (a buffer of
    /// another device, a destroyed buffer), nothing is appended.
    pub async fn append(
        &mut self,
        ctx: &Context,
        seqs: &[SeqId],
        new_k: &TensorView,
        new_v: &TensorView,
    ) -> Result<()> {
        let book = self.book.clone();
        let what = "appending to a paged kv cache";
        let res = super::submit_append(ctx, what, [new_k, new_v], |enc| {
            self.record_append(ctx, enc, seqs, new_k, new_v)
        })
        .await;
        if res.is_err() {
            self.book = book;
        }
        res
    }

    /// [`PagedKvCache::append`], blocking (on the submission's error scopes only).
    #[cfg(all(feature = "blocking", not(target_arch = "wasm32")))]
    pub fn append_blocking(
        &mut self,
        ctx: &Context,
        seqs: &[SeqId],
        new_k: &TensorView,
        new_v: &TensorView,
    ) -> Result<()> {
        pollster::block_on(self.append(ctx, seqs, new_k, new_v))
    }
}

impl Book {
    /// The id of the sequence added last.
    fn last_id(&self) -> SeqId {
        SeqId {
            cache: self.id,
            index: self.seqs.len() - 1,
        }
    }

    fn seq(&self, id: SeqId) -> Result<&Sequence> {
        let mine = (id.cache == self.id).then_some(id.index);
        let seq = mine.and_then(|i| self.seqs.get(i)).and_then(Option::as_ref);
        seq.ok_or_else(|| {
            Error::invalid(
                TensorRole::KvCache,
                InputProblem::Other(format!(
                    "sequence {} does not exist (removed, or from another cache)",
                    id.index
                )),
            )
        })
    }

    /// The partly filled last page of `seq` that an append of `n` tokens writes into, if
    /// another sequence shares it (it is copied first).
    fn shared_tail(&self, seq: &Sequence, n: usize, ps: usize) -> Option<u32> {
        if n == 0 || seq.len.is_multiple_of(ps) {
            return None;
        }
        let tail = seq.pages[seq.len / ps];
        (self.refs[tail as usize] > 1).then_some(tail)
    }

    /// A free page, referenced once (the caller checked that enough are free).
    fn take(&mut self) -> u32 {
        let p = self.free.pop().unwrap_or(0);
        self.refs[p as usize] = 1;
        p
    }

    /// Drops a reference to a page; frees it at the last.
    fn release(&mut self, p: u32) {
        let r = &mut self.refs[p as usize];
        *r = r.saturating_sub(1);
        if *r == 0 {
            self.free.push(p);
        }
    }
}
