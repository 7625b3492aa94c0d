//! Where a datagram came from and where one goes: a remote address and the local socket kind
//! it is reached through. A UDP flow and a TCP connection from the same ip:port are different
//! remotes. The router keys tuples by `Remote` and knows nothing else of sockets; the I/O edge
//! (`engine/`) maps a `Via` to a socket (the UDP media socket, a TCP connection). More
//! socket kinds are new `Via` variants.

use std::fmt;
use std::net::SocketAddr;

/// The kind of local socket a remote is reached through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Via {
    /// The engine's UDP media socket.
    #[default]
    Udp,
    /// The accepted TCP connection (RFC 4571 framing) from this remote address on the
    /// engine's TCP listener (one per remote address, so the address names it).
    Tcp,
    /// The UDP socket of a plain or pipe transport (its own port), by the engine's id of it.
    Plain(SocketId),
}

/// The engine's id of a plain/pipe transport's socket; 0 (`MAIN_SOCKET`) is never one.
pub type SocketId = u32;
/// Not a plain socket id: the engine's media port.
pub const MAIN_SOCKET: SocketId = 0;

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Udp => "udp",
            Via::Tcp => "tcp",
            Via::Plain(_) => "plain",
        }
    }

    pub fn from_name(s: &str) -> Option<Via> {
        match s {
            "udp" => Some(Via::Udp),
            "tcp" => Some(Via::Tcp),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Remote {
    pub addr: SocketAddr,
    pub via: Via,
}

impl Remote {
    #[inline]
    pub fn udp(addr: SocketAddr) -> Self {
        Remote { addr, via: Via::Udp }
    }
    #[inline]
    pub fn tcp(addr: SocketAddr) -> Self {
        Remote { addr, via: Via::Tcp }
    }
    #[inline]
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    #[inline]
    pub fn ip(&self) -> std::net::IpAddr {
        self.addr.ip()
    }
}

impl From<SocketAddr> for Remote {
    /// A plain address is a UDP remote.
    fn from(addr: SocketAddr) -> Self {
        Remote::udp(addr)
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.via {
            // A plain/pipe transport's own socket is UDP too: shown as an address.
            Via::Udp | Via::Plain(_) => write!(f, "{}", self.addr),
            other => write!(f, "{}/{}", self.addr, other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_and_tcp_from_one_address_differ() {
        let a: SocketAddr = "1.2.3.4:5".parse().unwrap();
        assert_ne!(Remote::udp(a), Remote::tcp(a));
        assert_eq!(Remote::from(a), Remote::udp(a));
        assert_eq!(Remote::tcp(a).to_string(), "1.2.3.4:5/tcp");
        assert_eq!(Remote::udp(a).to_string(), "1.2.3.4:5");
        assert_eq!(Via::from_name("tcp"), Some(Via::Tcp));
        assert_eq!(Via::from_name("sctp"), None);
    }
}
