//! The bitrate of each layer inside one stream, as a consumer's layer filter measures it
//! (VP9 SVC spatial layers in svc.rs; the dependency descriptor's spatial or temporal
//! layers in router/svc_dd.rs), and the cadence at which that filter chooses its layer from
//! them and the viewer's bandwidth estimate. The choice itself, with its hysteresis and
//! probing rules, is [`LayerState`]'s (layers.rs), the same as for simulcast streams.
//!
//! Sans-IO (time passed in) and allocation-free per packet.

use std::time::{Duration, Instant};

use crate::bwe::Estimate;
use crate::layers::LayerState;
use crate::reports::BitrateSampler;

/// Layers measured per stream (VP9's SID is 3 bits; the descriptor's layer ladders are cut
/// to this many rungs).
pub const MAX_LAYERS: usize = 8;
/// How often the layers are chosen from the estimate (as often as simulcast ones: a viewer
/// kept on a layer its path no longer carries loses packets and freezes meanwhile).
pub const DECIDE_INTERVAL: Duration = Duration::from_millis(100);
/// How often the per-layer bitrates are sampled (over this window).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes and sampled bitrates per layer, and the layer decision state.
#[derive(Debug, Clone)]
pub struct LayerMeter {
    layers: LayerState,
    bytes: [u64; MAX_LAYERS],
    rates: [BitrateSampler; MAX_LAYERS],
    decided_at: Option<Instant>,
    sampled_at: Option<Instant>,
}

impl LayerMeter {
    pub fn new(now: Instant) -> Self {
        LayerMeter { layers: LayerState::new(now), bytes: [0; MAX_LAYERS], rates: Default::default(), decided_at: None, sampled_at: None }
    }

    /// `len` bytes toward layer `layer` (ignored past [`MAX_LAYERS`]).
    #[inline]
    pub fn count(&mut self, layer: usize, len: usize) {
        if let Some(b) = self.bytes.get_mut(layer) {
            *b += len as u64;
        }
    }

    /// Whether a decision is due (at most once per [`DECIDE_INTERVAL`]); when it is, the
    /// bitrates are sampled first if [`SAMPLE_INTERVAL`] has passed since the last sample.
    pub fn due(&mut self, now: Instant) -> bool {
        if self.decided_at.is_some_and(|t| now.saturating_duration_since(t) < DECIDE_INTERVAL) {
            return false;
        }
        self.decided_at = Some(now);
        if self.sampled_at.is_none_or(|t| now.saturating_duration_since(t) >= SAMPLE_INTERVAL) {
            self.sampled_at = Some(now);
            for (sampler, &bytes) in self.rates.iter_mut().zip(&self.bytes) {
                sampler.sample(now, bytes);
            }
        }
        true
    }

    /// Layer `layer`'s bitrate as last sampled, bits per second (0 past [`MAX_LAYERS`]).
    pub fn bps(&self, layer: usize) -> u64 {
        self.rates.get(layer).map_or(0, |r| r.bps)
    }

    /// The viewer's preference went up (layers.rs: decide on fresh estimates only).
    pub fn preference_raised(&mut self, now: Instant) {
        self.layers.preference_raised(now);
    }

    /// The layer to receive (layers.rs: [`LayerState::decide`]) given what each layer costs.
    pub fn decide(&mut self, now: Instant, preferred: usize, current: usize, rates: &[u64], estimate: Option<Estimate>) -> usize {
        self.layers.decide(now, preferred, current, rates, estimate)
    }

    /// The bitrate to probe before a move up ([`LayerState::probe_for`]).
    pub fn probe_for(&self, preferred: usize, current: usize, target: usize, rates: &[u64], estimate: Option<Estimate>) -> Option<u64> {
        self.layers.probe_for(preferred, current, target, rates, estimate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_once_per_window_and_decides_once_per_interval() {
        let t0 = Instant::now();
        let mut m = LayerMeter::new(t0);
        assert!(m.due(t0));
        m.count(0, 12_500);
        m.count(1, 25_000);
        m.count(MAX_LAYERS, 1_000_000);
        assert!(!m.due(t0 + DECIDE_INTERVAL / 2), "not twice within an interval");
        assert!(m.due(t0 + DECIDE_INTERVAL));
        assert_eq!((m.bps(0), m.bps(1)), (0, 0), "not sampled within the window");
        assert!(m.due(t0 + SAMPLE_INTERVAL));
        assert_eq!((m.bps(0), m.bps(1), m.bps(MAX_LAYERS)), (100_000, 200_000, 0));
    }
}
