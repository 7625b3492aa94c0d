//! VP8 RTP payload descriptor (RFC 7741 §4.2): parsing, writing, in-place rewriting of
//! PictureID and TL0PICIDX, and per-consumer temporal layer selection.
//!
//! ```text
//!       0 1 2 3 4 5 6 7
//!      +-+-+-+-+-+-+-+-+
//!      |X|R|N|S|R| PID | (REQUIRED)
//!      +-+-+-+-+-+-+-+-+
//! X:   |I|L|T|K| RSV   | (OPTIONAL)
//!      +-+-+-+-+-+-+-+-+
//! I:   |M| PictureID   | (OPTIONAL, 7 bits, or 15 with the next octet when M = 1)
//!      +-+-+-+-+-+-+-+-+
//! L:   |   TL0PICIDX   | (OPTIONAL)
//!      +-+-+-+-+-+-+-+-+
//! T/K: |TID|Y| KEYIDX  | (OPTIONAL)
//!      +-+-+-+-+-+-+-+-+
//! ```
//!
//! A viewer held below the sender's temporal layers gets only the frames with TID <= its
//! current layer. So that the stream it receives stays decodable and looks like an encoder's
//! own output, [`TemporalFilter`] keeps its PictureID (which a decoder uses to detect lost
//! frames) contiguous across the frames it drops, and continues PictureID and TL0PICIDX
//! after the last ones sent when the source changes (simulcast switch, resume). It moves up
//! one layer at a time, only at a frame of the next layer that has the layer sync bit
//! (Y = 1: it depends on TL0 only) or at a key frame, and down at the next frame.
//!
//! Sans-IO and allocation-free per packet (the sequence maps allocate once).

use crate::seq::{is_newer_ts, SeqManager};

/// Why a payload is not a VP8 payload descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vp8Error {
    /// The payload ends inside the descriptor (or right after it: no VP8 data).
    Truncated,
}

impl std::fmt::Display for Vp8Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Vp8Error::Truncated => f.write_str("VP8 payload descriptor truncated"),
        }
    }
}

impl std::error::Error for Vp8Error {}

/// A PictureID and the width it was sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureId {
    pub value: u16,
    /// 15-bit (M = 1, two octets) or 7-bit.
    pub long: bool,
}

impl PictureId {
    /// Number of bits of the field.
    #[inline]
    pub fn bits(self) -> u32 {
        if self.long { 15 } else { 7 }
    }
}

/// The fields of a VP8 payload descriptor and where the rewritable ones are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// X: the extension octet is present (implied by any of the optional fields).
    pub extended: bool,
    /// N: non-reference frame.
    pub non_reference: bool,
    /// S: start of a VP8 partition.
    pub start: bool,
    /// PID: partition index (0..7).
    pub partition: u8,
    pub picture_id: Option<PictureId>,
    pub tl0_pic_idx: Option<u8>,
    /// TID (T = 1).
    pub tid: Option<u8>,
    /// Y: layer sync (only meaningful with TID).
    pub layer_sync: bool,
    /// KEYIDX (K = 1).
    pub key_idx: Option<u8>,
    /// Descriptor length in bytes (the VP8 payload starts after it).
    pub len: usize,
}

impl Descriptor {
    /// The packet starts a frame (partition 0 start).
    #[inline]
    pub fn starts_frame(&self) -> bool {
        self.start && self.partition == 0
    }

    /// Offset of the PictureID field, if present.
    #[inline]
    fn picture_id_offset(&self) -> usize {
        2
    }

    /// Offset of the TL0PICIDX field, if present.
    #[inline]
    fn tl0_offset(&self) -> usize {
        2 + self.picture_id.map_or(0, |p| if p.long { 2 } else { 1 })
    }
}

/// Parse the descriptor at the start of an RTP payload. At least one byte of VP8 data must
/// follow it.
pub fn parse(p: &[u8]) -> Result<Descriptor, Vp8Error> {
    let &b0 = p.first().ok_or(Vp8Error::Truncated)?;
    let mut d = Descriptor {
        extended: b0 & 0x80 != 0,
        non_reference: b0 & 0x20 != 0,
        start: b0 & 0x10 != 0,
        partition: b0 & 0x07,
        ..Descriptor::default()
    };
    let mut off = 1;
    if b0 & 0x80 != 0 {
        let &x = p.get(1).ok_or(Vp8Error::Truncated)?;
        off = 2;
        if x & 0x80 != 0 {
            let &m = p.get(off).ok_or(Vp8Error::Truncated)?;
            if m & 0x80 != 0 {
                let &lo = p.get(off + 1).ok_or(Vp8Error::Truncated)?;
                d.picture_id = Some(PictureId { value: u16::from_be_bytes([m & 0x7f, lo]), long: true });
                off += 2;
            } else {
                d.picture_id = Some(PictureId { value: m as u16, long: false });
                off += 1;
            }
        }
        if x & 0x40 != 0 {
            d.tl0_pic_idx = Some(*p.get(off).ok_or(Vp8Error::Truncated)?);
            off += 1;
        }
        if x & 0x30 != 0 {
            let &t = p.get(off).ok_or(Vp8Error::Truncated)?;
            if x & 0x20 != 0 {
                d.tid = Some(t >> 6);
                d.layer_sync = t & 0x20 != 0;
            }
            if x & 0x10 != 0 {
                d.key_idx = Some(t & 0x1f);
            }
            off += 1;
        }
    }
    if p.len() <= off {
        return Err(Vp8Error::Truncated);
    }
    d.len = off;
    Ok(d)
}

/// Append the descriptor `d` (its `len` is not used) to `out`. Reserved bits are written 0;
/// `layer_sync` is written only with a TID.
pub fn write(d: &Descriptor, out: &mut Vec<u8>) {
    let ext = d.extended || d.picture_id.is_some() || d.tl0_pic_idx.is_some() || d.tid.is_some() || d.key_idx.is_some();
    out.push(
        (ext as u8) << 7 | (d.non_reference as u8) << 5 | (d.start as u8) << 4 | (d.partition & 0x07),
    );
    if !ext {
        return;
    }
    out.push(
        (d.picture_id.is_some() as u8) << 7
            | (d.tl0_pic_idx.is_some() as u8) << 6
            | (d.tid.is_some() as u8) << 5
            | (d.key_idx.is_some() as u8) << 4,
    );
    if let Some(pic) = d.picture_id {
        if pic.long {
            out.extend_from_slice(&((pic.value & 0x7fff) | 0x8000).to_be_bytes());
        } else {
            out.push((pic.value & 0x7f) as u8);
        }
    }
    if let Some(t) = d.tl0_pic_idx {
        out.push(t);
    }
    if d.tid.is_some() || d.key_idx.is_some() {
        let tid = d.tid.map_or(0, |t| (t & 0x03) << 6 | ((d.layer_sync as u8) << 5));
        out.push(tid | d.key_idx.unwrap_or(0) & 0x1f);
    }
}

/// Overwrite PictureID (in its own width) and TL0PICIDX of the descriptor `d` parsed from
/// `payload`. Fields the descriptor does not have are left alone.
pub fn rewrite(payload: &mut [u8], d: &Descriptor, picture_id: Option<u16>, tl0_pic_idx: Option<u8>) {
    if let (Some(pic), Some(v)) = (d.picture_id, picture_id) {
        let o = d.picture_id_offset();
        if pic.long {
            if let Some(b) = payload.get_mut(o..o + 2) {
                b.copy_from_slice(&((v & 0x7fff) | 0x8000).to_be_bytes());
            }
        } else if let Some(b) = payload.get_mut(o) {
            *b = (v & 0x7f) as u8;
        }
    }
    if let (Some(_), Some(v)) = (d.tl0_pic_idx, tl0_pic_idx) {
        if let Some(b) = payload.get_mut(d.tl0_offset()) {
            *b = v;
        }
    }
}

/// An n-bit wrapping counter (PictureID, TL0PICIDX) mapped onto a [`SeqManager`]: inputs are
/// unwrapped into a u16 domain (differences stay well below 2^15), outputs are taken back
/// modulo 2^n. Dropped values close their gap; after [`CounterMap::sync`] the next value
/// continues right after the highest one sent.
#[derive(Debug, Clone)]
struct CounterMap {
    seq: Option<SeqManager>,
    /// Last input (n bits) and its unwrapped value.
    last: (u16, u16),
    /// Re-base at the next input.
    sync: bool,
}

impl CounterMap {
    fn new() -> Self {
        CounterMap { seq: None, last: (0, 0), sync: false }
    }

    /// The unwrapped value of `raw` (n bits), relative to the last newer input.
    fn unwrap(&self, raw: u16, bits: u32) -> u16 {
        let m = (1u32 << bits) - 1;
        let d = (raw as u32).wrapping_sub(self.last.0 as u32) & m;
        // Signed n-bit difference.
        let d = if d >= 1 << (bits - 1) { d as i32 - (1 << bits) } else { d as i32 };
        self.last.1.wrapping_add(d as u16)
    }

    fn note(&mut self, raw: u16, u: u16) {
        if crate::seq::is_newer(u, self.last.1) {
            self.last = (raw, u);
        }
    }

    /// The output for `raw` (None: refused, e.g. from before the last sync).
    fn input(&mut self, raw: u16, bits: u32) -> Option<u16> {
        let mask = ((1u32 << bits) - 1) as u16;
        let raw = raw & mask;
        if self.seq.is_none() {
            // First value: sent as is.
            self.last = (raw, raw);
            let mut s = SeqManager::new(raw);
            s.input(raw);
            self.seq = Some(s);
            return Some(raw);
        }
        let u = if self.sync {
            // Another source: its numbering has nothing to do with the last one.
            self.sync = false;
            let u = self.last.1.wrapping_add(1);
            self.last = (raw, u);
            if let Some(seq) = self.seq.as_mut() {
                seq.sync(u);
            }
            u
        } else {
            let u = self.unwrap(raw, bits);
            self.note(raw, u);
            u
        };
        self.seq.as_mut().and_then(|seq| seq.input(u)).map(|o| o & mask)
    }

    /// The output `raw` was (or would be) given, without changing anything.
    fn peek(&self, raw: u16, bits: u32) -> Option<u16> {
        let mask = ((1u32 << bits) - 1) as u16;
        let seq = self.seq.as_ref()?;
        if self.sync {
            return None;
        }
        seq.output_of(self.unwrap(raw & mask, bits)).map(|o| o & mask)
    }

    /// `raw` is dropped on purpose: later values close the gap.
    fn drop_value(&mut self, raw: u16, bits: u32) {
        if self.sync {
            return;
        }
        let mask = ((1u32 << bits) - 1) as u16;
        let raw = raw & mask;
        if self.seq.is_none() {
            // Values so far went out as they came (the filter started mid-stream): continue
            // from the one before this.
            let prev = raw.wrapping_sub(1);
            self.last = (prev & mask, prev);
            let mut s = SeqManager::new(prev);
            s.input(prev);
            self.seq = Some(s);
        }
        let u = self.unwrap(raw, bits);
        if let Some(seq) = self.seq.as_mut() {
            seq.drop(u);
        }
        self.note(raw, u);
    }
}

/// A temporal layer no sender uses: "every layer".
pub const ALL_LAYERS: u8 = u8::MAX;

/// Per-consumer temporal layer selection and PictureID / TL0PICIDX rewriting of a VP8 stream.
#[derive(Debug, Clone)]
pub struct TemporalFilter {
    /// The highest layer the viewer wants.
    target: u8,
    /// The highest layer being forwarded (moves toward `target` at decodable points).
    current: u8,
    /// Highest TID seen in the stream (None: no temporal layers signalled).
    max_tid: Option<u8>,
    /// Timestamp of the frame last decided, and whether it is forwarded.
    frame: Option<(u32, bool)>,
    picture_ids: CounterMap,
    tl0: CounterMap,
    /// Frames dropped by temporal layer.
    pub frames_dropped: u64,
}

impl Default for TemporalFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl TemporalFilter {
    pub fn new() -> Self {
        TemporalFilter {
            target: ALL_LAYERS,
            current: ALL_LAYERS,
            max_tid: None,
            frame: None,
            picture_ids: CounterMap::new(),
            tl0: CounterMap::new(),
            frames_dropped: 0,
        }
    }

    /// The viewer's preferred temporal layer ([`ALL_LAYERS`]: every layer).
    pub fn set_target(&mut self, layer: u8) {
        self.target = layer;
    }

    pub fn target(&self) -> u8 {
        self.target
    }

    /// The temporal layer being forwarded, clamped to the layers the stream has (None when it
    /// signals none).
    pub fn current(&self) -> Option<u8> {
        self.max_tid.map(|m| self.current.min(m))
    }

    /// The consumer's source changes (simulcast switch, resume): the next packet, a key
    /// frame, continues PictureID and TL0PICIDX after the last ones sent.
    pub fn sync(&mut self) {
        self.frame = None;
        self.picture_ids.sync = self.picture_ids.seq.is_some();
        self.tl0.sync = self.tl0.seq.is_some();
    }

    /// Whether the packet with descriptor `d` and RTP timestamp `ts` (a key frame packet or
    /// not) is forwarded. Every packet of a frame gets the decision of the frame; a dropped
    /// frame's PictureID is skipped by the rewriting.
    pub fn admit(&mut self, d: &Descriptor, ts: u32, key_frame: bool) -> bool {
        let Some(tid) = d.tid else { return true };
        self.max_tid = Some(self.max_tid.map_or(tid, |m| m.max(tid)));
        let forward = match self.frame {
            Some((last, fwd)) if last == ts => fwd,
            // A late packet of an older frame: no state change; not if its frame was dropped.
            Some((last, _)) if !is_newer_ts(ts, last) => {
                let dropped = d.picture_id.is_some_and(|p| self.picture_ids.peek(p.value, p.bits()).is_none());
                return tid <= self.current && !dropped;
            }
            _ => {
                // A new frame: a point where the layer may change.
                if key_frame || self.target < self.current {
                    self.current = self.target;
                } else if self.target > self.current && d.layer_sync && tid == self.current.saturating_add(1) {
                    self.current = tid;
                }
                let fwd = tid <= self.current;
                if !fwd {
                    self.frames_dropped += 1;
                }
                self.frame = Some((ts, fwd));
                fwd
            }
        };
        if !forward {
            if let Some(p) = d.picture_id {
                self.picture_ids.drop_value(p.value, p.bits());
            }
        }
        forward
    }

    /// The PictureID and TL0PICIDX to send for a forwarded packet with descriptor `d`
    /// (None for a field it does not have or that cannot be mapped).
    pub fn map(&mut self, d: &Descriptor) -> (Option<u16>, Option<u8>) {
        let pic = d.picture_id.and_then(|p| self.picture_ids.input(p.value, p.bits()));
        let tl0 = d.tl0_pic_idx.and_then(|t| self.tl0.input(t as u16, 8)).map(|t| t as u8);
        (pic, tl0)
    }

    /// What [`TemporalFilter::map`] gave (or would give) an earlier packet, without state
    /// change (retransmissions). None when a field present cannot be mapped any more.
    pub fn map_again(&self, d: &Descriptor) -> Option<(Option<u16>, Option<u8>)> {
        let pic = match d.picture_id {
            Some(p) => Some(self.picture_ids.peek(p.value, p.bits())?),
            None => None,
        };
        let tl0 = match d.tl0_pic_idx {
            Some(t) => Some(self.tl0.peek(t as u16, 8)? as u8),
            None => None,
        };
        Some((pic, tl0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_descriptors() -> Vec<Descriptor> {
        let mut v = Vec::new();
        for flags in 0u32..(1 << 9) {
            let pic = match flags & 3 {
                0 => None,
                1 => Some(PictureId { value: 0x55, long: false }),
                _ => Some(PictureId { value: 0x1234 + flags as u16, long: true }),
            };
            let d = Descriptor {
                extended: false,
                non_reference: flags & 4 != 0,
                start: flags & 8 != 0,
                partition: ((flags as u8 >> 4) & 1) | (2 * ((flags & 8 == 0) as u8)),
                picture_id: pic,
                tl0_pic_idx: (flags & 32 != 0).then_some(0xa7),
                tid: (flags & 64 != 0).then_some((flags >> 2 & 3) as u8),
                layer_sync: flags & 64 != 0 && flags & 128 != 0,
                key_idx: (flags & 256 != 0).then_some(0x13),
                len: 0,
            };
            v.push(d);
        }
        v
    }

    #[test]
    fn round_trip_all_flag_combinations() {
        for d in all_descriptors() {
            let mut buf = Vec::new();
            write(&d, &mut buf);
            let hdr_len = buf.len();
            buf.extend_from_slice(&[0x9d, 0x01, 0x2a]);
            let got = parse(&buf).unwrap();
            let ext = d.picture_id.is_some() || d.tl0_pic_idx.is_some() || d.tid.is_some() || d.key_idx.is_some();
            assert_eq!(got, Descriptor { len: hdr_len, extended: ext, ..d }, "{buf:02x?}");
            // One byte short of any VP8 data: refused.
            assert_eq!(parse(&buf[..hdr_len]), Err(Vp8Error::Truncated));
            for cut in 0..hdr_len {
                assert!(parse(&buf[..cut]).is_err());
            }
        }
    }

    #[test]
    fn rewrite_in_place_keeps_everything_else() {
        for d in all_descriptors() {
            let mut buf = Vec::new();
            write(&d, &mut buf);
            buf.extend_from_slice(&[0x9d, 0x01, 0x2a]);
            let parsed = parse(&buf).unwrap();
            rewrite(&mut buf, &parsed, Some(0x7ffe), Some(9));
            let after = parse(&buf).unwrap();
            let want_pic = d.picture_id.map(|p| PictureId { value: if p.long { 0x7ffe } else { 0x7e }, long: p.long });
            let want = Descriptor { picture_id: want_pic, tl0_pic_idx: d.tl0_pic_idx.map(|_| 9), ..parsed };
            assert_eq!(after, want);
            assert_eq!(&buf[buf.len() - 3..], &[0x9d, 0x01, 0x2a]);
        }
    }

    #[test]
    fn known_bytes() {
        // X, S; I L T; 15-bit PictureID 0x0102; TL0PICIDX 5; TID 2, Y; VP8 data.
        let p = [0x90, 0xe0, 0x81, 0x02, 0x05, 0xa0, 0x00];
        let d = parse(&p).unwrap();
        assert!(d.starts_frame());
        assert_eq!(d.picture_id, Some(PictureId { value: 0x0102, long: true }));
        assert_eq!(d.tl0_pic_idx, Some(5));
        assert_eq!((d.tid, d.layer_sync, d.key_idx), (Some(2), true, None));
        assert_eq!(d.len, 6);
        // No extension: one byte; an extension octet with no field: two.
        assert_eq!(parse(&[0x10, 0x00]).unwrap().len, 1);
        let empty = parse(&[0x80, 0x00, 0x00]).unwrap();
        assert_eq!((empty.len, empty.extended), (2, true));
        let mut w = Vec::new();
        write(&empty, &mut w);
        assert_eq!(w, [0x80, 0x00]);
        assert_eq!(parse(&[]), Err(Vp8Error::Truncated));
    }

    /// An L1T3 stream: TIDs 0,2,1,2 repeating; TL1 and TL2 frames in the first cycle after a
    /// TL0 with Y = 1 every second cycle (as a sender that syncs regularly).
    struct Stream {
        n: u32,
        pic: u16,
        tl0: u8,
    }

    impl Stream {
        fn next(&mut self) -> (Descriptor, u32, bool) {
            let tid = [0u8, 2, 1, 2][(self.n % 4) as usize];
            if tid == 0 && self.n > 0 {
                self.tl0 = self.tl0.wrapping_add(1);
            }
            let sync = tid > 0 && (self.n / 4).is_multiple_of(2) && (self.n % 4) < 3;
            let d = Descriptor {
                start: true,
                picture_id: Some(PictureId { value: self.pic, long: true }),
                tl0_pic_idx: Some(self.tl0),
                tid: Some(tid),
                layer_sync: sync,
                len: 6,
                ..Descriptor::default()
            };
            let out = (d, self.n * 3000, self.n == 0);
            self.n += 1;
            self.pic = (self.pic + 1) & 0x7fff;
            out
        }
    }

    #[test]
    fn tl0_only_gets_a_quarter_with_contiguous_ids() {
        let mut s = Stream { n: 0, pic: 0x7ff0, tl0: 250 };
        let mut f = TemporalFilter::new();
        f.set_target(0);
        let mut sent = Vec::new();
        for _ in 0..400 {
            let (d, ts, key) = s.next();
            if f.admit(&d, ts, key) {
                sent.push(f.map(&d));
            }
        }
        assert_eq!(sent.len(), 100);
        assert_eq!(f.frames_dropped, 300);
        assert_eq!(f.current(), Some(0));
        for w in sent.windows(2) {
            assert_eq!(w[1].0.unwrap(), (w[0].0.unwrap() + 1) & 0x7fff, "PictureID wraps at 15 bits");
            assert_eq!(w[1].1.unwrap(), w[0].1.unwrap().wrapping_add(1));
        }
    }

    #[test]
    fn switches_up_one_layer_at_a_time_at_sync_frames() {
        let mut s = Stream { n: 0, pic: 10, tl0: 0 };
        let mut f = TemporalFilter::new();
        f.set_target(0);
        for _ in 0..8 {
            let (d, ts, key) = s.next();
            f.admit(&d, ts, key);
        }
        f.set_target(2);
        // Cycle 2 (frames 8..12) has sync frames: TL2 sync at 9 (no: layer 1 first), TL1 at 10.
        let mut layers = Vec::new();
        for _ in 0..16 {
            let (d, ts, key) = s.next();
            let tid = d.tid.unwrap();
            let fwd = f.admit(&d, ts, key);
            layers.push((tid, d.layer_sync, fwd, f.current().unwrap()));
        }
        // Frame 9 (TL2, sync) is not taken: TL1 is not there yet; frame 10 (TL1 sync) is.
        assert_eq!(layers[1], (2, true, false, 0));
        assert_eq!(layers[2], (1, true, true, 1));
        // Frame 11: TL2 without sync: still dropped; next TL2 sync is in cycle 4 (frame 17).
        assert_eq!(layers[3], (2, false, false, 1));
        assert_eq!(layers[9], (2, true, true, 2));
        assert!(layers[9..].iter().all(|l| l.2));
        // Down: at the next frame.
        f.set_target(0);
        let (d, ts, key) = s.next();
        let fwd = f.admit(&d, ts, key);
        assert_eq!((d.tid, fwd), (Some(0), true));
        let (d, ts, key) = s.next();
        assert!(!f.admit(&d, ts, key));
    }

    #[test]
    fn key_frame_moves_to_target_and_same_frame_same_decision() {
        let mut f = TemporalFilter::new();
        f.set_target(0);
        let d2 = Descriptor { tid: Some(2), picture_id: Some(PictureId { value: 1, long: true }), ..Descriptor::default() };
        assert!(!f.admit(&d2, 100, false));
        assert!(!f.admit(&d2, 100, false), "every packet of a dropped frame is dropped");
        f.set_target(2);
        let d0 = Descriptor { tid: Some(0), picture_id: Some(PictureId { value: 2, long: true }), ..Descriptor::default() };
        assert!(f.admit(&d0, 200, true));
        assert_eq!(f.current(), Some(2));
        // A late packet of the dropped frame: still dropped.
        assert!(!f.admit(&d2, 100, false));
    }

    #[test]
    fn sync_continues_after_last_sent() {
        let mut f = TemporalFilter::new();
        let d = |pic: u16, tl0: u8| Descriptor {
            tid: Some(0),
            picture_id: Some(PictureId { value: pic, long: true }),
            tl0_pic_idx: Some(tl0),
            ..Descriptor::default()
        };
        assert_eq!(f.map(&d(500, 7)), (Some(500), Some(7)));
        assert_eq!(f.map(&d(501, 8)), (Some(501), Some(8)));
        f.sync();
        // Another stream with unrelated numbering.
        assert!(f.admit(&d(20000, 200), 9_000_000, true));
        assert_eq!(f.map(&d(20000, 200)), (Some(502), Some(9)));
        assert_eq!(f.map(&d(20001, 201)), (Some(503), Some(10)));
        // A retransmission of the new stream maps the same; one from before the switch not.
        assert_eq!(f.map_again(&d(20000, 200)), Some((Some(502), Some(9))));
        assert_eq!(f.map_again(&d(501, 8)), None);
        // 7-bit PictureIDs wrap at 128.
        let mut g = TemporalFilter::new();
        let short = |pic: u16| Descriptor { picture_id: Some(PictureId { value: pic, long: false }), ..Descriptor::default() };
        assert_eq!(g.map(&short(127)), (Some(127), None));
        assert_eq!(g.map(&short(0)), (Some(0), None));
    }

    #[test]
    fn no_temporal_layers_forwards_everything() {
        let mut f = TemporalFilter::new();
        f.set_target(0);
        let d = Descriptor { picture_id: Some(PictureId { value: 3, long: true }), ..Descriptor::default() };
        assert!(f.admit(&d, 1, false));
        assert_eq!(f.current(), None);
    }
}
