//! The records of a stored record batch (format [`FORMAT`]: a Kafka magic-2
//! batch kept byte-exact), for protocols that deliver
//! records one by one (AMQP stream consumers, routing into the topic space).
//!
//! Decompression is pure Rust (gzip: flate2 over miniz_oxide, snappy: snap,
//! with or without the xerial framing Java clients use, lz4: lz4_flex's frame
//! decoder, Kafka's lz4 being the LZ4 frame format, zstd: ruzstd) and bounded:
//! a batch whose records take more than `max_bytes` decompressed is refused
//! before more than `max_bytes + 1` bytes are ever allocated for it.

use std::io::Read;

use bytes::Bytes;

/// `polymq::record::Message::format` of a payload that is one record batch
/// (Kafka magic 2), byte-exact as the producer sent it; key and headers are
/// empty, `span` is its record count. Other protocols decode the records
/// they need with [`decode`].
pub const FORMAT: u8 = 1;

/// Bytes of a batch header before its records.
const HEADER_BYTES: usize = 61;

/// One record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord {
    /// Offset within the batch: the record's offset is the batch's base + this.
    pub offset_delta: u32,
    /// Unix ms.
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// Header values may be null.
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchDecodeError {
    #[error("not a record batch: {0}")]
    Malformed(&'static str),
    #[error("unsupported compression codec {0}")]
    Codec(u8),
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("records take more than {0} bytes decompressed")]
    TooLarge(usize),
}

/// Whether the batch is a control batch (transaction markers: no user records).
pub fn is_control(batch: &[u8]) -> bool {
    batch.len() >= HEADER_BYTES && i16::from_be_bytes([batch[21], batch[22]]) & 0x20 != 0
}

/// Decodes every record of a stored batch. `max_bytes` bounds the
/// decompressed record bytes (and, for uncompressed batches, nothing needs
/// bounding: the records are slices of `batch`).
pub fn decode(batch: &Bytes, max_bytes: usize) -> Result<Vec<BatchRecord>, BatchDecodeError> {
    if batch.len() < HEADER_BYTES || batch[16] != 2 {
        return Err(BatchDecodeError::Malformed("shorter than a magic-2 batch header"));
    }
    let total = 12 + i32::from_be_bytes([batch[8], batch[9], batch[10], batch[11]]).max(0) as usize;
    if total > batch.len() || total < HEADER_BYTES {
        return Err(BatchDecodeError::Malformed("batch length"));
    }
    let attributes = i16::from_be_bytes([batch[21], batch[22]]);
    let base_ts = i64::from_be_bytes(batch[27..35].try_into().map_err(|_| BatchDecodeError::Malformed("header"))?);
    let count = i32::from_be_bytes([batch[57], batch[58], batch[59], batch[60]]);
    if count < 0 {
        return Err(BatchDecodeError::Malformed("negative record count"));
    }
    let body = batch.slice(HEADER_BYTES..total);
    let records = match (attributes & 0x07) as u8 {
        0 => body,
        codec => Bytes::from(decompress(codec, &body, max_bytes)?),
    };
    let mut r = Cursor { b: records, at: 0 };
    // Each record takes at least 7 bytes: a count beyond that is a lie.
    let mut out = Vec::with_capacity((count as usize).min(r.b.len() / 7 + 1));
    for _ in 0..count {
        out.push(r.record(base_ts)?);
    }
    Ok(out)
}

fn bounded(mut reader: impl Read, max: usize) -> Result<Vec<u8>, BatchDecodeError> {
    let mut out = Vec::new();
    reader.by_ref().take(max as u64 + 1).read_to_end(&mut out).map_err(|e| BatchDecodeError::Decompress(e.to_string()))?;
    if out.len() > max {
        return Err(BatchDecodeError::TooLarge(max));
    }
    Ok(out)
}

const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";

fn decompress(codec: u8, body: &[u8], max: usize) -> Result<Vec<u8>, BatchDecodeError> {
    match codec {
        1 => bounded(flate2::read::MultiGzDecoder::new(body), max),
        2 if body.starts_with(XERIAL_MAGIC) => {
            // Java's xerial framing: magic, version, compatible version, then [len i32][raw snappy] blocks.
            let mut at = XERIAL_MAGIC.len() + 8;
            let mut out = Vec::new();
            while at < body.len() {
                let len = body.get(at..at + 4).ok_or(BatchDecodeError::Malformed("snappy block length"))?;
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                let block = body.get(at + 4..at + 4 + len).ok_or(BatchDecodeError::Malformed("snappy block"))?;
                snappy_raw(block, max - out.len(), &mut out)?;
                at += 4 + len;
            }
            Ok(out)
        }
        2 => {
            let mut out = Vec::new();
            snappy_raw(body, max, &mut out)?;
            Ok(out)
        }
        3 => bounded(lz4_flex::frame::FrameDecoder::new(body), max),
        4 => {
            let decoder = ruzstd::decoding::StreamingDecoder::new(body).map_err(|e| BatchDecodeError::Decompress(e.to_string()))?;
            bounded(decoder, max)
        }
        other => Err(BatchDecodeError::Codec(other)),
    }
}

/// Raw snappy states its decompressed length up front: checked before allocating.
fn snappy_raw(block: &[u8], room: usize, out: &mut Vec<u8>) -> Result<(), BatchDecodeError> {
    let len = snap::raw::decompress_len(block).map_err(|e| BatchDecodeError::Decompress(e.to_string()))?;
    if len > room {
        return Err(BatchDecodeError::TooLarge(room));
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new().decompress(block, &mut out[start..]).map_err(|e| BatchDecodeError::Decompress(e.to_string()))?;
    Ok(())
}

struct Cursor {
    b: Bytes,
    at: usize,
}

impl Cursor {
    fn varint(&mut self) -> Result<i64, BatchDecodeError> {
        let mut z: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.b.get(self.at).ok_or(BatchDecodeError::Malformed("truncated varint"))?;
            self.at += 1;
            z |= u64::from(byte & 0x7f) << shift.min(63);
            if byte & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(BatchDecodeError::Malformed("varint too long"))
    }

    fn bytes(&mut self) -> Result<Option<Bytes>, BatchDecodeError> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let end = self.at.checked_add(len as usize).filter(|e| *e <= self.b.len()).ok_or(BatchDecodeError::Malformed("field length"))?;
        let v = self.b.slice(self.at..end);
        self.at = end;
        Ok(Some(v))
    }

    fn record(&mut self, base_ts: i64) -> Result<BatchRecord, BatchDecodeError> {
        let len = self.varint()?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| self.at.checked_add(l))
            .filter(|e| *e <= self.b.len())
            .ok_or(BatchDecodeError::Malformed("record length"))?;
        self.at += 1; // attributes
        let ts_delta = self.varint()?;
        let offset_delta = u32::try_from(self.varint()?).map_err(|_| BatchDecodeError::Malformed("offset delta"))?;
        let key = self.bytes()?;
        let value = self.bytes()?;
        let n = self.varint()?;
        if n < 0 || n as usize > self.b.len() {
            return Err(BatchDecodeError::Malformed("header count"));
        }
        let mut headers = Vec::with_capacity((n as usize).min(64));
        for _ in 0..n {
            let name = self.bytes()?.ok_or(BatchDecodeError::Malformed("null header name"))?;
            headers.push((name, self.bytes()?));
        }
        if self.at != end {
            return Err(BatchDecodeError::Malformed("record length disagrees with its fields"));
        }
        Ok(BatchRecord { offset_delta, timestamp_ms: base_ts.saturating_add(ts_delta), key, value, headers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }

    fn varbytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
        match b {
            None => varint(out, -1),
            Some(b) => {
                varint(out, b.len() as i64);
                out.extend_from_slice(b);
            }
        }
    }

    fn records(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let mut r = vec![0u8];
            varint(&mut r, i as i64 * 10);
            varint(&mut r, i as i64);
            let key = format!("k{i}");
            varbytes(&mut r, if i == 0 { None } else { Some(key.as_bytes()) });
            varbytes(&mut r, Some(format!("value {i}").as_bytes()));
            varint(&mut r, 1);
            varbytes(&mut r, Some(b"h"));
            varbytes(&mut r, if i == 0 { None } else { Some(b"x") });
            varint(&mut out, r.len() as i64);
            out.extend_from_slice(&r);
        }
        out
    }

    fn batch(codec: u8, count: i32, body: &[u8]) -> Bytes {
        let mut b = vec![0u8; HEADER_BYTES];
        b[8..12].copy_from_slice(&((HEADER_BYTES - 12 + body.len()) as i32).to_be_bytes());
        b[16] = 2;
        b[21..23].copy_from_slice(&i16::from(codec).to_be_bytes());
        b[27..35].copy_from_slice(&1_000i64.to_be_bytes());
        b[57..61].copy_from_slice(&count.to_be_bytes());
        b.extend_from_slice(body);
        Bytes::from(b)
    }

    fn compress(codec: u8, raw: &[u8]) -> Vec<u8> {
        match codec {
            0 => raw.to_vec(),
            1 => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(raw).expect("gzip");
                e.finish().expect("gzip")
            }
            2 => snap::raw::Encoder::new().compress_vec(raw).expect("snappy"),
            3 => {
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(raw).expect("lz4");
                e.finish().expect("lz4")
            }
            4 => ruzstd::encoding::compress_to_vec(raw, ruzstd::encoding::CompressionLevel::Fastest),
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_codec_decodes_to_the_same_records() {
        let raw = records(3);
        for codec in 0..=4u8 {
            let got = decode(&batch(codec, 3, &compress(codec, &raw)), 1 << 20).unwrap_or_else(|e| panic!("codec {codec}: {e}"));
            assert_eq!(got.len(), 3, "codec {codec}");
            assert_eq!(got[0].key, None);
            assert_eq!(got[2].key.as_deref(), Some(&b"k2"[..]));
            assert_eq!(got[2].value.as_deref(), Some(&b"value 2"[..]));
            assert_eq!((got[2].offset_delta, got[2].timestamp_ms), (2, 1_020));
            assert_eq!(got[0].headers, vec![(Bytes::from_static(b"h"), None)]);
        }
    }

    #[test]
    fn xerial_framed_snappy_decodes() {
        let raw = records(2);
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        let block = snap::raw::Encoder::new().compress_vec(&raw).expect("snappy");
        framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
        framed.extend_from_slice(&block);
        assert_eq!(decode(&batch(2, 2, &framed), 1 << 20).expect("decodes").len(), 2);
    }

    #[test]
    fn a_zip_bomb_is_refused_at_the_cap() {
        let zeros = vec![0u8; 4 << 20];
        for codec in 1..=4u8 {
            let bomb = batch(codec, 1, &compress(codec, &zeros));
            assert!(bomb.len() < 1 << 20, "codec {codec} compresses zeros");
            assert_eq!(decode(&bomb, 1 << 20), Err(BatchDecodeError::TooLarge(1 << 20)), "codec {codec}");
        }
    }

    #[test]
    fn lying_counts_and_lengths_are_errors_not_panics() {
        let raw = records(2);
        assert!(decode(&batch(0, 3, &raw), 1 << 20).is_err(), "more records claimed than present");
        assert!(decode(&batch(0, i32::MAX, &raw), 1 << 20).is_err());
        assert!(decode(&batch(0, 2, &raw[..raw.len() - 1]), 1 << 20).is_err());
        assert!(decode(&batch(7, 1, &raw), 1 << 20).is_err());
        assert!(decode(&Bytes::from_static(b"short"), 1 << 20).is_err());
    }
}
