//! Control calls: transports (ICE credentials, tuples, SRTP keys), producers and consumers
//! (add, remove, pause, resume), a simulcast consumer's preferred layers. Removing a
//! transport removes its producers and consumers; removing a producer removes its consumers.
//! That cascade is decided here only: the removals answer what went (`Removed`) and the
//! control plane updates its registries from the answer instead of repeating the rule.

use crate::remote::Remote;
use std::time::{Duration, Instant};

use crate::srtp::{Profile, SrtpContext, SrtpError};
use crate::stun_check::IceKey;

use super::consumer::Consumer;
use super::output::Output;
use super::producer::{Producer, StreamRef};
use super::spec::{invalid, unknown, ConsumerSpec, ProducerSpec, Removed, Result, SrtpKeys};
use super::transport::{Transport, Tuple};
use super::{Handle, Router, MAX_TUPLES};

impl Router {
    /// A transport with local ICE credentials `ufrag` / `password`: STUN requests reach
    /// Python only if their MESSAGE-INTEGRITY is keyed with `password`.
    pub fn add_transport(&mut self, h: Handle, ufrag: &str, password: &str) -> Result<()> {
        if self.handle_in_use(h) {
            return Err(invalid(format!("handle {h} already in use")));
        }
        if ufrag.is_empty() || ufrag.contains(':') {
            return Err(invalid(format!("bad ufrag {ufrag:?}")));
        }
        let ice_key = IceKey::new(password.as_bytes()).ok_or_else(|| invalid("empty ICE password"))?;
        if self.by_ufrag.contains_key(ufrag) {
            return Err(invalid(format!("ufrag {ufrag:?} already in use")));
        }
        self.by_ufrag.insert(ufrag.to_owned(), h);
        let rtcp_ssrc = (self.rng.next() as u32) | 1;
        self.transports.insert(h, Transport::new(ufrag, ice_key, rtcp_ssrc));
        Ok(())
    }

    /// RFC 7675: consent of every transport is lost after `limit` without a valid Binding
    /// request (None: never).
    pub fn set_consent_timeout(&mut self, limit: Option<Duration>) {
        self.consent_timeout = limit;
    }

    /// ICE restart: transport `h` takes new local credentials. STUN with the old ufrag or
    /// password is refused from now on; tuples, the selected (proven) tuple, SRTP keys,
    /// producers and consumers stay: media keeps going where it went until the new
    /// credentials nominate and prove another tuple.
    pub fn set_ice_credentials(&mut self, h: Handle, ufrag: &str, password: &str) -> Result<()> {
        if self.is_plain(h) {
            return Err(invalid(format!("transport {h} has no ICE (plain)")));
        }
        let old = self.transports.get(&h).ok_or_else(|| unknown("transport", h))?.ufrag.clone();
        if ufrag.is_empty() || ufrag.contains(':') {
            return Err(invalid(format!("bad ufrag {ufrag:?}")));
        }
        let ice_key = IceKey::new(password.as_bytes()).ok_or_else(|| invalid("empty ICE password"))?;
        if ufrag != old && self.by_ufrag.contains_key(ufrag) {
            return Err(invalid(format!("ufrag {ufrag:?} already in use")));
        }
        if self.by_ufrag.get(&old) == Some(&h) {
            self.by_ufrag.remove(&old);
        }
        self.by_ufrag.insert(ufrag.to_owned(), h);
        let t = self.transports.get_mut(&h).expect("checked above");
        t.ufrag = ufrag.to_owned();
        t.ice_key = ice_key;
        Ok(())
    }

    /// Removes the transport, its consumers, its producers and their consumers: the one place
    /// this cascade is decided. Answers what went, for the control plane's registries.
    pub fn remove_transport(&mut self, h: Handle) -> Result<Removed> {
        let t = self.transports.get(&h).ok_or_else(|| unknown("transport", h))?;
        let consumers = t.consumers.clone();
        let producers = t.producers.clone();
        let mut removed = Removed::default();
        for c in consumers {
            if self.remove_consumer(c).is_ok() {
                removed.consumers.push(c);
            }
        }
        for p in producers {
            if let Ok(r) = self.remove_producer(p) {
                removed.producers.extend(r.producers);
                removed.consumers.extend(r.consumers);
            }
        }
        let t = self.transports.remove(&h).expect("checked above");
        self.sealing.push(t.tx.as_ref().and_then(|tx| tx.removal()));
        self.shares.changed();
        for a in &t.tuples {
            if self.by_addr.get(&a.addr) == Some(&h) {
                self.by_addr.remove(&a.addr);
            }
        }
        if self.by_ufrag.get(&t.ufrag) == Some(&h) {
            self.by_ufrag.remove(&t.ufrag);
        }
        Ok(removed)
    }

    /// ICE validated `addr` for transport `h`; `selected`: the peer nominated it. A nominated
    /// tuple becomes the media destination once proven (see `Transport::prove`).
    pub fn bind_tuple(&mut self, now: Instant, h: Handle, addr: Remote, selected: bool, out: &mut Output) -> Result<()> {
        if !self.transports.contains_key(&h) {
            return Err(unknown("transport", h));
        }
        if self.is_plain(h) {
            return Err(invalid(format!("transport {h} has no ICE (plain)")));
        }
        // An address belongs to one transport: take it from any other.
        if let Some(&other) = self.by_addr.get(&addr) {
            if other != h {
                if let Some(o) = self.transports.get_mut(&other) {
                    o.forget_tuple(addr);
                }
            }
        }
        self.by_addr.insert(addr, h);
        let t = self.transports.get_mut(&h).expect("checked above");
        let proven = match t.tuples.iter().position(|a| a.addr == addr) {
            Some(i) => t.tuples.remove(i).proven,
            None => t.dtls_addr == Some(addr),
        };
        t.tuples.push(Tuple { addr, proven });
        if t.tuples.len() > MAX_TUPLES {
            // Evict the oldest tuple that is neither the sending nor the nominated one.
            let keep = [t.selected, t.nominated, Some(addr)];
            if let Some(i) = t.tuples.iter().position(|a| !keep.contains(&Some(a.addr))) {
                let old = t.tuples.remove(i).addr;
                if self.by_addr.get(&old) == Some(&h) {
                    self.by_addr.remove(&old);
                }
            }
        }
        let t = self.transports.get_mut(&h).expect("checked above");
        let was_connected = t.is_connected();
        if selected {
            t.nominate(addr);
        }
        let now_connected = t.is_connected();
        if now_connected && !was_connected {
            self.on_transport_connected(now, h, out);
        }
        Ok(())
    }

    /// `remote` is gone (its TCP connection closed): no transport keeps it as a tuple, the
    /// sending tuple included (media waits for ICE to nominate and prove another).
    pub fn forget_remote(&mut self, remote: Remote) {
        let Some(h) = self.by_addr.remove(&remote) else { return };
        if let Some(t) = self.transports.get_mut(&h) {
            t.forget_tuple(remote);
            if t.dtls_addr == Some(remote) {
                t.dtls_addr = None;
            }
        }
    }

    /// SRTP keys from the DTLS handshake; `remote`: the address the handshake completed with
    /// (our flights went there and the peer's last one came from there), which proves that
    /// tuple. Without it, the first authenticated SRTP/SRTCP packet proves a tuple.
    pub fn set_srtp(
        &mut self,
        now: Instant,
        h: Handle,
        keys: &SrtpKeys,
        remote: Option<Remote>,
        out: &mut Output,
    ) -> Result<()> {
        if !self.transports.contains_key(&h) {
            return Err(unknown("transport", h));
        }
        if self.is_plain(h) {
            return Err(invalid(format!("transport {h} has no DTLS (plain): use connect_plain")));
        }
        let profile = &keys.profile;
        let p = Profile::from_name(profile).ok_or_else(|| invalid(format!("unknown SRTP profile {profile:?}")))?;
        let bad = |what: &str, e: SrtpError| {
            invalid(format!(
                "bad {what} SRTP key/salt for {} (want {} + {} bytes): {e}",
                p.name(),
                p.key_len(),
                p.salt_len()
            ))
        };
        let tx = SrtpContext::new(p, &keys.local_key, &keys.local_salt).map_err(|e| bad("local", e))?;
        let rx = SrtpContext::new(p, &keys.remote_key, &keys.remote_salt).map_err(|e| bad("remote", e))?;
        let t = self.transports.get_mut(&h).expect("checked above");
        let was_connected = t.is_connected();
        if let Some(old) = t.tx.take() {
            self.sealing.push(old.removal());
        }
        t.tx = Some(self.sealing.install(h, remote.or(t.selected), tx));
        self.shares.changed();
        t.rx = Some(rx);
        if let Some(a) = remote {
            t.dtls_addr = Some(a);
            t.prove(a);
            // The handshake ran there: the sending tuple, unless one is proven already.
            if t.selected.is_none() && t.is_proven(a) {
                t.selected = Some(a);
            }
        }
        if t.selected.is_some() && !was_connected {
            self.on_transport_connected(now, h, out);
        }
        Ok(())
    }

    /// Media can flow to this transport now: its consumers need a key frame.
    pub(super) fn on_transport_connected(&mut self, now: Instant, h: Handle, out: &mut Output) {
        let Some(t) = self.transports.get(&h) else { return };
        let consumers = t.consumers.clone();
        for c in consumers {
            self.resync_consumer(now, c, out);
        }
    }

    pub fn add_producer(&mut self, now: Instant, h: Handle, transport: Handle, spec: ProducerSpec) -> Result<()> {
        if self.handle_in_use(h) {
            return Err(invalid(format!("handle {h} already in use")));
        }
        let t = self.transports.get(&transport).ok_or_else(|| unknown("transport", transport))?;
        let producer = Producer::from_spec(transport, &spec, now)?;
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
        Ok(())
    }

    /// Removes the producer and its consumers; answers what went (the producer included).
    pub fn remove_producer(&mut self, h: Handle) -> Result<Removed> {
        let p = self.producers.get(&h).ok_or_else(|| unknown("producer", h))?;
        let consumers = p.consumers.clone();
        let mut removed = Removed { producers: vec![h], consumers: Vec::with_capacity(consumers.len()) };
        for c in consumers {
            if self.remove_consumer(c).is_ok() {
                removed.consumers.push(c);
            }
        }
        let p = self.producers.remove(&h).expect("checked above");
        self.retired.add_producer(&p);
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
        Ok(removed)
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
        let pipe = spec.pipe_ssrcs.iter().flat_map(|&(s, r)| [Some(s), r]);
        for s in [Some(spec.ssrc), spec.rtx_ssrc].into_iter().chain(pipe).flatten() {
            if t.consumer_ssrc.contains_key(&s) {
                return Err(invalid(format!("consumer spec: ssrc {s} already used on transport {transport}")));
            }
        }
        let consumer = Consumer::new(&spec, transport, producer, p.video, p.encodings.len(), &mut self.rng, now)?;
        self.consumers.insert(h, consumer);
        let t = self.transports.get_mut(&transport).expect("checked above");
        t.consumers.push(h);
        t.consumer_ssrc.insert(spec.ssrc, h);
        if let Some(r) = spec.rtx_ssrc {
            t.consumer_ssrc.insert(r, h);
        }
        for &(s, r) in &spec.pipe_ssrcs {
            t.consumer_ssrc.insert(s, h);
            if let Some(r) = r {
                t.consumer_ssrc.insert(r, h);
            }
        }
        self.producers.get_mut(&producer).expect("checked above").consumers.push(h);
        self.shares.changed();
        if !spec.paused {
            self.resync_consumer(now, h, out);
        }
        Ok(())
    }

    pub fn remove_consumer(&mut self, h: Handle) -> Result<()> {
        let c = self.consumers.remove(&h).ok_or_else(|| unknown("consumer", h))?;
        self.shares.changed();
        let video = self.consumer_is_video(&c);
        self.retired.add_consumer(&c, video);
        if let Some(t) = self.transports.get_mut(&c.transport) {
            t.consumers.retain(|x| *x != h);
            let mut ssrcs = Vec::new();
            t.consumer_ssrc.retain(|s, x| {
                let keep = *x != h;
                if !keep {
                    ssrcs.push(*s);
                }
                keep
            });
            if let Some(tx) = t.tx.as_mut() {
                let gone = tx.remove_ssrcs([c.ssrc].into_iter().chain(c.rtx_ssrc).chain(ssrcs).collect());
                self.sealing.push(gone);
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
    pub(super) fn resync_consumer(&mut self, now: Instant, h: Handle, out: &mut Output) {
        let Some(c) = self.consumers.get_mut(&h) else { return };
        if c.paused {
            return;
        }
        let Some(p) = self.producers.get(&c.producer) else { return };
        if p.paused || !p.video {
            return;
        }
        if c.is_pipe() {
            // Every stream goes through a pipe: a key frame of each for the far side.
            let (ph, n) = (c.producer, p.encodings.len());
            for enc in 0..n {
                self.request_key_frame(now, ph, enc, out);
            }
            return;
        }
        c.restart();
        let (ph, enc) = (c.producer, c.encoding);
        self.request_key_frame(now, ph, enc, out);
    }

    /// Bytes Python sends on transport `h` (STUN/DTLS): counted here.
    pub fn note_python_send(&mut self, h: Handle, n: usize) -> Result<()> {
        let t = self.transports.get_mut(&h).ok_or_else(|| unknown("transport", h))?;
        t.stats.tx(n);
        Ok(())
    }

    /// Viewer preference for a simulcast consumer: at most `spatial` (clamped to the
    /// producer's layers). The switch happens at the target stream's next key frame.
    pub fn set_preferred_layers(&mut self, now: Instant, h: Handle, spatial: usize, temporal: Option<u8>, out: &mut Output) -> Result<(usize, u8)> {
        let c = self.consumers.get_mut(&h).ok_or_else(|| unknown("consumer", h))?;
        let p = self.producers.get(&c.producer).ok_or_else(|| unknown("producer", c.producer))?;
        let rates: Vec<u64> = p.encodings.iter().map(|e| e.quality.rate.bps).collect();
        let estimate = self.transports.get(&c.transport).and_then(|t| t.bwe.estimate(now));
        let (preferred, switch) = c.set_preference(now, spatial, temporal, &rates, estimate);
        if let Some(target) = switch {
            let ph = c.producer;
            self.request_key_frame(now, ph, target, out);
        }
        Ok(preferred)
    }
}
