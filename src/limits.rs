//! Every limit a client can push against lives here, with the reason for its size.
//! Tests and protocol crates read these constants; config may lower (never raise)
//! the ones that are marked as defaults.

/// Largest single record (headers + key + payload) the log accepts. Kafka's default
/// `message.max.bytes` is ~1 MiB; MQTT allows 256 MiB, which we do not take in one
/// record. 16 MiB bounds the memory one append can pin.
pub const RECORD_BYTES_MAX: usize = 16 * 1024 * 1024;

/// How many queues one message may be dispatched to in a single append. A topic
/// exchange fan-out wider than this is split by the router into several appends
/// of index-only records, so the bound protects the record header, not routing.
pub const DISPATCH_COUNT_MAX: usize = 4096;

/// Default segment size. Big enough that rolling is rare, small enough that
/// reclaiming one segment frees space promptly.
pub const SEGMENT_BYTES_DEFAULT: u64 = 128 * 1024 * 1024;
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
/// Largest configurable segment (Kafka's `log.segment.bytes` tops out at 2 GiB too).
pub const SEGMENT_BYTES_MAX: u64 = 2 * 1024 * 1024 * 1024;

/// Bytes the group-commit writer gathers into one write before it issues it.
pub const WRITE_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Appends gathered into one batch (also bounds the iovec count per write).
pub const WRITE_BATCH_COUNT_MAX: usize = 1024;
/// Appends waiting for the writer before appenders are made to wait (backpressure).
pub const WRITE_QUEUE_DEPTH_MAX: usize = 16 * 1024;

/// Longest queue name, in bytes. MQTT client ids and AMQP queue names (255) fit.
pub const QUEUE_NAME_BYTES_MAX: usize = 255;
/// Default cap on the number of queues (config can lower it).
pub const QUEUE_COUNT_MAX_DEFAULT: usize = 20_000_000;

/// One pop returns at most this many messages.
pub const POP_BATCH_MAX: usize = 1024;
/// Longest invisibility a pop or change-invisible may ask for (12 h, like SQS).
pub const INVISIBLE_MS_MAX: u64 = 12 * 60 * 60 * 1000;
/// Longest a delayed message may wait (40 days, like RocketMQ timer messages).
pub const DELAY_MS_MAX: u64 = 40 * 24 * 60 * 60 * 1000;
/// Priority levels per queue (AMQP x-max-priority caps at 255; RabbitMQ advises <= 10).
pub const PRIORITY_LEVELS_MAX: u8 = 10;
/// Longest FIFO message-group key.
pub const GROUP_KEY_BYTES_MAX: usize = 1024;

/// Default number of deliveries before a message is dead-lettered (RocketMQ uses 16).
pub const DELIVERY_COUNT_MAX_DEFAULT: u32 = 16;

/// Memory for messages that went only to transient queues (never logged).
pub const TRANSIENT_BYTES_MAX_DEFAULT: u64 = 512 * 1024 * 1024;

/// Server: concurrent connections across all listeners.
pub const CONNECTION_COUNT_MAX_DEFAULT: usize = 100_000;

const _: () = assert!(SEGMENT_BYTES_MIN as usize > 1024);
const _: () = assert!(RECORD_BYTES_MAX as u64 + 4096 < SEGMENT_BYTES_DEFAULT);
const _: () = assert!(WRITE_BATCH_BYTES_MAX >= 1024 * 1024);
const _: () = assert!(WRITE_BATCH_COUNT_MAX <= 1024, "iovec count per writev is capped by IOV_MAX");
const _: () = assert!(POP_BATCH_MAX <= WRITE_QUEUE_DEPTH_MAX);
