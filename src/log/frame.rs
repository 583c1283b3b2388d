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
    prefix_of(len, crc)
}

/// A CRC-32C (Castagnoli, as [`crc32c::crc32c`] computes it) that the caller
/// already knows for the bytes of a body part from `from` to its end: a
/// checksum it verified on the way in. The writer combines it into the
/// frame's checksum instead of reading those bytes a second time; the frame
/// on disk is the same as one checksummed the ordinary way.
///
/// The claim is trusted: a wrong one writes a frame that recovery rejects as
/// corrupt. Debug builds check it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownCrc {
    pub from: usize,
    pub crc: u32,
}

/// [`frame_prefix`] of the body `head ++ tail`, where `known`, if given,
/// is the CRC-32C of `tail[known.from..]`: only `head` and `tail[..from]`
/// are read, the rest is a [`crc32c_combine`].
pub fn frame_prefix_known(head: &[u8], tail: &[u8], known: Option<KnownCrc>) -> [u8; FRAME_PREFIX] {
    let len = 4 + head.len() + tail.len();
    let Some(known) = known.filter(|k| k.from <= tail.len()) else {
        return frame_prefix(&[head, tail]);
    };
    debug_assert_eq!(crc32c::crc32c(&tail[known.from..]), known.crc, "a KnownCrc that does not match its bytes");
    let front = crc32c::crc32c_append(crc32c::crc32c(head), &tail[..known.from]);
    prefix_of(len, crc32c_combine(front, known.crc, (tail.len() - known.from) as u64))
}

fn prefix_of(len: usize, crc: u32) -> [u8; FRAME_PREFIX] {
    let mut out = [0u8; FRAME_PREFIX];
    out[..4].copy_from_slice(&(len as u32).to_le_bytes());
    out[4..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The CRC-32C polynomial, bit-reflected.
const POLY: u32 = 0x82F6_3B78;

/// `a * b mod P` over GF(2), both reflected (bit 31 is x^0).
const fn multmodp(a: u32, mut b: u32) -> u32 {
    let mut p = 0u32;
    let mut i = 0;
    while i < 32 {
        if a & (1 << (31 - i)) != 0 {
            p ^= b;
        }
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        i += 1;
    }
    p
}

/// `X2N[k]` is x^(2^k) mod P.
const X2N: [u32; 64] = {
    let mut t = [0u32; 64];
    let mut p = 1u32 << 30; // x^1
    let mut k = 0;
    while k < 64 {
        t[k] = p;
        p = multmodp(p, p);
        k += 1;
    }
    t
};

/// x^(n * 2^k) mod P.
fn x2nmodp(mut n: u64, mut k: usize) -> u32 {
    let mut p = 1u32 << 31; // x^0
    while n != 0 {
        if n & 1 != 0 {
            p = multmodp(X2N[k & 63], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The CRC-32C of `a ++ b` from `crc(a)`, `crc(b)` and `b`'s length, in
/// about `popcount(len_b) + 1` multiplications of 32 steps each (zlib's
/// `crc32_combine` method). The `crc32c` crate's own `crc32c_combine` squares
/// 32x32 matrices per bit of the length: slower than reading 16 KiB again
/// with the CPU's CRC instruction, so not used here.
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    // Shifting crc_a by len_b zero bytes (3: 2^3 bits a byte).
    multmodp(x2nmodp(len_b, 3), crc_a) ^ crc_b
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

    #[test]
    fn combine_agrees_with_direct_computation_at_the_edges() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for split in [0, 1, 7, 21, 4096, 65_536, 69_999, 70_000] {
            let (a, b) = data.split_at(split);
            let direct = crc32c::crc32c(&data);
            assert_eq!(crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len() as u64), direct, "split at {split}");
            assert_eq!(crc32c::crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len()), direct, "the crate agrees at {split}");
        }
    }

    proptest! {
        #[test]
        fn combine_is_the_crc_of_the_concatenation(a in proptest::collection::vec(any::<u8>(), 0..600), b in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let mut ab = a.clone();
            ab.extend_from_slice(&b);
            prop_assert_eq!(crc32c_combine(crc32c::crc32c(&a), crc32c::crc32c(&b), b.len() as u64), crc32c::crc32c(&ab));
        }

        #[test]
        fn a_known_crc_gives_the_same_frame(
            head in proptest::collection::vec(any::<u8>(), 1..100),
            tail in proptest::collection::vec(any::<u8>(), 0..2000),
            from in any::<usize>(),
        ) {
            let from = from % (tail.len() + 1);
            let known = KnownCrc { from, crc: crc32c::crc32c(&tail[from..]) };
            prop_assert_eq!(frame_prefix_known(&head, &tail, Some(known)), frame_prefix(&[&head, &tail]));
            prop_assert_eq!(frame_prefix_known(&head, &tail, None), frame_prefix(&[&head, &tail]));
        }

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
