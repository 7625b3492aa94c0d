//! `pysfu._native.Engine`: the media workers (one UDP socket each on the rtc port, all in one
//! `SO_REUSEPORT` group), the TCP listener and its connections (ICE-TCP, `tcp.rs`), the
//! plain/pipe sockets' thread and the Python-facing control API.
//!
//! A worker's loop (`threads.rs`): recvmmsg batch → `Router` (under its mutex) → its
//! datagrams sealed and sent with sendmmsg outside the mutex (`worker.rs`); the consumers
//! other workers own are left to them as shares, which each runs in parts. TCP frames take
//! the same way, as datagrams from a `Remote` with `Via::Tcp`. Where a transmit goes is its
//! `Remote`'s `Via` (`Shared::send`): a UDP socket, or a TCP connection's bounded queue.
//! Python control calls (`api.rs`) take the mutex briefly with the GIL released. STUN/DTLS
//! datagrams for Python are queued in the router; an eventfd is readable while the queue is
//! non-empty, and `drain()` empties both.
//!
//! Files: this one, the state the threads share (`Shared`) and the constants; `worker.rs`,
//! one worker's buffers and steps; `threads.rs`, the thread bodies; `setup.rs`, binding the
//! port; `convert.rs`, Python-side conversions; `api.rs`, the `Engine` class.

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
use crate::workers::{Batch, Mesh, Partitioner, WorkerCounters, MAX_WORKERS, NO_WORKER};

mod api;
mod convert;
mod setup;
mod threads;
mod worker;

pub use api::Engine;
use convert::*;
use setup::*;
use threads::*;
use worker::*;

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
    /// Wake-ups decided under the lock, made once it is released (`Held`).
    wakes: Wakes,
}

/// Whom to wake once the router's lock is released: workers (one bit each: shares, key
/// events, an earlier timer for worker 0) and Python (the up fd). An eventfd write that wakes
/// a sleeping thread on another CPU is a syscall with a cross-CPU wake-up in it (10-19 µs of
/// its writer's time on the 2-vCPU VM of the benches): not something to do while every
/// other worker waits for the lock.
#[derive(Default, Clone, Copy)]
struct Wakes {
    workers: u64,
    up: bool,
}

impl Wakes {
    fn worker(&mut self, to: usize) {
        self.workers |= 1 << to.min(MAX_WORKERS - 1);
    }
}

/// The router's lock as held by a thread: on release the wake-ups it decided are made
/// (`Wakes`). A worker's hold (`Shared::lock_for`) also adds its wait for the lock and the
/// time held to its counters (`lock_wait_ns`, `router_ns`).
struct Held<'a> {
    st: Option<parking_lot::MutexGuard<'a, State>>,
    shared: &'a Shared,
    timed: Option<(Instant, &'a AtomicU64)>,
}

impl std::ops::Deref for Held<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.st.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.st.as_mut().expect("held until dropped")
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let Some(mut st) = self.st.take() else { return };
        let wakes = std::mem::take(&mut st.wakes);
        drop(st);
        if let Some((since, held)) = self.timed {
            WorkerCounters::lap(held, since);
        }
        self.shared.wake(wakes);
    }
}

/// How long a worker spins for the router's lock before sleeping on it (`Shared::lock_for`).
const LOCK_SPIN: Duration = Duration::from_micros(50);

/// `lock`, tried until `LOCK_SPIN` after `asked`.
fn spin_for<T>(lock: &Mutex<T>, asked: Instant) -> Option<parking_lot::MutexGuard<'_, T>> {
    loop {
        for _ in 0..64 {
            std::hint::spin_loop();
            if !lock.is_locked() {
                if let Some(g) = lock.try_lock() {
                    return Some(g);
                }
            }
        }
        if asked.elapsed() >= LOCK_SPIN {
            return None;
        }
    }
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


/// Count a panic caught on an I/O thread and wake Python (once the lock is released) so it
/// logs it.
fn on_io_panic(st: &mut State, e: &(dyn std::any::Any + Send)) {
    st.router.count_drop(DropReason::Panic, 1);
    st.last_panic = Some(panic_message(e));
    st.signalled = true;
    st.wakes.up = true;
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

    /// Queue the router's key events to their owner workers and wake those once the lock is
    /// released (a removed transport's context goes at once, not at the worker's next traffic
    /// or idle turn). Call before releasing the router lock of any call that may have
    /// produced some (`sealing.rs`).
    fn publish_keys(&self, st: &mut State) {
        for ev in st.router.take_key_events() {
            let to = self.mesh.push_key(ev);
            st.wakes.worker(to);
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
    /// The router's lock, for worker `me` (its wait and hold timed: `Held`). A worker finding
    /// it taken spins for it (up to `LOCK_SPIN`) before sleeping on it: the other worker holds
    /// it for a part of a fan-out (about 15 µs), and a sleep costs more (a futex wait and wake,
    /// the wake-up of its CPU).
    fn lock_for(&self, me: usize) -> Held<'_> {
        let asked = Instant::now();
        let st = self.state.try_lock().or_else(|| spin_for(&self.state, asked)).unwrap_or_else(|| self.state.lock());
        let c = &self.mesh.inbox(me).counters;
        let since = WorkerCounters::lap(&c.lock_wait_ns, asked);
        Held { st: Some(st), shared: self, timed: Some((since, &c.router_ns)) }
    }

    /// The router's lock for a thread that is not a worker (control calls, the plain
    /// thread): as `lock_for`, untimed.
    fn lock(&self) -> Held<'_> {
        Held { st: Some(self.state.lock()), shared: self, timed: None }
    }

    /// Make the wake-ups a released hold decided (`Wakes`).
    fn wake(&self, wakes: Wakes) {
        let mut bits = wakes.workers;
        while bits != 0 {
            let to = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if let Some(w) = self.workers.get(to) {
                w.wake.set();
            }
        }
        if wakes.up {
            self.up_fd.set();
        }
    }

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

    /// A worker other than 0 made the router's next timer (call with the lock): if earlier
    /// than worker 0 knows, tell it and wake it (once the lock is released).
    fn note_timer(&self, st: &mut State) {
        let ns = self.timer_ns(st.router.poll_timeout());
        if ns < self.timer_at.fetch_min(ns, Ordering::AcqRel) {
            st.wakes.worker(0);
        }
    }

    /// Queue the shares the router left to their workers (after the key events: a share's
    /// consumers' contexts are queued first) and wake them once the lock is released, except
    /// the calling worker `me` (it runs its own next). Call with the router lock.
    fn publish_shares(&self, st: &mut State, me: Option<usize>) {
        if !st.router.has_shares() {
            return;
        }
        for share in st.router.take_shares() {
            let to = share.to;
            if self.mesh.push_share(share) && Some(to) != me {
                st.wakes.worker(to);
            }
        }
    }

    /// Set the up fd (once the lock is released) if there is something to drain and it is
    /// not set yet; queue the key events and shares (`me`: the calling worker). Call with the
    /// lock.
    fn signal(&self, st: &mut State, me: Option<usize>) {
        self.publish_keys(st);
        self.publish_shares(st, me);
        if !st.signalled && st.router.has_upcalls() {
            st.signalled = true;
            st.wakes.up = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_spins_for_a_short_hold_and_gives_up_on_a_long_one() {
        let lock = Arc::new(Mutex::new(0u32));
        // Free: taken at once.
        assert!(spin_for(&lock, Instant::now()).is_some());
        // Held for longer than the spin: given up after LOCK_SPIN (the caller then sleeps).
        let held = lock.lock();
        let asked = Instant::now();
        assert!(spin_for(&lock, asked).is_none());
        assert!(asked.elapsed() >= LOCK_SPIN);
        drop(held);
        // Released by another thread while spinning: taken, the other thread's write seen.
        let (l2, (tx, rx)) = (lock.clone(), std::sync::mpsc::channel());
        let t = std::thread::spawn(move || {
            let mut g = l2.lock();
            tx.send(()).unwrap();
            std::thread::sleep(Duration::from_micros(20));
            *g = 7;
        });
        rx.recv().unwrap();
        let g = loop {
            // (Under a loaded machine the holder may be descheduled past LOCK_SPIN.)
            if let Some(g) = spin_for(&lock, Instant::now()) {
                break g;
            }
        };
        assert_eq!(*g, 7);
        drop(g);
        t.join().unwrap();
    }
}
