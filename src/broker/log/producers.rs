//! Idempotent-publish state: for each producer on a topic, the last sequences stored and
//! their offsets.
//!
//! Sequences of a producer must be consecutive. A sequence at or below the last one stored is
//! a retry, answered with the original offset while it is within the remembered window.

use std::collections::{HashMap, VecDeque};

/// How many recent sequences are remembered per producer and topic; a publisher must not have
/// more than this many records in flight (the client's pipelined publisher caps it), so that
/// every one of them can be resent after a reconnect and recognised. 16 bytes each in memory.
pub const PRODUCER_WINDOW: usize = 1024;

/// Recent (sequence, offset) pairs of one producer, oldest first, consecutive in sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProducerState {
    recent: VecDeque<(u64, u64)>,
}

/// What to do with a record carrying a producer sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeqCheck {
    /// Not seen: store it.
    New,
    /// Already stored at this offset: store nothing.
    Duplicate(u64),
    /// Sequences were skipped; the next expected one is given.
    Gap(u64),
    /// Older than the window, whose oldest sequence is given.
    TooOld(u64),
}

impl ProducerState {
    /// The last sequence stored.
    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.recent.back().map(|&(s, _)| s)
    }

    /// Notes that `seq` was stored at `offset`. A sequence that does not follow the last one
    /// (possible only when older state was lost to retention) restarts the window, which keeps
    /// it consecutive.
    pub(crate) fn record(&mut self, seq: u64, offset: u64) {
        if self.last_seq().and_then(|l| l.checked_add(1)) != Some(seq) {
            self.recent.clear();
        }
        self.recent.push_back((seq, offset));
        if self.recent.len() > PRODUCER_WINDOW {
            self.recent.pop_front();
        }
    }

    /// Classifies an incoming sequence.
    pub(crate) fn check(&self, seq: u64) -> SeqCheck {
        let Some(last) = self.last_seq() else {
            return SeqCheck::New;
        };
        if seq > last {
            return match last.checked_add(1) {
                Some(next) if next == seq => SeqCheck::New,
                Some(next) => SeqCheck::Gap(next),
                None => SeqCheck::Gap(last),
            };
        }
        // The window is consecutive, so the entry for `seq` sits `last - seq` from the back.
        let back = (last - seq) as usize;
        if back < self.recent.len() {
            SeqCheck::Duplicate(self.recent[self.recent.len() - 1 - back].1)
        } else {
            SeqCheck::TooOld(self.recent.front().map_or(last, |&(s, _)| s))
        }
    }

    /// The remembered pairs, oldest first.
    pub(crate) fn pairs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.recent.iter().copied()
    }

    /// Adds pairs read back from disk, skipping those already known (windows saved with
    /// successive segments overlap).
    pub(crate) fn merge(&mut self, pairs: impl IntoIterator<Item = (u64, u64)>) {
        for (seq, offset) in pairs {
            if self.last_seq().is_none_or(|last| seq > last) {
                self.record(seq, offset);
            }
        }
    }
}

/// Producer state of one topic, by producer id.
pub(crate) type Producers = HashMap<u64, ProducerState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_new_duplicate_gap_and_too_old() {
        let mut p = ProducerState::default();
        assert_eq!(
            p.check(5),
            SeqCheck::New,
            "an unknown producer may start anywhere"
        );
        for seq in 5..5 + PRODUCER_WINDOW as u64 + 3 {
            p.record(seq, seq * 10);
        }
        let last = 5 + PRODUCER_WINDOW as u64 + 2;
        assert_eq!(p.check(last + 1), SeqCheck::New);
        assert_eq!(p.check(last + 2), SeqCheck::Gap(last + 1));
        assert_eq!(p.check(last), SeqCheck::Duplicate(last * 10));
        let oldest = last + 1 - PRODUCER_WINDOW as u64;
        assert_eq!(p.check(oldest), SeqCheck::Duplicate(oldest * 10));
        assert_eq!(p.check(oldest - 1), SeqCheck::TooOld(oldest));
    }

    #[test]
    fn merging_overlapping_windows_keeps_them_consecutive() {
        let mut a = ProducerState::default();
        a.merge([(1, 10), (2, 20), (3, 30)]);
        a.merge([(2, 20), (3, 30), (4, 40)]);
        assert_eq!(
            a.pairs().collect::<Vec<_>>(),
            [(1, 10), (2, 20), (3, 30), (4, 40)]
        );
        assert_eq!(a.check(2), SeqCheck::Duplicate(20));
        a.merge([(9, 90)]);
        assert_eq!(
            a.pairs().collect::<Vec<_>>(),
            [(9, 90)],
            "a jump restarts the window"
        );
    }
}
