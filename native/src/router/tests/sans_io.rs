//! Sans-IO: what the router sends depends only on what it is given (seed, start, wall clock,
//! times and datagrams), so tests and fuzz runs are reproducible.

use super::*;

/// Host 1 → producer 10 → consumer 20 on viewer 2 for one second: media with a gap (an
/// upstream NACK), key frames, the viewer's NACK and PLI, timers (reports, retries). Every
/// datagram the router sent, in order.
fn run(seed: u64, t0: Instant) -> Vec<(Remote, Vec<u8>)> {
    let mut r = Router::new(seed, t0, Duration::from_secs(1_700_000_000));
    let mut out = Output::new();
    host_and_viewers(&mut r, t0, 1, &mut out);
    r.add_consumer(t0, 20, 2, 10, consumer_spec(0xAAAA, "c0", false), &mut out).unwrap();
    let (mut host, _) = peer(1);
    let (mut v2, mut v2_rx) = peer(2);
    let mut first_out = None;
    let mut sent = Vec::new();
    for i in 0..60u16 {
        let now = t0 + Duration::from_millis(20 * u64::from(i));
        if i != 7 {
            let mut pkt = rtp_packet(0x1234, 100 + i, VP8_PT, Some("0"), &vp8_payload(i % 25 == 0));
            host.protect_rtp(&mut pkt).unwrap();
            r.handle_datagram(now, addr(1000), &pkt, &mut out);
        }
        if let (None, Some(t)) = (first_out, out.transmits.iter().find(|t| t.dest.port() == 2000)) {
            let mut b = t.buf.clone();
            v2_rx.unprotect_rtp(&mut b).unwrap();
            first_out = Some(rtp::parse(&b).unwrap().sequence);
        }
        if let (Some(base), 30) = (first_out, i) {
            r.handle_datagram(now, addr(2000), &viewer_rtcp(&mut v2, 0xAAAA, &[base + 3, base + 4], true), &mut out);
        }
        r.handle_timeout(now, &mut out);
        sent.extend(out.transmits.drain(..).map(|t| (t.dest, t.buf)));
    }
    sent
}

#[test]
fn the_same_seed_and_inputs_give_the_same_datagrams() {
    let t0 = Instant::now();
    let a = run(1, t0);
    assert!(a.iter().filter(|(d, _)| d.port() == 2000).count() > 50, "media, reports and retransmissions");
    assert!(a.iter().any(|(d, _)| d.port() == 1000), "feedback toward the host");
    // Another run, started later: the same bytes (times only count relative to the start).
    assert_eq!(a, run(1, t0 + Duration::from_secs(5)));
    // The seed picks the sequence number starts and our RTCP SSRCs.
    assert_ne!(a, run(2, t0));
}
