//! Send-side bandwidth estimate of one viewer transport that negotiated transport-cc.
//!
//! Egress stamps a transport-wide sequence number on every RTP packet the server sends on
//! the transport (media, RTX, probe padding; `next_seq`) and notes its send time, size and
//! probe cluster here (`on_sent`, a bounded ring of [`HISTORY`] packets). The viewer's
//! transport-cc feedback (`on_feedback`) says which arrived and when. From that:
//!
//! - **delay-based** (delay.rs): the trendline's overuse signal drives an AIMD rate: on
//!   overuse the rate drops to [`DECREASE_PERCENT`] of the acknowledged bitrate (what
//!   actually arrived over the last [`ACKED_WINDOW_US`]); while normal it grows by
//!   [`INCREASE_PER_SEC_PERCENT`] a second, never above 1.5 × acknowledged + 10 kbit/s
//!   (an estimate cannot run far ahead of what the path has shown: that is probing's job)
//!   and never below that acknowledged bitrate (what arrives without a congestion signal);
//!   underuse holds it (the queue drains first). It starts at that same bound over the
//!   first acknowledged bitrate: the viewer can take what it has been taking with AIMD's
//!   usual allowance (starting at exactly what arrives would put a viewer's own layer on
//!   the edge of its estimate; a path that cannot carry more shows overuse within a few
//!   hundred milliseconds).
//! - **loss-based**: per [`LOSS_MIN_PACKETS`] reported packets, loss over
//!   [`LOSS_HIGH_PERCENT`] caps the estimate at (1 - loss/2) of its value (at most once per
//!   [`LOSS_DECREASE_INTERVAL`]); loss under [`LOSS_LOW_PERCENT`] lifts the cap; between,
//!   it holds.
//! - **probes** (probe.rs): the send and receive rate of a cluster's packets; a result
//!   above the estimate raises it (and lifts the loss cap when the cluster lost nothing).
//!
//! The estimate is the smaller of the delay-based rate and the loss cap. Sans-IO: `now`
//! passed in; one allocation per transport (the history), a scratch vector reused.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::delay::{InterArrival, Trendline, Usage};
use super::probe::{Outcome, Prober};
use crate::twcc::Feedback;

/// Sent packets remembered (power of two; 2048 packets: 4 s at 4 Mbit/s of 1 kB packets).
pub const HISTORY: usize = 2048;
/// Window of the acknowledged bitrate, in arrival time.
pub const ACKED_WINDOW_US: i64 = 500_000;
/// Arrivals kept for the acknowledged bitrate (bounds its memory).
const ACKED_MAX: usize = 2048;
pub const DECREASE_PERCENT: u64 = 85;
pub const INCREASE_PER_SEC_PERCENT: f64 = 8.0;
/// Overuse decreases at most this often (one per round trip or so, not per feedback).
const DECREASE_INTERVAL: Duration = Duration::from_millis(200);
pub const LOSS_MIN_PACKETS: u32 = 20;
pub const LOSS_HIGH_PERCENT: u32 = 10;
pub const LOSS_LOW_PERCENT: u32 = 2;
pub const LOSS_DECREASE_INTERVAL: Duration = Duration::from_millis(300);
pub const MIN_BITRATE: u64 = 30_000;
pub const MAX_BITRATE: u64 = 100_000_000;
/// No feedback for this long: no estimate (the layers then follow the preference alone).
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// A probe result needs at least this many of its cluster's packets acknowledged.
pub const PROBE_MIN_PACKETS: u32 = 5;
/// Receive rate under this share of the send rate: the path capped the probe.
const PROBE_CAPPED_PERCENT: u64 = 90;

#[derive(Clone, Copy, Debug, Default)]
struct Sent {
    send_us: i64,
    seq: u16,
    size: u16,
    cluster: u16,
    /// 0: empty slot, 1: sent, 2: acknowledged.
    state: u8,
}

/// What the feedback says about one probe cluster so far.
#[derive(Clone, Copy, Debug, Default)]
struct ClusterAcks {
    id: u16,
    sent: u32,
    acked: u32,
    lost: u32,
    bytes: u64,
    first_send: i64,
    last_send: i64,
    first_arrival: i64,
    last_arrival: i64,
}

impl ClusterAcks {
    fn add(&mut self, send: i64, arrival: i64, size: u16) {
        if self.acked == 0 {
            (self.first_send, self.last_send, self.first_arrival, self.last_arrival) = (send, send, arrival, arrival);
        }
        self.acked += 1;
        self.bytes += size as u64;
        self.first_send = self.first_send.min(send);
        self.last_send = self.last_send.max(send);
        self.first_arrival = self.first_arrival.min(arrival);
        self.last_arrival = self.last_arrival.max(arrival);
    }

    /// The measured rate (None: too little or too lossy to tell). The rate over n packets
    /// spans n - 1 gaps: one packet's worth of bytes (the average) is left out.
    fn result(&self) -> Option<u64> {
        if self.acked < PROBE_MIN_PACKETS || self.lost * 100 > (self.acked + self.lost) * LOSS_HIGH_PERCENT {
            return None;
        }
        let bits = (self.bytes - self.bytes / self.acked as u64) * 8;
        let send_us = (self.last_send - self.first_send).max(1) as u64;
        let recv_us = (self.last_arrival - self.first_arrival).max(1) as u64;
        let send = bits * 1_000_000 / send_us;
        let recv = bits * 1_000_000 / recv_us;
        if recv * 100 < send * PROBE_CAPPED_PERCENT {
            return Some(recv * 95 / 100);
        }
        Some(send.min(recv))
    }
}

#[derive(Debug)]
pub struct SendSide {
    epoch: Instant,
    next_seq: u16,
    history: Vec<Sent>,
    arrivals: InterArrival,
    trend: Trendline,
    /// Arrivals (µs, bytes) within the acknowledged-bitrate window, and their byte sum.
    /// (arrival µs, send µs, bytes) of the window.
    acked: VecDeque<(i64, i64, u16)>,
    acked_bytes: u64,
    acked_span_full: bool,
    delay_based: Option<u64>,
    loss_cap: Option<u64>,
    last_rate_update: Option<Instant>,
    last_decrease: Option<Instant>,
    last_loss_decrease: Option<Instant>,
    loss_window: (u32, u32),
    cluster: ClusterAcks,
    updated: Option<Instant>,
    scratch: Vec<(i64, i64, u16, u16)>,
    pub prober: Prober,
    pub packets_sent: u64,
    pub feedback_in: u64,
    pub packets_acked: u64,
    pub packets_lost: u64,
    pub overuses: u64,
}

impl SendSide {
    pub fn new(now: Instant) -> Self {
        SendSide {
            epoch: now,
            next_seq: 0,
            history: vec![Sent::default(); HISTORY],
            arrivals: InterArrival::default(),
            trend: Trendline::default(),
            acked: VecDeque::new(),
            acked_bytes: 0,
            acked_span_full: false,
            delay_based: None,
            loss_cap: None,
            last_rate_update: None,
            last_decrease: None,
            last_loss_decrease: None,
            loss_window: (0, 0),
            cluster: ClusterAcks::default(),
            updated: None,
            scratch: Vec::new(),
            prober: Prober::default(),
            packets_sent: 0,
            feedback_in: 0,
            packets_acked: 0,
            packets_lost: 0,
            overuses: 0,
        }
    }

    /// The transport-wide sequence number for the next packet (note it with `on_sent`).
    #[inline]
    pub fn next_seq(&mut self) -> u16 {
        let s = self.next_seq;
        self.next_seq = s.wrapping_add(1);
        s
    }

    /// Ask the cache for what stamping and `on_sent` of the next packet touch: this
    /// state and the history slot of the next sequence number (`prefetch.rs`).
    pub fn prefetch(&self) {
        crate::prefetch::prefetch(self);
        if let Some(slot) = self.history.get(self.next_seq as usize & (HISTORY - 1)) {
            crate::prefetch::prefetch(slot);
        }
    }

    /// Packet `seq` of `len` bytes (as sent, protected) left now.
    #[inline]
    pub fn on_sent(&mut self, now: Instant, seq: u16, len: usize) {
        let cluster = self.prober.sending_cluster();
        if cluster != 0 {
            self.prober.on_sent(len);
            if self.cluster.id != cluster {
                self.cluster = ClusterAcks { id: cluster, ..Default::default() };
            }
            self.cluster.sent += 1;
        }
        let send_us = now.saturating_duration_since(self.epoch).as_micros() as i64;
        let size = len.min(u16::MAX as usize) as u16;
        self.history[seq as usize & (HISTORY - 1)] = Sent { send_us, seq, size, cluster, state: 1 };
        self.packets_sent += 1;
    }

    /// The estimate, bits per second (None before the first acknowledged bitrate or when
    /// feedback stopped).
    pub fn available_bitrate(&self, now: Instant) -> Option<u64> {
        let updated = self.updated?;
        if now.saturating_duration_since(updated) > STALE_AFTER {
            return None;
        }
        let d = self.delay_based?;
        Some(self.loss_cap.map_or(d, |c| c.min(d)))
    }

    /// When the estimate was last updated from feedback.
    pub fn updated(&self) -> Option<Instant> {
        self.updated
    }

    /// What arrived over the last ACKED_WINDOW_US, bits per second (None until the window
    /// has filled once).
    pub fn acknowledged_bitrate(&self) -> Option<u64> {
        self.acked_span_full.then(|| self.acked_bytes * 8 * 1_000_000 / ACKED_WINDOW_US as u64)
    }

    /// The rate at which the packets of the acknowledged window were sent (a draining queue
    /// delivers faster than that; this does not count such a burst as capacity).
    fn acked_send_rate(&self) -> Option<u64> {
        let (lo, hi) = self.acked.iter().fold((i64::MAX, i64::MIN), |(lo, hi), a| (lo.min(a.1), hi.max(a.1)));
        (hi > lo).then(|| self.acked_bytes * 8 * 1_000_000 / (hi - lo) as u64)
    }

    pub fn usage(&self) -> Usage {
        self.trend.usage()
    }

    /// A transport-cc feedback from the viewer. A finished probe's outcome, if this
    /// feedback completed one.
    pub fn on_feedback(&mut self, now: Instant, fb: &Feedback) -> Option<Outcome> {
        self.feedback_in += 1;
        self.updated = Some(now);
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let (mut lost, mut received) = (0u32, 0u32);
        for p in &fb.packets {
            let e = &mut self.history[p.seq as usize & (HISTORY - 1)];
            if e.state == 0 || e.seq != p.seq {
                continue; // not ours, or too old
            }
            match p.arrival_us {
                None if e.state == 1 => {
                    lost += 1;
                    if e.cluster != 0 && e.cluster == self.cluster.id {
                        self.cluster.lost += 1;
                    }
                }
                Some(a) if e.state == 1 => {
                    e.state = 2;
                    received += 1;
                    scratch.push((a, e.send_us, e.size, e.cluster));
                }
                _ => {}
            }
        }
        self.packets_lost += lost as u64;
        self.packets_acked += received as u64;
        scratch.sort_unstable_by_key(|p| p.0);
        for &(arrival, send, size, cluster) in &scratch {
            self.add_acked(arrival, send, size);
            if cluster != 0 && cluster == self.cluster.id {
                self.cluster.add(send, arrival, size);
            }
            if let Some((s, a, t)) = self.arrivals.add(send, arrival) {
                if self.trend.update(s, a, t) == Usage::Overusing {
                    self.overuses += 1;
                }
            }
        }
        self.scratch = scratch;
        self.update_delay_based(now);
        self.update_loss(now, lost, received);
        self.probe_result(now)
    }

    fn add_acked(&mut self, arrival: i64, send: i64, size: u16) {
        self.acked.push_back((arrival, send, size));
        self.acked_bytes += size as u64;
        let oldest = self.acked.front().map_or(arrival, |a| a.0);
        if arrival - oldest >= ACKED_WINDOW_US {
            self.acked_span_full = true;
        }
        while let Some(&(t, _, s)) = self.acked.front() {
            if arrival - t < ACKED_WINDOW_US && self.acked.len() <= ACKED_MAX {
                break;
            }
            self.acked.pop_front();
            self.acked_bytes -= s as u64;
        }
    }

    /// AIMD on the trendline's signal.
    fn update_delay_based(&mut self, now: Instant) {
        let Some(acked) = self.acknowledged_bitrate() else { return };
        let dt = self.last_rate_update.map_or(Duration::ZERO, |t| now.saturating_duration_since(t)).min(Duration::from_secs(1));
        self.last_rate_update = Some(now);
        let cur = *self.delay_based.get_or_insert((acked * 3 / 2 + 10_000).clamp(MIN_BITRATE, MAX_BITRATE));
        let new = match self.trend.usage() {
            Usage::Overusing => {
                if self.last_decrease.is_some_and(|t| now.saturating_duration_since(t) < DECREASE_INTERVAL) {
                    return;
                }
                self.last_decrease = Some(now);
                (acked * DECREASE_PERCENT / 100).min(cur)
            }
            Usage::Underusing => cur,
            Usage::Normal => {
                let grown = cur as f64 * (1.0 + INCREASE_PER_SEC_PERCENT / 100.0).powf(dt.as_secs_f64());
                let cap = (acked * 3 / 2 + 10_000).max(cur);
                // Never below what arrives while the delay is steady: the server's send
                // rate follows layers, not the estimate (a viewer moved up by its preference
                // shows the path carries the new layer before the growth catches up).
                let shown = self.acked_send_rate().map_or(0, |r| r.min(acked));
                (grown as u64).min(cap).max(shown)
            }
        };
        self.delay_based = Some(new.clamp(MIN_BITRATE, MAX_BITRATE));
    }

    fn update_loss(&mut self, now: Instant, lost: u32, received: u32) {
        self.loss_window.0 += lost;
        self.loss_window.1 += lost + received;
        let (lost, total) = self.loss_window;
        if total < LOSS_MIN_PACKETS {
            return;
        }
        self.loss_window = (0, 0);
        if lost * 100 > total * LOSS_HIGH_PERCENT {
            if self.last_loss_decrease.is_some_and(|t| now.saturating_duration_since(t) < LOSS_DECREASE_INTERVAL) {
                return;
            }
            let Some(base) = self.available_bitrate(now).or(self.acknowledged_bitrate()) else { return };
            // (1 - loss / 2) of the current estimate.
            let capped = base - base * lost as u64 / (2 * total as u64);
            self.loss_cap = Some(capped.max(MIN_BITRATE));
            self.last_loss_decrease = Some(now);
        } else if lost * 100 < total * LOSS_LOW_PERCENT {
            self.loss_cap = None;
        }
    }

    /// The sending-finished cluster's result once enough of it is reported (or its timeout).
    fn probe_result(&mut self, now: Instant) -> Option<Outcome> {
        let (id, sending, _) = self.prober.pending()?;
        let c = self.cluster;
        if sending || c.id != id || c.acked + c.lost < c.sent {
            return None;
        }
        let result = c.result();
        if let Some(r) = result {
            if self.delay_based.is_some_and(|d| r > d) {
                self.delay_based = Some(r.min(MAX_BITRATE));
            }
            if c.lost == 0 && self.loss_cap.is_some_and(|cap| r > cap) {
                self.loss_cap = None;
            }
        }
        self.prober.on_result(now, id, result)
    }
}

#[cfg(test)]
mod tests;
