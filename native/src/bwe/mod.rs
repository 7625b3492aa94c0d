//! Per-viewer-transport bandwidth estimate ("available bitrate").
//!
//! Two sources, one per way the viewer negotiated:
//! - transport-cc (Chrome's default toward mediasoup-style servers): the server stamps
//!   transport-wide sequence numbers on what it sends and estimates from the viewer's
//!   feedback itself (send_side.rs, with delay.rs and the prober, probe.rs);
//! - otherwise REMB, the viewer's own receive-side estimate (remb.rs).
//!
//! [`BandwidthEstimator`] holds both and answers with the send-side estimate when the
//! transport has one. How the estimate picks simulcast layers is in layers.rs.

pub mod delay;
pub mod probe;
pub mod remb;
pub mod send_side;

use std::time::Instant;

pub use probe::Outcome;
pub use remb::RembEstimator;
pub use send_side::SendSide;

/// An estimate as the layer choice sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    pub bitrate: u64,
    /// When it was last updated.
    pub at: Instant,
    /// From transport-cc feedback (else REMB): it follows a move up quickly, and probes can
    /// test a higher layer before the move.
    pub send_side: bool,
}

#[derive(Debug, Default)]
pub struct BandwidthEstimator {
    remb: RembEstimator,
    /// Created at the first packet stamped with a transport-wide sequence number.
    pub send_side: Option<Box<SendSide>>,
    pub remb_in: u64,
    /// transport-cc feedback that did not parse.
    pub feedback_malformed: u64,
}

impl BandwidthEstimator {
    pub fn new() -> Self {
        Self::default()
    }

    /// A REMB from the viewer reported `bitrate` bits per second.
    pub fn on_remb(&mut self, now: Instant, bitrate: u64) {
        self.remb_in += 1;
        self.remb.on_remb(now, bitrate);
    }

    /// A transport-cc feedback (its FCI) from the viewer: a finished probe's outcome, if any.
    pub fn on_transport_cc(&mut self, now: Instant, fci: &[u8]) -> Option<Outcome> {
        let ss = self.send_side.as_mut()?;
        let Some(fb) = crate::twcc::parse_feedback(fci) else {
            self.feedback_malformed += 1;
            return None;
        };
        ss.on_feedback(now, &fb)
    }

    /// The send-side state, created on first use (the transport stamps from now on).
    #[inline]
    pub fn stamping(&mut self, now: Instant) -> &mut SendSide {
        self.send_side.get_or_insert_with(|| Box::new(SendSide::new(now)))
    }

    /// The estimate (`None` when unknown or stale): the send-side one when there is one.
    pub fn estimate(&self, now: Instant) -> Option<Estimate> {
        if let Some(ss) = &self.send_side {
            if let (Some(bitrate), Some(at)) = (ss.available_bitrate(now), ss.updated()) {
                return Some(Estimate { bitrate, at, send_side: true });
            }
        }
        let (bitrate, at) = self.remb.estimate(now)?;
        Some(Estimate { bitrate, at, send_side: false })
    }

    /// Bits per second the viewer can take now, or `None` when unknown.
    pub fn available_bitrate(&self, now: Instant) -> Option<u64> {
        self.estimate(now).map(|e| e.bitrate)
    }
}
