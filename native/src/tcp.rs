//! ICE over TCP (RFC 6544 passive candidates): the engine's TCP listener and its accepted
//! connections, each carrying RFC 4571 frames (`framing.rs`) that the router handles exactly
//! as UDP datagrams from a `Remote` with `Via::Tcp`.
//!
//! Nothing here blocks or holds up anyone else: a connection's writes go to a bounded queue
//! (a frame that does not fit is dropped and counted, and a queue that stays over half full
//! for `TCP_STALL_DEADLINE` closes the connection); a connection must send a STUN request that
//! passes a known transport's integrity check within `TCP_STUN_DEADLINE` of its accept, and
//! one at least every idle timeout after (the consent timeout's, `TCP_IDLE_TIMEOUT` where
//! consent never expires; browsers check consent every few seconds);
//! connections are limited per remote IP (and those still unproven separately) and in total.
//! A closed connection's remote is handed to the router to forget (`take_closed`).
//!
//! The clock is passed in; sockets are real (this is the I/O edge). The I/O thread owns the
//! reads; any thread may queue frames (`enqueue`) under the engine's lock of this object.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::framing::{self, Deframer, FrameError, MAX_FRAME};
use crate::poller::{Poller, CLOSED, READABLE, WRITABLE};

/// Connections open at once, all addresses together.
pub const MAX_TCP_CONNECTIONS: usize = 1024;
/// Connections open at once from one remote IP (many users may share a NAT's address).
pub const MAX_TCP_PER_IP: usize = 128;
/// Connections from one remote IP that have not yet sent a valid STUN request (a browser sends
/// one at once: many users behind one NAT address joining together fit; an idle flood not).
pub const MAX_TCP_UNPROVEN_PER_IP: usize = 32;
/// A new connection must send a valid STUN Binding request (integrity-checked, for a known
/// transport) within this time, or it is closed.
pub const TCP_STUN_DEADLINE: Duration = Duration::from_secs(5);
/// After that, a valid STUN request at least this often (consent checks), or it is closed:
/// the default, and the timeout where the engine's consent timeout is off; otherwise a
/// proven connection's idle timeout is the consent timeout (`TcpEdge::set_idle_timeout`).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes (frames with their prefixes) queued for one connection; more is dropped, counted.
pub const TCP_WRITE_QUEUE_BYTES: usize = 256 * 1024;
/// A connection whose queue stays over half full this long (its reader does not keep up) is
/// closed.
pub const TCP_STALL_DEADLINE: Duration = Duration::from_secs(2);
/// Bytes read from one connection per readiness event (fairness between connections and
/// with the UDP socket; level-triggered polling comes back for the rest).
const READ_PER_EVENT: usize = 32 * 1024;
/// Connections accepted per readiness event of the listener.
const ACCEPT_PER_EVENT: usize = 64;
/// Kernel send buffer of a connection (the kernel doubles it for its bookkeeping). Bounded so
/// that media waiting for a slow reader waits in our queue, where it is dropped and counted,
/// instead of piling up seconds late in an auto-tuned kernel buffer of megabytes.
pub const TCP_SEND_BUFFER: i32 = 128 * 1024;
/// Iovecs per write call.
const WRITE_SLICES: usize = 64;

/// After an accept error other than "nothing waiting" (out of file descriptors, …), the
/// listener is not polled for this long (level-triggered polling would spin on it).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Poll tokens at and above this are connections (below: the engine's own fds).
pub const TOKEN_CONN_BASE: u64 = 16;

/// Connection limits (the engine uses the constants above; tests use smaller ones).
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    pub total: usize,
    pub per_ip: usize,
    pub unproven_per_ip: usize,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits { total: MAX_TCP_CONNECTIONS, per_ip: MAX_TCP_PER_IP, unproven_per_ip: MAX_TCP_UNPROVEN_PER_IP }
    }
}

macro_rules! tcp_counters {
    ($($field:ident => $name:literal,)*) => {
        /// What the TCP edge refused, dropped or closed, and why (never going down).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct TcpCounters { $(pub $field: u64,)* }
        impl TcpCounters {
            pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$(($name, self.$field),)*].into_iter()
            }
        }
    };
}

tcp_counters! {
    refused_total => "tcp_refused_total_limit",
    refused_ip => "tcp_refused_ip_limit",
    refused_unproven => "tcp_refused_unproven_limit",
    closed_by_peer => "tcp_closed_by_peer",
    closed_no_stun => "tcp_closed_no_stun",
    closed_idle => "tcp_closed_idle",
    closed_stalled => "tcp_closed_stalled",
    closed_framing => "tcp_closed_framing",
    closed_error => "tcp_closed_error",
    queue_full => "tcp_queue_full",
    accept_errors => "tcp_accept_errors",
    no_connection => "tcp_no_connection",
}

/// Frames read from connections, copied out so the router can take them without this lock.
#[derive(Default)]
pub struct Frames {
    data: Vec<u8>,
    frames: Vec<(SocketAddr, usize, usize)>,
}

impl Frames {
    pub fn clear(&mut self) {
        self.data.clear();
        self.frames.clear();
    }
    pub fn len(&self) -> usize {
        self.frames.len()
    }
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.frames.iter().map(|&(a, s, e)| (a, &self.data[s..e]))
    }
}

struct Conn {
    stream: TcpStream,
    remote: SocketAddr,
    deframer: Deframer,
    queue: VecDeque<Vec<u8>>,
    /// Bytes of `queue[0]` already written.
    head_written: usize,
    queued: usize,
    /// Writability is being waited for (poll interest includes WRITABLE).
    want_write: bool,
    /// A valid STUN request arrived (the connection counts as unproven until then).
    proven: bool,
    /// Closed unless a valid STUN request arrives before this.
    deadline: Instant,
    /// Since when the queue is over half full.
    full_since: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    Peer,
    NoStun,
    Idle,
    Stalled,
    Framing,
    Error,
}

#[derive(Default)]
struct PerIp {
    open: usize,
    unproven: usize,
}

pub struct TcpEdge {
    listener: TcpListener,
    /// The listener's poll token, and until when it is left out of the poll set.
    listener_token: u64,
    accept_paused_until: Option<Instant>,
    limits: TcpLimits,
    /// How long a proven connection may go without a valid STUN request.
    idle_timeout: Duration,
    conns: HashMap<u64, Conn>,
    by_addr: HashMap<SocketAddr, u64>,
    per_ip: HashMap<IpAddr, PerIp>,
    next_token: u64,
    closed: Vec<SocketAddr>,
    dirty: Vec<u64>,
    pub counters: TcpCounters,
    /// Connections accepted (within the limits), ever.
    pub accepted: u64,
}

/// The engine's TCP listener on `addr` (non-blocking, close-on-exec, SO_REUSEADDR).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

impl TcpEdge {
    /// `listener_token`: the token the caller registers the listener under.
    pub fn new(listener: TcpListener, listener_token: u64) -> Self {
        Self::with_limits(listener, listener_token, TcpLimits::default())
    }

    pub fn with_limits(listener: TcpListener, listener_token: u64, limits: TcpLimits) -> Self {
        TcpEdge {
            listener,
            listener_token,
            accept_paused_until: None,
            limits,
            idle_timeout: TCP_IDLE_TIMEOUT,
            conns: HashMap::new(),
            by_addr: HashMap::new(),
            per_ip: HashMap::new(),
            next_token: TOKEN_CONN_BASE,
            closed: Vec::new(),
            dirty: Vec::new(),
            counters: TcpCounters::default(),
            accepted: 0,
        }
    }

    pub fn listener_fd(&self) -> i32 {
        self.listener.as_raw_fd()
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Remotes of connections closed since the last call (the router forgets them).
    pub fn take_closed(&mut self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.closed)
    }

    /// The listener is readable: accept what is waiting, within the limits.
    pub fn accept(&mut self, poller: &Poller, now: Instant) {
        for _ in 0..ACCEPT_PER_EVENT {
            let (stream, remote) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::ConnectionAborted => continue,
                // EMFILE and friends: leave it in the backlog, look again a little later.
                Err(_) => {
                    self.counters.accept_errors += 1;
                    if poller.modify(self.listener.as_raw_fd(), self.listener_token, 0).is_ok() {
                        self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    }
                    return;
                }
            };
            let ip = remote.ip();
            let per = self.per_ip.get(&ip);
            let refused = if self.conns.len() >= self.limits.total {
                Some(&mut self.counters.refused_total)
            } else if per.is_some_and(|p| p.open >= self.limits.per_ip) {
                Some(&mut self.counters.refused_ip)
            } else if per.is_some_and(|p| p.unproven >= self.limits.unproven_per_ip) {
                Some(&mut self.counters.refused_unproven)
            } else {
                None
            };
            if let Some(c) = refused {
                *c += 1;
                drop(stream); // closed at once
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = stream.set_nodelay(true);
            let _ = crate::io::setsockopt_int(stream.as_raw_fd(), libc::SO_SNDBUF, TCP_SEND_BUFFER);
            let token = self.next_token;
            self.next_token += 1;
            if poller.add(stream.as_raw_fd(), token, READABLE).is_err() {
                continue;
            }
            // A previous connection from this very address is gone for good.
            if let Some(old) = self.by_addr.get(&remote).copied() {
                self.close(old, Why::Error);
            }
            let p = self.per_ip.entry(ip).or_default();
            p.open += 1;
            p.unproven += 1;
            self.accepted += 1;
            self.by_addr.insert(remote, token);
            self.conns.insert(
                token,
                Conn {
                    stream,
                    remote,
                    deframer: Deframer::new(MAX_FRAME),
                    queue: VecDeque::new(),
                    head_written: 0,
                    queued: 0,
                    want_write: false,
                    proven: false,
                    deadline: now + TCP_STUN_DEADLINE,
                    full_since: None,
                },
            );
        }
    }

    /// Readiness of connection `token`: read its frames into `frames`, write what is queued.
    pub fn on_ready(&mut self, poller: &Poller, token: u64, events: u32, now: Instant, frames: &mut Frames) {
        let Some(c) = self.conns.get_mut(&token) else { return };
        if events & (READABLE | CLOSED) != 0 {
            let mut buf = [0u8; 16 * 1024];
            let mut total = 0;
            let mut why = None;
            while total < READ_PER_EVENT {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        why = Some(Why::Peer);
                        break;
                    }
                    Ok(n) => {
                        total += n;
                        let remote = c.remote;
                        let r = c.deframer.feed(&buf[..n], |f| {
                            let s = frames.data.len();
                            frames.data.extend_from_slice(f);
                            frames.frames.push((remote, s, frames.data.len()));
                        });
                        if let Err(FrameError::TooLong(_) | FrameError::Empty | FrameError::Oversize(_)) = r {
                            why = Some(Why::Framing);
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        why = Some(Why::Error);
                        break;
                    }
                }
            }
            if let Some(why) = why {
                self.close(token, why);
                return;
            }
        }
        if events & WRITABLE != 0 {
            self.flush(poller, token, now);
        }
    }

    /// Queue `payload` as one frame for the connection from `remote`. False if it was
    /// dropped (no such connection, or its queue is full: counted).
    pub fn enqueue(&mut self, remote: SocketAddr, payload: &[u8], now: Instant) -> bool {
        let Some(&token) = self.by_addr.get(&remote) else {
            self.counters.no_connection += 1;
            return false;
        };
        let Some(c) = self.conns.get_mut(&token) else { return false };
        if c.queued + 2 + payload.len() > TCP_WRITE_QUEUE_BYTES {
            self.counters.queue_full += 1;
            c.full_since.get_or_insert(now);
            return false;
        }
        let mut frame = Vec::with_capacity(2 + payload.len());
        if framing::encode(payload, &mut frame).is_err() {
            return false;
        }
        c.queued += frame.len();
        c.queue.push_back(frame);
        if c.queue.len() == 1 {
            self.dirty.push(token);
        }
        true
    }

    /// Write what `enqueue` queued since the last call (as much as the kernel takes now).
    pub fn flush_queued(&mut self, poller: &Poller, now: Instant) {
        let dirty = std::mem::take(&mut self.dirty);
        for token in &dirty {
            self.flush(poller, *token, now);
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn flush(&mut self, poller: &Poller, token: u64, now: Instant) {
        let Some(c) = self.conns.get_mut(&token) else { return };
        let mut failed = false;
        while !c.queue.is_empty() {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(WRITE_SLICES.min(c.queue.len()));
            for (i, f) in c.queue.iter().take(WRITE_SLICES).enumerate() {
                slices.push(IoSlice::new(if i == 0 { &f[c.head_written..] } else { f }));
            }
            match (&c.stream).write_vectored(&slices) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(mut n) => {
                    c.queued -= n;
                    while n > 0 {
                        let left = c.queue[0].len() - c.head_written;
                        if n >= left {
                            n -= left;
                            c.queue.pop_front();
                            c.head_written = 0;
                        } else {
                            c.head_written += n;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.close(token, Why::Error);
            return;
        }
        if c.queued * 2 <= TCP_WRITE_QUEUE_BYTES {
            c.full_since = None;
        } else {
            c.full_since.get_or_insert(now);
        }
        let want = !c.queue.is_empty();
        if want != c.want_write {
            c.want_write = want;
            let interest = if want { READABLE | WRITABLE } else { READABLE };
            let _ = poller.modify(c.stream.as_raw_fd(), token, interest);
        }
    }

    /// How long a proven connection may go without a valid STUN request from now on (each
    /// connection's current deadline stands until its next request).
    pub fn set_idle_timeout(&mut self, timeout: Duration) {
        self.idle_timeout = timeout;
    }

    /// A valid STUN request came over the connection from `remote`: it may stay the idle
    /// timeout more.
    pub fn note_stun(&mut self, remote: SocketAddr, now: Instant) {
        let Some(c) = self.by_addr.get(&remote).and_then(|t| self.conns.get_mut(t)) else { return };
        c.deadline = now + self.idle_timeout;
        if !c.proven {
            c.proven = true;
            if let Some(p) = self.per_ip.get_mut(&c.remote.ip()) {
                p.unproven = p.unproven.saturating_sub(1);
            }
        }
    }

    /// Close the connections past a deadline (no STUN, idle, stalled queue); poll the
    /// listener again after an accept back-off.
    pub fn sweep(&mut self, poller: &Poller, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| now >= t)
            && poller.modify(self.listener.as_raw_fd(), self.listener_token, READABLE).is_ok()
        {
            self.accept_paused_until = None;
        }
        let expired: Vec<(u64, Why)> = self
            .conns
            .iter()
            .filter_map(|(&t, c)| {
                if c.full_since.is_some_and(|s| now.duration_since(s) >= TCP_STALL_DEADLINE) {
                    Some((t, Why::Stalled))
                } else if now >= c.deadline {
                    Some((t, if c.proven { Why::Idle } else { Why::NoStun }))
                } else {
                    None
                }
            })
            .collect();
        for (t, why) in expired {
            self.close(t, why);
        }
    }

    /// The earliest deadline of any connection (the I/O thread wakes for it).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().map(|c| c.full_since.map_or(c.deadline, |s| c.deadline.min(s + TCP_STALL_DEADLINE))).min()
    }

    fn close(&mut self, token: u64, why: Why) {
        let Some(c) = self.conns.remove(&token) else { return };
        if self.by_addr.get(&c.remote) == Some(&token) {
            self.by_addr.remove(&c.remote);
        }
        let ip = c.remote.ip();
        if let Some(p) = self.per_ip.get_mut(&ip) {
            p.open = p.open.saturating_sub(1);
            if !c.proven {
                p.unproven = p.unproven.saturating_sub(1);
            }
            if p.open == 0 {
                self.per_ip.remove(&ip);
            }
        }
        let n = match why {
            Why::Peer => &mut self.counters.closed_by_peer,
            Why::NoStun => &mut self.counters.closed_no_stun,
            Why::Idle => &mut self.counters.closed_idle,
            Why::Stalled => &mut self.counters.closed_stalled,
            Why::Framing => &mut self.counters.closed_framing,
            Why::Error => &mut self.counters.closed_error,
        };
        *n += 1;
        self.closed.push(c.remote);
        // Dropping the stream closes the fd, which leaves the poll set.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poller::Events;
    use std::net::Shutdown;

    fn edge() -> (TcpEdge, Poller, SocketAddr) {
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let e = TcpEdge::new(l, 1);
        let p = Poller::new().unwrap();
        p.add(e.listener_fd(), 1, READABLE).unwrap();
        (e, p, addr)
    }

    /// Run accept/read events until `cond` holds (or a second passes).
    fn pump(e: &mut TcpEdge, p: &Poller, now: Instant, frames: &mut Frames, cond: impl Fn(&TcpEdge, &Frames) -> bool) {
        let mut events = Events::new(64);
        let until = Instant::now() + Duration::from_secs(2);
        while !cond(e, frames) && Instant::now() < until {
            p.wait(&mut events, 20);
            for ev in events.iter() {
                if ev.token == 1 {
                    e.accept(p, now);
                } else {
                    e.on_ready(p, ev.token, ev.events, now, frames);
                }
            }
        }
    }

    #[test]
    fn frames_in_and_out_of_a_connection() {
        let (mut e, p, addr) = edge();
        let now = Instant::now();
        let mut client = TcpStream::connect(addr).unwrap();
        let mut frames = Frames::default();
        pump(&mut e, &p, now, &mut frames, |e, _| e.connections() == 1);
        let mut bytes = Vec::new();
        framing::encode(b"hello", &mut bytes).unwrap();
        framing::encode(&[7; 1000], &mut bytes).unwrap();
        // Split mid-prefix and mid-frame.
        client.write_all(&bytes[..1]).unwrap();
        client.flush().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        client.write_all(&bytes[1..500]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        client.write_all(&bytes[500..]).unwrap();
        pump(&mut e, &p, now, &mut frames, |_, f| f.len() == 2);
        let me = client.local_addr().unwrap();
        let got: Vec<(SocketAddr, Vec<u8>)> = frames.iter().map(|(a, d)| (a, d.to_vec())).collect();
        assert_eq!(got, vec![(me, b"hello".to_vec()), (me, vec![7; 1000])]);
        // And back.
        assert!(e.enqueue(me, b"answer", now));
        e.flush_queued(&p, now);
        let mut back = [0u8; 8];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"\x00\x06answer");
        assert!(!e.enqueue("127.0.0.1:1".parse().unwrap(), b"x", now));
        assert_eq!(e.counters.no_connection, 1);
        // The peer closes: the connection goes, its remote is handed over once.
        client.shutdown(Shutdown::Both).unwrap();
        pump(&mut e, &p, now, &mut frames, |e, _| e.connections() == 0);
        assert_eq!(e.take_closed(), vec![me]);
        assert!(e.take_closed().is_empty());
        assert_eq!(e.counters.closed_by_peer, 1);
        assert!(e.per_ip.is_empty() && e.by_addr.is_empty());
    }

    #[test]
    fn a_length_over_the_limit_closes_the_connection() {
        let (mut e, p, addr) = edge();
        let now = Instant::now();
        let mut client = TcpStream::connect(addr).unwrap();
        let mut frames = Frames::default();
        pump(&mut e, &p, now, &mut frames, |e, _| e.connections() == 1);
        client.write_all(&[0xff, 0xff, 1, 2, 3]).unwrap();
        pump(&mut e, &p, now, &mut frames, |e, _| e.connections() == 0);
        assert_eq!(e.counters.closed_framing, 1);
        assert!(frames.is_empty());
        // The server closed: the client reads EOF (or a reset).
        let mut b = [0u8; 1];
        client.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        assert!(matches!(client.read(&mut b), Ok(0) | Err(_)));
    }

    #[test]
    fn unproven_connections_are_limited_per_ip_and_closed_after_the_deadline() {
        let (mut e, p, addr) = edge();
        let now = Instant::now();
        let mut frames = Frames::default();
        let clients: Vec<TcpStream> = (0..MAX_TCP_UNPROVEN_PER_IP + 5).map(|_| TcpStream::connect(addr).unwrap()).collect();
        pump(&mut e, &p, now, &mut frames, |e, _| {
            e.connections() == MAX_TCP_UNPROVEN_PER_IP && e.counters.refused_unproven == 5
        });
        assert_eq!(e.connections(), MAX_TCP_UNPROVEN_PER_IP);
        assert_eq!(e.counters.refused_unproven, 5);
        // One proves itself (a valid STUN request, as the router says): it stays.
        let first = clients[0].local_addr().unwrap();
        e.note_stun(first, now);
        // A proven one frees an unproven slot: one more is accepted.
        let _extra = TcpStream::connect(addr).unwrap();
        pump(&mut e, &p, now, &mut frames, |e, _| e.connections() == MAX_TCP_UNPROVEN_PER_IP + 1);
        assert_eq!(e.next_deadline(), Some(now + TCP_STUN_DEADLINE));
        e.sweep(&p, now + TCP_STUN_DEADLINE - Duration::from_millis(1));
        assert_eq!(e.connections(), MAX_TCP_UNPROVEN_PER_IP + 1);
        e.sweep(&p, now + TCP_STUN_DEADLINE);
        assert_eq!(e.connections(), 1, "only the proven one is left");
        assert_eq!(e.counters.closed_no_stun, MAX_TCP_UNPROVEN_PER_IP as u64);
        assert_eq!(e.take_closed().len(), MAX_TCP_UNPROVEN_PER_IP);
        // The proven one goes once idle past its own deadline.
        e.sweep(&p, now + TCP_IDLE_TIMEOUT);
        assert_eq!(e.connections(), 0);
        assert_eq!(e.counters.closed_idle, 1);
        assert!(e.per_ip.is_empty());
    }

    #[test]
    fn a_proven_connection_idles_out_after_the_idle_timeout_set() {
        let (mut e, p, addr) = edge();
        let now = Instant::now();
        let mut frames = Frames::default();
        let client = TcpStream::connect(addr).unwrap();
        pump(&mut e, &p, now, &mut frames, |e, _| e.connections() == 1);
        let short = Duration::from_secs(6);
        e.set_idle_timeout(short);
        e.note_stun(client.local_addr().unwrap(), now);
        assert_eq!(e.next_deadline(), Some(now + short));
        e.sweep(&p, now + short - Duration::from_millis(1));
        assert_eq!(e.connections(), 1);
        // Each valid request moves the deadline by the timeout in force.
        e.note_stun(client.local_addr().unwrap(), now + Duration::from_secs(5));
        e.sweep(&p, now + short);
        assert_eq!(e.connections(), 1);
        e.sweep(&p, now + Duration::from_secs(5) + short);
        assert_eq!((e.connections(), e.counters.closed_idle), (0, 1));
    }

    #[test]
    fn connections_are_limited_per_ip_and_in_total() {
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let mut e = TcpEdge::with_limits(l, 1, TcpLimits { total: 6, per_ip: 4, unproven_per_ip: 4 });
        let p = Poller::new().unwrap();
        p.add(e.listener_fd(), 1, READABLE).unwrap();
        let now = Instant::now();
        let mut frames = Frames::default();
        // Four from 127.0.0.1, all proven: the per-IP limit (not the unproven one) refuses
        // the fifth and sixth.
        let first: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
        pump(&mut e, &p, now, &mut frames, |e, _| e.connections() == 4);
        for c in &first {
            e.note_stun(c.local_addr().unwrap(), now);
        }
        let refused: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        pump(&mut e, &p, now, &mut frames, |e, _| e.counters.refused_ip == 2);
        assert_eq!((e.connections(), e.counters.refused_ip, e.counters.refused_unproven), (4, 2, 0));
        // Two from another loopback address fill the total; the next one is refused.
        let more: Vec<TcpStream> =
            (0..3).map(|_| socket_from(std::net::Ipv4Addr::new(127, 0, 0, 2)).connect(addr).unwrap()).collect();
        pump(&mut e, &p, now, &mut frames, |e, _| e.counters.refused_total == 1);
        assert_eq!((e.connections(), e.counters.refused_total), (6, 1));
        assert_eq!(e.per_ip.len(), 2);
        drop((first, refused, more));
    }

    /// A TCP socket bound to `ip` (port chosen by the OS), not connected yet.
    fn socket_from(ip: std::net::Ipv4Addr) -> TcpStreamBuilder {
        TcpStreamBuilder(ip)
    }

    struct TcpStreamBuilder(std::net::Ipv4Addr);

    impl TcpStreamBuilder {
        fn connect(&self, to: SocketAddr) -> io::Result<TcpStream> {
            // SAFETY: plain socket calls on a fresh fd, handed to TcpStream right after.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                assert!(fd >= 0);
                let mut ss: libc::sockaddr_storage = std::mem::zeroed();
                let len = crate::io::std_to_sockaddr(&SocketAddr::from((self.0, 0)), &mut ss);
                assert_eq!(libc::bind(fd, &ss as *const _ as *const libc::sockaddr, len), 0);
                let len = crate::io::std_to_sockaddr(&to, &mut ss);
                let r = libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len);
                let s = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
                if r != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(s)
            }
        }
    }

    #[test]
    fn a_reader_that_never_reads_gets_drops_then_is_closed() {
        let (mut e, p, addr) = edge();
        let now = Instant::now();
        let mut frames = Frames::default();
        let client = TcpStream::connect(addr).unwrap();
        pump(&mut e, &p, now, &mut frames, |e, _| e.connections() == 1);
        let me = client.local_addr().unwrap();
        e.note_stun(me, now);
        let payload = [0u8; 1200];
        let mut dropped = 0;
        // Far more than the kernel buffers and the queue take together.
        for _ in 0..20_000 {
            if !e.enqueue(me, &payload, now) {
                dropped += 1;
            }
            e.flush_queued(&p, now);
        }
        assert!(dropped > 0);
        assert_eq!(e.counters.queue_full, dropped);
        let c = e.conns.values().next().unwrap();
        assert!(c.queued <= TCP_WRITE_QUEUE_BYTES);
        assert!(c.full_since.is_some());
        e.sweep(&p, now + TCP_STALL_DEADLINE - Duration::from_millis(1));
        assert_eq!(e.connections(), 1);
        e.sweep(&p, now + TCP_STALL_DEADLINE);
        assert_eq!(e.connections(), 0);
        assert_eq!(e.counters.closed_stalled, 1);
        drop(client);
    }
}
