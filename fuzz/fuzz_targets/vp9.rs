//! VP9 payload descriptor: parse never panics and never reads past the input; a parsed
//! descriptor written back (with its scalability structure) parses to the same fields, and
//! an in-place rewrite of PictureID / TL0PICIDX changes nothing else.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pysfu_native::vp8::PictureId;
use pysfu_native::vp9;

fuzz_target!(|data: &[u8]| {
    let Ok(d) = vp9::parse(data) else { return };
    assert!(d.len < data.len());
    let ss = d.ss.map(|_| vp9::parse_ss(data, &d).expect("a parsed SS reads back"));
    let mut w = Vec::new();
    vp9::write(&d, ss.as_ref(), &mut w);
    assert_eq!(w.len(), d.len, "{:02x?} written as {w:02x?}", &data[..d.len]);
    w.push(0);
    let again = vp9::parse(&w).expect("written descriptor parses");
    assert_eq!(vp9::Descriptor { ss: again.ss, ..d }, again);
    assert_eq!(ss, again.ss.map(|_| vp9::parse_ss(&w, &again).unwrap()));

    let mut c = data.to_vec();
    vp9::rewrite(&mut c, &d, Some(0x2345), Some(0x77));
    let r = vp9::parse(&c).expect("rewritten descriptor parses");
    let pic = d.picture_id.map(|p| PictureId { value: if p.long { 0x2345 } else { 0x45 }, long: p.long });
    assert_eq!(r, vp9::Descriptor { picture_id: pic, tl0_pic_idx: d.tl0_pic_idx.map(|_| 0x77), ..d });
    assert_eq!(&c[d.len..], &data[d.len..]);
});
