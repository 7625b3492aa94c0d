//! Just enough STUN parsing to route a datagram to its transport: the message type and the
//! local ufrag of a Binding request's USERNAME (`localUfrag:remoteUfrag`). Python does the
//! real STUN work (integrity, fingerprint, answers); this must only never misbehave on hostile
//! input.

const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER_LEN: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;
/// Binding request (method 0x001, class request).
pub const BINDING_REQUEST: u16 = 0x0001;

/// The 16-bit message type if `data` looks like a STUN message (RFC 5389 header rules:
/// top two bits zero, magic cookie, length a multiple of 4 that fits the datagram).
pub fn message_type(data: &[u8]) -> Option<u16> {
    if data.len() < HEADER_LEN {
        return None;
    }
    let ty = u16::from_be_bytes([data[0], data[1]]);
    if ty & 0xC000 != 0 {
        return None;
    }
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    if !len.is_multiple_of(4) || HEADER_LEN + len > data.len() {
        return None;
    }
    let cookie = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    if cookie != MAGIC_COOKIE {
        return None;
    }
    Some(ty)
}

/// The USERNAME attribute's value, if present and well-formed.
pub fn username(data: &[u8]) -> Option<&[u8]> {
    message_type(data)?;
    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
    let body = &data[HEADER_LEN..HEADER_LEN + len];
    let mut pos = 0usize;
    while pos + 4 <= body.len() {
        let ty = u16::from_be_bytes([body[pos], body[pos + 1]]);
        let alen = u16::from_be_bytes([body[pos + 2], body[pos + 3]]) as usize;
        let start = pos + 4;
        let end = start.checked_add(alen)?;
        if end > body.len() {
            return None;
        }
        if ty == ATTR_USERNAME {
            return Some(&body[start..end]);
        }
        // Attributes are padded to 4 bytes.
        pos = start + ((alen + 3) & !3);
    }
    None
}

/// The local ufrag (the part of USERNAME before the first ':') of a Binding request.
pub fn local_ufrag(data: &[u8]) -> Option<&str> {
    if message_type(data)? != BINDING_REQUEST {
        return None;
    }
    let user = username(data)?;
    let local = match user.iter().position(|&b| b == b':') {
        Some(i) => &user[..i],
        None => user,
    };
    if local.is_empty() {
        return None;
    }
    std::str::from_utf8(local).ok()
}

#[cfg(test)]
pub(crate) fn build_binding_request(username: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    // A PRIORITY attribute first, so the scan must skip one.
    attrs.extend_from_slice(&0x0024u16.to_be_bytes());
    attrs.extend_from_slice(&4u16.to_be_bytes());
    attrs.extend_from_slice(&0x6e00_1eff_u32.to_be_bytes());
    attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username.as_bytes());
    while !attrs.len().is_multiple_of(4) {
        attrs.push(0);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
    out.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(&[7u8; 12]);
    out.extend_from_slice(&attrs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_local_ufrag() {
        let msg = build_binding_request("abcd:efgh");
        assert_eq!(message_type(&msg), Some(BINDING_REQUEST));
        assert_eq!(username(&msg), Some(&b"abcd:efgh"[..]));
        assert_eq!(local_ufrag(&msg), Some("abcd"));
        let msg = build_binding_request("x");
        assert_eq!(local_ufrag(&msg), Some("x"));
        let msg = build_binding_request(":y");
        assert_eq!(local_ufrag(&msg), None);
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        let msg = build_binding_request("abcd:efgh");
        for cut in 0..msg.len() {
            let _ = local_ufrag(&msg[..cut]);
        }
        let mut bad = msg.clone();
        bad[4] ^= 1; // cookie
        assert_eq!(local_ufrag(&bad), None);
        let mut bad = msg.clone();
        // attribute length pointing past the end
        bad[HEADER_LEN + 10] = 0xff;
        assert_eq!(local_ufrag(&bad), None);
        // every single-byte corruption must be handled
        for i in 0..msg.len() {
            for v in [0u8, 0xff, 0x80, 3] {
                let mut m = msg.clone();
                m[i] = v;
                let _ = local_ufrag(&m);
            }
        }
        let mut state = 0x1234_5678u32;
        for _ in 0..10_000 {
            let mut m = msg.clone();
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let i = (state as usize) % m.len();
            m[i] = (state >> 8) as u8;
            let _ = local_ufrag(&m);
        }
    }
}
