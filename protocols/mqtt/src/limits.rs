//! Limits of the MQTT service, in one place.

/// Our Receive Maximum (MQTT 5 CONNACK): inbound QoS 1/2 publishes a client
/// may have unacknowledged. Also bounds the pending-acknowledgement queue of
/// a v3 client, which has no such property (we stop reading instead).
pub const RECEIVE_MAXIMUM_DEFAULT: u16 = 1024;

/// Topic aliases a client may define (MQTT 5 CONNACK Topic Alias Maximum).
pub const TOPIC_ALIAS_MAXIMUM_DEFAULT: u16 = 64;

use std::time::Duration;

/// A connection must send CONNECT within this (mosquitto and EMQX: 10-15 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// QoS 1/2 deliveries we keep unacknowledged per connection, whatever larger
/// Receive Maximum the client advertises (mosquitto's default is 20; more
/// keeps a fast link busy, each costs one pop receipt in the core).
pub const OUTBOUND_WINDOW_MAX: u16 = 1024;

/// Messages popped from a queue per core call.
pub const POP_BATCH_MAX: usize = 64;

/// How long a delivery stays invisible to other consumers: as long as the core
/// allows. MQTT redelivers on reconnect, not on a timer; a disconnect hands
/// unacknowledged messages back at once.
pub const DELIVERY_INVISIBLE: Duration = Duration::from_millis(polymq::limits::INVISIBLE_MS_MAX);

/// Long-poll length of one pop; also how often a connected session's queue is
/// touched, so it cannot idle-expire while its client is online.
pub const POP_WAIT_MAX: Duration = Duration::from_secs(20);
pub const POP_WAIT_MIN: Duration = Duration::from_millis(200);

/// A peer that takes longer than this to accept our bytes is dropped.
pub const WRITE_STALL_MAX: Duration = Duration::from_secs(60);

/// How often keep-alive is checked, for all connections at once: a silent
/// client is cut off between 1.5 x its keep-alive and that plus this.
pub const KEEP_ALIVE_SWEEP: Duration = Duration::from_millis(250);

/// How often a taking-over connection looks whether the old one is gone.
pub const TAKEOVER_POLL: Duration = Duration::from_millis(5);

/// A new connection waits this long for the one it takes over to finish.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// Packets handled between two flushes of the outbound buffer.
pub const DELIVERIES_PER_TURN: usize = 256;

/// Bytes a socket read asks for at least. The read buffer is allocated when
/// the socket is readable and released once every packet in it is handled,
/// so an idle connection keeps none.
pub const READ_CHUNK: usize = 2048;

/// The write buffer's first allocation (it grows as needed). It is released
/// after a flush that used less than half of it, so an idle connection keeps
/// none.
pub const OUT_CHUNK: usize = 2048;

/// A write buffer that grew past this (a burst of deliveries) is released
/// after its flush whatever it held.
pub const OUT_KEEP_MAX: usize = 64 * 1024;
