//! Decode target selection for one consumer, from the dependency descriptor (dd.rs): AV1
//! (one stream's spatial and temporal layers, or simulcast), and H264 (the temporal layers
//! of `scalabilityMode: "L1T3"`, per stream or in one; Chromium describes them with the
//! descriptor when it is negotiated, whatever the codec). An H264 stream without the
//! descriptor carries nothing that says which frame is in which layer (libwebrtc sends no
//! frame marking): its consumers forward every frame and report no temporal layer.
//!
//! The consumer's preferred spatial and temporal layers pick a decode target of the
//! stream's structure (the highest one within both); a frame goes out when its decode
//! target indication (DTI) for the target being forwarded is anything but "not present".
//! The forwarded target changes only at the first frame of a temporal unit (a new RTP
//! timestamp): down (lower or equal layers in both dimensions) at once, up only where that
//! frame's DTI for the wanted target is "switch" (a key frame's is, for every target; with
//! spatial layers a delta unit's base frame is not, as the upper layer depends on its own
//! dropped frames), so the viewer can decode from there on. Moving up with spatial layers
//! asks for a key frame. A frame's fate is decided once, at its first packet, and holds for all its
//! packets. When higher spatial layers are dropped, the last packet of the target's spatial
//! layer takes the RTP marker bit (the sender put it on the last layer of the temporal unit,
//! which the viewer no longer gets).

use crate::dd::{Descriptor, Dti, Structure};
use crate::rtp::{Codec, RtpHeader};

use super::consumer::{Consumer, Kind, Rewrite};
use super::egress::DdFrame;

/// Every layer (no preference).
pub(super) const ALL: u8 = u8::MAX;

/// The codecs whose layers the router selects by the dependency descriptor (when the
/// producer negotiated it). VP8 and VP9 are filtered by their payload descriptors instead.
#[inline]
pub(super) fn selects_by_dd(codec: Codec) -> bool {
    matches!(codec, Codec::Av1 | Codec::H264)
}

pub(super) struct DdFilter {
    /// The highest spatial and temporal layers the viewer wants.
    preferred: (u8, u8),
    /// The decode target being forwarded (None: none yet, waiting for a switch point).
    current: Option<usize>,
    /// Its (spatial, temporal) layers.
    current_layers: Option<(u8, u8)>,
    /// The last frame seen and whether it is forwarded.
    frame: Option<(u16, bool)>,
    /// The RTP timestamp of the last frame start (a new one starts a temporal unit).
    last_ts: Option<u32>,
    /// The highest (spatial, temporal) layers of the stream's structure.
    max_layers: (u8, u8),
    /// Frames not forwarded (not present in the target, or before a switch point).
    pub(super) frames_dropped: u64,
    /// Decode target changes.
    pub(super) switches: u64,
}

impl DdFilter {
    pub(super) fn new(spatial: u8, temporal: u8) -> Self {
        DdFilter {
            preferred: (spatial, temporal),
            current: None,
            current_layers: None,
            frame: None,
            last_ts: None,
            max_layers: (0, 0),
            frames_dropped: 0,
            switches: 0,
        }
    }

    pub(super) fn set_preference(&mut self, spatial: u8, temporal: u8) {
        self.preferred = (spatial, temporal);
    }

    /// Whether reaching the preferred layers needs a key frame: the stream has spatial
    /// layers and the wanted layers are above the forwarded ones.
    pub(super) fn needs_key_frame(&self) -> bool {
        let (ms, mt) = self.max_layers;
        let Some((cs, ct)) = self.current_layers else { return false };
        ms > 0 && (self.preferred.0.min(ms) > cs || self.preferred.1.min(mt) > ct)
    }

    /// The (spatial, temporal) layers being forwarded, once a decode target is.
    pub(super) fn current_layers(&self) -> Option<(u8, u8)> {
        self.current_layers
    }

    /// The output starts over (the consumer (re)starts at a key frame, or its source stream
    /// changed): the next frame picks the target afresh.
    pub(super) fn sync(&mut self) {
        self.current = None;
        self.frame = None;
        self.last_ts = None;
    }

    /// Whether the packet with descriptor `d` (resolved against `s`) and RTP timestamp `ts`
    /// goes out: None if not, else whether it must carry the marker bit (it ends the
    /// forwarded temporal unit).
    pub(super) fn admit(&mut self, d: &Descriptor, s: &Structure, ts: u32) -> Option<bool> {
        if !self.admit_frame(d, s, ts) {
            return None;
        }
        let top = self.current_layers.map(|l| l.0);
        Some(d.end_of_frame && top == Some(d.spatial) && d.spatial < s.max_spatial())
    }

    fn admit_frame(&mut self, d: &Descriptor, s: &Structure, ts: u32) -> bool {
        if let Some((n, keep)) = self.frame {
            if n == d.frame_number {
                return keep;
            }
        }
        if d.new_structure && d.start_of_frame {
            // Decode target indices belong to the structure: start over with this one.
            self.current = None;
        }
        let unit_start = d.start_of_frame && self.last_ts != Some(ts);
        if d.start_of_frame {
            self.last_ts = Some(ts);
        }
        let layers = s.templates.iter().fold((0, 0), |(a, b), t| (a.max(t.spatial), b.max(t.temporal)));
        self.max_layers = layers;
        let keep = self.decide(d, s, unit_start);
        if !keep {
            self.frames_dropped += 1;
        }
        self.frame = Some((d.frame_number, keep));
        keep
    }

    fn decide(&mut self, d: &Descriptor, s: &Structure, unit_start: bool) -> bool {
        let Some(wanted) = wanted_target(s, d.active_targets, self.preferred) else {
            // No decode target to choose from: nothing to filter by.
            return true;
        };
        let current = self.current.filter(|&c| c < usize::from(s.decode_targets));
        let layers = |t: Option<usize>| t.and_then(|t| s.target_layers.get(t).copied());
        let down = matches!((layers(current), layers(Some(wanted))), (Some(c), Some(w)) if w.0 <= c.0 && w.1 <= c.1);
        if current != Some(wanted) && unit_start && (down || d.dtis.get(wanted) == Dti::Switch) {
            if current.is_some() {
                self.switches += 1;
            }
            self.current = Some(wanted);
            self.current_layers = s.target_layers.get(wanted).copied();
        } else if current.is_none() {
            // Not started and not a switch point for the wanted target: wait for one.
            self.current = None;
            return false;
        }
        self.current.is_some_and(|c| d.dtis.get(c) != Dti::NotPresent)
    }
}

/// The decode target for `preferred` layers among the active ones: the highest (spatial,
/// then temporal) within both preferences; else the lowest active one. None: no active
/// target.
pub(super) fn wanted_target(s: &Structure, active: u32, preferred: (u8, u8)) -> Option<usize> {
    let targets = s.target_layers.iter().enumerate().filter(|&(i, _)| i < 32 && active & (1 << i) != 0);
    let within = targets.clone().filter(|&(_, &(sp, tp))| sp <= preferred.0 && tp <= preferred.1);
    // max_by_key keeps the last of equals: reverse so the first index wins.
    let best = within.rev().max_by_key(|&(_, &layers)| layers);
    best.or_else(|| targets.min_by_key(|&(_, &layers)| layers)).map(|(i, _)| i)
}

impl Consumer {
    /// Decode target selection (AV1, H264) of a packet with header `hdr` the consumer
    /// otherwise takes: None when the filter drops it (its sequence number skipped), else
    /// the marker bit to set, if the packet ends the forwarded part of its temporal unit.
    #[inline]
    pub(super) fn dd_admit(&mut self, dd: &DdFrame<'_>, hdr: &RtpHeader, switching: bool) -> Option<Rewrite> {
        let (spatial, temporal) = (self.preferred_svc_spatial, self.preferred_temporal);
        let f = self.dd.get_or_insert_with(|| Box::new(DdFilter::new(spatial, temporal)));
        if switching {
            f.sync();
        }
        let Some(mark) = f.admit(&dd.desc, dd.structure, hdr.timestamp) else {
            self.seq.drop(hdr.sequence);
            return None;
        };
        Some(if mark && !hdr.marker { Rewrite::Marker } else { Rewrite::None })
    }

    /// The stream to ask for a key frame so that an AV1 SVC consumer reaches its preferred
    /// layers (upper spatial layers depend on frames it did not forward).
    pub(super) fn svc_key_frame(&self) -> Option<usize> {
        self.dd.as_ref().filter(|f| !self.paused && f.needs_key_frame()).map(|_| self.encoding)
    }

    /// The viewer's spatial preference within one stream (a simulcast consumer's picks the
    /// stream; within it every spatial layer goes).
    pub(super) fn set_svc_preference(&mut self, spatial: usize) {
        if !matches!(self.kind, Kind::Simulcast(_)) {
            self.preferred_svc_spatial = spatial.min(usize::from(ALL)) as u8;
        }
        if let Some(f) = self.dd.as_mut() {
            f.set_preference(self.preferred_svc_spatial, self.preferred_temporal);
        }
    }
}
