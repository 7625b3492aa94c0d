//! The engine's threads: worker 0 (UDP, TCP, the router's timers), the other workers, and
//! the plain/pipe sockets' thread.

use super::*;

/// Periodic router work (key frame re-requests) at least this often.
const TICK: Duration = Duration::from_millis(50);
/// An idle worker other than 0 looks at its queues at least this often. Everything it serves
/// wakes it (datagrams, shares, batches and key events in its inbox, stop), so this is a
/// safety net only: on a VM a sleep ended by a timer costs tens of µs of CPU
/// (`pysfu-wakecost`), 20 a second per worker with the 50 ms tick.
const SIDE_IDLE: Duration = Duration::from_secs(1);
/// While UDP keeps the thread busy, TCP readiness is looked at this often (no extra syscall
/// per UDP batch).
const TCP_POLL_EVERY: Duration = Duration::from_millis(1);

/// A worker other than 0: its socket and inbox only (TCP, timers and the listener are
/// worker 0's).
pub(super) fn side_worker(shared: Arc<Shared>, me: usize) {
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
            poller.wait(&mut events, SIDE_IDLE.as_millis() as i32);
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
            let mut st = shared.lock_for(me);
            let st = &mut *st;
            w.route_udp(&shared, st, n, now, early_at(&shared));
            shared.note_timer(st);
            shared.signal(st, Some(me));
        }
        w.dispatch(&shared);
        // The shares this batch left for this worker's own consumers.
        w.run_shares(&shared);
    }
}

/// Start one thread per worker (named pysfu-io: metrics and benches sum the CPU of those
/// threads), each pinned to its CPU first if `pin_workers`; return once each has reported
/// (or after 5 s). If one cannot be started, the others are stopped and joined.
pub(super) fn spawn_workers(shared: &Arc<Shared>, pin_workers: bool) -> PyResult<Vec<JoinHandle<()>>> {
    let mut threads = Vec::with_capacity(shared.workers.len());
    let allowed = if pin_workers { affinity::allowed_cpus() } else { Vec::new() };
    // Each worker reports once it has pinned itself: the engine is whole on return.
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    for me in 0..shared.workers.len() {
        let s2 = shared.clone();
        let cpu = affinity::cpu_for(me, s2.workers.len(), &allowed);
        let started_tx = started_tx.clone();
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
    Ok(threads)
}

/// Worker 0: its UDP socket, TCP (listener and connections), the router's timers.
pub(super) fn io_thread(shared: Arc<Shared>) {
    let mut z = Zero::new(&shared);
    loop {
        // The router's next timer (NACK retries, reports), refreshed after each locked
        // section here and lowered by the other workers.
        let deadline = shared.next_timer();
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        z.w.absorb_returns(&shared);
        let n = if shared.udp { z.w.batch.recv(z.w.fd).unwrap_or_default() } else { 0 };
        let ready = z.wait(&shared, n, deadline);
        if ready > 0 && z.events.iter().any(|e| e.token == TOKEN_WAKE) {
            shared.workers[0].wake.reset();
        }
        z.w.drain_inbox(&shared);
        z.w.run_shares(&shared);
        let now = Instant::now();
        z.frames.clear();
        let Some(closed) = z.poll_tcp(&shared, ready, n, now) else { break };
        let tick = now.duration_since(z.last_tick) >= TICK || deadline.is_some_and(|d| now >= d);
        if n == 0 && !tick && z.frames.is_empty() && closed.is_empty() {
            continue;
        }
        z.route(&shared, n, now, tick, closed);
        if tick {
            z.last_tick = now;
        }
        z.w.dispatch(&shared);
        z.w.run_shares(&shared);
    }
}

/// Worker 0's loop state: its worker, its epoll events, the TCP frames read and the
/// connections whose STUN the router proved, and when it last ticked and looked at TCP.
struct Zero {
    w: Worker,
    events: Events,
    frames: Frames,
    proven: Vec<std::net::SocketAddr>,
    last_tick: Instant,
    last_tcp_poll: Instant,
}

impl Zero {
    fn new(shared: &Shared) -> Self {
        let now = Instant::now();
        Zero {
            w: Worker::new(shared, 0),
            events: Events::new(256),
            frames: Frames::default(),
            proven: Vec::new(),
            last_tick: now,
            last_tcp_poll: now,
        }
    }

    /// Wait when UDP is idle (`n` = 0: until the tick or the router's `deadline`); otherwise
    /// only glance at TCP now and then. The events ready.
    fn wait(&mut self, shared: &Shared, n: usize, deadline: Option<Instant>) -> usize {
        if n == 0 {
            let mut wait = TICK.saturating_sub(self.last_tick.elapsed());
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(Instant::now()));
            }
            // Rounded up: a wait cut to whole ms ends before the tick or the deadline, and
            // the loop would sleep again for the rest (two timer wake-ups instead of one).
            let ms = wait.as_micros().div_ceil(1000).clamp(1, 1000) as i32;
            shared.poller.wait(&mut self.events, ms)
        } else if shared.tcp.is_some() && self.last_tcp_poll.elapsed() >= TCP_POLL_EVERY {
            shared.poller.wait(&mut self.events, 0)
        } else {
            self.events.clear();
            0
        }
    }

    /// Accept, read (into `frames`) and sweep TCP connections as the events and the tick say:
    /// the addresses of the connections closed, or None when the engine is stopping.
    fn poll_tcp(&mut self, shared: &Shared, ready: usize, n: usize, now: Instant) -> Option<Vec<std::net::SocketAddr>> {
        let Some(tcp) = &shared.tcp else {
            let stop = ready > 0 && self.events.iter().any(|e| e.token == TOKEN_STOP);
            return (!stop).then(Vec::new);
        };
        if n == 0 || now.duration_since(self.last_tcp_poll) >= TCP_POLL_EVERY {
            self.last_tcp_poll = now; // polled just now (waited, or looked)
        }
        let tick = now.duration_since(self.last_tick) >= TICK;
        let tcp_events = ready > 0 && self.events.iter().any(|e| e.token != TOKEN_UDP && e.token != TOKEN_WAKE);
        if !tcp_events && !tick {
            return Some(Vec::new());
        }
        let mut tcp = tcp.lock();
        let mut stop = false;
        for ev in self.events.iter() {
            match ev.token {
                TOKEN_UDP | TOKEN_WAKE => {}
                TOKEN_STOP => stop = true,
                TOKEN_LISTENER => tcp.accept(&shared.poller, now),
                token => tcp.on_ready(&shared.poller, token, ev.events, now, &mut self.frames),
            }
        }
        if tick {
            tcp.sweep(&shared.poller, now);
        }
        let closed = tcp.take_closed();
        (!stop).then_some(closed)
    }

    /// Under the router: the closed TCP connections forgotten, the TCP frames and the UDP
    /// batch (`n` datagrams) routed, the timers run if `tick`; then the STUN the router
    /// proved on TCP connections noted on them.
    fn route(&mut self, shared: &Shared, n: usize, now: Instant, tick: bool, closed: Vec<std::net::SocketAddr>) {
        {
            let mut st = shared.lock_for(0);
            let st = &mut *st;
            let early_at = early_at(shared);
            for addr in closed {
                st.router.forget_remote(Remote::tcp(addr));
            }
            for (from, data) in self.frames.iter() {
                let (w, proven) = (&mut self.w, &mut self.proven);
                let result = catch_unwind(AssertUnwindSafe(|| {
                    if st.router.handle_datagram(now, Remote::tcp(from), data, &mut w.out) {
                        proven.push(from);
                    }
                }));
                if let Err(e) = result {
                    on_io_panic(st, &*e);
                }
                if self.w.out.transmits.len() >= early_at {
                    self.w.dispatch(shared);
                }
            }
            self.w.route_udp(shared, st, n, now, early_at);
            if tick {
                if let Err(e) = catch_unwind(AssertUnwindSafe(|| st.router.handle_timeout(now, &mut self.w.out))) {
                    on_io_panic(st, &*e);
                }
            }
            let next = shared.timer_ns(st.router.poll_timeout());
            shared.timer_at.store(next, Ordering::Release);
            shared.signal(st, Some(0));
        }
        if !self.proven.is_empty() {
            if let Some(tcp) = &shared.tcp {
                let mut tcp = tcp.lock();
                for addr in self.proven.drain(..) {
                    tcp.note_stun(addr, now);
                }
            }
        }
    }
}

/// The plain/pipe sockets' thread (plain_io.rs): each batch read from a transport's own
/// socket goes to the router under the lock, like the I/O thread's, then out.
pub(super) fn plain_thread(shared: Arc<Shared>) {
    let mut out = Output::new();
    shared.plain.run(&shared.stop, |th, rtcp_port, batch, n| {
        let now = Instant::now();
        {
            let mut st = shared.lock();
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
                    on_io_panic(st, &*e);
                }
            }
            shared.signal(st, None);
        }
        shared.send(&mut out);
    });
}
