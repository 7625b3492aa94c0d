//! The sockets of plain (and pipe) transports: one UDP socket per transport, bound in the
//! configured port range, served by a thread of their own (epoll), apart from the engine's
//! media socket and its I/O thread. A datagram that arrives on one of these sockets belongs
//! to that socket's transport (plain RTP carries no ICE username to route by); the thread
//! hands each batch to the router under the same lock as the I/O thread.
//!
//! Why a thread of its own: the media port's I/O thread stays as it is (one socket, its own
//! batching), and a plain transport costs nothing there. The thread starts with the first
//! plain transport and ends with the engine. Timers (reports, NACK retries) stay on the I/O
//! thread: they are the router's, whichever socket their datagrams leave by (`Via::Plain` of a transmit's `Remote`).

use std::collections::HashMap;
use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::io::{self as uio, RecvBatch};
use crate::remote::{SocketId, Via, MAIN_SOCKET};
use crate::router::{Handle, Transmit};

/// epoll data of the stop eventfd (socket ids are u32).
const STOP: u64 = u64::MAX;
/// Ready sockets taken per epoll_wait.
const EVENTS: usize = 32;
/// Batches read from one socket before the next socket gets its turn.
const BATCHES_PER_TURN: usize = 4;
/// epoll_wait timeout: the stop flag is looked at least this often (ms).
const WAIT_MS: i32 = 500;

struct Entry {
    socket: Arc<UdpSocket>,
    transport: Handle,
    /// The RTCP socket of a transport without rtcp-mux (else its only, RTP socket).
    rtcp: bool,
}

/// The two sockets of a plain transport without rtcp-mux: ids and ports.
#[derive(Clone, Copy, Debug)]
pub struct Pair {
    pub rtp: (SocketId, u16),
    pub rtcp: (SocketId, u16),
}

/// The plain/pipe transports' sockets of one engine.
pub struct PlainSockets {
    epoll: OwnedFd,
    entries: Mutex<HashMap<SocketId, Entry>>,
    next: AtomicU32,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn check_range(min: u16, max: u16) -> io::Result<()> {
    if min == 0 || max < min {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad port range {min}-{max}")));
    }
    Ok(())
}

impl PlainSockets {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned right away.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: fd is a new, valid descriptor nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PlainSockets { epoll, entries: Mutex::new(HashMap::new()), next: AtomicU32::new(1), thread: Mutex::new(None) })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: data };
        // SAFETY: valid epoll fd and fd; ev lives across the call.
        cvt(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) })?;
        Ok(())
    }

    /// Watch `stop_fd` (readable when the engine stops).
    pub fn watch_stop(&self, stop_fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, stop_fd, STOP)
    }

    /// Bind a socket for transport `transport` on `host`, at the first free port of
    /// `[min, max]` from `start` (wrapping), and watch it. Its id and port.
    pub fn open(&self, transport: Handle, host: &str, min: u16, max: u16, start: u64) -> io::Result<(SocketId, u16)> {
        check_range(min, max)?;
        let span = (max - min) as u64 + 1;
        let mut last = io::Error::new(io::ErrorKind::AddrInUse, format!("no free port in {min}-{max}"));
        for i in 0..span {
            let port = min + ((start + i) % span) as u16;
            match uio::bind(host, port) {
                Ok(sock) => return Ok((self.watch(sock, transport, false)?, port)),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Bind the RTP and RTCP sockets of a transport without rtcp-mux on `host`: a pair of
    /// free ports P (even) and P + 1 of `[min, max]`, the first from `start` (wrapping), as
    /// RFC 3550 (section 11) has it and ffmpeg's and GStreamer's defaults assume; if the
    /// range has no such free pair, any two free ports of it (the RTCP port is announced
    /// either way). Both are watched; the first socket is closed again if the second fails.
    pub fn open_pair(&self, transport: Handle, host: &str, min: u16, max: u16, start: u64) -> io::Result<Pair> {
        check_range(min, max)?;
        let (first_even, max32) = (min as u32 + (min & 1) as u32, max as u32);
        let pairs = if max32 > first_even { ((max32 - first_even - 1) / 2) as u64 + 1 } else { 0 };
        for i in 0..pairs {
            // < max: first_even + 2 * (pairs - 1) + 1 <= max.
            let port = (first_even + 2 * ((start + i) % pairs) as u32) as u16;
            let rtp = match uio::bind(host, port) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            };
            match uio::bind(host, port + 1) {
                Ok(rtcp) => return self.watch_pair(transport, (rtp, port), (rtcp, port + 1)),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            }
        }
        // No adjacent pair: two ports apart, each the first free one from `start`.
        let (rtp_id, rtp_port) = self.open(transport, host, min, max, start)?;
        match self.open(transport, host, min, max, start.wrapping_add(1)) {
            Ok(rtcp) => {
                self.entries.lock().get_mut(&rtcp.0).expect("just added").rtcp = true;
                Ok(Pair { rtp: (rtp_id, rtp_port), rtcp })
            }
            Err(e) => {
                self.close_transport(transport);
                Err(e)
            }
        }
    }

    fn watch_pair(&self, transport: Handle, rtp: (UdpSocket, u16), rtcp: (UdpSocket, u16)) -> io::Result<Pair> {
        let rtp_id = self.watch(rtp.0, transport, false)?;
        match self.watch(rtcp.0, transport, true) {
            Ok(rtcp_id) => Ok(Pair { rtp: (rtp_id, rtp.1), rtcp: (rtcp_id, rtcp.1) }),
            Err(e) => {
                self.close_transport(transport);
                Err(e)
            }
        }
    }

    /// Watch bound socket `sock` of `transport`: its new id.
    fn watch(&self, sock: UdpSocket, transport: Handle, rtcp: bool) -> io::Result<SocketId> {
        let via = self.next.fetch_add(1, Ordering::Relaxed);
        debug_assert_ne!(via, MAIN_SOCKET);
        self.ctl(libc::EPOLL_CTL_ADD, sock.as_raw_fd(), via as u64)?;
        self.entries.lock().insert(via, Entry { socket: Arc::new(sock), transport, rtcp });
        Ok(via)
    }

    /// Close the sockets of `transport` (its port is free once this returns, unless the
    /// serving thread holds it for the batch it is reading). True if it had any.
    pub fn close_transport(&self, transport: Handle) -> bool {
        let gone: Vec<Entry> = {
            let mut m = self.entries.lock();
            let vias: Vec<SocketId> = m.iter().filter(|(_, e)| e.transport == transport).map(|(v, _)| *v).collect();
            vias.into_iter().filter_map(|v| m.remove(&v)).collect()
        };
        for e in &gone {
            let _ = self.ctl(libc::EPOLL_CTL_DEL, e.socket.as_raw_fd(), 0);
        }
        !gone.is_empty()
    }

    /// Number of open sockets.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Send the transmits that leave by one of these sockets; the number that failed
    /// (socket gone, or the send failed).
    pub fn send<'a>(&self, transmits: impl Iterator<Item = &'a Transmit>) -> u64 {
        let m = self.entries.lock();
        let mut failed = 0u64;
        for t in transmits {
            let entry = match t.dest.via {
                Via::Plain(id) => m.get(&id),
                _ => None,
            };
            match entry {
                Some(e) => failed += uio::send_batch(e.socket.as_raw_fd(), std::iter::once((&t.dest.addr, t.buf.as_slice()))).failed as u64,
                None => failed += 1,
            }
        }
        failed
    }

    /// The serving thread, started once (`spawn` runs it).
    pub fn ensure_thread(&self, spawn: impl FnOnce() -> io::Result<JoinHandle<()>>) -> io::Result<()> {
        let mut t = self.thread.lock();
        if t.is_none() {
            *t = Some(spawn()?);
        }
        Ok(())
    }

    /// Wait for the serving thread to end (after the stop flag and fd were set).
    pub fn join(&self) {
        let t = self.thread.lock().take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }

    /// Serve until `stop`: for each readable socket, read batches and hand each to
    /// `on_batch(transport, rtcp, batch, n)` (`rtcp`: it came to a transport's RTCP socket).
    pub fn run(&self, stop: &AtomicBool, mut on_batch: impl FnMut(Handle, bool, &RecvBatch, usize)) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        let mut batch = RecvBatch::new();
        while !stop.load(Ordering::Acquire) {
            // SAFETY: valid epoll fd; events has EVENTS entries.
            let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), EVENTS as i32, WAIT_MS) };
            if n <= 0 {
                continue;
            }
            for ev in &events[..n as usize] {
                let data = ev.u64;
                if data == STOP {
                    return;
                }
                let Some((sock, th, rtcp)) = self.entries.lock().get(&(data as SocketId)).map(|e| (e.socket.clone(), e.transport, e.rtcp)) else { continue };
                for _ in 0..BATCHES_PER_TURN {
                    let got = batch.recv(sock.as_raw_fd()).unwrap_or_default();
                    if got == 0 {
                        break;
                    }
                    on_batch(th, rtcp, &batch, got);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An even port P with P..P+3 free on loopback right now.
    fn free_block() -> u16 {
        for _ in 0..200 {
            let probe = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let base = probe.local_addr().expect("addr").port() & !1;
            drop(probe);
            if !(1024..=65530).contains(&base) {
                continue;
            }
            if (base..base + 4).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
                return base;
            }
        }
        panic!("no free block of 4 UDP ports");
    }

    #[test]
    fn a_pair_is_an_even_port_and_the_next_and_closing_frees_both() {
        let s = PlainSockets::new().expect("epoll");
        let base = free_block();
        let p = s.open_pair(1, "127.0.0.1", base, base + 3, 1).expect("pair");
        assert_eq!(p.rtp.1 % 2, 0);
        assert_eq!(p.rtcp.1, p.rtp.1 + 1);
        assert_eq!(s.len(), 2);
        assert!(s.entries.lock()[&p.rtcp.0].rtcp && !s.entries.lock()[&p.rtp.0].rtcp);
        assert!(s.close_transport(1));
        assert!(s.is_empty());
        for port in [p.rtp.1, p.rtcp.1] {
            UdpSocket::bind(("127.0.0.1", port)).expect("free again");
        }
    }

    #[test]
    fn without_a_free_pair_any_two_ports_and_without_two_nothing_stays_open() {
        let s = PlainSockets::new().expect("epoll");
        let base = free_block();
        // The range's only even pair is taken half: two ports apart then.
        let _blocker = UdpSocket::bind(("127.0.0.1", base + 1)).expect("blocker");
        let p = s.open_pair(1, "127.0.0.1", base, base + 2, 0).expect("fallback");
        let mut ports = [p.rtp.1, p.rtcp.1];
        ports.sort_unstable();
        assert_eq!(ports, [base, base + 2]);
        assert!(s.entries.lock()[&p.rtcp.0].rtcp);
        // Nothing free left: refused, and the half-open first socket is closed again.
        assert!(s.open_pair(2, "127.0.0.1", base, base + 2, 0).is_err());
        s.close_transport(1);
        let _first = UdpSocket::bind(("127.0.0.1", base)).expect("taken by the test");
        assert!(s.open_pair(3, "127.0.0.1", base, base + 2, 0).is_err(), "one free port");
        assert!(s.is_empty());
        UdpSocket::bind(("127.0.0.1", base + 2)).expect("the single free port was given back");
        // A range of one port and a bad range.
        assert!(s.open_pair(4, "127.0.0.1", base + 3, base + 3, 0).is_err());
        assert!(s.open_pair(4, "127.0.0.1", 0, 10, 0).is_err());
        assert!(s.is_empty());
    }
}
