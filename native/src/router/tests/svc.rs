//! VP9 SVC: a consumer of a k-SVC (L3T3_KEY) or L1T3 producer gets exactly the packets of its
//! layers, in order, with contiguous sequence numbers and the marker bit on the last packet of
//! its highest spatial layer; its spatial layer goes up only at a key picture (which it asks
//! for), its temporal layer up at switching points and down at the next picture.

use super::*;
use crate::vp8::PictureId;
use crate::vp9::{self, Descriptor, LayerIndices};

const VP9_PT: u8 = 98;
const ROUTER_VP9_PT: u8 = 103;
/// Packets per layer frame.
const PACKETS: u8 = 2;

/// TID of picture `n`: 0, 2, 1, 2 repeating (L<S>T3).
fn tid(n: u32) -> u8 {
    [0u8, 2, 1, 2][(n % 4) as usize]
}

/// What the viewer got per packet: (seq, ts, marker, picture, sid, tid).
type Got = (u16, u32, bool, u32, u8, u8);

/// Host 1 with a VP9 producer 10 of `spatial` x 3 layers (k-SVC or not), viewer 2 with
/// consumer 20.
struct Svc {
    r: Router,
    now: Instant,
    host: SrtpContext,
    host_rx: SrtpContext,
    viewer: SrtpContext,
    seq: u16,
    spatial: u8,
    ksvc: bool,
    /// Time between pictures (zero: all at one instant).
    step: Duration,
}

impl Svc {
    fn new(spatial: u8, ksvc: bool) -> Self {
        let now = Instant::now();
        let mut r = router(now);
        let mut out = Output::new();
        connect(&mut r, now, 1, 1000, &mut out);
        connect(&mut r, now, 2, 2000, &mut out);
        let mut spec = producer_spec(None);
        spec.codecs[0].payload_type = VP9_PT;
        spec.codecs[0].mapped_payload_type = ROUTER_VP9_PT;
        spec.codecs[0].mime = "video/VP9".into();
        r.add_producer(now, 10, 1, spec).unwrap();
        let mut c = consumer_spec(0xAAAA, "c0", false);
        c.payload_types = vec![(ROUTER_VP9_PT, ROUTER_VP9_PT)];
        c.svc = Some((spatial, 3, ksvc));
        r.add_consumer(now, 20, 2, 10, c, &mut out).unwrap();
        let (host, host_rx) = peer(1);
        Svc { r, now, host, host_rx, viewer: peer(2).1, seq: 65_500, spatial, ksvc, step: Duration::ZERO }
    }

    /// Set the preference; true when the router asked the host for a key frame.
    fn prefer(&mut self, spatial: usize, temporal: Option<u8>) -> bool {
        let mut out = Output::new();
        self.r.set_preferred_layers(self.now, 20, spatial, temporal, &mut out).unwrap();
        self.asked_key_frame(&out)
    }

    fn asked_key_frame(&mut self, out: &Output) -> bool {
        out.transmits.iter().filter(|t| t.dest.port() == 1000).any(|t| {
            let b = rtcp_of(&mut self.host_rx, t);
            rtcp::compound(&b).any(|p| matches!(p, Ok(rtcp::Packet::Pli(_))))
        })
    }

    /// Picture `n` (a key picture or not): every spatial layer, PACKETS packets each; the
    /// sender's marker on the last packet of its top layer. Returns what the viewer got and
    /// whether the router asked for a key frame.
    fn picture(&mut self, n: u32, key: bool) -> (Vec<Got>, bool) {
        let mut got = Vec::new();
        let mut asked = false;
        self.now += self.step;
        for sid in 0..self.spatial {
            for k in 0..PACKETS {
                let d = Descriptor {
                    picture_id: Some(PictureId { value: (n & 0x7fff) as u16, long: true }),
                    inter_picture_predicted: !key,
                    layer: Some(LayerIndices {
                        tid: tid(n),
                        switching_up: tid(n) > 0,
                        sid,
                        // k-SVC: inter-layer prediction in key pictures only.
                        inter_layer_dependency: sid > 0 && (key || !self.ksvc),
                    }),
                    begin: k == 0,
                    end: k == PACKETS - 1,
                    tl0_pic_idx: Some((n / 4) as u8),
                    ..Descriptor::default()
                };
                let mut payload = Vec::new();
                vp9::write(&d, None, &mut payload);
                // Upper layers are bigger: 40, 160, 640 bytes a packet.
                payload.extend(std::iter::repeat_n(0x55, 40 << (2 * sid)));
                payload.extend_from_slice(&n.to_be_bytes());
                let mut pkt = rtp_packet(0x1234, self.seq, VP9_PT, Some("0"), &payload);
                self.seq = self.seq.wrapping_add(1);
                rtp::set_timestamp(&mut pkt, 3000u32.wrapping_mul(n).wrapping_add(4_294_000_000));
                rtp::set_marker(&mut pkt, sid == self.spatial - 1 && k == PACKETS - 1);
                self.host.protect_rtp(&mut pkt).unwrap();
                let mut out = Output::new();
                self.r.handle_datagram(self.now, addr(1000), &pkt, &mut out);
                asked |= self.asked_key_frame(&out);
                for t in out.transmits.iter().filter(|t| t.dest.port() == 2000) {
                    let mut b = t.buf.clone();
                    self.viewer.unprotect_rtp(&mut b).unwrap();
                    got.push(decode(&b));
                }
            }
        }
        (got, asked)
    }

    fn pictures(&mut self, range: std::ops::Range<u32>, keys: &[u32]) -> Vec<Got> {
        range.flat_map(|n| self.picture(n, keys.contains(&n)).0).collect()
    }

    fn stat(&self, key: &str) -> Option<u64> {
        match stats(&self.r, 20).into_iter().find(|(k, _)| *k == key).map(|(_, v)| v) {
            Some(StatValue::Int(v)) => Some(v),
            _ => None,
        }
    }
}

fn decode(b: &[u8]) -> Got {
    let h = rtp::parse(b).unwrap();
    let pl = h.payload(b);
    let d = vp9::parse(pl).unwrap();
    let n = pl.len();
    let pic = u32::from_be_bytes([pl[n - 4], pl[n - 3], pl[n - 2], pl[n - 1]]);
    let l = d.layer.unwrap();
    (h.sequence, h.timestamp, h.marker, pic, l.sid, l.tid)
}

/// Sequence numbers contiguous; layers of a picture in increasing order; exactly one marker
/// per picture, on its last packet.
fn assert_decodable(got: &[Got]) {
    for w in got.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        assert_eq!(b.0, a.0.wrapping_add(1), "sequence gap: {a:?} → {b:?}");
        if a.3 == b.3 {
            assert!(b.4 >= a.4, "layers out of order: {a:?} → {b:?}");
            assert!(!a.2, "marker before the end of the picture: {a:?} → {b:?}");
        } else {
            assert!(a.2, "picture {} ends without marker", a.3);
            assert_eq!(b.3, a.3 + 1 + (b.3 - a.3 - 1), "pictures in order");
            assert!(b.3 > a.3);
        }
    }
    assert!(got.last().is_none_or(|g| g.2), "last picture ends with the marker");
}

/// (picture, sid) pairs a k-SVC viewer on `(s, t)` gets of pictures `range` (key: `keys`).
fn ksvc_expected(range: std::ops::Range<u32>, keys: &[u32], s: u8, t: u8) -> Vec<(u32, u8)> {
    let mut v = Vec::new();
    for n in range {
        if keys.contains(&n) {
            v.extend((0..=s).map(|sid| (n, sid)));
        } else if tid(n) <= t {
            v.push((n, s));
        }
    }
    v
}

fn layer_frames(got: &[Got]) -> Vec<(u32, u8)> {
    let mut v: Vec<(u32, u8)> = got.iter().map(|g| (g.3, g.4)).collect();
    v.dedup();
    v
}

#[test]
fn l3t3_key_every_layer_pair_gets_exactly_its_packets() {
    for s in 0..3u8 {
        for t in 0..3u8 {
            let mut x = Svc::new(3, true);
            x.prefer(s as usize, Some(t));
            let got = x.pictures(0..16, &[0]);
            assert_eq!(layer_frames(&got), ksvc_expected(0..16, &[0], s, t), "S{s}T{t}");
            // Every packet of each layer frame it gets.
            assert_eq!(got.len(), ksvc_expected(0..16, &[0], s, t).len() * PACKETS as usize);
            assert_decodable(&got);
            assert_eq!(x.stat("currentLayer"), Some(s as u64));
            assert_eq!(x.stat("currentTemporalLayer"), Some(t as u64));
        }
    }
}

#[test]
fn l3t3_key_upswitch_waits_for_a_key_picture_that_it_asks_for() {
    let mut x = Svc::new(3, true);
    x.prefer(0, None);
    let mut got = x.pictures(0..8, &[0]);
    assert_eq!(layer_frames(&got), ksvc_expected(0..8, &[0], 0, 2));
    // Up to S2: a key frame request, and S0 until the key picture.
    assert!(x.prefer(2, None), "k-SVC upswitch asks for a key frame");
    got.extend(x.pictures(8..12, &[]));
    assert_eq!(x.stat("currentLayer"), Some(0));
    got.extend(x.pictures(12..20, &[12]));
    let mut want = ksvc_expected(0..12, &[0], 0, 2);
    want.extend(ksvc_expected(12..20, &[12], 2, 2));
    assert_eq!(layer_frames(&got), want);
    assert_decodable(&got);
    assert_eq!(x.stat("currentLayer"), Some(2));
    assert_eq!(x.stat("layerSwitches"), Some(1));
    // Down to S1: k-SVC waits for a key picture too (the S1 frames in between reference S1
    // frames the viewer never got).
    assert!(x.prefer(1, None));
    let down = x.pictures(20..24, &[]);
    assert!(down.iter().all(|g| g.4 == 2));
    let key = x.pictures(24..28, &[24]);
    assert_eq!(layer_frames(&key), ksvc_expected(24..28, &[24], 1, 2));
    let mut all = got;
    all.extend(down);
    all.extend(key);
    assert_decodable(&all);
}

#[test]
fn l3t3_key_temporal_switches_up_at_u_and_down_at_the_next_picture() {
    let mut x = Svc::new(3, true);
    x.prefer(1, Some(0));
    let mut got = x.pictures(0..8, &[0]);
    assert_eq!(layer_frames(&got), ksvc_expected(0..8, &[0], 1, 0));
    // Up: no key frame needed (same spatial layer); TL1 at picture 10 (U), TL2 after it.
    assert!(!x.prefer(1, Some(2)));
    let up = x.pictures(8..12, &[]);
    assert_eq!(layer_frames(&up), vec![(8, 1), (10, 1), (11, 1)]);
    got.extend(up);
    // Down to TL0 at once.
    x.prefer(1, Some(0));
    let down = x.pictures(12..16, &[]);
    assert_eq!(layer_frames(&down), vec![(12, 1)]);
    got.extend(down);
    assert_decodable(&got);
    assert_eq!(x.stat("temporalFramesDropped").map(|v| v > 0), Some(true));
}

#[test]
fn l1t3_temporal_layer_zero_is_a_quarter_of_the_pictures() {
    let mut x = Svc::new(1, false);
    x.prefer(0, Some(0));
    let got = x.pictures(0..40, &[0]);
    assert_eq!(layer_frames(&got).len(), 10);
    assert!(got.iter().all(|g| g.5 == 0 && g.4 == 0));
    assert_decodable(&got);
    x.prefer(0, None);
    let all = x.pictures(40..48, &[]);
    // Up one layer at a time at switching points: TL1 at 42, TL2 from 43.
    assert_eq!(layer_frames(&all).iter().map(|f| f.0).collect::<Vec<_>>(), vec![40, 42, 43, 44, 45, 46, 47]);
    assert_eq!(x.stat("currentTemporalLayer"), Some(2));
    // The sender's marker is kept (one spatial layer: its own end of picture).
    assert!(all.iter().filter(|g| g.2).count() == 7);
}

#[test]
fn full_svc_lower_layers_are_forwarded_and_down_needs_no_key_picture() {
    let mut x = Svc::new(3, false);
    x.prefer(1, None);
    let got = x.pictures(0..4, &[0]);
    // Full SVC: S0 and S1 of every picture, the marker moved to S1's end.
    assert_eq!(layer_frames(&got), (0..4).flat_map(|n| [(n, 0), (n, 1)]).collect::<Vec<_>>());
    assert_decodable(&got);
    assert!(!x.prefer(0, None), "down: no key frame needed");
    let down = x.pictures(4..6, &[]);
    assert_eq!(layer_frames(&down), vec![(4, 0), (5, 0)]);
    assert!(x.prefer(2, None), "up: asks for a key frame");
}

#[test]
fn malformed_vp9_payloads_are_dropped_and_counted_without_a_gap() {
    let mut x = Svc::new(1, false);
    let mut got = x.pictures(0..2, &[0]);
    // A payload with a descriptor cut short (I set, no PictureID): dropped.
    let mut pkt = rtp_packet(0x1234, x.seq, VP9_PT, Some("0"), &[0x80]);
    x.seq = x.seq.wrapping_add(1);
    rtp::set_timestamp(&mut pkt, 3000u32.wrapping_mul(2).wrapping_add(4_294_000_000));
    x.host.protect_rtp(&mut pkt).unwrap();
    let mut out = Output::new();
    x.r.handle_datagram(x.now, addr(1000), &pkt, &mut out);
    assert!(out.transmits.iter().all(|t| t.dest.port() != 2000));
    assert_eq!(x.stat("dropped"), Some(1));
    got.extend(x.pictures(2..4, &[]));
    assert_decodable(&got);
}

#[test]
fn a_low_estimate_moves_a_ksvc_viewer_down_at_a_key_picture_it_asks_for() {
    let mut x = Svc::new(3, true);
    x.step = Duration::from_millis(33);
    let got = x.pictures(0..200, &[0]);
    assert!(got.iter().skip(10).all(|g| g.4 == 2), "the top layer while the estimate is unknown");
    // The viewer's REMB: 100 kbit/s. Layer rates (k-SVC: each its own) are about 24, 79 and
    // 310 kbit/s: the target becomes S1, which needs a key picture.
    let mut remb = Vec::new();
    rtcp::build_remb(&mut remb, 0x5151, 100_000, &[0xAAAA]);
    peer(2).0.protect_rtcp(&mut remb).unwrap();
    let mut out = Output::new();
    x.r.handle_datagram(x.now, addr(2000), &remb, &mut out);
    let mut asked = false;
    let mut before_key = Vec::new();
    for n in 200..240 {
        let (g, a) = x.picture(n, false);
        asked |= a;
        before_key.extend(g);
    }
    assert!(asked, "the new spatial target asks for a key frame");
    assert!(before_key.iter().all(|g| g.4 == 2), "k-SVC: no switch before the key picture");
    assert_eq!(x.stat("targetLayer"), Some(1));
    let after = x.pictures(240..248, &[240]);
    assert_eq!(layer_frames(&after), ksvc_expected(240..248, &[240], 1, 2));
    let mut all = got;
    all.extend(before_key);
    all.extend(after);
    assert_decodable(&all);
}

#[test]
fn a_retransmission_keeps_the_end_of_picture_marker_the_filter_set() {
    let mut x = Svc::new(3, true);
    x.prefer(1, None);
    let got = x.pictures(0..4, &[0]);
    // The last packet of S1 in picture 2: the sender's marker was on S2, the filter set it.
    let end = got.iter().find(|g| g.3 == 2 && g.2).copied().unwrap();
    assert_eq!(end.4, 1);
    let mut nack = Vec::new();
    rtcp::build_nack(&mut nack, 0x5151, 0xAAAA, &[end.0]);
    peer(2).0.protect_rtcp(&mut nack).unwrap();
    let mut out = Output::new();
    x.r.handle_datagram(x.now, addr(2000), &nack, &mut out);
    // A fresh receive context: the resend repeats a sequence number the viewer's has seen.
    let mut rx = peer(2).1;
    let again: Vec<Got> = out
        .transmits
        .iter()
        .filter(|t| t.dest.port() == 2000)
        .map(|t| {
            let mut b = t.buf.clone();
            rx.unprotect_rtp(&mut b).unwrap();
            decode(&b)
        })
        .collect();
    assert_eq!(again, vec![end]);
}
