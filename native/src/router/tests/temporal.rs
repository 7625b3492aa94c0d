//! VP8 temporal layers: a consumer's preferred temporal layer filters frames by TID, its
//! sequence numbers, PictureID and TL0PICIDX stay contiguous, it moves up at layer sync
//! frames or key frames and down at the next frame; across simulcast switches too.

use super::*;
use crate::vp8::{self, Descriptor, PictureId};

/// What the viewer got per packet: (seq, ts, descriptor, encoding, frame number).
type Got = (u16, u32, Descriptor, u8, u32);

const PIC_BASE: [u16; 3] = [0x7ff0, 100, 20_000];
const TL0_BASE: [u8; 3] = [250, 7, 128];
const TS_BASE: [u32; 3] = [1_000, 9_000_000, 4_294_960_000];

/// TID of frame `f` in an L1T3 stream: 0, 2, 1, 2 repeating.
fn tid(f: u32) -> u8 {
    [0u8, 2, 1, 2][(f % 4) as usize]
}

/// Layer sync (Y) on the TL2 and TL1 frames of every second cycle of four frames.
fn sync(f: u32) -> bool {
    tid(f) > 0 && (f / 4).is_multiple_of(2) && f % 4 < 3
}

/// Host 1 with VP8 producer 10 (`encodings` streams, L1T3 each), viewer 2 with consumer 20.
struct L1T3 {
    r: Router,
    now: Instant,
    host: SrtpContext,
    viewer: SrtpContext,
    seqs: [u16; 3],
}

impl L1T3 {
    fn new(encodings: u32) -> Self {
        let now = Instant::now();
        let mut r = router(now);
        let mut out = Output::new();
        connect(&mut r, now, 1, 1000, &mut out);
        connect(&mut r, now, 2, 2000, &mut out);
        let mut spec = producer_spec(None);
        spec.encodings = (0..encodings)
            .map(|i| EncodingSpec { ssrc: Some(0x100 + i), rtx_ssrc: None, rid: Some(format!("r{i}")), mapped_ssrc: 7000 + i })
            .collect();
        r.add_producer(now, 10, 1, spec).unwrap();
        r.add_consumer(now, 20, 2, 10, consumer_spec(0xAAAA, "c0", false), &mut out).unwrap();
        L1T3 { r, now, host: peer(1).0, viewer: peer(2).1, seqs: [10, 20_000, 65_530] }
    }

    fn prefer(&mut self, spatial: usize, temporal: u8) -> (usize, u8) {
        let mut out = Output::new();
        self.r.set_preferred_layers(self.now, 20, spatial, Some(temporal), &mut out).unwrap()
    }

    /// Frame `f` of stream `enc`: two packets (the second continues partition 0).
    fn frame(&mut self, enc: usize, f: u32, key: bool) -> Vec<Got> {
        let mut got = Vec::new();
        for part in 0..2 {
            let d = Descriptor {
                start: part == 0,
                picture_id: Some(PictureId { value: PIC_BASE[enc].wrapping_add(f as u16) & 0x7fff, long: true }),
                tl0_pic_idx: Some(TL0_BASE[enc].wrapping_add((f / 4) as u8)),
                tid: Some(tid(f)),
                layer_sync: sync(f),
                ..Descriptor::default()
            };
            let mut payload = Vec::new();
            vp8::write(&d, &mut payload);
            payload.extend_from_slice(&[if key && part == 0 { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a]);
            payload.extend_from_slice(&[0xab; 60]);
            payload.push(enc as u8);
            payload.extend_from_slice(&f.to_be_bytes());
            let mut pkt = rtp_packet(0x100 + enc as u32, self.seqs[enc], VP8_PT, Some("0"), &payload);
            rtp::set_timestamp(&mut pkt, TS_BASE[enc].wrapping_add(3000 * f));
            rtp::set_marker(&mut pkt, part == 1);
            self.seqs[enc] = self.seqs[enc].wrapping_add(1);
            self.host.protect_rtp(&mut pkt).unwrap();
            let mut out = Output::new();
            self.r.handle_datagram(self.now, addr(1000), &pkt, &mut out);
            for t in out.transmits.iter().filter(|t| t.dest.port() == 2000) {
                let mut b = t.buf.clone();
                self.viewer.unprotect_rtp(&mut b).unwrap();
                got.push(decode(&b));
            }
        }
        got
    }

    /// Frames `range` of every stream (`key`: frame numbers that are key frames).
    fn frames(&mut self, encodings: usize, range: std::ops::Range<u32>, key: &[u32]) -> Vec<Got> {
        let mut got = Vec::new();
        for f in range {
            for enc in 0..encodings {
                got.extend(self.frame(enc, f, key.contains(&f)));
            }
        }
        got
    }

    fn stat(&self, key: &str) -> Option<u64> {
        match r_stat(&self.r, key) {
            Some(StatValue::Int(v)) => Some(v),
            _ => None,
        }
    }
}

fn r_stat(r: &Router, key: &str) -> Option<StatValue> {
    stats(r, 20).into_iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

fn decode(b: &[u8]) -> Got {
    let h = rtp::parse(b).unwrap();
    let pl = h.payload(b);
    let d = vp8::parse(pl).unwrap();
    let n = pl.len();
    let f = u32::from_be_bytes([pl[n - 4], pl[n - 3], pl[n - 2], pl[n - 1]]);
    (h.sequence, h.timestamp, d, pl[n - 5], f)
}

/// Sequence numbers contiguous; per frame one PictureID, one more than the last frame's;
/// TL0PICIDX one more at each TL0 frame, unchanged otherwise.
fn assert_continuous(got: &[Got]) {
    for w in got.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        assert_eq!(b.0, a.0.wrapping_add(1), "sequence gap: {a:?} → {b:?}");
        let (pa, pb) = (a.2.picture_id.unwrap().value, b.2.picture_id.unwrap().value);
        let (la, lb) = (a.2.tl0_pic_idx.unwrap(), b.2.tl0_pic_idx.unwrap());
        if a.1 == b.1 {
            assert_eq!((pa, la), (pb, lb), "one frame, one PictureID: {a:?} → {b:?}");
        } else {
            assert_eq!(pb, (pa + 1) & 0x7fff, "PictureID gap: {a:?} → {b:?}");
            let step = if b.2.tid == Some(0) { 1 } else { 0 };
            assert_eq!(lb, la.wrapping_add(step), "TL0PICIDX: {a:?} → {b:?}");
        }
    }
}

fn frames_of(got: &[Got]) -> Vec<u32> {
    let mut v: Vec<u32> = got.iter().map(|g| g.4).collect();
    v.dedup();
    v
}

#[test]
fn tl0_viewer_gets_a_quarter_of_the_frames_contiguous() {
    let mut s = L1T3::new(1);
    assert_eq!(s.prefer(0, 0), (0, 0));
    let got = s.frames(1, 0..64, &[0]);
    // Frames 0, 4, 8, …: both packets of each.
    assert_eq!(frames_of(&got), (0..16).map(|i| i * 4).collect::<Vec<_>>());
    assert_eq!(got.len(), 32);
    assert!(got.iter().all(|g| g.2.tid == Some(0)));
    assert_continuous(&got);
    // The first PictureID and TL0PICIDX are the sender's; PictureID wraps at 15 bits.
    assert_eq!(got[0].2.picture_id.unwrap().value, PIC_BASE[0]);
    assert_eq!(got[0].2.tl0_pic_idx, Some(TL0_BASE[0]));
    assert_eq!(got[31].2.picture_id.unwrap().value, (PIC_BASE[0] + 15) & 0x7fff);
    assert_eq!(s.stat("currentTemporalLayer"), Some(0));
    assert_eq!(s.stat("temporalFramesDropped"), Some(48));
    assert_eq!(s.stat("preferredTemporalLayer"), Some(0));
}

#[test]
fn switches_up_at_sync_frames_and_down_at_the_next_frame() {
    let mut s = L1T3::new(1);
    s.prefer(0, 0);
    let mut all = s.frames(1, 0..10, &[0]);
    assert_eq!(frames_of(&all), vec![0, 4, 8]);
    s.prefer(0, 2);
    // Frames 10 (TL1, sync): up to TL1; 11 (TL2, no sync) dropped; 13 (TL2, sync) comes in
    // an odd cycle without sync: dropped; 17 (TL2, sync): up to TL2.
    let got = s.frames(1, 10..24, &[]);
    assert_eq!(frames_of(&got), vec![10, 12, 14, 16, 17, 18, 19, 20, 21, 22, 23]);
    assert_eq!(s.stat("currentTemporalLayer"), Some(2));
    all.extend(got);
    // Down to TL1: at once, from the next frame.
    s.prefer(0, 1);
    let got = s.frames(1, 24..32, &[]);
    assert_eq!(frames_of(&got), vec![24, 26, 28, 30]);
    assert_eq!(s.stat("currentTemporalLayer"), Some(1));
    all.extend(got);
    assert_continuous(&all);
}

#[test]
fn key_frame_moves_straight_to_the_preferred_layer() {
    let mut s = L1T3::new(1);
    s.prefer(0, 0);
    let mut all = s.frames(1, 0..5, &[0]);
    s.prefer(0, 2);
    // Frames 5..8 are in an odd cycle (no sync); frame 8 is a key frame.
    all.extend(s.frames(1, 5..12, &[8]));
    assert_eq!(frames_of(&all), vec![0, 4, 8, 9, 10, 11]);
    assert_continuous(&all);
}

#[test]
fn retransmission_keeps_the_rewritten_picture_id() {
    let mut s = L1T3::new(1);
    s.prefer(0, 0);
    let got = s.frames(1, 0..12, &[0]);
    let (seq, ts, d, _, _) = got[4];
    let mut nack = Vec::new();
    rtcp::build_nack(&mut nack, 0x5555, 0xAAAA, &[seq]);
    peer(2).0.protect_rtcp(&mut nack).unwrap();
    let mut out = Output::new();
    s.r.handle_datagram(s.now, addr(2000), &nack, &mut out);
    let mut fresh = peer(2).1;
    let resent: Vec<Got> = out
        .transmits
        .iter()
        .filter(|t| t.dest.port() == 2000)
        .map(|t| {
            let mut b = t.buf.clone();
            fresh.unprotect_rtp(&mut b).unwrap();
            decode(&b)
        })
        .collect();
    assert_eq!(resent.len(), 1);
    assert_eq!((resent[0].0, resent[0].1, resent[0].2), (seq, ts, d));
}

#[test]
fn simulcast_switch_continues_picture_id_and_tl0picidx() {
    let mut s = L1T3::new(3);
    s.prefer(2, 0);
    // The consumer starts on the top stream, then goes to stream 1 at its key frame.
    let mut all = s.frames(3, 0..8, &[0]);
    assert!(all.iter().all(|g| g.3 == 2), "{all:?}");
    s.prefer(1, 0);
    all.extend(s.frames(3, 8..16, &[12]));
    assert_eq!(all.iter().map(|g| (g.3, g.4)).filter(|g| g.0 == 1).map(|g| g.1).collect::<Vec<_>>(), vec![12, 12]);
    // Frames 0, 4 of stream 2 then 12 of stream 1: consecutive PictureIDs and TL0PICIDX.
    let frames: Vec<(u8, u32)> = all.iter().map(|g| (g.3, g.4)).collect();
    assert_eq!(frames, vec![(2, 0), (2, 0), (2, 4), (2, 4), (2, 8), (2, 8), (1, 12), (1, 12)]);
    assert_continuous(&all);
    // The stream switch does not make a temporal layer change: still TL0 only.
    let more = s.frames(3, 16..24, &[]);
    assert_eq!(frames_of(&more), vec![16, 20]);
    all.extend(more);
    assert_continuous(&all);
    // Back to every layer: upgrades at the next sync frames of stream 1.
    s.prefer(1, 2);
    let more = s.frames(3, 24..40, &[]);
    assert_eq!(frames_of(&more), vec![24, 26, 28, 30, 32, 33, 34, 35, 36, 37, 38, 39]);
    all.extend(more);
    assert_continuous(&all);
}

#[test]
fn streams_without_temporal_layers_are_untouched() {
    // Room helper: VP8 payloads without the X bit; a TL0 preference changes nothing.
    let mut room = room(false);
    let mut out = Output::new();
    room.r.set_preferred_layers(room.now, 20, 0, Some(0), &mut out).unwrap();
    let mut n = 0;
    for i in 0..8 {
        n += room.send(i == 0).transmits.iter().filter(|t| t.dest.port() == 2000).count();
    }
    assert_eq!(n, 8);
    assert!(r_stat(&room.r, "currentTemporalLayer").is_none());
}

#[test]
fn pause_and_resume_continue_picture_id_after_the_last_sent() {
    let mut s = L1T3::new(1);
    s.prefer(0, 0);
    let mut all = s.frames(1, 0..8, &[0]);
    s.r.pause_consumer(20).unwrap();
    assert!(s.frames(1, 8..20, &[]).is_empty());
    let mut out = Output::new();
    s.r.resume_consumer(s.now, 20, &mut out).unwrap();
    // Waits for a key frame (frame 24); frames 8..24 are skipped without a PictureID gap.
    let after = s.frames(1, 20..30, &[24]);
    assert_eq!(frames_of(&after), vec![24, 28]);
    all.extend(after);
    assert_continuous(&all);
}

#[test]
fn simple_consumer_untouched_until_its_viewer_asks_for_fewer_layers() {
    let mut s = L1T3::new(1);
    let mut all = s.frames(1, 0..6, &[0]);
    // As sent: every frame, the producer's own PictureIDs; no filter yet.
    assert_eq!(frames_of(&all), (0..6).collect::<Vec<_>>());
    assert!(all.iter().all(|g| g.2.picture_id.unwrap().value == (PIC_BASE[0] + g.4 as u16) & 0x7fff));
    assert_eq!(s.stat("currentTemporalLayer"), None);
    s.prefer(0, 0);
    all.extend(s.frames(1, 6..16, &[]));
    assert_eq!(frames_of(&all), vec![0, 1, 2, 3, 4, 5, 8, 12]);
    assert_continuous(&all);
}
