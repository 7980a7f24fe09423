//! Error scopes, submission and waiting. The core is asynchronous: a submission's
//! validation and out-of-memory errors are awaited, a wait is a future; the blocking forms
//! (behind the `blocking` feature) drive the same futures with `pollster`.
//!
//! On native backends wgpu calls back only when the device is polled: the async forms poll
//! it without blocking and yield to their executor between polls, the blocking forms let
//! wgpu's poll sleep until the GPU is done. On the web the browser calls back.

#[cfg(not(target_arch = "wasm32"))]
use std::future::Future;
#[cfg(not(target_arch = "wasm32"))]
use std::pin::Pin;
#[cfg(not(target_arch = "wasm32"))]
use std::task::{Context as TaskContext, Poll};

use futures::channel::oneshot;

use crate::error::{Error, InputProblem, Result, TensorRole, chain};
use crate::runtime::Runtime;
use crate::runtime::pipeline::ready;

/// Yields once to the executor (and asks to be polled again at once).
#[cfg(not(target_arch = "wasm32"))]
struct YieldNow(bool);

#[cfg(not(target_arch = "wasm32"))]
impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// Whether a wait may block its thread (the blocking forms) or must not (the async core).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// Let wgpu's poll sleep until the GPU is done (native only).
    #[cfg_attr(
        any(not(feature = "blocking"), target_arch = "wasm32"),
        allow(dead_code)
    )]
    Block,
    /// Poll without blocking and yield between polls (native); await the browser (web).
    Yield,
}

impl Runtime {
    /// Awaits `rx`, which a wgpu callback completes: the browser calls back by itself.
    #[cfg(target_arch = "wasm32")]
    pub(crate) async fn drive<T>(&self, rx: oneshot::Receiver<T>, _how: Waiting) -> Result<T> {
        rx.await.map_err(|_| {
            Error::device_msg("waiting for the GPU", "the device dropped its callback")
        })
    }

    /// Awaits `rx`, which a wgpu callback completes once the device is polled.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) async fn drive<T>(&self, rx: oneshot::Receiver<T>, how: Waiting) -> Result<T> {
        let gone = |_| Error::device_msg("waiting for the GPU", "the device dropped its callback");
        if how == Waiting::Block {
            {
                let _held = self.hold();
                self.device()
                    .poll(wgpu::PollType::wait_indefinitely())
                    .map_err(|e| Error::device("waiting for the GPU", e))?;
            }
            return rx.await.map_err(gone);
        }
        let mut rx = rx;
        loop {
            {
                let _held = self.hold();
                self.device()
                    .poll(wgpu::PollType::Poll)
                    .map_err(|e| Error::device("polling the GPU", e))?;
            }
            match rx.try_recv() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => YieldNow(false).await,
                Err(e) => return Err(gone(e)),
            }
        }
    }

    /// Waits until the GPU has finished all work submitted so far.
    pub(crate) async fn wait(&self, how: Waiting) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        {
            let _held = self.hold();
            self.queue().on_submitted_work_done(move || {
                let _ = tx.send(());
            });
        }
        self.drive(rx, how).await
    }

    /// Records with `f` into a fresh encoder under error scopes and submits; awaits the
    /// scopes. A validation error raised on `buffers` names the tensor when it is the
    /// caller's (a buffer of another device).
    pub(crate) async fn submit_scoped<'a, T>(
        &self,
        what: &str,
        buffers: impl FnOnce() -> Vec<(&'a wgpu::Buffer, TensorRole)>,
        f: impl FnOnce(&Self, &mut wgpu::CommandEncoder) -> Result<T>,
    ) -> Result<T> {
        let (res, val, oom) = {
            let _held = self.hold();
            let device = self.device();
            let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            let val = device.push_error_scope(wgpu::ErrorFilter::Validation);
            let mut enc = self.dev().new_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-attention"),
            });
            let res = f(self, &mut enc);
            if res.is_ok() {
                self.queue().submit([enc.finish()]);
            }
            // Scopes pop in the reverse order of their pushes.
            let val = val.pop();
            (res, val, oom.pop())
        };
        let verr = val.await;
        let merr = oom.await;
        let out = res?;
        if let Some(e) = verr.or(merr) {
            // Naming a foreign buffer probes the device: under the gate.
            let _held = self.hold();
            return Err(self.device_error(what, &e, &buffers()));
        }
        Ok(out)
    }

    /// Runs `f` (which records into a caller's encoder) under a validation scope, reading
    /// the scope without waiting (see [`ready`]).
    pub(crate) fn record_scoped<'a, T>(
        &self,
        what: &str,
        buffers: impl FnOnce() -> Vec<(&'a wgpu::Buffer, TensorRole)>,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let _held = self.hold();
        let scope = self
            .device()
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let res = f();
        let err = ready(scope.pop()).flatten();
        let out = res?;
        match err {
            Some(e) => Err(self.device_error(what, &e, &buffers())),
            None => Ok(out),
        }
    }

    /// The error for a wgpu validation error `e` raised while working on `buffers`: a buffer
    /// of another device (another context) among them is the caller's input error, named;
    /// anything else is a device error.
    pub(crate) fn device_error(
        &self,
        what: &str,
        e: &wgpu::Error,
        buffers: &[(&wgpu::Buffer, TensorRole)],
    ) -> Error {
        for &(buffer, role) in buffers {
            if self.is_foreign(buffer) {
                return Error::invalid(role, InputProblem::ForeignBuffer);
            }
        }
        Error::device_msg(what.to_string(), chain(e))
    }

    /// Whether wgpu says `buffer` belongs to another device (of this context's instance):
    /// wgpu's `DeviceMismatch`, recognised by its message (wgpu-core's error types are not
    /// part of wgpu's API). Unknown (false) where wgpu cannot answer at once (the web).
    fn is_foreign(&self, buffer: &wgpu::Buffer) -> bool {
        let device = self.device();
        if buffer.size() < 4 {
            return false;
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        if buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            let layout = self
                .dev()
                .new_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some("wgpu-attention ownership probe"),
                    entries: &[wgpu::BindGroupLayoutEntry {
                        binding: 0,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage { read_only: true },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    }],
                });
            let _probe = self.dev().new_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("wgpu-attention ownership probe"),
                layout: &layout,
                entries: &[wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset: 0,
                        size: wgpu::BufferSize::new(4),
                    }),
                }],
            });
        } else if buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) {
            let mut enc = self.dev().new_encoder(&Default::default());
            enc.copy_buffer_to_buffer(buffer, 0, self.probe_dst(), 0, 4);
            drop(enc.finish());
        } else {
            drop(scope);
            return false;
        }
        // Only wgpu's device-mismatch error says this; a destroyed buffer fails the probe too.
        ready(scope.pop())
            .flatten()
            .is_some_and(|e| chain(&e).contains("doesn't match"))
    }
}
