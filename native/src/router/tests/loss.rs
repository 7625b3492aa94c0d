//! Loss repair: upstream NACKs and RTX, viewers' NACKs answered, throttled and budgeted.

use super::*;

#[test]
fn gaps_are_nacked_upstream_and_rtx_fills_them_with_consumer_seq_continuity() {
    let mut room = room(false);
    room.seq = 100;
    room.send(true); // 100
    room.send(false); // 101
    room.seq = 103;
    let out = room.send(false); // 103: 102 missing
    let seqs: Vec<u16> = out.transmits.iter().filter(|t| t.dest.port() == 2000).map(|t| room.recv(t).2).collect();
    assert_eq!(seqs.len(), 1);
    let out103 = seqs[0];
    // Not yet: reordering tolerance.
    let mut out = Output::new();
    room.r.handle_timeout(room.now + Duration::from_millis(5), &mut out);
    assert!(out.transmits.is_empty());
    let mut out = Output::new();
    room.r.handle_timeout(room.now + Duration::from_millis(11), &mut out);
    assert_eq!(out.transmits.len(), 1);
    assert_eq!(out.transmits[0].dest, addr(1000));
    let plain = rtcp_of(&mut room.host_rx, &out.transmits[0]);
    let nacked: Vec<(u32, u16)> = rtcp::compound(&plain)
        .filter_map(|p| match p {
            Ok(rtcp::Packet::Nack(n)) => Some(n.seqs().map(move |s| (n.media_ssrc, s)).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(nacked, vec![(0x1234, 102)]);
    // The host answers with RTX (PT 97, own SSRC, OSN 102 in front of the payload).
    let original = vp8_payload(false);
    let mut rtx_payload = 102u16.to_be_bytes().to_vec();
    rtx_payload.extend_from_slice(&original);
    let now = room.now + Duration::from_millis(20);
    for attempt in 0..2 {
        let mut pkt = rtp_packet(0x9999, 7 + attempt, 97, Some("0"), &rtx_payload);
        room.host.protect_rtp(&mut pkt).unwrap();
        let mut out = Output::new();
        room.r.handle_datagram(now, addr(1000), &pkt, &mut out);
        if attempt == 0 {
            let to_viewer: Vec<&Transmit> = out.transmits.iter().filter(|t| t.dest.port() == 2000).collect();
            assert_eq!(to_viewer.len(), 1);
            let mut b = to_viewer[0].buf.clone();
            room.viewers[0].unprotect_rtp(&mut b).unwrap();
            let h = rtp::parse(&b).unwrap();
            assert_eq!((h.ssrc, h.payload_type, h.sequence), (0xAAAA, ROUTER_VP8_PT, out103.wrapping_sub(1)));
            assert_eq!(h.payload(&b), &original[..]);
        } else {
            assert!(out.transmits.is_empty());
        }
    }
    assert_eq!(room.r.drops().get(DropReason::RtxDuplicate), 1);
    // The original, overtaken by its retransmission, is not forwarded a second time.
    room.seq = 102;
    let out = room.send(false);
    assert!(out.transmits.iter().all(|t| t.dest.port() == 1000));
    assert_eq!(room.r.drops().get(DropReason::Duplicate), 1);
    assert_eq!(stat(&room.r, 10, "packetsRepaired"), Some(StatValue::Int(1)));
    assert_eq!(stat(&room.r, 10, "nackPacketCount"), Some(StatValue::Int(1)));
    assert_eq!(stat(&room.r, 10, "packetsLost"), Some(StatValue::Int(0)));
    assert!(matches!(stat(&room.r, 10, "roundTripTime"), Some(StatValue::Float(ms)) if (8.0..=10.0).contains(&ms)));
    // No more NACKs for it.
    let mut out = Output::new();
    room.r.handle_timeout(room.now + Duration::from_millis(500), &mut out);
    assert!(out.transmits.iter().all(|t| t.dest.port() != 1000));
}

/// Host 1 → producer 10 → consumer 20 on viewer 2 (with RTX) and 30 on viewer 3 (without):
/// ten packets forwarded at `now`. The router, the payloads, each viewer's first output
/// sequence number and the viewers' (protect, unprotect) contexts.
struct NackRoom {
    r: Router,
    payloads: Vec<Vec<u8>>,
    first_out: HashMap<u16, u16>,
    v2: (SrtpContext, SrtpContext),
    v3: (SrtpContext, SrtpContext),
}

fn nack_room_with_rtx(now: Instant) -> NackRoom {
    let mut r = router(now);
    let mut out = Output::new();
    host_and_viewers(&mut r, now, 2, &mut out);
    let mut with_rtx = consumer_spec(0xAAAA, "c0", false);
    with_rtx.rtx_ssrc = Some(0xAAAB);
    with_rtx.rtx_payload_types = vec![(ROUTER_VP8_PT, 102)];
    r.add_consumer(now, 20, 2, 10, with_rtx, &mut out).unwrap();
    r.add_consumer(now, 30, 3, 10, consumer_spec(0xBBBB, "c1", false), &mut out).unwrap();
    let (mut host, _) = peer(1);
    let mut payloads = Vec::new();
    let mut first_out: HashMap<u16, u16> = HashMap::new();
    let (mut v2, mut v3) = (peer(2), peer(3));
    for i in 0..10u16 {
        let payload = vp8_payload(i == 0);
        let mut pkt = rtp_packet(0x1234, 500 + i, VP8_PT, Some("0"), &payload);
        payloads.push(payload);
        host.protect_rtp(&mut pkt).unwrap();
        let mut out = Output::new();
        r.handle_datagram(now, addr(1000), &pkt, &mut out);
        for t in out.transmits.iter().filter(|t| t.dest.port() != 1000) {
            let mut b = t.buf.clone();
            let ctx = if t.dest.port() == 2000 { &mut v2.1 } else { &mut v3.1 };
            ctx.unprotect_rtp(&mut b).unwrap();
            first_out.entry(t.dest.port()).or_insert(rtp::parse(&b).unwrap().sequence);
        }
    }
    NackRoom { r, payloads, first_out, v2, v3 }
}

#[test]
fn viewer_nacks_are_answered_by_rtx_or_plain_resend_and_throttled() {
    let now = Instant::now();
    let NackRoom { mut r, payloads, first_out, mut v2, mut v3 } = nack_room_with_rtx(now);
    let nack_for = |ctx: &mut SrtpContext, ssrc: u32, seqs: &[u16]| viewer_rtcp(ctx, ssrc, seqs, false);
    // Viewer 2 (RTX): output seqs base+3 and base+5.
    let base = first_out[&2000];
    let pkt = nack_for(&mut v2.0, 0xAAAA, &[base + 3, base + 5]);
    let mut out = Output::new();
    r.handle_datagram(now, addr(2000), &pkt, &mut out);
    assert_eq!(out.transmits.len(), 2);
    for (k, t) in out.transmits.iter().enumerate() {
        let mut b = t.buf.clone();
        v2.1.unprotect_rtp(&mut b).unwrap();
        let h = rtp::parse(&b).unwrap();
        assert_eq!((h.ssrc, h.payload_type), (0xAAAB, 102));
        let want = [3usize, 5][k];
        let p = h.payload(&b);
        assert_eq!(u16::from_be_bytes([p[0], p[1]]), base + want as u16);
        assert_eq!(&p[2..], &payloads[want][..]);
        let mid = rtp::find_extension(&b, &h, 1).unwrap();
        assert_eq!(mid, b"c0");
    }
    // The same NACK again at once: already in flight.
    let pkt = nack_for(&mut v2.0, 0xAAAA, &[base + 3]);
    let mut out = Output::new();
    r.handle_datagram(now, addr(2000), &pkt, &mut out);
    assert!(out.transmits.is_empty());
    assert_eq!(r.drops().get(DropReason::NackThrottled), 1);
    // Later it is resent again, with the next RTX sequence number.
    let pkt = nack_for(&mut v2.0, 0xAAAA, &[base + 3]);
    let mut out = Output::new();
    r.handle_datagram(now + Duration::from_millis(150), addr(2000), &pkt, &mut out);
    assert_eq!(out.transmits.len(), 1);
    // Viewer 3 (no RTX): the packet itself again; unknown seq: counted.
    let base3 = first_out[&3000];
    let pkt = nack_for(&mut v3.0, 0xBBBB, &[base3 + 9, base3 + 40]);
    let mut out = Output::new();
    r.handle_datagram(now, addr(3000), &pkt, &mut out);
    assert_eq!(out.transmits.len(), 1);
    let mut b = out.transmits[0].buf.clone();
    peer(3).1.unprotect_rtp(&mut b).unwrap(); // a receiver that lost the original
    let h = rtp::parse(&b).unwrap();
    assert_eq!((h.ssrc, h.payload_type, h.sequence), (0xBBBB, ROUTER_VP8_PT, base3 + 9));
    assert_eq!(h.payload(&b), &payloads[9][..]);
    assert_eq!(r.drops().get(DropReason::NackNotBuffered), 1);
    assert_eq!(stat(&r, 20, "packetsRetransmitted"), Some(StatValue::Int(3)));
    assert_eq!(stat(&r, 20, "nackCount"), Some(StatValue::Int(3)));
    assert_eq!(stat(&r, 20, "nackPacketCount"), Some(StatValue::Int(4)));
    // Too old for the buffer.
    let pkt = nack_for(&mut v3.0, 0xBBBB, &[base3 + 8]);
    let mut out = Output::new();
    r.handle_datagram(now + Duration::from_millis(2100), addr(3000), &pkt, &mut out);
    assert!(out.transmits.is_empty());
    assert_eq!(r.drops().get(DropReason::NackNotBuffered), 2);
}

#[test]
fn a_packet_is_retransmitted_at_most_max_resends_times() {
    let (mut r, now, base) = nack_room(5, 100);
    let mut v2 = peer(2).0;
    let mut sent = 0;
    for round in 0..6u64 {
        let mut out = Output::new();
        let at = now + Duration::from_millis(150 * round);
        r.handle_datagram(at, addr(2000), &viewer_rtcp(&mut v2, 0xAAAA, &[base + 2], false), &mut out);
        sent += out.transmits.len();
    }
    assert_eq!(sent, NACK_MAX_RESENDS as usize);
    assert_eq!(r.drops().get(DropReason::NackMaxResends), 6 - NACK_MAX_RESENDS as u64);
    assert_eq!(stat(&r, 20, "packetsRetransmitted"), Some(StatValue::Int(NACK_MAX_RESENDS as u64)));
    assert!(stats(&r, 20).contains(&("nackMaxResendDrops", StatValue::Int(3))));
}

#[test]
fn retransmissions_stay_within_the_consumers_budget() {
    use crate::budget::{RetransmitBudget, NACK_BUDGET_MIN_BURST_BYTES};
    // ~0.8 Mbit/s forwarded for 4 s (one 1 kB packet every 10 ms) while the viewer NACKs
    // every packet it has had, every 50 ms.
    let (mut r, t0, base) = nack_room(1, 1000);
    let (mut host, _) = peer(1);
    let mut v2 = peer(2).0;
    let (mut forwarded, mut resent) = (0u64, 0u64);
    let mut sent = 1u16;
    for ms in (10..4000u64).step_by(10) {
        let now = t0 + Duration::from_millis(ms);
        let mut out = Output::new();
        let mut payload = vp8_payload(false);
        payload.resize(1000, 0xcd);
        let mut pkt = rtp_packet(0x1234, 500 + sent, VP8_PT, Some("0"), &payload);
        sent += 1;
        host.protect_rtp(&mut pkt).unwrap();
        r.handle_datagram(now, addr(1000), &pkt, &mut out);
        forwarded += out.transmits.iter().filter(|t| t.dest.port() == 2000).map(|t| t.buf.len() as u64).sum::<u64>();
        r.handle_timeout(now, &mut out);
        if ms % 50 == 0 {
            let seqs: Vec<u16> = (0..sent.min(1000)).map(|i| base.wrapping_add(sent - 1 - i)).collect();
            let mut out = Output::new();
            r.handle_datagram(now, addr(2000), &viewer_rtcp(&mut v2, 0xAAAA, &seqs, false), &mut out);
            resent += out.transmits.iter().filter(|t| t.dest.port() == 2000).map(|t| t.buf.len() as u64).sum::<u64>();
        }
    }
    // At most half of what was forwarded, plus the initial bucket and one packet's overhead.
    let bound = forwarded / 2 + NACK_BUDGET_MIN_BURST_BYTES.max(RetransmitBudget::capacity(800_000)) + 1100;
    assert!(resent <= bound, "resent {resent} > {bound} (forwarded {forwarded})");
    assert!(resent * 100 >= forwarded * 45, "the budget is used: {resent} of {forwarded}");
    assert!(r.drops().get(DropReason::NackBudget) > 0);
    match stats(&r, 20).into_iter().find(|(k, _)| *k == "nackBudgetDrops") {
        Some((_, StatValue::Int(n))) => assert!(n > 0),
        other => panic!("{other:?}"),
    }
}
