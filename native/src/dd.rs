//! The RTP Dependency Descriptor header extension (AV1 RTP specification, appendix A):
//! `https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension`.
//!
//! A descriptor names its frame's template (`frame_dependency_template_id`) in the template
//! dependency structure the sender attached to an earlier packet (normally the key frame's
//! first); [`DdStream`] keeps that structure per stream and resolves each packet's frame
//! layers, decode target indications (DTIs), frame and chain differences against it. The
//! parse allocates only when a packet carries a new structure; the per-packet result is a
//! fixed-size [`Descriptor`].

use std::fmt;

/// Template ids are 6 bits: at most this many templates in a structure.
pub const MAX_TEMPLATES: usize = 64;
/// `dt_cnt_minus_one` is 5 bits: at most 32 decode targets.
pub const MAX_DECODE_TARGETS: usize = 32;
/// Frame differences kept per frame or template (more: the descriptor is refused; encoders
/// use at most a handful, webrtc's limit is 8 references per frame).
pub const MAX_FDIFFS: usize = 16;
/// Mandatory fields: 3 bytes.
pub const MANDATORY_LEN: usize = 3;

/// Decode target indication: what a frame is to one decode target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dti {
    /// Not part of the decode target (a forwarder for that target drops it).
    NotPresent = 0,
    /// Part of it, but no later frame of the target depends on it.
    Discardable = 1,
    /// A switch point: decoding the target can start here (given the chains are intact).
    Switch = 2,
    /// Part of the target and needed by later frames.
    Required = 3,
}

impl Dti {
    fn from_bits(v: u32) -> Dti {
        match v & 3 {
            0 => Dti::NotPresent,
            1 => Dti::Discardable,
            2 => Dti::Switch,
            _ => Dti::Required,
        }
    }
}

/// Up to [`MAX_DECODE_TARGETS`] DTIs, two bits each (decode target i in bits 2i..2i+1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dtis(pub u64);

impl Dtis {
    pub fn get(self, dt: usize) -> Dti {
        if dt >= MAX_DECODE_TARGETS {
            return Dti::NotPresent;
        }
        Dti::from_bits((self.0 >> (2 * dt)) as u32)
    }

    fn set(&mut self, dt: usize, v: u32) {
        self.0 |= u64::from(v & 3) << (2 * dt);
    }
}

/// A short list of small numbers (frame or chain differences), kept inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SmallList<const N: usize> {
    len: u8,
    items: [u16; N],
}

impl<const N: usize> Default for SmallList<N> {
    fn default() -> Self {
        SmallList { len: 0, items: [0; N] }
    }
}

impl<const N: usize> SmallList<N> {
    pub fn as_slice(&self) -> &[u16] {
        &self.items[..self.len as usize]
    }

    fn push(&mut self, v: u16) -> Result<(), DdError> {
        let slot = self.items.get_mut(self.len as usize).ok_or(DdError::TooMany)?;
        *slot = v;
        self.len += 1;
        Ok(())
    }
}

impl<const N: usize> fmt::Debug for SmallList<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

pub type Fdiffs = SmallList<MAX_FDIFFS>;
pub type ChainDiffs = SmallList<MAX_DECODE_TARGETS>;

/// One frame dependency template of a structure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub spatial: u8,
    pub temporal: u8,
    pub dtis: Dtis,
    pub fdiffs: Fdiffs,
    pub chain_diffs: ChainDiffs,
}

/// The template dependency structure (`template_dependency_structure()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Structure {
    pub template_id_offset: u8,
    pub decode_targets: u8,
    pub templates: Vec<Template>,
    pub chains: u8,
    /// The chain protecting each decode target (empty without chains).
    pub protected_by: Vec<u8>,
    /// The (spatial, temporal) layers of each decode target: the highest of the templates
    /// the target is present in.
    pub target_layers: Vec<(u8, u8)>,
    /// Render resolution (width, height) per spatial id, when the sender gave them.
    pub resolutions: Option<Vec<(u16, u16)>>,
}

impl Structure {
    pub fn max_spatial(&self) -> u8 {
        self.templates.iter().map(|t| t.spatial).max().unwrap_or(0)
    }
}

/// One packet's descriptor, resolved against the stream's structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub start_of_frame: bool,
    pub end_of_frame: bool,
    pub template_id: u8,
    pub frame_number: u16,
    pub spatial: u8,
    pub temporal: u8,
    pub dtis: Dtis,
    pub fdiffs: Fdiffs,
    pub chain_diffs: ChainDiffs,
    /// Bit i: decode target i is active (the sender produces it).
    pub active_targets: u32,
    /// This packet carried a (new) template dependency structure.
    pub new_structure: bool,
    /// The render resolution of the frame's spatial layer, when the structure has them.
    pub resolution: Option<(u16, u16)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DdError {
    /// The extension ends before its fields do.
    Truncated,
    /// No structure seen yet to resolve the template id against.
    NoStructure,
    /// The template id names no template of the structure.
    UnknownTemplate,
    /// More templates or frame differences than the limits allow.
    TooMany,
}

impl fmt::Display for DdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dependency descriptor: {self:?}")
    }
}

impl std::error::Error for DdError {}

/// MSB-first bit reader (the spec's `f(n)` and `ns(n)`).
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn f(&mut self, n: u32) -> Result<u32, DdError> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8).ok_or(DdError::Truncated)?;
            v = (v << 1) | u32::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        Ok(v)
    }

    fn flag(&mut self) -> Result<bool, DdError> {
        Ok(self.f(1)? == 1)
    }

    /// Non-symmetric unsigned value in 0..n (n ≥ 1).
    fn ns(&mut self, n: u32) -> Result<u32, DdError> {
        let w = 32 - n.leading_zeros();
        let m = (1u32 << w) - n;
        let v = self.f(w - 1)?;
        if v < m {
            return Ok(v);
        }
        let extra = self.f(1)?;
        Ok((v << 1) - m + extra)
    }
}

/// The descriptor state of one RTP stream: its last structure and active decode targets.
#[derive(Default)]
pub struct DdStream {
    structure: Option<Box<Structure>>,
    active: u32,
    /// Descriptors parsed.
    pub parsed: u64,
    /// Descriptors refused (malformed, or naming a template no structure has).
    pub errors: u64,
}

/// Flags of the extended fields (all false without them).
#[derive(Default)]
struct Custom {
    dtis: bool,
    fdiffs: bool,
    chains: bool,
}

impl DdStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// The structure in use, if one was seen.
    pub fn structure(&self) -> Option<&Structure> {
        self.structure.as_deref()
    }

    /// Parse one packet's extension value. A structure it carries replaces the stream's
    /// (only when the whole descriptor parsed); a refused descriptor changes nothing.
    pub fn parse(&mut self, ext: &[u8]) -> Result<Descriptor, DdError> {
        let r = self.parse_inner(ext);
        match r {
            Ok(_) => self.parsed += 1,
            Err(_) => self.errors += 1,
        }
        r
    }

    fn parse_inner(&mut self, ext: &[u8]) -> Result<Descriptor, DdError> {
        if ext.len() < MANDATORY_LEN {
            return Err(DdError::Truncated);
        }
        let mut b = Bits { data: ext, pos: 0 };
        let start_of_frame = b.flag()?;
        let end_of_frame = b.flag()?;
        let template_id = b.f(6)? as u8;
        let frame_number = b.f(16)? as u16;
        let mut custom = Custom::default();
        let mut new_structure: Option<Box<Structure>> = None;
        let mut active = self.active;
        if ext.len() > MANDATORY_LEN {
            let structure_present = b.flag()?;
            let active_present = b.flag()?;
            custom = Custom { dtis: b.flag()?, fdiffs: b.flag()?, chains: b.flag()? };
            if structure_present {
                let s = read_structure(&mut b)?;
                active = all_targets(s.decode_targets);
                new_structure = Some(Box::new(s));
            }
            if active_present {
                let s = new_structure.as_deref().or(self.structure.as_deref()).ok_or(DdError::NoStructure)?;
                active = b.f(u32::from(s.decode_targets))?;
            }
        }
        let s = new_structure.as_deref().or(self.structure.as_deref()).ok_or(DdError::NoStructure)?;
        let index = (usize::from(template_id) + MAX_TEMPLATES - usize::from(s.template_id_offset)) % MAX_TEMPLATES;
        let t = s.templates.get(index).ok_or(DdError::UnknownTemplate)?;
        let mut d = Descriptor {
            start_of_frame,
            end_of_frame,
            template_id,
            frame_number,
            spatial: t.spatial,
            temporal: t.temporal,
            dtis: t.dtis,
            fdiffs: t.fdiffs,
            chain_diffs: t.chain_diffs,
            active_targets: active,
            new_structure: new_structure.is_some(),
            resolution: s.resolutions.as_ref().and_then(|r| r.get(usize::from(t.spatial)).copied()),
        };
        read_frame_custom(&mut b, s, &custom, &mut d)?;
        if let Some(s) = new_structure {
            self.structure = Some(s);
        }
        self.active = active;
        Ok(d)
    }
}

fn all_targets(n: u8) -> u32 {
    if usize::from(n) >= MAX_DECODE_TARGETS {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}

/// `frame_dtis()`, `frame_fdiffs()`, `frame_chains()` where the flags say so.
fn read_frame_custom(b: &mut Bits<'_>, s: &Structure, custom: &Custom, d: &mut Descriptor) -> Result<(), DdError> {
    if custom.dtis {
        d.dtis = Dtis::default();
        for dt in 0..usize::from(s.decode_targets) {
            d.dtis.set(dt, b.f(2)?);
        }
    }
    if custom.fdiffs {
        d.fdiffs = Fdiffs::default();
        loop {
            let size = b.f(2)?;
            if size == 0 {
                break;
            }
            d.fdiffs.push((b.f(4 * size)? + 1) as u16)?;
        }
    }
    if custom.chains {
        d.chain_diffs = ChainDiffs::default();
        for _ in 0..s.chains {
            d.chain_diffs.push(b.f(8)? as u16)?;
        }
    }
    Ok(())
}

/// `template_dependency_structure()`.
fn read_structure(b: &mut Bits<'_>) -> Result<Structure, DdError> {
    let template_id_offset = b.f(6)? as u8;
    let decode_targets = b.f(5)? as u8 + 1;
    let dt_count = usize::from(decode_targets);
    let mut templates = read_template_layers(b)?;
    for t in templates.iter_mut() {
        for dt in 0..dt_count {
            t.dtis.set(dt, b.f(2)?);
        }
    }
    for t in templates.iter_mut() {
        while b.flag()? {
            t.fdiffs.push(b.f(4)? as u16 + 1)?;
        }
    }
    let chains = b.ns(u32::from(decode_targets) + 1)? as u8;
    let mut protected_by = Vec::new();
    if chains > 0 {
        for _ in 0..dt_count {
            protected_by.push(b.ns(u32::from(chains))? as u8);
        }
        for t in templates.iter_mut() {
            for _ in 0..chains {
                t.chain_diffs.push(b.f(4)? as u16)?;
            }
        }
    }
    let target_layers = (0..dt_count)
        .map(|dt| {
            let present = templates.iter().filter(|t| t.dtis.get(dt) != Dti::NotPresent);
            present.fold((0u8, 0u8), |(s, tl), t| (s.max(t.spatial), tl.max(t.temporal)))
        })
        .collect();
    let mut s = Structure { template_id_offset, decode_targets, templates, chains, protected_by, target_layers, resolutions: None };
    if b.flag()? {
        let mut r = Vec::new();
        for _ in 0..=s.max_spatial() {
            let w = b.f(16)? as u16;
            let h = b.f(16)? as u16;
            r.push((w.wrapping_add(1), h.wrapping_add(1)));
        }
        s.resolutions = Some(r);
    }
    Ok(s)
}

/// `template_layers()`: templates in layer order, each with its spatial and temporal id.
fn read_template_layers(b: &mut Bits<'_>) -> Result<Vec<Template>, DdError> {
    let (mut spatial, mut temporal) = (0u8, 0u8);
    let mut templates = Vec::new();
    loop {
        if templates.len() >= MAX_TEMPLATES {
            return Err(DdError::TooMany);
        }
        templates.push(Template { spatial, temporal, dtis: Dtis::default(), fdiffs: Fdiffs::default(), chain_diffs: ChainDiffs::default() });
        match b.f(2)? {
            0 => {}
            1 => temporal += 1,
            2 => {
                temporal = 0;
                spatial += 1;
            }
            _ => return Ok(templates),
        }
    }
}

#[cfg(test)]
#[path = "dd_tests.rs"]
pub(crate) mod tests;
