//! A router set up like a live room: host transport 1 (producer 10: VP8 with RTX, simulcast
//! SSRCs signalled; producer 11: Opus), viewer transports 2 and 3 with consumers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pysfu_native::remote::Remote;

use pysfu_native::router::{
    CodecSpec, ConsumerSpec, EncodingSpec, ExtSpec, Handle, KeyFrameMethod, Output, ProducerSpec, Router, SrtpKeys, URI_MID,
    URI_RID, URI_RRID,
};
use pysfu_native::srtp::{Profile, SrtpContext};

pub const PROFILE: Profile = Profile::AesCm128HmacSha1_80;

pub fn key(seed: u8) -> (Vec<u8>, Vec<u8>) {
    ((0..16).map(|i| seed.wrapping_add(i)).collect(), (0..14).map(|i| seed ^ i).collect())
}

pub fn addr(port: u16) -> Remote {
    Remote::udp(SocketAddr::from(([10, 0, 0, 1], port)))
}

/// One of 12 addresses, over UDP or (bit 0x20) a TCP connection from the same ip:port.
pub fn remote(b: u8) -> Remote {
    let a = addr(1000 + u16::from(b % 12)).addr;
    if b & 0x20 != 0 {
        Remote::tcp(a)
    } else {
        Remote::udp(a)
    }
}

/// The peer's sending context for transport `h` (the server's remote keys).
pub fn peer_tx(h: Handle) -> SrtpContext {
    let (k, s) = key(h as u8 * 2 + 1);
    SrtpContext::new(PROFILE, &k, &s).expect("valid keys")
}

/// Local ICE credentials of transport `h`.
pub fn ufrag(h: Handle) -> String {
    format!("ufrag{h}")
}

pub fn password(h: Handle) -> String {
    format!("password{h}")
}

/// As the control plane does: ICE nominates the tuple, then DTLS completes with it (proven).
pub fn connect(r: &mut Router, now: Instant, h: Handle, port: u16, out: &mut Output) {
    r.add_transport(h, &ufrag(h), &password(h)).expect("add transport");
    let (lk, ls) = key(h as u8 * 2);
    let (rk, rs) = key(h as u8 * 2 + 1);
    r.bind_tuple(now, h, addr(port), true, out).expect("bind");
    r.set_srtp(now, h, &SrtpKeys::new(PROFILE.name(), &lk, &ls, &rk, &rs), Some(addr(port)), out).expect("srtp");
}

pub fn video_spec(mid: &str, ssrc: u32) -> ProducerSpec {
    ProducerSpec {
        video: true,
        mid: Some(mid.into()),
        codecs: vec![CodecSpec {
            payload_type: 96,
            mapped_payload_type: 101,
            mime: "video/VP8".into(),
            rtx_payload_type: Some(97),
            mapped_rtx_payload_type: Some(102),
            clock_rate: Some(90000),
        }],
        encodings: vec![
            EncodingSpec { ssrc: Some(ssrc), rtx_ssrc: Some(ssrc + 1), rid: None, mapped_ssrc: ssrc + 100 },
            EncodingSpec { ssrc: None, rtx_ssrc: None, rid: Some("h".into()), mapped_ssrc: ssrc + 101 },
        ],
        header_extensions: vec![
            ExtSpec { id: 4, router_id: Some(1), uri: URI_MID.into() },
            ExtSpec { id: 10, router_id: Some(10), uri: URI_RID.into() },
            ExtSpec { id: 11, router_id: Some(11), uri: URI_RRID.into() },
            ExtSpec { id: 2, router_id: Some(4), uri: "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time".into() },
        ],
        key_frame_request: Some(KeyFrameMethod::Pli),
        paused: false,
        nack: true,
    }
}

pub fn audio_spec(mid: &str, ssrc: u32) -> ProducerSpec {
    ProducerSpec {
        video: false,
        mid: Some(mid.into()),
        codecs: vec![CodecSpec {
            payload_type: 111,
            mapped_payload_type: 100,
            mime: "audio/opus".into(),
            rtx_payload_type: None,
            mapped_rtx_payload_type: None,
            clock_rate: Some(48000),
        }],
        encodings: vec![EncodingSpec { ssrc: Some(ssrc), rtx_ssrc: None, rid: None, mapped_ssrc: ssrc + 100 }],
        header_extensions: vec![ExtSpec { id: 4, router_id: Some(1), uri: URI_MID.into() }],
        key_frame_request: None,
        paused: false,
        nack: false,
    }
}

pub fn consumer_spec(ssrc: u32, mid: &str, encoding: usize) -> ConsumerSpec {
    ConsumerSpec {
        ssrc,
        rtx_ssrc: Some(ssrc + 1),
        mid: Some(mid.into()),
        mid_ext_id: Some(1),
        payload_types: vec![(101, 101), (102, 102), (100, 100)],
        paused: false,
        encoding,
        rtx_payload_types: vec![(101, 102)],
        nack: true,
        cname: Some("fuzz".into()),
        pipe_ssrcs: vec![],
        svc: None,
        tcc_ext_id: None,
    }
}

/// A router started at `now` with a fixed seed and wall clock: a crash reproduces exactly.
pub fn router(now: Instant) -> Router {
    Router::new(0x5eed, now, Duration::from_secs(1_700_000_000))
}

/// Host on port 1000 (transport 1), viewers on 2000/3000 (transports 2, 3; 3 with transport-cc).
pub fn room(now: Instant) -> Router {
    let mut r = router(now);
    let mut out = Output::new();
    connect(&mut r, now, 1, 1000, &mut out);
    connect(&mut r, now, 2, 2000, &mut out);
    connect(&mut r, now, 3, 3000, &mut out);
    r.add_producer(now, 10, 1, video_spec("0", 0x1000)).expect("video producer");
    r.add_producer(now, 11, 1, audio_spec("1", 0x2000)).expect("audio producer");
    r.add_consumer(now, 20, 2, 10, consumer_spec(0xA000, "0", 0), &mut out).expect("consumer");
    r.add_consumer(now, 21, 2, 11, consumer_spec(0xA010, "1", 0), &mut out).expect("consumer");
    // Viewer 3 negotiated transport-cc: its packets are stamped, its feedback estimated from.
    let mut tcc = consumer_spec(0xB000, "0", 1);
    tcc.tcc_ext_id = Some(5);
    r.add_consumer(now, 30, 3, 10, tcc, &mut out).expect("consumer");
    r
}
