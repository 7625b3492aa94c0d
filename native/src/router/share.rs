//! Fan-out by owner worker (`workers` > 1): the consumers of a producer packet are forwarded
//! by the worker that owns their transport, not all by the worker that received the packet.
//!
//! The ingress worker decrypts the packet once, forwards it to the consumers no worker owns
//! (plain/pipe transports, transports without keys yet) and leaves one `Share` per owner
//! worker that has consumers of the producer, itself included: the decrypted packet with
//! what the consumers need of it. The engine queues each share to its worker (bounded; full:
//! dropped and counted), which forwards it to its own consumers (`share_consumers`, then
//! `run_share_part` over parts of that list): their copies are made, rewritten and protected
//! on the core that sends them. Routing a receive batch is then only its ingress work
//! (decryption, stream learning, NACK bookkeeping), so the other worker is handed its shares
//! at once instead of after the whole fan-out, and each worker can forward a few consumers,
//! send them and go on (the engine releases the router between parts): the first datagrams
//! of a frame leave while the rest are still being made. One producer's packets come from
//! one ingress worker and its shares are queued in order; a worker runs the shares it took in
//! parts of the same consumer positions of each share's list (taken for all of them at once),
//! so each consumer still gets them in order.
//!
//! Producers whose layers are selected by the dependency descriptor (AV1, H264 with the
//! extension negotiated) are forwarded whole by the ingress worker, as with one worker: a
//! descriptor is resolved against its stream's current structure, which a later packet may
//! replace. That holds for every packet of such a producer, with or without a descriptor
//! that parsed, so one producer's packets to a consumer always take one path (a share, or a
//! datagram in the owner's inbox, which it sends before it runs its shares) and keep their
//! order.
//!
//! Which consumers are whose is cached per producer (`OwnerSplit`) and rebuilt when a
//! consumer comes or goes or a transport is (re)keyed (`Shares::changed`). A worker's list is
//! shared (`Arc`): the snapshot a worker takes for its shares stays as it was while the
//! router is released between parts; a consumer removed meanwhile is skipped, one added
//! meanwhile starts with the next packets.

use std::sync::Arc;
use std::time::Instant;

use crate::fasthash::HandleMap;
use crate::rtp::{Codec, RtpHeader};

use super::consumer::Consumer;
use super::egress::{fan_out, warm, Fanout, Ingress};
use super::output::Output;
use super::transport::Transport;
use super::{Handle, Router, UpKind};

/// A producer packet for one other worker's consumers.
pub struct Share {
    /// The worker that forwards it.
    pub to: usize,
    producer: Handle,
    /// The decrypted packet (RTX restored).
    data: Vec<u8>,
    hdr: RtpHeader,
    encoding: usize,
    router_pt: u8,
    key_frame: bool,
    codec: Codec,
    has_key_frames: bool,
}

/// The router's side of owner fan-out: who is routing now, and the shares it left.
#[derive(Default)]
pub(super) struct Shares {
    /// The worker running the router now (set by the engine around its datagrams); None:
    /// a thread that is no worker (the plain thread, control calls, tests) forwards all.
    acting: Option<usize>,
    /// Bumped whenever a producer's split by owner may have changed.
    generation: u64,
    out: Vec<Share>,
}

impl Shares {
    pub(super) fn changed(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }
}

/// A producer's consumers by the worker that forwards them (cached for one generation).
#[derive(Default)]
pub(super) struct OwnerSplit {
    /// The `Shares::generation` it was built at; None: never built.
    built: Option<u64>,
    /// Consumers no worker owns (forwarded by whoever routes the packet).
    anyone: Vec<Handle>,
    /// Index = worker.
    by_worker: Vec<Arc<[Handle]>>,
}

impl OwnerSplit {
    fn refresh(&mut self, generation: u64, workers: usize, all: &[Handle], consumers: &HandleMap<Consumer>, transports: &HandleMap<Transport>) {
        if self.built == Some(generation) {
            return;
        }
        self.built = Some(generation);
        self.anyone.clear();
        let mut by_worker: Vec<Vec<Handle>> = vec![Vec::new(); workers];
        for &ch in all {
            let owner = consumers
                .get(&ch)
                .and_then(|c| transports.get(&c.transport))
                .and_then(|t| t.tx.as_ref())
                .and_then(|tx| tx.owner())
                .filter(|&o| o < workers);
            match owner {
                Some(o) => by_worker[o].push(ch),
                None => self.anyone.push(ch),
            }
        }
        self.by_worker = by_worker.into_iter().map(Arc::from).collect();
    }
}

impl Router {
    /// The worker that runs the router from now on (`None`: not a worker; forward every
    /// consumer). The engine sets it around a worker's datagrams and clears it after.
    pub fn act_as(&mut self, worker: Option<usize>) {
        self.shares.acting = worker.filter(|&w| self.sealing.workers() > 1 && w < self.sealing.workers());
    }

    /// The shares left for other workers, oldest first (the engine queues them to their
    /// workers before it releases the router, after the key events).
    pub fn take_shares(&mut self) -> Vec<Share> {
        std::mem::take(&mut self.shares.out)
    }

    /// Whether shares wait to be taken.
    pub fn has_shares(&self) -> bool {
        !self.shares.out.is_empty()
    }

    /// The consumers `share`'s worker forwards it to, as they are now (None: its producer
    /// is gone). The engine takes this once per share and runs the share over parts of it.
    pub fn share_consumers(&mut self, share: &Share) -> Option<Arc<[Handle]>> {
        let workers = self.sealing.workers();
        let Router { transports, producers, consumers, shares, .. } = self;
        let p = producers.get_mut(&share.producer)?;
        if share.to >= workers {
            return None;
        }
        p.split.refresh(shares.generation, workers, &p.consumers, consumers, transports);
        Some(p.split.by_worker[share.to].clone())
    }

    /// Start loading the state of `part`'s consumers and of their transports into the cache
    /// (one pass, the loads of different consumers overlapping), before their packets are
    /// forwarded one consumer after another.
    pub fn warm_part(&self, part: &[Handle]) {
        warm(&self.consumers, &self.transports, part);
    }

    /// Forward `share` to all of its worker's consumers (the one running this), at `now`.
    pub fn run_share(&mut self, now: Instant, share: &Share, out: &mut Output) {
        if let Some(list) = self.share_consumers(share) {
            self.run_share_part(now, share, &list, out);
        }
    }

    /// Forward `share` to `part` (consumers of `share_consumers`; those gone since are
    /// skipped), at `now`.
    pub fn run_share_part(&mut self, now: Instant, share: &Share, part: &[Handle], out: &mut Output) {
        let Router { transports, producers, consumers, drops, first_media, .. } = self;
        let Some(p) = producers.get_mut(&share.producer) else { return };
        let ingress = Ingress {
            data: &share.data,
            hdr: &share.hdr,
            encoding: share.encoding,
            router_pt: share.router_pt,
            key_frame: share.key_frame,
            codec: share.codec,
            has_key_frames: share.has_key_frames,
            ext_map: &p.ext_map,
            dd: None,
        };
        let mut cx = Fanout { transports, drops, out, first_media, key_frame_wanted: false };
        // Asked for by the worker before the part (`warm_part`).
        let (packets, bytes) = fan_out(consumers, part, &ingress, &mut cx, now, false);
        let key_frame_wanted = cx.key_frame_wanted;
        p.stats.packets_out += packets;
        p.stats.bytes_out += bytes;
        while let Some((th, dest)) = self.first_media.pop() {
            self.push_up(UpKind::Media, th, dest, &[]);
        }
        if key_frame_wanted {
            self.request_key_frame(now, share.producer, share.encoding, out);
        }
    }
}

/// Forward `ingress` (of producer `ph`, whose consumers are `all`, split by owner in
/// `split`) to the consumers no worker owns and leave a share for each worker with consumers
/// of it, the acting one included; with no acting worker, or for a producer that is not
/// `splittable` (its layers selected by the dependency descriptor), forward it to every
/// consumer. The packets and bytes queued here.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(super) fn fan_out_split(
    shares: &mut Shares,
    workers: usize,
    ph: Handle,
    splittable: bool,
    split: &mut OwnerSplit,
    all: &[Handle],
    consumers: &mut HandleMap<Consumer>,
    ingress: &Ingress<'_>,
    cx: &mut Fanout<'_>,
    now: Instant,
) -> (u64, u64) {
    if shares.acting.is_none() || !splittable {
        return fan_out(consumers, all, ingress, cx, now, true);
    }
    split.refresh(shares.generation, workers, all, consumers, cx.transports);
    let forwarded = fan_out(consumers, &split.anyone, ingress, cx, now, true);
    for (to, list) in split.by_worker.iter().enumerate() {
        if !list.is_empty() {
            shares.out.push(Share {
                to,
                producer: ph,
                data: ingress.data.to_vec(),
                hdr: *ingress.hdr,
                encoding: ingress.encoding,
                router_pt: ingress.router_pt,
                key_frame: ingress.key_frame,
                codec: ingress.codec,
                has_key_frames: ingress.has_key_frames,
            });
        }
    }
    forwarded
}
