//! A consumer's layer choice (simulcast; VP9 SVC, AV1 and H264 preferences are handed to
//! their filters, and their probe requests passed on): the viewer's preference and its bandwidth estimate
//! (layers.rs decides), and the bitrate to probe before a move up (bwe/probe.rs).

use std::time::Instant;

use crate::bwe::Estimate;
use crate::vp8;

use super::consumer::{Consumer, Kind};

impl Consumer {
    /// Simulcast: choose the layer from the stream bitrates and the viewer's estimate. The
    /// stream to ask for a key frame if the target changed to another one than the current.
    pub(super) fn update_layer(&mut self, now: Instant, rates: &[u64], estimate: Option<Estimate>) -> Option<usize> {
        let Kind::Simulcast(s) = &mut self.kind else { return None };
        let target = s.layers.decide(now, s.preferred_spatial, self.encoding, rates, estimate);
        if target == s.target {
            return None;
        }
        s.target = target;
        (target != self.encoding && !self.paused).then_some(target)
    }

    /// Simulcast, VP9 SVC or a single stream selected by the dependency descriptor (AV1,
    /// H264), settled below the preference on a send-side estimate that does
    /// not cover the next spatial layer: that layer's bitrate and the current one's, to probe
    /// before moving up (layers.rs). `rates`: the simulcast streams' bitrates (an SVC filter
    /// measures its layers itself).
    pub(super) fn probe_for(&self, rates: &[u64], estimate: Option<Estimate>) -> Option<(u64, u64)> {
        if self.paused {
            return None;
        }
        match &self.kind {
            Kind::Simulcast(s) => {
                let next = s.layers.probe_for(s.preferred_spatial, self.encoding, s.target, rates, estimate)?;
                Some((next, rates.get(self.encoding).copied().unwrap_or(0)))
            }
            Kind::Svc(f) => f.probe_for(estimate),
            Kind::Simple => self.dd.as_ref()?.probe_for(estimate),
            Kind::Pipe(_) => None,
        }
    }

    /// The viewer's preference: at most `spatial` (clamped to `layers` - 1). Returns the
    /// preferred (spatial, temporal) layers and the stream to ask for a key frame, if any.
    pub(super) fn set_preference(
        &mut self,
        now: Instant,
        spatial: usize,
        temporal: Option<u8>,
        rates: &[u64],
        estimate: Option<Estimate>,
    ) -> ((usize, u8), Option<usize>) {
        self.preferred_temporal = temporal.unwrap_or(vp8::ALL_LAYERS);
        if let Some(f) = self.vp8.as_mut() {
            f.set_target(self.preferred_temporal);
        }
        if let Kind::Svc(f) = &mut self.kind {
            let before = f.needs_key_frame();
            let l = f.set_preference(now, spatial, temporal);
            let switch = (!before && f.needs_key_frame() && !self.paused && !self.wait_key_frame).then_some(self.encoding);
            return ((l.spatial as usize, l.temporal), switch);
        }
        self.set_svc_preference(now, spatial);
        let Kind::Simulcast(s) = &mut self.kind else {
            return ((spatial.min(rates.len() - 1), self.preferred_temporal), self.svc_key_frame());
        };
        let preferred = spatial.min(rates.len() - 1);
        if preferred > s.preferred_spatial {
            s.layers.preference_raised(now);
        }
        s.preferred_spatial = preferred;
        let target = s.layers.decide(now, s.preferred_spatial, self.encoding, rates, estimate);
        s.target = target;
        let switch = (target != self.encoding && !self.paused).then_some(target);
        ((s.preferred_spatial, self.preferred_temporal), switch)
    }
}
