//! Micro-benchmarks of the per-packet core (criterion): `cargo bench --manifest-path native/Cargo.toml`.
//!
//! - `forward_one/<profile>`: one 1200-byte video packet through unprotect (producer keys),
//!   header-extension rewrite + seq/SSRC/PT patch, protect (consumer keys): the work of a
//!   1 → 1 forward without the router's bookkeeping.
//! - `fanout_1000/<profile>`: one producer packet into `Router::handle_datagram` with 1000
//!   consumers on 1000 transports (sans-IO: the outputs are built, then recycled).
//! - `fanout_1000_send/<profile>/{sendmmsg,sendto}`: the same plus sending the 1000 datagrams
//!   to 1000 loopback sockets, batched (io::send_batch, sendmmsg of 64) or one sendto each.
//! - `aes_ctr/*`, `hmac_sha1/*`: the two halves of AES-CM protection, each implementation.
//!
//! SRTP refuses replays, so every measured packet is a fresh one: packets are encrypted in
//! untimed chunks and only their processing is timed (`iter_custom`).

use std::hint::black_box;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hmac::{Hmac, Mac};
use pysfu_native::aes_ctr::Aes128Ctr;
use pysfu_native::hmac_sha1::{self, HmacSha1Key, Job};
use pysfu_native::io;
use pysfu_native::remote::Remote;
use pysfu_native::router::{
    CodecSpec, ConsumerSpec, EncodingSpec, ExtSpec, KeyFrameMethod, Output, ProducerSpec, Router, SrtpKeys, URI_MID,
};
use pysfu_native::rtp;
use pysfu_native::srtp::{Profile, SrtpContext};
use sha1::Sha1;

const PROFILES: [(&str, Profile); 2] =
    [("gcm", Profile::AeadAes128Gcm), ("cm_sha1_80", Profile::AesCm128HmacSha1_80)];
const SIZE: usize = 1200;
const VP8_PT: u8 = 96;
const ROUTER_PT: u8 = 101;
const ABS_SEND_TIME: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";

fn keys(profile: Profile, seed: u32) -> (Vec<u8>, Vec<u8>) {
    let k = (0..profile.key_len()).map(|i| (seed as usize * 7 + i) as u8).collect();
    let s = (0..profile.salt_len()).map(|i| (seed as usize * 13 + i * 3) as u8).collect();
    (k, s)
}

fn ctx(profile: Profile, seed: u32) -> SrtpContext {
    let (k, s) = keys(profile, seed);
    SrtpContext::new(profile, &k, &s).unwrap()
}

/// A Chrome-like VP8 packet of `SIZE` bytes once protected: MID (id 4) and abs-send-time
/// (id 2) extensions, a delta-frame payload (`key` for a key frame).
fn plain_packet(profile: Profile, seq: u16, key: bool) -> Vec<u8> {
    let mut v = vec![0x90, VP8_PT, 0, 0, 0, 0, 0x10, 0, 0x12, 0x34, 0x56, 0x78];
    v[2..4].copy_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&[0xBE, 0xDE, 0, 2, (4 << 4), b'0', (2 << 4) | 2, 1, 2, 3, 0, 0]);
    let payload = SIZE - v.len() - profile.rtp_overhead();
    let start = v.len();
    v.resize(start + payload, 0xab);
    v[start] = 0x10;
    v[start + 1] = if key { 0x00 } else { 0x01 };
    v[start + 2..start + 5].copy_from_slice(&[0x9d, 0x01, 0x2a]);
    v
}

/// Protected packets continuing the sender's numbering.
fn chunk(sender: &mut SrtpContext, profile: Profile, seq: &mut u16, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let mut p = plain_packet(profile, *seq, false);
            *seq = seq.wrapping_add(1);
            p.reserve(64);
            sender.protect_rtp(&mut p).unwrap();
            p
        })
        .collect()
}

fn forward_one(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward_one");
    g.throughput(Throughput::Elements(1));
    for (name, profile) in PROFILES {
        g.bench_function(name, |b| {
            let mut sender = ctx(profile, 1);
            let mut rx = ctx(profile, 1);
            let mut tx = ctx(profile, 2);
            let mut seq = 1u16;
            let mut scratch = Vec::with_capacity(2048);
            let mut out = Vec::with_capacity(2048);
            let map = |id: u8| match id {
                4 => Some(1u8),
                2 => Some(3u8),
                _ => None,
            };
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let n = left.min(4096);
                    left -= n;
                    let pkts = chunk(&mut sender, profile, &mut seq, n);
                    let t = Instant::now();
                    for (i, p) in pkts.iter().enumerate() {
                        scratch.clear();
                        scratch.extend_from_slice(p);
                        rx.unprotect_rtp(&mut scratch).unwrap();
                        let hdr = rtp::parse(&scratch).unwrap();
                        out.clear();
                        rtp::rewrite_extensions(&mut out, &scratch, &hdr, map, &[(1, b"c0".as_slice())]).unwrap();
                        rtp::set_sequence(&mut out, 1000u16.wrapping_add(i as u16));
                        rtp::set_ssrc(&mut out, 0xAAAA);
                        rtp::set_payload_type(&mut out, ROUTER_PT);
                        tx.protect_rtp(&mut out).unwrap();
                        black_box(&out);
                    }
                    total += t.elapsed();
                }
                total
            });
        });
    }
    g.finish();
}

fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on our own process.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

struct Room {
    router: Router,
    sender: SrtpContext,
    seq: u16,
    host: Remote,
    profile: Profile,
    _sinks: Vec<UdpSocket>,
}

/// Host transport 1 with a VP8 producer, `n` viewer transports with one consumer each, every
/// viewer at its own loopback address (a bound socket nobody reads when `sinks`).
fn room(profile: Profile, n: usize, sinks: bool) -> Room {
    let now = Instant::now();
    let mut r = Router::new(1, now, Duration::from_secs(1_700_000_000));
    let mut out = Output::new();
    let host = Remote::udp("127.0.0.1:9".parse().unwrap());
    let (k1, s1) = keys(profile, 1);
    let (k0, s0) = keys(profile, 0);
    r.add_transport(1, "host", "host-password").unwrap();
    r.set_srtp(now, 1, &SrtpKeys::new(profile.name(), &k0, &s0, &k1, &s1), Some(host), &mut out).unwrap();
    r.bind_tuple(now, 1, host, true, &mut out).unwrap();
    r.add_producer(
        now,
        10,
        1,
        ProducerSpec {
            video: true,
            mid: Some("0".into()),
            codecs: vec![CodecSpec {
                payload_type: VP8_PT,
                mapped_payload_type: ROUTER_PT,
                mime: "video/VP8".into(),
                rtx_payload_type: Some(97),
                mapped_rtx_payload_type: Some(102),
                clock_rate: Some(90000),
            }],
            encodings: vec![EncodingSpec { ssrc: Some(0x1234_5678), rtx_ssrc: None, rid: None, mapped_ssrc: 5555 }],
            header_extensions: vec![
                ExtSpec { id: 4, router_id: Some(1), uri: URI_MID.into() },
                ExtSpec { id: 2, router_id: Some(3), uri: ABS_SEND_TIME.into() },
            ],
            key_frame_request: Some(KeyFrameMethod::Pli),
            paused: false,
            nack: true,
        },
    )
    .unwrap();
    let mut socks = Vec::new();
    for i in 0..n {
        let h = 100 + i as u64;
        let addr = if sinks {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            let a = s.local_addr().unwrap();
            socks.push(s);
            a
        } else {
            SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 5000))
        };
        let addr = Remote::udp(addr);
        let (k, s) = keys(profile, 1000 + i as u32);
        r.add_transport(h, &format!("v{i}"), "viewer-password").unwrap();
        r.set_srtp(now, h, &SrtpKeys::new(profile.name(), &k, &s, &k, &s), Some(addr), &mut out).unwrap();
        r.bind_tuple(now, h, addr, true, &mut out).unwrap();
        r.add_consumer(
            now,
            10_000 + h,
            h,
            10,
            ConsumerSpec {
                ssrc: 0x1000 + i as u32,
                rtx_ssrc: None,
                mid: Some(format!("{i}")),
                mid_ext_id: Some(1),
                payload_types: vec![(ROUTER_PT, ROUTER_PT)],
                paused: false,
                encoding: 0,
                rtx_payload_types: vec![],
                nack: true,
                cname: None,
                pipe_ssrcs: vec![],
                svc: None,
                tcc_ext_id: None,
            },
            &mut out,
        )
        .unwrap();
    }
    out.recycle();
    let mut room = Room { router: r, sender: ctx(profile, 1), seq: 1, host, profile, _sinks: socks };
    // A key frame first: consumers wait for one.
    let mut kf = plain_packet(profile, room.seq, true);
    room.seq += 1;
    room.sender.protect_rtp(&mut kf).unwrap();
    room.router.handle_datagram(now, host, &kf, &mut out);
    assert_eq!(out.transmits.len(), n, "every consumer forwards the key frame");
    out.recycle();
    room
}

#[derive(Clone, Copy)]
enum Send {
    None,
    Batched,
    OneByOne,
}

fn fanout(c: &mut Criterion, group: &str, n: usize, sends: &[(&str, Send)]) {
    raise_fd_limit();
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(4));
    for (pname, profile) in PROFILES {
        for &(sname, send) in sends {
            let id = if sname.is_empty() { pname.to_string() } else { format!("{pname}/{sname}") };
            let mut room = room(profile, n, !matches!(send, Send::None));
            let tx_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            tx_sock.set_nonblocking(true).unwrap();
            let fd = tx_sock.as_raw_fd();
            let mut out = Output::new();
            g.bench_function(&id, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut left = iters as usize;
                    while left > 0 {
                        let k = left.min(64);
                        left -= k;
                        let profile = room.profile;
                        let pkts = chunk(&mut room.sender, profile, &mut room.seq, k);
                        let now = Instant::now();
                        let t = Instant::now();
                        for p in &pkts {
                            room.router.handle_datagram(now, room.host, p, &mut out);
                            match send {
                                Send::None => {}
                                Send::Batched => {
                                    io::send_batch(fd, out.transmits.iter().map(|t| (&t.dest.addr, t.buf.as_slice())));
                                }
                                Send::OneByOne => {
                                    for tr in &out.transmits {
                                        let _ = tx_sock.send_to(&tr.buf, tr.dest.addr);
                                    }
                                }
                            }
                            out.recycle();
                        }
                        total += t.elapsed();
                    }
                    total
                });
            });
        }
    }
    g.finish();
}

fn fanout_1000(c: &mut Criterion) {
    fanout(c, "fanout_1000", 1000, &[("", Send::None)]);
}

fn fanout_1000_send(c: &mut Criterion) {
    fanout(c, "fanout_1000_send", 1000, &[("sendmmsg", Send::Batched), ("sendto", Send::OneByOne)]);
}

/// The two halves of AES-CM protection on a 1,088-byte payload, each path apart:
/// `aes_ctr/{wide,portable}` (VAES/AVX-512 or the aes/ctr crates) and
/// `hmac_sha1/{hmac_crate,lanes_1,lanes_4}` per message (the `hmac` crate, then
/// `hmac_sha1::tags` one and four messages at a time).
fn crypto_parts(c: &mut Criterion) {
    let key = [0x2bu8; 16];
    let iv = [7u8; 16];
    let mut payload = vec![0x5au8; 1088];
    let ctr = Aes128Ctr::new(&key);
    let mut g = c.benchmark_group("aes_ctr");
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("wide", |b| b.iter(|| ctr.apply(black_box(&iv), &mut payload)));
    g.bench_function("portable", |b| b.iter(|| ctr.apply_portable(black_box(&iv), &mut payload)));
    g.finish();

    let packet = vec![0x5au8; 1100];
    let roc = [0, 0, 0, 1];
    let keys: Vec<HmacSha1Key> = (0..4u8).map(|i| HmacSha1Key::new(&[i; 20])).collect();
    let mut g = c.benchmark_group("hmac_sha1");
    g.throughput(Throughput::Elements(1));
    let reference = <Hmac<Sha1> as Mac>::new_from_slice(&[0; 20]).unwrap();
    g.bench_function("hmac_crate", |b| {
        b.iter(|| {
            let mut m = reference.clone();
            m.update(black_box(&packet));
            m.update(&roc);
            black_box(m.finalize().into_bytes())
        })
    });
    g.bench_function("lanes_1", |b| b.iter(|| black_box(keys[0].tag(black_box(&packet), &roc))));
    g.throughput(Throughput::Elements(4));
    g.bench_function("lanes_4", |b| {
        let jobs: Vec<Job<'_>> = keys.iter().map(|key| Job { key, head: &packet, suffix: &roc }).collect();
        let mut out = [[0u8; 20]; 4];
        b.iter(|| {
            hmac_sha1::tags(black_box(&jobs), &mut out);
            black_box(&out);
        })
    });
    g.finish();
}

criterion_group!(benches, forward_one, fanout_1000, fanout_1000_send, crypto_parts);
criterion_main!(benches);
