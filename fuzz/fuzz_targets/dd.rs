//! AV1 dependency descriptor: parsing never panics, whatever the bytes and whatever
//! structure an earlier descriptor left behind; a refused descriptor leaves the stream's
//! structure as it was; an accepted one's fields stay within its structure's limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pysfu_native::dd::{DdStream, MAX_DECODE_TARGETS, MAX_TEMPLATES};

fuzz_target!(|data: &[u8]| {
    // The input is a sequence of descriptors, each preceded by its length byte.
    let mut st = DdStream::new();
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = (n as usize).min(tail.len());
        let (ext, tail) = tail.split_at(n);
        rest = tail;
        let before = st.structure().cloned();
        match st.parse(ext) {
            Ok(d) => {
                let s = st.structure().expect("an accepted descriptor has a structure");
                assert!(s.templates.len() <= MAX_TEMPLATES);
                assert!(usize::from(s.decode_targets) <= MAX_DECODE_TARGETS);
                assert_eq!(s.target_layers.len(), usize::from(s.decode_targets));
                assert!(usize::from(s.chains) <= usize::from(s.decode_targets));
                assert!(s.protected_by.iter().all(|&c| c < s.chains));
                assert!(d.spatial <= s.max_spatial());
                assert!(d.fdiffs.as_slice().iter().all(|&f| f >= 1));
                assert_eq!(d.chain_diffs.as_slice().len(), usize::from(s.chains));
                if !d.new_structure {
                    assert_eq!(Some(s), before.as_ref());
                }
            }
            Err(_) => assert_eq!(st.structure(), before.as_ref()),
        }
    }
});
