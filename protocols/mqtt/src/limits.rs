//! Limits of the MQTT service, in one place.

/// Our Receive Maximum (MQTT 5 CONNACK): inbound QoS 1/2 publishes a client
/// may have unacknowledged. Also bounds the pending-acknowledgement queue of
/// a v3 client, which has no such property (we stop reading instead).
pub const RECEIVE_MAXIMUM_DEFAULT: u16 = 1024;

/// Topic aliases a client may define (MQTT 5 CONNACK Topic Alias Maximum).
pub const TOPIC_ALIAS_MAXIMUM_DEFAULT: u16 = 64;
