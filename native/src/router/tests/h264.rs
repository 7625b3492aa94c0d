//! H264 with the dependency descriptor (as Chromium sends it for scalabilityMode L1T3 when
//! the extension is negotiated): per-consumer temporal layer selection by the descriptor's
//! decode targets, as for AV1 (svc_dd.rs): T0 a quarter of the frames, output sequence
//! numbers contiguous, up only at a switch point for the wanted target, down at the next
//! base frame; simulcast H264 with L1T3 on each stream; without the descriptor negotiated
//! every frame goes out whatever the viewer prefers, and no temporal layer is reported.

use super::av1::{contiguous, frames_of, Av1, Got};
use super::*;

fn h264(encodings: u32) -> Av1 {
    Av1::with_codec(encodings, rtp::Codec::H264, true)
}

#[test]
fn l1t3_t0_gets_a_quarter_of_the_frames_in_sequence() {
    let mut a = h264(1);
    assert_eq!(a.prefer(20, 0, Some(0)), (0, 0));
    let [t0, all] = a.frames(0, 0..40, &[]);
    assert_eq!(frames_of(&all), (0..40).collect::<Vec<_>>());
    assert_eq!(frames_of(&t0), (0..40).step_by(4).collect::<Vec<_>>());
    // The packets of dropped frames left no gap in the viewer's sequence numbers.
    assert!(contiguous(&t0) && contiguous(&all));
    assert_eq!(t0.len(), 20);
    assert_eq!(a.stat(20, "currentTemporalLayer"), Some(0));
    assert_eq!(a.stat(20, "temporalFramesDropped"), Some(30));
    assert_eq!(a.stat(30, "currentTemporalLayer"), Some(2));
    assert_eq!(a.stat(30, "temporalFramesDropped"), Some(0));
    // The sender's marker bits stay as they were (one spatial layer).
    assert!(t0.chunks(2).all(|c| !c[0].3 && c[1].3));
    // Temporal layer 1: T0 and T1 frames, half of them.
    a.prefer(30, 0, Some(1));
    let [_, t1] = a.frames(0, 40..80, &[]);
    assert_eq!(frames_of(&t1), (40..80).filter(|f| f % 2 == 0).collect::<Vec<_>>());
    assert!(contiguous(&t1));
    assert_eq!(a.stat(30, "currentTemporalLayer"), Some(1));
}

#[test]
fn up_at_a_switch_point_down_at_the_next_base_frame() {
    let mut a = h264(1);
    a.prefer(20, 0, Some(0));
    let [mut seen, _] = a.frames(0, 0..5, &[]);
    assert_eq!(frames_of(&seen), vec![0, 4]);
    // Up to every layer after frame 4: frame 5 (T2, not a switch point for the full
    // target) stays out; frame 6 (T1, a switch point) is the first of the new target.
    assert_eq!(a.prefer(20, 0, Some(2)), (0, 2));
    let [up, _] = a.frames(0, 5..12, &[]);
    assert_eq!(frames_of(&up), (6..12).collect::<Vec<_>>());
    assert_eq!(a.stat(20, "currentTemporalLayer"), Some(2));
    // Down to T0 after frame 11: frame 12 (T0) is where it goes down; 13..15 stay out.
    a.prefer(20, 0, Some(0));
    let [down, _] = a.frames(0, 12..20, &[]);
    assert_eq!(frames_of(&down), vec![12, 16]);
    assert_eq!(a.stat(20, "currentTemporalLayer"), Some(0));
    assert_eq!(a.stat(20, "layerSwitches"), Some(2));
    seen.extend(up);
    seen.extend(down);
    assert!(contiguous(&seen), "{seen:?}");
}

#[test]
fn simulcast_h264_switches_streams_at_key_frames_and_keeps_the_temporal_layer() {
    let mut a = h264(2);
    let mut got: [Vec<Got>; 2] = [Vec::new(), Vec::new()];
    for f in 0..4 {
        for enc in 0..2 {
            let [x, y] = a.frame(enc, f, f == 0);
            got[0].extend(x);
            got[1].extend(y);
        }
    }
    // Both start on the top stream, every layer.
    assert!(got[0].iter().all(|g| g.1 == 1) && frames_of(&got[0]) == vec![0, 1, 2, 3]);
    // Viewer 2: stream 0, temporal layer 0. It moves at stream 0's next key frame (8) and
    // from there gets its T0 frames only; until then it keeps stream 1, at T0 from the next
    // base frame (4).
    assert_eq!(a.prefer(20, 0, Some(0)), (0, 0));
    let mut later = [Vec::new(), Vec::new()];
    for f in 4..20 {
        for enc in 0..2 {
            let [x, y] = a.frame(enc, f, f == 8 && enc == 0);
            later[0].extend(x);
            later[1].extend(y);
        }
    }
    let before: Vec<Got> = later[0].iter().filter(|g| g.2 < 8).copied().collect();
    assert!(before.iter().all(|g| g.1 == 1));
    assert_eq!(frames_of(&before), vec![4]);
    let after: Vec<Got> = later[0].iter().filter(|g| g.2 >= 8).copied().collect();
    assert!(after.iter().all(|g| g.1 == 0));
    assert_eq!(frames_of(&after), vec![8, 12, 16]);
    got[0].extend(later[0].iter().copied());
    assert!(contiguous(&got[0]), "{:?}", got[0]);
    assert_eq!(a.stat(20, "currentLayer"), Some(0));
    assert_eq!(a.stat(20, "currentTemporalLayer"), Some(0));
    // Viewer 3 kept the top stream, every frame.
    assert!(later[1].iter().all(|g| g.1 == 1));
    assert_eq!(frames_of(&later[1]), (4..20).collect::<Vec<_>>());
    assert_eq!(a.stat(30, "currentTemporalLayer"), Some(2));
}

#[test]
fn without_the_descriptor_negotiated_every_frame_goes_out() {
    let mut a = Av1::with_codec(1, rtp::Codec::H264, false);
    // The preference is taken (and answered) but nothing in the stream says which frame is
    // in which layer: all of them go out, and no temporal layer is reported.
    assert_eq!(a.prefer(20, 0, Some(0)), (0, 0));
    let [got, _] = a.frames(0, 0..12, &[]);
    assert_eq!(frames_of(&got), (0..12).collect::<Vec<_>>());
    assert!(contiguous(&got));
    assert_eq!(a.stat(20, "currentTemporalLayer"), None);
    assert_eq!(a.stat(20, "temporalFramesDropped"), Some(0));
    let dds = a.r.rtp_stats(a.now, 10).unwrap()[0].iter().find(|(k, _)| *k == "dependencyDescriptors").map(|(_, v)| v.clone());
    assert_eq!(dds, Some(StatValue::Int(0)));
}
