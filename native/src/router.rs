//! Sans-IO forwarding core: datagrams and time in; datagrams out (`Output`) and STUN/DTLS
//! upcalls for Python. No sockets, no threads, no Python here, so every rule is unit-tested.
//!
//! Objects (transports, producers, consumers) are identified by handles the control plane
//! chooses; handles are unique across all three kinds.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::bwe::BandwidthEstimator;
use crate::rtcp;
use crate::rtp;
use crate::seq::{SeqManager, TsOffset};
use crate::twcc::TwccRecorder;
use crate::srtp::{Profile, SrtpContext, SrtpError};
use crate::stun_peek;

pub type Handle = u64;

/// Upcall queue cap; further STUN/DTLS datagrams are dropped and counted.
pub const UP_QUEUE_CAP: usize = 4096;
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
/// Ingress bitrate of each producer stream is measured over windows this long.
pub const RATE_WINDOW: Duration = Duration::from_millis(1000);

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
}

#[derive(Clone, Debug, Default)]
pub struct Drops([u64; 32]);

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

struct Transport {
    ufrag: String,
    tuples: Vec<SocketAddr>,
    selected: Option<SocketAddr>,
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
}

impl Transport {
    /// Where media goes: the selected tuple, else none.
    fn media_dest(&self) -> Option<SocketAddr> {
        self.selected
    }
    /// Where RTCP toward a sender goes: the selected tuple, else the most recent validated one.
    fn feedback_dest(&self) -> Option<SocketAddr> {
        self.selected.or_else(|| self.tuples.last().copied())
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
    /// RTX of codec index (kept for RTX decoding once NACKs are sent).
    #[allow(dead_code)]
    Rtx(usize),
}

struct CodecEntry {
    mapped_pt: u8,
    codec: rtp::Codec,
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
    rate: RateMeter,
}

/// Ingress bitrate of one stream over fixed windows (cheap: one add per packet).
#[derive(Default)]
struct RateMeter {
    bytes: u64,
    since: Option<Instant>,
    /// Bits per second over the last complete window (0 = nothing arrived).
    bitrate: u64,
}

impl RateMeter {
    fn roll(&mut self, now: Instant) {
        let Some(since) = self.since else {
            self.since = Some(now);
            return;
        };
        let el = now.saturating_duration_since(since);
        if el >= RATE_WINDOW {
            self.bitrate = (self.bytes * 8 * 1_000_000) / (el.as_micros().max(1) as u64);
            self.bytes = 0;
            self.since = Some(now);
        }
    }
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
    layer_switches: u64,
    /// Timestamp offset: keeps time continuous when the source stream changes.
    ts: TsOffset,
    /// The encoding whose timestamps `ts` is set up for.
    ts_source: usize,
    last_out: Option<Instant>,
    seq: SeqManager,
    wait_key_frame: bool,
    stats: Counters,
    dropped: u64,
    key_frame_requests_in: u64,
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
}

pub struct Router {
    transports: HashMap<Handle, Transport>,
    producers: HashMap<Handle, Producer>,
    consumers: HashMap<Handle, Consumer>,
    by_addr: HashMap<SocketAddr, Handle>,
    by_ufrag: HashMap<String, Handle>,
    up: VecDeque<Upcall>,
    drops: Drops,
    scratch: Vec<u8>,
    rng: Rng,
    next_timeout: Option<Instant>,
}

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
            transports: HashMap::new(),
            producers: HashMap::new(),
            consumers: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            up: VecDeque::new(),
            drops: Drops::default(),
            scratch: Vec::with_capacity(BUF_CAP * 2),
            rng: Rng::from_os(),
            next_timeout: None,
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

    pub fn add_transport(&mut self, h: Handle, ufrag: &str) -> Result<()> {
        if self.handle_in_use(h) {
            return Err(invalid(format!("handle {h} already in use")));
        }
        if ufrag.is_empty() || ufrag.contains(':') {
            return Err(invalid(format!("bad ufrag {ufrag:?}")));
        }
        if self.by_ufrag.contains_key(ufrag) {
            return Err(invalid(format!("ufrag {ufrag:?} already in use")));
        }
        self.by_ufrag.insert(ufrag.to_owned(), h);
        self.transports.insert(
            h,
            Transport {
                ufrag: ufrag.to_owned(),
                tuples: Vec::new(),
                selected: None,
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
            if self.by_addr.get(a) == Some(&h) {
                self.by_addr.remove(a);
            }
        }
        if self.by_ufrag.get(&t.ufrag) == Some(&h) {
            self.by_ufrag.remove(&t.ufrag);
        }
        Ok(())
    }

    /// ICE validated `addr` for transport `h`; `selected` makes it the media destination.
    pub fn bind_tuple(&mut self, now: Instant, h: Handle, addr: SocketAddr, selected: bool, out: &mut Output) -> Result<()> {
        if !self.transports.contains_key(&h) {
            return Err(unknown("transport", h));
        }
        // An address belongs to one transport: take it from any other.
        if let Some(&other) = self.by_addr.get(&addr) {
            if other != h {
                if let Some(o) = self.transports.get_mut(&other) {
                    o.tuples.retain(|a| *a != addr);
                    if o.selected == Some(addr) {
                        o.selected = None;
                    }
                }
            }
        }
        self.by_addr.insert(addr, h);
        let t = self.transports.get_mut(&h).expect("checked above");
        if let Some(i) = t.tuples.iter().position(|a| *a == addr) {
            t.tuples.remove(i);
        }
        t.tuples.push(addr);
        if t.tuples.len() > MAX_TUPLES {
            // Evict the oldest tuple that is not the selected one.
            if let Some(i) = t.tuples.iter().position(|a| Some(*a) != t.selected && *a != addr) {
                let old = t.tuples.remove(i);
                if self.by_addr.get(&old) == Some(&h) {
                    self.by_addr.remove(&old);
                }
            }
        }
        let t = self.transports.get_mut(&h).expect("checked above");
        let was_connected = t.selected.is_some() && t.tx.is_some();
        if selected {
            t.selected = Some(addr);
        }
        let now_connected = t.selected.is_some() && t.tx.is_some();
        if now_connected && !was_connected {
            self.on_transport_connected(now, h, out);
        }
        Ok(())
    }

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
            codecs.push(CodecEntry { mapped_pt: c.mapped_payload_type, codec: rtp::Codec::from_mime(&c.mime) });
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
                rate: RateMeter::default(),
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
            layer_switches: 0,
            ts: TsOffset::new(),
            ts_source: encoding,
            last_out: None,
            seq: SeqManager::new(initial),
            wait_key_frame: video,
            stats: Counters::default(),
            dropped: 0,
            key_frame_requests_in: 0,
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
        std::mem::take(&mut self.up)
    }

    pub fn has_upcalls(&self) -> bool {
        !self.up.is_empty()
    }

    fn push_up(&mut self, kind: UpKind, transport: Handle, from: SocketAddr, data: &[u8]) {
        if self.up.len() >= UP_QUEUE_CAP {
            self.drops.inc(Drop::UpQueueFull);
            return;
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
            v.push(("layer_bitrates", Str(join(&|e| e.rate.bitrate))));
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
            }
            _ => self.drops.inc(Drop::Demux),
        }
    }

    fn on_stun(&mut self, from: SocketAddr, data: &[u8]) {
        let h = match self.by_addr.get(&from) {
            Some(&h) => h,
            None => match stun_peek::local_ufrag(data).and_then(|u| self.by_ufrag.get(u)) {
                Some(&h) => h,
                None => {
                    self.drops.inc(Drop::StunUnknown);
                    return;
                }
            },
        };
        if let Some(t) = self.transports.get_mut(&h) {
            t.stats.rx(data.len());
            t.stun_in += 1;
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
            t.dtls_in += 1;
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
            if tx.protect_rtcp(&mut buf).is_err() {
                drops.inc(Drop::ProtectFailed);
                out.give_back(buf);
                continue;
            }
            t.stats.tx(buf.len());
            t.rtcp_out += 1;
            out.push(dest, buf);
        }
    }

    /// Roll the stream bitrate windows and move simulcast consumers to the layer their
    /// preference and their viewer's estimate allow (asking that layer for a key frame).
    fn update_layers(&mut self, now: Instant, out: &mut Output) {
        let mut wanted: Vec<(Handle, usize)> = Vec::new();
        for p in self.producers.values_mut() {
            for e in &mut p.encodings {
                e.rate.roll(now);
            }
            if p.encodings.len() < 2 {
                continue;
            }
            let mut rates = [0u64; 8];
            let n = p.encodings.len().min(rates.len());
            for (r, e) in rates.iter_mut().zip(&p.encodings) {
                *r = e.rate.bitrate;
            }
            for ch in &p.consumers {
                let Some(c) = self.consumers.get_mut(ch) else { continue };
                let estimate = self.transports.get(&c.transport).and_then(|t| t.bwe.available_bitrate(now));
                let target = select_layer(c.preferred_spatial, &rates[..n], estimate);
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
        c.preferred_spatial = spatial.min(p.encodings.len() - 1);
        c.preferred_temporal = temporal.unwrap_or(u8::MAX);
        let rates: Vec<u64> = p.encodings.iter().map(|e| e.rate.bitrate).collect();
        let estimate = self.transports.get(&c.transport).and_then(|t| t.bwe.available_bitrate(now));
        let target = select_layer(c.preferred_spatial, &rates, estimate);
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
        let Router { transports, producers, consumers, drops, scratch, .. } = self;
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
        let pkt: &[u8] = scratch;
        let Ok(hdr) = rtp::parse(pkt) else {
            drops.inc(Drop::RtpMalformed);
            return;
        };
        // Which producer stream?
        let sref = match t.ssrc_in.get(&hdr.ssrc) {
            Some(r) => *r,
            None => match learn_ssrc(t, producers, th, pkt, &hdr) {
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
            record_twcc(t, pkt, &hdr, id, now);
        }
        let enc_idx = sref.encoding;
        let Some(enc) = p.encodings.get_mut(enc_idx) else {
            drops.inc(Drop::UnknownSsrc);
            return;
        };
        enc.stats.rx(data.len());
        enc.rate.bytes += data.len() as u64;
        let codec_idx = match p.pt[(hdr.payload_type & 0x7f) as usize] {
            PtInfo::Media(i) if !sref.rtx => i,
            PtInfo::Rtx(_) if sref.rtx => {
                // No NACKs are sent yet, so every RTX packet is unrequested (probing or a
                // retransmission nobody asked for): drop it, as a NACK-less receiver would.
                drops.inc(Drop::Rtx);
                return;
            }
            _ => {
                drops.inc(Drop::UnknownPt);
                return;
            }
        };
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
                    c.ts.sync_after_last(hdr.timestamp, gap);
                    c.ts_source = c.encoding;
                    c.layer_switches += 1;
                }
            }
            let Some(seq_out) = c.seq.input(seq_in) else {
                c.dropped += 1;
                continue;
            };
            let mut buf = out.take_buf();
            let written = match (c.mid_ext_id, c.mid.as_deref()) {
                (Some(id), Some(mid)) => rtp::rewrite_extensions(&mut buf, pkt, &hdr, map, &[(id, mid)]),
                _ => rtp::rewrite_extensions(&mut buf, pkt, &hdr, map, &[]),
            };
            if written.is_err() {
                drops.inc(Drop::RtpMalformed);
                out.give_back(buf);
                continue;
            }
            rtp::set_sequence(&mut buf, seq_out);
            rtp::set_timestamp(&mut buf, c.ts.apply(hdr.timestamp));
            c.last_out = Some(now);
            rtp::set_ssrc(&mut buf, c.ssrc);
            rtp::set_payload_type(&mut buf, cpt);
            if tx.protect_rtp(&mut buf).is_err() {
                drops.inc(Drop::ProtectFailed);
                out.give_back(buf);
                continue;
            }
            let len = buf.len();
            c.stats.tx(len);
            ct.stats.tx(len);
            forwarded += 1;
            forwarded_bytes += len as u64;
            out.push(dest, buf);
        }
        p.stats.packets_out += forwarded;
        p.stats.bytes_out += forwarded_bytes;
        if new_stream_needs_kf {
            self.request_key_frame(now, sref.producer, enc_idx, out);
        }
    }

    fn on_rtcp(&mut self, now: Instant, from: SocketAddr, data: &[u8], out: &mut Output) {
        let Some(&th) = self.by_addr.get(&from) else {
            self.drops.inc(Drop::UnknownSource);
            return;
        };
        let Router { transports, drops, scratch, .. } = self;
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
        // Collect key frame requests first (the compound borrows scratch).
        let mut wanted: [u32; 16] = [0; 16];
        let mut n_wanted = 0usize;
        for item in rtcp::compound(scratch) {
            match item {
                Ok(rtcp::Packet::Pli(pli)) => {
                    if n_wanted < wanted.len() {
                        wanted[n_wanted] = pli.media_ssrc;
                        n_wanted += 1;
                    }
                }
                Ok(rtcp::Packet::Fir(fir)) => {
                    for ssrc in fir.ssrcs() {
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
            KeyFrameMethod::Pli => rtcp::build_pli(&mut buf, ssrc, ssrc),
            KeyFrameMethod::Fir => {
                e.kf.fir_seq = e.kf.fir_seq.wrapping_add(1);
                rtcp::build_fir(&mut buf, ssrc, &[(ssrc, e.kf.fir_seq)])
            }
        }
        if tx.protect_rtcp(&mut buf).is_err() {
            drops.inc(Drop::ProtectFailed);
            out.give_back(buf);
            return;
        }
        t.stats.tx(buf.len());
        t.rtcp_out += 1;
        out.push(dest, buf);
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

/// The simulcast layer a consumer should receive: the highest active layer not above the
/// preferred one whose measured bitrate fits the viewer's estimate (the lowest active one
/// if none fits). Layers with no traffic in the last window are not candidates; when no
/// layer is known active yet, the preferred one.
pub fn select_layer(preferred: usize, bitrates: &[u64], estimate: Option<u64>) -> usize {
    let top = preferred.min(bitrates.len().saturating_sub(1));
    let active = |i: &usize| bitrates[*i] > 0;
    let Some(lowest) = (0..=top).find(active) else { return top };
    match estimate {
        None => (0..=top).rev().find(active).unwrap_or(lowest),
        Some(e) => (0..=top).rev().filter(active).find(|&i| bitrates[i] <= e).unwrap_or(lowest),
    }
}

/// Find the producer stream of an SSRC not seen before (MID, then RID/RRID, then the single
/// unsignalled encoding) and remember it.
fn learn_ssrc(
    t: &mut Transport,
    producers: &mut HashMap<Handle, Producer>,
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
        r.add_transport(h, &format!("ufrag{h}")).unwrap();
        let (lk, ls) = key(h as u8 * 2);
        let (rk, rs) = key(h as u8 * 2 + 1);
        r.set_srtp(now, h, P, &lk, &ls, &rk, &rs, out).unwrap();
        r.bind_tuple(now, h, addr(port), true, out).unwrap();
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
            }],
            encodings: vec![EncodingSpec { ssrc, rtx_ssrc: None, rid: None, mapped_ssrc: 5555 }],
            header_extensions: vec![
                ExtSpec { id: 3, router_id: Some(1), uri: URI_MID.into() },
                ExtSpec { id: 2, router_id: Some(4), uri: "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time".into() },
            ],
            key_frame_request: Some(KeyFrameMethod::Pli),
            paused: false,
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
        assert!(out.transmits.is_empty());
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
    fn stun_goes_up_by_ufrag_then_by_address() {
        let mut r = Router::new();
        let mut out = Output::new();
        r.add_transport(7, "abcd").unwrap();
        let stun = stun_peek::build_binding_request("abcd:remote");
        r.handle_datagram(Instant::now(), addr(9), &stun, &mut out);
        let up = r.take_upcalls();
        assert_eq!(up.len(), 1);
        assert_eq!((up[0].kind, up[0].transport, up[0].from), (UpKind::Stun, 7, addr(9)));
        let stun = stun_peek::build_binding_request("nope:remote");
        r.handle_datagram(Instant::now(), addr(9), &stun, &mut out);
        assert_eq!(r.drops().get(Drop::StunUnknown), 1);
        r.handle_datagram(Instant::now(), addr(9), &[22, 254, 253, 0], &mut out);
        assert_eq!(r.drops().get(Drop::UnknownSource), 1);
        r.bind_tuple(Instant::now(), 7, addr(9), false, &mut out).unwrap();
        r.handle_datagram(Instant::now(), addr(9), &[22, 254, 253, 0], &mut out);
        let up = r.take_upcalls();
        assert_eq!(up[0].kind, UpKind::Dtls);
        for _ in 0..UP_QUEUE_CAP + 10 {
            r.handle_datagram(Instant::now(), addr(9), &[22], &mut out);
        }
        assert_eq!(r.drops().get(Drop::UpQueueFull), 10);
    }

    #[test]
    fn remove_transport_cascades_and_bad_calls_fail_cleanly() {
        let mut room = room(false);
        assert_eq!(room.r.counts(), Counts { transports: 3, producers: 1, consumers: 2, streams: 3 });
        assert!(matches!(room.r.add_transport(10, "x"), Err(RouterError::Invalid(_))));
        assert!(matches!(room.r.add_transport(99, "ufrag1"), Err(RouterError::Invalid(_))));
        assert!(matches!(room.r.remove_consumer(12345), Err(RouterError::Unknown(_))));
        assert!(matches!(room.r.stats(12345), Err(RouterError::Unknown(_))));
        let mut out = Output::new();
        assert!(matches!(
            room.r.set_srtp(room.now, 1, "NOPE", &[], &[], &[], &[], &mut out),
            Err(RouterError::Invalid(_))
        ));
        assert!(matches!(
            room.r.set_srtp(room.now, 1, P, &[1; 3], &[], &[], &[], &mut out),
            Err(RouterError::Invalid(_))
        ));
        room.r.remove_transport(1).unwrap();
        assert_eq!(room.r.counts(), Counts { transports: 2, producers: 0, consumers: 0, streams: 0 });
        room.r.remove_transport(2).unwrap();
        room.r.remove_transport(3).unwrap();
        assert_eq!(room.r.counts(), Counts::default());
        assert!(room.r.by_addr.is_empty() && room.r.by_ufrag.is_empty());
    }

    #[test]
    fn layer_selection_follows_preference_activity_and_estimate() {
        let rates = [100_000, 400_000, 1_200_000];
        assert_eq!(select_layer(2, &rates, None), 2);
        assert_eq!(select_layer(0, &rates, None), 0);
        assert_eq!(select_layer(9, &rates, None), 2, "clamped");
        assert_eq!(select_layer(2, &rates, Some(500_000)), 1);
        assert_eq!(select_layer(2, &rates, Some(50_000)), 0, "lowest when nothing fits");
        assert_eq!(select_layer(1, &rates, Some(5_000_000)), 1, "never above the preference");
        assert_eq!(select_layer(2, &[100_000, 400_000, 0], None), 1, "inactive top layer skipped");
        assert_eq!(select_layer(2, &[0, 0, 0], Some(1)), 2, "nothing known yet: the preference");
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
}
