//! Engine-wide counters that never go down (`Router::totals`): packets and bytes received and
//! forwarded by kind, NACKs, retransmissions, PLI/FIR and key frame requests.
//!
//! The per-object counters stay where they are (producer, encoding, consumer); a producer's or
//! consumer's counters are added to `retired` when it is removed, and `totals()` is `retired`
//! plus the live objects' counters, summed at the call (a Prometheus scrape), not per packet.
//! Removing an object therefore never makes a total smaller.

use super::consumer::Consumer;
use super::producer::Producer;
use super::Router;

/// Engine-wide monotonic counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Media received from producers, \[audio, video\].
    pub packets_received: [u64; 2],
    pub bytes_received: [u64; 2],
    /// Media sent to consumers (retransmissions not included), \[audio, video\].
    pub packets_forwarded: [u64; 2],
    pub bytes_forwarded: [u64; 2],
    /// NACK feedback items from viewers, and NACK packets we sent to producers.
    pub nacks_received: u64,
    pub nacks_sent: u64,
    /// Packets resent to viewers for their NACKs.
    pub packets_retransmitted: u64,
    pub bytes_retransmitted: u64,
    pub plis_received: u64,
    pub firs_received: u64,
    pub plis_sent: u64,
    pub firs_sent: u64,
    /// Key frame requests sent to producers (PLI or FIR).
    pub key_frames_requested: u64,
}

impl Totals {
    pub(super) fn add_producer(&mut self, p: &Producer) {
        let k = p.video as usize;
        self.packets_received[k] += p.stats.packets_in;
        self.bytes_received[k] += p.stats.bytes_in;
        for e in &p.encodings {
            self.nacks_sent += e.quality.nacks_sent;
            self.plis_sent += e.quality.plis_sent;
            self.firs_sent += e.quality.firs_sent;
            self.key_frames_requested += e.kf.requests_sent;
        }
    }

    pub(super) fn add_consumer(&mut self, c: &Consumer, video: bool) {
        let k = video as usize;
        self.packets_forwarded[k] += c.stats.packets_out;
        self.bytes_forwarded[k] += c.stats.bytes_out;
        let q = &c.quality;
        self.nacks_received += q.nacks_in;
        self.packets_retransmitted += q.tx.rtx_packets;
        self.bytes_retransmitted += q.tx.rtx_bytes;
        self.plis_received += q.plis_in;
        self.firs_received += q.firs_in;
    }

    /// (name, value) pairs with the stats vocabulary (camelCase, kind as prefix).
    pub fn items(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("audioPacketsReceived", self.packets_received[0]),
            ("videoPacketsReceived", self.packets_received[1]),
            ("audioBytesReceived", self.bytes_received[0]),
            ("videoBytesReceived", self.bytes_received[1]),
            ("audioPacketsForwarded", self.packets_forwarded[0]),
            ("videoPacketsForwarded", self.packets_forwarded[1]),
            ("audioBytesForwarded", self.bytes_forwarded[0]),
            ("videoBytesForwarded", self.bytes_forwarded[1]),
            ("nacksReceived", self.nacks_received),
            ("nacksSent", self.nacks_sent),
            ("packetsRetransmitted", self.packets_retransmitted),
            ("bytesRetransmitted", self.bytes_retransmitted),
            ("plisReceived", self.plis_received),
            ("firsReceived", self.firs_received),
            ("plisSent", self.plis_sent),
            ("firsSent", self.firs_sent),
            ("keyFramesRequested", self.key_frames_requested),
        ]
    }
}

impl Router {
    /// The engine-wide totals: removed objects' counters plus the live ones'.
    pub fn totals(&self) -> Totals {
        let mut t = self.retired;
        for p in self.producers.values() {
            t.add_producer(p);
        }
        for c in self.consumers.values() {
            t.add_consumer(c, self.consumer_is_video(c));
        }
        t
    }

    pub(super) fn consumer_is_video(&self, c: &Consumer) -> bool {
        self.producers.get(&c.producer).is_some_and(|p| p.video)
    }
}
