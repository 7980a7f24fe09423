//! Buffers the crate hands out, and reading tensors back.

use crate::data::tensor::{self, DType, Tensor, TensorView};
use crate::error::{Error, InputProblem, Result, TensorRole};
use crate::gate::Gated;
use crate::runtime::Runtime;
use crate::runtime::submit::Waiting;

impl Runtime {
    /// A storage buffer holding `bytes`, padded to whole words (shaders read u32 words).
    pub(crate) fn buffer_init(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        let mut padded;
        let contents = if !bytes.len().is_multiple_of(4) || bytes.is_empty() {
            padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
            &padded[..]
        } else {
            bytes
        };
        let _held = self.hold();
        self.new_buffer_init(
            label,
            contents,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        )
    }

    /// A new contiguous tensor (contents unspecified: zeros on most backends).
    pub(crate) fn empty(&self, shape: [usize; 4], dtype: DType) -> Result<Tensor> {
        let bytes = tensor::checked_product(&shape)
            .and_then(|n| n.checked_mul(dtype.size()))
            .and_then(|b| b.checked_next_multiple_of(4))
            .ok_or_else(|| {
                Error::invalid(
                    TensorRole::NewTensor,
                    InputProblem::TooLarge {
                        what: format!("the byte size of shape {shape:?} ({dtype})"),
                    },
                )
            })?
            .max(4);
        if bytes > self.caps().max_buffer_size {
            return Err(Error::limit(
                "max_buffer_size",
                bytes,
                self.caps().max_buffer_size,
            ));
        }
        let _held = self.hold();
        let b = self.new_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-attention tensor"),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(self.tensor(TensorView::bhsd(b, dtype, shape)))
    }

    /// Reads the bytes a view spans (from the word holding its first element to the word
    /// holding its last) and returns them, with the view's first element at byte
    /// `view.offset % 4`.
    pub(crate) async fn read_bytes(&self, view: &TensorView, how: Waiting) -> Result<Vec<u8>> {
        view.check_memory(TensorRole::Download, wgpu::BufferUsages::COPY_SRC)?;
        let start = view.offset / 4 * 4;
        let end = view.end_byte().unwrap_or(u64::MAX).div_ceil(4) * 4;
        let size = end - start;
        // No guard or error scope is held across an await: the future stays `Send`.
        let (staging, scope) = {
            let _held = self.hold();
            let scope = self
                .device()
                .push_error_scope(wgpu::ErrorFilter::Validation);
            let staging = Gated::new(
                self.new_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-attention download"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                self.gate().cloned(),
            );
            let mut enc = self.dev().new_encoder(&Default::default());
            enc.copy_buffer_to_buffer(&view.buffer, start, &staging, 0, size);
            self.queue().submit([enc.finish()]);
            (staging, scope.pop())
        };
        if let Some(e) = scope.await {
            let _held = self.hold();
            return Err(self.device_error(
                "downloading a tensor",
                &e,
                &[(&view.buffer, TensorRole::Download)],
            ));
        }
        let (tx, rx) = futures::channel::oneshot::channel();
        {
            let _held = self.hold();
            staging.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
        }
        self.drive(rx, how)
            .await?
            .map_err(|e| Error::device("mapping a download buffer", e))?;
        let _held = self.hold();
        let bytes = staging
            .get_mapped_range(..)
            .map_err(|e| Error::device("reading a mapped buffer", e))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }

    /// Downloads any f32, f16 or bf16 view (any strides) as f32 values in logical BHSD order.
    pub(crate) async fn download_f32(&self, view: &TensorView, how: Waiting) -> Result<Vec<f32>> {
        crate::plan::validate::download(view)?;
        let bytes = self.read_bytes(view, how).await?;
        let base = (view.offset % 4) as usize;
        let es = view.dtype.size() as usize;
        let [b, h, s, d] = view.shape;
        let mut out = Vec::with_capacity(view.numel());
        for ib in 0..b {
            for ih in 0..h {
                for is in 0..s {
                    for id in 0..d {
                        let e = ib * view.strides[0]
                            + ih * view.strides[1]
                            + is * view.strides[2]
                            + id * view.strides[3];
                        let at = base + e * es;
                        out.push(match view.dtype {
                            DType::BF16 => {
                                half::bf16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
                            }
                            DType::F16 => {
                                half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
                            }
                            _ => f32::from_le_bytes([
                                bytes[at],
                                bytes[at + 1],
                                bytes[at + 2],
                                bytes[at + 3],
                            ]),
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}
