//! RTCP compound validation and typed views of every packet type; in-place SSRC rewriting;
//! builders round trip through the parser (inputs for the builders are taken from the
//! fuzz data too).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pysfu_native::rtcp::{self, Packet, ReportBlock, SenderInfo};

fn u32_at(d: &[u8], i: usize) -> u32 {
    let mut b = [0u8; 4];
    for (k, x) in b.iter_mut().enumerate() {
        *x = d.get(i + k).copied().unwrap_or(k as u8);
    }
    u32::from_be_bytes(b)
}

fn walk(data: &[u8]) -> usize {
    let mut n = 0;
    for p in rtcp::compound(data) {
        let Ok(p) = p else { break };
        n += 1;
        match p {
            Packet::Sr(sr) => n += sr.report_blocks().count(),
            Packet::Rr(rr) => n += rr.report_blocks().count(),
            Packet::Bye(b) => n += b.ssrcs().count(),
            Packet::Nack(k) => n += k.seqs().count(),
            Packet::Fir(f) => n += f.entries().count() + f.ssrcs().count(),
            Packet::Remb(r) => n += r.ssrcs().count(),
            Packet::TransportCc(t) => n += t.fci.len(),
            Packet::Pli(_) | Packet::Sdes | Packet::Other { .. } => {}
        }
    }
    n
}

fuzz_target!(|data: &[u8]| {
    // Parsing arbitrary bytes: validate and compound agree; a bad compound yields one Err.
    let valid = rtcp::validate(data).is_ok();
    let items: Vec<_> = rtcp::compound(data).collect();
    if valid {
        assert!(items.iter().all(|r| r.is_ok()));
    } else {
        assert_eq!(items.len(), 1);
        assert!(items[0].is_err());
    }
    walk(data);
    let _ = rtcp::parse_packet(data);

    // In-place rewriting of each packet keeps the compound valid.
    if valid {
        let mut m = data.to_vec();
        let ranges: Vec<_> = rtcp::raw_packets(data).filter_map(|r| r.ok()).map(|r| r.range).collect();
        for r in ranges {
            let pkt = &mut m[r];
            rtcp::set_sender_ssrc(pkt, 1);
            rtcp::set_media_ssrc(pkt, 2);
            rtcp::set_fir_ssrc(pkt, 3, 4);
        }
        assert!(rtcp::validate(&m).is_ok());
    }

    // Builders: what they write parses back to what was asked.
    let s = u32_at(data, 0);
    let m = u32_at(data, 4);
    let seqs: Vec<u16> = data.chunks_exact(2).take(300).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
    let ssrcs: Vec<u32> = data.chunks_exact(4).take(40).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
    let blocks: Vec<ReportBlock> = data
        .chunks_exact(24)
        .take(40)
        .map(|c| ReportBlock {
            ssrc: u32_at(c, 0),
            fraction_lost: c[4],
            cumulative_lost: (u32_at(c, 4) as i32) >> 8,
            highest_seq: u32_at(c, 8),
            jitter: u32_at(c, 12),
            last_sr: u32_at(c, 16),
            delay_since_last_sr: u32_at(c, 20),
        })
        .collect();

    let mut out = Vec::new();
    rtcp::build_pli(&mut out, s, m);
    assert_eq!(rtcp::parse_packet(&out), Ok(Packet::Pli(rtcp::Pli { sender_ssrc: s, media_ssrc: m })));

    out.clear();
    rtcp::build_nack(&mut out, s, m, &seqs);
    if seqs.is_empty() {
        assert!(out.is_empty());
    } else {
        let Ok(Packet::Nack(n)) = rtcp::parse_packet(&out) else { panic!("nack does not parse") };
        assert_eq!((n.sender_ssrc, n.media_ssrc), (s, m));
        let asked: std::collections::BTreeSet<u16> = seqs.iter().copied().collect();
        let got: std::collections::BTreeSet<u16> = n.seqs().collect();
        assert_eq!(got, asked);
    }

    out.clear();
    let entries: Vec<(u32, u8)> = ssrcs.iter().map(|&x| (x, x as u8)).collect();
    rtcp::build_fir(&mut out, s, &entries);
    if let Ok(Packet::Fir(f)) = rtcp::parse_packet(&out) {
        assert_eq!(f.sender_ssrc, s);
        assert_eq!(f.entries().collect::<Vec<_>>(), entries);
    } else {
        assert!(entries.is_empty(), "fir does not parse");
    }

    out.clear();
    rtcp::build_rr(&mut out, s, &blocks);
    let mut got = Vec::new();
    for p in rtcp::compound(&out) {
        match p {
            Ok(Packet::Rr(rr)) => {
                assert_eq!(rr.sender_ssrc, s);
                got.extend(rr.report_blocks());
            }
            other => panic!("rr compound: {other:?}"),
        }
    }
    assert_eq!(got, blocks);

    out.clear();
    let info = SenderInfo { ssrc: s, ntp: (m as u64) << 32 | s as u64, rtp_timestamp: m, packet_count: s, octet_count: m };
    rtcp::build_sr(&mut out, &info, &blocks);
    rtcp::build_sdes_cname(&mut out, s, data.get(..data.len().min(300)).unwrap_or(&[]));
    rtcp::build_bye(&mut out, &ssrcs);
    rtcp::build_remb(&mut out, s, u64::from(m) * 1000 + u64::from(s), &ssrcs);
    let mut got = Vec::new();
    let mut types = Vec::new();
    for p in rtcp::compound(&out) {
        match p.expect("built compound is valid") {
            Packet::Sr(sr) => {
                assert_eq!(sr.info, info);
                got.extend(sr.report_blocks());
                types.push("sr");
            }
            Packet::Rr(rr) => got.extend(rr.report_blocks()),
            Packet::Sdes => types.push("sdes"),
            Packet::Bye(b) => {
                assert_eq!(b.ssrcs().collect::<Vec<_>>(), ssrcs[..ssrcs.len().min(31)]);
                types.push("bye");
            }
            Packet::Remb(r) => {
                assert_eq!(r.ssrcs().collect::<Vec<_>>(), ssrcs);
                assert!(r.bitrate <= u64::from(m) * 1000 + u64::from(s));
                types.push("remb");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, blocks);
    assert_eq!(types, ["sr", "sdes", "bye", "remb"]);
});
