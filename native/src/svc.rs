//! Per-consumer VP9 SVC layer selection (one stream carrying every spatial and temporal layer,
//! as a VP9 producer with `scalabilityMode` `L<S>T<T>` or `L<S>T<T>_KEY` sends it): which
//! packets a viewer gets, and which of them ends its picture.
//!
//! The rules follow mediasoup's SvcConsumer / VP9 payload handler:
//!
//! - A packet of a spatial layer above the one being forwarded, or of a temporal layer above
//!   the one being forwarded, is dropped (the consumer skips its sequence number).
//! - k-SVC (`_KEY`): after a key picture each spatial layer predicts only from itself, so a
//!   viewer on layer S gets the key picture's layers up to S and then layer S alone (lower
//!   layers of predicted pictures are dropped). Its spatial layer changes, up or down, only at
//!   a key picture (the consumer asks for one: [`SvcFilter::needs_key_frame`]).
//! - Full SVC (`L<S>T<T>`): lower layers are forwarded too (inter-layer prediction). Up at a
//!   key picture (asked for), down at the next picture. Not at an upper layer's own switching
//!   point (P = 0, D = 1) inside a picture: by then the lower layer's last packet has gone
//!   out with the end-of-picture marker, and a second end in one picture is not decodable
//!   (mediasoup does not switch there either).
//! - Temporal: up one layer at a time at a switching point (U = 1, start of a frame) or a key
//!   picture; down at the next picture.
//! - The last packet (E = 1) of the highest spatial layer forwarded gets the RTP marker bit
//!   (end of picture), which the sender set only on its own highest layer.
//!
//! The viewer's layers come from its preference and, below that, from its bandwidth estimate
//! against the per-layer bitrates this filter measures ([`crate::layers::LayerState`], as for
//! simulcast). Sans-IO (time passed in) and allocation-free per packet.

use std::time::Instant;

use crate::layer_rates::LayerMeter;
pub use crate::layer_rates::{DECIDE_INTERVAL, SAMPLE_INTERVAL};
use crate::seq::is_newer_ts;
use crate::vp9;

/// Spatial layers a VP9 descriptor can name (SID is 3 bits).
pub const MAX_SPATIAL_LAYERS: usize = crate::layer_rates::MAX_LAYERS;
/// Temporal layers a VP9 descriptor can name (TID is 3 bits).
pub const MAX_TEMPORAL_LAYERS: u8 = 8;

/// Spatial and temporal layer indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layers {
    pub spatial: u8,
    pub temporal: u8,
}

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    /// Forward it; `marker`: with the RTP marker bit set (it may have had it already).
    Forward { marker: bool },
}

/// Layer facts of one packet (defaults when the descriptor has no layer indices).
#[derive(Debug, Clone, Copy)]
struct PacketLayers {
    sid: u8,
    tid: u8,
    begin: bool,
    end: bool,
    predicted: bool,
    switching_up: bool,
}

impl PacketLayers {
    fn of(d: &vp9::Descriptor) -> Self {
        let l = d.layer.unwrap_or_default();
        PacketLayers {
            sid: l.sid,
            tid: l.tid,
            begin: d.begin,
            end: d.end,
            predicted: d.inter_picture_predicted,
            switching_up: l.switching_up,
        }
    }
}

/// Per-consumer SVC filter state.
#[derive(Debug, Clone)]
pub struct SvcFilter {
    /// Layers the producer declares (its scalabilityMode); packets above them are dropped.
    declared: Layers,
    ksvc: bool,
    /// What the viewer asks for (clamped to `declared`).
    preferred: Layers,
    /// What the filter moves toward (preference, lowered by the estimate).
    target: Layers,
    /// What is forwarded (None: not started; the next key picture starts it).
    current: Option<Layers>,
    /// RTP timestamp of the newest picture seen.
    picture: Option<u32>,
    /// Per-layer bitrates and the layer decision (layer_rates.rs, layers.rs).
    meter: LayerMeter,
    /// Layer frames dropped (counted at their first packet), and of them those dropped for
    /// their temporal layer alone.
    pub frames_dropped: u64,
    pub temporal_frames_dropped: u64,
    /// Times the spatial layer forwarded changed.
    pub spatial_switches: u64,
}

impl SvcFilter {
    /// A filter for a producer with `spatial` x `temporal` layers (clamped to 1..=8), k-SVC
    /// or not; the viewer starts on the highest layers.
    pub fn new(spatial: u8, temporal: u8, ksvc: bool, now: Instant) -> Self {
        let declared = Layers {
            spatial: spatial.clamp(1, MAX_SPATIAL_LAYERS as u8) - 1,
            temporal: temporal.clamp(1, MAX_TEMPORAL_LAYERS) - 1,
        };
        SvcFilter {
            declared,
            ksvc,
            preferred: declared,
            target: declared,
            current: None,
            picture: None,
            meter: LayerMeter::new(now),
            frames_dropped: 0,
            temporal_frames_dropped: 0,
            spatial_switches: 0,
        }
    }

    pub fn preferred(&self) -> Layers {
        self.preferred
    }

    pub fn target(&self) -> Layers {
        self.target
    }

    /// The layers being forwarded (None before the first key picture).
    pub fn current(&self) -> Option<Layers> {
        self.current
    }

    pub fn is_ksvc(&self) -> bool {
        self.ksvc
    }

    /// The viewer's preference (`temporal` None: every layer), clamped to the declared
    /// layers; the target follows it at once (the estimate lowers it at the next decision).
    /// Returns the clamped preference.
    pub fn set_preference(&mut self, now: Instant, spatial: usize, temporal: Option<u8>) -> Layers {
        let spatial = spatial.min(self.declared.spatial as usize) as u8;
        let temporal = temporal.map_or(self.declared.temporal, |t| t.min(self.declared.temporal));
        if spatial > self.preferred.spatial {
            self.meter.preference_raised(now);
        }
        self.preferred = Layers { spatial, temporal };
        self.target = self.preferred;
        self.preferred
    }

    /// The consumer (re)starts (first packet, resume): the next key picture starts it at the
    /// target layers.
    pub fn restart(&mut self) {
        self.current = None;
    }

    /// The consumer still needs a key picture to reach its target: not started, or (k-SVC)
    /// another spatial layer, or (full SVC) a higher one.
    pub fn needs_key_frame(&self) -> bool {
        match self.current {
            None => true,
            Some(c) if self.ksvc => c.spatial != self.target.spatial,
            Some(c) => c.spatial < self.target.spatial,
        }
    }

    /// Count a producer packet of spatial layer `sid` (`len` bytes) toward the layer bitrates.
    #[inline]
    pub fn count(&mut self, d: &vp9::Descriptor, len: usize) {
        self.meter.count(d.layer.map_or(0, |l| l.sid) as usize, len);
    }

    /// Every [`DECIDE_INTERVAL`] (the layer bitrates sampled every [`SAMPLE_INTERVAL`]):
    /// choose the target layers from the preference and the viewer's `estimate` (bps, when
    /// last updated). True when the new
    /// target needs a key picture the consumer did not need before.
    pub fn decide(&mut self, now: Instant, estimate: Option<crate::bwe::Estimate>) -> bool {
        if !self.meter.due(now) {
            return false;
        }
        let n = self.declared.spatial as usize + 1;
        let rates = self.layer_rates();
        let current = self.current.map_or(self.target.spatial, |c| c.spatial) as usize;
        let before = self.needs_key_frame();
        let spatial = self.meter.decide(now, self.preferred.spatial as usize, current, &rates[..n], estimate) as u8;
        let temporal = if spatial < self.preferred.spatial { self.declared.temporal } else { self.preferred.temporal };
        self.target = Layers { spatial, temporal };
        !before && self.needs_key_frame()
    }

    /// What receiving each spatial layer costs, bits per second, as last sampled (full SVC:
    /// a layer needs the ones below it; k-SVC: about its own rate).
    fn layer_rates(&self) -> [u64; MAX_SPATIAL_LAYERS] {
        let mut rates = [0u64; MAX_SPATIAL_LAYERS];
        let mut below = 0u64;
        for (i, rate) in rates.iter_mut().enumerate().take(self.declared.spatial as usize + 1) {
            let bps = self.meter.bps(i);
            *rate = bps + if self.ksvc { 0 } else { below };
            below += bps;
        }
        rates
    }

    /// Settled below the preference on a send-side `estimate` that does not cover the next
    /// spatial layer: that layer's bitrate and the current one's, to probe the path for
    /// before moving up (layers.rs, as for simulcast). None otherwise.
    pub fn probe_for(&self, estimate: Option<crate::bwe::Estimate>) -> Option<(u64, u64)> {
        let current = self.current?.spatial as usize;
        let rates = self.layer_rates();
        let n = self.declared.spatial as usize + 1;
        let next = self.meter.probe_for(self.preferred.spatial as usize, current, self.target.spatial as usize, &rates[..n], estimate)?;
        Some((next, rates[current]))
    }

    /// Whether to forward the packet with descriptor `d`, RTP timestamp `ts` and marker bit
    /// `marker` (`key_frame`: the first packet of a key picture), and with which marker.
    pub fn admit(&mut self, d: &vp9::Descriptor, ts: u32, marker: bool, key_frame: bool) -> Verdict {
        let p = PacketLayers::of(d);
        if p.sid > self.declared.spatial || p.tid > self.declared.temporal {
            return Verdict::Drop;
        }
        let new_picture = self.picture.is_none_or(|t| is_newer_ts(ts, t));
        let old_picture = !new_picture && self.picture != Some(ts);
        let mut cur = match self.current {
            Some(c) => c,
            None if key_frame => self.target,
            None => return Verdict::Drop,
        };
        if new_picture {
            self.picture = Some(ts);
            cur = self.at_picture_start(cur, key_frame);
        }
        if !old_picture {
            cur = self.within_picture(cur, &p);
        }
        if self.current.is_some_and(|c| c.spatial != cur.spatial) {
            self.spatial_switches += 1;
        }
        self.current = Some(cur);
        let spatial_drop = p.sid > cur.spatial || (self.ksvc && p.predicted && p.sid != cur.spatial);
        if spatial_drop || p.tid > cur.temporal {
            if p.begin {
                self.frames_dropped += 1;
                self.temporal_frames_dropped += u64::from(!spatial_drop);
            }
            return Verdict::Drop;
        }
        Verdict::Forward { marker: marker || (p.sid == cur.spatial && p.end) }
    }

    /// Layer changes allowed at the start of a picture.
    fn at_picture_start(&self, mut cur: Layers, key_frame: bool) -> Layers {
        if key_frame {
            return self.target;
        }
        if !self.ksvc && self.target.spatial < cur.spatial {
            cur.spatial = self.target.spatial;
        }
        if self.target.temporal < cur.temporal {
            cur.temporal = self.target.temporal;
        }
        cur
    }

    /// Layer changes allowed at a packet inside a picture: temporal switching points.
    fn within_picture(&self, mut cur: Layers, p: &PacketLayers) -> Layers {
        if self.target.temporal > cur.temporal && p.begin && p.switching_up && p.tid == cur.temporal + 1 {
            cur.temporal = p.tid;
        }
        cur
    }

    /// Whether a retransmitted packet with descriptor `d` gets the marker bit it was most
    /// likely sent with (the end of the layer now forwarded).
    pub fn marker_again(&self, d: &vp9::Descriptor) -> bool {
        let sid = d.layer.map_or(0, |l| l.sid);
        d.end && self.current.is_some_and(|c| c.spatial == sid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vp8::PictureId;
    use crate::vp9::{Descriptor, LayerIndices};
    use std::time::Duration;

    fn desc(sid: u8, tid: u8, key: bool, u: bool, d: bool) -> Descriptor {
        Descriptor {
            picture_id: Some(PictureId { value: 1, long: true }),
            inter_picture_predicted: !key,
            layer: Some(LayerIndices { tid, switching_up: u, sid, inter_layer_dependency: d }),
            begin: true,
            end: true,
            tl0_pic_idx: Some(0),
            len: 5,
            ..Descriptor::default()
        }
    }

    #[test]
    fn ksvc_drops_lower_layers_of_predicted_pictures_and_sets_the_marker() {
        let t0 = Instant::now();
        let mut f = SvcFilter::new(3, 3, true, t0);
        f.set_preference(t0, 1, None);
        // A predicted picture before any key picture: nothing.
        assert_eq!(f.admit(&desc(0, 0, false, false, false), 0, false, false), Verdict::Drop);
        // Key picture: S0, S1 forwarded (S1 ends the picture for this viewer), S2 dropped.
        assert_eq!(f.admit(&desc(0, 0, true, false, false), 100, false, true), Verdict::Forward { marker: false });
        assert_eq!(f.admit(&desc(1, 0, true, false, true), 100, false, false), Verdict::Forward { marker: true });
        assert_eq!(f.admit(&desc(2, 0, true, false, true), 100, true, false), Verdict::Drop);
        // Predicted picture: S1 only.
        assert_eq!(f.admit(&desc(0, 2, false, true, false), 200, false, false), Verdict::Drop);
        assert_eq!(f.admit(&desc(1, 2, false, true, false), 200, false, false), Verdict::Forward { marker: true });
        assert_eq!(f.current(), Some(Layers { spatial: 1, temporal: 2 }));
        // Down to S0 waits for a key picture in k-SVC.
        f.set_preference(t0, 0, None);
        assert!(f.needs_key_frame());
        assert_eq!(f.admit(&desc(0, 1, false, true, false), 300, false, false), Verdict::Drop);
        assert_eq!(f.admit(&desc(1, 1, false, true, false), 300, false, false), Verdict::Forward { marker: true });
        assert_eq!(f.admit(&desc(0, 0, true, false, false), 400, false, true), Verdict::Forward { marker: true });
        assert!(!f.needs_key_frame());
        assert_eq!(f.spatial_switches, 1);
    }

    #[test]
    fn full_svc_up_at_a_key_picture_down_at_the_next_picture() {
        let t0 = Instant::now();
        let mut f = SvcFilter::new(2, 1, false, t0);
        f.set_preference(t0, 0, None);
        assert_eq!(f.admit(&desc(0, 0, true, false, false), 0, false, true), Verdict::Forward { marker: true });
        f.set_preference(t0, 1, None);
        assert!(f.needs_key_frame());
        // Not inside a picture whose lower layer already ended it (even at P = 0, D = 1).
        assert_eq!(f.admit(&desc(0, 0, false, false, false), 100, false, false), Verdict::Forward { marker: true });
        assert_eq!(f.admit(&desc(1, 0, true, false, true), 100, true, false), Verdict::Drop);
        // At the key picture: both layers, the marker at S1's end only.
        assert_eq!(f.admit(&desc(0, 0, true, false, false), 200, false, true), Verdict::Forward { marker: false });
        assert_eq!(f.admit(&desc(1, 0, true, false, true), 200, true, false), Verdict::Forward { marker: true });
        // Predicted pictures: the lower layer still goes (inter-layer prediction).
        assert_eq!(f.admit(&desc(0, 0, false, false, false), 250, false, false), Verdict::Forward { marker: false });
        assert_eq!(f.admit(&desc(1, 0, false, false, true), 250, true, false), Verdict::Forward { marker: true });
        // Down at the next picture, without a key picture.
        f.set_preference(t0, 0, None);
        assert!(!f.needs_key_frame());
        assert_eq!(f.admit(&desc(0, 0, false, false, false), 300, false, false), Verdict::Forward { marker: true });
        assert_eq!(f.admit(&desc(1, 0, false, false, true), 300, true, false), Verdict::Drop);
    }

    #[test]
    fn undeclared_layers_are_dropped_and_late_packets_do_not_switch() {
        let t0 = Instant::now();
        let mut f = SvcFilter::new(1, 2, false, t0);
        assert_eq!(f.admit(&desc(0, 0, true, false, false), 100, true, true), Verdict::Forward { marker: true });
        assert_eq!(f.admit(&desc(1, 0, false, false, false), 200, true, false), Verdict::Drop);
        assert_eq!(f.admit(&desc(0, 2, false, true, false), 200, true, false), Verdict::Drop);
        f.set_preference(t0, 0, Some(0));
        assert_eq!(f.admit(&desc(0, 1, false, true, false), 300, true, false), Verdict::Drop);
        f.set_preference(t0, 0, None);
        // A late packet of an older picture does not move the layer up.
        assert_eq!(f.admit(&desc(0, 1, false, true, false), 250, true, false), Verdict::Drop);
        assert_eq!(f.current().unwrap().temporal, 0);
        assert_eq!(f.admit(&desc(0, 1, false, true, false), 400, true, false), Verdict::Forward { marker: true });
    }

    #[test]
    fn estimate_lowers_the_target_and_asks_for_a_key_picture() {
        let t0 = Instant::now();
        let mut f = SvcFilter::new(3, 3, true, t0);
        assert_eq!(f.admit(&desc(0, 0, true, false, false), 0, false, true), Verdict::Forward { marker: false });
        let after = t0 + crate::layers::SETTLE + Duration::from_secs(1);
        assert!(!f.decide(after, None));
        // 1 s of traffic: S0 100 kbit/s, S1 300, S2 900.
        for (sid, bytes) in [(0u8, 12_500usize), (1, 37_500), (2, 112_500)] {
            f.count(&desc(sid, 0, false, false, false), bytes);
        }
        let later = after + SAMPLE_INTERVAL;
        assert!(f.decide(later, Some(crate::bwe::Estimate { bitrate: 500_000, at: later, send_side: false })), "k-SVC: a new spatial target needs a key picture");
        assert_eq!(f.target(), Layers { spatial: 1, temporal: 2 });
        assert!(!f.decide(later + Duration::from_millis(10), Some(crate::bwe::Estimate { bitrate: 50_000, at: later, send_side: false })), "at most once per interval");
    }
}
