//! The packet model: one set of types for MQTT 3.1, 3.1.1 and 5.0, the 5.0 superset.
//! Fields a version cannot carry (properties, most reason codes) are left at their
//! defaults when decoding that version and dropped when encoding it.

use bytes::Bytes;

use crate::props::{
    AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties, PublishProperties, ReasonProperties, SubscribeProperties,
    UnsubscribeProperties, WillProperties,
};
use crate::reason::ReasonCode;

/// The protocol revision, read from CONNECT and fixed for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol level 3, protocol name "MQIsdp".
    V3_1,
    /// MQTT 3.1.1: protocol level 4, protocol name "MQTT".
    V3_1_1,
    /// MQTT 5.0: protocol level 5, protocol name "MQTT".
    V5,
}

impl ProtocolVersion {
    pub const ALL: [ProtocolVersion; 3] = [Self::V3_1, Self::V3_1_1, Self::V5];

    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Self::V3_1 => 3,
            Self::V3_1_1 => 4,
            Self::V5 => 5,
        }
    }

    /// The protocol name CONNECT must carry with this level.
    pub fn protocol_name(self) -> &'static str {
        match self {
            Self::V3_1 => "MQIsdp",
            Self::V3_1_1 | Self::V5 => "MQTT",
        }
    }

    pub fn from_level(level: u8) -> Option<Self> {
        match level {
            3 => Some(Self::V3_1),
            4 => Some(Self::V3_1_1),
            5 => Some(Self::V5),
            _ => None,
        }
    }

    /// Whether packets carry properties and reason codes.
    pub fn is_v5(self) -> bool {
        self == Self::V5
    }
}

/// Quality of service. Ordered, so `min` gives the granted QoS of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// `None` for 3, which every version treats as malformed.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// MQTT 5 Retain Handling subscription option (spec 3.8.3.1). v3 subscriptions behave
/// as `SendAtSubscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages whenever the subscription is made.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not exist before.
    SendAtSubscribeIfNew = 1,
    /// 2: never send retained messages for this subscription.
    DoNotSend = 2,
}

impl RetainHandling {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::SendAtSubscribe),
            1 => Some(Self::SendAtSubscribeIfNew),
            2 => Some(Self::DoNotSend),
            _ => None,
        }
    }
}

/// The options byte after each filter in SUBSCRIBE. v3 carries only `qos`; the other
/// options decode as their defaults (which are v3's behaviour).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS the subscriber accepts.
    pub qos: QoS,
    /// Do not deliver messages published by this same connection.
    pub no_local: bool,
    /// Keep the RETAIN flag of the original publish instead of clearing it.
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

/// Payload Format Indicator property (spec 3.3.2.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// 0: unspecified bytes.
    Unspecified = 0,
    /// 1: UTF-8 encoded character data.
    Utf8 = 1,
}

/// Every MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubReply),
    PubRec(PubReply),
    PubRel(PubReply),
    PubComp(PubReply),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    /// MQTT 5 only.
    Auth(Auth),
}

/// The 4-bit control packet type of the fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    /// `None` for the reserved type 0.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Connect,
            2 => Self::ConnAck,
            3 => Self::Publish,
            4 => Self::PubAck,
            5 => Self::PubRec,
            6 => Self::PubRel,
            7 => Self::PubComp,
            8 => Self::Subscribe,
            9 => Self::SubAck,
            10 => Self::Unsubscribe,
            11 => Self::UnsubAck,
            12 => Self::PingReq,
            13 => Self::PingResp,
            14 => Self::Disconnect,
            15 => Self::Auth,
            _ => return None,
        })
    }
}

impl Packet {
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }
}

/// CONNECT (spec 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The version the client asked for. On encode the `version` argument decides the
    /// layout and level byte; this field is informational there.
    pub version: ProtocolVersion,
    /// "Clean Session" in v3.
    pub clean_start: bool,
    /// Seconds; 0 disables keep-alive.
    pub keep_alive: u16,
    /// May be empty; whether an empty or long (v3.1 says <= 23 bytes) id is acceptable
    /// is the session's policy, answered with CONNACK 0x85 / v3 return code 2.
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub properties: ConnectProperties,
}

/// The will message of CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: WillProperties,
}

/// CONNACK (spec 3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// v5 reason; v3 return codes are mapped to and from it (see [`ReasonCode::to_v3_connack`]).
    pub reason_code: ReasonCode,
    pub properties: ConnAckProperties,
}

/// PUBLISH (spec 3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in v5 when `properties.topic_alias` names an alias set earlier.
    pub topic: String,
    /// `Some` exactly when `qos` > 0.
    pub packet_id: Option<u16>,
    /// A zero-copy slice of the buffer the packet was decoded from.
    pub payload: Bytes,
    pub properties: PublishProperties,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape (spec 3.4 - 3.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubReply {
    pub packet_id: u16,
    /// Always SUCCESS when decoded from v3.
    pub reason_code: ReasonCode,
    pub properties: ReasonProperties,
}

impl PubReply {
    /// The common case: success, no properties (encodes in the 2-byte short form).
    pub fn success(packet_id: u16) -> Self {
        Self { packet_id, reason_code: ReasonCode::SUCCESS, properties: ReasonProperties::default() }
    }
}

/// One filter of SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: String,
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE (spec 3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    /// Never empty when decoded.
    pub subscriptions: Vec<Subscription>,
    pub properties: SubscribeProperties,
}

/// SUBACK (spec 3.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    /// One per filter of the SUBSCRIBE, in order.
    pub reason_codes: Vec<ReasonCode>,
    pub properties: ReasonProperties,
}

/// UNSUBSCRIBE (spec 3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    /// Never empty when decoded.
    pub filters: Vec<String>,
    pub properties: UnsubscribeProperties,
}

/// UNSUBACK (spec 3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    /// v5 only, one per filter; empty when decoded from v3.
    pub reason_codes: Vec<ReasonCode>,
    pub properties: ReasonProperties,
}

/// DISCONNECT (spec 3.14).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// NORMAL_DISCONNECTION when decoded from v3.
    pub reason_code: ReasonCode,
    pub properties: DisconnectProperties,
}

/// AUTH (spec 3.15), MQTT 5 only.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason_code: ReasonCode,
    pub properties: AuthProperties,
}

impl Default for ReasonCode {
    fn default() -> Self {
        ReasonCode::SUCCESS
    }
}
