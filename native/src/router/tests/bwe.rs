//! Send-side bandwidth estimation end to end inside the router: a transport-cc viewer of a
//! three-layer simulcast producer (or a VP9 k-SVC one, L3T1_KEY; or an AV1 one with the
//! dependency descriptor: av1_bwe.rs) behind a simulated
//! bottleneck, giving transport-cc feedback built by the real recorder (twcc.rs), in virtual
//! time.

use super::*;
use crate::bwe::probe::PADDING_SIZE;
use crate::twcc::TwccRecorder;
use crate::vp8::PictureId;
use crate::vp9::{self, Descriptor, LayerIndices};

const TCC_ID: u8 = 5;
const RTX_PT: u8 = 102;
const RTX_SSRC: u32 = 0xAAAB;
/// Host packets: 1000 bytes of payload every 80, 20 and 7 ms (about 0.1, 0.4, 1.15 Mbit/s).
const EVERY_MS: [u64; 3] = [80, 20, 7];
const KEY_FRAME_EVERY_MS: u64 = 250;
const VP9_PT: u8 = 98;
const ROUTER_VP9_PT: u8 = 103;
/// k-SVC pictures: one every 33 ms, a key picture every 8th; per spatial layer this many
/// packets of this many bytes (about 0.1, 0.4 and 1.15 Mbit/s, as the simulcast layers).
const PICTURE_EVERY_MS: u64 = 33;
const KEY_PICTURE_EVERY: u64 = 8;
const SVC_PACKETS: [(u8, usize); 3] = [(1, 400), (2, 800), (5, 950)];

/// What the host sends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Simulcast,
    Ksvc,
    /// AV1 L<spatial>T3 (k-SVC or not) with the dependency descriptor (av1_bwe.rs).
    Dd { spatial: u8, ksvc: bool },
}

/// The viewer's access link: queueing at `capacity` bit/s (None: unlimited) behind at most
/// 250 ms of queue (more is dropped), 10 ms one-way.
pub(super) struct Path {
    pub(super) capacity: Option<u64>,
    free_at_us: i64,
}

impl Path {
    fn carry(&mut self, now_us: i64, len: usize) -> Option<i64> {
        let Some(c) = self.capacity else { return Some(now_us + 10_000) };
        let start = now_us.max(self.free_at_us);
        if start - now_us > 250_000 {
            return None;
        }
        self.free_at_us = start + len as i64 * 8 * 1_000_000 / c as i64;
        Some(self.free_at_us + 10_000)
    }
}

/// What the viewer got: per RTP packet in send order (transport-wide seq, SSRC, padding-only).
#[derive(Default)]
pub(super) struct Seen {
    tcc_seqs: Vec<u16>,
    pub(super) padding: usize,
    rtx: usize,
    unstamped: usize,
    last_media_seq: u16,
    /// Key frame requests (PLI or FIR) the router sent the host.
    pub(super) key_requests: usize,
    /// Key units the AV1 host sent (av1_bwe.rs).
    pub(super) key_units: usize,
    /// Media packets the viewer got, in send order, with their arrival (None: lost on
    /// the path): (µs sent, seq, marker, arrival µs).
    pub(super) media: Vec<(i64, u16, bool, Option<i64>)>,
}

pub(super) struct Scenario {
    pub(super) r: Router,
    source: Source,
    t0: Instant,
    pub(super) now: Instant,
    pub(super) host: SrtpContext,
    host_rx: SrtpContext,
    viewer_rx: SrtpContext,
    viewer_tx: SrtpContext,
    pub(super) seqs: [u16; 3],
    pub(super) path: Path,
    /// (arrival µs, transport-wide seq) in flight toward the viewer.
    flight: Vec<(i64, u16)>,
    recorder: TwccRecorder,
    pub(super) seen: Seen,
    next_timer: Instant,
    /// The AV1 host's next frame number, and whether its next unit is a key unit.
    pub(super) frame_number: u16,
    pub(super) key_due: bool,
}

impl Scenario {
    fn new() -> Self {
        Self::with(Source::Simulcast)
    }

    pub(super) fn with(source: Source) -> Self {
        let t0 = Instant::now();
        let mut r = router(t0);
        let mut out = Output::new();
        connect(&mut r, t0, 1, 1000, &mut out);
        connect(&mut r, t0, 2, 2000, &mut out);
        let mut spec = producer_spec(None);
        let mut c = consumer_spec(0xAAAA, "c0", false);
        if let Source::Dd { .. } = source {
            super::av1_bwe::specs(&mut spec, &mut c, RTX_PT);
        } else if source == Source::Simulcast {
            spec.encodings = (0..3u32)
                .map(|i| EncodingSpec { ssrc: Some(0x100 + i), rtx_ssrc: None, rid: Some(format!("r{i}")), mapped_ssrc: 7000 + i })
                .collect();
            c.rtx_payload_types = vec![(ROUTER_VP8_PT, RTX_PT)];
        } else {
            spec.codecs[0].payload_type = VP9_PT;
            spec.codecs[0].mapped_payload_type = ROUTER_VP9_PT;
            spec.codecs[0].mime = "video/VP9".into();
            c.payload_types = vec![(ROUTER_VP9_PT, ROUTER_VP9_PT)];
            c.rtx_payload_types = vec![(ROUTER_VP9_PT, RTX_PT)];
            c.svc = Some((3, 1, true));
        }
        r.add_producer(t0, 10, 1, spec).unwrap();
        c.rtx_ssrc = Some(RTX_SSRC);
        c.tcc_ext_id = Some(TCC_ID);
        r.add_consumer(t0, 20, 2, 10, c, &mut out).unwrap();
        let (viewer_tx, viewer_rx) = peer(2);
        Scenario {
            r,
            source,
            t0,
            now: t0,
            host: peer(1).0,
            host_rx: peer(1).1,
            viewer_rx,
            viewer_tx,
            seqs: [10, 20_000, 40_000],
            path: Path { capacity: None, free_at_us: 0 },
            flight: Vec::new(),
            recorder: TwccRecorder::new(),
            seen: Seen::default(),
            next_timer: t0,
            frame_number: 0,
            key_due: true,
        }
    }

    fn us(&self) -> i64 {
        (self.now - self.t0).as_micros() as i64
    }

    pub(super) fn ms(&self) -> u64 {
        (self.now - self.t0).as_millis() as u64
    }

    /// The spatial layer the viewer gets (simulcast stream or SVC layer).
    pub(super) fn encoding(&self) -> usize {
        self.r.consumers[&20].current_spatial()
    }

    /// The server's packets toward the viewer go onto the path (RTCP is not stamped).
    fn take(&mut self, out: Output) {
        for t in out.transmits.iter().filter(|t| t.dest.port() == 1000) {
            let b = rtcp_of(&mut self.host_rx, t);
            if rtcp::compound(&b).any(|p| matches!(p, Ok(rtcp::Packet::Pli(_) | rtcp::Packet::Fir(_)))) {
                self.seen.key_requests += 1;
            }
        }
        for t in out.transmits.iter().filter(|t| t.dest.port() == 2000) {
            if (192..=223).contains(&t.buf[1]) {
                continue;
            }
            let mut b = t.buf.clone();
            self.viewer_rx.unprotect_rtp(&mut b).unwrap();
            let h = rtp::parse(&b).unwrap();
            let Some(v) = rtp::find_extension(&b, &h, TCC_ID) else {
                self.seen.unstamped += 1;
                continue;
            };
            let seq = u16::from_be_bytes([v[0], v[1]]);
            self.seen.tcc_seqs.push(seq);
            if h.ssrc == 0xAAAA {
                self.seen.last_media_seq = h.sequence;
            }
            if h.ssrc == RTX_SSRC {
                assert_eq!(h.payload_type, RTX_PT);
                if h.payload_len == 0 {
                    assert_eq!(h.padding_len, PADDING_SIZE);
                    self.seen.padding += 1;
                } else {
                    self.seen.rtx += 1;
                }
            }
            let now_us = self.us();
            let arrival = self.path.carry(now_us, t.buf.len());
            if let Some(at) = arrival {
                self.flight.push((at, seq));
            }
            if h.ssrc == 0xAAAA {
                self.seen.media.push((now_us, h.sequence, h.marker, arrival));
            }
        }
    }

    /// A host packet arrives at the router; what it sends goes onto the path.
    pub(super) fn host_packet(&mut self, mut pkt: Vec<u8>) {
        self.host.protect_rtp(&mut pkt).unwrap();
        let mut out = Output::new();
        self.r.handle_datagram(self.now, addr(1000), &pkt, &mut out);
        self.take(out);
    }

    /// The k-SVC host: picture `n`, every spatial layer (the marker on the top one's end).
    fn svc_picture(&mut self, n: u64) {
        let key = n.is_multiple_of(KEY_PICTURE_EVERY);
        for (sid, &(packets, size)) in SVC_PACKETS.iter().enumerate() {
            for k in 0..packets {
                let d = Descriptor {
                    picture_id: Some(PictureId { value: (n & 0x7fff) as u16, long: true }),
                    inter_picture_predicted: !key,
                    layer: Some(LayerIndices { tid: 0, switching_up: false, sid: sid as u8, inter_layer_dependency: sid > 0 && key }),
                    begin: k == 0,
                    end: k == packets - 1,
                    tl0_pic_idx: Some(n as u8),
                    ..Descriptor::default()
                };
                let mut payload = Vec::new();
                vp9::write(&d, None, &mut payload);
                payload.resize(size, sid as u8);
                let mut pkt = rtp_packet(0x1234, self.seqs[0], VP9_PT, Some("0"), &payload);
                self.seqs[0] = self.seqs[0].wrapping_add(1);
                rtp::set_timestamp(&mut pkt, (n * 3000) as u32);
                rtp::set_marker(&mut pkt, sid == SVC_PACKETS.len() - 1 && k == packets - 1);
                self.host_packet(pkt);
            }
        }
    }

    /// One millisecond: host packets, timers when due, arrivals, feedback every 100 ms.
    fn step(&mut self) {
        self.now += Duration::from_millis(1);
        let ms = self.ms();
        if self.source == Source::Ksvc && ms.is_multiple_of(PICTURE_EVERY_MS) {
            self.svc_picture(ms / PICTURE_EVERY_MS);
        }
        if let Source::Dd { spatial, ksvc } = self.source {
            if ms.is_multiple_of(PICTURE_EVERY_MS) {
                self.dd_unit(ms / PICTURE_EVERY_MS, spatial, ksvc);
            }
        }
        let layers = if self.source == Source::Simulcast { &EVERY_MS[..] } else { &[] };
        for (layer, every) in layers.iter().enumerate() {
            if !ms.is_multiple_of(*every) {
                continue;
            }
            let key = ms % KEY_FRAME_EVERY_MS < *every;
            let mut payload = vp8_payload(key);
            payload.resize(1000, layer as u8);
            let mut pkt = rtp_packet(0x100 + layer as u32, self.seqs[layer], VP8_PT, Some("0"), &payload);
            rtp::set_timestamp(&mut pkt, (ms * 90) as u32);
            self.seqs[layer] = self.seqs[layer].wrapping_add(1);
            self.host_packet(pkt);
        }
        if self.now >= self.next_timer || self.r.poll_timeout().is_some_and(|t| self.now >= t) {
            let mut out = Output::new();
            self.r.handle_timeout(self.now, &mut out);
            self.take(out);
            self.next_timer = self.now + Duration::from_millis(50);
        }
        let now_us = self.us();
        for &(at, seq) in self.flight.iter().filter(|f| f.0 <= now_us) {
            self.recorder.record(seq, at);
        }
        self.flight.retain(|f| f.0 > now_us);
        if ms.is_multiple_of(100) && self.recorder.has_pending() {
            let mut fb = Vec::new();
            self.recorder.build_feedback(&mut fb, 0x5EED, 0xAAAA);
            self.viewer_tx.protect_rtcp(&mut fb).unwrap();
            let mut out = Output::new();
            self.r.handle_datagram(self.now, addr(2000), &fb, &mut out);
            self.take(out);
        }
    }

    /// Step until `cond` holds, at most `ms`; the milliseconds it took.
    pub(super) fn until(&mut self, ms: u64, cond: impl Fn(&Self) -> bool) -> Option<u64> {
        for i in 0..ms {
            if cond(self) {
                return Some(i);
            }
            self.step();
        }
        cond(self).then_some(ms)
    }

    /// The viewer NACKs the last media packet it got.
    fn nack(&mut self) {
        let pkt = viewer_rtcp(&mut self.viewer_tx, 0xAAAA, &[self.seen.last_media_seq], false);
        let mut out = Output::new();
        self.r.handle_datagram(self.now, addr(2000), &pkt, &mut out);
        self.take(out);
    }

    pub(super) fn prober(&self) -> &crate::bwe::probe::Prober {
        &self.r.transports[&2].bwe.send_side.as_ref().expect("stamping").prober
    }

    pub(super) fn assert_consecutive(&self) {
        assert_eq!(self.seen.unstamped, 0, "every RTP packet carries a transport-wide sequence number");
        for w in self.seen.tcc_seqs.windows(2) {
            assert_eq!(w[1], w[0].wrapping_add(1), "consecutive in send order");
        }
    }
}

#[test]
fn a_congested_viewer_goes_down_a_layer_and_back_up_after_a_probe() {
    down_and_back_up(Source::Simulcast);
}

/// The same with a VP9 k-SVC producer: the consumer's filter follows the estimate down, and
/// a probe (not only a raised preference) brings it back up.
#[test]
fn a_congested_ksvc_viewer_goes_down_a_layer_and_back_up_after_a_probe() {
    down_and_back_up(Source::Ksvc);
}

fn down_and_back_up(source: Source) {
    let mut s = Scenario::with(source);
    s.until(6_000, |_| false);
    assert_eq!(s.encoding(), 2, "unlimited: the top layer");
    let est = s.r.transports[&2].bwe.available_bitrate(s.now).expect("a send-side estimate");
    assert!(est > 1_100_000, "{est}");
    assert_eq!(s.prober().probes, 0, "no probe at the top");
    s.nack();
    assert_eq!(s.seen.rtx, 1, "the retransmission went out");
    // The link narrows to 700 kbit/s: down within 2 s.
    s.path.capacity = Some(700_000);
    let down = s.until(2_000, |s| s.encoding() < 2).expect("down a layer within 2 s of the limit");
    s.until(4_000, |_| false);
    assert_eq!(s.encoding(), 1, "held on the layer that fits (down after {down} ms)");
    let p = s.prober();
    assert!(p.probes >= 1 && p.failed >= 1 && p.succeeded == 0, "probes over the narrow link fail: {p:?}");
    // The limit goes: a probe, then back up within 5 s.
    s.path.capacity = None;
    let (padding, succeeded) = (s.seen.padding, s.prober().succeeded);
    let up = s.until(5_000, |s| s.encoding() == 2).expect("back up within 5 s of the limit's removal");
    assert!(s.seen.padding > padding, "padding probes before the move up");
    assert_eq!(s.prober().succeeded, succeeded + 1, "after {up} ms");
    eprintln!("down after {down} ms, up after {up} ms, {:?}, padding {}, est {:?}", s.prober(), s.seen.padding, s.r.transports[&2].bwe.available_bitrate(s.now));
    s.until(3_000, |_| false);
    assert_eq!(s.encoding(), 2, "and stays up");
    s.assert_consecutive();
}

#[test]
fn no_probe_when_already_at_the_top() {
    let mut s = Scenario::new();
    s.until(8_000, |_| false);
    assert_eq!(s.encoding(), 2);
    assert_eq!((s.prober().probes, s.seen.padding), (0, 0));
    assert!(s.seen.tcc_seqs.len() > 1000);
    s.assert_consecutive();
}

#[test]
fn a_viewer_without_transport_cc_gets_no_stamps() {
    let mut r = router(Instant::now());
    let now = Instant::now();
    let mut out = Output::new();
    host_and_viewers(&mut r, now, 1, &mut out);
    r.add_consumer(now, 20, 2, 10, consumer_spec(0xAAAA, "c0", false), &mut out).unwrap();
    let mut host = peer(1).0;
    let mut viewer = peer(2).1;
    let mut pkt = rtp_packet(0x1234, 1, VP8_PT, Some("0"), &vp8_payload(true));
    host.protect_rtp(&mut pkt).unwrap();
    let mut out = Output::new();
    r.handle_datagram(now, addr(1000), &pkt, &mut out);
    assert_eq!(out.transmits.len(), 1);
    let mut b = out.transmits[0].buf.clone();
    viewer.unprotect_rtp(&mut b).unwrap();
    let h = rtp::parse(&b).unwrap();
    assert!(rtp::find_extension(&b, &h, TCC_ID).is_none());
    assert!(r.transports[&2].bwe.send_side.is_none());
}

#[test]
fn a_tcc_extension_id_is_checked() {
    let now = Instant::now();
    let mut r = router(now);
    let mut out = Output::new();
    host_and_viewers(&mut r, now, 1, &mut out);
    for bad in [0u8, 15, 1] {
        let mut c = consumer_spec(0xAAAA, "c0", false);
        c.tcc_ext_id = Some(bad);
        assert!(r.add_consumer(now, 20, 2, 10, c, &mut out).is_err(), "{bad}");
    }
}

