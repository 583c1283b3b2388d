//! MQTT for polymq: a sans-I/O codec for MQTT 3.1, 3.1.1 and 5.0.
//!
//! One packet model for every version (the MQTT 5 superset): [`decode`] turns bytes into
//! a [`Packet`], [`encode`] lays a [`Packet`] out for a given [`ProtocolVersion`]. No
//! sockets, no async: the connection loop owns the buffer, the session owns the state.
//!
//! ```
//! use bytes::BytesMut;
//! use polymq_mqtt::{decode, encode, Packet, ProtocolVersion, PubReply};
//!
//! let mut wire = BytesMut::new();
//! encode(&Packet::PubAck(PubReply::success(7)), ProtocolVersion::V5, &mut wire)?;
//! assert_eq!(&wire[..], [0x40, 0x02, 0x00, 0x07]);
//! let packet = decode(&mut wire, Some(ProtocolVersion::V5), 1024)?;
//! assert_eq!(packet, Some(Packet::PubAck(PubReply::success(7))));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// The `bytes` crate this API is built on, so callers use the same `Bytes`.
pub use bytes;

mod decode;
mod encode;
mod error;
pub mod limits;
mod packet;
mod props;
mod reason;
pub mod server;
mod topic;
mod wire;

pub use decode::decode;
pub use encode::{encode, encoded_len};
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PacketType, PayloadFormat, ProtocolVersion, PubReply, Publish, QoS, RetainHandling, SubAck,
    Subscribe, Subscription, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
pub use props::{
    id as property_id, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties, PublishProperties, ReasonProperties,
    SubscribeProperties, UnsubscribeProperties, UserProperties, WillProperties,
};
pub use reason::ReasonCode;
pub use server::{MqttConfig, MqttService};
pub use topic::{split_shared, validate_topic_filter, validate_topic_name};
pub use wire::VARIABLE_BYTE_INTEGER_MAX;
