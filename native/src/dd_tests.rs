//! Dependency descriptor vectors. The L1T3 vector is encoded by hand from the spec's syntax
//! (appendix A) for the structure webrtc's encoder attaches to an L1T3 key frame (facts
//! from its scalability structure: templates T0 "SSS", T0 "SSS" fdiff 4, T1 "-DS" fdiff
//! 2, T2 "--D" fdiff 1 (twice), one chain protecting all three targets).

use super::*;

pub(crate) fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

/// L1T3 key frame: start and end of frame, template 0, frame 1, the structure attached.
pub(crate) const L1T3_KEY: &str = "c0 00 01 80 02 14 ea a8 60 41 4d 14 10 20 84 26";

/// L2T1 key unit, spatial layer 0 (hand-encoded, 189 bits): templates S0 "SS", S0 "SR"
/// fdiff 2, S1 "-S" fdiff 1, S1 "-R" fdiffs 2 and 1; two chains (DT0 by chain 0, DT1 by
/// chain 1); render resolutions 320x180 and 640x360.
pub(crate) const L2T1_KEY: &str = "c0 00 00 80 01 23 ab 23 45 04 60 d0 02 11 12 28 09 f8 05 98 13 f8 0b 38";

/// A test-side MSB-first bit writer, to encode further examples field by field.
#[derive(Default)]
struct W {
    bits: Vec<bool>,
}

impl W {
    fn f(mut self, n: u32, v: u32) -> Self {
        for i in (0..n).rev() {
            self.bits.push(i < 32 && (v >> i) & 1 == 1);
        }
        self
    }

    fn bytes(&self) -> Vec<u8> {
        self.bits.chunks(8).map(|c| c.iter().enumerate().fold(0u8, |b, (i, &x)| b | (u8::from(x) << (7 - i)))).collect()
    }
}

fn mandatory(start: bool, end: bool, template: u32, frame: u32) -> W {
    W::default().f(1, start.into()).f(1, end.into()).f(6, template).f(16, frame)
}

#[test]
fn l1t3_structure_every_field() {
    let mut st = DdStream::new();
    let d = st.parse(&hex(L1T3_KEY)).unwrap();
    assert!(d.start_of_frame && d.end_of_frame && d.new_structure);
    assert_eq!((d.template_id, d.frame_number, d.spatial, d.temporal), (0, 1, 0, 0));
    assert_eq!(d.active_targets, 0b111);
    assert_eq!(d.fdiffs.as_slice(), &[] as &[u16]);
    assert_eq!(d.chain_diffs.as_slice(), &[0]);
    assert_eq!(d.resolution, None);
    let s = st.structure().unwrap();
    assert_eq!((s.template_id_offset, s.decode_targets, s.chains), (0, 3, 1));
    assert_eq!(s.protected_by, vec![0, 0, 0]);
    assert_eq!(s.target_layers, vec![(0, 0), (0, 1), (0, 2)]);
    let layers: Vec<(u8, u8)> = s.templates.iter().map(|t| (t.spatial, t.temporal)).collect();
    assert_eq!(layers, vec![(0, 0), (0, 0), (0, 1), (0, 2), (0, 2)]);
    use Dti::*;
    let dtis: Vec<[Dti; 3]> = s.templates.iter().map(|t| [t.dtis.get(0), t.dtis.get(1), t.dtis.get(2)]).collect();
    assert_eq!(
        dtis,
        vec![
            [Switch, Switch, Switch],
            [Switch, Switch, Switch],
            [NotPresent, Discardable, Switch],
            [NotPresent, NotPresent, Discardable],
            [NotPresent, NotPresent, Discardable]
        ]
    );
    let fdiffs: Vec<&[u16]> = s.templates.iter().map(|t| t.fdiffs.as_slice()).collect();
    assert_eq!(fdiffs, vec![&[][..], &[4], &[2], &[1], &[1]]);
    let chains: Vec<&[u16]> = s.templates.iter().map(|t| t.chain_diffs.as_slice()).collect();
    assert_eq!(chains, vec![&[0][..], &[4], &[2], &[1], &[3]]);
}

#[test]
fn l2t1_vector_spatial_layers_chains_resolutions() {
    let mut st = DdStream::new();
    let d = st.parse(&hex(L2T1_KEY)).unwrap();
    assert_eq!((d.spatial, d.temporal, d.resolution), (0, 0, Some((320, 180))));
    assert_eq!(d.chain_diffs.as_slice(), &[0, 0]);
    let s = st.structure().unwrap();
    assert_eq!((s.decode_targets, s.chains, s.max_spatial()), (2, 2, 1));
    assert_eq!(s.protected_by, vec![0, 1]);
    assert_eq!(s.target_layers, vec![(0, 0), (1, 0)]);
    assert_eq!(s.resolutions, Some(vec![(320, 180), (640, 360)]));
    let fdiffs: Vec<&[u16]> = s.templates.iter().map(|t| t.fdiffs.as_slice()).collect();
    assert_eq!(fdiffs, vec![&[][..], &[2], &[1], &[2, 1]]);
    let chains: Vec<&[u16]> = s.templates.iter().map(|t| t.chain_diffs.as_slice()).collect();
    assert_eq!(chains, vec![&[0, 0][..], &[2, 1], &[1, 1], &[2, 2]]);
    // The S1 delta frame (template 3): not in DT0, required in DT1, at 640x360.
    let d = st.parse(&hex("c3 00 05")).unwrap();
    assert_eq!((d.spatial, d.dtis.get(0), d.dtis.get(1), d.resolution), (1, Dti::NotPresent, Dti::Required, Some((640, 360))));
}

#[test]
fn mandatory_only_packets_use_the_last_structure() {
    let mut st = DdStream::new();
    // No structure yet: nothing to resolve the template against.
    assert_eq!(st.parse(&hex("80 00 02")), Err(DdError::NoStructure));
    st.parse(&hex(L1T3_KEY)).unwrap();
    // Frames 2..5 of the L1T3 pattern: T2, T1, T2, T0 (templates 3, 2, 4, 1).
    let want = [(3, 2, Dti::NotPresent, &[1u16][..]), (2, 1, Dti::NotPresent, &[2]), (4, 2, Dti::NotPresent, &[1]), (1, 0, Dti::Switch, &[4])];
    for (i, (tid, temporal, dt0, fdiffs)) in want.into_iter().enumerate() {
        let frame = i as u32 + 2;
        let d = st.parse(&mandatory(true, false, tid, frame).bytes()).unwrap();
        assert!(d.start_of_frame && !d.end_of_frame && !d.new_structure);
        assert_eq!((d.frame_number, d.temporal, d.dtis.get(0), d.fdiffs.as_slice()), (frame as u16, temporal, dt0, fdiffs));
        assert_eq!(d.dtis.get(2), if temporal == 2 { Dti::Discardable } else { Dti::Switch });
    }
    assert_eq!(st.parse(&mandatory(true, true, 5, 9).bytes()), Err(DdError::UnknownTemplate));
    assert_eq!(st.errors, 2);
}

/// An L2T1-like structure with template id offset 60, two chains, resolutions; optional
/// extended fields toggled by the caller.
fn l2_structure(w: W) -> W {
    let w = w.f(6, 60).f(5, 1); // offset 60, 2 decode targets
    let w = w.f(2, 0).f(2, 2).f(2, 3); // templates S0, S0, S1
    let w = w.f(2, 2).f(2, 2).f(2, 0).f(2, 3).f(2, 0).f(2, 2); // dtis "SS", "-R", "-S"
    let w = w.f(1, 0).f(1, 1).f(4, 0).f(1, 0).f(1, 1).f(4, 1).f(1, 0); // fdiffs {}, {1}, {2}
    let w = w.f(2, 3); // ns(3) = 2 chains: v=1 (w=2 bits, m=1), extra bit 1
    let w = w.f(1, 0).f(1, 1); // DT0 by chain 0, DT1 by chain 1 (ns(2): one bit each)
    let w = w.f(4, 0).f(4, 0).f(4, 1).f(4, 1).f(4, 2).f(4, 1); // chain fdiffs per template
    w.f(1, 1).f(16, 319).f(16, 179).f(16, 639).f(16, 359) // 320x180, 640x360
}

#[test]
fn offset_chains_resolutions_and_custom_fields() {
    let mut st = DdStream::new();
    // Structure, active targets (only DT0), custom DTIs, fdiffs and chains; template id 62
    // = index 2 (S1) at offset 60.
    let w = mandatory(true, false, 62, 0xfffe).f(5, 0b11111);
    let w = l2_structure(w).f(2, 0b01); // active_decode_targets_bitmask: DT0 only
    let w = w.f(2, 1).f(2, 3); // custom DTIs: "DR"
    let w = w.f(2, 1).f(4, 2).f(2, 3).f(12, 299).f(2, 0); // fdiffs 3 and 300
    let w = w.f(8, 7).f(8, 200); // chain fdiffs
    let d = st.parse(&w.bytes()).unwrap();
    assert_eq!((d.frame_number, d.spatial, d.temporal), (0xfffe, 1, 0));
    assert_eq!((d.dtis.get(0), d.dtis.get(1)), (Dti::Discardable, Dti::Required));
    assert_eq!(d.fdiffs.as_slice(), &[3, 300]);
    assert_eq!(d.chain_diffs.as_slice(), &[7, 200]);
    assert_eq!(d.active_targets, 0b01);
    assert_eq!(d.resolution, Some((640, 360)));
    let s = st.structure().unwrap();
    assert_eq!((s.template_id_offset, s.decode_targets, s.chains), (60, 2, 2));
    assert_eq!(s.protected_by, vec![0, 1]);
    assert_eq!(s.target_layers, vec![(0, 0), (1, 0)]);
    assert_eq!(s.resolutions, Some(vec![(320, 180), (640, 360)]));
    assert_eq!(s.templates[1].chain_diffs.as_slice(), &[1, 1]);
    // A later mandatory-only packet: template 60 = index 0, the active mask kept.
    let d = st.parse(&mandatory(false, true, 60, 3).bytes()).unwrap();
    assert_eq!((d.spatial, d.dtis.get(1), d.active_targets, d.resolution), (0, Dti::Switch, 0b01, Some((320, 180))));
    assert_eq!(d.chain_diffs.as_slice(), &[0, 0]);
    // Extended without structure: the active mask changes, template 63 wraps to index 3 (none).
    let w = mandatory(true, true, 61, 4).f(5, 0b01000).f(2, 0b11);
    assert_eq!(st.parse(&w.bytes()).map(|d| d.active_targets), Ok(0b11));
    let w = mandatory(true, true, 63, 5).f(5, 0).f(3, 0);
    assert_eq!(st.parse(&w.bytes()), Err(DdError::UnknownTemplate));
}

#[test]
fn truncated_descriptors_are_refused_and_change_nothing() {
    let full = hex(L1T3_KEY);
    for n in 0..full.len() {
        let mut st = DdStream::new();
        assert!(st.parse(&full[..n]).is_err(), "prefix of {n} bytes");
        assert!(st.structure().is_none(), "prefix of {n} bytes kept a structure");
    }
    // A good structure survives a bad one.
    let mut st = DdStream::new();
    st.parse(&full).unwrap();
    let before = st.structure().cloned();
    assert!(st.parse(&full[..9]).is_err());
    assert_eq!(st.structure().cloned(), before);
}

#[test]
fn limits() {
    // 65 templates in one layer: more than 6-bit ids can name.
    let mut w = mandatory(true, true, 0, 0).f(5, 0b10000).f(6, 0).f(5, 0);
    for _ in 0..MAX_TEMPLATES {
        w = w.f(2, 0);
    }
    let w = w.f(2, 3).f(64, 0);
    assert_eq!(DdStream::new().parse(&w.bytes()), Err(DdError::TooMany));
    // More frame differences than kept.
    let mut st = DdStream::new();
    st.parse(&hex(L1T3_KEY)).unwrap();
    let mut w = mandatory(true, true, 1, 2).f(5, 0b00010);
    for _ in 0..=MAX_FDIFFS {
        w = w.f(2, 1).f(4, 0);
    }
    assert_eq!(st.parse(&w.f(2, 0).bytes()), Err(DdError::TooMany));
    // 32 decode targets: the full active mask.
    assert_eq!(all_targets(32), u32::MAX);
    assert_eq!(all_targets(3), 0b111);
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap deterministic sweep (the fuzz target goes further).
    let mut x = 0x1234_5678u32;
    let mut st = DdStream::new();
    st.parse(&hex(L1T3_KEY)).unwrap();
    for len in 0..40 {
        for _ in 0..200 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = st.parse(&buf);
        }
    }
}
