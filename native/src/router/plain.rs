//! Plain transports (RTP/RTCP without ICE or DTLS, mediasoup's PlainTransport semantics):
//! each has its own socket at the I/O edge, so a datagram arrives already tied to its
//! transport; the remote address is fixed by `connect_plain` or learnt from the first valid
//! packet (comedia) and never moves afterwards; SRTP is optional (keys given by the control
//! plane), else packets pass through a null context. Everything past the source check is
//! the WebRTC path: the same producers, consumers, feedback and reports.
//!
//! Without rtcp-mux (`set_plain_rtcp_socket`) RTCP has a second socket of its own: our RTCP
//! leaves by it to the RTCP remote (given by `connect_plain_split`'s `rtcp_port`, or learnt
//! with comedia from the first valid RTCP packet on it, once). RTP on the RTCP port is
//! dropped and counted. RTCP on the RTP port is taken only from the RTCP remote address
//! (mediasoup compares the source address alone, whichever of the two sockets it came to);
//! from anywhere else it is dropped and counted, and it never latches a comedia address.

use std::net::SocketAddr;
use std::time::Instant;

use crate::srtp::{Profile, SrtpContext, SrtpError};
use crate::stun_check::IceKey;

use crate::remote::{Remote, SocketId, Via, MAIN_SOCKET};

use super::output::{DropReason, Output};
use super::seal::TxSrtp;
use super::spec::{invalid, unknown, Result, SrtpKeys};
use super::transport::{Plain, RtcpPort, Transport};
use super::{Handle, Router};

/// ICE key of a plain transport: never used (a plain transport has no ufrag in the STUN
/// map, so no STUN request ever reaches it).
const NO_ICE: &[u8] = b"plain transport: no ICE";

/// RTCP by its second byte (RFC 5761: packet types 192..=223), as the demultiplexer does.
fn is_rtcp(data: &[u8]) -> bool {
    matches!(data, [128..=191, 192..=223, ..])
}

/// SRTP contexts (local: what we send, remote: what the peer sends) from `keys`.
pub(super) fn srtp_pair(keys: &SrtpKeys) -> Result<(SrtpContext, SrtpContext)> {
    let profile = &keys.profile;
    let p = Profile::from_name(profile).ok_or_else(|| invalid(format!("unknown SRTP profile {profile:?}")))?;
    let bad = |what: &str, e: SrtpError| {
        invalid(format!("bad {what} SRTP key/salt for {} (want {} + {} bytes): {e}", p.name(), p.key_len(), p.salt_len()))
    };
    let tx = SrtpContext::new(p, &keys.local_key, &keys.local_salt).map_err(|e| bad("local", e))?;
    let rx = SrtpContext::new(p, &keys.remote_key, &keys.remote_salt).map_err(|e| bad("remote", e))?;
    Ok((tx, rx))
}

impl Router {
    /// A plain transport whose datagrams come and leave by the engine's socket `socket` (not
    /// `MAIN_SOCKET`). `comedia`: the remote address is the source of the first valid packet;
    /// `srtp`: packets are protected with the keys `connect_plain` gives (else plain RTP).
    pub fn add_plain_transport(&mut self, h: Handle, socket: SocketId, comedia: bool, srtp: bool) -> Result<()> {
        if self.handle_in_use(h) {
            return Err(invalid(format!("handle {h} already in use")));
        }
        if socket == MAIN_SOCKET {
            return Err(invalid("a plain transport needs its own socket"));
        }
        let key = IceKey::new(NO_ICE).ok_or_else(|| invalid("ICE key"))?;
        let rtcp_ssrc = (self.rng.next() as u32) | 1;
        let mut t = Transport::new("", key, rtcp_ssrc);
        t.via = Via::Plain(socket);
        t.plain = Some(Box::new(Plain { comedia, wrong_source: 0, rtcp: None }));
        if !srtp {
            t.tx = Some(TxSrtp::inline(SrtpContext::null()));
            t.rx = Some(SrtpContext::null());
        }
        self.transports.insert(h, t);
        Ok(())
    }

    /// `rtcpMux: false`: plain transport `h` takes and sends its RTCP by the engine's socket
    /// `socket` (a second one of its own), before it is connected.
    pub fn set_plain_rtcp_socket(&mut self, h: Handle, socket: SocketId) -> Result<()> {
        let t = self.transports.get_mut(&h).ok_or_else(|| unknown("transport", h))?;
        let Some(plain) = t.plain.as_deref_mut() else { return Err(invalid(format!("transport {h} is not a plain transport"))) };
        if socket == MAIN_SOCKET || Via::Plain(socket) == t.via {
            return Err(invalid("the RTCP socket must be a second socket of the transport's own"));
        }
        if plain.rtcp.is_some() || t.selected.is_some() {
            return Err(invalid(format!("transport {h} already has its RTCP socket or is connected")));
        }
        plain.rtcp = Some(RtcpPort { via: Via::Plain(socket), remote: None, rtp_on_rtcp_port: 0, rtcp_on_rtp_port: 0 });
        Ok(())
    }

    /// The remote end of plain transport `h`: its address (not for comedia, whose address the
    /// first packet gives) and SRTP keys (needed if the transport was made with SRTP).
    pub fn connect_plain(&mut self, now: Instant, h: Handle, remote: Option<SocketAddr>, keys: Option<&SrtpKeys>, out: &mut Output) -> Result<()> {
        self.connect_plain_split(now, h, remote, None, keys, out)
    }

    /// `connect_plain` with the remote RTCP port of a transport without rtcp-mux (mediasoup's
    /// rules: required there unless comedia, refused with rtcp-mux).
    pub fn connect_plain_split(&mut self, now: Instant, h: Handle, remote: Option<SocketAddr>, rtcp_port: Option<u16>, keys: Option<&SrtpKeys>, out: &mut Output) -> Result<()> {
        let t = self.transports.get(&h).ok_or_else(|| unknown("transport", h))?;
        let Some(plain) = &t.plain else { return Err(invalid(format!("transport {h} is not a plain transport"))) };
        if plain.comedia && (remote.is_some() || rtcp_port.is_some()) {
            return Err(invalid("a comedia transport learns its remote address from the first packet"));
        }
        if !plain.comedia && remote.is_none() && t.selected.is_none() {
            return Err(invalid("the remote address is needed (comedia is off)"));
        }
        match (&plain.rtcp, rtcp_port) {
            (None, Some(_)) => return Err(invalid("cannot set rtcpPort with rtcpMux enabled")),
            (Some(_), None) if remote.is_some() => return Err(invalid("missing rtcpPort (required with rtcpMux disabled)")),
            (Some(_), Some(0)) => return Err(invalid("rtcpPort must not be 0")),
            _ => {}
        }
        let srtp = keys.map(srtp_pair).transpose()?;
        let t = self.transports.get_mut(&h).expect("checked above");
        let was_connected = t.is_connected();
        if let Some((tx, rx)) = srtp {
            t.tx = Some(TxSrtp::inline(tx));
            t.rx = Some(rx);
        }
        if let Some(a) = remote {
            t.selected = Some(Remote { addr: a, via: t.via });
            if let (Some(r), Some(port)) = (t.plain.as_deref_mut().and_then(|p| p.rtcp.as_mut()), rtcp_port) {
                r.remote = Some(Remote { addr: SocketAddr::new(a.ip(), port), via: r.via });
            }
        }
        if t.is_connected() && !was_connected {
            self.on_transport_connected(now, h, out);
        }
        Ok(())
    }

    /// A datagram that came to plain transport `th`'s own (RTP) socket from `from`. Only RTP
    /// and RTCP from the remote address (or, comedia, from anyone until a valid packet fixed
    /// it) are taken; the rest is dropped and counted. Without rtcp-mux, RTCP here is taken
    /// only from the RTCP remote address.
    pub fn handle_plain_datagram(&mut self, now: Instant, th: Handle, from: SocketAddr, data: &[u8], out: &mut Output) {
        let Some(t) = self.transports.get_mut(&th) else {
            self.drops.inc(DropReason::UnknownSource);
            return;
        };
        let Some(plain) = t.plain.as_deref_mut() else {
            self.drops.inc(DropReason::UnknownSource);
            return;
        };
        let mut src = Remote { addr: from, via: t.via };
        let from_remote = match (plain.rtcp.as_mut(), is_rtcp(data)) {
            (Some(r), true) => match r.remote {
                // As if it had come to the RTCP port (the RTCP remote is already known).
                Some(a) if a.addr == from => {
                    src = a;
                    true
                }
                // From the RTP remote (or, comedia, before it is known): the wrong port.
                _ if t.selected.map_or(plain.comedia, |a| a.addr == from) => {
                    r.rtcp_on_rtp_port += 1;
                    t.stats.rx(data.len());
                    self.drops.inc(DropReason::PlainWrongPort);
                    return;
                }
                _ => false,
            },
            _ => match t.selected {
                Some(a) => a == src,
                None => plain.comedia,
            },
        };
        if !from_remote {
            plain.wrong_source += 1;
            t.stats.rx(data.len());
            self.drops.inc(DropReason::PlainWrongSource);
            return;
        }
        self.plain_rtp_or_rtcp(now, th, src, data, out);
    }

    /// A datagram that came to the RTCP socket of plain transport `th` (no rtcp-mux): RTCP
    /// from the RTCP remote (comedia: from anyone until a valid one fixed it) is taken; RTP
    /// is dropped and counted, as is anything from another address.
    pub fn handle_plain_rtcp_datagram(&mut self, now: Instant, th: Handle, from: SocketAddr, data: &[u8], out: &mut Output) {
        let Some(t) = self.transports.get_mut(&th) else {
            self.drops.inc(DropReason::UnknownSource);
            return;
        };
        let Some(plain) = t.plain.as_deref_mut() else {
            self.drops.inc(DropReason::UnknownSource);
            return;
        };
        let Some(r) = plain.rtcp.as_mut() else {
            self.drops.inc(DropReason::UnknownSource);
            return;
        };
        let src = Remote { addr: from, via: r.via };
        let rtp = !is_rtcp(data) && matches!(data, [128..=191, ..]);
        let from_remote = match r.remote {
            Some(a) => a == src,
            None => plain.comedia,
        };
        if rtp || !from_remote {
            t.stats.rx(data.len());
            if rtp {
                r.rtp_on_rtcp_port += 1;
                self.drops.inc(DropReason::PlainWrongPort);
            } else {
                plain.wrong_source += 1;
                self.drops.inc(DropReason::PlainWrongSource);
            }
            return;
        }
        self.plain_rtp_or_rtcp(now, th, src, data, out);
    }

    fn plain_rtp_or_rtcp(&mut self, now: Instant, th: Handle, src: Remote, data: &[u8], out: &mut Output) {
        match data {
            [128..=191, _, ..] => {
                if is_rtcp(data) {
                    self.on_rtcp_of(now, th, src, data, out)
                } else {
                    self.on_rtp_of(now, th, src, data, out)
                }
                // The packet fixed a comedia transport's remote address: media may flow.
                if let Some(h) = self.connect_pending.take() {
                    self.on_transport_connected(now, h, out);
                }
            }
            _ => self.drops.inc(DropReason::Demux),
        }
    }

    /// Someone without RTCP (ffmpeg starting to record) wants a key frame for consumer `ch`:
    /// ask its producer for one (as a PLI/FIR from the consumer's receiver would).
    pub fn request_consumer_key_frame(&mut self, now: Instant, ch: Handle, out: &mut Output) -> Result<()> {
        let c = self.consumers.get_mut(&ch).ok_or_else(|| unknown("consumer", ch))?;
        c.key_frame_requests_in += 1;
        let (ph, enc, paused) = (c.producer, c.target(), c.paused);
        if !paused {
            self.request_key_frame(now, ph, enc, out);
        }
        Ok(())
    }

    /// Transport `h` is a plain (or pipe) transport.
    pub(super) fn is_plain(&self, h: Handle) -> bool {
        self.transports.get(&h).is_some_and(|t| t.plain.is_some())
    }
}
