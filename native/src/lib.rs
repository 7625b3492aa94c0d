//! pysfu data plane. Python sees only `pysfu._native`; everything per-packet stays here.

mod bytes;
pub mod nack;
pub mod reports;
pub mod rtcp;
pub mod rtp;
pub mod seq;
pub mod srtp;

pub mod budget;
pub mod engine;
pub mod fasthash;
pub mod io;
pub mod plain_io;
pub mod router;
pub mod stun_check;
pub mod stun_peek;
pub mod twcc;
pub mod bwe;
pub mod layers;
pub mod vp8;
pub mod vp9;
pub mod wake;

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
    Ok(())
}
