//! Sender and receiver reports, round-trip time.

use super::*;

#[test]
fn sender_and_receiver_reports_and_round_trip_time() {
    let mut room = room(false);
    for i in 0..5 {
        room.send(i == 0);
    }
    let t0 = room.now;
    let mut out = Output::new();
    room.r.handle_timeout(t0, &mut out);
    // A producer SR (its NTP/RTP mapping is carried over to the viewers' SRs).
    let mut sr = Vec::new();
    let sr_ntp = 0xE000_0000_8000_0000u64;
    rtcp::build_sr(&mut sr, &rtcp::SenderInfo { ssrc: 0x1234, ntp: sr_ntp, rtp_timestamp: 0x1000, packet_count: 5, octet_count: 500 }, &[]);
    room.host.protect_rtcp(&mut sr).unwrap();
    room.r.handle_datagram(t0, addr(1000), &sr, &mut out);
    let t1 = t0 + REPORT_INTERVAL;
    let mut out = Output::new();
    room.r.handle_timeout(t1, &mut out);
    let mut lsr = 0;
    let (mut srs, mut rrs) = (0, 0);
    for t in &out.transmits {
        match t.dest.port() {
            2000 => {
                let (_, mut v) = peer(2);
                let b = rtcp_of(&mut v, t);
                let items: Vec<_> = rtcp::compound(&b).map(|p| p.unwrap()).collect();
                let rtcp::Packet::Sr(sr) = items[0] else { panic!("SR first") };
                assert_eq!(sr.info.ssrc, 0xAAAA);
                assert_eq!(sr.info.packet_count, 5);
                assert_eq!(sr.info.ntp, crate::reports::ntp_add(sr_ntp, REPORT_INTERVAL));
                assert_eq!(sr.info.rtp_timestamp, 0x1000 + 90000);
                assert!(matches!(items[1], rtcp::Packet::Sdes));
                lsr = crate::reports::ntp_mid(sr.info.ntp);
                srs += 1;
            }
            3000 => srs += 1,
            1000 => {
                let b = rtcp_of(&mut room.host_rx, t);
                let Some(Ok(rtcp::Packet::Rr(rr))) = rtcp::compound(&b).next() else { panic!("RR") };
                let blocks: Vec<_> = rr.report_blocks().collect();
                assert_eq!(blocks.len(), 1);
                assert_eq!(blocks[0].ssrc, 0x1234);
                assert_eq!(blocks[0].cumulative_lost, 0);
                assert_eq!(blocks[0].highest_seq, 104);
                assert_eq!(blocks[0].last_sr, crate::reports::ntp_mid(sr_ntp));
                assert_eq!(blocks[0].delay_since_last_sr, 65536);
                rrs += 1;
            }
            p => panic!("unexpected port {p}"),
        }
    }
    assert_eq!((srs, rrs), (2, 1));
    // Viewer 2 answers 50 ms later, having held the SR for 20 ms: RTT 30 ms.
    let mut rr = Vec::new();
    let block = rtcp::ReportBlock {
        ssrc: 0xAAAA,
        fraction_lost: 64,
        cumulative_lost: 3,
        highest_seq: 1,
        jitter: 12,
        last_sr: lsr,
        delay_since_last_sr: crate::reports::to_dlsr(Duration::from_millis(20)),
    };
    rtcp::build_rr(&mut rr, 0x77, &[block]);
    let (mut v, _) = peer(2);
    v.protect_rtcp(&mut rr).unwrap();
    room.r.handle_datagram(t1 + Duration::from_millis(50), addr(2000), &rr, &mut out);
    let Some(StatValue::Float(rtt)) = stat(&room.r, 20, "roundTripTime") else { panic!("no rtt") };
    assert!((29.0..=31.0).contains(&rtt), "rtt {rtt}");
    assert_eq!(stat(&room.r, 20, "fractionLost"), Some(StatValue::Float(0.25)));
    assert_eq!(stat(&room.r, 20, "packetsLost"), Some(StatValue::Int(3)));
    assert_eq!(stat(&room.r, 20, "jitter"), Some(StatValue::Int(12)));
    assert!(stat(&room.r, 30, "roundTripTime").is_none());
}

#[test]
fn audio_has_no_buffer_and_its_sender_reports_use_its_clock() {
    let now = Instant::now();
    let mut r = router(now);
    let mut out = Output::new();
    connect(&mut r, now, 1, 1000, &mut out);
    connect(&mut r, now, 2, 2000, &mut out);
    let mut spec = producer_spec(Some(0x0A0A));
    spec.video = false;
    spec.nack = false;
    spec.codecs[0] = CodecSpec {
        payload_type: 111,
        mapped_payload_type: 100,
        mime: "audio/opus".into(),
        rtx_payload_type: None,
        mapped_rtx_payload_type: None,
        clock_rate: Some(48000),
    };
    r.add_producer(now, 10, 1, spec).unwrap();
    let mut c = consumer_spec(0xAAAA, "a0", false);
    c.payload_types = vec![(100, 100)];
    c.nack = false;
    r.add_consumer(now, 20, 2, 10, c, &mut out).unwrap();
    let (mut host, _) = peer(1);
    for seq in [1u16, 2, 4] {
        let mut pkt = rtp_packet(0x0A0A, seq, 111, Some("0"), &[1, 2, 3, 4]);
        host.protect_rtp(&mut pkt).unwrap();
        r.handle_datagram(now, addr(1000), &pkt, &mut out);
    }
    // Seq 3 is missing but the producer did not negotiate NACK: nothing is asked for.
    let mut out = Output::new();
    r.handle_timeout(now + Duration::from_millis(50), &mut out);
    assert!(out.transmits.is_empty());
    let (mut v, mut v_rx) = peer(2);
    let mut nack = Vec::new();
    rtcp::build_nack(&mut nack, 1, 0xAAAA, &[1000]);
    v.protect_rtcp(&mut nack).unwrap();
    r.handle_datagram(now, addr(2000), &nack, &mut out);
    assert!(out.transmits.is_empty());
    assert_eq!(r.drops().get(DropReason::NackNotNegotiated), 1);
    // First SR a second later: RTP time advanced by 48000 per second past the last packet.
    let mut out = Output::new();
    r.handle_timeout(now + REPORT_INTERVAL + Duration::from_millis(50), &mut out);
    let sr = out.transmits.iter().find(|t| t.dest.port() == 2000).expect("SR to the viewer");
    let b = rtcp_of(&mut v_rx, sr);
    let Some(Ok(rtcp::Packet::Sr(sr))) = rtcp::compound(&b).next() else { panic!("SR") };
    assert_eq!((sr.info.ssrc, sr.info.packet_count), (0xAAAA, 3));
    assert_eq!(sr.info.rtp_timestamp, 0x1000 + 48000 + 48000 / 20);
    assert_eq!(stat(&r, 10, "packetsLost"), Some(StatValue::Int(1)));
}
