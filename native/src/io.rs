//! UDP edge: one non-blocking socket, batched receive (recvmmsg) and batched send (sendmmsg).
//! Nothing here knows about RTP; the router is fed and drained by `engine/`.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

/// Datagrams taken per recvmmsg call.
pub const RECV_BATCH: usize = 32;
/// Room for one datagram; larger ones are truncated by the kernel and dropped here.
pub const SLOT: usize = 4096;
/// Messages handed to one sendmmsg call.
const SEND_BATCH: usize = 64;
const SOCKET_BUFFER: libc::c_int = 8 * 1024 * 1024;

/// Bind the engine's socket: non-blocking, large kernel buffers (best effort), close-on-exec.
pub fn bind(host: &str, port: u16) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddr::new(parse_ip(host)?, port))?;
    tune(&sock)?;
    Ok(sock)
}

fn parse_ip(host: &str) -> io::Result<std::net::IpAddr> {
    host.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("bad IP address {host:?}")))
}

/// Non-blocking, large kernel buffers (best effort).
fn tune(sock: &UdpSocket) -> io::Result<()> {
    sock.set_nonblocking(true)?;
    let fd = sock.as_raw_fd();
    for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        // FORCE works as root (ignores rmem_max); otherwise fall back to the capped option.
        if setsockopt_int(fd, force, SOCKET_BUFFER).is_err() {
            let _ = setsockopt_int(fd, plain, SOCKET_BUFFER);
        }
    }
    Ok(())
}

/// `count` sockets on one address and port, one per worker: with one, as `bind`; with more,
/// an `SO_REUSEPORT` group (the kernel spreads remotes over them by a hash of the 4-tuple).
/// A fixed port is guarded first by a probe bound without `SO_REUSEPORT` (it fails if anyone
/// holds the port: a second server must not silently join the group); with port 0 the
/// first socket of the group picks the port.
pub fn bind_group(host: &str, port: u16, count: usize) -> io::Result<Vec<UdpSocket>> {
    if count <= 1 {
        return Ok(vec![bind(host, port)?]);
    }
    let ip = parse_ip(host)?;
    if port != 0 {
        drop(UdpSocket::bind(SocketAddr::new(ip, port))?);
    }
    let mut group: Vec<UdpSocket> = Vec::with_capacity(count);
    let mut at = SocketAddr::new(ip, port);
    for _ in 0..count {
        let s = socket2::Socket::new(socket2::Domain::for_address(at), socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        s.set_reuse_port(true)?;
        s.bind(&at.into())?;
        let s: UdpSocket = s.into();
        tune(&s)?;
        at = s.local_addr()?;
        group.push(s);
    }
    Ok(group)
}

pub(crate) fn setsockopt_int(fd: RawFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    setsockopt_at(fd, libc::SOL_SOCKET, opt, value)
}

/// An integer socket option at `level` (SOL_SOCKET, SOL_UDP...).
fn setsockopt_at(fd: RawFd, level: libc::c_int, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: valid fd, pointer to a c_int and its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &value as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: family says this storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: family says this storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

pub fn std_to_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin: &mut libc::sockaddr_in = unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr { s_addr: u32::from(*a.ip()).to_be() };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: &mut libc::sockaddr_in6 = unsafe { &mut *(out as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// `UDP_GRO` (linux/udp.h, Linux >= 5.0): the socket option that lets the kernel hand up
/// several datagrams of one size from one source as one buffer, and the control message
/// (level `SOL_UDP`, an int) that gives their size. Not in the libc crate for glibc targets.
const UDP_GRO: libc::c_int = 104;
/// Receive slot with GRO: a coalesced buffer is one UDP payload (under 64 KiB).
pub const GRO_SLOT: usize = 65_536;
/// Slots per recvmmsg call with GRO (each may hold many datagrams).
pub const GRO_BATCH: usize = 16;
/// Room for the `UDP_GRO` control message (and a spare one), 8-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct GroCmsg([u8; 64]);

/// Ask the kernel for coalesced receive (`UDP_GRO`) on `fd`, or (`on` false) stop it.
/// Err where the kernel has no UDP GRO (before 5.0: ENOPROTOOPT) or `fd` is not UDP.
pub fn set_gro(fd: RawFd, on: bool) -> io::Result<()> {
    setsockopt_at(fd, libc::SOL_UDP, UDP_GRO, libc::c_int::from(on))
}

/// `UDP_GRO` on every socket of `fds`, or on none: if the kernel refuses it on one, it is
/// turned off again on those that took it (a socket with GRO must be read with GRO-sized
/// buffers, `RecvBatch::with_gro`). Returns whether it is on.
pub fn set_gro_all(fds: &[RawFd]) -> bool {
    if fds.iter().all(|&fd| set_gro(fd, true).is_ok()) {
        return true;
    }
    for &fd in fds {
        let _ = set_gro(fd, false);
    }
    false
}

/// One datagram of a GRO batch: where in which slot.
#[derive(Clone, Copy, Default)]
struct Segment {
    slot: u32,
    start: u32,
    len: u32,
    truncated: bool,
}

/// Receive buffers for one recvmmsg call, reused forever by the I/O thread. Without GRO,
/// `RECV_BATCH` slots of `SLOT` bytes, one datagram each. With GRO (`with_gro`, on a socket
/// `set_gro` enabled), `GRO_BATCH` slots of `GRO_SLOT` bytes; a slot may hold several
/// datagrams of one size from one source (the size in the `UDP_GRO` control message, the
/// last one possibly shorter), split here into datagrams (index only, no copy) so that
/// `get` hands out one datagram at a time either way.
pub struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    count: usize,
    slot: usize,
    slots: usize,
    /// With GRO: a control message buffer per slot, and the datagrams of the last call.
    cmsgs: Vec<GroCmsg>,
    segments: Vec<Segment>,
    gro: bool,
    /// Of the last call (GRO): buffers that held more than one datagram, and their datagrams.
    coalesced: (usize, usize),
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> Self {
        Self::sized(RECV_BATCH, SLOT, false)
    }

    /// Buffers for a socket with `UDP_GRO` on (`set_gro`).
    pub fn with_gro() -> Self {
        Self::sized(GRO_BATCH, GRO_SLOT, true)
    }

    fn sized(slots: usize, slot: usize, gro: bool) -> Self {
        debug_assert!(slots <= RECV_BATCH);
        RecvBatch {
            bufs: vec![0u8; slots * slot],
            // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
            addrs: vec![unsafe { mem::zeroed() }; slots],
            lens: vec![0; slots],
            truncated: vec![false; slots],
            count: 0,
            slot,
            slots,
            cmsgs: if gro { vec![GroCmsg([0; 64]); slots] } else { Vec::new() },
            segments: Vec::with_capacity(if gro { slots * 8 } else { 0 }),
            gro,
            coalesced: (0, 0),
        }
    }

    /// Whether this batch splits coalesced buffers (made by `with_gro`).
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Of the last call: buffers that held several datagrams, and the datagrams they held.
    pub fn coalesced(&self) -> (usize, usize) {
        self.coalesced
    }

    /// One non-blocking recvmmsg. Ok(0) when nothing is waiting; otherwise the number of
    /// datagrams (with GRO, after splitting).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iov: [libc::iovec; RECV_BATCH] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; RECV_BATCH];
        // SAFETY: mmsghdr is plain old data; all-zero is valid.
        let mut msgs: [libc::mmsghdr; RECV_BATCH] = unsafe { mem::zeroed() };
        let base = self.bufs.as_mut_ptr();
        for i in 0..self.slots {
            // SAFETY: i * slot + slot <= bufs.len().
            iov[i].iov_base = unsafe { base.add(i * self.slot) } as *mut libc::c_void;
            iov[i].iov_len = self.slot;
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            msgs[i].msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            if self.gro {
                msgs[i].msg_hdr.msg_control = self.cmsgs[i].0.as_mut_ptr() as *mut libc::c_void;
                msgs[i].msg_hdr.msg_controllen = mem::size_of::<GroCmsg>() as _;
            }
        }
        // SAFETY: every pointer in msgs points into buffers owned by self or this frame.
        let n = unsafe {
            libc::recvmmsg(fd, msgs.as_mut_ptr(), self.slots as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        self.coalesced = (0, 0);
        if n < 0 {
            let e = io::Error::last_os_error();
            self.count = 0;
            self.segments.clear();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for (i, m) in msgs.iter().take(n).enumerate() {
            self.lens[i] = (m.msg_len as usize).min(self.slot);
            self.truncated[i] = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        self.count = n;
        if !self.gro {
            return Ok(n);
        }
        self.segments.clear();
        for (i, m) in msgs.iter().take(n).enumerate() {
            self.split(i, gro_segment_size(&m.msg_hdr));
        }
        Ok(self.segments.len())
    }

    /// Slot `i`'s buffer as datagrams of `size` bytes (the last one may be shorter); one
    /// datagram without a size. A datagram over `SLOT` counts as truncated, as without GRO.
    fn split(&mut self, i: usize, size: Option<usize>) {
        let len = self.lens[i];
        if self.truncated[i] || len == 0 {
            self.segments.push(Segment { slot: i as u32, start: 0, len: len as u32, truncated: self.truncated[i] });
            return;
        }
        let size = size.filter(|&s| s > 0 && s < len).unwrap_or(len);
        let before = self.segments.len();
        let mut at = 0usize;
        while at < len {
            let l = size.min(len - at);
            self.segments.push(Segment { slot: i as u32, start: at as u32, len: l as u32, truncated: l > SLOT });
            at += l;
        }
        let made = self.segments.len() - before;
        if made > 1 {
            self.coalesced.0 += 1;
            self.coalesced.1 += made;
        }
    }

    /// Datagram `i` of the last call: source, bytes, truncated flag.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8], bool)> {
        if self.gro {
            let s = self.segments.get(i)?;
            let slot = s.slot as usize;
            let at = slot * self.slot + s.start as usize;
            let addr = sockaddr_to_std(&self.addrs[slot])?;
            return Some((addr, &self.bufs[at..at + s.len as usize], s.truncated));
        }
        if i >= self.count {
            return None;
        }
        let addr = sockaddr_to_std(&self.addrs[i])?;
        Some((addr, &self.bufs[i * SLOT..i * SLOT + self.lens[i]], self.truncated[i]))
    }
}

/// The segment size of a received message's `UDP_GRO` control message, if it has one.
fn gro_segment_size(h: &libc::msghdr) -> Option<usize> {
    if h.msg_control.is_null() {
        return None;
    }
    // SAFETY: the kernel filled msg_control up to msg_controllen with well-formed control
    // messages; CMSG_FIRSTHDR (null when msg_controllen is under one header) and NXTHDR
    // stay within it, and the data is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                return usize::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// Outcome of sending a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendResult {
    pub sent: usize,
    pub failed: usize,
}

/// Send every `(dest, bytes)` with as few sendmmsg calls as possible. A datagram the kernel
/// refuses (buffer full after a short wait, unreachable, …) is skipped and counted as failed.
pub fn send_batch<'a, I>(fd: RawFd, items: I) -> SendResult
where
    I: IntoIterator<Item = (&'a SocketAddr, &'a [u8])>,
{
    let mut result = SendResult::default();
    let mut addrs: [libc::sockaddr_storage; SEND_BATCH] = unsafe { mem::zeroed() };
    let mut iov: [libc::iovec; SEND_BATCH] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; SEND_BATCH];
    // SAFETY: mmsghdr is plain old data; all-zero is valid.
    let mut msgs: [libc::mmsghdr; SEND_BATCH] = unsafe { mem::zeroed() };
    let mut n = 0usize;
    let mut iter = items.into_iter().peekable();
    loop {
        while n < SEND_BATCH {
            match iter.next() {
                Some((dest, data)) => {
                    let len = std_to_sockaddr(dest, &mut addrs[n]);
                    iov[n].iov_base = data.as_ptr() as *mut libc::c_void;
                    iov[n].iov_len = data.len();
                    msgs[n].msg_hdr.msg_name = &mut addrs[n] as *mut _ as *mut libc::c_void;
                    msgs[n].msg_hdr.msg_namelen = len;
                    msgs[n].msg_hdr.msg_iov = &mut iov[n];
                    msgs[n].msg_hdr.msg_iovlen = 1;
                    msgs[n].msg_hdr.msg_control = std::ptr::null_mut();
                    msgs[n].msg_hdr.msg_controllen = 0;
                    msgs[n].msg_hdr.msg_flags = 0;
                    n += 1;
                }
                None => break,
            }
        }
        if n == 0 {
            break;
        }
        let mut start = 0usize;
        let mut retried = false;
        while start < n {
            // SAFETY: msgs[start..n] point at addrs/iov of this frame and at borrowed data
            // that outlives the call.
            let r = unsafe {
                libc::sendmmsg(fd, msgs.as_mut_ptr().add(start), (n - start) as libc::c_uint, 0)
            };
            if r > 0 {
                start += r as usize;
                result.sent += r as usize;
                retried = false;
                continue;
            }
            let e = io::Error::last_os_error();
            let raw = e.raw_os_error().unwrap_or(0);
            if raw == libc::EINTR {
                continue;
            }
            if (raw == libc::EAGAIN || raw == libc::ENOBUFS) && !retried {
                // Kernel send buffer full: wait a little for room, then try once more.
                let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 5) };
                retried = true;
                continue;
            }
            // This datagram cannot go: skip it.
            start += 1;
            result.failed += 1;
            retried = false;
        }
        n = 0;
        if iter.peek().is_none() {
            break;
        }
    }
    result
}

/// iovecs handed to one sendmmsg call with GSO messages (each datagram is one iovec).
const SEND_IOVS: usize = 1024;
/// Room for one `UDP_SEGMENT` control message (a u16), 8-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct SegmentCmsg([u8; 32]);

/// Outcome of `send_planned`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GsoResult {
    /// Datagrams the kernel took / skipped (as `SendResult`).
    pub sent: usize,
    pub failed: usize,
    /// Messages sent with `UDP_SEGMENT`, and the datagrams they carried.
    pub gso_messages: usize,
    pub gso_datagrams: usize,
    /// The kernel refused a GSO message (EINVAL, EIO, ENOPROTOOPT, EOPNOTSUPP, EMSGSIZE):
    /// that message and the rest went without GSO; the caller should stop using it.
    pub refused: bool,
}

/// Whether `errno` on a GSO message means "no GSO here" rather than "this destination".
fn gso_refusal(errno: i32) -> bool {
    matches!(errno, libc::EINVAL | libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP | libc::EMSGSIZE)
}

/// Send a plan (`gso::Planner`): `item(i)` is the caller's datagram `i`; `order` the caller's
/// indices grouped per destination; `runs` the messages over `order` (all of a plan's, or a
/// consecutive part of them). A run of several datagrams goes as one message with a
/// `UDP_SEGMENT` control message (its datagrams as the message's iovecs, no copy; the kernel
/// segments it); a run of one as a plain datagram. Empty datagrams are skipped (a seal that
/// failed after planning); a run whose datagrams no longer fit its segment size (each but the
/// last of the first one's size, the last no longer) goes one datagram per message.
/// If the kernel refuses GSO, the refused run and every later one of `runs` go as plain
/// datagrams in the same order (`send_batch`) and `refused` is set.
pub fn send_planned<'a>(
    fd: RawFd,
    item: impl Fn(usize) -> (&'a SocketAddr, &'a [u8]),
    order: &[u32],
    runs: &[crate::gso::Run],
) -> GsoResult {
    let mut result = GsoResult::default();
    let Some(end) = runs.last().map(|r| (r.start + r.len) as usize) else { return result };
    PLANNED_CALL.with_borrow_mut(|call| send_runs(call, fd, &item, order, runs, end, &mut result));
    result
}

thread_local! {
    /// Each thread's `PlannedCall`, reused: not zeroed (about 30 KiB) for every send.
    static PLANNED_CALL: std::cell::RefCell<Box<PlannedCall>> = std::cell::RefCell::new(Box::new(PlannedCall::new()));
}

/// `send_planned` with the thread's call buffers.
fn send_runs<'a>(
    call: &mut PlannedCall,
    fd: RawFd,
    item: &impl Fn(usize) -> (&'a SocketAddr, &'a [u8]),
    order: &[u32],
    runs: &[crate::gso::Run],
    end: usize,
    result: &mut GsoResult,
) {
    let mut next_run = 0usize;
    while next_run < runs.len() {
        // Fill one sendmmsg call.
        call.clear();
        while next_run < runs.len() {
            let run = runs[next_run];
            let idx = &order[run.start as usize..(run.start + run.len) as usize];
            let datagrams = || idx.iter().map(|&i| item(i as usize)).filter(|(_, d)| !d.is_empty());
            if !call.push_run(run.start as usize, datagrams) {
                break;
            }
            next_run += 1;
        }
        if let Some(refused_from) = call.send(fd, result) {
            // No GSO: the refused run and the rest of `runs`, one datagram each, in order.
            let rest = send_batch(fd, order[refused_from..end].iter().map(|&i| item(i as usize)).filter(|(_, d)| !d.is_empty()));
            result.sent += rest.sent;
            result.failed += rest.failed;
            result.refused = true;
            return;
        }
    }
}

/// The buffers of one `sendmmsg` call of a plan (`send_planned`): its messages with their
/// addresses, iovecs and `UDP_SEGMENT` control messages; per message its datagrams and where
/// its run starts in the plan's `order`. Messages point into these buffers: the call is
/// filled and sent in place.
struct PlannedCall {
    addrs: [libc::sockaddr_storage; SEND_BATCH],
    iov: [libc::iovec; SEND_IOVS],
    cmsgs: [SegmentCmsg; SEND_BATCH],
    msgs: [libc::mmsghdr; SEND_BATCH],
    count: [usize; SEND_BATCH],
    from: [usize; SEND_BATCH],
    /// Messages and iovecs filled.
    n: usize,
    used_iov: usize,
}

impl PlannedCall {
    fn new() -> Self {
        PlannedCall {
            // SAFETY (zeroed arrays): plain old data; all-zero is valid.
            addrs: unsafe { mem::zeroed() },
            iov: [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; SEND_IOVS],
            cmsgs: [SegmentCmsg([0; 32]); SEND_BATCH],
            msgs: unsafe { mem::zeroed() },
            count: [0; SEND_BATCH],
            from: [0; SEND_BATCH],
            n: 0,
            used_iov: 0,
        }
    }

    fn clear(&mut self) {
        self.n = 0;
        self.used_iov = 0;
    }

    /// Add the run starting at `from` in `order` (`datagrams`: its non-empty datagrams) as
    /// one message, or one per datagram where they no longer fit its segment size. False
    /// (nothing added) if the call has no room left for it; a run of no datagram is done.
    #[inline]
    fn push_run<'a, I>(&mut self, from: usize, datagrams: impl Fn() -> I) -> bool
    where
        I: Iterator<Item = (&'a SocketAddr, &'a [u8])>,
    {
        let live = datagrams().count();
        let segment = datagrams().next().map_or(0, |(_, d)| d.len());
        let fits = datagrams().enumerate().all(|(k, (_, d))| d.len() == segment || (k + 1 == live && d.len() < segment));
        let messages = if live > 1 && !fits { live } else { 1 };
        // (A run fits an empty call: `MAX_SEGMENTS <= SEND_BATCH`, asserted below.)
        if self.used_iov + live > SEND_IOVS || self.n + messages > SEND_BATCH {
            return false;
        }
        let Some((dest, _)) = datagrams().next() else { return true };
        if messages > 1 {
            for (_, data) in datagrams() {
                self.push_message(dest, std::iter::once(data), 1, 0, from);
            }
        } else {
            self.push_message(dest, datagrams().map(|(_, d)| d), live, segment, from);
        }
        true
    }

    /// One message of `live` datagrams to `dest`; with more than one, a `UDP_SEGMENT` of
    /// `segment`.
    #[inline]
    fn push_message<'a>(&mut self, dest: &SocketAddr, data: impl Iterator<Item = &'a [u8]>, live: usize, segment: usize, from: usize) {
        let (n, at) = (self.n, self.used_iov);
        let alen = std_to_sockaddr(dest, &mut self.addrs[n]);
        for (k, d) in data.enumerate() {
            self.iov[at + k].iov_base = d.as_ptr() as *mut libc::c_void;
            self.iov[at + k].iov_len = d.len();
        }
        let h = &mut self.msgs[n].msg_hdr;
        h.msg_name = &mut self.addrs[n] as *mut _ as *mut libc::c_void;
        h.msg_namelen = alen;
        h.msg_iov = &mut self.iov[at];
        h.msg_iovlen = live as _;
        h.msg_flags = 0;
        if live > 1 {
            h.msg_control = self.cmsgs[n].0.as_mut_ptr() as *mut libc::c_void;
            // SAFETY: CMSG_SPACE/LEN are arithmetic; the buffer holds CMSG_SPACE(2) bytes
            // (checked by the assert), 8-aligned, and msg_controllen says so.
            unsafe {
                let space = libc::CMSG_SPACE(mem::size_of::<u16>() as u32) as usize;
                debug_assert!(space <= mem::size_of::<SegmentCmsg>());
                h.msg_controllen = space as _;
                let c = libc::CMSG_FIRSTHDR(h);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, segment as u16);
            }
        } else {
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
        }
        self.count[n] = live;
        self.from[n] = from;
        self.used_iov += live;
        self.n += 1;
    }

    /// Send the call's messages (counted into `result`): retried once on a full buffer, a
    /// message whose destination fails skipped and counted. If the kernel refuses GSO, stop
    /// and return where the refused message's run starts in `order`.
    fn send(&mut self, fd: RawFd, result: &mut GsoResult) -> Option<usize> {
        let (mut start, n) = (0usize, self.n);
        let mut retried = false;
        while start < n {
            // SAFETY: msgs[start..n] point at this call's addrs/iov/cmsgs and at borrowed
            // data that outlives the call.
            let r = unsafe { libc::sendmmsg(fd, self.msgs.as_mut_ptr().add(start), (n - start) as libc::c_uint, 0) };
            if r > 0 {
                for &len in &self.count[start..start + r as usize] {
                    result.sent += len;
                    if len > 1 {
                        result.gso_messages += 1;
                        result.gso_datagrams += len;
                    }
                }
                start += r as usize;
                retried = false;
                continue;
            }
            let raw = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if raw == libc::EINTR {
                continue;
            }
            if (raw == libc::EAGAIN || raw == libc::ENOBUFS) && !retried {
                let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 5) };
                retried = true;
                continue;
            }
            let len = self.count[start];
            if len > 1 && gso_refusal(raw) {
                return Some(self.from[start]);
            }
            // This message cannot go (its destination): skip it.
            start += 1;
            result.failed += len;
            retried = false;
        }
        None
    }
}

const _: () = assert!(crate::gso::MAX_SEGMENTS <= SEND_BATCH);

/// Wait until `sock_fd` is readable, `wake_fd` is readable, or `timeout_ms` passed.
/// Returns whether the wake fd fired.
pub fn wait(sock_fd: RawFd, wake_fd: RawFd, timeout_ms: i32) -> bool {
    let mut fds = [
        libc::pollfd { fd: sock_fd, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: wake_fd, events: libc::POLLIN, revents: 0 },
    ];
    // SAFETY: two valid pollfds.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    n > 0 && fds[1].revents & libc::POLLIN != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_roundtrip_on_loopback() {
        let a = bind("127.0.0.1", 0).unwrap();
        let b = bind("127.0.0.1", 0).unwrap();
        let b_addr = b.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 10 + i as usize]).collect();
        let items: Vec<(SocketAddr, &[u8])> = payloads.iter().map(|p| (b_addr, p.as_slice())).collect();
        let r = send_batch(a.as_raw_fd(), items.iter().map(|(d, p)| (d, *p)));
        assert_eq!(r, SendResult { sent: 100, failed: 0 });
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        while got.len() < 100 {
            wait(b.as_raw_fd(), b.as_raw_fd(), 1000);
            let n = batch.recv(b.as_raw_fd()).unwrap();
            for i in 0..n {
                let (from, data, trunc) = batch.get(i).unwrap();
                assert!(!trunc);
                assert_eq!(from, a.local_addr().unwrap());
                got.push(data.to_vec());
            }
        }
        assert_eq!(got, payloads);
    }

    /// Everything `sock` receives within `expect` datagrams (1 s per wait at most).
    fn recv_all(sock: &UdpSocket, expect: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut batch = RecvBatch::new();
        let mut got = Vec::new();
        while got.len() < expect {
            wait(sock.as_raw_fd(), sock.as_raw_fd(), 1000);
            let n = batch.recv(sock.as_raw_fd()).unwrap();
            if n == 0 {
                break; // nothing more within a second
            }
            for i in 0..n {
                let (from, data, trunc) = batch.get(i).unwrap();
                assert!(!trunc);
                got.push((from, data.to_vec()));
            }
        }
        got
    }

    /// Packet-major datagrams to `dests` (per packet every destination), sizes as a key frame:
    /// equal, the last of each burst shorter; each payload names its destination and number.
    fn burst(dests: &[SocketAddr], packets: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut items = Vec::new();
        for p in 0..packets {
            for (d, dest) in dests.iter().enumerate() {
                let len = if p + 1 == packets { 300 + d } else { 1200 + d };
                let mut data = vec![0u8; len];
                data[0] = d as u8;
                data[1..3].copy_from_slice(&(p as u16).to_be_bytes());
                items.push((*dest, data));
            }
        }
        items
    }

    fn send_plan(fd: RawFd, items: &[(SocketAddr, Vec<u8>)]) -> GsoResult {
        let mut planner = crate::gso::Planner::new();
        planner.plan(items.iter().enumerate().map(|(i, (d, b))| (i, *d, b.len())));
        send_planned(fd, |i| (&items[i].0, items[i].1.as_slice()), planner.order(), planner.runs())
    }

    #[test]
    fn gso_burst_arrives_complete_and_in_order() {
        let a = bind("127.0.0.1", 0).unwrap();
        let rx: Vec<UdpSocket> = (0..3).map(|_| bind("127.0.0.1", 0).unwrap()).collect();
        let dests: Vec<SocketAddr> = rx.iter().map(|s| s.local_addr().unwrap()).collect();
        let items = burst(&dests, 100);
        let r = send_plan(a.as_raw_fd(), &items);
        assert!(!r.refused, "this kernel (>= 4.18) takes UDP_SEGMENT on loopback");
        assert_eq!((r.sent, r.failed), (300, 0));
        // 100 per destination: runs of 64 and 36 (the last one shorter ends the second).
        assert_eq!((r.gso_messages, r.gso_datagrams), (6, 300));
        for (d, sock) in rx.iter().enumerate() {
            let got = recv_all(sock, 100);
            let want: Vec<(SocketAddr, Vec<u8>)> = items
                .iter()
                .filter(|(dest, _)| *dest == dests[d])
                .map(|(_, b)| (a.local_addr().unwrap(), b.clone()))
                .collect();
            assert_eq!(got.len(), 100, "destination {d}: every datagram, segmented by the kernel");
            assert_eq!(got, want, "destination {d}: same bytes, same order");
        }
    }

    #[test]
    fn gso_refused_falls_back_to_plain_datagrams() {
        // SO_NO_CHECK (no UDP checksum on IPv4) makes the kernel refuse GSO with EINVAL.
        let a = bind("127.0.0.1", 0).unwrap();
        setsockopt_int(a.as_raw_fd(), libc::SO_NO_CHECK, 1).unwrap();
        let rx: Vec<UdpSocket> = (0..2).map(|_| bind("127.0.0.1", 0).unwrap()).collect();
        let dests: Vec<SocketAddr> = rx.iter().map(|s| s.local_addr().unwrap()).collect();
        let items = burst(&dests, 10);
        let r = send_plan(a.as_raw_fd(), &items);
        assert!(r.refused);
        assert_eq!((r.sent, r.failed, r.gso_messages), (20, 0, 0));
        for (d, sock) in rx.iter().enumerate() {
            let got: Vec<Vec<u8>> = recv_all(sock, 10).into_iter().map(|(_, b)| b).collect();
            let want: Vec<Vec<u8>> = items.iter().filter(|(x, _)| *x == dests[d]).map(|(_, b)| b.clone()).collect();
            assert_eq!(got, want);
        }
    }

    /// A sender, a receiver, a burst of `packets` to it and the plan made of it.
    fn one_planned_burst(packets: usize) -> (UdpSocket, UdpSocket, Vec<(SocketAddr, Vec<u8>)>, crate::gso::Planner) {
        let a = bind("127.0.0.1", 0).unwrap();
        let rx = bind("127.0.0.1", 0).unwrap();
        let items = burst(&[rx.local_addr().unwrap()], packets);
        let mut planner = crate::gso::Planner::new();
        planner.plan(items.iter().enumerate().map(|(i, (d, b))| (i, *d, b.len())));
        (a, rx, items, planner)
    }

    #[test]
    fn gso_plan_skips_datagrams_emptied_after_planning() {
        // A seal that fails after planning empties its datagram: the run goes without it.
        let (a, rx, mut items, planner) = one_planned_burst(6);
        items[0].1.clear(); // the run's first: the segment size comes from the next one
        items[3].1.clear();
        let r = send_planned(a.as_raw_fd(), |i| (&items[i].0, items[i].1.as_slice()), planner.order(), planner.runs());
        assert_eq!((r.sent, r.failed, r.gso_messages, r.gso_datagrams), (4, 0, 1, 4));
        let got: Vec<Vec<u8>> = recv_all(&rx, 4).into_iter().map(|(_, b)| b).collect();
        let want: Vec<Vec<u8>> = items.iter().filter(|(_, b)| !b.is_empty()).map(|(_, b)| b.clone()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn gso_run_that_no_longer_fits_goes_one_datagram_each() {
        // Planned as equal sizes, then one grew (a seal of another size): segmenting by the
        // first one's size would cut the datagrams wrongly, so each goes alone, in order.
        let (a, rx, mut items, planner) = one_planned_burst(5);
        assert_eq!(planner.runs().len(), 1);
        items[2].1.extend_from_slice(&[1, 2, 3, 4]);
        let r = send_planned(a.as_raw_fd(), |i| (&items[i].0, items[i].1.as_slice()), planner.order(), planner.runs());
        assert_eq!((r.sent, r.failed, r.gso_messages), (5, 0, 0));
        let got: Vec<Vec<u8>> = recv_all(&rx, 5).into_iter().map(|(_, b)| b).collect();
        assert_eq!(got, items.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>());
    }

    #[test]
    fn gso_plan_sent_in_parts_sends_only_the_runs_given() {
        // The engine seals and sends a plan a few runs at a time: each call sends only its
        // runs, so what is not sealed yet never leaves early (refused or not).
        for refuse in [false, true] {
            let a = bind("127.0.0.1", 0).unwrap();
            if refuse {
                setsockopt_int(a.as_raw_fd(), libc::SO_NO_CHECK, 1).unwrap();
            }
            let rx: Vec<UdpSocket> = (0..4).map(|_| bind("127.0.0.1", 0).unwrap()).collect();
            let dests: Vec<SocketAddr> = rx.iter().map(|s| s.local_addr().unwrap()).collect();
            let items = burst(&dests, 5);
            let mut planner = crate::gso::Planner::new();
            planner.plan(items.iter().enumerate().map(|(i, (d, b))| (i, *d, b.len())));
            assert_eq!(planner.runs().len(), 4);
            let item = |i: usize| (&items[i].0, items[i].1.as_slice());
            let r = send_planned(a.as_raw_fd(), item, planner.order(), &planner.runs()[1..3]);
            assert_eq!((r.sent, r.failed, r.refused), (10, 0, refuse));
            for (d, sock) in rx.iter().enumerate() {
                if (1..3).contains(&d) {
                    assert_eq!(recv_all(sock, 5).len(), 5, "refuse {refuse}, destination {d}");
                } else {
                    // Loopback delivers within the send call: nothing queued means nothing sent.
                    assert_eq!(RecvBatch::new().recv(sock.as_raw_fd()).unwrap(), 0, "refuse {refuse}, destination {d}");
                }
            }
        }
    }

    /// Everything `sock` receives into `batch` until `expect` datagrams or a quiet second,
    /// with the coalesced buffers/datagrams counted over the calls.
    type Received = Vec<(SocketAddr, Vec<u8>, bool)>;

    fn recv_into(batch: &mut RecvBatch, sock: &UdpSocket, expect: usize) -> (Received, (usize, usize)) {
        let mut got = Vec::new();
        let mut coalesced = (0, 0);
        while got.len() < expect {
            wait(sock.as_raw_fd(), sock.as_raw_fd(), 1000);
            let n = batch.recv(sock.as_raw_fd()).unwrap();
            if n == 0 {
                break;
            }
            coalesced.0 += batch.coalesced().0;
            coalesced.1 += batch.coalesced().1;
            for i in 0..n {
                let (from, data, trunc) = batch.get(i).unwrap();
                got.push((from, data.to_vec(), trunc));
            }
            assert!(batch.get(n).is_none());
        }
        (got, coalesced)
    }

    /// Two senders' GSO bursts (equal sizes, the last of each shorter) interleaved with
    /// plain datagrams, to `dest`; returns what was sent, per datagram, in send order.
    fn gso_bursts_to(dest: SocketAddr, a: &UdpSocket, b: &UdpSocket) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut sent = Vec::new();
        for round in 0..3u8 {
            for (k, (sock, len, count)) in [(a, 1200usize, 20usize), (b, 700, 7)].into_iter().enumerate() {
                let items: Vec<(SocketAddr, Vec<u8>)> = (0..count)
                    .map(|p| {
                        let l = if p + 1 == count { 111 + k } else { len };
                        let mut d = vec![round; l];
                        d[0] = k as u8;
                        d[1] = p as u8;
                        (dest, d)
                    })
                    .collect();
                let r = send_plan(sock.as_raw_fd(), &items);
                assert_eq!((r.sent, r.gso_messages, r.refused), (count, 1, false));
                let from = sock.local_addr().unwrap();
                sent.extend(items.into_iter().map(|(_, d)| (from, d)));
            }
            let single = vec![9u8, round, 7, 7];
            send_batch(a.as_raw_fd(), std::iter::once((&dest, single.as_slice())));
            sent.push((a.local_addr().unwrap(), single));
        }
        sent
    }

    #[test]
    fn gro_splits_coalesced_buffers_exactly() {
        let rx = bind("127.0.0.1", 0).unwrap();
        set_gro(rx.as_raw_fd(), true).expect("this kernel (>= 5.0) has UDP_GRO");
        let (a, b) = (bind("127.0.0.1", 0).unwrap(), bind("127.0.0.1", 0).unwrap());
        let sent = gso_bursts_to(rx.local_addr().unwrap(), &a, &b);
        let mut batch = RecvBatch::with_gro();
        assert!(batch.gro());
        let (got, coalesced) = recv_into(&mut batch, &rx, sent.len());
        let got_plain: Vec<(SocketAddr, Vec<u8>)> = got.iter().map(|(f, d, t)| {
            assert!(!t);
            (*f, d.clone())
        }).collect();
        // Every datagram with its own source, size and bytes, in order (per source and
        // overall: each burst was queued whole before the next was sent).
        assert_eq!(got_plain, sent);
        // Loopback hands a GSO message to a GRO socket whole: six bursts came coalesced.
        assert_eq!(coalesced, (6, 3 * (20 + 7)));
    }

    #[test]
    fn gro_off_receives_the_same_datagrams_one_by_one() {
        let rx = bind("127.0.0.1", 0).unwrap();
        let (a, b) = (bind("127.0.0.1", 0).unwrap(), bind("127.0.0.1", 0).unwrap());
        let sent = gso_bursts_to(rx.local_addr().unwrap(), &a, &b);
        let mut batch = RecvBatch::new();
        assert!(!batch.gro());
        let (got, coalesced) = recv_into(&mut batch, &rx, sent.len());
        let got: Vec<(SocketAddr, Vec<u8>)> = got.into_iter().map(|(f, d, _)| (f, d)).collect();
        assert_eq!(got, sent);
        assert_eq!(coalesced, (0, 0));
        // And turning GRO off on a socket that had it: the same again.
        set_gro(rx.as_raw_fd(), true).unwrap();
        set_gro(rx.as_raw_fd(), false).unwrap();
        let sent = gso_bursts_to(rx.local_addr().unwrap(), &a, &b);
        let (got, _) = recv_into(&mut batch, &rx, sent.len());
        assert_eq!(got.into_iter().map(|(f, d, _)| (f, d)).collect::<Vec<_>>(), sent);
    }

    #[test]
    fn gro_batch_flags_oversized_datagrams_as_truncated_like_without() {
        for gro in [false, true] {
            let rx = bind("127.0.0.1", 0).unwrap();
            set_gro(rx.as_raw_fd(), gro).unwrap();
            let tx = bind("127.0.0.1", 0).unwrap();
            let dest = rx.local_addr().unwrap();
            let (big, small) = (vec![1u8; SLOT + 100], vec![2u8; 50]);
            send_batch(tx.as_raw_fd(), [(&dest, big.as_slice()), (&dest, small.as_slice())]);
            let mut batch = if gro { RecvBatch::with_gro() } else { RecvBatch::new() };
            let (got, _) = recv_into(&mut batch, &rx, 2);
            let flags: Vec<bool> = got.iter().map(|(_, _, t)| *t).collect();
            assert_eq!(flags, vec![true, false], "gro {gro}");
            assert_eq!(got[1].1, small);
        }
    }

    /// The socket's `UDP_GRO` option as the kernel reports it.
    fn gro_of(fd: RawFd) -> libc::c_int {
        let mut v: libc::c_int = -1;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid fd, pointer to a c_int and its size.
        let r = unsafe { libc::getsockopt(fd, libc::SOL_UDP, UDP_GRO, &mut v as *mut _ as *mut libc::c_void, &mut len) };
        assert_eq!(r, 0);
        v
    }

    #[test]
    fn gro_is_on_for_every_socket_or_none() {
        let (a, b) = (bind("127.0.0.1", 0).unwrap(), bind("127.0.0.1", 0).unwrap());
        assert!(set_gro_all(&[a.as_raw_fd(), b.as_raw_fd()]));
        assert_eq!((gro_of(a.as_raw_fd()), gro_of(b.as_raw_fd())), (1, 1));
        // One socket refuses (a TCP socket, as an old kernel would): off again everywhere.
        let c = bind("127.0.0.1", 0).unwrap();
        let refuses = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!set_gro_all(&[c.as_raw_fd(), refuses.as_raw_fd()]));
        assert_eq!(gro_of(c.as_raw_fd()), 0);
    }

    #[test]
    fn gro_refused_where_the_socket_has_none() {
        // A TCP socket has no SOL_UDP options: the kernel refuses, as an old kernel would.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = set_gro(l.as_raw_fd(), true).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOPROTOOPT));
    }

    #[test]
    fn group_shares_a_port_and_refuses_strangers() {
        let group = bind_group("127.0.0.1", 0, 3).unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert!(group.iter().all(|s| s.local_addr().unwrap().port() == port));
        // Neither a plain socket nor a second group may take the port now.
        assert!(bind("127.0.0.1", port).is_err());
        assert!(bind_group("127.0.0.1", port, 2).is_err());
        drop(group);
        let again = bind_group("127.0.0.1", port, 2).unwrap();
        assert_eq!(again[1].local_addr().unwrap().port(), port);
    }

    #[test]
    fn sockaddr_roundtrip() {
        for s in ["1.2.3.4:5", "[::1]:443", "[fe80::1%2]:9"] {
            let a: SocketAddr = s.parse().unwrap();
            let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
            std_to_sockaddr(&a, &mut ss);
            assert_eq!(sockaddr_to_std(&ss), Some(a));
        }
    }
}
