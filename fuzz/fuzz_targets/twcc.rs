//! Transport-wide CC: parsing arbitrary feedback never panics; feedback built from random
//! arrivals parses back (through the RTCP parser) to packets that really arrived, at their
//! arrival times (to the format's 250 µs resolution), within the status limit. Whatever
//! parses also goes through the send-side estimator (bwe/send_side.rs) over a history of
//! sent packets and a probe cluster: no panic, an estimate within its bounds.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pysfu_native::bwe::send_side::{SendSide, MAX_BITRATE};
use pysfu_native::rtcp::{self, Packet};
use pysfu_native::twcc::{self, TwccRecorder, MAX_STATUS};

fuzz_target!(|data: &[u8]| {
    if let Some(fb) = twcc::parse_feedback(data) {
        let t0 = Instant::now();
        let mut ss = SendSide::new(t0);
        ss.prober.start(t0, 1_000_000);
        for i in 0..256u64 {
            let now = t0 + Duration::from_millis(i);
            let seq = ss.next_seq();
            ss.on_sent(now, seq, 200 + (i as usize * 37) % 1000);
            ss.prober.padding_due(now);
        }
        for k in 0..3u64 {
            let now = t0 + Duration::from_millis(300 + k * 100);
            ss.on_feedback(now, &fb);
            if let Some(b) = ss.available_bitrate(now) {
                assert!(b <= MAX_BITRATE);
            }
        }
    }

    let mut rec = TwccRecorder::new();
    let mut arrivals: HashMap<u16, Vec<i64>> = HashMap::new();
    let mut t: i64 = 1_000_000;
    let mut seq: u16 = 0;
    let mut out = Vec::new();
    for op in data.chunks_exact(3).take(2000) {
        match op[0] % 4 {
            0 | 1 => {
                seq = seq.wrapping_add(u16::from(op[1] % 4));
                t += i64::from(op[2]) * 100;
                rec.record(seq, t);
                arrivals.entry(seq).or_default().push(t);
                seq = seq.wrapping_add(1);
            }
            2 => {
                let s = seq.wrapping_sub(u16::from(op[1]));
                rec.record(s, t);
                arrivals.entry(s).or_default().push(t);
            }
            _ => {
                out.clear();
                if !rec.build_feedback(&mut out, 1, 2) {
                    continue;
                }
                let fb = match rtcp::parse_packet(&out) {
                    Ok(Packet::TransportCc(tcc)) => twcc::parse_feedback(tcc.fci).expect("own feedback parses"),
                    other => panic!("feedback is not transport-cc: {other:?}"),
                };
                assert!(fb.packets.len() as i64 <= MAX_STATUS);
                for p in &fb.packets {
                    if let Some(at) = p.arrival_us {
                        let times = arrivals.get(&p.seq).expect("reported packet arrived");
                        assert!(
                            times.iter().any(|x| (0..250).contains(&(x - at))),
                            "seq {} reported at {at}, arrived at {times:?}",
                            p.seq
                        );
                    }
                }
            }
        }
    }
});
