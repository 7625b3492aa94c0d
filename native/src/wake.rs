//! A Linux eventfd used as a level-triggered "something is waiting" flag: readable while set.
//! Python waits on it with `trio.lowlevel.wait_readable`; the I/O thread uses a second one to
//! be woken for shutdown.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        Ok(EventFd { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Make the fd readable (idempotent apart from the counter).
    pub fn set(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our own fd.
        unsafe {
            libc::write(self.fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8);
        }
    }

    /// Make the fd unreadable again. Non-blocking: fine when it was not set.
    pub fn reset(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our own fd.
        unsafe {
            libc::read(self.fd.as_raw_fd(), &mut v as *mut u64 as *mut libc::c_void, 8);
        }
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n == 1 && p.revents & libc::POLLIN != 0
    }

    #[test]
    fn set_and_reset() {
        let e = EventFd::new().unwrap();
        assert!(!readable(e.as_raw_fd()));
        e.set();
        e.set();
        assert!(readable(e.as_raw_fd()));
        e.reset();
        assert!(!readable(e.as_raw_fd()));
        e.reset();
        assert!(!readable(e.as_raw_fd()));
    }
}
