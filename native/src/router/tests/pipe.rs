//! Pipe consumers (router to router): router A's simulcast producer goes through a pipe
//! consumer on a plain transport to router B, whose pipe producer presents the same streams
//! to its viewers; key frame requests, NACKs (answered as RTX) and sender reports cross.

use super::*;
use crate::remote::{Remote, SocketId, Via};

const VIA_A: SocketId = 3;
const VIA_B: SocketId = 4;
/// A's pipe socket is "port 7001", B's "port 7002" (as the other side sees them).
const PIPE_SSRCS: [u32; 3] = [0x5000, 0x5001, 0x5002];
const PIPE_RTX: [u32; 3] = [0x6000, 0x6001, 0x6002];
const ROUTER_RTX_PT: u8 = 102;

struct Pipe {
    a: Router,
    b: Router,
    now: Instant,
    host: SrtpContext,
    viewer: SrtpContext,
    seqs: [u16; 3],
}

fn simulcast_spec() -> ProducerSpec {
    let mut spec = producer_spec(None);
    spec.encodings = (0..3u32)
        .map(|i| EncodingSpec { ssrc: Some(0x100 + i), rtx_ssrc: None, rid: Some(format!("r{i}")), mapped_ssrc: 7000 + i })
        .collect();
    spec
}

/// B's producer: what the pipe consumer sends (router PTs and extension ids, pipe SSRCs).
fn pipe_producer_spec() -> ProducerSpec {
    let mut spec = producer_spec(None);
    spec.mid = None;
    spec.codecs[0].payload_type = ROUTER_VP8_PT;
    spec.codecs[0].rtx_payload_type = Some(ROUTER_RTX_PT);
    spec.header_extensions = vec![ExtSpec { id: 4, router_id: Some(4), uri: "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time".into() }];
    spec.encodings = (0..3)
        .map(|i| EncodingSpec { ssrc: Some(PIPE_SSRCS[i]), rtx_ssrc: Some(PIPE_RTX[i]), rid: None, mapped_ssrc: 9000 + i as u32 })
        .collect();
    spec
}

impl Pipe {
    fn new() -> Self {
        let now = Instant::now();
        let (mut a, mut b) = (router(now), router(now));
        let mut out = Output::new();
        connect(&mut a, now, 1, 1000, &mut out);
        a.add_producer(now, 10, 1, simulcast_spec()).unwrap();
        a.add_plain_transport(5, VIA_A, false, false).unwrap();
        a.connect_plain(now, 5, Some(addr(7002).addr), None, &mut out).unwrap();
        let mut spec = consumer_spec(PIPE_SSRCS[0], "p", false);
        spec.mid = None;
        spec.mid_ext_id = None;
        spec.rtx_payload_types = vec![(ROUTER_VP8_PT, ROUTER_RTX_PT)];
        spec.pipe_ssrcs = (0..3).map(|i| (PIPE_SSRCS[i], Some(PIPE_RTX[i]))).collect();
        a.add_consumer(now, 50, 5, 10, spec, &mut out).unwrap();
        b.add_plain_transport(6, VIA_B, false, false).unwrap();
        b.connect_plain(now, 6, Some(addr(7001).addr), None, &mut out).unwrap();
        b.add_producer(now, 60, 6, pipe_producer_spec()).unwrap();
        connect(&mut b, now, 2, 2000, &mut out);
        b.add_consumer(now, 20, 2, 60, consumer_spec(0xAAAA, "c0", false), &mut out).unwrap();
        Pipe { a, b, now, host: peer(1).0, viewer: peer(2).1, seqs: [10, 20_000, 65_530] }
    }

    /// A's output over the pipe into B (dropping pipe packets `lose` says); B's output:
    /// what went to the viewer (decrypted) and what went back over the pipe into A. A's
    /// output toward the host is returned too.
    fn relay(&mut self, mut out_a: Output, lose: &mut dyn FnMut(&[u8]) -> bool) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut to_viewer = Vec::new();
        let mut to_host = Vec::new();
        for _ in 0..4 {
            let mut out_b = Output::new();
            for t in out_a.transmits.drain(..) {
                if t.dest.via == Via::Plain(VIA_A) {
                    assert_eq!(t.dest, Remote { addr: addr(7002).addr, via: Via::Plain(VIA_A) });
                    if !lose(&t.buf) {
                        self.b.handle_plain_datagram(self.now, 6, addr(7001).addr, &t.buf, &mut out_b);
                    }
                } else {
                    assert_eq!(t.dest, addr(1000));
                    to_host.push(t.buf);
                }
            }
            let mut back = Output::new();
            for t in out_b.transmits.drain(..) {
                if t.dest.via == Via::Plain(VIA_B) {
                    self.a.handle_plain_datagram(self.now, 5, addr(7002).addr, &t.buf, &mut back);
                } else {
                    assert_eq!(t.dest, addr(2000));
                    let mut b = t.buf.clone();
                    if self.viewer.unprotect_rtp(&mut b).is_ok() {
                        to_viewer.push(b);
                    }
                }
            }
            out_a = back;
        }
        (to_viewer, to_host)
    }

    /// One frame (a packet per layer) from A's host through the pipe.
    fn frame(&mut self, f: u32, key: bool, lose: &mut dyn FnMut(&[u8]) -> bool) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut out = Output::new();
        for layer in 0..3 {
            let mut payload = vp8_payload(key);
            payload.push(layer as u8);
            let mut pkt = rtp_packet(0x100 + layer as u32, self.seqs[layer], VP8_PT, Some("0"), &payload);
            rtp::set_timestamp(&mut pkt, 3000 * f);
            self.seqs[layer] = self.seqs[layer].wrapping_add(1);
            self.host.protect_rtp(&mut pkt).unwrap();
            self.a.handle_datagram(self.now, addr(1000), &pkt, &mut out);
        }
        self.relay(out, lose)
    }
}

fn plis_for(host_rx: &mut SrtpContext, bufs: &[Vec<u8>]) -> Vec<u32> {
    let mut ssrcs = Vec::new();
    for b in bufs {
        let mut b = b.clone();
        if host_rx.unprotect_rtcp(&mut b).is_err() {
            continue;
        }
        for p in rtcp::compound(&b).flatten() {
            if let rtcp::Packet::Pli(p) = p {
                ssrcs.push(p.media_ssrc);
            }
        }
    }
    ssrcs
}

#[test]
fn every_layer_crosses_the_pipe_unchanged_and_the_far_viewer_gets_the_top_one() {
    let mut p = Pipe::new();
    let mut pipe_seen: HashMap<u32, Vec<(u16, u32)>> = HashMap::new();
    let mut got = Vec::new();
    for f in 0..10 {
        let (viewer, _) = p.frame(f, f == 0, &mut |b| {
            let h = rtp::parse(b).unwrap();
            pipe_seen.entry(h.ssrc).or_default().push((h.sequence, h.timestamp));
            assert!(h.payload_type == ROUTER_VP8_PT || h.payload_type >= 200);
            false
        });
        got.extend(viewer);
    }
    // Three streams over the pipe with their own SSRCs, the producer's numbering and times.
    let mut ssrcs: Vec<u32> = pipe_seen.keys().copied().collect();
    ssrcs.sort();
    assert_eq!(ssrcs, PIPE_SSRCS.to_vec());
    assert_eq!(pipe_seen[&PIPE_SSRCS[1]][0], (20_000, 0));
    assert_eq!(pipe_seen[&PIPE_SSRCS[2]].iter().map(|x| x.0).collect::<Vec<_>>()[..7], [65530, 65531, 65532, 65533, 65534, 65535, 0]);
    // B's simulcast consumer starts on the top layer (key frame of frame 0).
    assert_eq!(got.len(), 10);
    for b in &got {
        let h = rtp::parse(b).unwrap();
        assert_eq!(h.ssrc, 0xAAAA);
        assert_eq!(*h.payload(b).last().unwrap(), 2);
    }
}

#[test]
fn far_key_frame_requests_reach_the_host_with_its_own_ssrc() {
    let mut p = Pipe::new();
    p.frame(0, true, &mut |_| false);
    // The far viewer asks for a key frame (PLI on B): B asks over the pipe, A asks the host.
    p.now += Duration::from_secs(2);
    let mut pli = Vec::new();
    rtcp::build_pli(&mut pli, 1, 0xAAAA);
    peer(2).0.protect_rtcp(&mut pli).unwrap();
    let mut out_b = Output::new();
    p.b.handle_datagram(p.now, addr(2000), &pli, &mut out_b);
    let over_pipe: Vec<&Transmit> = out_b.transmits.iter().filter(|t| t.dest.via == Via::Plain(VIA_B)).collect();
    assert_eq!(over_pipe.len(), 1);
    let mut out_a = Output::new();
    p.a.handle_plain_datagram(p.now, 5, addr(7002).addr, &over_pipe[0].buf, &mut out_a);
    let to_host: Vec<Vec<u8>> = out_a.transmits.iter().filter(|t| t.dest == addr(1000)).map(|t| t.buf.clone()).collect();
    assert_eq!(plis_for(&mut peer(1).1, &to_host), vec![0x102], "the top layer's own SSRC");
}

#[test]
fn a_packet_lost_on_the_pipe_is_nacked_and_resent_as_rtx() {
    let mut p = Pipe::new();
    p.frame(0, true, &mut |_| false);
    p.frame(1, false, &mut |_| false);
    // Frame 2's top layer is lost on the pipe leg.
    let (got, _) = p.frame(2, false, &mut |b| rtp::parse(b).unwrap().ssrc == PIPE_SSRCS[2]);
    assert!(got.is_empty());
    let (got, _) = p.frame(3, false, &mut |_| false);
    assert_eq!(got.len(), 1);
    // B NACKs it upstream when due; A answers with RTX over the pipe; B restores it.
    p.now += Duration::from_millis(30);
    let mut out_b = Output::new();
    p.b.handle_timeout(p.now, &mut out_b);
    let mut out_a = Output::new();
    for t in out_b.transmits.iter().filter(|t| t.dest.via == Via::Plain(VIA_B)) {
        p.a.handle_plain_datagram(p.now, 5, addr(7002).addr, &t.buf, &mut out_a);
    }
    let rtx: Vec<&Transmit> = out_a.transmits.iter().filter(|t| t.dest.via == Via::Plain(VIA_A)).collect();
    assert_eq!(rtx.len(), 1, "one retransmission over the pipe");
    let h = rtp::parse(&rtx[0].buf).unwrap();
    assert_eq!((h.ssrc, h.payload_type), (PIPE_RTX[2], ROUTER_RTX_PT));
    let mut out_b = Output::new();
    p.b.handle_plain_datagram(p.now, 6, addr(7001).addr, &rtx[0].buf, &mut out_b);
    let repaired: Vec<Vec<u8>> = out_b
        .transmits
        .iter()
        .filter(|t| t.dest == addr(2000))
        .filter_map(|t| {
            let mut b = t.buf.clone();
            p.viewer.unprotect_rtp(&mut b).ok().map(|_| b)
        })
        .collect();
    assert_eq!(repaired.len(), 1, "the viewer gets the lost packet");
    assert_eq!(rtp::parse(&repaired[0]).unwrap().timestamp, 3000 * 2);
}

#[test]
fn sender_reports_go_per_stream_over_the_pipe() {
    let mut p = Pipe::new();
    for f in 0..3 {
        p.frame(f, f == 0, &mut |_| false);
    }
    let mut out = Output::new();
    for _ in 0..3 {
        p.now += Duration::from_millis(1100);
        p.a.handle_timeout(p.now, &mut out);
    }
    let mut srs = Vec::new();
    for t in out.transmits.iter().filter(|t| t.dest.via == Via::Plain(VIA_A)) {
        for pkt in rtcp::compound(&t.buf).flatten() {
            if let rtcp::Packet::Sr(sr) = pkt {
                srs.push(sr.info.ssrc);
            }
        }
    }
    srs.sort();
    srs.dedup();
    assert_eq!(srs, PIPE_SSRCS.to_vec(), "an SR for each stream, every report interval");
}

#[test]
fn pipe_consumer_spec_is_checked() {
    let now = Instant::now();
    let mut r = router(now);
    let mut out = Output::new();
    connect(&mut r, now, 1, 1000, &mut out);
    r.add_producer(now, 10, 1, simulcast_spec()).unwrap();
    r.add_plain_transport(5, VIA_A, false, false).unwrap();
    let mut spec = consumer_spec(PIPE_SSRCS[0], "p", false);
    spec.pipe_ssrcs = vec![(1, None), (2, None)];
    assert!(r.add_consumer(now, 50, 5, 10, spec.clone(), &mut out).is_err(), "3 encodings, 2 streams");
    spec.pipe_ssrcs = vec![(1, None), (2, Some(1)), (3, None)];
    assert!(r.add_consumer(now, 50, 5, 10, spec.clone(), &mut out).is_err(), "SSRC twice");
    spec.pipe_ssrcs = vec![(1, None), (2, None), (3, None)];
    r.add_consumer(now, 50, 5, 10, spec, &mut out).unwrap();
    r.remove_transport(5).unwrap();
    assert_eq!(r.counts().consumers, 0);
}
