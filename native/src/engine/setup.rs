//! Binding the rtc port: one UDP socket per worker and the TCP listener on the same number;
//! GRO on all of them or none.

use super::*;

/// Tries at finding a free port number for both UDP and TCP when the port is chosen by the OS.
const BIND_TRIES: usize = 20;

/// The UDP sockets (one per worker, `io::bind_group`) and, with `tcp`, a TCP listener on the
/// same port number. Port 0: the OS picks the UDP port; if TCP cannot have that number, try
/// another.
pub(super) fn bind_both(host: &str, port: u16, tcp: bool, workers: usize) -> PyResult<(Vec<UdpSocket>, Option<std::net::TcpListener>)> {
    let mut last = String::new();
    for _ in 0..BIND_TRIES {
        let sockets = io::bind_group(host, port, workers)
            .map_err(|e| PyValueError::new_err(format!("cannot bind {host}:{port}: {e}")))?;
        if !tcp {
            return Ok((sockets, None));
        }
        let addr = sockets[0].local_addr().map_err(|e| PyValueError::new_err(e.to_string()))?;
        match tcp::listen(addr) {
            Ok(l) => return Ok((sockets, Some(l))),
            Err(e) if port == 0 => last = e.to_string(),
            Err(e) => return Err(PyValueError::new_err(format!("cannot listen on TCP {host}:{port}: {e}"))),
        }
    }
    Err(PyValueError::new_err(format!("cannot listen on TCP {host}: {last}")))
}

/// UDP GRO on every socket of `sockets` if `want`: (on, refused). All or none: if the kernel
/// refuses it on one, it is turned off again on those that took it (a socket with GRO must
/// be read with GRO-sized buffers).
pub(super) fn enable_gro(sockets: &[UdpSocket], want: bool) -> (bool, bool) {
    if !want {
        return (false, false);
    }
    let fds: Vec<RawFd> = sockets.iter().map(|s| s.as_raw_fd()).collect();
    let on = io::set_gro_all(&fds);
    (on, !on)
}

/// Each worker's I/O: its socket, its wake fd and, for workers other than 0, its own epoll
/// set (socket, wake fd, `stop_fd`); worker 0's socket and wake fd go in `poller`, the
/// engine's set. Without `udp`, the sockets are not watched (TCP shares their port number).
pub(super) fn worker_ios(sockets: Vec<UdpSocket>, udp: bool, poller: &Poller, stop_fd: &EventFd) -> PyResult<Vec<WorkerIo>> {
    let epoll_err = |e: std::io::Error| PyValueError::new_err(format!("epoll: {e}"));
    let mut ios = Vec::with_capacity(sockets.len());
    for (i, socket) in sockets.into_iter().enumerate() {
        let wake = EventFd::new().map_err(|e| PyValueError::new_err(format!("eventfd: {e}")))?;
        let own = if i == 0 { None } else { Some(Poller::new().map_err(epoll_err)?) };
        let set = own.as_ref().unwrap_or(poller);
        if udp {
            set.add(socket.as_raw_fd(), TOKEN_UDP, READABLE).map_err(epoll_err)?;
        }
        set.add(wake.as_raw_fd(), TOKEN_WAKE, READABLE).map_err(epoll_err)?;
        if i > 0 {
            set.add(stop_fd.as_raw_fd(), TOKEN_STOP, READABLE).map_err(epoll_err)?;
        }
        ios.push(WorkerIo { socket, wake, poller: own, cpu: AtomicI64::new(-1) });
    }
    Ok(ios)
}
