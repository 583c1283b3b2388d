//! Limits of the AMQP service, in one place.

use std::time::Duration;

/// Our frame_max offer (RabbitMQ's default); a client may ask for less.
pub const FRAME_MAX_DEFAULT: u32 = 131_072;
/// The spec's minimum frame_max: also the limit before tune-ok.
pub const FRAME_MIN: u32 = 4096;
pub const CHANNEL_MAX_DEFAULT: u16 = 2047;
pub const HEARTBEAT_DEFAULT_SECS: u16 = 60;

/// Field tables nested deeper than this are refused (the parser recurses).
pub const TABLE_DEPTH_MAX: usize = 32;

/// Handshake (protocol header to open-ok) must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Deliveries a consumer may hold unacknowledged when it set no prefetch
/// (RabbitMQ: unlimited). Past it the backlog stays in the store.
pub const UNLIMITED_PREFETCH_CAP: usize = 4096;

/// Messages popped from a queue per core call.
pub const POP_BATCH_MAX: usize = 64;

/// How long a delivery stays invisible to other consumers: as long as the
/// core allows. AMQP redelivers when the channel closes, not on a timer.
pub const DELIVERY_INVISIBLE: Duration = Duration::from_millis(polymq::limits::INVISIBLE_MS_MAX);

/// Bytes one stream read may return (at least one message always comes).
pub const STREAM_READ_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// Long-poll length of one pop (also how often a consumed queue is touched).
pub const POP_WAIT: Duration = Duration::from_secs(20);

/// Publishes awaiting their confirm (or a store answer) per connection;
/// past this we stop reading the socket.
pub const PENDING_CONFIRMS_MAX: usize = 8192;

/// Receipts one `ack_many` of a connection's acker takes at most (acks that
/// queued up while the previous one was being made durable): bounds the
/// size of one ack record.
pub const ACKS_PER_BATCH_MAX: usize = 4096;

/// A peer that takes longer than this to accept our bytes is dropped.
pub const WRITE_STALL_MAX: Duration = Duration::from_secs(60);

/// Events (deliveries) handled between two flushes of the outbound buffer.
pub const EVENTS_PER_TURN: usize = 256;

/// How often the heads of unread queues with an x-message-ttl are checked.
pub const EXPIRY_SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Messages purge removes per core call.
pub const PURGE_BATCH: usize = 1024;

const _: () = assert!(FRAME_MIN as usize > crate::codec::FRAME_OVERHEAD);
const _: () = assert!(FRAME_MAX_DEFAULT >= FRAME_MIN);

/// Exchanges one publish may pass through (exchange-to-exchange bindings):
/// bounds the routing work and the recursion depth.
pub const E2E_HOPS_MAX: usize = 64;
