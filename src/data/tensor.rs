//! Typed views of a caller's `wgpu::Buffer`.
//!
//! A [`TensorView`] never owns or copies memory: it says where a logical
//! `[batch, heads, seq, head_dim]` tensor lies in a buffer (byte offset, element strides,
//! dtype). So BHSD, BSHD and packed-QKV layouts all work without copies:
//!
//! ```text
//! BHSD  (contiguous)  strides = [H*S*D, S*D, D, 1]      TensorView::bhsd
//! BSHD  (HF / FA)     strides = [S*H*D, D, H*D, 1]      TensorView::bshd
//! packed QKV [B,S,3,H,D]: q = offset 0,     strides [S*3*H*D, D, 3*H*D, 1]
//!                         k = offset H*D,   same strides            TensorView::packed_qkv
//!                         v = offset 2*H*D, same strides
//! ```

use std::sync::Arc;

use crate::error::{Dim, Error, InputProblem, Result, TensorRole};
use crate::gate::{Gate, Gated};

/// Element type of a tensor in GPU memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 half precision (read and written through 32-bit words: no `SHADER_F16` needed).
    F16,
    /// bfloat16 (unpacked in the shader; no WGSL bf16 type needed).
    BF16,
    /// One byte per element; non-zero means true. Boolean masks only.
    Bool,
    /// GGUF's `q8_0` (K and V only): blocks of 32 values along the head dim, each an f16
    /// scale `d` followed by 32 int8 `q`, 34 bytes in all; value `i` is `d · q[i]`.
    Q8_0,
    /// GGUF's `q4_0` (K and V only): blocks of 32 values along the head dim, each an f16
    /// scale `d` followed by 16 bytes, 18 bytes in all; byte `i` holds value `i` in its low
    /// nibble and value `i + 16` in its high nibble, and a nibble `n` is `d · (n − 8)`.
    Q4_0,
    /// int8 with an f32 scale per token and KV head (K and V only; scales from
    /// [`KvScales::PerToken`](crate::KvScales::PerToken)): value `scale · q`.
    I8,
    /// OCP 8-bit float E4M3 ("FN": bias 7, no infinities, NaN `S.1111.111`, largest 448),
    /// times an f32 scale per KV head (K and V only; [`KvScales::PerHead`](crate::KvScales::PerHead),
    /// 1 when not given).
    E4M3,
    /// OCP 8-bit float E5M2 (bias 15, IEEE-like: the top byte of an f16), times an f32 scale
    /// per KV head, as [`DType::E4M3`].
    E5M2,
}

impl DType {
    /// Bytes per element; for the block formats ([`DType::Q8_0`], [`DType::Q4_0`]) the
    /// bytes of a block of [`DType::block_len`] elements.
    pub const fn size(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Bool | DType::I8 | DType::E4M3 | DType::E5M2 => 1,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
        }
    }

    /// Elements per block: 32 for the block formats ([`DType::Q8_0`], [`DType::Q4_0`]),
    /// else 1. Strides of a block-format view are still in elements, and every stride but
    /// the head dim's (which must be 1) is a multiple of this.
    pub const fn block_len(self) -> u64 {
        match self {
            DType::Q8_0 | DType::Q4_0 => 32,
            _ => 1,
        }
    }

    /// The bytes of `elements` elements from a block boundary (a whole number of blocks for
    /// the block formats).
    pub const fn bytes(self, elements: u64) -> u64 {
        elements / self.block_len() * self.size()
    }

    /// The alignment of a view's byte offset: the size of an element, or for the block
    /// formats of their f16 scale.
    pub const fn align(self) -> u64 {
        match self {
            DType::Q8_0 | DType::Q4_0 => 2,
            _ => self.size(),
        }
    }

    /// Lower-case name (`"f32"`, `"f16"`, `"bf16"`, `"bool"`, `"q8_0"`, `"q4_0"`, `"i8"`,
    /// `"e4m3"`, `"e5m2"`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Bool => "bool",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::I8 => "i8",
            DType::E4M3 => "e4m3",
            DType::E5M2 => "e5m2",
        }
    }

    /// Whether this is a quantized K/V format (decoded as tiles load).
    pub const fn is_quantized(self) -> bool {
        self.kv_code() != 0
    }

    /// The shaders' quantized K/V format code (`KVQ`: 0 none, 1 q8_0, 2 q4_0, 3 i8,
    /// 4 e4m3, 5 e5m2).
    pub(crate) const fn kv_code(self) -> u32 {
        match self {
            DType::Q8_0 => 1,
            DType::Q4_0 => 2,
            DType::I8 => 3,
            DType::E4M3 => 4,
            DType::E5M2 => 5,
            _ => 0,
        }
    }

    /// The shaders' two-bit storage code (0 f32, 1 f16, 2 bf16).
    pub(crate) fn code(self) -> u32 {
        match self {
            DType::F16 => 1,
            DType::BF16 => 2,
            _ => 0,
        }
    }

    pub(crate) fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A typed, strided view of a `[batch, heads, seq, head_dim]` tensor in a `wgpu::Buffer`.
///
/// For masks and biases the last two dimensions are `[query_seq, key_seq]`.
/// Strides are in elements, not bytes; the offset is in bytes.
#[derive(Clone, Debug)]
pub struct TensorView {
    /// The buffer holding the data (a cheap, reference-counted handle).
    pub buffer: wgpu::Buffer,
    /// Byte offset of element `[0, 0, 0, 0]`; a multiple of the element size.
    pub offset: u64,
    /// Element type.
    pub dtype: DType,
    /// Logical shape `[batch, heads, seq, head_dim]`.
    pub shape: [usize; 4],
    /// Element strides of the four logical dimensions.
    pub strides: [usize; 4],
}

impl TensorView {
    /// A view with explicit shape, strides (elements) and byte offset.
    pub fn new(
        buffer: wgpu::Buffer,
        dtype: DType,
        shape: [usize; 4],
        strides: [usize; 4],
        offset: u64,
    ) -> Self {
        TensorView {
            buffer,
            offset,
            dtype,
            shape,
            strides,
        }
    }

    /// A contiguous BHSD view starting at byte 0: memory order `[batch, heads, seq, head_dim]`.
    pub fn bhsd(buffer: wgpu::Buffer, dtype: DType, shape: [usize; 4]) -> Self {
        let [_, h, s, d] = shape;
        Self::new(buffer, dtype, shape, [h * s * d, s * d, d, 1], 0)
    }

    /// A contiguous BSHD view (memory order `[batch, seq, heads, head_dim]`, as in
    /// Hugging Face and FlashAttention), given the memory shape `[b, s, h, d]`.
    /// The logical shape of the view is still `[b, h, s, d]`.
    pub fn bshd(buffer: wgpu::Buffer, dtype: DType, memory_shape: [usize; 4]) -> Self {
        let [b, s, h, d] = memory_shape;
        Self::new(buffer, dtype, [b, h, s, d], [s * h * d, d, h * d, 1], 0)
    }

    /// The three views of a packed QKV buffer of memory shape `[b, s, 3, h, d]`.
    pub fn packed_qkv(
        buffer: wgpu::Buffer,
        dtype: DType,
        b: usize,
        s: usize,
        h: usize,
        d: usize,
    ) -> [Self; 3] {
        let strides = [s * 3 * h * d, d, 3 * h * d, 1];
        let e = dtype.size();
        [0u64, 1, 2].map(|i| {
            Self::new(
                buffer.clone(),
                dtype,
                [b, h, s, d],
                strides,
                i * (h * d) as u64 * e,
            )
        })
    }

    /// A packed variable-length tensor `[total_tokens, heads, dim]` (FlashAttention's varlen
    /// layout) as the `[1, heads, total_tokens, dim]` view [`crate::Varlen`] calls take.
    pub fn packed_varlen(
        buffer: wgpu::Buffer,
        dtype: DType,
        total: usize,
        heads: usize,
        dim: usize,
    ) -> Self {
        Self::new(
            buffer,
            dtype,
            [1, heads, total, dim],
            [total * heads * dim, dim, heads * dim, 1],
            0,
        )
    }

    /// The same view moved by `offset` bytes.
    pub fn with_offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    /// The view of `count` indices of dimension `dim` (0..4, BHSD) from `start` on, like
    /// PyTorch's `narrow`; validated where it is used, as every view is.
    pub fn narrowed(&self, dim: usize, start: usize, count: usize) -> TensorView {
        let mut v = self.clone();
        v.offset += self.dtype.bytes((start * self.strides[dim]) as u64);
        v.shape[dim] = count;
        v
    }

    /// The number of logical elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the view is contiguous BHSD.
    pub fn is_contiguous(&self) -> bool {
        let [_, h, s, d] = self.shape;
        self.strides == [h * s * d, s * d, d, 1]
    }

    /// Bytes from the buffer's start to just past the last element, or `None` on overflow.
    pub(crate) fn end_byte(&self) -> Option<u64> {
        end_byte(self.offset, self.dtype, self.shape, self.strides)
    }

    /// Checks that the view lies inside its buffer, is aligned, has the usage flags
    /// `usage`, and that its indices fit 32-bit shader arithmetic.
    pub(crate) fn check_memory(&self, role: TensorRole, usage: wgpu::BufferUsages) -> Result<()> {
        let e = self.dtype.align();
        if !self.offset.is_multiple_of(e) {
            return Err(Error::invalid(
                role,
                InputProblem::MisalignedOffset {
                    offset: self.offset,
                    align: e,
                },
            ));
        }
        let buf_usage = self.buffer.usage();
        if !buf_usage.contains(usage) {
            return Err(Error::invalid(
                role,
                InputProblem::MissingUsage {
                    needed: format!("{usage:?}"),
                    got: format!("{buf_usage:?}"),
                },
            ));
        }
        let end = self.end_byte().ok_or_else(|| {
            Error::invalid(
                role,
                InputProblem::TooLarge {
                    what: "the view's extent".into(),
                },
            )
        })?;
        // Shaders read whole 32-bit words: the buffer must cover the last word touched.
        let needed = end.div_ceil(4) * 4;
        if needed > self.buffer.size() {
            return Err(Error::invalid(
                role,
                InputProblem::OutOfBounds {
                    needed,
                    buffer_size: self.buffer.size(),
                },
            ));
        }
        // Shaders index elements with u32 (f16 and bool: sub-word indices; the 8-bit and
        // block formats: bytes).
        let index = end / self.dtype.size().min(4);
        if index > u32::MAX as u64 {
            return Err(Error::invalid(
                role,
                InputProblem::TooLarge {
                    what: format!("element index {index}"),
                },
            ));
        }
        Ok(())
    }

    /// The bytes `offset..end` from this view's first element to just past its last.
    pub fn byte_range(&self) -> std::ops::Range<u64> {
        self.offset..self.end_byte().unwrap_or(u64::MAX)
    }

    /// Whether this view and `other` lie in one buffer at byte ranges that overlap (the
    /// rule for outputs: they may share a buffer with inputs, never bytes).
    pub fn overlaps(&self, other: &TensorView) -> bool {
        let (a, b) = (self.byte_range(), other.byte_range());
        self.buffer == other.buffer && a.start < b.end && b.start < a.end
    }

    /// Checks that no two elements of the view share memory (for outputs).
    pub(crate) fn check_no_overlap(&self, role: TensorRole) -> Result<()> {
        // Sort dimensions by stride; each stride must exceed the extent of all smaller ones.
        let mut dims: Vec<usize> = (0..4).filter(|&i| self.shape[i] > 1).collect();
        dims.sort_by_key(|&i| self.strides[i]);
        let mut extent: usize = 1;
        for &i in &dims {
            if self.strides[i] < extent {
                return Err(Error::invalid(
                    role,
                    InputProblem::OverlappingOutput { dim: Dim::ALL[i] },
                ));
            }
            extent += self.strides[i] * (self.shape[i] - 1);
        }
        Ok(())
    }
}

/// The product of `dims`, or `None` where it overflows a u64.
pub(crate) fn checked_product(dims: &[usize]) -> Option<u64> {
    dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64))
}

/// Bytes from a buffer's start to just past the last element of a tensor of `dtype` at byte
/// `offset` (for the block formats: past the block holding it), or `None` on overflow.
pub(crate) fn end_byte(
    offset: u64,
    dtype: DType,
    shape: [usize; 4],
    strides: [usize; 4],
) -> Option<u64> {
    if shape.contains(&0) {
        return Some(offset);
    }
    let mut last: u64 = 0;
    for i in 0..4 {
        let term = (shape[i] as u64 - 1).checked_mul(strides[i] as u64)?;
        last = last.checked_add(term)?;
    }
    (last / dtype.block_len())
        .checked_add(1)?
        .checked_mul(dtype.size())?
        .checked_add(offset)
}

/// A tensor that owns its buffer (returned by the upload helpers and by
/// [`crate::Context::attention`]).
///
/// A tensor made by a [`crate::Context`] drops its buffer under the context's device lock
/// ([`crate::Context::lock_device`]), so on GL it may be dropped on any thread while the
/// context works on another.
#[derive(Clone, Debug)]
pub struct Tensor {
    view: Gated<TensorView>,
}

impl Tensor {
    /// Wraps a view whose buffer this tensor now stands for.
    pub fn from_view(view: TensorView) -> Self {
        Self::gated(view, None)
    }

    pub(crate) fn gated(view: TensorView, gate: Option<Arc<Gate>>) -> Self {
        Tensor {
            view: Gated::new(view, gate),
        }
    }

    /// The tensor's view.
    pub fn view(&self) -> &TensorView {
        &self.view
    }

    /// The tensor's buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.view.buffer
    }

    /// The logical shape.
    pub fn shape(&self) -> [usize; 4] {
        self.view.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.view.dtype
    }

    /// A view of `shape` and `strides` at byte `offset` of this tensor's buffer, owning the
    /// buffer as this tensor does (for laying out test or model data in any layout).
    pub fn reshaped(
        &self,
        dtype: DType,
        shape: [usize; 4],
        strides: [usize; 4],
        offset: u64,
    ) -> Tensor {
        Self::gated(
            TensorView::new(self.buffer().clone(), dtype, shape, strides, offset),
            self.view.gate().cloned(),
        )
    }
}

/// A tensor is used wherever its view is: `&tensor` passes as a `&TensorView`.
impl std::ops::Deref for Tensor {
    type Target = TensorView;
    fn deref(&self) -> &TensorView {
        &self.view
    }
}

impl AsRef<TensorView> for Tensor {
    fn as_ref(&self) -> &TensorView {
        &self.view
    }
}

impl AsRef<TensorView> for TensorView {
    fn as_ref(&self) -> &TensorView {
        self
    }
}
