//! What the control plane passes in (producer and consumer specs) and what control calls
//! answer when they fail.

use super::Handle;

/// MID, RID and repaired-RID header extensions: producer streams are learnt by them.
pub const URI_MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
pub const URI_RID: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
pub const URI_RRID: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
/// Transport-wide sequence numbers: recorded for feedback toward the sender, not forwarded.
pub const URI_TRANSPORT_CC: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

// ---------------------------------------------------------------------------------------
// Specs

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyFrameMethod {
    Pli,
    Fir,
}

#[derive(Clone, Debug)]
pub struct CodecSpec {
    pub payload_type: u8,
    pub mapped_payload_type: u8,
    pub mime: String,
    pub rtx_payload_type: Option<u8>,
    pub mapped_rtx_payload_type: Option<u8>,
    /// RTP clock rate (Hz): jitter and sender-report timestamps.
    pub clock_rate: u32,
}

#[derive(Clone, Debug)]
pub struct EncodingSpec {
    pub ssrc: Option<u32>,
    pub rtx_ssrc: Option<u32>,
    pub rid: Option<String>,
    pub mapped_ssrc: u32,
}

#[derive(Clone, Debug)]
pub struct ExtSpec {
    pub id: u8,
    pub router_id: Option<u8>,
    pub uri: String,
}

#[derive(Clone, Debug)]
pub struct ProducerSpec {
    pub video: bool,
    pub mid: Option<String>,
    pub codecs: Vec<CodecSpec>,
    pub encodings: Vec<EncodingSpec>,
    pub header_extensions: Vec<ExtSpec>,
    pub key_frame_request: Option<KeyFrameMethod>,
    pub paused: bool,
    /// The producer negotiated plain `nack`: gaps are NACKed upstream and its RTX accepted.
    pub nack: bool,
}

#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    pub ssrc: u32,
    pub rtx_ssrc: Option<u32>,
    pub mid: Option<String>,
    pub mid_ext_id: Option<u8>,
    /// router PT → consumer PT
    pub payload_types: Vec<(u8, u8)>,
    pub paused: bool,
    /// Which producer encoding (stream) this consumer follows; simulcast layer selection is
    /// not implemented yet.
    pub encoding: usize,
    /// router PT → consumer RTX PT, for retransmissions (none: resend the plain packet).
    pub rtx_payload_types: Vec<(u8, u8)>,
    /// The viewer negotiated plain `nack`: its NACKs are answered.
    pub nack: bool,
    /// CNAME for the SDES item of the sender reports.
    pub cname: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Errors of control calls

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterError {
    /// No such handle (→ KeyError).
    Unknown(String),
    /// Handle in use, bad spec, bad keys (→ ValueError).
    Invalid(String),
}

impl std::fmt::Display for RouterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouterError::Unknown(s) | RouterError::Invalid(s) => f.write_str(s),
        }
    }
}

pub(super) type Result<T> = std::result::Result<T, RouterError>;

pub(super) fn unknown(kind: &str, h: Handle) -> RouterError {
    RouterError::Unknown(format!("unknown {kind} handle {h}"))
}

pub(super) fn invalid(msg: impl Into<String>) -> RouterError {
    RouterError::Invalid(msg.into())
}
