//! Plain transports without rtcp-mux: a second socket for RTCP, the remote RTCP address
//! (connect's rtcp port, or the comedia latch on the RTCP socket), our RTCP leaving by that
//! socket, and what comes to the wrong port or from the wrong source.

use super::*;
use crate::remote::{SocketId, Via, MAIN_SOCKET};

const VIA_RTP: SocketId = 7;
const VIA_RTCP: SocketId = 8;
const VIA_OUT_RTP: SocketId = 9;
const VIA_OUT_RTCP: SocketId = 10;

fn remote(port: u16) -> SocketAddr {
    addr(port).addr
}

fn plain_producer_spec() -> ProducerSpec {
    let mut spec = producer_spec(Some(0x4444));
    spec.mid = None;
    spec.header_extensions.clear();
    spec
}

fn plain_rtp(seq: u16, key_frame: bool) -> Vec<u8> {
    rtp_packet(0x4444, seq, VP8_PT, None, &vp8_payload(key_frame))
}

/// What ffmpeg sends on its RTCP port: a plain RR (no report blocks).
fn plain_rtcp() -> Vec<u8> {
    let mut b = Vec::new();
    rtcp::build_rr(&mut b, 0x4444, &[]);
    b
}

/// Plain transport 1 without rtcp-mux (RTP socket VIA_RTP, RTCP socket VIA_RTCP) with
/// producer 10, connected to 5000/5001 unless comedia; viewer 2 (WebRTC, port 2000) with
/// consumer 20.
fn split_in(comedia: bool) -> (Router, Instant) {
    let now = Instant::now();
    let mut r = router(now);
    let mut out = Output::new();
    r.add_plain_transport(1, VIA_RTP, comedia, false).unwrap();
    r.set_plain_rtcp_socket(1, VIA_RTCP).unwrap();
    if !comedia {
        r.connect_plain_split(now, 1, Some(remote(5000)), Some(5001), None, &mut out).unwrap();
    }
    connect(&mut r, now, 2, 2000, &mut out);
    r.add_producer(now, 10, 1, plain_producer_spec()).unwrap();
    r.add_consumer(now, 20, 2, 10, consumer_spec(0xAAAA, "c0", false), &mut out).unwrap();
    (r, now)
}

fn int(r: &Router, h: Handle, key: &str) -> u64 {
    match stats(r, h).into_iter().find(|(k, _)| *k == key) {
        Some((_, StatValue::Int(n))) => n,
        other => panic!("{key}: {other:?}"),
    }
}

fn to(out: &Output, port: u16) -> Vec<&Transmit> {
    out.transmits.iter().filter(|t| t.dest.addr == remote(port)).collect()
}

#[test]
fn rtp_on_the_rtp_port_and_rtcp_on_the_rtcp_port_are_taken() {
    let (mut r, now) = split_in(false);
    let mut out = Output::new();
    r.handle_plain_datagram(now, 1, remote(5000), &plain_rtp(1, true), &mut out);
    assert_eq!(out.transmits.iter().filter(|t| t.dest == addr(2000)).count(), 1);
    r.handle_plain_rtcp_datagram(now, 1, remote(5001), &plain_rtcp(), &mut out);
    assert_eq!(int(&r, 1, "rtcpPacketsReceived"), 1);
    assert_eq!(int(&r, 1, "rtpPacketsReceived"), 1);
    assert_eq!(stat_str(&r, 1, "rtcpTuple"), Remote { addr: remote(5001), via: Via::Plain(VIA_RTCP) }.to_string());
    assert!(stats(&r, 1).contains(&("rtcpMux", StatValue::Bool(false))));
    assert_eq!(r.drops().get(DropReason::PlainWrongPort) + r.drops().get(DropReason::PlainWrongSource), 0);
}

#[test]
fn our_rtcp_toward_the_sender_leaves_by_the_rtcp_socket_to_the_rtcp_port() {
    let (mut r, now) = split_in(false);
    let mut out = Output::new();
    r.handle_plain_datagram(now, 1, remote(5000), &plain_rtp(1, true), &mut out);
    // A viewer's PLI: forwarded to the plain producer's source as a PLI on its RTCP port.
    let mut v2 = peer(2).0;
    let mut out = Output::new();
    let later = now + Duration::from_secs(2);
    r.handle_datagram(later, addr(2000), &viewer_rtcp(&mut v2, 0xAAAA, &[], true), &mut out);
    let pli = to(&out, 5001);
    assert_eq!(pli.len(), 1, "{:?}", dests(&out));
    assert_eq!(pli[0].dest.via, Via::Plain(VIA_RTCP));
    assert!(to(&out, 5000).is_empty());
    assert_eq!(pli[0].buf[1], 206, "a PSFB (PLI) in the clear");
    // Receiver reports of the plain producer's stream: same way.
    let mut out = Output::new();
    r.handle_timeout(later, &mut out);
    r.handle_timeout(later + REPORT_INTERVAL, &mut out);
    let rr: Vec<&Transmit> = to(&out, 5001).into_iter().filter(|t| t.buf[1] == 201).collect();
    assert!(!rr.is_empty(), "{:?}", dests(&out));
    assert!(rr.iter().all(|t| t.dest.via == Via::Plain(VIA_RTCP)));
}

#[test]
fn rtp_on_the_rtcp_port_and_rtcp_on_the_rtp_port_are_dropped_and_counted() {
    let (mut r, now) = split_in(false);
    let mut out = Output::new();
    // RTP to the RTCP port, even from the RTP remote: dropped.
    r.handle_plain_rtcp_datagram(now, 1, remote(5000), &plain_rtp(1, true), &mut out);
    r.handle_plain_rtcp_datagram(now, 1, remote(5001), &plain_rtp(2, true), &mut out);
    assert!(out.transmits.is_empty());
    assert_eq!(int(&r, 1, "rtpOnRtcpPortDropped"), 2);
    // RTCP to the RTP port from the RTP remote: dropped.
    r.handle_plain_datagram(now, 1, remote(5000), &plain_rtcp(), &mut out);
    assert_eq!(int(&r, 1, "rtcpOnRtpPortDropped"), 1);
    assert_eq!(r.drops().get(DropReason::PlainWrongPort), 3);
    assert_eq!(int(&r, 1, "rtcpPacketsReceived"), 0);
    // ... but from the RTCP remote address it is taken, as mediasoup does (it compares the
    // source address only).
    r.handle_plain_datagram(now, 1, remote(5001), &plain_rtcp(), &mut out);
    assert_eq!(int(&r, 1, "rtcpPacketsReceived"), 1);
    // Other sources on either port: wrong source.
    r.handle_plain_rtcp_datagram(now, 1, remote(6001), &plain_rtcp(), &mut out);
    r.handle_plain_datagram(now, 1, remote(6000), &plain_rtp(3, true), &mut out);
    r.handle_plain_datagram(now, 1, remote(6001), &plain_rtcp(), &mut out);
    assert_eq!(r.drops().get(DropReason::PlainWrongSource), 3);
    assert_eq!(int(&r, 1, "wrongSourceDropped"), 3);
    assert_eq!(int(&r, 1, "rtcpPacketsReceived"), 1);
    assert!(out.transmits.is_empty());
    // Not RTP/RTCP on the RTCP port: a demux drop.
    r.handle_plain_rtcp_datagram(now, 1, remote(5001), &[0, 1, 0, 0], &mut out);
    assert_eq!(r.drops().get(DropReason::Demux), 1);
}

#[test]
fn comedia_latches_the_rtcp_remote_from_the_rtcp_port_once() {
    let (mut r, now) = split_in(true);
    let mut out = Output::new();
    // RTCP first, on the RTP port: latches nothing.
    r.handle_plain_datagram(now, 1, remote(5001), &plain_rtcp(), &mut out);
    assert_eq!(int(&r, 1, "rtcpOnRtpPortDropped"), 1);
    assert_eq!(stat_str(&r, 1, "selectedTuple"), "");
    // Garbage on the RTCP port latches nothing either.
    r.handle_plain_rtcp_datagram(now, 1, remote(6001), &[0x80, 0xc9, 0, 9], &mut out);
    assert_eq!(stat_str(&r, 1, "rtcpTuple"), "");
    // RTCP on the RTCP port fixes the RTCP remote only (not the RTP one).
    r.handle_plain_rtcp_datagram(now, 1, remote(5001), &plain_rtcp(), &mut out);
    assert_eq!(stat_str(&r, 1, "rtcpTuple"), Remote { addr: remote(5001), via: Via::Plain(VIA_RTCP) }.to_string());
    assert_eq!(stat_str(&r, 1, "selectedTuple"), "");
    // RTP fixes the RTP remote.
    r.handle_plain_datagram(now, 1, remote(5000), &plain_rtp(1, true), &mut out);
    assert_eq!(stat_str(&r, 1, "selectedTuple"), Remote { addr: remote(5000), via: Via::Plain(VIA_RTP) }.to_string());
    assert_eq!(out.transmits.iter().filter(|t| t.dest == addr(2000)).count(), 1);
    // Not stolen afterwards.
    r.handle_plain_rtcp_datagram(now, 1, remote(6001), &plain_rtcp(), &mut out);
    assert_eq!(r.drops().get(DropReason::PlainWrongSource), 1);
    assert_eq!(stat_str(&r, 1, "rtcpTuple"), Remote { addr: remote(5001), via: Via::Plain(VIA_RTCP) }.to_string());
    // Our RTCP goes to the latched RTCP remote.
    let mut out = Output::new();
    r.request_consumer_key_frame(now + Duration::from_secs(2), 20, &mut out).unwrap();
    assert_eq!(dests(&out), vec![5001]);
    assert_eq!(out.transmits[0].dest.via, Via::Plain(VIA_RTCP));
}

#[test]
fn comedia_without_an_rtcp_remote_sends_no_rtcp() {
    let (mut r, now) = split_in(true);
    let mut out = Output::new();
    r.handle_plain_datagram(now, 1, remote(5000), &plain_rtp(1, true), &mut out);
    let mut out = Output::new();
    r.request_consumer_key_frame(now + Duration::from_secs(2), 20, &mut out).unwrap();
    assert!(out.transmits.is_empty());
    assert!(r.drops().get(DropReason::KeyFrameNoRoute) >= 1);
}

#[test]
fn a_plain_consumer_without_rtcp_mux_gets_rtp_and_sender_reports_on_two_ports() {
    let mut room = room(false);
    let now = room.now;
    let mut out = Output::new();
    room.r.add_plain_transport(4, VIA_OUT_RTP, false, false).unwrap();
    room.r.set_plain_rtcp_socket(4, VIA_OUT_RTCP).unwrap();
    room.r.connect_plain_split(now, 4, Some(remote(9000)), Some(9003), None, &mut out).unwrap();
    let mut spec = consumer_spec(0xCCCC, "c9", false);
    spec.mid = None;
    spec.mid_ext_id = None;
    room.r.add_consumer(now, 40, 4, 10, spec, &mut out).unwrap();
    let out = room.send(true);
    let media = to(&out, 9000);
    assert_eq!(media.len(), 1);
    assert_eq!(media[0].dest.via, Via::Plain(VIA_OUT_RTP));
    assert_eq!(rtp::parse(&media[0].buf).unwrap().ssrc, 0xCCCC);
    let mut out = Output::new();
    room.r.handle_timeout(now, &mut out);
    room.r.handle_timeout(now + REPORT_INTERVAL, &mut out);
    let sr: Vec<&Transmit> = to(&out, 9003);
    assert!(!sr.is_empty(), "{:?}", dests(&out));
    assert!(sr.iter().all(|t| t.dest.via == Via::Plain(VIA_OUT_RTCP) && t.buf[1] == 200));
    assert!(to(&out, 9000).is_empty());
}

#[test]
fn rtcp_port_rules_of_set_and_connect() {
    let now = Instant::now();
    let mut r = router(now);
    let mut out = Output::new();
    assert!(r.set_plain_rtcp_socket(1, VIA_RTCP).is_err(), "unknown transport");
    r.add_plain_transport(1, VIA_RTP, false, false).unwrap();
    assert!(r.set_plain_rtcp_socket(1, MAIN_SOCKET).is_err());
    assert!(r.set_plain_rtcp_socket(1, VIA_RTP).is_err(), "the RTP socket");
    // rtcp-mux: no rtcp port.
    assert!(r.connect_plain_split(now, 1, Some(remote(5000)), Some(5001), None, &mut out).is_err());
    r.set_plain_rtcp_socket(1, VIA_RTCP).unwrap();
    assert!(r.set_plain_rtcp_socket(1, VIA_RTCP + 5).is_err(), "twice");
    assert!(r.connect_plain(now, 1, Some(remote(5000)), None, &mut out).is_err(), "rtcp port missing");
    assert!(r.connect_plain_split(now, 1, Some(remote(5000)), Some(0), None, &mut out).is_err());
    r.connect_plain_split(now, 1, Some(remote(5000)), Some(5001), None, &mut out).unwrap();
    assert!(r.set_plain_rtcp_socket(1, VIA_RTCP + 5).is_err(), "connected");
    // Comedia: no addresses at all.
    r.add_plain_transport(2, VIA_OUT_RTP, true, false).unwrap();
    r.set_plain_rtcp_socket(2, VIA_OUT_RTCP).unwrap();
    assert!(r.connect_plain_split(now, 2, None, Some(5001), None, &mut out).is_err());
    r.connect_plain_split(now, 2, None, None, None, &mut out).unwrap();
    // Not a plain transport.
    connect(&mut r, now, 3, 3000, &mut out);
    assert!(r.set_plain_rtcp_socket(3, VIA_RTCP + 7).is_err());
    r.remove_transport(1).unwrap();
    r.remove_transport(2).unwrap();
}

#[test]
fn srtp_works_the_same_on_the_rtcp_port() {
    let now = Instant::now();
    let mut r = router(now);
    let mut out = Output::new();
    r.add_plain_transport(1, VIA_RTP, false, true).unwrap();
    r.set_plain_rtcp_socket(1, VIA_RTCP).unwrap();
    connect(&mut r, now, 2, 2000, &mut out);
    r.add_producer(now, 10, 1, plain_producer_spec()).unwrap();
    r.add_consumer(now, 20, 2, 10, consumer_spec(0xAAAA, "c0", false), &mut out).unwrap();
    let (lk, ls) = key(40);
    let (rk, rs) = key(41);
    let keys = SrtpKeys::new(P, &lk, &ls, &rk, &rs);
    r.connect_plain_split(now, 1, Some(remote(5000)), Some(5001), Some(&keys), &mut out).unwrap();
    let (mut remote_tx, mut remote_rx) = (ctx(41), ctx(40));
    // Plain RTCP on the RTCP port of an SRTP transport: refused by authentication.
    r.handle_plain_rtcp_datagram(now, 1, remote(5001), &plain_rtcp(), &mut out);
    assert_eq!(r.drops().get(DropReason::SrtcpAuth) + r.drops().get(DropReason::SrtcpMalformed), 1);
    let mut srtcp = plain_rtcp();
    remote_tx.protect_rtcp(&mut srtcp).unwrap();
    r.handle_plain_rtcp_datagram(now, 1, remote(5001), &srtcp, &mut out);
    assert_eq!(int(&r, 1, "rtcpPacketsReceived"), 2);
    let mut pkt = plain_rtp(1, true);
    remote_tx.protect_rtp(&mut pkt).unwrap();
    r.handle_plain_datagram(now, 1, remote(5000), &pkt, &mut out);
    // Our PLI leaves by the RTCP socket as SRTCP with our key.
    let mut out = Output::new();
    r.request_consumer_key_frame(now + Duration::from_secs(2), 20, &mut out).unwrap();
    let pli = to(&out, 5001);
    assert_eq!(pli.len(), 1, "{:?}", dests(&out));
    assert_eq!(pli[0].dest.via, Via::Plain(VIA_RTCP));
    let clear = rtcp_of(&mut remote_rx, pli[0]);
    assert_eq!(clear[1], 206);
}
