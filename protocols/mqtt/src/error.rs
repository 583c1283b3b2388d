//! Codec errors. Every decode failure names the MQTT 5 reason code a v5 session puts in
//! its DISCONNECT (or CONNACK); a v3 session simply closes the connection.

use crate::packet::PacketType;
use crate::reason::ReasonCode;

/// Why a packet could not be decoded. The connection that sent it cannot continue:
/// framing may be lost, so the session answers (v5) and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// CONNECT names a known protocol but a level we do not speak (or one that does not
    /// go with that name). v3.1.1 answers CONNACK return code 1, v5 reason 0x84.
    #[error("unsupported protocol level {level}")]
    UnsupportedProtocolVersion { level: u8 },
    /// CONNECT names neither "MQTT" nor "MQIsdp": not an MQTT client; close silently.
    #[error("CONNECT protocol name is neither MQTT nor MQIsdp (level {level})")]
    InvalidProtocolName { level: u8 },
    #[error("the first packet must be CONNECT, got packet type {packet_type}")]
    ExpectedConnect { packet_type: u8 },
    /// Type 0, or AUTH (15) outside MQTT 5.
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    #[error("invalid fixed header flags {flags:#06b} for {packet_type:?}")]
    InvalidHeaderFlags { packet_type: PacketType, flags: u8 },
    #[error("variable byte integer longer than 4 bytes")]
    MalformedVariableByteInteger,
    /// Checked from the fixed header alone, before the body is buffered.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge { size: usize, max: usize },
    #[error("a field runs past the end of the packet")]
    UnexpectedEnd,
    #[error("{count} unexpected bytes after the last field")]
    TrailingBytes { count: usize },
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("string contains U+0000")]
    NullCharacter,
    #[error("QoS {0} is not 0, 1 or 2")]
    InvalidQoS(u8),
    #[error("DUP flag set on a QoS 0 PUBLISH")]
    DupWithQoS0,
    #[error("packet identifier 0 where a non-zero one is required")]
    ZeroPacketId,
    #[error("PUBLISH without topic name and without topic alias")]
    EmptyTopicName,
    #[error("topic name contains a wildcard")]
    TopicNameInvalid,
    #[error("invalid topic filter: {0}")]
    TopicFilterInvalid(&'static str),
    #[error("SUBSCRIBE or UNSUBSCRIBE without any topic filter")]
    NoTopicFilters,
    #[error("reserved bits set in subscription options {0:#010b}")]
    InvalidSubscriptionOptions(u8),
    #[error("retain handling 3 is reserved")]
    InvalidRetainHandling,
    #[error("no-local on a shared subscription")]
    NoLocalOnSharedSubscription,
    #[error("invalid CONNECT flags {0:#010b}")]
    InvalidConnectFlags(u8),
    #[error("password without user name (not allowed before MQTT 5)")]
    PasswordWithoutUsername,
    #[error("invalid CONNACK acknowledge flags {0:#010b}")]
    InvalidConnAckFlags(u8),
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    #[error("property {id:#04x} is not allowed in {packet:?}")]
    PropertyNotAllowed { id: u8, packet: PacketType },
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    #[error("property {0:#04x} has a value the spec does not allow")]
    InvalidPropertyValue(u8),
    #[error("topic alias 0")]
    TopicAliasZero,
    #[error("authentication data without authentication method")]
    AuthDataWithoutMethod,
    #[error("property length runs past the end of the packet")]
    PropertyLengthOverrun,
    #[error("reason code {code:#04x} is not allowed in {packet:?}")]
    InvalidReasonCode { packet: PacketType, code: u8 },
}

impl DecodeError {
    /// The MQTT 5 reason code for the DISCONNECT (or CONNACK, if the failure is in
    /// CONNECT) that reports this error. "Malformed" where the spec says the bytes
    /// cannot be parsed, "protocol error" where they parse but break a rule, and the
    /// specific codes where the spec has one.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            UnsupportedProtocolVersion { .. } | InvalidProtocolName { .. } => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            TopicNameInvalid => ReasonCode::TOPIC_NAME_INVALID,
            TopicFilterInvalid(_) => ReasonCode::TOPIC_FILTER_INVALID,
            TopicAliasZero => ReasonCode::TOPIC_ALIAS_INVALID,
            ExpectedConnect { .. }
            | ZeroPacketId
            | EmptyTopicName
            | NoTopicFilters
            | InvalidRetainHandling
            | NoLocalOnSharedSubscription
            | DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | AuthDataWithoutMethod
            | InvalidReasonCode { .. } => ReasonCode::PROTOCOL_ERROR,
            ReservedPacketType(_)
            | InvalidHeaderFlags { .. }
            | MalformedVariableByteInteger
            | UnexpectedEnd
            | TrailingBytes { .. }
            | InvalidUtf8
            | NullCharacter
            | InvalidQoS(_)
            | DupWithQoS0
            | InvalidSubscriptionOptions(_)
            | InvalidConnectFlags(_)
            | PasswordWithoutUsername
            | InvalidConnAckFlags(_)
            | UnknownProperty(_)
            | PropertyNotAllowed { .. }
            | PropertyLengthOverrun => ReasonCode::MALFORMED_PACKET,
        }
    }
}

/// Why a packet could not be encoded. Nothing is written to the output when this is
/// returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("string or binary field of {0} bytes exceeds 65535")]
    FieldTooLong(usize),
    #[error("packet body of {0} bytes exceeds the 268435455 an MQTT packet can carry")]
    PacketTooLarge(usize),
    #[error("variable byte integer value {0} exceeds 268435455")]
    IntegerTooLarge(u32),
    #[error("QoS > 0 PUBLISH without packet identifier")]
    MissingPacketId,
    #[error("{0:?} does not exist before MQTT 5")]
    NotInVersion(PacketType),
}
