//! STUN short-term credential checks done in the engine before a request is queued for
//! Python: MESSAGE-INTEGRITY (HMAC-SHA1 keyed with the transport's ICE password, RFC 5389
//! §15.4) and FINGERPRINT (CRC-32 xor 0x5354554e, §15.5) when present. A flood of requests
//! that carry a real transport's ufrag but not its password then costs one HMAC here and never
//! reaches the queue shared by all transports. Python does the full ICE work on what passes
//! (attributes, role conflict, nomination, the answer), except for consent freshness checks
//! (RFC 7675) on a transport's selected tuple, which the engine answers itself
//! (`binding_success`): a plain request (`Checked::plain`) there changes no ICE state.
//!
//! Hostile input: every length is checked against the datagram; nothing here panics.

use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::stun_peek;

const HEADER_LEN: usize = 20;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_FINGERPRINT: u16 = 0x8028;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_PRIORITY: u16 = 0x0024;
const ATTR_ICE_CONTROLLED: u16 = 0x8029;
/// Renomination's NOMINATION attribute (draft-thatcher-ice-renomination): Python's.
const ATTR_NOMINATION: u16 = 0xC001;
const BINDING_SUCCESS: u16 = 0x0101;
const MAGIC_COOKIE: u32 = 0x2112_A442;
const INTEGRITY_LEN: usize = 20;
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// A transport's ICE password, keyed once (each check clones the keyed state).
#[derive(Clone)]
pub struct IceKey(Hmac<Sha1>);

impl IceKey {
    /// None for an empty password (a transport without one accepts no STUN at all).
    pub fn new(password: &[u8]) -> Option<Self> {
        if password.is_empty() {
            return None;
        }
        Hmac::<Sha1>::new_from_slice(password).ok().map(IceKey)
    }
}

/// Why a STUN message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not a well-formed STUN message (header or attribute lengths).
    Malformed,
    /// No MESSAGE-INTEGRITY attribute (or one of the wrong size).
    NoIntegrity,
    /// MESSAGE-INTEGRITY does not match the password.
    BadIntegrity,
    /// FINGERPRINT present but wrong, or not the last attribute.
    BadFingerprint,
}

/// Positions of the attributes the checks need.
struct Layout {
    integrity: Option<usize>,
    fingerprint: Option<usize>,
    end: usize,
    /// PRIORITY present, and neither ICE-CONTROLLED nor NOMINATION (before the integrity).
    plain: bool,
}

/// What a request that passed the checks is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checked {
    /// A Binding request with FINGERPRINT and PRIORITY, without ICE-CONTROLLED (a role
    /// conflict) or NOMINATION: ICE would answer it with a plain success and, on a tuple
    /// already selected, change nothing. USE-CANDIDATE may be present (the tuple is already
    /// nominated then).
    pub plain: bool,
}

fn layout(data: &[u8]) -> Result<Layout, Reject> {
    stun_peek::message_type(data).ok_or(Reject::Malformed)?;
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    let end = HEADER_LEN + len;
    let mut pos = HEADER_LEN;
    let (mut integrity, mut fingerprint) = (None, None);
    let (mut priority, mut special) = (false, false);
    while pos + 4 <= end {
        let ty = u16::from_be_bytes([data[pos], data[pos + 1]]);
        let alen = u16::from_be_bytes([data[pos + 2], data[pos + 3]]) as usize;
        let next = pos + 4 + ((alen + 3) & !3);
        if pos + 4 + alen > end || next > end {
            return Err(Reject::Malformed);
        }
        if fingerprint.is_some() {
            // FINGERPRINT must be the last attribute.
            return Err(Reject::BadFingerprint);
        }
        match ty {
            ATTR_FINGERPRINT => {
                if alen != 4 {
                    return Err(Reject::BadFingerprint);
                }
                fingerprint = Some(pos);
            }
            // The first MESSAGE-INTEGRITY counts; what follows it (but FINGERPRINT) is not
            // covered and is ignored, as RFC 5389 §15.4 says (and as pysfu/stun.py does).
            ATTR_MESSAGE_INTEGRITY if integrity.is_none() => {
                if alen != INTEGRITY_LEN {
                    return Err(Reject::NoIntegrity);
                }
                integrity = Some(pos);
            }
            ATTR_PRIORITY if integrity.is_none() => priority = alen == 4,
            ATTR_ICE_CONTROLLED | ATTR_NOMINATION if integrity.is_none() => special = true,
            _ => {}
        }
        pos = next;
    }
    if pos != end {
        return Err(Reject::Malformed);
    }
    let plain = priority && !special && fingerprint.is_some();
    Ok(Layout { integrity, fingerprint, end, plain })
}

/// Check `data` (a whole STUN message) against the ICE key: FINGERPRINT if present, then
/// MESSAGE-INTEGRITY, which must be present.
pub fn verify(data: &[u8], key: &IceKey) -> Result<(), Reject> {
    verify_request(data, key).map(|_| ())
}

/// `verify`, and what the message is.
pub fn verify_request(data: &[u8], key: &IceKey) -> Result<Checked, Reject> {
    let l = layout(data)?;
    let binding = stun_peek::message_type(data) == Some(stun_peek::BINDING_REQUEST);
    let checked = Checked { plain: l.plain && binding };
    let data = &data[..l.end];
    if let Some(fp) = l.fingerprint {
        let want = u32::from_be_bytes([data[fp + 4], data[fp + 5], data[fp + 6], data[fp + 7]]);
        if crc32fast::hash(&data[..fp]) ^ FINGERPRINT_XOR != want {
            return Err(Reject::BadFingerprint);
        }
    }
    let mi = l.integrity.ok_or(Reject::NoIntegrity)?;
    // The HMAC covers the header with its length as if MESSAGE-INTEGRITY were the last
    // attribute, then every attribute before it.
    let covered_len = (mi + 4 + INTEGRITY_LEN - HEADER_LEN) as u16;
    let mut mac = key.0.clone();
    mac.update(&data[..2]);
    mac.update(&covered_len.to_be_bytes());
    mac.update(&data[4..mi]);
    mac.verify_slice(&data[mi + 4..mi + 4 + INTEGRITY_LEN]).map_err(|_| Reject::BadIntegrity)?;
    Ok(checked)
}

/// The Binding success response to `request` (checked) from `from`: XOR-MAPPED-ADDRESS,
/// MESSAGE-INTEGRITY keyed with the transport's password, FINGERPRINT (RFC 5389 §10.1.2,
/// what pysfu/stun.py's `binding_success` builds), written into `out` (cleared first).
pub fn binding_success(request: &[u8], from: std::net::SocketAddr, key: &IceKey, out: &mut Vec<u8>) {
    out.clear();
    let txid = &request[8..HEADER_LEN];
    let (family, ip): (u8, Vec<u8>) = match from.ip() {
        std::net::IpAddr::V4(a) => (1, a.octets().to_vec()),
        std::net::IpAddr::V6(a) => (2, a.octets().to_vec()),
    };
    let attr_len = 4 + ip.len();
    let body = 4 + attr_len + 4 + INTEGRITY_LEN;
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&(body as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(txid);
    out.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&(attr_len as u16).to_be_bytes());
    out.extend_from_slice(&[0, family]);
    out.extend_from_slice(&(from.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
    // The address xor'ed with the magic cookie then (IPv6) the transaction id.
    let mut pad = MAGIC_COOKIE.to_be_bytes().to_vec();
    pad.extend_from_slice(txid);
    out.extend(ip.iter().zip(pad).map(|(a, b)| a ^ b));
    let mut mac = key.0.clone();
    mac.update(out);
    let tag = mac.finalize().into_bytes();
    out.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
    out.extend_from_slice(&(INTEGRITY_LEN as u16).to_be_bytes());
    out.extend_from_slice(&tag);
    let len = (out.len() - HEADER_LEN + 8) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    let crc = crc32fast::hash(out) ^ FINGERPRINT_XOR;
    out.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A Binding request with USERNAME, MESSAGE-INTEGRITY (keyed with `password`) and, if
/// `fingerprint`, FINGERPRINT: what a browser's ICE agent sends (for tests and fuzzing).
pub fn build_binding_request(username: &str, password: &[u8], fingerprint: bool) -> Vec<u8> {
    build_binding_request_with(username, password, fingerprint, &[])
}

/// `build_binding_request` with `extra` attributes (type, value) after USE-CANDIDATE.
pub fn build_binding_request_with(username: &str, password: &[u8], fingerprint: bool, extra: &[(u16, &[u8])]) -> Vec<u8> {
    let mut attrs = Vec::new();
    let attr = |attrs: &mut Vec<u8>, ty: u16, v: &[u8]| {
        attrs.extend_from_slice(&ty.to_be_bytes());
        attrs.extend_from_slice(&(v.len() as u16).to_be_bytes());
        attrs.extend_from_slice(v);
        while !attrs.len().is_multiple_of(4) {
            attrs.push(0);
        }
    };
    attr(&mut attrs, 0x0006, username.as_bytes());
    attr(&mut attrs, 0x0024, &0x6e00_1effu32.to_be_bytes());
    attr(&mut attrs, 0x0025, &[]);
    for (ty, v) in extra {
        attr(&mut attrs, *ty, v);
    }
    let mut msg = Vec::new();
    msg.extend_from_slice(&stun_peek::BINDING_REQUEST.to_be_bytes());
    msg.extend_from_slice(&((attrs.len() + 4 + INTEGRITY_LEN) as u16).to_be_bytes());
    msg.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    msg.extend_from_slice(&[0x5a; 12]);
    msg.extend_from_slice(&attrs);
    let mut mac = Hmac::<Sha1>::new_from_slice(password).expect("any key length");
    mac.update(&msg);
    let tag = mac.finalize().into_bytes();
    msg.extend_from_slice(&ATTR_MESSAGE_INTEGRITY.to_be_bytes());
    msg.extend_from_slice(&(INTEGRITY_LEN as u16).to_be_bytes());
    msg.extend_from_slice(&tag);
    if fingerprint {
        let len = (msg.len() - HEADER_LEN + 8) as u16;
        msg[2..4].copy_from_slice(&len.to_be_bytes());
        let crc = crc32fast::hash(&msg) ^ FINGERPRINT_XOR;
        msg.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
        msg.extend_from_slice(&4u16.to_be_bytes());
        msg.extend_from_slice(&crc.to_be_bytes());
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str) -> IceKey {
        IceKey::new(p.as_bytes()).unwrap()
    }

    #[test]
    fn accepts_a_good_request_with_and_without_fingerprint() {
        for fp in [true, false] {
            let msg = build_binding_request("abcd:efgh", b"the-password", fp);
            assert_eq!(verify(&msg, &key("the-password")), Ok(()));
            assert_eq!(stun_peek::local_ufrag(&msg), Some("abcd"));
        }
    }

    #[test]
    fn rfc5769_sample_request_verifies() {
        // RFC 5769 §2.1: password "VOkJxbRl1RmTxUk/WvJxBt", username "evtj:h6vY".
        let msg: Vec<u8> = [
            "00010058", "2112a442", "b7e7a701", "bc34d686", "fa87dfae", "80220010", "5354554e", "20746573",
            "7420636c", "69656e74", "00240004", "6e0001ff", "80290008", "932ff9b1", "51263b36", "00060009",
            "6576746a", "3a683676", "59202020", "00080014", "9aeaa70c", "bfd8cb56", "781ef2b5", "b2d3f249",
            "c1b571a2", "80280004", "e57a3bcf",
        ]
        .iter()
        .flat_map(|w| (0..4).map(move |i| u8::from_str_radix(&w[2 * i..2 * i + 2], 16).unwrap()))
        .collect();
        assert_eq!(verify(&msg, &key("VOkJxbRl1RmTxUk/WvJxBt")), Ok(()));
        assert_eq!(verify(&msg, &key("VOkJxbRl1RmTxUk/WvJxBT")), Err(Reject::BadIntegrity));
    }

    #[test]
    fn refuses_wrong_password_tampering_and_missing_integrity() {
        let msg = build_binding_request("abcd:efgh", b"pw", true);
        assert_eq!(verify(&msg, &key("other")), Err(Reject::BadIntegrity));
        // A flipped bit anywhere: integrity or fingerprint fails. (Except in FINGERPRINT's
        // type: that turns it into an unknown attribute after MESSAGE-INTEGRITY, which is
        // ignored, and a message without FINGERPRINT.)
        let fp_type = msg.len() - 8..msg.len() - 6;
        for i in (0..msg.len()).filter(|i| !fp_type.contains(i)) {
            let mut m = msg.clone();
            m[i] ^= 0x01;
            assert!(verify(&m, &key("pw")).is_err(), "byte {i}");
        }
        // No MESSAGE-INTEGRITY at all.
        let plain = stun_peek::build_binding_request("abcd:efgh");
        assert_eq!(verify(&plain, &key("pw")), Err(Reject::NoIntegrity));
        // Good integrity, fingerprint not last.
        let mut m = build_binding_request("abcd:efgh", b"pw", true);
        m.extend_from_slice(&[0x00, 0x24, 0, 4, 1, 2, 3, 4]);
        let len = (m.len() - HEADER_LEN) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(verify(&m, &key("pw")), Err(Reject::BadFingerprint));
        assert!(IceKey::new(b"").is_none());
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let msg = build_binding_request("abcd:efgh", b"pw", true);
        let k = key("pw");
        for cut in 0..msg.len() {
            let _ = verify(&msg[..cut], &k);
        }
        let mut state = 0x9e37_79b9u32;
        for _ in 0..20_000 {
            let mut m = msg.clone();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let i = state as usize % m.len();
                m[i] = (state >> 11) as u8;
            }
            let _ = verify(&m, &k);
        }
    }
}
