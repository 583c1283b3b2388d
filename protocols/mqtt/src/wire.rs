//! Primitive wire types (spec 1.5): a bounds-checked reader over one packet's bytes and
//! a write sink that is also used to measure, so lengths and bytes cannot disagree.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};

/// Largest value of a variable byte integer (4 bytes of 7 bits).
pub const VARIABLE_BYTE_INTEGER_MAX: u32 = 268_435_455;

/// Largest string or binary field: the 2-byte length prefix.
const FIELD_MAX: usize = u16::MAX as usize;

/// Cursor over the body of one packet. Every read checks the remaining length, so a
/// declared length can never make us read (or allocate) past the packet.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(DecodeError::UnexpectedEnd);
        }
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(DecodeError::UnexpectedEnd);
        }
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(DecodeError::UnexpectedEnd);
        }
        Ok(self.buf.get_u32())
    }

    pub fn vbi(&mut self) -> Result<u32, DecodeError> {
        match read_vbi(&self.buf)? {
            Some((value, len)) => {
                self.buf.advance(len);
                Ok(value)
            }
            None => Err(DecodeError::UnexpectedEnd),
        }
    }

    /// The next `len` bytes, zero-copy.
    pub fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < len {
            return Err(DecodeError::UnexpectedEnd);
        }
        Ok(self.buf.split_to(len))
    }

    /// Binary Data: 2-byte length then bytes.
    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// UTF-8 Encoded String: valid UTF-8 and no U+0000 (spec 1.5.4; surrogates cannot
    /// occur in valid UTF-8).
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        let text = std::str::from_utf8(&raw).map_err(|_| DecodeError::InvalidUtf8)?;
        if text.contains('\0') {
            return Err(DecodeError::NullCharacter);
        }
        Ok(text.to_owned())
    }

    /// Everything left, zero-copy.
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// The packet must have been consumed exactly.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes { count: self.buf.len() })
        }
    }
}

/// Decodes a variable byte integer from the front of `buf`: `Ok(None)` if more bytes are
/// needed, the value and its length otherwise. A continuation bit on the 4th byte is
/// malformed (spec 1.5.5). Non-minimal encodings (0x80 0x00) are accepted; the spec asks
/// senders for the minimum, and rejecting them protects nothing.
pub(crate) fn read_vbi(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (index, byte) in buf.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((value, index + 1)));
        }
    }
    if buf.len() >= 4 {
        return Err(DecodeError::MalformedVariableByteInteger);
    }
    Ok(None)
}

pub(crate) fn vbi_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Where encoded bytes go. The encoder runs every packet through a [`Measure`] first
/// (lengths, limits) and then through the output buffer, so both see the same fields.
pub(crate) trait Sink {
    fn u8(&mut self, value: u8);
    fn u16(&mut self, value: u16);
    fn u32(&mut self, value: u32);
    fn vbi(&mut self, value: u32);
    fn raw(&mut self, bytes: &[u8]);
    /// A 2-byte length prefix then the bytes.
    fn binary(&mut self, bytes: &[u8]);
    /// Marks the packet as not encodable; only the measuring pass acts on it.
    fn fail(&mut self, error: EncodeError);

    fn string(&mut self, text: &str) {
        self.binary(text.as_bytes());
    }
}

/// Counts bytes and records the first reason the packet cannot be encoded.
#[derive(Default)]
pub(crate) struct Measure {
    pub len: usize,
    pub error: Option<EncodeError>,
}

impl Sink for Measure {
    fn u8(&mut self, _: u8) {
        self.len += 1;
    }
    fn u16(&mut self, _: u16) {
        self.len += 2;
    }
    fn u32(&mut self, _: u32) {
        self.len += 4;
    }
    fn vbi(&mut self, value: u32) {
        if value > VARIABLE_BYTE_INTEGER_MAX {
            self.fail(EncodeError::IntegerTooLarge(value));
        }
        self.len += vbi_len(value);
    }
    fn raw(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
    }
    fn binary(&mut self, bytes: &[u8]) {
        if bytes.len() > FIELD_MAX {
            self.fail(EncodeError::FieldTooLong(bytes.len()));
        }
        self.len += 2 + bytes.len();
    }
    fn fail(&mut self, error: EncodeError) {
        self.error.get_or_insert(error);
    }
}

/// Only reached after a successful [`Measure`] pass, so lengths fit their prefixes.
impl Sink for BytesMut {
    fn u8(&mut self, value: u8) {
        self.put_u8(value);
    }
    fn u16(&mut self, value: u16) {
        self.put_u16(value);
    }
    fn u32(&mut self, value: u32) {
        self.put_u32(value);
    }
    fn vbi(&mut self, mut value: u32) {
        loop {
            let mut byte = (value & 0x7F) as u8;
            value >>= 7;
            if value > 0 {
                byte |= 0x80;
            }
            self.put_u8(byte);
            if value == 0 {
                break;
            }
        }
    }
    fn raw(&mut self, bytes: &[u8]) {
        self.put_slice(bytes);
    }
    fn binary(&mut self, bytes: &[u8]) {
        // Truncating cast is unreachable: Measure rejected longer fields.
        self.put_u16(bytes.len().min(FIELD_MAX) as u16);
        self.put_slice(bytes);
    }
    fn fail(&mut self, _: EncodeError) {}
}
