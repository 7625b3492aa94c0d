//! Several workers: datagrams left sealed for the transport's owner worker, protected there
//! (`crate::sealing::Keyring`) into the very bytes one worker protects inline.

use super::*;
use crate::sealing::Keyring;
use crate::workers::owner;

const WORKERS: usize = 2;

/// Host 1 and viewers 2, 3 with consumers 20, 30, on a router of `workers` workers.
fn room_of(workers: usize) -> (Router, Instant, SrtpContext) {
    let now = Instant::now();
    let mut r = router(now);
    r.set_workers(workers);
    let mut out = Output::new();
    host_and_viewers(&mut r, now, 2, &mut out);
    r.add_consumer(now, 20, 2, 10, consumer_spec(0xAAAA, "c0", false), &mut out).unwrap();
    r.add_consumer(now, 30, 3, 10, consumer_spec(0xBBBB, "c1", false), &mut out).unwrap();
    (r, now, peer(1).0)
}

/// What the router made for `n` host packets (the first a key frame), each through `seal`.
fn run(r: &mut Router, now: Instant, host: &mut SrtpContext, n: u16, mut seal: impl FnMut(&mut Router, &mut Vec<Transmit>)) -> Vec<(u16, Vec<u8>)> {
    let mut sent = Vec::new();
    for i in 0..n {
        let mut pkt = rtp_packet(0x1234, 100 + i, VP8_PT, Some("0"), &vp8_payload(i == 0));
        host.protect_rtp(&mut pkt).unwrap();
        let mut out = Output::new();
        r.handle_datagram(now, addr(1000), &pkt, &mut out);
        seal(r, &mut out.transmits);
        sent.extend(out.transmits.iter().map(|t| (t.dest.port(), t.buf.clone())));
    }
    sent
}

/// The worker that protects and sends transport `h`'s datagrams (its stats).
pub(super) fn sending_worker(r: &Router, h: Handle) -> usize {
    match stats(r, h).into_iter().find(|(k, _)| *k == "sendingWorker") {
        Some((_, StatValue::Int(w))) => w as usize,
        other => panic!("transport {h}: sendingWorker {other:?}"),
    }
}

#[test]
fn owners_seal_the_bytes_one_worker_protects_and_keys_follow_the_transport() {
    let (mut inline, now, mut host) = room_of(1);
    assert!(inline.take_key_events().is_empty(), "one worker: protected under the router");
    let want = run(&mut inline, now, &mut host, 30, |_, ts| assert!(ts.iter().all(|t| t.seal.is_none())));

    let (mut r, now, mut host) = room_of(WORKERS);
    let mut rings: Vec<Keyring> = (0..WORKERS).map(|_| Keyring::new()).collect();
    let deliver = |r: &mut Router, rings: &mut [Keyring]| {
        for ev in r.take_key_events() {
            rings[ev.owner()].apply(ev);
        }
    };
    deliver(&mut r, &mut rings);
    let owners: Vec<usize> = (1..=3).map(|h| sending_worker(&r, h)).collect();
    for (h, &o) in (1..=3).zip(&owners) {
        assert!(!rings[o].is_empty(), "transport {h}'s context went to worker {o}");
    }
    let most = (0..WORKERS).map(|w| owners.iter().filter(|&&o| o == w).count());
    assert_eq!(most.max(), Some(2), "three transports over two workers: two and one ({owners:?})");
    assert_eq!(owners[0], owner(&addr(1000).addr, WORKERS), "the first goes where its address hashes");
    assert_eq!(rings.iter().map(Keyring::len).sum::<usize>(), 3);
    let got = run(&mut r, now, &mut host, 30, |r, ts| {
        for t in ts.iter() {
            let s = t.seal.expect("every datagram is left to its owner");
            assert_eq!(s.owner as usize, sending_worker(r, Handle::from(t.dest.port() / 1000)), "the transport's owner seals it");
            assert_eq!(s.rtcp, t.dest.port() == 1000, "RTCP (PLI) toward the host, RTP to viewers");
        }
        for (me, ring) in rings.iter_mut().enumerate() {
            let mut mine: Vec<Transmit> = ts.iter().filter(|t| t.seal.unwrap().owner as usize == me).map(|t| Transmit { dest: t.dest, buf: t.buf.clone(), seal: t.seal }).collect();
            let counts = ring.seal(&mut mine, || None);
            assert_eq!((counts.no_key, counts.failed), (0, 0));
            let mut it = mine.into_iter();
            for t in ts.iter_mut().filter(|t| t.seal.unwrap().owner as usize == me) {
                *t = it.next().unwrap();
            }
        }
    });
    assert_eq!(got, want, "the owners' datagrams are byte for byte those of one worker");
    // Byte counters count what goes on the wire (the tag the owner adds included).
    for h in [1, 2, 3, 20, 30] {
        assert_eq!(stat(&r, h, "bytesSent"), stat(&inline, h, "bytesSent"));
    }

    // A consumer goes: its SSRC state goes at the owner; the transport goes: its context.
    r.remove_consumer(20).unwrap();
    r.remove_transport(3).unwrap();
    let evs = r.take_key_events();
    assert!(evs.iter().any(|e| matches!(e, KeyEvent::Forget { transport: 2, ssrcs, .. } if ssrcs.contains(&0xAAAA))));
    assert!(evs.iter().any(|e| matches!(e, KeyEvent::Remove { transport: 3, .. })));
    for ev in evs {
        rings[ev.owner()].apply(ev);
    }
    assert_eq!(rings.iter().map(Keyring::len).sum::<usize>(), 2, "transport 3's context is gone");
}
