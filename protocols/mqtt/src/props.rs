//! MQTT 5 properties (spec 2.2.2): one typed struct per packet (acks share one), read
//! through one generic block reader and written through one visitor, so the list of
//! properties a packet allows lives in exactly one place: the struct's `apply` and
//! `visit`.

use bytes::Bytes;

use crate::error::DecodeError;
use crate::packet::{PacketType, PayloadFormat, QoS};
use crate::topic::validate_topic_name;
use crate::wire::{Measure, Reader, Sink};

/// Property identifiers (spec 2.2.2.2).
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}
use id::*;

/// The wire data type of a property, fixed by its identifier.
#[derive(Clone, Copy)]
enum Kind {
    Byte,
    TwoByte,
    FourByte,
    VariableByte,
    String,
    Binary,
    StringPair,
}

fn kind(identifier: u8) -> Option<Kind> {
    Some(match identifier {
        PAYLOAD_FORMAT_INDICATOR
        | REQUEST_PROBLEM_INFORMATION
        | REQUEST_RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => Kind::Byte,
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => Kind::TwoByte,
        MESSAGE_EXPIRY_INTERVAL | SESSION_EXPIRY_INTERVAL | WILL_DELAY_INTERVAL | MAXIMUM_PACKET_SIZE => Kind::FourByte,
        SUBSCRIPTION_IDENTIFIER => Kind::VariableByte,
        CONTENT_TYPE
        | RESPONSE_TOPIC
        | ASSIGNED_CLIENT_IDENTIFIER
        | AUTHENTICATION_METHOD
        | RESPONSE_INFORMATION
        | SERVER_REFERENCE
        | REASON_STRING => Kind::String,
        CORRELATION_DATA | AUTHENTICATION_DATA => Kind::Binary,
        USER_PROPERTY => Kind::StringPair,
        _ => return None,
    })
}

/// One decoded property value; which variant follows from the identifier.
pub(crate) enum Value {
    Byte(u8),
    TwoByte(u16),
    /// Four Byte Integer and Variable Byte Integer both land here.
    FourByte(u32),
    String(String),
    Binary(Bytes),
    StringPair(String, String),
}

/// A property block of one packet type.
pub(crate) trait PropertySet: Default {
    /// Stores one property. `Ok(false)`: the identifier is not allowed here.
    fn apply(&mut self, identifier: u8, value: Value) -> Result<bool, DecodeError>;
    /// Rules that span properties, checked once the block is read.
    fn check(&self) -> Result<(), DecodeError> {
        Ok(())
    }
    /// Feeds every present property to the sink, in a fixed order.
    fn visit<S: Sink>(&self, sink: &mut S);
}

/// Reads a property block: Property Length, then properties that must end exactly
/// there.
pub(crate) fn read_block<P: PropertySet>(reader: &mut Reader, packet: PacketType) -> Result<P, DecodeError> {
    let len = reader.vbi()? as usize;
    if len > reader.remaining() {
        return Err(DecodeError::PropertyLengthOverrun);
    }
    let mut block = Reader::new(reader.take(len)?);
    let mut properties = P::default();
    while !block.is_empty() {
        // The identifier is a variable byte integer; every defined one fits in a byte,
        // so a larger value is simply unknown.
        let raw_id = block.vbi().map_err(overrun)?;
        let identifier = u8::try_from(raw_id).map_err(|_| DecodeError::UnknownProperty(0xFF))?;
        let kind = kind(identifier).ok_or(DecodeError::UnknownProperty(identifier))?;
        let value = read_value(&mut block, kind).map_err(overrun)?;
        if !properties.apply(identifier, value)? {
            return Err(DecodeError::PropertyNotAllowed { id: identifier, packet });
        }
    }
    properties.check()?;
    Ok(properties)
}

/// A value running past the block is a property length that lies about its contents.
fn overrun(error: DecodeError) -> DecodeError {
    match error {
        DecodeError::UnexpectedEnd => DecodeError::PropertyLengthOverrun,
        other => other,
    }
}

fn read_value(block: &mut Reader, kind: Kind) -> Result<Value, DecodeError> {
    Ok(match kind {
        Kind::Byte => Value::Byte(block.u8()?),
        Kind::TwoByte => Value::TwoByte(block.u16()?),
        Kind::FourByte => Value::FourByte(block.u32()?),
        Kind::VariableByte => Value::FourByte(block.vbi()?),
        Kind::String => Value::String(block.string()?),
        Kind::Binary => Value::Binary(block.binary()?),
        Kind::StringPair => {
            let key = block.string()?;
            Value::StringPair(key, block.string()?)
        }
    })
}

/// Writes Property Length and the properties.
pub(crate) fn write_block<P: PropertySet, S: Sink>(properties: &P, sink: &mut S) {
    let len = block_body_len(properties);
    sink.vbi(u32::try_from(len).unwrap_or(u32::MAX));
    properties.visit(sink);
}

/// Bytes of the properties without the Property Length; 0 means "no properties".
pub(crate) fn block_body_len<P: PropertySet>(properties: &P) -> usize {
    let mut measure = Measure::default();
    properties.visit(&mut measure);
    measure.len
}

// --- small helpers shared by the structs ---------------------------------------------

/// Stores a property that may appear at most once.
fn once<T>(slot: &mut Option<T>, value: T, identifier: u8) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(identifier));
    }
    *slot = Some(value);
    Ok(())
}

/// Byte properties that are booleans: anything but 0 or 1 is a protocol error.
fn flag(value: u8, identifier: u8) -> Result<bool, DecodeError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue(identifier)),
    }
}

fn non_zero_u16(value: u16, identifier: u8) -> Result<u16, DecodeError> {
    if value == 0 {
        return Err(DecodeError::InvalidPropertyValue(identifier));
    }
    Ok(value)
}

fn non_zero_u32(value: u32, identifier: u8) -> Result<u32, DecodeError> {
    if value == 0 {
        return Err(DecodeError::InvalidPropertyValue(identifier));
    }
    Ok(value)
}

fn payload_format(value: u8) -> Result<PayloadFormat, DecodeError> {
    match value {
        0 => Ok(PayloadFormat::Unspecified),
        1 => Ok(PayloadFormat::Utf8),
        _ => Err(DecodeError::InvalidPropertyValue(PAYLOAD_FORMAT_INDICATOR)),
    }
}

/// A Response Topic is a topic name: no wildcards (spec 3.3.2.3.5).
fn response_topic(value: String) -> Result<String, DecodeError> {
    validate_topic_name(&value)?;
    Ok(value)
}

fn put_u8<S: Sink>(sink: &mut S, identifier: u8, value: Option<u8>) {
    if let Some(value) = value {
        sink.u8(identifier);
        sink.u8(value);
    }
}

fn put_bool<S: Sink>(sink: &mut S, identifier: u8, value: Option<bool>) {
    put_u8(sink, identifier, value.map(u8::from));
}

fn put_u16<S: Sink>(sink: &mut S, identifier: u8, value: Option<u16>) {
    if let Some(value) = value {
        sink.u8(identifier);
        sink.u16(value);
    }
}

fn put_u32<S: Sink>(sink: &mut S, identifier: u8, value: Option<u32>) {
    if let Some(value) = value {
        sink.u8(identifier);
        sink.u32(value);
    }
}

fn put_string<S: Sink>(sink: &mut S, identifier: u8, value: &Option<String>) {
    if let Some(value) = value {
        sink.u8(identifier);
        sink.string(value);
    }
}

fn put_binary<S: Sink>(sink: &mut S, identifier: u8, value: &Option<Bytes>) {
    if let Some(value) = value {
        sink.u8(identifier);
        sink.binary(value);
    }
}

fn put_user_properties<S: Sink>(sink: &mut S, pairs: &[(String, String)]) {
    for (key, value) in pairs {
        sink.u8(USER_PROPERTY);
        sink.string(key);
        sink.string(value);
    }
}

/// User properties are allowed in every packet and may repeat; their order is kept
/// (spec 3.3.2.3.7).
pub type UserProperties = Vec<(String, String)>;

// --- the property sets ----------------------------------------------------------------

/// CONNECT properties (spec 3.1.2.11).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectProperties {
    /// Seconds; absent means 0 (session ends with the connection).
    pub session_expiry_interval: Option<u32>,
    /// Non-zero when present; absent means 65535.
    pub receive_maximum: Option<u16>,
    /// Non-zero when present; absent means no limit beyond the protocol's.
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<bool>,
    pub request_problem_information: Option<bool>,
    pub user_properties: UserProperties,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
}

impl PropertySet for ConnectProperties {
    fn apply(&mut self, identifier: u8, value: Value) -> Result<bool, DecodeError> {
        match (identifier, value) {
            (SESSION_EXPIRY_INTERVAL, Value::FourByte(v)) => once(&mut self.session_expiry_interval, v, identifier)?,
            (RECEIVE_MAXIMUM, Value::TwoByte(v)) => once(&mut self.receive_maximum, non_zero_u16(v, identifier)?, identifier)?,
            (MAXIMUM_PACKET_SIZE, Value::FourByte(v)) => once(&mut self.maximum_packet_size, non_zero_u32(v, identifier)?, identifier)?,
            (TOPIC_ALIAS_MAXIMUM, Value::TwoByte(v)) => once(&mut self.topic_alias_maximum, v, identifier)?,
            (REQUEST_RESPONSE_INFORMATION, Value::Byte(v)) => {
                once(&mut self.request_response_information, flag(v, identifier)?, identifier)?
            }
            (REQUEST_PROBLEM_INFORMATION, Value::Byte(v)) => once(&mut self.request_problem_information, flag(v, identifier)?, identifier)?,
            (USER_PROPERTY, Value::StringPair(k, v)) => self.user_properties.push((k, v)),
            (AUTHENTICATION_METHOD, Value::String(v)) => once(&mut self.authentication_method, v, identifier)?,
            (AUTHENTICATION_DATA, Value::Binary(v)) => once(&mut self.authentication_data, v, identifier)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn check(&self) -> Result<(), DecodeError> {
        if self.authentication_data.is_some() && self.authentication_method.is_none() {
            return Err(DecodeError::AuthDataWithoutMethod);
        }
        Ok(())
    }

    fn visit<S: Sink>(&self, sink: &mut S) {
        put_u32(sink, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_string(sink, AUTHENTICATION_METHOD, &self.authentication_method);
        put_binary(sink, AUTHENTICATION_DATA, &self.authentication_data);
        put_bool(sink, REQUEST_PROBLEM_INFORMATION, self.request_problem_information);
        put_bool(sink, REQUEST_RESPONSE_INFORMATION, self.request_response_information);
        put_u16(sink, RECEIVE_MAXIMUM, self.receive_maximum);
        put_u16(sink, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_user_properties(sink, &self.user_properties);
        put_u32(sink, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
    }
}

/// Will properties in the CONNECT payload (spec 3.1.3.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WillProperties {
    /// Seconds to wait after the connection ends before publishing the will.
    pub will_delay_interval: Option<u32>,
    pub payload_format_indicator: Option<PayloadFormat>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: UserProperties,
}

impl PropertySet for WillProperties {
    fn apply(&mut self, identifier: u8, value: Value) -> Result<bool, DecodeError> {
        match (identifier, value) {
            (WILL_DELAY_INTERVAL, Value::FourByte(v)) => once(&mut self.will_delay_interval, v, identifier)?,
            (PAYLOAD_FORMAT_INDICATOR, Value::Byte(v)) => once(&mut self.payload_format_indicator, payload_format(v)?, identifier)?,
            (MESSAGE_EXPIRY_INTERVAL, Value::FourByte(v)) => once(&mut self.message_expiry_interval, v, identifier)?,
            (CONTENT_TYPE, Value::String(v)) => once(&mut self.content_type, v, identifier)?,
            (RESPONSE_TOPIC, Value::String(v)) => once(&mut self.response_topic, response_topic(v)?, identifier)?,
            (CORRELATION_DATA, Value::Binary(v)) => once(&mut self.correlation_data, v, identifier)?,
            (USER_PROPERTY, Value::StringPair(k, v)) => self.user_properties.push((k, v)),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn visit<S: Sink>(&self, sink: &mut S) {
        put_u8(sink, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator.map(|f| f as u8));
        put_u32(sink, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_string(sink, CONTENT_TYPE, &self.content_type);
        put_string(sink, RESPONSE_TOPIC, &self.response_topic);
        put_binary(sink, CORRELATION_DATA, &self.correlation_data);
        put_u32(sink, WILL_DELAY_INTERVAL, self.will_delay_interval);
        put_user_properties(sink, &self.user_properties);
    }
}

/// CONNACK properties (spec 3.2.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    /// Only QoS 0 or 1 may be sent; absent means 2 is supported.
    pub maximum_qos: Option<QoS>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<String>,
    pub user_properties: UserProperties,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
}

impl PropertySet for ConnAckProperties {
    fn apply(&mut self, identifier: u8, value: Value) -> Result<bool, DecodeError> {
        match (identifier, value) {
            (SESSION_EXPIRY_INTERVAL, Value::FourByte(v)) => once(&mut self.session_expiry_interval, v, identifier)?,
            (RECEIVE_MAXIMUM, Value::TwoByte(v)) => once(&mut self.receive_maximum, non_zero_u16(v, identifier)?, identifier)?,
            (MAXIMUM_QOS, Value::Byte(v)) => {
                let qos = match v {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => return Err(DecodeError::InvalidPropertyValue(identifier)),
                };
                once(&mut self.maximum_qos, qos, identifier)?
            }
            (RETAIN_AVAILABLE, Value::Byte(v)) => once(&mut self.retain_available, flag(v, identifier)?, identifier)?,
            (MAXIMUM_PACKET_SIZE, Value::FourByte(v)) => once(&mut self.maximum_packet_size, non_zero_u32(v, identifier)?, identifier)?,
            (ASSIGNED_CLIENT_IDENTIFIER, Value::String(v)) => once(&mut self.assigned_client_identifier, v, identifier)?,
            (TOPIC_ALIAS_MAXIMUM, Value::TwoByte(v)) => once(&mut self.topic_alias_maximum, v, identifier)?,
            (REASON_STRING, Value::String(v)) => once(&mut self.reason_string, v, identifier)?,
            (USER_PROPERTY, Value::StringPair(k, v)) => self.user_properties.push((k, v)),
            (WILDCARD_SUBSCRIPTION_AVAILABLE, Value::Byte(v)) => {
                once(&mut self.wildcard_subscription_available, flag(v, identifier)?, identifier)?
            }
            (SUBSCRIPTION_IDENTIFIER_AVAILABLE, Value::Byte(v)) => {
                once(&mut self.subscription_identifiers_available, flag(v, identifier)?, identifier)?
            }
            (SHARED_SUBSCRIPTION_AVAILABLE, Value::Byte(v)) => {
                once(&mut self.shared_subscription_available, flag(v, identifier)?, identifier)?
            }
            (SERVER_KEEP_ALIVE, Value::TwoByte(v)) => once(&mut self.server_keep_alive, v, identifier)?,
            (RESPONSE_INFORMATION, Value::String(v)) => once(&mut self.response_information, v, identifier)?,
            (SERVER_REFERENCE, Value::String(v)) => once(&mut self.server_reference, v, identifier)?,
            (AUTHENTICATION_METHOD, Value::String(v)) => once(&mut self.authentication_method, v, identifier)?,
            (AUTHENTICATION_DATA, Value::Binary(v)) => once(&mut self.authentication_data, v, identifier)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn check(&self) -> Result<(), DecodeError> {
        if self.authentication_data.is_some() && self.authentication_method.is_none() {
            return Err(DecodeError::AuthDataWithoutMethod);
        }
        Ok(())
    }

    fn visit<S: Sink>(&self, sink: &mut S) {
        put_u32(sink, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_string(sink, ASSIGNED_CLIENT_IDENTIFIER, &self.assigned_client_identifier);
        put_u16(sink, SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_string(sink, AUTHENTICATION_METHOD, &self.authentication_method);
        put_binary(sink, AUTHENTICATION_DATA, &self.authentication_data);
        put_string(sink, RESPONSE_INFORMATION, &self.response_information);
        put_string(sink, SERVER_REFERENCE, &self.server_reference);
        put_string(sink, REASON_STRING, &self.reason_string);
        put_u16(sink, RECEIVE_MAXIMUM, self.receive_maximum);
        put_u16(sink, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_u8(sink, MAXIMUM_QOS, self.maximum_qos.map(QoS::as_u8));
        put_bool(sink, RETAIN_AVAILABLE, self.retain_available);
        put_user_properties(sink, &self.user_properties);
        put_u32(sink, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_bool(sink, WILDCARD_SUBSCRIPTION_AVAILABLE, self.wildcard_subscription_available);
        put_bool(sink, SUBSCRIPTION_IDENTIFIER_AVAILABLE, self.subscription_identifiers_available);
        put_bool(sink, SHARED_SUBSCRIPTION_AVAILABLE, self.shared_subscription_available);
    }
}

/// PUBLISH properties (spec 3.3.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<PayloadFormat>,
    /// Seconds; the forwarding server lowers it by the time the message waited.
    pub message_expiry_interval: Option<u32>,
    /// Non-zero when present; whether it is within Topic Alias Maximum is the session's.
    pub topic_alias: Option<u16>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: UserProperties,
    /// Server to client only; one per matching subscription that had an identifier.
    pub subscription_identifiers: Vec<u32>,
    pub content_type: Option<String>,
}

impl PropertySet for PublishProperties {
    fn apply(&mut self, identifier: u8, value: Value) -> Result<bool, DecodeError> {
        match (identifier, value) {
            (PAYLOAD_FORMAT_INDICATOR, Value::Byte(v)) => once(&mut self.payload_format_indicator, payload_format(v)?, identifier)?,
            (MESSAGE_EXPIRY_INTERVAL, Value::FourByte(v)) => once(&mut self.message_expiry_interval, v, identifier)?,
            (TOPIC_ALIAS, Value::TwoByte(v)) => {
                if v == 0 {
                    return Err(DecodeError::TopicAliasZero);
                }
                once(&mut self.topic_alias, v, identifier)?
            }
            (RESPONSE_TOPIC, Value::String(v)) => once(&mut self.response_topic, response_topic(v)?, identifier)?,
            (CORRELATION_DATA, Value::Binary(v)) => once(&mut self.correlation_data, v, identifier)?,
            (USER_PROPERTY, Value::StringPair(k, v)) => self.user_properties.push((k, v)),
            // The one property besides User Property that may repeat (spec 3.3.2.3.8).
            (SUBSCRIPTION_IDENTIFIER, Value::FourByte(v)) => self.subscription_identifiers.push(non_zero_u32(v, identifier)?),
            (CONTENT_TYPE, Value::String(v)) => once(&mut self.content_type, v, identifier)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn visit<S: Sink>(&self, sink: &mut S) {
        put_u8(sink, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator.map(|f| f as u8));
        put_u32(sink, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_string(sink, CONTENT_TYPE, &self.content_type);
        put_string(sink, RESPONSE_TOPIC, &self.response_topic);
        put_binary(sink, CORRELATION_DATA, &self.correlation_data);
        for &identifier in &self.subscription_identifiers {
            sink.u8(SUBSCRIPTION_IDENTIFIER);
            sink.vbi(identifier);
        }
        put_u16(sink, TOPIC_ALIAS, self.topic_alias);
        put_user_properties(sink, &self.user_properties);
    }
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK: all optional,
/// so the session drops them first when a packet would exceed the client's maximum.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReasonProperties {
    pub reason_string: Option<String>,
    pub user_properties: UserProperties,
}

impl PropertySet for ReasonProperties {
    fn apply(&mut self, identifier: u8, value: Value) -> Result<bool, DecodeError> {
        match (identifier, value) {
            (REASON_STRING, Value::String(v)) => once(&mut self.reason_string, v, identifier)?,
            (USER_PROPERTY, Value::StringPair(k, v)) => self.user_properties.push((k, v)),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn visit<S: Sink>(&self, sink: &mut S) {
        put_string(sink, REASON_STRING, &self.reason_string);
        put_user_properties(sink, &self.user_properties);
    }
}

/// SUBSCRIBE properties (spec 3.8.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeProperties {
    /// 1..=268435455; at most one per SUBSCRIBE.
    pub subscription_identifier: Option<u32>,
    pub user_properties: UserProperties,
}

impl PropertySet for SubscribeProperties {
    fn apply(&mut self, identifier: u8, value: Value) -> Result<bool, DecodeError> {
        match (identifier, value) {
            (SUBSCRIPTION_IDENTIFIER, Value::FourByte(v)) => {
                once(&mut self.subscription_identifier, non_zero_u32(v, identifier)?, identifier)?
            }
            (USER_PROPERTY, Value::StringPair(k, v)) => self.user_properties.push((k, v)),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn visit<S: Sink>(&self, sink: &mut S) {
        if let Some(identifier) = self.subscription_identifier {
            sink.u8(SUBSCRIPTION_IDENTIFIER);
            sink.vbi(identifier);
        }
        put_user_properties(sink, &self.user_properties);
    }
}

/// UNSUBSCRIBE properties (spec 3.10.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubscribeProperties {
    pub user_properties: UserProperties,
}

impl PropertySet for UnsubscribeProperties {
    fn apply(&mut self, identifier: u8, value: Value) -> Result<bool, DecodeError> {
        match (identifier, value) {
            (USER_PROPERTY, Value::StringPair(k, v)) => self.user_properties.push((k, v)),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn visit<S: Sink>(&self, sink: &mut S) {
        put_user_properties(sink, &self.user_properties);
    }
}

/// DISCONNECT properties (spec 3.14.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DisconnectProperties {
    /// Client to server only; may not turn a 0 from CONNECT into non-zero (the session
    /// checks that, it needs the CONNECT).
    pub session_expiry_interval: Option<u32>,
    pub reason_string: Option<String>,
    pub user_properties: UserProperties,
    /// Server to client only, with 0x9C Use another server / 0x9D Server moved.
    pub server_reference: Option<String>,
}

impl PropertySet for DisconnectProperties {
    fn apply(&mut self, identifier: u8, value: Value) -> Result<bool, DecodeError> {
        match (identifier, value) {
            (SESSION_EXPIRY_INTERVAL, Value::FourByte(v)) => once(&mut self.session_expiry_interval, v, identifier)?,
            (REASON_STRING, Value::String(v)) => once(&mut self.reason_string, v, identifier)?,
            (USER_PROPERTY, Value::StringPair(k, v)) => self.user_properties.push((k, v)),
            (SERVER_REFERENCE, Value::String(v)) => once(&mut self.server_reference, v, identifier)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn visit<S: Sink>(&self, sink: &mut S) {
        put_u32(sink, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_string(sink, SERVER_REFERENCE, &self.server_reference);
        put_string(sink, REASON_STRING, &self.reason_string);
        put_user_properties(sink, &self.user_properties);
    }
}

/// AUTH properties (spec 3.15.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthProperties {
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<String>,
    pub user_properties: UserProperties,
}

impl PropertySet for AuthProperties {
    fn apply(&mut self, identifier: u8, value: Value) -> Result<bool, DecodeError> {
        match (identifier, value) {
            (AUTHENTICATION_METHOD, Value::String(v)) => once(&mut self.authentication_method, v, identifier)?,
            (AUTHENTICATION_DATA, Value::Binary(v)) => once(&mut self.authentication_data, v, identifier)?,
            (REASON_STRING, Value::String(v)) => once(&mut self.reason_string, v, identifier)?,
            (USER_PROPERTY, Value::StringPair(k, v)) => self.user_properties.push((k, v)),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn check(&self) -> Result<(), DecodeError> {
        if self.authentication_data.is_some() && self.authentication_method.is_none() {
            return Err(DecodeError::AuthDataWithoutMethod);
        }
        Ok(())
    }

    fn visit<S: Sink>(&self, sink: &mut S) {
        put_string(sink, AUTHENTICATION_METHOD, &self.authentication_method);
        put_binary(sink, AUTHENTICATION_DATA, &self.authentication_data);
        put_string(sink, REASON_STRING, &self.reason_string);
        put_user_properties(sink, &self.user_properties);
    }
}
