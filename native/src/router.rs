//! Sans-IO forwarding core: datagrams and time in; datagrams out (`Output`) and STUN/DTLS
//! upcalls for Python. No sockets, no threads, no Python here, so every rule is unit-tested.
//!
//! Objects (transports, producers, consumers) are identified by handles the control plane
//! chooses; handles are unique across all three kinds.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::budget::{RetransmitBudget, NACK_MAX_RESENDS};
use crate::bwe::BandwidthEstimator;
use crate::fasthash::HandleMap;
use crate::layers::LayerState;
use crate::nack::{self, Arrival, NackConfig, NackGenerator, Resend, RetransmissionBuffer, SeqMap};
use crate::reports::{BitrateSampler, NtpClock, ReceiveStats, SendStats};
use crate::rtcp;
use crate::rtp;
use crate::seq::{SeqManager, TsOffset};
use crate::twcc::TwccRecorder;
use crate::srtp::{Profile, SrtpContext, SrtpError};
use crate::stun_check::{self, IceKey};
use crate::stun_peek;

pub type Handle = u64;

/// Upcall queue cap; further STUN/DTLS datagrams are dropped and counted.
pub const UP_QUEUE_CAP: usize = 4096;
/// Upcalls one transport may have waiting in that queue: a flood on one transport (its own
/// DTLS, or STUN with its valid credentials) cannot crowd out another's handshake.
pub const UP_QUEUE_PER_TRANSPORT: u32 = 64;
/// Validated remote addresses kept per transport.
pub const MAX_TUPLES: usize = 8;
/// One outstanding key frame request per producer stream for this long.
pub const KEY_FRAME_INTERVAL: Duration = Duration::from_secs(1);
/// Buffers kept for reuse by `Output`.
const POOL_CAP: usize = 8192;
/// Capacity of a pooled egress buffer: MTU-size RTP + SRTP trailer with room to spare.
const BUF_CAP: usize = 1600;

pub const URI_MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
pub const URI_RID: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
pub const URI_RRID: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
pub const URI_TRANSPORT_CC: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
/// Transport-wide feedback toward a sender this often (mediasoup: 100 ms).
pub const TWCC_INTERVAL: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------
// Drops

macro_rules! drop_reasons {
    ($($name:ident => $s:literal,)*) => {
        /// Why a datagram (or part of the work for one) was dropped.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Drop { $($name,)* }
        impl Drop {
            pub const ALL: &'static [Drop] = &[$(Drop::$name,)*];
            pub fn name(self) -> &'static str {
                match self { $(Drop::$name => $s,)* }
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
    pub fn inc(&mut self, d: Drop) {
        self.0[d as usize] += 1;
    }
    pub fn add(&mut self, d: Drop, n: u64) {
        self.0[d as usize] += n;
    }
    pub fn get(&self, d: Drop) -> u64 {
        self.0[d as usize]
    }
    /// Every reason with its count (zeros included, so the keys are stable).
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Drop::ALL.iter().map(|d| (d.name(), self.0[*d as usize]))
    }
}

fn srtp_drop(e: SrtpError, rtcp: bool) -> Drop {
    match (e, rtcp) {
        (SrtpError::AuthFailed, false) => Drop::SrtpAuth,
        (SrtpError::Replay | SrtpError::TooOld, false) => Drop::SrtpReplay,
        (_, false) => Drop::SrtpMalformed,
        (SrtpError::AuthFailed, true) => Drop::SrtcpAuth,
        (SrtpError::Replay | SrtpError::TooOld, true) => Drop::SrtcpReplay,
        (_, true) => Drop::SrtcpMalformed,
    }
}

// ---------------------------------------------------------------------------------------
// Errors of control calls

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterError {
    /// No such handle (→ KeyError).
    Unknown(String),
    /// Handle in use, bad spec, bad keys (→ ValueError).
    Invalid(String),
}

impl std::fmt::Display for RouterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouterError::Unknown(s) | RouterError::Invalid(s) => f.write_str(s),
        }
    }
}

type Result<T> = std::result::Result<T, RouterError>;

fn unknown(kind: &str, h: Handle) -> RouterError {
    RouterError::Unknown(format!("unknown {kind} handle {h}"))
}

fn invalid(msg: impl Into<String>) -> RouterError {
    RouterError::Invalid(msg.into())
}

// ---------------------------------------------------------------------------------------
// Output

/// One datagram to send.
pub struct Transmit {
    pub dest: SocketAddr,
    pub buf: Vec<u8>,
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
    fn take_buf(&mut self) -> Vec<u8> {
        match self.pool.pop() {
            Some(mut b) => {
                b.clear();
                b
            }
            None => Vec::with_capacity(BUF_CAP),
        }
    }

    #[inline]
    fn push(&mut self, dest: SocketAddr, buf: Vec<u8>) {
        self.transmits.push(Transmit { dest, buf });
    }

    #[inline]
    fn give_back(&mut self, buf: Vec<u8>) {
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
}

impl UpKind {
    pub fn name(self) -> &'static str {
        match self {
            UpKind::Stun => "stun",
            UpKind::Dtls => "dtls",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Upcall {
    pub kind: UpKind,
    pub transport: Handle,
    pub from: SocketAddr,
    pub data: Vec<u8>,
}

// ---------------------------------------------------------------------------------------
// Specs (what the control plane passes in)

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyFrameMethod {
    Pli,
    Fir,
}

#[derive(Clone, Debug)]
pub struct CodecSpec {
    pub payload_type: u8,
    pub mapped_payload_type: u8,
    pub mime: String,
    pub rtx_payload_type: Option<u8>,
    pub mapped_rtx_payload_type: Option<u8>,
    /// RTP clock rate (Hz): jitter and sender-report timestamps.
    pub clock_rate: u32,
}

#[derive(Clone, Debug)]
pub struct EncodingSpec {
    pub ssrc: Option<u32>,
    pub rtx_ssrc: Option<u32>,
    pub rid: Option<String>,
    pub mapped_ssrc: u32,
}

#[derive(Clone, Debug)]
pub struct ExtSpec {
    pub id: u8,
    pub router_id: Option<u8>,
    pub uri: String,
}

#[derive(Clone, Debug)]
pub struct ProducerSpec {
    pub video: bool,
    pub mid: Option<String>,
    pub codecs: Vec<CodecSpec>,
    pub encodings: Vec<EncodingSpec>,
    pub header_extensions: Vec<ExtSpec>,
    pub key_frame_request: Option<KeyFrameMethod>,
    pub paused: bool,
    /// The producer negotiated plain `nack`: gaps are NACKed upstream and its RTX accepted.
    pub nack: bool,
}

#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    pub ssrc: u32,
    pub rtx_ssrc: Option<u32>,
    pub mid: Option<String>,
    pub mid_ext_id: Option<u8>,
    /// router PT → consumer PT
    pub payload_types: Vec<(u8, u8)>,
    pub paused: bool,
    /// Which producer encoding (stream) this consumer follows; simulcast layer selection is
    /// not implemented yet.
    pub encoding: usize,
    /// router PT → consumer RTX PT, for retransmissions (none: resend the plain packet).
    pub rtx_payload_types: Vec<(u8, u8)>,
    /// The viewer negotiated plain `nack`: its NACKs are answered.
    pub nack: bool,
    /// CNAME for the SDES item of the sender reports.
    pub cname: Option<String>,
}

// ---------------------------------------------------------------------------------------
// State

#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
}

impl Counters {
    #[inline]
    fn rx(&mut self, n: usize) {
        self.packets_in += 1;
        self.bytes_in += n as u64;
    }
    #[inline]
    fn tx(&mut self, n: usize) {
        self.packets_out += 1;
        self.bytes_out += n as u64;
    }
}

/// A remote address ICE validated for a transport.
#[derive(Clone, Copy, Debug)]
struct Tuple {
    addr: SocketAddr,
    /// The peer proved it is there: an authenticated SRTP/SRTCP packet came from it, or the
    /// DTLS handshake completed with it. Only proven tuples are sent media or feedback.
    proven: bool,
}

struct Transport {
    ufrag: String,
    /// MESSAGE-INTEGRITY key of STUN requests (the local ICE password).
    ice_key: IceKey,
    /// Validated tuples, oldest first.
    tuples: Vec<Tuple>,
    /// The sending tuple: where media, retransmissions and reports go. Always proven.
    selected: Option<SocketAddr>,
    /// The tuple ICE nominated last; it becomes `selected` once proven.
    nominated: Option<SocketAddr>,
    /// Where the DTLS handshake completed, when `set_srtp` named it before ICE bound it.
    dtls_addr: Option<SocketAddr>,
    /// Upcalls of this transport waiting in the shared queue, and those refused for lack of room.
    up_pending: u32,
    up_dropped: u64,
    /// STUN refused by the integrity check.
    stun_rejected: u64,
    /// Unprotects what the peer sends (remote keys).
    rx: Option<SrtpContext>,
    /// Protects what we send (local keys).
    tx: Option<SrtpContext>,
    producers: Vec<Handle>,
    consumers: Vec<Handle>,
    /// Ingress SSRC → producer stream.
    ssrc_in: HashMap<u32, StreamRef>,
    /// Consumer SSRC (and RTX SSRC) → consumer, for RTCP feedback from the viewer.
    consumer_ssrc: HashMap<u32, Handle>,
    stats: Counters,
    rtp_in: u64,
    rtcp_in: u64,
    rtcp_out: u64,
    stun_in: u64,
    dtls_in: u64,
    /// Arrivals of transport-wide sequence numbers (created on the first such packet).
    twcc: Option<Box<TwccRecorder>>,
    twcc_media_ssrc: u32,
    twcc_last: Option<Instant>,
    /// What this (viewer) transport can take, from its REMB reports.
    bwe: BandwidthEstimator,
    /// Our SSRC as sender of NACKs and receiver reports on this transport.
    rtcp_ssrc: u32,
    rate_in: BitrateSampler,
    rate_out: BitrateSampler,
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
    /// Where media goes: the selected (proven) tuple, else none.
    #[inline]
    fn media_dest(&self) -> Option<SocketAddr> {
        self.selected
    }
    /// Where RTCP toward a sender goes: the selected tuple, else the most recent proven one.
    fn feedback_dest(&self) -> Option<SocketAddr> {
        self.selected.or_else(|| self.tuples.iter().rev().find(|t| t.proven).map(|t| t.addr))
    }

    fn is_proven(&self, addr: SocketAddr) -> bool {
        self.tuples.iter().any(|t| t.addr == addr && t.proven)
    }

    /// ICE nominated `addr` (a bound tuple): it is the sending tuple at once if proven, else
    /// as soon as it proves itself.
    fn nominate(&mut self, addr: SocketAddr) {
        self.nominated = Some(addr);
        if self.is_proven(addr) {
            self.selected = Some(addr);
        }
    }

    /// `addr` proved it is the peer. True if that made it the sending tuple.
    fn prove(&mut self, addr: SocketAddr) -> bool {
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
    fn authenticated_from(&mut self, from: SocketAddr) -> bool {
        if self.selected == Some(from) {
            return false;
        }
        let had = self.selected.is_some();
        self.prove(from) && !had
    }

    /// `addr` is no longer a tuple of this transport.
    fn forget_tuple(&mut self, addr: SocketAddr) {
        self.tuples.retain(|t| t.addr != addr);
        if self.selected == Some(addr) {
            self.selected = None;
        }
        if self.nominated == Some(addr) {
            self.nominated = None;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StreamRef {
    producer: Handle,
    encoding: usize,
    rtx: bool,
}

#[derive(Clone, Copy)]
enum PtInfo {
    None,
    Media(usize),
    /// RTX of codec index.
    Rtx(usize),
}

struct CodecEntry {
    mapped_pt: u8,
    codec: rtp::Codec,
    /// The producer's own PT (an RTX packet is restored to it).
    payload_type: u8,
}

#[derive(Default)]
struct KeyFrameState {
    /// When the outstanding request was sent.
    outstanding_since: Option<Instant>,
    /// Another request arrived while one was outstanding (or before the SSRC was known).
    wanted: bool,
    fir_seq: u8,
    requests_sent: u64,
}

struct Encoding {
    spec: EncodingSpec,
    media_ssrc: Option<u32>,
    rtx_ssrc: Option<u32>,
    kf: KeyFrameState,
    stats: Counters,
    key_frames: u64,
    /// Loss repair and reports (nack.rs, reports.rs).
    quality: StreamQuality,
}

/// Loss repair and reception statistics of one producer stream.
struct StreamQuality {
    rx: ReceiveStats,
    /// Recent packets for viewers' NACKs (video).
    buffer: Option<RetransmissionBuffer>,
    /// Upstream NACKs (producer negotiated `nack`).
    nack: Option<NackGenerator>,
    /// RTX packets that filled a gap / came for nothing missing.
    rtx_in: u64,
    rtx_duplicate: u64,
    plis_sent: u64,
    firs_sent: u64,
    rate: BitrateSampler,
}

impl StreamQuality {
    fn new(now: Instant, video: bool, nack: bool, clock_rate: u32) -> Self {
        let max_age = if video { nack::MAX_AGE_VIDEO } else { nack::MAX_AGE_AUDIO };
        StreamQuality {
            rx: ReceiveStats::new(now, clock_rate),
            buffer: video.then(|| RetransmissionBuffer::new(max_age)),
            nack: nack.then(|| NackGenerator::new(NackConfig { max_age, ..NackConfig::default() })),
            rtx_in: 0,
            rtx_duplicate: 0,
            plis_sent: 0,
            firs_sent: 0,
            rate: BitrateSampler::default(),
        }
    }

    /// The stream starts over (new SSRC or numbering): forget what depended on the old one.
    fn restart(&mut self, now: Instant) {
        self.rx = ReceiveStats::new(now, self.rx.clock_rate());
        if let Some(b) = self.buffer.as_mut() {
            b.clear();
        }
        if let Some(g) = self.nack.as_mut() {
            g.reset();
        }
    }
}

/// Loss repair and sending statistics of one consumer stream.
struct ConsumerQuality {
    /// Output → input sequence numbers (viewers' NACKs name output numbers).
    seq_map: Option<SeqMap>,
    tx: SendStats,
    /// router PT → consumer RTX PT.
    rtx_pt: Vec<(u8, u8)>,
    rtx_seq: u16,
    nack: bool,
    cname: Vec<u8>,
    nacks_in: u64,
    nack_seqs_in: u64,
    plis_in: u64,
    firs_in: u64,
    rate: BitrateSampler,
    /// What retransmissions to this consumer may cost (budget.rs).
    budget: RetransmitBudget,
    nack_budget_drops: u64,
    nack_max_resend_drops: u64,
}

struct Producer {
    transport: Handle,
    video: bool,
    mid: Option<String>,
    pt: Box<[PtInfo; 128]>,
    codecs: Vec<CodecEntry>,
    encodings: Vec<Encoding>,
    /// producer ext id → router ext id (0 = not forwarded)
    ext_map: [u8; 256],
    mid_id: Option<u8>,
    rid_id: Option<u8>,
    rrid_id: Option<u8>,
    /// Transport-wide sequence number extension id (recorded for feedback, not forwarded).
    tcc_id: Option<u8>,
    key_frame_request: Option<KeyFrameMethod>,
    paused: bool,
    consumers: Vec<Handle>,
    stats: Counters,
    key_frames: u64,
}

struct Consumer {
    transport: Handle,
    producer: Handle,
    ssrc: u32,
    rtx_ssrc: Option<u32>,
    mid: Option<Vec<u8>>,
    mid_ext_id: Option<u8>,
    /// router PT → consumer PT (0xff = not negotiated)
    pt: [u8; 128],
    paused: bool,
    encoding: usize,
    /// Simulcast: the encoding to switch to at its next key frame (== `encoding` when settled).
    target: usize,
    /// Simulcast: the highest spatial layer the viewer wants (temporal kept for stats only).
    preferred_spatial: usize,
    preferred_temporal: u8,
    layers: LayerState,
    layer_switches: u64,
    /// Timestamp offset: keeps time continuous when the source stream changes.
    ts: TsOffset,
    /// The encoding whose timestamps `ts` is set up for.
    ts_source: usize,
    /// The stream and offset before the last switch (retransmissions of older packets).
    ts_prev: (usize, u32),
    last_out: Option<Instant>,
    seq: SeqManager,
    wait_key_frame: bool,
    stats: Counters,
    dropped: u64,
    key_frame_requests_in: u64,
    quality: ConsumerQuality,
}

impl Consumer {
    /// The consumer's MID header extension (id, value), when it has one.
    fn mid_ext(&self) -> Option<(u8, &[u8])> {
        self.mid_ext_id.zip(self.mid.as_deref())
    }
}

/// Tiny xorshift PRNG for sequence-number starts; seeded from the OS.
struct Rng(u64);

impl Rng {
    fn from_os() -> Self {
        let mut seed = [0u8; 8];
        // SAFETY: fills 8 bytes of a local array.
        let n = unsafe { libc::getrandom(seed.as_mut_ptr() as *mut libc::c_void, 8, 0) };
        let mut s = u64::from_ne_bytes(seed);
        if n != 8 || s == 0 {
            s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9E37_79B9_7F4A_7C15)
                | 1;
        }
        Rng(s)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Initial output sequence number in [1000, 32767] (libsrtp ROC caution, as mediasoup).
    fn initial_seq(&mut self) -> u16 {
        1000 + (self.next() % (32768 - 1000)) as u16
    }
}

/// Object counts, for leak checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub transports: usize,
    pub producers: usize,
    pub consumers: usize,
    /// Producer streams (encodings) plus consumer streams.
    pub streams: usize,
}

/// A stats value for Python.
#[derive(Clone, Debug, PartialEq)]
pub enum StatValue {
    Int(u64),
    Str(String),
    Bool(bool),
    Float(f64),
}

pub struct Router {
    transports: HandleMap<Transport>,
    producers: HandleMap<Producer>,
    consumers: HandleMap<Consumer>,
    by_addr: HashMap<SocketAddr, Handle>,
    by_ufrag: HashMap<String, Handle>,
    up: VecDeque<Upcall>,
    drops: Drops,
    scratch: Vec<u8>,
    rng: Rng,
    next_timeout: Option<Instant>,
    ntp: NtpClock,
    next_report: Option<Instant>,
    rtcp_work: RtcpWork,
    /// A transport whose first sending tuple was just proven (consumers resync).
    connect_pending: Option<Handle>,
}

/// Items of an incoming compound RTCP packet, copied out of the decrypt buffer (capacity
/// kept between packets).
#[derive(Default)]
struct RtcpWork {
    /// (media SSRC, sequence number) of NACKed packets.
    nack_seqs: Vec<(u32, u16)>,
    /// Media SSRC of each NACK message.
    nacks: Vec<u32>,
    blocks: Vec<rtcp::ReportBlock>,
    /// (SSRC, NTP, RTP timestamp) of sender reports.
    srs: Vec<(u32, u64, u32)>,
    /// (SSRC, is FIR) of key frame requests.
    key_frames: Vec<(u32, bool)>,
}

/// Caps on what one compound RTCP packet may ask for.
const MAX_NACK_SEQS: usize = 1024;
const MAX_RTCP_ITEMS: usize = 64;
/// Sender/receiver reports every this often (mediasoup: 1 s for video).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Spacing of resends of the same packet to a viewer when its RTT is unknown.
const RESEND_INTERVAL: Duration = Duration::from_millis(100);
/// What a retransmission may add to the buffered packet (RTX header, the consumer's MID,
/// SRTP tag), so the budget check before building it is not short.
const RETRANSMIT_OVERHEAD: usize = 40;

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------
// Control

impl Router {
    pub fn new() -> Self {
        Router {
            transports: HandleMap::default(),
            producers: HandleMap::default(),
            consumers: HandleMap::default(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            up: VecDeque::new(),
            drops: Drops::default(),
            scratch: Vec::with_capacity(BUF_CAP * 2),
            rng: Rng::from_os(),
            next_timeout: None,
            ntp: NtpClock::new(Instant::now()),
            next_report: None,
            rtcp_work: RtcpWork::default(),
            connect_pending: None,
        }
    }

    fn handle_in_use(&self, h: Handle) -> bool {
        self.transports.contains_key(&h) || self.producers.contains_key(&h) || self.consumers.contains_key(&h)
    }

    pub fn counts(&self) -> Counts {
        Counts {
            transports: self.transports.len(),
            producers: self.producers.len(),
            consumers: self.consumers.len(),
            streams: self.producers.values().map(|p| p.encodings.len()).sum::<usize>() + self.consumers.len(),
        }
    }

    pub fn drops(&self) -> &Drops {
        &self.drops
    }

    pub fn count_drop(&mut self, d: Drop, n: u64) {
        self.drops.add(d, n);
    }

    /// A transport with local ICE credentials `ufrag` / `password`: STUN requests reach
    /// Python only if their MESSAGE-INTEGRITY is keyed with `password`.
    pub fn add_transport(&mut self, h: Handle, ufrag: &str, password: &str) -> Result<()> {
        if self.handle_in_use(h) {
            return Err(invalid(format!("handle {h} already in use")));
        }
        if ufrag.is_empty() || ufrag.contains(':') {
            return Err(invalid(format!("bad ufrag {ufrag:?}")));
        }
        let ice_key = IceKey::new(password.as_bytes()).ok_or_else(|| invalid("empty ICE password"))?;
        if self.by_ufrag.contains_key(ufrag) {
            return Err(invalid(format!("ufrag {ufrag:?} already in use")));
        }
        self.by_ufrag.insert(ufrag.to_owned(), h);
        self.transports.insert(
            h,
            Transport {
                ufrag: ufrag.to_owned(),
                ice_key,
                tuples: Vec::new(),
                selected: None,
                nominated: None,
                dtls_addr: None,
                up_pending: 0,
                up_dropped: 0,
                stun_rejected: 0,
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
                dtls_in: 0,
                twcc: None,
                twcc_media_ssrc: 0,
                twcc_last: None,
                bwe: BandwidthEstimator::new(),
                rtcp_ssrc: (self.rng.next() as u32) | 1,
                rate_in: BitrateSampler::default(),
                rate_out: BitrateSampler::default(),
            },
        );
        Ok(())
    }

    pub fn remove_transport(&mut self, h: Handle) -> Result<()> {
        let t = self.transports.get(&h).ok_or_else(|| unknown("transport", h))?;
        let consumers = t.consumers.clone();
        let producers = t.producers.clone();
        for c in consumers {
            let _ = self.remove_consumer(c);
        }
        for p in producers {
            let _ = self.remove_producer(p);
        }
        let t = self.transports.remove(&h).expect("checked above");
        for a in &t.tuples {
            if self.by_addr.get(&a.addr) == Some(&h) {
                self.by_addr.remove(&a.addr);
            }
        }
        if self.by_ufrag.get(&t.ufrag) == Some(&h) {
            self.by_ufrag.remove(&t.ufrag);
        }
        Ok(())
    }

    /// ICE validated `addr` for transport `h`; `selected`: the peer nominated it. A nominated
    /// tuple becomes the media destination once proven (see `Transport::prove`).
    pub fn bind_tuple(&mut self, now: Instant, h: Handle, addr: SocketAddr, selected: bool, out: &mut Output) -> Result<()> {
        if !self.transports.contains_key(&h) {
            return Err(unknown("transport", h));
        }
        // An address belongs to one transport: take it from any other.
        if let Some(&other) = self.by_addr.get(&addr) {
            if other != h {
                if let Some(o) = self.transports.get_mut(&other) {
                    o.forget_tuple(addr);
                }
            }
        }
        self.by_addr.insert(addr, h);
        let t = self.transports.get_mut(&h).expect("checked above");
        let proven = match t.tuples.iter().position(|a| a.addr == addr) {
            Some(i) => t.tuples.remove(i).proven,
            None => t.dtls_addr == Some(addr),
        };
        t.tuples.push(Tuple { addr, proven });
        if t.tuples.len() > MAX_TUPLES {
            // Evict the oldest tuple that is neither the sending nor the nominated one.
            let keep = [t.selected, t.nominated, Some(addr)];
            if let Some(i) = t.tuples.iter().position(|a| !keep.contains(&Some(a.addr))) {
                let old = t.tuples.remove(i).addr;
                if self.by_addr.get(&old) == Some(&h) {
                    self.by_addr.remove(&old);
                }
            }
        }
        let t = self.transports.get_mut(&h).expect("checked above");
        let was_connected = t.selected.is_some() && t.tx.is_some();
        if selected {
            t.nominate(addr);
        }
        let now_connected = t.selected.is_some() && t.tx.is_some();
        if now_connected && !was_connected {
            self.on_transport_connected(now, h, out);
        }
        Ok(())
    }

    /// SRTP keys from the DTLS handshake; `remote`: the address the handshake completed with
    /// (our flights went there and the peer's last one came from there), which proves that
    /// tuple. Without it, the first authenticated SRTP/SRTCP packet proves a tuple.
    #[allow(clippy::too_many_arguments)]
    pub fn set_srtp(
        &mut self,
        now: Instant,
        h: Handle,
        profile: &str,
        local_key: &[u8],
        local_salt: &[u8],
        remote_key: &[u8],
        remote_salt: &[u8],
        remote: Option<SocketAddr>,
        out: &mut Output,
    ) -> Result<()> {
        if !self.transports.contains_key(&h) {
            return Err(unknown("transport", h));
        }
        let p = Profile::from_name(profile).ok_or_else(|| invalid(format!("unknown SRTP profile {profile:?}")))?;
        let bad = |what: &str, e: SrtpError| {
            invalid(format!(
                "bad {what} SRTP key/salt for {} (want {} + {} bytes): {e}",
                p.name(),
                p.key_len(),
                p.salt_len()
            ))
        };
        let tx = SrtpContext::new(p, local_key, local_salt).map_err(|e| bad("local", e))?;
        let rx = SrtpContext::new(p, remote_key, remote_salt).map_err(|e| bad("remote", e))?;
        let t = self.transports.get_mut(&h).expect("checked above");
        let was_connected = t.selected.is_some() && t.tx.is_some();
        t.tx = Some(tx);
        t.rx = Some(rx);
        if let Some(a) = remote {
            t.dtls_addr = Some(a);
            t.prove(a);
            // The handshake ran there: the sending tuple, unless one is proven already.
            if t.selected.is_none() && t.is_proven(a) {
                t.selected = Some(a);
            }
        }
        if t.selected.is_some() && !was_connected {
            self.on_transport_connected(now, h, out);
        }
        Ok(())
    }

    /// Media can flow to this transport now: its consumers need a key frame.
    fn on_transport_connected(&mut self, now: Instant, h: Handle, out: &mut Output) {
        let Some(t) = self.transports.get(&h) else { return };
        let consumers = t.consumers.clone();
        for c in consumers {
            self.resync_consumer(now, c, out);
        }
    }

    pub fn add_producer(&mut self, h: Handle, transport: Handle, spec: ProducerSpec) -> Result<()> {
        if self.handle_in_use(h) {
            return Err(invalid(format!("handle {h} already in use")));
        }
        let t = self.transports.get(&transport).ok_or_else(|| unknown("transport", transport))?;
        if spec.codecs.is_empty() {
            return Err(invalid("producer spec: no codecs"));
        }
        if spec.encodings.is_empty() {
            return Err(invalid("producer spec: no encodings"));
        }
        let mut pt = Box::new([PtInfo::None; 128]);
        let mut codecs = Vec::new();
        for (i, c) in spec.codecs.iter().enumerate() {
            for v in [Some(c.payload_type), Some(c.mapped_payload_type), c.rtx_payload_type, c.mapped_rtx_payload_type]
                .into_iter()
                .flatten()
            {
                if v > 127 {
                    return Err(invalid(format!("producer spec: payload type {v} > 127")));
                }
            }
            if c.rtx_payload_type.is_some() != c.mapped_rtx_payload_type.is_some() {
                return Err(invalid("producer spec: rtx_payload_type and mapped_rtx_payload_type go together"));
            }
            if !matches!(pt[c.payload_type as usize], PtInfo::None) {
                return Err(invalid(format!("producer spec: payload type {} used twice", c.payload_type)));
            }
            pt[c.payload_type as usize] = PtInfo::Media(i);
            if let Some(r) = c.rtx_payload_type {
                if !matches!(pt[r as usize], PtInfo::None) {
                    return Err(invalid(format!("producer spec: payload type {r} used twice")));
                }
                pt[r as usize] = PtInfo::Rtx(i);
            }
            codecs.push(CodecEntry {
                mapped_pt: c.mapped_payload_type,
                codec: rtp::Codec::from_mime(&c.mime),
                payload_type: c.payload_type,
            });
        }
        let mut ext_map = [0u8; 256];
        let (mut mid_id, mut rid_id, mut rrid_id, mut tcc_id) = (None, None, None, None);
        for e in &spec.header_extensions {
            if e.id == 0 {
                return Err(invalid(format!("producer spec: bad extension id {}", e.id)));
            }
            if let Some(r) = e.router_id {
                if r == 0 {
                    return Err(invalid("producer spec: router extension id 0"));
                }
            }
            match e.uri.as_str() {
                URI_MID => mid_id = Some(e.id),
                URI_RID => rid_id = Some(e.id),
                URI_RRID => rrid_id = Some(e.id),
                URI_TRANSPORT_CC => tcc_id = Some(e.id),
                _ => ext_map[e.id as usize] = e.router_id.unwrap_or(0),
            }
        }
        if let Some(mid) = &spec.mid {
            if t.producers.iter().any(|p| self.producers.get(p).and_then(|p| p.mid.as_deref()) == Some(mid)) {
                return Err(invalid(format!("producer spec: mid {mid:?} already used on transport {transport}")));
            }
        }
        let mut mapped = std::collections::HashSet::new();
        for e in &spec.encodings {
            if !mapped.insert(e.mapped_ssrc) {
                return Err(invalid(format!("producer spec: mapped_ssrc {} used twice", e.mapped_ssrc)));
            }
            for s in [e.ssrc, e.rtx_ssrc].into_iter().flatten() {
                if t.ssrc_in.contains_key(&s) {
                    return Err(invalid(format!("producer spec: ssrc {s} already in use on transport {transport}")));
                }
            }
        }
        let now = Instant::now();
        let clock_rate = spec.codecs[0].clock_rate;
        let encodings: Vec<Encoding> = spec
            .encodings
            .iter()
            .map(|e| Encoding {
                spec: e.clone(),
                media_ssrc: None,
                rtx_ssrc: None,
                kf: KeyFrameState::default(),
                stats: Counters::default(),
                key_frames: 0,
                quality: StreamQuality::new(now, spec.video, spec.nack, clock_rate),
            })
            .collect();
        let producer = Producer {
            transport,
            video: spec.video,
            mid: spec.mid.clone(),
            pt,
            codecs,
            encodings,
            ext_map,
            mid_id,
            rid_id,
            rrid_id,
            tcc_id,
            key_frame_request: spec.key_frame_request.clone(),
            paused: spec.paused,
            consumers: Vec::new(),
            stats: Counters::default(),
            key_frames: 0,
        };
        self.producers.insert(h, producer);
        let t = self.transports.get_mut(&transport).expect("checked above");
        t.producers.push(h);
        // Signalled SSRCs are bound up front.
        for (i, e) in spec.encodings.iter().enumerate() {
            if let Some(s) = e.ssrc {
                t.ssrc_in.insert(s, StreamRef { producer: h, encoding: i, rtx: false });
            }
            if let Some(s) = e.rtx_ssrc {
                t.ssrc_in.insert(s, StreamRef { producer: h, encoding: i, rtx: true });
            }
        }
        let p = self.producers.get_mut(&h).expect("inserted");
        for (i, e) in spec.encodings.iter().enumerate() {
            p.encodings[i].media_ssrc = e.ssrc;
            p.encodings[i].rtx_ssrc = e.rtx_ssrc;
        }
        Ok(())
    }

    pub fn remove_producer(&mut self, h: Handle) -> Result<()> {
        let p = self.producers.get(&h).ok_or_else(|| unknown("producer", h))?;
        let consumers = p.consumers.clone();
        for c in consumers {
            let _ = self.remove_consumer(c);
        }
        let p = self.producers.remove(&h).expect("checked above");
        if let Some(t) = self.transports.get_mut(&p.transport) {
            t.producers.retain(|x| *x != h);
            t.ssrc_in.retain(|ssrc, r| {
                let keep = r.producer != h;
                if !keep {
                    if let Some(rx) = t.rx.as_mut() {
                        rx.remove_ssrc(*ssrc);
                    }
                }
                keep
            });
        }
        Ok(())
    }

    pub fn pause_producer(&mut self, h: Handle) -> Result<()> {
        let p = self.producers.get_mut(&h).ok_or_else(|| unknown("producer", h))?;
        p.paused = true;
        Ok(())
    }

    pub fn resume_producer(&mut self, now: Instant, h: Handle, out: &mut Output) -> Result<()> {
        let p = self.producers.get_mut(&h).ok_or_else(|| unknown("producer", h))?;
        if !p.paused {
            return Ok(());
        }
        p.paused = false;
        let consumers = p.consumers.clone();
        for c in consumers {
            self.resync_consumer(now, c, out);
        }
        Ok(())
    }

    pub fn add_consumer(&mut self, now: Instant, h: Handle, transport: Handle, producer: Handle, spec: ConsumerSpec, out: &mut Output) -> Result<()> {
        if self.handle_in_use(h) {
            return Err(invalid(format!("handle {h} already in use")));
        }
        let t = self.transports.get(&transport).ok_or_else(|| unknown("transport", transport))?;
        let p = self.producers.get(&producer).ok_or_else(|| unknown("producer", producer))?;
        if spec.encoding >= p.encodings.len() {
            return Err(invalid(format!("consumer spec: encoding {} out of range", spec.encoding)));
        }
        for s in [Some(spec.ssrc), spec.rtx_ssrc].into_iter().flatten() {
            if t.consumer_ssrc.contains_key(&s) {
                return Err(invalid(format!("consumer spec: ssrc {s} already used on transport {transport}")));
            }
        }
        if spec.rtx_ssrc == Some(spec.ssrc) {
            return Err(invalid("consumer spec: rtx_ssrc equals ssrc"));
        }
        if let Some(m) = &spec.mid {
            if m.is_empty() || m.len() > 16 {
                return Err(invalid(format!("consumer spec: mid {m:?} must be 1..16 bytes")));
            }
            if spec.mid_ext_id.is_none() {
                return Err(invalid("consumer spec: mid given without mid_ext_id"));
            }
        }
        if let Some(id) = spec.mid_ext_id {
            if id == 0 || id > 14 {
                return Err(invalid(format!("consumer spec: mid_ext_id {id} not in 1..14")));
            }
        }
        let mut pt = [0xffu8; 128];
        for &(r, c) in &spec.payload_types {
            if r > 127 || c > 127 {
                return Err(invalid(format!("consumer spec: payload type {r}->{c} out of range")));
            }
            pt[r as usize] = c;
        }
        let video = p.video;
        // A simulcast consumer starts on the highest layer (mediasoup's default preference).
        let n_enc = p.encodings.len();
        let encoding = if n_enc > 1 { n_enc - 1 } else { spec.encoding };
        let initial = self.rng.initial_seq();
        let mut rtx_pt = Vec::new();
        for &(r, x) in &spec.rtx_payload_types {
            if r > 127 || x > 127 {
                return Err(invalid(format!("consumer spec: RTX payload type {r}->{x} out of range")));
            }
            rtx_pt.push((r, x));
        }
        let quality = ConsumerQuality {
            seq_map: (video && spec.nack).then(|| SeqMap::new(now)),
            tx: SendStats::default(),
            rtx_pt,
            rtx_seq: self.rng.initial_seq(),
            nack: spec.nack,
            cname: spec.cname.as_deref().unwrap_or("pysfu").as_bytes().iter().copied().take(255).collect(),
            nacks_in: 0,
            nack_seqs_in: 0,
            plis_in: 0,
            firs_in: 0,
            rate: BitrateSampler::default(),
            budget: RetransmitBudget::new(now),
            nack_budget_drops: 0,
            nack_max_resend_drops: 0,
        };
        let consumer = Consumer {
            transport,
            producer,
            ssrc: spec.ssrc,
            rtx_ssrc: spec.rtx_ssrc,
            mid: spec.mid.as_ref().map(|m| m.as_bytes().to_vec()),
            mid_ext_id: if spec.mid.is_some() { spec.mid_ext_id } else { None },
            pt,
            paused: spec.paused,
            encoding,
            target: encoding,
            preferred_spatial: encoding,
            preferred_temporal: u8::MAX,
            layers: LayerState::new(now),
            layer_switches: 0,
            ts: TsOffset::new(),
            ts_source: encoding,
            ts_prev: (encoding, 0),
            last_out: None,
            seq: SeqManager::new(initial),
            wait_key_frame: video,
            stats: Counters::default(),
            dropped: 0,
            key_frame_requests_in: 0,
            quality,
        };
        self.consumers.insert(h, consumer);
        let t = self.transports.get_mut(&transport).expect("checked above");
        t.consumers.push(h);
        t.consumer_ssrc.insert(spec.ssrc, h);
        if let Some(r) = spec.rtx_ssrc {
            t.consumer_ssrc.insert(r, h);
        }
        self.producers.get_mut(&producer).expect("checked above").consumers.push(h);
        if !spec.paused {
            self.resync_consumer(now, h, out);
        }
        Ok(())
    }

    pub fn remove_consumer(&mut self, h: Handle) -> Result<()> {
        let c = self.consumers.remove(&h).ok_or_else(|| unknown("consumer", h))?;
        if let Some(t) = self.transports.get_mut(&c.transport) {
            t.consumers.retain(|x| *x != h);
            t.consumer_ssrc.retain(|_, x| *x != h);
            if let Some(tx) = t.tx.as_mut() {
                tx.remove_ssrc(c.ssrc);
                if let Some(r) = c.rtx_ssrc {
                    tx.remove_ssrc(r);
                }
            }
        }
        if let Some(p) = self.producers.get_mut(&c.producer) {
            p.consumers.retain(|x| *x != h);
        }
        Ok(())
    }

    pub fn pause_consumer(&mut self, h: Handle) -> Result<()> {
        let c = self.consumers.get_mut(&h).ok_or_else(|| unknown("consumer", h))?;
        c.paused = true;
        Ok(())
    }

    pub fn resume_consumer(&mut self, now: Instant, h: Handle, out: &mut Output) -> Result<()> {
        let c = self.consumers.get_mut(&h).ok_or_else(|| unknown("consumer", h))?;
        if !c.paused {
            return Ok(());
        }
        c.paused = false;
        self.resync_consumer(now, h, out);
        Ok(())
    }

    /// The consumer (re)starts: for video, wait for a key frame and ask the producer for one.
    fn resync_consumer(&mut self, now: Instant, h: Handle, out: &mut Output) {
        let Some(c) = self.consumers.get_mut(&h) else { return };
        if c.paused {
            return;
        }
        let Some(p) = self.producers.get(&c.producer) else { return };
        if p.paused || !p.video {
            return;
        }
        c.wait_key_frame = true;
        c.encoding = c.target;
        let (ph, enc) = (c.producer, c.encoding);
        self.request_key_frame(now, ph, enc, out);
    }

    /// Bytes Python sends on transport `h` (STUN/DTLS): counted here.
    pub fn note_python_send(&mut self, h: Handle, n: usize) -> Result<()> {
        let t = self.transports.get_mut(&h).ok_or_else(|| unknown("transport", h))?;
        t.stats.tx(n);
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Upcalls

    /// Take every queued upcall.
    pub fn take_upcalls(&mut self) -> VecDeque<Upcall> {
        let up = std::mem::take(&mut self.up);
        for u in &up {
            if let Some(t) = self.transports.get_mut(&u.transport) {
                t.up_pending = t.up_pending.saturating_sub(1);
            }
        }
        up
    }

    pub fn has_upcalls(&self) -> bool {
        !self.up.is_empty()
    }

    /// Queue a datagram for Python, within the queue's cap and the transport's share of it.
    fn push_up(&mut self, kind: UpKind, transport: Handle, from: SocketAddr, data: &[u8]) {
        let Some(t) = self.transports.get_mut(&transport) else { return };
        if self.up.len() >= UP_QUEUE_CAP || t.up_pending >= UP_QUEUE_PER_TRANSPORT {
            t.up_dropped += 1;
            self.drops.inc(Drop::UpQueueFull);
            return;
        }
        t.up_pending += 1;
        match kind {
            UpKind::Stun => t.stun_in += 1,
            UpKind::Dtls => t.dtls_in += 1,
        }
        self.up.push_back(Upcall { kind, transport, from, data: data.to_vec() });
    }

    // -----------------------------------------------------------------------------------
    // Stats

    pub fn stats(&self, h: Handle) -> Result<Vec<(&'static str, StatValue)>> {
        use StatValue::*;
        let counters = |c: &Counters| {
            vec![
                ("packets_in", Int(c.packets_in)),
                ("bytes_in", Int(c.bytes_in)),
                ("packets_out", Int(c.packets_out)),
                ("bytes_out", Int(c.bytes_out)),
            ]
        };
        if let Some(t) = self.transports.get(&h) {
            let mut v = vec![("type", Str("transport".into()))];
            v.extend(counters(&t.stats));
            v.push(("rtp_in", Int(t.rtp_in)));
            v.push(("rtcp_in", Int(t.rtcp_in)));
            v.push(("rtcp_out", Int(t.rtcp_out)));
            v.push(("stun_in", Int(t.stun_in)));
            v.push(("dtls_in", Int(t.dtls_in)));
            v.push(("tuples", Int(t.tuples.len() as u64)));
            v.push(("selected", Str(t.selected.map(|a| a.to_string()).unwrap_or_default())));
            v.push(("nominated", Str(t.nominated.map(|a| a.to_string()).unwrap_or_default())));
            v.push(("proven_tuples", Int(t.tuples.iter().filter(|a| a.proven).count() as u64)));
            v.push(("stun_rejected", Int(t.stun_rejected)));
            v.push(("up_queue_full", Int(t.up_dropped)));
            v.push(("srtp", Bool(t.tx.is_some())));
            v.push(("available_bitrate", Int(t.bwe.available_bitrate(Instant::now()).unwrap_or(0))));
            v.push(("remb_in", Int(t.bwe.remb_in)));
            v.push(("twcc_packets", Int(t.twcc.as_ref().map_or(0, |r| r.packets_recorded))));
            v.push(("twcc_feedback_sent", Int(t.twcc.as_ref().map_or(0, |r| r.feedback_sent))));
            return Ok(v);
        }
        if let Some(p) = self.producers.get(&h) {
            let mut v = vec![("type", Str("producer".into()))];
            v.extend(counters(&p.stats));
            v.push(("key_frames", Int(p.key_frames)));
            v.push(("key_frame_requests", Int(p.encodings.iter().map(|e| e.kf.requests_sent).sum())));
            v.push(("paused", Bool(p.paused)));
            v.push(("consumers", Int(p.consumers.len() as u64)));
            let join = |f: &dyn Fn(&Encoding) -> u64| p.encodings.iter().map(|e| f(e).to_string()).collect::<Vec<_>>().join(",");
            v.push(("layer_bitrates", Str(join(&|e| e.quality.rate.bps))));
            v.push(("layer_packets", Str(join(&|e| e.stats.packets_in))));
            v.push(("layer_key_frames", Str(join(&|e| e.key_frames))));
            return Ok(v);
        }
        if let Some(c) = self.consumers.get(&h) {
            let mut v = vec![("type", Str("consumer".into()))];
            v.extend(counters(&c.stats));
            v.push(("dropped", Int(c.dropped)));
            v.push(("key_frame_requests_in", Int(c.key_frame_requests_in)));
            v.push(("paused", Bool(c.paused)));
            v.push(("waiting_key_frame", Bool(c.wait_key_frame)));
            v.push(("ssrc", Int(c.ssrc as u64)));
            v.push(("current_layer", Int(c.encoding as u64)));
            v.push(("target_layer", Int(c.target as u64)));
            v.push(("preferred_layer", Int(c.preferred_spatial as u64)));
            v.push(("layer_switches", Int(c.layer_switches)));
            v.push(("nack_budget_drops", Int(c.quality.nack_budget_drops)));
            v.push(("nack_max_resend_drops", Int(c.quality.nack_max_resend_drops)));
            return Ok(v);
        }
        Err(RouterError::Unknown(format!("unknown handle {h}")))
    }
}

// ---------------------------------------------------------------------------------------
// Datagrams

impl Router {
    /// Process one received datagram.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8], out: &mut Output) {
        let Some(&b0) = data.first() else {
            self.drops.inc(Drop::Demux);
            return;
        };
        match b0 {
            0..=3 => self.on_stun(from, data),
            20..=63 => self.on_dtls(from, data),
            128..=191 => {
                if data.len() >= 2 && (192..=223).contains(&data[1]) {
                    self.on_rtcp(now, from, data, out)
                } else {
                    self.on_rtp(now, from, data, out)
                }
                // The packet proved the transport's first sending tuple: media may flow.
                if let Some(h) = self.connect_pending.take() {
                    self.on_transport_connected(now, h, out);
                }
            }
            _ => self.drops.inc(Drop::Demux),
        }
    }

    /// A STUN message goes to Python only as a Binding request for a known transport (found
    /// by its USERNAME's local ufrag) with a valid MESSAGE-INTEGRITY (and FINGERPRINT, if
    /// present); everything else is dropped here, counted.
    fn on_stun(&mut self, from: SocketAddr, data: &[u8]) {
        let h = match stun_peek::local_ufrag(data).and_then(|u| self.by_ufrag.get(u)) {
            Some(&h) => h,
            None => {
                // From a tuple of a transport: a request that failed that transport's check.
                match self.by_addr.get(&from).and_then(|h| self.transports.get_mut(h)) {
                    Some(t) => {
                        t.stats.rx(data.len());
                        t.stun_rejected += 1;
                        self.drops.inc(Drop::StunIntegrity);
                    }
                    None => self.drops.inc(Drop::StunUnknown),
                }
                return;
            }
        };
        let Some(t) = self.transports.get_mut(&h) else {
            self.drops.inc(Drop::StunUnknown);
            return;
        };
        t.stats.rx(data.len());
        if stun_check::verify(data, &t.ice_key).is_err() {
            t.stun_rejected += 1;
            self.drops.inc(Drop::StunIntegrity);
            return;
        }
        self.push_up(UpKind::Stun, h, from, data);
    }

    fn on_dtls(&mut self, from: SocketAddr, data: &[u8]) {
        let Some(&h) = self.by_addr.get(&from) else {
            self.drops.inc(Drop::UnknownSource);
            return;
        };
        if let Some(t) = self.transports.get_mut(&h) {
            t.stats.rx(data.len());
        }
        self.push_up(UpKind::Dtls, h, from, data);
    }

    /// When `handle_timeout` next has work (approximate; calling it earlier is harmless).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timeout
    }

    /// Periodic work: re-request key frames still wanted after an outstanding request expired;
    /// transport-wide feedback toward senders; stream bitrates and simulcast layer choice.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Output) {
        self.send_twcc_feedback(now, out);
        self.update_layers(now, out);
        self.handle_key_frame_timeouts(now, out);
    }

    fn send_twcc_feedback(&mut self, now: Instant, out: &mut Output) {
        let Router { transports, drops, .. } = self;
        for t in transports.values_mut() {
            let dest = t.feedback_dest();
            let Some(rec) = t.twcc.as_mut() else { continue };
            if !rec.has_pending() || t.twcc_last.is_some_and(|l| now.saturating_duration_since(l) < TWCC_INTERVAL) {
                continue;
            }
            let (Some(tx), Some(dest)) = (t.tx.as_mut(), dest) else { continue };
            let mut buf = out.take_buf();
            rec.build_feedback(&mut buf, 0, t.twcc_media_ssrc);
            t.twcc_last = Some(now);
            push_rtcp(tx, &mut t.stats, &mut t.rtcp_out, drops, out, dest, buf);
        }
    }

    /// Roll the stream bitrate windows and move simulcast consumers to the layer their
    /// preference and their viewer's estimate allow (asking that layer for a key frame).
    fn update_layers(&mut self, now: Instant, out: &mut Output) {
        let mut wanted: Vec<(Handle, usize)> = Vec::new();
        for p in self.producers.values_mut() {
            if p.encodings.len() < 2 {
                continue;
            }
            let mut rates = [0u64; 8];
            let n = p.encodings.len().min(rates.len());
            for (r, e) in rates.iter_mut().zip(&p.encodings) {
                *r = e.quality.rate.bps;
            }
            for ch in &p.consumers {
                let Some(c) = self.consumers.get_mut(ch) else { continue };
                let estimate = self.transports.get(&c.transport).and_then(|t| t.bwe.estimate(now));
                let target = c.layers.decide(now, c.preferred_spatial, c.encoding, &rates[..n], estimate);
                if target != c.target {
                    c.target = target;
                    if target != c.encoding && !c.paused {
                        wanted.push((c.producer, target));
                    }
                }
            }
        }
        for (ph, enc) in wanted {
            self.request_key_frame(now, ph, enc, out);
        }
    }

    /// Viewer preference for a simulcast consumer: at most `spatial` (clamped to the
    /// producer's layers). The switch happens at the target stream's next key frame.
    pub fn set_preferred_layers(&mut self, now: Instant, h: Handle, spatial: usize, temporal: Option<u8>, out: &mut Output) -> Result<(usize, u8)> {
        let c = self.consumers.get_mut(&h).ok_or_else(|| unknown("consumer", h))?;
        let p = self.producers.get(&c.producer).ok_or_else(|| unknown("producer", c.producer))?;
        let preferred = spatial.min(p.encodings.len() - 1);
        if preferred > c.preferred_spatial {
            c.layers.preference_raised(now);
        }
        c.preferred_spatial = preferred;
        c.preferred_temporal = temporal.unwrap_or(u8::MAX);
        let rates: Vec<u64> = p.encodings.iter().map(|e| e.quality.rate.bps).collect();
        let estimate = self.transports.get(&c.transport).and_then(|t| t.bwe.estimate(now));
        let target = c.layers.decide(now, c.preferred_spatial, c.encoding, &rates, estimate);
        c.target = target;
        let (ph, switch, paused, res) = (c.producer, target != c.encoding, c.paused, (c.preferred_spatial, c.preferred_temporal));
        if switch && !paused {
            self.request_key_frame(now, ph, target, out);
        }
        Ok(res)
    }

    fn handle_key_frame_timeouts(&mut self, now: Instant, out: &mut Output) {
        let mut due: Vec<(Handle, usize)> = Vec::new();
        let mut next: Option<Instant> = None;
        for (&ph, p) in &self.producers {
            for (i, e) in p.encodings.iter().enumerate() {
                if let Some(t) = e.kf.outstanding_since {
                    let deadline = t + KEY_FRAME_INTERVAL;
                    if now >= deadline {
                        due.push((ph, i));
                    } else {
                        next = Some(next.map_or(deadline, |n: Instant| n.min(deadline)));
                    }
                }
            }
        }
        self.next_timeout = next;
        for (ph, i) in due {
            let still_wanted = {
                let p = &self.producers[&ph];
                p.encodings[i].kf.wanted
                    || p.consumers.iter().any(|c| {
                        self.consumers.get(c).is_some_and(|c| {
                            !c.paused && ((c.encoding == i && c.wait_key_frame) || (c.target == i && c.encoding != i))
                        })
                    })
            };
            let p = self.producers.get_mut(&ph).expect("listed above");
            p.encodings[i].kf.outstanding_since = None;
            if still_wanted {
                self.request_key_frame(now, ph, i, out);
            }
        }
        self.quality_timeout(now, out);
    }
}

// ---------------------------------------------------------------------------------------
// Media path

impl Router {
    fn on_rtp(&mut self, now: Instant, from: SocketAddr, data: &[u8], out: &mut Output) {
        let Some(&th) = self.by_addr.get(&from) else {
            self.drops.inc(Drop::UnknownSource);
            return;
        };
        let Router { transports, producers, consumers, drops, scratch, next_timeout, connect_pending, .. } = self;
        let Some(t) = transports.get_mut(&th) else {
            drops.inc(Drop::UnknownSource);
            return;
        };
        t.stats.rx(data.len());
        t.rtp_in += 1;
        let Some(rx) = t.rx.as_mut() else {
            drops.inc(Drop::NoSrtp);
            return;
        };
        scratch.clear();
        scratch.extend_from_slice(data);
        if let Err(e) = rx.unprotect_rtp(scratch) {
            drops.inc(srtp_drop(e, false));
            return;
        }
        if t.authenticated_from(from) {
            *connect_pending = Some(th);
        }
        let Ok(mut hdr) = rtp::parse(scratch) else {
            drops.inc(Drop::RtpMalformed);
            return;
        };
        // Which producer stream?
        let sref = match t.ssrc_in.get(&hdr.ssrc) {
            Some(r) => *r,
            None => match learn_ssrc(t, producers, th, scratch, &hdr) {
                Some(r) => r,
                None => {
                    drops.inc(Drop::UnknownSsrc);
                    return;
                }
            },
        };
        let Some(p) = producers.get_mut(&sref.producer) else {
            drops.inc(Drop::UnknownSsrc);
            return;
        };
        p.stats.rx(data.len());
        if let Some(id) = p.tcc_id {
            record_twcc(t, scratch, &hdr, id, now);
        }
        let enc_idx = sref.encoding;
        let Some(enc) = p.encodings.get_mut(enc_idx) else {
            drops.inc(Drop::UnknownSsrc);
            return;
        };
        enc.stats.rx(data.len());
        let (codec_idx, is_rtx) = match p.pt[(hdr.payload_type & 0x7f) as usize] {
            PtInfo::Media(i) if !sref.rtx => (i, false),
            PtInfo::Rtx(i) if sref.rtx => {
                // Without upstream NACKs every RTX packet is unrequested (probing or a
                // retransmission nobody asked for): drop it, as a NACK-less receiver would.
                let Some(media_ssrc) = enc.media_ssrc.filter(|_| enc.quality.nack.is_some()) else {
                    drops.inc(Drop::Rtx);
                    return;
                };
                if hdr.is_padding_only() {
                    drops.inc(Drop::PaddingOnly);
                    return;
                }
                // Back to the original packet (OSN as sequence number), in place.
                let restored = rtp::rtx_restore(scratch, p.codecs[i].payload_type, media_ssrc);
                match restored.ok().and_then(|_| rtp::parse(scratch).ok()) {
                    Some(h) => hdr = h,
                    None => {
                        drops.inc(Drop::RtpMalformed);
                        return;
                    }
                }
                (i, true)
            }
            _ => {
                drops.inc(Drop::UnknownPt);
                return;
            }
        };
        let pkt: &[u8] = scratch;
        // Loss bookkeeping: gaps to NACK upstream, retransmissions that fill them.
        let q = &mut enc.quality;
        let arrival = match q.nack.as_mut() {
            Some(g) => g.on_packet(now, hdr.sequence, is_rtx),
            None => Arrival::New,
        };
        if is_rtx {
            if arrival != Arrival::Recovered {
                q.rtx_duplicate += 1;
                drops.inc(Drop::RtxDuplicate);
                return;
            }
            q.rtx_in += 1;
        } else if arrival == Arrival::Duplicate {
            // Already forwarded (e.g. its retransmission overtook it): a second copy would
            // reuse the consumers' sequence numbers.
            drops.inc(Drop::Duplicate);
            return;
        }
        if arrival == Arrival::Restart {
            // New numbering: old statistics and buffered packets no longer apply.
            q.restart(now);
            if let Some(g) = q.nack.as_mut() {
                g.on_packet(now, hdr.sequence, false);
            }
        }
        q.rx.on_packet(now, hdr.sequence, hdr.timestamp, is_rtx);
        if let Some(b) = q.buffer.as_mut() {
            if !hdr.is_padding_only() {
                b.store(now, hdr.sequence, pkt);
            }
        }
        let nack_due = q.nack.as_ref().is_some_and(|g| g.is_due(now));
        if let Some(d) = q.nack.as_ref().and_then(|g| g.next_due()) {
            *next_timeout = Some(next_timeout.map_or(d, |n| n.min(d)));
        }
        let nack_overflow = matches!(arrival, Arrival::Overflow | Arrival::Restart);
        let codec = &p.codecs[codec_idx];
        let router_pt = codec.mapped_pt;
        let payload = hdr.payload(pkt);
        let padding_only = hdr.is_padding_only();
        let has_key_frames = p.video && codec.codec.has_keyframes();
        let key_frame = !padding_only && has_key_frames && rtp::is_keyframe(codec.codec, payload);
        let first_packet = enc.stats.packets_in == 1;
        if key_frame {
            p.key_frames += 1;
            enc.key_frames += 1;
            enc.kf.outstanding_since = None;
            enc.kf.wanted = false;
        }
        let new_stream_needs_kf = has_key_frames
            && !key_frame
            && !p.paused
            && (first_packet || (enc.kf.wanted && enc.kf.outstanding_since.is_none()));
        if padding_only {
            drops.inc(Drop::PaddingOnly);
            for ch in &p.consumers {
                if let Some(c) = consumers.get_mut(ch) {
                    if c.encoding == enc_idx {
                        c.seq.drop(hdr.sequence);
                    }
                }
            }
            return;
        }
        if p.paused {
            drops.inc(Drop::ProducerPaused);
            return;
        }
        let ext_map = &p.ext_map;
        let map = |id: u8| {
            let r = ext_map[id as usize];
            (r != 0).then_some(r)
        };
        let seq_in = hdr.sequence;
        let mut forwarded = 0u64;
        let mut forwarded_bytes = 0u64;
        // Fan-out.
        for ch in &p.consumers {
            let Some(c) = consumers.get_mut(ch) else { continue };
            let mut switching = false;
            if c.encoding != enc_idx {
                // Simulcast: move to the target stream only at one of its key frames.
                if c.target != enc_idx || !key_frame || c.paused {
                    continue;
                }
                c.encoding = enc_idx;
                switching = true;
            }
            if c.paused {
                c.seq.drop(seq_in);
                continue;
            }
            let Some(ct) = transports.get_mut(&c.transport) else { continue };
            let dest = ct.media_dest();
            let (Some(tx), Some(dest)) = (ct.tx.as_mut(), dest) else {
                c.dropped += 1;
                continue;
            };
            let cpt = c.pt[router_pt as usize];
            if cpt == 0xff {
                c.dropped += 1;
                c.seq.drop(seq_in);
                continue;
            }
            if c.wait_key_frame && has_key_frames {
                if !key_frame {
                    c.dropped += 1;
                    c.seq.drop(seq_in);
                    continue;
                }
                c.wait_key_frame = false;
                switching = true;
            } else if c.wait_key_frame {
                // No key frame detection for this codec: start right away.
                c.wait_key_frame = false;
                switching = true;
            }
            if switching {
                // Output continues right after the last packet sent, in sequence and in
                // time (the wall-clock gap since then, at 90 kHz), whichever stream it was.
                c.seq.sync(seq_in);
                let gap = c.last_out.map_or(1, |t| (now.saturating_duration_since(t).as_millis() as u32).saturating_mul(90).max(1));
                if c.ts_source != c.encoding {
                    // Another stream's timestamps (simulcast): continue after the last one.
                    c.ts_prev = (c.ts_source, c.ts.offset());
                    c.ts.sync_after_last(hdr.timestamp, gap);
                    c.ts_source = c.encoding;
                    c.layer_switches += 1;
                }
            }
            let Some(seq_out) = c.seq.input(seq_in) else {
                c.dropped += 1;
                continue;
            };
            let ts_out = c.ts.apply(hdr.timestamp);
            let mut buf = out.take_buf();
            let egress = Egress { seq: seq_out, timestamp: ts_out, ssrc: c.ssrc, pt: cpt };
            if write_egress(&mut buf, pkt, &hdr, &map, c.mid_ext(), egress).is_err() {
                drops.inc(Drop::RtpMalformed);
                out.give_back(buf);
                continue;
            }
            c.last_out = Some(now);
            if tx.protect_rtp(&mut buf).is_err() {
                drops.inc(Drop::ProtectFailed);
                out.give_back(buf);
                continue;
            }
            let len = buf.len();
            c.stats.tx(len);
            ct.stats.tx(len);
            if let Some(m) = c.quality.seq_map.as_mut() {
                m.record(seq_out, seq_in, enc_idx as u8);
            }
            c.quality.tx.on_sent(now, ts_out, hdr.payload_len);
            forwarded += 1;
            forwarded_bytes += len as u64;
            out.push(dest, buf);
        }
        p.stats.packets_out += forwarded;
        p.stats.bytes_out += forwarded_bytes;
        if new_stream_needs_kf || nack_overflow {
            self.request_key_frame(now, sref.producer, enc_idx, out);
        }
        if nack_due {
            self.send_upstream_nacks(now, sref.producer, enc_idx, out);
        }
    }

    fn on_rtcp(&mut self, now: Instant, from: SocketAddr, data: &[u8], out: &mut Output) {
        let Some(&th) = self.by_addr.get(&from) else {
            self.drops.inc(Drop::UnknownSource);
            return;
        };
        let Router { transports, drops, scratch, rtcp_work: work, connect_pending, .. } = self;
        let Some(t) = transports.get_mut(&th) else { return };
        t.stats.rx(data.len());
        t.rtcp_in += 1;
        let Some(rx) = t.rx.as_mut() else {
            drops.inc(Drop::NoSrtp);
            return;
        };
        scratch.clear();
        scratch.extend_from_slice(data);
        if let Err(e) = rx.unprotect_rtcp(scratch) {
            drops.inc(srtp_drop(e, true));
            return;
        }
        if t.authenticated_from(from) {
            *connect_pending = Some(th);
        }
        // Collect key frame requests first (the compound borrows scratch).
        let mut wanted: [u32; 16] = [0; 16];
        let mut n_wanted = 0usize;
        work.clear();
        for item in rtcp::compound(scratch) {
            match item {
                Ok(rtcp::Packet::Sr(sr)) => {
                    if work.srs.len() < MAX_RTCP_ITEMS {
                        work.srs.push((sr.info.ssrc, sr.info.ntp, sr.info.rtp_timestamp));
                    }
                    work.add_blocks(sr.report_blocks());
                }
                Ok(rtcp::Packet::Rr(rr)) => work.add_blocks(rr.report_blocks()),
                Ok(rtcp::Packet::Nack(n)) => {
                    if work.nacks.len() < MAX_RTCP_ITEMS {
                        work.nacks.push(n.media_ssrc);
                    }
                    for seq in n.seqs() {
                        if work.nack_seqs.len() >= MAX_NACK_SEQS {
                            // More than one compound may ask for (bounds the answer burst).
                            drops.inc(Drop::NackTruncated);
                            continue;
                        }
                        work.nack_seqs.push((n.media_ssrc, seq));
                    }
                }
                Ok(rtcp::Packet::Pli(pli)) => {
                    work.key_frame(pli.media_ssrc, false);
                    if n_wanted < wanted.len() {
                        wanted[n_wanted] = pli.media_ssrc;
                        n_wanted += 1;
                    }
                }
                Ok(rtcp::Packet::Fir(fir)) => {
                    for ssrc in fir.ssrcs() {
                        work.key_frame(ssrc, true);
                        if n_wanted < wanted.len() {
                            wanted[n_wanted] = ssrc;
                            n_wanted += 1;
                        }
                    }
                }
                Ok(rtcp::Packet::Remb(remb)) => t.bwe.on_remb(now, remb.bitrate),
                Ok(_) => drops.inc(Drop::RtcpIgnored),
                Err(_) => {
                    drops.inc(Drop::RtcpMalformed);
                    break;
                }
            }
        }
        for &ssrc in &wanted[..n_wanted] {
            let t = &self.transports[&th];
            let Some(&ch) = t.consumer_ssrc.get(&ssrc) else {
                self.drops.inc(Drop::RtcpUnknownSsrc);
                continue;
            };
            let Some(c) = self.consumers.get_mut(&ch) else { continue };
            c.key_frame_requests_in += 1;
            let (ph, enc) = (c.producer, c.encoding);
            if !c.paused {
                self.request_key_frame(now, ph, enc, out);
            }
        }
        self.on_rtcp_quality(now, th, out);
    }

    /// Ask producer `ph`'s stream `enc` for a key frame: PLI or FIR (as negotiated) with the
    /// stream's original SSRC, at most one outstanding request per second.
    fn request_key_frame(&mut self, now: Instant, ph: Handle, enc: usize, out: &mut Output) {
        let Router { transports, producers, drops, .. } = self;
        let Some(p) = producers.get_mut(&ph) else { return };
        let Some(method) = p.key_frame_request.clone() else { return };
        let Some(e) = p.encodings.get_mut(enc) else { return };
        let Some(ssrc) = e.media_ssrc else {
            // Not seen yet: ask as soon as the stream's SSRC is known.
            e.kf.wanted = true;
            return;
        };
        if let Some(since) = e.kf.outstanding_since {
            if now.duration_since(since) < KEY_FRAME_INTERVAL {
                e.kf.wanted = true;
                return;
            }
        }
        let Some(t) = transports.get_mut(&p.transport) else { return };
        let dest = t.feedback_dest();
        let (Some(tx), Some(dest)) = (t.tx.as_mut(), dest) else {
            e.kf.wanted = true;
            drops.inc(Drop::KeyFrameNoRoute);
            return;
        };
        let mut buf = out.take_buf();
        match method {
            KeyFrameMethod::Pli => {
                e.quality.plis_sent += 1;
                rtcp::build_pli(&mut buf, ssrc, ssrc)
            }
            KeyFrameMethod::Fir => {
                e.quality.firs_sent += 1;
                e.kf.fir_seq = e.kf.fir_seq.wrapping_add(1);
                rtcp::build_fir(&mut buf, ssrc, &[(ssrc, e.kf.fir_seq)])
            }
        }
        if !push_rtcp(tx, &mut t.stats, &mut t.rtcp_out, drops, out, dest, buf) {
            return;
        }
        e.kf.outstanding_since = Some(now);
        e.kf.wanted = false;
        e.kf.requests_sent += 1;
        let deadline = now + KEY_FRAME_INTERVAL;
        self.next_timeout = Some(self.next_timeout.map_or(deadline, |n| n.min(deadline)));
    }
}

/// Note the transport-wide sequence number of a producer packet for feedback.
fn record_twcc(t: &mut Transport, pkt: &[u8], hdr: &rtp::RtpHeader, id: u8, now: Instant) {
    let Some(v) = rtp::find_extension(pkt, hdr, id) else { return };
    let Some(seq) = v.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else { return };
    let rec = t.twcc.get_or_insert_with(|| Box::new(TwccRecorder::new()));
    let epoch = *TWCC_EPOCH.get_or_init(|| now);
    rec.record(seq, now.saturating_duration_since(epoch).as_micros() as i64);
    t.twcc_media_ssrc = hdr.ssrc;
}

/// Common origin of arrival times given to the transport-wide feedback recorders.
static TWCC_EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

impl RtcpWork {
    fn clear(&mut self) {
        self.nack_seqs.clear();
        self.nacks.clear();
        self.blocks.clear();
        self.srs.clear();
        self.key_frames.clear();
    }

    fn add_blocks(&mut self, blocks: rtcp::ReportBlocks<'_>) {
        for b in blocks {
            if self.blocks.len() >= MAX_RTCP_ITEMS {
                break;
            }
            self.blocks.push(b);
        }
    }

    fn key_frame(&mut self, ssrc: u32, fir: bool) {
        if self.key_frames.len() < MAX_RTCP_ITEMS {
            self.key_frames.push((ssrc, fir));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Loss repair and reports

impl Router {
    /// The loss-repair and report items of a compound RTCP packet from transport `th`:
    /// producers' SRs, viewers' report blocks and NACKs (collected by `on_rtcp`).
    fn on_rtcp_quality(&mut self, now: Instant, th: Handle, out: &mut Output) {
        let work = std::mem::take(&mut self.rtcp_work);
        if let Some(t) = self.transports.get(&th) {
            for &(ssrc, ntp, rtp_ts) in &work.srs {
                let enc = match t.ssrc_in.get(&ssrc) {
                    Some(r) if !r.rtx => self.producers.get_mut(&r.producer).and_then(|p| p.encodings.get_mut(r.encoding)),
                    _ => None,
                };
                match enc {
                    Some(e) => e.quality.rx.on_sender_report(now, ntp, rtp_ts),
                    None => self.drops.inc(Drop::RtcpUnknownSsrc),
                }
            }
            // Blocks about a consumer's media SSRC; RTX and unknown SSRCs (the probator's
            // 1234) are ignored.
            for b in &work.blocks {
                if let Some(c) = t.consumer_ssrc.get(&b.ssrc).and_then(|h| self.consumers.get_mut(h)) {
                    if c.ssrc == b.ssrc {
                        c.quality.tx.on_report_block(now, b);
                    }
                }
            }
            for &ssrc in &work.nacks {
                if let Some(c) = t.consumer_ssrc.get(&ssrc).and_then(|h| self.consumers.get_mut(h)) {
                    c.quality.nacks_in += 1;
                }
            }
            for &(ssrc, fir) in &work.key_frames {
                if let Some(c) = t.consumer_ssrc.get(&ssrc).and_then(|h| self.consumers.get_mut(h)) {
                    if fir {
                        c.quality.firs_in += 1;
                    } else {
                        c.quality.plis_in += 1;
                    }
                }
            }
        }
        for &(ssrc, seq) in &work.nack_seqs {
            self.answer_nack(now, th, ssrc, seq, out);
        }
        self.rtcp_work = work;
    }

    /// Resend output packet `seq_out` of the consumer with media SSRC `ssrc` on transport
    /// `th` from its producer stream's buffer: as RTX (the consumer's RTX SSRC, PT and
    /// sequence numbers, the original sequence number in front of the payload) when
    /// negotiated, else as the original packet again.
    fn answer_nack(&mut self, now: Instant, th: Handle, ssrc: u32, seq_out: u16, out: &mut Output) {
        let Router { transports, producers, consumers, drops, .. } = self;
        let Some(t) = transports.get_mut(&th) else { return };
        let Some(c) = t.consumer_ssrc.get(&ssrc).and_then(|h| consumers.get_mut(h)).filter(|c| c.ssrc == ssrc) else {
            drops.inc(Drop::RtcpUnknownSsrc);
            return;
        };
        let q = &mut c.quality;
        q.nack_seqs_in += 1;
        let Some(map) = q.seq_map.as_mut().filter(|_| q.nack) else {
            drops.inc(Drop::NackNotNegotiated);
            return;
        };
        let Some((stream, seq_in)) = map.lookup(seq_out) else {
            drops.inc(Drop::NackNotBuffered);
            return;
        };
        let Some(p) = producers.get(&c.producer) else { return };
        let Some(e) = p.encodings.get(stream as usize) else { return };
        let Some(pkt) = e.quality.buffer.as_ref().and_then(|b| b.get(now, seq_in)) else {
            drops.inc(Drop::NackNotBuffered);
            return;
        };
        if c.paused {
            drops.inc(Drop::NackPaused);
            return;
        }
        // Once per RTT (or 100 ms while unknown) per packet: a repeated NACK inside that
        // time is already answered by the retransmission in flight. At most NACK_MAX_RESENDS
        // times per packet, and within the consumer's retransmission budget.
        let min_interval = q.tx.rtt.map_or(RESEND_INTERVAL, |r| r.clamp(Duration::from_millis(5), RESEND_INTERVAL));
        match map.check_resend(now, seq_out, min_interval, NACK_MAX_RESENDS) {
            Resend::Allowed => {}
            Resend::Throttled | Resend::Unknown => {
                drops.inc(Drop::NackThrottled);
                return;
            }
            Resend::MaxResends => {
                q.nack_max_resend_drops += 1;
                drops.inc(Drop::NackMaxResends);
                return;
            }
        }
        q.budget.refill(now, c.stats.bytes_out, q.rate.bps);
        if !q.budget.allows(pkt.len() + RETRANSMIT_OVERHEAD) {
            q.nack_budget_drops += 1;
            drops.inc(Drop::NackBudget);
            return;
        }
        map.mark_resent(now, seq_out);
        let Ok(hdr) = rtp::parse(pkt) else { return };
        let PtInfo::Media(ci) = p.pt[(hdr.payload_type & 0x7f) as usize] else { return };
        let cpt = c.pt[p.codecs[ci].mapped_pt as usize];
        if cpt == 0xff {
            drops.inc(Drop::NackNotBuffered);
            return;
        }
        let dest = t.media_dest();
        let (Some(tx), Some(dest)) = (t.tx.as_mut(), dest) else { return };
        let ext_map = &p.ext_map;
        let map_ext = |id: u8| {
            let r = ext_map[id as usize];
            (r != 0).then_some(r)
        };
        // In the consumer's timestamps (simulcast offset of the packet's stream).
        let ts_offset = match stream as usize {
            s if s == c.ts_source => c.ts.offset(),
            s if s == c.ts_prev.0 => c.ts_prev.1,
            _ => {
                // From two or more switches ago: its timestamp mapping is gone.
                drops.inc(Drop::NackNotBuffered);
                return;
            }
        };
        let mut buf = out.take_buf();
        let egress = Egress {
            seq: seq_out,
            timestamp: hdr.timestamp.wrapping_add(ts_offset),
            ssrc: c.ssrc,
            pt: cpt,
        };
        if write_egress(&mut buf, pkt, &hdr, &map_ext, c.mid_ext_id.zip(c.mid.as_deref()), egress).is_err() {
            drops.inc(Drop::RtpMalformed);
            out.give_back(buf);
            return;
        }
        let rtx_pt = q.rtx_pt.iter().find(|(m, _)| *m == cpt).map(|(_, r)| *r);
        if let (Some(rtx_ssrc), Some(rtx_pt)) = (c.rtx_ssrc, rtx_pt) {
            let mut rtx = out.take_buf();
            if rtp::rtx_encode(&mut rtx, &buf, rtx_pt, rtx_ssrc, q.rtx_seq).is_err() {
                out.give_back(rtx);
                out.give_back(buf);
                drops.inc(Drop::RtpMalformed);
                return;
            }
            q.rtx_seq = q.rtx_seq.wrapping_add(1);
            out.give_back(std::mem::replace(&mut buf, rtx));
        }
        if tx.protect_rtp(&mut buf).is_err() {
            drops.inc(Drop::ProtectFailed);
            out.give_back(buf);
            return;
        }
        let len = buf.len();
        q.budget.spend(len);
        q.tx.rtx_packets += 1;
        q.tx.rtx_bytes += len as u64;
        t.stats.tx(len);
        out.push(dest, buf);
    }

    /// NACK the producer stream's due gaps (if any) and note when to look again.
    fn send_upstream_nacks(&mut self, now: Instant, ph: Handle, enc: usize, out: &mut Output) {
        let Router { transports, producers, drops, next_timeout, .. } = self;
        let Some(p) = producers.get_mut(&ph) else { return };
        let Some(e) = p.encodings.get_mut(enc) else { return };
        let (Some(ssrc), Some(g)) = (e.media_ssrc, e.quality.nack.as_mut()) else { return };
        let Some(t) = transports.get_mut(&p.transport) else { return };
        let dest = t.feedback_dest();
        let seqs = g.collect(now);
        if let (false, Some(tx), Some(dest)) = (seqs.is_empty(), t.tx.as_mut(), dest) {
            let mut buf = out.take_buf();
            rtcp::build_nack(&mut buf, t.rtcp_ssrc, ssrc, seqs);
            if tx.protect_rtcp(&mut buf).is_ok() {
                t.stats.tx(buf.len());
                t.rtcp_out += 1;
                out.push(dest, buf);
            } else {
                drops.inc(Drop::ProtectFailed);
                out.give_back(buf);
            }
        }
        if let Some(d) = g.next_due() {
            *next_timeout = Some(next_timeout.map_or(d, |n| n.min(d)));
        }
    }

    /// Timer work of loss repair and reports: NACK retries, then (every REPORT_INTERVAL)
    /// bitrates, SRs toward viewers and RRs toward producers.
    fn quality_timeout(&mut self, now: Instant, out: &mut Output) {
        let mut due: Vec<(Handle, usize)> = Vec::new();
        let mut next: Option<Instant> = None;
        for (&ph, p) in &self.producers {
            for (i, e) in p.encodings.iter().enumerate() {
                let Some(g) = e.quality.nack.as_ref() else { continue };
                if g.is_due(now) {
                    due.push((ph, i));
                } else if let Some(d) = g.next_due() {
                    next = Some(next.map_or(d, |n: Instant| n.min(d)));
                }
            }
        }
        for (ph, i) in due {
            self.send_upstream_nacks(now, ph, i, out);
        }
        match self.next_report {
            Some(t) if now < t => {}
            Some(_) => {
                self.send_reports(now, out);
                self.next_report = Some(now + REPORT_INTERVAL);
            }
            None => self.next_report = Some(now + REPORT_INTERVAL),
        }
        for d in [next, self.next_report].into_iter().flatten() {
            self.next_timeout = Some(self.next_timeout.map_or(d, |n| n.min(d)));
        }
    }

    /// Bitrate samples; SR + SDES for each consumer stream that has sent (timestamps in
    /// the consumer's numbering); RR for the producer streams of each transport.
    fn send_reports(&mut self, now: Instant, out: &mut Output) {
        let Router { transports, producers, consumers, drops, ntp, .. } = self;
        for t in transports.values_mut() {
            t.rate_in.sample(now, t.stats.bytes_in);
            t.rate_out.sample(now, t.stats.bytes_out);
        }
        for c in consumers.values_mut() {
            c.quality.rate.sample(now, c.stats.bytes_out);
            if c.paused || !c.quality.tx.has_sent() {
                continue;
            }
            let Some(e) = producers.get(&c.producer).and_then(|p| p.encodings.get(c.encoding)) else { continue };
            let (clock_rate, sr) = (e.quality.rx.clock_rate(), e.quality.rx.last_sr);
            // The producer's NTP↔RTP mapping in this consumer's timestamps (simulcast offset).
            let offset = c.ts.offset();
            let sr = sr.map(|mut sr| {
                sr.rtp_timestamp = sr.rtp_timestamp.wrapping_add(offset);
                sr
            });
            let Some(t) = transports.get_mut(&c.transport) else { continue };
            let dest = t.media_dest();
            let (Some(tx), Some(dest)) = (t.tx.as_mut(), dest) else { continue };
            let info = c.quality.tx.sender_info(now, ntp, clock_rate, c.ssrc, sr);
            let mut buf = out.take_buf();
            rtcp::build_sr(&mut buf, &info, &[]);
            rtcp::build_sdes_cname(&mut buf, c.ssrc, &c.quality.cname);
            push_rtcp(tx, &mut t.stats, &mut t.rtcp_out, drops, out, dest, buf);
        }
        let mut blocks: Vec<rtcp::ReportBlock> = Vec::new();
        for t in transports.values_mut() {
            if t.producers.is_empty() {
                continue;
            }
            blocks.clear();
            for ph in &t.producers {
                let Some(p) = producers.get_mut(ph) else { continue };
                for e in p.encodings.iter_mut() {
                    e.quality.rate.sample(now, e.stats.bytes_in);
                    if let (Some(ssrc), true) = (e.media_ssrc, e.quality.rx.started()) {
                        blocks.push(e.quality.rx.report_block(now, ssrc));
                    }
                }
            }
            let dest = t.feedback_dest();
            let (false, Some(tx), Some(dest)) = (blocks.is_empty(), t.tx.as_mut(), dest) else { continue };
            let mut buf = out.take_buf();
            rtcp::build_rr(&mut buf, t.rtcp_ssrc, &blocks);
            push_rtcp(tx, &mut t.stats, &mut t.rtcp_out, drops, out, dest, buf);
        }
    }

    /// Per-stream RTP statistics with mediasoup-like (camelCase) names: one record for a
    /// transport or a consumer, one per encoding for a producer.
    pub fn rtp_stats(&self, h: Handle) -> Result<Vec<Vec<(&'static str, StatValue)>>> {
        use StatValue::*;
        let ms = |d: Duration| Float(d.as_secs_f64() * 1000.0);
        if let Some(t) = self.transports.get(&h) {
            let mut r = vec![
                ("type", Str("transport".into())),
                ("bytesReceived", Int(t.stats.bytes_in)),
                ("bytesSent", Int(t.stats.bytes_out)),
                ("packetsReceived", Int(t.stats.packets_in)),
                ("packetsSent", Int(t.stats.packets_out)),
                ("rtpPacketsReceived", Int(t.rtp_in)),
                ("rtcpPacketsReceived", Int(t.rtcp_in)),
                ("rtcpPacketsSent", Int(t.rtcp_out)),
                ("recvBitrate", Int(t.rate_in.bps)),
                ("sendBitrate", Int(t.rate_out.bps)),
                ("rembReceived", Int(t.bwe.remb_in)),
                ("transportCcPackets", Int(t.twcc.as_ref().map_or(0, |r| r.packets_recorded))),
                ("transportCcFeedbackSent", Int(t.twcc.as_ref().map_or(0, |r| r.feedback_sent))),
            ];
            // The viewer's estimate (bwe.rs), only while one is known.
            if let Some(b) = t.bwe.available_bitrate(Instant::now()) {
                r.push(("availableBitrate", Int(b)));
            }
            return Ok(vec![r]);
        }
        if let Some(p) = self.producers.get(&h) {
            let mut v = Vec::new();
            for (i, e) in p.encodings.iter().enumerate() {
                let q = &e.quality;
                let g = q.nack.as_ref();
                let mut r = vec![
                    ("type", Str("inbound-rtp".into())),
                    ("layer", Int(i as u64)),
                    ("ssrc", Int(e.media_ssrc.unwrap_or(0) as u64)),
                    ("rtxSsrc", Int(e.rtx_ssrc.unwrap_or(0) as u64)),
                    ("rid", Str(e.spec.rid.clone().unwrap_or_default())),
                    ("packetCount", Int(e.stats.packets_in)),
                    ("byteCount", Int(e.stats.bytes_in)),
                    ("packetsLost", Int(q.rx.lost().max(0) as u64)),
                    ("fractionLost", Float(q.rx.fraction_lost as f64 / 256.0)),
                    ("jitter", Int(q.rx.jitter() as u64)),
                    ("nackCount", Int(g.map_or(0, |g| g.batches))),
                    ("nackPacketCount", Int(g.map_or(0, |g| g.requested))),
                    ("packetsRetransmitted", Int(q.rtx_in + q.rtx_duplicate)),
                    ("packetsRepaired", Int(q.rtx_in)),
                    ("packetsReordered", Int(g.map_or(0, |g| g.reordered))),
                    ("packetsGivenUp", Int(g.map_or(0, |g| g.gave_up))),
                    ("packetsDiscarded", Int(q.rtx_duplicate)),
                    ("pliCount", Int(q.plis_sent)),
                    ("firCount", Int(q.firs_sent)),
                    ("keyFrames", Int(e.key_frames)),
                    ("bitrate", Int(q.rate.bps)),
                ];
                // RTT toward the producer, estimated from NACK → retransmission times.
                if let Some(g) = g.filter(|g| g.rtt_measured) {
                    r.push(("roundTripTime", ms(g.rtt())));
                }
                v.push(r);
            }
            return Ok(v);
        }
        if let Some(c) = self.consumers.get(&h) {
            let q = &c.quality;
            let mut r = vec![
                ("type", Str("outbound-rtp".into())),
                ("layer", Int(c.encoding as u64)),
                ("ssrc", Int(c.ssrc as u64)),
                ("rtxSsrc", Int(c.rtx_ssrc.unwrap_or(0) as u64)),
                ("packetCount", Int(c.stats.packets_out)),
                ("byteCount", Int(c.stats.bytes_out)),
                ("packetsRetransmitted", Int(q.tx.rtx_packets)),
                ("bytesRetransmitted", Int(q.tx.rtx_bytes)),
                ("packetsLost", Int(q.tx.cumulative_lost.max(0) as u64)),
                ("fractionLost", Float(q.tx.fraction_lost as f64 / 256.0)),
                ("jitter", Int(q.tx.jitter as u64)),
                ("nackCount", Int(q.nacks_in)),
                ("nackPacketCount", Int(q.nack_seqs_in)),
                ("pliCount", Int(q.plis_in)),
                ("firCount", Int(q.firs_in)),
                ("senderReports", Int(q.tx.srs_sent)),
                ("receiverReports", Int(q.tx.reports_received)),
                ("bitrate", Int(q.rate.bps)),
                ("paused", Bool(c.paused)),
                ("targetLayer", Int(c.target as u64)),
                ("preferredSpatialLayer", Int(c.preferred_spatial as u64)),
                ("layerSwitches", Int(c.layer_switches)),
            ];
            if let Some(rtt) = q.tx.rtt {
                r.push(("roundTripTime", ms(rtt)));
            }
            return Ok(vec![r]);
        }
        Err(RouterError::Unknown(format!("unknown handle {h}")))
    }
}

/// Protect an RTCP packet we built and queue it to `dest`, counting it on its transport;
/// false (the buffer recycled, the drop counted) if protection failed.
fn push_rtcp(
    tx: &mut SrtpContext,
    stats: &mut Counters,
    rtcp_out: &mut u64,
    drops: &mut Drops,
    out: &mut Output,
    dest: SocketAddr,
    mut buf: Vec<u8>,
) -> bool {
    if tx.protect_rtcp(&mut buf).is_err() {
        drops.inc(Drop::ProtectFailed);
        out.give_back(buf);
        return false;
    }
    stats.tx(buf.len());
    *rtcp_out += 1;
    out.push(dest, buf);
    true
}

/// Where a producer packet goes for one consumer: its sequence number, timestamp, SSRC, PT.
#[derive(Clone, Copy)]
struct Egress {
    seq: u16,
    timestamp: u32,
    ssrc: u32,
    pt: u8,
}

/// Write the consumer's copy of `pkt` into `buf`: router extension ids (plus the consumer's
/// mid), then its sequence number, timestamp, SSRC and payload type. Shared by forwarding and
/// retransmission so both always produce the same packet.
fn write_egress(
    buf: &mut Vec<u8>,
    pkt: &[u8],
    hdr: &rtp::RtpHeader,
    map: &impl Fn(u8) -> Option<u8>,
    mid: Option<(u8, &[u8])>,
    e: Egress,
) -> std::result::Result<(), rtp::RtpError> {
    match mid {
        Some(m) => rtp::rewrite_extensions(buf, pkt, hdr, map, &[m])?,
        None => rtp::rewrite_extensions(buf, pkt, hdr, map, &[])?,
    }
    rtp::set_sequence(buf, e.seq);
    rtp::set_timestamp(buf, e.timestamp);
    rtp::set_ssrc(buf, e.ssrc);
    rtp::set_payload_type(buf, e.pt);
    Ok(())
}

/// Find the producer stream of an SSRC not seen before (MID, then RID/RRID, then the single
/// unsignalled encoding) and remember it.
fn learn_ssrc(
    t: &mut Transport,
    producers: &mut HandleMap<Producer>,
    th: Handle,
    pkt: &[u8],
    hdr: &rtp::RtpHeader,
) -> Option<StreamRef> {
    let _ = th;
    let pt = (hdr.payload_type & 0x7f) as usize;
    // Candidate producers: the one with this MID, else every producer of the transport.
    let mut found: Option<StreamRef> = None;
    for &ph in &t.producers {
        let Some(p) = producers.get(&ph) else { continue };
        let rtx = match p.pt[pt] {
            PtInfo::Media(_) => false,
            PtInfo::Rtx(_) => true,
            PtInfo::None => continue,
        };
        let ext = |id: Option<u8>| -> Option<&[u8]> { rtp::find_extension(pkt, hdr, id?) };
        if let Some(mid) = ext(p.mid_id) {
            if p.mid.as_deref().map(str::as_bytes) != Some(mid) {
                continue;
            }
        } else if p.mid.is_some() && p.mid_id.is_some() && t.producers.len() > 1 {
            // Several producers and no MID to tell them apart: only an RID can decide.
        }
        let rid = if rtx { ext(p.rrid_id) } else { ext(p.rid_id) };
        let enc = if let Some(rid) = rid {
            p.encodings.iter().position(|e| e.spec.rid.as_deref().map(str::as_bytes) == Some(rid))
        } else if p.encodings.len() == 1 && p.encodings[0].spec.ssrc.is_none() && p.encodings[0].spec.rid.is_none() {
            let e = &p.encodings[0];
            let free = if rtx { e.rtx_ssrc.is_none() } else { e.media_ssrc.is_none() };
            free.then_some(0)
        } else {
            None
        };
        if let Some(enc) = enc {
            // RTX only after its media stream exists.
            if rtx && p.encodings[enc].media_ssrc.is_none() {
                continue;
            }
            found = Some(StreamRef { producer: ph, encoding: enc, rtx });
            break;
        }
    }
    let r = found?;
    let p = producers.get_mut(&r.producer)?;
    let e = &mut p.encodings[r.encoding];
    if r.rtx {
        if e.rtx_ssrc.is_some() {
            return None;
        }
        e.rtx_ssrc = Some(hdr.ssrc);
    } else {
        if e.media_ssrc.is_some() {
            // A second SSRC for an already bound stream (e.g. sender restarted): rebind.
            if let Some(old) = e.media_ssrc {
                t.ssrc_in.remove(&old);
            }
            e.quality.restart(Instant::now());
        }
        e.media_ssrc = Some(hdr.ssrc);
    }
    t.ssrc_in.insert(hdr.ssrc, r);
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "AES_CM_128_HMAC_SHA1_80";
    const VP8_PT: u8 = 96;
    const ROUTER_VP8_PT: u8 = 101;

    fn key(seed: u8) -> (Vec<u8>, Vec<u8>) {
        ((0..16).map(|i| seed.wrapping_add(i)).collect(), (0..14).map(|i| seed ^ i).collect())
    }

    fn ctx(seed: u8) -> SrtpContext {
        let (k, s) = key(seed);
        SrtpContext::new(Profile::AesCm128HmacSha1_80, &k, &s).unwrap()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    /// Server side of transport `h`: local (protect) keys from seed `h*2`, remote from `h*2+1`.
    fn connect(r: &mut Router, now: Instant, h: Handle, port: u16, out: &mut Output) {
        r.add_transport(h, &format!("ufrag{h}"), &format!("pw{h}")).unwrap();
        let (lk, ls) = key(h as u8 * 2);
        let (rk, rs) = key(h as u8 * 2 + 1);
        // As the control plane does: ICE nominates the tuple, then DTLS completes with it.
        r.bind_tuple(now, h, addr(port), true, out).unwrap();
        r.set_srtp(now, h, P, &lk, &ls, &rk, &rs, Some(addr(port)), out).unwrap();
    }

    /// The peer of transport `h`: protects with the server's remote keys, unprotects with its local ones.
    fn peer(h: Handle) -> (SrtpContext, SrtpContext) {
        (ctx(h as u8 * 2 + 1), ctx(h as u8 * 2))
    }

    fn vp8_payload(key_frame: bool) -> Vec<u8> {
        // Descriptor: S=1, PID=0, no X; then VP8 frame tag byte (bit0 = 0 for key frames).
        let mut p = vec![0x10, if key_frame { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a];
        p.extend_from_slice(&[0xab; 100]);
        p
    }

    fn rtp_packet(ssrc: u32, seq: u16, pt: u8, mid: Option<&str>, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80, pt, 0, 0, 0, 0, 0x10, 0];
        v[2..4].copy_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&ssrc.to_be_bytes());
        if let Some(mid) = mid {
            v[0] |= 0x10;
            let mut ext = vec![(3 << 4) | (mid.len() as u8 - 1)];
            ext.extend_from_slice(mid.as_bytes());
            // Also an abs-send-time (id 2) and an unknown one (id 9).
            ext.extend_from_slice(&[(2 << 4) | 2, 1, 2, 3, (9 << 4), 0x55]);
            while ext.len() % 4 != 0 {
                ext.push(0);
            }
            v.extend_from_slice(&[0xBE, 0xDE]);
            v.extend_from_slice(&((ext.len() / 4) as u16).to_be_bytes());
            v.extend_from_slice(&ext);
        }
        v.extend_from_slice(payload);
        v
    }

    fn producer_spec(ssrc: Option<u32>) -> ProducerSpec {
        ProducerSpec {
            video: true,
            mid: Some("0".into()),
            codecs: vec![CodecSpec {
                payload_type: VP8_PT,
                mapped_payload_type: ROUTER_VP8_PT,
                mime: "video/VP8".into(),
                rtx_payload_type: Some(97),
                mapped_rtx_payload_type: Some(102),
                clock_rate: 90000,
            }],
            encodings: vec![EncodingSpec { ssrc, rtx_ssrc: None, rid: None, mapped_ssrc: 5555 }],
            header_extensions: vec![
                ExtSpec { id: 3, router_id: Some(1), uri: URI_MID.into() },
                ExtSpec { id: 2, router_id: Some(4), uri: "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time".into() },
            ],
            key_frame_request: Some(KeyFrameMethod::Pli),
            paused: false,
            nack: true,
        }
    }

    fn consumer_spec(ssrc: u32, mid: &str, paused: bool) -> ConsumerSpec {
        ConsumerSpec {
            ssrc,
            rtx_ssrc: None,
            mid: Some(mid.into()),
            mid_ext_id: Some(1),
            payload_types: vec![(ROUTER_VP8_PT, ROUTER_VP8_PT)],
            paused,
            encoding: 0,
            rtx_payload_types: vec![],
            nack: true,
            cname: None,
        }
    }

    struct Room {
        r: Router,
        now: Instant,
        host: SrtpContext,
        host_rx: SrtpContext,
        viewers: Vec<SrtpContext>,
        seq: u16,
    }

    /// Host transport 1 (port 1000) with producer 10; viewers 2, 3 (ports 2000, 3000) with consumers 20, 30.
    fn room(paused_second: bool) -> Room {
        let mut r = Router::new();
        let now = Instant::now();
        let mut out = Output::new();
        connect(&mut r, now, 1, 1000, &mut out);
        connect(&mut r, now, 2, 2000, &mut out);
        connect(&mut r, now, 3, 3000, &mut out);
        r.add_producer(10, 1, producer_spec(None)).unwrap();
        r.add_consumer(now, 20, 2, 10, consumer_spec(0xAAAA, "c0", false), &mut out).unwrap();
        r.add_consumer(now, 30, 3, 10, consumer_spec(0xBBBB, "c1", paused_second), &mut out).unwrap();
        let (host, host_rx) = peer(1);
        Room { r, now, host, host_rx, viewers: vec![peer(2).1, peer(3).1], seq: 100 }
    }

    impl Room {
        fn send(&mut self, key_frame: bool) -> Output {
            let mut pkt = rtp_packet(0x1234, self.seq, VP8_PT, Some("0"), &vp8_payload(key_frame));
            self.seq = self.seq.wrapping_add(1);
            self.host.protect_rtp(&mut pkt).unwrap();
            let mut out = Output::new();
            self.r.handle_datagram(self.now, addr(1000), &pkt, &mut out);
            out
        }

        fn recv(&mut self, t: &Transmit) -> (u32, u8, u16, Vec<u8>) {
            let i = match t.dest.port() {
                2000 => 0,
                3000 => 1,
                p => panic!("unexpected destination port {p}"),
            };
            let mut b = t.buf.clone();
            self.viewers[i].unprotect_rtp(&mut b).unwrap();
            let h = rtp::parse(&b).unwrap();
            let mid = rtp::find_extension(&b, &h, 1).map(|v| v.to_vec());
            (h.ssrc, h.payload_type, h.sequence, mid.unwrap_or_default())
        }
    }

    #[test]
    fn forwards_to_each_consumer_with_its_ssrc_pt_mid_and_continuous_seq() {
        let mut room = room(false);
        // Waiting for a key frame: delta frames go nowhere.
        let out = room.send(false);
        assert!(out.transmits.iter().all(|t| t.dest.port() == 1000), "only PLIs toward the host");
        let mut last: HashMap<u16, u16> = HashMap::new();
        for i in 0..20 {
            let out = room.send(i == 0);
            let media: Vec<&Transmit> = out.transmits.iter().filter(|t| t.dest.port() != 1000).collect();
            assert_eq!(media.len(), 2);
            for t in media {
                let (ssrc, pt, seq, mid) = room.recv(t);
                let (want_ssrc, want_mid) = if t.dest.port() == 2000 { (0xAAAA, "c0") } else { (0xBBBB, "c1") };
                assert_eq!(ssrc, want_ssrc);
                assert_eq!(pt, ROUTER_VP8_PT);
                assert_eq!(mid, want_mid.as_bytes());
                if let Some(prev) = last.insert(t.dest.port(), seq) {
                    assert_eq!(seq, prev.wrapping_add(1));
                } else {
                    assert!((1000..=32767).contains(&seq));
                }
            }
        }
        let s = room.r.stats(20).unwrap();
        assert!(s.contains(&("packets_out", StatValue::Int(20))));
        assert_eq!(room.r.drops().get(Drop::UnknownSsrc), 0);
    }

    #[test]
    fn paused_consumer_gets_nothing_and_resume_requests_a_key_frame() {
        let mut room = room(true);
        room.send(true);
        let now = room.now + Duration::from_secs(2);
        room.now = now;
        for _ in 0..5 {
            let out = room.send(false);
            assert!(out.transmits.iter().all(|t| t.dest.port() == 2000));
        }
        let mut out = Output::new();
        room.r.resume_consumer(now, 30, &mut out).unwrap();
        assert_eq!(out.transmits.len(), 1);
        assert_eq!(out.transmits[0].dest, addr(1000));
        let mut b = out.transmits[0].buf.clone();
        room.host_rx.unprotect_rtcp(&mut b).unwrap();
        let pli: Vec<u32> = rtcp::compound(&b)
            .filter_map(|p| match p {
                Ok(rtcp::Packet::Pli(p)) => Some(p.media_ssrc),
                _ => None,
            })
            .collect();
        assert_eq!(pli, vec![0x1234]);
        // Until the key frame, the resumed consumer gets nothing.
        let out = room.send(false);
        assert!(out.transmits.iter().all(|t| t.dest.port() != 3000));
        let out = room.send(true);
        assert_eq!(out.transmits.iter().filter(|t| t.dest.port() == 3000).count(), 1);
    }

    #[test]
    fn key_frame_requests_are_rate_limited_and_repeated() {
        let mut room = room(false);
        room.send(false); // first packet, not a key frame → request
        let p = |r: &Router| match r.stats(10).unwrap().iter().find(|(k, _)| *k == "key_frame_requests") {
            Some((_, StatValue::Int(n))) => *n,
            _ => 0,
        };
        let sent = p(&room.r);
        assert!(sent >= 1);
        // A viewer PLI within the second: no new request.
        let mut pli = Vec::new();
        rtcp::build_pli(&mut pli, 0xAAAA, 0xAAAA);
        let (mut v, _) = peer(2);
        v.protect_rtcp(&mut pli).unwrap();
        let mut out = Output::new();
        room.r.handle_datagram(room.now, addr(2000), &pli, &mut out);
        assert_eq!(p(&room.r), sent);
        assert!(out.transmits.is_empty());
        // After a second, still wanted → re-request.
        let mut out = Output::new();
        room.r.handle_timeout(room.now + Duration::from_millis(1100), &mut out);
        assert_eq!(out.transmits.len(), 1);
        assert_eq!(p(&room.r), sent + 1);
        // Key frame arrives: nothing more wanted.
        room.now += Duration::from_millis(1200);
        room.send(true);
        let mut out = Output::new();
        room.r.handle_timeout(room.now + Duration::from_secs(3), &mut out);
        assert_eq!(p(&room.r), sent + 1);
    }

    #[test]
    fn replay_tamper_and_unknown_source_are_dropped_and_counted() {
        let mut room = room(false);
        let mut pkt = rtp_packet(0x1234, 5, VP8_PT, Some("0"), &vp8_payload(true));
        room.host.protect_rtp(&mut pkt).unwrap();
        let mut out = Output::new();
        room.r.handle_datagram(room.now, addr(1000), &pkt, &mut out);
        assert_eq!(out.transmits.iter().filter(|t| t.dest.port() != 1000).count(), 2);
        let mut out = Output::new();
        room.r.handle_datagram(room.now, addr(1000), &pkt, &mut out);
        assert!(out.transmits.is_empty());
        assert_eq!(room.r.drops().get(Drop::SrtpReplay), 1);
        let mut pkt = rtp_packet(0x1234, 6, VP8_PT, Some("0"), &vp8_payload(false));
        room.host.protect_rtp(&mut pkt).unwrap();
        let n = pkt.len();
        pkt[n - 20] ^= 1;
        room.r.handle_datagram(room.now, addr(1000), &pkt, &mut out);
        assert_eq!(room.r.drops().get(Drop::SrtpAuth), 1);
        room.r.handle_datagram(room.now, addr(4444), &pkt, &mut out);
        assert_eq!(room.r.drops().get(Drop::UnknownSource), 1);
        room.r.handle_datagram(room.now, addr(1000), &[0x40, 1, 2], &mut out);
        assert_eq!(room.r.drops().get(Drop::Demux), 1);
        // Padding-only: dropped, and the consumers' sequence stays continuous.
        let mut pad = rtp_packet(0x1234, 7, VP8_PT, Some("0"), &[0, 0, 0, 4]);
        pad[0] |= 0x20;
        room.host.protect_rtp(&mut pad).unwrap();
        room.r.handle_datagram(room.now, addr(1000), &pad, &mut out);
        assert_eq!(room.r.drops().get(Drop::PaddingOnly), 1);
        assert!(out.transmits.is_empty());
    }

    #[test]
    fn stun_goes_up_only_with_the_transports_password() {
        let mut r = Router::new();
        let mut out = Output::new();
        r.add_transport(7, "abcd", "secret7").unwrap();
        let now = Instant::now();
        for fp in [true, false] {
            let stun = stun_check::build_binding_request("abcd:remote", b"secret7", fp);
            r.handle_datagram(now, addr(9), &stun, &mut out);
        }
        let up = r.take_upcalls();
        assert_eq!(up.len(), 2);
        assert_eq!((up[0].kind, up[0].transport, up[0].from), (UpKind::Stun, 7, addr(9)));
        // Right ufrag, wrong password; no integrity at all; unknown ufrag.
        let bad = stun_check::build_binding_request("abcd:remote", b"guess", true);
        r.handle_datagram(now, addr(9), &bad, &mut out);
        r.handle_datagram(now, addr(9), &stun_peek::build_binding_request("abcd:remote"), &mut out);
        let mut corrupt = stun_check::build_binding_request("abcd:remote", b"secret7", true);
        let n = corrupt.len();
        corrupt[n - 1] ^= 1; // fingerprint
        r.handle_datagram(now, addr(9), &corrupt, &mut out);
        assert!(!r.has_upcalls());
        assert_eq!(r.drops().get(Drop::StunIntegrity), 3);
        assert!(r.stats(7).unwrap().contains(&("stun_rejected", StatValue::Int(3))));
        let stun = stun_check::build_binding_request("nope:remote", b"secret7", true);
        r.handle_datagram(now, addr(9), &stun, &mut out);
        assert_eq!(r.drops().get(Drop::StunUnknown), 1);
        // DTLS only from a bound tuple.
        r.handle_datagram(now, addr(9), &[22, 254, 253, 0], &mut out);
        assert_eq!(r.drops().get(Drop::UnknownSource), 1);
        r.bind_tuple(now, 7, addr(9), false, &mut out).unwrap();
        r.handle_datagram(now, addr(9), &[22, 254, 253, 0], &mut out);
        let up = r.take_upcalls();
        assert_eq!(up[0].kind, UpKind::Dtls);
        // STUN without a ufrag from a bound tuple: that transport's failed check.
        r.handle_datagram(now, addr(9), &stun_peek::build_binding_request(":x"), &mut out);
        assert_eq!(r.drops().get(Drop::StunIntegrity), 4);
        assert!(matches!(r.add_transport(8, "efgh", ""), Err(RouterError::Invalid(_))));
    }

    #[test]
    fn one_transports_flood_leaves_room_in_the_queue_for_others() {
        let mut r = Router::new();
        let mut out = Output::new();
        let now = Instant::now();
        r.add_transport(7, "abcd", "secret7").unwrap();
        r.add_transport(8, "efgh", "secret8").unwrap();
        r.bind_tuple(now, 7, addr(9), false, &mut out).unwrap();
        // A flood of DTLS from transport 7's tuple and of valid STUN for it.
        let good7 = stun_check::build_binding_request("abcd:remote", b"secret7", true);
        for i in 0..UP_QUEUE_CAP {
            if i % 2 == 0 {
                r.handle_datagram(now, addr(9), &[22, 254, 253, 0], &mut out);
            } else {
                r.handle_datagram(now, addr(10), &good7, &mut out);
            }
        }
        assert_eq!(r.drops().get(Drop::UpQueueFull), (UP_QUEUE_CAP - UP_QUEUE_PER_TRANSPORT as usize) as u64);
        assert!(r.stats(7).unwrap().contains(&("up_queue_full", StatValue::Int((UP_QUEUE_CAP - 64) as u64))));
        // The newcomer's handshake still gets through.
        let good8 = stun_check::build_binding_request("efgh:remote", b"secret8", true);
        r.handle_datagram(now, addr(20), &good8, &mut out);
        let up = r.take_upcalls();
        assert_eq!(up.len(), UP_QUEUE_PER_TRANSPORT as usize + 1);
        assert_eq!(up.back().unwrap().transport, 8);
        // Draining gives transport 7 its share back.
        r.handle_datagram(now, addr(9), &[22, 254, 253, 0], &mut out);
        assert_eq!(r.take_upcalls().len(), 1);
        // Many transports flooding at once: the total stays bounded.
        for h in 100..200u64 {
            r.add_transport(h, &format!("u{h}"), "pw").unwrap();
            let req = stun_check::build_binding_request(&format!("u{h}:x"), b"pw", true);
            for _ in 0..UP_QUEUE_PER_TRANSPORT + 5 {
                r.handle_datagram(now, addr(30), &req, &mut out);
            }
        }
        assert_eq!(r.take_upcalls().len(), UP_QUEUE_CAP);
    }

    #[test]
    fn remove_transport_cascades_and_bad_calls_fail_cleanly() {
        let mut room = room(false);
        assert_eq!(room.r.counts(), Counts { transports: 3, producers: 1, consumers: 2, streams: 3 });
        assert!(matches!(room.r.add_transport(10, "x", "pw"), Err(RouterError::Invalid(_))));
        assert!(matches!(room.r.add_transport(99, "ufrag1", "pw"), Err(RouterError::Invalid(_))));
        assert!(matches!(room.r.remove_consumer(12345), Err(RouterError::Unknown(_))));
        assert!(matches!(room.r.stats(12345), Err(RouterError::Unknown(_))));
        let mut out = Output::new();
        assert!(matches!(
            room.r.set_srtp(room.now, 1, "NOPE", &[], &[], &[], &[], None, &mut out),
            Err(RouterError::Invalid(_))
        ));
        assert!(matches!(
            room.r.set_srtp(room.now, 1, P, &[1; 3], &[], &[], &[], None, &mut out),
            Err(RouterError::Invalid(_))
        ));
        room.r.remove_transport(1).unwrap();
        assert_eq!(room.r.counts(), Counts { transports: 2, producers: 0, consumers: 0, streams: 0 });
        room.r.remove_transport(2).unwrap();
        room.r.remove_transport(3).unwrap();
        assert_eq!(room.r.counts(), Counts::default());
        assert!(room.r.by_addr.is_empty() && room.r.by_ufrag.is_empty());
    }

    fn rtcp_of(ctx: &mut SrtpContext, t: &Transmit) -> Vec<u8> {
        let mut b = t.buf.clone();
        ctx.unprotect_rtcp(&mut b).unwrap();
        b
    }

    fn stat(r: &Router, h: Handle, key: &str) -> Option<StatValue> {
        r.rtp_stats(h).unwrap()[0].iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    }

    #[test]
    fn gaps_are_nacked_upstream_and_rtx_fills_them_with_consumer_seq_continuity() {
        let mut room = room(false);
        room.seq = 100;
        room.send(true); // 100
        room.send(false); // 101
        room.seq = 103;
        let out = room.send(false); // 103: 102 missing
        let seqs: Vec<u16> = out.transmits.iter().filter(|t| t.dest.port() == 2000).map(|t| room.recv(t).2).collect();
        assert_eq!(seqs.len(), 1);
        let out103 = seqs[0];
        // Not yet: reordering tolerance.
        let mut out = Output::new();
        room.r.handle_timeout(room.now + Duration::from_millis(5), &mut out);
        assert!(out.transmits.is_empty());
        let mut out = Output::new();
        room.r.handle_timeout(room.now + Duration::from_millis(11), &mut out);
        assert_eq!(out.transmits.len(), 1);
        assert_eq!(out.transmits[0].dest, addr(1000));
        let plain = rtcp_of(&mut room.host_rx, &out.transmits[0]);
        let nacked: Vec<(u32, u16)> = rtcp::compound(&plain)
            .filter_map(|p| match p {
                Ok(rtcp::Packet::Nack(n)) => Some(n.seqs().map(move |s| (n.media_ssrc, s)).collect::<Vec<_>>()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(nacked, vec![(0x1234, 102)]);
        // The host answers with RTX (PT 97, own SSRC, OSN 102 in front of the payload).
        let original = vp8_payload(false);
        let mut rtx_payload = 102u16.to_be_bytes().to_vec();
        rtx_payload.extend_from_slice(&original);
        let now = room.now + Duration::from_millis(20);
        for attempt in 0..2 {
            let mut pkt = rtp_packet(0x9999, 7 + attempt, 97, Some("0"), &rtx_payload);
            room.host.protect_rtp(&mut pkt).unwrap();
            let mut out = Output::new();
            room.r.handle_datagram(now, addr(1000), &pkt, &mut out);
            if attempt == 0 {
                let to_viewer: Vec<&Transmit> = out.transmits.iter().filter(|t| t.dest.port() == 2000).collect();
                assert_eq!(to_viewer.len(), 1);
                let mut b = to_viewer[0].buf.clone();
                room.viewers[0].unprotect_rtp(&mut b).unwrap();
                let h = rtp::parse(&b).unwrap();
                assert_eq!((h.ssrc, h.payload_type, h.sequence), (0xAAAA, ROUTER_VP8_PT, out103.wrapping_sub(1)));
                assert_eq!(h.payload(&b), &original[..]);
            } else {
                assert!(out.transmits.is_empty());
            }
        }
        assert_eq!(room.r.drops().get(Drop::RtxDuplicate), 1);
        // The original, overtaken by its retransmission, is not forwarded a second time.
        room.seq = 102;
        let out = room.send(false);
        assert!(out.transmits.iter().all(|t| t.dest.port() == 1000));
        assert_eq!(room.r.drops().get(Drop::Duplicate), 1);
        assert_eq!(stat(&room.r, 10, "packetsRepaired"), Some(StatValue::Int(1)));
        assert_eq!(stat(&room.r, 10, "nackPacketCount"), Some(StatValue::Int(1)));
        assert_eq!(stat(&room.r, 10, "packetsLost"), Some(StatValue::Int(0)));
        assert!(matches!(stat(&room.r, 10, "roundTripTime"), Some(StatValue::Float(ms)) if (8.0..=10.0).contains(&ms)));
        // No more NACKs for it.
        let mut out = Output::new();
        room.r.handle_timeout(room.now + Duration::from_millis(500), &mut out);
        assert!(out.transmits.iter().all(|t| t.dest.port() != 1000));
    }

    #[test]
    fn viewer_nacks_are_answered_by_rtx_or_plain_resend_and_throttled() {
        let mut r = Router::new();
        let now = Instant::now();
        let mut out = Output::new();
        connect(&mut r, now, 1, 1000, &mut out);
        connect(&mut r, now, 2, 2000, &mut out);
        connect(&mut r, now, 3, 3000, &mut out);
        r.add_producer(10, 1, producer_spec(None)).unwrap();
        let mut with_rtx = consumer_spec(0xAAAA, "c0", false);
        with_rtx.rtx_ssrc = Some(0xAAAB);
        with_rtx.rtx_payload_types = vec![(ROUTER_VP8_PT, 102)];
        r.add_consumer(now, 20, 2, 10, with_rtx, &mut out).unwrap();
        r.add_consumer(now, 30, 3, 10, consumer_spec(0xBBBB, "c1", false), &mut out).unwrap();
        let (mut host, _) = peer(1);
        let mut payloads = Vec::new();
        let mut first_out: HashMap<u16, u16> = HashMap::new();
        let (mut v2, mut v3) = (peer(2), peer(3));
        for i in 0..10u16 {
            let payload = vp8_payload(i == 0);
            let mut pkt = rtp_packet(0x1234, 500 + i, VP8_PT, Some("0"), &payload);
            payloads.push(payload);
            host.protect_rtp(&mut pkt).unwrap();
            let mut out = Output::new();
            r.handle_datagram(now, addr(1000), &pkt, &mut out);
            for t in out.transmits.iter().filter(|t| t.dest.port() != 1000) {
                let mut b = t.buf.clone();
                let ctx = if t.dest.port() == 2000 { &mut v2.1 } else { &mut v3.1 };
                ctx.unprotect_rtp(&mut b).unwrap();
                first_out.entry(t.dest.port()).or_insert(rtp::parse(&b).unwrap().sequence);
            }
        }
        let nack_for = |ctx: &mut SrtpContext, ssrc: u32, seqs: &[u16]| {
            let mut b = Vec::new();
            rtcp::build_rr(&mut b, 1, &[]);
            rtcp::build_nack(&mut b, 1, ssrc, seqs);
            ctx.protect_rtcp(&mut b).unwrap();
            b
        };
        // Viewer 2 (RTX): output seqs base+3 and base+5.
        let base = first_out[&2000];
        let pkt = nack_for(&mut v2.0, 0xAAAA, &[base + 3, base + 5]);
        let mut out = Output::new();
        r.handle_datagram(now, addr(2000), &pkt, &mut out);
        assert_eq!(out.transmits.len(), 2);
        for (k, t) in out.transmits.iter().enumerate() {
            let mut b = t.buf.clone();
            v2.1.unprotect_rtp(&mut b).unwrap();
            let h = rtp::parse(&b).unwrap();
            assert_eq!((h.ssrc, h.payload_type), (0xAAAB, 102));
            let want = [3usize, 5][k];
            let p = h.payload(&b);
            assert_eq!(u16::from_be_bytes([p[0], p[1]]), base + want as u16);
            assert_eq!(&p[2..], &payloads[want][..]);
            let mid = rtp::find_extension(&b, &h, 1).unwrap();
            assert_eq!(mid, b"c0");
        }
        // The same NACK again at once: already in flight.
        let pkt = nack_for(&mut v2.0, 0xAAAA, &[base + 3]);
        let mut out = Output::new();
        r.handle_datagram(now, addr(2000), &pkt, &mut out);
        assert!(out.transmits.is_empty());
        assert_eq!(r.drops().get(Drop::NackThrottled), 1);
        // Later it is resent again, with the next RTX sequence number.
        let pkt = nack_for(&mut v2.0, 0xAAAA, &[base + 3]);
        let mut out = Output::new();
        r.handle_datagram(now + Duration::from_millis(150), addr(2000), &pkt, &mut out);
        assert_eq!(out.transmits.len(), 1);
        // Viewer 3 (no RTX): the packet itself again; unknown seq: counted.
        let base3 = first_out[&3000];
        let pkt = nack_for(&mut v3.0, 0xBBBB, &[base3 + 9, base3 + 40]);
        let mut out = Output::new();
        r.handle_datagram(now, addr(3000), &pkt, &mut out);
        assert_eq!(out.transmits.len(), 1);
        let mut b = out.transmits[0].buf.clone();
        peer(3).1.unprotect_rtp(&mut b).unwrap(); // a receiver that lost the original
        let h = rtp::parse(&b).unwrap();
        assert_eq!((h.ssrc, h.payload_type, h.sequence), (0xBBBB, ROUTER_VP8_PT, base3 + 9));
        assert_eq!(h.payload(&b), &payloads[9][..]);
        assert_eq!(r.drops().get(Drop::NackNotBuffered), 1);
        assert_eq!(stat(&r, 20, "packetsRetransmitted"), Some(StatValue::Int(3)));
        assert_eq!(stat(&r, 20, "nackCount"), Some(StatValue::Int(3)));
        assert_eq!(stat(&r, 20, "nackPacketCount"), Some(StatValue::Int(4)));
        // Too old for the buffer.
        let pkt = nack_for(&mut v3.0, 0xBBBB, &[base3 + 8]);
        let mut out = Output::new();
        r.handle_datagram(now + Duration::from_millis(2100), addr(3000), &pkt, &mut out);
        assert!(out.transmits.is_empty());
        assert_eq!(r.drops().get(Drop::NackNotBuffered), 2);
    }

    #[test]
    fn sender_and_receiver_reports_and_round_trip_time() {
        let mut room = room(false);
        for i in 0..5 {
            room.send(i == 0);
        }
        let t0 = room.now;
        let mut out = Output::new();
        room.r.handle_timeout(t0, &mut out);
        // A producer SR (its NTP/RTP mapping is carried over to the viewers' SRs).
        let mut sr = Vec::new();
        let sr_ntp = 0xE000_0000_8000_0000u64;
        rtcp::build_sr(&mut sr, &rtcp::SenderInfo { ssrc: 0x1234, ntp: sr_ntp, rtp_timestamp: 0x1000, packet_count: 5, octet_count: 500 }, &[]);
        room.host.protect_rtcp(&mut sr).unwrap();
        room.r.handle_datagram(t0, addr(1000), &sr, &mut out);
        let t1 = t0 + REPORT_INTERVAL;
        let mut out = Output::new();
        room.r.handle_timeout(t1, &mut out);
        let mut lsr = 0;
        let (mut srs, mut rrs) = (0, 0);
        for t in &out.transmits {
            match t.dest.port() {
                2000 => {
                    let (_, mut v) = peer(2);
                    let b = rtcp_of(&mut v, t);
                    let items: Vec<_> = rtcp::compound(&b).map(|p| p.unwrap()).collect();
                    let rtcp::Packet::Sr(sr) = items[0] else { panic!("SR first") };
                    assert_eq!(sr.info.ssrc, 0xAAAA);
                    assert_eq!(sr.info.packet_count, 5);
                    assert_eq!(sr.info.ntp, crate::reports::ntp_add(sr_ntp, REPORT_INTERVAL));
                    assert_eq!(sr.info.rtp_timestamp, 0x1000 + 90000);
                    assert!(matches!(items[1], rtcp::Packet::Sdes));
                    lsr = crate::reports::ntp_mid(sr.info.ntp);
                    srs += 1;
                }
                3000 => srs += 1,
                1000 => {
                    let b = rtcp_of(&mut room.host_rx, t);
                    let Some(Ok(rtcp::Packet::Rr(rr))) = rtcp::compound(&b).next() else { panic!("RR") };
                    let blocks: Vec<_> = rr.report_blocks().collect();
                    assert_eq!(blocks.len(), 1);
                    assert_eq!(blocks[0].ssrc, 0x1234);
                    assert_eq!(blocks[0].cumulative_lost, 0);
                    assert_eq!(blocks[0].highest_seq, 104);
                    assert_eq!(blocks[0].last_sr, crate::reports::ntp_mid(sr_ntp));
                    assert_eq!(blocks[0].delay_since_last_sr, 65536);
                    rrs += 1;
                }
                p => panic!("unexpected port {p}"),
            }
        }
        assert_eq!((srs, rrs), (2, 1));
        // Viewer 2 answers 50 ms later, having held the SR for 20 ms: RTT 30 ms.
        let mut rr = Vec::new();
        let block = rtcp::ReportBlock {
            ssrc: 0xAAAA,
            fraction_lost: 64,
            cumulative_lost: 3,
            highest_seq: 1,
            jitter: 12,
            last_sr: lsr,
            delay_since_last_sr: crate::reports::to_dlsr(Duration::from_millis(20)),
        };
        rtcp::build_rr(&mut rr, 0x77, &[block]);
        let (mut v, _) = peer(2);
        v.protect_rtcp(&mut rr).unwrap();
        room.r.handle_datagram(t1 + Duration::from_millis(50), addr(2000), &rr, &mut out);
        let Some(StatValue::Float(rtt)) = stat(&room.r, 20, "roundTripTime") else { panic!("no rtt") };
        assert!((29.0..=31.0).contains(&rtt), "rtt {rtt}");
        assert_eq!(stat(&room.r, 20, "fractionLost"), Some(StatValue::Float(0.25)));
        assert_eq!(stat(&room.r, 20, "packetsLost"), Some(StatValue::Int(3)));
        assert_eq!(stat(&room.r, 20, "jitter"), Some(StatValue::Int(12)));
        assert!(stat(&room.r, 30, "roundTripTime").is_none());
    }

    #[test]
    fn a_consumer_transport_that_connects_asks_for_a_key_frame() {
        let mut room = room(false);
        room.send(true);
        let kf = |r: &Router| match stat(r, 10, "pliCount") {
            Some(StatValue::Int(n)) => n,
            _ => panic!("no pliCount"),
        };
        let mut out = Output::new();
        room.r.add_transport(4, "ufrag4", "pw4").unwrap();
        room.r.add_consumer(room.now, 40, 4, 10, consumer_spec(0xCCCC, "c9", false), &mut out).unwrap();
        let before = kf(&room.r);
        // Keys first (DTLS completed with 4000), then the selected tuple: media can flow only
        // now → key frame request.
        let later = room.now + Duration::from_secs(2);
        let (lk, ls) = key(8);
        let (rk, rs) = key(9);
        let mut out = Output::new();
        room.r.set_srtp(later, 4, P, &lk, &ls, &rk, &rs, Some(addr(4000)), &mut out).unwrap();
        assert!(out.transmits.is_empty());
        room.r.bind_tuple(later, 4, addr(4000), true, &mut out).unwrap();
        assert_eq!(kf(&room.r), before + 1);
        assert_eq!(out.transmits.len(), 1);
        assert_eq!(out.transmits[0].dest, addr(1000));
    }

    #[test]
    fn simulcast_consumer_switches_only_at_a_target_key_frame_with_continuity() {
        let mut r = Router::new();
        let mut now = Instant::now();
        let mut out = Output::new();
        connect(&mut r, now, 1, 1000, &mut out);
        connect(&mut r, now, 2, 2000, &mut out);
        let mut spec = producer_spec(None);
        spec.encodings = (0..3u32)
            .map(|i| EncodingSpec { ssrc: Some(0x100 + i), rtx_ssrc: None, rid: Some(format!("r{i}")), mapped_ssrc: 7000 + i })
            .collect();
        r.add_producer(10, 1, spec).unwrap();
        r.add_consumer(now, 20, 2, 10, consumer_spec(0xAAAA, "c0", false), &mut out).unwrap();
        let mut host = peer(1).0;
        let mut viewer = peer(2).1;
        let mut seqs = [10u16, 20_000, 65_530];
        let ts_base = [1_000u32, 9_000_000, 4_294_960_000];
        // One packet per layer per frame; returns what the viewer got: (layer, key, seq, ts).
        // What the viewer got per packet: (layer, key frame, seq, ts).
        type Got = (u8, bool, u16, u32);
        let mut frame = |r: &mut Router, now: Instant, f: u32, keys: &[usize]| -> Vec<Got> {
            let mut got = Vec::new();
            for layer in 0..3usize {
                let key = keys.contains(&layer);
                let mut payload = vp8_payload(key);
                payload.push(layer as u8);
                let mut pkt = rtp_packet(0x100 + layer as u32, seqs[layer], VP8_PT, Some("0"), &payload);
                rtp::set_timestamp(&mut pkt, ts_base[layer].wrapping_add(3000 * f));
                seqs[layer] = seqs[layer].wrapping_add(1);
                host.protect_rtp(&mut pkt).unwrap();
                let mut out = Output::new();
                r.handle_datagram(now, addr(1000), &pkt, &mut out);
                for t in &out.transmits {
                    let mut b = t.buf.clone();
                    if t.dest.port() == 1000 {
                        continue; // PLIs toward the host
                    }
                    viewer.unprotect_rtp(&mut b).unwrap();
                    let h = rtp::parse(&b).unwrap();
                    let pl = h.payload(&b);
                    got.push((pl[pl.len() - 1], pl[1] & 1 == 0, h.sequence, h.timestamp));
                }
            }
            got
        };
        let mut all = Vec::new();
        // Default: the top layer, from its first key frame.
        let got = frame(&mut r, now, 0, &[]);
        assert!(got.is_empty(), "waiting for a key frame of layer 2");
        let got = frame(&mut r, now, 1, &[0, 1, 2]);
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![2]);
        all.extend(got);
        for f in 2..5 {
            all.extend(frame(&mut r, now, f, &[0]));
        }
        assert!(all.iter().all(|g| g.0 == 2), "a key frame on layer 0 is no reason to move");
        now += Duration::from_millis(100);
        let mut out = Output::new();
        assert_eq!(r.set_preferred_layers(now, 20, 0, None, &mut out).unwrap(), (0, u8::MAX));
        let mut b = out.transmits[0].buf.clone();
        peer(1).1.unprotect_rtcp(&mut b).unwrap();
        assert!(matches!(rtcp::compound(&b).next(), Some(Ok(rtcp::Packet::Pli(p))) if p.media_ssrc == 0x100), "PLI on r0");
        for f in 5..8 {
            let got = frame(&mut r, now, f, &[]);
            assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![2], "layer 2 until r0's key frame");
            all.extend(got);
        }
        now += Duration::from_millis(33);
        let got = frame(&mut r, now, 8, &[0]);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, got[0].1), (0, true), "the switch is at layer 0's key frame");
        all.extend(got);
        for f in 9..12 {
            all.extend(frame(&mut r, now, f, &[2]));
        }
        assert!(all.iter().skip_while(|g| g.0 == 2).all(|g| g.0 == 0));
        for w in all.windows(2) {
            assert_eq!(w[1].2, w[0].2.wrapping_add(1), "continuous sequence numbers");
            assert!(crate::seq::is_newer_ts(w[1].3, w[0].3), "timestamps move forward: {:?}", w);
        }
        let st = r.stats(20).unwrap();
        assert!(st.contains(&("current_layer", StatValue::Int(0))));
        assert!(st.contains(&("layer_switches", StatValue::Int(1))));
        // NACKs for a packet from before and one from after the switch: each comes back with
        // the sequence number and timestamp the viewer first got.
        let (before, after) = (all[2], all[all.len() - 1]);
        let mut nack = Vec::new();
        rtcp::build_nack(&mut nack, 0x5555, 0xAAAA, &[before.2, after.2]);
        peer(2).0.protect_rtcp(&mut nack).unwrap();
        let mut out = Output::new();
        r.handle_datagram(now, addr(2000), &nack, &mut out);
        let mut fresh = peer(2).1; // no replay history: retransmissions reuse sequence numbers
        let mut resent: Vec<(u16, u32)> = out
            .transmits
            .iter()
            .filter(|t| t.dest.port() == 2000)
            .filter_map(|t| {
                let mut b = t.buf.clone();
                fresh.unprotect_rtp(&mut b).ok()?;
                let h = rtp::parse(&b).ok()?;
                Some((h.sequence, h.timestamp))
            })
            .collect();
        resent.sort();
        let mut want = vec![(before.2, before.3), (after.2, after.3)];
        want.sort();
        assert_eq!(resent, want);
    }

    #[test]
    fn audio_has_no_buffer_and_its_sender_reports_use_its_clock() {
        let mut r = Router::new();
        let now = Instant::now();
        let mut out = Output::new();
        connect(&mut r, now, 1, 1000, &mut out);
        connect(&mut r, now, 2, 2000, &mut out);
        let mut spec = producer_spec(Some(0x0A0A));
        spec.video = false;
        spec.nack = false;
        spec.codecs[0] = CodecSpec {
            payload_type: 111,
            mapped_payload_type: 100,
            mime: "audio/opus".into(),
            rtx_payload_type: None,
            mapped_rtx_payload_type: None,
            clock_rate: 48000,
        };
        r.add_producer(10, 1, spec).unwrap();
        let mut c = consumer_spec(0xAAAA, "a0", false);
        c.payload_types = vec![(100, 100)];
        c.nack = false;
        r.add_consumer(now, 20, 2, 10, c, &mut out).unwrap();
        let (mut host, _) = peer(1);
        for seq in [1u16, 2, 4] {
            let mut pkt = rtp_packet(0x0A0A, seq, 111, Some("0"), &[1, 2, 3, 4]);
            host.protect_rtp(&mut pkt).unwrap();
            r.handle_datagram(now, addr(1000), &pkt, &mut out);
        }
        // Seq 3 is missing but the producer did not negotiate NACK: nothing is asked for.
        let mut out = Output::new();
        r.handle_timeout(now + Duration::from_millis(50), &mut out);
        assert!(out.transmits.is_empty());
        let (mut v, mut v_rx) = peer(2);
        let mut nack = Vec::new();
        rtcp::build_nack(&mut nack, 1, 0xAAAA, &[1000]);
        v.protect_rtcp(&mut nack).unwrap();
        r.handle_datagram(now, addr(2000), &nack, &mut out);
        assert!(out.transmits.is_empty());
        assert_eq!(r.drops().get(Drop::NackNotNegotiated), 1);
        // First SR a second later: RTP time advanced by 48000 per second past the last packet.
        let mut out = Output::new();
        r.handle_timeout(now + REPORT_INTERVAL + Duration::from_millis(50), &mut out);
        let sr = out.transmits.iter().find(|t| t.dest.port() == 2000).expect("SR to the viewer");
        let b = rtcp_of(&mut v_rx, sr);
        let Some(Ok(rtcp::Packet::Sr(sr))) = rtcp::compound(&b).next() else { panic!("SR") };
        assert_eq!((sr.info.ssrc, sr.info.packet_count), (0xAAAA, 3));
        assert_eq!(sr.info.rtp_timestamp, 0x1000 + 48000 + 48000 / 20);
        assert_eq!(stat(&r, 10, "packetsLost"), Some(StatValue::Int(1)));
    }

    #[test]
    fn hostile_datagrams_never_panic() {
        let mut room = room(false);
        let mut out = Output::new();
        let mut x = 0x9E37_79B9_u32;
        for len in 0..300usize {
            for _ in 0..20 {
                let mut d = Vec::with_capacity(len);
                for _ in 0..len {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    d.push(x as u8);
                }
                if let Some(b) = d.first_mut() {
                    *b = [0x80, 0x90, 0x01, 0x16, 0xa0][(x as usize >> 8) % 5] | (*b & 0x0f);
                }
                room.r.handle_datagram(room.now, addr(1000), &d, &mut out);
                room.r.handle_datagram(room.now, addr(2000), &d, &mut out);
            }
        }
    }

    /// A compound RR + NACK (+ PLI) from a viewer, protected with its keys.
    fn viewer_rtcp(ctx: &mut SrtpContext, ssrc: u32, nacks: &[u16], pli: bool) -> Vec<u8> {
        let mut b = Vec::new();
        rtcp::build_rr(&mut b, 1, &[]);
        if !nacks.is_empty() {
            rtcp::build_nack(&mut b, 1, ssrc, nacks);
        }
        if pli {
            rtcp::build_pli(&mut b, 1, ssrc);
        }
        ctx.protect_rtcp(&mut b).unwrap();
        b
    }

    fn dests(out: &Output) -> Vec<u16> {
        out.transmits.iter().map(|t| t.dest.port()).collect()
    }

    #[test]
    fn a_nominated_tuple_gets_media_only_once_proven() {
        let mut room = room(false);
        let out = room.send(true);
        assert!(dests(&out).contains(&2000));
        // A spoofed Binding request with viewer 2's credentials from a victim's address
        // (6666): ICE validates and nominates it.
        let mut out = Output::new();
        room.r.bind_tuple(room.now, 2, addr(6666), false, &mut out).unwrap();
        room.r.bind_tuple(room.now, 2, addr(6666), true, &mut out).unwrap();
        // The same for the host (7777): feedback toward the sender must not move either.
        room.r.bind_tuple(room.now, 1, addr(7777), true, &mut out).unwrap();
        assert!(out.transmits.is_empty());
        assert_eq!(stat_str(&room.r, 2, "selected"), addr(2000).to_string());
        assert_eq!(stat_str(&room.r, 2, "nominated"), addr(6666).to_string());
        let mut seen = Vec::new();
        for _ in 0..20 {
            seen.extend(dests(&room.send(false)));
        }
        assert!(seen.contains(&2000) && !seen.contains(&6666) && !seen.contains(&7777), "{seen:?}");
        // The viewer (at its real address) NACKs and asks for a key frame: the answers go to
        // 2000 and the PLI to the host's proven tuple 1000.
        let mut v2 = peer(2).0;
        let later = room.now + Duration::from_secs(2);
        let base = {
            let out = room.send(false);
            let t = out.transmits.iter().find(|t| t.dest.port() == 2000).unwrap();
            room.recv(t).2
        };
        let mut out = Output::new();
        room.r.handle_datagram(later, addr(2000), &viewer_rtcp(&mut v2, 0xAAAA, &[base, base.wrapping_sub(1)], true), &mut out);
        let d = dests(&out);
        assert!(d.contains(&2000) && d.contains(&1000) && !d.contains(&6666) && !d.contains(&7777), "{d:?}");
        // Reports a second later: SR to 2000, RR to 1000.
        let mut out = Output::new();
        room.r.handle_timeout(later, &mut out);
        room.r.handle_timeout(later + Duration::from_secs(2), &mut out);
        let d = dests(&out);
        assert!(!d.contains(&6666) && !d.contains(&7777), "{d:?}");
        assert_eq!(stat_str(&room.r, 2, "selected"), addr(2000).to_string());
        // Forged or unauthenticated SRTCP from the victim's address proves nothing.
        let forged = viewer_rtcp(&mut ctx(99), 0xAAAA, &[], false);
        let mut out = Output::new();
        room.r.handle_datagram(later, addr(6666), &forged, &mut out);
        assert_eq!(room.r.drops().get(Drop::SrtcpAuth) + room.r.drops().get(Drop::SrtcpReplay), 1);
        assert_eq!(stat_str(&room.r, 2, "selected"), addr(2000).to_string());
        // Re-nominating the proven tuple (the real viewer's next check) keeps it.
        room.r.bind_tuple(later, 2, addr(2000), true, &mut out).unwrap();
        assert_eq!(stat_str(&room.r, 2, "nominated"), addr(2000).to_string());
        // A real move (the peer's network changed): nominated, then its authenticated SRTCP
        // from the new address makes it the sending tuple.
        room.r.bind_tuple(later, 2, addr(2001), true, &mut out).unwrap();
        assert!(!dests(&room.send(false)).contains(&2001));
        let mut out = Output::new();
        room.r.handle_datagram(later, addr(2001), &viewer_rtcp(&mut v2, 0xAAAA, &[], false), &mut out);
        assert_eq!(stat_str(&room.r, 2, "selected"), addr(2001).to_string());
        let d = dests(&room.send(false));
        assert!(d.contains(&2001) && !d.contains(&2000), "{d:?}");
        // An authenticated packet from a proven tuple that is not the nominated one (2000)
        // does not move the media back.
        let mut out = Output::new();
        room.r.handle_datagram(later, addr(2000), &viewer_rtcp(&mut v2, 0xAAAA, &[], false), &mut out);
        assert_eq!(stat_str(&room.r, 2, "selected"), addr(2001).to_string());
        // The host's RTP from its proven tuple does not move its feedback to 7777 either.
        assert_eq!(stat_str(&room.r, 1, "selected"), addr(1000).to_string());
    }

    fn stat_str(r: &Router, h: Handle, key: &str) -> String {
        match r.stats(h).unwrap().into_iter().find(|(k, _)| *k == key) {
            Some((_, StatValue::Str(s))) => s,
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn without_a_dtls_address_the_first_authenticated_packet_proves_the_tuple() {
        let mut room = room(false);
        room.send(true);
        let mut out = Output::new();
        room.r.add_transport(4, "ufrag4", "pw4").unwrap();
        room.r.add_consumer(room.now, 40, 4, 10, consumer_spec(0xCCCC, "c9", false), &mut out).unwrap();
        room.r.bind_tuple(room.now, 4, addr(4000), true, &mut out).unwrap();
        let (lk, ls) = key(8);
        let (rk, rs) = key(9);
        let later = room.now + Duration::from_secs(2);
        room.now = later;
        let mut out = Output::new();
        room.r.set_srtp(later, 4, P, &lk, &ls, &rk, &rs, None, &mut out).unwrap();
        assert!(out.transmits.is_empty(), "not connected yet: no key frame request");
        assert_eq!(stat_str(&room.r, 4, "selected"), "");
        let out = room.send(true);
        assert!(!dests(&out).contains(&4000));
        // The viewer's first RTCP (its keys: remote key seed 9) proves 4000.
        let mut v4 = ctx(9);
        let mut out = Output::new();
        room.r.handle_datagram(later, addr(4000), &viewer_rtcp(&mut v4, 0xCCCC, &[], false), &mut out);
        assert_eq!(stat_str(&room.r, 4, "selected"), addr(4000).to_string());
        assert_eq!(dests(&out), vec![1000], "connected: a key frame request to the host");
        let out = room.send(true);
        assert!(dests(&out).contains(&4000));
    }

    /// Host 1 → producer 10 → consumer 20 on viewer 2 (no RTX): `n` packets forwarded at
    /// `now`; returns the router and viewer 2's first output sequence number.
    fn nack_room(n: u16, payload_len: usize) -> (Router, Instant, u16) {
        let mut r = Router::new();
        let now = Instant::now();
        let mut out = Output::new();
        connect(&mut r, now, 1, 1000, &mut out);
        connect(&mut r, now, 2, 2000, &mut out);
        r.add_producer(10, 1, producer_spec(None)).unwrap();
        r.add_consumer(now, 20, 2, 10, consumer_spec(0xAAAA, "c0", false), &mut out).unwrap();
        let (mut host, _) = peer(1);
        let mut v2 = peer(2).1;
        let mut first = None;
        for i in 0..n {
            let mut payload = vp8_payload(i == 0);
            payload.resize(payload_len, 0xcd);
            let mut pkt = rtp_packet(0x1234, 500 + i, VP8_PT, Some("0"), &payload);
            host.protect_rtp(&mut pkt).unwrap();
            let mut out = Output::new();
            r.handle_datagram(now, addr(1000), &pkt, &mut out);
            for t in out.transmits.iter().filter(|t| t.dest.port() == 2000) {
                let mut b = t.buf.clone();
                v2.unprotect_rtp(&mut b).unwrap();
                first.get_or_insert(rtp::parse(&b).unwrap().sequence);
            }
        }
        (r, now, first.unwrap())
    }

    #[test]
    fn a_packet_is_retransmitted_at_most_max_resends_times() {
        let (mut r, now, base) = nack_room(5, 100);
        let mut v2 = peer(2).0;
        let mut sent = 0;
        for round in 0..6u64 {
            let mut out = Output::new();
            let at = now + Duration::from_millis(150 * round);
            r.handle_datagram(at, addr(2000), &viewer_rtcp(&mut v2, 0xAAAA, &[base + 2], false), &mut out);
            sent += out.transmits.len();
        }
        assert_eq!(sent, NACK_MAX_RESENDS as usize);
        assert_eq!(r.drops().get(Drop::NackMaxResends), 6 - NACK_MAX_RESENDS as u64);
        assert_eq!(stat(&r, 20, "packetsRetransmitted"), Some(StatValue::Int(NACK_MAX_RESENDS as u64)));
        assert!(r.stats(20).unwrap().contains(&("nack_max_resend_drops", StatValue::Int(3))));
    }

    #[test]
    fn retransmissions_stay_within_the_consumers_budget() {
        use crate::budget::{RetransmitBudget, NACK_BUDGET_MIN_BURST_BYTES};
        // ~0.8 Mbit/s forwarded for 4 s (one 1 kB packet every 10 ms) while the viewer NACKs
        // every packet it has had, every 50 ms.
        let (mut r, t0, base) = nack_room(1, 1000);
        let (mut host, _) = peer(1);
        let mut v2 = peer(2).0;
        let (mut forwarded, mut resent) = (0u64, 0u64);
        let mut sent = 1u16;
        for ms in (10..4000u64).step_by(10) {
            let now = t0 + Duration::from_millis(ms);
            let mut out = Output::new();
            let mut payload = vp8_payload(false);
            payload.resize(1000, 0xcd);
            let mut pkt = rtp_packet(0x1234, 500 + sent, VP8_PT, Some("0"), &payload);
            sent += 1;
            host.protect_rtp(&mut pkt).unwrap();
            r.handle_datagram(now, addr(1000), &pkt, &mut out);
            forwarded += out.transmits.iter().filter(|t| t.dest.port() == 2000).map(|t| t.buf.len() as u64).sum::<u64>();
            r.handle_timeout(now, &mut out);
            if ms % 50 == 0 {
                let seqs: Vec<u16> = (0..sent.min(1000)).map(|i| base.wrapping_add(sent - 1 - i)).collect();
                let mut out = Output::new();
                r.handle_datagram(now, addr(2000), &viewer_rtcp(&mut v2, 0xAAAA, &seqs, false), &mut out);
                resent += out.transmits.iter().filter(|t| t.dest.port() == 2000).map(|t| t.buf.len() as u64).sum::<u64>();
            }
        }
        // At most half of what was forwarded, plus the initial bucket and one packet's overhead.
        let bound = forwarded / 2 + NACK_BUDGET_MIN_BURST_BYTES.max(RetransmitBudget::capacity(800_000)) + 1100;
        assert!(resent <= bound, "resent {resent} > {bound} (forwarded {forwarded})");
        assert!(resent * 100 >= forwarded * 45, "the budget is used: {resent} of {forwarded}");
        assert!(r.drops().get(Drop::NackBudget) > 0);
        match r.stats(20).unwrap().into_iter().find(|(k, _)| *k == "nack_budget_drops") {
            Some((_, StatValue::Int(n))) => assert!(n > 0),
            other => panic!("{other:?}"),
        }
    }
}
