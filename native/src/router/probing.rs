//! Bandwidth probes toward transport-cc viewers (bwe/probe.rs has the why and the rules):
//! starting a cluster when a consumer would move up if its path allowed, pacing the
//! cluster's padding-only RTX packets, and failing clusters whose feedback never came.

use std::time::Instant;

use crate::bwe::probe::{PACING_INTERVAL, PADDING_OVERHEAD, PADDING_SIZE};
use crate::fasthash::HandleMap;
use crate::rtp;

use super::consumer::Consumer;
use super::output::{DropReason, Drops, Output};
use super::transport::Transport;
use super::Router;

/// RTP version 2 with the padding and extension bits.
const V2_PADDING_EXTENSION: u8 = 0x80 | 0x20 | 0x10;

impl Router {
    /// Timer work of probing: clusters whose result never came fail; clusters being sent
    /// get the padding due now, and the router is woken again within PACING_INTERVAL.
    pub(super) fn probe_timeout(&mut self, now: Instant, out: &mut Output) {
        let Router { transports, consumers, drops, .. } = self;
        let mut sending = false;
        for t in transports.values_mut() {
            let Some(ss) = t.bwe.send_side.as_mut() else { continue };
            ss.prober.check_timeout(now);
            let n = ss.prober.padding_due(now);
            sending |= ss.prober.is_sending();
            if n > 0 {
                send_padding(now, t, consumers, n, drops, out);
            }
        }
        if sending {
            self.wake_at(now + PACING_INTERVAL);
        }
    }
}

/// Start a probe on transport `t` testing whether it carries `needed` bits per second, if
/// its prober allows one now. True if one started.
pub(super) fn start_probe(now: Instant, t: &mut Transport, needed: u64) -> bool {
    match t.bwe.send_side.as_mut() {
        Some(ss) if ss.prober.may_start(now) => {
            ss.prober.start(now, needed);
            true
        }
        _ => false,
    }
}

/// `n` padding packets on the RTX stream of a consumer of `t` that can carry them (it has
/// an RTX SSRC and payload type and stamps transport-wide sequence numbers).
fn send_padding(now: Instant, t: &mut Transport, consumers: &mut HandleMap<Consumer>, n: usize, drops: &mut Drops, out: &mut Output) {
    let dest = t.media_dest();
    let (Some(tx), Some(dest), Some(ss)) = (t.tx.as_mut(), dest, t.bwe.send_side.as_mut()) else { return };
    let carrier = t.consumers.iter().copied().find(|h| consumers.get(h).is_some_and(can_carry));
    let Some(c) = carrier.and_then(|h| consumers.get_mut(&h)) else {
        ss.prober.no_carrier += 1;
        return;
    };
    for _ in 0..n {
        let mut buf = out.take_buf();
        let seq = ss.next_seq();
        write_padding(&mut buf, c, seq);
        let Ok(seal) = tx.protect_rtp(&mut buf) else {
            drops.inc(DropReason::ProtectFailed);
            out.give_back(buf);
            return;
        };
        let len = tx.wire_len(buf.len(), seal);
        ss.on_sent(now, seq, len);
        ss.prober.on_padding_sent(len);
        c.stats.tx(len);
        t.stats.tx(len);
        out.push_sealed(dest, buf, seal);
    }
}

fn can_carry(c: &Consumer) -> bool {
    !c.paused && c.rtx_ssrc.is_some() && c.tcc_ext_id.is_some() && !c.quality.rtx_pt.is_empty() && c.last_out.is_some()
}

/// A padding-only RTX packet of consumer `c` (its RTX SSRC, payload type and next RTX
/// sequence number, its MID, transport-wide sequence `tcc_seq`): no payload, PADDING_SIZE
/// bytes of padding.
fn write_padding(buf: &mut Vec<u8>, c: &mut Consumer, tcc_seq: u16) {
    let q = &mut c.quality;
    let rtx_pt = q.rtx_pt[0].1;
    let seq = q.rtx_seq;
    q.rtx_seq = seq.wrapping_add(1);
    buf.clear();
    buf.push(V2_PADDING_EXTENSION);
    buf.push(rtx_pt & 0x7f);
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&q.tx.last_timestamp().to_be_bytes());
    buf.extend_from_slice(&c.rtx_ssrc.unwrap_or_default().to_be_bytes());
    // One-byte header extensions (RFC 8285): MID, transport-wide sequence number.
    let ext_start = buf.len();
    buf.extend_from_slice(&[0xBE, 0xDE, 0, 0]);
    if let Some((id, mid)) = c.mid_ext_id.zip(c.mid.as_deref()) {
        buf.push((id << 4) | (mid.len() as u8 - 1));
        buf.extend_from_slice(mid);
    }
    if let Some(id) = c.tcc_ext_id {
        buf.push((id << 4) | 1);
        buf.extend_from_slice(&tcc_seq.to_be_bytes());
    }
    while !(buf.len() - ext_start).is_multiple_of(4) {
        buf.push(0);
    }
    let words = ((buf.len() - ext_start) / 4 - 1) as u16;
    buf[ext_start + 2..ext_start + 4].copy_from_slice(&words.to_be_bytes());
    buf.resize(buf.len() + PADDING_SIZE - 1, 0);
    buf.push(PADDING_SIZE as u8);
    debug_assert!(rtp::parse(buf).is_ok_and(|h| h.payload_len == 0 && h.padding_len == PADDING_SIZE));
    debug_assert!(buf.len() + 10 <= PADDING_SIZE + PADDING_OVERHEAD + 16);
}
