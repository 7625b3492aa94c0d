//! A thin epoll wrapper for the I/O thread: the UDP socket, the stop fd, the TCP listener and
//! every TCP connection wait in one set, level-triggered, each under a 64-bit token. Interest
//! may change from any thread (epoll_ctl is thread-safe): a sender that finds a connection's
//! kernel buffer full asks for writability while the I/O thread waits.

use std::io;
use std::os::fd::RawFd;

pub const READABLE: u32 = libc::EPOLLIN as u32;
pub const WRITABLE: u32 = libc::EPOLLOUT as u32;
/// Hang-up or error (always reported by epoll).
pub const CLOSED: u32 = (libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32;

pub struct Poller {
    fd: RawFd,
}

#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub token: u64,
    pub events: u32,
}

impl Poller {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller { fd })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: events | libc::EPOLLRDHUP as u32, u64: token };
        // SAFETY: valid epoll fd and event struct.
        let r = unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, events)
    }

    pub fn modify(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, events)
    }

    /// Closing the fd removes it too; this is for an fd that stays open a little longer.
    pub fn delete(&self, fd: RawFd) {
        // SAFETY: valid epoll fd; a null event is allowed for DEL.
        unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
    }

    /// Wait up to `timeout_ms` (0: just look) and fill `events`; the number ready.
    pub fn wait(&self, events: &mut Events, timeout_ms: i32) -> usize {
        // SAFETY: the buffer has room for its length of events.
        let n = unsafe { libc::epoll_wait(self.fd, events.raw.as_mut_ptr(), events.raw.len() as libc::c_int, timeout_ms) };
        events.n = n.max(0) as usize;
        events.n
    }
}

/// Reusable buffer of ready events.
pub struct Events {
    raw: Vec<libc::epoll_event>,
    n: usize,
}

impl Events {
    pub fn new(cap: usize) -> Self {
        Events { raw: vec![libc::epoll_event { events: 0, u64: 0 }; cap.max(1)], n: 0 }
    }

    /// Forget the last wait's events.
    pub fn clear(&mut self) {
        self.n = 0;
    }

    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.raw[..self.n].iter().map(|e| Event { token: e.u64, events: e.events })
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.fd) };
    }
}
