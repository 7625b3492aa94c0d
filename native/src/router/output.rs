//! What the router hands back: datagrams to send (`Output`, from a pool of buffers), STUN and
//! DTLS datagrams for Python (`Upcall`), and why anything was dropped (`DropReason`, `Drops`).

use crate::remote::Remote;

use crate::srtp::SrtpError;

use super::seal::Seal;
use super::Handle;

/// Buffers kept for reuse by `Output`.
const POOL_CAP: usize = 8192;
/// Capacity of a pooled egress buffer: MTU-size RTP + SRTP trailer with room to spare.
pub(super) const BUF_CAP: usize = 1600;

// ---------------------------------------------------------------------------------------
// Drops

macro_rules! drop_reasons {
    ($($name:ident => $s:literal,)*) => {
        /// Why a datagram (or part of the work for one) was dropped.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum DropReason { $($name,)* }
        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$name => $s,)* }
            }
        }
    };
}

drop_reasons! {
    Demux => "demux",
    Truncated => "truncated",
    UnknownSource => "unknown_source",
    StunUnknown => "stun_unknown",
    UpQueueFull => "up_queue_full",
    NoSrtp => "no_srtp",
    SrtpAuth => "srtp_auth",
    SrtpReplay => "srtp_replay",
    SrtpMalformed => "srtp_malformed",
    SrtcpAuth => "srtcp_auth",
    SrtcpReplay => "srtcp_replay",
    SrtcpMalformed => "srtcp_malformed",
    RtpMalformed => "rtp_malformed",
    RtcpMalformed => "rtcp_malformed",
    UnknownSsrc => "unknown_ssrc",
    UnknownPt => "unknown_pt",
    PaddingOnly => "padding_only",
    Rtx => "rtx_unrequested",
    ProducerPaused => "producer_paused",
    RtcpIgnored => "rtcp_ignored",
    RtcpUnknownSsrc => "rtcp_unknown_ssrc",
    KeyFrameNoRoute => "key_frame_request_no_route",
    ProtectFailed => "protect_failed",
    SendFailed => "send_failed",
    Panic => "panic",
    NackNotBuffered => "nack_not_buffered",
    NackThrottled => "nack_throttled",
    NackNotNegotiated => "nack_not_negotiated",
    RtxDuplicate => "rtx_duplicate",
    Duplicate => "duplicate",
    NackPaused => "nack_consumer_paused",
    NackTruncated => "nack_truncated",
    StunIntegrity => "stun_integrity",
    NackBudget => "nack_budget",
    NackMaxResends => "nack_max_resends",
    PlainWrongSource => "plain_wrong_source",
    PlainWrongPort => "plain_wrong_port",
}

#[derive(Clone, Debug)]
pub struct Drops([u64; 64]);

impl Default for Drops {
    fn default() -> Self {
        Drops([0; 64])
    }
}

impl Drops {
    #[inline]
    pub fn inc(&mut self, d: DropReason) {
        self.0[d as usize] += 1;
    }
    pub fn add(&mut self, d: DropReason, n: u64) {
        self.0[d as usize] += n;
    }
    pub fn get(&self, d: DropReason) -> u64 {
        self.0[d as usize]
    }
    /// Every reason with its count (zeros included, so the keys are stable).
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DropReason::ALL.iter().map(|d| (d.name(), self.0[*d as usize]))
    }
}

pub(super) fn srtp_drop(e: SrtpError, rtcp: bool) -> DropReason {
    match (e, rtcp) {
        (SrtpError::AuthFailed, false) => DropReason::SrtpAuth,
        (SrtpError::Replay | SrtpError::TooOld, false) => DropReason::SrtpReplay,
        (_, false) => DropReason::SrtpMalformed,
        (SrtpError::AuthFailed, true) => DropReason::SrtcpAuth,
        (SrtpError::Replay | SrtpError::TooOld, true) => DropReason::SrtcpReplay,
        (_, true) => DropReason::SrtcpMalformed,
    }
}

// ---------------------------------------------------------------------------------------
// Output

/// One datagram to send.
pub struct Transmit {
    pub dest: Remote,
    pub buf: Vec<u8>,
    /// Still to be protected by its transport's owner worker (`seal.rs`); None: ready.
    pub seal: Option<Seal>,
}

impl Transmit {
    /// A datagram ready to send.
    pub fn new(dest: Remote, buf: Vec<u8>) -> Self {
        Transmit { dest, buf, seal: None }
    }

    /// Its length on the wire: now, or once its owner has sealed it.
    #[inline]
    pub fn wire_len(&self) -> usize {
        self.seal.map_or(self.buf.len(), |s| s.wire_len(self.buf.len()))
    }
}

/// Egress datagrams of one call, from a pool of reusable buffers. Call `recycle` after sending
/// so that the buffers come back: steady state allocates nothing.
#[derive(Default)]
pub struct Output {
    pub transmits: Vec<Transmit>,
    pool: Vec<Vec<u8>>,
}

impl Output {
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    pub(super) fn take_buf(&mut self) -> Vec<u8> {
        match self.pool.pop() {
            Some(mut b) => {
                b.clear();
                b
            }
            None => Vec::with_capacity(BUF_CAP),
        }
    }

    /// Queue `buf` to `dest`, protected already (`seal` None) or by its owner worker later.
    #[inline]
    pub(super) fn push_sealed(&mut self, dest: Remote, buf: Vec<u8>, seal: Option<Seal>) {
        self.transmits.push(Transmit { dest, buf, seal });
    }

    #[inline]
    pub(super) fn give_back(&mut self, buf: Vec<u8>) {
        if self.pool.len() < POOL_CAP {
            self.pool.push(buf);
        }
    }

    /// Return the buffers of all transmits to the pool.
    pub fn recycle(&mut self) {
        while let Some(t) = self.transmits.pop() {
            if self.pool.len() < POOL_CAP {
                self.pool.push(t.buf);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Upcalls

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpKind {
    Stun,
    Dtls,
    /// The first forwarded media packet left for the transport (no data; `from` = where).
    Media,
    /// No valid Binding request for the consent timeout (RFC 7675): the transport must close
    /// (no data; `from` = the selected tuple, if any).
    ConsentLost,
}

impl UpKind {
    pub fn name(self) -> &'static str {
        match self {
            UpKind::Stun => "stun",
            UpKind::Dtls => "dtls",
            UpKind::Media => "media",
            UpKind::ConsentLost => "consent_lost",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Upcall {
    pub kind: UpKind,
    pub transport: Handle,
    pub from: Remote,
    pub data: Vec<u8>,
}
