//! Transport state: ICE credentials, tuples and the rule that picks where media goes, SRTP
//! contexts, the SSRC maps of its streams, counters and its viewer's bandwidth estimate.

use std::collections::HashMap;
use crate::remote::{Remote, Via};
use std::time::Instant;

use crate::bwe::BandwidthEstimator;
use crate::reports::BitrateSampler;
use crate::srtp::SrtpContext;

use super::seal::TxSrtp;
use crate::stun_check::IceKey;
use crate::twcc::TwccRecorder;

use super::producer::StreamRef;
use super::Handle;


#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
}

impl Counters {
    #[inline]
    pub(super) fn rx(&mut self, n: usize) {
        self.packets_in += 1;
        self.bytes_in += n as u64;
    }
    #[inline]
    pub(super) fn tx(&mut self, n: usize) {
        self.packets_out += 1;
        self.bytes_out += n as u64;
    }
}

/// A remote address ICE validated for a transport.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tuple {
    pub(super) addr: Remote,
    /// The peer proved it is there: an authenticated SRTP/SRTCP packet came from it, or the
    /// DTLS handshake completed with it. Only proven tuples are sent media or feedback.
    pub(super) proven: bool,
}

/// What a plain (or pipe) transport has instead of ICE: its own socket, a remote address
/// fixed by `connect_plain` or learnt from the first valid packet (comedia), and a count of
/// what came from anywhere else.
#[derive(Debug, Default)]
pub(super) struct Plain {
    /// The remote address is learnt from the first valid packet (then fixed for good).
    pub(super) comedia: bool,
    /// Datagrams from another address than the remote one (or before it was known), dropped.
    pub(super) wrong_source: u64,
    /// `rtcpMux: false`: RTCP comes and leaves by a second socket of its own (else none).
    pub(super) rtcp: Option<RtcpPort>,
}

/// The RTCP side of a plain transport without rtcp-mux: its own socket, the remote RTCP
/// address (fixed by `connect_plain_split` or, comedia, learnt from the first valid RTCP
/// packet on that socket, once), and what came to the wrong port.
#[derive(Debug)]
pub(super) struct RtcpPort {
    pub(super) via: Via,
    pub(super) remote: Option<Remote>,
    /// RTP that came to the RTCP port, dropped.
    pub(super) rtp_on_rtcp_port: u64,
    /// RTCP that came to the RTP port from another address than the RTCP remote, dropped.
    pub(super) rtcp_on_rtp_port: u64,
}

pub(super) struct Transport {
    /// The socket this transport's datagrams come and leave by: `Via::Plain` for a plain or
    /// pipe transport (its own port); WebRTC transports' tuples say theirs (UDP or TCP).
    pub(super) via: Via,
    /// Set for a plain or pipe transport (no ICE, no DTLS).
    pub(super) plain: Option<Box<Plain>>,
    pub(super) ufrag: String,
    /// MESSAGE-INTEGRITY key of STUN requests (the local ICE password).
    pub(super) ice_key: IceKey,
    /// Validated tuples, oldest first.
    pub(super) tuples: Vec<Tuple>,
    /// The sending tuple: where media, retransmissions and reports go. Always proven.
    pub(super) selected: Option<Remote>,
    /// The tuple ICE nominated last; it becomes `selected` once proven.
    pub(super) nominated: Option<Remote>,
    /// Where the DTLS handshake completed, when `set_srtp` named it before ICE bound it.
    pub(super) dtls_addr: Option<Remote>,
    /// Upcalls of this transport waiting in the shared queue, and those refused for lack of room.
    pub(super) up_pending: u32,
    pub(super) up_dropped: u64,
    /// STUN refused by the integrity check.
    pub(super) stun_rejected: u64,
    /// A forwarded media packet has left for this transport (its first one is told upward,
    /// once: join-to-first-packet time).
    pub(super) media_sent: bool,
    /// Unprotects what the peer sends (remote keys).
    pub(super) rx: Option<SrtpContext>,
    /// Protects what we send (local keys).
    pub(super) tx: Option<TxSrtp>,
    pub(super) producers: Vec<Handle>,
    pub(super) consumers: Vec<Handle>,
    /// Ingress SSRC → producer stream.
    pub(super) ssrc_in: HashMap<u32, StreamRef>,
    /// Consumer SSRC (and RTX SSRC) → consumer, for RTCP feedback from the viewer.
    pub(super) consumer_ssrc: HashMap<u32, Handle>,
    pub(super) stats: Counters,
    pub(super) rtp_in: u64,
    pub(super) rtcp_in: u64,
    pub(super) rtcp_out: u64,
    pub(super) stun_in: u64,
    /// Consent checks on the selected tuple the engine answered itself (not in `stun_in`).
    pub(super) stun_answered: u64,
    /// The last Binding request that passed the integrity check (RFC 7675 consent).
    pub(super) consent_at: Option<Instant>,
    /// Consent expired and Python was told (once).
    pub(super) consent_lost: bool,
    pub(super) dtls_in: u64,
    /// Arrivals of transport-wide sequence numbers (created on the first such packet).
    pub(super) twcc: Option<Box<TwccRecorder>>,
    pub(super) twcc_media_ssrc: u32,
    pub(super) twcc_last: Option<Instant>,
    /// What this (viewer) transport can take, from its REMB reports.
    pub(super) bwe: BandwidthEstimator,
    /// Our SSRC as sender of NACKs and receiver reports on this transport.
    pub(super) rtcp_ssrc: u32,
    pub(super) rate_in: BitrateSampler,
    pub(super) rate_out: BitrateSampler,
}

/// Tuple selection: the rule that keeps the server from being pointed at a third party.
///
/// ICE (Python) reports validated and nominated tuples, but a Binding request's source
/// address can be spoofed by anyone holding the transport's credentials (the peer itself), so
/// a nomination alone never moves the media. A nominated tuple becomes the sending tuple only
/// once it is proven (`prove`): an SRTP/SRTCP packet from it authenticated with the peer's
/// keys, or the DTLS handshake completed with it. Until then media, retransmissions, reports
/// and feedback keep going to the previous proven tuple, if any; the unproven address gets
/// only the STUN/DTLS answers Python sends.
impl Transport {
    /// Ask the cache for what forwarding to this transport touches: its record, its
    /// send-side estimator, its outbound SRTP keys when it protects inline (`prefetch.rs`).
    pub(super) fn prefetch(&self) {
        crate::prefetch::prefetch(self);
        if let Some(ss) = self.bwe.send_side.as_deref() {
            ss.prefetch();
        }
        if let Some(tx) = self.tx.as_ref() {
            tx.prefetch();
        }
    }

    /// Where media goes: the selected (proven) tuple, else none.
    #[inline]
    pub(super) fn media_dest(&self) -> Option<Remote> {
        self.selected
    }
    /// Where RTCP toward a sender goes: the selected tuple, else the most recent proven one.
    pub(super) fn feedback_dest(&self) -> Option<Remote> {
        self.selected.or_else(|| self.tuples.iter().rev().find(|t| t.proven).map(|t| t.addr))
    }

    /// Where our RTCP toward a sender goes: `feedback_dest`, or the RTCP remote of a plain
    /// transport without rtcp-mux (none until it is known).
    #[inline]
    pub(super) fn rtcp_feedback_dest(&self) -> Option<Remote> {
        match self.rtcp_port() {
            Some(r) => r.remote,
            None => self.feedback_dest(),
        }
    }
    /// Where our RTCP toward a viewer (sender reports) goes: `media_dest`, or the RTCP
    /// remote of a plain transport without rtcp-mux.
    #[inline]
    pub(super) fn rtcp_media_dest(&self) -> Option<Remote> {
        match self.rtcp_port() {
            Some(r) => r.remote,
            None => self.media_dest(),
        }
    }
    #[inline]
    pub(super) fn rtcp_port(&self) -> Option<&RtcpPort> {
        self.plain.as_deref().and_then(|p| p.rtcp.as_ref())
    }

    pub(super) fn is_proven(&self, addr: Remote) -> bool {
        self.tuples.iter().any(|t| t.addr == addr && t.proven)
    }

    /// ICE nominated `addr` (a bound tuple): it is the sending tuple at once if proven, else
    /// as soon as it proves itself.
    pub(super) fn nominate(&mut self, addr: Remote) {
        self.nominated = Some(addr);
        if self.is_proven(addr) {
            self.selected = Some(addr);
        }
    }

    /// `addr` proved it is the peer. True if that made it the sending tuple.
    pub(super) fn prove(&mut self, addr: Remote) -> bool {
        if let Some(p) = self.plain.as_deref_mut() {
            // Without rtcp-mux, an authenticated packet on the RTCP socket (only RTCP gets
            // that far there) fixes the RTCP remote of a comedia transport, once.
            if let Some(r) = p.rtcp.as_mut().filter(|r| r.via == addr.via) {
                if p.comedia && r.remote.is_none() {
                    r.remote = Some(addr);
                }
                return false;
            }
            // Comedia: the first valid packet fixes the remote address, once.
            if p.comedia && self.selected.is_none() {
                self.selected = Some(addr);
                return true;
            }
            return false;
        }
        let Some(t) = self.tuples.iter_mut().find(|t| t.addr == addr) else { return false };
        t.proven = true;
        if self.nominated == Some(addr) && self.selected != Some(addr) {
            self.selected = Some(addr);
            return true;
        }
        false
    }

    /// An authenticated packet arrived from bound tuple `from` (hot path: nothing to do when
    /// it is the sending tuple). True if the transport had no sending tuple and has one now.
    #[inline]
    pub(super) fn authenticated_from(&mut self, from: Remote) -> bool {
        if self.selected == Some(from) {
            return false;
        }
        let had = self.selected.is_some();
        self.prove(from) && !had
    }

    /// `addr` is no longer a tuple of this transport.
    pub(super) fn forget_tuple(&mut self, addr: Remote) {
        self.tuples.retain(|t| t.addr != addr);
        if self.selected == Some(addr) {
            self.selected = None;
        }
        if self.nominated == Some(addr) {
            self.nominated = None;
        }
    }
}

impl Transport {
    pub(super) fn new(ufrag: &str, ice_key: IceKey, rtcp_ssrc: u32) -> Self {
        Transport {
            via: Via::Udp,
            plain: None,
            ufrag: ufrag.to_owned(),
            ice_key,
            tuples: Vec::new(),
            selected: None,
            nominated: None,
            dtls_addr: None,
            up_pending: 0,
            up_dropped: 0,
            stun_rejected: 0,
            media_sent: false,
            rx: None,
            tx: None,
            producers: Vec::new(),
            consumers: Vec::new(),
            ssrc_in: HashMap::new(),
            consumer_ssrc: HashMap::new(),
            stats: Counters::default(),
            rtp_in: 0,
            rtcp_in: 0,
            rtcp_out: 0,
            stun_in: 0,
            stun_answered: 0,
            consent_at: None,
            consent_lost: false,
            dtls_in: 0,
            twcc: None,
            twcc_media_ssrc: 0,
            twcc_last: None,
            bwe: BandwidthEstimator::new(),
            rtcp_ssrc,
            rate_in: BitrateSampler::default(),
            rate_out: BitrateSampler::default(),
        }
    }

    /// SRTP keys are set and a sending tuple is proven: media can flow.
    pub(super) fn is_connected(&self) -> bool {
        self.selected.is_some() && self.tx.is_some()
    }
}
