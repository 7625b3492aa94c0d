//! pysfu data plane. Python sees only `pysfu._native`; everything per-packet stays here.

mod bytes;
pub mod framing;
pub mod remote;
pub mod tcp;
pub mod poller;
pub mod nack;
pub mod reports;
pub mod rtcp;
pub mod rtp;
pub mod seq;
pub mod srtp;
pub mod hmac_sha1;
pub mod aes_ctr;

pub mod budget;
pub mod affinity;
pub mod engine;
pub mod fasthash;
pub mod gso;
pub mod io;
pub mod plain_io;
pub mod router;
pub mod stun_check;
pub mod stun_peek;
pub mod twcc;
pub mod bwe;
pub mod layers;
pub mod layer_rates;
pub mod vp8;
pub mod vp9;
pub mod svc;
pub mod wake;
pub mod workers;
pub mod sealing;
pub mod prefetch;
pub mod dcep;
pub mod dd;
pub mod dd_filter;
pub mod sctp;
pub mod dtls_seal;

use pyo3::prelude::*;

/// Version of the native engine, for logs and benchmark records.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_class::<engine::Engine>()?;
    m.add_class::<sctp::SctpAssociation>()?;
    m.add_function(wrap_pyfunction!(sctp::sctp_fanout, m)?)?;
    m.add_function(wrap_pyfunction!(sctp::sctp_associations, m)?)?;
    // ICE-TCP limits (tcp.rs), for the control plane's documentation and the tests.
    m.add("MAX_TCP_CONNECTIONS", tcp::MAX_TCP_CONNECTIONS)?;
    m.add("MAX_TCP_PER_IP", tcp::MAX_TCP_PER_IP)?;
    m.add("MAX_TCP_UNPROVEN_PER_IP", tcp::MAX_TCP_UNPROVEN_PER_IP)?;
    m.add("TCP_STUN_DEADLINE", tcp::TCP_STUN_DEADLINE.as_secs_f64())?;
    m.add("TCP_IDLE_TIMEOUT", tcp::TCP_IDLE_TIMEOUT.as_secs_f64())?;
    m.add("TCP_STALL_DEADLINE", tcp::TCP_STALL_DEADLINE.as_secs_f64())?;
    m.add("TCP_WRITE_QUEUE_BYTES", tcp::TCP_WRITE_QUEUE_BYTES)?;
    Ok(())
}
