//! The demultiplexer and media path: a set-up room receives a sequence of datagrams from
//! known and unknown addresses, raw or SRTP/SRTCP-protected with the sender's real keys
//! (so the decrypted RTP/RTCP handling is reached). Invariants: no panic, no object is
//! created or removed by datagrams, every transmit goes to a bound tuple, upcalls stay
//! bounded, and each datagram is either forwarded/queued or counted. Datagrams from unknown
//! addresses may be turned into Binding requests with a transport's valid credentials that
//! ICE then nominates (a spoofed-source nomination): no transmit may ever go to such an
//! address unless an SRTP/SRTCP packet protected with that transport's keys came from it.
#![no_main]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pysfu_native::router::{Counts, Output, MAX_TUPLES, UP_QUEUE_CAP};
use pysfu_native::stun_check;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut r = common::room(now);
    let counts = r.counts();
    let known = [common::addr(1000), common::addr(2000), common::addr(3000)];
    let mut tx = [common::peer_tx(1), common::peer_tx(2), common::peer_tx(3)];
    let mut out = Output::new();
    // Each datagram: [selector, len, bytes...].
    let mut rest = data;
    let mut t = now;
    let mut upcalls = 0usize;
    // Unknown addresses that sent a packet protected with real keys (the residual: a peer
    // with its keys may prove an address it can send from).
    let mut authenticated = HashSet::new();
    while rest.len() >= 2 {
        let (sel, len) = (rest[0], rest[1] as usize * 2);
        let body = &rest[2..];
        let n = len.min(body.len());
        let mut pkt = body[..n].to_vec();
        rest = &body[n..];
        let who = (sel & 3) as usize;
        let from = if who < 3 { known[who] } else { common::addr(4000 + u16::from((sel >> 4) & 7)) };
        // Which transport an unknown address pretends to belong to.
        let owner = if who < 3 { who } else { usize::from((sel >> 4) & 7) % 3 };
        if who == 3 && pkt.first() == Some(&0) {
            // A Binding request with the owner's valid credentials from that address, which
            // ICE (Python) validates and nominates.
            let h = owner as u64 + 1;
            pkt = stun_check::build_binding_request(&format!("{}:x", common::ufrag(h)), common::password(h).as_bytes(), true);
            r.handle_datagram(t, from, &pkt, &mut out);
            r.bind_tuple(t, h, from, true, &mut out).expect("transport exists");
        } else {
            // Protect with the sender's keys (RTP, or RTCP when the second byte says so).
            if sel & 4 != 0 {
                let is_rtcp = pkt.get(1).is_some_and(|b| (192..=223).contains(b));
                let ok = if is_rtcp { tx[owner].protect_rtcp(&mut pkt) } else { tx[owner].protect_rtp(&mut pkt) };
                if ok.is_ok() && who == 3 {
                    authenticated.insert(from);
                }
            }
            r.handle_datagram(t, from, &pkt, &mut out);
        }
        let check = |out: &Output| {
            for tr in &out.transmits {
                assert!(
                    known.contains(&tr.dest) || authenticated.contains(&tr.dest),
                    "transmit to an address that never proved itself: {}",
                    tr.dest
                );
                assert!(!tr.buf.is_empty());
            }
        };
        check(&out);
        out.recycle();
        if sel & 8 != 0 {
            t += Duration::from_millis(400);
            r.handle_timeout(t, &mut out);
            check(&out);
            out.recycle();
        }
        if sel & 0x80 != 0 {
            upcalls += r.take_upcalls().len();
        }
    }
    upcalls += r.take_upcalls().len();
    assert!(upcalls <= data.len());
    assert!(!r.has_upcalls());
    // Datagrams create and remove nothing; tuples come only from the bind_tuple calls above
    // (ICE's validations) and stay bounded per transport.
    let after = r.counts();
    assert!(after.tuples <= 3 * MAX_TUPLES, "tuples unbounded: {}", after.tuples);
    assert_eq!(Counts { tuples: counts.tuples, ..after }, counts);
    let _ = UP_QUEUE_CAP;
    for h in [1, 2, 3, 10, 11, 20, 21, 30] {
        r.stats(t, h).expect("object still there");
    }
});
