//! Decode target selection for one consumer, from the dependency descriptor (dd.rs; the
//! consumer's hook in the forwarding path is router/svc_dd.rs): AV1
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
//! timestamp): down at once where the viewer has every frame the lower target needs (nested
//! layers), up only where that frame's DTI for the wanted target is "switch" (a key frame's is, for every target; with
//! spatial layers a delta unit's base frame is not, as the upper layer depends on its own
//! dropped frames), so the viewer can decode from there on. Moving up with spatial layers
//! asks for a key frame. A frame's fate is decided once, at its first packet, and holds for all its
//! packets. When higher spatial layers are dropped, the last packet of the target's spatial
//! layer takes the RTP marker bit (the sender put it on the last layer of the temporal unit,
//! which the viewer no longer gets).
//!
//! A single-stream consumer's layers also follow its viewer's bandwidth estimate, as a VP9
//! SVC consumer's do (svc.rs): the filter measures what each rung of the stream's layer
//! ladder costs (the spatial layers, each with every temporal layer; or, in a stream with
//! one spatial layer, its temporal layers), counting a packet toward a rung when its frame
//! is present in the rung's decode target (so a rung's rate includes the layers it depends
//! on), and [`crate::layers::LayerState`] picks the highest rung within the preference that
//! the estimate covers, with the hysteresis, settling and probing rules of simulcast. A move
//! down waits for the next temporal unit, and, when the lower target needs frames the viewer
//! did not get (k-SVC), for a switch point of it whose references the viewer has (a key
//! frame); a spatial move down on the estimate asks for a key frame either way. Sans-IO
//! (time passed in).

use std::time::Instant;

use crate::bwe::Estimate;
use crate::dd::{Descriptor, Dti, Structure};
use crate::layer_rates::{LayerMeter, MAX_LAYERS};

/// Every layer (no preference).
pub const ALL: u8 = u8::MAX;
/// Frames remembered as forwarded or not (frame differences are at most 16 in practice:
/// dd.rs MAX_FDIFFS entries of up to 4 bits + 1 in templates).
const HISTORY: usize = 64;

/// The rungs of a stream's layer ladder (cheapest first): the decode target of each.
#[derive(Clone, Copy, Default)]
struct Ladder {
    targets: [u8; MAX_LAYERS],
    len: u8,
    /// The rungs are temporal layers (the stream has one spatial layer).
    temporal: bool,
    /// Every rung's frames are frames of the rung above too (full SVC, temporal layers):
    /// moving down needs no switch point. Not so in k-SVC.
    nested: bool,
}

impl Ladder {
    fn of(s: &Structure, max: (u8, u8)) -> Self {
        let mut l = Ladder { temporal: max.0 == 0, nested: true, ..Ladder::default() };
        let rungs = if l.temporal { max.1 } else { max.0 };
        for rung in 0..=rungs.min(MAX_LAYERS as u8 - 1) {
            let want = if l.temporal { (0, rung) } else { (rung, ALL) };
            let Some(t) = wanted_target(s, u32::MAX, want) else { break };
            if l.len > 0 && !contains(s, t, usize::from(l.targets[usize::from(l.len) - 1])) {
                l.nested = false;
            }
            l.targets[usize::from(l.len)] = t as u8;
            l.len += 1;
        }
        l
    }
}

/// Whether every template present in decode target `small` is present in `big` too (a
/// viewer of `big` has every frame `small` needs).
fn contains(s: &Structure, big: usize, small: usize) -> bool {
    s.templates.iter().all(|t| t.dtis.get(small) == Dti::NotPresent || t.dtis.get(big) != Dti::NotPresent)
}

pub struct DdFilter {
    /// The highest spatial and temporal layers the viewer wants.
    preferred: (u8, u8),
    /// The rung of the ladder its bandwidth estimate allows (None: no limit yet).
    cap: Option<u8>,
    ladder: Ladder,
    /// Per-rung bitrates and the decision on them (layer_rates.rs, layers.rs).
    meter: LayerMeter,
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
    /// The frame numbers of the last [`HISTORY`] frames, where forwarded (by number modulo
    /// HISTORY): whether the viewer has a frame's references.
    forwarded: [Option<u16>; HISTORY],
    /// Frames not forwarded (not present in the target, or before a switch point).
    pub frames_dropped: u64,
    /// Decode target changes.
    pub switches: u64,
}

impl DdFilter {
    pub fn new(spatial: u8, temporal: u8, now: Instant) -> Self {
        DdFilter {
            preferred: (spatial, temporal),
            cap: None,
            ladder: Ladder::default(),
            meter: LayerMeter::new(now),
            current: None,
            current_layers: None,
            frame: None,
            last_ts: None,
            max_layers: (0, 0),
            forwarded: [None; HISTORY],
            frames_dropped: 0,
            switches: 0,
        }
    }

    /// The viewer's preference; the estimate lowers it again at the next decision.
    pub fn set_preference(&mut self, now: Instant, spatial: u8, temporal: u8) {
        let rung = |p: (u8, u8)| if self.ladder.temporal { p.1 } else { p.0 };
        if rung((spatial, temporal)) > rung(self.preferred) {
            self.meter.preference_raised(now);
        }
        self.preferred = (spatial, temporal);
        self.cap = None;
    }

    /// The layers to select: the preference, lowered to the rung the estimate allows (a
    /// lower spatial layer with every temporal layer, or a lower temporal layer).
    fn wanted_layers(&self) -> (u8, u8) {
        let (ps, pt) = self.preferred;
        match self.cap {
            Some(c) if self.ladder.temporal => (ps, pt.min(c)),
            Some(c) if c < ps.min(self.max_layers.0) => (c, ALL),
            _ => (ps, pt),
        }
    }

    /// Whether reaching the wanted layers needs a key frame: the stream has spatial layers
    /// and the wanted layers are above the forwarded ones, or below them but not nested.
    pub fn needs_key_frame(&self) -> bool {
        let (ms, mt) = self.max_layers;
        let Some((cs, ct)) = self.current_layers else { return false };
        let (ws, wt) = self.wanted_layers();
        ms > 0 && (ws.min(ms) > cs || wt.min(mt) > ct || (!self.ladder.nested && ws.min(ms) < cs))
    }

    /// The (spatial, temporal) layers being forwarded, once a decode target is.
    pub fn current_layers(&self) -> Option<(u8, u8)> {
        self.current_layers
    }

    /// The spatial layer the filter moves to (the preference as the estimate lowers it).
    pub fn target_spatial(&self) -> u8 {
        self.wanted_layers().0.min(self.max_layers.0)
    }

    /// The output starts over (the consumer (re)starts at a key frame, or its source stream
    /// changed): the next frame picks the target afresh.
    pub fn sync(&mut self) {
        self.current = None;
        self.frame = None;
        self.last_ts = None;
        self.forwarded = [None; HISTORY];
    }

    /// Whether the viewer got every frame frame `d` references.
    fn has_references(&self, d: &Descriptor) -> bool {
        d.fdiffs.as_slice().iter().all(|&f| {
            let n = d.frame_number.wrapping_sub(f);
            usize::from(f) < HISTORY && self.forwarded[usize::from(n) % HISTORY] == Some(n)
        })
    }

    /// A packet of `len` bytes with descriptor `d` (resolved against `s`): at a frame start
    /// the stream's layers and ladder are read from `s`; the packet counts toward every rung
    /// whose decode target its frame is present in.
    #[inline]
    pub fn count(&mut self, d: &Descriptor, s: &Structure, len: usize) {
        if d.start_of_frame || self.ladder.len == 0 {
            let layers = s.templates.iter().fold((0, 0), |(a, b), t| (a.max(t.spatial), b.max(t.temporal)));
            self.max_layers = layers;
            self.ladder = Ladder::of(s, layers);
        }
        for (i, &t) in self.ladder.targets[..usize::from(self.ladder.len)].iter().enumerate() {
            if d.active_targets & (1 << t) != 0 && d.dtis.get(usize::from(t)) != Dti::NotPresent {
                self.meter.count(i, len);
            }
        }
    }

    /// The rung being forwarded (None before the first target).
    fn current_rung(&self) -> Option<usize> {
        let (s, t) = self.current_layers?;
        let rung = if self.ladder.temporal { t } else { s };
        Some(usize::from(rung).min(usize::from(self.ladder.len).saturating_sub(1)))
    }

    fn preferred_rung(&self) -> usize {
        let rung = if self.ladder.temporal { self.preferred.1 } else { self.preferred.0 };
        usize::from(rung).min(usize::from(self.ladder.len).saturating_sub(1))
    }

    fn rates(&self) -> [u64; MAX_LAYERS] {
        std::array::from_fn(|i| self.meter.bps(i))
    }

    /// Every [`crate::layer_rates::DECIDE_INTERVAL`]: the rung the viewer's `estimate`
    /// allows (None: no estimate applies). True when the new wanted layers need a key frame
    /// the filter did not need before.
    pub fn follow_estimate(&mut self, now: Instant, estimate: Option<Estimate>) -> bool {
        let n = usize::from(self.ladder.len);
        if n < 2 || !self.meter.due(now) {
            return false;
        }
        let preferred = self.preferred_rung();
        let current = self.current_rung().unwrap_or(usize::from(self.cap.map_or(preferred as u8, |c| c)));
        let before = self.needs_key_frame();
        let rung = self.meter.decide(now, preferred, current, &self.rates()[..n], estimate);
        let moved_down = rung < usize::from(self.cap.map_or(preferred as u8, |c| c)) && self.current_layers.is_some();
        self.cap = Some(rung as u8);
        // A spatial move down on the estimate follows congestion, whose losses likely hit
        // the lower layer too: a key frame gives the viewer a clean start on it (as a
        // simulcast switch does) rather than a wait for retransmissions over the full path.
        (!before && self.needs_key_frame()) || (moved_down && !self.ladder.temporal)
    }

    /// Settled below the preference on a send-side `estimate` that does not cover the next
    /// rung: that rung's bitrate and the current one's, to probe the path for before moving
    /// up (layers.rs). None otherwise.
    pub fn probe_for(&self, estimate: Option<Estimate>) -> Option<(u64, u64)> {
        let n = usize::from(self.ladder.len);
        let current = self.current_rung().filter(|_| n >= 2)?;
        let preferred = self.preferred_rung();
        let target = self.cap.map_or(preferred, usize::from);
        let rates = self.rates();
        let next = self.meter.probe_for(preferred, current, target, &rates[..n], estimate)?;
        Some((next, rates[current]))
    }

    /// Whether the packet with descriptor `d` (resolved against `s`) and RTP timestamp `ts`
    /// goes out: None if not, else whether it must carry the marker bit (it ends the
    /// forwarded temporal unit).
    pub fn admit(&mut self, d: &Descriptor, s: &Structure, ts: u32) -> Option<bool> {
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
        if d.new_structure {
            // Decode target indices belong to the structure: start over with this one
            // (whichever packet of the frame carried it; found by fuzz/dd_filter.rs).
            self.current = None;
        }
        let unit_start = d.start_of_frame && self.last_ts != Some(ts);
        if d.start_of_frame {
            self.last_ts = Some(ts);
        }
        let keep = self.decide(d, s, unit_start);
        if !keep {
            self.frames_dropped += 1;
        }
        self.forwarded[usize::from(d.frame_number) % HISTORY] = keep.then_some(d.frame_number);
        self.frame = Some((d.frame_number, keep));
        keep
    }

    fn decide(&mut self, d: &Descriptor, s: &Structure, unit_start: bool) -> bool {
        let Some(wanted) = wanted_target(s, d.active_targets, self.wanted_layers()) else {
            // No decode target to choose from: nothing to filter by.
            return true;
        };
        let current = self.current.filter(|&c| c < usize::from(s.decode_targets));
        // Down where the viewer has every frame the wanted target needs (nested layers) at
        // once; else at a switch point of the wanted target, and going down (k-SVC) only at
        // one whose references the viewer has (a lower layer's key frame), not at a switch
        // point whose chain it never got.
        let layers = |t: usize| s.target_layers.get(t).copied().unwrap_or_default();
        let down = current.is_some_and(|c| contains(s, c, wanted));
        let lower = current.is_some_and(|c| layers(wanted).0 <= layers(c).0 && layers(wanted).1 <= layers(c).1);
        let switch = d.dtis.get(wanted) == Dti::Switch && (!lower || self.has_references(d));
        if current != Some(wanted) && unit_start && (down || switch) {
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
        // The layers of the target in this frame's structure (a structure that came on a
        // packet of an already decided frame keeps the index; found by fuzz/dd_filter.rs).
        self.current_layers = self.current.and_then(|c| s.target_layers.get(c).copied()).or(self.current_layers);
        self.current.is_some_and(|c| d.dtis.get(c) != Dti::NotPresent)
    }
}

/// The decode target for `preferred` layers among the active ones: the highest (spatial,
/// then temporal) within both preferences; else the lowest active one. None: no active
/// target.
pub fn wanted_target(s: &Structure, active: u32, preferred: (u8, u8)) -> Option<usize> {
    let targets = s.target_layers.iter().enumerate().filter(|&(i, _)| i < 32 && active & (1 << i) != 0);
    let within = targets.clone().filter(|&(_, &(sp, tp))| sp <= preferred.0 && tp <= preferred.1);
    // max_by_key keeps the last of equals: reverse so the first index wins.
    let best = within.rev().max_by_key(|&(_, &layers)| layers);
    best.or_else(|| targets.min_by_key(|&(_, &layers)| layers)).map(|(i, _)| i)
}

