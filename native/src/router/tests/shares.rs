//! Several workers, fan-out by owner (`share.rs`): the worker that receives a producer packet
//! leaves one share per owner worker (itself included), which forwards it to its consumers,
//! whole or in parts; together they send what one worker sends.

use super::*;
use crate::sealing::Keyring;
use super::owners::sending_worker;

const WORKERS: usize = 2;
const VIEWERS: u16 = 8;

/// Host 1 and viewers 2..=9 (consumer 10h on viewer h), on a router of `workers` workers;
/// each worker's key ring holds the contexts of the transports it owns.
fn room_of(workers: usize) -> (Router, Instant, SrtpContext, Vec<Keyring>) {
    room_with(workers, producer_spec(None))
}

/// As `room_of`, producer 10 from `spec`.
fn room_with(workers: usize, spec: ProducerSpec) -> (Router, Instant, SrtpContext, Vec<Keyring>) {
    let now = Instant::now();
    let mut r = router(now);
    r.set_workers(workers);
    let mut out = Output::new();
    connect(&mut r, now, 1, 1000, &mut out);
    for h in 2..2 + VIEWERS {
        connect(&mut r, now, Handle::from(h), 1000 * h, &mut out);
    }
    r.add_producer(now, 10, 1, spec).unwrap();
    for h in 2..2 + VIEWERS as Handle {
        r.add_consumer(now, 10 * h, h, 10, consumer_spec(0xA000 + h as u32, "c0", false), &mut out).unwrap();
    }
    let mut rings: Vec<Keyring> = (0..workers).map(|_| Keyring::new()).collect();
    deliver_keys(&mut r, &mut rings);
    (r, now, peer(1).0, rings)
}

fn deliver_keys(r: &mut Router, rings: &mut [Keyring]) {
    for ev in r.take_key_events() {
        let o = ev.owner();
        rings[o.min(rings.len() - 1)].apply(ev);
    }
}

fn host_packet(host: &mut SrtpContext, seq: u16) -> Vec<u8> {
    let mut pkt = rtp_packet(0x1234, seq, VP8_PT, Some("0"), &vp8_payload(seq == 100));
    host.protect_rtp(&mut pkt).unwrap();
    pkt
}

/// Seal `ts` (everything made by `worker`'s router calls) with the owners' rings, as the
/// engine does; what each destination port got, in order.
fn seal_into(rings: &mut [Keyring], mut ts: Vec<Transmit>, got: &mut HashMap<u16, Vec<Vec<u8>>>) {
    for (me, ring) in rings.iter_mut().enumerate() {
        let mut mine: Vec<Transmit> = ts.iter().filter(|t| t.seal.is_some_and(|s| s.owner as usize == me)).map(|t| Transmit { dest: t.dest, buf: t.buf.clone(), seal: t.seal }).collect();
        let counts = ring.seal(&mut mine, || None);
        assert_eq!((counts.no_key, counts.failed), (0, 0));
        let mut it = mine.into_iter();
        for t in ts.iter_mut().filter(|t| t.seal.is_some_and(|s| s.owner as usize == me)) {
            *t = it.next().unwrap();
        }
    }
    for t in ts {
        got.entry(t.dest.port()).or_default().push(t.buf);
    }
}

/// Viewer ports and what each got, for `n` host packets routed by worker `ingress`; the
/// shares run (by their workers) after each packet, or after all of them (`late`).
fn run_split(ingress: usize, n: u16, late: bool) -> (Router, HashMap<u16, Vec<Vec<u8>>>, Vec<usize>) {
    let (mut r, now, mut host, mut rings) = room_of(WORKERS);
    let mut got = HashMap::new();
    let mut pending = Vec::new();
    let mut share_targets = Vec::new();
    for i in 0..n {
        let mut out = Output::new();
        r.act_as(Some(ingress));
        r.handle_datagram(now, addr(1000), &host_packet(&mut host, 100 + i), &mut out);
        r.act_as(None);
        assert!(
            out.transmits.iter().all(|t| t.dest.port() == 1000),
            "the ingress worker leaves every owned consumer to its owner's share, its own included"
        );
        seal_into(&mut rings, std::mem::take(&mut out.transmits), &mut got);
        pending.extend(r.take_shares());
        if !late {
            run_shares(&mut r, now, &mut rings, &mut pending, &mut got, &mut share_targets);
        }
    }
    run_shares(&mut r, now, &mut rings, &mut pending, &mut got, &mut share_targets);
    (r, got, share_targets)
}

fn run_shares(r: &mut Router, now: Instant, rings: &mut [Keyring], pending: &mut Vec<Share>, got: &mut HashMap<u16, Vec<Vec<u8>>>, targets: &mut Vec<usize>) {
    for share in pending.drain(..) {
        let to = share.to;
        targets.push(to);
        let mut out = Output::new();
        r.act_as(Some(to));
        r.run_share(now, &share, &mut out);
        r.act_as(None);
        assert!(r.take_shares().is_empty(), "a share makes no further shares");
        for t in &out.transmits {
            assert_eq!(t.seal.unwrap().owner as usize, to, "a share's worker forwards its own consumers only");
        }
        seal_into(rings, std::mem::take(&mut out.transmits), got);
    }
}

/// What one worker sends each destination for the same packets.
fn one_worker(n: u16) -> (Router, HashMap<u16, Vec<Vec<u8>>>) {
    let (mut r, now, mut host, _) = room_of(1);
    let mut got: HashMap<u16, Vec<Vec<u8>>> = HashMap::new();
    for i in 0..n {
        let mut out = Output::new();
        r.handle_datagram(now, addr(1000), &host_packet(&mut host, 100 + i), &mut out);
        for t in out.transmits {
            got.entry(t.dest.port()).or_default().push(t.buf);
        }
    }
    (r, got)
}

#[test]
fn each_owner_forwards_its_consumers_and_together_they_send_what_one_worker_sends() {
    let (r, ..) = room_of(WORKERS);
    let owners: Vec<usize> = (2..2 + VIEWERS as Handle).map(|h| sending_worker(&r, h)).collect();
    let host = sending_worker(&r, 1);
    let mine = |w: usize| owners.iter().filter(|&&o| o == w).count() + usize::from(host == w);
    assert_eq!(mine(0) + mine(1), 9);
    assert!(mine(0).abs_diff(mine(1)) == 1, "nine transports over two workers, least loaded first: {owners:?}");
    let (inline, want) = one_worker(40);
    for ingress in 0..WORKERS {
        for late in [false, true] {
            let (r, got, targets) = run_split(ingress, 40, late);
            assert_eq!(got, want, "ingress {ingress}, shares run late: {late}");
            assert_eq!(targets.len(), 80, "one share per packet for each owner");
            for w in 0..WORKERS {
                assert_eq!(targets.iter().filter(|&&t| t == w).count(), 40, "worker {w}'s shares");
            }
            for h in [10, 20, 30, 40, 50, 60, 70, 80, 90] {
                assert_eq!(stat(&r, h, "packetsSent"), stat(&inline, h, "packetsSent"), "object {h}");
                assert_eq!(stat(&r, h, "bytesSent"), stat(&inline, h, "bytesSent"), "object {h}");
            }
        }
    }
}

/// Each worker's shares of `pending`, with their consumer lists taken now, all at once.
fn lists_of(r: &mut Router, pending: Vec<Share>, w: usize) -> Vec<(Share, std::sync::Arc<[Handle]>)> {
    pending.into_iter().filter(|s| s.to == w).map(|s| {
        let l = r.share_consumers(&s).expect("producer");
        (s, l)
    }).collect()
}

/// Run `shares` of worker `w` over consumer positions `at` of each list.
fn run_part(r: &mut Router, now: Instant, w: usize, shares: &[(Share, std::sync::Arc<[Handle]>)], at: std::ops::Range<usize>, rings: &mut [Keyring], got: &mut HashMap<u16, Vec<Vec<u8>>>) {
    let mut out = Output::new();
    r.act_as(Some(w));
    for (s, l) in shares {
        r.run_share_part(now, s, &l[at.start.min(l.len())..at.end.min(l.len())], &mut out);
    }
    r.act_as(None);
    for t in &out.transmits {
        assert_eq!(t.seal.unwrap().owner as usize, w, "a share's worker forwards its own consumers only");
    }
    seal_into(rings, out.transmits, got);
}

#[test]
fn shares_run_in_parts_send_every_consumer_what_one_worker_sends_in_order() {
    let (_, want) = one_worker(12);
    for part in [1usize, 3, 8] {
        let (mut r, now, mut host, mut rings) = room_of(WORKERS);
        let mut got = HashMap::new();
        // Batches of 4 packets; each worker takes a batch's shares and runs them part by
        // part (the same consumer positions of every share), as the engine does.
        for batch in 0..3u16 {
            let mut pending = Vec::new();
            for i in 0..4 {
                let mut out = Output::new();
                r.act_as(Some(0));
                r.handle_datagram(now, addr(1000), &host_packet(&mut host, 100 + batch * 4 + i), &mut out);
                r.act_as(None);
                seal_into(&mut rings, std::mem::take(&mut out.transmits), &mut got);
                pending.extend(r.take_shares());
            }
            assert_eq!(pending.len(), 4 * WORKERS);
            let mut by_worker: Vec<Vec<Share>> = (0..WORKERS).map(|_| Vec::new()).collect();
            for s in pending {
                by_worker[s.to].push(s);
            }
            for (w, shares) in by_worker.into_iter().enumerate() {
                let shares = lists_of(&mut r, shares, w);
                let longest = shares.iter().map(|(_, l)| l.len()).max().unwrap();
                for from in (0..longest).step_by(part) {
                    run_part(&mut r, now, w, &shares, from..from + part, &mut rings, &mut got);
                }
            }
        }
        assert_eq!(got, want, "parts of {part}");
    }
}

#[test]
fn a_consumer_removed_between_parts_is_skipped_and_one_added_starts_with_a_later_packet() {
    let (mut r, now, mut host, mut rings) = room_of(WORKERS);
    let mut out = Output::new();
    r.act_as(Some(0));
    r.handle_datagram(now, addr(1000), &host_packet(&mut host, 100), &mut out);
    r.act_as(None);
    let mut got = HashMap::new();
    let pending = r.take_shares();
    let mut by_worker: Vec<Vec<Share>> = (0..WORKERS).map(|_| Vec::new()).collect();
    for s in pending {
        by_worker[s.to].push(s);
    }
    let runs: Vec<_> = by_worker.into_iter().enumerate().map(|(w, shares)| lists_of(&mut r, shares, w)).collect();
    for (w, shares) in runs.iter().enumerate() {
        run_part(&mut r, now, w, shares, 0..1, &mut rings, &mut got);
    }
    // Between the parts: the last consumer of worker 0's list goes, viewer 11 comes.
    let gone = *runs[0][0].1.last().unwrap();
    assert!(runs[0][0].1.len() > 1);
    r.remove_consumer(gone).unwrap();
    connect(&mut r, now, 11, 11_000, &mut out);
    r.add_consumer(now, 110, 11, 10, consumer_spec(0xB000, "c0", false), &mut out).unwrap();
    deliver_keys(&mut r, &mut rings);
    for (w, shares) in runs.iter().enumerate() {
        run_part(&mut r, now, w, shares, 1..usize::MAX, &mut rings, &mut got);
    }
    let gone_port = (gone * 100) as u16;
    assert!(!got.contains_key(&gone_port), "the removed consumer got nothing");
    assert!(!got.contains_key(&11_000), "the new consumer was not in the lists taken");
    assert_eq!(got.keys().filter(|&&p| p != 1000).count(), VIEWERS as usize - 1);
    // The next packet (a key frame) reaches the new viewer.
    let mut key_frame = rtp_packet(0x1234, 101, VP8_PT, Some("0"), &vp8_payload(true));
    host.protect_rtp(&mut key_frame).unwrap();
    r.act_as(Some(0));
    r.handle_datagram(now, addr(1000), &key_frame, &mut out);
    r.act_as(None);
    for share in r.take_shares() {
        let mut out = Output::new();
        r.act_as(Some(share.to));
        r.run_share(now, &share, &mut out);
        r.act_as(None);
        seal_into(&mut rings, out.transmits, &mut got);
    }
    assert!(got.contains_key(&11_000), "the new viewer got the next packet");
}

#[test]
fn no_acting_worker_forwards_every_consumer_itself() {
    let (mut r, now, mut host, _) = room_of(WORKERS);
    let mut out = Output::new();
    r.handle_datagram(now, addr(1000), &host_packet(&mut host, 100), &mut out);
    assert!(!r.has_shares(), "the plain thread and control calls leave no shares");
    let viewers = out.transmits.iter().filter(|t| t.dest.port() != 1000).count();
    assert_eq!(viewers, VIEWERS as usize);
}

#[test]
fn the_split_follows_consumers_that_come_and_go() {
    let (mut r, now, mut host, mut rings) = room_of(WORKERS);
    let mut out = Output::new();
    // Viewer 11 joins after the split was built: its consumer is forwarded by its owner.
    r.act_as(Some(0));
    r.handle_datagram(now, addr(1000), &host_packet(&mut host, 100), &mut out);
    r.act_as(None);
    let _ = r.take_shares();
    connect(&mut r, now, 11, 11_000, &mut out);
    r.add_consumer(now, 100, 11, 10, consumer_spec(0xB000, "c0", false), &mut out).unwrap();
    r.remove_consumer(20).unwrap();
    deliver_keys(&mut r, &mut rings);
    let mut got = HashMap::new();
    let mut pending = Vec::new();
    let mut targets = Vec::new();
    out.transmits.clear();
    let mut key_frame = rtp_packet(0x1234, 101, VP8_PT, Some("0"), &vp8_payload(true));
    host.protect_rtp(&mut key_frame).unwrap();
    r.act_as(Some(0));
    r.handle_datagram(now, addr(1000), &key_frame, &mut out);
    r.act_as(None);
    seal_into(&mut rings, std::mem::take(&mut out.transmits), &mut got);
    pending.extend(r.take_shares());
    run_shares(&mut r, now, &mut rings, &mut pending, &mut got, &mut targets);
    assert!(got.contains_key(&11_000), "the new viewer got the packet");
    assert!(!got.contains_key(&2000), "the removed consumer did not");
    assert_eq!(got.keys().filter(|&&p| p != 1000).count(), VIEWERS as usize);
}

#[test]
fn a_share_whose_producer_went_forwards_nothing() {
    let (mut r, now, mut host, _) = room_of(WORKERS);
    let mut out = Output::new();
    r.act_as(Some(0));
    r.handle_datagram(now, addr(1000), &host_packet(&mut host, 100), &mut out);
    r.act_as(None);
    let shares = r.take_shares();
    assert_eq!(shares.len(), WORKERS, "a share for each owner");
    r.remove_producer(10).unwrap();
    for share in shares {
        let mut out = Output::new();
        assert!(r.share_consumers(&share).is_none());
        r.run_share(now, &share, &mut out);
        assert!(out.transmits.is_empty());
    }
    assert_eq!(r.counts().consumers, 0);
}

#[test]
fn a_producer_whose_layers_the_descriptor_selects_stays_whole_on_its_ingress_worker() {
    let dd_ext = ExtSpec { id: 5, router_id: Some(8), uri: crate::router::spec::URI_DEPENDENCY_DESCRIPTOR.into() };
    for (mime, dd, splits) in [("video/VP8", true, true), ("video/H264", false, true), ("video/H264", true, false), ("video/AV1", true, false)] {
        let mut spec = producer_spec(None);
        spec.codecs[0].mime = mime.into();
        if dd {
            spec.header_extensions.push(dd_ext.clone());
        }
        let (mut r, now, mut host, _) = room_with(WORKERS, spec);
        // No descriptor on this packet: the producer's path is decided by what it negotiated.
        let mut out = Output::new();
        r.act_as(Some(0));
        // A key frame of the codec (H264 IDR slice, AV1 new coded video sequence, VP8).
        let payload = match mime {
            "video/H264" => vec![0x65, 0x9a, 0x00, 0xab, 0xab],
            "video/AV1" => vec![0x18, 0x32, 0x00, 0xab, 0xab],
            _ => vp8_payload(true),
        };
        let mut pkt = rtp_packet(0x1234, 100, VP8_PT, Some("0"), &payload);
        host.protect_rtp(&mut pkt).unwrap();
        r.handle_datagram(now, addr(1000), &pkt, &mut out);
        r.act_as(None);
        let shares = r.take_shares();
        assert_eq!(!shares.is_empty(), splits, "{mime}, descriptor negotiated: {dd}");
        if !splits {
            let owners: Vec<usize> = out.transmits.iter().filter(|t| t.dest.port() != 1000).filter_map(|t| t.seal.map(|s| s.owner as usize)).collect();
            assert!(owners.contains(&1), "worker 1's consumers' copies are made here, sealed for it: {owners:?}");
        }
    }
}
