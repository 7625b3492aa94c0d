//! Several workers, fan-out by owner (`share.rs`): the worker that receives a producer packet
//! forwards it to its own consumers and leaves one share per other owner worker, which
//! forwards it to its consumers; together they send what one worker sends.

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
        for t in &out.transmits {
            if t.dest.port() != 1000 {
                assert_eq!(t.seal.unwrap().owner as usize, ingress, "the ingress worker forwards only its own consumers");
            }
        }
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
        r.run_share(now, share, &mut out);
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
            assert_eq!(targets.len(), 40, "one share per packet for the one other owner");
            assert!(targets.iter().all(|&t| t != ingress));
            for h in [10, 20, 30, 40, 50, 60, 70, 80, 90] {
                assert_eq!(stat(&r, h, "packetsSent"), stat(&inline, h, "packetsSent"), "object {h}");
                assert_eq!(stat(&r, h, "bytesSent"), stat(&inline, h, "bytesSent"), "object {h}");
            }
        }
    }
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
    assert_eq!(shares.len(), 1);
    r.remove_producer(10).unwrap();
    for share in shares {
        let mut out = Output::new();
        r.run_share(now, share, &mut out);
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
