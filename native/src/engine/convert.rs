//! Python-side conversions: router errors as exceptions, addresses, specs (the router's own
//! types, `FromPyObject` in router/spec.rs; a failure is a ValueError), removal answers.

use super::*;

pub(super) fn router_err(e: RouterError) -> PyErr {
    match e {
        RouterError::Unknown(m) => PyKeyError::new_err(m),
        RouterError::Invalid(m) => PyValueError::new_err(m),
    }
}

pub(super) fn parse_addr(ip: &str, port: u16) -> PyResult<SocketAddr> {
    let ip: IpAddr = ip.parse().map_err(|_| PyValueError::new_err(format!("bad IP address {ip:?}")))?;
    Ok(SocketAddr::new(ip, port))
}

/// A remote from Python: ip, port and "udp" or "tcp".
pub(super) fn parse_remote(ip: &str, port: u16, protocol: &str) -> PyResult<Remote> {
    let via = Via::from_name(protocol).ok_or_else(|| PyValueError::new_err(format!("bad protocol {protocol:?}")))?;
    Ok(Remote { addr: parse_addr(ip, port)?, via })
}


// Specs: the router's own types (FromPyObject, router/spec.rs); a failure is a ValueError

/// Take a spec (`what`: "producer spec", "consumer spec") from a Python dict.
pub(super) fn extract_spec<T>(v: &Bound<'_, PyAny>, what: &str) -> PyResult<T>
where
    T: for<'a, 'py> FromPyObject<'a, 'py, Error = PyErr>,
{
    if !v.is_instance_of::<PyDict>() {
        return Err(PyValueError::new_err(format!("{what}: expected a dict")));
    }
    v.extract::<T>().map_err(|e| spec_error(v.py(), what, e))
}

/// One message for an extraction failure and its causes ("producer spec: failed to extract
/// field ProducerSpec.codecs: failed to extract field CodecSpec.payload_type: …").
pub(super) fn spec_error(py: Python<'_>, what: &str, e: PyErr) -> PyErr {
    let mut msg = what.to_owned();
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.is_instance_of::<PyKeyError>(py) {
            msg.push_str(&format!(": missing key {}", e.value(py)));
        } else {
            msg.push_str(&format!(": {}", e.value(py)));
        }
        cause = e.cause(py);
    }
    PyValueError::new_err(msg)
}

/// A removal's answer for Python (`Removed` in pysfu/_native.pyi).
pub(super) fn removed_dict<'py>(py: Python<'py>, removed: &Removed) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("producers", &removed.producers)?;
    d.set_item("consumers", &removed.consumers)?;
    Ok(d)
}
