//! In-memory state of uploads between requests: the running sha256 of each upload (so a chunk
//! is hashed once, as it arrives) and which uploads a request is writing right now.
//!
//! This is a cache: the upload file on disk is the truth. A hash state that is missing (after
//! a restart) or stale (a request was cut off mid-chunk) is rebuilt by hashing the file. The
//! busy mark enforces one writer per upload and tells the garbage collector to keep its hands
//! off; it is cleared when the request's guard is dropped, even if the request is abandoned.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::Sha256;

enum Slot {
    /// A request is writing to this upload.
    Busy,
    /// Nobody is writing; the hash of the first `u64` bytes.
    Idle(Sha256, u64),
}

/// Hash states and busy marks of open uploads.
#[derive(Default)]
pub struct UploadTracker {
    slots: Mutex<HashMap<uuid::Uuid, Slot>>,
}

/// Exclusive use of one upload for the duration of a request.
pub struct UploadGuard<'a> {
    tracker: &'a UploadTracker,
    id: uuid::Uuid,
    cached: Option<(Sha256, u64)>,
    keep: Option<(Sha256, u64)>,
}

impl UploadTracker {
    /// Mark upload `id` busy; `None` if another request is writing it.
    pub fn begin(&self, id: uuid::Uuid) -> Option<UploadGuard<'_>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let cached = match slots.insert(id, Slot::Busy) {
            Some(Slot::Busy) => return None,
            Some(Slot::Idle(h, n)) => Some((h, n)),
            None => None,
        };
        Some(UploadGuard {
            tracker: self,
            id,
            cached,
            keep: None,
        })
    }

    /// Uploads a request is writing right now.
    pub fn busy(&self) -> Vec<uuid::Uuid> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Busy))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Drop the cached state of an upload that no longer exists (unless it is busy).
    pub fn forget(&self, id: &uuid::Uuid) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(slots.get(id), Some(Slot::Idle(..))) {
            slots.remove(id);
        }
    }
}

impl UploadGuard<'_> {
    /// The cached hash of the upload's first bytes, if one was kept (valid only if the file
    /// still holds exactly that many bytes; the caller checks).
    pub fn take_cached(&mut self) -> Option<(Sha256, u64)> {
        self.cached.take()
    }

    /// Keep this hash state for the next request on the upload.
    pub fn keep(&mut self, hasher: Sha256, size: u64) {
        self.keep = Some((hasher, size));
    }
}

impl Drop for UploadGuard<'_> {
    fn drop(&mut self) {
        let mut slots = self.tracker.slots.lock().unwrap_or_else(|p| p.into_inner());
        match self.keep.take() {
            Some((h, n)) => {
                slots.insert(self.id, Slot::Idle(h, n));
            }
            None => {
                slots.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    #[test]
    fn one_request_at_a_time_and_state_survives_between_requests() {
        let t = UploadTracker::default();
        let id = uuid::Uuid::new_v4();
        let mut g = t.begin(id).expect("free");
        assert!(t.begin(id).is_none(), "a second writer must be refused");
        assert_eq!(t.busy(), vec![id]);
        assert!(g.take_cached().is_none());
        g.keep(Sha256::new_with_prefix(b"ab"), 2);
        drop(g);
        assert!(t.busy().is_empty());
        let mut g = t.begin(id).expect("free again");
        let (_, n) = g.take_cached().expect("kept");
        assert_eq!(n, 2);
        drop(g); // abandoned without keep: the state is dropped, the file is the truth
        let mut g = t.begin(id).expect("free again");
        assert!(g.take_cached().is_none());
    }
}
