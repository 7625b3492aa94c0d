//! DTLS 1.2 record protection for application data of an established session (RFC 6347
//! §4.1, AEAD ciphers only: AES-GCM per RFC 5288, ChaCha20-Poly1305 per RFC 7905), so that the
//! SCTP packets of a data channel fan-out are sealed here rather than one pyOpenSSL call per
//! packet per consumer. The handshake, alerts and decryption stay with OpenSSL (pysfu.dtls):
//! it derives the keys (its master secret and randoms, TLS 1.2 key expansion) and hands this
//! the write side. AEAD itself is `ring`.
//!
//! Sequence numbers: OpenSSL keeps its own for the records it still writes in this epoch (a
//! close_notify); this sealer starts far above them (`SEQ_START`), so the two never reuse a
//! nonce. A peer accepts any record above the highest it has seen (the replay window), so
//! the jump costs nothing; OpenSSL's later records (below the window) may be dropped by the
//! peer, which only matters for a close_notify.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305};

/// Content type of application data.
pub const CONTENT_APPLICATION_DATA: u8 = 23;
/// DTLS 1.2 on the wire.
pub const DTLS_1_2: [u8; 2] = [0xfe, 0xfd];
/// The record header: type, version, epoch (2), sequence number (6), length (2).
pub const HEADER_LEN: usize = 13;
/// AES-GCM's explicit nonce in each record (RFC 5288 §3).
pub const GCM_EXPLICIT_NONCE_LEN: usize = 8;
pub const TAG_LEN: usize = 16;
/// The first sequence number this sealer uses (OpenSSL's records of the epoch stay below).
pub const SEQ_START: u64 = 1 << 32;
/// The largest sequence number (48 bits).
pub const SEQ_MAX: u64 = (1 << 48) - 1;
/// Largest plaintext of one record (TLS: 2^14).
pub const MAX_PLAINTEXT: usize = 1 << 14;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Cipher {
    /// From OpenSSL's cipher suite name (`SSL_get_cipher_name`); None: not AEAD or unknown
    /// (those sessions stay with pyOpenSSL).
    pub fn from_openssl(name: &str) -> Option<Cipher> {
        if name.ends_with("AES128-GCM-SHA256") {
            Some(Cipher::Aes128Gcm)
        } else if name.ends_with("AES256-GCM-SHA384") {
            Some(Cipher::Aes256Gcm)
        } else if name.ends_with("CHACHA20-POLY1305") {
            Some(Cipher::Chacha20Poly1305)
        } else {
            None
        }
    }

    pub fn key_len(self) -> usize {
        match self {
            Cipher::Aes128Gcm => 16,
            Cipher::Aes256Gcm | Cipher::Chacha20Poly1305 => 32,
        }
    }

    /// The fixed part of the nonce from the key block (client/server_write_IV).
    pub fn iv_len(self) -> usize {
        match self {
            Cipher::Aes128Gcm | Cipher::Aes256Gcm => 4,
            Cipher::Chacha20Poly1305 => 12,
        }
    }

    fn explicit_nonce_len(self) -> usize {
        match self {
            Cipher::Aes128Gcm | Cipher::Aes256Gcm => GCM_EXPLICIT_NONCE_LEN,
            Cipher::Chacha20Poly1305 => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealError {
    BadKey,
    TooLong,
    SequenceExhausted,
}

/// The write side of one DTLS session's epoch.
pub struct RecordSealer {
    cipher: Cipher,
    key: LessSafeKey,
    iv: [u8; 12],
    epoch: u16,
    seq: u64,
    pub sealed: u64,
}

impl RecordSealer {
    pub fn new(cipher: Cipher, key: &[u8], iv: &[u8], epoch: u16, seq: u64) -> Result<Self, SealError> {
        if key.len() != cipher.key_len() || iv.len() != cipher.iv_len() || seq > SEQ_MAX {
            return Err(SealError::BadKey);
        }
        let algorithm = match cipher {
            Cipher::Aes128Gcm => &AES_128_GCM,
            Cipher::Aes256Gcm => &AES_256_GCM,
            Cipher::Chacha20Poly1305 => &CHACHA20_POLY1305,
        };
        let key = UnboundKey::new(algorithm, key).map_err(|_| SealError::BadKey)?;
        let mut fixed = [0u8; 12];
        fixed[..iv.len()].copy_from_slice(iv);
        Ok(RecordSealer { cipher, key: LessSafeKey::new(key), iv: fixed, epoch, seq, sealed: 0 })
    }

    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// One application data record holding `plaintext`.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(SealError::TooLong);
        }
        if self.seq > SEQ_MAX {
            return Err(SealError::SequenceExhausted);
        }
        // epoch (2) | sequence number (6): the record's, the AAD's and GCM's explicit nonce.
        let epoch_seq = (u64::from(self.epoch) << 48 | self.seq).to_be_bytes();
        self.seq += 1;
        let explicit = self.cipher.explicit_nonce_len();
        let body_len = explicit + plaintext.len() + TAG_LEN;
        let mut aad = [0u8; 13];
        aad[..8].copy_from_slice(&epoch_seq);
        aad[8] = CONTENT_APPLICATION_DATA;
        aad[9..11].copy_from_slice(&DTLS_1_2);
        aad[11..13].copy_from_slice(&(plaintext.len() as u16).to_be_bytes());
        let mut nonce = self.iv;
        match self.cipher {
            Cipher::Aes128Gcm | Cipher::Aes256Gcm => nonce[4..].copy_from_slice(&epoch_seq),
            Cipher::Chacha20Poly1305 => {
                for (n, s) in nonce[4..].iter_mut().zip(epoch_seq) {
                    *n ^= s;
                }
            }
        }
        let mut record = Vec::with_capacity(HEADER_LEN + body_len);
        record.push(CONTENT_APPLICATION_DATA);
        record.extend_from_slice(&DTLS_1_2);
        record.extend_from_slice(&epoch_seq);
        record.extend_from_slice(&(body_len as u16).to_be_bytes());
        if explicit > 0 {
            record.extend_from_slice(&epoch_seq);
        }
        let start = record.len();
        record.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut record[start..])
            .map_err(|_| SealError::TooLong)?;
        record.extend_from_slice(tag.as_ref());
        self.sealed += 1;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};

    fn open(cipher: Cipher, key: &[u8], iv: &[u8], record: &[u8]) -> Vec<u8> {
        let algorithm = match cipher {
            Cipher::Aes128Gcm => &AES_128_GCM,
            Cipher::Aes256Gcm => &AES_256_GCM,
            Cipher::Chacha20Poly1305 => &CHACHA20_POLY1305,
        };
        let key = LessSafeKey::new(UnboundKey::new(algorithm, key).unwrap());
        let epoch_seq: [u8; 8] = record[3..11].try_into().unwrap();
        let mut nonce = [0u8; 12];
        nonce[..iv.len()].copy_from_slice(iv);
        let body = &record[HEADER_LEN..];
        let (nonce, ciphertext) = if cipher == Cipher::Chacha20Poly1305 {
            for (n, s) in nonce[4..].iter_mut().zip(epoch_seq) {
                *n ^= s;
            }
            (nonce, body)
        } else {
            nonce[4..].copy_from_slice(&body[..8]);
            (nonce, &body[8..])
        };
        let mut aad = [0u8; 13];
        aad[..8].copy_from_slice(&epoch_seq);
        aad[8] = record[0];
        aad[9..11].copy_from_slice(&record[1..3]);
        aad[11..13].copy_from_slice(&((ciphertext.len() - TAG_LEN) as u16).to_be_bytes());
        let mut buf = ciphertext.to_vec();
        let plain = key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf).unwrap();
        plain.to_vec()
    }

    #[test]
    fn every_cipher_round_trips_with_a_fresh_nonce_per_record() {
        for cipher in [Cipher::Aes128Gcm, Cipher::Aes256Gcm, Cipher::Chacha20Poly1305] {
            let key = vec![7u8; cipher.key_len()];
            let iv = vec![9u8; cipher.iv_len()];
            let mut s = RecordSealer::new(cipher, &key, &iv, 1, SEQ_START).unwrap();
            let a = s.seal(b"hello").unwrap();
            let b = s.seal(b"hello").unwrap();
            assert_ne!(a, b, "{cipher:?}: same plaintext, different records");
            assert_eq!(&a[..3], &[23, 0xfe, 0xfd]);
            assert_eq!(u16::from_be_bytes([a[3], a[4]]), 1, "epoch");
            assert_eq!(&a[5..11], &SEQ_START.to_be_bytes()[2..], "sequence number");
            assert_eq!(usize::from(u16::from_be_bytes([a[11], a[12]])), a.len() - HEADER_LEN);
            assert_eq!(open(cipher, &key, &iv, &a), b"hello");
            assert_eq!(open(cipher, &key, &iv, &b), b"hello");
            assert_eq!(s.next_seq(), SEQ_START + 2);
        }
    }

    #[test]
    fn bad_keys_long_plaintexts_and_the_end_of_the_sequence_are_refused() {
        assert!(RecordSealer::new(Cipher::Aes128Gcm, &[0; 32], &[0; 4], 1, 0).is_err());
        assert!(RecordSealer::new(Cipher::Chacha20Poly1305, &[0; 32], &[0; 4], 1, 0).is_err());
        let mut s = RecordSealer::new(Cipher::Aes128Gcm, &[0; 16], &[0; 4], 1, SEQ_MAX).unwrap();
        assert_eq!(s.seal(&vec![0; MAX_PLAINTEXT + 1]), Err(SealError::TooLong));
        assert!(s.seal(b"last").is_ok());
        assert_eq!(s.seal(b"one more"), Err(SealError::SequenceExhausted));
        assert_eq!(s.sealed, 1);
    }

    #[test]
    fn names_of_openssl_suites() {
        assert_eq!(Cipher::from_openssl("ECDHE-ECDSA-AES128-GCM-SHA256"), Some(Cipher::Aes128Gcm));
        assert_eq!(Cipher::from_openssl("ECDHE-RSA-AES256-GCM-SHA384"), Some(Cipher::Aes256Gcm));
        assert_eq!(Cipher::from_openssl("ECDHE-ECDSA-CHACHA20-POLY1305"), Some(Cipher::Chacha20Poly1305));
        assert_eq!(Cipher::from_openssl("ECDHE-ECDSA-AES128-SHA"), None);
    }
}
