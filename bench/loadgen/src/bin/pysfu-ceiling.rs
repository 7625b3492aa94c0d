//! The forwarding ceiling of *this* host: what the cheapest possible SFU egress costs per
//! packet — protect a 1200-byte RTP packet once per consumer and hand it to the kernel with
//! sendmmsg over loopback — with no routing, no lookups, no RTCP. A receiver thread drains every
//! socket (as the load generator's viewers do), so the kernel's loopback delivery that the
//! sender's syscalls pay for is the same as in `make bench`.
//!
//! Usage: pysfu-ceiling [--consumers N] [--pps P] [--seconds S] [--profile gcm|cm|none]
//! Prints one JSON object: CPU µs per sent packet of the sending thread (user/system), its
//! share spent in protect, packets sent/received.

use std::mem;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pysfu_native::srtp::{Profile, SrtpContext};

const PACKET: usize = 1200;
const BATCH: usize = 64;

struct Args {
    consumers: usize,
    pps: u64,
    seconds: f64,
    profile: Option<Profile>,
}

fn parse_args() -> Args {
    let mut a = Args { consumers: 100, pps: 50_000, seconds: 5.0, profile: Some(Profile::AeadAes128Gcm) };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < argv.len() {
        let v = &argv[i + 1];
        match argv[i].as_str() {
            "--consumers" => a.consumers = v.parse().expect("--consumers N"),
            "--pps" => a.pps = v.parse().expect("--pps P"),
            "--seconds" => a.seconds = v.parse().expect("--seconds S"),
            "--profile" => {
                a.profile = match v.as_str() {
                    "gcm" => Some(Profile::AeadAes128Gcm),
                    "cm" => Some(Profile::AesCm128HmacSha1_80),
                    "none" => None,
                    _ => panic!("--profile gcm|cm|none"),
                }
            }
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    a
}

/// CPU time of the calling thread: (user, system) seconds.
fn thread_cpu() -> (f64, f64) {
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}

fn rtp_packet(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; PACKET];
    p[0] = 0x80;
    p[1] = 96;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(seq as u32 * 3000).to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

fn sockaddr(addr: std::net::SocketAddr) -> libc::sockaddr_in {
    let std::net::SocketAddr::V4(v4) = addr else { panic!("IPv4 only") };
    // SAFETY: plain old data.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = v4.port().to_be();
    sa.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
    sa
}

fn send_batch(fd: i32, bufs: &[Vec<u8>], dests: &[libc::sockaddr_in]) {
    let mut iov: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec { iov_base: b.as_ptr() as *mut _, iov_len: b.len() })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = (0..bufs.len())
        .map(|i| {
            // SAFETY: plain old data, fields set below.
            let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
            m.msg_hdr.msg_name = &dests[i] as *const _ as *mut _;
            m.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as u32;
            m.msg_hdr.msg_iov = &mut iov[i];
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut off = 0;
    while off < msgs.len() {
        // SAFETY: msgs/iov point at live buffers for the duration of the call.
        let n = unsafe { libc::sendmmsg(fd, msgs[off..].as_mut_ptr(), (msgs.len() - off) as u32, 0) };
        if n <= 0 {
            break;
        }
        off += n as usize;
    }
}

fn main() {
    let args = parse_args();
    let receivers: Vec<UdpSocket> = (0..args.consumers)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.set_nonblocking(true).expect("nonblocking");
            let size: libc::c_int = 1 << 20;
            // SAFETY: setsockopt with an int option.
            unsafe {
                libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE,
                                 &size as *const _ as *const _, mem::size_of::<libc::c_int>() as u32);
            }
            s
        })
        .collect();
    let dests: Vec<libc::sockaddr_in> = receivers.iter().map(|s| sockaddr(s.local_addr().unwrap())).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));

    // Receiver: drain every socket (one recv per datagram is enough; its CPU is not measured).
    let rx = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let mut got = 0u64;
                for s in &receivers {
                    while s.recv(&mut buf).is_ok() {
                        got += 1;
                    }
                }
                received.fetch_add(got, Ordering::Relaxed);
                if got == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        })
    };

    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let fd = sender.as_raw_fd();
    let mut contexts: Vec<Option<SrtpContext>> = (0..args.consumers)
        .map(|i| {
            args.profile.map(|p| {
                let key = vec![i as u8; p.key_len()];
                let salt = vec![(i >> 8) as u8; p.salt_len()];
                SrtpContext::new(p, &key, &salt).expect("srtp keys")
            })
        })
        .collect();
    let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    let mut batch_dests: Vec<libc::sockaddr_in> = Vec::with_capacity(BATCH);
    let mut pool: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(PACKET + 64)).collect();
    let template = rtp_packet(0x1234_5678, 0);
    let per_input = Duration::from_secs_f64(args.consumers as f64 / args.pps as f64);
    let (u0, s0) = thread_cpu();
    let start = Instant::now();
    let mut next = start;
    let mut protect_time = Duration::ZERO;
    let mut sent = 0u64;
    let mut seq: u16 = 1000;
    while start.elapsed().as_secs_f64() < args.seconds {
        // One input packet, fanned out to every consumer (paced to the requested egress rate).
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        next += per_input;
        seq = seq.wrapping_add(1);
        for (i, ctx) in contexts.iter_mut().enumerate() {
            let mut b = pool.pop().unwrap_or_default();
            b.clear();
            b.extend_from_slice(&template);
            b[2..4].copy_from_slice(&seq.to_be_bytes());
            b[8..12].copy_from_slice(&(0x1000 + i as u32).to_be_bytes());
            if let Some(ctx) = ctx {
                let t = Instant::now();
                ctx.protect_rtp(&mut b).expect("protect");
                protect_time += t.elapsed();
            }
            bufs.push(b);
            batch_dests.push(dests[i]);
            if bufs.len() == BATCH {
                send_batch(fd, &bufs, &batch_dests);
                sent += bufs.len() as u64;
                pool.append(&mut bufs);
                batch_dests.clear();
            }
        }
        if !bufs.is_empty() {
            send_batch(fd, &bufs, &batch_dests);
            sent += bufs.len() as u64;
            pool.append(&mut bufs);
            batch_dests.clear();
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let (u1, s1) = thread_cpu();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    rx.join().unwrap();
    let (user, sys) = (u1 - u0, s1 - s0);
    let per = |x: f64| if sent > 0 { x * 1e6 / sent as f64 } else { 0.0 };
    println!(
        "{{\"profile\":\"{}\",\"consumers\":{},\"target_pps\":{},\"seconds\":{:.2},\"sent\":{},\"received\":{},\
\"pps\":{:.0},\"cpu_us_per_pkt\":{:.3},\"user_us_per_pkt\":{:.3},\"sys_us_per_pkt\":{:.3},\"protect_us_per_pkt\":{:.3},\"sender_cores\":{:.3}}}",
        args.profile.map_or("none", |p| p.name()),
        args.consumers,
        args.pps,
        wall,
        sent,
        received.load(Ordering::Relaxed),
        sent as f64 / wall,
        per(user + sys),
        per(user),
        per(sys),
        per(protect_time.as_secs_f64()),
        (user + sys) / wall,
    );
}
