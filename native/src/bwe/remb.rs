//! The receive-side estimate: the REMB messages a viewer without transport-cc sends.
//!
//! Design (deliberately simple): the viewer's own receive-side estimator (Chrome's
//! abs-send-time based one behind `goog-remb`) already does the delay/loss analysis and
//! reports its result as REMB. We take the latest REMB as the estimate, smoothed against
//! sudden one-off drops by taking decreases at once (so a congested viewer is relieved
//! quickly) and increases only when a second report confirms them (so a single optimistic
//! report does not push a viewer onto a layer it cannot carry). A report older than
//! [`STALE_AFTER`] no longer counts: no estimate means "no limit". How the estimate picks
//! simulcast layers (and why an estimate only counts for the layer it was measured on) is
//! in layers.rs.
//!
//! Viewers that negotiated transport-cc send no REMB (mediasoup's rule drops `goog-remb`
//! for them); their estimate is the send-side one (send_side.rs).

use std::time::{Duration, Instant};

/// A REMB older than this no longer limits anything.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone)]
pub struct RembEstimator {
    estimate: Option<u64>,
    /// A higher value reported once, waiting for confirmation.
    pending_increase: Option<u64>,
    updated: Option<Instant>,
    pub remb_in: u64,
}

impl RembEstimator {
    pub fn new() -> Self {
        Self::default()
    }

    /// A REMB from the viewer reported `bitrate` bits per second.
    pub fn on_remb(&mut self, now: Instant, bitrate: u64) {
        self.remb_in += 1;
        self.updated = Some(now);
        match self.estimate {
            Some(cur) if bitrate > cur => {
                // Increase on the second report in a row above the current value (by the
                // smaller of the two, the conservative reading).
                match self.pending_increase.take() {
                    Some(prev) => self.estimate = Some(prev.min(bitrate)),
                    None => self.pending_increase = Some(bitrate),
                }
            }
            _ => {
                self.estimate = Some(bitrate);
                self.pending_increase = None;
            }
        }
    }

    /// The estimate and when it was last updated (`None` when unknown or stale).
    pub fn estimate(&self, now: Instant) -> Option<(u64, Instant)> {
        Some((self.available_bitrate(now)?, self.updated?))
    }

    /// Bits per second the viewer can take now, or `None` when unknown.
    pub fn available_bitrate(&self, now: Instant) -> Option<u64> {
        let updated = self.updated?;
        if now.saturating_duration_since(updated) > STALE_AFTER {
            return None;
        }
        self.estimate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decreases_at_once_increases_when_confirmed_and_goes_stale() {
        let t0 = Instant::now();
        let mut b = RembEstimator::new();
        assert_eq!(b.available_bitrate(t0), None);
        b.on_remb(t0, 1_000_000);
        assert_eq!(b.available_bitrate(t0), Some(1_000_000));
        b.on_remb(t0, 300_000);
        assert_eq!(b.available_bitrate(t0), Some(300_000));
        b.on_remb(t0, 2_000_000);
        assert_eq!(b.available_bitrate(t0), Some(300_000), "one report does not raise it");
        b.on_remb(t0, 1_500_000);
        assert_eq!(b.available_bitrate(t0), Some(1_500_000));
        b.on_remb(t0, 3_000_000);
        b.on_remb(t0, 200_000);
        assert_eq!(b.available_bitrate(t0), Some(200_000), "a decrease cancels a pending increase");
        assert_eq!(b.available_bitrate(t0 + STALE_AFTER + Duration::from_millis(1)), None);
        assert_eq!(b.remb_in, 6);
    }
}
