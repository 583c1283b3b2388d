//! What a log record's body means to the store. Every change to durable state
//! is one of these, so replaying the log rebuilds the queue index exactly.
//!
//! Layout: `[u8 kind][...]`, little endian, every length-prefixed field
//! bounds-checked on decode. A message's payload is last so the writer can
//! send it from the caller's buffer without copying it into the head.

use bytes::{Buf, BufMut, Bytes};

use crate::queue::{QueueId, QueueOptions};
use crate::StoreError;

pub const KIND_MESSAGE: u8 = 1;
pub const KIND_DECLARE: u8 = 2;
pub const KIND_DELETE: u8 = 3;
pub const KIND_ACK: u8 = 4;
pub const KIND_GROUP_OFFSET: u8 = 5;
pub const KIND_DISPATCH: u8 = 6;
pub const KIND_REQUEUE: u8 = 7;
pub const KIND_BIND: u8 = 8;
pub const KIND_UNBIND: u8 = 9;
/// A message copied forward by compaction: same queues, same offsets.
pub const KIND_RELOCATED: u8 = 10;
/// Every committed offset of one consumer group is forgotten.
pub const KIND_GROUP_DELETE: u8 = 11;

/// [`Message::format`] of a message whose payload is key, headers and value
/// as the fields say (MQTT, AMQP).
pub const FORMAT_PLAIN: u8 = 0;
// Other values of [`Message::format`] are defined by the crate whose
// protocols write and read them (`polymq-formats`); the core stores the tag
// and never looks inside a payload.

/// A message as the protocols hand it to the core.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Kafka record key / MQTT topic / AMQP routing key.
    pub key: Bytes,
    /// Protocol-neutral properties (name, value).
    pub headers: Vec<(Bytes, Bytes)>,
    pub payload: Bytes,
    /// Producer timestamp; 0 means "now" (the append time).
    pub timestamp_ms: u64,
    /// Do not deliver before this time (delayed messages); 0 means now.
    pub deliver_at_ms: u64,
    /// Higher is delivered first, capped by the queue's max priority.
    pub priority: u8,
    /// FIFO message group: the next message of a group waits for the ack of the previous one.
    pub group: Option<Bytes>,
    /// Queue offsets this record occupies in a stream (a Kafka batch of N records spans N).
    pub span: u32,
    /// Opaque to the core: how the payload is encoded (e.g. a raw Kafka record batch).
    pub format: u8,
}

impl Message {
    pub fn new(payload: impl Into<Bytes>) -> Message {
        Message { payload: payload.into(), span: 1, ..Message::default() }
    }
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Message {
        self.key = key.into();
        self
    }
}

/// Fixed part of a message body before the variable fields.
pub(crate) struct MessageHead<'a> {
    pub relocated: bool,
    pub timestamp_ms: u64,
    pub dispatch: &'a [(QueueId, u64)],
    pub msg: &'a Message,
}

/// Encodes everything but the payload; the payload follows in the log as-is.
pub(crate) fn encode_message_head(h: &MessageHead<'_>, out: &mut Vec<u8>) {
    let m = h.msg;
    out.put_u8(if h.relocated { KIND_RELOCATED } else { KIND_MESSAGE });
    out.put_u8(m.format);
    out.put_u64_le(h.timestamp_ms);
    out.put_u64_le(m.deliver_at_ms);
    out.put_u8(m.priority);
    out.put_u32_le(m.span.max(1));
    out.put_u16_le(h.dispatch.len() as u16);
    for (q, off) in h.dispatch {
        out.put_u64_le(q.0);
        out.put_u64_le(*off);
    }
    let group = m.group.as_deref().unwrap_or(&[]);
    out.put_u16_le(group.len() as u16);
    out.put_slice(group);
    out.put_u32_le(m.key.len() as u32);
    out.put_slice(&m.key);
    out.put_u16_le(m.headers.len() as u16);
    for (k, v) in &m.headers {
        out.put_u16_le(k.len() as u16);
        out.put_slice(k);
        out.put_u32_le(v.len() as u32);
        out.put_slice(v);
    }
    out.put_u32_le(m.payload.len() as u32);
}

/// A decoded record. Message fields are slices of the body (`Bytes`, no copies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// `relocated`: a compaction copy of a record that was stored earlier.
    Message {
        relocated: bool,
        timestamp_ms: u64,
        dispatch: Vec<(QueueId, u64)>,
        msg: Message,
    },
    Declare {
        id: QueueId,
        name: String,
        opts: QueueOptions,
    },
    Delete {
        id: QueueId,
    },
    Ack {
        id: QueueId,
        offsets: Vec<u64>,
    },
    GroupOffset {
        id: QueueId,
        group: String,
        offset: u64,
    },
    /// Forget every committed offset of `group` (Kafka DeleteGroups).
    GroupDelete {
        group: String,
    },
    /// Index an already stored message into another queue (dead-lettering):
    /// stored once, indexed twice. `from` is removed in the same record.
    Dispatch {
        src_pos: u64,
        src_total: u32,
        id: QueueId,
        offset: u64,
        from: Option<(QueueId, u64)>,
    },
    /// A nack that requeued: delivery count and when it is visible again.
    Requeue {
        id: QueueId,
        offset: u64,
        deliveries: u32,
        visible_at_ms: u64,
    },
    /// A binding in a topic space; `pattern` is `Pattern::to_canonical`.
    Bind {
        space: String,
        pattern: String,
        id: QueueId,
    },
    Unbind {
        space: String,
        pattern: String,
        id: QueueId,
    },
}

pub(crate) fn encode(rec: &Record, out: &mut Vec<u8>) {
    match rec {
        Record::Message { relocated, timestamp_ms, dispatch, msg } => {
            encode_message_head(&MessageHead { relocated: *relocated, timestamp_ms: *timestamp_ms, dispatch, msg }, out);
            out.put_slice(&msg.payload);
        }
        Record::Declare { id, name, opts } => {
            out.put_u8(KIND_DECLARE);
            out.put_u64_le(id.0);
            out.put_u16_le(name.len() as u16);
            out.put_slice(name.as_bytes());
            opts.encode(out);
        }
        Record::Delete { id } => {
            out.put_u8(KIND_DELETE);
            out.put_u64_le(id.0);
        }
        Record::Ack { id, offsets } => {
            out.put_u8(KIND_ACK);
            out.put_u64_le(id.0);
            out.put_u32_le(offsets.len() as u32);
            for o in offsets {
                out.put_u64_le(*o);
            }
        }
        Record::GroupOffset { id, group, offset } => {
            out.put_u8(KIND_GROUP_OFFSET);
            out.put_u64_le(id.0);
            out.put_u16_le(group.len() as u16);
            out.put_slice(group.as_bytes());
            out.put_u64_le(*offset);
        }
        Record::GroupDelete { group } => {
            out.put_u8(KIND_GROUP_DELETE);
            out.put_u16_le(group.len() as u16);
            out.put_slice(group.as_bytes());
        }
        Record::Dispatch { src_pos, src_total, id, offset, from } => {
            out.put_u8(KIND_DISPATCH);
            out.put_u64_le(*src_pos);
            out.put_u32_le(*src_total);
            out.put_u64_le(id.0);
            out.put_u64_le(*offset);
            match from {
                Some((q, o)) => {
                    out.put_u8(1);
                    out.put_u64_le(q.0);
                    out.put_u64_le(*o);
                }
                None => out.put_u8(0),
            }
        }
        Record::Requeue { id, offset, deliveries, visible_at_ms } => {
            out.put_u8(KIND_REQUEUE);
            out.put_u64_le(id.0);
            out.put_u64_le(*offset);
            out.put_u32_le(*deliveries);
            out.put_u64_le(*visible_at_ms);
        }
        Record::Bind { space, pattern, id } | Record::Unbind { space, pattern, id } => {
            out.put_u8(if matches!(rec, Record::Bind { .. }) { KIND_BIND } else { KIND_UNBIND });
            out.put_u16_le(space.len() as u16);
            out.put_slice(space.as_bytes());
            out.put_u16_le(pattern.len() as u16);
            out.put_slice(pattern.as_bytes());
            out.put_u64_le(id.0);
        }
    }
}

/// A bounds-checked reader over a record body.
pub(crate) struct Reader {
    buf: Bytes,
}

fn short() -> StoreError {
    StoreError::InvalidArgument("record body is shorter than its fields".into())
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }
    fn need(&self, n: usize) -> Result<(), StoreError> {
        if self.buf.remaining() < n {
            Err(short())
        } else {
            Ok(())
        }
    }
    pub fn u8(&mut self) -> Result<u8, StoreError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    pub fn u16(&mut self) -> Result<u16, StoreError> {
        self.need(2)?;
        Ok(self.buf.get_u16_le())
    }
    pub fn u32(&mut self) -> Result<u32, StoreError> {
        self.need(4)?;
        Ok(self.buf.get_u32_le())
    }
    pub fn u64(&mut self) -> Result<u64, StoreError> {
        self.need(8)?;
        Ok(self.buf.get_u64_le())
    }
    pub fn bytes(&mut self, n: usize) -> Result<Bytes, StoreError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }
    pub fn string(&mut self, n: usize) -> Result<String, StoreError> {
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| StoreError::InvalidArgument("record string is not UTF-8".into()))
    }
}

pub(crate) fn decode(body: Bytes) -> Result<Record, StoreError> {
    let mut r = Reader::new(body);
    let kind = r.u8()?;
    let rec = match kind {
        KIND_MESSAGE | KIND_RELOCATED => {
            let format = r.u8()?;
            let timestamp_ms = r.u64()?;
            let deliver_at_ms = r.u64()?;
            let priority = r.u8()?;
            let span = r.u32()?;
            let n = r.u16()? as usize;
            r.need(n * 16)?;
            let mut dispatch = Vec::with_capacity(n);
            for _ in 0..n {
                dispatch.push((QueueId(r.u64()?), r.u64()?));
            }
            let glen = r.u16()? as usize;
            let group = if glen == 0 { None } else { Some(r.bytes(glen)?) };
            let klen = r.u32()? as usize;
            let key = r.bytes(klen)?;
            let hn = r.u16()? as usize;
            let mut headers = Vec::with_capacity(hn.min(r.buf.remaining() / 6));
            for _ in 0..hn {
                let kl = r.u16()? as usize;
                let k = r.bytes(kl)?;
                let vl = r.u32()? as usize;
                let v = r.bytes(vl)?;
                headers.push((k, v));
            }
            let plen = r.u32()? as usize;
            let payload = r.bytes(plen)?;
            Record::Message {
                relocated: kind == KIND_RELOCATED,
                timestamp_ms,
                dispatch,
                msg: Message { key, headers, payload, timestamp_ms, deliver_at_ms, priority, group, span, format },
            }
        }
        KIND_DECLARE => {
            let id = QueueId(r.u64()?);
            let n = r.u16()? as usize;
            let name = r.string(n)?;
            let opts = QueueOptions::decode(&mut r)?;
            Record::Declare { id, name, opts }
        }
        KIND_DELETE => Record::Delete { id: QueueId(r.u64()?) },
        KIND_ACK => {
            let id = QueueId(r.u64()?);
            let n = r.u32()? as usize;
            r.need(n.saturating_mul(8))?;
            let mut offsets = Vec::with_capacity(n);
            for _ in 0..n {
                offsets.push(r.u64()?);
            }
            Record::Ack { id, offsets }
        }
        KIND_GROUP_OFFSET => {
            let id = QueueId(r.u64()?);
            let n = r.u16()? as usize;
            let group = r.string(n)?;
            Record::GroupOffset { id, group, offset: r.u64()? }
        }
        KIND_GROUP_DELETE => {
            let n = r.u16()? as usize;
            Record::GroupDelete { group: r.string(n)? }
        }
        KIND_DISPATCH => {
            let src_pos = r.u64()?;
            let src_total = r.u32()?;
            let id = QueueId(r.u64()?);
            let offset = r.u64()?;
            let from = if r.u8()? == 1 { Some((QueueId(r.u64()?), r.u64()?)) } else { None };
            Record::Dispatch { src_pos, src_total, id, offset, from }
        }
        KIND_REQUEUE => Record::Requeue { id: QueueId(r.u64()?), offset: r.u64()?, deliveries: r.u32()?, visible_at_ms: r.u64()? },
        KIND_BIND | KIND_UNBIND => {
            let n = r.u16()? as usize;
            let space = r.string(n)?;
            let n = r.u16()? as usize;
            let pattern = r.string(n)?;
            let id = QueueId(r.u64()?);
            if kind == KIND_BIND {
                Record::Bind { space, pattern, id }
            } else {
                Record::Unbind { space, pattern, id }
            }
        }
        other => return Err(StoreError::InvalidArgument(format!("unknown record kind {other}"))),
    };
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(rec: Record) {
        let mut out = Vec::new();
        encode(&rec, &mut out);
        assert_eq!(decode(Bytes::from(out)).expect("decodes"), rec);
    }

    #[test]
    fn every_kind_roundtrips() {
        let q = QueueId::new(7, 3);
        let mut msg = Message::new("payload").with_key("a/b");
        msg.headers = vec![(Bytes::from("h"), Bytes::from("v"))];
        msg.group = Some(Bytes::from("g1"));
        msg.timestamp_ms = 42;
        msg.priority = 3;
        roundtrip(Record::Message {
            relocated: false,
            timestamp_ms: 42,
            dispatch: vec![(q, 9), (QueueId::new(1, 1), 0)],
            msg: msg.clone(),
        });
        roundtrip(Record::Message { relocated: true, timestamp_ms: 42, dispatch: vec![(q, 9)], msg });
        roundtrip(Record::Declare { id: q, name: "orders".into(), opts: QueueOptions::default() });
        roundtrip(Record::Delete { id: q });
        roundtrip(Record::Ack { id: q, offsets: vec![1, 2, 3] });
        roundtrip(Record::GroupOffset { id: q, group: "g".into(), offset: 5 });
        roundtrip(Record::GroupDelete { group: "kafka/g".into() });
        roundtrip(Record::Dispatch { src_pos: 100, src_total: 50, id: q, offset: 1, from: Some((QueueId::new(2, 0), 4)) });
        roundtrip(Record::Requeue { id: q, offset: 1, deliveries: 2, visible_at_ms: 99 });
        roundtrip(Record::Bind { space: "amq.topic".into(), pattern: "a/+/#".into(), id: q });
        roundtrip(Record::Unbind { space: "amq.topic".into(), pattern: "a/+/#".into(), id: q });
    }

    proptest! {
        #[test]
        fn decode_of_any_bytes_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(Bytes::from(buf));
        }
    }
}
