//! AV1 with the dependency descriptor: per-consumer decode target selection in an L1T3
//! stream (T0 a quarter of the frames, T1 half, T2 all), switching up only at a frame that
//! is a switch point for the wanted target, contiguous output sequence numbers, descriptor
//! errors counted and not filtered by; AV1 simulcast switching at key frames (N bit); an
//! L2T1 stream: spatial layer 0 alone with the marker bit moved onto it, up to layer 1 only
//! at a key frame (asked for), down at the next temporal unit.

use super::*;
use crate::dd::tests::{hex, L1T3_KEY, L2T1_KEY};
use crate::router::spec::URI_DEPENDENCY_DESCRIPTOR;

pub(super) const AV1_PT: u8 = 45;
pub(super) const ROUTER_AV1_PT: u8 = 110;
/// The host's id of the dependency descriptor extension, and the router's (viewers get it).
pub(super) const DD_ID: u8 = 5;
pub(super) const ROUTER_DD_ID: u8 = 8;

/// (temporal layer, template id) of frame `f` of the L1T3 pattern T0 T2 T1 T2; frame 0 is
/// the key frame (template 0, the structure attached).
fn layer(f: u32) -> (u8, u8) {
    match f % 4 {
        0 if f == 0 => (0, 0),
        0 => (0, 1),
        1 => (2, 3),
        2 => (1, 2),
        _ => (2, 4),
    }
}

/// The descriptor of packet `part` (0 or 1) of frame `f` (`key`: with the structure).
fn dd(f: u32, part: u8, key: bool, number: u16) -> Vec<u8> {
    let (start, end) = (part == 0, part == 1);
    let flags = (u8::from(start) << 7) | (u8::from(end) << 6);
    if key && start {
        let mut d = hex(L1T3_KEY);
        d[0] = flags;
        d[1..3].copy_from_slice(&number.to_be_bytes());
        return d;
    }
    // Every packet of a key frame names template 0.
    let mut d = vec![flags | if key { 0 } else { layer(f).1 }, 0, 0];
    d[1..3].copy_from_slice(&number.to_be_bytes());
    d
}

/// An RTP packet with the MID (id 3) and a dependency descriptor (id 5).
pub(super) fn av1_packet(ssrc: u32, seq: u16, ts: u32, dd: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x90, AV1_PT, 0, 0, 0, 0, 0, 0];
    v[2..4].copy_from_slice(&seq.to_be_bytes());
    v[4..8].copy_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&ssrc.to_be_bytes());
    // One-byte form while the descriptor fits (16 bytes), else the two-byte form.
    let one_byte = dd.len() <= 16;
    let mut ext = if one_byte { vec![(3 << 4), b'0', (DD_ID << 4) | (dd.len() as u8 - 1)] } else { vec![3, 1, b'0', DD_ID, dd.len() as u8] };
    ext.extend_from_slice(dd);
    while ext.len() % 4 != 0 {
        ext.push(0);
    }
    v.extend_from_slice(if one_byte { &[0xBE, 0xDE] } else { &[0x10, 0x00] });
    v.extend_from_slice(&((ext.len() / 4) as u16).to_be_bytes());
    v.extend_from_slice(&ext);
    v.extend_from_slice(payload);
    v
}

/// What a viewer got: (output seq, encoding, frame, marker).
pub(super) type Got = (u16, u8, u32, bool);

/// Host 1 with AV1 producer 10 (`encodings` streams), viewers 2 and 3 with consumers 20, 30.
pub(super) struct Av1 {
    pub(super) r: Router,
    pub(super) now: Instant,
    host: SrtpContext,
    viewers: [SrtpContext; 2],
    seqs: [u16; 2],
    /// Corrupt the next descriptors (a truncated extension).
    corrupt: bool,
    /// Frames per temporal unit (one RTP timestamp): 2 with two spatial layers.
    unit: u32,
    /// The codec whose payloads the host sends (AV1, or H264 with the descriptor: h264.rs).
    pub(super) codec: rtp::Codec,
    /// The producer negotiated the dependency descriptor.
    dd: bool,
}

impl Av1 {
    fn new(encodings: u32) -> Self {
        Self::with_codec(encodings, rtp::Codec::Av1, true)
    }

    /// Producer 10 sends `codec` (AV1 or H264) under the same payload types; `dd`: the
    /// producer negotiated the dependency descriptor (else the packets carry it under an id
    /// the router does not know).
    pub(super) fn with_codec(encodings: u32, codec: rtp::Codec, dd: bool) -> Self {
        let now = Instant::now();
        let mut r = router(now);
        let mut out = Output::new();
        connect(&mut r, now, 1, 1000, &mut out);
        connect(&mut r, now, 2, 2000, &mut out);
        connect(&mut r, now, 3, 3000, &mut out);
        let mut spec = producer_spec(None);
        spec.codecs[0] = CodecSpec {
            payload_type: AV1_PT,
            mapped_payload_type: ROUTER_AV1_PT,
            mime: if codec == rtp::Codec::H264 { "video/H264" } else { "video/AV1" }.into(),
            rtx_payload_type: None,
            mapped_rtx_payload_type: None,
            clock_rate: Some(90000),
        };
        if dd {
            spec.header_extensions.push(ExtSpec { id: DD_ID, router_id: Some(ROUTER_DD_ID), uri: URI_DEPENDENCY_DESCRIPTOR.into() });
        }
        spec.encodings = (0..encodings)
            .map(|i| EncodingSpec { ssrc: Some(0x100 + i), rtx_ssrc: None, rid: Some(format!("r{i}")), mapped_ssrc: 7000 + i })
            .collect();
        r.add_producer(now, 10, 1, spec).unwrap();
        for (h, t, ssrc) in [(20, 2, 0xAAAA), (30, 3, 0xBBBB)] {
            let mut c = consumer_spec(ssrc, "c0", false);
            c.payload_types = vec![(ROUTER_AV1_PT, ROUTER_AV1_PT)];
            r.add_consumer(now, h, t, 10, c, &mut out).unwrap();
        }
        Av1 { r, now, host: peer(1).0, viewers: [peer(2).1, peer(3).1], seqs: [100, 40_000], corrupt: false, unit: 1, codec, dd }
    }

    pub(super) fn prefer(&mut self, consumer: Handle, spatial: usize, temporal: Option<u8>) -> (usize, u8) {
        let mut out = Output::new();
        self.r.set_preferred_layers(self.now, consumer, spatial, temporal, &mut out).unwrap()
    }

    /// Frame `f` of stream `enc` in two packets; what each viewer got.
    pub(super) fn frame(&mut self, enc: usize, f: u32, key: bool) -> [Vec<Got>; 2] {
        let mut got = [Vec::new(), Vec::new()];
        for part in 0..2u8 {
            let mut d = dd(f, part, key, (f as u16).wrapping_add(enc as u16 * 1000));
            if self.corrupt {
                // Extended fields announced, the structure cut short.
                d = vec![d[0], d[1], d[2], 0x80, 0x00];
            }
            let [a, b] = self.packet(enc, f, &d, key && part == 0, part == 1);
            got[0].extend(a);
            got[1].extend(b);
        }
        got
    }

    /// One packet of frame `f` of stream `enc` with descriptor `d` (`key`: the N bit).
    fn packet(&mut self, enc: usize, f: u32, d: &[u8], key: bool, marker: bool) -> [Vec<Got>; 2] {
        let mut got = [Vec::new(), Vec::new()];
        // AV1 aggregation header: N (new coded video sequence) on a key frame's first packet;
        // H264: an IDR slice NAL unit there, else a non-IDR slice.
        let mut payload = match self.codec {
            rtp::Codec::H264 => vec![if key { 0x65 } else { 0x41 }, 0x9a, 0x00],
            _ => vec![if key { 0x18 } else { 0x10 }, 0x32, 0x00],
        };
        payload.extend_from_slice(&[0xab; 40]);
        payload.push(enc as u8);
        payload.extend_from_slice(&f.to_be_bytes());
        let ts = 3000 * (f / self.unit) + 90_000 * enc as u32;
        let mut pkt = av1_packet(0x100 + enc as u32, self.seqs[enc], ts, d, &payload);
        rtp::set_marker(&mut pkt, marker);
        self.seqs[enc] = self.seqs[enc].wrapping_add(1);
        self.host.protect_rtp(&mut pkt).unwrap();
        let mut out = Output::new();
        self.r.handle_datagram(self.now, addr(1000), &pkt, &mut out);
        for t in &out.transmits {
            let i = match t.dest.port() {
                2000 => 0,
                3000 => 1,
                _ => continue, // key frame requests toward the host
            };
            let mut b = t.buf.clone();
            self.viewers[i].unprotect_rtp(&mut b).unwrap();
            let h = rtp::parse(&b).unwrap();
            assert_eq!(h.payload_type, ROUTER_AV1_PT);
            // The descriptor goes on as the sender wrote it, under the router's id.
            let dd = rtp::find_extension(&b, &h, ROUTER_DD_ID);
            assert_eq!(dd, self.dd.then_some(d));
            let pl = h.payload(&b);
            let n = pl.len();
            got[i].push((h.sequence, pl[n - 5], u32::from_be_bytes([pl[n - 4], pl[n - 3], pl[n - 2], pl[n - 1]]), h.marker));
        }
        got
    }

    /// Frames `range` of stream `enc` (frame 0 and `keys` are key frames).
    pub(super) fn frames(&mut self, enc: usize, range: std::ops::Range<u32>, keys: &[u32]) -> [Vec<Got>; 2] {
        let mut got = [Vec::new(), Vec::new()];
        for f in range {
            let [a, b] = self.frame(enc, f, f == 0 || keys.contains(&f));
            got[0].extend(a);
            got[1].extend(b);
        }
        got
    }

    pub(super) fn stat(&self, h: Handle, key: &str) -> Option<u64> {
        match stats(&self.r, h).into_iter().find(|(k, _)| *k == key).map(|(_, v)| v) {
            Some(StatValue::Int(v)) => Some(v),
            _ => None,
        }
    }
}

/// The distinct frames in what a viewer got, each with both its packets.
pub(super) fn frames_of(got: &[Got]) -> Vec<u32> {
    let mut f: Vec<u32> = got.iter().map(|g| g.2).collect();
    f.dedup();
    for x in &f {
        assert_eq!(got.iter().filter(|g| g.2 == *x).count(), 2, "frame {x} incomplete");
    }
    f
}

pub(super) fn contiguous(got: &[Got]) -> bool {
    got.windows(2).all(|w| w[1].0 == w[0].0.wrapping_add(1))
}

#[test]
fn l1t3_target_t0_gets_a_quarter_t1_half_t2_all() {
    let mut a = Av1::new(1);
    assert_eq!(a.prefer(20, 0, Some(0)), (0, 0));
    let [t0, all] = a.frames(0, 0..40, &[]);
    assert_eq!(frames_of(&all), (0..40).collect::<Vec<_>>());
    assert_eq!(frames_of(&t0), (0..40).step_by(4).collect::<Vec<_>>());
    assert!(contiguous(&t0) && contiguous(&all));
    assert_eq!(a.stat(20, "currentTemporalLayer"), Some(0));
    assert_eq!(a.stat(20, "temporalFramesDropped"), Some(30));
    assert_eq!(a.stat(30, "currentTemporalLayer"), Some(2));
    assert_eq!(a.stat(30, "temporalFramesDropped"), Some(0));
    assert_eq!(a.stat(20, "currentLayer"), Some(0));
    // Temporal layer 1: T0 and T1 frames, half of them.
    a.prefer(30, 0, Some(1));
    let [t0, t1] = a.frames(0, 40..80, &[]);
    assert_eq!(frames_of(&t0), (40..80).step_by(4).collect::<Vec<_>>());
    assert_eq!(frames_of(&t1), (40..80).filter(|f| f % 2 == 0).collect::<Vec<_>>());
    assert!(contiguous(&t1));
    assert_eq!(a.stat(30, "currentTemporalLayer"), Some(1));
}

#[test]
fn switching_up_waits_for_a_switch_point_down_at_the_next_base_frame() {
    let mut a = Av1::new(1);
    a.prefer(20, 0, Some(0));
    let [t0, _] = a.frames(0, 0..5, &[]);
    assert_eq!(frames_of(&t0), vec![0, 4]);
    // Up to T2 after frame 4: frame 5 (T2, discardable, no switch point for T2) stays out;
    // frame 6 (T1, a switch point for T2) is the first of the new target.
    a.prefer(20, 0, None);
    let [up, _] = a.frames(0, 5..12, &[]);
    assert_eq!(frames_of(&up), (6..12).collect::<Vec<_>>());
    assert_eq!(a.stat(20, "layerSwitches"), Some(1));
    assert_eq!(a.stat(20, "currentTemporalLayer"), Some(2));
    // Down to T0 after frame 11 (T2): frame 12 (T0) is the switch point, 13..15 stay out.
    a.prefer(20, 0, Some(0));
    let [down, _] = a.frames(0, 12..20, &[]);
    assert_eq!(frames_of(&down), vec![12, 16]);
    let [_, all] = a.frames(0, 20..21, &[]);
    assert_eq!(frames_of(&all), vec![20]);
    // The whole output of viewer 2 stayed contiguous across the switches.
    assert_eq!(a.stat(20, "layerSwitches"), Some(2));
}

#[test]
fn a_new_key_frame_restarts_selection_with_its_structure() {
    let mut a = Av1::new(1);
    a.prefer(20, 0, Some(0));
    let [t0, _] = a.frames(0, 0..10, &[]);
    assert_eq!(frames_of(&t0), vec![0, 4, 8]);
    // A key frame at 10 (out of the T0 rhythm) carries the structure again: it starts T0.
    let [t0, _] = a.frames(0, 10..16, &[10]);
    assert_eq!(frames_of(&t0), vec![10, 12]);
    assert!(contiguous(&t0));
}

#[test]
fn bad_descriptors_are_counted_and_not_filtered_by() {
    let mut a = Av1::new(1);
    a.prefer(20, 0, Some(0));
    a.frames(0, 0..4, &[]);
    a.corrupt = true;
    let [t0, all] = a.frames(0, 4..6, &[]);
    // Without a descriptor the frame is forwarded as the producer sent it.
    assert_eq!(frames_of(&t0), vec![4, 5]);
    assert_eq!(frames_of(&all), vec![4, 5]);
    let errors = a.r.rtp_stats(a.now, 10).unwrap()[0].iter().find(|(k, _)| *k == "dependencyDescriptorErrors").map(|(_, v)| v.clone());
    assert_eq!(errors, Some(StatValue::Int(4)));
    // The structure survived: good descriptors filter again.
    a.corrupt = false;
    let [t0, _] = a.frames(0, 6..9, &[]);
    assert_eq!(frames_of(&t0), vec![8]);
}

#[test]
fn simulcast_av1_switches_streams_at_key_frames() {
    let mut a = Av1::new(2);
    // Both consumers start on the highest stream, at its key frame (the N bit).
    let mut first = [Vec::new(), Vec::new()];
    for f in 0..4 {
        for enc in 0..2 {
            let [x, y] = a.frame(enc, f, f == 0);
            first[0].extend(x);
            first[1].extend(y);
        }
    }
    assert!(first[0].iter().all(|g| g.1 == 1) && frames_of(&first[0]) == vec![0, 1, 2, 3]);
    // Viewer 2 asks for stream 0 (every temporal layer): it moves there at its next key frame.
    a.prefer(20, 0, None);
    let mut got = Vec::new();
    for f in 4..12 {
        for enc in 0..2 {
            let [x, _] = a.frame(enc, f, f == 8 && enc == 0);
            got.extend(x);
        }
    }
    let before: Vec<&Got> = got.iter().filter(|g| g.2 < 8).collect();
    assert!(before.iter().all(|g| g.1 == 1));
    let after: Vec<Got> = got.iter().filter(|g| g.2 >= 8).copied().collect();
    assert!(after.iter().all(|g| g.1 == 0));
    assert_eq!(frames_of(&after), (8..12).collect::<Vec<_>>());
    assert!(contiguous(&got));
    assert_eq!(a.stat(20, "currentLayer"), Some(0));
}

/// L2T1 temporal unit `k`: frame 2k on S0 (template 0 with the structure on a key unit, else
/// 1) then 2k+1 on S1 (template 2 on a key unit, else 3), one packet each, the marker on S1.
fn l2_unit(a: &mut Av1, k: u32, key: bool) -> [Vec<Got>; 2] {
    let number = |f: u32| (f as u16).to_be_bytes();
    let mut s0 = if key { hex(L2T1_KEY) } else { vec![0xc1, 0, 0] };
    s0[1..3].copy_from_slice(&number(2 * k));
    let s1 = [0xc0 | if key { 2 } else { 3 }, number(2 * k + 1)[0], number(2 * k + 1)[1]];
    let [mut x, mut y] = a.packet(0, 2 * k, &s0, key, false);
    let [x1, y1] = a.packet(0, 2 * k + 1, &s1, false, true);
    x.extend(x1);
    y.extend(y1);
    [x, y]
}

#[test]
fn l2t1_spatial_layer_zero_takes_the_marker_and_switches_up_at_a_key_frame() {
    let mut a = Av1::new(1);
    a.unit = 2;
    assert_eq!(a.prefer(20, 0, None).0, 0);
    let mut got = [Vec::new(), Vec::new()];
    for k in 0..4 {
        let [x, y] = l2_unit(&mut a, k, k == 0);
        got[0].extend(x);
        got[1].extend(y);
    }
    // Viewer 2: S0 frames only, each now ending its temporal unit (marker set).
    assert_eq!(got[0].iter().map(|g| (g.2, g.3)).collect::<Vec<_>>(), vec![(0, true), (2, true), (4, true), (6, true)]);
    assert!(contiguous(&got[0]));
    assert_eq!(a.stat(20, "currentLayer"), Some(0));
    // Viewer 3: everything as sent, the marker on S1 only.
    assert_eq!(got[1].iter().map(|g| (g.2, g.3)).collect::<Vec<_>>(), (0..8).map(|f| (f, f % 2 == 1)).collect::<Vec<_>>());
    assert_eq!(a.stat(30, "currentLayer"), Some(1));
    // Viewer 2 wants S1: delta units are no switch point for it (S1 needs the S1 before), so
    // the host is asked for a key frame.
    let mut out = Output::new();
    a.r.set_preferred_layers(a.now, 20, 1, None, &mut out).unwrap();
    assert_eq!(dests(&out), vec![1000]);
    // Viewer 3 wants S0: a move down, at the next temporal unit, no key frame needed.
    let mut out = Output::new();
    a.r.set_preferred_layers(a.now, 30, 0, None, &mut out).unwrap();
    assert!(out.transmits.is_empty());
    let [x, y] = l2_unit(&mut a, 4, false);
    assert_eq!(x.iter().map(|g| (g.2, g.3)).collect::<Vec<_>>(), vec![(8, true)]);
    assert_eq!(y.iter().map(|g| (g.2, g.3)).collect::<Vec<_>>(), vec![(8, true)]);
    // A key unit: viewer 2 moves up there.
    let [x, y] = l2_unit(&mut a, 5, true);
    assert_eq!(x.iter().map(|g| (g.2, g.3)).collect::<Vec<_>>(), vec![(10, false), (11, true)]);
    assert_eq!(y.iter().map(|g| (g.2, g.3)).collect::<Vec<_>>(), vec![(10, true)]);
    assert_eq!(a.stat(20, "currentLayer"), Some(1));
    assert_eq!(a.stat(30, "currentLayer"), Some(0));
}
