//! Outbound SRTP/SRTCP of a transport: protected here (one worker, or a plain transport), or
//! sealed later by the worker that owns the transport (`workers` > 1).
//!
//! With several workers, the router builds the fan-out unprotected: each datagram carries a
//! `Seal` naming its transport and that transport's owner worker, and the owner protects it
//! just before sending (`crate::sealing`). The owner holds the transport's only outbound SRTP
//! context (the ROC of every SSRC and the SRTCP index live there): one thread touches it, no
//! lock per packet. The context reaches the owner as a `KeyEvent` the engine takes from the
//! router (`take_key_events`) before the router lock is released, so it is queued before any
//! datagram that needs it. The router keeps its own copy only to answer "has keys".

use std::net::SocketAddr;

use crate::remote::{Remote, Via};
use crate::srtp::{SrtpContext, SrtpError};

use super::Handle;

/// What the owner does to a datagram before sending it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seal {
    pub transport: Handle,
    /// The keys this datagram was built for (a transport given new keys has a new epoch).
    pub epoch: u32,
    /// The worker that protects and sends it.
    pub owner: u16,
    /// SRTCP (else SRTP).
    pub rtcp: bool,
    /// Bytes the protection appends (tag, SRTCP index): the datagram's wire length is its
    /// length now plus this, which GSO planning needs before the owner seals it.
    pub grow: u8,
}

impl Seal {
    /// The wire length of a datagram of `len` bytes once sealed.
    #[inline]
    pub fn wire_len(self, len: usize) -> usize {
        len + self.grow as usize
    }
}

/// A transport's outbound context for its owner worker, or what it no longer needs.
pub enum KeyEvent {
    Install { transport: Handle, epoch: u32, owner: u16, ctx: Box<SrtpContext> },
    /// SSRCs no longer sent on the transport (a consumer went): their ROC state goes.
    Forget { transport: Handle, epoch: u32, owner: u16, ssrcs: Vec<u32> },
    Remove { transport: Handle, epoch: u32, owner: u16 },
}

impl KeyEvent {
    pub fn owner(&self) -> usize {
        match self {
            KeyEvent::Install { owner, .. } | KeyEvent::Forget { owner, .. } | KeyEvent::Remove { owner, .. } => *owner as usize,
        }
    }
}

/// A transport's outbound SRTP: protect here (`at` None) or leave it to the owner worker.
pub(super) struct TxSrtp {
    ctx: SrtpContext,
    at: Option<(u16, u32)>,
    transport: Handle,
}

impl TxSrtp {
    /// Protected here, by whoever holds the router (one worker; plain transports).
    pub(super) fn inline(ctx: SrtpContext) -> Self {
        TxSrtp { ctx, at: None, transport: 0 }
    }

    /// Protect RTP in place now (None), or tell what the owner must do (`buf` unchanged).
    #[inline]
    /// Ask the cache for the context's keys and streams when it protects here (not sealed
    /// for a worker, whose `Keyring` holds the one it uses).
    pub(super) fn prefetch(&self) {
        if self.at.is_none() {
            self.ctx.prefetch();
        }
    }

    pub(super) fn protect_rtp(&mut self, buf: &mut Vec<u8>) -> Result<Option<Seal>, SrtpError> {
        match self.at {
            None => self.ctx.protect_rtp(buf).map(|()| None),
            Some((owner, epoch)) => {
                let grow = self.ctx.profile().rtp_overhead() as u8;
                Ok(Some(Seal { transport: self.transport, epoch, owner, rtcp: false, grow }))
            }
        }
    }

    /// As `protect_rtp`, for an RTCP compound packet.
    pub(super) fn protect_rtcp(&mut self, buf: &mut Vec<u8>) -> Result<Option<Seal>, SrtpError> {
        match self.at {
            None => self.ctx.protect_rtcp(buf).map(|()| None),
            Some((owner, epoch)) => {
                let grow = self.ctx.profile().rtcp_overhead() as u8;
                Ok(Some(Seal { transport: self.transport, epoch, owner, rtcp: true, grow }))
            }
        }
    }

    /// The worker that protects this transport's datagrams (None: protected here).
    #[inline]
    pub(super) fn owner(&self) -> Option<usize> {
        self.at.map(|(owner, _)| owner as usize)
    }

    /// The datagram's length on the wire once `seal` (if any) is applied to `len` bytes.
    #[inline]
    pub(super) fn wire_len(&self, len: usize, seal: Option<Seal>) -> usize {
        seal.map_or(len, |s| s.wire_len(len))
    }

    /// Forget `ssrcs` (inline); with an owner, the `KeyEvent::Forget` to queue.
    pub(super) fn remove_ssrcs(&mut self, ssrcs: Vec<u32>) -> Option<KeyEvent> {
        for &s in &ssrcs {
            self.ctx.remove_ssrc(s);
        }
        let (owner, epoch) = self.at?;
        Some(KeyEvent::Forget { transport: self.transport, epoch, owner, ssrcs })
    }

    /// The owner's `KeyEvent::Remove` when the transport goes (None: protected here).
    pub(super) fn removal(&self) -> Option<KeyEvent> {
        let (owner, epoch) = self.at?;
        Some(KeyEvent::Remove { transport: self.transport, epoch, owner })
    }
}

/// Where a router's transports are protected: here (one worker) or by owner workers.
#[derive(Default)]
pub(super) struct Sealing {
    /// Worker count when more than one (owners seal); 0 or 1: everything is protected here.
    workers: usize,
    next_epoch: u32,
    events: Vec<KeyEvent>,
    /// Transports each worker owns now (index = worker): a transport given keys goes to the
    /// least loaded, so one room's consumers split evenly whatever their addresses hash to.
    owned: Vec<u32>,
}

impl Sealing {
    pub(super) fn set_workers(&mut self, workers: usize) {
        self.workers = workers;
    }

    /// Worker count when more than one, else 0 or 1.
    pub(super) fn workers(&self) -> usize {
        self.workers
    }

    /// `ctx` as transport `h`'s outbound context. With several workers its owner is the worker
    /// that owns the fewest transports now; among those, the one that sends to `dest`
    /// (`workers::owner`, the one the UDP hand-off picks for unsealed datagrams) or, for a TCP
    /// or unknown destination, the handle's share. The context is queued for that owner.
    pub(super) fn install(&mut self, h: Handle, dest: Option<Remote>, ctx: SrtpContext) -> TxSrtp {
        if self.workers <= 1 {
            return TxSrtp::inline(ctx);
        }
        let preferred = match dest {
            Some(Remote { addr, via: Via::Udp }) => crate::workers::owner(&addr, self.workers),
            _ => (h % self.workers as u64) as usize,
        };
        self.owned.resize(self.workers, 0);
        let least = self.owned.iter().copied().min().unwrap_or(0);
        let owner = if self.owned[preferred] == least {
            preferred
        } else {
            self.owned.iter().position(|&n| n == least).unwrap_or(preferred)
        };
        self.owned[owner] += 1;
        let owner = owner as u16;
        self.next_epoch = self.next_epoch.wrapping_add(1);
        let epoch = self.next_epoch;
        self.events.push(KeyEvent::Install { transport: h, epoch, owner, ctx: Box::new(ctx.clone()) });
        TxSrtp { ctx, at: Some((owner, epoch)), transport: h }
    }

    /// Queue `ev` for its owner; a `Remove` frees the owner's place.
    pub(super) fn push(&mut self, ev: Option<KeyEvent>) {
        if let Some(KeyEvent::Remove { owner, .. }) = &ev {
            if let Some(n) = self.owned.get_mut(*owner as usize) {
                *n = n.saturating_sub(1);
            }
        }
        self.events.extend(ev);
    }

    pub(super) fn take(&mut self) -> Vec<KeyEvent> {
        std::mem::take(&mut self.events)
    }
}

/// The sending worker of a UDP destination, or of a sealed datagram (its transport's owner).
pub fn sender(seal: Option<Seal>, dest: &SocketAddr, workers: usize) -> usize {
    match seal {
        Some(s) => s.owner as usize,
        None => crate::workers::owner(dest, workers),
    }
}
