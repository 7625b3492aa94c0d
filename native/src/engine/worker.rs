//! One worker's buffers and its steps: receive and route a batch, run its shares in parts,
//! hand other workers' datagrams to them, seal and send its own.

use super::*;

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

/// One worker's buffers, reused for the life of its thread.
pub(super) struct Worker {
    pub(super) me: usize,
    pub(super) fd: RawFd,
    pub(super) batch: io::RecvBatch,
    pub(super) out: Output,
    pub(super) planner: Planner,
    pub(super) part: Partitioner,
    /// The outbound SRTP contexts of the transports this worker owns.
    pub(super) keys: Keyring,
    /// The shares being run (`run_shares`), each with its consumers once taken.
    pub(super) shares: Vec<(Share, Option<Arc<[Handle]>>)>,
}

impl Worker {
    pub(super) fn new(shared: &Shared, me: usize) -> Self {
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
    pub(super) fn apply_keys(&mut self, shared: &Shared) {
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
    pub(super) fn seal(keys: &mut Keyring, shared: &Shared, me: usize, transmits: &mut Vec<Transmit>) {
        let d = keys.seal(transmits, || shared.mesh.pop_key(me));
        shared.count_seals(me, keys, d);
    }

    /// Take back this worker's sent hand-offs: their buffers to the router output's pool,
    /// their vectors to the partitioner. Call with `out` empty.
    pub(super) fn absorb_returns(&mut self, shared: &Shared) {
        while let Some(mut v) = shared.mesh.take_returned(self.me) {
            self.out.transmits.append(&mut v);
            self.out.recycle();
            self.part.reuse(v);
        }
    }

    /// Send what other workers handed to this one, oldest first, from this worker's socket.
    pub(super) fn drain_inbox(&mut self, shared: &Shared) {
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
    pub(super) fn run_shares(&mut self, shared: &Shared) {
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
    pub(super) fn run_share_part(&mut self, shared: &Shared, from: usize) -> bool {
        let mut more = false;
        {
            let mut st = shared.lock_for(self.me);
            let st = &mut *st;
            let now = Instant::now();
            st.router.act_as(Some(self.me));
            let mut warmed = Warmed::default();
            for (share, list) in self.shares.iter_mut() {
                if from == 0 {
                    *list = st.router.share_consumers(share);
                }
                // Ask for this part's consumer state once per list (shares of one producer
                // share their list) before it is forwarded (`prefetch.rs`).
                if let Some(l) = list.as_deref().filter(|l| warmed.first_time(l.as_ptr() as usize)) {
                    st.router.warm_part(&l[from.min(l.len())..(from + SHARE_PART).min(l.len())]);
                }
                let Some(list) = list.as_deref() else { continue };
                let part = &list[from.min(list.len())..(from + SHARE_PART).min(list.len())];
                more |= from + SHARE_PART < list.len();
                if part.is_empty() {
                    continue;
                }
                let out = &mut self.out;
                if let Err(e) = catch_unwind(AssertUnwindSafe(|| st.router.run_share_part(now, share, part, out))) {
                    on_io_panic(st, &*e);
                }
            }
            st.router.act_as(None);
            if self.me != 0 {
                shared.note_timer(st);
            }
            shared.signal(st, Some(self.me));
        }
        self.dispatch(shared);
        more
    }

    /// Send `out`: the other workers' shares handed to their inboxes (each woken), this
    /// worker's own share at once from its socket.
    pub(super) fn dispatch(&mut self, shared: &Shared) {
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
    pub(super) fn seal_send(keys: &mut Keyring, planner: &mut Planner, shared: &Shared, me: usize, fd: RawFd, transmits: &mut Vec<Transmit>) -> usize {
        let times = &shared.mesh.inbox(me).counters;
        if transmits.len() < 2 || !shared.gso_on.load(Ordering::Relaxed) || transmits.iter().all(|t| t.seal.is_none()) {
            let t = WorkerCounters::lap(&times.seal_ns, Instant::now());
            Self::seal(keys, shared, me, transmits);
            let t = WorkerCounters::lap(&times.seal_ns, t);
            let planned = transmits.len() > 1 && shared.gso_on.load(Ordering::Relaxed);
            let sent = shared.send_transmits(fd, transmits, Some(planner));
            WorkerCounters::lap(&times.send_ns, t);
            // With GSO on, several went through the planner: one message per run.
            let messages = if planned { planner.runs().len() } else { sent };
            times.messages.fetch_add(messages as u64, Ordering::Relaxed);
            return sent;
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
        let mut t = Instant::now();
        for chunk in runs.chunks(SEAL_CHUNK) {
            // Their contexts asked for first (one per run: a run is one destination's).
            keys.prefetch(transmits, chunk.iter().map(|run| order[run.start as usize] as usize));
            let indices = chunk.iter().flat_map(|run| &order[run.start as usize..(run.start + run.len) as usize]);
            keys.seal_many(transmits, indices.map(|&i| i as usize), &mut more, &mut counts);
            t = WorkerCounters::lap(&times.seal_ns, t);
            sent += shared.send_planned(fd, transmits, order, chunk);
            t = WorkerCounters::lap(&times.send_ns, t);
        }
        times.messages.fetch_add(runs.len() as u64, Ordering::Relaxed);
        shared.count_seals(me, keys, counts);
        if not_udp {
            shared.send_not_udp(transmits);
        }
        sent
    }

    /// The received UDP datagrams through the router (lock held by the caller); what they
    /// produce is dispatched early once `early_at` datagrams wait.
    pub(super) fn route_udp(&mut self, shared: &Shared, st: &mut State, n: usize, now: Instant, early_at: usize) {
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
                on_io_panic(st, &*e);
            }
            if self.out.transmits.len() >= early_at {
                self.dispatch(shared);
            }
        }
        st.router.act_as(None);
    }
}

/// The lists of consumers a part has asked the cache for already (`run_share_part`): a few
/// addresses; past that a list is asked for again, which costs little.
#[derive(Default)]
struct Warmed {
    lists: [usize; 4],
    len: usize,
}

impl Warmed {
    fn first_time(&mut self, list: usize) -> bool {
        if self.lists[..self.len].contains(&list) {
            return false;
        }
        if self.len < self.lists.len() {
            self.lists[self.len] = list;
            self.len += 1;
        }
        true
    }
}

pub(super) fn early_at(shared: &Shared) -> usize {
    if shared.gso_on.load(Ordering::Relaxed) {
        SEND_EARLY_AT_GSO
    } else {
        SEND_EARLY_AT
    }
}

#[cfg(test)]
mod tests {
    use super::Warmed;

    #[test]
    fn a_list_is_warmed_once_per_part_and_again_past_four() {
        let mut w = Warmed::default();
        assert!(w.first_time(10) && !w.first_time(10));
        assert!(w.first_time(20) && w.first_time(30) && w.first_time(40));
        assert!(!w.first_time(20) && !w.first_time(40));
        // A fifth list is not remembered: asked for each time (harmless, only a hint).
        assert!(w.first_time(50) && w.first_time(50));
    }
}
