//! Errors, split by fault: the caller's input, this adapter's abilities, or the device.
//!
//! Every fallible call of this crate returns [`Error`]. Match on its variant to decide
//! what to do:
//!
//! | variant | whose fault | what to do |
//! |---|---|---|
//! | [`Error::InvalidInput`] | the caller's tensors or options | fix the input; the message names the tensor, the dimension, what was expected and what was got |
//! | [`Error::Unsupported`] | this adapter (or a forced backend) cannot run the problem | pick another backend ([`crate::Backend::Auto`]), split the problem, or use a device with larger limits |
//! | [`Error::Device`] | wgpu or the driver (validation, out of memory, device lost, mapping failure) | usually not recoverable for this call; the inner wgpu message is kept as the error's source |

use std::fmt;

/// Which tensor an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TensorRole {
    /// The queries.
    Query,
    /// The keys.
    Key,
    /// The values.
    Value,
    /// The output.
    Output,
    /// The boolean attention mask.
    BoolMask,
    /// The additive float bias.
    Bias,
    /// The per-batch key lengths.
    KeyLengths,
    /// The per-batch query lengths.
    QueryLengths,
    /// The ALiBi slopes.
    AlibiSlopes,
    /// The attention sinks' logits ([`crate::AttentionOptions::sinks`]).
    Sinks,
    /// A host slice given to an upload or download helper.
    HostData,
    /// The options of the call (scale, window, backend).
    Options,
    /// The log-sum-exp output (or a merge input's log-sum-exp).
    Lse,
    /// The cumulative query sequence ends of a packed variable-length batch
    /// ([`crate::Varlen::cu_seqlens_q`]).
    CuSeqlensQ,
    /// The cumulative key sequence ends of a packed variable-length batch
    /// ([`crate::Varlen::cu_seqlens_k`]).
    CuSeqlensK,
    /// A key/value cache.
    KvCache,
    /// The view given to a download.
    Download,
    /// A tensor the caller asked to be allocated ([`crate::Context::empty`]).
    NewTensor,
    /// The backward pass's dO: the gradient of the loss with respect to the output.
    OutputGrad,
    /// The backward pass's dQ.
    QueryGrad,
    /// The backward pass's dK.
    KeyGrad,
    /// The backward pass's dV.
    ValueGrad,
    /// The backward pass's bias gradient.
    BiasGrad,
    /// The backward pass's gradient of the attention sinks.
    SinkGrad,
    /// The page table of paged K/V ([`crate::PagedKv`]).
    PageTable,
    /// The scales of quantized keys ([`crate::KvScales`]).
    KeyScales,
    /// The scales of quantized values ([`crate::KvScales`]).
    ValueScales,
}

impl fmt::Display for TensorRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            TensorRole::Query => "query",
            TensorRole::Key => "key",
            TensorRole::Value => "value",
            TensorRole::Output => "output",
            TensorRole::BoolMask => "bool mask",
            TensorRole::Bias => "bias",
            TensorRole::KeyLengths => "key lengths",
            TensorRole::QueryLengths => "query lengths",
            TensorRole::AlibiSlopes => "alibi slopes",
            TensorRole::Sinks => "sinks",
            TensorRole::HostData => "host data",
            TensorRole::Options => "options",
            TensorRole::Lse => "log-sum-exp",
            TensorRole::CuSeqlensQ => "cu_seqlens_q",
            TensorRole::CuSeqlensK => "cu_seqlens_k",
            TensorRole::KvCache => "kv cache",
            TensorRole::Download => "downloaded view",
            TensorRole::NewTensor => "new tensor",
            TensorRole::OutputGrad => "output gradient (dO)",
            TensorRole::QueryGrad => "query gradient (dQ)",
            TensorRole::KeyGrad => "key gradient (dK)",
            TensorRole::ValueGrad => "value gradient (dV)",
            TensorRole::BiasGrad => "bias gradient",
            TensorRole::SinkGrad => "sink gradient",
            TensorRole::PageTable => "page table",
            TensorRole::KeyScales => "key scales",
            TensorRole::ValueScales => "value scales",
        };
        f.write_str(s)
    }
}

/// A dimension of a `[batch, heads, seq, head_dim]` tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// Dimension 0: batch.
    Batch,
    /// Dimension 1: heads.
    Heads,
    /// Dimension 2: sequence (for masks and biases: the query sequence).
    Seq,
    /// Dimension 3: head dim (for masks and biases: the key sequence).
    HeadDim,
}

impl Dim {
    /// All four dimensions in order.
    pub const ALL: [Dim; 4] = [Dim::Batch, Dim::Heads, Dim::Seq, Dim::HeadDim];
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Dim::Batch => "batch (dim 0)",
            Dim::Heads => "heads (dim 1)",
            Dim::Seq => "seq (dim 2)",
            Dim::HeadDim => "head_dim / key seq (dim 3)",
        };
        f.write_str(s)
    }
}

/// What is wrong with an input.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum InputProblem {
    /// A dimension does not have the size the other tensors require.
    ShapeMismatch {
        /// The dimension.
        dim: Dim,
        /// What it should be (a description such as `"8"` or `"1 or 8"`).
        expected: String,
        /// What it is.
        got: usize,
    },
    /// A dimension is zero where it must not be.
    ZeroDim {
        /// The dimension.
        dim: Dim,
    },
    /// The tensor's data type is not allowed here.
    WrongDType {
        /// What is allowed.
        expected: String,
        /// What was given.
        got: String,
    },
    /// The byte offset is not a multiple of the element size.
    MisalignedOffset {
        /// The offset in bytes.
        offset: u64,
        /// The required alignment in bytes.
        align: u64,
    },
    /// The tensor's last element lies beyond the end of its buffer.
    OutOfBounds {
        /// Bytes the view needs, counted from the buffer's start.
        needed: u64,
        /// The buffer's size in bytes.
        buffer_size: u64,
    },
    /// The buffer lacks a usage flag this call needs.
    MissingUsage {
        /// The flags it needs.
        needed: String,
        /// The flags it has.
        got: String,
    },
    /// Two output elements share memory (a zero or overlapping stride).
    OverlappingOutput {
        /// Which dimension.
        dim: Dim,
    },
    /// The output buffer is also bound as an input.
    OutputAliasesInput {
        /// The input it aliases.
        input: TensorRole,
    },
    /// A list has the wrong number of entries.
    WrongCount {
        /// Entries expected.
        expected: usize,
        /// Entries given.
        got: usize,
        /// What the count is (`"one per batch item"`, `"one per query head"`, ...).
        per: &'static str,
    },
    /// The last cumulative sequence end of a packed variable-length batch does not fit the
    /// packed tensor: `cu_seqlens_q` must end at its query rows (rows past the end would be
    /// left unwritten), `cu_seqlens_k` at most at its key rows.
    CumulativeEnd {
        /// The last entry.
        end: u32,
        /// The packed tensor's rows.
        rows: usize,
    },
    /// A per-batch length exceeds the sequence it describes.
    LengthTooLong {
        /// The batch index.
        batch: usize,
        /// The length given.
        len: u32,
        /// The sequence length it may not exceed.
        max: usize,
    },
    /// A scalar option is not a finite number.
    NonFinite {
        /// Which option.
        what: &'static str,
        /// Its value.
        value: f32,
    },
    /// A scalar option that must be positive is not.
    NotPositive {
        /// Which option.
        what: &'static str,
        /// Its value.
        value: f32,
    },
    /// A scalar option is larger in magnitude than the crate takes.
    OutOfRange {
        /// Which option.
        what: &'static str,
        /// Its value.
        value: f32,
        /// The largest magnitude taken.
        max: f32,
    },
    /// A page table names a page the pool does not have.
    PageOutOfRange {
        /// The batch item.
        batch: usize,
        /// The table's column (the sequence's page number).
        column: usize,
        /// The page it names.
        page: u32,
        /// The pages the pool has (the K/V views' first dimension).
        pages: usize,
    },
    /// A host slice does not hold the number of elements the view needs.
    HostLength {
        /// Elements expected.
        expected: usize,
        /// Elements given.
        got: usize,
    },
    /// An index computation does not fit the 32-bit arithmetic of the shaders.
    TooLarge {
        /// What overflowed.
        what: String,
    },
    /// A stride of a quantized view does not fit its format: the head dim's must be 1, the
    /// others whole blocks.
    BlockStride {
        /// The dimension.
        dim: Dim,
        /// Its stride, in elements.
        stride: usize,
        /// What it must be.
        expected: String,
    },
    /// A tensor must lie in the buffer of another one (quantized K/V's per-token scales in
    /// the buffer of the tensor they scale).
    NotInBufferOf {
        /// The tensor whose buffer it must share.
        of: TensorRole,
    },
    /// The tensor's buffer belongs to another device than the context's (for instance,
    /// one made by another [`crate::Context`]).
    ForeignBuffer,
    /// Anything else, described in words.
    Other(String),
}

impl fmt::Display for InputProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputProblem::ShapeMismatch { dim, expected, got } => {
                write!(f, "{dim} is {got}, expected {expected}")
            }
            InputProblem::ZeroDim { dim } => write!(f, "{dim} is 0"),
            InputProblem::WrongDType { expected, got } => {
                write!(f, "dtype is {got}, expected {expected}")
            }
            InputProblem::MisalignedOffset { offset, align } => {
                write!(f, "byte offset {offset} is not a multiple of {align}")
            }
            InputProblem::OutOfBounds {
                needed,
                buffer_size,
            } => write!(
                f,
                "the view needs {needed} bytes but its buffer has {buffer_size}"
            ),
            InputProblem::MissingUsage { needed, got } => {
                write!(f, "buffer usage is {got}, needs {needed}")
            }
            InputProblem::OverlappingOutput { dim } => write!(
                f,
                "elements along {dim} overlap (zero or too small stride); each output element needs its own memory"
            ),
            InputProblem::OutputAliasesInput { input } => write!(
                f,
                "overlaps the {input} (one buffer, overlapping byte ranges); an output may share a buffer with an input only at disjoint bytes"
            ),
            InputProblem::WrongCount { expected, got, per } => {
                write!(f, "has {got} entries, expected {expected} ({per})")
            }
            InputProblem::CumulativeEnd { end, rows } => write!(
                f,
                "the last entry is {end}, but the packed tensor has {rows} rows (cu_seqlens_q must end at the query rows, cu_seqlens_k at most at the key rows)"
            ),
            InputProblem::LengthTooLong { batch, len, max } => {
                write!(
                    f,
                    "batch {batch} has length {len}, longer than the sequence ({max})"
                )
            }
            InputProblem::NonFinite { what, value } => {
                write!(f, "{what} is {value}, expected a finite number")
            }
            InputProblem::NotPositive { what, value } => {
                write!(f, "{what} is {value}, expected a positive number")
            }
            InputProblem::OutOfRange { what, value, max } => {
                write!(f, "{what} is {value:e}, expected a magnitude of at most {max:e}")
            }
            InputProblem::PageOutOfRange {
                batch,
                column,
                page,
                pages,
            } => write!(
                f,
                "batch {batch}'s page {column} is page {page}, but the pool has {pages} pages"
            ),
            InputProblem::HostLength { expected, got } => {
                write!(
                    f,
                    "host slice has {got} elements, the view needs {expected}"
                )
            }
            InputProblem::TooLarge { what } => write!(f, "{what} exceeds 32-bit indexing"),
            InputProblem::BlockStride {
                dim,
                stride,
                expected,
            } => write!(f, "the stride of {dim} is {stride}, expected {expected}"),
            InputProblem::NotInBufferOf { of } => write!(
                f,
                "lies in another buffer than the {of}; it must share the {of}'s buffer (a shader stage has 8 storage bindings, none left for it)"
            ),
            InputProblem::ForeignBuffer => f.write_str(
                "its buffer belongs to another device than this context's (made by another Context?); use buffers of this context's device",
            ),
            InputProblem::Other(s) => f.write_str(s),
        }
    }
}

/// The caller's input is wrong; nothing was dispatched.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{tensor}: {problem}")]
pub struct InvalidInput {
    /// Which tensor or option.
    pub tensor: TensorRole,
    /// What is wrong with it.
    pub problem: InputProblem,
}

/// Which adapter limit or feature a problem needs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnsupportedReason {
    /// A forced backend cannot run this problem; the text says why.
    Backend(String),
    /// An adapter limit is too small.
    Limit {
        /// The wgpu limit's name (e.g. `max_storage_buffer_binding_size`).
        limit: &'static str,
        /// What the problem needs.
        needed: u64,
        /// What the adapter offers.
        available: u64,
    },
    /// An adapter feature is missing.
    Feature(String),
    /// A tensor needs a larger storage binding than `max_storage_buffer_binding_size`.
    /// Attention calls split themselves into parts (batch items, heads, query rows, chunks
    /// of keys) before giving up, so for them this names a tensor whose smallest part (one
    /// row: a query, a key, a row of a mask) still does not fit.
    Binding {
        /// Which tensor.
        tensor: TensorRole,
        /// The binding its smallest part needs, in bytes.
        needed: u64,
        /// The adapter's `max_storage_buffer_binding_size`.
        available: u64,
    },
}

/// The problem is valid but cannot run on this adapter with these options.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", match &self.reason {
    UnsupportedReason::Backend(s) => s.clone(),
    UnsupportedReason::Limit { limit, needed, available } =>
        format!("needs {limit} >= {needed}, the adapter offers {available}"),
    UnsupportedReason::Feature(s) => format!("needs adapter feature {s}"),
    UnsupportedReason::Binding { tensor, needed, available } => format!(
        "the {tensor} needs a storage binding of {needed} bytes, max_storage_buffer_binding_size is {available}"
    ),
})]
pub struct Unsupported {
    /// Why.
    pub reason: UnsupportedReason,
}

/// wgpu or the driver reported a failure.
///
/// Its message is this crate's context followed by the inner error's whole message, once;
/// the inner error itself is kept in [`DeviceError::source`] (for downcasting) rather than
/// returned again by `std::error::Error::source`, so that printing the error's chain does
/// not print wgpu's text twice.
#[derive(Debug)]
pub struct DeviceError {
    /// What this crate was doing.
    pub context: String,
    /// The inner error, never dropped.
    pub source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, chain(self.source.as_ref()))
    }
}

impl std::error::Error for DeviceError {}

/// The error type of this crate. See the [module docs](self) for what to do about each.
///
/// Its message says everything once: the variant's payload is part of the message, not a
/// separate `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller's input is invalid.
    #[error("invalid input: {0}")]
    InvalidInput(InvalidInput),
    /// Valid, but not runnable on this adapter or with this forced backend.
    #[error("unsupported on this adapter: {0}")]
    Unsupported(Unsupported),
    /// wgpu or the driver failed.
    #[error("device error: {0}")]
    Device(DeviceError),
}

impl From<InvalidInput> for Error {
    fn from(e: InvalidInput) -> Self {
        Error::InvalidInput(e)
    }
}

impl From<Unsupported> for Error {
    fn from(e: Unsupported) -> Self {
        Error::Unsupported(e)
    }
}

impl From<DeviceError> for Error {
    fn from(e: DeviceError) -> Self {
        Error::Device(e)
    }
}

impl Error {
    pub(crate) fn invalid(tensor: TensorRole, problem: InputProblem) -> Self {
        Error::InvalidInput(InvalidInput { tensor, problem })
    }

    pub(crate) fn backend(msg: impl Into<String>) -> Self {
        Error::Unsupported(Unsupported {
            reason: UnsupportedReason::Backend(msg.into()),
        })
    }

    pub(crate) fn limit(limit: &'static str, needed: u64, available: u64) -> Self {
        Error::Unsupported(Unsupported {
            reason: UnsupportedReason::Limit {
                limit,
                needed,
                available,
            },
        })
    }

    pub(crate) fn binding(tensor: TensorRole, needed: u64, available: u64) -> Self {
        Error::Unsupported(Unsupported {
            reason: UnsupportedReason::Binding {
                tensor,
                needed,
                available,
            },
        })
    }

    pub(crate) fn device(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Device(DeviceError {
            context: context.into(),
            source: Box::new(source),
        })
    }

    pub(crate) fn device_msg(context: impl Into<String>, msg: impl Into<String>) -> Self {
        #[derive(Debug, thiserror::Error)]
        #[error("{0}")]
        struct Msg(String);
        Error::device(context, Msg(msg.into()))
    }
}

/// Shorthand for `Result<T, wgpu_attention::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Formats an error with its whole source chain, each text once: wgpu's errors already
/// print their causes, which their `source` returns again.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(text.trim()) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}
