//! Simulcast consumers: layer switches at key frames with continuity.

use super::*;

#[test]
fn simulcast_consumer_switches_only_at_a_target_key_frame_with_continuity() {
    let mut now = Instant::now();
    let mut r = router(now);
    let mut out = Output::new();
    connect(&mut r, now, 1, 1000, &mut out);
    connect(&mut r, now, 2, 2000, &mut out);
    let mut spec = producer_spec(None);
    spec.encodings = (0..3u32)
        .map(|i| EncodingSpec { ssrc: Some(0x100 + i), rtx_ssrc: None, rid: Some(format!("r{i}")), mapped_ssrc: 7000 + i })
        .collect();
    r.add_producer(now, 10, 1, spec).unwrap();
    r.add_consumer(now, 20, 2, 10, consumer_spec(0xAAAA, "c0", false), &mut out).unwrap();
    let mut host = peer(1).0;
    let mut viewer = peer(2).1;
    let mut seqs = [10u16, 20_000, 65_530];
    let ts_base = [1_000u32, 9_000_000, 4_294_960_000];
    // One packet per layer per frame; returns what the viewer got: (layer, key, seq, ts).
    // What the viewer got per packet: (layer, key frame, seq, ts).
    type Got = (u8, bool, u16, u32);
    let mut frame = |r: &mut Router, now: Instant, f: u32, keys: &[usize]| -> Vec<Got> {
        let mut got = Vec::new();
        for layer in 0..3usize {
            let key = keys.contains(&layer);
            let mut payload = vp8_payload(key);
            payload.push(layer as u8);
            let mut pkt = rtp_packet(0x100 + layer as u32, seqs[layer], VP8_PT, Some("0"), &payload);
            rtp::set_timestamp(&mut pkt, ts_base[layer].wrapping_add(3000 * f));
            seqs[layer] = seqs[layer].wrapping_add(1);
            host.protect_rtp(&mut pkt).unwrap();
            let mut out = Output::new();
            r.handle_datagram(now, addr(1000), &pkt, &mut out);
            for t in &out.transmits {
                let mut b = t.buf.clone();
                if t.dest.port() == 1000 {
                    continue; // PLIs toward the host
                }
                viewer.unprotect_rtp(&mut b).unwrap();
                let h = rtp::parse(&b).unwrap();
                let pl = h.payload(&b);
                got.push((pl[pl.len() - 1], pl[1] & 1 == 0, h.sequence, h.timestamp));
            }
        }
        got
    };
    let mut all = Vec::new();
    // Default: the top layer, from its first key frame.
    let got = frame(&mut r, now, 0, &[]);
    assert!(got.is_empty(), "waiting for a key frame of layer 2");
    let got = frame(&mut r, now, 1, &[0, 1, 2]);
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![2]);
    all.extend(got);
    for f in 2..5 {
        all.extend(frame(&mut r, now, f, &[0]));
    }
    assert!(all.iter().all(|g| g.0 == 2), "a key frame on layer 0 is no reason to move");
    now += Duration::from_millis(100);
    let mut out = Output::new();
    assert_eq!(r.set_preferred_layers(now, 20, 0, None, &mut out).unwrap(), (0, u8::MAX));
    let mut b = out.transmits[0].buf.clone();
    peer(1).1.unprotect_rtcp(&mut b).unwrap();
    assert!(matches!(rtcp::compound(&b).next(), Some(Ok(rtcp::Packet::Pli(p))) if p.media_ssrc == 0x100), "PLI on r0");
    for f in 5..8 {
        let got = frame(&mut r, now, f, &[]);
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![2], "layer 2 until r0's key frame");
        all.extend(got);
    }
    now += Duration::from_millis(33);
    let got = frame(&mut r, now, 8, &[0]);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0, got[0].1), (0, true), "the switch is at layer 0's key frame");
    all.extend(got);
    for f in 9..12 {
        all.extend(frame(&mut r, now, f, &[2]));
    }
    assert!(all.iter().skip_while(|g| g.0 == 2).all(|g| g.0 == 0));
    for w in all.windows(2) {
        assert_eq!(w[1].2, w[0].2.wrapping_add(1), "continuous sequence numbers");
        assert!(crate::seq::is_newer_ts(w[1].3, w[0].3), "timestamps move forward: {:?}", w);
    }
    let st = stats(&r, 20);
    assert!(st.contains(&("current_layer", StatValue::Int(0))));
    assert!(st.contains(&("layer_switches", StatValue::Int(1))));
    // NACKs for a packet from before and one from after the switch: each comes back with
    // the sequence number and timestamp the viewer first got.
    let (before, after) = (all[2], all[all.len() - 1]);
    let mut nack = Vec::new();
    rtcp::build_nack(&mut nack, 0x5555, 0xAAAA, &[before.2, after.2]);
    peer(2).0.protect_rtcp(&mut nack).unwrap();
    let mut out = Output::new();
    r.handle_datagram(now, addr(2000), &nack, &mut out);
    let mut fresh = peer(2).1; // no replay history: retransmissions reuse sequence numbers
    let mut resent: Vec<(u16, u32)> = out
        .transmits
        .iter()
        .filter(|t| t.dest.port() == 2000)
        .filter_map(|t| {
            let mut b = t.buf.clone();
            fresh.unprotect_rtp(&mut b).ok()?;
            let h = rtp::parse(&b).ok()?;
            Some((h.sequence, h.timestamp))
        })
        .collect();
    resent.sort();
    let mut want = vec![(before.2, before.3), (after.2, after.3)];
    want.sort();
    assert_eq!(resent, want);
}
