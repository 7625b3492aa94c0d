//! Transport-wide CC: parsing arbitrary feedback never panics; feedback built from random
//! arrivals parses back (through the RTCP parser) to packets that really arrived, at their
//! arrival times (to the format's 250 µs resolution), within the status limit.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use pysfu_native::rtcp::{self, Packet};
use pysfu_native::twcc::{self, TwccRecorder, MAX_STATUS};

fuzz_target!(|data: &[u8]| {
    let _ = twcc::parse_feedback(data);

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
