//! Fan-out by owner worker (router/share.rs) under arbitrary interleavings, driven on one
//! thread against a one-worker router fed the same packets and control calls. Each input
//! step is: the ingress worker routes the host's next packet (SRTP with the host's real keys;
//! sequence step, key frame, marker and payload from the input), a worker runs its oldest
//! pending share, or all of them in parts of 1-4 consumers (the same positions of every
//! share's list, the lists taken first, as the engine runs them), or (pending shares run
//! first: a share sees the consumers and layer choices of its packet's time) time passes
//! with the timers, or a viewer's consumer is removed or added. Checked: the ingress worker
//! forwards no owned consumer itself (each owner, itself included, gets a share); a worker's
//! share makes viewer datagrams only for the transports it owns and no further share; and
//! what every destination got (RTP headers, payload; sealing aside) is exactly what one
//! worker sent it, each consumer's stream (SSRC) in the same order.
#![no_main]

mod common;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pysfu_native::router::{Handle, Output, Router, Share, Transmit};
use pysfu_native::srtp::SrtpContext;

const VIEWERS: u16 = 6;
const HOST_SSRC: u32 = 0x1000;

/// What a destination got: the datagram with the SRTP tag removed when one worker protected
/// it (the header is in clear; the payload compared as the router made it: sealed ones are
/// still plain), so both sides compare as (header, length of the plain packet).
/// Kept per destination and SSRC: one consumer's stream keeps its order; the streams of
/// several consumers on one transport may interleave differently when shares run in parts.
type Got = HashMap<(u16, u32), Vec<(Vec<u8>, usize)>>;

fn record(got: &mut Got, ts: &[Transmit], tag: usize) {
    for t in ts {
        let port = t.dest.port();
        if port == 1000 {
            continue; // RTCP toward the host (PLI): timing differs by design
        }
        let plain_len = if t.seal.is_some() { t.buf.len() } else { t.buf.len() - tag };
        let ssrc = t.buf.get(8..12).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        got.entry((port, ssrc)).or_default().push((t.buf[..12.min(t.buf.len())].to_vec(), plain_len));
    }
}

fn room(workers: usize, now: Instant) -> Router {
    let mut r = common::router(now);
    r.set_workers(workers);
    let mut out = Output::new();
    common::connect(&mut r, now, 1, 1000, &mut out);
    for h in 2..2 + Handle::from(VIEWERS) {
        common::connect(&mut r, now, h, 1000 * h as u16, &mut out);
    }
    r.add_producer(now, 10, 1, common::video_spec("0", HOST_SSRC)).expect("producer");
    for h in 2..2 + Handle::from(VIEWERS) {
        r.add_consumer(now, 100 + h, h, 10, common::consumer_spec(0xA000 + h as u32 * 4, "0", 0), &mut out).expect("consumer");
    }
    let _ = r.take_key_events();
    r
}

fn host_packet(tx: &mut SrtpContext, seq: u16, key: bool, marker: bool, len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 96 | if marker { 0x80 } else { 0 }, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    p.extend_from_slice(&HOST_SSRC.to_be_bytes());
    // VP8 descriptor (S=1), then the frame tag: bit 0 clear on key frames.
    p.extend_from_slice(&[0x10, if key { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a]);
    p.extend((0..len).map(|i| i as u8));
    tx.protect_rtp(&mut p).expect("protect");
    p
}

fn check_and_record(r: &mut Router, to: usize, out: &Output, got: &mut Got) {
    assert!(r.take_shares().is_empty(), "a share makes no further share");
    for t in &out.transmits {
        if t.dest.port() != 1000 {
            assert_eq!(t.seal.map(|s| s.owner as usize), Some(to), "a share's worker forwards its own consumers only");
        }
    }
    record(got, &out.transmits, 0);
}

fn run_one(r: &mut Router, now: Instant, share: Share, got: &mut Got) {
    let to = share.to;
    let mut out = Output::new();
    r.act_as(Some(to));
    r.run_share(now, &share, &mut out);
    r.act_as(None);
    check_and_record(r, to, &out, got);
}

/// Worker `w`'s pending shares, all, in parts of `part` consumers (the engine's way).
fn run_in_parts(r: &mut Router, now: Instant, w: usize, queue: &mut VecDeque<Share>, part: usize, got: &mut Got) {
    let shares: Vec<Share> = queue.drain(..).collect();
    let lists: Vec<_> = shares.iter().map(|s| r.share_consumers(s)).collect();
    let longest = lists.iter().flatten().map(|l| l.len()).max().unwrap_or(0);
    for from in (0..longest).step_by(part) {
        let mut out = Output::new();
        r.act_as(Some(w));
        for (s, l) in shares.iter().zip(&lists) {
            let Some(l) = l else { continue };
            r.run_share_part(now, s, &l[from.min(l.len())..(from + part).min(l.len())], &mut out);
        }
        r.act_as(None);
        check_and_record(r, w, &out, got);
    }
}

fn drain(r: &mut Router, now: Instant, pending: &mut [VecDeque<Share>; 2], got: &mut Got) {
    for queue in pending.iter_mut() {
        while let Some(s) = queue.pop_front() {
            run_one(r, now, s, got);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, steps)) = data.split_first() else { return };
    let mut now = Instant::now();
    let mut one = room(1, now);
    let mut two = room(2, now);
    let tag = common::PROFILE.rtp_overhead();
    let ingress = usize::from(first & 1);
    let (mut tx1, mut tx2) = (common::peer_tx(1), common::peer_tx(1));
    let (mut want, mut got): (Got, Got) = (HashMap::new(), HashMap::new());
    let mut pending: [VecDeque<Share>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut seq: u16 = 100;
    let mut next_consumer: Handle = 200;
    let mut live: HashMap<Handle, Vec<Handle>> = (2..2 + Handle::from(VIEWERS)).map(|h| (h, vec![100 + h])).collect();
    for op in steps.chunks_exact(2).take(400) {
        let (kind, b) = (op[0] % 8, op[1]);
        match kind {
            0..=3 => {
                seq = seq.wrapping_add(1 + u16::from(b & 3) / 3);
                let (key, marker, len) = (kind == 0 || seq == 101, b & 4 != 0, usize::from(b >> 3) * 8);
                let mut out = Output::new();
                one.handle_datagram(now, common::addr(1000), &host_packet(&mut tx1, seq, key, marker, len), &mut out);
                record(&mut want, &out.transmits, tag);
                let mut out = Output::new();
                two.act_as(Some(ingress));
                two.handle_datagram(now, common::addr(1000), &host_packet(&mut tx2, seq, key, marker, len), &mut out);
                two.act_as(None);
                assert!(
                    out.transmits.iter().all(|t| t.dest.port() == 1000),
                    "the ingress worker leaves every owned consumer to a share"
                );
                record(&mut got, &out.transmits, 0);
                for s in two.take_shares() {
                    pending[s.to].push_back(s);
                }
            }
            4 => {
                let w = usize::from(b & 1);
                if b & 2 != 0 {
                    run_in_parts(&mut two, now, w, &mut pending[w], 1 + usize::from(b >> 2) % 4, &mut got);
                } else if let Some(s) = pending[w].pop_front() {
                    run_one(&mut two, now, s, &mut got);
                }
            }
            5 => {
                // Time passes (layer choices may change): pending shares run first.
                drain(&mut two, now, &mut pending, &mut got);
                now += Duration::from_millis(u64::from(b));
                let mut out = Output::new();
                one.handle_timeout(now, &mut out);
                let mut out = Output::new();
                two.handle_timeout(now, &mut out);
            }
            _ => {
                // A control call: pending shares run first (their consumers as they were).
                drain(&mut two, now, &mut pending, &mut got);
                let h = 2 + Handle::from(b) % Handle::from(VIEWERS);
                let mut out = Output::new();
                if kind == 6 {
                    if let Some(c) = live.get_mut(&h).and_then(Vec::pop) {
                        one.remove_consumer(c).expect("live consumer");
                        two.remove_consumer(c).expect("live consumer");
                    }
                } else {
                    let c = next_consumer;
                    next_consumer += 1;
                    let spec = common::consumer_spec(0xC000 + c as u32 * 4, "0", 0);
                    one.add_consumer(now, c, h, 10, spec.clone(), &mut out).expect("add");
                    two.add_consumer(now, c, h, 10, spec, &mut Output::new()).expect("add");
                    live.entry(h).or_default().push(c);
                }
                let _ = two.take_key_events();
            }
        }
    }
    drain(&mut two, now, &mut pending, &mut got);
    assert_eq!(got, want, "two workers with shares send every destination what one worker sends");
});
