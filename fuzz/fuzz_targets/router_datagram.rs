//! The demultiplexer and media path: a set-up room receives a sequence of datagrams from
//! known and unknown addresses, raw or SRTP/SRTCP-protected with the sender's real keys
//! (so the decrypted RTP/RTCP handling is reached). Invariants: no panic, no object is
//! created or removed by datagrams, every transmit goes to a bound tuple, upcalls stay
//! bounded, and each datagram is either forwarded/queued or counted.
#![no_main]

mod common;

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pysfu_native::router::{Output, UP_QUEUE_CAP};

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
    while rest.len() >= 2 {
        let (sel, len) = (rest[0], rest[1] as usize * 2);
        let body = &rest[2..];
        let n = len.min(body.len());
        let mut pkt = body[..n].to_vec();
        rest = &body[n..];
        let who = (sel & 3) as usize;
        let from = if who < 3 { known[who] } else { common::addr(4000 + u16::from(sel >> 4)) };
        // Protect with the sender's keys (RTP, or RTCP when the second byte says so).
        if sel & 4 != 0 && who < 3 {
            let is_rtcp = pkt.get(1).is_some_and(|b| (192..=223).contains(b));
            let _ = if is_rtcp { tx[who].protect_rtcp(&mut pkt) } else { tx[who].protect_rtp(&mut pkt) };
        }
        r.handle_datagram(t, from, &pkt, &mut out);
        for tr in &out.transmits {
            assert!(known.contains(&tr.dest), "transmit to unbound {}", tr.dest);
            assert!(!tr.buf.is_empty());
        }
        out.recycle();
        if sel & 8 != 0 {
            t += Duration::from_millis(400);
            r.handle_timeout(t, &mut out);
            out.recycle();
        }
        if sel & 0x80 != 0 {
            upcalls += r.take_upcalls().len();
        }
    }
    upcalls += r.take_upcalls().len();
    assert!(upcalls <= data.len());
    assert!(!r.has_upcalls());
    assert_eq!(r.counts(), counts);
    let _ = UP_QUEUE_CAP;
    for h in [1, 2, 3, 10, 11, 20, 21, 30] {
        r.stats(h).expect("object still there");
    }
});
