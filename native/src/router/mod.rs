//! Sans-IO forwarding core: datagrams, time and a seed in; datagrams out (`Output`) and
//! STUN/DTLS upcalls for Python. No sockets, threads, clock reads, OS randomness, process-wide
//! state or calls into Python here (the specs derive `FromPyObject`: they are the engine's
//! typed contract): every call takes `now` from the caller, `Router::new` takes the seed of its
//! random numbers and the wall-clock time of its start (for NTP timestamps), so every rule is
//! unit-tested and every run (tests, fuzz targets) is reproducible.
//!
//! Objects (transports, producers, consumers) are identified by handles the control plane
//! chooses; handles are unique across all three kinds.
//!
//! One file per path: `spec` (what the control plane passes in, errors), `output` (datagrams
//! out, upcalls, drop reasons), `transport`, `producer`, `consumer` (state; a consumer forwards
//! its own copy of a packet), `control` (add/remove/pause/bind/keys), `ingress` (demultiplexing,
//! STUN/DTLS hand-up, SRTP in, stream learning), `egress` (fan-out, rewrite), `feedback` (RTCP
//! in, NACK answers, key frame requests, upstream NACKs), `timers` (reports, transport-cc,
//! layer choice), `stats`, `totals` (engine-wide counters that never go down).

mod consumer;
mod control;
mod egress;
mod feedback;
mod ingress;
mod output;
mod layering;
mod plain;
mod probing;
mod seal;
mod share;
mod producer;
mod spec;
mod stats;
mod svc;
mod svc_dd;
mod timers;
mod totals;
mod transport;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use crate::remote::Remote;
use std::time::{Duration, Instant};

use crate::fasthash::HandleMap;
use crate::reports::NtpClock;

use consumer::Consumer;
use feedback::RtcpWork;
use producer::Producer;
use transport::Transport;

pub use seal::{sender, KeyEvent, Seal};
pub use share::Share;
pub use output::{DropReason, Drops, Output, Transmit, UpKind, Upcall};
pub use spec::{
    CodecSpec, ConsumerSpec, EncodingSpec, ExtSpec, KeyFrameMethod, ProducerSpec, Removed, RouterError, SrtpKeys, URI_MID, URI_RID, URI_RRID,
    URI_TRANSPORT_CC,
};
pub use stats::{Counts, StatValue};
pub use totals::Totals;
pub use transport::Counters;

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
/// Transport-wide feedback toward a sender this often (mediasoup: 100 ms).
pub const TWCC_INTERVAL: Duration = Duration::from_millis(100);
/// Sender/receiver reports every this often (mediasoup: 1 s for video).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// RFC 7675's consent timeout (the `consent_timeout` setting's default).
pub const DEFAULT_CONSENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often transports' consent is checked: a lost consent is told at most this late.
pub const CONSENT_SWEEP: Duration = Duration::from_millis(500);

/// Tiny xorshift PRNG for sequence-number starts and our RTCP SSRCs, from the caller's seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed: any seed (0 included) gives a well-mixed, non-zero state.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
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

pub struct Router {
    transports: HandleMap<Transport>,
    producers: HandleMap<Producer>,
    consumers: HandleMap<Consumer>,
    by_addr: HashMap<Remote, Handle>,
    by_ufrag: HashMap<String, Handle>,
    up: VecDeque<Upcall>,
    drops: Drops,
    /// Counters of removed producers and consumers (`totals`).
    retired: Totals,
    scratch: Vec<u8>,
    rng: Rng,
    next_timeout: Option<Instant>,
    ntp: NtpClock,
    /// Origin of the arrival times given to the transport-wide feedback recorders.
    twcc_epoch: Instant,
    next_report: Option<Instant>,
    rtcp_work: RtcpWork,
    /// A transport whose first sending tuple was just proven (consumers resync).
    connect_pending: Option<Handle>,
    /// Transports that were just sent their first forwarded media packet, and where.
    first_media: Vec<(Handle, Remote)>,
    /// RFC 7675: a transport whose peer sent no valid Binding request for this long (after
    /// its first) has lost consent; None: consent never expires.
    consent_timeout: Option<Duration>,
    /// When the consent sweep next runs (`CONSENT_SWEEP` apart while transports have consent).
    next_consent_sweep: Option<Instant>,
    /// Where outbound SRTP is applied: here, or by each transport's owner worker.
    sealing: seal::Sealing,
    /// Fan-out by owner worker: who routes now, the shares left for the others.
    shares: share::Shares,
}

impl Router {
    /// A router started at `now`, when the wall clock read `unix_time` (since the Unix epoch:
    /// the NTP timestamps of sender reports follow from it); `seed` seeds the random numbers
    /// (initial sequence numbers, our RTCP SSRCs). The I/O edge passes a clock reading and OS
    /// randomness; tests and fuzz targets pass constants.
    pub fn new(seed: u64, now: Instant, unix_time: Duration) -> Self {
        Router {
            transports: HandleMap::default(),
            producers: HandleMap::default(),
            consumers: HandleMap::default(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            up: VecDeque::new(),
            drops: Drops::default(),
            retired: Totals::default(),
            scratch: Vec::with_capacity(output::BUF_CAP * 2),
            rng: Rng::new(seed),
            next_timeout: None,
            ntp: NtpClock::new(now, unix_time),
            twcc_epoch: now,
            next_report: None,
            rtcp_work: RtcpWork::default(),
            connect_pending: None,
            first_media: Vec::new(),
            consent_timeout: Some(DEFAULT_CONSENT_TIMEOUT),
            next_consent_sweep: None,
            sealing: seal::Sealing::default(),
            shares: share::Shares::default(),
        }
    }

    /// The engine runs `workers` workers: with more than one, transports given keys from now
    /// on are protected by their owner worker (`seal.rs`), not under the router.
    pub fn set_workers(&mut self, workers: usize) {
        self.sealing.set_workers(workers);
        self.shares.changed();
    }

    /// Outbound contexts for owner workers (and what they can drop), oldest first. The
    /// engine queues them to the owners before it releases the router.
    pub fn take_key_events(&mut self) -> Vec<KeyEvent> {
        self.sealing.take()
    }

    fn handle_in_use(&self, h: Handle) -> bool {
        self.transports.contains_key(&h) || self.producers.contains_key(&h) || self.consumers.contains_key(&h)
    }

    pub fn drops(&self) -> &Drops {
        &self.drops
    }

    pub fn count_drop(&mut self, d: DropReason, n: u64) {
        self.drops.add(d, n);
    }

    /// When `handle_timeout` next has work (approximate; calling it earlier is harmless).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timeout
    }

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
    fn push_up(&mut self, kind: UpKind, transport: Handle, from: Remote, data: &[u8]) {
        let Some(t) = self.transports.get_mut(&transport) else { return };
        if self.up.len() >= UP_QUEUE_CAP || t.up_pending >= UP_QUEUE_PER_TRANSPORT {
            t.up_dropped += 1;
            self.drops.inc(DropReason::UpQueueFull);
            return;
        }
        t.up_pending += 1;
        match kind {
            UpKind::Stun => t.stun_in += 1,
            UpKind::Dtls => t.dtls_in += 1,
            UpKind::Media | UpKind::ConsentLost => {}
        }
        self.up.push_back(Upcall { kind, transport, from, data: data.to_vec() });
    }

    /// Fold `d` into the earliest timer.
    fn wake_at(&mut self, d: Instant) {
        self.next_timeout = Some(self.next_timeout.map_or(d, |n| n.min(d)));
    }
}

/// Fold `d` into `next` (the earliest of both), for code that holds the field, not the router.
fn earliest(next: &mut Option<Instant>, d: Instant) {
    *next = Some(next.map_or(d, |n| n.min(d)));
}
