//! What the control plane passes in (producer and consumer specs) and what control calls
//! answer when they fail.
//!
//! The specs are the engine's typed contract with Python, declared once here: the engine
//! takes them from Python dicts as they are (`#[derive(FromPyObject)]`, keys = field names;
//! `pysfu/_native.pyi` mirrors them for the type checker). Nothing else in the router
//! touches Python.

use pyo3::FromPyObject;

use super::Handle;

/// MID, RID and repaired-RID header extensions: producer streams are learnt by them.
pub const URI_MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
pub const URI_RID: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
pub const URI_RRID: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
/// Transport-wide sequence numbers: recorded for feedback toward the sender, not forwarded.
pub const URI_TRANSPORT_CC: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
/// AV1 RTP Dependency Descriptor: read for AV1 and H264 decode target selection (dd.rs).
pub const URI_DEPENDENCY_DESCRIPTOR: &str = "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";

// ---------------------------------------------------------------------------------------
// Specs

/// How a producer is asked for a key frame (`key_frame_request`: "pli", "fir" or None).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyFrameMethod {
    Pli,
    Fir,
}

/// One transport's SRTP keys, as the DTLS exporter gave them: built once by the control plane
/// (`pysfu.dtls.SrtpKeys`, read by attribute) and handed over whole with `set_srtp`. "local"
/// protects what we send, "remote" what the peer sends.
#[derive(Clone, Debug, FromPyObject)]
pub struct SrtpKeys {
    /// The negotiated profile's name ("AES_CM_128_HMAC_SHA1_80", "AEAD_AES_256_GCM", ...).
    pub profile: String,
    pub local_key: Vec<u8>,
    pub local_salt: Vec<u8>,
    pub remote_key: Vec<u8>,
    pub remote_salt: Vec<u8>,
}

impl SrtpKeys {
    pub fn new(profile: &str, local_key: &[u8], local_salt: &[u8], remote_key: &[u8], remote_salt: &[u8]) -> Self {
        Self {
            profile: profile.to_owned(),
            local_key: local_key.to_vec(),
            local_salt: local_salt.to_vec(),
            remote_key: remote_key.to_vec(),
            remote_salt: remote_salt.to_vec(),
        }
    }
}

#[derive(Clone, Debug, FromPyObject)]
#[pyo3(from_item_all)]
pub struct CodecSpec {
    pub payload_type: u8,
    pub mapped_payload_type: u8,
    pub mime: String,
    #[pyo3(default)]
    pub rtx_payload_type: Option<u8>,
    #[pyo3(default)]
    pub mapped_rtx_payload_type: Option<u8>,
    /// RTP clock rate (Hz): jitter and sender-report timestamps (none: 90000 for video,
    /// 48000 for audio).
    #[pyo3(default)]
    pub clock_rate: Option<u32>,
}

#[derive(Clone, Debug, FromPyObject)]
#[pyo3(from_item_all)]
pub struct EncodingSpec {
    #[pyo3(default)]
    pub ssrc: Option<u32>,
    #[pyo3(default)]
    pub rtx_ssrc: Option<u32>,
    #[pyo3(default)]
    pub rid: Option<String>,
    pub mapped_ssrc: u32,
}

#[derive(Clone, Debug, FromPyObject)]
#[pyo3(from_item_all)]
pub struct ExtSpec {
    pub id: u8,
    #[pyo3(default)]
    pub router_id: Option<u8>,
    pub uri: String,
}

#[derive(Clone, Debug, FromPyObject)]
#[pyo3(from_item_all)]
pub struct ProducerSpec {
    /// From `kind`: "video" or "audio".
    #[pyo3(item("kind"), from_py_with = py::kind_is_video)]
    pub video: bool,
    #[pyo3(default)]
    pub mid: Option<String>,
    pub codecs: Vec<CodecSpec>,
    pub encodings: Vec<EncodingSpec>,
    #[pyo3(default, from_py_with = py::extensions)]
    pub header_extensions: Vec<ExtSpec>,
    #[pyo3(default, from_py_with = py::key_frame_method)]
    pub key_frame_request: Option<KeyFrameMethod>,
    #[pyo3(default)]
    pub paused: bool,
    /// The producer negotiated plain `nack`: gaps are NACKed upstream and its RTX accepted.
    #[pyo3(default)]
    pub nack: bool,
}

#[derive(Clone, Debug, FromPyObject)]
#[pyo3(from_item_all)]
pub struct ConsumerSpec {
    pub ssrc: u32,
    #[pyo3(default)]
    pub rtx_ssrc: Option<u32>,
    #[pyo3(default)]
    pub mid: Option<String>,
    #[pyo3(default)]
    pub mid_ext_id: Option<u8>,
    /// router PT → consumer PT (a dict in Python)
    #[pyo3(from_py_with = py::pairs)]
    pub payload_types: Vec<(u8, u8)>,
    #[pyo3(default)]
    pub paused: bool,
    /// Which producer encoding (stream) this consumer follows (a simulcast consumer starts on
    /// the highest and moves by layer choice).
    #[pyo3(default)]
    pub encoding: usize,
    /// router PT → consumer RTX PT, for retransmissions (none: resend the plain packet).
    #[pyo3(default, from_py_with = py::opt_pairs)]
    pub rtx_payload_types: Vec<(u8, u8)>,
    /// The viewer negotiated plain `nack`: its NACKs are answered (default: true).
    #[pyo3(default = true)]
    pub nack: bool,
    /// CNAME for the SDES item of the sender reports.
    #[pyo3(default)]
    pub cname: Option<String>,
    /// A pipe consumer (router to router) when not empty: every producer encoding is
    /// forwarded, encoding i with SSRC `pipe_ssrcs[i].0` (retransmissions as RTX with
    /// `pipe_ssrcs[i].1`, if any), sequence numbers and timestamps as the producer sent them.
    #[pyo3(default)]
    pub pipe_ssrcs: Vec<(u32, Option<u32>)>,
    /// VP9 SVC (a producer with one encoding whose scalabilityMode has layers): its spatial
    /// and temporal layer counts and whether it is k-SVC (`_KEY`). Layers are filtered per
    /// consumer (svc.rs).
    #[pyo3(default)]
    pub svc: Option<(u8, u8, bool)>,
    /// The viewer negotiated transport-wide sequence numbers with this extension id: every
    /// packet the transport sends carries one, and its transport-cc feedback feeds the
    /// send-side estimate (bwe/send_side.rs).
    #[pyo3(default)]
    pub tcc_ext_id: Option<u8>,
}

/// The Python shapes the derive does not take as they are.
mod py {
    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;
    use pyo3::types::PyDict;

    use super::{ExtSpec, KeyFrameMethod};

    pub(super) fn kind_is_video(v: &Bound<'_, PyAny>) -> PyResult<bool> {
        match v.extract::<String>()?.as_str() {
            "video" => Ok(true),
            "audio" => Ok(false),
            other => Err(PyValueError::new_err(format!("kind {other:?} is not audio/video"))),
        }
    }

    pub(super) fn key_frame_method(v: &Bound<'_, PyAny>) -> PyResult<Option<KeyFrameMethod>> {
        if v.is_none() {
            return Ok(None);
        }
        match v.extract::<String>()?.as_str() {
            "pli" => Ok(Some(KeyFrameMethod::Pli)),
            "fir" => Ok(Some(KeyFrameMethod::Fir)),
            other => Err(PyValueError::new_err(format!("key_frame_request {other:?} is not pli/fir/None"))),
        }
    }

    /// None: no extensions.
    pub(super) fn extensions(v: &Bound<'_, PyAny>) -> PyResult<Vec<ExtSpec>> {
        if v.is_none() {
            return Ok(Vec::new());
        }
        v.extract()
    }

    /// A dict of payload types {int: int}, in its order.
    pub(super) fn pairs(v: &Bound<'_, PyAny>) -> PyResult<Vec<(u8, u8)>> {
        let d = v.cast::<PyDict>().map_err(|_| PyValueError::new_err("expected a dict"))?;
        d.iter().map(|(k, v)| Ok((k.extract()?, v.extract()?))).collect()
    }

    /// `pairs`, None: none.
    pub(super) fn opt_pairs(v: &Bound<'_, PyAny>) -> PyResult<Vec<(u8, u8)>> {
        if v.is_none() {
            return Ok(Vec::new());
        }
        pairs(v)
    }
}

/// What a removal took with it: every producer and consumer it removed (the named one
/// included). The router alone decides the cascade (a transport takes its producers and
/// consumers, a producer its consumers); the control plane updates its registries from this.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub producers: Vec<Handle>,
    pub consumers: Vec<Handle>,
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
