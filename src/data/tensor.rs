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
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Bool => 1,
        }
    }

    /// Lower-case name (`"f32"`, `"f16"`, `"bf16"`, `"bool"`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Bool => "bool",
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
        v.offset += (start * self.strides[dim]) as u64 * self.dtype.size();
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
        end_byte(self.offset, self.dtype.size(), self.shape, self.strides)
    }

    /// Checks that the view lies inside its buffer, is aligned, has the usage flags
    /// `usage`, and that its indices fit 32-bit shader arithmetic.
    pub(crate) fn check_memory(&self, role: TensorRole, usage: wgpu::BufferUsages) -> Result<()> {
        let e = self.dtype.size();
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
        // Shaders index elements with u32 (f16 and bool: sub-word indices).
        if end / e > u32::MAX as u64 {
            return Err(Error::invalid(
                role,
                InputProblem::TooLarge {
                    what: format!("element index {}", end / e),
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

/// Bytes from a buffer's start to just past the last element of a tensor at byte `offset`
/// with `elem`-byte elements, or `None` on overflow.
pub(crate) fn end_byte(
    offset: u64,
    elem: u64,
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
    last.checked_add(1)?.checked_mul(elem)?.checked_add(offset)
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
