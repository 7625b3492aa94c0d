//! Per-consumer sequence number rewriting (and a simple timestamp offset).
//!
//! `output = input + offset`, where the offset is chosen so that the first output is the
//! caller's random initial value (mediasoup uses [1000, 32767] to stay clear of a libsrtp
//! ROC issue), shrinks by one for every input the engine drops on purpose (so a viewer sees
//! no gap for padding-only packets, filtered layers, frames skipped while waiting for a key
//! frame), and is re-based by [`SeqManager::sync`] when the stream is resumed / switched so
//! the next output follows the last one exactly.
//!
//! All comparisons are half-range (RFC 1982 style) over u16, so wrap-around and moderate
//! reordering are handled. No allocation after [`SeqManager::new`].

use std::collections::VecDeque;

/// Deliberately dropped inputs remembered for late (reordered) packets.
const MAX_DROPS: usize = 512;
const HALF: u16 = 0x8000;

/// `a` is newer than `b` in half-range u16 arithmetic (`a != b`, forward distance < 2^15).
#[inline]
pub fn is_newer(a: u16, b: u16) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < HALF
}

/// Same for 32-bit RTP timestamps.
#[inline]
pub fn is_newer_ts(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 0x8000_0000
}

#[derive(Debug, Clone)]
pub struct SeqManager {
    initial: u16,
    started: bool,
    offset: u16,
    max_in: u16,
    max_out: u16,
    /// Inputs dropped on purpose, in increasing (half-range) order, all newer than
    /// `max_in - 2^15`.
    drops: VecDeque<u16>,
    /// Inputs at or before this one are refused (pre-sync numbering, or drop records that
    /// were forgotten).
    horizon: Option<u16>,
}

impl SeqManager {
    /// `initial_output`: the first output sequence number (random, chosen by the caller).
    pub fn new(initial_output: u16) -> Self {
        SeqManager {
            initial: initial_output,
            started: false,
            offset: 0,
            max_in: 0,
            max_out: 0,
            drops: VecDeque::with_capacity(MAX_DROPS),
            horizon: None,
        }
    }

    /// Highest output so far (`None` before the first packet).
    pub fn max_output(&self) -> Option<u16> {
        self.started.then_some(self.max_out)
    }

    /// Highest input so far (`None` before the first packet).
    pub fn max_input(&self) -> Option<u16> {
        self.started.then_some(self.max_in)
    }

    /// The output for `input`, or `None` when the packet must not be sent: it was dropped
    /// on purpose before, or it belongs to the numbering before the last `sync`.
    pub fn input(&mut self, input: u16) -> Option<u16> {
        if !self.started {
            self.started = true;
            self.offset = self.initial.wrapping_sub(input);
            self.max_in = input;
            self.max_out = self.initial;
            self.horizon = None;
            self.drops.clear();
            return Some(self.initial);
        }
        if is_newer(input, self.max_in) {
            self.advance_max_in(input);
            let out = input.wrapping_add(self.offset);
            if is_newer(out, self.max_out) {
                self.max_out = out;
            }
            return Some(out);
        }
        self.older(input)
    }

    /// The output an input not newer than the highest one was given (None: dropped on
    /// purpose, from before the last sync, newer than every input, or before the first).
    pub fn output_of(&self, input: u16) -> Option<u16> {
        if !self.started || is_newer(input, self.max_in) {
            return None;
        }
        self.older(input)
    }

    /// Output of `input`, which is `max_in` or older (a duplicate or a reordered packet).
    fn older(&self, input: u16) -> Option<u16> {
        let back = self.max_in.wrapping_sub(input);
        if let Some(h) = self.horizon {
            if back >= self.max_in.wrapping_sub(h) {
                return None;
            }
        }
        // Drops are in increasing order: count those newer than `input` from the back.
        let mut later_drops: u16 = 0;
        for &d in self.drops.iter().rev() {
            if d == input {
                return None;
            }
            if !is_newer(d, input) {
                break;
            }
            later_drops = later_drops.wrapping_add(1);
        }
        Some(input.wrapping_add(self.offset).wrapping_add(later_drops))
    }

    /// The engine drops `input` on purpose: later outputs close the gap. Drops of inputs
    /// that are not newer than every input so far are ignored (their output slot stays a
    /// gap, like a lost packet).
    pub fn drop(&mut self, input: u16) {
        if !self.started || !is_newer(input, self.max_in) {
            return;
        }
        self.advance_max_in(input);
        self.offset = self.offset.wrapping_sub(1);
        if self.drops.len() >= MAX_DROPS {
            if let Some(old) = self.drops.pop_front() {
                self.horizon = Some(old);
            }
        }
        self.drops.push_back(input);
    }

    /// Re-base so that `next_input` (the packet about to be passed to [`input`]) gets the
    /// output right after the highest output so far. Older inputs are refused afterwards.
    /// Before the first packet this does nothing (the first output is the initial value).
    ///
    /// [`input`]: SeqManager::input
    pub fn sync(&mut self, next_input: u16) {
        if !self.started {
            return;
        }
        let prev = next_input.wrapping_sub(1);
        self.offset = self.max_out.wrapping_sub(prev);
        self.max_in = prev;
        self.drops.clear();
        self.horizon = Some(prev);
    }

    fn advance_max_in(&mut self, input: u16) {
        self.max_in = input;
        while let Some(&d) = self.drops.front() {
            if input.wrapping_sub(d) >= HALF {
                self.drops.pop_front();
                self.horizon = None;
            } else {
                break;
            }
        }
        if let Some(h) = self.horizon {
            if input.wrapping_sub(h) >= HALF {
                self.horizon = None;
            }
        }
    }
}

/// Timestamp rewriting: `output = input + offset`. A simple consumer keeps the producer's
/// timestamps (offset 0); on a source switch the engine calls [`TsOffset::sync`] with the
/// output it wants the next input to have.
#[derive(Debug, Clone, Copy, Default)]
pub struct TsOffset {
    offset: u32,
    max_out: Option<u32>,
}

impl TsOffset {
    pub fn new() -> Self {
        Self::default()
    }

    /// The rewritten timestamp of `input`.
    pub fn apply(&mut self, input: u32) -> u32 {
        let out = input.wrapping_add(self.offset);
        match self.max_out {
            Some(m) if !is_newer_ts(out, m) => {}
            _ => self.max_out = Some(out),
        }
        out
    }

    /// Make `next_input` map to `output`.
    pub fn sync(&mut self, next_input: u32, output: u32) {
        self.offset = output.wrapping_sub(next_input);
    }

    /// Make `next_input` map just after the highest output so far (`gap` ticks later),
    /// so timestamps never go backwards across a switch.
    pub fn sync_after_last(&mut self, next_input: u32, gap: u32) {
        if let Some(m) = self.max_out {
            self.sync(next_input, m.wrapping_add(gap));
        }
    }

    pub fn offset(&self) -> u32 {
        self.offset
    }

    pub fn max_output(&self) -> Option<u32> {
        self.max_out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed a script of (input, dropped?) and compare outputs (None = refused or dropped).
    fn run(m: &mut SeqManager, steps: &[(u16, bool)], want: &[Option<u16>]) {
        let got: Vec<Option<u16>> = steps
            .iter()
            .map(|&(s, dropped)| {
                if dropped {
                    m.drop(s);
                    None
                } else {
                    m.input(s)
                }
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn half_range() {
        assert!(is_newer(1, 0));
        assert!(is_newer(0, 65535));
        assert!(!is_newer(65535, 0));
        assert!(!is_newer(5, 5));
        assert!(is_newer(0x7fff, 0));
        assert!(!is_newer(0x8000, 0));
        assert!(is_newer_ts(0, u32::MAX));
        assert!(!is_newer_ts(7, 7));
    }

    #[test]
    fn ordered_from_initial() {
        let mut m = SeqManager::new(1000);
        assert_eq!(m.max_output(), None);
        let want: Vec<_> = (1000..1010).map(Some).collect();
        let steps: Vec<_> = (50u16..60).map(|s| (s, false)).collect();
        run(&mut m, &steps, &want);
        assert_eq!(m.max_output(), Some(1009));
        assert_eq!(m.max_input(), Some(59));
    }

    #[test]
    fn out_of_order() {
        let mut m = SeqManager::new(1);
        run(
            &mut m,
            &[
                (10, false),
                (12, false),
                (11, false),
                (14, false),
                (13, false),
                (12, false),
            ],
            &[Some(1), Some(3), Some(2), Some(5), Some(4), Some(3)],
        );
        assert_eq!(m.max_output(), Some(5));
    }

    #[test]
    fn input_wraps() {
        let mut m = SeqManager::new(100);
        run(
            &mut m,
            &[
                (65533, false),
                (65534, false),
                (65535, false),
                (0, false),
                (1, false),
                (65535, false),
                (2, false),
            ],
            &[
                Some(100),
                Some(101),
                Some(102),
                Some(103),
                Some(104),
                Some(102),
                Some(105),
            ],
        );
    }

    #[test]
    fn output_wraps() {
        let mut m = SeqManager::new(65534);
        run(
            &mut m,
            &[(1, false), (2, false), (3, false), (5, false), (4, false)],
            &[Some(65534), Some(65535), Some(0), Some(2), Some(1)],
        );
        assert_eq!(m.max_output(), Some(2));
    }

    #[test]
    fn drops_leave_no_gap() {
        let mut m = SeqManager::new(1000);
        run(
            &mut m,
            &[
                (1, false),
                (2, true),
                (3, false),
                (4, true),
                (5, true),
                (6, false),
                (7, false),
            ],
            &[
                Some(1000),
                None,
                Some(1001),
                None,
                None,
                Some(1002),
                Some(1003),
            ],
        );
        // A dropped input arriving again (retransmission) stays dropped.
        assert_eq!(m.input(5), None);
        assert_eq!(m.input(2), None);
        // Reordered non-dropped packet keeps its slot.
        assert_eq!(m.input(3), Some(1001));
        assert_eq!(m.input(1), Some(1000));
    }

    #[test]
    fn drop_with_late_packets_in_between() {
        let mut m = SeqManager::new(500);
        // 10 in, 11 and 12 still in flight, 13 dropped, 14 in, then 11 and 12 arrive late.
        run(
            &mut m,
            &[
                (10, false),
                (13, true),
                (14, false),
                (12, false),
                (11, false),
                (15, false),
            ],
            &[Some(500), None, Some(503), Some(502), Some(501), Some(504)],
        );
    }

    #[test]
    fn drops_across_wrap() {
        let mut m = SeqManager::new(2000);
        run(
            &mut m,
            &[
                (65534, false),
                (65535, true),
                (0, true),
                (1, false),
                (65535, false),
                (2, false),
            ],
            &[Some(2000), None, None, Some(2001), None, Some(2002)],
        );
    }

    #[test]
    fn old_drops_are_ignored() {
        let mut m = SeqManager::new(10);
        run(&mut m, &[(5, false), (7, false)], &[Some(10), Some(12)]);
        // 6 is older than max input: dropping it leaves its slot (11) as a gap.
        m.drop(6);
        assert_eq!(m.input(8), Some(13));
        // Dropping before the first packet does nothing.
        let mut m = SeqManager::new(10);
        m.drop(3);
        assert_eq!(m.input(4), Some(10));
        assert_eq!(m.input(5), Some(11));
    }

    #[test]
    fn sync_continues_after_last_output() {
        let mut m = SeqManager::new(1000);
        run(
            &mut m,
            &[(100, false), (101, false), (102, false)],
            &[Some(1000), Some(1001), Some(1002)],
        );
        // Paused: the engine drops everything...
        for s in 103..200 {
            m.drop(s);
        }
        // ...then resumes on a key frame at 5000 (a jump): it follows 1002 exactly.
        m.sync(5000);
        assert_eq!(m.input(5000), Some(1003));
        assert_eq!(m.input(5001), Some(1004));
        // Packets from before the sync point are refused.
        assert_eq!(m.input(4999), None);
        assert_eq!(m.input(150), None);
        assert_eq!(m.input(102), None);
        // Reordering after the sync point is fine.
        assert_eq!(m.input(5003), Some(1006));
        assert_eq!(m.input(5002), Some(1005));
    }

    #[test]
    fn sync_to_an_older_input_after_switch() {
        // Layer switch: the new stream's numbering is lower than the old one's.
        let mut m = SeqManager::new(30000);
        run(
            &mut m,
            &[(40000, false), (40001, false)],
            &[Some(30000), Some(30001)],
        );
        m.sync(10);
        run(
            &mut m,
            &[(10, false), (11, true), (12, false), (65535, false)],
            &[Some(30002), None, Some(30003), None],
        );
    }

    #[test]
    fn sync_before_start_is_a_no_op() {
        let mut m = SeqManager::new(7000);
        m.sync(42);
        assert_eq!(m.input(42), Some(7000));
        assert_eq!(m.input(43), Some(7001));
    }

    #[test]
    fn sync_then_drop_then_input() {
        let mut m = SeqManager::new(1);
        m.input(1);
        m.sync(100);
        m.drop(100); // the resync packet itself was not a key frame
        m.drop(101);
        assert_eq!(m.input(102), Some(2));
        assert_eq!(m.input(101), None);
    }

    #[test]
    fn jumps_keep_the_gap() {
        let mut m = SeqManager::new(1000);
        run(
            &mut m,
            &[
                (1, false),
                (2, false),
                (10002, false),
                (10003, false),
                (10001, false),
            ],
            &[
                Some(1000),
                Some(1001),
                Some(11001),
                Some(11002),
                Some(11000),
            ],
        );
        // A jump of more than half the range counts as old: mapped with the same offset.
        assert_eq!(m.input(50000), Some(50999));
        assert_eq!(m.max_output(), Some(11002));
    }

    #[test]
    fn long_run_with_periodic_drops_and_wraps() {
        let mut m = SeqManager::new(1000);
        let mut expected = 1000u16;
        let mut s: u16 = 60000;
        for i in 0..200_000u32 {
            if i % 7 == 3 {
                m.drop(s);
            } else {
                assert_eq!(m.input(s), Some(expected), "i={i}");
                expected = expected.wrapping_add(1);
            }
            s = s.wrapping_add(1);
        }
    }

    #[test]
    fn many_drops_forget_oldest_and_refuse_before_them() {
        let mut m = SeqManager::new(1000);
        assert_eq!(m.input(0), Some(1000));
        // Every other input dropped, more than MAX_DROPS of them.
        for s in 1..=(2 * MAX_DROPS as u16 + 10) {
            if s % 2 == 1 {
                m.drop(s);
            } else {
                m.input(s).unwrap();
            }
        }
        // A very late packet from before the remembered drops is refused (no wrong output).
        assert_eq!(m.input(2), None);
        // A late one inside the remembered range still gets its original slot.
        let late = 2 * MAX_DROPS as u16;
        let mut fresh = m.clone();
        let again = fresh.input(late);
        assert_eq!(again, m.input(late));
        assert_eq!(again, Some(1000 + MAX_DROPS as u16));
    }

    #[test]
    fn no_reallocation_after_new() {
        let mut m = SeqManager::new(1);
        m.input(0);
        let cap = m.drops.capacity();
        for s in 1..5000u16 {
            m.drop(s);
        }
        assert_eq!(m.drops.capacity(), cap);
    }

    #[test]
    fn timestamps() {
        let mut t = TsOffset::new();
        assert_eq!(t.apply(1000), 1000);
        assert_eq!(t.apply(4000), 4000);
        assert_eq!(t.max_output(), Some(4000));
        // Switch to a source whose clock is elsewhere: continue 3000 ticks later.
        t.sync_after_last(90_000_000, 3000);
        assert_eq!(t.apply(90_000_000), 7000);
        assert_eq!(t.apply(90_003_000), 10000);
        // Reordered older timestamp does not lower the max.
        assert_eq!(t.apply(89_999_000), 6000);
        assert_eq!(t.max_output(), Some(10000));
        // Wrap.
        let mut t = TsOffset::new();
        t.sync(0, u32::MAX);
        assert_eq!(t.apply(0), u32::MAX);
        assert_eq!(t.apply(1), 0);
        assert_eq!(t.max_output(), Some(0));
        assert_eq!(t.offset(), u32::MAX);
    }
}
