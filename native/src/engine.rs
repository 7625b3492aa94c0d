//! `pysfu._native.Engine`: the UDP socket, the TCP listener and its connections (ICE-TCP,
//! `tcp.rs`), the I/O thread and the Python-facing control API.
//!
//! The I/O thread owns the receive side: recvmmsg batch → `Router` (under its mutex) →
//! sendmmsg batch (outside the mutex); TCP frames take the same way, as datagrams from a
//! `Remote` with `Via::Tcp`. Where a transmit goes is its `Remote`'s `Via` (`Shared::send`):
//! the UDP socket, or a TCP connection's bounded queue; a new socket kind is a new `Via` and
//! a branch there. One epoll set (`poller.rs`) waits on every fd. Python control calls take
//! the mutex briefly with the GIL released. STUN/DTLS datagrams for Python are queued in the
//! router; an eventfd is readable while the queue is non-empty, and `drain()` empties both.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::affinity;
use crate::gso::{self, Planner};
use crate::io;
use crate::plain_io::PlainSockets;
use crate::poller::{Events, Poller, READABLE};
use crate::remote::{Remote, Via};
use crate::tcp::{self, Frames, TcpEdge};
use crate::router::{ConsumerSpec, DropReason, Handle, Output, ProducerSpec, Removed, Router, RouterError, Share, SrtpKeys, StatValue, Transmit};
use crate::wake::EventFd;
use crate::sealing::{Keyring, SealCounts};
use crate::workers::{Batch, Mesh, Partitioner, MAX_WORKERS, NO_WORKER};

/// Periodic router work (key frame re-requests) at least this often.
const TICK: Duration = Duration::from_millis(50);
/// Send what a batch produced once this many datagrams are waiting, instead of after the whole
/// receive batch: a key-frame burst fanned out to many consumers otherwise leaves only when
/// its last packet is done (latency ∝ burst × consumers).
const SEND_EARLY_AT: usize = 64;
/// With GSO, the datagrams of a receive batch are held until the batch is done (or this many
/// wait) so that a consumer's packets of the batch (a key-frame burst, retransmissions) leave
/// together, grouped per destination, as few `UDP_SEGMENT` messages (`gso.rs`).
const SEND_EARLY_AT_GSO: usize = 4096;
/// Messages of a GSO plan sealed, then sent, at a time (`Worker::seal_send`): a few viewers'
/// bursts, small enough to stay in cache between protection and the kernel's copy.
const SEAL_CHUNK: usize = 8;
/// Consumers of each share a worker forwards per hold of the router (`Worker::run_shares`):
/// it then releases the router and sends them, so the first viewers' datagrams of a frame
/// leave while the rest are made, and the other worker can take the router in between.
const SHARE_PART: usize = 8;
/// Shares a worker takes from its queue at a time (their parts are run together).
const SHARES_AT_ONCE: usize = 64;
/// While UDP keeps the thread busy, TCP readiness is looked at this often (no extra syscall
/// per UDP batch).
const TCP_POLL_EVERY: Duration = Duration::from_millis(1);
/// Tries at finding a free port number for both UDP and TCP when the port is chosen by the OS.
const BIND_TRIES: usize = 20;

const TOKEN_UDP: u64 = 0;
const TOKEN_STOP: u64 = 1;
const TOKEN_LISTENER: u64 = 2;
/// A worker's wake fd: its inbox has batches.
const TOKEN_WAKE: u64 = 3;

struct State {
    router: Router,
    /// The up fd has been set and not yet reset by `drain`.
    signalled: bool,
    /// Message of the last panic caught on the I/O thread, for Python to log (`take_panic`).
    last_panic: Option<String>,
    /// Test hook (`_test_panic("io")`): the next datagram's processing panics.
    panic_next: bool,
}

/// 64 random bits from the OS for the router's seed (the router itself draws no randomness);
/// the clock if getrandom fails.
fn os_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: fills 8 bytes of a local array.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr() as *mut libc::c_void, 8, 0) };
    if n == 8 {
        return u64::from_ne_bytes(seed);
    }
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0x9E37_79B9_7F4A_7C15)
}

/// A router for an engine started now: OS randomness, the monotonic and the wall clock,
/// read here at the I/O edge.
fn new_router(workers: usize) -> Router {
    let unix_time = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut router = Router::new(os_seed(), Instant::now(), unix_time);
    // Several workers: each transport's outbound SRTP is applied by its owner (sealing.rs).
    router.set_workers(workers);
    router
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| e.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// One worker's socket (all in one `SO_REUSEPORT` group on the rtc port) and wake-up fd.
struct WorkerIo {
    socket: UdpSocket,
    /// Set when a batch was put in this worker's inbox (`workers::Mesh`).
    wake: EventFd,
    /// Worker 0 waits on `Shared::poller` (with TCP and the listener); the others on their
    /// own set (socket, wake fd, stop fd).
    poller: Option<Poller>,
    /// The CPU the worker pinned itself to (`affinity.rs`), or -1.
    cpu: AtomicI64,
}

struct Shared {
    state: Mutex<State>,
    /// One per worker thread; worker 0's socket also sends for Python and control calls.
    workers: Vec<WorkerIo>,
    /// The workers' inboxes and counters.
    mesh: Mesh,
    /// The router's next timer (`poll_timeout`), as nanoseconds since `epoch` (`u64::MAX`:
    /// none). Worker 0 runs the timers and sets it after each of its locked sections; another
    /// worker whose datagrams made an earlier timer lowers it and wakes worker 0.
    timer_at: AtomicU64,
    epoch: Instant,
    /// UDP candidates are offered: the socket is read. (Bound either way: it holds the port
    /// number the TCP listener shares.)
    udp: bool,
    /// The TCP listener and connections; none when TCP is off. Lock order: `state`, then this.
    tcp: Option<Mutex<TcpEdge>>,
    poller: Poller,
    up_fd: EventFd,
    stop_fd: EventFd,
    stop: AtomicBool,
    send_failed: AtomicU64,
    /// Sockets of plain/pipe transports and their thread (plain_io.rs).
    plain: PlainSockets,
    /// UDP GSO in use: on by setting, off for good once the kernel refuses it.
    gso_on: AtomicBool,
    gso: GsoCounters,
    /// UDP GRO on every worker's socket (the setting, unless the kernel refused it).
    gro_on: bool,
    gro: GroCounters,
}

/// What GRO did (engine totals: groBuffers, groDatagrams, groRefused).
#[derive(Default)]
struct GroCounters {
    /// Received buffers that held several datagrams, and the datagrams they held.
    buffers: AtomicU64,
    datagrams: AtomicU64,
    /// 1 when the setting asked for GRO and the kernel refused it (then it is off).
    refused: AtomicU64,
}

/// What GSO did (engine totals: gsoMessages, gsoDatagrams, gsoRefused).
#[derive(Default)]
struct GsoCounters {
    messages: AtomicU64,
    datagrams: AtomicU64,
    refused: AtomicU64,
}

impl Shared {
    /// Worker 0's socket: Python's datagrams and control calls' output leave by it.
    fn socket(&self) -> &UdpSocket {
        &self.workers[0].socket
    }

    /// Send a batch produced by the router outside a worker (control calls, the plain
    /// thread; with or without the router lock, never with the TCP lock): datagrams still to
    /// be protected go to their owner worker's inbox, the rest leave by worker 0's socket.
    fn send(&self, out: &mut Output) {
        if out.transmits.iter().any(|t| t.seal.is_some()) {
            let mut by_owner: Vec<Vec<Transmit>> = (0..self.workers.len()).map(|_| Vec::new()).collect();
            let mut rest = Vec::with_capacity(out.transmits.len());
            for t in out.transmits.drain(..) {
                match t.seal {
                    Some(s) => by_owner[(s.owner as usize).min(self.workers.len() - 1)].push(t),
                    None => rest.push(t),
                }
            }
            out.transmits = rest;
            for (to, transmits) in by_owner.into_iter().enumerate().filter(|(_, v)| !v.is_empty()) {
                // Full inbox: dropped and counted (`workerInboxFull`) as a worker's hand-off.
                if self.mesh.hand_off(to, Batch { from: NO_WORKER, transmits }).is_ok() {
                    self.workers[to].wake.set();
                }
            }
        }
        self.send_via(self.socket().as_raw_fd(), out, None);
    }

    /// Queue the router's key events to their owner workers. Call before releasing the router
    /// lock of any call that may have produced some (`sealing.rs`).
    fn publish_keys(&self, st: &mut State) {
        for ev in st.router.take_key_events() {
            self.mesh.push_key(ev);
        }
    }

    /// As `send`, UDP from socket `fd`; with a planner (the worker's) and GSO on, the UDP
    /// datagrams go grouped per destination, runs of equal size as one `UDP_SEGMENT`
    /// message each. Returns the UDP datagrams sent.
    fn send_via(&self, fd: RawFd, out: &mut Output, planner: Option<&mut Planner>) -> usize {
        let sent = self.send_transmits(fd, &out.transmits, planner);
        out.recycle();
        sent
    }

    /// As `send_via`, for transmits the caller keeps (a batch from another worker's inbox).
    fn send_transmits(&self, fd: RawFd, transmits: &[Transmit], planner: Option<&mut Planner>) -> usize {
        if transmits.is_empty() {
            return 0;
        }
        if let Some(planner) = planner.filter(|_| transmits.len() > 1 && self.gso_on.load(Ordering::Relaxed)) {
            return self.send_gso(fd, transmits, planner);
        }
        let mut other = 0usize;
        let r = io::send_batch(
            fd,
            transmits
                .iter()
                .filter(|t| {
                    let udp = t.dest.via == Via::Udp;
                    other += usize::from(!udp);
                    udp
                })
                .map(|t| (&t.dest.addr, t.buf.as_slice())),
        );
        if r.failed > 0 {
            self.send_failed.fetch_add(r.failed as u64, Ordering::Relaxed);
        }
        if other > 0 {
            self.send_not_udp(transmits);
        }
        r.sent
    }

    /// The transmits that leave by a TCP connection or a plain/pipe transport's own socket.
    /// (Empty ones, whose seal failed, are skipped.)
    fn send_not_udp(&self, transmits: &[Transmit]) {
        let live = || transmits.iter().filter(|t| !t.buf.is_empty());
        if live().any(|t| t.dest.via == Via::Tcp) {
            self.send_tcp(live().filter(|t| t.dest.via == Via::Tcp).map(|t| (t.dest.addr, t.buf.as_slice())));
        }
        if live().any(|t| matches!(t.dest.via, Via::Plain(_))) {
            let failed = self.plain.send(live().filter(|t| matches!(t.dest.via, Via::Plain(_))));
            if failed > 0 {
                self.send_failed.fetch_add(failed, Ordering::Relaxed);
            }
        }
    }

    fn send_gso(&self, fd: RawFd, transmits: &[Transmit], planner: &mut Planner) -> usize {
        planner.plan(
            transmits.iter().enumerate().filter(|(_, t)| t.dest.via == Via::Udp).map(|(i, t)| (i, t.dest.addr, t.buf.len())),
        );
        let sent = self.send_planned(fd, transmits, planner.order(), planner.runs());
        if planner.order().len() < transmits.len() {
            self.send_not_udp(transmits);
        }
        sent
    }

    /// What a worker's seals did, into its counters.
    fn count_seals(&self, me: usize, keys: &Keyring, d: SealCounts) {
        let counters = &self.mesh.inbox(me).counters;
        counters.contexts.store(keys.len() as u64, Ordering::Relaxed);
        if d.sealed > 0 {
            counters.sealed.fetch_add(d.sealed, Ordering::Relaxed);
        }
        if d.no_key + d.failed > 0 {
            counters.seal_no_key.fetch_add(d.no_key, Ordering::Relaxed);
            counters.seal_failed.fetch_add(d.failed, Ordering::Relaxed);
        }
    }

    /// Send `runs` of a plan over `transmits` (GSO on; UDP only), counting what happened;
    /// the UDP datagrams sent. A refusal turns GSO off for good: the rest of the runs went
    /// plain in the same call.
    fn send_planned(&self, fd: RawFd, transmits: &[Transmit], order: &[u32], runs: &[gso::Run]) -> usize {
        if !self.gso_on.load(Ordering::Relaxed) {
            let Some(end) = runs.last().map(|r| (r.start + r.len) as usize) else { return 0 };
            let items = order[runs[0].start as usize..end].iter().map(|&i| &transmits[i as usize]);
            let r = io::send_batch(fd, items.filter(|t| !t.buf.is_empty()).map(|t| (&t.dest.addr, t.buf.as_slice())));
            if r.failed > 0 {
                self.send_failed.fetch_add(r.failed as u64, Ordering::Relaxed);
            }
            return r.sent;
        }
        let r = io::send_planned(fd, |i| (&transmits[i].dest.addr, transmits[i].buf.as_slice()), order, runs);
        if r.failed > 0 {
            self.send_failed.fetch_add(r.failed as u64, Ordering::Relaxed);
        }
        if r.gso_messages > 0 {
            self.gso.messages.fetch_add(r.gso_messages as u64, Ordering::Relaxed);
            self.gso.datagrams.fetch_add(r.gso_datagrams as u64, Ordering::Relaxed);
        }
        if r.refused {
            // The kernel (or this route) takes no GSO: send as without it from now on.
            self.gso_on.store(false, Ordering::Relaxed);
            self.gso.refused.fetch_add(1, Ordering::Relaxed);
        }
        r.sent
    }

    /// Queue frames on their TCP connections and write what the kernel takes now.
    fn send_tcp<'a>(&self, items: impl Iterator<Item = (std::net::SocketAddr, &'a [u8])>) {
        let Some(tcp) = &self.tcp else {
            self.send_failed.fetch_add(items.count() as u64, Ordering::Relaxed);
            return;
        };
        let now = Instant::now();
        let mut tcp = tcp.lock();
        for (addr, data) in items {
            tcp.enqueue(addr, data, now);
        }
        tcp.flush_queued(&self.poller, now);
    }

    /// One datagram from Python (`Engine.send`), wherever its remote is.
    fn send_one(&self, dest: Remote, data: &[u8]) {
        match dest.via {
            Via::Udp => {
                let r = io::send_batch(self.socket().as_raw_fd(), std::iter::once((&dest.addr, data)));
                if r.failed > 0 {
                    self.send_failed.fetch_add(r.failed as u64, Ordering::Relaxed);
                }
            }
            Via::Tcp => self.send_tcp(std::iter::once((dest.addr, data))),
            Via::Plain(_) => {
                let failed = self.plain.send(std::iter::once(&Transmit::new(dest, data.to_vec())));
                if failed > 0 {
                    self.send_failed.fetch_add(failed, Ordering::Relaxed);
                }
            }
        }
    }

    fn timer_ns(&self, at: Option<Instant>) -> u64 {
        at.map_or(u64::MAX, |d| d.saturating_duration_since(self.epoch).as_nanos().min(u64::MAX as u128 - 1) as u64)
    }

    /// The router's next timer, as worker 0 last saw it or another worker lowered it.
    fn next_timer(&self) -> Option<Instant> {
        let ns = self.timer_at.load(Ordering::Acquire);
        (ns != u64::MAX).then(|| self.epoch + Duration::from_nanos(ns))
    }

    /// A worker other than 0 made the router's next timer `at` (call with the lock): if
    /// earlier than worker 0 knows, tell it and wake it.
    fn note_timer(&self, at: Option<Instant>) {
        let ns = self.timer_ns(at);
        if ns < self.timer_at.fetch_min(ns, Ordering::AcqRel) {
            self.workers[0].wake.set();
        }
    }

    /// Queue the shares the router left to their workers (after the key events: a share's
    /// consumers' contexts are queued first) and wake them, except the calling worker `me`
    /// (it runs its own next). Call with the router lock.
    fn publish_shares(&self, st: &mut State, me: Option<usize>) {
        if !st.router.has_shares() {
            return;
        }
        let mut woken = 0u64;
        for share in st.router.take_shares() {
            let to = share.to;
            if self.mesh.push_share(share) && Some(to) != me && woken & (1 << to.min(63)) == 0 {
                woken |= 1 << to.min(63);
                self.workers[to].wake.set();
            }
        }
    }

    /// Set the up fd if there is something to drain and it is not set yet; queue the key
    /// events and shares (`me`: the calling worker). Call with the lock.
    fn signal(&self, st: &mut State, me: Option<usize>) {
        self.publish_keys(st);
        self.publish_shares(st, me);
        if !st.signalled && st.router.has_upcalls() {
            st.signalled = true;
            self.up_fd.set();
        }
    }
}

/// One worker's buffers, reused for the life of its thread.
struct Worker {
    me: usize,
    fd: RawFd,
    batch: io::RecvBatch,
    out: Output,
    planner: Planner,
    part: Partitioner,
    /// The outbound SRTP contexts of the transports this worker owns.
    keys: Keyring,
    /// The shares being run (`run_shares`), each with its consumers once taken.
    shares: Vec<(Share, Option<Arc<[Handle]>>)>,
}

impl Worker {
    fn new(shared: &Shared, me: usize) -> Self {
        Worker {
            me,
            fd: shared.workers[me].socket.as_raw_fd(),
            batch: if shared.gro_on { io::RecvBatch::with_gro() } else { io::RecvBatch::new() },
            out: Output::new(),
            planner: Planner::new(),
            part: Partitioner::new(me, shared.workers.len()),
            keys: Keyring::new(),
            shares: Vec::with_capacity(SHARES_AT_ONCE),
        }
    }

    /// Apply the key events queued for this worker (each turn of its loop, so a removed
    /// transport's context goes without waiting for traffic).
    fn apply_keys(&mut self, shared: &Shared) {
        let mut any = false;
        while let Some(ev) = shared.mesh.pop_key(self.me) {
            self.keys.apply(ev);
            any = true;
        }
        if any {
            shared.mesh.inbox(self.me).counters.contexts.store(self.keys.len() as u64, Ordering::Relaxed);
        }
    }

    /// Protect the datagrams of `transmits` left sealed for this worker (`sealing.rs`).
    fn seal(keys: &mut Keyring, shared: &Shared, me: usize, transmits: &mut Vec<Transmit>) {
        let d = keys.seal(transmits, || shared.mesh.pop_key(me));
        shared.count_seals(me, keys, d);
    }

    /// Take back this worker's sent hand-offs: their buffers to the router output's pool,
    /// their vectors to the partitioner. Call with `out` empty.
    fn absorb_returns(&mut self, shared: &Shared) {
        while let Some(mut v) = shared.mesh.take_returned(self.me) {
            self.out.transmits.append(&mut v);
            self.out.recycle();
            self.part.reuse(v);
        }
    }

    /// Send what other workers handed to this one, oldest first, from this worker's socket.
    fn drain_inbox(&mut self, shared: &Shared) {
        self.apply_keys(shared);
        let counters = &shared.mesh.inbox(self.me).counters;
        while let Some(mut b) = shared.mesh.take(self.me) {
            let sent = Self::seal_send(&mut self.keys, &mut self.planner, shared, self.me, self.fd, &mut b.transmits);
            counters.sent.fetch_add(sent as u64, Ordering::Relaxed);
            shared.mesh.give_back(b);
        }
    }

    /// Forward the producer packets left for this worker's consumers (`router/share.rs`; by
    /// any worker, this one included), then send what they made. The shares taken at once
    /// are run in parts of `SHARE_PART` consumers each, the router held for one part and
    /// released while the part is sealed and sent.
    fn run_shares(&mut self, shared: &Shared) {
        while shared.mesh.has_shares(self.me) {
            self.shares.clear();
            while self.shares.len() < SHARES_AT_ONCE {
                let Some(share) = shared.mesh.pop_share(self.me) else { break };
                self.shares.push((share, None));
            }
            let mut from = 0;
            while self.run_share_part(shared, from) {
                from += SHARE_PART;
            }
            self.shares.clear();
        }
    }

    /// Consumers `from..from + SHARE_PART` of each share taken (their lists are taken on
    /// the first part, all under one hold of the router), then sent. Whether any share has
    /// consumers past this part.
    fn run_share_part(&mut self, shared: &Shared, from: usize) -> bool {
        let mut more = false;
        {
            let mut st = shared.state.lock();
            let st = &mut *st;
            let now = Instant::now();
            st.router.act_as(Some(self.me));
            for (share, list) in self.shares.iter_mut() {
                if from == 0 {
                    *list = st.router.share_consumers(share);
                }
                let Some(list) = list.as_deref() else { continue };
                let part = &list[from.min(list.len())..(from + SHARE_PART).min(list.len())];
                more |= from + SHARE_PART < list.len();
                if part.is_empty() {
                    continue;
                }
                let out = &mut self.out;
                if let Err(e) = catch_unwind(AssertUnwindSafe(|| st.router.run_share_part(now, share, part, out))) {
                    on_io_panic(shared, st, &*e);
                }
            }
            st.router.act_as(None);
            if self.me != 0 {
                shared.note_timer(st.router.poll_timeout());
            }
            shared.signal(st, Some(self.me));
        }
        self.dispatch(shared);
        more
    }

    /// Send `out`: the other workers' shares handed to their inboxes (each woken), this
    /// worker's own share at once from its socket.
    fn dispatch(&mut self, shared: &Shared) {
        let workers = shared.workers.len();
        if workers > 1 && !self.out.transmits.is_empty() {
            self.part.split(&mut self.out.transmits);
            for to in 0..workers {
                let Some(b) = self.part.take_for(to) else { continue };
                let n = b.transmits.len() as u64;
                match shared.mesh.hand_off(to, b) {
                    Ok(()) => {
                        shared.mesh.inbox(self.me).counters.handed_off.fetch_add(n, Ordering::Relaxed);
                        shared.workers[to].wake.set();
                    }
                    // Full inbox: dropped and counted (`workerInboxFull`); the vector is reused.
                    Err(b) => self.part.reuse(b.transmits),
                }
            }
        }
        let sent = Self::seal_send(&mut self.keys, &mut self.planner, shared, self.me, self.fd, &mut self.out.transmits);
        self.out.recycle();
        shared.mesh.inbox(self.me).counters.sent.fetch_add(sent as u64, Ordering::Relaxed);
    }

    /// Protect this worker's sealed datagrams of `transmits` and send them all from `fd`.
    /// With GSO, the plan is made on wire lengths and each `SEAL_CHUNK` messages are sealed
    /// just before they go: the first viewers' datagrams leave without waiting for the whole
    /// batch to be protected, and each datagram is still in cache when the kernel copies it.
    /// Returns the UDP datagrams sent.
    fn seal_send(keys: &mut Keyring, planner: &mut Planner, shared: &Shared, me: usize, fd: RawFd, transmits: &mut Vec<Transmit>) -> usize {
        if transmits.len() < 2 || !shared.gso_on.load(Ordering::Relaxed) || transmits.iter().all(|t| t.seal.is_none()) {
            Self::seal(keys, shared, me, transmits);
            return shared.send_transmits(fd, transmits, Some(planner));
        }
        let mut more = || shared.mesh.pop_key(me);
        keys.absorb(&mut more);
        let mut counts = SealCounts::default();
        let mut not_udp = false;
        for t in transmits.iter_mut().filter(|t| t.dest.via != Via::Udp) {
            not_udp = true;
            keys.seal_one(t, &mut more, &mut counts);
        }
        planner.plan(
            transmits.iter().enumerate().filter(|(_, t)| t.dest.via == Via::Udp).map(|(i, t)| (i, t.dest.addr, t.wire_len())),
        );
        let (order, runs) = (planner.order(), planner.runs());
        let mut sent = 0usize;
        for chunk in runs.chunks(SEAL_CHUNK) {
            let indices = chunk.iter().flat_map(|run| &order[run.start as usize..(run.start + run.len) as usize]);
            keys.seal_many(transmits, indices.map(|&i| i as usize), &mut more, &mut counts);
            sent += shared.send_planned(fd, transmits, order, chunk);
        }
        shared.count_seals(me, keys, counts);
        if not_udp {
            shared.send_not_udp(transmits);
        }
        sent
    }

    /// The received UDP datagrams through the router (lock held by the caller); what they
    /// produce is dispatched early once `early_at` datagrams wait.
    fn route_udp(&mut self, shared: &Shared, st: &mut State, n: usize, now: Instant, early_at: usize) {
        shared.mesh.inbox(self.me).counters.received.fetch_add(n as u64, Ordering::Relaxed);
        st.router.act_as(Some(self.me));
        let (buffers, datagrams) = self.batch.coalesced();
        if buffers > 0 {
            shared.gro.buffers.fetch_add(buffers as u64, Ordering::Relaxed);
            shared.gro.datagrams.fetch_add(datagrams as u64, Ordering::Relaxed);
        }
        for i in 0..n {
            // One datagram's panic costs that datagram only (counted, reported to Python);
            // the rest of the batch, other rooms and the thread carry on.
            let result = catch_unwind(AssertUnwindSafe(|| {
                if let Some((from, data, truncated)) = self.batch.get(i) {
                    if std::mem::take(&mut st.panic_next) {
                        panic!("test panic requested by _test_panic(\"io\")");
                    }
                    if truncated {
                        st.router.count_drop(DropReason::Truncated, 1);
                    } else {
                        st.router.handle_datagram(now, Remote::udp(from), data, &mut self.out);
                    }
                }
            }));
            if let Err(e) = result {
                on_io_panic(shared, st, &*e);
            }
            if self.out.transmits.len() >= early_at {
                self.dispatch(shared);
            }
        }
        st.router.act_as(None);
    }
}

fn early_at(shared: &Shared) -> usize {
    if shared.gso_on.load(Ordering::Relaxed) {
        SEND_EARLY_AT_GSO
    } else {
        SEND_EARLY_AT
    }
}

/// A worker other than 0: its socket and inbox only (TCP, timers and the listener are
/// worker 0's).
fn side_worker(shared: Arc<Shared>, me: usize) {
    let mut w = Worker::new(&shared, me);
    let io_ = &shared.workers[me];
    let Some(poller) = io_.poller.as_ref() else { return };
    let mut events = Events::new(8);
    loop {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        w.absorb_returns(&shared);
        let n = w.batch.recv(w.fd).unwrap_or_default();
        if n == 0 {
            poller.wait(&mut events, TICK.as_millis() as i32);
            if events.iter().any(|e| e.token == TOKEN_STOP) {
                break;
            }
            if events.iter().any(|e| e.token == TOKEN_WAKE) {
                io_.wake.reset();
            }
        }
        w.drain_inbox(&shared);
        w.run_shares(&shared);
        if n == 0 {
            continue;
        }
        let now = Instant::now();
        {
            let mut st = shared.state.lock();
            let st = &mut *st;
            w.route_udp(&shared, st, n, now, early_at(&shared));
            shared.note_timer(st.router.poll_timeout());
            shared.signal(st, Some(me));
        }
        w.dispatch(&shared);
        // The shares this batch left for this worker's own consumers.
        w.run_shares(&shared);
    }
}

/// Worker 0: its UDP socket, TCP (listener and connections), the router's timers.
fn io_thread(shared: Arc<Shared>) {
    let mut w = Worker::new(&shared, 0);
    let mut events = Events::new(256);
    let mut frames = Frames::default();
    let mut proven: Vec<std::net::SocketAddr> = Vec::new();
    let mut last_tick = Instant::now();
    let mut last_tcp_poll = last_tick;
    loop {
        // The router's next timer (NACK retries, reports), refreshed after each locked
        // section here and lowered by the other workers.
        let deadline = shared.next_timer();
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        w.absorb_returns(&shared);
        let n = if shared.udp { w.batch.recv(w.fd).unwrap_or_default() } else { 0 };
        // Wait when UDP is idle; otherwise only glance at TCP now and then.
        let ready = if n == 0 {
            let mut wait = TICK.saturating_sub(last_tick.elapsed());
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(Instant::now()));
            }
            let ms = wait.as_millis().clamp(1, 1000) as i32;
            shared.poller.wait(&mut events, ms)
        } else if shared.tcp.is_some() && last_tcp_poll.elapsed() >= TCP_POLL_EVERY {
            shared.poller.wait(&mut events, 0)
        } else {
            events.clear();
            0
        };
        if ready > 0 && events.iter().any(|e| e.token == TOKEN_WAKE) {
            shared.workers[0].wake.reset();
        }
        w.drain_inbox(&shared);
        w.run_shares(&shared);
        let now = Instant::now();
        let mut stop = false;
        let mut closed = Vec::new();
        frames.clear();
        if let Some(tcp) = &shared.tcp {
            if n == 0 || now.duration_since(last_tcp_poll) >= TCP_POLL_EVERY {
                last_tcp_poll = now; // polled just now (waited, or looked)
            }
            let tick = now.duration_since(last_tick) >= TICK;
            let tcp_events = ready > 0 && events.iter().any(|e| e.token != TOKEN_UDP && e.token != TOKEN_WAKE);
            if tcp_events || tick {
                let mut tcp = tcp.lock();
                for ev in events.iter() {
                    match ev.token {
                        TOKEN_UDP | TOKEN_WAKE => {}
                        TOKEN_STOP => stop = true,
                        TOKEN_LISTENER => tcp.accept(&shared.poller, now),
                        token => tcp.on_ready(&shared.poller, token, ev.events, now, &mut frames),
                    }
                }
                if tick {
                    tcp.sweep(&shared.poller, now);
                }
                closed = tcp.take_closed();
            }
        } else if ready > 0 && events.iter().any(|e| e.token == TOKEN_STOP) {
            stop = true;
        }
        if stop {
            break;
        }
        let tick = now.duration_since(last_tick) >= TICK || deadline.is_some_and(|d| now >= d);
        if n == 0 && !tick && frames.is_empty() && closed.is_empty() {
            continue;
        }
        {
            let mut st = shared.state.lock();
            let st = &mut *st;
            let early_at = early_at(&shared);
            for addr in closed.drain(..) {
                st.router.forget_remote(Remote::tcp(addr));
            }
            for (from, data) in frames.iter() {
                let result = catch_unwind(AssertUnwindSafe(|| {
                    if st.router.handle_datagram(now, Remote::tcp(from), data, &mut w.out) {
                        proven.push(from);
                    }
                }));
                if let Err(e) = result {
                    on_io_panic(&shared, st, &*e);
                }
                if w.out.transmits.len() >= early_at {
                    w.dispatch(&shared);
                }
            }
            w.route_udp(&shared, st, n, now, early_at);
            if tick {
                if let Err(e) = catch_unwind(AssertUnwindSafe(|| st.router.handle_timeout(now, &mut w.out))) {
                    on_io_panic(&shared, st, &*e);
                }
            }
            let next = shared.timer_ns(st.router.poll_timeout());
            shared.timer_at.store(next, Ordering::Release);
            shared.signal(st, Some(0));
        }
        if !proven.is_empty() {
            if let Some(tcp) = &shared.tcp {
                let mut tcp = tcp.lock();
                for addr in proven.drain(..) {
                    tcp.note_stun(addr, now);
                }
            }
        }
        if tick {
            last_tick = now;
        }
        w.dispatch(&shared);
        w.run_shares(&shared);
    }
}

/// The plain/pipe sockets' thread (plain_io.rs): each batch read from a transport's own
/// socket goes to the router under the lock, like the I/O thread's, then out.
fn plain_thread(shared: Arc<Shared>) {
    let mut out = Output::new();
    shared.plain.run(&shared.stop, |th, rtcp_port, batch, n| {
        let now = Instant::now();
        {
            let mut st = shared.state.lock();
            let st = &mut *st;
            for i in 0..n {
                let result = catch_unwind(AssertUnwindSafe(|| {
                    if let Some((from, data, truncated)) = batch.get(i) {
                        if truncated {
                            st.router.count_drop(DropReason::Truncated, 1);
                        } else if rtcp_port {
                            st.router.handle_plain_rtcp_datagram(now, th, from, data, &mut out);
                        } else {
                            st.router.handle_plain_datagram(now, th, from, data, &mut out);
                        }
                    }
                }));
                if let Err(e) = result {
                    on_io_panic(&shared, st, &*e);
                }
            }
            shared.signal(st, None);
        }
        shared.send(&mut out);
    });
}

/// Count a panic caught on the I/O thread and wake Python so it logs it.
/// UDP GRO on every socket of `sockets` if `want`: (on, refused). All or none: if the kernel
/// refuses it on one, it is turned off again on those that took it (a socket with GRO must
/// be read with GRO-sized buffers).
fn enable_gro(sockets: &[UdpSocket], want: bool) -> (bool, bool) {
    if !want {
        return (false, false);
    }
    let fds: Vec<RawFd> = sockets.iter().map(|s| s.as_raw_fd()).collect();
    let on = io::set_gro_all(&fds);
    (on, !on)
}

fn on_io_panic(shared: &Shared, st: &mut State, e: &(dyn std::any::Any + Send)) {
    st.router.count_drop(DropReason::Panic, 1);
    st.last_panic = Some(panic_message(e));
    st.signalled = true;
    shared.up_fd.set();
}

fn router_err(e: RouterError) -> PyErr {
    match e {
        RouterError::Unknown(m) => PyKeyError::new_err(m),
        RouterError::Invalid(m) => PyValueError::new_err(m),
    }
}

fn parse_addr(ip: &str, port: u16) -> PyResult<SocketAddr> {
    let ip: IpAddr = ip.parse().map_err(|_| PyValueError::new_err(format!("bad IP address {ip:?}")))?;
    Ok(SocketAddr::new(ip, port))
}

/// A remote from Python: ip, port and "udp" or "tcp".
fn parse_remote(ip: &str, port: u16, protocol: &str) -> PyResult<Remote> {
    let via = Via::from_name(protocol).ok_or_else(|| PyValueError::new_err(format!("bad protocol {protocol:?}")))?;
    Ok(Remote { addr: parse_addr(ip, port)?, via })
}

/// The UDP sockets (one per worker, `io::bind_group`) and, with `tcp`, a TCP listener on the
/// same port number. Port 0: the OS picks the UDP port; if TCP cannot have that number, try
/// another.
fn bind_both(host: &str, port: u16, tcp: bool, workers: usize) -> PyResult<(Vec<UdpSocket>, Option<std::net::TcpListener>)> {
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

// ---------------------------------------------------------------------------------------
// Specs: the router's own types (FromPyObject, router/spec.rs); a failure is a ValueError

/// Take a spec (`what`: "producer spec", "consumer spec") from a Python dict.
fn extract_spec<T>(v: &Bound<'_, PyAny>, what: &str) -> PyResult<T>
where
    T: for<'a, 'py> FromPyObject<'a, 'py, Error = PyErr>,
{
    if !v.is_instance_of::<PyDict>() {
        return Err(PyValueError::new_err(format!("{what}: expected a dict")));
    }
    v.extract::<T>().map_err(|e| spec_error(v.py(), what, e))
}

/// One message for an extraction failure and its causes ("producer spec: failed to extract
/// field ProducerSpec.codecs: failed to extract field CodecSpec.payload_type: …").
fn spec_error(py: Python<'_>, what: &str, e: PyErr) -> PyErr {
    let mut msg = what.to_owned();
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.is_instance_of::<PyKeyError>(py) {
            msg.push_str(&format!(": missing key {}", e.value(py)));
        } else {
            msg.push_str(&format!(": {}", e.value(py)));
        }
        cause = e.cause(py);
    }
    PyValueError::new_err(msg)
}

/// A removal's answer for Python (`Removed` in pysfu/_native.pyi).
fn removed_dict<'py>(py: Python<'py>, removed: &Removed) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("producers", &removed.producers)?;
    d.set_item("consumers", &removed.consumers)?;
    Ok(d)
}

// ---------------------------------------------------------------------------------------

/// The data plane: worker threads with a UDP socket each on one port, the forwarding router.
#[pyclass(frozen, module = "pysfu._native")]
pub struct Engine {
    port: u16,
    up_raw_fd: i32,
    inner: Mutex<Option<Running>>,
}

/// A started engine: its shared state and worker threads.
type Running = (Arc<Shared>, Vec<JoinHandle<()>>);

impl Engine {
    fn shared(&self) -> PyResult<Arc<Shared>> {
        match &*self.inner.lock() {
            Some((s, _)) => Ok(s.clone()),
            None => Err(PyValueError::new_err("engine is closed")),
        }
    }

    /// Run a router control call with the GIL released, then send what it produced.
    fn control<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Router, Instant, &mut Output) -> Result<T, RouterError> + Send,
    ) -> PyResult<T> {
        let shared = self.shared()?;
        py.detach(move || {
            let mut out = Output::new();
            let r = {
                let mut st = shared.state.lock();
                let r = catch_unwind(AssertUnwindSafe(|| f(&mut st.router, Instant::now(), &mut out)));
                shared.publish_keys(&mut st);
                match r {
                    Ok(r) => r,
                    Err(_) => {
                        st.router.count_drop(DropReason::Panic, 1);
                        Err(RouterError::Invalid("internal error (panic) in engine call".into()))
                    }
                }
            };
            shared.send(&mut out);
            r
        })
        .map_err(router_err)
    }

    fn shutdown(&self) {
        let taken = self.inner.lock().take();
        if let Some((shared, threads)) = taken {
            shared.stop.store(true, Ordering::Release);
            shared.stop_fd.set();
            for thread in threads {
                let _ = thread.join();
            }
            shared.plain.join();
            // Dropping the last Arc closes the socket and both fds.
            drop(shared);
        }
    }
}

impl Engine {
    /// `add_plain_transport`'s work; `flags`: (comedia, srtp, rtcp_mux).
    fn open_plain(&self, py: Python<'_>, handle: Handle, host: &str, ports: (u16, u16), flags: (bool, bool, bool)) -> PyResult<(u16, Option<u16>)> {
        let ((port_min, port_max), (comedia, srtp, rtcp_mux)) = (ports, flags);
        let shared = self.shared()?;
        let host = host.to_owned();
        let seed = os_seed();
        let ((via, port), rtcp) = py
            .detach(|| match rtcp_mux {
                true => shared.plain.open(handle, &host, port_min, port_max, seed).map(|rtp| (rtp, None)),
                false => shared.plain.open_pair(handle, &host, port_min, port_max, seed).map(|p| (p.rtp, Some(p.rtcp))),
            })
            .map_err(|e| PyValueError::new_err(format!("cannot bind a plain transport socket on {host} in {port_min}-{port_max}: {e}")))?;
        let made = self.control(py, move |r, _, _| {
            r.add_plain_transport(handle, via, comedia, srtp)?;
            let split = rtcp.map_or(Ok(()), |(rtcp_via, _)| r.set_plain_rtcp_socket(handle, rtcp_via));
            if split.is_err() {
                let _ = r.remove_transport(handle);
            }
            split
        });
        if let Err(e) = made {
            shared.plain.close_transport(handle);
            return Err(e);
        }
        let s2 = shared.clone();
        shared
            .plain
            .ensure_thread(|| std::thread::Builder::new().name("pysfu-plain".into()).spawn(move || plain_thread(s2)))
            .map_err(|e| PyValueError::new_err(format!("cannot start the plain transports' thread: {e}")))?;
        Ok((port, rtcp.map(|(_, p)| p)))
    }
}

#[pymethods]
impl Engine {
    /// `udp`: read the UDP socket (it is bound either way: TCP shares its port number);
    /// `tcp`: listen for ICE-TCP connections on the same port number.
    #[new]
    /// `gso`: send bursts to one destination as UDP GSO messages where the kernel takes them.
    /// `workers`: I/O threads, each with its own UDP socket on the port (`workers.rs`);
    /// without UDP, one.
    /// `gro`: receive with UDP GRO (`io::set_gro`): coalesced buffers split into datagrams
    /// before the router; off for good (totals `groRefused`) where the kernel refuses it.
    /// `pin_workers`: with more than one worker and at least one per CPU this process may run
    /// on, pin worker i to the i-th of them (`affinity.rs`; `worker_stats()[i]["cpu"]`).
    #[pyo3(signature = (host = "127.0.0.1", port = 0, udp = true, tcp = true, gso = true, workers = 1, gro = false,
                        pin_workers = false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: &str,
        port: u16,
        udp: bool,
        tcp: bool,
        gso: bool,
        workers: usize,
        gro: bool,
        pin_workers: bool,
    ) -> PyResult<Self> {
        if !udp && !tcp {
            return Err(PyValueError::new_err("the engine needs UDP or TCP (or both)"));
        }
        if !(1..=MAX_WORKERS).contains(&workers) {
            return Err(PyValueError::new_err(format!("workers must be 1..={MAX_WORKERS}, not {workers}")));
        }
        let workers = if udp { workers } else { 1 };
        let (sockets, listener) = bind_both(host, port, tcp, workers)?;
        let port = sockets[0].local_addr().map_err(|e| PyValueError::new_err(e.to_string()))?.port();
        let (gro_on, gro_refused) = enable_gro(&sockets, gro && udp);
        let up_fd = EventFd::new().map_err(|e| PyValueError::new_err(format!("eventfd: {e}")))?;
        let stop_fd = EventFd::new().map_err(|e| PyValueError::new_err(format!("eventfd: {e}")))?;
        let poller = Poller::new().map_err(|e| PyValueError::new_err(format!("epoll: {e}")))?;
        let epoll_err = |e: std::io::Error| PyValueError::new_err(format!("epoll: {e}"));
        let reg = |fd: i32, token: u64| poller.add(fd, token, READABLE).map_err(epoll_err);
        let mut ios = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            let wake = EventFd::new().map_err(|e| PyValueError::new_err(format!("eventfd: {e}")))?;
            let own = if i == 0 { None } else { Some(Poller::new().map_err(epoll_err)?) };
            let set = own.as_ref().unwrap_or(&poller);
            if udp {
                set.add(socket.as_raw_fd(), TOKEN_UDP, READABLE).map_err(epoll_err)?;
            }
            set.add(wake.as_raw_fd(), TOKEN_WAKE, READABLE).map_err(epoll_err)?;
            if i > 0 {
                set.add(stop_fd.as_raw_fd(), TOKEN_STOP, READABLE).map_err(epoll_err)?;
            }
            ios.push(WorkerIo { socket, wake, poller: own, cpu: AtomicI64::new(-1) });
        }
        reg(stop_fd.as_raw_fd(), TOKEN_STOP)?;
        let tcp = listener.map(|l| TcpEdge::new(l, TOKEN_LISTENER));
        if let Some(t) = &tcp {
            reg(t.listener_fd(), TOKEN_LISTENER)?;
        }
        let up_raw_fd = up_fd.as_raw_fd();
        let plain = PlainSockets::new().map_err(|e| PyValueError::new_err(format!("epoll: {e}")))?;
        plain.watch_stop(stop_fd.as_raw_fd()).map_err(|e| PyValueError::new_err(format!("epoll: {e}")))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State { router: new_router(ios.len()), signalled: false, last_panic: None, panic_next: false }),
            mesh: Mesh::new(ios.len()),
            timer_at: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            workers: ios,
            udp,
            tcp: tcp.map(Mutex::new),
            poller,
            up_fd,
            stop_fd,
            stop: AtomicBool::new(false),
            send_failed: AtomicU64::new(0),
            plain,
            gso_on: AtomicBool::new(gso),
            gso: GsoCounters::default(),
            gro_on,
            gro: GroCounters { refused: AtomicU64::new(u64::from(gro_refused)), ..GroCounters::default() },
        });
        let mut threads = Vec::with_capacity(shared.workers.len());
        let allowed = if pin_workers { affinity::allowed_cpus() } else { Vec::new() };
        // Each worker reports once it has pinned itself: the engine is whole on return.
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        for me in 0..shared.workers.len() {
            let s2 = shared.clone();
            let cpu = affinity::cpu_for(me, s2.workers.len(), &allowed);
            let started_tx = started_tx.clone();
            // Every worker is named pysfu-io: metrics and benches sum the CPU of those threads.
            let spawned = std::thread::Builder::new().name("pysfu-io".into()).spawn(move || {
                if let Some(cpu) = cpu {
                    if affinity::pin_current(cpu).is_ok() {
                        s2.workers[me].cpu.store(cpu as i64, Ordering::Relaxed);
                    }
                }
                started_tx.send(()).ok();
                if me == 0 {
                    io_thread(s2)
                } else {
                    side_worker(s2, me)
                }
            });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    shared.stop.store(true, Ordering::Release);
                    shared.stop_fd.set();
                    threads.into_iter().for_each(|t| drop(t.join()));
                    return Err(PyValueError::new_err(format!("cannot start I/O thread: {e}")));
                }
            }
        }
        drop(started_tx);
        for _ in 0..threads.len() {
            if started.recv_timeout(Duration::from_secs(5)).is_err() {
                break; // a worker that never reports is not waited for forever
            }
        }
        Ok(Engine { port, up_raw_fd, inner: Mutex::new(Some((shared, threads))) })
    }

    /// I/O worker threads (sockets on the port).
    #[getter]
    fn workers(&self) -> PyResult<usize> {
        Ok(self.shared()?.workers.len())
    }

    /// The worker whose socket sends to UDP remote `ip`:`port` (`workers::owner`).
    fn sending_worker(&self, ip: &str, port: u16) -> PyResult<usize> {
        Ok(crate::workers::owner(&parse_addr(ip, port)?, self.shared()?.workers.len()))
    }

    /// Per worker (index = worker), datagrams: `received` from its socket, `sent` by its
    /// socket, `handedOff` to other workers, `taken` from its inbox, `inboxFull` dropped
    /// because its inbox was full, `inboxPeak` (batches waiting at most); `sealed` datagrams
    /// it protected for the transports it owns (several workers), `sealNoKey` and
    /// `sealFailed` those it dropped instead (no context for their keys; protection failed),
    /// `contexts` (outbound SRTP contexts it holds now: the transports it owns); `shares`
    /// (producer packets other workers left for its consumers), `sharesFull` (dropped: its
    /// share queue was full), `sharePeak` (shares waiting at most).
    fn worker_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let shared = self.shared()?;
        let list = PyList::empty(py);
        for i in 0..shared.mesh.workers() {
            let c = &shared.mesh.inbox(i).counters;
            let d = PyDict::new(py);
            for (k, v) in [
                ("received", &c.received),
                ("sent", &c.sent),
                ("handedOff", &c.handed_off),
                ("taken", &c.taken),
                ("inboxFull", &c.inbox_full),
                ("inboxPeak", &c.inbox_peak),
                ("sealed", &c.sealed),
                ("sealNoKey", &c.seal_no_key),
                ("sealFailed", &c.seal_failed),
                ("contexts", &c.contexts),
                ("shares", &c.shares),
                ("sharesFull", &c.shares_full),
                ("sharePeak", &c.share_peak),
            ] {
                d.set_item(k, v.load(Ordering::Relaxed))?;
            }
            let cpu = shared.workers[i].cpu.load(Ordering::Relaxed);
            d.set_item("cpu", (cpu >= 0).then_some(cpu))?;
            list.append(d)?;
        }
        Ok(list)
    }

    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// UDP GRO in use (the setting, unless the kernel refused it).
    #[getter]
    fn gro(&self) -> PyResult<bool> {
        Ok(self.shared()?.gro_on)
    }

    /// UDP GSO in use now (the setting, unless the kernel refused it since).
    #[getter]
    fn gso(&self) -> PyResult<bool> {
        Ok(self.shared()?.gso_on.load(Ordering::Relaxed))
    }

    /// Test hook: SO_NO_CHECK on the UDP socket (no IPv4 UDP checksums), with which the
    /// kernel refuses GSO messages (EINVAL): exercises the fallback on a real socket.
    fn _test_refuse_gso(&self) -> PyResult<()> {
        let shared = self.shared()?;
        for w in &shared.workers {
            io::setsockopt_int(w.socket.as_raw_fd(), libc::SO_NO_CHECK, 1)
                .map_err(|e| PyValueError::new_err(format!("SO_NO_CHECK: {e}")))?;
        }
        Ok(())
    }

    /// A file descriptor that is readable while `drain()` has items.
    fn fileno(&self) -> PyResult<i32> {
        self.shared()?;
        Ok(self.up_raw_fd)
    }

    /// Take every queued STUN/DTLS datagram: (kind, transport, remote_ip, remote_port, data,
    /// protocol), protocol "udp" or "tcp".
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let shared = self.shared()?;
        let items = py.detach(|| {
            let mut st = shared.state.lock();
            let items = st.router.take_upcalls();
            shared.up_fd.reset();
            st.signalled = false;
            items
        });
        let list = PyList::empty(py);
        for u in items {
            let t = PyTuple::new(
                py,
                [
                    u.kind.name().into_pyobject(py)?.into_any(),
                    u.transport.into_pyobject(py)?.into_any(),
                    u.from.addr.ip().to_string().into_pyobject(py)?.into_any(),
                    u.from.addr.port().into_pyobject(py)?.into_any(),
                    PyBytes::new(py, &u.data).into_any(),
                    u.from.via.name().into_pyobject(py)?.into_any(),
                ],
            )?;
            list.append(t)?;
        }
        Ok(list)
    }

    /// Send a STUN/DTLS datagram for `transport` to a remote ("udp": from the engine's port;
    /// "tcp": on that remote's connection, framed).
    #[pyo3(signature = (transport, ip, port, data, protocol = "udp"))]
    fn send(&self, py: Python<'_>, transport: Handle, ip: &str, port: u16, data: &[u8], protocol: &str) -> PyResult<()> {
        let dest = parse_remote(ip, port, protocol)?;
        let n = data.len();
        let shared = self.shared()?;
        let data = data.to_vec();
        py.detach(move || {
            shared.state.lock().router.note_python_send(transport, n)?;
            shared.send_one(dest, &data);
            Ok(())
        })
        .map_err(router_err)
    }

    /// Many DTLS datagrams in one call (a data channel message fanned out to its data
    /// consumers' transports): `(transport, ip, port, data)` each; one lock, sendmmsg batches.
    /// Datagrams of transports the engine no longer has are skipped. Returns how many went.
    fn send_many(&self, py: Python<'_>, items: Vec<(Handle, String, u16, Vec<u8>, String)>) -> PyResult<usize> {
        let mut batch = Vec::with_capacity(items.len());
        for (h, ip, port, data, protocol) in items {
            batch.push((h, parse_remote(&ip, port, &protocol)?, data));
        }
        let shared = self.shared()?;
        Ok(py.detach(move || {
            {
                let mut st = shared.state.lock();
                batch.retain(|(h, _, d)| st.router.note_python_send(*h, d.len()).is_ok());
            }
            let udp = batch.iter().filter(|(_, r, _)| r.via == Via::Udp);
            let r = io::send_batch(shared.socket().as_raw_fd(), udp.map(|(_, r, d)| (&r.addr, d.as_slice())));
            if r.failed > 0 {
                shared.send_failed.fetch_add(r.failed as u64, Ordering::Relaxed);
            }
            if batch.iter().any(|(_, r, _)| r.via == Via::Tcp) {
                shared.send_tcp(batch.iter().filter(|(_, r, _)| r.via == Via::Tcp).map(|(_, r, d)| (r.addr, d.as_slice())));
            }
            batch.len()
        }))
    }

    /// A transport with local ICE credentials: STUN requests reach Python only with a valid
    /// MESSAGE-INTEGRITY keyed with `ice_password`.
    fn add_transport(&self, py: Python<'_>, handle: Handle, local_ufrag: String, ice_password: String) -> PyResult<()> {
        self.control(py, move |r, _, _| r.add_transport(handle, &local_ufrag, &ice_password))
    }

    /// RFC 7675 consent timeout for every transport, seconds (<= 0: consent never expires).
    fn set_consent_timeout(&self, py: Python<'_>, seconds: f64) -> PyResult<()> {
        let limit = (seconds > 0.0 && seconds.is_finite()).then(|| Duration::from_secs_f64(seconds));
        self.control(py, move |r, _, _| {
            r.set_consent_timeout(limit);
            Ok(())
        })
    }

    /// ICE restart: new local credentials for `handle`; the old ones are refused from now
    /// on. Tuples, SRTP keys, producers and consumers are kept.
    fn set_ice_credentials(&self, py: Python<'_>, handle: Handle, local_ufrag: String, ice_password: String) -> PyResult<()> {
        self.control(py, move |r, _, _| r.set_ice_credentials(handle, &local_ufrag, &ice_password))
    }

    #[pyo3(signature = (handle, ip, port, selected, protocol = "udp"))]
    fn bind_tuple(&self, py: Python<'_>, handle: Handle, ip: &str, port: u16, selected: bool, protocol: &str) -> PyResult<()> {
        let addr = parse_remote(ip, port, protocol)?;
        self.control(py, move |r, now, out| r.bind_tuple(now, handle, addr, selected, out))
    }

    /// SRTP keys (one object: `pysfu.dtls.SrtpKeys`, read by attribute); `remote`: the
    /// (ip, port) or (ip, port, protocol) the DTLS handshake completed with, which proves that tuple (media goes only
    /// to proven tuples; without it, the first authenticated SRTP/SRTCP packet from the
    /// nominated tuple proves it).
    #[pyo3(signature = (handle, keys, remote = None))]
    fn set_srtp(&self, py: Python<'_>, handle: Handle, keys: &Bound<'_, PyAny>, remote: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let keys: SrtpKeys = keys.extract().map_err(|e| spec_error(py, "srtp keys", e))?;
        let remote = match remote {
            None => None,
            Some(r) if r.is_none() => None,
            Some(r) => Some(match r.extract::<(String, u16)>() {
                Ok((ip, port)) => Remote::udp(parse_addr(&ip, port)?),
                Err(_) => {
                    let (ip, port, protocol): (String, u16, String) = r.extract()?;
                    parse_remote(&ip, port, &protocol)?
                }
            }),
        };
        self.control(py, move |r, now, out| r.set_srtp(now, handle, &keys, remote, out))
    }

    /// Removes the transport with its producers and consumers (and their consumers): what
    /// went, as {"producers": [...], "consumers": [...]}.
    fn remove_transport<'py>(&self, py: Python<'py>, handle: Handle) -> PyResult<Bound<'py, PyDict>> {
        let removed = self.control(py, move |r, _, _| r.remove_transport(handle))?;
        // A plain/pipe transport's own socket closes with it (its port is free again).
        self.shared()?.plain.close_transport(handle);
        removed_dict(py, &removed)
    }

    /// A plain (or pipe) transport: RTP/RTCP without ICE/DTLS on a UDP socket of its own,
    /// bound on `host` at a free port of `ports` (first, last). `comedia`: the remote address
    /// is learnt from the first valid packet; `srtp`: keys come with `connect_plain` (else
    /// plain RTP); `rtcp_mux` false: a second socket for RTCP (`open_pair`: port + 1 where
    /// the range allows). The ports: (RTP, RTCP if not muxed).
    #[pyo3(signature = (handle, host, ports, comedia = false, srtp = false, rtcp_mux = true))]
    fn add_plain_transport(&self, handle: Handle, host: &str, ports: (u16, u16), comedia: bool, srtp: bool, rtcp_mux: bool) -> PyResult<(u16, Option<u16>)> {
        Python::attach(|py| self.open_plain(py, handle, host, ports, (comedia, srtp, rtcp_mux)))
    }

    /// The remote end of a plain transport: its address (`ip`, `port`; none for comedia),
    /// the remote RTCP port without rtcp-mux (`rtcp_port`), and SRTP keys
    /// (`pysfu.dtls.SrtpKeys`-like, read by attribute), if it uses SRTP.
    #[pyo3(signature = (handle, ip = None, port = None, keys = None, rtcp_port = None))]
    fn connect_plain(&self, py: Python<'_>, handle: Handle, ip: Option<String>, port: Option<u16>, keys: Option<&Bound<'_, PyAny>>, rtcp_port: Option<u16>) -> PyResult<()> {
        let remote = match (ip, port) {
            (Some(ip), Some(port)) => Some(parse_addr(&ip, port)?),
            (None, None) => None,
            _ => return Err(PyValueError::new_err("ip and port go together")),
        };
        let keys: Option<SrtpKeys> = keys.map(|k| k.extract().map_err(|e| spec_error(py, "srtp keys", e))).transpose()?;
        self.control(py, move |r, now, out| r.connect_plain_split(now, handle, remote, rtcp_port, keys.as_ref(), out))
    }

    /// Ask consumer `handle`'s producer for a key frame (for receivers without RTCP).
    fn request_key_frame(&self, py: Python<'_>, handle: Handle) -> PyResult<()> {
        self.control(py, move |r, now, out| r.request_consumer_key_frame(now, handle, out))
    }

    /// Sockets of plain/pipe transports open now (each closes with its transport).
    fn plain_sockets(&self) -> PyResult<usize> {
        Ok(self.shared()?.plain.len())
    }

    fn add_producer(&self, py: Python<'_>, handle: Handle, transport: Handle, spec: &Bound<'_, PyAny>) -> PyResult<()> {
        let spec: ProducerSpec = extract_spec(spec, "producer spec")?;
        self.control(py, move |r, now, _| r.add_producer(now, handle, transport, spec))
    }

    /// Removes the producer and its consumers: what went, as for `remove_transport`.
    fn remove_producer<'py>(&self, py: Python<'py>, handle: Handle) -> PyResult<Bound<'py, PyDict>> {
        let removed = self.control(py, move |r, _, _| r.remove_producer(handle))?;
        removed_dict(py, &removed)
    }

    fn pause_producer(&self, py: Python<'_>, handle: Handle) -> PyResult<()> {
        self.control(py, move |r, _, _| r.pause_producer(handle))
    }

    fn resume_producer(&self, py: Python<'_>, handle: Handle) -> PyResult<()> {
        self.control(py, move |r, now, out| r.resume_producer(now, handle, out))
    }

    fn add_consumer(
        &self,
        py: Python<'_>,
        handle: Handle,
        transport: Handle,
        producer: Handle,
        spec: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let spec: ConsumerSpec = extract_spec(spec, "consumer spec")?;
        self.control(py, move |r, now, out| r.add_consumer(now, handle, transport, producer, spec, out))
    }

    fn remove_consumer(&self, py: Python<'_>, handle: Handle) -> PyResult<()> {
        self.control(py, move |r, _, _| r.remove_consumer(handle))
    }

    fn pause_consumer(&self, py: Python<'_>, handle: Handle) -> PyResult<()> {
        self.control(py, move |r, _, _| r.pause_consumer(handle))
    }

    fn resume_consumer(&self, py: Python<'_>, handle: Handle) -> PyResult<()> {
        self.control(py, move |r, now, out| r.resume_consumer(now, handle, out))
    }

    /// Simulcast consumer: receive at most spatial layer `spatial`; returns the (clamped)
    /// preferred (spatial, temporal) layers. The switch happens at the target's key frame.
    #[pyo3(signature = (handle, spatial, temporal = None))]
    fn set_preferred_layers(&self, py: Python<'_>, handle: Handle, spatial: usize, temporal: Option<u8>) -> PyResult<(usize, u8)> {
        self.control(py, move |r, now, out| r.set_preferred_layers(now, handle, spatial, temporal, out))
    }

    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.control(py, |r, _, _| Ok(r.counts()))?;
        let d = PyDict::new(py);
        d.set_item("transports", c.transports)?;
        d.set_item("producers", c.producers)?;
        d.set_item("consumers", c.consumers)?;
        d.set_item("streams", c.streams)?;
        d.set_item("tuples", c.tuples)?;
        let shared = self.shared()?;
        let tcp = py.detach(|| shared.tcp.as_ref().map_or(0, |t| t.lock().connections()));
        d.set_item("tcp_connections", tcp)?;
        Ok(d)
    }

    fn stats<'py>(&self, py: Python<'py>, handle: Handle) -> PyResult<Bound<'py, PyDict>> {
        let v = self.control(py, move |r, now, _| r.stats(now, handle))?;
        let d = PyDict::new(py);
        for (k, v) in v {
            match v {
                StatValue::Int(i) => d.set_item(k, i)?,
                StatValue::Str(s) => d.set_item(k, s)?,
                StatValue::Bool(b) => d.set_item(k, b)?,
                StatValue::Float(f) => d.set_item(k, f)?,
            }
        }
        Ok(d)
    }

    /// Per-stream RTP statistics (loss, NACKs, PLIs, RTT, jitter, bitrate): a list of dicts.
    fn rtp_stats<'py>(&self, py: Python<'py>, handle: Handle) -> PyResult<Bound<'py, PyList>> {
        let records = self.control(py, move |r, now, _| r.rtp_stats(now, handle))?;
        let list = PyList::empty(py);
        for rec in records {
            let d = PyDict::new(py);
            for (k, v) in rec {
                match v {
                    StatValue::Int(i) => d.set_item(k, i)?,
                    StatValue::Str(s) => d.set_item(k, s)?,
                    StatValue::Bool(b) => d.set_item(k, b)?,
                    StatValue::Float(f) => d.set_item(k, f)?,
                }
            }
            list.append(d)?;
        }
        Ok(list)
    }

    /// Engine-wide counters that never go down (removed objects' counts stay in).
    fn totals<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let t = self.control(py, |r, _, _| Ok(r.totals()))?;
        let d = PyDict::new(py);
        for (k, v) in t.items() {
            d.set_item(k, v)?;
        }
        let shared = self.shared()?;
        let accepted = py.detach(|| shared.tcp.as_ref().map_or(0, |t| t.lock().accepted));
        d.set_item("tcpConnectionsAccepted", accepted)?;
        d.set_item("gsoMessages", shared.gso.messages.load(Ordering::Relaxed))?;
        d.set_item("gsoDatagrams", shared.gso.datagrams.load(Ordering::Relaxed))?;
        d.set_item("gsoRefused", shared.gso.refused.load(Ordering::Relaxed))?;
        d.set_item("groBuffers", shared.gro.buffers.load(Ordering::Relaxed))?;
        d.set_item("groDatagrams", shared.gro.datagrams.load(Ordering::Relaxed))?;
        d.set_item("groRefused", shared.gro.refused.load(Ordering::Relaxed))?;
        Ok(d)
    }

    fn drops<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let shared = self.shared()?;
        let drops = self.control(py, |r, _, _| Ok(r.drops().clone()))?;
        let d = PyDict::new(py);
        for (k, v) in drops.iter() {
            let v = if k == DropReason::SendFailed.name() { v + shared.send_failed.load(Ordering::Relaxed) } else { v };
            d.set_item(k, v)?;
        }
        // What the TCP edge refused, dropped and closed (zeros without TCP: stable keys).
        let tcp = py.detach(|| shared.tcp.as_ref().map(|t| t.lock().counters).unwrap_or_default());
        for (k, v) in tcp.iter() {
            d.set_item(k, v)?;
        }
        // Datagrams a worker made for another worker whose inbox was full (workers.rs).
        d.set_item("workerInboxFull", shared.mesh.inbox_full())?;
        d.set_item("workerSharesFull", shared.mesh.shares_full())?;
        // Datagrams an owner worker could not protect (sealing.rs): no keys (the transport
        // went or was re-keyed meanwhile), or protection failed.
        let (no_key, failed) = shared.mesh.seal_drops();
        d.set_item("workerSealNoKey", no_key)?;
        d.set_item("workerSealFailed", failed)?;
        Ok(d)
    }

    /// The message of the last panic caught on the I/O thread since the previous call, if any.
    fn take_panic(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let shared = self.shared()?;
        Ok(py.detach(|| shared.state.lock().last_panic.take()))
    }

    /// Test hook for panic safety: `"io"` makes the I/O thread panic on the next datagram it
    /// processes; `"control"` panics inside a control call (→ ValueError); `"pyo3"` panics in
    /// the method itself (→ pyo3 PanicException).
    fn _test_panic(&self, py: Python<'_>, place: &str) -> PyResult<()> {
        match place {
            "io" => {
                self.shared()?.state.lock().panic_next = true;
                Ok(())
            }
            "control" => self.control(py, |_, _, _| -> Result<(), RouterError> { panic!("test panic in a control call") }),
            "pyo3" => panic!("test panic in an Engine method"),
            other => Err(PyValueError::new_err(format!("unknown panic place {other:?}"))),
        }
    }

    /// Stop the I/O thread and close the socket (the port is free afterwards). Idempotent.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.shutdown());
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _a: &Bound<'_, PyAny>, _b: &Bound<'_, PyAny>, _c: &Bound<'_, PyAny>) {
        self.close(py);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
