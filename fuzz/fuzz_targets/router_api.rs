//! The router's control state machine against a model: random add/remove/pause/resume of
//! transports, producers and consumers (plus tuples over UDP and TCP, closed TCP connections,
//! keys, ICE restarts, datagrams and timers between them). Each call succeeds exactly when the model says it should, and counts, pause
//! states and cascades (closing a transport closes its producers and their consumers)
//! match after every step. Inputs whose first byte has its high bit set run the router as for
//! two workers: every datagram it makes is sealed by its transport's owner (`Keyring`), which
//! has the keys it needs at each step (no datagram lacks them), and holds exactly one context
//! per keyed transport.
#![no_main]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pysfu_native::router::{Handle, Output, Removed, Router, SrtpKeys, StatValue, MAX_TUPLES};
use pysfu_native::sealing::Keyring;

#[derive(Default)]
struct Model {
    transports: HashSet<Handle>,
    /// producer → (transport, encodings, paused)
    producers: HashMap<Handle, (Handle, usize, bool)>,
    /// consumer → (transport, producer, paused)
    consumers: HashMap<Handle, (Handle, Handle, bool)>,
}

/// What a removal took, sorted: (producers, consumers).
type Gone = (Vec<Handle>, Vec<Handle>);

fn sorted(r: Removed) -> Gone {
    let (mut p, mut c) = (r.producers, r.consumers);
    p.sort_unstable();
    c.sort_unstable();
    (p, c)
}

impl Model {
    fn remove_producer(&mut self, p: Handle) -> Gone {
        let mut gone = (Vec::new(), Vec::new());
        if self.producers.remove(&p).is_some() {
            gone.0.push(p);
        }
        gone.1 = self.consumers.iter().filter(|(_, c)| c.1 == p).map(|(k, _)| *k).collect();
        self.consumers.retain(|_, c| c.1 != p);
        gone.1.sort_unstable();
        gone
    }
    fn remove_transport(&mut self, t: Handle) -> Gone {
        self.transports.remove(&t);
        let mut ps: Vec<Handle> = self.producers.iter().filter(|(_, v)| v.0 == t).map(|(k, _)| *k).collect();
        ps.sort_unstable();
        let mut cs: Vec<Handle> = Vec::new();
        for p in &ps {
            cs.extend(self.remove_producer(*p).1);
        }
        cs.extend(self.consumers.iter().filter(|(_, c)| c.0 == t).map(|(k, _)| *k));
        self.consumers.retain(|_, c| c.0 != t);
        cs.sort_unstable();
        (ps, cs)
    }
    fn check(&self, r: &Router) {
        let c = r.counts();
        assert_eq!(c.transports, self.transports.len());
        assert_eq!(c.producers, self.producers.len());
        assert_eq!(c.consumers, self.consumers.len());
        let streams: usize = self.producers.values().map(|p| p.1).sum::<usize>() + self.consumers.len();
        assert_eq!(c.streams, streams);
        assert!(c.tuples <= self.transports.len() * MAX_TUPLES, "tuples of removed transports are forgotten");
    }
}

fn paused(r: &Router, now: Instant, h: Handle) -> bool {
    let st = r.stats(now, h).expect("exists");
    st.iter().any(|(k, v)| *k == "paused" && *v == StatValue::Bool(true))
}

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let mut r = common::router(now);
    let mut m = Model::default();
    let mut out = Output::new();
    let workers = if data.first().is_some_and(|b| b & 0x80 != 0) { 2 } else { 1 };
    r.set_workers(workers);
    let mut rings: Vec<Keyring> = (0..workers).map(|_| Keyring::new()).collect();
    let mut keyed: HashSet<Handle> = HashSet::new();
    for op in data.chunks_exact(3).take(2000) {
        let (kind, a, b) = (op[0] % 15, op[1], op[2]);
        let t = 1 + (a % 6) as Handle;
        let p = 100 + (a % 8) as Handle;
        let c = 200 + (a % 16) as Handle;
        match kind {
            0 => {
                let ok = r.add_transport(t, &format!("u{t}"), "pw").is_ok();
                assert_eq!(ok, !m.transports.contains(&t));
                m.transports.insert(t);
            }
            1 => {
                let known = m.transports.contains(&t);
                let removed = r.remove_transport(t);
                assert_eq!(removed.is_ok(), known);
                let gone = m.remove_transport(t);
                keyed.remove(&t);
                if let Ok(removed) = removed {
                    assert_eq!(sorted(removed), gone, "the router reports what it removed");
                }
            }
            2 => {
                let on = 1 + (b % 6) as Handle;
                let video = b & 0x80 != 0;
                let ssrc = 0x10_0000 * p as u32;
                let spec = if video { common::video_spec(&p.to_string(), ssrc) } else { common::audio_spec(&p.to_string(), ssrc) };
                let n = spec.encodings.len();
                let ok = r.add_producer(now, p, on, spec).is_ok();
                assert_eq!(ok, !m.producers.contains_key(&p) && m.transports.contains(&on));
                if ok {
                    m.producers.insert(p, (on, n, false));
                }
            }
            3 => {
                let known = m.producers.contains_key(&p);
                let removed = r.remove_producer(p);
                assert_eq!(removed.is_ok(), known);
                let gone = m.remove_producer(p);
                if let Ok(removed) = removed {
                    assert_eq!(sorted(removed), gone, "the router reports what it removed");
                }
            }
            4 => {
                let on = 1 + (b % 6) as Handle;
                let of = 100 + ((b >> 3) % 8) as Handle;
                let spec = common::consumer_spec(0x1000 * c as u32, "c", 0);
                let ok = r.add_consumer(now, c, on, of, spec, &mut out).is_ok();
                let want = !m.consumers.contains_key(&c) && m.transports.contains(&on) && m.producers.contains_key(&of);
                assert_eq!(ok, want);
                if ok {
                    m.consumers.insert(c, (on, of, false));
                }
            }
            5 => {
                assert_eq!(r.remove_consumer(c).is_ok(), m.consumers.contains_key(&c));
                m.consumers.remove(&c);
            }
            6 | 7 => {
                let pause = kind == 6;
                let ok = if b & 1 == 0 {
                    let ok = if pause { r.pause_producer(p) } else { r.resume_producer(now, p, &mut out) }.is_ok();
                    if let Some(e) = m.producers.get_mut(&p) {
                        e.2 = pause;
                        assert_eq!(paused(&r, now, p), pause);
                    }
                    (ok, m.producers.contains_key(&p))
                } else {
                    let ok = if pause { r.pause_consumer(c) } else { r.resume_consumer(now, c, &mut out) }.is_ok();
                    if let Some(e) = m.consumers.get_mut(&c) {
                        e.2 = pause;
                        assert_eq!(paused(&r, now, c), pause);
                    }
                    (ok, m.consumers.contains_key(&c))
                };
                assert_eq!(ok.0, ok.1);
            }
            8 => {
                let ok = r.bind_tuple(now, t, common::remote(b), b & 0x80 != 0, &mut out).is_ok();
                assert_eq!(ok, m.transports.contains(&t));
            }
            9 => {
                let (k, s) = common::key(b);
                let dtls = (b & 0x40 != 0).then(|| common::remote(b));
                let ok = r.set_srtp(now, t, &SrtpKeys::new(common::PROFILE.name(), &k, &s, &k, &s), dtls, &mut out).is_ok();
                assert_eq!(ok, m.transports.contains(&t));
                if ok {
                    keyed.insert(t);
                }
            }
            10 => {
                let pkt = [0x80 | (b & 0x3f), 96 + (a & 0x7f), 0, b, 0, 0, 0, 1, 0, 0x10, 0, 0, 1, 2, 3, 4];
                r.handle_datagram(now, common::remote(b), &pkt, &mut out);
            }
            11 => {
                now += Duration::from_millis(u64::from(b) * 10);
                r.handle_timeout(now, &mut out);
            }
            12 => {
                // ICE restart: new credentials ("r{t}-{b}" never collides with another
                // transport's); the ufrag "u{t}" is free again for the add above.
                let ok = r.set_ice_credentials(t, &format!("r{t}-{b}"), "pw2").is_ok();
                assert_eq!(ok, m.transports.contains(&t));
            }
            13 => {
                // A TCP connection closed (or any remote gone): forgotten wherever it was.
                let gone = common::remote(b);
                r.forget_remote(gone);
                for h in &m.transports {
                    let st = r.stats(now, *h).expect("exists");
                    for key in ["selectedTuple", "nominatedTuple"] {
                        assert!(st.iter().any(|(k, v)| *k == key && *v != StatValue::Str(gone.to_string())));
                    }
                }
            }
            _ => {
                let _ = r.take_upcalls();
                let _ = r.stats(now, u64::from(a));
            }
        }
        for ev in r.take_key_events() {
            assert!(workers > 1, "one worker protects under the router");
            rings[ev.owner()].apply(ev);
        }
        if workers > 1 {
            for (me, ring) in rings.iter_mut().enumerate() {
                let mut mine: Vec<_> = out.transmits.iter().filter(|t| t.seal.is_some_and(|s| s.owner as usize == me)).map(|t| pysfu_native::router::Transmit { dest: t.dest, buf: t.buf.clone(), seal: t.seal }).collect();
                let n = mine.len() as u64;
                let c = ring.seal(&mut mine, || None);
                assert_eq!(c.no_key, 0, "the owner has the keys of every datagram it is given");
                assert_eq!(c.sealed + c.failed, n);
            }
            assert_eq!(rings.iter().map(Keyring::len).sum::<usize>(), keyed.len(), "one context per keyed transport");
        } else {
            assert!(out.transmits.iter().all(|t| t.seal.is_none()));
        }
        out.recycle();
        m.check(&r);
        for (h, v) in &m.consumers {
            assert_eq!(paused(&r, now, *h), v.2);
        }
    }
});
