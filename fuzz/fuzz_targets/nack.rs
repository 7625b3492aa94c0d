//! Loss repair state (nack.rs) against models: the retransmission buffer returns exactly
//! the last packet stored under a sequence number while it is in the ring and young enough,
//! from storage never larger than the ring;
//! the consumer SeqMap returns the last record of an output number and rate-limits resends;
//! the NACK generator never asks for a packet that arrived, keeps its list bounded and never
//! panics on any arrival order.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pysfu_native::nack::{Arrival, NackConfig, NackGenerator, RetransmissionBuffer, SeqMap, SLOTS};

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let max_age = Duration::from_millis(500);
    let mut buf = RetransmissionBuffer::new(t0, max_age);
    // slot → (seq, stored at, bytes): what the ring should hold.
    let mut model: HashMap<usize, (u16, Instant, Vec<u8>)> = HashMap::new();
    let mut map = SeqMap::new(t0);
    // slot → (out, input, stream, last resend in ms since t0)
    let mut map_model: HashMap<usize, (u16, u16, u8, Option<u128>)> = HashMap::new();
    let cfg = NackConfig::default();
    let mut gen = NackGenerator::new(cfg);
    // Arrivals since the last reset, by sequence number (runs stay < 2^15 numbers).
    let mut arrived: HashMap<u16, ()> = HashMap::new();
    let mut seq: u16 = u16::from_be_bytes([data.first().copied().unwrap_or(0), data.get(1).copied().unwrap_or(0)]);
    for op in data.chunks_exact(4).take(3000) {
        let (kind, a, b, c) = (op[0] % 8, op[1], op[2], op[3]);
        let arg = u16::from_be_bytes([b, c]);
        match kind {
            0 => {
                let s = arg;
                let pkt = vec![a; (c as usize) % 64 + 1];
                buf.store(now, s, &pkt);
                assert!(buf.storage() <= SLOTS, "storage {} past the ring", buf.storage());
                model.insert(s as usize % SLOTS, (s, now, pkt));
            }
            1 => {
                let s = arg;
                let want = model
                    .get(&(s as usize % SLOTS))
                    .filter(|(ms, at, _)| *ms == s && now.saturating_duration_since(*at) <= max_age)
                    .map(|(_, _, d)| d.as_slice());
                assert_eq!(buf.get(now, s), want, "seq {s}");
            }
            2 => {
                map.record(arg, arg.wrapping_mul(3), a);
                map_model.insert(arg as usize % SLOTS, (arg, arg.wrapping_mul(3), a, None));
            }
            3 => {
                let entry = map_model.get_mut(&(arg as usize % SLOTS)).filter(|e| e.0 == arg);
                assert_eq!(map.lookup(arg), entry.as_ref().map(|e| (e.2, e.1)));
                let interval = Duration::from_millis(u64::from(a));
                let now_ms = now.duration_since(t0).as_millis();
                let allowed = entry
                    .as_ref()
                    .is_some_and(|e| e.3.is_none_or(|last| now_ms - last >= interval.as_millis()));
                assert_eq!(map.try_resend(now, arg, interval), allowed);
                if allowed {
                    if let Some(e) = entry {
                        e.3 = Some(now_ms);
                    }
                    if a > 0 {
                        assert!(!map.try_resend(now, arg, interval), "resent twice within the interval");
                    }
                }
            }
            4 | 5 => {
                // Mostly forward with small gaps, sometimes reordered or retransmitted.
                let step = (a % 6) as u16;
                let s = if kind == 4 { seq.wrapping_add(step) } else { seq.wrapping_sub(step * 3) };
                let rtx = b & 1 == 1;
                let r = gen.on_packet(now, s, rtx);
                if matches!(r, Arrival::Restart | Arrival::Overflow) {
                    arrived.clear();
                }
                if r != Arrival::Duplicate || !rtx {
                    arrived.insert(s, ());
                }
                if kind == 4 {
                    seq = s.wrapping_add(1);
                }
                assert!(gen.missing_count() <= cfg.max_list);
            }
            6 => {
                now += Duration::from_millis(u64::from(a));
                let asked: Vec<u16> = gen.collect(now).to_vec();
                assert!(asked.len() <= cfg.max_batch);
                for s in asked {
                    assert!(!arrived.contains_key(&s), "NACK for {s}, which arrived");
                }
            }
            _ => {
                if a == 0 {
                    gen.reset();
                    arrived.clear();
                    buf.clear();
                    model.clear();
                } else {
                    now += Duration::from_millis(u64::from(a) * 4);
                }
            }
        }
    }
});
