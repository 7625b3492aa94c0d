//! DCEP (RFC 8832) parser: no panic; an OPEN that parses builds back to bytes that parse to
//! the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pysfu_native::dcep;

fuzz_target!(|data: &[u8]| {
    if let Ok(dcep::Message::Open(open)) = dcep::parse(data) {
        let again = dcep::parse(&dcep::build_open(&open));
        assert_eq!(again, Ok(dcep::Message::Open(open)));
    }
});
