//! Fan-out by owner worker (`workers` > 1): the consumers of a producer packet are forwarded
//! by the worker that owns their transport, not all by the worker that received the packet.
//!
//! The ingress worker decrypts the packet once, forwards it to its own share of the consumers
//! (and to those no worker owns: plain/pipe transports, transports without keys yet), and
//! leaves one `Share` per other owner worker that has consumers of the producer: the
//! decrypted packet with what the consumers need of it. The engine queues each share to its
//! worker (bounded; full: dropped and counted), which takes the router and forwards it to its
//! own consumers (`run_share`): their copies are made, rewritten and protected on the core
//! that sends them, and the ingress worker's work per packet no longer grows with every
//! consumer of the fan-out. One producer's packets come from one ingress worker and its
//! shares are queued in order, so each consumer still gets them in order.
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
//! consumer comes or goes or a transport is (re)keyed (`Shares::changed`).

use std::time::Instant;

use crate::fasthash::HandleMap;
use crate::rtp::{Codec, RtpHeader};

use super::consumer::Consumer;
use super::egress::{fan_out, Fanout, Ingress};
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
    by_worker: Vec<Vec<Handle>>,
}

impl OwnerSplit {
    fn refresh(&mut self, generation: u64, workers: usize, all: &[Handle], consumers: &HandleMap<Consumer>, transports: &HandleMap<Transport>) {
        if self.built == Some(generation) {
            return;
        }
        self.built = Some(generation);
        self.anyone.clear();
        self.by_worker.resize_with(workers, Vec::new);
        self.by_worker.iter_mut().for_each(Vec::clear);
        for &ch in all {
            let owner = consumers
                .get(&ch)
                .and_then(|c| transports.get(&c.transport))
                .and_then(|t| t.tx.as_ref())
                .and_then(|tx| tx.owner())
                .filter(|&o| o < workers);
            match owner {
                Some(o) => self.by_worker[o].push(ch),
                None => self.anyone.push(ch),
            }
        }
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

    /// Forward `share` to the consumers of its worker (the one running this), at `now`.
    pub fn run_share(&mut self, now: Instant, share: Share, out: &mut Output) {
        let workers = self.sealing.workers();
        let Router { transports, producers, consumers, drops, first_media, shares, .. } = self;
        let Some(p) = producers.get_mut(&share.producer) else { return };
        if share.to >= workers {
            return;
        }
        p.split.refresh(shares.generation, workers, &p.consumers, consumers, transports);
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
        let (packets, bytes) = fan_out(consumers, &p.split.by_worker[share.to], &ingress, &mut cx, now);
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
/// `split`) to the consumers the acting worker forwards and leave a share for each other
/// worker with consumers of it; with no acting worker, or for a producer that is not
/// `splittable` (its layers selected by the dependency descriptor), to every consumer. The
/// packets and bytes queued here.
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
    let Some(me) = shares.acting.filter(|_| splittable) else {
        return fan_out(consumers, all, ingress, cx, now);
    };
    split.refresh(shares.generation, workers, all, consumers, cx.transports);
    let a = fan_out(consumers, &split.anyone, ingress, cx, now);
    let b = fan_out(consumers, &split.by_worker[me], ingress, cx, now);
    for (to, list) in split.by_worker.iter().enumerate() {
        if to != me && !list.is_empty() {
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
    (a.0 + b.0, a.1 + b.1)
}
