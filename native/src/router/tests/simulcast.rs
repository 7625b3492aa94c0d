//! Simulcast consumers: layer switches at key frames with continuity.

use super::*;

/// What the viewer got per packet: (layer, key frame, seq, ts).
type Got = (u8, bool, u16, u32);

/// Host 1 with a three-layer simulcast producer 10 (r0..r2), viewer 2 with consumer 20.
struct Simulcast {
    r: Router,
    host: SrtpContext,
    viewer: SrtpContext,
    seqs: [u16; 3],
}

const TS_BASE: [u32; 3] = [1_000, 9_000_000, 4_294_960_000];

impl Simulcast {
    fn new(now: Instant) -> Self {
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
        Simulcast { r, host: peer(1).0, viewer: peer(2).1, seqs: [10, 20_000, 65_530] }
    }

    /// Frame `f`: one packet per layer (a key frame on `keys`); what the viewer got.
    fn frame(&mut self, now: Instant, f: u32, keys: &[usize]) -> Vec<Got> {
        let mut got = Vec::new();
        for (layer, ts_base) in TS_BASE.iter().enumerate() {
            let mut payload = vp8_payload(keys.contains(&layer));
            payload.push(layer as u8);
            let mut pkt = rtp_packet(0x100 + layer as u32, self.seqs[layer], VP8_PT, Some("0"), &payload);
            rtp::set_timestamp(&mut pkt, ts_base.wrapping_add(3000 * f));
            self.seqs[layer] = self.seqs[layer].wrapping_add(1);
            self.host.protect_rtp(&mut pkt).unwrap();
            let mut out = Output::new();
            self.r.handle_datagram(now, addr(1000), &pkt, &mut out);
            // Skip the PLIs toward the host.
            for t in out.transmits.iter().filter(|t| t.dest.port() != 1000) {
                let mut b = t.buf.clone();
                self.viewer.unprotect_rtp(&mut b).unwrap();
                let h = rtp::parse(&b).unwrap();
                let pl = h.payload(&b);
                got.push((pl[pl.len() - 1], pl[1] & 1 == 0, h.sequence, h.timestamp));
            }
        }
        got
    }

    /// The viewer NACKs output `seqs`: the (seq, ts) of what came back, sorted.
    fn resent(&mut self, now: Instant, seqs: &[u16]) -> Vec<(u16, u32)> {
        let mut nack = Vec::new();
        rtcp::build_nack(&mut nack, 0x5555, 0xAAAA, seqs);
        peer(2).0.protect_rtcp(&mut nack).unwrap();
        let mut out = Output::new();
        self.r.handle_datagram(now, addr(2000), &nack, &mut out);
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
        resent
    }
}

#[test]
fn simulcast_consumer_switches_only_at_a_target_key_frame_with_continuity() {
    let mut now = Instant::now();
    let mut s = Simulcast::new(now);
    let mut all = Vec::new();
    // Default: the top layer, from its first key frame.
    assert!(s.frame(now, 0, &[]).is_empty(), "waiting for a key frame of layer 2");
    let got = s.frame(now, 1, &[0, 1, 2]);
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![2]);
    all.extend(got);
    for f in 2..5 {
        all.extend(s.frame(now, f, &[0]));
    }
    assert!(all.iter().all(|g| g.0 == 2), "a key frame on layer 0 is no reason to move");
    now += Duration::from_millis(100);
    let mut out = Output::new();
    assert_eq!(s.r.set_preferred_layers(now, 20, 0, None, &mut out).unwrap(), (0, u8::MAX));
    let mut b = out.transmits[0].buf.clone();
    peer(1).1.unprotect_rtcp(&mut b).unwrap();
    assert!(matches!(rtcp::compound(&b).next(), Some(Ok(rtcp::Packet::Pli(p))) if p.media_ssrc == 0x100), "PLI on r0");
    for f in 5..8 {
        let got = s.frame(now, f, &[]);
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![2], "layer 2 until r0's key frame");
        all.extend(got);
    }
    now += Duration::from_millis(33);
    let got = s.frame(now, 8, &[0]);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0, got[0].1), (0, true), "the switch is at layer 0's key frame");
    all.extend(got);
    for f in 9..12 {
        all.extend(s.frame(now, f, &[2]));
    }
    assert!(all.iter().skip_while(|g| g.0 == 2).all(|g| g.0 == 0));
    for w in all.windows(2) {
        assert_eq!(w[1].2, w[0].2.wrapping_add(1), "continuous sequence numbers");
        assert!(crate::seq::is_newer_ts(w[1].3, w[0].3), "timestamps move forward: {:?}", w);
    }
    let st = stats(&s.r, 20);
    assert!(st.contains(&("currentLayer", StatValue::Int(0))));
    assert!(st.contains(&("layerSwitches", StatValue::Int(1))));
    // NACKs for a packet from before and one from after the switch: each comes back with
    // the sequence number and timestamp the viewer first got.
    let (before, after) = (all[2], all[all.len() - 1]);
    let mut want = vec![(before.2, before.3), (after.2, after.3)];
    want.sort();
    assert_eq!(s.resent(now, &[before.2, after.2]), want);
}

#[test]
fn a_single_stream_consumer_has_no_layers_to_choose() {
    let mut room = room(false);
    room.send(true);
    let mut out = Output::new();
    assert_eq!(room.r.set_preferred_layers(room.now, 20, 2, Some(1), &mut out).unwrap(), (0, 1));
    assert!(out.transmits.is_empty(), "no key frame request");
    let st = stats(&room.r, 20);
    for key in ["currentLayer", "targetLayer", "preferredLayer", "layerSwitches"] {
        assert!(st.contains(&(key, StatValue::Int(0))), "{key}");
    }
    let out = room.send(false);
    assert_eq!(out.transmits.iter().filter(|t| t.dest.port() == 2000).count(), 1);
}
