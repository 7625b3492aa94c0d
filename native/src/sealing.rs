//! The owner worker's half of outbound SRTP (`router/seal.rs` is the router's): the outbound
//! contexts of the transports this worker owns, and the protection of the datagrams the router
//! left sealed for it, just before they are sent.
//!
//! Only the owner's thread touches its `Keyring`: no lock per packet. Contexts arrive as
//! `KeyEvent`s on the worker's key queue (`workers::Mesh::push_key`), queued while the router
//! lock was held in the call that gave the transport keys, so before any datagram that needs
//! them; a datagram whose context is not installed yet makes the worker read its key queue
//! again before giving up (the datagram is then dropped and counted: its transport was removed
//! or re-keyed meanwhile).

use crate::fasthash::HandleMap;
use crate::router::{KeyEvent, Seal, Transmit};
use crate::hmac_sha1::LANES;
use crate::srtp::{finish_tags, PendingTag, SrtpContext};

/// What one `Keyring::seal` call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SealCounts {
    /// Datagrams protected.
    pub sealed: u64,
    /// No context for the datagram's transport and keys (removed, re-keyed).
    pub no_key: u64,
    /// Protection failed (a malformed packet).
    pub failed: u64,
}

/// One worker's outbound SRTP contexts, by transport: (keys epoch, context).
#[derive(Default)]
pub struct Keyring {
    contexts: HandleMap<(u32, SrtpContext)>,
    /// AES-CM datagrams encrypted, their tags not computed yet: (index in the caller's
    /// transmits, what the tag needs, the datagram's buffer taken out meanwhile).
    pending: Vec<(usize, PendingTag, Vec<u8>)>,
}

/// How far `Keyring::start` got with one datagram.
enum Started {
    /// Protected (true), or it cannot be and its buffer was emptied (false).
    Done(bool),
    /// Encrypted; its tag is to be computed with others'.
    Tag(PendingTag),
}

impl Keyring {
    pub fn new() -> Self {
        Self::default()
    }

    /// Transports whose outbound context this worker holds.
    pub fn len(&self) -> usize {
        self.contexts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }

    /// Install, trim or drop a transport's context (events of older keys are ignored).
    pub fn apply(&mut self, ev: KeyEvent) {
        match ev {
            KeyEvent::Install { transport, epoch, ctx, .. } => {
                self.contexts.insert(transport, (epoch, *ctx));
            }
            KeyEvent::Forget { transport, epoch, ssrcs, .. } => {
                if let Some((e, ctx)) = self.contexts.get_mut(&transport) {
                    if *e == epoch {
                        ssrcs.iter().for_each(|&s| ctx.remove_ssrc(s));
                    }
                }
            }
            KeyEvent::Remove { transport, epoch, .. } => {
                if self.contexts.get(&transport).is_some_and(|(e, _)| *e == epoch) {
                    self.contexts.remove(&transport);
                }
            }
        }
    }

    /// Protect each sealed datagram of `transmits` in place (they are this worker's); those
    /// that cannot be are removed. `more` gives the key events queued since the last call.
    pub fn seal(&mut self, transmits: &mut Vec<Transmit>, mut more: impl FnMut() -> Option<KeyEvent>) -> SealCounts {
        let mut counts = SealCounts::default();
        if transmits.iter().all(|t| t.seal.is_none()) {
            return counts;
        }
        self.absorb(&mut more);
        let all = 0..transmits.len();
        self.seal_many(transmits, all, &mut more, &mut counts);
        if counts.no_key + counts.failed > 0 {
            // Those were emptied (nothing else is: the router sends no empty datagram).
            transmits.retain(|t| !t.buf.is_empty());
        }
        counts
    }

    /// Apply the key events queued since the last call.
    pub fn absorb(&mut self, more: &mut impl FnMut() -> Option<KeyEvent>) {
        while let Some(ev) = more() {
            self.apply(ev);
        }
    }

    /// Protect `t` in place if it is sealed (counted in `counts`). False: it cannot be (no
    /// context for its keys, or protection failed); its buffer is then emptied, which the
    /// senders skip.
    pub fn seal_one(&mut self, t: &mut Transmit, more: &mut impl FnMut() -> Option<KeyEvent>, counts: &mut SealCounts) -> bool {
        match self.start(t, more, counts) {
            Started::Done(ok) => ok,
            Started::Tag(pending) => {
                finish_tags([(&pending, &mut t.buf)]);
                true
            }
        }
    }

    /// Ask for the contexts `seal_many` will use for `transmits[i]`, each `i` of `order`
    /// (`prefetch.rs`).
    pub fn prefetch(&self, transmits: &[Transmit], order: impl IntoIterator<Item = usize>) {
        for i in order {
            let Some(seal) = transmits.get(i).and_then(|t| t.seal) else { continue };
            if let Some((_, ctx)) = self.contexts.get(&seal.transport) {
                ctx.prefetch();
            }
        }
    }

    /// [`Keyring::seal_one`] for `transmits[i]`, each `i` of `order` in turn; the AES-CM
    /// tags are computed [`LANES`] datagrams at a time (`hmac_sha1.rs`).
    pub fn seal_many(
        &mut self,
        transmits: &mut [Transmit],
        order: impl IntoIterator<Item = usize>,
        more: &mut impl FnMut() -> Option<KeyEvent>,
        counts: &mut SealCounts,
    ) {
        for i in order {
            let Some(t) = transmits.get_mut(i) else { continue };
            if let Started::Tag(pending) = self.start(t, more, counts) {
                self.pending.push((i, pending, std::mem::take(&mut t.buf)));
                if self.pending.len() == LANES {
                    self.finish_pending(transmits);
                }
            }
        }
        self.finish_pending(transmits);
    }

    /// Tag the pending datagrams and give their buffers back.
    fn finish_pending(&mut self, transmits: &mut [Transmit]) {
        finish_tags(self.pending.iter_mut().map(|(_, pending, buf)| (&*pending, buf)));
        for (i, _, buf) in self.pending.drain(..) {
            if let Some(t) = transmits.get_mut(i) {
                t.buf = buf;
            }
        }
    }

    /// Protect `t` unless only its AES-CM tag is left to do (counted as sealed then).
    fn start(&mut self, t: &mut Transmit, more: &mut impl FnMut() -> Option<KeyEvent>, counts: &mut SealCounts) -> Started {
        let Some(seal) = t.seal.take() else { return Started::Done(true) };
        let started = match self.context(seal, more) {
            None => {
                counts.no_key += 1;
                t.buf.clear();
                return Started::Done(false);
            }
            Some(ctx) if seal.rtcp => Started::Done(ctx.protect_rtcp(&mut t.buf).is_ok()),
            Some(ctx) => match ctx.protect_rtp_deferred(&mut t.buf) {
                Ok(Some(pending)) => Started::Tag(pending),
                Ok(None) => Started::Done(true),
                Err(_) => Started::Done(false),
            },
        };
        if matches!(started, Started::Done(false)) {
            counts.failed += 1;
            t.buf.clear();
        } else {
            counts.sealed += 1;
        }
        started
    }

    /// The context `seal` was made for, reading the key queue once more if it is not here.
    fn context(&mut self, seal: Seal, more: &mut impl FnMut() -> Option<KeyEvent>) -> Option<&mut SrtpContext> {
        if self.contexts.get(&seal.transport).is_none_or(|(e, _)| *e != seal.epoch) {
            while let Some(ev) = more() {
                self.apply(ev);
            }
        }
        match self.contexts.get_mut(&seal.transport) {
            Some((e, ctx)) if *e == seal.epoch => Some(ctx),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::Remote;
    use crate::srtp::Profile;
    use std::net::SocketAddr;

    const KEY: [u8; 16] = [7; 16];
    const SALT: [u8; 12] = [3; 12];

    fn ctx() -> SrtpContext {
        SrtpContext::new(Profile::AeadAes128Gcm, &KEY, &SALT).unwrap()
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 96, 0, 0, 0, 0, 0, 1, 0, 0, 0, 42];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0xab; 100]);
        p
    }

    fn sealed(transport: u64, epoch: u32, buf: Vec<u8>) -> Transmit {
        let dest = Remote::udp(SocketAddr::from(([127, 0, 0, 1], 5000)));
        Transmit { dest, buf, seal: Some(Seal { transport, epoch, owner: 1, rtcp: false, grow: 16 }) }
    }

    fn install(transport: u64, epoch: u32) -> KeyEvent {
        KeyEvent::Install { transport, epoch, owner: 1, ctx: Box::new(ctx()) }
    }

    #[test]
    fn sealed_here_equals_protected_inline_and_decrypts() {
        let mut ring = Keyring::new();
        let mut queue = vec![install(9, 1)];
        let mut ts: Vec<Transmit> = (0..5).map(|s| sealed(9, 1, rtp(65533u16.wrapping_add(s)))).collect();
        ts.push(Transmit::new(Remote::udp(SocketAddr::from(([127, 0, 0, 1], 1))), vec![1, 2, 3]));
        let counts = ring.seal(&mut ts, || queue.pop());
        assert_eq!(counts, SealCounts { sealed: 5, no_key: 0, failed: 0 });
        assert_eq!(ts.len(), 6);
        assert_eq!(ts[5].buf, vec![1, 2, 3], "an unsealed datagram is left alone");
        let (mut inline, mut rx) = (ctx(), ctx());
        for (k, t) in ts[..5].iter().enumerate() {
            assert!(t.seal.is_none());
            let mut want = rtp(65533u16.wrapping_add(k as u16));
            inline.protect_rtp(&mut want).unwrap();
            assert_eq!(t.buf, want, "packet {k}: the owner's bytes are the inline bytes (ROC kept across the wrap)");
            let mut got = t.buf.clone();
            rx.unprotect_rtp(&mut got).unwrap();
            assert_eq!(got, rtp(65533u16.wrapping_add(k as u16)));
        }
    }

    #[test]
    fn prefetching_changes_nothing_and_takes_any_index() {
        let mut ring = Keyring::new();
        ring.apply(install(9, 1));
        let mut ts = vec![sealed(9, 1, rtp(7)), sealed(4, 1, rtp(8))];
        ts.push(Transmit::new(Remote::udp(SocketAddr::from(([127, 0, 0, 1], 1))), vec![1, 2, 3]));
        // Known and unknown transports, an unsealed datagram, an index past the end.
        ring.prefetch(&ts, [0, 1, 2, 3]);
        assert_eq!(ts[0].buf, rtp(7), "a hint only: nothing is protected");
        let counts = ring.seal(&mut ts, || None);
        assert_eq!(counts, SealCounts { sealed: 1, no_key: 1, failed: 0 });
        let mut want = rtp(7);
        ctx().protect_rtp(&mut want).unwrap();
        assert_eq!(ts[0].buf, want, "the context's state is what it was");
    }

    #[test]
    fn unknown_removed_or_stale_keys_drop_and_count() {
        let mut ring = Keyring::new();
        let mut ts = vec![sealed(1, 1, rtp(1))];
        assert_eq!(ring.seal(&mut ts, || None).no_key, 1);
        assert!(ts.is_empty());
        ring.apply(install(1, 2));
        let mut ts = vec![sealed(1, 1, rtp(2)), sealed(1, 2, rtp(3))];
        assert_eq!(ring.seal(&mut ts, || None), SealCounts { sealed: 1, no_key: 1, failed: 0 });
        assert_eq!(ts.len(), 1, "the datagram of the old keys went");
        ring.apply(KeyEvent::Remove { transport: 1, epoch: 1, owner: 1 });
        assert_eq!(ring.len(), 1, "a removal of older keys leaves the new ones");
        ring.apply(KeyEvent::Remove { transport: 1, epoch: 2, owner: 1 });
        assert!(ring.is_empty());
        let mut bad = vec![sealed(1, 3, vec![0x80, 96])];
        ring.apply(install(1, 3));
        assert_eq!(ring.seal(&mut bad, || None), SealCounts { sealed: 0, no_key: 0, failed: 1 });
    }

    #[test]
    fn keys_queued_after_the_first_look_are_found() {
        let mut ring = Keyring::new();
        let mut calls = 0;
        let mut ts = vec![sealed(4, 7, rtp(10))];
        // The first read of the queue is empty (the install raced in after it).
        let counts = ring.seal(&mut ts, || {
            calls += 1;
            (calls == 2).then(|| install(4, 7))
        });
        assert_eq!(counts, SealCounts { sealed: 1, no_key: 0, failed: 0 });
        assert_eq!(ts.len(), 1);
    }

    #[test]
    fn sealing_one_grows_by_the_planned_length_or_empties() {
        // The engine plans GSO on `wire_len` before sealing: a sealed datagram must come out
        // exactly that long, and one that cannot be sealed empty (the senders skip it).
        let mut ring = Keyring::new();
        let mut more = || None;
        ring.apply(install(2, 1));
        let mut counts = SealCounts::default();
        let mut t = sealed(2, 1, rtp(5));
        let planned = t.wire_len();
        assert!(ring.seal_one(&mut t, &mut more, &mut counts));
        assert_eq!(t.buf.len(), planned);
        assert!(t.seal.is_none());
        let mut gone = sealed(3, 1, rtp(6));
        assert!(!ring.seal_one(&mut gone, &mut more, &mut counts));
        assert!(gone.buf.is_empty());
        assert_eq!(counts, SealCounts { sealed: 1, no_key: 1, failed: 0 });
    }

    fn cm_ctx(transport: u64) -> SrtpContext {
        let key: Vec<u8> = (0..16).map(|i| (i as u64 * 5 + transport) as u8).collect();
        let salt: Vec<u8> = (0..14).map(|i| (i as u64 * 3 + transport) as u8).collect();
        SrtpContext::new(Profile::AesCm128HmacSha1_80, &key, &salt).unwrap()
    }

    #[test]
    fn aes_cm_tags_computed_together_equal_each_packet_protected_alone() {
        // Eleven AES-CM transports (more than one group of lanes, the last one short), one GCM
        // transport and one without keys, visited in a scattered order with a malformed packet
        // and a datagram of different length among them: every CM packet gets the tag of its
        // own keys and decrypts; the others are sealed or dropped as one at a time would.
        let mut ring = Keyring::new();
        for tr in 1..=11u64 {
            ring.apply(KeyEvent::Install { transport: tr, epoch: 1, owner: 1, ctx: Box::new(cm_ctx(tr)) });
        }
        ring.apply(install(20, 1));
        let mut ts: Vec<Transmit> = Vec::new();
        let mut want: Vec<Option<Vec<u8>>> = Vec::new();
        for tr in 1..=11u64 {
            let mut p = rtp(100 + tr as u16);
            if tr == 5 {
                p.extend_from_slice(&[0x11; 300]);
            }
            let mut w = p.clone();
            cm_ctx(tr).protect_rtp(&mut w).unwrap();
            want.push(Some(w));
            ts.push(sealed(tr, 1, p));
        }
        let mut g = rtp(7);
        ctx().protect_rtp(&mut g).unwrap();
        ts.push(sealed(20, 1, rtp(7)));
        want.push(Some(g));
        ts.push(sealed(30, 1, rtp(8)));
        want.push(None);
        ts.push(sealed(3, 1, vec![0x80, 96]));
        want.push(None);
        let order = [12, 3, 0, 11, 7, 1, 13, 5, 2, 9, 4, 10, 6, 8];
        let mut counts = SealCounts::default();
        ring.seal_many(&mut ts, order, &mut || None, &mut counts);
        assert_eq!(counts, SealCounts { sealed: 12, no_key: 1, failed: 1 });
        for (i, (t, w)) in ts.iter().zip(&want).enumerate() {
            assert!(t.seal.is_none(), "transmit {i} was visited");
            match w {
                Some(w) => assert_eq!(&t.buf, w, "transmit {i}"),
                None => assert!(t.buf.is_empty(), "transmit {i} dropped"),
            }
        }
        for tr in 1..=11u64 {
            let mut rx = cm_ctx(tr);
            let mut got = ts[tr as usize - 1].buf.clone();
            rx.unprotect_rtp(&mut got).unwrap();
            assert_eq!(got[..12], rtp(100 + tr as u16)[..12]);
        }
        assert!(ring.pending.is_empty(), "no buffer is left behind");
    }
}
