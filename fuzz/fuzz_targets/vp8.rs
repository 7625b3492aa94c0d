//! VP8 payload descriptor: parse never panics and never reads past the input; what it
//! parses writes back to the same bytes (reserved bits aside) and rewrites in place keep the
//! length and every other field. The temporal filter, fed frames of arbitrary TIDs, sync
//! bits, key frames and target changes in order, forwards a whole frame or none of it and
//! keeps the forwarded PictureIDs contiguous (15 bits) and TL0PICIDX never going back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pysfu_native::vp8::{self, Descriptor, PictureId, TemporalFilter};

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = vp8::parse(data) {
        assert!(d.len < data.len());
        let mut w = Vec::new();
        vp8::write(&d, &mut w);
        assert_eq!(w.len(), d.len);
        // Reserved bits (R in the first octet and the low nibble of X) are not kept.
        let mask = |i: usize| match i {
            0 => 0xb7u8,
            1 => 0xf0,
            _ => 0xff,
        };
        // KEYIDX without T leaves the TID bits, TID without K leaves KEYIDX: not kept either.
        let last = d.len - 1;
        for (i, (a, b)) in data[..d.len].iter().zip(&w).enumerate() {
            let m = if (d.tid.is_some() || d.key_idx.is_some()) && i == last && i >= 2 {
                (if d.tid.is_some() { 0xe0 } else { 0 }) | if d.key_idx.is_some() { 0x1f } else { 0 }
            } else {
                mask(i)
            };
            assert_eq!(a & m, b & m, "octet {i} of {:02x?} written as {w:02x?}", &data[..d.len]);
        }
        let mut c = data.to_vec();
        vp8::rewrite(&mut c, &d, Some(0x1234), Some(0x56));
        let d2 = vp8::parse(&c).expect("rewritten descriptor parses");
        assert_eq!(d2.len, d.len);
        assert_eq!((d2.tid, d2.key_idx, d2.layer_sync, d2.start), (d.tid, d.key_idx, d.layer_sync, d.start));
        assert_eq!(&c[d.len..], &data[d.len..]);
    }

    // Frames in order: op byte = TID (2 bits), Y, key, packets (2 bits), target change.
    let mut f = TemporalFilter::new();
    let mut pic: u16 = u16::from(data.first().copied().unwrap_or(0)) << 7;
    let mut tl0: u8 = data.get(1).copied().unwrap_or(0);
    let mut last_out: Option<(u16, u8)> = None;
    for (n, &op) in data.iter().enumerate().skip(2).take(2000) {
        let tid = op & 3;
        if tid == 0 {
            tl0 = tl0.wrapping_add(1);
        }
        if op & 0x80 != 0 {
            f.set_target((op >> 5) & 3);
        }
        if op & 0x40 != 0 && n % 7 == 0 {
            f.sync();
            last_out = None;
        }
        let d = Descriptor {
            start: true,
            picture_id: Some(PictureId { value: pic, long: true }),
            tl0_pic_idx: Some(tl0),
            tid: Some(tid),
            layer_sync: op & 4 != 0,
            len: 6,
            ..Descriptor::default()
        };
        let key = op & 8 != 0 && tid == 0;
        let ts = (n as u32).wrapping_mul(3000);
        let packets = 1 + ((op >> 4) & 1);
        let first = f.admit(&d, ts, key);
        let mut outs = Vec::new();
        for _ in 0..packets {
            assert_eq!(f.admit(&d, ts, key), first, "one decision per frame");
            if first {
                outs.push(f.map(&d));
            }
        }
        if first {
            let (p, t) = outs[0];
            let (p, t) = (p.expect("PictureID mapped"), t.expect("TL0PICIDX mapped"));
            assert!(outs.iter().all(|o| *o == (Some(p), Some(t))));
            if let Some((lp, lt)) = last_out {
                assert_eq!(p, (lp + 1) & 0x7fff, "PictureID contiguous");
                assert!(t == lt || t == lt.wrapping_add(1), "TL0PICIDX {lt} → {t}");
            }
            last_out = Some((p, t));
            assert_eq!(f.map_again(&d), Some((Some(p), Some(t))));
        }
        pic = (pic + 1) & 0x7fff;
    }
});
