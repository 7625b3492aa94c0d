//! pysfu load generator: the per-packet half of `bench/sfu_load.py`.
//!
//! The Python driver does the control work (signaling, ICE binding, DTLS handshakes) over UDP
//! sockets it then hands to this process (inherited file descriptors) together with the SRTP
//! keys it exported. From there everything per packet happens here, in Rust, so that the
//! server is what gets measured:
//!
//! - one producer endpoint sends VP8-like video (frames at `fps`, `video_bitrate`, packets of
//!   `packet_size` bytes, a key frame of `key_frame_packets` packets every
//!   `key_frame_interval` s, each frame as one burst) and Opus-like audio (`audio_pps`), every
//!   packet SRTP-protected, carrying its send time (CLOCK_REALTIME ns) and a per-stream counter
//!   in the payload;
//! - N viewer endpoints receive with recvmmsg (kernel receive timestamps, SO_TIMESTAMPNS),
//!   unprotect every packet, check the SSRC, sequence continuity against the counter, count
//!   loss and take latency = kernel receive time − send time. With `viewer_gro 1` the viewer
//!   sockets take coalesced receive (`UDP_GRO`): a GSO message from the server arrives as one
//!   buffer, split here by its segment size, as a NIC would have carried it off the host.
//!
//! Packets sent inside the measurement window [start+warmup, +duration) are the ones counted.
//! The server's CPU time (utime+stime of its /proc/<pid>/stat), its RSS, the kernel's UDP
//! error counters and the scheduler's run-queue wait of the server's I/O thread and of our
//! receiving thread (/proc/…/schedstat: time runnable but not given a CPU, i.e. starved by the
//! machine) are read at the window's edges. Configuration: text lines on stdin (see
//! `Config::parse`); result: one JSON object on stdout.

use std::collections::HashMap;
use std::io::{self, BufRead};
use std::mem;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pysfu_native::io::send_batch;
use pysfu_native::rtp;
use pysfu_native::srtp::{Profile, SrtpContext};
use pysfu_native::stun_check;

/// Where the probe (send time, counter, kind) sits in every payload: after room for the VP8
/// descriptor and key frame header.
const PROBE_AT: usize = 16;
const PROBE_LEN: usize = 17;
const KIND_VIDEO: u8 = 1;
const KIND_AUDIO: u8 = 2;
/// Latency histogram: 1 µs buckets up to this, then one overflow bucket.
const HIST_US: usize = 200_000;
/// Each viewer's own latency histogram (its median in the JSON's `viewer_p50_ms`, in viewer
/// order): buckets of this many µs, up to `VIEWER_HIST_BUCKETS` of them, then overflow.
const VIEWER_HIST_STEP_US: usize = 20;
const VIEWER_HIST_BUCKETS: usize = 500;
const RECV_BATCH: usize = 32;
const SLOT: usize = 2048;
/// With `viewer_gro` on: a coalesced receive holds up to 64 KiB (one GSO message), so the
/// viewer sockets read fewer, larger slots.
const GRO_BATCH: usize = 8;
const GRO_SLOT: usize = 65_536;
/// `UDP_GRO` (linux/udp.h): the socket option and control message of coalesced receive.
const UDP_GRO: libc::c_int = 104;
/// Sleep of the receiving thread when no socket has data: it polls (epoll_wait without
/// blocking) rather than blocking in epoll_wait.
const POLL_IDLE: Duration = Duration::from_millis(1);

fn die(msg: impl AsRef<str>) -> ! {
    eprintln!("loadgen: {}", msg.as_ref());
    std::process::exit(2)
}

fn realtime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn hex(s: &str) -> Vec<u8> {
    if !s.len().is_multiple_of(2) {
        die(format!("bad hex {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|_| die(format!("bad hex {s:?}"))))
        .collect()
}

struct ProducerCfg {
    fd: RawFd,
    tx_key: Vec<u8>,
    tx_salt: Vec<u8>,
    rx_key: Vec<u8>,
    rx_salt: Vec<u8>,
    video_ssrc: u32,
    audio_ssrc: u32,
    video_pt: u8,
    audio_pt: u8,
    mid_ext: u8,
    ice: Option<Ice>,
}

struct ViewerCfg {
    fd: RawFd,
    rx_key: Vec<u8>,
    rx_salt: Vec<u8>,
    video_ssrc: u32,
    audio_ssrc: u32,
    ice: Option<Ice>,
}

/// An endpoint's ICE credentials (`server_ufrag:our_ufrag`, the server's password): what its
/// consent checks carry.
struct Ice {
    username: String,
    password: String,
}

/// Between two consent checks of one endpoint: Chromium's ping interval on a stable
/// selected pair (RFC 7675 asks for about 5 s; browsers check more often).
const CONSENT_INTERVAL: Duration = Duration::from_millis(2500);

struct Config {
    profile: Profile,
    server: SocketAddr,
    server_pid: u32,
    warmup: f64,
    duration: f64,
    drain: f64,
    video_bitrate: f64,
    packet_size: usize,
    fps: f64,
    key_frame_interval: f64,
    key_frame_packets: usize,
    audio_pps: f64,
    audio_size: usize,
    /// `UDP_GRO` on the viewer sockets: a GSO message the server sent stays one buffer on
    /// loopback instead of being split into datagrams inside the server's send call.
    viewer_gro: bool,
    producer: Option<ProducerCfg>,
    viewers: Vec<ViewerCfg>,
}

impl Config {
    /// One setting per line: `name value...`; `producer` and `viewer` lines describe sockets.
    ///   producer FD TX_KEY TX_SALT RX_KEY RX_SALT VIDEO_SSRC AUDIO_SSRC VIDEO_PT AUDIO_PT MID_EXT
    ///   viewer FD RX_KEY RX_SALT VIDEO_SSRC AUDIO_SSRC
    fn parse(text: impl BufRead) -> Config {
        let mut c = Config {
            profile: Profile::AeadAes128Gcm,
            server: "127.0.0.1:40000".parse().unwrap(),
            server_pid: 0,
            warmup: 3.0,
            duration: 5.0,
            drain: 0.5,
            video_bitrate: 1_500_000.0,
            packet_size: 1200,
            fps: 30.0,
            key_frame_interval: 2.0,
            key_frame_packets: 30,
            audio_pps: 50.0,
            audio_size: 160,
            viewer_gro: false,
            producer: None,
            viewers: Vec::new(),
        };
        for line in text.lines() {
            let line = line.unwrap_or_else(|e| die(format!("stdin: {e}")));
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.is_empty() {
                continue;
            }
            let num = |i: usize| -> f64 {
                f.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| die(format!("bad line {line:?}")))
            };
            match f[0] {
                "profile" => {
                    c.profile = Profile::from_name(f.get(1).copied().unwrap_or(""))
                        .unwrap_or_else(|| die(format!("unknown profile in {line:?}")))
                }
                "server" => {
                    c.server = format!("{}:{}", f.get(1).unwrap_or(&""), f.get(2).unwrap_or(&""))
                        .parse()
                        .unwrap_or_else(|_| die(format!("bad line {line:?}")))
                }
                "server_pid" => c.server_pid = num(1) as u32,
                "warmup" => c.warmup = num(1),
                "duration" => c.duration = num(1),
                "drain" => c.drain = num(1),
                "video_bitrate" => c.video_bitrate = num(1),
                "packet_size" => c.packet_size = num(1) as usize,
                "fps" => c.fps = num(1),
                "key_frame_interval" => c.key_frame_interval = num(1),
                "key_frame_packets" => c.key_frame_packets = num(1) as usize,
                "audio_pps" => c.audio_pps = num(1),
                "audio_size" => c.audio_size = num(1) as usize,
                "viewer_gro" => c.viewer_gro = num(1) != 0.0,
                "producer" => {
                    if f.len() != 11 && f.len() != 13 {
                        die(format!("bad line {line:?}"));
                    }
                    c.producer = Some(ProducerCfg {
                        fd: num(1) as RawFd,
                        tx_key: hex(f[2]),
                        tx_salt: hex(f[3]),
                        rx_key: hex(f[4]),
                        rx_salt: hex(f[5]),
                        video_ssrc: num(6) as u32,
                        audio_ssrc: num(7) as u32,
                        video_pt: num(8) as u8,
                        audio_pt: num(9) as u8,
                        mid_ext: num(10) as u8,
                        ice: (f.len() == 13).then(|| Ice { username: f[11].into(), password: f[12].into() }),
                    });
                }
                "viewer" => {
                    if f.len() != 6 && f.len() != 8 {
                        die(format!("bad line {line:?}"));
                    }
                    c.viewers.push(ViewerCfg {
                        fd: num(1) as RawFd,
                        rx_key: hex(f[2]),
                        rx_salt: hex(f[3]),
                        video_ssrc: num(4) as u32,
                        audio_ssrc: num(5) as u32,
                        ice: (f.len() == 8).then(|| Ice { username: f[6].into(), password: f[7].into() }),
                    });
                }
                other => die(format!("unknown setting {other:?}")),
            }
        }
        if c.producer.is_none() {
            die("no producer line");
        }
        if c.packet_size < 12 + PROBE_AT + PROBE_LEN + 16 || c.audio_size < PROBE_AT + PROBE_LEN {
            die("packet sizes too small for the probe");
        }
        c
    }
}

/// The measurement window in CLOCK_REALTIME ns, shared by all threads.
struct Window {
    start: u64,
    end: u64,
}

impl Window {
    fn contains(&self, t: u64) -> bool {
        t >= self.start && t < self.end
    }
}

#[derive(Default)]
struct SendStats {
    video_sent: u64,
    audio_sent: u64,
    key_frames: u64,
    video_in_window: u64,
    audio_in_window: u64,
    send_failed: u64,
    pli_key_frames: u64,
}

/// Producer: paced frames and audio packets until the window ends.
fn run_sender(cfg: &Config, win: &Window, key_frame_wanted: &AtomicBool) -> SendStats {
    let p = cfg.producer.as_ref().unwrap();
    let mut ctx = SrtpContext::new(cfg.profile, &p.tx_key, &p.tx_salt).unwrap_or_else(|e| die(format!("srtp: {e:?}")));
    let mut st = SendStats::default();
    let payload_size = cfg.packet_size - 12 - 8 - cfg.profile.rtp_overhead(); // 8 = MID extension block
    let frame_interval = 1.0 / cfg.fps;
    let frames_per_key = (cfg.key_frame_interval * cfg.fps).round().max(1.0) as u64;
    // Packets per key-frame interval at the target bitrate, the key frame's share taken out.
    let per_interval = cfg.video_bitrate * cfg.key_frame_interval / 8.0 / cfg.packet_size as f64;
    let delta_packets = ((per_interval - cfg.key_frame_packets as f64) / (frames_per_key - 1).max(1) as f64).max(1.0);
    let audio_interval = 1.0 / cfg.audio_pps;
    let t0 = Instant::now();
    let (mut next_video, mut next_audio) = (0.0f64, 0.0f64);
    let (mut vseq, mut aseq) = (1000u16, 5000u16);
    let (mut vcount, mut acount) = (0u64, 0u64);
    let mut frame = 0u64;
    let mut delta_acc = 0.0f64;
    let mut bufs: Vec<Vec<u8>> = (0..cfg.key_frame_packets.max(64)).map(|_| Vec::with_capacity(1500)).collect();
    let mut out: Vec<(SocketAddr, usize)> = Vec::with_capacity(64);
    let server = cfg.server;
    loop {
        let now_ns = realtime_ns();
        if now_ns >= win.end {
            break;
        }
        let due = next_video.min(next_audio);
        let el = t0.elapsed().as_secs_f64();
        if due > el {
            thread::sleep(Duration::from_secs_f64(due - el));
            continue;
        }
        out.clear();
        let now_ns = realtime_ns();
        let in_window = win.contains(now_ns);
        if next_video <= next_audio {
            let key = frame.is_multiple_of(frames_per_key) || key_frame_wanted.swap(false, Ordering::Relaxed);
            if key && !frame.is_multiple_of(frames_per_key) {
                st.pli_key_frames += 1;
            }
            let n = if key {
                cfg.key_frame_packets
            } else {
                delta_acc += delta_packets;
                let n = delta_acc.floor() as usize;
                delta_acc -= n as f64;
                n.max(1)
            };
            let ts = (frame * 90_000 / cfg.fps as u64) as u32;
            for i in 0..n.min(bufs.len()) {
                let b = &mut bufs[i];
                b.clear();
                // RTP header, one-byte extension block with MID "0".
                b.extend_from_slice(&[0x90, p.video_pt | if i + 1 == n { 0x80 } else { 0 }]);
                b.extend_from_slice(&vseq.to_be_bytes());
                b.extend_from_slice(&ts.to_be_bytes());
                b.extend_from_slice(&p.video_ssrc.to_be_bytes());
                b.extend_from_slice(&[0xBE, 0xDE, 0, 1, p.mid_ext << 4, b'0', 0, 0]);
                let start = b.len();
                b.resize(start + payload_size, 0xAB);
                let pl = &mut b[start..];
                // VP8 payload descriptor: S bit on the frame's first packet; key frame header.
                pl[0] = if i == 0 { 0x10 } else { 0x00 };
                if i == 0 {
                    pl[1..4].copy_from_slice(if key { &[0x00, 0x00, 0x00] } else { &[0x01, 0x00, 0x00] });
                    pl[4..7].copy_from_slice(&[0x9d, 0x01, 0x2a]);
                }
                pl[PROBE_AT..PROBE_AT + 8].copy_from_slice(&now_ns.to_be_bytes());
                pl[PROBE_AT + 8..PROBE_AT + 16].copy_from_slice(&vcount.to_be_bytes());
                pl[PROBE_AT + 16] = KIND_VIDEO;
                if ctx.protect_rtp(b).is_err() {
                    die("protect failed");
                }
                out.push((server, i));
                vseq = vseq.wrapping_add(1);
                vcount += 1;
            }
            st.video_sent += n as u64;
            if in_window {
                st.video_in_window += n as u64;
            }
            if key {
                st.key_frames += 1;
            }
            frame += 1;
            next_video += frame_interval;
        } else {
            let b = &mut bufs[0];
            b.clear();
            b.extend_from_slice(&[0x90, p.audio_pt | 0x80]);
            b.extend_from_slice(&aseq.to_be_bytes());
            b.extend_from_slice(&((acount * 960) as u32).to_be_bytes());
            b.extend_from_slice(&p.audio_ssrc.to_be_bytes());
            b.extend_from_slice(&[0xBE, 0xDE, 0, 1, p.mid_ext << 4, b'1', 0, 0]);
            let start = b.len();
            b.resize(start + cfg.audio_size, 0xCD);
            let pl = &mut b[start..];
            pl[PROBE_AT..PROBE_AT + 8].copy_from_slice(&now_ns.to_be_bytes());
            pl[PROBE_AT + 8..PROBE_AT + 16].copy_from_slice(&acount.to_be_bytes());
            pl[PROBE_AT + 16] = KIND_AUDIO;
            if ctx.protect_rtp(b).is_err() {
                die("protect failed");
            }
            out.push((server, 0));
            aseq = aseq.wrapping_add(1);
            acount += 1;
            st.audio_sent += 1;
            if in_window {
                st.audio_in_window += 1;
            }
            next_audio += audio_interval;
        }
        let r = send_batch(p.fd, out.iter().map(|(d, i)| (d, bufs[*i].as_slice())));
        st.send_failed += r.failed as u64;
    }
    st
}

/// Consent freshness checks (RFC 7675) as browsers send them on their selected pair: one
/// Binding request per endpoint every CONSENT_INTERVAL, spread evenly, until `stop_at`.
/// Their answers come to the endpoints' sockets and are ignored there. Returns how many.
fn run_consent(cfg: &Config, stop_at: u64) -> u64 {
    let producer = cfg.producer.iter().filter_map(|p| p.ice.as_ref().map(|i| (p.fd, i)));
    let who: Vec<(RawFd, &Ice)> = producer.chain(cfg.viewers.iter().filter_map(|v| v.ice.as_ref().map(|i| (v.fd, i)))).collect();
    if who.is_empty() {
        return 0;
    }
    let gap = CONSENT_INTERVAL / who.len() as u32;
    let mut sent = 0u64;
    for (fd, ice) in who.iter().cycle() {
        if realtime_ns() >= stop_at {
            break;
        }
        let req = stun_check::build_binding_request(&ice.username, ice.password.as_bytes(), true);
        send_batch(*fd, std::iter::once((&cfg.server, req.as_slice())));
        sent += 1;
        thread::sleep(gap);
    }
    sent
}

#[derive(Default, Clone, Copy)]
struct StreamState {
    last_seq: Option<u16>,
    last_counter: u64,
    received_window: u64,
    seq_errors: u64,
    reordered: u64,
}

struct Viewer {
    ctx: SrtpContext,
    video_ssrc: u32,
    audio_ssrc: u32,
    video: StreamState,
    audio: StreamState,
    hist: Vec<u32>,
}

#[derive(Default)]
struct RecvStats {
    /// Coalesced (`UDP_GRO`) messages read on viewer sockets.
    coalesced: u64,
    rtp: u64,
    rtcp: u64,
    rtcp_bad: u64,
    decrypt_errors: u64,
    unknown_ssrc: u64,
    malformed: u64,
    late_or_early: u64,
    video_window: u64,
    audio_window: u64,
    seq_errors: u64,
    reordered: u64,
    producer_rtcp: u64,
    plis: u64,
    recv_calls: u64,
    other: u64,
    /// RTP datagrams whose kernel receive time lies in the window (what the server sent then).
    arrived_window: u64,
    /// Receive − send time over every RTP datagram (warm-up and late ones included), µs: a
    /// backlog (server or machine falling behind) shows here even when nothing sent in the
    /// window arrived in time to count.
    lag_sum_us: u64,
    lag_max_us: u64,
    lag_n: u64,
}

struct Batch {
    bufs: Vec<u8>,
    ctrl: Vec<u64>,
    slot: usize,
    count: usize,
    lens: [usize; RECV_BATCH],
    stamps: [u64; RECV_BATCH],
    /// The segment size of a coalesced (`UDP_GRO`) message; 0 for a single datagram.
    segs: [usize; RECV_BATCH],
}

const CTRL_WORDS: usize = 12; // 96 bytes: one SCM_TIMESTAMPNS and one UDP_GRO message

impl Batch {
    /// `count` messages of up to `slot` bytes per recvmmsg.
    fn new(count: usize, slot: usize) -> Self {
        assert!(count <= RECV_BATCH);
        Batch {
            bufs: vec![0; count * slot],
            ctrl: vec![0; count * CTRL_WORDS],
            slot,
            count,
            lens: [0; RECV_BATCH],
            stamps: [0; RECV_BATCH],
            segs: [0; RECV_BATCH],
        }
    }

    /// The datagrams of message `i`: one, or the segments of a coalesced message.
    fn datagrams(&self, i: usize) -> impl Iterator<Item = &[u8]> {
        let msg = &self.bufs[i * self.slot..i * self.slot + self.lens[i]];
        let seg = if self.segs[i] == 0 { msg.len().max(1) } else { self.segs[i] };
        msg.chunks(seg)
    }

    /// One non-blocking recvmmsg with kernel receive timestamps; 0 when nothing waits.
    fn recv(&mut self, fd: RawFd) -> usize {
        let mut iov: [libc::iovec; RECV_BATCH] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; RECV_BATCH];
        // SAFETY: mmsghdr is plain old data.
        let mut msgs: [libc::mmsghdr; RECV_BATCH] = unsafe { mem::zeroed() };
        for i in 0..self.count {
            // SAFETY: slot i lies within bufs / ctrl.
            iov[i].iov_base = unsafe { self.bufs.as_mut_ptr().add(i * self.slot) } as *mut libc::c_void;
            iov[i].iov_len = self.slot;
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = unsafe { self.ctrl.as_mut_ptr().add(i * CTRL_WORDS) } as *mut libc::c_void;
            msgs[i].msg_hdr.msg_controllen = CTRL_WORDS * 8;
        }
        // SAFETY: all pointers refer to live buffers of the right sizes.
        let n = unsafe { libc::recvmmsg(fd, msgs.as_mut_ptr(), self.count as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if n <= 0 {
            return 0;
        }
        let n = n as usize;
        #[allow(clippy::needless_range_loop)]
        for i in 0..n {
            self.lens[i] = (msgs[i].msg_len as usize).min(self.slot);
            self.stamps[i] = 0;
            self.segs[i] = 0;
            let hdr = &msgs[i].msg_hdr;
            // SAFETY: walking the control buffer the kernel filled, with the libc macros.
            unsafe {
                let mut cm = libc::CMSG_FIRSTHDR(hdr);
                while !cm.is_null() {
                    if (*cm).cmsg_level == libc::SOL_SOCKET && (*cm).cmsg_type == libc::SCM_TIMESTAMPNS {
                        let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cm) as *const libc::timespec);
                        self.stamps[i] = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
                    } else if (*cm).cmsg_level == libc::SOL_UDP && (*cm).cmsg_type == UDP_GRO {
                        let seg = std::ptr::read_unaligned(libc::CMSG_DATA(cm) as *const libc::c_int);
                        self.segs[i] = seg.max(0) as usize;
                    }
                    cm = libc::CMSG_NXTHDR(hdr, cm);
                }
            }
        }
        n
    }
}

fn check_stream(s: &mut StreamState, seq: u16, counter: u64, in_window: bool, stats: &mut RecvStats) {
    if let Some(last) = s.last_seq {
        if counter <= s.last_counter {
            s.reordered += 1;
            stats.reordered += 1;
            return;
        }
        // Output numbering must advance exactly as the producer's counter did.
        let want = last.wrapping_add((counter - s.last_counter) as u16);
        if want != seq {
            s.seq_errors += 1;
            stats.seq_errors += 1;
        }
    }
    s.last_seq = Some(seq);
    s.last_counter = counter;
    if in_window {
        s.received_window += 1;
    }
}

struct Receiver {
    viewers: Vec<Viewer>,
    fds: Vec<RawFd>,
    producer_fd: RawFd,
    producer_rx: SrtpContext,
    producer_video_ssrc: u32,
    hist: Vec<u64>,
    stats: RecvStats,
    /// Viewer sockets read with `UDP_GRO` on (`viewer_gro`).
    viewer_gro: bool,
}

impl Receiver {
    fn on_viewer_packet(&mut self, vi: usize, data: &[u8], stamp: u64, win: &Window, buf: &mut Vec<u8>) {
        let v = &mut self.viewers[vi];
        if !data.first().is_some_and(|b| (128..=191).contains(b)) {
            // A late DTLS retransmission or STUN: not media.
            self.stats.other += 1;
            return;
        }
        buf.clear();
        buf.extend_from_slice(data);
        if data.len() >= 2 && (192..=223).contains(&data[1]) {
            self.stats.rtcp += 1;
            if v.ctx.unprotect_rtcp(buf).is_err() {
                self.stats.rtcp_bad += 1;
            }
            return;
        }
        self.stats.rtp += 1;
        if win.contains(stamp) {
            self.stats.arrived_window += 1;
        }
        if v.ctx.unprotect_rtp(buf).is_err() {
            self.stats.decrypt_errors += 1;
            return;
        }
        let Ok(hdr) = rtp::parse(buf) else {
            self.stats.malformed += 1;
            return;
        };
        let pl = hdr.payload(buf);
        if pl.len() < PROBE_AT + PROBE_LEN {
            self.stats.malformed += 1;
            return;
        }
        let sent = u64::from_be_bytes(pl[PROBE_AT..PROBE_AT + 8].try_into().unwrap());
        let counter = u64::from_be_bytes(pl[PROBE_AT + 8..PROBE_AT + 16].try_into().unwrap());
        let kind = pl[PROBE_AT + 16];
        let in_window = win.contains(sent);
        let lag_us = stamp.saturating_sub(sent) / 1000;
        self.stats.lag_sum_us += lag_us;
        self.stats.lag_max_us = self.stats.lag_max_us.max(lag_us);
        self.stats.lag_n += 1;
        let stream = match kind {
            KIND_VIDEO if hdr.ssrc == v.video_ssrc => &mut v.video,
            KIND_AUDIO if hdr.ssrc == v.audio_ssrc => &mut v.audio,
            _ => {
                self.stats.unknown_ssrc += 1;
                return;
            }
        };
        check_stream(stream, hdr.sequence, counter, in_window, &mut self.stats);
        if in_window {
            if kind == KIND_VIDEO {
                self.stats.video_window += 1;
            } else {
                self.stats.audio_window += 1;
            }
            let us = (stamp.saturating_sub(sent) / 1000) as usize;
            self.hist[us.min(HIST_US)] += 1;
            v.hist[(us / VIEWER_HIST_STEP_US).min(VIEWER_HIST_BUCKETS)] += 1;
        } else {
            self.stats.late_or_early += 1;
        }
    }

    fn on_producer_packet(&mut self, data: &[u8], buf: &mut Vec<u8>, key_frame_wanted: &AtomicBool) {
        if data.len() < 2 || !(192..=223).contains(&data[1]) {
            return;
        }
        self.stats.producer_rtcp += 1;
        buf.clear();
        buf.extend_from_slice(data);
        if self.producer_rx.unprotect_rtcp(buf).is_err() {
            self.stats.rtcp_bad += 1;
            return;
        }
        // PLI (PSFB, FMT 1) or FIR (FMT 4) for our video: next frame is a key frame.
        let mut pos = 0;
        while pos + 12 <= buf.len() {
            let fmt = buf[pos] & 0x1f;
            let pt = buf[pos + 1];
            let words = u16::from_be_bytes([buf[pos + 2], buf[pos + 3]]) as usize;
            let media = u32::from_be_bytes(buf[pos + 8..pos + 12].try_into().unwrap());
            if pt == 206 && (fmt == 1 || fmt == 4) && (fmt == 4 || media == self.producer_video_ssrc) {
                self.stats.plis += 1;
                key_frame_wanted.store(true, Ordering::Relaxed);
            }
            pos += 4 * (words + 1);
        }
    }

    fn run(&mut self, win: &Window, stop_at: u64, key_frame_wanted: &AtomicBool) {
        // SAFETY: plain epoll set-up on fds this process owns.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            die("epoll_create1 failed");
        }
        let token_producer = u64::MAX;
        let add = |fd: RawFd, token: u64| {
            let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
            // SAFETY: valid epoll fd and event.
            if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
                die(format!("epoll_ctl({fd}): {}", io::Error::last_os_error()));
            }
        };
        for (i, &fd) in self.fds.iter().enumerate() {
            add(fd, i as u64);
        }
        add(self.producer_fd, token_producer);
        let mut events: Vec<libc::epoll_event> = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut batch = Batch::new(RECV_BATCH, SLOT);
        let mut gro_batch = Batch::new(GRO_BATCH, GRO_SLOT);
        let mut buf = Vec::with_capacity(GRO_SLOT);
        while realtime_ns() < stop_at {
            // SAFETY: events buffer of the given length.
            let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 0) };
            if n == 0 {
                thread::sleep(POLL_IDLE);
                continue;
            }
            for e in events.iter().take(n.max(0) as usize) {
                let token = e.u64;
                let fd = if token == token_producer { self.producer_fd } else { self.fds[token as usize] };
                let batch = if token != token_producer && self.viewer_gro { &mut gro_batch } else { &mut batch };
                loop {
                    let got = batch.recv(fd);
                    self.stats.recv_calls += 1;
                    for i in 0..got {
                        if token == token_producer {
                            let data = &batch.bufs[i * batch.slot..i * batch.slot + batch.lens[i]];
                            self.on_producer_packet(data, &mut buf, key_frame_wanted);
                            continue;
                        }
                        let stamp = if batch.stamps[i] != 0 { batch.stamps[i] } else { realtime_ns() };
                        if batch.segs[i] != 0 {
                            self.stats.coalesced += 1;
                        }
                        for data in batch.datagrams(i) {
                            self.on_viewer_packet(token as usize, data, stamp, win, &mut buf);
                        }
                    }
                    if got < batch.count {
                        break;
                    }
                }
            }
        }
        // SAFETY: closing our epoll fd.
        unsafe { libc::close(ep) };
    }
}

fn percentile(hist: &[u64], q: f64) -> Option<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut acc = 0;
    for (us, &c) in hist.iter().enumerate() {
        acc += c;
        if acc >= rank {
            return Some(us as f64 / 1000.0);
        }
    }
    None
}

/// utime + stime of a process, seconds.
fn proc_cpu(pid: &str) -> f64 {
    let (u, s) = proc_cpu_split(pid);
    u + s
}

/// (utime, stime) of a process or thread (`pid` or `pid/task/tid`), seconds.
fn proc_cpu_split(pid: &str) -> (f64, f64) {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return (f64::NAN, f64::NAN) };
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else { return (f64::NAN, f64::NAN) };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    (ut / tick, st / tick)
}

/// (user, system) CPU seconds of the process's threads named `comm` (the engine's I/O
/// thread: pysfu-io); the split shows how much of the forwarding cost is the kernel's.
fn thread_cpu(pid: u32, comm: &str) -> (f64, f64) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return (f64::NAN, f64::NAN) };
    let (mut user, mut sys) = (0.0, 0.0);
    for e in dir.flatten() {
        let tid = e.file_name().to_string_lossy().to_string();
        let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
        if name.trim() == comm {
            let (u, s) = proc_cpu_split(&format!("{pid}/task/{tid}"));
            user += u;
            sys += s;
        }
    }
    (user, sys)
}

/// (on-CPU, runnable-but-waiting) seconds of the process's threads named `comm`, from
/// /proc/<pid>/task/<tid>/schedstat: with the window's length they tell whether a thread that
/// falls behind was starved of CPU by the machine (waiting on the run queue) or idle.
fn thread_sched(pid: u32, comm: &str) -> (f64, f64) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return (f64::NAN, f64::NAN) };
    let (mut run, mut wait) = (0u64, 0u64);
    for e in dir.flatten() {
        let tid = e.file_name().to_string_lossy().to_string();
        let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
        if name.trim() != comm {
            continue;
        }
        let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).unwrap_or_default();
        let f: Vec<u64> = s.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        run += f.first().copied().unwrap_or(0);
        wait += f.get(1).copied().unwrap_or(0);
    }
    (run as f64 / 1e9, wait as f64 / 1e9)
}

fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn self_cpu() -> f64 {
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// The kernel's UDP counters (/proc/net/snmp "Udp:" lines) by name.
fn udp_snmp() -> HashMap<String, u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    let mut out = HashMap::new();
    if lines.len() >= 2 {
        for (k, v) in lines[0].split_whitespace().zip(lines[1].split_whitespace()).skip(1) {
            out.insert(k.to_string(), v.parse().unwrap_or(0));
        }
    }
    out
}

/// Discard the datagrams waiting on `fd`; how many.
fn drain(fd: RawFd) -> u64 {
    let mut buf = [0u8; SLOT];
    let mut n = 0;
    // SAFETY: receiving into a local buffer of the given length.
    while unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), libc::MSG_DONTWAIT) } >= 0 {
        n += 1;
    }
    n
}

fn setsockopt_int(fd: RawFd, opt: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: pointer to a c_int and its size.
    unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, opt, &value as *const _ as *const libc::c_void, 4) == 0
    }
}

fn main() {
    let cfg = Config::parse(io::stdin().lock());
    let p = cfg.producer.as_ref().unwrap();
    for v in &cfg.viewers {
        if !setsockopt_int(v.fd, libc::SO_TIMESTAMPNS, 1) {
            die(format!("SO_TIMESTAMPNS on fd {}: {}", v.fd, io::Error::last_os_error()));
        }
        // Room for a key frame burst while the receiver thread is busy elsewhere.
        if !setsockopt_int(v.fd, libc::SO_RCVBUFFORCE, 1 << 20) {
            setsockopt_int(v.fd, libc::SO_RCVBUF, 1 << 20);
        }
        if cfg.viewer_gro {
            let on: libc::c_int = 1;
            // SAFETY: pointer to a c_int and its size.
            let r = unsafe { libc::setsockopt(v.fd, libc::SOL_UDP, UDP_GRO, &on as *const _ as *const libc::c_void, 4) };
            if r != 0 {
                die(format!("UDP_GRO on fd {}: {}", v.fd, io::Error::last_os_error()));
            }
        }
    }
    // What the server sent the silent producer during the set-up (a key frame request each
    // second while the consumers waited for their first key frame: one per second of set-up)
    // is stale: answered now, it would add a second key-frame burst right after the first.
    let producer_stale = drain(p.fd);
    let viewers: Vec<Viewer> = cfg
        .viewers
        .iter()
        .map(|v| Viewer {
            ctx: SrtpContext::new(cfg.profile, &v.rx_key, &v.rx_salt).unwrap_or_else(|e| die(format!("srtp: {e:?}"))),
            video_ssrc: v.video_ssrc,
            audio_ssrc: v.audio_ssrc,
            video: StreamState::default(),
            audio: StreamState::default(),
            hist: vec![0; VIEWER_HIST_BUCKETS + 1],
        })
        .collect();
    let now = realtime_ns();
    let start = now + (cfg.warmup * 1e9) as u64;
    let win = Arc::new(Window { start, end: start + (cfg.duration * 1e9) as u64 });
    let stop_at = win.end + (cfg.drain * 1e9) as u64;
    let key_frame_wanted = Arc::new(AtomicBool::new(false));
    let mut receiver = Receiver {
        viewers,
        fds: cfg.viewers.iter().map(|v| v.fd).collect(),
        producer_fd: p.fd,
        producer_rx: SrtpContext::new(cfg.profile, &p.rx_key, &p.rx_salt).unwrap_or_else(|e| die(format!("srtp: {e:?}"))),
        producer_video_ssrc: p.video_ssrc,
        hist: vec![0; HIST_US + 1],
        stats: RecvStats::default(),
        viewer_gro: cfg.viewer_gro,
    };
    let cfg = Arc::new(cfg);
    let (w2, k2) = (win.clone(), key_frame_wanted.clone());
    let rx_thread = thread::Builder::new()
        .name("loadgen-rx".into())
        .spawn(move || {
            receiver.run(&w2, stop_at, &k2);
            receiver
        })
        .unwrap();
    let (c3, w3, k3) = (cfg.clone(), win.clone(), key_frame_wanted.clone());
    let tx_thread = thread::Builder::new().name("loadgen-tx".into()).spawn(move || run_sender(&c3, &w3, &k3)).unwrap();
    let c4 = cfg.clone();
    let consent_thread = thread::Builder::new().name("loadgen-ice".into()).spawn(move || run_consent(&c4, stop_at)).unwrap();

    let sleep_until = |t: u64| {
        let now = realtime_ns();
        if t > now {
            thread::sleep(Duration::from_nanos(t - now));
        }
    };
    let pid = cfg.server_pid;
    sleep_until(win.start);
    let ps = pid.to_string();
    let me = std::process::id();
    // The server's main thread (tid = pid): the Python control plane.
    let main_task = format!("{pid}/task/{pid}");
    let py0 = proc_cpu(&main_task);
    let (cpu0, io0, self0, snmp0, t0) = (proc_cpu(&ps), thread_cpu(pid, "pysfu-io"), self_cpu(), udp_snmp(), realtime_ns());
    let (ios0, rxs0) = (thread_sched(pid, "pysfu-io"), thread_sched(me, "loadgen-rx"));
    sleep_until(win.end);
    let (cpu1, io1, self1, snmp1, t1) = (proc_cpu(&ps), thread_cpu(pid, "pysfu-io"), self_cpu(), udp_snmp(), realtime_ns());
    let (ios1, rxs1) = (thread_sched(pid, "pysfu-io"), thread_sched(me, "loadgen-rx"));
    let py1 = proc_cpu(&main_task);
    let rss = proc_rss_kib(pid);
    let sent = tx_thread.join().unwrap();
    let rx = rx_thread.join().unwrap();
    let consent_sent = consent_thread.join().unwrap();

    let n = rx.viewers.len() as u64;
    let elapsed = (t1 - t0) as f64 / 1e9;
    let expected_video = sent.video_in_window * n;
    let expected_audio = sent.audio_in_window * n;
    let received = rx.stats.video_window + rx.stats.audio_window;
    let arrived = rx.stats.arrived_window;
    let expected = expected_video + expected_audio;
    let server_cpu = cpu1 - cpu0;
    let d = |k: &str| snmp1.get(k).copied().unwrap_or(0).saturating_sub(snmp0.get(k).copied().unwrap_or(0));
    let viewers_with_loss = rx
        .viewers
        .iter()
        .filter(|v| v.video.received_window < sent.video_in_window || v.audio.received_window < sent.audio_in_window)
        .count();
    let opt = |v: Option<f64>| v.map_or("null".to_string(), |x| format!("{x:.3}"));
    let st = &rx.stats;
    println!(
        concat!(
            "{{\"viewers\": {}, \"profile\": \"{}\", \"seconds\": {:.3}, ",
            "\"producer_sent\": {{\"video\": {}, \"audio\": {}, \"key_frames\": {}, \"video_window\": {}, \"audio_window\": {}, \"send_failed\": {}, \"pli_key_frames\": {}}}, ",
            "\"expected\": {}, \"received\": {}, \"lost\": {}, \"loss\": {:.6}, \"viewers_with_loss\": {}, ",
            "\"forwarded_pps\": {:.0}, \"server_cpu_s\": {:.3}, \"server_cpu_share\": {:.3}, \"server_us_per_packet\": {:.3}, \"server_io_thread_cpu_s\": {:.3}, \"server_io_thread_sys_s\": {:.3}, \"server_main_thread_cpu_s\": {:.3}, ",
            "\"server_io_thread_runqueue_s\": {:.3}, \"loadgen_rx_cpu_s\": {:.3}, \"loadgen_rx_runqueue_s\": {:.3}, ",
            "\"server_rss_kib\": {}, \"loadgen_cpu_share\": {:.3}, ",
            "\"lag_all_ms\": {{\"mean\": {:.1}, \"max\": {:.1}}}, ",
            "\"latency_ms\": {{\"p1\": {}, \"p10\": {}, \"p25\": {}, \"p50\": {}, \"p90\": {}, \"p99\": {}, \"p999\": {}, \"max_bucket_overflow\": {}}}, ",
            "\"checks\": {{\"rtp\": {}, \"rtcp\": {}, \"rtcp_bad\": {}, \"decrypt_errors\": {}, \"unknown_ssrc\": {}, \"malformed\": {}, \"seq_errors\": {}, \"reordered\": {}, \"outside_window\": {}, \"producer_rtcp\": {}, \"producer_stale\": {}, \"plis\": {}, \"other\": {}, \"recv_calls\": {}, \"coalesced\": {}}}, ",
            "\"udp\": {{\"RcvbufErrors\": {}, \"SndbufErrors\": {}, \"InErrors\": {}}}, \"consent_checks_sent\": {}, \"viewer_p50_ms\": [{}]}}"
        ),
        n,
        cfg.profile.name(),
        elapsed,
        sent.video_sent,
        sent.audio_sent,
        sent.key_frames,
        sent.video_in_window,
        sent.audio_in_window,
        sent.send_failed,
        sent.pli_key_frames,
        expected,
        received,
        expected.saturating_sub(received),
        if expected > 0 { expected.saturating_sub(received) as f64 / expected as f64 } else { 0.0 },
        viewers_with_loss,
        arrived as f64 / elapsed,
        server_cpu,
        server_cpu / elapsed,
        if arrived > 0 { server_cpu / arrived as f64 * 1e6 } else { 0.0 },
        (io1.0 + io1.1) - (io0.0 + io0.1),
        io1.1 - io0.1,
        py1 - py0,
        ios1.1 - ios0.1,
        rxs1.0 - rxs0.0,
        rxs1.1 - rxs0.1,
        rss,
        (self1 - self0) / elapsed,
        st.lag_sum_us as f64 / st.lag_n.max(1) as f64 / 1000.0,
        st.lag_max_us as f64 / 1000.0,
        opt(percentile(&rx.hist, 0.01)),
        opt(percentile(&rx.hist, 0.1)),
        opt(percentile(&rx.hist, 0.25)),
        opt(percentile(&rx.hist, 0.5)),
        opt(percentile(&rx.hist, 0.9)),
        opt(percentile(&rx.hist, 0.99)),
        opt(percentile(&rx.hist, 0.999)),
        rx.hist[HIST_US],
        st.rtp,
        st.rtcp,
        st.rtcp_bad,
        st.decrypt_errors,
        st.unknown_ssrc,
        st.malformed,
        st.seq_errors,
        st.reordered,
        st.late_or_early,
        st.producer_rtcp,
        producer_stale,
        st.plis,
        st.other,
        st.recv_calls,
        st.coalesced,
        d("RcvbufErrors"),
        d("SndbufErrors"),
        d("InErrors"),
        consent_sent,
        viewer_p50s(&rx.viewers),
    );
}

/// Each viewer's median latency in ms (`VIEWER_HIST_STEP_US` resolution, the bucket's middle),
/// comma-separated in viewer order; `null` for a viewer that received nothing in the window.
fn viewer_p50s(viewers: &[Viewer]) -> String {
    let step = VIEWER_HIST_STEP_US as f64 / 1000.0;
    let median = |h: &[u32]| {
        let total: u64 = h.iter().map(|&c| c as u64).sum();
        let mut acc = 0u64;
        h.iter().position(|&c| {
            acc += c as u64;
            total > 0 && acc * 2 >= total
        })
    };
    let parts: Vec<String> =
        viewers.iter().map(|v| median(&v.hist).map_or("null".into(), |b| format!("{:.3}", (b as f64 + 0.5) * step))).collect();
    parts.join(", ")
}
