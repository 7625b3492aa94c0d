//! DCEP, the WebRTC data channel establishment protocol (RFC 8832): DATA_CHANNEL_OPEN and
//! DATA_CHANNEL_ACK, carried on the channel's own SCTP stream with PPID 50.
//!
//! Pure parsing and building: no state. `sctp.rs` answers an OPEN with an ACK and reports the
//! channel (label, protocol, reliability); mediasoup-client opens its channels `negotiated`
//! (no DCEP at all), browsers' plain `createDataChannel` sends an OPEN.

/// PPID of DCEP messages (RFC 8832 §8.1).
pub const PPID_DCEP: u32 = 50;
pub const MSG_ACK: u8 = 0x02;
pub const MSG_OPEN: u8 = 0x03;
const OPEN_HEADER: usize = 12;

/// Channel types (RFC 8832 §5.1): the high bit means unordered.
const UNORDERED: u8 = 0x80;
const PARTIAL_REXMIT: u8 = 0x01;
const PARTIAL_TIMED: u8 = 0x02;

/// How a channel delivers: partial reliability is one of a retransmission count or a
/// lifetime in milliseconds, never both (RFC 8831 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reliability {
    Reliable,
    MaxRetransmits(u32),
    MaxPacketLifeTime(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub ordered: bool,
    pub reliability: Reliability,
    pub priority: u16,
    pub label: String,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Ack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DcepError {
    Empty,
    UnknownType(u8),
    Truncated,
    BadChannelType(u8),
    /// Label or protocol not UTF-8 (RFC 8832 §5.1: they are UTF-8 strings).
    NotUtf8,
}

/// Parse one DCEP message (the whole SCTP user message).
pub fn parse(data: &[u8]) -> Result<Message, DcepError> {
    let (&ty, _) = data.split_first().ok_or(DcepError::Empty)?;
    match ty {
        MSG_ACK => Ok(Message::Ack), // trailing bytes ignored, as the RFC allows extensions
        MSG_OPEN => parse_open(data).map(Message::Open),
        other => Err(DcepError::UnknownType(other)),
    }
}

fn parse_open(data: &[u8]) -> Result<Open, DcepError> {
    if data.len() < OPEN_HEADER {
        return Err(DcepError::Truncated);
    }
    let channel_type = data[1];
    let priority = u16::from_be_bytes([data[2], data[3]]);
    let param = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    let label_len = usize::from(u16::from_be_bytes([data[8], data[9]]));
    let protocol_len = usize::from(u16::from_be_bytes([data[10], data[11]]));
    let label_end = OPEN_HEADER + label_len;
    let protocol_end = label_end + protocol_len;
    if data.len() < protocol_end {
        return Err(DcepError::Truncated);
    }
    let reliability = match channel_type & !UNORDERED {
        0 => Reliability::Reliable,
        PARTIAL_REXMIT => Reliability::MaxRetransmits(param),
        PARTIAL_TIMED => Reliability::MaxPacketLifeTime(param),
        _ => return Err(DcepError::BadChannelType(channel_type)),
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| DcepError::NotUtf8);
    Ok(Open {
        ordered: channel_type & UNORDERED == 0,
        reliability,
        priority,
        label: text(&data[OPEN_HEADER..label_end])?,
        protocol: text(&data[label_end..protocol_end])?,
    })
}

/// A DATA_CHANNEL_OPEN. Label and protocol longer than 65535 bytes are cut there.
pub fn build_open(open: &Open) -> Vec<u8> {
    let label = &open.label.as_bytes()[..open.label.len().min(usize::from(u16::MAX))];
    let protocol = &open.protocol.as_bytes()[..open.protocol.len().min(usize::from(u16::MAX))];
    let (kind, param) = match open.reliability {
        Reliability::Reliable => (0, 0),
        Reliability::MaxRetransmits(n) => (PARTIAL_REXMIT, n),
        Reliability::MaxPacketLifeTime(ms) => (PARTIAL_TIMED, ms),
    };
    let channel_type = if open.ordered { kind } else { kind | UNORDERED };
    let mut out = Vec::with_capacity(OPEN_HEADER + label.len() + protocol.len());
    out.push(MSG_OPEN);
    out.push(channel_type);
    out.extend_from_slice(&open.priority.to_be_bytes());
    out.extend_from_slice(&param.to_be_bytes());
    out.extend_from_slice(&(label.len() as u16).to_be_bytes());
    out.extend_from_slice(&(protocol.len() as u16).to_be_bytes());
    out.extend_from_slice(label);
    out.extend_from_slice(protocol);
    out
}

pub fn build_ack() -> Vec<u8> {
    vec![MSG_ACK]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_round_trip_every_channel_type() {
        for ordered in [true, false] {
            for reliability in [Reliability::Reliable, Reliability::MaxRetransmits(0),
                                Reliability::MaxRetransmits(7), Reliability::MaxPacketLifeTime(1500)] {
                let open = Open { ordered, reliability, priority: 256, label: "chat ✓".into(),
                                  protocol: "json".into() };
                assert_eq!(parse(&build_open(&open)), Ok(Message::Open(open)));
            }
        }
    }

    #[test]
    fn known_bytes_from_rfc_layout() {
        // Unordered, partial reliable rexmit 3, priority 0, label "a", protocol "".
        let bytes = [3, 0x81, 0, 0, 0, 0, 0, 3, 0, 1, 0, 0, b'a'];
        let Ok(Message::Open(open)) = parse(&bytes) else { panic!("not an open") };
        assert!(!open.ordered);
        assert_eq!(open.reliability, Reliability::MaxRetransmits(3));
        assert_eq!(open.label, "a");
        assert_eq!(open.protocol, "");
        assert_eq!(parse(&[2]), Ok(Message::Ack));
    }

    #[test]
    fn malformed_is_an_error_not_a_panic() {
        assert_eq!(parse(&[]), Err(DcepError::Empty));
        assert_eq!(parse(&[9]), Err(DcepError::UnknownType(9)));
        assert_eq!(parse(&[3, 0, 0]), Err(DcepError::Truncated));
        // Label length says 5, one byte there.
        assert_eq!(parse(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, b'x']), Err(DcepError::Truncated));
        assert_eq!(parse(&[3, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                   Err(DcepError::BadChannelType(3)));
        assert_eq!(parse(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0xff]), Err(DcepError::NotUtf8));
    }
}
