//! Userspace's side of PROVEN_FILTER (`lb_common::flow::PROVEN_FILTER_UNBUILT` says how it
//! works): the sweep rebuilds the half that does not answer from its walk of CONNTRACK,
//! through a shared mapping of the array, with the same atomic OR the datapath uses, then
//! makes that half answer.

use std::{
    io,
    os::fd::OwnedFd,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use lb_common::flow::{
    FlowKey, PROVEN_FILTER_HALF0, proven_filter_bit, proven_filter_entries, proven_filter_slot,
};
use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum FilterError {
    #[error(
        "mapping the PROVEN_FILTER map into memory failed (mmapable BPF arrays need Linux 5.5)"
    )]
    Map(#[source] io::Error),
    #[error("no PROVEN_FILTER array in the loaded object")]
    Handle(#[source] aya::maps::MapError),
}

/// The PROVEN_FILTER array, mapped: slot 0 and two halves of `words` words.
pub struct ProvenFilter {
    slots: NonNull<AtomicU64>,
    bytes: usize,
    words: u32,
    /// The map stays alive while it is mapped.
    _map: OwnedFd,
}

// SAFETY: the mapping is the kernel's shared array; every access goes through atomics.
unsafe impl Send for ProvenFilter {}
// SAFETY: as above.
unsafe impl Sync for ProvenFilter {}

impl ProvenFilter {
    /// Maps `map`, a PROVEN_FILTER with halves of `words` words (created mmapable).
    pub fn new(map: OwnedFd, words: u32) -> Result<Self, FilterError> {
        let bytes = proven_filter_entries(words) as usize * size_of::<u64>();
        // SAFETY: a fresh shared mapping of the whole array, which the kernel keeps while
        // the mapping lives; nothing else in this process maps it at this address.
        let base = unsafe {
            mmap(
                std::ptr::null_mut(),
                bytes,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &map,
                0,
            )
        }
        .map_err(|errno| FilterError::Map(errno.into()))?;
        let slots = NonNull::new(base.cast::<AtomicU64>())
            .ok_or_else(|| FilterError::Map(io::Error::other("mmap returned null")))?;
        Ok(Self {
            slots,
            bytes,
            words,
            _map: map,
        })
    }

    fn slot(&self, index: u32) -> &AtomicU64 {
        debug_assert!(index < proven_filter_entries(self.words));
        // SAFETY: in bounds (slot 0 and the halves are all mapped); u64 slots are 8-aligned
        // in a page-aligned mapping.
        unsafe { self.slots.add(index as usize).as_ref() }
    }

    /// The half that answers now, if the filter is built.
    pub fn answering(&self) -> Option<u32> {
        // Only 1 and 2 name a half (anything else reads as not built, as the datapath
        // reads it), so a half index is never out of the mapping.
        match self.slot(0).load(Ordering::Acquire) {
            PROVEN_FILTER_HALF0 => Some(0),
            state if state == PROVEN_FILTER_HALF0 + 1 => Some(1),
            _ => None,
        }
    }

    /// Starts a rebuild: clears the half that does not answer. Every proven flow's bit
    /// must then be [`Rebuild::mark`]ed before [`Rebuild::finish`] makes it answer.
    pub fn rebuild(&self) -> Rebuild<'_> {
        let half = match self.answering() {
            Some(0) => 1,
            _ => 0,
        };
        for word in 0..self.words {
            self.slot(proven_filter_slot(half, self.words, word))
                .store(0, Ordering::Relaxed);
        }
        // Cleared before the walk reads a single entry.
        std::sync::atomic::fence(Ordering::SeqCst);
        Rebuild { filter: self, half }
    }

    /// Whether `flow`'s bit is set in the answering half (`None`: not built).
    pub fn contains(&self, flow: &FlowKey) -> Option<bool> {
        let half = self.answering()?;
        let (word, mask) = proven_filter_bit(flow, self.words);
        Some(
            self.slot(proven_filter_slot(half, self.words, word))
                .load(Ordering::Relaxed)
                & mask
                != 0,
        )
    }
}

impl Drop for ProvenFilter {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; no reference outlives `self`.
        if let Err(errno) = unsafe { munmap(self.slots.as_ptr().cast(), self.bytes) } {
            tracing::warn!(error = %errno, "unmapping PROVEN_FILTER failed");
        }
    }
}

/// A half being rebuilt.
pub struct Rebuild<'a> {
    filter: &'a ProvenFilter,
    half: u32,
}

impl Rebuild<'_> {
    /// Sets `flow`'s bit (a flow the walk keeps in CONNTRACK).
    pub fn mark(&self, flow: &FlowKey) {
        let words = self.filter.words;
        let (word, mask) = proven_filter_bit(flow, words);
        self.filter
            .slot(proven_filter_slot(self.half, words, word))
            .fetch_or(mask, Ordering::Relaxed);
    }

    /// Makes the rebuilt half answer.
    pub fn finish(self) {
        self.filter.slot(0).store(
            PROVEN_FILTER_HALF0 + u64::from(self.half),
            Ordering::Release,
        );
    }
}
