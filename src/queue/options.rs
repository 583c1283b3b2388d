use bytes::BufMut;

use crate::record::Reader;
use crate::StoreError;

/// How a queue is consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QueueKind {
    /// Consumed by message (pop/ack): an acked message leaves the queue.
    #[default]
    Queue,
    /// Consumed by offset (Kafka partition, AMQP stream): kept until retention.
    Stream,
}

/// Settings fixed when a queue is declared. Many queues share one copy (they
/// are interned), so an idle queue pays 4 bytes for its settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct QueueOptions {
    pub kind: QueueKind,
    /// Delete the queue after this long without use (AMQP x-expires, MQTT session expiry).
    pub idle_ttl_ms: Option<u64>,
    /// Deliveries after which a message is dead-lettered instead of redelivered.
    pub max_deliveries: Option<u32>,
    /// Where dead-lettered messages go; without it they are dropped.
    pub dead_letter: Option<String>,
    /// 0: no priorities. Otherwise message priorities are capped at this.
    pub max_priority: u8,
    /// Honour message groups: one message of a group in flight at a time, in order.
    pub fifo: bool,
    /// Pop at most this many messages per second (token bucket, 1 s burst).
    pub rate_per_sec: Option<u32>,
    /// Streams: drop batches older than this.
    pub retention_ms: Option<u64>,
    /// Streams: keep at most this many bytes (whole batches are dropped).
    pub retention_bytes: Option<u64>,
    /// Streams: keep at most this many batches, the newest (a last-value
    /// store, e.g. an MQTT retained message, is a stream keeping 1).
    pub retention_count: Option<u64>,
    /// Memory only: not declared in the log, gone after a restart (AMQP
    /// non-durable queues, MQTT clean sessions). A message whose targets are
    /// all transient is not written to the log at all.
    pub transient: bool,
}

const HAS_TTL: u16 = 1;
const HAS_MAX_DELIVERIES: u16 = 2;
const HAS_DLQ: u16 = 4;
const FIFO: u16 = 8;
const HAS_RATE: u16 = 16;
const HAS_RET_MS: u16 = 32;
const HAS_RET_BYTES: u16 = 64;
const STREAM: u16 = 128;
const TRANSIENT: u16 = 256;
const HAS_RET_COUNT: u16 = 512;

impl QueueOptions {
    pub fn stream() -> QueueOptions {
        QueueOptions { kind: QueueKind::Stream, ..QueueOptions::default() }
    }

    /// A memory-only pop queue.
    pub fn transient() -> QueueOptions {
        QueueOptions { transient: true, ..QueueOptions::default() }
    }

    /// Whether a stream with these options drops old batches (maintenance
    /// has work to do for it).
    pub fn has_retention(&self) -> bool {
        self.kind == QueueKind::Stream && (self.retention_ms.is_some() || self.retention_bytes.is_some() || self.retention_count.is_some())
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let mut flags = 0u16;
        if self.idle_ttl_ms.is_some() {
            flags |= HAS_TTL
        }
        if self.max_deliveries.is_some() {
            flags |= HAS_MAX_DELIVERIES
        }
        if self.dead_letter.is_some() {
            flags |= HAS_DLQ
        }
        if self.fifo {
            flags |= FIFO
        }
        if self.rate_per_sec.is_some() {
            flags |= HAS_RATE
        }
        if self.retention_ms.is_some() {
            flags |= HAS_RET_MS
        }
        if self.retention_bytes.is_some() {
            flags |= HAS_RET_BYTES
        }
        if self.kind == QueueKind::Stream {
            flags |= STREAM
        }
        if self.transient {
            flags |= TRANSIENT
        }
        if self.retention_count.is_some() {
            flags |= HAS_RET_COUNT
        }
        out.put_u16_le(flags);
        out.put_u8(self.max_priority);
        if let Some(v) = self.idle_ttl_ms {
            out.put_u64_le(v)
        }
        if let Some(v) = self.max_deliveries {
            out.put_u32_le(v)
        }
        if let Some(v) = &self.dead_letter {
            out.put_u16_le(v.len() as u16);
            out.put_slice(v.as_bytes());
        }
        if let Some(v) = self.rate_per_sec {
            out.put_u32_le(v)
        }
        if let Some(v) = self.retention_ms {
            out.put_u64_le(v)
        }
        if let Some(v) = self.retention_bytes {
            out.put_u64_le(v)
        }
        if let Some(v) = self.retention_count {
            out.put_u64_le(v)
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<QueueOptions, StoreError> {
        let flags = r.u16()?;
        let mut o = QueueOptions { max_priority: r.u8()?, ..QueueOptions::default() };
        if flags & STREAM != 0 {
            o.kind = QueueKind::Stream
        }
        if flags & HAS_TTL != 0 {
            o.idle_ttl_ms = Some(r.u64()?)
        }
        if flags & HAS_MAX_DELIVERIES != 0 {
            o.max_deliveries = Some(r.u32()?)
        }
        if flags & HAS_DLQ != 0 {
            let n = r.u16()? as usize;
            o.dead_letter = Some(r.string(n)?);
        }
        o.fifo = flags & FIFO != 0;
        o.transient = flags & TRANSIENT != 0;
        if flags & HAS_RATE != 0 {
            o.rate_per_sec = Some(r.u32()?)
        }
        if flags & HAS_RET_MS != 0 {
            o.retention_ms = Some(r.u64()?)
        }
        if flags & HAS_RET_BYTES != 0 {
            o.retention_bytes = Some(r.u64()?)
        }
        if flags & HAS_RET_COUNT != 0 {
            o.retention_count = Some(r.u64()?)
        }
        Ok(o)
    }
}
