//! A bounded reader for Kafka request bodies.
//!
//! Every read checks the bytes left before it takes them, and every array
//! count is checked against them too: each element of a Kafka array takes at
//! least one byte on the wire, so a count above the bytes left cannot be a
//! real request and is refused before anything is allocated. Collections
//! grow from the elements actually decoded (never `with_capacity(count)`),
//! so what a request can make us allocate is proportional to its size.
//!
//! "Flexible" versions (KIP-482) use compact strings, bytes and arrays
//! (unsigned varint length + 1) and tagged fields; the callers pass the
//! `flexible` flag of the request's version.

use bytes::Bytes;

/// Why a request body could not be decoded. The connection that sent it is
/// closed (what Kafka brokers do with a malformed request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("request truncated: {0} needs more bytes than are left")]
    Truncated(&'static str),
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("array of {count} elements cannot fit the {left} bytes left")]
    ArrayTooLong { count: u64, left: usize },
}

pub type WireResult<T> = Result<T, WireError>;

/// Preallocation never exceeds this many elements; vectors grow from there.
const PREALLOC_MAX: usize = 64;

/// Reads a request body from the front. Cloning `Bytes` slices is cheap, so
/// record batches are handed on without copying.
#[derive(Debug, Clone)]
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// What is left, consumed.
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    fn take(&mut self, n: usize, what: &'static str) -> WireResult<Bytes> {
        if n > self.buf.len() {
            return Err(WireError::Truncated(what));
        }
        Ok(self.buf.split_to(n))
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> WireResult<[u8; N]> {
        let b = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&b);
        Ok(out)
    }

    pub fn i8(&mut self) -> WireResult<i8> {
        Ok(i8::from_be_bytes(self.array("int8")?))
    }
    pub fn bool(&mut self) -> WireResult<bool> {
        Ok(self.i8()? != 0)
    }
    pub fn i16(&mut self) -> WireResult<i16> {
        Ok(i16::from_be_bytes(self.array("int16")?))
    }
    pub fn i32(&mut self) -> WireResult<i32> {
        Ok(i32::from_be_bytes(self.array("int32")?))
    }
    pub fn i64(&mut self) -> WireResult<i64> {
        Ok(i64::from_be_bytes(self.array("int64")?))
    }
    pub fn uuid(&mut self) -> WireResult<[u8; 16]> {
        self.array("uuid")
    }

    /// Unsigned LEB128, at most 5 bytes (32 bits).
    pub fn uvarint(&mut self) -> WireResult<u32> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let b = self.array::<1>("varint")?[0];
            if i == 4 && b > 0x0f {
                return Err(WireError::Invalid("varint longer than 32 bits"));
            }
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Invalid("varint longer than 5 bytes"))
    }

    /// Zig-zag signed varint (record fields).
    pub fn varint(&mut self) -> WireResult<i32> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i32) ^ -((u & 1) as i32))
    }

    /// A length: int16 (strings) / int32 (bytes, arrays) when not flexible,
    /// unsigned varint minus one when flexible. `None` is null (-1 / 0).
    fn length(&mut self, flexible: bool, short: bool, what: &'static str) -> WireResult<Option<usize>> {
        let n: i64 = if flexible {
            i64::from(self.uvarint()?) - 1
        } else if short {
            i64::from(self.i16()?)
        } else {
            i64::from(self.i32()?)
        };
        match n {
            -1 => Ok(None),
            n if n < 0 => Err(WireError::Invalid(what)),
            n => Ok(Some(n as usize)),
        }
    }

    pub fn nullable_bytes(&mut self, flexible: bool) -> WireResult<Option<Bytes>> {
        match self.length(flexible, false, "bytes length")? {
            None => Ok(None),
            Some(n) => Ok(Some(self.take(n, "bytes")?)),
        }
    }

    pub fn bytes(&mut self, flexible: bool) -> WireResult<Bytes> {
        self.nullable_bytes(flexible)?.ok_or(WireError::Invalid("null bytes"))
    }

    pub fn nullable_string(&mut self, flexible: bool) -> WireResult<Option<String>> {
        match self.length(flexible, true, "string length")? {
            None => Ok(None),
            Some(n) => {
                let b = self.take(n, "string")?;
                String::from_utf8(b.to_vec()).map(Some).map_err(|_| WireError::Invalid("string is not UTF-8"))
            }
        }
    }

    pub fn string(&mut self, flexible: bool) -> WireResult<String> {
        self.nullable_string(flexible)?.ok_or(WireError::Invalid("null string"))
    }

    /// An array's element count, checked against the bytes left.
    pub fn array_len(&mut self, flexible: bool) -> WireResult<Option<usize>> {
        let n = self.length(flexible, false, "array length")?;
        if let Some(n) = n {
            if n > self.buf.len() {
                return Err(WireError::ArrayTooLong { count: n as u64, left: self.buf.len() });
            }
        }
        Ok(n)
    }

    /// A nullable array, each element read by `item`.
    pub fn nullable_array<T>(&mut self, flexible: bool, mut item: impl FnMut(&mut Reader) -> WireResult<T>) -> WireResult<Option<Vec<T>>> {
        let Some(n) = self.array_len(flexible)? else { return Ok(None) };
        let mut out = Vec::with_capacity(n.min(PREALLOC_MAX));
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(Some(out))
    }

    /// An array; null reads as empty.
    pub fn array_of<T>(&mut self, flexible: bool, item: impl FnMut(&mut Reader) -> WireResult<T>) -> WireResult<Vec<T>> {
        Ok(self.nullable_array(flexible, item)?.unwrap_or_default())
    }

    /// Skips a tagged-field section (flexible versions only; a no-op otherwise).
    pub fn tagged_fields(&mut self, flexible: bool) -> WireResult<()> {
        if !flexible {
            return Ok(());
        }
        let count = self.uvarint()? as usize;
        if count > self.buf.len() {
            return Err(WireError::ArrayTooLong { count: count as u64, left: self.buf.len() });
        }
        for _ in 0..count {
            let _tag = self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.take(size, "tagged field")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(b: &[u8]) -> Reader {
        Reader::new(Bytes::copy_from_slice(b))
    }

    #[test]
    fn fixed_width_integers_are_big_endian() {
        let mut x = r(&[0xff, 0x01, 0x02, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(x.i8().expect("must succeed"), -1);
        assert_eq!(x.i16().expect("must succeed"), 0x0102);
        assert_eq!(x.i32().expect("must succeed"), 256);
        assert_eq!(x.i64().expect("must succeed"), 2);
        assert_eq!(x.i8(), Err(WireError::Truncated("int8")));
    }

    #[test]
    fn varints() {
        assert_eq!(r(&[0x96, 0x01]).uvarint().expect("must succeed"), 150);
        assert_eq!(r(&[0xff, 0xff, 0xff, 0xff, 0x0f]).uvarint().expect("must succeed"), u32::MAX);
        assert!(r(&[0xff, 0xff, 0xff, 0xff, 0x1f]).uvarint().is_err());
        assert!(r(&[0x80, 0x80]).uvarint().is_err());
        assert_eq!(r(&[0x01]).varint().expect("must succeed"), -1);
        assert_eq!(r(&[0x02]).varint().expect("must succeed"), 1);
    }

    #[test]
    fn strings_classic_and_compact() {
        assert_eq!(r(&[0, 2, b'h', b'i']).string(false).expect("must succeed"), "hi");
        assert_eq!(r(&[0xff, 0xff]).nullable_string(false).expect("must succeed"), None);
        assert_eq!(r(&[3, b'h', b'i']).string(true).expect("must succeed"), "hi");
        assert_eq!(r(&[0]).nullable_string(true).expect("must succeed"), None);
        assert!(r(&[0, 5, b'h']).string(false).is_err());
        assert!(r(&[0, 1, 0xff]).string(false).is_err());
    }

    #[test]
    fn an_array_count_beyond_the_bytes_left_is_refused_before_allocating() {
        // i32::MAX elements announced in 4 bytes.
        let err = r(&[0x7f, 0xff, 0xff, 0xff]).array_of(false, |x| x.i64()).expect_err("must fail");
        assert_eq!(err, WireError::ArrayTooLong { count: i32::MAX as u64, left: 0 });
        let err = r(&[0xff, 0xff, 0xff, 0xff, 0x0f]).array_of(true, |x| x.i8()).expect_err("must fail");
        assert!(matches!(err, WireError::ArrayTooLong { .. }));
        assert_eq!(r(&[0, 0, 0, 2, 0, 1, 0, 2]).array_of(false, |x| x.i16()).expect("must succeed"), vec![1, 2]);
        assert_eq!(r(&[0xff, 0xff, 0xff, 0xff]).nullable_array(false, |x| x.i8()).expect("must succeed"), None);
    }

    #[test]
    fn tagged_fields_are_skipped() {
        let mut x = r(&[2, 0, 1, 9, 5, 2, 7, 7, 42]);
        x.tagged_fields(true).expect("must succeed");
        assert_eq!(x.i8().expect("must succeed"), 42);
        assert!(r(&[1, 0, 3, 1]).tagged_fields(true).is_err());
        assert!(r(&[9]).tagged_fields(true).is_err());
    }
}
