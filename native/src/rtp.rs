//! RTP header view and in-place rewriting (RFC 3550, RFC 8285 header extensions,
//! RFC 4588 RTX), key frame detection for VP8 / VP9 / H264, padding-only detection.
//!
//! Everything works on plain byte slices of *decrypted* packets (SRTP leaves the header in
//! clear, so [`parse`] also works on protected packets except for the padding check, which
//! reads the last, encrypted, byte). Nothing here panics on any input, and nothing
//! allocates except where a function takes an output `Vec` (documented per function: the
//! `Vec` is cleared and reused; it allocates only when its capacity is too small).

use crate::bytes::{be16, be32};

/// One-byte header extension profile (RFC 8285 §4.2).
pub const EXT_ONE_BYTE: u16 = 0xBEDE;
/// Two-byte header extension profile (RFC 8285 §4.3), low 4 bits are "appbits".
pub const EXT_TWO_BYTE: u16 = 0x1000;

const FIXED: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtpError {
    /// Buffer shorter than the header it announces.
    TooShort,
    /// Version field is not 2.
    BadVersion,
    /// Extension block length runs past the packet.
    BadExtension,
    /// Padding count is 0 or larger than the payload.
    BadPadding,
    /// A payload too short for what the operation needs (e.g. RTX without OSN).
    BadPayload,
}

impl std::fmt::Display for RtpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for RtpError {}

/// The header extension block: its profile word (`0xBEDE` one-byte, `0x100X` two-byte,
/// anything else is kept but not interpreted), and where its element data lies in the
/// packet (after the 4-byte block header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtBlock {
    pub profile: u16,
    pub offset: usize,
    pub len: usize,
}

impl ExtBlock {
    pub fn is_one_byte(&self) -> bool {
        self.profile == EXT_ONE_BYTE
    }

    pub fn is_two_byte(&self) -> bool {
        self.profile & 0xfff0 == EXT_TWO_BYTE
    }
}

/// Parsed view of an RTP header; offsets refer to the buffer given to [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub csrc_count: u8,
    pub has_padding: bool,
    /// Fixed header + CSRCs + extension block: the payload starts here.
    pub header_len: usize,
    pub ext: Option<ExtBlock>,
    /// Payload bytes, padding excluded.
    pub payload_len: usize,
    /// Padding bytes at the end (0 when `has_padding` is false).
    pub padding_len: usize,
}

impl RtpHeader {
    /// Payload (padding excluded) inside `buf`, empty if `buf` is not the parsed packet.
    pub fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.header_len..self.header_len + self.payload_len)
            .unwrap_or(&[])
    }

    /// A packet with padding and no payload (bandwidth probing): never forwarded.
    pub fn is_padding_only(&self) -> bool {
        self.payload_len == 0
    }

    /// Total packet length this header describes.
    pub fn packet_len(&self) -> usize {
        self.header_len + self.payload_len + self.padding_len
    }
}

/// Parse and validate an RTP header: version 2, CSRCs and extension block inside the
/// buffer, padding count between 1 and the bytes after the header.
pub fn parse(buf: &[u8]) -> Result<RtpHeader, RtpError> {
    let b0 = *buf.first().ok_or(RtpError::TooShort)?;
    if buf.len() < FIXED {
        return Err(RtpError::TooShort);
    }
    if b0 >> 6 != 2 {
        return Err(RtpError::BadVersion);
    }
    let b1 = buf[1];
    let csrc_count = b0 & 0x0f;
    let mut header_len = FIXED + 4 * csrc_count as usize;
    if header_len > buf.len() {
        return Err(RtpError::TooShort);
    }
    let mut ext = None;
    if b0 & 0x10 != 0 {
        let profile = be16(buf, header_len).ok_or(RtpError::BadExtension)?;
        let words = be16(buf, header_len + 2).ok_or(RtpError::BadExtension)? as usize;
        let offset = header_len + 4;
        let len = 4 * words;
        if offset + len > buf.len() {
            return Err(RtpError::BadExtension);
        }
        ext = Some(ExtBlock {
            profile,
            offset,
            len,
        });
        header_len = offset + len;
    }
    let has_padding = b0 & 0x20 != 0;
    let rest = buf.len() - header_len;
    let padding_len = if has_padding {
        let p = *buf.last().ok_or(RtpError::TooShort)? as usize;
        if p == 0 || p > rest {
            return Err(RtpError::BadPadding);
        }
        p
    } else {
        0
    };
    Ok(RtpHeader {
        marker: b1 & 0x80 != 0,
        payload_type: b1 & 0x7f,
        sequence: be16(buf, 2).ok_or(RtpError::TooShort)?,
        timestamp: be32(buf, 4).ok_or(RtpError::TooShort)?,
        ssrc: be32(buf, 8).ok_or(RtpError::TooShort)?,
        csrc_count,
        has_padding,
        header_len,
        ext,
        payload_len: rest - padding_len,
        padding_len,
    })
}

/// Iterator over `(id, value)` header extension elements of one- and two-byte blocks.
/// Padding bytes are skipped; iteration stops at id 15 in the one-byte form (RFC 8285
/// §4.2) or at an element running past the block.
#[derive(Debug, Clone)]
pub struct ExtIter<'a> {
    data: &'a [u8],
    pos: usize,
    two_byte: bool,
}

impl<'a> Iterator for ExtIter<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let b = *self.data.get(self.pos)?;
            if b == 0 {
                self.pos += 1;
                continue;
            }
            let (id, len, start) = if self.two_byte {
                let len = *self.data.get(self.pos + 1)? as usize;
                (b, len, self.pos + 2)
            } else {
                let id = b >> 4;
                if id == 15 {
                    self.pos = self.data.len();
                    return None;
                }
                if id == 0 {
                    // ID 0 is padding (RFC 8285 §4.2), whatever its length nibble says:
                    // skip the byte, as libwebrtc does; never report an element 0.
                    self.pos += 1;
                    continue;
                }
                (id, (b & 0x0f) as usize + 1, self.pos + 1)
            };
            let Some(value) = self.data.get(start..start + len) else {
                self.pos = self.data.len();
                return None;
            };
            self.pos = start + len;
            return Some((id, value));
        }
    }
}

/// Header extension elements of the packet (nothing for a block of another profile).
pub fn extensions<'a>(buf: &'a [u8], hdr: &RtpHeader) -> ExtIter<'a> {
    let empty = ExtIter {
        data: &[],
        pos: 0,
        two_byte: false,
    };
    let Some(ext) = hdr.ext else { return empty };
    let Some(data) = buf.get(ext.offset..ext.offset + ext.len) else {
        return empty;
    };
    if ext.is_one_byte() {
        ExtIter {
            data,
            pos: 0,
            two_byte: false,
        }
    } else if ext.is_two_byte() {
        ExtIter {
            data,
            pos: 0,
            two_byte: true,
        }
    } else {
        empty
    }
}

/// Value of the first extension element with `id`.
pub fn find_extension<'a>(buf: &'a [u8], hdr: &RtpHeader, id: u8) -> Option<&'a [u8]> {
    extensions(buf, hdr).find(|(i, _)| *i == id).map(|(_, v)| v)
}

/// Overwrite, in place, the value of the existing element `id` when it has exactly
/// `value.len()` bytes (abs-send-time, transport-wide seq at send time). False otherwise.
pub fn set_extension_in_place(buf: &mut [u8], hdr: &RtpHeader, id: u8, value: &[u8]) -> bool {
    let Some(ext) = hdr.ext else { return false };
    let Some(data) = buf.get(ext.offset..ext.offset + ext.len) else {
        return false;
    };
    let base = data.as_ptr() as usize;
    let found = extensions(buf, hdr)
        .find(|(i, v)| *i == id && v.len() == value.len())
        .map(|(_, v)| v.as_ptr() as usize - base);
    match found {
        Some(rel) => match buf.get_mut(ext.offset + rel..ext.offset + rel + value.len()) {
            Some(dst) => {
                dst.copy_from_slice(value);
                true
            }
            None => false,
        },
        None => false,
    }
}

pub fn set_sequence(buf: &mut [u8], seq: u16) {
    if let Some(d) = buf.get_mut(2..4) {
        d.copy_from_slice(&seq.to_be_bytes());
    }
}

pub fn set_timestamp(buf: &mut [u8], ts: u32) {
    if let Some(d) = buf.get_mut(4..8) {
        d.copy_from_slice(&ts.to_be_bytes());
    }
}

pub fn set_ssrc(buf: &mut [u8], ssrc: u32) {
    if let Some(d) = buf.get_mut(8..12) {
        d.copy_from_slice(&ssrc.to_be_bytes());
    }
}

/// Set the payload type, keeping the marker bit.
pub fn set_payload_type(buf: &mut [u8], pt: u8) {
    if let Some(b) = buf.get_mut(1) {
        *b = (*b & 0x80) | (pt & 0x7f);
    }
}

pub fn set_marker(buf: &mut [u8], marker: bool) {
    if let Some(b) = buf.get_mut(1) {
        *b = (*b & 0x7f) | if marker { 0x80 } else { 0 };
    }
}

/// Whether a set of elements fits the one-byte form (ids 1..=14, values 1..=16 bytes).
fn one_byte_ok<'a>(mut it: impl Iterator<Item = (u8, &'a [u8])>) -> bool {
    it.all(|(id, v)| (1..=14).contains(&id) && (1..=16).contains(&v.len()))
}

/// Append one element; ids 0 (and 15 in one-byte form) or too-long values are skipped.
fn push_element(out: &mut Vec<u8>, one_byte: bool, id: u8, v: &[u8]) {
    if one_byte {
        if (1..=14).contains(&id) && (1..=16).contains(&v.len()) {
            out.push((id << 4) | (v.len() as u8 - 1));
            out.extend_from_slice(v);
        }
    } else if id != 0 && v.len() <= 255 {
        out.push(id);
        out.push(v.len() as u8);
        out.extend_from_slice(v);
    }
}

/// Write `src`'s fixed header and CSRCs, a fresh header extension block made of the
/// elements produced by `elems` (called twice: once to pick the form, once to write), then
/// `src`'s payload and padding, into `out` (cleared first).
fn write_with<'a, I, F>(
    out: &mut Vec<u8>,
    src: &[u8],
    hdr: &RtpHeader,
    elems: F,
) -> Result<(), RtpError>
where
    I: Iterator<Item = (u8, &'a [u8])>,
    F: Fn() -> I,
{
    let csrc_end = FIXED + 4 * hdr.csrc_count as usize;
    let head = src.get(..csrc_end).ok_or(RtpError::TooShort)?;
    let body = src.get(hdr.header_len..).ok_or(RtpError::TooShort)?;
    out.clear();
    out.extend_from_slice(head);
    let one_byte = one_byte_ok(elems());
    let block_start = out.len();
    let profile = if one_byte { EXT_ONE_BYTE } else { EXT_TWO_BYTE };
    out.extend_from_slice(&profile.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    for (id, v) in elems() {
        push_element(out, one_byte, id, v);
    }
    let data_len = out.len() - block_start - 4;
    if data_len == 0 {
        out.truncate(block_start);
        if let Some(b) = out.first_mut() {
            *b &= !0x10;
        }
    } else {
        let padded = data_len.div_ceil(4) * 4;
        out.resize(block_start + 4 + padded, 0);
        let words = (padded / 4).min(u16::MAX as usize) as u16;
        if let Some(d) = out.get_mut(block_start + 2..block_start + 4) {
            d.copy_from_slice(&words.to_be_bytes());
        }
        if let Some(b) = out.first_mut() {
            *b |= 0x10;
        }
    }
    out.extend_from_slice(body);
    Ok(())
}

/// Copy `src` into `out` with its header extension block replaced by `exts` (in that
/// order). The one-byte form is used when every id is 1..=14 and every value 1..=16 bytes,
/// else the two-byte form (ids 1..=255, values 0..=255 bytes; others are skipped). No
/// elements: no block and the X bit cleared. `out` is cleared and reused (allocates only
/// when its capacity is too small). Payload and padding are copied unchanged.
pub fn write_header_with_extensions(
    out: &mut Vec<u8>,
    src: &[u8],
    hdr: &RtpHeader,
    exts: &[(u8, &[u8])],
) -> Result<(), RtpError> {
    write_with(out, src, hdr, || exts.iter().copied())
}

/// Like [`write_header_with_extensions`], with the elements taken from `src` itself:
/// each element's id goes through `map` (`None` drops the element, e.g. an id the router
/// does not know, or the MID that `extra` replaces), then the `extra` elements are added
/// (e.g. the consumer's own MID). No intermediate collection is built.
pub fn rewrite_extensions<M>(
    out: &mut Vec<u8>,
    src: &[u8],
    hdr: &RtpHeader,
    map: M,
    extra: &[(u8, &[u8])],
) -> Result<(), RtpError>
where
    M: Fn(u8) -> Option<u8>,
{
    write_with(out, src, hdr, || {
        extensions(src, hdr)
            .filter_map(|(id, v)| map(id).map(|n| (n, v)))
            .chain(extra.iter().copied())
    })
}

/// RTX (RFC 4588 §4): original sequence number (first two payload bytes) and the offset
/// of the original payload in `buf`.
pub fn rtx_decode(buf: &[u8]) -> Result<(u16, usize), RtpError> {
    let hdr = parse(buf)?;
    if hdr.payload_len < 2 {
        return Err(RtpError::BadPayload);
    }
    let osn = be16(buf, hdr.header_len).ok_or(RtpError::BadPayload)?;
    Ok((osn, hdr.header_len + 2))
}

/// Turn a decrypted RTX packet back, in place, into the original packet: the OSN is
/// removed from the payload and becomes the sequence number; PT and SSRC are set to the
/// media stream's. Returns the original sequence number. No allocation.
pub fn rtx_restore(pkt: &mut Vec<u8>, media_pt: u8, media_ssrc: u32) -> Result<u16, RtpError> {
    let (osn, off) = rtx_decode(pkt)?;
    let start = off - 2;
    let len = pkt.len();
    if off > len {
        return Err(RtpError::BadPayload);
    }
    pkt.copy_within(off..len, start);
    pkt.truncate(len - 2);
    set_sequence(pkt, osn);
    set_payload_type(pkt, media_pt);
    set_ssrc(pkt, media_ssrc);
    Ok(osn)
}

/// Build the RTX packet for `src` into `out` (cleared and reused): same header (marker,
/// timestamp, CSRCs, extensions) with PT `rtx_pt`, SSRC `rtx_ssrc`, sequence `rtx_seq`,
/// payload = original sequence number + original payload. Padding is not carried over
/// (the P bit is cleared).
pub fn rtx_encode(
    out: &mut Vec<u8>,
    src: &[u8],
    rtx_pt: u8,
    rtx_ssrc: u32,
    rtx_seq: u16,
) -> Result<(), RtpError> {
    let hdr = parse(src)?;
    let head = src.get(..hdr.header_len).ok_or(RtpError::TooShort)?;
    out.clear();
    out.extend_from_slice(head);
    out.extend_from_slice(&hdr.sequence.to_be_bytes());
    out.extend_from_slice(hdr.payload(src));
    if let Some(b) = out.first_mut() {
        *b &= !0x20;
    }
    set_payload_type(out, rtx_pt);
    set_ssrc(out, rtx_ssrc);
    set_sequence(out, rtx_seq);
    Ok(())
}

/// Video/audio codec families the data plane knows about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Opus,
    Vp8,
    Vp9,
    H264,
    Av1,
    Other,
}

impl Codec {
    /// From a MIME type such as `"video/VP8"` (case-insensitive).
    pub fn from_mime(mime: &str) -> Codec {
        let sub = mime.rsplit('/').next().unwrap_or("");
        if sub.eq_ignore_ascii_case("opus") || sub.eq_ignore_ascii_case("multiopus") {
            Codec::Opus
        } else if sub.eq_ignore_ascii_case("vp8") {
            Codec::Vp8
        } else if sub.eq_ignore_ascii_case("vp9") {
            Codec::Vp9
        } else if sub.eq_ignore_ascii_case("h264") {
            Codec::H264
        } else if sub.eq_ignore_ascii_case("av1") {
            Codec::Av1
        } else {
            Codec::Other
        }
    }

    /// Whether [`is_keyframe`] can recognise key frames of this codec (the video ones).
    pub fn has_keyframes(self) -> bool {
        matches!(self, Codec::Vp8 | Codec::Vp9 | Codec::H264 | Codec::Av1)
    }
}

/// Whether the (decrypted) RTP payload starts a key frame. Always false for `Opus` and
/// `Other` (check [`Codec::has_keyframes`] before waiting for one).
pub fn is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => vp8_keyframe(payload),
        Codec::Vp9 => vp9_keyframe(payload),
        Codec::H264 => h264_keyframe(payload),
        Codec::Av1 => av1_keyframe(payload),
        Codec::Opus | Codec::Other => false,
    }
}

/// RFC 7741 §4.2 payload descriptor, then the VP8 frame tag (RFC 6386 §9.1): key frame
/// when the packet starts partition 0 of a frame (S = 1, PID = 0) and the frame tag's P
/// bit (inverse key frame flag) is 0.
fn vp8_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let start = b0 & 0x10 != 0;
    let pid = b0 & 0x07;
    if !start || pid != 0 {
        return false;
    }
    let mut off = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = p.get(1) else { return false };
        off = 2;
        if x & 0x80 != 0 {
            // I: PictureID, 7 or 15 bits (M bit).
            let Some(&pic) = p.get(off) else { return false };
            off += if pic & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            off += 1; // L: TL0PICIDX
        }
        if x & 0x30 != 0 {
            off += 1; // T or K: TID/Y/KEYIDX
        }
    }
    match p.get(off) {
        Some(&tag) => tag & 0x01 == 0,
        None => false,
    }
}

/// RFC 9628 §4.2 payload descriptor: `I P L F B E V Z`. Key frame: not inter-picture
/// predicted (P = 0), start of a frame (B = 1), and the base spatial layer (SID = 0 when
/// layer indices are present).
fn vp9_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let i = b0 & 0x80 != 0;
    let pred = b0 & 0x40 != 0;
    let l = b0 & 0x20 != 0;
    let b = b0 & 0x08 != 0;
    if pred || !b {
        return false;
    }
    let mut off = 1;
    if i {
        let Some(&pic) = p.get(off) else { return false };
        off += if pic & 0x80 != 0 { 2 } else { 1 };
    }
    if l {
        // TID(3) U(1) SID(3) D(1)
        let Some(&layer) = p.get(off) else {
            return false;
        };
        let sid = (layer >> 1) & 0x07;
        return sid == 0;
    }
    true
}

/// AV1 RTP payload (AV1 RTP spec §4.4): the aggregation header `Z Y W W N - - -`; N = 1
/// on the first packet of a coded video sequence, which is how senders mark a key frame.
fn av1_keyframe(p: &[u8]) -> bool {
    p.first().is_some_and(|&b0| b0 & 0x08 != 0)
}

fn h264_nal_is_key(nal_type: u8) -> bool {
    nal_type == 5 || nal_type == 7
}

/// RFC 6184: single NAL unit (IDR slice 5 or SPS 7), STAP-A/STAP-B containing one, or the
/// first fragment (S bit) of an FU-A/FU-B of one.
fn h264_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    match b0 & 0x1f {
        t @ 1..=23 => h264_nal_is_key(t),
        24 | 25 => {
            // STAP-A: header, then (size16, NAL)*; STAP-B has a 16-bit DON first.
            let mut off = if b0 & 0x1f == 25 { 3 } else { 1 };
            while let Some(size) = be16(p, off) {
                let size = size as usize;
                let Some(&nal) = p.get(off + 2) else {
                    return false;
                };
                if size == 0 {
                    return false;
                }
                if h264_nal_is_key(nal & 0x1f) {
                    return true;
                }
                off += 2 + size;
            }
            false
        }
        28 | 29 => match p.get(1) {
            Some(&fu) => fu & 0x80 != 0 && h264_nal_is_key(fu & 0x1f),
            None => false,
        },
        _ => false,
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

    /// V=2 X=1 CC=1, M=1 PT=111, seq 0x1234, ts 0x01020304, ssrc 0xdeadbeef, one CSRC,
    /// one-byte block (id 1 = 1 byte "ab", padding, id 2 = 3 bytes "010203", padding),
    /// payload "c0ffee".
    fn sample() -> Vec<u8> {
        hex("91ef1234 01020304 deadbeef 0a0b0c0d bede0002 10ab0022 01020300 c0ffee")
    }

    #[test]
    fn parse_fields() {
        let b = sample();
        let h = parse(&b).unwrap();
        assert!(h.marker);
        assert_eq!(h.payload_type, 111);
        assert_eq!(h.sequence, 0x1234);
        assert_eq!(h.timestamp, 0x01020304);
        assert_eq!(h.ssrc, 0xdeadbeef);
        assert_eq!(h.csrc_count, 1);
        assert!(!h.has_padding);
        assert_eq!(
            h.ext,
            Some(ExtBlock {
                profile: 0xBEDE,
                offset: 20,
                len: 8
            })
        );
        assert_eq!(h.header_len, 28);
        assert_eq!(h.payload(&b), &hex("c0ffee")[..]);
        assert_eq!(h.packet_len(), b.len());
        let exts: Vec<_> = extensions(&b, &h).collect();
        assert_eq!(exts, vec![(1, &[0xab][..]), (2, &[0x01, 0x02, 0x03][..])]);
        assert_eq!(find_extension(&b, &h, 2), Some(&[1u8, 2, 3][..]));
        assert_eq!(find_extension(&b, &h, 3), None);
    }

    #[test]
    fn parse_minimal_and_errors() {
        let h = parse(&hex("80000001 00000002 00000003")).unwrap();
        assert_eq!(h.header_len, 12);
        assert_eq!(h.payload_len, 0);
        assert!(h.ext.is_none());
        assert_eq!(parse(&[]), Err(RtpError::TooShort));
        assert_eq!(
            parse(&hex("800000010000000200000")),
            Err(RtpError::TooShort)
        );
        assert_eq!(
            parse(&hex("40000001 00000002 00000003")),
            Err(RtpError::BadVersion)
        );
        // CC = 2 but only one CSRC present.
        assert_eq!(
            parse(&hex("82000001 00000002 00000003 00000004")),
            Err(RtpError::TooShort)
        );
        // Extension header missing / length too long.
        assert_eq!(
            parse(&hex("90000001 00000002 00000003 bede")),
            Err(RtpError::BadExtension)
        );
        assert_eq!(
            parse(&hex("90000001 00000002 00000003 bede0002 10ab0000")),
            Err(RtpError::BadExtension)
        );
        // Padding: count 0, count larger than payload, exact.
        assert_eq!(
            parse(&hex("a0000001 00000002 00000003 aa00")),
            Err(RtpError::BadPadding)
        );
        assert_eq!(
            parse(&hex("a0000001 00000002 00000003 aa03")),
            Err(RtpError::BadPadding)
        );
        let h = parse(&hex("a0000001 00000002 00000003 aa02")).unwrap();
        assert!(h.is_padding_only());
        let h = parse(&hex("a0000001 00000002 00000003 bb000002")).unwrap();
        assert_eq!((h.payload_len, h.padding_len), (2, 2));
        assert!(!h.is_padding_only());
        // Padding-only packet with no room for the count byte is an error, not a panic.
        assert_eq!(
            parse(&hex("a0000001 00000002 00000003")),
            Err(RtpError::BadPadding)
        );
    }

    #[test]
    fn two_byte_extensions() {
        // 0x1000 profile: id 1 len 0; id 20 len 3; padding; id 2 len 1.
        let b = hex("90000001 00000002 00000003 10000003 01001403 aabbcc00 0201ff00 99");
        let h = parse(&b).unwrap();
        assert!(h.ext.unwrap().is_two_byte());
        let exts: Vec<_> = extensions(&b, &h).collect();
        assert_eq!(
            exts,
            vec![
                (1, &[][..]),
                (20, &[0xaa, 0xbb, 0xcc][..]),
                (2, &[0xff][..])
            ]
        );
        assert_eq!(h.payload(&b), &[0x99]);
    }

    #[test]
    fn extension_iteration_stops_on_garbage() {
        // One-byte: id 15 stops; element longer than the block stops.
        let b = hex("90000001 00000002 00000003 bede0001 10aaf0bb");
        let h = parse(&b).unwrap();
        assert_eq!(extensions(&b, &h).count(), 1);
        let b = hex("90000001 00000002 00000003 bede0001 10aa3f00");
        let h = parse(&b).unwrap();
        assert_eq!(
            extensions(&b, &h).collect::<Vec<_>>(),
            vec![(1, &[0xaa][..])]
        );
        let b = hex("90000001 00000002 00000003 10000001 0105aabb");
        let h = parse(&b).unwrap();
        assert_eq!(extensions(&b, &h).count(), 0);
        // Unknown profile: nothing.
        let b = hex("90000001 00000002 00000003 abcd0001 10aa0000");
        let h = parse(&b).unwrap();
        assert_eq!(extensions(&b, &h).count(), 0);
    }

    #[test]
    fn setters_in_place() {
        let mut b = sample();
        set_sequence(&mut b, 0xfffe);
        set_timestamp(&mut b, 0xa0b0c0d0);
        set_ssrc(&mut b, 42);
        set_payload_type(&mut b, 96);
        let h = parse(&b).unwrap();
        assert_eq!(
            (h.sequence, h.timestamp, h.ssrc, h.payload_type, h.marker),
            (0xfffe, 0xa0b0c0d0, 42, 96, true)
        );
        set_marker(&mut b, false);
        set_payload_type(&mut b, 200);
        let h = parse(&b).unwrap();
        assert_eq!((h.payload_type, h.marker), (200 & 0x7f, false));
        set_marker(&mut b, true);
        assert_eq!(parse(&b).unwrap().payload_type, 72);
        // Short buffers: no panic, no change.
        let mut s = [0x80u8, 1];
        set_sequence(&mut s, 1);
        set_timestamp(&mut s, 1);
        set_ssrc(&mut s, 1);
        set_payload_type(&mut s, 5);
        assert_eq!(s, [0x80, 5]);
        set_marker(&mut [], true);
    }

    #[test]
    fn set_extension_value_in_place() {
        let mut b = sample();
        let h = parse(&b).unwrap();
        assert!(set_extension_in_place(&mut b, &h, 2, &[7, 8, 9]));
        assert!(!set_extension_in_place(&mut b, &h, 2, &[7, 8]));
        assert!(!set_extension_in_place(&mut b, &h, 9, &[7]));
        assert_eq!(find_extension(&b, &h, 2), Some(&[7u8, 8, 9][..]));
        assert_eq!(find_extension(&b, &h, 1), Some(&[0xab][..]));
    }

    #[test]
    fn write_one_byte_block() {
        let src = sample();
        let h = parse(&src).unwrap();
        let mut out = Vec::with_capacity(1500);
        let mid = b"0";
        write_header_with_extensions(
            &mut out,
            &src,
            &h,
            &[(1, &[0x55]), (4, mid), (5, &[1, 2, 3, 4, 5, 6, 7, 8])],
        )
        .unwrap();
        // 2 + 2 + 9 = 13 data bytes -> 16, 4 words.
        assert_eq!(
            out,
            hex("91ef1234 01020304 deadbeef 0a0b0c0d bede0004 10554030 57010203 04050607 08000000 c0ffee")
        );
        let o = parse(&out).unwrap();
        assert_eq!(o.header_len, 36);
        assert_eq!(find_extension(&out, &o, 4), Some(&b"0"[..]));
        assert_eq!(o.payload(&out), &hex("c0ffee")[..]);
    }

    #[test]
    fn write_two_byte_block_when_needed() {
        let src = hex("80000001 00000002 00000003 aabb");
        let h = parse(&src).unwrap();
        let mut out = Vec::new();
        // id 20 > 14 forces the two-byte form; so would a 0-byte or 17-byte value.
        write_header_with_extensions(&mut out, &src, &h, &[(1, &[0x11]), (20, &[])]).unwrap();
        assert_eq!(
            out,
            hex("90000001 00000002 00000003 10000002 01011114 00000000 aabb")
        );
        let o = parse(&out).unwrap();
        assert_eq!(
            extensions(&out, &o).collect::<Vec<_>>(),
            vec![(1, &[0x11][..]), (20, &[][..])]
        );
        let long = [7u8; 17];
        write_header_with_extensions(&mut out, &src, &h, &[(2, &long)]).unwrap();
        let o = parse(&out).unwrap();
        assert!(o.ext.unwrap().is_two_byte());
        assert_eq!(find_extension(&out, &o, 2), Some(&long[..]));
        // Invalid ids are skipped.
        write_header_with_extensions(&mut out, &src, &h, &[(0, &[1]), (3, &[2])]).unwrap();
        let o = parse(&out).unwrap();
        assert_eq!(
            extensions(&out, &o).collect::<Vec<_>>(),
            vec![(3, &[2][..])]
        );
    }

    #[test]
    fn write_without_extensions_clears_x() {
        let src = sample();
        let h = parse(&src).unwrap();
        let mut out = vec![1, 2, 3];
        write_header_with_extensions(&mut out, &src, &h, &[]).unwrap();
        assert_eq!(out, hex("81ef1234 01020304 deadbeef 0a0b0c0d c0ffee"));
        // Padding is carried along.
        let src = hex("a0000001 00000002 00000003 bb000002");
        let h = parse(&src).unwrap();
        write_header_with_extensions(&mut out, &src, &h, &[(1, &[9])]).unwrap();
        let o = parse(&out).unwrap();
        assert_eq!((o.payload_len, o.padding_len), (2, 2));
        assert_eq!(find_extension(&out, &o, 1), Some(&[9u8][..]));
    }

    #[test]
    fn rewrite_maps_drops_and_adds() {
        let src = sample(); // ids 1 and 2
        let h = parse(&src).unwrap();
        let mut out = Vec::with_capacity(1500);
        // Producer id 2 -> router id 10, id 1 unknown (dropped), MID added as id 4.
        rewrite_extensions(
            &mut out,
            &src,
            &h,
            |id| (id == 2).then_some(10),
            &[(4, b"mid7")],
        )
        .unwrap();
        let o = parse(&out).unwrap();
        assert!(o.ext.unwrap().is_one_byte());
        assert_eq!(
            extensions(&out, &o).collect::<Vec<_>>(),
            vec![(10, &[1, 2, 3][..]), (4, &b"mid7"[..])]
        );
        assert_eq!(o.payload(&out), &hex("c0ffee")[..]);
        assert_eq!((o.sequence, o.ssrc, o.csrc_count), (0x1234, 0xdeadbeef, 1));
        // Two-byte source with a 0-length element: the output stays two-byte.
        let src = hex("90000001 00000002 00000003 10000002 01000203 aabbcc00 99");
        let h = parse(&src).unwrap();
        rewrite_extensions(&mut out, &src, &h, Some, &[]).unwrap();
        let o = parse(&out).unwrap();
        assert!(o.ext.unwrap().is_two_byte());
        assert_eq!(extensions(&out, &o).count(), 2);
        // Reusing a buffer with capacity does not reallocate.
        let ptr = out.as_ptr();
        rewrite_extensions(&mut out, &src, &h, |_| None, &[(1, &[1])]).unwrap();
        assert_eq!(out.as_ptr(), ptr);
    }

    #[test]
    fn rtx_round_trip() {
        let src = hex("a0e11234 01020304 deadbeef aabbccdd 0002"); // marker, PT 97, padding 2
        let mut rtx = Vec::new();
        rtx_encode(&mut rtx, &src, 98, 0xdeadbef0, 7).unwrap();
        assert_eq!(rtx, hex("80e20007 01020304 deadbef0 1234 aabbccdd"));
        assert_eq!(rtx_decode(&rtx).unwrap(), (0x1234, 14));
        let mut back = rtx.clone();
        assert_eq!(rtx_restore(&mut back, 97, 0xdeadbeef).unwrap(), 0x1234);
        assert_eq!(back, hex("80e11234 01020304 deadbeef aabbccdd"));
        // With CSRC and extension.
        let src = sample();
        rtx_encode(&mut rtx, &src, 100, 9, 65535).unwrap();
        let h = parse(&rtx).unwrap();
        assert_eq!(find_extension(&rtx, &h, 2), Some(&[1u8, 2, 3][..]));
        let mut back = rtx.clone();
        rtx_restore(&mut back, 111, 0xdeadbeef).unwrap();
        assert_eq!(back, src);
        // Too short for an OSN (an RTX padding probe).
        assert_eq!(
            rtx_decode(&hex("80620001 00000002 00000003 aa")),
            Err(RtpError::BadPayload)
        );
        let mut p = hex("80620001 00000002 00000003");
        assert_eq!(rtx_restore(&mut p, 1, 1), Err(RtpError::BadPayload));
    }

    #[test]
    fn codec_from_mime() {
        assert_eq!(Codec::from_mime("video/VP8"), Codec::Vp8);
        assert_eq!(Codec::from_mime("video/vp9"), Codec::Vp9);
        assert_eq!(Codec::from_mime("video/H264"), Codec::H264);
        assert_eq!(Codec::from_mime("audio/opus"), Codec::Opus);
        assert_eq!(Codec::from_mime("video/AV1"), Codec::Av1);
        assert_eq!(Codec::from_mime("video/AV2"), Codec::Other);
        assert!(Codec::Av1.has_keyframes());
        // AV1 aggregation header: N bit (0x08) marks a new coded video sequence.
        assert!(is_keyframe(Codec::Av1, &hex("18 0a0b")));
        assert!(!is_keyframe(Codec::Av1, &hex("10 0a0b")));
        assert!(!is_keyframe(Codec::Av1, &[]));
        assert_eq!(Codec::from_mime(""), Codec::Other);
        assert!(Codec::H264.has_keyframes() && !Codec::Opus.has_keyframes());
        assert!(!is_keyframe(Codec::Opus, &[0]));
    }

    #[test]
    fn vp8_keyframes() {
        // Minimal descriptor: S=1 PID=0, then frame tag with P=0 (key) / P=1 (delta).
        assert!(is_keyframe(Codec::Vp8, &hex("10 9001 9d012a")));
        assert!(!is_keyframe(Codec::Vp8, &hex("10 9101 9d012a")));
        // S=0 (continuation) or PID != 0: not the start of partition 0.
        assert!(!is_keyframe(Codec::Vp8, &hex("00 9001")));
        assert!(!is_keyframe(Codec::Vp8, &hex("11 9001")));
        // X with I (15-bit picture id), L, T/K present: 1 + 1 + 2 + 1 + 1 = 6 bytes.
        assert!(is_keyframe(Codec::Vp8, &hex("90 f0 8123 05 40 9001")));
        assert!(!is_keyframe(Codec::Vp8, &hex("90 f0 8123 05 40 9101")));
        // 7-bit picture id only.
        assert!(is_keyframe(Codec::Vp8, &hex("90 80 23 9001")));
        // K only.
        assert!(is_keyframe(Codec::Vp8, &hex("90 10 1f 00")));
        // Truncated descriptors.
        for p in [
            &hex("90")[..],
            &hex("90 80")[..],
            &hex("90 80 81 00")[..],
            &hex("10")[..],
            &[][..],
        ] {
            assert!(!is_keyframe(Codec::Vp8, p));
        }
    }

    #[test]
    fn vp9_keyframes() {
        // I=1 (15-bit pid), P=0, L=1, F=0, B=1, E=0, V=1: layer byte SID=0, TL0PICIDX.
        assert!(is_keyframe(Codec::Vp9, &hex("aa 8001 00 00 ff")));
        // Same with P=1.
        assert!(!is_keyframe(Codec::Vp9, &hex("ea 8001 00 00 ff")));
        // B=0: not the frame's first packet.
        assert!(!is_keyframe(Codec::Vp9, &hex("a2 8001 00 00 ff")));
        // SID=1 (layer byte 0b000_0_001_0 = 0x02): upper spatial layer.
        assert!(!is_keyframe(Codec::Vp9, &hex("aa 8001 02 00 ff")));
        // No I, no L: P=0 B=1.
        assert!(is_keyframe(Codec::Vp9, &hex("08 ff")));
        assert!(is_keyframe(Codec::Vp9, &hex("8c 05 ff")));
        for p in [
            &hex("a8")[..],
            &hex("a8 80")[..],
            &hex("a8 8001")[..],
            &[][..],
        ] {
            assert!(!is_keyframe(Codec::Vp9, p));
        }
    }

    #[test]
    fn h264_keyframes() {
        assert!(is_keyframe(Codec::H264, &hex("65 88")));
        assert!(is_keyframe(Codec::H264, &hex("67 42")));
        assert!(!is_keyframe(Codec::H264, &hex("68 ce"))); // PPS
        assert!(!is_keyframe(Codec::H264, &hex("41 9a"))); // non-IDR slice
                                                           // STAP-A: SPS + PPS (SPS is key).
        assert!(is_keyframe(Codec::H264, &hex("78 0002 6742 0002 68ce")));
        // STAP-A: SEI + non-IDR.
        assert!(!is_keyframe(Codec::H264, &hex("78 0002 0601 0002 419a")));
        // STAP-A: size runs off the end after a non-key NAL.
        assert!(!is_keyframe(Codec::H264, &hex("78 0002 0601 0009 41")));
        assert!(!is_keyframe(Codec::H264, &hex("78 0000 65")));
        // STAP-B with DON.
        assert!(is_keyframe(Codec::H264, &hex("79 0001 0002 6588")));
        // FU-A: start of IDR, middle of IDR, start of non-IDR.
        assert!(is_keyframe(Codec::H264, &hex("7c 85 aa")));
        assert!(!is_keyframe(Codec::H264, &hex("7c 05 aa")));
        assert!(!is_keyframe(Codec::H264, &hex("7c 81 aa")));
        assert!(!is_keyframe(Codec::H264, &hex("7c")));
        assert!(!is_keyframe(Codec::H264, &[]));
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut out = Vec::new();
        for i in 0..20000 {
            let n = (x % 64) as usize;
            let mut b = Vec::with_capacity(n);
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            if !b.is_empty() && i % 2 == 0 {
                b[0] = 0x80 | (b[0] & 0x3f);
            }
            if let Ok(h) = parse(&b) {
                assert!(h.packet_len() == b.len());
                let _ = extensions(&b, &h).count();
                let _ = find_extension(&b, &h, 3);
                let mut c = b.clone();
                let _ = set_extension_in_place(&mut c, &h, 1, &[0]);
                rewrite_extensions(&mut out, &b, &h, Some, &[(1, &[1])]).unwrap();
                let o = parse(&out).unwrap();
                assert_eq!(o.payload(&out), h.payload(&b));
                let _ = rtx_encode(&mut out, &b, 1, 2, 3);
                let mut c = b.clone();
                let _ = rtx_restore(&mut c, 1, 2);
            }
            let _ = rtx_decode(&b);
            for c in [
                Codec::Vp8,
                Codec::Vp9,
                Codec::H264,
                Codec::Opus,
                Codec::Other,
            ] {
                let _ = is_keyframe(c, &b);
            }
        }
    }

    #[test]
    fn one_byte_id_zero_with_a_length_is_padding_not_an_element() {
        // X=1, one-byte profile, one word: 0x05 (ID 0, L 5: padding), then ID 1 with 1 byte.
        let mut pkt = vec![0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0xBE, 0xDE, 0, 1, 0x05, 0x10, 0xAA, 0];
        pkt.extend_from_slice(&[1, 2, 3]);
        let hdr = parse(&pkt).expect("parses");
        let elems: Vec<(u8, Vec<u8>)> = extensions(&pkt, &hdr).map(|(id, v)| (id, v.to_vec())).collect();
        assert_eq!(elems, vec![(1, vec![0xAA])]);
    }
}
