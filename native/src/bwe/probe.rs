//! Bandwidth probing: before a viewer moves up a simulcast layer, test the path at the rate
//! the move needs.
//!
//! A probe is one *cluster*: for [`PROBE_DURATION`] everything the transport sends (media,
//! retransmissions) is tagged with the cluster, and padding fills the gap up to the probe
//! rate. The padding is padding-only RTX packets (RFC 4588 stream of a consumer, payload
//! empty, [`PADDING_SIZE`] bytes of RTP padding): the viewer knows that SSRC from the SDP,
//! so it accepts them and its transport-wide feedback covers them (libwebrtc records
//! transport-cc arrivals before the RTX stream drops an empty packet). mediasoup's
//! probation SSRC 1234 is not used: only mediasoup-client's probator m-line knows it;
//! a plain browser would drop the packets before its feedback sees them.
//!
//! The viewer's feedback gives the cluster's send rate and receive rate (probe_result in
//! send_side.rs); the result raises the estimate. The probe succeeded when the result
//! covers the rate the move needs; after a failure the next probe waits [`BACKOFF_MIN`],
//! doubling up to [`BACKOFF_MAX`] (the path is retested while a viewer is held down, so a
//! lifted limit is found within that time).
//!
//! Sans-IO: times in, padding counts and cluster ids out.

use std::time::{Duration, Instant};

/// How long one probe cluster lasts.
pub const PROBE_DURATION: Duration = Duration::from_millis(100);
/// How often the router is woken to send padding while a cluster is on.
pub const PACING_INTERVAL: Duration = Duration::from_millis(5);
/// RTP padding bytes of one padding packet (the padding length octet's maximum).
pub const PADDING_SIZE: usize = 255;
/// Bytes a padding packet takes on the wire besides its padding (RTP header, MID and
/// transport-wide extensions, SRTP tag), for pacing.
pub const PADDING_OVERHEAD: usize = 40;
/// Padding packets sent at most per wake-up (bounds a late timer's catch-up burst).
pub const MAX_PADDING_PER_TICK: usize = 32;
/// Probe this much above the rate needed (the result must cover the need with margin).
pub const PROBE_GAIN_PERCENT: u64 = 120;
/// A cluster without a result this long after it ended failed.
pub const RESULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Wait after a failed probe before the next, doubling per failure up to the maximum.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(3);
/// Wait after a successful probe before another (the move up settles first).
pub const AFTER_SUCCESS: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
struct Cluster {
    id: u16,
    /// Rate to send at, bits per second.
    rate: u64,
    /// Rate the move up needs; a result at or above it is a success.
    needed: u64,
    start: Instant,
    /// Bytes tagged with the cluster so far (media and padding).
    bytes: u64,
    sending: bool,
}

/// The outcome of a probe once its result is in (or it timed out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded(u64),
    Failed(Option<u64>),
}

#[derive(Debug)]
pub struct Prober {
    cluster: Option<Cluster>,
    last_id: u16,
    backoff: Duration,
    next_allowed: Option<Instant>,
    pub probes: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub padding_packets: u64,
    pub padding_bytes: u64,
    /// Padding due but no consumer of the transport could carry it.
    pub no_carrier: u64,
}

impl Default for Prober {
    fn default() -> Self {
        Prober {
            cluster: None,
            last_id: 0,
            backoff: BACKOFF_MIN,
            next_allowed: None,
            probes: 0,
            succeeded: 0,
            failed: 0,
            padding_packets: 0,
            padding_bytes: 0,
            no_carrier: 0,
        }
    }
}

impl Prober {
    /// No probe under way and the back-off has passed.
    pub fn may_start(&self, now: Instant) -> bool {
        self.cluster.is_none() && self.next_allowed.is_none_or(|t| now >= t)
    }

    /// Start a cluster that tests whether the path carries `needed` bits per second (sent
    /// at PROBE_GAIN_PERCENT of it). Its id (never 0).
    pub fn start(&mut self, now: Instant, needed: u64) -> u16 {
        self.last_id = self.last_id.checked_add(1).unwrap_or(1);
        let rate = needed.saturating_mul(PROBE_GAIN_PERCENT) / 100;
        self.cluster = Some(Cluster { id: self.last_id, rate, needed, start: now, bytes: 0, sending: true });
        self.probes += 1;
        self.last_id
    }

    /// The cluster packets sent now belong to (0: none).
    #[inline]
    pub fn sending_cluster(&self) -> u16 {
        match &self.cluster {
            Some(c) if c.sending => c.id,
            _ => 0,
        }
    }

    /// A packet of `len` bytes tagged with the sending cluster left.
    #[inline]
    pub fn on_sent(&mut self, len: usize) {
        if let Some(c) = self.cluster.as_mut().filter(|c| c.sending) {
            c.bytes += len as u64;
        }
    }

    pub fn on_padding_sent(&mut self, len: usize) {
        self.padding_packets += 1;
        self.padding_bytes += len as u64;
    }

    /// Whether a cluster is being sent (the router then wakes every PACING_INTERVAL).
    pub fn is_sending(&self) -> bool {
        self.cluster.is_some_and(|c| c.sending)
    }

    /// Padding packets to send now to keep the cluster at its rate (0 when none is being
    /// sent; the cluster stops sending once PROBE_DURATION has passed).
    pub fn padding_due(&mut self, now: Instant) -> usize {
        let Some(c) = self.cluster.as_mut().filter(|c| c.sending) else { return 0 };
        let elapsed = now.saturating_duration_since(c.start);
        if elapsed >= PROBE_DURATION {
            c.sending = false;
            return 0;
        }
        // Bytes due by the end of this pacing slot.
        let until = (elapsed + PACING_INTERVAL).min(PROBE_DURATION);
        let due = (c.rate as u128 * until.as_micros() / 8_000_000) as u64;
        let missing = due.saturating_sub(c.bytes) as usize;
        missing.div_ceil(PADDING_SIZE + PADDING_OVERHEAD).min(MAX_PADDING_PER_TICK)
    }

    /// The cluster awaiting a result: its id, whether it still sends, and when it started.
    pub fn pending(&self) -> Option<(u16, bool, Instant)> {
        self.cluster.map(|c| (c.id, c.sending, c.start))
    }

    /// The result of cluster `id` (its measured rate, None if it told nothing usable).
    pub fn on_result(&mut self, now: Instant, id: u16, result: Option<u64>) -> Option<Outcome> {
        let c = self.cluster.filter(|c| c.id == id && !c.sending)?;
        self.cluster = None;
        match result {
            Some(r) if r >= c.needed => {
                self.succeeded += 1;
                self.backoff = BACKOFF_MIN;
                self.next_allowed = Some(now + AFTER_SUCCESS);
                Some(Outcome::Succeeded(r))
            }
            _ => {
                self.failed += 1;
                self.next_allowed = Some(now + self.backoff);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                Some(Outcome::Failed(result))
            }
        }
    }

    /// A cluster that ended more than RESULT_TIMEOUT ago without a result failed.
    pub fn check_timeout(&mut self, now: Instant) -> Option<Outcome> {
        let c = self.cluster?;
        if c.sending || now.saturating_duration_since(c.start) < PROBE_DURATION + RESULT_TIMEOUT {
            return None;
        }
        self.on_result(now, c.id, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_paces_padding_to_its_rate_then_stops() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        assert!(p.may_start(t0));
        assert_eq!(p.padding_due(t0), 0, "no cluster");
        let id = p.start(t0, 1_000_000);
        assert_eq!(p.sending_cluster(), id);
        assert!(!p.may_start(t0), "one at a time");
        let mut sent = 0u64;
        let mut t = t0;
        while t < t0 + PROBE_DURATION + PACING_INTERVAL {
            // 1.2 Mbit/s: 150 bytes per ms; media of 1000 bytes every 10 ms counts too.
            if (t - t0).as_millis().is_multiple_of(10) {
                p.on_sent(1000);
                sent += 1000;
            }
            for _ in 0..p.padding_due(t) {
                p.on_sent(PADDING_SIZE + PADDING_OVERHEAD);
                sent += (PADDING_SIZE + PADDING_OVERHEAD) as u64;
            }
            t += PACING_INTERVAL;
        }
        assert!(!p.is_sending());
        assert_eq!(p.sending_cluster(), 0);
        let want = 1_200_000 / 8 * PROBE_DURATION.as_millis() as u64 / 1000;
        assert!(sent >= want && sent <= want + 2 * (PADDING_SIZE + PADDING_OVERHEAD) as u64 + 1000, "{sent} vs {want}");
        assert_eq!(p.pending().map(|c| c.0), Some(id));
    }

    #[test]
    fn success_and_failure_set_the_back_off() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        let end = |p: &mut Prober, t: Instant| {
            p.padding_due(t + PROBE_DURATION);
        };
        let id = p.start(t0, 1_000_000);
        assert_eq!(p.on_result(t0, id, Some(2_000_000)), None, "still sending: no result yet");
        end(&mut p, t0);
        assert_eq!(p.on_result(t0, id + 1, Some(2_000_000)), None, "another cluster's result");
        assert_eq!(p.on_result(t0, id, Some(1_100_000)), Some(Outcome::Succeeded(1_100_000)));
        assert!(!p.may_start(t0 + AFTER_SUCCESS / 2));
        assert!(p.may_start(t0 + AFTER_SUCCESS));
        // Failures: 1 s, 2 s, 3 s, 3 s.
        let mut t = t0 + AFTER_SUCCESS;
        for wait in [1u64, 2, 3, 3] {
            let id = p.start(t, 1_000_000);
            end(&mut p, t);
            assert_eq!(p.on_result(t, id, Some(700_000)), Some(Outcome::Failed(Some(700_000))));
            assert!(!p.may_start(t + Duration::from_millis(wait * 1000 - 1)));
            assert!(p.may_start(t + Duration::from_secs(wait)));
            t += Duration::from_secs(wait);
        }
        // No result at all: fails after the timeout.
        let id = p.start(t, 1_000_000);
        end(&mut p, t);
        assert_eq!(p.check_timeout(t + PROBE_DURATION), None);
        assert_eq!(p.check_timeout(t + PROBE_DURATION + RESULT_TIMEOUT), Some(Outcome::Failed(None)));
        assert_eq!(p.on_result(t, id, Some(5_000_000)), None, "already closed");
        assert_eq!((p.probes, p.succeeded, p.failed), (6, 1, 5));
    }
}
