//! Loss repair, sans-IO (sequence numbers and time in, decisions out):
//!
//! - [`RetransmissionBuffer`]: the recent decrypted packets of one producer stream, stored
//!   once and shared by all its consumers, so a viewer's NACK can be answered.
//! - [`SeqMap`]: per consumer, which producer sequence number each output sequence number
//!   carried (the viewer NACKs output numbers), and when it was last resent.
//! - [`NackGenerator`]: per producer stream, the gaps in what arrived, and when to ask the
//!   producer (again) for them.
//!
//! Nothing here allocates per packet once warm: a buffer's storage is reused once its packet
//! is too old to resend, the missing list and the batch keep their capacity.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Slots of a retransmission buffer and of a consumer's sequence map (a power of two).
/// mediasoup keeps at most 2500 packets; 2048 hold 2 s of a ~8 Mbit/s stream of
/// 1000-byte packets.
pub const SLOTS: usize = 2048;
const MASK: usize = SLOTS - 1;
/// How long a buffered packet may still be resent (mediasoup: 2 s video, 1 s audio).
pub const MAX_AGE_VIDEO: Duration = Duration::from_millis(2000);
pub const MAX_AGE_AUDIO: Duration = Duration::from_millis(1000);
/// Initial capacity of a slot: an MTU-size packet fits without growing.
const SLOT_CAP: usize = 1500;

// ---------------------------------------------------------------------------------------
// Retransmission buffer

/// A slot without a packet (`Slot::buf`).
const NO_BUF: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Slot {
    seq: u16,
    at: Instant,
    /// Index of the packet's storage in `RetransmissionBuffer::bufs`, or `NO_BUF`.
    buf: u32,
}

/// A packet stored, in `RetransmissionBuffer::order`: stale once its slot holds another.
#[derive(Clone, Copy)]
struct Stored {
    slot: u16,
    seq: u16,
    at: Instant,
}

/// Recent packets of one stream, indexed by sequence number (ring of [`SLOTS`]).
///
/// The ring's index is made whole with the buffer (no growth while packets flow); the packets'
/// storage is as much as the stream needs within `max_age`: a packet too old to be resent
/// gives its storage to the next one. A 1.5 Mbit/s stream holds about 300 packets
/// (0.5 MB) instead of one per slot, and stops allocating two seconds after it starts,
/// not once it has filled the ring.
pub struct RetransmissionBuffer {
    slots: Box<[Slot]>,
    bufs: Vec<Vec<u8>>,
    /// Storage not holding a packet.
    free: Vec<u32>,
    /// Packets in the order stored, oldest first (some stale: their slot holds another).
    order: VecDeque<Stored>,
    max_age: Duration,
    pub stored: u64,
}

impl RetransmissionBuffer {
    /// An empty buffer for packets up to `max_age` old; `now` is any time (slots are empty).
    pub fn new(now: Instant, max_age: Duration) -> Self {
        RetransmissionBuffer {
            slots: vec![Slot { seq: 0, at: now, buf: NO_BUF }; SLOTS].into_boxed_slice(),
            bufs: Vec::new(),
            free: Vec::new(),
            order: VecDeque::new(),
            max_age,
            stored: 0,
        }
    }

    /// Keep `pkt` (the decrypted packet with sequence number `seq`), replacing whatever
    /// occupied its slot. Storage of packets past `max_age` is reused first.
    pub fn store(&mut self, now: Instant, seq: u16, pkt: &[u8]) {
        self.expire(now);
        let i = seq as usize & MASK;
        let old = self.slots[i];
        let buf = if old.buf != NO_BUF {
            old.buf
        } else if let Some(b) = self.free.pop() {
            b
        } else {
            self.bufs.push(Vec::with_capacity(SLOT_CAP.max(pkt.len())));
            (self.bufs.len() - 1) as u32
        };
        let data = &mut self.bufs[buf as usize];
        data.clear();
        data.extend_from_slice(pkt);
        self.slots[i] = Slot { seq, at: now, buf };
        // The same packet stored again at the same time keeps its one entry.
        if !(old.buf != NO_BUF && old.seq == seq && old.at == now) {
            if self.order.len() >= 2 * SLOTS {
                // Mostly stale entries (a stream far faster than `SLOTS` per `max_age`): keep
                // the current ones, at most one per slot.
                let slots = &self.slots;
                self.order.retain(|e| is_current(slots, e));
            }
            self.order.push_back(Stored { slot: i as u16, seq, at: now });
        }
        self.stored += 1;
    }

    /// Give the storage of packets older than `max_age` back; drop stale entries ahead.
    fn expire(&mut self, now: Instant) {
        while let Some(e) = self.order.front().copied() {
            if is_current(&self.slots, &e) {
                if now.saturating_duration_since(e.at) <= self.max_age {
                    break;
                }
                let slot = &mut self.slots[e.slot as usize];
                self.free.push(slot.buf);
                slot.buf = NO_BUF;
            }
            self.order.pop_front();
        }
    }

    /// The packet with sequence number `seq`, if still held and not older than the window.
    pub fn get(&self, now: Instant, seq: u16) -> Option<&[u8]> {
        let s = self.slots.get(seq as usize & MASK)?;
        if s.buf == NO_BUF || s.seq != seq || now.saturating_duration_since(s.at) > self.max_age {
            return None;
        }
        Some(&self.bufs[s.buf as usize])
    }

    /// Packets' storage allocated (held or free): what the stream has needed at most.
    pub fn storage(&self) -> usize {
        self.bufs.len()
    }

    /// Forget everything (stream restarted); the memory is kept.
    pub fn clear(&mut self) {
        for s in self.slots.iter_mut().filter(|s| s.buf != NO_BUF) {
            self.free.push(s.buf);
            s.buf = NO_BUF;
        }
        self.order.clear();
    }
}

/// Whether `e` is what its slot holds now.
fn is_current(slots: &[Slot], e: &Stored) -> bool {
    let s = &slots[e.slot as usize];
    s.buf != NO_BUF && s.seq == e.seq && s.at == e.at
}

// ---------------------------------------------------------------------------------------
// Consumer sequence map

#[derive(Clone, Copy)]
struct MapEntry {
    out: u16,
    input: u16,
    /// Which producer stream (encoding) the input number belongs to.
    stream: u8,
    valid: bool,
    /// Milliseconds since `SeqMap::base` of the last resend (+1; 0 = never).
    resent_ms: u32,
    /// How many times this output was resent.
    resends: u8,
}

/// Output sequence number → (producer stream, its sequence number), for the last [`SLOTS`]
/// outputs (a consumer may switch streams, e.g. simulcast layers).
pub struct SeqMap {
    entries: Vec<MapEntry>,
    base: Instant,
}

impl SeqMap {
    pub fn new(now: Instant) -> Self {
        SeqMap { entries: vec![MapEntry { out: 0, input: 0, stream: 0, valid: false, resent_ms: 0, resends: 0 }; SLOTS], base: now }
    }

    #[inline]
    /// Ask the cache for the entry output `out` will be recorded in (`prefetch.rs`).
    pub fn prefetch(&self, out: u16) {
        if let Some(e) = self.entries.get(out as usize & MASK) {
            crate::prefetch::prefetch(e);
        }
    }

    pub fn record(&mut self, out: u16, input: u16, stream: u8) {
        self.entries[out as usize & MASK] = MapEntry { out, input, stream, valid: true, resent_ms: 0, resends: 0 };
    }

    /// (producer stream, producer sequence number) of output `out`.
    pub fn lookup(&self, out: u16) -> Option<(u8, u16)> {
        let e = &self.entries[out as usize & MASK];
        (e.valid && e.out == out).then_some((e.stream, e.input))
    }

    /// Whether output `out` may be resent now (not resent within `min_interval`); if so it
    /// is marked as resent at `now`.
    pub fn try_resend(&mut self, now: Instant, out: u16, min_interval: Duration) -> bool {
        if self.check_resend(now, out, min_interval, u8::MAX) != Resend::Allowed {
            return false;
        }
        self.mark_resent(now, out);
        true
    }

    fn now_ms(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.base).as_millis().min(u32::MAX as u128 - 1) as u32 + 1
    }

    /// Whether output `out` may be resent now: known, not resent within `min_interval`, and
    /// resent fewer than `max_resends` times. Nothing is marked (see `mark_resent`).
    pub fn check_resend(&self, now: Instant, out: u16, min_interval: Duration, max_resends: u8) -> Resend {
        let ms = self.now_ms(now);
        let e = &self.entries[out as usize & MASK];
        if !e.valid || e.out != out {
            return Resend::Unknown;
        }
        if e.resent_ms != 0 && ms.saturating_sub(e.resent_ms) < min_interval.as_millis() as u32 {
            return Resend::Throttled;
        }
        if e.resends >= max_resends {
            return Resend::MaxResends;
        }
        Resend::Allowed
    }

    /// Note that output `out` was resent at `now`.
    pub fn mark_resent(&mut self, now: Instant, out: u16) {
        let ms = self.now_ms(now);
        let e = &mut self.entries[out as usize & MASK];
        if e.valid && e.out == out {
            e.resent_ms = ms;
            e.resends = e.resends.saturating_add(1);
        }
    }
}

/// Answer of [`SeqMap::check_resend`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resend {
    Allowed,
    /// Not among the recent outputs.
    Unknown,
    /// Resent within the minimum interval already.
    Throttled,
    /// Resent the maximum number of times already.
    MaxResends,
}

// ---------------------------------------------------------------------------------------
// Extended sequence numbers

/// Extends 16-bit sequence numbers to i64 around the highest seen so far (half-range rule),
/// so wrap-around and reordering compare correctly.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeqExtender {
    started: bool,
    max: i64,
}

impl SeqExtender {
    /// The extended value of `seq` (without updating).
    #[inline]
    pub fn extend(&self, seq: u16) -> i64 {
        if !self.started {
            return seq as i64;
        }
        let d = seq.wrapping_sub(self.max as u16) as i16 as i64;
        self.max + d
    }

    /// Extend and advance the maximum; returns (extended, previous maximum or None).
    #[inline]
    pub fn update(&mut self, seq: u16) -> (i64, Option<i64>) {
        let e = self.extend(seq);
        let prev = self.started.then_some(self.max);
        if !self.started || e > self.max {
            self.max = e;
            self.started = true;
        }
        (e, prev)
    }

    pub fn max(&self) -> Option<i64> {
        self.started.then_some(self.max)
    }
}

// ---------------------------------------------------------------------------------------
// NACK generator

#[derive(Clone, Copy, Debug)]
pub struct NackConfig {
    /// Wait this long after a gap shows before the first NACK (tolerates reordering).
    pub delay: Duration,
    /// Bounds of the spacing between NACKs for the same packet (from the RTT estimate).
    pub min_retry: Duration,
    pub max_retry: Duration,
    pub max_retries: u8,
    /// Give up on a packet this long after the gap showed (the retransmission window).
    pub max_age: Duration,
    /// Missing packets tracked at most; a larger gap → start over with a key frame.
    pub max_list: usize,
    /// Sequence numbers per NACK batch (keeps the RTCP packet well under the MTU).
    pub max_batch: usize,
}

impl Default for NackConfig {
    fn default() -> Self {
        NackConfig {
            delay: Duration::from_millis(10),
            min_retry: Duration::from_millis(20),
            max_retry: Duration::from_millis(400),
            max_retries: 10,
            max_age: MAX_AGE_VIDEO,
            max_list: 1000,
            max_batch: 200,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Missing {
    ext: i64,
    detected: Instant,
    sent: Option<Instant>,
    retries: u8,
}

/// What an arriving packet means for the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Newest so far (possibly after a gap, now tracked as missing).
    New,
    /// Fills a gap (late, or retransmitted on request).
    Recovered,
    /// Not missing and not new: a duplicate, or a gap already given up on.
    Duplicate,
    /// Newest, after a gap too large to repair: the caller should ask for a key frame.
    Overflow,
    /// The sender restarted its numbering (two consecutive packets far behind): everything
    /// was forgotten and counting starts again from this packet; ask for a key frame.
    Restart,
}

/// A packet further back than this, and not missing, is a stray (RFC 3550 A.1's
/// MAX_MISORDER, scaled to the buffer) unless the next one follows it: then the sender
/// restarted.
pub const MAX_MISORDER: i64 = SLOTS as i64;

pub const DEFAULT_RTT: Duration = Duration::from_millis(100);

pub struct NackGenerator {
    cfg: NackConfig,
    seqs: SeqExtender,
    missing: VecDeque<Missing>,
    batch: Vec<u16>,
    next_due: Option<Instant>,
    /// Round-trip estimate from NACK → retransmission times (first tries only).
    rtt: Duration,
    pub rtt_measured: bool,
    /// After a stray far-behind packet: the sequence number that would confirm a restart.
    bad_seq: Option<u16>,
    /// Counters: sequence numbers requested (with retries), NACK batches, packets recovered
    /// after a NACK, packets recovered by reordering, packets given up, list overflows.
    pub requested: u64,
    pub batches: u64,
    pub recovered: u64,
    pub reordered: u64,
    pub gave_up: u64,
    pub overflows: u64,
}

impl NackGenerator {
    pub fn new(cfg: NackConfig) -> Self {
        NackGenerator {
            cfg,
            seqs: SeqExtender::default(),
            missing: VecDeque::with_capacity(64),
            batch: Vec::with_capacity(cfg.max_batch),
            next_due: None,
            rtt: DEFAULT_RTT,
            rtt_measured: false,
            bad_seq: None,
            requested: 0,
            batches: 0,
            recovered: 0,
            reordered: 0,
            gave_up: 0,
            overflows: 0,
        }
    }

    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    pub fn missing_count(&self) -> usize {
        self.missing.len()
    }


    /// A packet with sequence number `seq` arrived at `now` (`rtx`: as a retransmission).
    pub fn on_packet(&mut self, now: Instant, seq: u16, rtx: bool) -> Arrival {
        if rtx && self.seqs.max().is_none_or(|m| self.seqs.extend(seq) > m) {
            // A retransmission of something not even sent yet (probing with payloads):
            // nothing asked for it, and it must not move the stream ahead of its original.
            return Arrival::Duplicate;
        }
        let (ext, prev) = self.seqs.update(seq);
        let Some(prev) = prev else { return Arrival::New };
        if ext > prev {
            let gap = (ext - prev - 1) as usize;
            if gap == 0 {
                return Arrival::New;
            }
            if self.missing.len() + gap > self.cfg.max_list {
                self.overflows += 1;
                self.gave_up += self.missing.len() as u64;
                self.missing.clear();
                self.next_due = None;
                return Arrival::Overflow;
            }
            for e in prev + 1..ext {
                self.missing.push_back(Missing { ext: e, detected: now, sent: None, retries: 0 });
            }
            let due = now + self.cfg.delay;
            self.next_due = Some(self.next_due.map_or(due, |d| d.min(due)));
            return Arrival::New;
        }
        // Older than (or equal to) the newest: was it missing? The list is sorted by ext.
        match self.missing.binary_search_by_key(&ext, |m| m.ext) {
            Ok(i) => {
                let m = self.missing.remove(i).expect("index from binary search");
                if rtx {
                    self.recovered += 1;
                    if m.retries == 1 {
                        if let Some(sent) = m.sent {
                            // Karn: only unambiguous samples (one request outstanding).
                            let sample = now.saturating_duration_since(sent);
                            self.rtt = if self.rtt_measured { (self.rtt * 7 + sample) / 8 } else { sample };
                            self.rtt_measured = true;
                        }
                    }
                } else {
                    self.reordered += 1;
                }
                Arrival::Recovered
            }
            Err(_) if !rtx && prev - ext > MAX_MISORDER => {
                if self.bad_seq == Some(seq) {
                    self.reset();
                    self.seqs.update(seq);
                    return Arrival::Restart;
                }
                self.bad_seq = Some(seq.wrapping_add(1));
                Arrival::Duplicate
            }
            Err(_) => Arrival::Duplicate,
        }
    }

    /// Whether [`collect`](Self::collect) has something to do at `now`.
    #[inline]
    pub fn is_due(&self, now: Instant) -> bool {
        self.next_due.is_some_and(|d| d <= now)
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.next_due
    }

    /// The sequence numbers to NACK now (at most `max_batch`, oldest first); drops packets
    /// past their retry count or the window.
    pub fn collect(&mut self, now: Instant) -> &[u16] {
        self.batch.clear();
        let cfg = self.cfg;
        let rtt = self.rtt;
        let mut gave_up = 0u64;
        self.missing.retain(|m| {
            let expired = m.retries >= cfg.max_retries || now.saturating_duration_since(m.detected) > cfg.max_age;
            if expired {
                gave_up += 1;
            }
            !expired
        });
        self.gave_up += gave_up;
        let mut next: Option<Instant> = None;
        for m in self.missing.iter_mut() {
            let due = match m.sent {
                None => m.detected + cfg.delay,
                Some(s) => s + retry_interval(&cfg, rtt, m.retries),
            };
            if due <= now && self.batch.len() < cfg.max_batch {
                self.batch.push(m.ext as u16);
                m.sent = Some(now);
                m.retries += 1;
                let again = now + retry_interval(&cfg, rtt, m.retries);
                next = Some(next.map_or(again, |n| n.min(again)));
            } else {
                let due = due.max(now + Duration::from_millis(1));
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        self.next_due = next;
        if !self.batch.is_empty() {
            self.requested += self.batch.len() as u64;
            self.batches += 1;
        }
        &self.batch
    }

    /// Forget every gap (stream restarted).
    pub fn reset(&mut self) {
        self.missing.clear();
        self.seqs = SeqExtender::default();
        self.next_due = None;
        self.bad_seq = None;
    }
}

/// Spacing before the next request of a packet already asked for `tries` times: grows
/// linearly from 1.5 RTT, so that with a small RTT the 10 tries still cover about a second
/// (a producer stalled for a moment is not given up on at once).
fn retry_interval(cfg: &NackConfig, rtt: Duration, tries: u8) -> Duration {
    let base = (rtt + rtt / 2).clamp(cfg.min_retry, cfg.max_retry);
    (base * tries.max(1) as u32).min(cfg.max_retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn seq_map_prefetch_is_a_hint_for_any_output() {
        let mut m = SeqMap::new(Instant::now());
        m.record(7, 1007, 1);
        for out in [0u16, 7, 8, u16::MAX] {
            m.prefetch(out);
        }
        assert_eq!(m.lookup(7), Some((1, 1007)));
        assert_eq!(m.lookup(8), None);
    }

    #[test]
    fn buffer_keeps_packets_by_seq_within_the_window_and_reuses_slots() {
        let t0 = Instant::now();
        let mut b = RetransmissionBuffer::new(t0, ms(2000));
        for s in 0..3000u32 {
            let seq = (65000 + s) as u16; // wraps
            b.store(t0, seq, &[seq as u8; 100]);
        }
        let newest = (65000u32 + 2999) as u16;
        assert_eq!(b.get(t0, newest), Some(&[newest as u8; 100][..]));
        // 2048 slots: 2047 back is still there, 2048 back was overwritten.
        assert!(b.get(t0, newest.wrapping_sub(2047)).is_some());
        assert!(b.get(t0, newest.wrapping_sub(2048)).is_none());
        // Too old by time.
        assert!(b.get(t0 + ms(2001), newest).is_none());
        assert!(b.get(t0 + ms(2000), newest).is_some());
        // Slots keep their allocation.
        let ptr = b.get(t0, newest).unwrap().as_ptr();
        b.store(t0, newest.wrapping_add(2048), &[1; 50]);
        assert_eq!(b.get(t0, newest.wrapping_add(2048)).unwrap().as_ptr(), ptr);
        b.clear();
        assert!(b.get(t0, newest.wrapping_add(2048)).is_none());
    }

    #[test]
    fn buffer_storage_follows_the_stream_rate_not_the_ring() {
        // 150 packets/s for 10 s, packets kept 2 s: about 300 held at a time, never 1,500.
        let t0 = Instant::now();
        let mut b = RetransmissionBuffer::new(t0, ms(2000));
        for n in 0..1500u64 {
            let now = t0 + Duration::from_micros(n * 6667);
            b.store(now, n as u16, &[n as u8; 1200]);
        }
        assert!((300..=310).contains(&b.storage()), "storage {}", b.storage());
        let end = t0 + Duration::from_micros(1499 * 6667);
        // The last 2 s are all there; older ones are gone (their storage reused).
        assert_eq!(b.get(end, 1499), Some(&[1499u64 as u8; 1200][..]));
        assert!(b.get(end, 1499 - 299).is_some());
        assert!(b.get(end, 1499 - 301).is_none());
        assert!(b.get(end, 0).is_none());
    }

    #[test]
    fn buffer_reuses_expired_storage_and_keeps_its_order_bounded() {
        let t0 = Instant::now();
        let mut b = RetransmissionBuffer::new(t0, ms(100));
        // Many numbers over the same few slots at one instant: entries beyond the ring's
        // are compacted, storage stays at one per slot used.
        for n in 0..20_000u32 {
            b.store(t0, (n * 2048 + n % 7) as u16, &[1; 10]);
        }
        assert_eq!(b.storage(), 7);
        assert!(b.order.len() <= 2 * SLOTS);
        // Later, all of that is too old: a new packet takes expired storage, none is added.
        b.store(t0 + ms(101), 5000, &[2; 10]);
        assert_eq!(b.storage(), 7);
        assert_eq!(b.order.len(), 1);
        assert_eq!(b.get(t0 + ms(101), 5000), Some(&[2u8; 10][..]));
        // A restart frees everything; the storage is kept for the new numbering.
        b.clear();
        assert!(b.get(t0 + ms(101), 5000).is_none());
        b.store(t0 + ms(102), 7, &[3; 10]);
        assert_eq!(b.storage(), 7);
    }

    #[test]
    fn seq_map_maps_back_and_throttles_resends() {
        let t0 = Instant::now();
        let mut m = SeqMap::new(t0);
        m.record(65535, 10, 0);
        m.record(0, 11, 2);
        assert_eq!(m.lookup(65535), Some((0, 10)));
        assert_eq!(m.lookup(0), Some((2, 11)));
        assert_eq!(m.lookup(2048), None);
        assert!(m.try_resend(t0, 0, ms(100)));
        assert!(!m.try_resend(t0 + ms(50), 0, ms(100)));
        assert!(m.try_resend(t0 + ms(100), 0, ms(100)));
        assert!(!m.try_resend(t0, 5, ms(100)));
    }

    #[test]
    fn seq_map_counts_resends_up_to_a_maximum() {
        let t0 = Instant::now();
        let mut m = SeqMap::new(t0);
        m.record(7, 70, 0);
        for i in 0..3u64 {
            let now = t0 + ms(100 * i);
            assert_eq!(m.check_resend(now, 7, ms(100), 3), Resend::Allowed);
            m.mark_resent(now, 7);
            assert_eq!(m.check_resend(now, 7, ms(100), 3), Resend::Throttled);
        }
        assert_eq!(m.check_resend(t0 + ms(1000), 7, ms(100), 3), Resend::MaxResends);
        assert_eq!(m.check_resend(t0, 8, ms(100), 3), Resend::Unknown);
        // A new packet in the slot starts over.
        m.record(7, 71, 0);
        assert_eq!(m.check_resend(t0 + ms(1000), 7, ms(100), 3), Resend::Allowed);
    }

    #[test]
    fn extender_handles_wrap_and_reorder() {
        let mut x = SeqExtender::default();
        assert_eq!(x.update(65534).0, 65534);
        assert_eq!(x.update(1).0, 65537);
        assert_eq!(x.update(65535).0, 65535);
        assert_eq!(x.max(), Some(65537));
    }

    fn gen() -> NackGenerator {
        NackGenerator::new(NackConfig::default())
    }

    #[test]
    fn gaps_are_nacked_after_the_delay_and_retried_with_spacing() {
        let t0 = Instant::now();
        let mut g = gen();
        assert_eq!(g.on_packet(t0, 65533, false), Arrival::New);
        assert_eq!(g.on_packet(t0, 1, false), Arrival::New); // 65534, 65535, 0 missing
        assert!(g.collect(t0).is_empty(), "reordering tolerance");
        assert!(!g.is_due(t0 + ms(5)));
        assert!(g.is_due(t0 + ms(10)));
        assert_eq!(g.collect(t0 + ms(10)), &[65534, 65535, 0]);
        // A late (reordered) original fills one gap.
        assert_eq!(g.on_packet(t0 + ms(11), 65535, false), Arrival::Recovered);
        assert_eq!(g.reordered, 1);
        // Default RTT 100 ms → retry after 150 ms.
        assert!(g.collect(t0 + ms(100)).is_empty());
        assert_eq!(g.collect(t0 + ms(160)), &[65534, 0]);
        assert_eq!(g.requested, 5);
        assert_eq!(g.batches, 2);
        // Retransmission of 0 arrives; a duplicate of it does not count twice.
        assert_eq!(g.on_packet(t0 + ms(170), 0, true), Arrival::Recovered);
        assert_eq!(g.on_packet(t0 + ms(171), 0, true), Arrival::Duplicate);
        assert_eq!(g.recovered, 1);
        assert_eq!(g.missing_count(), 1);
    }

    #[test]
    fn rtt_from_first_try_retransmissions_shortens_retries() {
        let t0 = Instant::now();
        let mut g = gen();
        g.on_packet(t0, 10, false);
        g.on_packet(t0, 12, false);
        assert_eq!(g.collect(t0 + ms(10)), &[11]);
        assert_eq!(g.on_packet(t0 + ms(14), 11, true), Arrival::Recovered);
        assert!(g.rtt_measured);
        assert_eq!(g.rtt(), ms(4));
        g.on_packet(t0 + ms(20), 14, false);
        assert_eq!(g.collect(t0 + ms(30)), &[13]);
        // min_retry 20 ms.
        assert!(g.collect(t0 + ms(45)).is_empty());
        assert_eq!(g.collect(t0 + ms(50)), &[13]);
    }

    #[test]
    fn gives_up_after_max_retries_or_age_and_caps_the_list() {
        let t0 = Instant::now();
        // Retries at growing spacing (150, 300, then 400 ms with the default RTT) until the
        // 2 s window closes.
        let mut g = gen();
        g.on_packet(t0, 0, false);
        g.on_packet(t0, 2, false);
        let mut t = t0 + ms(10);
        let mut at = Vec::new();
        for _ in 0..250 {
            if !g.collect(t).is_empty() {
                at.push((t - t0).as_millis());
            }
            t += ms(10);
        }
        assert_eq!(at, vec![10, 160, 460, 860, 1260, 1660]);
        assert_eq!(g.gave_up, 1);
        // With a long window the count ends it: 10 requests.
        let mut g = NackGenerator::new(NackConfig { max_age: Duration::from_secs(60), ..NackConfig::default() });
        g.on_packet(t0, 0, false);
        g.on_packet(t0, 2, false);
        let mut t = t0 + ms(10);
        let mut sent = 0;
        for _ in 0..100 {
            sent += g.collect(t).len();
            t += ms(100);
        }
        assert_eq!(sent, 10);
        assert_eq!(g.gave_up, 1);
        assert_eq!(g.missing_count(), 0);
        assert_eq!(g.on_packet(t, 1, true), Arrival::Duplicate);
        // Age: a gap older than the window is dropped even with retries left.
        let mut g = gen();
        g.on_packet(t, 2, false);
        g.on_packet(t, 10, false); // 3..=9 missing
        assert_eq!(g.missing_count(), 7);
        assert!(g.collect(t + ms(2001)).is_empty());
        assert_eq!(g.gave_up, 7);
        assert_eq!(g.on_packet(t + ms(2001), 9, true), Arrival::Duplicate);
        // A huge gap overflows: nothing tracked, key frame wanted.
        let mut g = gen();
        g.on_packet(t0, 0, false);
        g.on_packet(t0, 5, false);
        assert_eq!(g.on_packet(t0, 3000, false), Arrival::Overflow);
        assert_eq!(g.missing_count(), 0);
        assert_eq!(g.overflows, 1);
        assert_eq!(g.on_packet(t0, 3002, false), Arrival::New);
        assert_eq!(g.missing_count(), 1);
    }

    #[test]
    fn a_sender_restart_is_detected_from_two_consecutive_far_behind_packets() {
        let t0 = Instant::now();
        let mut g = gen();
        for s in 30000..30010u16 {
            g.on_packet(t0, s, false);
        }
        // One stray far behind: dropped as a duplicate; the next one after it: a restart.
        assert_eq!(g.on_packet(t0, 100, false), Arrival::Duplicate);
        assert_eq!(g.on_packet(t0, 5000, false), Arrival::Duplicate);
        assert_eq!(g.on_packet(t0, 5001, false), Arrival::Restart);
        assert_eq!(g.on_packet(t0, 5002, false), Arrival::New);
        assert_eq!(g.on_packet(t0, 5004, false), Arrival::New);
        assert_eq!(g.missing_count(), 1);
    }

    #[test]
    fn a_retransmission_ahead_of_the_stream_changes_nothing() {
        let t0 = Instant::now();
        let mut g = gen();
        assert_eq!(g.on_packet(t0, 7, true), Arrival::Duplicate);
        g.on_packet(t0, 10, false);
        assert_eq!(g.on_packet(t0, 12, true), Arrival::Duplicate);
        assert_eq!(g.missing_count(), 0);
        assert_eq!(g.on_packet(t0, 11, false), Arrival::New);
        assert_eq!(g.on_packet(t0, 12, false), Arrival::New);
    }

    #[test]
    fn batches_are_capped() {
        let t0 = Instant::now();
        let mut g = gen();
        g.on_packet(t0, 0, false);
        g.on_packet(t0, 500, false);
        assert_eq!(g.collect(t0 + ms(10)).len(), 200);
        assert_eq!(g.collect(t0 + ms(10)).len(), 200);
        assert_eq!(g.collect(t0 + ms(10)).len(), 99);
        assert!(g.collect(t0 + ms(10)).is_empty());
        assert!(!g.is_due(t0 + ms(10)));
        assert!(g.is_due(t0 + ms(160)));
    }
}
