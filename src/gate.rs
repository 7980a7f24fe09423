//! Serialised device access where the backend needs it (wgpu's GL backend), and the one
//! `wgpu::Instance` per process that [`crate::Context::new`] and its siblings share.
//!
//! wgpu's GL backend funnels every call of a device through one context lock that waits at
//! most 6 s and then panics (wgpu-hal's `CONTEXT_LOCK_TIMEOUT_SECS`), and llvmpipe
//! compiles a flash pipeline inside its first dispatch for tens of seconds. A second thread
//! touching the device meanwhile would panic inside wgpu, and a second panic while
//! unwinding aborts the process. So on GL every operation of this crate first takes the
//! context's [`Gate`], which waits without a time limit; the long compile happens when the
//! pipeline is created (see `pipeline::warm_up`), under the gate; and the buffers this crate
//! hands out ([`crate::Tensor`], [`crate::KvCache`], [`crate::BlockMask`]) are destroyed
//! under the gate too. Elsewhere the gate is absent and costs nothing.

use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex};

use parking_lot::{ReentrantMutex, ReentrantMutexGuard};

/// The lock a GL context's users share. Reentrant: an operation may call another.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    lock: ReentrantMutex<()>,
}

/// Proof that this thread holds a context's device (see [`crate::Context::lock_device`]).
/// Dropping it lets other threads in. Holds nothing on backends that need no serialising.
#[must_use = "the device is released when the guard is dropped"]
pub struct DeviceGuard<'a> {
    _guard: Option<ReentrantMutexGuard<'a, ()>>,
}

impl std::fmt::Debug for DeviceGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceGuard")
            .field("serialised", &self._guard.is_some())
            .finish()
    }
}

/// Takes `gate` if there is one.
pub(crate) fn hold(gate: Option<&Arc<Gate>>) -> DeviceGuard<'_> {
    DeviceGuard {
        _guard: gate.map(|g| g.lock.lock()),
    }
}

/// A value holding wgpu handles that must be dropped under its context's gate (the last
/// handle of a buffer destroys it, which on GL takes the driver's context lock).
#[derive(Debug)]
pub(crate) struct Gated<T> {
    value: ManuallyDrop<T>,
    gate: Option<Arc<Gate>>,
}

impl<T> Gated<T> {
    pub(crate) fn new(value: T, gate: Option<Arc<Gate>>) -> Self {
        Gated {
            value: ManuallyDrop::new(value),
            gate,
        }
    }

    pub(crate) fn gate(&self) -> Option<&Arc<Gate>> {
        self.gate.as_ref()
    }
}

impl<T: Clone> Clone for Gated<T> {
    fn clone(&self) -> Self {
        Gated::new((*self.value).clone(), self.gate.clone())
    }
}

impl<T> std::ops::Deref for Gated<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> std::ops::DerefMut for Gated<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T> Drop for Gated<T> {
    fn drop(&mut self) {
        let _held = hold(self.gate.as_ref());
        // SAFETY: `value` is dropped once, here, and never used again.
        unsafe { ManuallyDrop::drop(&mut self.value) }
    }
}

/// The gate of a device a caller brought ([`crate::Context::from_device`]): one per device,
/// so that several contexts over one GL device are serialised against each other too.
/// Keyed by the device's hash (its id); a collision would only serialise two devices.
pub(crate) fn device_gate(device: &wgpu::Device) -> Arc<Gate> {
    device_gate_or(device, None)
}

/// [`device_gate`], where a device seen for the first time gets `gate` (the gate of the
/// instance that opened it), so that a context a caller later builds over the same device
/// shares it.
pub(crate) fn device_gate_or(device: &wgpu::Device, gate: Option<Arc<Gate>>) -> Arc<Gate> {
    use std::hash::{Hash, Hasher};
    static GATES: Mutex<Vec<(u64, std::sync::Weak<Gate>)>> = Mutex::new(Vec::new());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    device.hash(&mut h);
    let key = h.finish();
    let mut gates = GATES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    gates.retain(|(_, g)| g.strong_count() > 0);
    if let Some(g) = gates
        .iter()
        .find_map(|(k, g)| (*k == key).then(|| g.upgrade()).flatten())
    {
        return g;
    }
    let gate = gate.unwrap_or_default();
    gates.push((key, Arc::downgrade(&gate)));
    gate
}

/// The instance every [`crate::Context`] opened on `backends` shares, and its gate.
///
/// One instance per process lets wgpu itself tell a buffer of one context's device from
/// another's (its ids are unique within an instance; across instances they collide, and a
/// foreign buffer would be read as whatever buffer has the same id). It also means that GL
/// contexts, which share the instance's one EGL context, share one gate.
pub(crate) fn shared_instance(backends: wgpu::Backends) -> (wgpu::Instance, Arc<Gate>) {
    static SHARED: Mutex<Vec<(wgpu::Backends, wgpu::Instance, Arc<Gate>)>> = Mutex::new(Vec::new());
    let mut shared = SHARED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, i, g)) = shared.iter().find(|(b, _, _)| *b == backends) {
        return (i.clone(), g.clone());
    }
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    let gate = Arc::new(Gate::default());
    shared.push((backends, instance.clone(), gate.clone()));
    (instance, gate)
}
