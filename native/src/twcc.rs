//! Transport-wide congestion control feedback, receive side
//! (draft-holmer-rmcat-transport-wide-cc-extensions-01).
//!
//! A sender that negotiated the transport-wide sequence number extension stamps every RTP
//! packet of a transport with a 16-bit counter. [`TwccRecorder`] notes (sequence, arrival
//! time) of each packet and [`TwccRecorder::build_feedback`] turns what arrived since the
//! last feedback into an RTCP RTPFB FMT 15 packet, which lets the sender's bandwidth
//! estimator (Chrome's send-side BWE) ramp its upload bitrate.
//!
//! Sans-IO: sequence numbers and microsecond arrival times in, bytes out. Sequence numbers
//! are unwrapped to i64 (half-range rule), so wrap-around and reordering are fine; packets
//! older than what was already reported are ignored; a window larger than
//! [`MAX_STATUS`] keeps only its newest part (older packets are simply not acknowledged,
//! which a sender reads as loss — bounded work and packet size win over completeness).
//! No allocation after the first packets: buffers are kept and reused.

use crate::rtcp;

/// Most packet statuses in one feedback packet (bounds its size well under the MTU:
/// at most 2 bytes of delta + 2/7 bytes of chunk per status).
pub const MAX_STATUS: i64 = 400;
/// Arrivals kept between two feedback packets.
const MAX_PENDING: usize = 2048;
/// 250 µs per receive-delta tick; the reference time counts 64 ms units.
const DELTA_TICK_US: i64 = 250;
const REF_TIME_US: i64 = 64_000;

/// Status symbols of the feedback's packet chunks.
const NOT_RECEIVED: u8 = 0;
const SMALL_DELTA: u8 = 1;
const LARGE_DELTA: u8 = 2;

#[derive(Debug, Default)]
pub struct TwccRecorder {
    /// Highest unwrapped sequence number seen.
    max_seq: Option<i64>,
    /// First sequence number the next feedback reports (everything below was reported).
    next_base: Option<i64>,
    /// (unwrapped seq, arrival µs) since the last feedback, unsorted.
    pending: Vec<(i64, i64)>,
    feedback_count: u8,
    /// Scratch for building (statuses and deltas), reused.
    statuses: Vec<u8>,
    deltas: Vec<i16>,
    pub packets_recorded: u64,
    pub feedback_sent: u64,
    pub ignored: u64,
}

impl TwccRecorder {
    pub fn new() -> Self {
        Self::default()
    }

    fn unwrap(&self, seq: u16) -> i64 {
        match self.max_seq {
            None => seq as i64,
            Some(m) => {
                let d = seq.wrapping_sub(m as u16) as i16 as i64;
                m + d
            }
        }
    }

    /// A packet with transport-wide sequence `seq` arrived at `arrival_us` (any monotonic
    /// microsecond clock, the same for every call).
    pub fn record(&mut self, seq: u16, arrival_us: i64) {
        let s = self.unwrap(seq);
        if self.next_base.is_some_and(|b| s < b) || self.pending.len() >= MAX_PENDING {
            self.ignored += 1;
            return;
        }
        if self.max_seq.is_none_or(|m| s > m) {
            self.max_seq = Some(s);
        }
        self.pending.push((s, arrival_us));
        self.packets_recorded += 1;
    }

    /// Whether a feedback packet would carry anything.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Append one transport-cc feedback packet for what arrived since the last call to
    /// `out` (nothing when nothing arrived). Returns whether a packet was written.
    pub fn build_feedback(&mut self, out: &mut Vec<u8>, sender_ssrc: u32, media_ssrc: u32) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        self.pending.sort_unstable_by_key(|p| p.0);
        self.pending.dedup_by_key(|p| p.0);
        let last = self.pending[self.pending.len() - 1].0;
        let mut base = self.next_base.unwrap_or(self.pending[0].0);
        // Start at the first packet that arrived (leading losses are reported next time
        // only if they show up; a base before the first arrival adds nothing useful).
        base = base.max(self.pending[0].0);
        if last - base + 1 > MAX_STATUS {
            base = last - MAX_STATUS + 1;
        }
        let first_idx = self.pending.partition_point(|p| p.0 < base);
        let items = &self.pending[first_idx..];
        let first_arrival = items[0].1;
        // Reference time: 24-bit count of 64 ms; deltas are relative to it, then chained.
        let ref_units = first_arrival.div_euclid(REF_TIME_US);
        let mut prev_ticks = ref_units * REF_TIME_US / DELTA_TICK_US;
        self.statuses.clear();
        self.deltas.clear();
        let mut it = items.iter().peekable();
        for s in base..=last {
            match it.peek() {
                Some(&&(seq, arrival)) if seq == s => {
                    it.next();
                    let ticks = arrival.div_euclid(DELTA_TICK_US);
                    let d = (ticks - prev_ticks).clamp(i16::MIN as i64, i16::MAX as i64);
                    prev_ticks += d;
                    self.statuses.push(if (0..=255).contains(&d) { SMALL_DELTA } else { LARGE_DELTA });
                    self.deltas.push(d as i16);
                }
                _ => self.statuses.push(NOT_RECEIVED),
            }
        }
        let start = out.len();
        out.extend_from_slice(&[0x80 | rtcp::FMT_TRANSPORT_CC, 205, 0, 0]);
        out.extend_from_slice(&sender_ssrc.to_be_bytes());
        out.extend_from_slice(&media_ssrc.to_be_bytes());
        out.extend_from_slice(&(base as u16).to_be_bytes());
        out.extend_from_slice(&(self.statuses.len() as u16).to_be_bytes());
        let r = (ref_units as u32) & 0x00ff_ffff;
        out.extend_from_slice(&r.to_be_bytes()[1..]);
        out.push(self.feedback_count);
        write_chunks(out, &self.statuses);
        for (&st, &d) in self.statuses.iter().filter(|s| **s != NOT_RECEIVED).zip(&self.deltas) {
            if st == SMALL_DELTA {
                out.push(d as u8);
            } else {
                out.extend_from_slice(&d.to_be_bytes());
            }
        }
        // Pad to 32 bits (RFC 3550: P bit, last octet = padding count).
        let pad = (4 - (out.len() - start) % 4) % 4;
        if pad > 0 {
            out.extend(std::iter::repeat_n(0u8, pad - 1));
            out.push(pad as u8);
            out[start] |= 0x20;
        }
        let words = (out.len() - start) / 4 - 1;
        out[start + 2..start + 4].copy_from_slice(&(words as u16).to_be_bytes());
        self.feedback_count = self.feedback_count.wrapping_add(1);
        self.feedback_sent += 1;
        self.next_base = Some(last + 1);
        self.pending.clear();
        true
    }
}

/// Packet status chunks: a run-length chunk for runs of 14 or more equal symbols, two-bit
/// status vector chunks (7 symbols) otherwise.
fn write_chunks(out: &mut Vec<u8>, statuses: &[u8]) {
    let mut i = 0;
    while i < statuses.len() {
        let sym = statuses[i];
        let run = statuses[i..].iter().take(0x1fff).take_while(|s| **s == sym).count();
        if run >= 14 {
            let chunk = ((sym as u16) << 13) | run as u16;
            out.extend_from_slice(&chunk.to_be_bytes());
            i += run;
            continue;
        }
        let mut chunk: u16 = 0xc000; // vector chunk, two-bit symbols
        for k in 0..7 {
            let s = statuses.get(i + k).copied().unwrap_or(NOT_RECEIVED) as u16;
            chunk |= s << (12 - 2 * k);
        }
        out.extend_from_slice(&chunk.to_be_bytes());
        i += 7;
    }
}

/// One packet's fate in a parsed feedback: sequence number and, if received, its arrival
/// time in µs relative to the feedback's reference time (reference units × 64 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketResult {
    pub seq: u16,
    pub arrival_us: Option<i64>,
}

/// Parsed transport-cc feedback FCI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    pub base_seq: u16,
    pub reference_time_us: i64,
    pub feedback_count: u8,
    pub packets: Vec<PacketResult>,
}

/// Parse the FCI of a transport-cc feedback (as [`rtcp::TransportCc::fci`]). Used by the
/// send-side estimator and to check the builder. `None` on malformed input.
pub fn parse_feedback(fci: &[u8]) -> Option<Feedback> {
    if fci.len() < 8 {
        return None;
    }
    let base_seq = u16::from_be_bytes([fci[0], fci[1]]);
    let count = u16::from_be_bytes([fci[2], fci[3]]) as usize;
    let ref_units = i32::from_be_bytes([fci[4], fci[5], fci[6], 0]) >> 8;
    let feedback_count = fci[7];
    let mut statuses = Vec::with_capacity(count);
    let mut pos = 8;
    while statuses.len() < count {
        let c = u16::from_be_bytes([*fci.get(pos)?, *fci.get(pos + 1)?]);
        pos += 2;
        if c & 0x8000 == 0 {
            let sym = ((c >> 13) & 3) as u8;
            let run = (c & 0x1fff) as usize;
            for _ in 0..run.min(count - statuses.len()) {
                statuses.push(sym);
            }
        } else if c & 0x4000 == 0 {
            for k in 0..14 {
                if statuses.len() < count {
                    statuses.push(((c >> (13 - k)) & 1) as u8);
                }
            }
        } else {
            for k in 0..7 {
                if statuses.len() < count {
                    statuses.push(((c >> (12 - 2 * k)) & 3) as u8);
                }
            }
        }
    }
    let reference_time_us = ref_units as i64 * REF_TIME_US;
    let mut t = reference_time_us;
    let mut packets = Vec::with_capacity(count);
    for (i, &s) in statuses.iter().enumerate() {
        let seq = base_seq.wrapping_add(i as u16);
        let delta = match s {
            SMALL_DELTA => {
                let d = *fci.get(pos)? as i64;
                pos += 1;
                Some(d)
            }
            LARGE_DELTA => {
                let d = i16::from_be_bytes([*fci.get(pos)?, *fci.get(pos + 1)?]) as i64;
                pos += 2;
                Some(d)
            }
            NOT_RECEIVED => None,
            _ => return None,
        };
        let arrival_us = delta.map(|d| {
            t += d * DELTA_TICK_US;
            t
        });
        packets.push(PacketResult { seq, arrival_us });
    }
    Some(Feedback { base_seq, reference_time_us, feedback_count, packets })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(r: &mut TwccRecorder) -> (Vec<u8>, Feedback) {
        let mut out = Vec::new();
        assert!(r.build_feedback(&mut out, 1, 2));
        assert_eq!(out.len() % 4, 0);
        let pkts: Vec<_> = rtcp::compound(&out).collect();
        assert_eq!(pkts.len(), 1);
        let Ok(rtcp::Packet::TransportCc(t)) = pkts[0] else { panic!("not transport-cc: {:?}", pkts[0]) };
        assert_eq!((t.sender_ssrc, t.media_ssrc), (1, 2));
        let fb = parse_feedback(t.fci).expect("parses");
        (out, fb)
    }

    fn received(fb: &Feedback) -> Vec<(u16, i64)> {
        fb.packets.iter().filter_map(|p| p.arrival_us.map(|a| (p.seq, a))).collect()
    }

    #[test]
    fn in_order_packets_are_acknowledged_with_their_arrival_times() {
        let mut r = TwccRecorder::new();
        for i in 0..20u16 {
            r.record(100 + i, 1_000_000 + i as i64 * 1000);
        }
        let (_, fb) = build(&mut r);
        assert_eq!(fb.base_seq, 100);
        assert_eq!(fb.packets.len(), 20);
        assert_eq!(fb.feedback_count, 0);
        let got = received(&fb);
        for (i, (seq, at)) in got.iter().enumerate() {
            assert_eq!(*seq, 100 + i as u16);
            // 250 µs resolution.
            assert!((at - (1_000_000 + i as i64 * 1000)).abs() < 250, "{at}");
        }
        assert!(!r.build_feedback(&mut Vec::new(), 1, 2), "nothing new, nothing sent");
        r.record(120, 1_030_000);
        let (_, fb) = build(&mut r);
        assert_eq!((fb.base_seq, fb.packets.len(), fb.feedback_count), (120, 1, 1));
    }

    #[test]
    fn losses_reordering_and_large_deltas() {
        let mut r = TwccRecorder::new();
        // 5 lost, 7 arrives before 6, then a 100 ms gap (large delta), then 30 losses.
        r.record(1, 0);
        r.record(2, 500);
        r.record(3, 1000);
        r.record(4, 1200);
        r.record(7, 5000);
        r.record(6, 6000);
        r.record(8, 106_000);
        r.record(39, 107_000);
        let (_, fb) = build(&mut r);
        assert_eq!(fb.base_seq, 1);
        assert_eq!(fb.packets.len(), 39);
        let got = received(&fb);
        let seqs: Vec<u16> = got.iter().map(|g| g.0).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 6, 7, 8, 39]);
        let at = |s: u16| got.iter().find(|g| g.0 == s).unwrap().1;
        assert!((at(6) - 6000).abs() < 250);
        assert!((at(7) - 5000).abs() < 250, "reordered: negative delta");
        assert!((at(8) - 106_000).abs() < 250);
        assert!((at(39) - 107_000).abs() < 250);
    }

    #[test]
    fn wrap_around() {
        let mut r = TwccRecorder::new();
        for (i, s) in [65533u16, 65534, 65535, 0, 1, 2].iter().enumerate() {
            r.record(*s, 10_000 + i as i64 * 2000);
        }
        let (_, fb) = build(&mut r);
        assert_eq!(fb.base_seq, 65533);
        let seqs: Vec<u16> = received(&fb).iter().map(|g| g.0).collect();
        assert_eq!(seqs, vec![65533, 65534, 65535, 0, 1, 2]);
        r.record(3, 30_000);
        r.record(65535, 31_000); // already reported: ignored
        let (_, fb) = build(&mut r);
        assert_eq!(fb.base_seq, 3);
        assert_eq!(fb.packets.len(), 1);
        assert_eq!(r.ignored, 1);
    }

    #[test]
    fn huge_gap_keeps_the_newest_window_and_a_bounded_size() {
        let mut r = TwccRecorder::new();
        r.record(0, 0);
        r.record(20_000, 1000);
        r.record(20_001, 2000);
        let (out, fb) = build(&mut r);
        assert_eq!(fb.packets.len() as i64, MAX_STATUS);
        assert_eq!(fb.base_seq, (20_001 - MAX_STATUS + 1) as u16);
        assert_eq!(received(&fb).len(), 2);
        assert!(out.len() < 1200);
        // Many packets in one window: still bounded.
        let mut r = TwccRecorder::new();
        for i in 0..3000u16 {
            r.record(i, i as i64 * 10);
        }
        let (out, fb) = build(&mut r);
        assert_eq!(fb.packets.len() as i64, MAX_STATUS);
        assert!(out.len() < 1200, "{}", out.len());
    }

    #[test]
    fn chunk_kinds_round_trip() {
        // Long run of received-small, long run of losses, mixed vector: all three chunk paths.
        let mut r = TwccRecorder::new();
        for i in 0..30u16 {
            r.record(i, i as i64 * 100);
        }
        for i in 60..65u16 {
            r.record(i, 100_000 + i as i64 * 100);
        }
        let (_, fb) = build(&mut r);
        assert_eq!(fb.packets.len(), 65);
        assert_eq!(received(&fb).len(), 35);
        // One-bit vector chunks (not written by us, but senders' peers may) parse too.
        let fci = [0u8, 10, 0, 3, 0, 0, 1, 0, 0b1011_0000, 0, 4, 8];
        let fb = parse_feedback(&fci).unwrap();
        assert_eq!(received(&fb), vec![(10, 64_000 + 1000), (11, 64_000 + 3000)]);
        assert_eq!(fb.packets[2].arrival_us, None);
    }

    #[test]
    fn hostile_fci_never_panics() {
        for len in 0..40 {
            let fci: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = parse_feedback(&fci);
        }
        assert!(parse_feedback(&[0, 0, 0xff, 0xff, 0, 0, 0, 0]).is_none());
    }
}
