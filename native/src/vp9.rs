//! VP9 RTP payload descriptor (RFC 9628 §4.2): parsing, writing and in-place rewriting of
//! PictureID and TL0PICIDX. Not yet used for forwarding (VP9 temporal/spatial layer selection
//! is still to come); the parser is complete and fuzzed so that the selection can rely on it.
//!
//! ```text
//!       0 1 2 3 4 5 6 7
//!      +-+-+-+-+-+-+-+-+
//!      |I|P|L|F|B|E|V|Z| (REQUIRED)
//!      +-+-+-+-+-+-+-+-+
//! I:   |M| PICTURE ID  | (7 bits, or 15 with the next octet when M = 1)
//!      +-+-+-+-+-+-+-+-+
//! L:   |  TID  |U| SID |D| (layer indices)
//!      +-+-+-+-+-+-+-+-+
//!      |   TL0PICIDX   | (L and not flexible mode)
//!      +-+-+-+-+-+-+-+-+
//! F,P: |    P_DIFF   |N| (flexible mode, inter-picture predicted: up to 3, N = one more)
//!      +-+-+-+-+-+-+-+-+
//! V:   | SS            | (scalability structure, below)
//!      +-+-+-+-+-+-+-+-+
//!
//! SS:  | N_S |Y|G|-|-|-|   then, with Y, N_S + 1 times WIDTH (16) HEIGHT (16);
//!      with G, N_G and N_G times |TID|U| R |-|-| followed by R P_DIFF octets.
//! ```

use crate::vp8::PictureId;

/// Why a payload is not a VP9 payload descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vp9Error {
    /// The payload ends inside the descriptor (or right after it: no VP9 data).
    Truncated,
    /// More than three P_DIFF octets in flexible mode.
    TooManyReferences,
}

impl std::fmt::Display for Vp9Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Vp9Error::Truncated => f.write_str("VP9 payload descriptor truncated"),
            Vp9Error::TooManyReferences => f.write_str("VP9 payload descriptor: more than 3 P_DIFF"),
        }
    }
}

impl std::error::Error for Vp9Error {}

/// Layer indices (L = 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerIndices {
    pub tid: u8,
    /// U: switching up point.
    pub switching_up: bool,
    pub sid: u8,
    /// D: inter-layer dependency.
    pub inter_layer_dependency: bool,
}

/// The fields of a VP9 payload descriptor; the scalability structure is kept as its byte
/// range (see [`parse_ss`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Descriptor {
    pub picture_id: Option<PictureId>,
    /// P: inter-picture predicted.
    pub inter_picture_predicted: bool,
    pub layer: Option<LayerIndices>,
    /// F: flexible mode.
    pub flexible: bool,
    /// B: start of a (layer) frame.
    pub begin: bool,
    /// E: end of a (layer) frame.
    pub end: bool,
    /// Z: not used for inter-layer prediction of an upper spatial layer.
    pub not_upscale_reference: bool,
    /// TL0PICIDX (non-flexible mode with layer indices).
    pub tl0_pic_idx: Option<u8>,
    /// P_DIFFs (flexible mode, P = 1): up to three.
    pub p_diff: [u8; 3],
    pub p_diff_count: u8,
    /// Scalability structure (V = 1): start and end offsets in the payload.
    pub ss: Option<(usize, usize)>,
    /// Descriptor length in bytes (the VP9 payload starts after it).
    pub len: usize,
}

impl Descriptor {
    /// A key picture's first packet: not inter-picture predicted, start of a frame, base
    /// spatial layer.
    pub fn is_key_frame(&self) -> bool {
        !self.inter_picture_predicted && self.begin && self.layer.is_none_or(|l| l.sid == 0)
    }

    fn tl0_offset(&self) -> usize {
        1 + self.picture_id.map_or(0, |p| if p.long { 2 } else { 1 }) + 1
    }
}

/// Scalability structure (SS) contents.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScalabilityStructure {
    /// N_S + 1 spatial layers.
    pub spatial_layers: u8,
    /// (width, height) per spatial layer when Y = 1.
    pub resolutions: Option<Vec<(u16, u16)>>,
    /// Picture group when G = 1: (TID, U, P_DIFFs) per picture.
    pub group: Option<Vec<(u8, bool, Vec<u8>)>>,
}

fn get(p: &[u8], i: usize) -> Result<u8, Vp9Error> {
    p.get(i).copied().ok_or(Vp9Error::Truncated)
}

/// The length of the scalability structure starting at `p[0]`, checked against `p`.
fn ss_len(p: &[u8]) -> Result<usize, Vp9Error> {
    let b = get(p, 0)?;
    let n_s = (b >> 5) as usize + 1;
    let mut off = 1;
    if b & 0x10 != 0 {
        off += 4 * n_s;
    }
    if b & 0x08 != 0 {
        let n_g = get(p, off)? as usize;
        off += 1;
        for _ in 0..n_g {
            let g = get(p, off)?;
            off += 1 + ((g >> 2) & 3) as usize;
        }
    }
    if off > p.len() {
        return Err(Vp9Error::Truncated);
    }
    Ok(off)
}

/// Parse the descriptor at the start of an RTP payload. At least one byte of VP9 data must
/// follow it.
pub fn parse(p: &[u8]) -> Result<Descriptor, Vp9Error> {
    let b0 = get(p, 0)?;
    let mut d = Descriptor {
        inter_picture_predicted: b0 & 0x40 != 0,
        flexible: b0 & 0x10 != 0,
        begin: b0 & 0x08 != 0,
        end: b0 & 0x04 != 0,
        not_upscale_reference: b0 & 0x01 != 0,
        ..Descriptor::default()
    };
    let mut off = 1;
    if b0 & 0x80 != 0 {
        let m = get(p, off)?;
        if m & 0x80 != 0 {
            let lo = get(p, off + 1)?;
            d.picture_id = Some(PictureId { value: u16::from_be_bytes([m & 0x7f, lo]), long: true });
            off += 2;
        } else {
            d.picture_id = Some(PictureId { value: m as u16, long: false });
            off += 1;
        }
    }
    if b0 & 0x20 != 0 {
        let l = get(p, off)?;
        d.layer = Some(LayerIndices {
            tid: l >> 5,
            switching_up: l & 0x10 != 0,
            sid: (l >> 1) & 0x07,
            inter_layer_dependency: l & 0x01 != 0,
        });
        off += 1;
        if !d.flexible {
            d.tl0_pic_idx = Some(get(p, off)?);
            off += 1;
        }
    }
    if d.flexible && d.inter_picture_predicted {
        loop {
            let r = get(p, off)?;
            off += 1;
            if d.p_diff_count as usize == d.p_diff.len() {
                return Err(Vp9Error::TooManyReferences);
            }
            d.p_diff[d.p_diff_count as usize] = r >> 1;
            d.p_diff_count += 1;
            if r & 0x01 == 0 {
                break;
            }
        }
    }
    if b0 & 0x02 != 0 {
        let n = ss_len(&p[off.min(p.len())..])?;
        d.ss = Some((off, off + n));
        off += n;
    }
    if p.len() <= off {
        return Err(Vp9Error::Truncated);
    }
    d.len = off;
    Ok(d)
}

/// The scalability structure `d.ss` of payload `p` (as parsed by [`parse`]).
pub fn parse_ss(p: &[u8], d: &Descriptor) -> Option<ScalabilityStructure> {
    let (a, b) = d.ss?;
    let s = p.get(a..b)?;
    let b0 = *s.first()?;
    let n_s = (b0 >> 5) + 1;
    let mut off = 1;
    let mut out = ScalabilityStructure { spatial_layers: n_s, ..Default::default() };
    if b0 & 0x10 != 0 {
        let mut r = Vec::with_capacity(n_s as usize);
        for _ in 0..n_s {
            let v = s.get(off..off + 4)?;
            r.push((u16::from_be_bytes([v[0], v[1]]), u16::from_be_bytes([v[2], v[3]])));
            off += 4;
        }
        out.resolutions = Some(r);
    }
    if b0 & 0x08 != 0 {
        let n_g = *s.get(off)?;
        off += 1;
        let mut g = Vec::with_capacity(n_g as usize);
        for _ in 0..n_g {
            let x = *s.get(off)?;
            let r = ((x >> 2) & 3) as usize;
            g.push((x >> 5, x & 0x10 != 0, s.get(off + 1..off + 1 + r)?.to_vec()));
            off += 1 + r;
        }
        out.group = Some(g);
    }
    Some(out)
}

/// Append descriptor `d` (its `len` and `ss` range are not used) with scalability structure
/// `ss`, if any, to `out`. Reserved bits are written 0.
pub fn write(d: &Descriptor, ss: Option<&ScalabilityStructure>, out: &mut Vec<u8>) {
    out.push(
        (d.picture_id.is_some() as u8) << 7
            | (d.inter_picture_predicted as u8) << 6
            | (d.layer.is_some() as u8) << 5
            | (d.flexible as u8) << 4
            | (d.begin as u8) << 3
            | (d.end as u8) << 2
            | (ss.is_some() as u8) << 1
            | d.not_upscale_reference as u8,
    );
    if let Some(pic) = d.picture_id {
        if pic.long {
            out.extend_from_slice(&((pic.value & 0x7fff) | 0x8000).to_be_bytes());
        } else {
            out.push((pic.value & 0x7f) as u8);
        }
    }
    if let Some(l) = d.layer {
        out.push((l.tid & 7) << 5 | (l.switching_up as u8) << 4 | (l.sid & 7) << 1 | l.inter_layer_dependency as u8);
        if !d.flexible {
            out.push(d.tl0_pic_idx.unwrap_or(0));
        }
    }
    if d.flexible && d.inter_picture_predicted {
        let n = d.p_diff_count.clamp(1, 3) as usize;
        for (i, &p) in d.p_diff[..n].iter().enumerate() {
            out.push(p << 1 | (i + 1 < n) as u8);
        }
    }
    if let Some(ss) = ss {
        let n_s = ss.spatial_layers.clamp(1, 8);
        out.push((n_s - 1) << 5 | (ss.resolutions.is_some() as u8) << 4 | (ss.group.is_some() as u8) << 3);
        if let Some(r) = &ss.resolutions {
            for i in 0..n_s as usize {
                let (w, h) = r.get(i).copied().unwrap_or((0, 0));
                out.extend_from_slice(&w.to_be_bytes());
                out.extend_from_slice(&h.to_be_bytes());
            }
        }
        if let Some(g) = &ss.group {
            out.push(g.len().min(255) as u8);
            for (tid, u, p) in g.iter().take(255) {
                let r = p.len().min(3);
                out.push((tid & 7) << 5 | (*u as u8) << 4 | (r as u8) << 2);
                out.extend_from_slice(&p[..r]);
            }
        }
    }
}

/// Overwrite PictureID (in its own width) and TL0PICIDX of descriptor `d` parsed from
/// `payload`; fields the descriptor does not have are left alone.
pub fn rewrite(payload: &mut [u8], d: &Descriptor, picture_id: Option<u16>, tl0_pic_idx: Option<u8>) {
    if let (Some(pic), Some(v)) = (d.picture_id, picture_id) {
        if pic.long {
            if let Some(b) = payload.get_mut(1..3) {
                b.copy_from_slice(&((v & 0x7fff) | 0x8000).to_be_bytes());
            }
        } else if let Some(b) = payload.get_mut(1) {
            *b = (v & 0x7f) as u8;
        }
    }
    if let (Some(_), Some(v)) = (d.tl0_pic_idx, tl0_pic_idx) {
        if let Some(b) = payload.get_mut(d.tl0_offset()) {
            *b = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cases() -> Vec<(Descriptor, Option<ScalabilityStructure>)> {
        let mut v = Vec::new();
        for flags in 0u32..(1 << 11) {
            let flexible = flags & 8 != 0;
            let predicted = flags & 16 != 0;
            let layer = (flags & 4 != 0).then_some(LayerIndices {
                tid: (flags >> 5 & 7) as u8,
                switching_up: flags & 32 != 0,
                sid: (flags >> 7 & 7) as u8,
                inter_layer_dependency: flags & 64 != 0,
            });
            let n_ref = if flexible && predicted { 1 + (flags >> 9) % 3 } else { 0 };
            let mut p_diff = [0u8; 3];
            for (i, p) in p_diff.iter_mut().enumerate().take(n_ref as usize) {
                *p = 1 + i as u8 * 40 + (flags & 0x1f) as u8;
            }
            let d = Descriptor {
                picture_id: match flags & 3 {
                    0 => None,
                    1 => Some(PictureId { value: 0x33, long: false }),
                    _ => Some(PictureId { value: 0x4321, long: true }),
                },
                inter_picture_predicted: predicted,
                layer,
                flexible,
                begin: flags & 128 != 0,
                end: flags & 256 != 0,
                not_upscale_reference: flags & 512 != 0,
                tl0_pic_idx: (layer.is_some() && !flexible).then_some(0x9c),
                p_diff,
                p_diff_count: n_ref as u8,
                ss: None,
                len: 0,
            };
            let ss = match flags >> 9 {
                0 => None,
                1 => Some(ScalabilityStructure { spatial_layers: 1, resolutions: None, group: None }),
                2 => Some(ScalabilityStructure {
                    spatial_layers: 3,
                    resolutions: Some(vec![(320, 180), (640, 360), (1280, 720)]),
                    group: None,
                }),
                _ => Some(ScalabilityStructure {
                    spatial_layers: 2,
                    resolutions: Some(vec![(640, 360), (1280, 720)]),
                    group: Some(vec![(0, false, vec![4]), (2, true, vec![1]), (1, true, vec![2, 1]), (2, false, vec![])]),
                }),
            };
            v.push((d, ss));
        }
        v
    }

    #[test]
    fn round_trip_all_flag_combinations() {
        for (d, ss) in cases() {
            let mut buf = Vec::new();
            write(&d, ss.as_ref(), &mut buf);
            let n = buf.len();
            buf.extend_from_slice(&[0x82, 0x49, 0x83]);
            let got = parse(&buf).unwrap_or_else(|e| panic!("{e}: {buf:02x?}"));
            assert_eq!(got.len, n);
            assert_eq!(Descriptor { ss: None, len: 0, ..got }, d, "{buf:02x?}");
            assert_eq!(parse_ss(&buf, &got), ss);
            for cut in 0..=n {
                assert!(parse(&buf[..cut]).is_err(), "cut at {cut} of {buf:02x?}");
            }
            // Rewrite: only PictureID and TL0PICIDX change.
            let mut c = buf.clone();
            rewrite(&mut c, &got, Some(0x7001), Some(3));
            let after = parse(&c).unwrap();
            let pic = d.picture_id.map(|p| PictureId { value: if p.long { 0x7001 } else { 0x01 }, long: p.long });
            assert_eq!(after, Descriptor { picture_id: pic, tl0_pic_idx: d.tl0_pic_idx.map(|_| 3), ..got });
            assert_eq!(parse_ss(&c, &after), ss);
        }
    }

    #[test]
    fn known_bytes_and_errors() {
        // I, L, B, V; PictureID 15-bit 0x1234; TID 0 SID 0; TL0PICIDX 7; SS: 1 layer, Y, 640x360.
        let p = [0xaa, 0x92, 0x34, 0x00, 0x07, 0x10, 0x02, 0x80, 0x01, 0x68, 0x00];
        let d = parse(&p).unwrap();
        assert!(d.is_key_frame());
        assert_eq!(d.picture_id, Some(PictureId { value: 0x1234, long: true }));
        assert_eq!(d.tl0_pic_idx, Some(7));
        assert_eq!(d.len, 10);
        assert_eq!(parse_ss(&p, &d).unwrap().resolutions, Some(vec![(640, 360)]));
        // Flexible, predicted: four P_DIFFs is one too many.
        assert_eq!(parse(&[0x50, 0x03, 0x05, 0x07, 0x09, 0x00]), Err(Vp9Error::TooManyReferences));
        assert_eq!(parse(&[]), Err(Vp9Error::Truncated));
        // SS with a picture group running past the end.
        assert_eq!(parse(&[0x02, 0x08, 0x02, 0x0c]), Err(Vp9Error::Truncated));
    }
}
