//! Kafka record batches (magic 2) as the broker handles them: validated on
//! produce (length, magic, CRC-32C) and stored byte-exact, the base offset
//! rewritten on fetch, and messages of other protocols encoded on the fly as
//! one-record batches.
//!
//! Layout of the 61-byte header (big endian):
//! ```text
//!  0 baseOffset i64        | not covered by the CRC: the broker assigns
//!  8 batchLength i32       | (bytes after this field)
//! 12 partitionLeaderEpoch  | not covered either
//! 16 magic i8
//! 17 crc u32 (CRC-32C of bytes 21..end)
//! 21 attributes i16        | bits 0-2 compression, 3 timestamp type, 4 transactional, 5 control
//! 23 lastOffsetDelta i32
//! 27 baseTimestamp i64
//! 35 maxTimestamp i64
//! 43 producerId i64
//! 51 producerEpoch i16
//! 53 baseSequence i32
//! 57 recordCount i32
//! 61 records...
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use polymq::record::Message;

pub const HEADER_BYTES: usize = 61;
/// Where the bytes the batch CRC covers start.
pub const CRC_START: usize = 21;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

/// The fields of a batch header the broker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub magic: i8,
    /// The CRC-32C of bytes [`CRC_START`].. as the header states it; checked
    /// against the bytes by [`validate_produce`], not by [`header`].
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
    /// Last sequence number in the batch (sequences wrap at i32::MAX, as Kafka's do).
    pub fn last_sequence(&self) -> i32 {
        let last = i64::from(self.base_sequence) + i64::from(self.record_count) - 1;
        if last > i64::from(i32::MAX) {
            (last - i64::from(i32::MAX) - 1) as i32
        } else {
            last as i32
        }
    }
}

/// Why a produced batch is refused; maps to the Kafka error code Apache
/// Kafka answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Length fields do not add up, or the CRC does not match: CORRUPT_MESSAGE (2).
    #[error("corrupt record batch: {0}")]
    Corrupt(&'static str),
    /// Magic 0/1 in a Produce v3+, more than one batch, or no records:
    /// INVALID_RECORD (87), as Kafka's ProduceRequest.validateRecords.
    #[error("invalid record batch: {0}")]
    Invalid(&'static str),
}

impl BatchError {
    pub fn code(&self) -> i16 {
        match self {
            BatchError::Corrupt(_) => 2,
            BatchError::Invalid(_) => 87,
        }
    }
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Reads the header of a stored (already validated) batch; `None` if it is
/// too short to be one.
pub fn header(b: &[u8]) -> Option<BatchHeader> {
    if b.len() < HEADER_BYTES {
        return None;
    }
    Some(BatchHeader {
        magic: b[16] as i8,
        crc: u32::from_be_bytes([b[17], b[18], b[19], b[20]]),
        attributes: i16_at(b, 21),
        last_offset_delta: i32_at(b, 23),
        base_timestamp: i64_at(b, 27),
        max_timestamp: i64_at(b, 35),
        producer_id: i64_at(b, 43),
        producer_epoch: i16_at(b, 51),
        base_sequence: i32_at(b, 53),
        record_count: i32_at(b, 57),
    })
}

/// Validates the `records` of one partition of a Produce request: exactly
/// one magic-2 batch whose length fields and CRC-32C are right. Returns the
/// batch (a slice of the request, not a copy) and its header, whose `crc`
/// is then the verified CRC-32C of `batch[CRC_START..]`.
pub fn validate_produce(records: &Bytes) -> Result<(Bytes, BatchHeader), BatchError> {
    if records.len() < 17 {
        return Err(BatchError::Corrupt("shorter than a batch header"));
    }
    // The magic byte sits at the same place in every message format.
    if records[16] != 2 {
        return Err(BatchError::Invalid("Produce v3+ only carries record batches with magic 2"));
    }
    if records.len() < HEADER_BYTES {
        return Err(BatchError::Corrupt("shorter than a batch header"));
    }
    let batch_length = i32_at(records, 8);
    if batch_length < (HEADER_BYTES - 12) as i32 {
        return Err(BatchError::Corrupt("batch length below the header size"));
    }
    let total = 12 + batch_length as usize;
    if total > records.len() {
        return Err(BatchError::Corrupt("batch length beyond the records"));
    }
    if total < records.len() {
        return Err(BatchError::Invalid("Produce v3+ carries exactly one record batch"));
    }
    let crc = u32::from_be_bytes([records[17], records[18], records[19], records[20]]);
    if crc32c::crc32c(&records[CRC_START..total]) != crc {
        return Err(BatchError::Corrupt("CRC-32C mismatch"));
    }
    let h = header(records).ok_or(BatchError::Corrupt("shorter than a batch header"))?;
    if h.record_count <= 0 || h.last_offset_delta < 0 || i64::from(h.last_offset_delta) + 1 != i64::from(h.record_count) {
        return Err(BatchError::Invalid("record count and last offset delta disagree"));
    }
    if h.is_control() {
        return Err(BatchError::Invalid("clients do not produce control batches"));
    }
    Ok((records.slice(..total), h))
}

/// Appends a stored batch to a fetch response with its base offset set to
/// the offset the core assigned (and the leader epoch to ours, 0); neither
/// is covered by the CRC, so the client's CRC check still passes.
pub fn put_stored(out: &mut BytesMut, stored: &[u8], base_offset: u64) {
    out.put_slice(&stored_prefix(stored, base_offset));
    out.put_slice(&stored[STORED_PREFIX..]);
}

/// The bytes of a stored batch a fetch rewrites: they precede the magic byte.
pub const STORED_PREFIX: usize = 16;

/// The first [`STORED_PREFIX`] bytes of a stored batch as a fetch sends them
/// (see [`put_stored`]); the rest, `stored[STORED_PREFIX..]`, goes as it is.
pub fn stored_prefix(stored: &[u8], base_offset: u64) -> [u8; STORED_PREFIX] {
    let mut p = [0u8; STORED_PREFIX];
    p[..8].copy_from_slice(&(base_offset as i64).to_be_bytes());
    p[8..12].copy_from_slice(&stored[8..12]);
    // partition leader epoch: ours, 0 (p[12..16] stays zero)
    p
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_varbytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// Encodes a message of another protocol (MQTT, AMQP) as a one-record v2
/// batch at `offset`: key, value, headers and timestamp, with a correct CRC.
/// The key is the message's topic (`:topic`, an AMQP publish to `amq.topic`
/// keyed by its MQTT-form topic) or its key; empty is sent as null (Kafka
/// partitioners treat null as "no key"). Headers are mapped by
/// `polymq::mapping::record_headers_from`: user properties as they are, the
/// shared properties under documented names, the broker's own dropped.
pub fn put_foreign(out: &mut BytesMut, msg: &Message, offset: u64) {
    let key = polymq::mapping::topic_of(&msg.key, &msg.headers);
    let headers = polymq::mapping::record_headers_from(&msg.headers);
    let mut record = Vec::with_capacity(32 + key.len() + msg.payload.len());
    record.push(0); // record attributes
    put_varint(&mut record, 0); // timestamp delta
    put_varint(&mut record, 0); // offset delta
    put_varbytes(&mut record, if key.is_empty() { None } else { Some(&key) });
    put_varbytes(&mut record, Some(&msg.payload));
    put_varint(&mut record, headers.len() as i64);
    for (k, v) in &headers {
        put_varbytes(&mut record, Some(k));
        put_varbytes(&mut record, Some(v));
    }
    let mut length = Vec::with_capacity(5);
    put_varint(&mut length, record.len() as i64);

    let ts = msg.timestamp_ms as i64;
    let mut crced = Vec::with_capacity(40 + length.len() + record.len());
    crced.put_i16(0); // attributes: no compression, create time
    crced.put_i32(0); // last offset delta
    crced.put_i64(ts);
    crced.put_i64(ts);
    crced.put_i64(-1); // producer id
    crced.put_i16(-1); // producer epoch
    crced.put_i32(-1); // base sequence
    crced.put_i32(1); // record count
    crced.extend_from_slice(&length);
    crced.extend_from_slice(&record);

    out.put_i64(offset as i64);
    out.put_i32((4 + 1 + 4 + crced.len()) as i32);
    out.put_i32(0); // partition leader epoch
    out.put_i8(2);
    out.put_u32(crc32c::crc32c(&crced));
    out.put_slice(&crced);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    fn record(i: i64) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: 7,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: 10 + i as i32,
            timestamp: 1_700_000_000_000 + i,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("v{i}"))),
            headers: Default::default(),
        }
    }

    fn encoded(n: i64) -> Bytes {
        let records: Vec<_> = (0..n).map(record).collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(&mut buf, records.iter(), &RecordEncodeOptions { version: 2, compression: Compression::None })
            .expect("encode");
        buf.freeze()
    }

    #[test]
    fn a_valid_batch_passes_with_its_header() {
        let b = encoded(3);
        let (batch, h) = validate_produce(&b).expect("valid");
        assert_eq!(batch.len(), b.len());
        assert_eq!((h.record_count, h.last_offset_delta, h.producer_id, h.base_sequence), (3, 2, 7, 10));
        assert_eq!(h.max_timestamp, 1_700_000_000_002);
        assert_eq!(h.last_sequence(), 12);
    }

    #[test]
    fn corruption_and_old_magic_get_kafkas_errors() {
        let b = encoded(2);
        let mut bad = b.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(validate_produce(&Bytes::from(bad)).expect_err("must fail").code(), 2);
        let mut magic1 = b.to_vec();
        magic1[16] = 1;
        assert_eq!(validate_produce(&Bytes::from(magic1)).expect_err("must fail").code(), 87);
        let mut two = b.to_vec();
        two.extend_from_slice(&b);
        assert_eq!(validate_produce(&Bytes::from(two)).expect_err("must fail").code(), 87);
        assert_eq!(validate_produce(&b.slice(..b.len() - 1)).expect_err("must fail").code(), 2);
        assert_eq!(validate_produce(&b.slice(..10)).expect_err("must fail").code(), 2);
    }

    #[test]
    fn the_base_offset_is_rewritten_and_the_crc_still_holds() {
        let b = encoded(2);
        let mut out = BytesMut::new();
        put_stored(&mut out, &b, 41);
        let sets = RecordBatchDecoder::decode_all(&mut out.freeze()).expect("decodes with its CRC");
        let offsets: Vec<i64> = sets[0].records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![41, 42]);
    }

    #[test]
    fn foreign_messages_become_one_record_batches() {
        let msg = Message {
            key: Bytes::from("sensors/dev42/temp"),
            headers: vec![(Bytes::from("h"), Bytes::from("x"))],
            payload: Bytes::from("21.5"),
            timestamp_ms: 1_700_000_000_123,
            ..Message::default()
        };
        let mut out = BytesMut::new();
        put_foreign(&mut out, &msg, 9);
        let sets = RecordBatchDecoder::decode_all(&mut out.freeze()).expect("decodes with its CRC");
        let r = &sets[0].records[0];
        assert_eq!((r.offset, r.timestamp), (9, 1_700_000_000_123));
        assert_eq!(r.key.as_deref(), Some(&b"sensors/dev42/temp"[..]));
        assert_eq!(r.value.as_deref(), Some(&b"21.5"[..]));
        assert_eq!(r.headers.get(&b"h"[..]).cloned().flatten().as_deref(), Some(&b"x"[..]));
    }
}
