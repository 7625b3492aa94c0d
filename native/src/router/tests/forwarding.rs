//! Forwarding: SSRC/PT/MID rewrite, sequence continuity, pause/resume, key frame requests, drops.

use super::*;

#[test]
fn forwards_to_each_consumer_with_its_ssrc_pt_mid_and_continuous_seq() {
    let mut room = room(false);
    // Waiting for a key frame: delta frames go nowhere.
    let out = room.send(false);
    assert!(out.transmits.iter().all(|t| t.dest.port() == 1000), "only PLIs toward the host");
    let mut last: HashMap<u16, u16> = HashMap::new();
    for i in 0..20 {
        let out = room.send(i == 0);
        let media: Vec<&Transmit> = out.transmits.iter().filter(|t| t.dest.port() != 1000).collect();
        assert_eq!(media.len(), 2);
        for t in media {
            let (ssrc, pt, seq, mid) = room.recv(t);
            let (want_ssrc, want_mid) = if t.dest.port() == 2000 { (0xAAAA, "c0") } else { (0xBBBB, "c1") };
            assert_eq!(ssrc, want_ssrc);
            assert_eq!(pt, ROUTER_VP8_PT);
            assert_eq!(mid, want_mid.as_bytes());
            if let Some(prev) = last.insert(t.dest.port(), seq) {
                assert_eq!(seq, prev.wrapping_add(1));
            } else {
                assert!((1000..=32767).contains(&seq));
            }
        }
    }
    let s = stats(&room.r, 20);
    assert!(s.contains(&("packetsSent", StatValue::Int(20))));
    assert_eq!(room.r.drops().get(DropReason::UnknownSsrc), 0);
}

#[test]
fn paused_consumer_gets_nothing_and_resume_requests_a_key_frame() {
    let mut room = room(true);
    room.send(true);
    let now = room.now + Duration::from_secs(2);
    room.now = now;
    for _ in 0..5 {
        let out = room.send(false);
        assert!(out.transmits.iter().all(|t| t.dest.port() == 2000));
    }
    let mut out = Output::new();
    room.r.resume_consumer(now, 30, &mut out).unwrap();
    assert_eq!(out.transmits.len(), 1);
    assert_eq!(out.transmits[0].dest, addr(1000));
    let mut b = out.transmits[0].buf.clone();
    room.host_rx.unprotect_rtcp(&mut b).unwrap();
    let pli: Vec<u32> = rtcp::compound(&b)
        .filter_map(|p| match p {
            Ok(rtcp::Packet::Pli(p)) => Some(p.media_ssrc),
            _ => None,
        })
        .collect();
    assert_eq!(pli, vec![0x1234]);
    // Until the key frame, the resumed consumer gets nothing.
    let out = room.send(false);
    assert!(out.transmits.iter().all(|t| t.dest.port() != 3000));
    let out = room.send(true);
    assert_eq!(out.transmits.iter().filter(|t| t.dest.port() == 3000).count(), 1);
}

#[test]
fn key_frame_requests_are_rate_limited_and_repeated() {
    let mut room = room(false);
    room.send(false); // first packet, not a key frame → request
    let p = |r: &Router| match stats(r, 10).iter().find(|(k, _)| *k == "keyFrameRequestsSent") {
        Some((_, StatValue::Int(n))) => *n,
        _ => 0,
    };
    let sent = p(&room.r);
    assert!(sent >= 1);
    // A viewer PLI within the second: no new request.
    let mut pli = Vec::new();
    rtcp::build_pli(&mut pli, 0xAAAA, 0xAAAA);
    let (mut v, _) = peer(2);
    v.protect_rtcp(&mut pli).unwrap();
    let mut out = Output::new();
    room.r.handle_datagram(room.now, addr(2000), &pli, &mut out);
    assert_eq!(p(&room.r), sent);
    assert!(out.transmits.is_empty());
    // After a second, still wanted → re-request.
    let mut out = Output::new();
    room.r.handle_timeout(room.now + Duration::from_millis(1100), &mut out);
    assert_eq!(out.transmits.len(), 1);
    assert_eq!(p(&room.r), sent + 1);
    // Key frame arrives: nothing more wanted.
    room.now += Duration::from_millis(1200);
    room.send(true);
    let mut out = Output::new();
    room.r.handle_timeout(room.now + Duration::from_secs(3), &mut out);
    assert_eq!(p(&room.r), sent + 1);
}

#[test]
fn replay_tamper_and_unknown_source_are_dropped_and_counted() {
    let mut room = room(false);
    let mut pkt = rtp_packet(0x1234, 5, VP8_PT, Some("0"), &vp8_payload(true));
    room.host.protect_rtp(&mut pkt).unwrap();
    let mut out = Output::new();
    room.r.handle_datagram(room.now, addr(1000), &pkt, &mut out);
    assert_eq!(out.transmits.iter().filter(|t| t.dest.port() != 1000).count(), 2);
    let mut out = Output::new();
    room.r.handle_datagram(room.now, addr(1000), &pkt, &mut out);
    assert!(out.transmits.is_empty());
    assert_eq!(room.r.drops().get(DropReason::SrtpReplay), 1);
    let mut pkt = rtp_packet(0x1234, 6, VP8_PT, Some("0"), &vp8_payload(false));
    room.host.protect_rtp(&mut pkt).unwrap();
    let n = pkt.len();
    pkt[n - 20] ^= 1;
    room.r.handle_datagram(room.now, addr(1000), &pkt, &mut out);
    assert_eq!(room.r.drops().get(DropReason::SrtpAuth), 1);
    room.r.handle_datagram(room.now, addr(4444), &pkt, &mut out);
    assert_eq!(room.r.drops().get(DropReason::UnknownSource), 1);
    room.r.handle_datagram(room.now, addr(1000), &[0x40, 1, 2], &mut out);
    assert_eq!(room.r.drops().get(DropReason::Demux), 1);
    // Padding-only: dropped, and the consumers' sequence stays continuous.
    let mut pad = rtp_packet(0x1234, 7, VP8_PT, Some("0"), &[0, 0, 0, 4]);
    pad[0] |= 0x20;
    room.host.protect_rtp(&mut pad).unwrap();
    room.r.handle_datagram(room.now, addr(1000), &pad, &mut out);
    assert_eq!(room.r.drops().get(DropReason::PaddingOnly), 1);
    assert!(out.transmits.is_empty());
}

#[test]
fn removing_a_producer_or_a_viewer_transport_says_what_went() {
    let mut room = room(false);
    let mut out = Output::new();
    room.r.add_consumer(room.now, 31, 3, 10, consumer_spec(0xBBBC, "c2", false), &mut out).unwrap();
    let mut removed = room.r.remove_transport(3).unwrap();
    removed.consumers.sort_unstable();
    assert_eq!(removed, Removed { producers: vec![], consumers: vec![30, 31] });
    assert_eq!(room.r.remove_producer(10).unwrap(), Removed { producers: vec![10], consumers: vec![20] });
    assert_eq!(room.r.counts(), Counts { transports: 2, producers: 0, consumers: 0, streams: 0, tuples: 2 });
}

#[test]
fn remove_transport_cascades_and_bad_calls_fail_cleanly() {
    let mut room = room(false);
    assert_eq!(room.r.counts(), Counts { transports: 3, producers: 1, consumers: 2, streams: 3, tuples: 3 });
    assert!(matches!(room.r.add_transport(10, "x", "pw"), Err(RouterError::Invalid(_))));
    assert!(matches!(room.r.add_transport(99, "ufrag1", "pw"), Err(RouterError::Invalid(_))));
    assert!(matches!(room.r.remove_consumer(12345), Err(RouterError::Unknown(_))));
    assert!(matches!(room.r.stats(room.now, 12345), Err(RouterError::Unknown(_))));
    let mut out = Output::new();
    assert!(matches!(
        room.r.set_srtp(room.now, 1, &SrtpKeys::new("NOPE", &[], &[], &[], &[]), None, &mut out),
        Err(RouterError::Invalid(_))
    ));
    assert!(matches!(
        room.r.set_srtp(room.now, 1, &SrtpKeys::new(P, &[1; 3], &[], &[], &[]), None, &mut out),
        Err(RouterError::Invalid(_))
    ));
    // The host's transport takes its producer and the producer's consumers, and says so.
    let mut removed = room.r.remove_transport(1).unwrap();
    removed.consumers.sort_unstable();
    assert_eq!(removed, Removed { producers: vec![10], consumers: vec![20, 30] });
    assert_eq!(room.r.counts(), Counts { transports: 2, producers: 0, consumers: 0, streams: 0, tuples: 2 });
    assert_eq!(room.r.remove_transport(2).unwrap(), Removed::default());
    room.r.remove_transport(3).unwrap();
    assert_eq!(room.r.counts(), Counts::default());
    assert!(room.r.by_addr.is_empty() && room.r.by_ufrag.is_empty());
}

#[test]
fn a_consumer_transport_that_connects_asks_for_a_key_frame() {
    let mut room = room(false);
    room.send(true);
    let kf = |r: &Router| match stat(r, 10, "pliCount") {
        Some(StatValue::Int(n)) => n,
        _ => panic!("no pliCount"),
    };
    let mut out = Output::new();
    room.r.add_transport(4, "ufrag4", "pw4").unwrap();
    room.r.add_consumer(room.now, 40, 4, 10, consumer_spec(0xCCCC, "c9", false), &mut out).unwrap();
    let before = kf(&room.r);
    // Keys first (DTLS completed with 4000), then the selected tuple: media can flow only
    // now → key frame request.
    let later = room.now + Duration::from_secs(2);
    let (lk, ls) = key(8);
    let (rk, rs) = key(9);
    let mut out = Output::new();
    room.r.set_srtp(later, 4, &SrtpKeys::new(P, &lk, &ls, &rk, &rs), Some(addr(4000)), &mut out).unwrap();
    assert!(out.transmits.is_empty());
    room.r.bind_tuple(later, 4, addr(4000), true, &mut out).unwrap();
    assert_eq!(kf(&room.r), before + 1);
    assert_eq!(out.transmits.len(), 1);
    assert_eq!(out.transmits[0].dest, addr(1000));
}

#[test]
fn hostile_datagrams_never_panic() {
    let mut room = room(false);
    let mut out = Output::new();
    let mut x = 0x9E37_79B9_u32;
    for len in 0..300usize {
        for _ in 0..20 {
            let mut d = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                d.push(x as u8);
            }
            if let Some(b) = d.first_mut() {
                *b = [0x80, 0x90, 0x01, 0x16, 0xa0][(x as usize >> 8) % 5] | (*b & 0x0f);
            }
            room.r.handle_datagram(room.now, addr(1000), &d, &mut out);
            room.r.handle_datagram(room.now, addr(2000), &d, &mut out);
        }
    }
}

#[test]
fn totals_count_forwarded_media_and_never_go_down_when_objects_are_removed() {
    let mut room = room(false);
    for i in 0..10 {
        room.send(i == 0);
    }
    let before = room.r.totals();
    assert_eq!(before.packets_received, [0, 10]);
    assert_eq!(before.packets_forwarded, [0, 20], "10 packets to each of two viewers");
    assert!(before.bytes_forwarded[1] > 0);
    room.r.remove_consumer(20).unwrap();
    assert_eq!(room.r.totals(), before);
    room.r.remove_transport(1).unwrap();
    assert_eq!(room.r.counts().producers, 0);
    assert_eq!(room.r.totals(), before, "removing the producer and the rest keeps the totals");
}

#[test]
fn a_transports_first_forwarded_packet_is_told_upward_once() {
    let mut room = room(false);
    room.r.take_upcalls();
    let media_upcalls = |r: &mut Router| -> Vec<(Handle, u16)> {
        r.take_upcalls()
            .into_iter()
            .filter(|u| u.kind == UpKind::Media)
            .map(|u| (u.transport, u.from.port()))
            .collect()
    };
    room.send(false); // waiting for a key frame: nothing forwarded, nothing told
    assert!(media_upcalls(&mut room.r).is_empty());
    room.send(true);
    let mut first = media_upcalls(&mut room.r);
    first.sort();
    // The two viewers' transports (handles 2 and 3 at ports 2000 and 3000), once each.
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|(_, port)| *port == 2000 || *port == 3000));
    for _ in 0..5 {
        room.send(false);
    }
    assert!(media_upcalls(&mut room.r).is_empty());
}
