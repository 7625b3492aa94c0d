//! AES-128-CTR (`aes_ctr::Aes128Ctr`): the wide path against the `aes`/`ctr` crates' keystream
//! for any key, counter and length, counters about to wrap in their low 32 bits included
//! (those fall back). Nothing panics; the bytes are the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pysfu_native::aes_ctr::Aes128Ctr;

fuzz_target!(|input: &[u8]| {
    let Some((head, data)) = input.split_first_chunk::<32>() else { return };
    let key: [u8; 16] = head[..16].try_into().expect("16 bytes");
    let mut iv: [u8; 16] = head[16..].try_into().expect("16 bytes");
    // Half the inputs: a low counter word a few blocks from wrapping.
    if iv[0] & 1 == 1 {
        let back = u32::from(iv[1] % 8);
        iv[12..].copy_from_slice(&(u32::MAX - back).to_be_bytes());
    }
    let ctr = Aes128Ctr::new(&key);
    let (mut fast, mut slow) = (data.to_vec(), data.to_vec());
    ctr.apply(&iv, &mut fast);
    ctr.apply_portable(&iv, &mut slow);
    assert_eq!(fast, slow);
    // Applying it again gives the input back.
    ctr.apply(&iv, &mut fast);
    assert_eq!(fast, data);
});
