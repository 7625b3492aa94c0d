//! RTP header parse, RFC 8285 extension iteration, extension rewrite round trip, RTX
//! encode/restore round trip, key frame detection: no panic on any input, and every view
//! stays inside the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pysfu_native::rtp;

fuzz_target!(|data: &[u8]| {
    let Ok(hdr) = rtp::parse(data) else { return };
    assert!(hdr.packet_len() <= data.len());
    assert!(hdr.header_len + hdr.payload_len + hdr.padding_len == hdr.packet_len());
    let payload = hdr.payload(data);
    assert_eq!(payload.len(), hdr.payload_len);
    for codec in [rtp::Codec::Vp8, rtp::Codec::Vp9, rtp::Codec::H264, rtp::Codec::Opus] {
        let _ = rtp::is_keyframe(codec, payload);
    }

    let elems: Vec<(u8, Vec<u8>)> = rtp::extensions(data, &hdr).map(|(id, v)| (id, v.to_vec())).collect();
    for (id, v) in &elems {
        assert!(*id != 0);
        let _ = v;
        assert!(rtp::find_extension(data, &hdr, *id).is_some());
    }

    // Rewrite with the identity map: the elements, payload and padding survive.
    let mut out = Vec::new();
    if rtp::rewrite_extensions(&mut out, data, &hdr, Some, &[]).is_ok() {
        let h2 = rtp::parse(&out).expect("rewritten packet parses");
        assert_eq!(h2.payload(&out), payload);
        assert_eq!((h2.sequence, h2.timestamp, h2.ssrc, h2.payload_type), (hdr.sequence, hdr.timestamp, hdr.ssrc, hdr.payload_type));
        // Elements representable in the chosen form come back in order.
        let kept: Vec<(u8, Vec<u8>)> = rtp::extensions(&out, &h2).map(|(id, v)| (id, v.to_vec())).collect();
        let one_byte_ok = elems.iter().all(|(id, v)| (1..=14).contains(id) && (1..=16).contains(&v.len()));
        let expect: Vec<(u8, Vec<u8>)> = if one_byte_ok {
            elems.clone()
        } else {
            elems.iter().filter(|(_, v)| v.len() <= 255).cloned().collect()
        };
        assert_eq!(kept, expect);
    }

    // Fixed-field setters keep the packet parseable with the new values.
    let mut m = data.to_vec();
    rtp::set_sequence(&mut m, hdr.sequence.wrapping_add(1));
    rtp::set_timestamp(&mut m, hdr.timestamp.wrapping_add(1));
    rtp::set_ssrc(&mut m, !hdr.ssrc);
    rtp::set_payload_type(&mut m, (hdr.payload_type + 1) & 0x7f);
    rtp::set_marker(&mut m, !hdr.marker);
    let h3 = rtp::parse(&m).expect("setters keep the header valid");
    assert_eq!(h3.sequence, hdr.sequence.wrapping_add(1));
    assert_eq!(h3.ssrc, !hdr.ssrc);
    assert_eq!(h3.marker, !hdr.marker);
    let ext = rtp::find_extension(data, &hdr, 1).map(|v| v.to_vec());
    if let Some(v) = ext {
        let new = vec![0xA5; v.len()];
        assert!(rtp::set_extension_in_place(&mut m, &h3, 1, &new));
        assert_eq!(rtp::find_extension(&m, &h3, 1), Some(new.as_slice()));
    }

    // RTX round trip.
    let mut rtx = Vec::new();
    if rtp::rtx_encode(&mut rtx, data, 97, 0xdead_beef, 7).is_ok() {
        let mut back = rtx.clone();
        let osn = rtp::rtx_restore(&mut back, hdr.payload_type, hdr.ssrc).expect("restore");
        assert_eq!(osn, hdr.sequence);
        let hb = rtp::parse(&back).expect("restored parses");
        assert_eq!(hb.payload(&back), payload);
        assert_eq!((hb.sequence, hb.ssrc, hb.payload_type), (hdr.sequence, hdr.ssrc, hdr.payload_type));
    }
    let _ = rtp::rtx_decode(data);
});
