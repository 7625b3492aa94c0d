//! The SCTP association's input (sctp.rs over sctp-proto): an established association is fed
//! packets made of the fuzzer's bytes as chunks, behind a valid common header (the
//! association's verification tag and a correct CRC32c, so the input reaches the chunk
//! parsers and the state machine rather than the checksum check). No panic, no hang; the
//! association still answers (or reports itself closed) afterwards.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pysfu_native::dcep::Reliability;
use pysfu_native::sctp::{Output, Role, SctpCore, PPID_STRING};

fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

fn packet(vtag: [u8; 4], chunks: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + chunks.len());
    p.extend_from_slice(&5000u16.to_be_bytes());
    p.extend_from_slice(&5000u16.to_be_bytes());
    p.extend_from_slice(&vtag);
    p.extend_from_slice(&[0; 4]);
    p.extend_from_slice(chunks);
    let sum = crc32c(&p);
    p[8..12].copy_from_slice(&sum.to_le_bytes());
    p
}

fn pump(server: &mut SctpCore, client: &mut SctpCore, now: Instant) -> Option<[u8; 4]> {
    let mut vtag = None;
    for _ in 0..8 {
        let to_server = client.poll_packets(now);
        for p in &to_server {
            if p.len() >= 8 {
                vtag = Some([p[4], p[5], p[6], p[7]]);
            }
            server.handle_packet(now, p);
        }
        let to_client = server.poll_packets(now);
        for p in &to_client {
            client.handle_packet(now, p);
        }
        if to_server.is_empty() && to_client.is_empty() {
            break;
        }
    }
    vtag
}

fuzz_target!(|data: &[u8]| {
    let base = Instant::now();
    let mut server = SctpCore::new(Role::Server);
    let mut client = SctpCore::new(Role::Client);
    let mut vtag = pump(&mut server, &mut client, base);
    client.open_stream(0, true, Reliability::Reliable, None);
    client.send(0, PPID_STRING, &Bytes::from_static(b"hello"));
    vtag = pump(&mut server, &mut client, base).or(vtag);
    assert!(server.is_connected());
    let vtag = vtag.expect("the client sent packets");
    // The input: [len u8][chunks...] records, each one packet; a first byte of 0xff also
    // feeds the raw bytes without a header (checksum and all from the fuzzer).
    let mut now = base;
    let mut rest = data;
    if rest.first() == Some(&0xff) {
        server.handle_packet(now, &rest[1..]);
        rest = &[];
    }
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (chunks, next) = tail.split_at(n);
        server.handle_packet(now, &packet(vtag, chunks));
        let _ = server.poll_packets(now);
        now += Duration::from_millis(u64::from(len % 64));
        server.handle_timeout(now);
        rest = next;
    }
    // Still an association: either closed (and said so) or it keeps exchanging with the peer.
    let _ = pump(&mut server, &mut client, now);
    let outputs = server.take_outputs();
    if server.is_closed() {
        assert!(outputs.iter().any(|o| matches!(o, Output::Closed { .. })));
    }
});
