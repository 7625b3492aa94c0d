//! AV1 SVC consumers follow their viewer's bandwidth estimate: an AV1 L2T3, L3T3 (full SVC
//! or k-SVC) or L1T3 producer with the dependency descriptor, its transport-cc viewer
//! behind the simulated bottleneck of bwe.rs. Under a limit the consumer moves down (a
//! lower spatial layer, asking for a key frame, or with one spatial layer a lower temporal
//! layer) at a temporal unit boundary, and its reported layers change (what consumerLayersChanged reports); when
//! the limit goes, the path is probed first, then the consumer moves up at a key frame it
//! asked for. The viewer's preference still caps it.

use super::av1::{av1_packet, AV1_PT, DD_ID, ROUTER_AV1_PT, ROUTER_DD_ID};
use super::bwe::{Scenario, Source};
use super::*;
use crate::router::spec::URI_DEPENDENCY_DESCRIPTOR;

/// Per spatial layer, (packets, payload bytes) per frame at 30 fps: about 0.1, 0.3 and
/// 0.75 Mbit/s of their own, so with full SVC's inter-layer dependency S0, S1 and S2 cost
/// about 0.1, 0.4 and 1.15 Mbit/s (as the simulcast layers of bwe.rs).
const L3_PACKETS: [(u8, usize); 3] = [(1, 400), (2, 600), (4, 780)];
/// L2T3: S1 costs about 1.1 Mbit/s with S0.
const L2_PACKETS: [(u8, usize); 2] = [(1, 400), (5, 850)];
/// L1T3: T2 about 1.15 Mbit/s, T1 0.58, T0 0.29.
const L1_PACKETS: [(u8, usize); 1] = [(6, 800)];
/// Temporal layer of unit `n` (L<S>T3: T0 T2 T1 T2).
fn tid(n: u64) -> u8 {
    [0u8, 2, 1, 2][(n % 4) as usize]
}

/// AV1 with the dependency descriptor on the host's producer and the viewer's consumer
/// (RTX payload type `rtx_pt`, probes go there).
pub(super) fn specs(spec: &mut ProducerSpec, c: &mut ConsumerSpec, rtx_pt: u8) {
    spec.codecs[0] = CodecSpec {
        payload_type: AV1_PT,
        mapped_payload_type: ROUTER_AV1_PT,
        mime: "video/AV1".into(),
        rtx_payload_type: None,
        mapped_rtx_payload_type: None,
        clock_rate: Some(90000),
    };
    spec.header_extensions.push(ExtSpec { id: DD_ID, router_id: Some(ROUTER_DD_ID), uri: URI_DEPENDENCY_DESCRIPTOR.into() });
    c.payload_types = vec![(ROUTER_AV1_PT, ROUTER_AV1_PT)];
    c.rtx_payload_types = vec![(ROUTER_AV1_PT, rtx_pt)];
}

/// MSB-first bit writer for descriptors.
#[derive(Default)]
struct Bits {
    bytes: Vec<u8>,
    n: usize,
}

impl Bits {
    fn put(&mut self, bits: u32, value: u32) {
        for i in (0..bits).rev() {
            if self.n.is_multiple_of(8) {
                self.bytes.push(0);
            }
            let last = self.bytes.len() - 1;
            self.bytes[last] |= (((value >> i) & 1) as u8) << (7 - self.n % 8);
            self.n += 1;
        }
    }
}

/// Template kinds of each spatial layer, in template order: key, T0, T1, T2.
const KINDS: usize = 4;

/// The DTI of a frame of template kind `kind` on spatial layer `s` for the decode target
/// of spatial layer `ds`, temporal layer `dt` (0 not present, 1 discardable, 2 switch, 3
/// required). Full SVC: a target has every frame of its layers and those below; k-SVC: the
/// lower layers' key frames only.
fn dti(ksvc: bool, kind: usize, s: u8, ds: u8, dt: u8) -> u32 {
    let t = kind.saturating_sub(1) as u8;
    if ds < s || dt < t || (ksvc && kind > 0 && ds != s) {
        return 0;
    }
    match kind {
        0 => 2,
        1 => 3,
        _ if ds == s => 2,
        2 => 3,
        _ => 1,
    }
}

/// Frame differences of template kind `kind` on layer `s` of `layers`: the frame below in
/// the same unit (full SVC, or a key unit), and the previous frame of its layer at or below
/// its temporal layer.
fn fdiffs(ksvc: bool, kind: usize, s: u8, layers: u8) -> Vec<u32> {
    let mut f = Vec::new();
    if s > 0 && (kind == 0 || !ksvc) {
        f.push(1);
    }
    if kind > 0 {
        f.push(u32::from(layers) * [4, 2, 1][kind - 1]);
    }
    f
}

/// The descriptor of a frame: `template` of the L<layers>T3 structure, with the structure
/// itself when `structure`.
fn descriptor(start: bool, end: bool, template: usize, number: u16, structure: Option<(u8, bool)>) -> Vec<u8> {
    let mut b = Bits::default();
    b.put(1, u32::from(start));
    b.put(1, u32::from(end));
    b.put(6, template as u32);
    b.put(16, u32::from(number));
    let Some((layers, ksvc)) = structure else { return b.bytes };
    // Structure present; no active targets, custom DTIs, fdiffs or chains.
    b.put(5, 0b10000);
    b.put(6, 0);
    let targets = u32::from(layers) * 3;
    b.put(5, targets - 1);
    let count = usize::from(layers) * KINDS;
    for i in 0..count {
        // Next template: same layer (key -> T0), next temporal layer, next spatial, end.
        b.put(2, match i % KINDS {
            _ if i == count - 1 => 3,
            0 => 0,
            3 => 2,
            _ => 1,
        });
    }
    for i in 0..count {
        for dt in 0..targets {
            b.put(2, dti(ksvc, i % KINDS, (i / KINDS) as u8, (dt / 3) as u8, (dt % 3) as u8));
        }
    }
    for i in 0..count {
        for f in fdiffs(ksvc, i % KINDS, (i / KINDS) as u8, layers) {
            b.put(1, 1);
            b.put(4, f - 1);
        }
        b.put(1, 0);
    }
    // No chains: ns(targets + 1) = 0, (bit width - 1) zero bits.
    b.put(32 - (targets + 1).leading_zeros() - 1, 0);
    b.put(1, 0); // no resolutions
    b.bytes
}

impl Scenario {
    /// AV1 temporal unit `n` of L<spatial>T3: a frame per spatial layer, the marker on the
    /// top one's last packet; a key unit (with the structure) at the start and when the
    /// router asked for one.
    pub(super) fn dd_unit(&mut self, n: u64, spatial: u8, ksvc: bool) {
        let key = std::mem::take(&mut self.key_due) || n == 0;
        self.seen.key_units += usize::from(key);
        let layers: &[(u8, usize)] = match spatial {
            1 => &L1_PACKETS,
            2 => &L2_PACKETS,
            _ => &L3_PACKETS,
        };
        let t = if key { 0 } else { tid(n) };
        for (s, &(packets, size)) in layers.iter().enumerate() {
            let kind = if key { 0 } else { 1 + usize::from(t) };
            let number = self.frame_number;
            self.frame_number = number.wrapping_add(1);
            for k in 0..packets {
                let structure = (key && s == 0 && k == 0).then_some((spatial, ksvc));
                let d = descriptor(k == 0, k == packets - 1, s * KINDS + kind, number, structure);
                // AV1 aggregation header: N on a key frame's first packet.
                let mut payload = vec![if key && s == 0 && k == 0 { 0x18 } else { 0x10 }];
                payload.resize(size, s as u8);
                let mut pkt = av1_packet(0x1234, self.seqs[0], (n * 3000) as u32, &d, &payload);
                self.seqs[0] = self.seqs[0].wrapping_add(1);
                rtp::set_marker(&mut pkt, s == layers.len() - 1 && k == packets - 1);
                self.host_packet(pkt);
            }
        }
        if self.seen.key_requests > 0 {
            self.seen.key_requests = 0;
            self.key_due = true;
        }
    }

    /// The (spatial, temporal) layers the viewer gets, as its stats report them.
    fn layers(&self) -> (usize, Option<u8>) {
        let c = &self.r.consumers[&20];
        (c.current_spatial(), c.current_temporal())
    }

    /// The longest time between two consecutive temporal units reaching the viewer whole
    /// (every packet up to the one with the marker arrived), since `from_us`, in ms.
    fn longest_freeze_ms(&self, from_us: i64) -> i64 {
        let mut ends = Vec::new();
        let mut whole = true;
        for &(sent, _, marker, arrival) in &self.seen.media {
            whole &= arrival.is_some();
            if marker {
                if whole && sent >= from_us {
                    ends.push(arrival.unwrap_or_default());
                }
                whole = true;
            }
        }
        ends.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(i64::MAX) / 1000
    }
}

/// The viewer of an AV1 L<spatial>T3 producer behind a limit of `limit` bit/s: down to
/// spatial layer `low` within 2 s, layers reported; back up to the top within 5 s of the
/// limit's removal after a probe, at a key frame asked for.
fn down_and_back_up(spatial: u8, ksvc: bool, limit: u64, low: usize) {
    let top = usize::from(spatial) - 1;
    let mut s = Scenario::with(Source::Dd { spatial, ksvc });
    s.until(6_000, |_| false);
    assert_eq!(s.layers(), (top, Some(2)), "unlimited: the top layers");
    assert_eq!(stat(&s.r, 20, "targetLayer"), Some(StatValue::Int(top as u64)));
    assert_eq!(s.prober().probes, 0, "no probe at the top");
    s.path.capacity = Some(limit);
    let limited_at = s.ms() as i64 * 1000;
    let keys = s.seen.key_units;
    let down = s.until(2_000, |s| s.encoding() < top).expect("down within 2 s of the limit");
    // k-SVC moves down only at a key frame it asks for (the lower layer's frames since the
    // last key frame were not forwarded), full SVC at the next temporal unit; both ask for
    // one (a clean start after the losses of the congestion).
    if ksvc {
        assert!(s.seen.key_units > keys, "k-SVC: down at a key frame");
    }
    s.until(4_000, |_| false);
    assert!(s.seen.key_units > keys, "a key frame for the move down");
    assert_eq!(s.layers(), (low, Some(2)), "held on the layer that fits, every temporal layer (down after {down} ms)");
    assert_eq!(stat(&s.r, 20, "targetLayer"), Some(StatValue::Int(low as u64)));
    let p = s.prober();
    assert!(p.probes >= 1 && p.failed >= 1 && p.succeeded == 0, "probes over the narrow link fail: {p:?}");
    s.path.capacity = None;
    let (padding, succeeded, keys) = (s.seen.padding, s.prober().succeeded, s.seen.key_units);
    let up = s.until(5_000, |s| s.encoding() == top).expect("back up within 5 s of the limit's removal");
    assert!(s.seen.padding > padding, "padding probes before the move up");
    assert!(s.prober().succeeded > succeeded, "after {up} ms");
    assert!(s.seen.key_units > keys, "the move up asked for a key frame");
    let freeze = s.longest_freeze_ms(limited_at);
    println!("L{spatial}T3{}: down after {down} ms, up after {up} ms, longest freeze since the limit {freeze} ms", if ksvc { "_KEY" } else { "" });
    assert!(freeze <= 500, "no freeze over 500 ms: {freeze} ms");
    s.until(3_000, |_| false);
    assert_eq!(s.layers(), (top, Some(2)), "and stays up");
    s.assert_consecutive();
}

#[test]
fn an_l2t3_viewer_goes_down_to_s0_under_a_limit_and_back_up_after_a_probe() {
    down_and_back_up(2, false, 700_000, 0);
}

#[test]
fn an_l3t3_viewer_goes_down_one_spatial_layer_and_back_up_after_a_probe() {
    down_and_back_up(3, false, 700_000, 1);
}

#[test]
fn an_l3t3_key_viewer_moves_down_only_at_a_key_frame_it_asks_for() {
    down_and_back_up(3, true, 700_000, 1);
}

#[test]
fn an_l1t3_viewer_drops_temporal_layers_under_a_limit() {
    let mut s = Scenario::with(Source::Dd { spatial: 1, ksvc: false });
    s.until(6_000, |_| false);
    assert_eq!(s.layers(), (0, Some(2)));
    s.path.capacity = Some(700_000);
    let down = s.until(2_000, |s| s.layers().1 < Some(2)).expect("a lower temporal layer within 2 s");
    s.until(4_000, |_| false);
    assert_eq!(s.layers(), (0, Some(1)), "T1 (half the frames) fits, down after {down} ms");
    assert_eq!(s.seen.key_units, 1, "temporal moves need no key frame");
    s.path.capacity = None;
    let up = s.until(5_000, |s| s.layers().1 == Some(2)).expect("back to T2 within 5 s");
    assert!(s.prober().succeeded >= 1, "after a probe ({up} ms)");
    s.assert_consecutive();
}

#[test]
fn the_preference_still_caps_an_av1_viewer_with_room() {
    let mut s = Scenario::with(Source::Dd { spatial: 3, ksvc: false });
    s.until(3_000, |_| false);
    let mut out = Output::new();
    s.r.set_preferred_layers(s.now, 20, 1, None, &mut out).unwrap();
    s.until(3_000, |_| false);
    assert_eq!(s.layers(), (1, Some(2)));
    assert_eq!((s.prober().probes, s.seen.padding), (0, 0), "no probe above the preference");
    // A limit below S1: down to S0; when it goes, back up to the preference, not above.
    s.path.capacity = Some(250_000);
    s.until(4_000, |_| false);
    assert_eq!(s.layers().0, 0);
    s.path.capacity = None;
    s.until(5_000, |s| s.encoding() == 1).expect("back up to the preference");
    s.until(3_000, |_| false);
    assert_eq!(s.layers(), (1, Some(2)), "capped by the preference");
}

/// L2T3_KEY: the viewer of S1 never got S0's delta frames, so S0's temporal switch points
/// (which reference them) are no place to go down: it waits for the key frame it asks for.
#[test]
fn an_l2t3_key_viewer_goes_down_to_s0_at_a_key_frame_not_at_a_switch_point() {
    down_and_back_up(2, true, 700_000, 0);
}

/// The filter alone, on L2T3_KEY: a viewer of S1 that asks for S0 does not move at S0's
/// temporal switch points (their references are S0 frames it never got), asks for a key
/// frame, and moves at the key frame.
#[test]
fn a_ksvc_move_down_waits_for_a_frame_whose_references_the_viewer_has() {
    use crate::dd::DdStream;
    use crate::dd_filter::{DdFilter, ALL};
    let now = Instant::now();
    let mut stream = DdStream::new();
    let mut f = DdFilter::new(ALL, ALL, now);
    let mut number = 0u16;
    // Unit `n` (key or not): whether the filter forwards its S0 and S1 frames.
    let mut unit = |f: &mut DdFilter, n: u32, key: bool| -> [bool; 2] {
        let kind = if key { 0 } else { 1 + usize::from(tid(u64::from(n))) };
        [0usize, 1].map(|s| {
            let d = descriptor(true, true, s * KINDS + kind, number, (key && s == 0).then_some((2, true)));
            number += 1;
            let d = stream.parse(&d).unwrap();
            let st = stream.structure().unwrap().clone();
            f.count(&d, &st, 100);
            f.admit(&d, &st, n * 3000).is_some()
        })
    };
    assert_eq!(unit(&mut f, 0, true), [true, true]);
    for n in 1..4 {
        assert_eq!(unit(&mut f, n, false), [false, true], "k-SVC: S1 alone");
    }
    assert_eq!(f.current_layers(), Some((1, 2)));
    f.set_preference(now, 0, ALL);
    assert!(f.needs_key_frame(), "S0 from S1 in k-SVC needs a key frame");
    for n in 4..8 {
        // Units 5, 6, 7 start with S0 switch points for S0's targets (T2, T1, T2).
        assert_eq!(unit(&mut f, n, false), [false, true], "still S1 at unit {n}");
    }
    assert_eq!(unit(&mut f, 8, true), [true, false], "S0 from its key frame on");
    assert_eq!(f.current_layers(), Some((0, 2)));
    assert_eq!(unit(&mut f, 9, false), [true, false]);
}
