//! SRTP / SRTCP (RFC 3711, RFC 7714) for one direction of one transport.
//!
//! Keys come from the DTLS-SRTP exporter (RFC 5764): the control plane splits the exported
//! block into `client_key | server_key | client_salt | server_salt` and hands one
//! `(master_key, master_salt)` pair to each [`SrtpContext`] (the local half for protect, the
//! remote half for unprotect).
//!
//! Profiles: `AES_CM_128_HMAC_SHA1_80`, `AEAD_AES_128_GCM`, `AEAD_AES_256_GCM`.
//! Session keys are derived once in [`SrtpContext::new`] (AES-CM PRF, key derivation rate 0;
//! a 12-byte GCM master salt is used as the high 96 bits of the 112-bit PRF salt, as libsrtp
//! does). AES key schedules are expanded once; the HMAC-SHA1 key is absorbed once (inner and
//! outer pads already hashed, `hmac_sha1.rs`). [`SrtpContext::protect_rtp_deferred`] leaves
//! an AES-CM packet's tag to [`finish_tags`], which computes several at once.
//!
//! Per SSRC the context keeps: the highest RTP index seen/sent (ROC and highest sequence
//! number, RFC 3711 §3.3.1), a 128-packet RTP replay window, and for SRTCP either the next
//! index to send or a 128-packet SRTCP replay window.
//!
//! Allocation: protect and unprotect never allocate when the `Vec` has room for the trailer
//! (`Profile::rtp_overhead()` / `Profile::rtcp_overhead()` spare bytes); unprotect only
//! truncates. The first packet of a *new* SSRC inserts into a small sorted table (amortised
//! allocation); at most [`MAX_STREAMS`] SSRCs per context are tracked, packets of further
//! new SSRCs are refused with `Malformed`. Call [`SrtpContext::remove_ssrc`] when a stream
//! goes away.
//!
//! Behaviour on the protect side: an RTP packet whose sequence number was already protected
//! (a plain NACK retransmission) is protected again with the same index (libsrtp's
//! `allow_repeat_tx`). The SRTCP index of each sender SSRC starts at 1 and counts up, as in
//! libsrtp.

use crate::bytes::{be16, be32};
use aes::cipher::consts::U16;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{
    BlockCipher, BlockEncrypt, BlockSizeUser, InnerIvInit, KeyInit, StreamCipher,
    StreamCipherCoreWrapper,
};
use aes::{Aes128Enc, Aes256Enc};
use ctr::flavors::Ctr128BE;
use ctr::CtrCore;
use crate::aes_ctr::Aes128Ctr;
use crate::hmac_sha1::{self, HmacSha1Key, Job};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};

/// Most SSRCs one context tracks (each direction of a transport).
pub const MAX_STREAMS: usize = 4096;

const REPLAY_WINDOW: u64 = 128;
const SRTCP_E_FLAG: u32 = 0x8000_0000;
const SRTCP_INDEX_MASK: u32 = 0x7fff_ffff;

const LABEL_RTP_KEY: u8 = 0;
const LABEL_RTP_AUTH: u8 = 1;
const LABEL_RTP_SALT: u8 = 2;
const LABEL_RTCP_KEY: u8 = 3;
const LABEL_RTCP_AUTH: u8 = 4;
const LABEL_RTCP_SALT: u8 = 5;

const HMAC_TAG_LEN: usize = 10;
const GCM_TAG_LEN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    AesCm128HmacSha1_80,
    AeadAes128Gcm,
    AeadAes256Gcm,
    /// No protection (plain RTP/RTCP: a plain or pipe transport without SRTP). Never named
    /// by `from_name`, so DTLS can never select it; only `SrtpContext::null` builds it.
    Null,
}

impl Profile {
    /// Profile from its SDP / RFC name ("SRTP_" prefixed DTLS names are accepted too).
    pub fn from_name(s: &str) -> Option<Profile> {
        let s = s.strip_prefix("SRTP_").unwrap_or(s);
        match s {
            "AES_CM_128_HMAC_SHA1_80" | "AES128_CM_SHA1_80" | "AES128_CM_HMAC_SHA1_80" => {
                Some(Profile::AesCm128HmacSha1_80)
            }
            "AEAD_AES_128_GCM" => Some(Profile::AeadAes128Gcm),
            "AEAD_AES_256_GCM" => Some(Profile::AeadAes256Gcm),
            _ => None,
        }
    }

    /// The RFC name, inverse of [`Profile::from_name`].
    pub fn name(self) -> &'static str {
        match self {
            Profile::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Profile::AeadAes128Gcm => "AEAD_AES_128_GCM",
            Profile::AeadAes256Gcm => "AEAD_AES_256_GCM",
            Profile::Null => "NULL",
        }
    }

    /// Master key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Profile::AesCm128HmacSha1_80 | Profile::AeadAes128Gcm => 16,
            Profile::AeadAes256Gcm => 32,
            Profile::Null => 0,
        }
    }

    /// Master salt length in bytes.
    pub fn salt_len(self) -> usize {
        match self {
            Profile::AesCm128HmacSha1_80 => 14,
            Profile::AeadAes128Gcm | Profile::AeadAes256Gcm => 12,
            Profile::Null => 0,
        }
    }

    fn tag_len(self) -> usize {
        match self {
            Profile::AesCm128HmacSha1_80 => HMAC_TAG_LEN,
            Profile::AeadAes128Gcm | Profile::AeadAes256Gcm => GCM_TAG_LEN,
            Profile::Null => 0,
        }
    }

    /// Bytes protect_rtp appends to an RTP packet.
    pub fn rtp_overhead(self) -> usize {
        self.tag_len()
    }

    /// Bytes protect_rtcp appends to an RTCP compound packet (tag + E/index word).
    pub fn rtcp_overhead(self) -> usize {
        match self {
            Profile::Null => 0,
            _ => self.tag_len() + 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpError {
    /// Shorter than header + trailer.
    TooShort,
    /// Authentication tag mismatch.
    AuthFailed,
    /// Index already received (inside the replay window).
    Replay,
    /// Index older than the replay window (or before the first packet of the stream).
    TooOld,
    /// Master key or salt of the wrong length.
    BadKey,
    /// Not an RTP/RTCP packet, inconsistent header lengths, or too many SSRCs.
    Malformed,
}

impl std::fmt::Display for SrtpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for SrtpError {}

/// AES_CM + HMAC-SHA1 session keys of one of RTP / RTCP.
#[derive(Clone)]
struct CmKeys {
    aes: Aes128Ctr,
    salt: [u8; 14],
    mac: HmacSha1Key,
}

/// AES-GCM session key (ring: AES-NI/VAES + CLMUL assembly) and salt of one of RTP / RTCP.
struct GcmKeys {
    aead: LessSafeKey,
    key: [u8; 32],
    key_len: usize,
    salt: [u8; 12],
}

impl CmKeys {
    /// Verify and (E flag in `word`) decrypt SRTCP packet `pkt` of `ssrc` in place (RFC 3711
    /// §3.4): `body` bytes of header and payload, the tag over everything before `tag_at`;
    /// the trailer is left for the caller to cut.
    fn open_rtcp(&self, pkt: &mut [u8], ssrc: u32, word: u32, body: usize, tag_at: usize) -> Result<(), SrtpError> {
        let tag = self.mac.tag(pkt.get(..tag_at).ok_or(SrtpError::TooShort)?, &[]);
        if !hmac_sha1::tag_matches(&tag, pkt.get(tag_at..).ok_or(SrtpError::TooShort)?) {
            return Err(SrtpError::AuthFailed);
        }
        if word & SRTCP_E_FLAG != 0 {
            let iv = cm_iv(&self.salt, ssrc, (word & SRTCP_INDEX_MASK) as u64);
            self.aes.apply(&iv, pkt.get_mut(8..body).ok_or(SrtpError::TooShort)?);
        }
        Ok(())
    }
}

impl Clone for GcmKeys {
    fn clone(&self) -> Self {
        // LessSafeKey is not Clone; re-expanding is fine off the packet path.
        gcm_keys(self.key.get(..self.key_len).unwrap_or(&[]), self.salt)
            .expect("key was valid when first expanded")
    }
}

impl GcmKeys {
    /// Verify and (E flag in `word`) decrypt SRTCP packet `pkt` of `ssrc` in place (RFC 7714
    /// §9): `body` bytes of header and payload, its tag at `tag_at`; the trailer is left for
    /// the caller to cut.
    fn open_rtcp(&self, pkt: &mut [u8], ssrc: u32, word: u32, body: usize, tag_at: usize) -> Result<(), SrtpError> {
        let iv = gcm_rtcp_iv(&self.salt, ssrc, word & SRTCP_INDEX_MASK);
        let mut tag = [0u8; GCM_TAG_LEN];
        tag.copy_from_slice(pkt.get(tag_at..tag_at + GCM_TAG_LEN).ok_or(SrtpError::TooShort)?);
        if word & SRTCP_E_FLAG != 0 {
            let mut aad = [0u8; 12];
            aad[..8].copy_from_slice(pkt.get(..8).ok_or(SrtpError::TooShort)?);
            aad[8..].copy_from_slice(&word.to_be_bytes());
            // ciphertext | tag are contiguous.
            self.open(&iv, &aad, pkt.get_mut(8..body + GCM_TAG_LEN).ok_or(SrtpError::TooShort)?)
        } else {
            // §9.2: AAD = whole packet || E+index word, no ciphertext. Move the word next to
            // the packet (where the tag was) so the AAD is contiguous; the trailer is cut off
            // by the caller anyway.
            pkt.get_mut(body..body + 4).ok_or(SrtpError::TooShort)?.copy_from_slice(&word.to_be_bytes());
            let aad = pkt.get(..body + 4).ok_or(SrtpError::TooShort)?;
            self.open(&iv, aad, &mut tag)
        }
    }

    fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> Result<[u8; 16], SrtpError> {
        let tag = self
            .aead
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .map_err(|_| SrtpError::Malformed)?;
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// `buf` is ciphertext followed by the 16-byte tag.
    fn open(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> Result<(), SrtpError> {
        if buf.len() < GCM_TAG_LEN {
            return Err(SrtpError::TooShort);
        }
        self.aead
            .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .map(|_| ())
            .map_err(|_| SrtpError::AuthFailed)
    }
}

#[derive(Clone)]
enum Keys {
    Cm(Box<CmKeys>),
    Gcm(Box<GcmKeys>),
    /// `Profile::Null`: packets pass unchanged (sequence/replay state is still kept).
    Null,
}

/// Replay window over 64-bit indices: `max` is the highest accepted index, bit `i` of
/// `bits` says whether `max - i` was accepted.
#[derive(Clone, Copy, Debug, Default)]
struct Replay {
    max: u64,
    bits: u128,
}

impl Replay {
    fn new(first: u64) -> Self {
        Replay {
            max: first,
            bits: 1,
        }
    }

    fn check(&self, idx: u64) -> Result<(), SrtpError> {
        if idx > self.max {
            return Ok(());
        }
        let delta = self.max - idx;
        if delta >= REPLAY_WINDOW {
            return Err(SrtpError::TooOld);
        }
        if self.bits & (1u128 << delta) != 0 {
            return Err(SrtpError::Replay);
        }
        Ok(())
    }

    fn update(&mut self, idx: u64) {
        if idx > self.max {
            let shift = idx - self.max;
            self.bits = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.bits << shift
            };
            self.bits |= 1;
            self.max = idx;
        } else {
            let delta = self.max - idx;
            if delta < REPLAY_WINDOW {
                self.bits |= 1u128 << delta;
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct StreamState {
    /// RTP: highest index (ROC << 16 | seq) and replay window (receive side only).
    rtp: Option<Replay>,
    /// SRTCP receive side: replay window over SRTCP indices.
    rtcp_rx: Option<Replay>,
    /// SRTCP send side: last index sent (0 = none yet).
    rtcp_tx: u32,
}

/// Small SSRC → state table, sorted by SSRC (binary search, no hashing per packet).
#[derive(Clone, Default)]
struct Streams {
    entries: Vec<(u32, StreamState)>,
}

impl Streams {
    fn get(&self, ssrc: u32) -> Option<&StreamState> {
        self.entries
            .binary_search_by_key(&ssrc, |e| e.0)
            .ok()
            .and_then(|i| self.entries.get(i))
            .map(|e| &e.1)
    }

    fn get_or_insert(&mut self, ssrc: u32) -> Result<&mut StreamState, SrtpError> {
        let i = match self.entries.binary_search_by_key(&ssrc, |e| e.0) {
            Ok(i) => i,
            Err(i) => {
                if self.entries.len() >= MAX_STREAMS {
                    return Err(SrtpError::Malformed);
                }
                self.entries.insert(i, (ssrc, StreamState::default()));
                i
            }
        };
        self.entries
            .get_mut(i)
            .map(|e| &mut e.1)
            .ok_or(SrtpError::Malformed)
    }

    fn remove(&mut self, ssrc: u32) {
        if let Ok(i) = self.entries.binary_search_by_key(&ssrc, |e| e.0) {
            self.entries.remove(i);
        }
    }
}

/// One direction of SRTP/SRTCP for one transport.
#[derive(Clone)]
pub struct SrtpContext {
    profile: Profile,
    rtp: Keys,
    rtcp: Keys,
    streams: Streams,
}

impl std::fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpContext")
            .field("profile", &self.profile)
            .field("streams", &self.streams.entries.len())
            .finish()
    }
}

/// XOR `data` with the AES counter-mode keystream starting at `iv` (RFC 3711 §4.1.1).
/// The IV's low 16 bits are zero, so a 128-bit big-endian counter equals the RFC's 16-bit
/// block counter for anything shorter than 1 MiB.
fn aes_ctr_xor<C>(cipher: &C, iv: &[u8; 16], data: &mut [u8])
where
    C: BlockEncrypt + BlockCipher + BlockSizeUser<BlockSize = U16> + Clone,
{
    let core = CtrCore::<C, Ctr128BE>::inner_iv_init(cipher.clone(), GenericArray::from_slice(iv));
    let mut ctr = StreamCipherCoreWrapper::from_core(core);
    ctr.apply_keystream(data);
}

/// AES-CM PRF of RFC 3711 §4.3.3 (key derivation rate 0), RFC 6188 for 256-bit keys.
/// Salts shorter than 14 bytes (GCM's 12) fill the high-order bytes.
fn kdf(master_key: &[u8], master_salt: &[u8], label: u8, out: &mut [u8]) -> Result<(), SrtpError> {
    let mut iv = [0u8; 16];
    iv.get_mut(..master_salt.len())
        .ok_or(SrtpError::BadKey)?
        .copy_from_slice(master_salt);
    iv[7] ^= label;
    out.fill(0);
    match master_key.len() {
        16 => {
            let c = Aes128Enc::new_from_slice(master_key).map_err(|_| SrtpError::BadKey)?;
            aes_ctr_xor(&c, &iv, out);
        }
        32 => {
            let c = Aes256Enc::new_from_slice(master_key).map_err(|_| SrtpError::BadKey)?;
            aes_ctr_xor(&c, &iv, out);
        }
        _ => return Err(SrtpError::BadKey),
    }
    Ok(())
}

fn derive_keys(
    profile: Profile,
    mk: &[u8],
    ms: &[u8],
    l_key: u8,
    l_auth: u8,
    l_salt: u8,
) -> Result<Keys, SrtpError> {
    match profile {
        Profile::AesCm128HmacSha1_80 => {
            let mut k = [0u8; 16];
            let mut a = [0u8; 20];
            let mut s = [0u8; 14];
            kdf(mk, ms, l_key, &mut k)?;
            kdf(mk, ms, l_auth, &mut a)?;
            kdf(mk, ms, l_salt, &mut s)?;
            Ok(Keys::Cm(Box::new(CmKeys {
                aes: Aes128Ctr::new(&k),
                salt: s,
                mac: HmacSha1Key::new(&a),
            })))
        }
        Profile::Null => Ok(Keys::Null),
        Profile::AeadAes128Gcm | Profile::AeadAes256Gcm => {
            let mut k = [0u8; 32];
            let klen = profile.key_len();
            let kk = k.get_mut(..klen).ok_or(SrtpError::BadKey)?;
            kdf(mk, ms, l_key, kk)?;
            let mut s = [0u8; 12];
            kdf(mk, ms, l_salt, &mut s)?;
            Ok(Keys::Gcm(Box::new(gcm_keys(kk, s)?)))
        }
    }
}

fn gcm_keys(key: &[u8], salt: [u8; 12]) -> Result<GcmKeys, SrtpError> {
    let alg = match key.len() {
        16 => &AES_128_GCM,
        32 => &AES_256_GCM,
        _ => return Err(SrtpError::BadKey),
    };
    let aead = LessSafeKey::new(UnboundKey::new(alg, key).map_err(|_| SrtpError::BadKey)?);
    let mut k = [0u8; 32];
    k.get_mut(..key.len())
        .ok_or(SrtpError::BadKey)?
        .copy_from_slice(key);
    Ok(GcmKeys {
        aead,
        key: k,
        key_len: key.len(),
        salt,
    })
}

/// Length of the RTP header (fixed part, CSRCs, extension block): the part that SRTP leaves
/// in clear. Checks version 2 and that the header fits in `len` bytes.
fn rtp_header_len(pkt: &[u8], len: usize) -> Result<usize, SrtpError> {
    let b0 = *pkt.first().ok_or(SrtpError::TooShort)?;
    if b0 >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    let mut h = 12 + 4 * (b0 & 0x0f) as usize;
    if b0 & 0x10 != 0 {
        let words = be16(pkt, h + 2).ok_or(SrtpError::TooShort)? as usize;
        h += 4 + 4 * words;
    }
    if h > len {
        return Err(SrtpError::TooShort);
    }
    Ok(h)
}

/// RFC 3711 §3.3.1 / Appendix A: index of `seq` given the highest index `max` seen so far.
/// `None` when the guess would precede the stream's first ROC (ROC − 1 < 0) or overflow it.
fn estimate_index(max: u64, seq: u16) -> Option<u64> {
    let roc = (max >> 16) as i64;
    let s_l = (max & 0xffff) as i64;
    let s = seq as i64;
    let v = if s_l < 32768 {
        if s - s_l > 32768 {
            roc - 1
        } else {
            roc
        }
    } else if s_l - 32768 > s {
        roc + 1
    } else {
        roc
    };
    if !(0..=u32::MAX as i64).contains(&v) {
        return None;
    }
    Some(((v as u64) << 16) | seq as u64)
}

fn cm_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    for (d, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *d ^= s;
    }
    // 48-bit index into bytes 8..14.
    for (d, s) in iv[8..14].iter_mut().zip(index.to_be_bytes()[2..8].iter()) {
        *d ^= *s;
    }
    iv
}

fn gcm_rtp_iv(salt: &[u8; 12], ssrc: u32, roc: u32, seq: u16) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..10].copy_from_slice(&roc.to_be_bytes());
    iv[10..12].copy_from_slice(&seq.to_be_bytes());
    for (d, s) in iv.iter_mut().zip(salt.iter()) {
        *d ^= *s;
    }
    iv
}

fn gcm_rtcp_iv(salt: &[u8; 12], ssrc: u32, index: u32) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[8..12].copy_from_slice(&(index & SRTCP_INDEX_MASK).to_be_bytes());
    for (d, s) in iv.iter_mut().zip(salt.iter()) {
        *d ^= *s;
    }
    iv
}

/// The tag an AES-CM packet still needs ([`SrtpContext::protect_rtp_deferred`]): the
/// transport's RTP authentication key and the packet's ROC.
#[derive(Clone, Copy, Debug)]
pub struct PendingTag {
    key: HmacSha1Key,
    roc: [u8; 4],
}

/// Append its tag to each packet left by [`SrtpContext::protect_rtp_deferred`], computing
/// [`hmac_sha1::LANES`] at a time.
pub fn finish_tags<'a>(items: impl IntoIterator<Item = (&'a PendingTag, &'a mut Vec<u8>)>) {
    let mut items = items.into_iter();
    loop {
        let mut group: [Option<(&PendingTag, &mut Vec<u8>)>; hmac_sha1::LANES] = Default::default();
        let mut n = 0;
        for slot in group.iter_mut() {
            match items.next() {
                Some(item) => {
                    *slot = Some(item);
                    n += 1;
                }
                None => break,
            }
        }
        if n == 0 {
            return;
        }
        let mut tags = [[0u8; hmac_sha1::TAG_LEN]; hmac_sha1::LANES];
        {
            let jobs: [Job<'_>; hmac_sha1::LANES] = std::array::from_fn(|k| match &group[k] {
                Some((p, buf)) => Job { key: &p.key, head: buf, suffix: &p.roc },
                None => Job { key: &group[0].as_ref().expect("one item at least").0.key, head: &[], suffix: &[] },
            });
            hmac_sha1::tags(&jobs[..n], &mut tags[..n]);
        }
        for ((_, buf), tag) in group.iter_mut().flatten().zip(&tags) {
            buf.extend_from_slice(&tag[..HMAC_TAG_LEN]);
        }
        if n < hmac_sha1::LANES {
            return;
        }
    }
}

impl SrtpContext {
    /// A context from the master key and salt of one direction (RFC 5764 §4.2 split).
    pub fn new(profile: Profile, master_key: &[u8], master_salt: &[u8]) -> Result<Self, SrtpError> {
        if master_key.len() != profile.key_len() || master_salt.len() != profile.salt_len() {
            return Err(SrtpError::BadKey);
        }
        let rtp = derive_keys(
            profile,
            master_key,
            master_salt,
            LABEL_RTP_KEY,
            LABEL_RTP_AUTH,
            LABEL_RTP_SALT,
        )?;
        let rtcp = derive_keys(
            profile,
            master_key,
            master_salt,
            LABEL_RTCP_KEY,
            LABEL_RTCP_AUTH,
            LABEL_RTCP_SALT,
        )?;
        Ok(SrtpContext {
            profile,
            rtp,
            rtcp,
            streams: Streams::default(),
        })
    }

    /// A context that protects nothing: plain RTP/RTCP for transports without SRTP (plain
    /// and pipe transports). RTP sequence state is kept as for SRTP (duplicates refused).
    pub fn null() -> Self {
        SrtpContext { profile: Profile::Null, rtp: Keys::Null, rtcp: Keys::Null, streams: Streams::default() }
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Forget the per-SSRC state (ROC, replay windows, SRTCP index) of `ssrc`.
    pub fn remove_ssrc(&mut self, ssrc: u32) {
        self.streams.remove(ssrc);
    }

    /// Number of SSRCs with state in this context.
    pub fn stream_count(&self) -> usize {
        self.streams.entries.len()
    }

    /// Rollover counter of `ssrc` (highest index >> 16), if the SSRC has RTP state.
    pub fn roc(&self, ssrc: u32) -> Option<u32> {
        self.streams
            .get(ssrc)
            .and_then(|s| s.rtp)
            .map(|r| (r.max >> 16) as u32)
    }

    /// Encrypt the payload in place and append the tag. Does not allocate when
    /// `pkt.capacity() >= pkt.len() + profile.rtp_overhead()`.
    pub fn protect_rtp(&mut self, pkt: &mut Vec<u8>) -> Result<(), SrtpError> {
        if let Some(pending) = self.protect_rtp_deferred(pkt)? {
            finish_tags([(&pending, pkt)]);
        }
        Ok(())
    }

    /// Ask for the cache lines `protect_rtp_deferred` reads (this context, its RTP keys and
    /// its streams' state) ahead of it (`prefetch.rs`).
    pub fn prefetch(&self) {
        crate::prefetch::prefetch(self);
        match &self.rtp {
            Keys::Cm(k) => crate::prefetch::prefetch(&**k),
            Keys::Gcm(k) => crate::prefetch::prefetch(&**k),
            Keys::Null => {}
        }
        crate::prefetch::prefetch_slice(&self.streams.entries, 256);
    }

    /// [`SrtpContext::protect_rtp`] but for an AES-CM packet's tag, returned to be appended
    /// by [`finish_tags`] together with other packets' (the packet stays encrypted and
    /// untagged until then). Other profiles finish here: `None`.
    pub fn protect_rtp_deferred(&mut self, pkt: &mut Vec<u8>) -> Result<Option<PendingTag>, SrtpError> {
        let len = pkt.len();
        let hlen = rtp_header_len(pkt, len)?;
        let seq = be16(pkt, 2).ok_or(SrtpError::TooShort)?;
        let ssrc = be32(pkt, 8).ok_or(SrtpError::TooShort)?;
        let st = self.streams.get_or_insert(ssrc)?;
        let index = match &mut st.rtp {
            None => {
                st.rtp = Some(Replay::new(seq as u64));
                seq as u64
            }
            Some(r) => match estimate_index(r.max, seq) {
                Some(i) => {
                    if i > r.max {
                        r.max = i;
                    }
                    i
                }
                // Before the stream's first packet: ROC 0, state unchanged.
                None => seq as u64,
            },
        };
        let roc = (index >> 16) as u32;
        match &self.rtp {
            Keys::Cm(k) => {
                let iv = cm_iv(&k.salt, ssrc, index);
                k.aes.apply(&iv, pkt.get_mut(hlen..).ok_or(SrtpError::TooShort)?);
                return Ok(Some(PendingTag { key: k.mac, roc: roc.to_be_bytes() }));
            }
            Keys::Gcm(k) => {
                let iv = gcm_rtp_iv(&k.salt, ssrc, roc, seq);
                let (hdr, payload) = pkt.split_at_mut(hlen);
                let tag = k.seal(&iv, hdr, payload)?;
                pkt.extend_from_slice(&tag);
            }
            Keys::Null => {}
        }
        Ok(None)
    }

    /// Verify, check the replay window, decrypt in place and drop the tag. On error the
    /// buffer content is unspecified (it may be partially decrypted only on success paths;
    /// with an authentication failure nothing was decrypted).
    pub fn unprotect_rtp(&mut self, pkt: &mut Vec<u8>) -> Result<(), SrtpError> {
        let tag_len = self.profile.tag_len();
        let len = pkt.len();
        if len < 12 + tag_len {
            return Err(SrtpError::TooShort);
        }
        let body = len - tag_len;
        let hlen = rtp_header_len(pkt, body)?;
        let seq = be16(pkt, 2).ok_or(SrtpError::TooShort)?;
        let ssrc = be32(pkt, 8).ok_or(SrtpError::TooShort)?;
        let prior = self.streams.get(ssrc).and_then(|s| s.rtp);
        let index = match prior {
            None => seq as u64,
            Some(r) => {
                let i = estimate_index(r.max, seq).ok_or(SrtpError::TooOld)?;
                r.check(i)?;
                i
            }
        };
        let roc = (index >> 16) as u32;
        match &self.rtp {
            Keys::Cm(k) => {
                let tag = k.mac.tag(pkt.get(..body).ok_or(SrtpError::TooShort)?, &roc.to_be_bytes());
                if !hmac_sha1::tag_matches(&tag, pkt.get(body..).ok_or(SrtpError::TooShort)?) {
                    return Err(SrtpError::AuthFailed);
                }
                let iv = cm_iv(&k.salt, ssrc, index);
                k.aes.apply(&iv, pkt.get_mut(hlen..body).ok_or(SrtpError::TooShort)?);
            }
            Keys::Gcm(k) => {
                let iv = gcm_rtp_iv(&k.salt, ssrc, roc, seq);
                let (hdr, rest) = pkt.split_at_mut(hlen);
                k.open(&iv, hdr, rest)?;
            }
            Keys::Null => {}
        }
        pkt.truncate(body);
        // Authenticated: now the state may move.
        let st = self.streams.get_or_insert(ssrc)?;
        match &mut st.rtp {
            None => st.rtp = Some(Replay::new(index)),
            Some(r) => r.update(index),
        }
        Ok(())
    }

    /// Encrypt an RTCP compound packet in place (everything after the first 8 bytes), then
    /// append tag and E-flag/SRTCP-index word (order per profile). Does not allocate when
    /// `pkt.capacity() >= pkt.len() + profile.rtcp_overhead()`.
    pub fn protect_rtcp(&mut self, pkt: &mut Vec<u8>) -> Result<(), SrtpError> {
        let len = pkt.len();
        if len < 8 {
            return Err(SrtpError::TooShort);
        }
        if pkt[0] >> 6 != 2 {
            return Err(SrtpError::Malformed);
        }
        if matches!(self.rtcp, Keys::Null) {
            return Ok(());
        }
        let ssrc = be32(pkt, 4).ok_or(SrtpError::TooShort)?;
        let st = self.streams.get_or_insert(ssrc)?;
        st.rtcp_tx = (st.rtcp_tx.wrapping_add(1)) & SRTCP_INDEX_MASK;
        let index = st.rtcp_tx;
        self.protect_rtcp_with_index(pkt, ssrc, index)
    }

    fn protect_rtcp_with_index(
        &self,
        pkt: &mut Vec<u8>,
        ssrc: u32,
        index: u32,
    ) -> Result<(), SrtpError> {
        let word = (SRTCP_E_FLAG | index).to_be_bytes();
        match &self.rtcp {
            Keys::Cm(k) => {
                let iv = cm_iv(&k.salt, ssrc, index as u64);
                k.aes.apply(&iv, pkt.get_mut(8..).ok_or(SrtpError::TooShort)?);
                pkt.extend_from_slice(&word);
                let tag = k.mac.tag(pkt, &[]);
                pkt.extend_from_slice(&tag[..HMAC_TAG_LEN]);
            }
            Keys::Gcm(k) => {
                let iv = gcm_rtcp_iv(&k.salt, ssrc, index);
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(pkt.get(..8).ok_or(SrtpError::TooShort)?);
                aad[8..].copy_from_slice(&word);
                let tag = k.seal(&iv, &aad, pkt.get_mut(8..).ok_or(SrtpError::TooShort)?)?;
                pkt.extend_from_slice(&tag);
                pkt.extend_from_slice(&word);
            }
            Keys::Null => {}
        }
        Ok(())
    }

    /// Verify, replay-check and (when the E flag is set) decrypt an SRTCP packet in place;
    /// the trailer is removed. Packets with E = 0 (authenticated only) are accepted.
    pub fn unprotect_rtcp(&mut self, pkt: &mut Vec<u8>) -> Result<(), SrtpError> {
        if matches!(self.rtcp, Keys::Null) {
            return check_plain_rtcp(pkt);
        }
        let tag_len = self.profile.tag_len();
        let len = pkt.len();
        if len < 8 + 4 + tag_len {
            return Err(SrtpError::TooShort);
        }
        if pkt[0] >> 6 != 2 {
            return Err(SrtpError::Malformed);
        }
        let ssrc = be32(pkt, 4).ok_or(SrtpError::TooShort)?;
        let body = len - 4 - tag_len;
        let (word_at, tag_at) = match self.rtcp {
            // header | payload | E+index | tag
            Keys::Cm(_) => (body, body + 4),
            // header | payload | tag | E+index
            Keys::Gcm(_) => (len - 4, body),
            Keys::Null => return Ok(()),
        };
        let word = be32(pkt, word_at).ok_or(SrtpError::TooShort)?;
        let index = word & SRTCP_INDEX_MASK;
        if let Some(r) = self.streams.get(ssrc).and_then(|s| s.rtcp_rx) {
            r.check(index as u64)?;
        }
        match &self.rtcp {
            Keys::Cm(k) => k.open_rtcp(pkt, ssrc, word, body, tag_at)?,
            Keys::Gcm(k) => k.open_rtcp(pkt, ssrc, word, body, tag_at)?,
            Keys::Null => return Ok(()),
        }
        pkt.truncate(body);
        let st = self.streams.get_or_insert(ssrc)?;
        match &mut st.rtcp_rx {
            None => st.rtcp_rx = Some(Replay::new(index as u64)),
            Some(r) => r.update(index as u64),
        }
        Ok(())
    }
}

/// Plain RTCP (`Profile::Null`): a compound packet of at least one header, nothing to remove.
fn check_plain_rtcp(pkt: &[u8]) -> Result<(), SrtpError> {
    match pkt.first() {
        _ if pkt.len() < 8 => Err(SrtpError::TooShort),
        Some(b) if b >> 6 == 2 => Ok(()),
        _ => Err(SrtpError::Malformed),
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

    /// A GCM context whose session keys are given directly (RFC 7714 vectors skip the KDF).
    fn gcm_session(key: &str, salt: &str) -> SrtpContext {
        let key = hex(key);
        let mut s = [0u8; 12];
        s.copy_from_slice(&hex(salt));
        let profile = if key.len() == 16 {
            Profile::AeadAes128Gcm
        } else {
            Profile::AeadAes256Gcm
        };
        SrtpContext {
            profile,
            rtp: Keys::Gcm(Box::new(gcm_keys(&key, s).unwrap())),
            rtcp: Keys::Gcm(Box::new(gcm_keys(&key, s).unwrap())),
            streams: Streams::default(),
        }
    }

    fn pair(profile: Profile) -> (SrtpContext, SrtpContext) {
        let key: Vec<u8> = (1..=profile.key_len() as u8).collect();
        let salt: Vec<u8> = (0xa0..0xa0 + profile.salt_len() as u8).collect();
        (
            SrtpContext::new(profile, &key, &salt).unwrap(),
            SrtpContext::new(profile, &key, &salt).unwrap(),
        )
    }

    const PROFILES: [Profile; 3] = [
        Profile::AesCm128HmacSha1_80,
        Profile::AeadAes128Gcm,
        Profile::AeadAes256Gcm,
    ];

    fn rtp_packet(seq: u16, ssrc: u32, payload_len: usize) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(seq as u32 * 3000).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend((0..payload_len).map(|i| (i * 7 + seq as usize) as u8));
        p
    }

    #[test]
    fn null_context_passes_packets_unchanged_and_is_never_negotiated() {
        assert!(Profile::from_name("NULL").is_none());
        let mut tx = SrtpContext::null();
        let mut rx = SrtpContext::null();
        let mut pkt = vec![0x80, 96, 0, 1, 0, 0, 0, 9, 0, 0, 0, 7, 1, 2, 3];
        let plain = pkt.clone();
        tx.protect_rtp(&mut pkt).unwrap();
        assert_eq!(pkt, plain);
        rx.unprotect_rtp(&mut pkt).unwrap();
        assert_eq!(pkt, plain);
        // Sequence state is still kept: the same packet again is a replay.
        assert_eq!(rx.unprotect_rtp(&mut pkt.clone()), Err(SrtpError::Replay));
        let mut rtcp = vec![0x80, 201, 0, 1, 0, 0, 0, 7];
        let before = rtcp.clone();
        tx.protect_rtcp(&mut rtcp).unwrap();
        rx.unprotect_rtcp(&mut rtcp).unwrap();
        assert_eq!(rtcp, before);
        assert!(rx.unprotect_rtcp(&mut vec![0x80, 201]).is_err());
        assert!(rx.unprotect_rtcp(&mut vec![0x00, 201, 0, 1, 0, 0, 0, 7]).is_err());
        assert_eq!(Profile::Null.rtp_overhead() + Profile::Null.rtcp_overhead(), 0);
    }

    #[test]
    fn profile_names_and_lengths() {
        for p in PROFILES {
            assert_eq!(Profile::from_name(p.name()), Some(p));
        }
        assert_eq!(
            Profile::from_name("SRTP_AES128_CM_SHA1_80"),
            Some(Profile::AesCm128HmacSha1_80)
        );
        assert_eq!(
            Profile::from_name("SRTP_AEAD_AES_256_GCM"),
            Some(Profile::AeadAes256Gcm)
        );
        assert_eq!(Profile::from_name("AES_CM_128_HMAC_SHA1_32"), None);
        assert_eq!(Profile::AesCm128HmacSha1_80.rtp_overhead(), 10);
        assert_eq!(Profile::AeadAes128Gcm.rtp_overhead(), 16);
        assert_eq!(Profile::AeadAes256Gcm.key_len(), 32);
        assert_eq!(Profile::AeadAes256Gcm.salt_len(), 12);
        assert_eq!(Profile::AesCm128HmacSha1_80.rtcp_overhead(), 14);
    }

    #[test]
    fn bad_key_lengths() {
        for p in PROFILES {
            let k = vec![0u8; p.key_len()];
            let s = vec![0u8; p.salt_len()];
            assert!(SrtpContext::new(p, &k, &s).is_ok());
            assert_eq!(
                SrtpContext::new(p, &k[1..], &s).unwrap_err(),
                SrtpError::BadKey
            );
            assert_eq!(
                SrtpContext::new(p, &k, &s[1..]).unwrap_err(),
                SrtpError::BadKey
            );
            assert_eq!(
                SrtpContext::new(p, &[], &[]).unwrap_err(),
                SrtpError::BadKey
            );
        }
    }

    /// RFC 3711 Appendix B.2: AES-CM keystream.
    #[test]
    fn rfc3711_b2_keystream() {
        let c = Aes128Enc::new_from_slice(&hex("2B7E151628AED2A6ABF7158809CF4F3C")).unwrap();
        let salt: [u8; 14] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap();
        let iv = cm_iv(&salt, 0, 0);
        assert_eq!(iv.to_vec(), hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000"));
        let mut ks = vec![0u8; 48];
        aes_ctr_xor(&c, &iv, &mut ks);
        assert_eq!(
            ks,
            hex(
                "E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB
                 41E95B3BB0A2E8DD477901E4FCA894C0"
            )
        );
        let mut iv2 = iv;
        iv2[14] = 0xfe;
        iv2[15] = 0xff;
        let mut ks = vec![0u8; 48];
        aes_ctr_xor(&c, &iv2, &mut ks);
        assert_eq!(
            ks,
            hex(
                "EC8CDF7398607CB0F2D21675EA9EA1E4 362B7C3C6773516318A077D7FC5073AE
                 6A2CC3787889374FBEB4C81B17BA6C44"
            )
        );
        // Long runs: the keystream is the same however it is chunked.
        let mut long = vec![0u8; 16 * 0xff02];
        aes_ctr_xor(&c, &iv, &mut long);
        assert_eq!(&long[16 * 0xfeff..], &hex("EC8CDF7398607CB0F2D21675EA9EA1E4 362B7C3C6773516318A077D7FC5073AE 6A2CC3787889374FBEB4C81B17BA6C44")[..]);
    }

    /// RFC 3711 Appendix B.3: key derivation.
    #[test]
    fn rfc3711_b3_key_derivation() {
        let mk = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let ms = hex("0EC675AD498AFEEBB6960B3AABE6");
        let mut k = [0u8; 16];
        kdf(&mk, &ms, LABEL_RTP_KEY, &mut k).unwrap();
        assert_eq!(k.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut s = [0u8; 14];
        kdf(&mk, &ms, LABEL_RTP_SALT, &mut s).unwrap();
        assert_eq!(s.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut a = [0u8; 20];
        kdf(&mk, &ms, LABEL_RTP_AUTH, &mut a).unwrap();
        assert_eq!(a.to_vec(), hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4"));
    }

    /// libsrtp's own known-answer packets (srtp_driver) for AES_CM_128_HMAC_SHA1_80 with the
    /// RFC 3711 B.3 master key; the SRTCP one carries index 1, which is our first index too.
    #[test]
    fn libsrtp_cm_known_answer() {
        let mk = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let ms = hex("0EC675AD498AFEEBB6960B3AABE6");
        let mut tx = SrtpContext::new(Profile::AesCm128HmacSha1_80, &mk, &ms).unwrap();
        let mut rx = tx.clone();
        let plain = hex("800f1234decafbad cafebabe abababab abababababababab abababab");
        let want =
            hex("800f1234decafbad cafebabe4e55dc4c e79978d88ca4d215 949d2402b78d6acc 99ea179b8dbb");
        let mut p = plain.clone();
        tx.protect_rtp(&mut p).unwrap();
        assert_eq!(p, want);
        rx.unprotect_rtp(&mut p).unwrap();
        assert_eq!(p, plain);

        let plain = hex("81c8000bcafebabe abababababababab abababababababab");
        let want =
            hex("81c8000bcafebabe 7128035be487b9bd bef89041f977a5a8 80000001993e08cd 54d6c1230798");
        let mut p = plain.clone();
        tx.protect_rtcp(&mut p).unwrap();
        assert_eq!(p, want);
        rx.unprotect_rtcp(&mut p).unwrap();
        assert_eq!(p, plain);
    }

    const RFC7714_KEY_128: &str = "000102030405060708090a0b0c0d0e0f";
    const RFC7714_KEY_256: &str =
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const RFC7714_SALT: &str = "517569642070726f2071756f";
    const RFC7714_RTP: &str = "8040f17b 8041f8d3 5501a0b2 47616c6c 69612065 7374206f 6d6e6973
        20646976 69736120 696e2070 61727465 73207472 6573";
    const RFC7714_RTCP: &str = "81c8000d 4d617273 4e545031 4e545032 52545020 0000042a 0000e930
        4c756e61 deadbeef deadbeef deadbeef deadbeef deadbeef";

    #[test]
    fn rfc7714_ivs() {
        let salt: [u8; 12] = hex(RFC7714_SALT).try_into().unwrap();
        assert_eq!(
            gcm_rtp_iv(&salt, 0x5501a0b2, 0, 0xf17b).to_vec(),
            hex("51753c6580c2726f20718414")
        );
        assert_eq!(
            gcm_rtcp_iv(&salt, 0x4d617273, 0x5d4).to_vec(),
            hex("517524055203726f207170bb")
        );
    }

    /// RFC 7714 §16.1 (AEAD_AES_128_GCM) and §16.2 (AEAD_AES_256_GCM) RTP packets.
    #[test]
    fn rfc7714_rtp_vectors() {
        for (key, want) in [
            (
                RFC7714_KEY_128,
                "8040f17b 8041f8d3 5501a0b2 f24de3a3 fb34de6c acba861c 9d7e4bca be633bd5
                 0d294e6f 42a5f47a 51c7d19b 36de3adf 8833899d 7f27beb1 6a9152cf 765ee439 0cce",
            ),
            (
                RFC7714_KEY_256,
                "8040f17b 8041f8d3 5501a0b2 32b1de78 a822fe12 ef9f78fa 332e33aa b1801238
                 9a58e2f3 b50b2a02 76ffae0f 1ba63799 b87b7aa3 db36dfff d6b0f9bb 7878d7a7 6c13",
            ),
        ] {
            let mut tx = gcm_session(key, RFC7714_SALT);
            let mut rx = gcm_session(key, RFC7714_SALT);
            let mut p = hex(RFC7714_RTP);
            tx.protect_rtp(&mut p).unwrap();
            assert_eq!(p, hex(want));
            rx.unprotect_rtp(&mut p).unwrap();
            assert_eq!(p, hex(RFC7714_RTP));
            let mut again = hex(want);
            assert_eq!(rx.unprotect_rtp(&mut again), Err(SrtpError::Replay));
        }
    }

    /// RFC 7714 §17.1/§17.2 (encrypted SRTCP) and §17.3/§17.4 (E = 0, tag only).
    #[test]
    fn rfc7714_rtcp_vectors() {
        let enc = [
            (
                RFC7714_KEY_128,
                "81c8000d 4d617273 63e94885 dcdab67c a727d766 2f6b7e99 7ff5c0f7 6c06f32d
                 c676a5f1 730d6fda 4ce09b46 86303ded 0bb9275b c84aa458 96cf4d2f c5abf872
                 45d9eade 800005d4",
            ),
            (
                RFC7714_KEY_256,
                "81c8000d 4d617273 d50ae4d1 f5ce5d30 4ba297e4 7d470c28 2c3ece5d bffe0a50
                 a2eaa5c1 110555be 8415f658 c61de047 6f1b6fad 1d1eb30c 4446839f 57ff6f6c
                 b26ac3be 800005d4",
            ),
        ];
        for (key, want) in enc {
            let tx = gcm_session(key, RFC7714_SALT);
            let mut p = hex(RFC7714_RTCP);
            tx.protect_rtcp_with_index(&mut p, 0x4d617273, 0x5d4)
                .unwrap();
            assert_eq!(p, hex(want));
            let mut rx = gcm_session(key, RFC7714_SALT);
            rx.unprotect_rtcp(&mut p).unwrap();
            assert_eq!(p, hex(RFC7714_RTCP));
            let mut again = hex(want);
            assert_eq!(rx.unprotect_rtcp(&mut again), Err(SrtpError::Replay));
        }
        let tag_only = [
            (
                RFC7714_KEY_128,
                "841dd968 3dd78ec9 2ae58790 125f62b3 000005d4",
            ),
            (
                RFC7714_KEY_256,
                "91db4afb feee5a97 8fab4393 ed2615fe 000005d4",
            ),
        ];
        for (key, trailer) in tag_only {
            let mut rx = gcm_session(key, RFC7714_SALT);
            let mut p = hex(RFC7714_RTCP);
            p.extend_from_slice(&hex(trailer));
            let mut bad = p.clone();
            rx.unprotect_rtcp(&mut p).unwrap();
            assert_eq!(p, hex(RFC7714_RTCP));
            bad[20] ^= 1;
            let mut rx = gcm_session(key, RFC7714_SALT);
            assert_eq!(rx.unprotect_rtcp(&mut bad), Err(SrtpError::AuthFailed));
        }
    }

    /// Packets protected by libsrtp 2 (through pylibsrtp): master key 01 02 …, salt a0 a1 …;
    /// the second SSRC starts at seq 65535 and wraps to 0 (ROC 1), with CSRCs and a header
    /// extension; SRTCP indices 1 and 2.
    const LIBSRTP: [(Profile, [&str; 6]); 3] = [
        (
            Profile::AesCm128HmacSha1_80,
            [
                "80601234decafbadcafebabee8a1f0670210bdeaa09cb063af0167183493dc17b52e8e6d8cdb85d2037e2bdc0a1de9f3a7ef0f1950f09a3afd1a29abc98e",
                "92e0ffff000003e8112233440102030405060708bede000210332201020300009f0ea26d4a54dbae39839f0633b46e5138c4ea713a336f1641bb056254d8612ee9766ab909be8bdc5a4b28",
                "80600000000007d0112233444b4445a23908eb2c5e5b1379b3c08216f8930b550883991990da14",
                "8060000100000bb811223344d72b2f62f5cb38e2a57a",
                "81c90007cafebabefb0ea607a4ad2149c6f28ea0a94959673a738360fbaf91c3800000019eeeafb71ea9fc14dc15",
                "81c90007cafebabef8b674dddeaa5d15fb766992630a92cc6c21aa346e1ce8ca80000002dffffbbdc07d011898f6",
            ],
        ),
        (
            Profile::AeadAes128Gcm,
            [
                "80601234decafbadcafebabec64c8d8a6e4470bc4a90d0103d8eca09c6aefb6b8ec34852c2018020356fdc78882267889c6278e854f982069132c699557d8e7ac4f5e850",
                "92e0ffff000003e8112233440102030405060708bede000210332201020300003600c26576f215218477971ff489ee60019bda68de3f7a3fd0d4523532b4f91f797bdf9898df8e4ff6d33f7a00585dc792",
                "80600000000007d01122334472dba3b669081eae2f2ad46bf9516e0e15591015ce115bdef8bd7988d60340a493",
                "8060000100000bb811223344edff2797350593504a5ad966af47995d",
                "81c90007cafebabe19f54a965bf6621d42f99f82b335b3c2c45b0a037dce6b49c821394280ccd9a0a4f627140fd3712e80000001",
                "81c90007cafebabeed0d4e4cf6bea5e25c6012a61f1a2d93623ff6f383bc5f6d6f7f4e3b60178d69a26f1e08dd46782c80000002",
            ],
        ),
        (
            Profile::AeadAes256Gcm,
            [
                "80601234decafbadcafebabedbceab99823a24a77626c7c51f501ccf8758c9e1949aff205473a8e08ea4fe032789665422b8a949474f14a7d894e283000ed22403af35c7",
                "92e0ffff000003e8112233440102030405060708bede000210332201020300007f940c59e54f3fd986f7e7d4f1064dc7a6cd1baf1411a96c42981f1d2cb25bd0751af6c7541e49d080f94e3ae48c6802e5",
                "80600000000007d011223344a1a08149a6836cec907eca56d54e86b35c65487ae7ba377a11b42745e96f485cf3",
                "8060000100000bb811223344118eb417f31328021e4da6586d1ad5de",
                "81c90007cafebabe91a29a1f3802e8304f04eb2f226e57a4b3bceeb4cb01df838d4af0a49cc1a7e6ce01cfc542deb8fc80000001",
                "81c90007cafebabeffc2e307e17fa613eab3509ba2cc901c0e816c833d14841038e3df13cf9991abc28c28d639344f5780000002",
            ],
        ),
    ];

    fn libsrtp_plain() -> [Vec<u8>; 6] {
        let rtcp = hex("81c90007 cafebabe 11223344 00000000 0000ffff 00000000 00000000 00000000");
        [
            {
                let mut p = hex("80601234decafbadcafebabe");
                p.extend(0u8..40);
                p
            },
            {
                let mut p = hex("92e0ffff000003e8112233440102030405060708bede00021033220102030000");
                p.extend([0xab; 33]);
                p
            },
            {
                let mut p = hex("80600000000007d011223344");
                p.extend([0xcd; 17]);
                p
            },
            hex("8060000100000bb811223344"),
            rtcp.clone(),
            rtcp,
        ]
    }

    #[test]
    fn libsrtp_interop_vectors() {
        for (profile, wire) in LIBSRTP {
            let (mut tx, mut rx) = pair(profile);
            let plain = libsrtp_plain();
            for (i, (p, w)) in plain.iter().zip(wire.iter()).enumerate() {
                let mut buf = p.clone();
                if i < 4 {
                    tx.protect_rtp(&mut buf).unwrap();
                } else {
                    tx.protect_rtcp(&mut buf).unwrap();
                }
                assert_eq!(buf, hex(w), "{profile:?} packet {i}");
                if i < 4 {
                    rx.unprotect_rtp(&mut buf).unwrap();
                } else {
                    rx.unprotect_rtcp(&mut buf).unwrap();
                }
                assert_eq!(&buf, p, "{profile:?} packet {i}");
            }
            assert_eq!(rx.roc(0x11223344), Some(1));
            assert_eq!(tx.roc(0x11223344), Some(1));
        }
    }

    #[test]
    fn round_trip_all_profiles_and_sizes() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            for (n, size) in [0usize, 1, 15, 16, 17, 127, 128, 129, 1200, 1400]
                .iter()
                .enumerate()
            {
                let plain = rtp_packet(100 + n as u16, 42, *size);
                let mut p = plain.clone();
                tx.protect_rtp(&mut p).unwrap();
                assert_eq!(p.len(), plain.len() + profile.rtp_overhead());
                assert_eq!(p[..12], plain[..12]);
                if *size > 4 {
                    assert_ne!(p[12..plain.len()], plain[12..]);
                }
                rx.unprotect_rtp(&mut p).unwrap();
                assert_eq!(p, plain);

                let mut r = hex("80c80006 0000002a");
                r.extend((0..*size as u8).map(|b| b ^ 0x5a));
                let plain_r = r.clone();
                tx.protect_rtcp(&mut r).unwrap();
                assert_eq!(r.len(), plain_r.len() + profile.rtcp_overhead());
                rx.unprotect_rtcp(&mut r).unwrap();
                assert_eq!(r, plain_r);
            }
        }
    }

    #[test]
    fn csrc_and_extension_stay_clear() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            let mut plain = hex("b2e00007 00000010 deadbeef 11111111 22222222 bede0001 10aa0000");
            plain.extend([9u8; 50]);
            let mut p = plain.clone();
            tx.protect_rtp(&mut p).unwrap();
            assert_eq!(p[..28], plain[..28]);
            assert_ne!(p[28..plain.len()], plain[28..]);
            rx.unprotect_rtp(&mut p).unwrap();
            assert_eq!(p, plain);
            // Tampering with the (clear) extension breaks authentication.
            let mut p = plain.clone();
            p[2..4].copy_from_slice(&8u16.to_be_bytes());
            let orig = p.clone();
            tx.protect_rtp(&mut p).unwrap();
            p[25] ^= 0x01;
            assert_eq!(rx.unprotect_rtp(&mut p), Err(SrtpError::AuthFailed));
            let mut p = orig;
            let _ = &mut p;
        }
    }

    #[test]
    fn tamper_fails_everywhere() {
        for profile in PROFILES {
            let (mut tx, _) = pair(profile);
            let mut p = rtp_packet(7, 9, 64);
            tx.protect_rtp(&mut p).unwrap();
            for i in 0..p.len() {
                // Bytes 0 (version/CC/X) can change the header shape; all changes must fail.
                let (_, mut rx) = pair(profile);
                let mut q = p.clone();
                q[i] ^= 0x10;
                assert!(rx.unprotect_rtp(&mut q).is_err(), "{profile:?} byte {i}");
            }
            let mut r = hex("80c90001 00000009");
            tx.protect_rtcp(&mut r).unwrap();
            for i in 0..r.len() {
                let (_, mut rx) = pair(profile);
                let mut q = r.clone();
                q[i] ^= 0x04;
                assert!(
                    rx.unprotect_rtcp(&mut q).is_err(),
                    "{profile:?} rtcp byte {i}"
                );
            }
            // Wrong key.
            let other = SrtpContext::new(
                profile,
                &vec![7u8; profile.key_len()],
                &vec![1u8; profile.salt_len()],
            );
            let mut other = other.unwrap();
            let mut q = p.clone();
            assert_eq!(other.unprotect_rtp(&mut q), Err(SrtpError::AuthFailed));
            // A failed packet does not create state.
            assert_eq!(other.stream_count(), 0);
        }
    }

    #[test]
    fn replay_and_window() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            let mut wire = Vec::new();
            for seq in 1000u16..1300 {
                let mut p = rtp_packet(seq, 5, 20);
                tx.protect_rtp(&mut p).unwrap();
                wire.push(p);
            }
            let mut p = wire[0].clone();
            rx.unprotect_rtp(&mut p).unwrap();
            let mut p = wire[0].clone();
            assert_eq!(rx.unprotect_rtp(&mut p), Err(SrtpError::Replay));
            // Jump ahead, then the skipped ones arrive late (inside the window).
            let mut p = wire[100].clone();
            rx.unprotect_rtp(&mut p).unwrap();
            for i in (1..100).rev() {
                let mut p = wire[i].clone();
                rx.unprotect_rtp(&mut p).unwrap();
                let mut p = wire[i].clone();
                assert_eq!(rx.unprotect_rtp(&mut p), Err(SrtpError::Replay), "{i}");
            }
            let mut p = wire[299].clone();
            rx.unprotect_rtp(&mut p).unwrap();
            // 299 - 150 = 149 >= 128: too old.
            let mut p = wire[150].clone();
            assert_eq!(rx.unprotect_rtp(&mut p), Err(SrtpError::TooOld));
            let mut p = wire[172].clone();
            rx.unprotect_rtp(&mut p).unwrap();

            // SRTCP replay.
            let mut r = hex("80c90001 00000005");
            tx.protect_rtcp(&mut r).unwrap();
            let copy = r.clone();
            rx.unprotect_rtcp(&mut r).unwrap();
            let mut r = copy;
            assert_eq!(rx.unprotect_rtcp(&mut r), Err(SrtpError::Replay));
        }
    }

    /// A tampered packet must not advance the replay window / ROC (auth first).
    #[test]
    fn failed_auth_does_not_move_state() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            let mut a = rtp_packet(10, 1, 10);
            tx.protect_rtp(&mut a).unwrap();
            rx.unprotect_rtp(&mut a).unwrap();
            let mut forged = rtp_packet(30000, 1, 10);
            tx.clone().protect_rtp(&mut forged).unwrap();
            let n = forged.len();
            forged[n - 1] ^= 1;
            assert_eq!(rx.unprotect_rtp(&mut forged), Err(SrtpError::AuthFailed));
            let mut b = rtp_packet(11, 1, 10);
            tx.protect_rtp(&mut b).unwrap();
            rx.unprotect_rtp(&mut b).unwrap();
            assert_eq!(rx.roc(1), Some(0));
        }
    }

    /// Sequence numbers wrap 65535 -> 0 several times, with reordering across the wrap.
    #[test]
    fn roc_rollover_with_reordering() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            let mut sent = Vec::new();
            let mut seq: u16 = 65000;
            let mut ext: u64 = 65000;
            while ext < 3 * 65536 + 1000 {
                ext += 103;
                // Big strides keep the test short while still crossing the wrap 3 times.
                for _ in 0..3 {
                    let mut p = rtp_packet(seq, 77, 30);
                    tx.protect_rtp(&mut p).unwrap();
                    sent.push((seq, p));
                    seq = seq.wrapping_add(1);
                }
                seq = seq.wrapping_add(100);
            }
            let last_roc = ((ext - 103 + 2) >> 16) as u32;
            assert_eq!(tx.roc(77), Some(last_roc));
            // Deliver with swaps of neighbours (reordering across each wrap).
            for pair in sent.chunks(2) {
                for (seq, p) in pair.iter().rev() {
                    let mut q = p.clone();
                    rx.unprotect_rtp(&mut q)
                        .unwrap_or_else(|e| panic!("{profile:?} seq {seq}: {e:?}"));
                    assert_eq!(&q[2..4], &seq.to_be_bytes());
                }
            }
            assert_eq!(rx.roc(77), Some(last_roc));
            assert_eq!(last_roc, 3);
        }
    }

    /// Reordering exactly at the wrap point: 65534, 0, 65535, 1.
    #[test]
    fn wrap_reorder_at_boundary() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            let mut pk = |s: u16| {
                let mut p = rtp_packet(s, 3, 8);
                tx.protect_rtp(&mut p).unwrap();
                p
            };
            let (a, b, c, d) = (pk(65534), pk(65535), pk(0), pk(1));
            for p in [a, c, b, d] {
                let mut q = p.clone();
                rx.unprotect_rtp(&mut q).unwrap();
            }
            assert_eq!(rx.roc(3), Some(1));
            // Sender side: a retransmission of 65535 after the wrap uses ROC 0 again.
            let mut again = pk(65535);
            let mut rx2 = {
                let (_, r) = pair(profile);
                r
            };
            // rx2 has no state: it takes ROC 0 for a first packet, so this must verify.
            rx2.unprotect_rtp(&mut again).unwrap();
        }
    }

    #[test]
    fn index_estimation() {
        // s_l < 32768
        assert_eq!(estimate_index(5 << 16 | 100, 101), Some(5 << 16 | 101));
        assert_eq!(estimate_index(5 << 16 | 100, 65000), Some(4 << 16 | 65000));
        assert_eq!(estimate_index(100, 65000), None);
        // s_l >= 32768
        assert_eq!(estimate_index(5 << 16 | 65000, 10), Some(6 << 16 | 10));
        assert_eq!(
            estimate_index(5 << 16 | 65000, 40000),
            Some(5 << 16 | 40000)
        );
        assert_eq!(estimate_index(0xffff_ffff << 16 | 65000, 10), None);
    }

    #[test]
    fn truncated_and_garbage_never_panic() {
        for profile in PROFILES {
            let (mut tx, _) = pair(profile);
            let mut p = hex("b1e00007 00000010 deadbeef 11111111 bede0001 10aa0000");
            p.extend([1u8; 40]);
            tx.protect_rtp(&mut p).unwrap();
            let mut r = hex("80c90001 00000009 01020304");
            tx.protect_rtcp(&mut r).unwrap();
            for n in 0..p.len() {
                let (_, mut rx) = pair(profile);
                let mut q = p[..n].to_vec();
                assert!(rx.unprotect_rtp(&mut q).is_err());
                let mut q = p[..n].to_vec();
                let _ = rx.protect_rtp(&mut q);
            }
            for n in 0..r.len() {
                let (_, mut rx) = pair(profile);
                let mut q = r[..n].to_vec();
                assert!(rx.unprotect_rtcp(&mut q).is_err());
                let mut q = r[..n].to_vec();
                let _ = rx.protect_rtcp(&mut q);
            }
            // Pseudo-random garbage (xorshift), including valid-looking first bytes.
            let mut x: u64 = 0x9e3779b97f4a7c15;
            let (_, mut rx) = pair(profile);
            for i in 0..3000 {
                let mut q = Vec::new();
                let n = (x % 80) as usize;
                for _ in 0..n {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    q.push(x as u8);
                }
                if i % 2 == 0 && !q.is_empty() {
                    q[0] = 0x80 | (q[0] & 0x3f);
                }
                let mut a = q.clone();
                assert!(rx.unprotect_rtp(&mut a).is_err());
                let mut a = q.clone();
                assert!(rx.unprotect_rtcp(&mut a).is_err());
                let mut a = q.clone();
                let _ = tx.protect_rtp(&mut a);
                let mut a = q;
                let _ = tx.protect_rtcp(&mut a);
            }
        }
    }

    #[test]
    fn protect_does_not_reallocate_with_spare_capacity() {
        for profile in PROFILES {
            let (mut tx, mut rx) = pair(profile);
            // First packet of the SSRC creates its state; later ones must not allocate.
            let mut warm = rtp_packet(1, 8, 100);
            tx.protect_rtp(&mut warm).unwrap();
            let mut p = Vec::with_capacity(1500);
            p.extend_from_slice(&rtp_packet(2, 8, 1200));
            let (ptr, cap) = (p.as_ptr(), p.capacity());
            tx.protect_rtp(&mut p).unwrap();
            assert_eq!((p.as_ptr(), p.capacity()), (ptr, cap));
            rx.unprotect_rtp(&mut p).unwrap();
            assert_eq!((p.as_ptr(), p.capacity()), (ptr, cap));
            let mut r = Vec::with_capacity(256);
            r.extend_from_slice(&hex("80c90001 00000008"));
            let (ptr, cap) = (r.as_ptr(), r.capacity());
            tx.protect_rtcp(&mut r).unwrap();
            rx.unprotect_rtcp(&mut r).unwrap();
            assert_eq!((r.as_ptr(), r.capacity()), (ptr, cap));
        }
    }

    #[test]
    fn stream_table_limits_and_removal() {
        let (mut tx, _) = pair(Profile::AeadAes128Gcm);
        for ssrc in 0..MAX_STREAMS as u32 {
            let mut p = rtp_packet(1, ssrc, 4);
            tx.protect_rtp(&mut p).unwrap();
        }
        let mut p = rtp_packet(1, MAX_STREAMS as u32, 4);
        assert_eq!(tx.protect_rtp(&mut p), Err(SrtpError::Malformed));
        tx.remove_ssrc(3);
        assert_eq!(tx.roc(3), None);
        let mut p = rtp_packet(1, MAX_STREAMS as u32, 4);
        tx.protect_rtp(&mut p).unwrap();
        assert_eq!(tx.stream_count(), MAX_STREAMS);
    }
}
