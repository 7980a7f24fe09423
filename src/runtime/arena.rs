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
/// Bind groups kept (with the buffers they bind) before the cache starts over.
pub const BIND_GROUPS_KEPT: usize = 1024;
/// The most bindings a pipeline has (binding numbers 0..=9).
pub(crate) const MAX_BINDINGS: usize = 10;

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
