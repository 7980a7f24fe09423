//! Per-call options.

use crate::data::mask::Mask;
use crate::data::tensor::{DType, TensorView};

/// Which shader family runs a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// Let the dispatcher choose (see [`crate::Context::plan`]).
    #[default]
    Auto,
    /// Tiled flash attention with online softmax; K/V tiles in workgroup memory.
    Flash,
    /// Streams K/V with no score matrix and little workgroup memory.
    MemoryEfficient,
    /// Scores, softmax, then P·V: the exact reference.
    Naive,
    /// Flash-decoding for few queries over long keys: the keys are split across
    /// workgroups (memory-efficient shader), then the partial results are merged by their
    /// log-sum-exp, so even one query row fills the GPU.
    Decode,
}

impl Backend {
    /// Lower-case name used in logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Flash => "flash",
            Backend::MemoryEfficient => "memeff",
            Backend::Naive => "naive",
            Backend::Decode => "decode",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether shaders may use subgroup operations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Subgroups {
    /// Use them when the device has `SUBGROUP` and the variant benefits.
    #[default]
    Auto,
    /// Never use them.
    Off,
}

/// Overrides of the dispatcher's tile choices, for tuning runs on a given adapter.
/// `None` keeps the dispatcher's choice; a value that cannot run makes `plan` return
/// [`crate::Error::Unsupported`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Tuning {
    /// Query rows per flash thread: 1, 2 or 4, or 8 for the unrolled kernel that CPU
    /// adapters run by default (one thread per row, head dims up to 128, key tiles of 8 or
    /// more; see [`crate::plan::dispatch::Family::FlashUnrolled`]).
    pub flash_rows_per_thread: Option<u32>,
    /// Keys per flash tile (4, 8, 16 or 32).
    pub flash_block_k: Option<u32>,
    /// Threads sharing one flash query row: 1, or 4 with subgroup shuffles (needs
    /// subgroups of at least 4).
    pub flash_threads_per_row: Option<u32>,
    /// The cooperative-matrix kernel's rescale slack, in units of the natural log, 0 to 8:
    /// a row's accumulators are rescaled only when its running max rises by more than this
    /// (FlashAttention-4's lazy rescale), so its weights stay at most e^slack (in range for
    /// the f16 products). `None` is 8; 0 rescales on every rise, as the SIMT kernels do.
    /// Unlike the fields above it does not turn the cooperative-matrix kernel off. Not kept
    /// in tuning tables.
    pub coop_rescale_slack: Option<u32>,
}

/// Options of one attention call. Build them with the chained methods:
///
/// ```
/// use wgpu_attention::{AttentionOptions, Backend, CausalAlignment, DType, Mask};
/// let opts = AttentionOptions::with_mask(Mask::none().causal(CausalAlignment::TopLeft))
///     .backend(Backend::Flash)
///     .scale(0.125)
///     .output_dtype(DType::F32);
/// assert_eq!(opts.scale, Some(0.125));
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct AttentionOptions {
    /// Softmax scale; `None` means `1 / sqrt(head_dim)` (of Q/K). It must be finite and at
    /// most [`MAX_SCALE`](crate::validate::MAX_SCALE) (2^32) in magnitude.
    pub scale: Option<f32>,
    /// The mask (any combination of kinds).
    pub mask: Mask,
    /// Which backend runs the call.
    pub backend: Backend,
    /// Whether subgroup operations may be used.
    pub subgroups: Subgroups,
    /// Output dtype when the output is allocated by the call; `None` means the query's dtype.
    pub output_dtype: Option<DType>,
    /// Tile overrides (normally left at their defaults).
    pub tuning: Tuning,
    /// Also write each row's log-sum-exp of its logits here: an f32 view of shape
    /// `[B, Hq, Sq, 1]` (`-inf` for rows with no visible key). Partial results over disjoint
    /// key sets can then be combined exactly with [`crate::Context::merge`].
    pub lse_output: Option<TensorView>,
    /// Packed variable-length batches (FlashAttention's varlen interface).
    pub varlen: Option<Varlen>,
    /// Logit soft-capping (Gemma 2): each scaled logit `s = scale · q·k` becomes
    /// `cap · tanh(s / cap)` before the mask terms (bias, ALiBi) are added. A positive,
    /// finite `cap`. The backward pass carries dS to Q and K through the cap's slope
    /// `1 − tanh²`; the bias's gradient is dS itself.
    pub softcap: Option<f32>,
    /// Attention sinks (gpt-oss): one learned logit per query head that joins each row's
    /// softmax denominator and carries no value, so a row's weights sum to less than 1:
    /// `o = Σⱼ exp(sⱼ) vⱼ / (exp(sink) + Σⱼ exp(sⱼ))`. A row that sees no key gives 0 (its
    /// log-sum-exp is the sink's logit). Host values (finite), one per query head, as with
    /// ALiBi's slopes. The backward pass gives their gradient
    /// ([`GradientViews::dsink`](crate::GradientViews::dsink)).
    pub sinks: Option<Vec<f32>>,
    /// K and V in pages (vLLM's and FlashInfer's paged KV cache): see [`PagedKv`].
    pub paged: Option<PagedKv>,
    /// The scales of quantized K and V ([`DType::I8`] needs them; the 8-bit floats take
    /// them, 1 without): see [`KvScales`].
    pub kv_scales: Option<KvScales>,
}

/// The scales of quantized K and V. The GGUF block formats ([`DType::Q8_0`],
/// [`DType::Q4_0`]) carry their own; [`DType::I8`] takes one per token and head; the 8-bit
/// floats ([`DType::E4M3`], [`DType::E5M2`]) one per head. A stored value `x` means
/// `scale · x`.
///
/// K and V must share one format (a quantized K with an f16 V is refused, naming V).
/// Quantized K/V work on every forward backend, with every mask kind, GQA, paged K/V,
/// varlen, sinks and the soft cap; they have no backward pass.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum KvScales {
    /// One f32 per token and KV head ([`DType::I8`]): views of shape
    /// `[B, H_kv, S_k, 1]` (paged: `[num_pages, H_kv, page_size, 1]`), K's first three
    /// dimensions, with any strides. K's scales lie in K's buffer and V's in V's: a shader
    /// stage has 8 storage bindings and attention uses them all ([`crate::KvCache`] and
    /// [`crate::PagedKvCache`] lay them out so).
    PerToken {
        /// K's scales.
        k: TensorView,
        /// V's scales.
        v: TensorView,
    },
    /// One f32 per KV head, or one for all heads (vLLM's `k_scale` / `v_scale`): host
    /// values, finite.
    PerHead {
        /// K's scales.
        k: Vec<f32>,
        /// V's scales.
        v: Vec<f32>,
    },
}

/// Keys and values stored in fixed-size pages of one pool, found through a page table
/// (vLLM's block tables, FlashInfer's paged KV).
///
/// K and V are then views of the pool, `[num_pages, heads_kv, page_size, head_dim]` with any
/// strides: [`TensorView::bshd`] over `[num_pages, page_size, heads_kv, head_dim]` memory
/// (vLLM's layout), or head-major pages. Batch item `b`'s key `j` is slot `j % page_size`
/// of page `table[b * pages_per_seq + j / page_size]`. Each batch item has `seq_len` keys on
/// the call's key axis (the key dimension of a bias or bool mask); key lengths
/// ([`Mask::key_lengths`]) say how many of them hold tokens, as with a contiguous
/// [`crate::KvCache`]. Every table entry for the pages that hold those `seq_len` keys must
/// name a page of the pool (entries of pages past a sequence's tokens are read but
/// their keys are masked: 0 will do).
///
/// Every forward backend reads the pages in its kernels, with every mask kind, GQA, sinks,
/// the soft cap and the log-sum-exp output, and with packed variable-length queries
/// ([`Varlen`]: FlashInfer's ragged Q over paged KV; `cu_seqlens_k` then gives each
/// sequence's key count, at most `seq_len`, and the table has a row per sequence). A call
/// too large for the device's storage bindings is split over batch items, heads and query
/// rows as any other, each part reading its rows of the table; the pool itself (narrowed to
/// a part's heads) must fit one binding, since any part may read any page. Paged calls have
/// no backward pass. What cannot run is [`crate::Error::Unsupported`].
/// [`crate::PagedKvCache`] manages a pool and its tables.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PagedKv {
    /// Keys per page: the third dimension of the K and V views.
    pub page_size: usize,
    /// Pages per batch item: the page table's columns.
    pub pages_per_seq: usize,
    /// `[batch, pages_per_seq]`, row-major: each batch item's pages, in key order.
    pub table: Vec<u32>,
    /// Keys per batch item on the call's key axis (at most `pages_per_seq * page_size`).
    pub seq_len: usize,
}

impl PagedKv {
    /// A page table of `pages_per_seq` pages per batch item (`table.len() / pages_per_seq`
    /// batch items), each with `pages_per_seq * page_size` keys on the key axis.
    pub fn new(page_size: usize, pages_per_seq: usize, table: Vec<u32>) -> Self {
        PagedKv {
            page_size,
            pages_per_seq,
            table,
            seq_len: page_size.saturating_mul(pages_per_seq),
        }
    }

    /// Sets the keys per batch item on the call's key axis (for a key axis that ends inside
    /// a page).
    pub fn seq_len(mut self, keys: usize) -> Self {
        self.seq_len = keys;
        self
    }
}

/// Sequences of different lengths stored back to back, as FlashAttention's varlen
/// interface: Q, K, V and the output are `[1, H, total_tokens, D]` views (for instance
/// [`TensorView::packed_varlen`]) and sequence `b` occupies rows
/// `cu_seqlens[b]..cu_seqlens[b + 1]`. No padding is computed; causal, window and ALiBi apply
/// per sequence. A bool mask or bias, if any, is laid out padded: `[B|1, H|1, max_q, max_k]`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Varlen {
    /// Cumulative query offsets: `B + 1` entries, starting at 0.
    pub cu_seqlens_q: Vec<u32>,
    /// Cumulative key offsets: `B + 1` entries, starting at 0.
    pub cu_seqlens_k: Vec<u32>,
}

impl Varlen {
    /// From cumulative query and key offsets (`B + 1` entries each, starting at 0).
    pub fn new(cu_seqlens_q: Vec<u32>, cu_seqlens_k: Vec<u32>) -> Self {
        Varlen {
            cu_seqlens_q,
            cu_seqlens_k,
        }
    }

    /// From per-sequence query and key lengths.
    pub fn from_lengths(q: &[u32], k: &[u32]) -> Self {
        let cum = |l: &[u32]| {
            std::iter::once(0)
                .chain(l.iter().scan(0u32, |acc, &x| {
                    *acc += x;
                    Some(*acc)
                }))
                .collect()
        };
        Varlen {
            cu_seqlens_q: cum(q),
            cu_seqlens_k: cum(k),
        }
    }

    /// The number of sequences.
    pub fn batch(&self) -> usize {
        self.cu_seqlens_q.len().saturating_sub(1)
    }

    pub(crate) fn lengths(cu: &[u32]) -> Vec<u32> {
        cu.windows(2).map(|w| w[1].saturating_sub(w[0])).collect()
    }
}

impl AttentionOptions {
    /// Default options with this mask.
    pub fn with_mask(mask: Mask) -> Self {
        AttentionOptions {
            mask,
            ..Default::default()
        }
    }

    /// Sets the backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Sets the scale.
    pub fn scale(mut self, scale: f32) -> Self {
        self.scale = Some(scale);
        self
    }

    /// Sets the mask.
    pub fn mask(mut self, mask: Mask) -> Self {
        self.mask = mask;
        self
    }

    /// Sets whether shaders may use subgroup operations.
    pub fn subgroups(mut self, subgroups: Subgroups) -> Self {
        self.subgroups = subgroups;
        self
    }

    /// Sets the dtype of the output the call allocates ([`crate::Context::attention`]).
    pub fn output_dtype(mut self, dtype: DType) -> Self {
        self.output_dtype = Some(dtype);
        self
    }

    /// Sets the tile overrides.
    pub fn tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// Also writes each row's log-sum-exp to `lse` (f32, `[B, Hq, Sq, 1]`).
    pub fn lse_output(mut self, lse: TensorView) -> Self {
        self.lse_output = Some(lse);
        self
    }

    /// Runs a packed variable-length batch.
    pub fn varlen(mut self, varlen: Varlen) -> Self {
        self.varlen = Some(varlen);
        self
    }

    /// Caps the scaled logits at `cap` in magnitude, smoothly: `cap · tanh(s / cap)`
    /// (Gemma 2's attention soft-capping; see [`AttentionOptions::softcap`]).
    pub fn softcap(mut self, cap: f32) -> Self {
        self.softcap = Some(cap);
        self
    }

    /// Adds one sink logit per query head to every row's softmax denominator (gpt-oss; see
    /// [`AttentionOptions::sinks`]).
    pub fn sinks(mut self, sinks: Vec<f32>) -> Self {
        self.sinks = Some(sinks);
        self
    }

    /// Reads K and V through a page table ([`PagedKv`]).
    pub fn paged(mut self, paged: PagedKv) -> Self {
        self.paged = Some(paged);
        self
    }

    /// Sets the scales of quantized K and V ([`KvScales`]).
    pub fn kv_scales(mut self, scales: KvScales) -> Self {
        self.kv_scales = Some(scales);
        self
    }
}

impl Tuning {
    /// Overrides of all three tile choices (`None` keeps the dispatcher's).
    pub fn new(
        rows_per_thread: Option<u32>,
        block_k: Option<u32>,
        threads_per_row: Option<u32>,
    ) -> Self {
        Tuning {
            flash_rows_per_thread: rows_per_thread,
            flash_block_k: block_k,
            flash_threads_per_row: threads_per_row,
            coop_rescale_slack: None,
        }
    }

    /// Sets the query rows per flash thread.
    pub fn rows_per_thread(mut self, rows: u32) -> Self {
        self.flash_rows_per_thread = Some(rows);
        self
    }

    /// Sets the keys per flash tile.
    pub fn block_k(mut self, keys: u32) -> Self {
        self.flash_block_k = Some(keys);
        self
    }

    /// Sets the threads sharing one flash query row.
    pub fn threads_per_row(mut self, threads: u32) -> Self {
        self.flash_threads_per_row = Some(threads);
        self
    }

    /// Sets the cooperative-matrix kernel's rescale slack (0 to 8).
    pub fn rescale_slack(mut self, slack: u32) -> Self {
        self.coop_rescale_slack = Some(slack);
        self
    }

    /// These overrides without the rescale slack: what the SIMT kernels' tiles take.
    pub(crate) fn simt(self) -> Tuning {
        Tuning {
            coop_rescale_slack: None,
            ..self
        }
    }
}
