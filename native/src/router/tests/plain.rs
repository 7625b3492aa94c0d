//! Plain transports: their own socket (`via`), no SRTP or SRTP with given keys, the source
//! check (fixed remote, comedia latch), a plain producer fanned out to WebRTC viewers and a
//! WebRTC producer to a plain consumer, and key frame requests without RTCP.

use super::*;
use crate::remote::{SocketId, Via, MAIN_SOCKET};

const VIA_IN: SocketId = 7;
const VIA_OUT: SocketId = 8;

fn plain_producer_spec() -> ProducerSpec {
    let mut spec = producer_spec(Some(0x4444));
    spec.mid = None;
    spec.header_extensions.clear();
    spec
}

/// Viewer transport 2 (WebRTC, port 2000) with consumer 20 of producer 10 on plain transport 1.
fn plain_in(comedia: bool, remote: Option<SocketAddr>) -> (Router, Instant) {
    let now = Instant::now();
    let mut r = router(now);
    let mut out = Output::new();
    r.add_plain_transport(1, VIA_IN, comedia, false).unwrap();
    r.connect_plain(now, 1, remote, None, &mut out).unwrap();
    connect(&mut r, now, 2, 2000, &mut out);
    r.add_producer(now, 10, 1, plain_producer_spec()).unwrap();
    r.add_consumer(now, 20, 2, 10, consumer_spec(0xAAAA, "c0", false), &mut out).unwrap();
    (r, now)
}

fn plain_rtp(seq: u16, key_frame: bool) -> Vec<u8> {
    rtp_packet(0x4444, seq, VP8_PT, None, &vp8_payload(key_frame))
}

#[test]
fn plain_rtp_in_reaches_webrtc_viewers_from_the_main_socket() {
    let (mut r, now) = plain_in(false, Some(addr(5000).addr));
    let mut v2 = peer(2).1;
    let mut out = Output::new();
    r.handle_plain_datagram(now, 1, addr(5000).addr, &plain_rtp(1, true), &mut out);
    let media: Vec<&Transmit> = out.transmits.iter().filter(|t| t.dest == addr(2000)).collect();
    assert_eq!(media.len(), 1);
    assert_eq!(media[0].dest.via, Via::Udp);
    let mut b = media[0].buf.clone();
    v2.unprotect_rtp(&mut b).unwrap();
    assert_eq!(rtp::parse(&b).unwrap().ssrc, 0xAAAA);
    // The same bytes on the main socket are nobody's (plain transports have no tuples).
    let mut out = Output::new();
    r.handle_datagram(now, addr(5000), &plain_rtp(2, false), &mut out);
    assert_eq!(r.drops().get(DropReason::UnknownSource), 1);
}

#[test]
fn plain_transport_drops_other_sources_and_counts_them() {
    let (mut r, now) = plain_in(false, Some(addr(5000).addr));
    let mut out = Output::new();
    r.handle_plain_datagram(now, 1, addr(6000).addr, &plain_rtp(1, true), &mut out);
    assert!(out.transmits.is_empty());
    assert_eq!(r.drops().get(DropReason::PlainWrongSource), 1);
    assert!(stats(&r, 1).contains(&("wrongSourceDropped", StatValue::Int(1))));
    // Not RTP/RTCP (STUN, DTLS): dropped too.
    r.handle_plain_datagram(now, 1, addr(5000).addr, &[0, 1, 0, 0], &mut out);
    assert_eq!(r.drops().get(DropReason::Demux), 1);
}

#[test]
fn comedia_latches_the_first_valid_source_once() {
    let (mut r, now) = plain_in(true, None);
    let mut out = Output::new();
    // Garbage first: not valid, latches nothing.
    r.handle_plain_datagram(now, 1, addr(6000).addr, &[0x80, 0x60, 0, 1], &mut out);
    r.handle_plain_datagram(now, 1, addr(5000).addr, &plain_rtp(1, true), &mut out);
    assert_eq!(stat_str(&r, 1, "selectedTuple"), addr(5000).to_string());
    let mut out = Output::new();
    r.handle_plain_datagram(now, 1, addr(6000).addr, &plain_rtp(2, false), &mut out);
    assert!(out.transmits.is_empty());
    assert_eq!(r.drops().get(DropReason::PlainWrongSource), 1);
    assert_eq!(stat_str(&r, 1, "selectedTuple"), addr(5000).to_string());
    // A comedia transport takes no address from connect.
    assert!(r.connect_plain(now, 1, Some(addr(7000).addr), None, &mut out).is_err());
}

#[test]
fn webrtc_producer_to_plain_consumer_leaves_by_the_plain_socket_unencrypted() {
    let mut room = room(false);
    let now = room.now;
    let mut out = Output::new();
    room.r.add_plain_transport(4, VIA_OUT, false, false).unwrap();
    room.r.connect_plain(now, 4, Some(addr(9000).addr), None, &mut out).unwrap();
    let mut spec = consumer_spec(0xCCCC, "c9", false);
    spec.mid = None;
    spec.mid_ext_id = None;
    room.r.add_consumer(now, 40, 4, 10, spec, &mut out).unwrap();
    let out = room.send(true);
    assert_eq!(out.transmits.iter().filter(|t| matches!(t.dest.via, Via::Plain(_))).count(), 1);
    let plain: Vec<&Transmit> = out.transmits.iter().filter(|t| t.dest.addr == addr(9000).addr).collect();
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0].dest.via, Via::Plain(VIA_OUT));
    let h = rtp::parse(&plain[0].buf).unwrap();
    assert_eq!((h.ssrc, h.payload_type), (0xCCCC, ROUTER_VP8_PT));
    assert_eq!(h.payload(&plain[0].buf), &vp8_payload(true)[..]);
    // Key frame for a receiver without RTCP: a PLI toward the host (after the interval).
    let mut out = Output::new();
    room.r.request_consumer_key_frame(now + Duration::from_secs(2), 40, &mut out).unwrap();
    assert_eq!(dests(&out), vec![1000]);
    assert!(room.r.request_consumer_key_frame(now, 999, &mut out).is_err());
}

#[test]
fn srtp_plain_transport_needs_the_remote_keys() {
    let now = Instant::now();
    let mut r = router(now);
    let mut out = Output::new();
    r.add_plain_transport(1, VIA_IN, false, true).unwrap();
    connect(&mut r, now, 2, 2000, &mut out);
    r.add_producer(now, 10, 1, plain_producer_spec()).unwrap();
    r.add_consumer(now, 20, 2, 10, consumer_spec(0xAAAA, "c0", false), &mut out).unwrap();
    let (lk, ls) = key(40);
    let (rk, rs) = key(41);
    r.connect_plain(now, 1, Some(addr(5000).addr), Some(&SrtpKeys::new(P, &lk, &ls, &rk, &rs)), &mut out).unwrap();
    // Plain RTP on an SRTP transport: refused by authentication.
    let mut out = Output::new();
    r.handle_plain_datagram(now, 1, addr(5000).addr, &plain_rtp(1, true), &mut out);
    assert_eq!(r.drops().get(DropReason::SrtpAuth) + r.drops().get(DropReason::SrtpMalformed), 1);
    let mut remote = ctx(41);
    let mut pkt = plain_rtp(2, true);
    remote.protect_rtp(&mut pkt).unwrap();
    r.handle_plain_datagram(now, 1, addr(5000).addr, &pkt, &mut out);
    assert_eq!(out.transmits.iter().filter(|t| t.dest == addr(2000)).count(), 1);
}

#[test]
fn plain_transports_refuse_ice_and_dtls_calls_and_need_their_own_socket() {
    let now = Instant::now();
    let mut r = router(now);
    let mut out = Output::new();
    assert!(r.add_plain_transport(1, MAIN_SOCKET, false, false).is_err());
    r.add_plain_transport(1, VIA_IN, false, false).unwrap();
    assert!(r.bind_tuple(now, 1, addr(5000), true, &mut out).is_err());
    assert!(r.set_ice_credentials(1, "u", "p").is_err());
    let (k, s) = key(1);
    assert!(r.set_srtp(now, 1, &SrtpKeys::new(P, &k, &s, &k, &s), None, &mut out).is_err());
    assert!(r.connect_plain(now, 1, None, None, &mut out).is_err(), "no address, no comedia");
    assert!(r.connect_plain(now, 2, None, None, &mut out).is_err(), "unknown transport");
    r.remove_transport(1).unwrap();
    assert_eq!(r.counts().transports, 0);
}
