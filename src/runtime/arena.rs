//! What a warm call reuses instead of allocating: a ring of parameter and aux slots written
//! with `Queue::write_buffer` and bound at dynamic offsets, bind groups cached by pipeline
//! and by the buffer ranges they bind, and scratch buffers kept per purpose.
//!
//! # The ring's contract
//!
//! A slot's bytes reach the GPU with the queue's next submission, and a slot is reused once
//! the ring has gone round. Work already submitted is safe (the queue runs in order); a call
//! recorded into an encoder that is not yet submitted reads its slot when that encoder runs,
//! so at most [`RING_CALLS`] calls may be recorded and left unsubmitted at a time. A call
//! writes up to three slots (its aux words, its kernel's parameters, and a block summary's
//! or a decode merge's); the ring holds four slots of the largest write per call, and grows
//! (a new buffer, once) when a larger write comes. A call split into parts writes two or
//! three slots per part.
//!
//! One call never overwrites its own slots: a call (a split one, a naive one over many row
//! chunks) that would write more than half the ring moves on to a fresh ring. Aux words
//! larger than [`AUX_IN_RING_MAX`] bytes (varlen batches of hundreds of sequences) get a
//! buffer of their own instead of ring slots.
//!
//! Scratch is written and read by the GPU within one call's commands, so encoders may share
//! it in any order.

use std::collections::HashMap;

use crate::plan::variant::ModuleKey;

/// Calls whose ring slots stay intact while their encoders wait to be submitted.
pub const RING_CALLS: u64 = 1024;
/// The ring's smallest size.
const RING_MIN_BYTES: u64 = 4 << 20;
/// Slots per call the ring makes room for.
const SLOTS_PER_CALL: u64 = 4;
/// The largest aux words (bytes) written into the ring; larger ones get a buffer of their
/// own, so the ring stays at 4 MiB.
pub(crate) const AUX_IN_RING_MAX: u64 = 1024;

thread_local! {
    /// Ring bytes written by the call this thread is recording, if any.
    static CALL_BYTES: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// The ring bytes of one recorded call: from [`CallScope::begin`] until it is dropped,
/// [`CallScope::add`] counts this thread's writes (nested calls count as one).
pub(crate) struct CallScope {
    outer: bool,
}

impl CallScope {
    pub(crate) fn begin() -> CallScope {
        let outer = CALL_BYTES.with(|c| {
            let outer = c.get().is_none();
            if outer {
                c.set(Some(0));
            }
            outer
        });
        CallScope { outer }
    }

    /// Counts `need` bytes; returns the call's bytes so far (0 outside a call).
    pub(crate) fn add(need: u64) -> u64 {
        CALL_BYTES.with(|c| match c.get() {
            Some(n) => {
                c.set(Some(n + need));
                n + need
            }
            None => 0,
        })
    }

    /// Starts the count again (the call moved to a fresh ring).
    pub(crate) fn restart(need: u64) {
        CALL_BYTES.with(|c| {
            if c.get().is_some() {
                c.set(Some(need));
            }
        });
    }
}

impl Drop for CallScope {
    fn drop(&mut self) {
        if self.outer {
            CALL_BYTES.with(|c| c.set(None));
        }
    }
}
/// Bind groups kept (with the buffers they bind) before the cache starts over.
pub const BIND_GROUPS_KEPT: usize = 1024;
/// The most bindings a pipeline has (binding numbers 0..=14).
pub(crate) const MAX_BINDINGS: usize = 15;

/// A byte range of a buffer, as bound.
pub(crate) type Range = (wgpu::Buffer, u64, u64);

/// A bind group's identity: the pipeline and each binding's buffer range.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct GroupKey {
    pub pipeline: (ModuleKey, &'static str),
    pub entries: [Option<Range>; MAX_BINDINGS],
}

#[derive(Default)]
pub(crate) struct Arena {
    pub ring: Option<wgpu::Buffer>,
    pub ring_size: u64,
    pub head: u64,
    pub groups: HashMap<GroupKey, wgpu::BindGroup>,
    pub scratch: HashMap<&'static str, wgpu::Buffer>,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("ring_size", &self.ring_size)
            .field("bind_groups", &self.groups.len())
            .field("scratch", &self.scratch.len())
            .finish()
    }
}

impl Arena {
    /// The ring size that holds [`RING_CALLS`] calls of writes of `need` bytes.
    pub(crate) fn ring_size_for(need: u64) -> u64 {
        need.saturating_mul(RING_CALLS * SLOTS_PER_CALL)
            .next_power_of_two()
            .max(RING_MIN_BYTES)
    }

    /// Whether the ring is as large as [`Arena::ring_size_for`] `need` (at most `max`).
    pub(crate) fn fits(&self, need: u64, max: u64) -> bool {
        self.ring.is_some() && Self::ring_size_for(need).min(max) <= self.ring_size
    }
}
