//! Two workers' cross-worker queues (workers.rs) under arbitrary interleavings, driven on one
//! thread: each input byte is a step of worker 0 or 1 (make a fan-out batch and hand off the
//! other's share, send what its inbox holds, take back its sent batches). Checked: every
//! UDP datagram leaves from its destination's owner; the datagrams one worker made for one
//! destination leave in the order it made them (two makers' datagrams to one destination
//! may interleave: the router's order is per ingress worker, e.g. one producer's packets);
//! what a full inbox refused is counted; made = sent + dropped at the end.
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use pysfu_native::remote::Remote;
use pysfu_native::router::Transmit;
use pysfu_native::workers::{owner, Mesh, Partitioner};

const DESTS: u16 = 12;

struct Model {
    next: HashMap<SocketAddr, u32>,
    /// (maker, destination) -> the last number sent.
    last_sent: HashMap<(u8, SocketAddr), u32>,
    made: u64,
    sent: u64,
}

impl Model {
    /// A datagram numbered in order per destination; TCP ones every 5th destination.
    fn make(&mut self, maker: usize, d: u16) -> Transmit {
        let addr = SocketAddr::from(([127, 0, 0, 1], 40000 + d));
        let n = self.next.entry(addr).or_insert(0);
        *n += 1;
        self.made += 1;
        let dest = if d % 5 == 4 { Remote::tcp(addr) } else { Remote::udp(addr) };
        let mut buf = n.to_be_bytes().to_vec();
        buf.push(maker as u8);
        Transmit::new(dest, buf)
    }

    /// Worker `me` sends `t`: UDP only by its owner, per destination in order.
    fn send(&mut self, me: usize, t: &Transmit) {
        let n = u32::from_be_bytes(t.buf[..4].try_into().unwrap());
        if t.dest.via == pysfu_native::remote::Via::Udp {
            assert_eq!(owner(&t.dest.addr, 2), me, "{} sent by a worker that does not own it", t.dest.addr);
        }
        if let Some(prev) = self.last_sent.insert((t.buf[4], t.dest.addr), n) {
            assert!(n > prev, "{} from maker {}: {n} after {prev}", t.dest.addr, t.buf[4]);
        }
        self.sent += 1;
    }
}

fn drain(mesh: &Mesh, model: &mut Model, me: usize) {
    while let Some(b) = mesh.take(me) {
        assert_ne!(b.from, me);
        for t in &b.transmits {
            model.send(me, t);
        }
        mesh.give_back(b);
    }
}

fuzz_target!(|data: &[u8]| {
    let mesh = Mesh::new(2);
    let mut parts = [Partitioner::new(0, 2), Partitioner::new(1, 2)];
    let mut model = Model { next: HashMap::new(), last_sent: HashMap::new(), made: 0, sent: 0 };
    for (i, &op) in data.iter().enumerate().take(20_000) {
        let me = (op & 1) as usize;
        match (op >> 1) & 3 {
            0 | 1 => {
                // A fan-out batch: `count` datagrams over destinations from the next bytes.
                let count = 1 + (op >> 3) as usize;
                let mut out: Vec<Transmit> =
                    (0..count).map(|k| model.make(me, data.get(i + 1 + k).map_or(k as u16, |&b| b as u16) % DESTS)).collect();
                parts[me].split(&mut out);
                assert!(parts[me].take_for(me).is_none());
                if let Some(b) = parts[me].take_for(1 - me) {
                    assert!(b.transmits.iter().all(|t| owner(&t.dest.addr, 2) == 1 - me));
                    if let Err(b) = mesh.hand_off(1 - me, b) {
                        parts[me].reuse(b.transmits);
                    }
                }
                for t in &out {
                    model.send(me, t);
                }
            }
            2 => drain(&mesh, &mut model, me),
            _ => {
                while let Some(v) = mesh.take_returned(me) {
                    parts[me].reuse(v);
                }
            }
        }
    }
    drain(&mesh, &mut model, 0);
    drain(&mesh, &mut model, 1);
    assert_eq!(model.made, model.sent + mesh.inbox_full(), "every datagram sent or counted as dropped");
});
