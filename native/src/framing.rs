//! RFC 4571 framing (RTP, RTCP, STUN and DTLS over a TCP connection, as RFC 6544 ICE-TCP
//! uses it): each packet is preceded by its length, 16 bits big-endian. Sans-IO: bytes in →
//! frames out (`Deframer`), frame in → bytes out (`encode`). No socket, no clock.

/// Largest frame a `Deframer` accepts by default: the engine's receive slot (a UDP datagram
/// larger than this is dropped as truncated; a TCP frame larger than this ends the stream).
pub const MAX_FRAME: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A length prefix above the deframer's limit: the stream cannot be trusted further.
    TooLong(usize),
    /// A zero length prefix (no packet is empty: a peer sending one is not speaking RFC 4571).
    Empty,
    /// `encode`: a payload that does not fit a 16-bit length.
    Oversize(usize),
}

/// Splits a byte stream into frames. Holds at most one incomplete frame (≤ 2 + `max` bytes).
/// After an error the stream is out of sync: the caller closes it (further input is refused).
#[derive(Debug)]
pub struct Deframer {
    buf: Vec<u8>,
    max: usize,
    failed: Option<FrameError>,
}

impl Deframer {
    pub fn new(max: usize) -> Self {
        Deframer { buf: Vec::new(), max: max.min(u16::MAX as usize), failed: None }
    }

    /// Bytes held of an incomplete frame (its prefix included).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feed bytes read from the stream; `on_frame` gets each complete frame, in order. On an
    /// error the frames before it were delivered and nothing after it is.
    pub fn feed(&mut self, mut data: &[u8], mut on_frame: impl FnMut(&[u8])) -> Result<(), FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        // Complete the frame held from the previous read.
        if !self.buf.is_empty() {
            if self.buf.len() < 2 {
                let take = (2 - self.buf.len()).min(data.len());
                self.buf.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.buf.len() < 2 {
                    return Ok(());
                }
                let len = self.check(u16::from_be_bytes([self.buf[0], self.buf[1]]) as usize)?;
                self.buf.reserve(len);
            }
            let len = u16::from_be_bytes([self.buf[0], self.buf[1]]) as usize;
            let take = (2 + len - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < 2 + len {
                return Ok(());
            }
            on_frame(&self.buf[2..]);
            self.buf.clear();
        }
        // Whole frames straight from the input, no copy.
        while data.len() >= 2 {
            let len = self.check(u16::from_be_bytes([data[0], data[1]]) as usize)?;
            if data.len() < 2 + len {
                break;
            }
            on_frame(&data[2..2 + len]);
            data = &data[2 + len..];
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn check(&mut self, len: usize) -> Result<usize, FrameError> {
        let e = if len == 0 {
            FrameError::Empty
        } else if len > self.max {
            FrameError::TooLong(len)
        } else {
            return Ok(len);
        };
        self.failed = Some(e);
        self.buf.clear();
        Err(e)
    }
}

/// Append `payload` as one frame (length prefix, then the bytes) to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if payload.is_empty() {
        return Err(FrameError::Empty);
    }
    let len = u16::try_from(payload.len()).map_err(|_| FrameError::Oversize(payload.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(d: &mut Deframer, data: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut got = Vec::new();
        d.feed(data, |f| got.push(f.to_vec()))?;
        Ok(got)
    }

    fn stream(payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut s = Vec::new();
        for p in payloads {
            encode(p, &mut s).unwrap();
        }
        s
    }

    #[test]
    fn whole_frames_in_one_read() {
        let payloads: Vec<Vec<u8>> = (1..20u8).map(|i| vec![i; i as usize * 7]).collect();
        let mut d = Deframer::new(MAX_FRAME);
        assert_eq!(frames(&mut d, &stream(&payloads)).unwrap(), payloads);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_frames() {
        let payloads: Vec<Vec<u8>> = vec![vec![1; 1], vec![2; 300], vec![3; 2], vec![4; MAX_FRAME]];
        let s = stream(&payloads);
        for chunk in [1, 2, 3, 5, 7, 64, 301, 1000] {
            let mut d = Deframer::new(MAX_FRAME);
            let mut got = Vec::new();
            for c in s.chunks(chunk) {
                d.feed(c, |f| got.push(f.to_vec())).unwrap();
                assert!(d.buffered() <= 2 + MAX_FRAME);
            }
            assert_eq!(got, payloads, "chunk {chunk}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn a_partial_frame_waits_for_the_rest() {
        let s = stream(&[vec![9; 10]]);
        let mut d = Deframer::new(MAX_FRAME);
        assert!(frames(&mut d, &s[..1]).unwrap().is_empty());
        assert_eq!(d.buffered(), 1);
        assert!(frames(&mut d, &s[1..6]).unwrap().is_empty());
        assert_eq!(d.buffered(), 6);
        assert_eq!(frames(&mut d, &s[6..]).unwrap(), vec![vec![9; 10]]);
    }

    #[test]
    fn a_length_over_the_limit_fails_and_stays_failed() {
        let mut d = Deframer::new(100);
        let mut s = stream(&[vec![1; 5]]);
        s.extend_from_slice(&[0, 101]);
        s.extend_from_slice(&[0; 101]);
        let mut got = Vec::new();
        assert_eq!(d.feed(&s, |f| got.push(f.to_vec())), Err(FrameError::TooLong(101)));
        assert_eq!(got, vec![vec![1; 5]], "the frame before the bad prefix was delivered");
        assert_eq!(d.buffered(), 0);
        assert_eq!(frames(&mut d, &stream(&[vec![1; 5]])), Err(FrameError::TooLong(101)));
        // A prefix split across reads is checked once complete.
        let mut d = Deframer::new(100);
        assert!(frames(&mut d, &[0xff]).unwrap().is_empty());
        assert_eq!(frames(&mut d, &[0xff]), Err(FrameError::TooLong(0xffff)));
    }

    #[test]
    fn a_zero_length_frame_fails() {
        let mut d = Deframer::new(MAX_FRAME);
        assert_eq!(frames(&mut d, &[0, 0, 0, 1, 7]), Err(FrameError::Empty));
    }

    #[test]
    fn encode_limits() {
        let mut out = Vec::new();
        assert_eq!(encode(&[], &mut out), Err(FrameError::Empty));
        assert_eq!(encode(&vec![0; 65536], &mut out), Err(FrameError::Oversize(65536)));
        encode(&vec![5; 65535], &mut out).unwrap();
        assert_eq!(&out[..2], &[0xff, 0xff]);
        assert_eq!(out.len(), 65537);
    }
}
