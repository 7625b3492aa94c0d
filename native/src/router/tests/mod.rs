//! Router unit tests, split by behaviour; the helpers (a room of one host and two viewers,
//! packets, specs, peers' SRTP contexts) are here.

mod av1;
mod av1_bwe;
mod bwe;
mod consent;
mod forwarding;
mod h264;
mod ice;
mod loss;
mod owners;
mod pipe;
mod plain;
mod plain_rtcp;
mod reports;
mod sans_io;
mod shares;
mod simulcast;
mod svc;
mod temporal;

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::remote::Remote;
use std::time::{Duration, Instant};

use super::*;
use crate::budget::NACK_MAX_RESENDS;
use crate::srtp::{Profile, SrtpContext};
use crate::{rtcp, rtp, stun_check, stun_peek};

const P: &str = "AES_CM_128_HMAC_SHA1_80";

const VP8_PT: u8 = 96;

const ROUTER_VP8_PT: u8 = 101;

/// A router started at `now` (seed and wall clock fixed: runs are reproducible).
fn router(now: Instant) -> Router {
    Router::new(7, now, Duration::from_secs(1_700_000_000))
}

/// Counters of object `h` (none asserted here depends on the time given).
fn stats(r: &Router, h: Handle) -> Vec<(&'static str, StatValue)> {
    r.stats(Instant::now(), h).unwrap()
}

fn key(seed: u8) -> (Vec<u8>, Vec<u8>) {
    ((0..16).map(|i| seed.wrapping_add(i)).collect(), (0..14).map(|i| seed ^ i).collect())
}

fn ctx(seed: u8) -> SrtpContext {
    let (k, s) = key(seed);
    SrtpContext::new(Profile::AesCm128HmacSha1_80, &k, &s).unwrap()
}

fn addr(port: u16) -> Remote {
    Remote::udp(SocketAddr::from(([10, 0, 0, 1], port)))
}

/// Server side of transport `h`: local (protect) keys from seed `h*2`, remote from `h*2+1`.
fn connect(r: &mut Router, now: Instant, h: Handle, port: u16, out: &mut Output) {
    r.add_transport(h, &format!("ufrag{h}"), &format!("pw{h}")).unwrap();
    let (lk, ls) = key(h as u8 * 2);
    let (rk, rs) = key(h as u8 * 2 + 1);
    // As the control plane does: ICE nominates the tuple, then DTLS completes with it.
    r.bind_tuple(now, h, addr(port), true, out).unwrap();
    r.set_srtp(now, h, &SrtpKeys::new(P, &lk, &ls, &rk, &rs), Some(addr(port)), out).unwrap();
}

/// Host transport 1 (port 1000) with producer 10 (`producer_spec(None)`), viewer transports
/// 2, 3, … (ports 2000, 3000, …), all connected.
fn host_and_viewers(r: &mut Router, now: Instant, viewers: u16, out: &mut Output) {
    connect(r, now, 1, 1000, out);
    for h in 2..2 + viewers {
        connect(r, now, Handle::from(h), 1000 * h, out);
    }
    r.add_producer(now, 10, 1, producer_spec(None)).unwrap();
}

/// The peer of transport `h`: protects with the server's remote keys, unprotects with its local ones.
fn peer(h: Handle) -> (SrtpContext, SrtpContext) {
    (ctx(h as u8 * 2 + 1), ctx(h as u8 * 2))
}

fn vp8_payload(key_frame: bool) -> Vec<u8> {
    // Descriptor: S=1, PID=0, no X; then VP8 frame tag byte (bit0 = 0 for key frames).
    let mut p = vec![0x10, if key_frame { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a];
    p.extend_from_slice(&[0xab; 100]);
    p
}

fn rtp_packet(ssrc: u32, seq: u16, pt: u8, mid: Option<&str>, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80, pt, 0, 0, 0, 0, 0x10, 0];
    v[2..4].copy_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&ssrc.to_be_bytes());
    if let Some(mid) = mid {
        v[0] |= 0x10;
        let mut ext = vec![(3 << 4) | (mid.len() as u8 - 1)];
        ext.extend_from_slice(mid.as_bytes());
        // Also an abs-send-time (id 2) and an unknown one (id 9).
        ext.extend_from_slice(&[(2 << 4) | 2, 1, 2, 3, (9 << 4), 0x55]);
        while ext.len() % 4 != 0 {
            ext.push(0);
        }
        v.extend_from_slice(&[0xBE, 0xDE]);
        v.extend_from_slice(&((ext.len() / 4) as u16).to_be_bytes());
        v.extend_from_slice(&ext);
    }
    v.extend_from_slice(payload);
    v
}

fn producer_spec(ssrc: Option<u32>) -> ProducerSpec {
    ProducerSpec {
        video: true,
        mid: Some("0".into()),
        codecs: vec![CodecSpec {
            payload_type: VP8_PT,
            mapped_payload_type: ROUTER_VP8_PT,
            mime: "video/VP8".into(),
            rtx_payload_type: Some(97),
            mapped_rtx_payload_type: Some(102),
            clock_rate: Some(90000),
        }],
        encodings: vec![EncodingSpec { ssrc, rtx_ssrc: None, rid: None, mapped_ssrc: 5555 }],
        header_extensions: vec![
            ExtSpec { id: 3, router_id: Some(1), uri: URI_MID.into() },
            ExtSpec { id: 2, router_id: Some(4), uri: "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time".into() },
        ],
        key_frame_request: Some(KeyFrameMethod::Pli),
        paused: false,
        nack: true,
    }
}

fn consumer_spec(ssrc: u32, mid: &str, paused: bool) -> ConsumerSpec {
    ConsumerSpec {
        ssrc,
        rtx_ssrc: None,
        mid: Some(mid.into()),
        mid_ext_id: Some(1),
        payload_types: vec![(ROUTER_VP8_PT, ROUTER_VP8_PT)],
        paused,
        encoding: 0,
        rtx_payload_types: vec![],
        nack: true,
        cname: None,
        pipe_ssrcs: vec![],
        svc: None,
        tcc_ext_id: None,
    }
}

struct Room {
    r: Router,
    now: Instant,
    host: SrtpContext,
    host_rx: SrtpContext,
    viewers: Vec<SrtpContext>,
    seq: u16,
}

/// Host transport 1 (port 1000) with producer 10; viewers 2, 3 (ports 2000, 3000) with consumers 20, 30.
fn room(paused_second: bool) -> Room {
    let now = Instant::now();
    let mut r = router(now);
    let mut out = Output::new();
    host_and_viewers(&mut r, now, 2, &mut out);
    r.add_consumer(now, 20, 2, 10, consumer_spec(0xAAAA, "c0", false), &mut out).unwrap();
    r.add_consumer(now, 30, 3, 10, consumer_spec(0xBBBB, "c1", paused_second), &mut out).unwrap();
    let (host, host_rx) = peer(1);
    Room { r, now, host, host_rx, viewers: vec![peer(2).1, peer(3).1], seq: 100 }
}

impl Room {
    fn send(&mut self, key_frame: bool) -> Output {
        let mut pkt = rtp_packet(0x1234, self.seq, VP8_PT, Some("0"), &vp8_payload(key_frame));
        self.seq = self.seq.wrapping_add(1);
        self.host.protect_rtp(&mut pkt).unwrap();
        let mut out = Output::new();
        self.r.handle_datagram(self.now, addr(1000), &pkt, &mut out);
        out
    }

    fn recv(&mut self, t: &Transmit) -> (u32, u8, u16, Vec<u8>) {
        let i = match t.dest.port() {
            2000 => 0,
            3000 => 1,
            p => panic!("unexpected destination port {p}"),
        };
        let mut b = t.buf.clone();
        self.viewers[i].unprotect_rtp(&mut b).unwrap();
        let h = rtp::parse(&b).unwrap();
        let mid = rtp::find_extension(&b, &h, 1).map(|v| v.to_vec());
        (h.ssrc, h.payload_type, h.sequence, mid.unwrap_or_default())
    }
}

fn rtcp_of(ctx: &mut SrtpContext, t: &Transmit) -> Vec<u8> {
    let mut b = t.buf.clone();
    ctx.unprotect_rtcp(&mut b).unwrap();
    b
}

fn stat(r: &Router, h: Handle, key: &str) -> Option<StatValue> {
    r.rtp_stats(Instant::now(), h).unwrap()[0].iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
}

fn stat_str(r: &Router, h: Handle, key: &str) -> String {
    match stats(r, h).into_iter().find(|(k, _)| *k == key) {
        Some((_, StatValue::Str(s))) => s,
        other => panic!("{key}: {other:?}"),
    }
}

/// A compound RR + NACK (+ PLI) from a viewer, protected with its keys.
fn viewer_rtcp(ctx: &mut SrtpContext, ssrc: u32, nacks: &[u16], pli: bool) -> Vec<u8> {
    let mut b = Vec::new();
    rtcp::build_rr(&mut b, 1, &[]);
    if !nacks.is_empty() {
        rtcp::build_nack(&mut b, 1, ssrc, nacks);
    }
    if pli {
        rtcp::build_pli(&mut b, 1, ssrc);
    }
    ctx.protect_rtcp(&mut b).unwrap();
    b
}

fn dests(out: &Output) -> Vec<u16> {
    out.transmits.iter().map(|t| t.dest.port()).collect()
}

/// Host 1 → producer 10 → consumer 20 on viewer 2 (no RTX): `n` packets forwarded at
/// `now`; returns the router and viewer 2's first output sequence number.
fn nack_room(n: u16, payload_len: usize) -> (Router, Instant, u16) {
    let now = Instant::now();
    let mut r = router(now);
    let mut out = Output::new();
    host_and_viewers(&mut r, now, 1, &mut out);
    r.add_consumer(now, 20, 2, 10, consumer_spec(0xAAAA, "c0", false), &mut out).unwrap();
    let (mut host, _) = peer(1);
    let mut v2 = peer(2).1;
    let mut first = None;
    for i in 0..n {
        let mut payload = vp8_payload(i == 0);
        payload.resize(payload_len, 0xcd);
        let mut pkt = rtp_packet(0x1234, 500 + i, VP8_PT, Some("0"), &payload);
        host.protect_rtp(&mut pkt).unwrap();
        let mut out = Output::new();
        r.handle_datagram(now, addr(1000), &pkt, &mut out);
        for t in out.transmits.iter().filter(|t| t.dest.port() == 2000) {
            let mut b = t.buf.clone();
            v2.unprotect_rtp(&mut b).unwrap();
            first.get_or_insert(rtp::parse(&b).unwrap().sequence);
        }
    }
    (r, now, first.unwrap())
}

/// One packet to 20 viewers on one worker: the fan-out goes over them `WARM_AHEAD` at a
/// time (asking the cache for each group first) and still reaches every live consumer once,
/// in their order, each copy decryptable with its viewer's keys; a removed and a paused
/// consumer in between get nothing.
#[test]
fn a_packet_reaches_every_one_of_many_viewers_in_order() {
    let now = Instant::now();
    let mut r = router(now);
    let mut out = Output::new();
    connect(&mut r, now, 1, 1000, &mut out);
    r.add_producer(now, 10, 1, producer_spec(None)).unwrap();
    for h in 30..50u64 {
        connect(&mut r, now, h, 30000 + h as u16, &mut out);
        let spec = consumer_spec(0x1000 + h as u32, &format!("c{h}"), h == 41);
        r.add_consumer(now, 200 + h, h, 10, spec, &mut out).unwrap();
    }
    r.remove_consumer(237).unwrap();
    let (mut host, _) = peer(1);
    let mut pkt = rtp_packet(0x1234, 500, VP8_PT, Some("0"), &vp8_payload(true));
    host.protect_rtp(&mut pkt).unwrap();
    let mut out = Output::new();
    r.handle_datagram(now, addr(1000), &pkt, &mut out);
    let want: Vec<u16> = (30..50u16).filter(|&h| h != 37 && h != 41).map(|h| 30000 + h).collect();
    assert_eq!(dests(&out), want);
    for t in &out.transmits {
        let h = Handle::from(t.dest.port() - 30000);
        let mut b = t.buf.clone();
        peer(h).1.unprotect_rtp(&mut b).unwrap();
        assert_eq!(rtp::parse(&b).unwrap().ssrc, 0x1000 + h as u32);
    }
}
