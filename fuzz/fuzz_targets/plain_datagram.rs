//! Plain transports' datagrams: a room with a plain producer transport (fixed remote),
//! a comedia plain transport, a comedia one without rtcp-mux (RTP and RTCP sockets) and a
//! plain consumer transport (with a plain and a pipe consumer) receives arbitrary datagrams
//! from the right and wrong sources, on the plain sockets and on the main one. Invariants:
//! no panic, no object created or removed, media leaves a plain transport only by its own
//! socket and only to its remote address (a comedia transport's is its first valid
//! source, never replaced; without rtcp-mux, RTCP leaves only by the RTCP socket, to the
//! first valid RTCP source there, never replaced), and nothing goes to an address that is
//! not a known peer.
#![no_main]

mod common;

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pysfu_native::remote::Via;
use pysfu_native::router::Output;

const VIA_IN: u32 = 5;
const VIA_COMEDIA: u32 = 6;
const VIA_OUT: u32 = 7;
const VIA_SPLIT_RTP: u32 = 8;
const VIA_SPLIT_RTCP: u32 = 9;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut r = common::router(now);
    let mut out = Output::new();
    common::connect(&mut r, now, 2, 2000, &mut out);
    r.add_plain_transport(1, VIA_IN, false, false).expect("plain");
    r.connect_plain(now, 1, Some(common::addr(1000).addr), None, &mut out).expect("connect");
    r.add_plain_transport(4, VIA_COMEDIA, true, false).expect("comedia");
    r.connect_plain(now, 4, None, None, &mut out).expect("connect");
    r.add_plain_transport(6, VIA_SPLIT_RTP, true, false).expect("split");
    r.set_plain_rtcp_socket(6, VIA_SPLIT_RTCP).expect("rtcp socket");
    r.connect_plain(now, 6, None, None, &mut out).expect("connect");
    r.add_plain_transport(5, VIA_OUT, false, false).expect("plain out");
    r.connect_plain(now, 5, Some(common::addr(5000).addr), None, &mut out).expect("connect");
    let mut video = common::video_spec("0", 0x1000);
    video.mid = None;
    r.add_producer(now, 10, 1, video.clone()).expect("producer");
    r.add_producer(now, 11, 4, video.clone()).expect("comedia producer");
    r.add_producer(now, 12, 6, video).expect("split producer");
    r.add_consumer(now, 20, 2, 10, common::consumer_spec(0xA000, "0", 0), &mut out).expect("consumer");
    r.add_consumer(now, 21, 2, 11, common::consumer_spec(0xA010, "1", 0), &mut out).expect("consumer");
    r.add_consumer(now, 22, 2, 12, common::consumer_spec(0xA020, "2", 0), &mut out).expect("consumer");
    let mut plain = common::consumer_spec(0xC000, "0", 0);
    plain.mid = None;
    plain.mid_ext_id = None;
    r.add_consumer(now, 50, 5, 10, plain, &mut out).expect("plain consumer");
    // A pipe consumer of the comedia producer on the plain-out transport (every stream,
    // its own SSRCs; NACKs and PLIs from the far router arrive on that socket).
    let mut pipe = common::consumer_spec(0xD000, "0", 0);
    pipe.mid = None;
    pipe.mid_ext_id = None;
    pipe.pipe_ssrcs = vec![(0xD000, Some(0xD100)), (0xD002, Some(0xD102))];
    r.add_consumer(now, 51, 5, 11, pipe, &mut out).expect("pipe consumer");
    out.recycle();
    let counts = r.counts();
    let mut comedia_remote = None;
    let mut split_rtcp_remote = None;
    let mut t = now;
    let mut rest = data;
    while rest.len() >= 2 {
        let (sel, len) = (rest[0], rest[1] as usize * 2);
        let body = &rest[2..];
        let n = len.min(body.len());
        let pkt = &body[..n];
        rest = &body[n..];
        let from = common::addr(1000 + 1000 * u16::from(sel & 7));
        match (sel >> 3) & 7 {
            0 => r.handle_plain_datagram(t, 1, from.addr, pkt, &mut out),
            1 => r.handle_plain_datagram(t, 4, from.addr, pkt, &mut out),
            2 => r.handle_plain_datagram(t, 5, from.addr, pkt, &mut out),
            4 => r.handle_plain_datagram(t, 6, from.addr, pkt, &mut out),
            5 => r.handle_plain_rtcp_datagram(t, 6, from.addr, pkt, &mut out),
            _ => {
                r.handle_datagram(t, from, pkt, &mut out);
            }
        }
        if sel & 0x40 != 0 {
            t += Duration::from_millis(300);
            r.handle_timeout(t, &mut out);
        }
        if sel & 0x80 != 0 {
            r.request_consumer_key_frame(t, 50, &mut out).expect("consumer");
        }
        for tr in &out.transmits {
            match tr.dest.via {
                Via::Udp => assert_eq!(tr.dest, common::addr(2000), "main socket: only the WebRTC peer"),
                Via::Plain(VIA_IN) => assert_eq!(tr.dest.addr, common::addr(1000).addr),
                Via::Plain(VIA_OUT) => assert_eq!(tr.dest.addr, common::addr(5000).addr),
                Via::Plain(VIA_COMEDIA) => {
                    assert_eq!(*comedia_remote.get_or_insert(tr.dest.addr), tr.dest.addr, "comedia remote moved");
                }
                Via::Plain(VIA_SPLIT_RTCP) => {
                    assert_eq!(*split_rtcp_remote.get_or_insert(tr.dest.addr), tr.dest.addr, "RTCP remote moved");
                }
                v => panic!("unknown socket {v:?} (a producer's split transport sends nothing by its RTP port)"),
            }
        }
        out.recycle();
    }
    assert_eq!(r.counts(), counts);
    for h in [1, 2, 4, 5, 6, 10, 11, 12, 20, 21, 22, 50, 51] {
        r.stats(t, h).expect("object still there");
    }
});
