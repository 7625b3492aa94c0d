//! SCTP over DTLS for WebRTC data channels (RFC 8261, 8831, 8832): one association per
//! transport, sans-IO. The SCTP protocol itself (handshake, retransmission, congestion
//! control, fragmentation and reassembly, partial reliability with FORWARD-TSN) is the
//! `sctp-proto` crate (webrtc-rs, maintained by the str0m project); this module drives it and
//! adds what a data channel needs on top: DCEP (`dcep.rs`), PPIDs for string / binary / empty
//! messages, per-stream ordered / reliability settings, bounded buffers and counters.
//!
//! Packets in (the plaintext of DTLS application records), time in, packets out (to be
//! protected by DTLS), events out. `SctpCore` is plain Rust (tested over an in-memory pair
//! below); `SctpAssociation` is its Python face, whose clock is the caller's (e.g.
//! `trio.current_time()`); `sctp_fanout` writes one message into many associations in one call.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::bytes::Bytes;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use sctp_proto::{
    Association, AssociationHandle, ClientConfig, DatagramEvent, Endpoint, EndpointConfig, Event,
    Payload, PayloadProtocolIdentifier as Ppi, ReliabilityType, ServerConfig, StreamEvent,
    TransportConfig,
};

use crate::dcep::{self, Reliability};
use crate::dtls_seal::{Cipher, RecordSealer, SEQ_START};

/// The largest message either way (`sctpParameters.maxMessageSize`, a=max-message-size).
pub const MAX_MESSAGE_SIZE: u32 = 262_144;
/// SCTP port on both sides (RFC 8841 default; mediasoup's `sctpParameters.port`).
pub const SCTP_PORT: u16 = 5000;
/// Outgoing and incoming streams we announce (mediasoup's OS / MIS default).
pub const NUM_STREAMS: u16 = 1024;
/// SCTP packet payload: with the SCTP and DTLS headers (AES-GCM: 13 + 8 + 16) a datagram
/// stays under the DTLS MTU of pysfu.dtls (1200).
pub const MAX_PAYLOAD: u32 = 1100;
/// Bytes one outgoing stream may have queued (unsent or unacknowledged); a message that
/// would go over it is dropped for that stream (a slow reader loses messages, the server
/// does not buffer without bound).
pub const MAX_BUFFERED_PER_STREAM: usize = 1 << 20;
/// Receive window of an association (must hold a whole maxMessageSize message).
pub const RECEIVE_BUFFER: u32 = 1 << 20;
/// Events waiting for the caller; past this they are dropped and counted.
pub const MAX_EVENTS: usize = 8192;
/// Streams the remote may open with DCEP on one association.
pub const MAX_CHANNELS: usize = NUM_STREAMS as usize;

pub const PPID_STRING: u32 = 51;
pub const PPID_BINARY: u32 = 53;
pub const PPID_STRING_EMPTY: u32 = 56;
pub const PPID_BINARY_EMPTY: u32 = 57;

/// Live associations in this process (every `SctpCore`): tests check it returns to zero.
static LIVE: AtomicUsize = AtomicUsize::new(0);

pub fn live_associations() -> usize {
    LIVE.load(Ordering::Relaxed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Waits for the peer's INIT (the SFU: browsers initiate).
    Server,
    /// Sends INIT (test peers and bots).
    Client,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Connected,
    /// The peer opened a channel with DCEP (answered with an ACK already).
    ChannelOpened { stream: u16, open: dcep::Open },
    /// One whole message; `ppid` as received (56/57: empty, `data` is empty).
    Message { stream: u16, ppid: u32, data: Vec<u8> },
    /// The peer reset the stream (closed its channel).
    ChannelClosed { stream: u16 },
    /// The association is gone (handshake failed, aborted, timed out).
    Closed { reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResult {
    Sent,
    NotConnected,
    NoStream,
    TooBig,
    BufferFull,
    BadPpid,
}

impl SendResult {
    pub fn name(self) -> &'static str {
        match self {
            SendResult::Sent => "sent",
            SendResult::NotConnected => "not_connected",
            SendResult::NoStream => "no_stream",
            SendResult::TooBig => "too_big",
            SendResult::BufferFull => "buffer_full",
            SendResult::BadPpid => "bad_ppid",
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    /// Input the endpoint could not route (bad common header, unknown tag, ...).
    pub unroutable: u64,
    /// Second associations (a new INIT once one exists): refused.
    pub extra_associations: u64,
    pub dcep_malformed: u64,
    pub unknown_ppid: u64,
    pub dropped_not_connected: u64,
    pub dropped_buffer_full: u64,
    pub dropped_too_big: u64,
    pub events_dropped: u64,
}

#[derive(Debug, Clone, Copy)]
struct StreamConf {
    ordered: bool,
    reliability: Reliability,
}

pub struct SctpCore {
    role: Role,
    endpoint: Endpoint,
    assoc: Option<(AssociationHandle, Association)>,
    remote: SocketAddr,
    connected: bool,
    closed: bool,
    /// Outgoing streams we were asked to write on, opened once the association is up.
    streams: HashMap<u16, StreamConf>,
    outputs: VecDeque<Output>,
    packets: Vec<Vec<u8>>,
    pub counters: Counters,
}

fn transport_config() -> TransportConfig {
    TransportConfig::default()
        .with_max_send_message_size(MAX_MESSAGE_SIZE)
        .with_max_receive_message_size(MAX_MESSAGE_SIZE)
        .with_max_receive_buffer_size(RECEIVE_BUFFER)
        .with_max_num_outbound_streams(NUM_STREAMS)
        .with_max_num_inbound_streams(NUM_STREAMS)
        // WebRTC-like timers (RFC 8831 §6.5 asks for quicker recovery than RFC 4960's 3 s).
        .with_rto_initial_ms(1000)
        .with_rto_min_ms(200)
        .with_rto_max_ms(10_000)
        .with_max_init_retransmits(Some(8))
}

fn reliability_params(r: Reliability) -> (ReliabilityType, u32) {
    match r {
        Reliability::Reliable => (ReliabilityType::Reliable, 0),
        Reliability::MaxRetransmits(n) => (ReliabilityType::Rexmit, n),
        Reliability::MaxPacketLifeTime(ms) => (ReliabilityType::Timed, ms),
    }
}

impl SctpCore {
    pub fn new(role: Role) -> Self {
        let mut ep_config = EndpointConfig::new();
        ep_config.max_payload_size(MAX_PAYLOAD);
        let transport = Arc::new(transport_config());
        let remote = SocketAddr::from((Ipv4Addr::LOCALHOST, SCTP_PORT)); // never used for I/O
        let (endpoint, assoc) = match role {
            Role::Server => {
                let mut server = ServerConfig::new();
                server.transport = transport;
                (Endpoint::new(Arc::new(ep_config), Some(Arc::new(server))), None)
            }
            Role::Client => {
                let mut endpoint = Endpoint::new(Arc::new(ep_config), None);
                let mut client = ClientConfig::new();
                client.transport = transport;
                let assoc = endpoint.connect(client, remote).ok();
                endpoint.reject_new_associations();
                (endpoint, assoc)
            }
        };
        LIVE.fetch_add(1, Ordering::Relaxed);
        SctpCore {
            role,
            endpoint,
            assoc,
            remote,
            connected: false,
            closed: false,
            streams: HashMap::new(),
            outputs: VecDeque::new(),
            packets: Vec::new(),
            counters: Counters::default(),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// One SCTP packet from the peer (a DTLS record's plaintext). Never panics on garbage:
    /// what cannot be routed is counted and dropped; the association validates the rest.
    pub fn handle_packet(&mut self, now: Instant, data: &[u8]) {
        self.counters.packets_in += 1;
        if self.closed {
            return;
        }
        let routed = self.endpoint.handle(now, self.remote, None, None, Bytes::copy_from_slice(data));
        match routed {
            None => self.counters.unroutable += 1,
            Some((h, DatagramEvent::NewAssociation(a))) => {
                if self.assoc.is_none() {
                    self.assoc = Some((h, a));
                    // One association per transport: later INITs are refused by the endpoint.
                    self.endpoint.reject_new_associations();
                } else {
                    self.counters.extra_associations += 1;
                }
            }
            Some((h, DatagramEvent::AssociationEvent(ev))) => match &mut self.assoc {
                Some((ours, a)) if *ours == h => a.handle_event(ev),
                _ => self.counters.unroutable += 1,
            },
        }
        self.drive(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((_, a)) = &mut self.assoc {
            a.handle_timeout(now);
        }
        self.drive(now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        self.assoc.as_ref().and_then(|(_, a)| a.poll_timeout())
    }

    /// Configure an outgoing stream (a data consumer's, or a channel we open); applied now if
    /// the association is up, else when it comes up. `announce`: send a DCEP OPEN with this
    /// label and protocol (peers that did not negotiate the channel out of band).
    pub fn open_stream(&mut self, stream: u16, ordered: bool, reliability: Reliability,
                       announce: Option<(String, String)>) {
        self.streams.insert(stream, StreamConf { ordered, reliability });
        if self.connected {
            self.apply_stream(stream);
            if let Some((label, protocol)) = announce {
                let open = dcep::Open { ordered, reliability, priority: 0, label, protocol };
                self.write(stream, Ppi::Dcep, Bytes::from(dcep::build_open(&open)));
            }
        }
    }

    /// Stop writing on a stream and reset it (the peer's channel closes).
    pub fn close_stream(&mut self, stream: u16) {
        self.streams.remove(&stream);
        if let Some((_, a)) = &mut self.assoc {
            if let Ok(mut s) = a.stream(stream) {
                let _ = s.close();
            }
        }
    }

    fn apply_stream(&mut self, stream: u16) {
        let Some(conf) = self.streams.get(&stream).copied() else { return };
        let Some((_, a)) = &mut self.assoc else { return };
        let (kind, value) = reliability_params(conf.reliability);
        let s = match a.stream(stream) {
            Ok(s) => Ok(s),
            Err(_) => a.open_stream(stream, Ppi::Binary),
        };
        if let Ok(mut s) = s {
            let _ = s.set_reliability_params(!conf.ordered, kind, value);
        }
    }

    /// Queue one message on `stream` (call `poll_packets` afterwards).
    pub fn send(&mut self, stream: u16, ppid: u32, data: &Bytes) -> SendResult {
        let result = self.try_send(stream, ppid, data);
        match result {
            SendResult::Sent => {
                self.counters.messages_out += 1;
                self.counters.bytes_out += data.len() as u64;
            }
            SendResult::NotConnected => self.counters.dropped_not_connected += 1,
            SendResult::BufferFull => self.counters.dropped_buffer_full += 1,
            SendResult::TooBig => self.counters.dropped_too_big += 1,
            SendResult::NoStream | SendResult::BadPpid => {}
        }
        result
    }

    fn try_send(&mut self, stream: u16, ppid: u32, data: &Bytes) -> SendResult {
        if data.len() > MAX_MESSAGE_SIZE as usize {
            return SendResult::TooBig;
        }
        let empty = data.is_empty();
        let ppi = match (ppid, empty) {
            (PPID_STRING | PPID_STRING_EMPTY, false) => Ppi::String,
            (PPID_STRING | PPID_STRING_EMPTY, true) => Ppi::StringEmpty,
            (PPID_BINARY | PPID_BINARY_EMPTY, false) => Ppi::Binary,
            (PPID_BINARY | PPID_BINARY_EMPTY, true) => Ppi::BinaryEmpty,
            _ => return SendResult::BadPpid,
        };
        if !self.connected || self.closed {
            return SendResult::NotConnected;
        }
        if !self.streams.contains_key(&stream) {
            return SendResult::NoStream;
        }
        let Some((_, a)) = &mut self.assoc else { return SendResult::NotConnected };
        let Ok(s) = a.stream(stream) else { return SendResult::NoStream };
        if s.buffered_amount().unwrap_or(0) + data.len() > MAX_BUFFERED_PER_STREAM {
            return SendResult::BufferFull;
        }
        // An empty message travels as one zero byte with the "empty" PPID (RFC 8831 §6.6).
        let payload = if empty { Bytes::from_static(&[0]) } else { data.clone() };
        if self.write(stream, ppi, payload) { SendResult::Sent } else { SendResult::NoStream }
    }

    fn write(&mut self, stream: u16, ppi: Ppi, payload: Bytes) -> bool {
        let Some((_, a)) = &mut self.assoc else { return false };
        match a.stream(stream) {
            Ok(mut s) => s.write_sctp(&payload, ppi).is_ok(),
            Err(_) => false,
        }
    }

    /// Run the association (events, timers' effects) and take the packets to send.
    pub fn poll_packets(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.drive(now);
        std::mem::take(&mut self.packets)
    }

    pub fn take_outputs(&mut self) -> Vec<Output> {
        self.outputs.drain(..).collect()
    }

    fn push(&mut self, out: Output) {
        if self.outputs.len() >= MAX_EVENTS {
            self.counters.events_dropped += 1;
        } else {
            self.outputs.push_back(out);
        }
    }

    fn drive(&mut self, now: Instant) {
        loop {
            let mut progress = false;
            while let Some(event) = self.next_event() {
                progress = true;
                self.on_event(event);
            }
            while let Some(t) = self.next_transmit(now) {
                progress = true;
                if let Payload::RawEncode(packets) = t.payload {
                    for p in packets {
                        self.counters.packets_out += 1;
                        self.packets.push(p.to_vec());
                    }
                }
            }
            if !progress {
                break;
            }
        }
    }

    fn next_event(&mut self) -> Option<Event> {
        let (h, a) = self.assoc.as_mut()?;
        while let Some(ev) = a.poll_endpoint_event() {
            if let Some(back) = self.endpoint.handle_event(*h, ev) {
                a.handle_event(back);
            }
        }
        a.poll()
    }

    fn next_transmit(&mut self, now: Instant) -> Option<sctp_proto::Transmit> {
        if let Some((_, a)) = &mut self.assoc {
            if let Some(t) = a.poll_transmit(now) {
                return Some(t);
            }
        }
        self.endpoint.poll_transmit()
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected => {
                self.connected = true;
                let ids: Vec<u16> = self.streams.keys().copied().collect();
                for id in ids {
                    self.apply_stream(id);
                }
                self.push(Output::Connected);
            }
            Event::HandshakeFailed { reason } | Event::AssociationLost { reason } if !self.closed => {
                self.closed = true;
                self.connected = false;
                self.push(Output::Closed { reason: reason.to_string() });
            }
            Event::Stream(StreamEvent::Opened { .. }) => {
                if let Some((_, a)) = &mut self.assoc {
                    while a.accept_stream().is_some() {}
                }
            }
            Event::Stream(StreamEvent::Readable { id }) => self.read_stream(id),
            Event::Stream(StreamEvent::Finished { id }) => {
                self.streams.remove(&id);
                self.push(Output::ChannelClosed { stream: id });
            }
            _ => {}
        }
    }

    fn read_stream(&mut self, id: u16) {
        let mut messages = Vec::new();
        if let Some((_, a)) = &mut self.assoc {
            if let Ok(mut s) = a.stream(id) {
                while let Ok(Some(chunks)) = s.read_sctp() {
                    let mut buf = vec![0u8; chunks.len()];
                    let n = chunks.read(&mut buf).unwrap_or(0);
                    buf.truncate(n);
                    messages.push((chunks.ppi, buf));
                }
            }
        }
        for (ppi, data) in messages {
            self.on_message(id, ppi, data);
        }
    }

    fn on_message(&mut self, stream: u16, ppi: Ppi, data: Vec<u8>) {
        let ppid = match ppi {
            Ppi::Dcep => {
                self.on_dcep(stream, &data);
                return;
            }
            Ppi::String => PPID_STRING,
            Ppi::Binary => PPID_BINARY,
            Ppi::StringEmpty => PPID_STRING_EMPTY,
            Ppi::BinaryEmpty => PPID_BINARY_EMPTY,
            _ => {
                self.counters.unknown_ppid += 1;
                return;
            }
        };
        let data = if matches!(ppid, PPID_STRING_EMPTY | PPID_BINARY_EMPTY) { Vec::new() } else { data };
        self.counters.messages_in += 1;
        self.counters.bytes_in += data.len() as u64;
        self.push(Output::Message { stream, ppid, data });
    }

    fn on_dcep(&mut self, stream: u16, data: &[u8]) {
        match dcep::parse(data) {
            Ok(dcep::Message::Open(open)) => {
                if !self.streams.contains_key(&stream) && self.streams.len() >= MAX_CHANNELS {
                    self.counters.dcep_malformed += 1;
                    return;
                }
                // The ACK goes first, reliably and in order; then the channel's own settings.
                self.streams.insert(stream, StreamConf { ordered: true, reliability: Reliability::Reliable });
                self.apply_stream(stream);
                self.write(stream, Ppi::Dcep, Bytes::from(dcep::build_ack()));
                self.streams.insert(stream, StreamConf { ordered: open.ordered, reliability: open.reliability });
                self.apply_stream(stream);
                self.push(Output::ChannelOpened { stream, open });
            }
            Ok(dcep::Message::Ack) => {}
            Err(_) => self.counters.dcep_malformed += 1,
        }
    }

    /// Gracefully end the association (SHUTDOWN); `poll_packets` gives what to send.
    pub fn shutdown(&mut self) {
        if let Some((_, a)) = &mut self.assoc {
            let _ = a.shutdown();
        }
    }

    pub fn buffered_amount(&mut self, stream: u16) -> usize {
        match &mut self.assoc {
            Some((_, a)) => a.stream(stream).ok().and_then(|s| s.buffered_amount().ok()).unwrap_or(0),
            None => 0,
        }
    }
}

impl Drop for SctpCore {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

// ---- Python ----------------------------------------------------------------------------------

/// The caller's clock (float seconds) mapped onto `Instant`s, anchored at construction.
struct Clock {
    base: Instant,
    base_secs: f64,
}

impl Clock {
    fn instant(&self, now: f64) -> Instant {
        let d = now - self.base_secs;
        if d.is_finite() && d > 0.0 {
            self.base + Duration::from_secs_f64(d.min(1e9))
        } else {
            self.base
        }
    }
    fn secs(&self, t: Instant) -> f64 {
        self.base_secs + t.saturating_duration_since(self.base).as_secs_f64()
    }
}

/// One SCTP association (a transport's data channels), driven by the caller: packets and
/// time in; packets, events and counters out. Not thread-safe by design: one owner.
#[pyclass(module = "pysfu._native")]
pub struct SctpAssociation {
    core: SctpCore,
    clock: Clock,
    /// Set (`seal_with`): every packet out is returned as a DTLS record sealed here.
    sealer: Option<RecordSealer>,
    /// Packets that could not be sealed (dropped): cannot happen before 2^48 records.
    seal_failed: u64,
}

fn reliability_from(max_retransmits: Option<u32>, max_packet_life_time: Option<u32>) -> PyResult<Reliability> {
    match (max_retransmits, max_packet_life_time) {
        (None, None) => Ok(Reliability::Reliable),
        (Some(n), None) => Ok(Reliability::MaxRetransmits(n)),
        (None, Some(ms)) => Ok(Reliability::MaxPacketLifeTime(ms)),
        (Some(_), Some(_)) => Err(PyValueError::new_err(
            "maxRetransmits and maxPacketLifeTime are exclusive")),
    }
}

fn reliability_pair(r: Reliability) -> (Option<u32>, Option<u32>) {
    match r {
        Reliability::Reliable => (None, None),
        Reliability::MaxRetransmits(n) => (Some(n), None),
        Reliability::MaxPacketLifeTime(ms) => (None, Some(ms)),
    }
}

impl SctpAssociation {
    /// The association's packets at `now`, sealed as DTLS records when a sealer is set.
    fn out_packets(&mut self, now: f64) -> Vec<Vec<u8>> {
        let t = self.clock.instant(now);
        let packets = self.core.poll_packets(t);
        let Some(sealer) = &mut self.sealer else { return packets };
        let mut out = Vec::with_capacity(packets.len());
        for p in packets {
            match sealer.seal(&p) {
                Ok(record) => out.push(record),
                Err(_) => self.seal_failed += 1,
            }
        }
        out
    }

    fn events<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for out in self.core.take_outputs() {
            let item = match out {
                Output::Connected => PyTuple::new(py, ["connected".into_pyobject(py)?.into_any()])?,
                Output::Closed { reason } => PyTuple::new(py, [
                    "closed".into_pyobject(py)?.into_any(), reason.into_pyobject(py)?.into_any()])?,
                Output::ChannelClosed { stream } => PyTuple::new(py, [
                    "channel_closed".into_pyobject(py)?.into_any(), stream.into_pyobject(py)?.into_any()])?,
                Output::Message { stream, ppid, data } => PyTuple::new(py, [
                    "message".into_pyobject(py)?.into_any(),
                    stream.into_pyobject(py)?.into_any(),
                    ppid.into_pyobject(py)?.into_any(),
                    PyBytes::new(py, &data).into_any()])?,
                Output::ChannelOpened { stream, open } => {
                    let (rexmit, lifetime) = reliability_pair(open.reliability);
                    PyTuple::new(py, [
                        "channel_opened".into_pyobject(py)?.into_any(),
                        stream.into_pyobject(py)?.into_any(),
                        open.label.into_pyobject(py)?.into_any(),
                        open.protocol.into_pyobject(py)?.into_any(),
                        pyo3::types::PyBool::new(py, open.ordered).to_owned().into_any(),
                        rexmit.into_pyobject(py)?.into_any(),
                        lifetime.into_pyobject(py)?.into_any()])?
                }
            };
            list.append(item)?;
        }
        Ok(list)
    }
}

fn packets_list<'py>(py: Python<'py>, packets: Vec<Vec<u8>>) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for p in packets {
        list.append(PyBytes::new(py, &p))?;
    }
    Ok(list)
}

#[pymethods]
impl SctpAssociation {
    /// `role`: "server" (waits for the peer's INIT: the SFU side) or "client" (sends INIT).
    /// `now`: the caller's clock, the same one every later call uses.
    #[new]
    fn new(role: &str, now: f64) -> PyResult<Self> {
        let role = match role {
            "server" => Role::Server,
            "client" => Role::Client,
            _ => return Err(PyValueError::new_err("role must be 'server' or 'client'")),
        };
        Ok(SctpAssociation { core: SctpCore::new(role), clock: Clock { base: Instant::now(), base_secs: now },
                             sealer: None, seal_failed: 0 })
    }

    /// One SCTP packet (a DTLS application record's plaintext) from the peer.
    fn handle_packet(&mut self, data: &[u8], now: f64) {
        let t = self.clock.instant(now);
        self.core.handle_packet(t, data);
    }

    fn handle_timeout(&mut self, now: f64) {
        let t = self.clock.instant(now);
        self.core.handle_timeout(t);
    }

    /// When `handle_timeout` is due next, in the caller's clock (None: nothing pending).
    fn poll_timeout(&self) -> Option<f64> {
        self.core.poll_timeout().map(|t| self.clock.secs(t))
    }

    /// Configure an outgoing stream; `label` given: announce it with a DCEP OPEN.
    #[pyo3(signature = (stream, ordered=true, max_retransmits=None, max_packet_life_time=None, label=None, protocol=String::new()))]
    fn open_stream(&mut self, stream: u16, ordered: bool, max_retransmits: Option<u32>,
                   max_packet_life_time: Option<u32>, label: Option<String>, protocol: String) -> PyResult<()> {
        let r = reliability_from(max_retransmits, max_packet_life_time)?;
        self.core.open_stream(stream, ordered, r, label.map(|l| (l, protocol)));
        Ok(())
    }

    fn close_stream(&mut self, stream: u16) {
        self.core.close_stream(stream);
    }

    /// Queue a message: "sent", or why not ("not_connected", "no_stream", "too_big",
    /// "buffer_full", "bad_ppid"). `ppid` 51 (string) or 53 (binary); empty data is sent
    /// with the matching "empty" PPID.
    fn send(&mut self, stream: u16, ppid: u32, data: &[u8]) -> &'static str {
        self.core.send(stream, ppid, &Bytes::copy_from_slice(data)).name()
    }

    /// Packets to send, after running the association at `now`: SCTP packets to protect
    /// with DTLS, or DTLS records already (after `seal_with`).
    fn take_packets<'py>(&mut self, py: Python<'py>, now: f64) -> PyResult<Bound<'py, PyList>> {
        let packets = self.out_packets(now);
        packets_list(py, packets)
    }

    /// From now on, seal every packet out as a DTLS 1.2 application data record of `epoch`
    /// (`dtls_seal.rs`) with the session's write key and IV (pysfu.dtls derives them), from
    /// sequence number 2^32 up. `cipher`: OpenSSL's suite name; False (and nothing changes)
    /// for a suite that is not AEAD or keys of the wrong size. Only once the peer has
    /// finished its handshake (it sent application data): OpenSSL may still need to resend
    /// its last flight before.
    fn seal_with(&mut self, cipher: &str, key: &[u8], iv: &[u8], epoch: u16) -> bool {
        let Some(cipher) = Cipher::from_openssl(cipher) else { return false };
        match RecordSealer::new(cipher, key, iv, epoch, SEQ_START) {
            Ok(s) => {
                self.sealer = Some(s);
                true
            }
            Err(_) => false,
        }
    }

    /// Whether packets out are DTLS records sealed here (`seal_with`).
    #[getter]
    fn sealed(&self) -> bool {
        self.sealer.is_some()
    }

    /// Events since the last call: ("connected",), ("closed", reason),
    /// ("message", stream, ppid, data), ("channel_opened", stream, label, protocol, ordered,
    /// max_retransmits, max_packet_life_time), ("channel_closed", stream).
    fn take_events<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.events(py)
    }

    fn shutdown(&mut self) {
        self.core.shutdown();
    }

    fn buffered_amount(&mut self, stream: u16) -> usize {
        self.core.buffered_amount(stream)
    }

    #[getter]
    fn connected(&self) -> bool {
        self.core.is_connected()
    }

    #[getter]
    fn closed(&self) -> bool {
        self.core.is_closed()
    }

    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.core.counters;
        let d = PyDict::new(py);
        for (k, v) in [
            ("messagesIn", c.messages_in), ("bytesIn", c.bytes_in),
            ("messagesOut", c.messages_out), ("bytesOut", c.bytes_out),
            ("packetsIn", c.packets_in), ("packetsOut", c.packets_out),
            ("unroutable", c.unroutable), ("extraAssociations", c.extra_associations),
            ("dcepMalformed", c.dcep_malformed), ("unknownPpid", c.unknown_ppid),
            ("droppedNotConnected", c.dropped_not_connected),
            ("droppedBufferFull", c.dropped_buffer_full), ("droppedTooBig", c.dropped_too_big),
            ("eventsDropped", c.events_dropped),
            ("recordsSealed", self.sealer.as_ref().map_or(0, |s| s.sealed)),
            ("sealFailed", self.seal_failed),
        ] {
            d.set_item(k, v)?;
        }
        Ok(d)
    }
}

/// One message written into many associations in one call (a data producer's message to
/// its data consumers): `targets` is a list of (association, stream id). Returns, per
/// target, (result, packets to send: DTLS records already where the association seals, else
/// SCTP packets to protect). The payload is copied once.
#[pyfunction]
pub fn sctp_fanout<'py>(py: Python<'py>, targets: Vec<(Bound<'py, SctpAssociation>, u16)>,
                        ppid: u32, data: &[u8], now: f64) -> PyResult<Bound<'py, PyList>> {
    let payload = Bytes::copy_from_slice(data);
    let out = PyList::empty(py);
    for (assoc, stream) in targets {
        let Ok(mut a) = assoc.try_borrow_mut() else {
            out.append(("busy", PyList::empty(py)))?;
            continue;
        };
        let result = a.core.send(stream, ppid, &payload);
        let packets = a.out_packets(now);
        out.append((result.name(), packets_list(py, packets)?))?;
    }
    Ok(out)
}

/// Live SCTP associations in this process (every `SctpAssociation` not yet freed).
#[pyfunction]
pub fn sctp_associations() -> usize {
    live_associations()
}

#[cfg(test)]
mod tests;
