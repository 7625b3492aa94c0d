//! RTCP compound parsing and building (RFC 3550, RFC 4585 feedback, RFC 5104 FIR,
//! draft-alvestrand-rmcat-remb, draft-holmer-rmcat-transport-wide-cc-extensions).
//!
//! [`compound`] validates the whole (decrypted) compound packet first: any malformed
//! sub-packet makes it yield a single `Err` and nothing else. Views borrow the buffer; no
//! allocation. SDES, APP, XR and unknown types are reported as [`Packet::Sdes`] /
//! [`Packet::Other`] (skipped, not errors).
//!
//! Builders append to a `Vec<u8>` (so several calls make a compound packet); they allocate
//! only when the `Vec` lacks capacity.

use crate::bytes::{be16, be32};
use std::ops::Range;

pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
pub const PT_SDES: u8 = 202;
pub const PT_BYE: u8 = 203;
pub const PT_APP: u8 = 204;
pub const PT_RTPFB: u8 = 205;
pub const PT_PSFB: u8 = 206;
pub const PT_XR: u8 = 207;

/// RTPFB FMT: generic NACK.
pub const FMT_NACK: u8 = 1;
/// RTPFB FMT: transport-wide congestion control feedback.
pub const FMT_TRANSPORT_CC: u8 = 15;
/// PSFB FMT: picture loss indication.
pub const FMT_PLI: u8 = 1;
/// PSFB FMT: full intra request.
pub const FMT_FIR: u8 = 4;
/// PSFB FMT: application layer feedback (REMB).
pub const FMT_AFB: u8 = 15;

const REPORT_BLOCK_LEN: usize = 24;
const MAX_RC: usize = 31;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpError {
    /// Less than a 4-byte header, or a length field running past the buffer.
    TooShort,
    /// Version field is not 2.
    BadVersion,
    /// A packet whose content does not fit its declared length / counts.
    BadLength,
    /// Padding count 0 or larger than the packet.
    BadPadding,
}

impl std::fmt::Display for RtcpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for RtcpError {}

/// Sender info of an SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    pub ssrc: u32,
    /// 64-bit NTP timestamp (seconds << 32 | fraction).
    pub ntp: u64,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    pub ssrc: u32,
    pub fraction_lost: u8,
    /// 24-bit signed cumulative number of packets lost.
    pub cumulative_lost: i32,
    pub highest_seq: u32,
    pub jitter: u32,
    pub last_sr: u32,
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    fn parse(b: &[u8]) -> Option<ReportBlock> {
        let lost = be32(b, 4)?;
        let cum = (lost & 0x00ff_ffff) as i32;
        let cum = if cum & 0x0080_0000 != 0 {
            cum - 0x0100_0000
        } else {
            cum
        };
        Some(ReportBlock {
            ssrc: be32(b, 0)?,
            fraction_lost: (lost >> 24) as u8,
            cumulative_lost: cum,
            highest_seq: be32(b, 8)?,
            jitter: be32(b, 12)?,
            last_sr: be32(b, 16)?,
            delay_since_last_sr: be32(b, 20)?,
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        let cum = self.cumulative_lost.clamp(-0x0080_0000, 0x007f_ffff) as u32 & 0x00ff_ffff;
        out.extend_from_slice(&(((self.fraction_lost as u32) << 24) | cum).to_be_bytes());
        out.extend_from_slice(&self.highest_seq.to_be_bytes());
        out.extend_from_slice(&self.jitter.to_be_bytes());
        out.extend_from_slice(&self.last_sr.to_be_bytes());
        out.extend_from_slice(&self.delay_since_last_sr.to_be_bytes());
    }
}

/// Iterator over report blocks.
#[derive(Debug, Clone)]
pub struct ReportBlocks<'a> {
    data: &'a [u8],
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;

    fn next(&mut self) -> Option<ReportBlock> {
        let b = ReportBlock::parse(self.data)?;
        self.data = self.data.get(REPORT_BLOCK_LEN..).unwrap_or(&[]);
        Some(b)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport<'a> {
    pub info: SenderInfo,
    blocks: &'a [u8],
}

impl<'a> SenderReport<'a> {
    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        ReportBlocks { data: self.blocks }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverReport<'a> {
    pub sender_ssrc: u32,
    blocks: &'a [u8],
}

impl<'a> ReceiverReport<'a> {
    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        ReportBlocks { data: self.blocks }
    }
}

/// Iterator over a run of 32-bit SSRCs.
#[derive(Debug, Clone)]
pub struct Ssrcs<'a> {
    data: &'a [u8],
    stride: usize,
}

impl Iterator for Ssrcs<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let v = be32(self.data, 0)?;
        self.data = self.data.get(self.stride..).unwrap_or(&[]);
        Some(v)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bye<'a> {
    ssrcs: &'a [u8],
}

impl<'a> Bye<'a> {
    pub fn ssrcs(&self) -> Ssrcs<'a> {
        Ssrcs {
            data: self.ssrcs,
            stride: 4,
        }
    }
}

/// Generic NACK (RTPFB FMT 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nack<'a> {
    pub sender_ssrc: u32,
    pub media_ssrc: u32,
    fci: &'a [u8],
}

impl<'a> Nack<'a> {
    /// The (PID, BLP) pairs.
    pub fn pairs(&self) -> impl Iterator<Item = (u16, u16)> + 'a {
        self.fci.chunks_exact(4).map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u16::from_be_bytes([c[2], c[3]]),
            )
        })
    }

    /// Every sequence number asked for (PID, then PID + i + 1 for each BLP bit i).
    pub fn seqs(&self) -> impl Iterator<Item = u16> + 'a {
        self.pairs().flat_map(|(pid, blp)| {
            std::iter::once(pid).chain(
                (0..16u16)
                    .filter(move |i| blp & (1 << i) != 0)
                    .map(move |i| pid.wrapping_add(i + 1)),
            )
        })
    }
}

/// Transport-wide CC feedback (RTPFB FMT 15); the FCI is left raw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportCc<'a> {
    pub sender_ssrc: u32,
    pub media_ssrc: u32,
    pub fci: &'a [u8],
}

/// Picture loss indication (PSFB FMT 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pli {
    pub sender_ssrc: u32,
    pub media_ssrc: u32,
}

/// Full intra request (PSFB FMT 4): entries of (SSRC, command sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fir<'a> {
    pub sender_ssrc: u32,
    fci: &'a [u8],
}

impl<'a> Fir<'a> {
    pub fn entries(&self) -> impl Iterator<Item = (u32, u8)> + 'a {
        self.fci
            .chunks_exact(8)
            .map(|c| (u32::from_be_bytes([c[0], c[1], c[2], c[3]]), c[4]))
    }

    pub fn ssrcs(&self) -> Ssrcs<'a> {
        Ssrcs {
            data: self.fci,
            stride: 8,
        }
    }
}

/// Receiver estimated maximum bitrate (PSFB FMT 15, "REMB").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remb<'a> {
    pub sender_ssrc: u32,
    /// Bits per second (saturating).
    pub bitrate: u64,
    ssrcs: &'a [u8],
}

impl<'a> Remb<'a> {
    pub fn ssrcs(&self) -> Ssrcs<'a> {
        Ssrcs {
            data: self.ssrcs,
            stride: 4,
        }
    }
}

/// One RTCP packet of a compound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    Sr(SenderReport<'a>),
    Rr(ReceiverReport<'a>),
    Sdes,
    Bye(Bye<'a>),
    Nack(Nack<'a>),
    TransportCc(TransportCc<'a>),
    Pli(Pli),
    Fir(Fir<'a>),
    Remb(Remb<'a>),
    /// APP, XR, other feedback types, unknown packet types: skipped.
    Other {
        packet_type: u8,
        fmt: u8,
    },
}

/// Header facts of one packet inside a compound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPacket {
    /// Byte range of the whole packet (header and padding included) in the compound.
    pub range: Range<usize>,
    pub packet_type: u8,
    /// Count (RC/SC) or FMT field.
    pub count: u8,
    /// Content length after the 4-byte header, padding excluded.
    pub content_len: usize,
}

/// Walk the packet headers of a compound: `Err` (and then nothing) on a bad version,
/// length or padding.
#[derive(Debug, Clone)]
pub struct RawIter<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl Iterator for RawIter<'_> {
    type Item = Result<RawPacket, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let r = self.step();
        if r.is_err() {
            self.failed = true;
        }
        Some(r)
    }
}

impl RawIter<'_> {
    fn step(&mut self) -> Result<RawPacket, RtcpError> {
        let start = self.pos;
        let b0 = *self.buf.get(start).ok_or(RtcpError::TooShort)?;
        let pt = *self.buf.get(start + 1).ok_or(RtcpError::TooShort)?;
        let words = be16(self.buf, start + 2).ok_or(RtcpError::TooShort)? as usize;
        if b0 >> 6 != 2 {
            return Err(RtcpError::BadVersion);
        }
        let len = (words + 1) * 4;
        let end = start + len;
        if end > self.buf.len() {
            return Err(RtcpError::TooShort);
        }
        let mut content_len = len - 4;
        if b0 & 0x20 != 0 {
            let pad = *self.buf.get(end - 1).ok_or(RtcpError::TooShort)? as usize;
            if pad == 0 || pad > content_len {
                return Err(RtcpError::BadPadding);
            }
            content_len -= pad;
        }
        self.pos = end;
        Ok(RawPacket {
            range: start..end,
            packet_type: pt,
            count: b0 & 0x1f,
            content_len,
        })
    }
}

/// Packet headers of a compound (no content checks).
pub fn raw_packets(buf: &[u8]) -> RawIter<'_> {
    RawIter {
        buf,
        pos: 0,
        failed: false,
    }
}

/// Parse the content of one packet located by [`raw_packets`].
pub fn parse_raw<'a>(buf: &'a [u8], raw: &RawPacket) -> Result<Packet<'a>, RtcpError> {
    let start = raw.range.start;
    let c = buf
        .get(start + 4..start + 4 + raw.content_len)
        .ok_or(RtcpError::TooShort)?;
    let count = raw.count as usize;
    let short = RtcpError::BadLength;
    Ok(match raw.packet_type {
        PT_SR => parse_sr(c, count)?,
        PT_RR => {
            let blocks = c.get(4..4 + count * REPORT_BLOCK_LEN).ok_or(short)?;
            Packet::Rr(ReceiverReport {
                sender_ssrc: be32(c, 0).ok_or(short)?,
                blocks,
            })
        }
        PT_SDES => Packet::Sdes,
        PT_BYE => Packet::Bye(Bye {
            ssrcs: c.get(..count * 4).ok_or(short)?,
        }),
        PT_RTPFB | PT_PSFB => parse_feedback(c, raw.packet_type, raw.count)?,
        pt => Packet::Other {
            packet_type: pt,
            fmt: raw.count,
        },
    })
}

/// A sender report's content `c` (after the common header) with `count` report blocks.
fn parse_sr(c: &[u8], count: usize) -> Result<Packet<'_>, RtcpError> {
    let short = RtcpError::BadLength;
    let blocks = c.get(24..24 + count * REPORT_BLOCK_LEN).ok_or(short)?;
    Ok(Packet::Sr(SenderReport {
        info: SenderInfo {
            ssrc: be32(c, 0).ok_or(short)?,
            ntp: ((be32(c, 4).ok_or(short)? as u64) << 32) | be32(c, 8).ok_or(short)? as u64,
            rtp_timestamp: be32(c, 12).ok_or(short)?,
            packet_count: be32(c, 16).ok_or(short)?,
            octet_count: be32(c, 20).ok_or(short)?,
        },
        blocks,
    }))
}

/// A transport-layer (RTPFB) or payload-specific (PSFB) feedback message's content `c`, of
/// feedback message type `fmt`.
fn parse_feedback(c: &[u8], packet_type: u8, fmt: u8) -> Result<Packet<'_>, RtcpError> {
    let short = RtcpError::BadLength;
    let sender_ssrc = be32(c, 0).ok_or(short)?;
    let media_ssrc = be32(c, 4).ok_or(short)?;
    let fci = c.get(8..).unwrap_or(&[]);
    Ok(match (packet_type, fmt) {
        (PT_RTPFB, FMT_NACK) => {
            if fci.is_empty() || !fci.len().is_multiple_of(4) {
                return Err(short);
            }
            Packet::Nack(Nack {
                sender_ssrc,
                media_ssrc,
                fci,
            })
        }
        (PT_RTPFB, FMT_TRANSPORT_CC) => {
            // base seq, status count, reference time + fb count: 8 bytes minimum.
            if fci.len() < 8 {
                return Err(short);
            }
            Packet::TransportCc(TransportCc {
                sender_ssrc,
                media_ssrc,
                fci,
            })
        }
        (PT_PSFB, FMT_PLI) => Packet::Pli(Pli {
            sender_ssrc,
            media_ssrc,
        }),
        (PT_PSFB, FMT_FIR) => {
            if fci.is_empty() || !fci.len().is_multiple_of(8) {
                return Err(short);
            }
            Packet::Fir(Fir { sender_ssrc, fci })
        }
        (PT_PSFB, FMT_AFB) if fci.get(..4) == Some(b"REMB") => parse_remb(sender_ssrc, fci)?,
        (pt, fmt) => Packet::Other {
            packet_type: pt,
            fmt,
        },
    })
}

/// REMB (draft-alvestrand-rmcat-remb): "REMB", the SSRC count, the bitrate's 6-bit exponent
/// and 18-bit mantissa, then the SSRCs.
fn parse_remb(sender_ssrc: u32, fci: &[u8]) -> Result<Packet<'_>, RtcpError> {
    let short = RtcpError::BadLength;
    let n = *fci.get(4).ok_or(short)? as usize;
    let exp = fci.get(5).ok_or(short)? >> 2;
    let mantissa = (be32(fci, 4).ok_or(short)? & 0x3_ffff) as u128;
    let bitrate = (mantissa << exp).min(u64::MAX as u128) as u64;
    let ssrcs = fci.get(8..8 + 4 * n).ok_or(short)?;
    Ok(Packet::Remb(Remb {
        sender_ssrc,
        bitrate,
        ssrcs,
    }))
}

/// Parse a single RTCP packet (the first one of `buf`).
pub fn parse_packet(buf: &[u8]) -> Result<Packet<'_>, RtcpError> {
    let raw = raw_packets(buf).next().ok_or(RtcpError::TooShort)??;
    parse_raw(buf, &raw)
}

/// Check every packet of a compound (headers and typed contents).
pub fn validate(buf: &[u8]) -> Result<(), RtcpError> {
    if buf.len() < 4 {
        return Err(RtcpError::TooShort);
    }
    for raw in raw_packets(buf) {
        parse_raw(buf, &raw?)?;
    }
    Ok(())
}

/// Typed packets of a compound, after validating all of it: a malformed compound yields
/// exactly one `Err`.
pub fn compound(buf: &[u8]) -> Compound<'_> {
    let error = validate(buf).err();
    Compound {
        buf,
        raw: raw_packets(buf),
        error,
    }
}

#[derive(Debug, Clone)]
pub struct Compound<'a> {
    buf: &'a [u8],
    raw: RawIter<'a>,
    error: Option<RtcpError>,
}

impl<'a> Iterator for Compound<'a> {
    type Item = Result<Packet<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            self.raw.failed = true;
            return Some(Err(e));
        }
        let raw = match self.raw.next()? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        Some(parse_raw(self.buf, &raw))
    }
}

// ---------------------------------------------------------------------------------------
// In-place rewriting (the slices are single packets, e.g. `&mut buf[raw.range]`).

/// Set the sender SSRC (bytes 4..8) of an SR/RR/RTPFB/PSFB packet. False if too short.
pub fn set_sender_ssrc(pkt: &mut [u8], ssrc: u32) -> bool {
    match pkt.get_mut(4..8) {
        Some(d) => {
            d.copy_from_slice(&ssrc.to_be_bytes());
            true
        }
        None => false,
    }
}

/// Set the media source SSRC (bytes 8..12) of an RTPFB/PSFB packet (PLI, NACK, REMB...).
pub fn set_media_ssrc(pkt: &mut [u8], ssrc: u32) -> bool {
    let fb = matches!(pkt.get(1), Some(&PT_RTPFB) | Some(&PT_PSFB));
    match pkt.get_mut(8..12) {
        Some(d) if fb => {
            d.copy_from_slice(&ssrc.to_be_bytes());
            true
        }
        _ => false,
    }
}

/// Rewrite the SSRC of every FIR entry naming `from` to `to`. Returns how many changed.
pub fn set_fir_ssrc(pkt: &mut [u8], from: u32, to: u32) -> usize {
    if pkt.get(1) != Some(&PT_PSFB) || pkt.first().map(|b| b & 0x1f) != Some(FMT_FIR) {
        return 0;
    }
    let mut n = 0;
    if let Some(fci) = pkt.get_mut(12..) {
        for e in fci.chunks_exact_mut(8) {
            if e[..4] == from.to_be_bytes() {
                e[..4].copy_from_slice(&to.to_be_bytes());
                n += 1;
            }
        }
    }
    n
}

// ---------------------------------------------------------------------------------------
// Builders: append one packet to `out`.

fn header(out: &mut Vec<u8>, count: u8, pt: u8, content_len: usize) {
    debug_assert!(content_len.is_multiple_of(4));
    let words = (content_len / 4).min(u16::MAX as usize) as u16;
    out.push(0x80 | (count & 0x1f));
    out.push(pt);
    out.extend_from_slice(&words.to_be_bytes());
}

/// PSFB PLI.
pub fn build_pli(out: &mut Vec<u8>, sender_ssrc: u32, media_ssrc: u32) {
    header(out, FMT_PLI, PT_PSFB, 8);
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&media_ssrc.to_be_bytes());
}

/// PSFB FIR with one entry per (SSRC, command sequence number); media SSRC field is 0
/// (RFC 5104 §4.3.1.2).
pub fn build_fir(out: &mut Vec<u8>, sender_ssrc: u32, entries: &[(u32, u8)]) {
    let entries = entries.get(..entries.len().min(8000)).unwrap_or(&[]);
    header(out, FMT_FIR, PT_PSFB, 8 + 8 * entries.len());
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    for (ssrc, seq) in entries {
        out.extend_from_slice(&ssrc.to_be_bytes());
        out.extend_from_slice(&[*seq, 0, 0, 0]);
    }
}

/// RTPFB generic NACK for `seqs` (best in increasing order: each PID covers the 16
/// following numbers through its BLP). Nothing is written for an empty list.
pub fn build_nack(out: &mut Vec<u8>, sender_ssrc: u32, media_ssrc: u32, seqs: &[u16]) {
    if seqs.is_empty() {
        return;
    }
    let start = out.len();
    header(out, FMT_NACK, PT_RTPFB, 8);
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&media_ssrc.to_be_bytes());
    let mut cur: Option<(u16, u16)> = None;
    let mut pairs = 0usize;
    let max_pairs = 16_000;
    for &s in seqs {
        if let Some((pid, blp)) = cur.as_mut() {
            let d = s.wrapping_sub(*pid);
            if (1..=16).contains(&d) {
                *blp |= 1 << (d - 1);
                continue;
            }
            if d == 0 {
                continue;
            }
        }
        if let Some((pid, blp)) = cur.take() {
            if pairs < max_pairs {
                out.extend_from_slice(&pid.to_be_bytes());
                out.extend_from_slice(&blp.to_be_bytes());
                pairs += 1;
            }
        }
        cur = Some((s, 0));
    }
    if let Some((pid, blp)) = cur {
        if pairs < max_pairs {
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&blp.to_be_bytes());
            pairs += 1;
        }
    }
    let words = (2 + pairs) as u16;
    if let Some(d) = out.get_mut(start + 2..start + 4) {
        d.copy_from_slice(&words.to_be_bytes());
    }
}

fn report_packets(out: &mut Vec<u8>, ssrc: u32, blocks: &[ReportBlock]) {
    for chunk in blocks.chunks(MAX_RC) {
        header(
            out,
            chunk.len() as u8,
            PT_RR,
            4 + REPORT_BLOCK_LEN * chunk.len(),
        );
        out.extend_from_slice(&ssrc.to_be_bytes());
        for b in chunk {
            b.write(out);
        }
    }
}

/// RR with `blocks` (several RR packets when there are more than 31; an empty RR when
/// there are none).
pub fn build_rr(out: &mut Vec<u8>, sender_ssrc: u32, blocks: &[ReportBlock]) {
    if blocks.is_empty() {
        header(out, 0, PT_RR, 4);
        out.extend_from_slice(&sender_ssrc.to_be_bytes());
    } else {
        report_packets(out, sender_ssrc, blocks);
    }
}

/// SR with up to 31 report blocks; further blocks go into following RR packets.
pub fn build_sr(out: &mut Vec<u8>, info: &SenderInfo, blocks: &[ReportBlock]) {
    let (first, rest) = blocks.split_at(blocks.len().min(MAX_RC));
    header(
        out,
        first.len() as u8,
        PT_SR,
        24 + REPORT_BLOCK_LEN * first.len(),
    );
    out.extend_from_slice(&info.ssrc.to_be_bytes());
    out.extend_from_slice(&info.ntp.to_be_bytes());
    out.extend_from_slice(&info.rtp_timestamp.to_be_bytes());
    out.extend_from_slice(&info.packet_count.to_be_bytes());
    out.extend_from_slice(&info.octet_count.to_be_bytes());
    for b in first {
        b.write(out);
    }
    if !rest.is_empty() {
        report_packets(out, info.ssrc, rest);
    }
}

/// SDES with one chunk: `ssrc` and a CNAME item (at most 255 bytes), null-terminated and
/// padded to 32 bits.
pub fn build_sdes_cname(out: &mut Vec<u8>, ssrc: u32, cname: &[u8]) {
    let cname = cname.get(..cname.len().min(255)).unwrap_or(&[]);
    // ssrc + type + len + text + at least one null, rounded up.
    let chunk = (4 + 2 + cname.len() + 1).div_ceil(4) * 4;
    header(out, 1, PT_SDES, chunk);
    let start = out.len();
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.push(1); // CNAME
    out.push(cname.len() as u8);
    out.extend_from_slice(cname);
    out.resize(start + chunk, 0);
}

/// BYE for `ssrcs` (at most 31), no reason.
pub fn build_bye(out: &mut Vec<u8>, ssrcs: &[u32]) {
    let ssrcs = ssrcs.get(..ssrcs.len().min(MAX_RC)).unwrap_or(&[]);
    header(out, ssrcs.len() as u8, PT_BYE, 4 * ssrcs.len());
    for s in ssrcs {
        out.extend_from_slice(&s.to_be_bytes());
    }
}

/// REMB: `bitrate` bits per second (encoded as 18-bit mantissa and 6-bit exponent, rounded
/// down) for `ssrcs` (at most 255).
pub fn build_remb(out: &mut Vec<u8>, sender_ssrc: u32, bitrate: u64, ssrcs: &[u32]) {
    let ssrcs = ssrcs.get(..ssrcs.len().min(255)).unwrap_or(&[]);
    let mut exp = 0u32;
    while exp < 63 && (bitrate >> exp) > 0x3_ffff {
        exp += 1;
    }
    let mantissa = (bitrate >> exp) as u32 & 0x3_ffff;
    header(out, FMT_AFB, PT_PSFB, 8 + 8 + 4 * ssrcs.len());
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(b"REMB");
    out.push(ssrcs.len() as u8);
    out.extend_from_slice(&(((exp << 18) | mantissa) & 0x00ff_ffff).to_be_bytes()[1..]);
    for s in ssrcs {
        out.extend_from_slice(&s.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(|c| c.is_ascii_hexdigit()).collect();
        s.chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn all(buf: &[u8]) -> Vec<Packet<'_>> {
        compound(buf).map(|p| p.unwrap()).collect()
    }

    fn block(ssrc: u32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 25,
            cumulative_lost: -3,
            highest_seq: 0x0001_0203,
            jitter: 77,
            last_sr: 0x1122_3344,
            delay_since_last_sr: 65536,
        }
    }

    #[test]
    fn rr_with_block_and_sdes() {
        // RR (1 block) + SDES CNAME "ab" as a hand-written compound.
        let b = hex("81c90007 00000001
             00000002 19fffffd 00010203 0000004d 11223344 00010000
             81ca0002 00000001 01026162");
        let p = all(&b);
        assert_eq!(p.len(), 2);
        let Packet::Rr(rr) = p[0] else { panic!() };
        assert_eq!(rr.sender_ssrc, 1);
        assert_eq!(rr.report_blocks().collect::<Vec<_>>(), vec![block(2)]);
        assert_eq!(p[1], Packet::Sdes);
        // The builders produce the same bytes (SDES pads with a null word).
        let mut out = Vec::new();
        build_rr(&mut out, 1, &[block(2)]);
        assert_eq!(out, b[..32]);
        build_sdes_cname(&mut out, 1, b"ab");
        assert_eq!(out[32..], hex("81ca0003 00000001 01026162 00000000"));
        assert_eq!(all(&out).len(), 2);
    }

    #[test]
    fn sr_round_trip_and_many_blocks() {
        let info = SenderInfo {
            ssrc: 0xabcd,
            ntp: 0xe000_0001_8000_0000,
            rtp_timestamp: 90000,
            packet_count: 10,
            octet_count: 12000,
        };
        let mut out = Vec::new();
        build_sr(&mut out, &info, &[]);
        assert_eq!(
            out,
            hex("80c80006 0000abcd e0000001 80000000 00015f90 0000000a 00002ee0")
        );
        let blocks: Vec<_> = (0..40).map(block).collect();
        out.clear();
        build_sr(&mut out, &info, &blocks);
        build_sdes_cname(&mut out, 0xabcd, b"pysfu-cname");
        let p = all(&out);
        assert_eq!(p.len(), 3);
        let Packet::Sr(sr) = p[0] else { panic!() };
        assert_eq!(sr.info, info);
        assert_eq!(sr.report_blocks().count(), 31);
        let Packet::Rr(rr) = p[1] else { panic!() };
        assert_eq!(rr.sender_ssrc, 0xabcd);
        let got: Vec<_> = sr.report_blocks().chain(rr.report_blocks()).collect();
        assert_eq!(got, blocks);
        // Empty RR.
        out.clear();
        build_rr(&mut out, 9, &[]);
        assert_eq!(out, hex("80c90001 00000009"));
    }

    #[test]
    fn cumulative_lost_sign_and_clamp() {
        let mut b = block(1);
        for (v, want) in [
            (5, 5),
            (-1, -1),
            (0x7f_ffff, 0x7f_ffff),
            (0x100_0000, 0x7f_ffff),
            (-0x100_0000, -0x80_0000),
        ] {
            b.cumulative_lost = v;
            let mut out = Vec::new();
            build_rr(&mut out, 1, &[b]);
            let Packet::Rr(rr) = all(&out)[0] else {
                panic!()
            };
            assert_eq!(rr.report_blocks().next().unwrap().cumulative_lost, want);
        }
    }

    #[test]
    fn pli_fir_build_parse() {
        let mut out = Vec::new();
        build_pli(&mut out, 0x11, 0x22);
        assert_eq!(out, hex("81ce0002 00000011 00000022"));
        build_fir(&mut out, 0x11, &[(0x22, 7), (0x33, 255)]);
        assert_eq!(
            &out[12..],
            &hex("84ce0006 00000011 00000000 00000022 07000000 00000033 ff000000")[..]
        );
        let p = all(&out);
        assert_eq!(
            p[0],
            Packet::Pli(Pli {
                sender_ssrc: 0x11,
                media_ssrc: 0x22
            })
        );
        let Packet::Fir(fir) = p[1] else { panic!() };
        assert_eq!(fir.sender_ssrc, 0x11);
        assert_eq!(
            fir.entries().collect::<Vec<_>>(),
            vec![(0x22, 7), (0x33, 255)]
        );
        assert_eq!(fir.ssrcs().collect::<Vec<_>>(), vec![0x22, 0x33]);
    }

    #[test]
    fn nack_build_parse_expand() {
        let mut out = Vec::new();
        build_nack(&mut out, 1, 2, &[100, 101, 116, 117, 200, 65535, 0, 3]);
        // 100 + bits for 101 (bit 0) and 116 (bit 15); 117 alone; 200; 65535 with 0 and 3.
        assert_eq!(
            out,
            hex("81cd0006 00000001 00000002 00648001 00750000 00c80000 ffff0009")
        );
        let Packet::Nack(n) = all(&out)[0] else {
            panic!()
        };
        assert_eq!((n.sender_ssrc, n.media_ssrc), (1, 2));
        assert_eq!(
            n.seqs().collect::<Vec<_>>(),
            vec![100, 101, 116, 117, 200, 65535, 0, 3]
        );
        // Duplicates and an empty list.
        out.clear();
        build_nack(&mut out, 1, 2, &[5, 5, 6]);
        let Packet::Nack(n) = all(&out)[0] else {
            panic!()
        };
        assert_eq!(n.pairs().collect::<Vec<_>>(), vec![(5, 1)]);
        out.clear();
        build_nack(&mut out, 1, 2, &[]);
        assert!(out.is_empty());
        // Full BLP.
        let seqs: Vec<u16> = (10..=26).collect();
        build_nack(&mut out, 1, 2, &seqs);
        let Packet::Nack(n) = all(&out)[0] else {
            panic!()
        };
        assert_eq!(n.pairs().collect::<Vec<_>>(), vec![(10, 0xffff)]);
        assert_eq!(n.seqs().collect::<Vec<_>>(), seqs);
    }

    #[test]
    fn remb_and_transport_cc() {
        let mut out = Vec::new();
        build_remb(&mut out, 7, 1_500_000, &[0x1111, 0x2222]);
        let Packet::Remb(r) = all(&out)[0] else {
            panic!()
        };
        assert_eq!(r.sender_ssrc, 7);
        // 1_500_000 = 187500 << 3: exact.
        assert_eq!(r.bitrate, 1_500_000);
        assert_eq!(r.ssrcs().collect::<Vec<_>>(), vec![0x1111, 0x2222]);
        // Hand-written REMB: exp 0, mantissa 0x3ffff.
        let b = hex("8fce0005 00000001 00000000 52454d42 0103ffff 00000009");
        let Packet::Remb(r) = all(&b)[0] else {
            panic!()
        };
        assert_eq!(
            (r.bitrate, r.ssrcs().collect::<Vec<_>>()),
            (0x3ffff, vec![9])
        );
        // Large values round down but stay close.
        out.clear();
        build_remb(&mut out, 7, 10_000_000_123, &[]);
        let Packet::Remb(r) = all(&out)[0] else {
            panic!()
        };
        assert!(r.bitrate <= 10_000_000_123 && r.bitrate > 9_999_000_000);
        // Saturation of a huge exponent.
        let b = hex("8fce0004 00000001 00000000 52454d42 00ffffff");
        let Packet::Remb(r) = all(&b)[0] else {
            panic!()
        };
        assert_eq!(r.bitrate, u64::MAX);
        // transport-cc: raw FCI.
        let b = hex("8fcd0005 00000001 00000002 00010002 00000100 d6660000");
        let Packet::TransportCc(t) = all(&b)[0] else {
            panic!()
        };
        assert_eq!((t.sender_ssrc, t.media_ssrc, t.fci.len()), (1, 2, 12));
    }

    #[test]
    fn skipped_types_and_bye() {
        let b = hex("80cc0002 00000001 6e616d65
             80cf0002 00000001 05000000
             8fce0003 00000001 00000000 41424344
             83cd0002 00000001 00000002
             82cb0002 00000001 00000002
             80ff0000");
        let p = all(&b);
        assert_eq!(
            p[..4],
            [
                Packet::Other {
                    packet_type: PT_APP,
                    fmt: 0
                },
                Packet::Other {
                    packet_type: PT_XR,
                    fmt: 0
                },
                Packet::Other {
                    packet_type: PT_PSFB,
                    fmt: 15
                },
                Packet::Other {
                    packet_type: PT_RTPFB,
                    fmt: 3
                },
            ]
        );
        let Packet::Bye(bye) = p[4] else { panic!() };
        assert_eq!(bye.ssrcs().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(
            p[5],
            Packet::Other {
                packet_type: 255,
                fmt: 0
            }
        );
        let mut out = Vec::new();
        build_bye(&mut out, &[1, 2]);
        assert_eq!(out, b[52..64]);
    }

    #[test]
    fn padding() {
        // RR with 4 bytes of padding (P bit, count 4).
        let b = hex("a0c90002 00000001 00000004");
        let Packet::Rr(rr) = all(&b)[0] else { panic!() };
        assert_eq!(rr.sender_ssrc, 1);
        assert_eq!(
            validate(&hex("a0c90002 00000001 00000000")),
            Err(RtcpError::BadPadding)
        );
        assert_eq!(
            validate(&hex("a0c90002 00000001 0000000d")),
            Err(RtcpError::BadPadding)
        );
        // Padding eating into required content.
        assert_eq!(
            validate(&hex("a0c90001 00000004")),
            Err(RtcpError::BadLength)
        );
    }

    #[test]
    fn malformed_compounds_fail_whole() {
        let good = hex("81ce0002 00000011 00000022");
        let cases = [
            hex(""),
            hex("81ce00"),
            hex("41ce0002 00000011 00000022"), // version 1
            hex("81ce0003 00000011 00000022"), // length past the end
            hex("81ce0001 00000011"),          // PLI without media ssrc
            hex("81c80001 00000001"),          // SR without sender info
            hex("82c90007 00000001 00000002 19fffffd 00010203 0000004d 11223344 00010000"), // RC=2, one block
            hex("81cd0002 00000001 00000002"), // NACK without FCI
            hex("84ce0003 00000001 00000000 00000002"), // FIR entry cut
            hex("8fce0004 00000001 00000000 52454d42 02000001"), // REMB announcing 2 ssrcs
            hex("83cb0002 00000001 00000002"), // BYE SC=3
            hex("8fcd0003 00000001 00000002 00010002"), // transport-cc too short
        ];
        for bad in &cases {
            let mut with_good = good.clone();
            with_good.extend_from_slice(bad);
            if bad.is_empty() {
                assert_eq!(validate(bad), Err(RtcpError::TooShort));
                continue;
            }
            assert!(validate(&with_good).is_err(), "{bad:02x?}");
            let items: Vec<_> = compound(&with_good).collect();
            assert_eq!(items.len(), 1, "{bad:02x?}");
            assert!(items[0].is_err());
        }
    }

    #[test]
    fn rewrite_in_place() {
        let mut out = Vec::new();
        build_rr(&mut out, 1, &[]);
        build_pli(&mut out, 0xaaaa, 0xbbbb);
        build_nack(&mut out, 0xaaaa, 0xbbbb, &[1, 2]);
        build_fir(&mut out, 0xaaaa, &[(0xbbbb, 1), (0xcccc, 2)]);
        let ranges: Vec<_> = raw_packets(&out).map(|r| r.unwrap().range).collect();
        assert_eq!(ranges.len(), 4);
        assert!(!set_media_ssrc(&mut out[ranges[0].clone()], 5)); // RR: not feedback
        for r in &ranges[1..3] {
            assert!(set_media_ssrc(&mut out[r.clone()], 0x1234));
            assert!(set_sender_ssrc(&mut out[r.clone()], 0x4321));
        }
        assert_eq!(set_fir_ssrc(&mut out[ranges[3].clone()], 0xbbbb, 0x1234), 1);
        assert_eq!(set_fir_ssrc(&mut out[ranges[1].clone()], 0xbbbb, 0x1234), 0);
        let p = all(&out);
        assert_eq!(
            p[1],
            Packet::Pli(Pli {
                sender_ssrc: 0x4321,
                media_ssrc: 0x1234
            })
        );
        let Packet::Nack(n) = p[2] else { panic!() };
        assert_eq!((n.sender_ssrc, n.media_ssrc), (0x4321, 0x1234));
        let Packet::Fir(f) = p[3] else { panic!() };
        assert_eq!(f.ssrcs().collect::<Vec<_>>(), vec![0x1234, 0xcccc]);
        assert!(!set_media_ssrc(&mut [0x81, PT_PSFB, 0, 0], 1));
        assert!(!set_sender_ssrc(&mut [0x81], 1));
        assert_eq!(parse_packet(&out[ranges[1].clone()]), Ok(p[1]));
    }

    #[test]
    fn truncation_and_garbage_never_panic() {
        let mut out = Vec::new();
        build_sr(&mut out, &SenderInfo::default(), &[block(1)]);
        build_sdes_cname(&mut out, 1, b"cname");
        build_nack(&mut out, 1, 2, &[1, 5, 40]);
        build_remb(&mut out, 1, 300_000, &[3]);
        build_fir(&mut out, 1, &[(2, 3)]);
        let bounds: Vec<usize> = raw_packets(&out).map(|r| r.unwrap().range.end).collect();
        for n in 0..out.len() {
            let r = validate(&out[..n]);
            if bounds.contains(&n) {
                assert!(r.is_ok(), "{n}");
            } else {
                assert!(r.is_err(), "{n}");
            }
            let _ = compound(&out[..n]).count();
        }
        let mut x: u64 = 0x0123_4567_89ab_cdef;
        for i in 0..30000 {
            let n = (x % 96) as usize;
            let mut b = Vec::with_capacity(n);
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            if b.len() >= 4 && i % 2 == 0 {
                b[0] = 0x80 | (b[0] & 0x3f);
                b[1] = 200 + (b[1] % 8);
                let words = (b.len() / 4).saturating_sub(1) as u16;
                b[2..4].copy_from_slice(&words.to_be_bytes());
            }
            for p in compound(&b).flatten() {
                match p {
                    Packet::Sr(s) => _ = s.report_blocks().count(),
                    Packet::Rr(r) => _ = r.report_blocks().count(),
                    Packet::Nack(n) => _ = n.seqs().count(),
                    Packet::Fir(f) => _ = f.entries().count(),
                    Packet::Remb(r) => _ = r.ssrcs().count(),
                    Packet::Bye(b) => _ = b.ssrcs().count(),
                    _ => {}
                }
            }
            let mut c = b.clone();
            set_media_ssrc(&mut c, 1);
            set_sender_ssrc(&mut c, 1);
            set_fir_ssrc(&mut c, 0, 1);
        }
    }
}
