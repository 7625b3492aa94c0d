//! Worker threads on one port (the `workers` setting), the parts without I/O.
//!
//! Each worker has its own UDP socket in one `SO_REUSEPORT` group on the rtc port; the kernel
//! hashes a remote's datagrams to one socket, so one transport's ingress is one worker's.
//! A worker runs what it received through the shared router and gets the transmits of the
//! whole fan-out. Every UDP destination has an owner worker (`owner`, a stable hash of the
//! address): a worker sends its own share at once and hands the rest, one batch per owner,
//! to the owner's `Inbox` (a bounded lock-free queue). A full inbox drops the batch and
//! counts its datagrams; the ingress worker never blocks. One destination's datagrams leave
//! from one thread, its owner's; those one worker made leave in the order it made them
//! (FIFO queues). That is the order that matters: one producer's packets (one remote, so one
//! ingress worker) to a consumer. Datagrams two workers made for one destination (a
//! retransmission answering that viewer's NACK, and fresh packets of the stream) may
//! interleave, as they could on the wire.
//! A batch that was sent goes back to the worker that made it (`returns`), which takes its
//! buffers into its router output pool and reuses the vector: no allocation per packet.
//! Everything not UDP (TCP connections, plain/pipe sockets) stays with the worker that
//! produced it, as with one worker.
//! Fresh media does not cross as datagrams: the ingress worker leaves each other owner worker
//! one share of a producer packet (decrypted once; `router/share.rs`) in its bounded share
//! queue (full: dropped and counted, never blocking), and that worker makes its consumers'
//! copies itself. What crosses in inboxes is the rest: retransmissions, RTCP, control output.
//! With several workers a WebRTC transport's datagrams leave the router unprotected, sealed
//! for the transport's owner (`router/seal.rs`): they go to that worker whatever their
//! destination, and it protects them just before sending (`sealing.rs`); its outbound SRTP
//! context comes over the worker's key queue (`push_key`), filled under the router lock.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::{ArrayQueue, SegQueue};

use crate::remote::Via;
use crate::router::{KeyEvent, Share, Transmit};

/// Most workers an engine takes (more threads than this is a mistake, not a setting).
pub const MAX_WORKERS: usize = 64;
/// Batches waiting in one worker's inbox at most; one batch is one receive batch's fan-out
/// to that worker's destinations (at most `SEND_EARLY_AT_GSO` datagrams).
pub const INBOX_BATCHES: usize = 256;
/// Sent batches waiting to go back to the worker that made them; past this they are freed.
pub const RETURN_BATCHES: usize = 256;
/// Producer packets waiting in one worker's share queue at most (`router/share.rs`: the
/// fan-out to the consumers it owns, left by the worker that received them).
pub const SHARE_QUEUE: usize = 1024;
/// Emptied batch vectors a worker keeps for its next hand-offs.
const FREE_BATCHES: usize = 64;

/// The worker that sends to `dest` among `workers`: the same for the life of the engine.
pub fn owner(dest: &SocketAddr, workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    // SipHash with fixed keys: stable within the process, spreads nearby ports.
    let mut h = std::hash::DefaultHasher::new();
    dest.hash(&mut h);
    (h.finish() % workers as u64) as usize
}

/// The worker that sends `t`: a sealed datagram's transport owner (it protects it first),
/// else the UDP destination's owner; None: whoever made it (TCP, plain/pipe sockets).
fn sender_of(t: &Transmit, workers: usize) -> Option<usize> {
    match t.seal {
        Some(s) => Some(s.owner as usize),
        None if t.dest.via == Via::Udp => Some(owner(&t.dest.addr, workers)),
        None => None,
    }
}

/// Whether worker `me` of `workers` keeps `t` (sends it itself).
fn keeps(t: &Transmit, me: usize, workers: usize) -> bool {
    sender_of(t, workers).is_none_or(|o| o == me)
}

/// `Batch::from` of a batch no worker made (the control and plain threads): not returned.
pub const NO_WORKER: usize = usize::MAX;

/// Transmits handed from worker `from` to another worker.
pub struct Batch {
    pub from: usize,
    pub transmits: Vec<Transmit>,
}

/// What one worker did (engine `workers()`); datagrams, not batches.
#[derive(Default)]
pub struct WorkerCounters {
    /// Datagrams read from this worker's socket.
    pub received: AtomicU64,
    /// UDP datagrams this worker's socket sent (its own share and its inbox's).
    pub sent: AtomicU64,
    /// Datagrams handed to other workers' inboxes.
    pub handed_off: AtomicU64,
    /// Datagrams taken from this worker's inbox.
    pub taken: AtomicU64,
    /// Datagrams dropped because this worker's inbox was full.
    pub inbox_full: AtomicU64,
    /// Batches in this worker's inbox at most (a depth high-water mark).
    pub inbox_peak: AtomicU64,
    /// Datagrams this worker protected for the transports it owns (`sealing.rs`).
    pub sealed: AtomicU64,
    /// Sealed datagrams dropped: no context for their transport's keys (removed, re-keyed).
    pub seal_no_key: AtomicU64,
    /// Sealed datagrams whose protection failed.
    pub seal_failed: AtomicU64,
    /// Outbound SRTP contexts this worker holds now (a gauge: the transports it owns).
    pub contexts: AtomicU64,
    /// Producer packets left for this worker's consumers by other workers, and forwarded.
    pub shares: AtomicU64,
    /// Producer packets not forwarded to this worker's consumers: its share queue was full.
    pub shares_full: AtomicU64,
    /// Shares waiting at most (a depth high-water mark).
    pub share_peak: AtomicU64,
    /// Where the worker's time goes, nanoseconds: waiting for the router's lock, holding it
    /// (routing, forwarding to its consumers, timers), protecting datagrams, and in the
    /// kernel's send calls; with `messages` (the messages those calls carried: a GSO message
    /// or a plain datagram each), the cost of one kernel message.
    pub lock_wait_ns: AtomicU64,
    pub router_ns: AtomicU64,
    pub seal_ns: AtomicU64,
    pub send_ns: AtomicU64,
    pub messages: AtomicU64,
}

impl WorkerCounters {
    /// Add the time from `since` to now to `counter`; now.
    pub fn lap(counter: &AtomicU64, since: std::time::Instant) -> std::time::Instant {
        let now = std::time::Instant::now();
        counter.fetch_add(now.saturating_duration_since(since).as_nanos() as u64, Ordering::Relaxed);
        now
    }
}

/// One worker's queues: batches for it to send, its own sent batches coming back, the
/// outbound SRTP contexts of the transports it owns (unbounded: one event per control call),
/// and producer packets for it to forward to its consumers (shares).
pub struct Inbox {
    queue: ArrayQueue<Batch>,
    returns: ArrayQueue<Vec<Transmit>>,
    keys: SegQueue<KeyEvent>,
    shares: ArrayQueue<Share>,
    pub counters: WorkerCounters,
}

impl Inbox {
    fn new() -> Self {
        Inbox {
            queue: ArrayQueue::new(INBOX_BATCHES),
            returns: ArrayQueue::new(RETURN_BATCHES),
            keys: SegQueue::new(),
            shares: ArrayQueue::new(SHARE_QUEUE),
            counters: WorkerCounters::default(),
        }
    }
}

/// Every worker's inbox. Shared by the worker threads (`Arc` in the engine).
pub struct Mesh {
    inboxes: Vec<Inbox>,
}

impl Mesh {
    /// `workers` is clamped to 1..=`MAX_WORKERS`.
    pub fn new(workers: usize) -> Self {
        Mesh { inboxes: (0..workers.clamp(1, MAX_WORKERS)).map(|_| Inbox::new()).collect() }
    }

    pub fn workers(&self) -> usize {
        self.inboxes.len()
    }

    pub fn inbox(&self, worker: usize) -> &Inbox {
        &self.inboxes[worker]
    }

    /// Put `batch` in worker `to`'s inbox. Full: the batch is dropped (its datagrams counted
    /// as `inbox_full` of `to`) and given back (Err) so the caller can reuse its buffers.
    pub fn hand_off(&self, to: usize, batch: Batch) -> Result<(), Batch> {
        let n = batch.transmits.len() as u64;
        let inbox = &self.inboxes[to];
        match inbox.queue.push(batch) {
            Ok(()) => {
                self.inboxes[to].counters.inbox_peak.fetch_max(inbox.queue.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(b) => {
                inbox.counters.inbox_full.fetch_add(n, Ordering::Relaxed);
                Err(b)
            }
        }
    }

    /// The oldest batch in worker `me`'s inbox.
    pub fn take(&self, me: usize) -> Option<Batch> {
        let b = self.inboxes[me].queue.pop()?;
        self.inboxes[me].counters.taken.fetch_add(b.transmits.len() as u64, Ordering::Relaxed);
        Some(b)
    }

    /// A batch that was sent goes back to its maker (dropped if its return queue is full, or
    /// if no worker made it).
    pub fn give_back(&self, batch: Batch) {
        if let Some(maker) = self.inboxes.get(batch.from) {
            let _ = maker.returns.push(batch.transmits);
        }
    }

    /// Queue a key event for its owner worker (call with the router lock held, in the call
    /// that produced it: then it is queued before any datagram that needs it); that worker.
    pub fn push_key(&self, ev: KeyEvent) -> usize {
        let to = ev.owner().min(self.inboxes.len() - 1);
        self.inboxes[to].keys.push(ev);
        to
    }

    /// The oldest key event for worker `me`.
    pub fn pop_key(&self, me: usize) -> Option<KeyEvent> {
        self.inboxes[me].keys.pop()
    }

    /// Queue `share` for its worker (call with the router lock held, after the key events of
    /// the same call). Full: dropped and counted (`shares_full`); false.
    pub fn push_share(&self, share: Share) -> bool {
        let Some(inbox) = self.inboxes.get(share.to) else { return false };
        match inbox.shares.push(share) {
            Ok(()) => {
                inbox.counters.share_peak.fetch_max(inbox.shares.len() as u64, Ordering::Relaxed);
                true
            }
            Err(_) => {
                inbox.counters.shares_full.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// The oldest share for worker `me`.
    pub fn pop_share(&self, me: usize) -> Option<Share> {
        let s = self.inboxes[me].shares.pop()?;
        self.inboxes[me].counters.shares.fetch_add(1, Ordering::Relaxed);
        Some(s)
    }

    /// Whether shares wait for worker `me`.
    pub fn has_shares(&self, me: usize) -> bool {
        !self.inboxes[me].shares.is_empty()
    }

    /// Producer packets dropped because a share queue was full, over every worker.
    pub fn shares_full(&self) -> u64 {
        self.inboxes.iter().map(|i| i.counters.shares_full.load(Ordering::Relaxed)).sum()
    }

    /// One of worker `me`'s sent batches, back (its transmits' buffers to reuse).
    pub fn take_returned(&self, me: usize) -> Option<Vec<Transmit>> {
        self.inboxes[me].returns.pop()
    }

    /// Sealed datagrams dropped by their owners, over every worker: (no key, failed).
    pub fn seal_drops(&self) -> (u64, u64) {
        let sum = |f: fn(&WorkerCounters) -> &AtomicU64| self.inboxes.iter().map(|i| f(&i.counters).load(Ordering::Relaxed)).sum();
        (sum(|c| &c.seal_no_key), sum(|c| &c.seal_failed))
    }

    /// Datagrams dropped because an inbox was full, over every worker.
    pub fn inbox_full(&self) -> u64 {
        self.inboxes.iter().map(|i| i.counters.inbox_full.load(Ordering::Relaxed)).sum()
    }
}

/// One worker's scratch for splitting its transmits by owner (allocation-free once warm).
pub struct Partitioner {
    me: usize,
    workers: usize,
    local: Vec<Transmit>,
    /// Per worker: the transmits for it from the current output (empty for `me`).
    outgoing: Vec<Vec<Transmit>>,
    free: Vec<Vec<Transmit>>,
}

impl Partitioner {
    pub fn new(me: usize, workers: usize) -> Self {
        Partitioner { me, workers, local: Vec::new(), outgoing: (0..workers).map(|_| Vec::new()).collect(), free: Vec::new() }
    }

    /// Move the UDP transmits other workers own out of `transmits` (order kept per owner);
    /// what this worker sends stays, in order. Afterwards `take_for` gives each owner's share.
    pub fn split(&mut self, transmits: &mut Vec<Transmit>) {
        if self.workers <= 1 || transmits.iter().all(|t| keeps(t, self.me, self.workers)) {
            return;
        }
        self.local.clear();
        for t in transmits.drain(..) {
            if keeps(&t, self.me, self.workers) {
                self.local.push(t);
            } else {
                let o = sender_of(&t, self.workers).unwrap_or(self.me);
                if self.outgoing[o].capacity() == 0 {
                    if let Some(v) = self.free.pop() {
                        self.outgoing[o] = v;
                    }
                }
                self.outgoing[o].push(t);
            }
        }
        std::mem::swap(transmits, &mut self.local);
    }

    /// The hand-off for worker `to` from the last `split`, taken out (None if nothing).
    pub fn take_for(&mut self, to: usize) -> Option<Batch> {
        let v = self.outgoing.get_mut(to)?;
        if v.is_empty() {
            return None;
        }
        Some(Batch { from: self.me, transmits: std::mem::take(v) })
    }

    /// An emptied batch vector to reuse for later hand-offs.
    pub fn reuse(&mut self, mut v: Vec<Transmit>) {
        v.clear();
        if self.free.len() < FREE_BATCHES && v.capacity() > 0 {
            self.free.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::Remote;

    fn tx(port: u16, n: u32) -> Transmit {
        Transmit::new(Remote::udp(SocketAddr::from(([127, 0, 0, 1], port))), n.to_be_bytes().to_vec())
    }

    fn num(t: &Transmit) -> u32 {
        u32::from_be_bytes(t.buf[..4].try_into().unwrap())
    }

    #[test]
    fn owner_is_stable_and_spreads() {
        let addrs: Vec<SocketAddr> = (0..1000u16).map(|p| SocketAddr::from(([10, 0, 0, 1], 20000 + p))).collect();
        let first: Vec<usize> = addrs.iter().map(|a| owner(a, 4)).collect();
        assert_eq!(first, addrs.iter().map(|a| owner(a, 4)).collect::<Vec<_>>());
        for w in 0..4 {
            let c = first.iter().filter(|&&o| o == w).count();
            assert!((150..350).contains(&c), "worker {w} owns {c} of 1000");
        }
        assert!(addrs.iter().all(|a| owner(a, 1) == 0));
    }

    #[test]
    fn split_keeps_own_and_non_udp_in_order() {
        let mut p = Partitioner::new(0, 2);
        let mut ts: Vec<Transmit> = (0..200u32).map(|i| tx(30000 + (i % 20) as u16, i)).collect();
        ts.push(Transmit::new(Remote::tcp(SocketAddr::from(([127, 0, 0, 1], 1))), 999u32.to_be_bytes().to_vec()));
        p.split(&mut ts);
        assert!(ts.iter().all(|t| keeps(t, 0, 2)));
        assert_eq!(num(ts.last().unwrap()), 999, "TCP stays with the maker");
        assert!(p.take_for(0).is_none(), "nothing handed to itself");
        let handed = p.take_for(1).unwrap();
        assert_eq!(handed.from, 0);
        let other = &handed.transmits;
        assert_eq!(ts.len() + other.len(), 201);
        for v in [&ts[..ts.len() - 1], &other[..]] {
            assert!(v.windows(2).all(|w| num(&w[0]) < num(&w[1])), "order kept");
        }
        assert!(other.iter().all(|t| owner(&t.dest.addr, 2) == 1));
        assert!(p.take_for(1).is_none(), "taken out");
    }

    #[test]
    fn full_inbox_drops_and_counts_order_kept() {
        let mesh = Mesh::new(2);
        let mut sent = 0u32;
        let mut refused = 0u64;
        for b in 0..INBOX_BATCHES as u32 + 10 {
            let transmits = (0..3).map(|k| tx(40000, b * 3 + k)).collect();
            match mesh.hand_off(1, Batch { from: 0, transmits }) {
                Ok(()) => sent += 1,
                Err(back) => {
                    assert_eq!(back.transmits.len(), 3);
                    refused += 3;
                }
            }
        }
        assert_eq!(sent as usize, INBOX_BATCHES);
        assert_eq!(refused, 30);
        assert_eq!(mesh.inbox_full(), 30);
        assert_eq!(mesh.inbox(1).counters.inbox_peak.load(Ordering::Relaxed), INBOX_BATCHES as u64);
        let mut next = 0u32;
        while let Some(b) = mesh.take(1) {
            for t in &b.transmits {
                assert_eq!(num(t), next);
                next += 1;
            }
            mesh.give_back(b);
        }
        assert_eq!(next, 3 * INBOX_BATCHES as u32);
        assert_eq!(mesh.inbox(1).counters.taken.load(Ordering::Relaxed), next as u64);
        // Sent batches return to worker 0 (up to RETURN_BATCHES), not to 1.
        assert!(mesh.take_returned(1).is_none());
        let mut back = 0;
        while mesh.take_returned(0).is_some() {
            back += 1;
        }
        assert_eq!(back, RETURN_BATCHES.min(INBOX_BATCHES));
    }

    #[test]
    fn two_threads_keep_per_destination_order() {
        let mesh = std::sync::Arc::new(Mesh::new(2));
        let m2 = mesh.clone();
        let maker = std::thread::spawn(move || {
            let mut p = Partitioner::new(0, 2);
            for round in 0..2000u32 {
                let mut ts: Vec<Transmit> = (0..16u32).map(|k| tx(50000 + (k % 8) as u16, round * 16 + k)).collect();
                while let Some(v) = m2.take_returned(0) {
                    p.reuse(v);
                }
                p.split(&mut ts);
                if let Some(b) = p.take_for(1) {
                    if let Err(b) = m2.hand_off(1, b) {
                        p.reuse(b.transmits);
                    }
                }
            }
        });
        let mut last: std::collections::HashMap<SocketAddr, u32> = Default::default();
        let mut got = 0u64;
        loop {
            let done = maker.is_finished();
            while let Some(b) = mesh.take(1) {
                for t in &b.transmits {
                    let n = num(t);
                    if let Some(prev) = last.insert(t.dest.addr, n) {
                        assert!(n > prev, "{}: {n} after {prev}", t.dest.addr);
                    }
                    got += 1;
                }
                mesh.give_back(b);
            }
            if done {
                break;
            }
            std::thread::yield_now();
        }
        maker.join().unwrap();
        let dropped = mesh.inbox_full();
        let handed: u64 = (0..2000u64 * 16).filter(|i| owner(&SocketAddr::from(([127, 0, 0, 1], 50000 + (i % 16 % 8) as u16)), 2) == 1).count() as u64;
        assert_eq!(got + dropped, handed, "every handed datagram arrived or was counted");
    }
}
