//! The engine's threads: worker 0 (UDP, TCP, the router's timers), the other workers, and
//! the plain/pipe sockets' thread.

use super::*;

/// Periodic router work (key frame re-requests) at least this often.
const TICK: Duration = Duration::from_millis(50);
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
pub(super) fn io_thread(shared: Arc<Shared>) {
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
pub(super) fn plain_thread(shared: Arc<Shared>) {
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
