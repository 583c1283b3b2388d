//! Record framing: `[u32 len][u32 crc32c][body; len - 4]`, little endian.
//!
//! `len` counts the crc and the body, so a zeroed tail (a preallocated or
//! never-written page) reads as `len == 0`, which is never valid. The body is
//! opaque here; the store gives it meaning.

use crate::limits::RECORD_BYTES_MAX;

/// Bytes before the body: length and checksum.
pub const FRAME_PREFIX: usize = 8;

/// What reading a frame at some offset of a buffer found.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameRead<'a> {
    /// A whole, checksummed record: its body, and the total bytes it spans.
    Record { body: &'a [u8], total: usize },
    /// The buffer ends inside the record (or inside its prefix).
    Truncated,
    /// The bytes are not a record: bad length or checksum mismatch.
    Invalid(&'static str),
}

/// Reads one frame from the front of `buf`. Bounded: never trusts `len` beyond
/// [`RECORD_BYTES_MAX`] and never reads past `buf`.
pub fn read_frame(buf: &[u8]) -> FrameRead<'_> {
    let Some(prefix) = buf.get(..FRAME_PREFIX) else {
        return FrameRead::Truncated;
    };
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let crc = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    if len < 5 {
        // A body is at least its kind byte; 0 is the zeroed-tail case.
        return FrameRead::Invalid("record length too small");
    }
    if len - 4 > RECORD_BYTES_MAX + BODY_OVERHEAD_MAX {
        return FrameRead::Invalid("record length over the maximum");
    }
    let total = 4 + len;
    let Some(body) = buf.get(FRAME_PREFIX..total) else {
        return FrameRead::Truncated;
    };
    if crc32c::crc32c(body) != crc {
        return FrameRead::Invalid("checksum mismatch");
    }
    FrameRead::Record { body, total }
}

/// Room for the store's own fields around a payload of [`RECORD_BYTES_MAX`].
pub const BODY_OVERHEAD_MAX: usize = 64 * 1024 + 4096 * 16;

/// Writes the frame prefix for `body_parts` into `prefix`.
pub fn frame_prefix(body_parts: &[&[u8]]) -> [u8; FRAME_PREFIX] {
    let mut crc = 0u32;
    let mut len = 4usize;
    for part in body_parts {
        crc = crc32c::crc32c_append(crc, part);
        len += part.len();
    }
    let mut out = [0u8; FRAME_PREFIX];
    out[..4].copy_from_slice(&(len as u32).to_le_bytes());
    out[4..].copy_from_slice(&crc.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = frame_prefix(&[body]).to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn roundtrip_and_split_parts_agree() {
        let whole = frame(b"hello world");
        let mut split = frame_prefix(&[b"hello", b" world"]).to_vec();
        split.extend_from_slice(b"hello world");
        assert_eq!(whole, split);
        assert_eq!(read_frame(&whole), FrameRead::Record { body: b"hello world", total: whole.len() });
    }

    #[test]
    fn zeroed_tail_is_invalid_not_a_record() {
        assert!(matches!(read_frame(&[0u8; 64]), FrameRead::Invalid(_)));
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic_and_stay_in_bounds(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
            match read_frame(&buf) {
                FrameRead::Record { body, total } => {
                    prop_assert!(total <= buf.len());
                    prop_assert_eq!(body.len() + FRAME_PREFIX, total);
                }
                FrameRead::Truncated | FrameRead::Invalid(_) => {}
            }
        }

        #[test]
        fn every_truncation_of_a_record_is_truncated(body in proptest::collection::vec(any::<u8>(), 1..200), cut in 0usize..208) {
            let f = frame(&body);
            let cut = cut.min(f.len() - 1);
            prop_assert_eq!(read_frame(&f[..cut]), FrameRead::Truncated);
        }

        #[test]
        fn a_flipped_bit_is_detected(body in proptest::collection::vec(any::<u8>(), 1..200), at in any::<usize>(), bit in 0u8..8) {
            let mut f = frame(&body);
            let at = FRAME_PREFIX + at % body.len();
            f[at] ^= 1 << bit;
            prop_assert!(matches!(read_frame(&f), FrameRead::Invalid(_)));
        }
    }
}
