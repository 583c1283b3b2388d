//! Bytes in, packets out.

use bytes::{Buf, BytesMut};

use crate::error::DecodeError;
use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PacketType, ProtocolVersion, PubReply, Publish, QoS, RetainHandling, SubAck, Subscribe,
    Subscription, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
use crate::props::{self, PropertySet, ReasonProperties};
use crate::reason::{allowed, ReasonCode};
use crate::topic::{split_shared, validate_topic_filter, validate_topic_name};
use crate::wire::{read_vbi, Reader};

/// Decodes one packet from the front of `buf`.
///
/// - `Ok(None)`: more bytes are needed; `buf` is untouched.
/// - `Ok(Some(packet))`: exactly that packet's bytes were consumed.
/// - `Err(_)`: the connection cannot continue. Errors found in the fixed header
///   (`PacketTooLarge`, a bad first byte) leave `buf` untouched; errors in the body
///   consume the packet.
///
/// `version` is the connection's version, or `None` before CONNECT: then only CONNECT
/// is accepted and read with the version it announces (see `Connect::version`). After
/// CONNECT every packet type decodes, whichever direction it normally travels: refusing
/// a second CONNECT, or a CONNACK from a client, is the session's decision.
///
/// Bounded: the total packet size (fixed header included, as MQTT 5's Maximum Packet
/// Size counts it) is checked against `max_packet_bytes` as soon as the remaining
/// length is known, before waiting for the body, so a peer cannot make us buffer more.
/// Nothing allocated while decoding is larger than the packet's own bytes.
pub fn decode(buf: &mut BytesMut, version: Option<ProtocolVersion>, max_packet_bytes: usize) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let type_bits = first >> 4;
    let flags = first & 0x0F;
    let packet_type = PacketType::from_u8(type_bits).ok_or(DecodeError::ReservedPacketType(0))?;
    // Both checks need only the first byte, so garbage fails before we wait for more.
    match version {
        None if packet_type != PacketType::Connect => {
            return Err(DecodeError::ExpectedConnect { packet_type: type_bits });
        }
        Some(v) if packet_type == PacketType::Auth && !v.is_v5() => {
            return Err(DecodeError::ReservedPacketType(type_bits));
        }
        _ => {}
    }
    check_header_flags(packet_type, flags)?;

    let Some((remaining, len_bytes)) = read_vbi(&buf[1..])? else {
        return Ok(None);
    };
    let header_len = 1 + len_bytes;
    let total = header_len + remaining as usize;
    if total > max_packet_bytes {
        return Err(DecodeError::PacketTooLarge { size: total, max: max_packet_bytes });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(header_len);
    let reader = Reader::new(frame);

    let version = match version {
        Some(v) => v,
        // Only CONNECT gets here without a version; it reads its own.
        None => return decode_connect(reader).map(|c| Some(Packet::Connect(c))),
    };
    let v5 = version.is_v5();
    let packet = match packet_type {
        PacketType::Connect => Packet::Connect(decode_connect(reader)?),
        PacketType::ConnAck => Packet::ConnAck(decode_connack(reader, version)?),
        PacketType::Publish => Packet::Publish(decode_publish(reader, flags, v5)?),
        PacketType::PubAck => Packet::PubAck(decode_pub_reply(reader, packet_type, v5)?),
        PacketType::PubRec => Packet::PubRec(decode_pub_reply(reader, packet_type, v5)?),
        PacketType::PubRel => Packet::PubRel(decode_pub_reply(reader, packet_type, v5)?),
        PacketType::PubComp => Packet::PubComp(decode_pub_reply(reader, packet_type, v5)?),
        PacketType::Subscribe => Packet::Subscribe(decode_subscribe(reader, v5)?),
        PacketType::SubAck => Packet::SubAck(decode_suback(reader, v5)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(decode_unsubscribe(reader, v5)?),
        PacketType::UnsubAck => Packet::UnsubAck(decode_unsuback(reader, v5)?),
        PacketType::PingReq => {
            reader.finish()?;
            Packet::PingReq
        }
        PacketType::PingResp => {
            reader.finish()?;
            Packet::PingResp
        }
        PacketType::Disconnect => Packet::Disconnect(decode_disconnect(reader, v5)?),
        PacketType::Auth => Packet::Auth(decode_auth(reader)?),
    };
    Ok(Some(packet))
}

/// Fixed header flags (spec 2.1.3): PUBLISH carries DUP/QoS/RETAIN, PUBREL, SUBSCRIBE and
/// UNSUBSCRIBE must be 0b0010, everything else 0.
fn check_header_flags(packet_type: PacketType, flags: u8) -> Result<(), DecodeError> {
    let expected = match packet_type {
        PacketType::Publish => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::InvalidQoS(qos));
            }
            // Mosquitto rejects this too; a QoS 0 message can never be a redelivery.
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::DupWithQoS0);
            }
            return Ok(());
        }
        PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
        _ => 0,
    };
    if flags != expected {
        return Err(DecodeError::InvalidHeaderFlags { packet_type, flags });
    }
    Ok(())
}

fn non_zero_packet_id(reader: &mut Reader) -> Result<u16, DecodeError> {
    match reader.u16()? {
        0 => Err(DecodeError::ZeroPacketId),
        id => Ok(id),
    }
}

fn reason(code: u8, packet: PacketType, table: &[u8]) -> Result<ReasonCode, DecodeError> {
    if table.contains(&code) {
        Ok(ReasonCode(code))
    } else {
        Err(DecodeError::InvalidReasonCode { packet, code })
    }
}

fn properties<P: PropertySet>(reader: &mut Reader, packet: PacketType, v5: bool) -> Result<P, DecodeError> {
    if v5 {
        props::read_block(reader, packet)
    } else {
        Ok(P::default())
    }
}

const CONNECT_USERNAME: u8 = 0b1000_0000;
const CONNECT_PASSWORD: u8 = 0b0100_0000;
const CONNECT_WILL_RETAIN: u8 = 0b0010_0000;
const CONNECT_WILL_QOS: u8 = 0b0001_1000;
const CONNECT_WILL: u8 = 0b0000_0100;
const CONNECT_CLEAN_START: u8 = 0b0000_0010;
const CONNECT_RESERVED: u8 = 0b0000_0001;

fn decode_connect(mut reader: Reader) -> Result<Connect, DecodeError> {
    let name = reader.string()?;
    let level = reader.u8()?;
    // Like mosquitto: an unknown name is not an MQTT client (close), a known name with
    // the wrong level gets CONNACK "unsupported protocol version".
    if name != "MQTT" && name != "MQIsdp" {
        return Err(DecodeError::InvalidProtocolName { level });
    }
    let version = ProtocolVersion::from_level(level)
        .filter(|v| v.protocol_name() == name)
        .ok_or(DecodeError::UnsupportedProtocolVersion { level })?;
    let v5 = version.is_v5();

    let flags = reader.u8()?;
    // v3.1 did not reserve bit 0; only 3.1.1 and 5 require it clear.
    if flags & CONNECT_RESERVED != 0 && version != ProtocolVersion::V3_1 {
        return Err(DecodeError::InvalidConnectFlags(flags));
    }
    let has_will = flags & CONNECT_WILL != 0;
    let will_qos_bits = (flags & CONNECT_WILL_QOS) >> 3;
    let will_retain = flags & CONNECT_WILL_RETAIN != 0;
    if !has_will && (will_qos_bits != 0 || will_retain) {
        return Err(DecodeError::InvalidConnectFlags(flags));
    }
    let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::InvalidQoS(will_qos_bits))?;
    let has_username = flags & CONNECT_USERNAME != 0;
    let has_password = flags & CONNECT_PASSWORD != 0;
    if has_password && !has_username && !v5 {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = reader.u16()?;
    let properties = properties(&mut reader, PacketType::Connect, v5)?;
    let client_id = reader.string()?;
    let will = if has_will {
        let properties = properties_will(&mut reader, v5)?;
        let topic = reader.string()?;
        validate_topic_name(&topic)?;
        let payload = reader.binary()?;
        Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
    } else {
        None
    };
    // v3.1 clients exist that set the user name / password flags and then omit the
    // field; mosquitto ignores the flag for them, and so do we.
    let lenient = version == ProtocolVersion::V3_1;
    let username = if has_username && !(lenient && reader.is_empty()) { Some(reader.string()?) } else { None };
    let password = if has_password && !(lenient && reader.is_empty()) { Some(reader.binary()?) } else { None };
    reader.finish()?;
    Ok(Connect { version, clean_start: flags & CONNECT_CLEAN_START != 0, keep_alive, client_id, will, username, password, properties })
}

fn properties_will(reader: &mut Reader, v5: bool) -> Result<props::WillProperties, DecodeError> {
    properties(reader, PacketType::Connect, v5)
}

fn decode_connack(mut reader: Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = reader.u8()?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::InvalidConnAckFlags(flags));
    }
    // MQTT 3.1 reserves the whole byte; its bit 0 is not a session flag there.
    let session_present = flags & 1 != 0 && version != ProtocolVersion::V3_1;
    let code = reader.u8()?;
    let reason_code = if version.is_v5() {
        reason(code, PacketType::ConnAck, allowed::CONNACK)?
    } else {
        ReasonCode::from_v3_connack(code).ok_or(DecodeError::InvalidReasonCode { packet: PacketType::ConnAck, code })?
    };
    // A refused connection has no session (spec 3.2.2.1.1).
    if session_present && reason_code.is_error() {
        return Err(DecodeError::InvalidConnAckFlags(flags));
    }
    let properties = properties(&mut reader, PacketType::ConnAck, version.is_v5())?;
    reader.finish()?;
    Ok(ConnAck { session_present, reason_code, properties })
}

fn decode_publish(mut reader: Reader, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    // check_header_flags already rejected QoS 3.
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS(3))?;
    let topic = reader.string()?;
    if !topic.is_empty() {
        validate_topic_name(&topic)?;
    } else if !v5 {
        return Err(DecodeError::EmptyTopicName);
    }
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        _ => Some(non_zero_packet_id(&mut reader)?),
    };
    let properties: props::PublishProperties = properties(&mut reader, PacketType::Publish, v5)?;
    // An empty topic is how v5 says "use the alias" (spec 3.3.2.3.4).
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::EmptyTopicName);
    }
    Ok(Publish { dup: flags & 0b1000 != 0, qos, retain: flags & 0b0001 != 0, topic, packet_id, payload: reader.rest(), properties })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. v5 may shorten them: no properties when fewer than
/// 4 bytes remain, no reason code (= success) when only the packet id is there.
fn decode_pub_reply(mut reader: Reader, packet: PacketType, v5: bool) -> Result<PubReply, DecodeError> {
    let packet_id = non_zero_packet_id(&mut reader)?;
    let mut reason_code = ReasonCode::SUCCESS;
    let mut properties = ReasonProperties::default();
    if v5 && !reader.is_empty() {
        let table = match packet {
            PacketType::PubAck | PacketType::PubRec => allowed::PUBACK,
            _ => allowed::PUBREL,
        };
        reason_code = reason(reader.u8()?, packet, table)?;
        if !reader.is_empty() {
            properties = props::read_block(&mut reader, packet)?;
        }
    }
    reader.finish()?;
    Ok(PubReply { packet_id, reason_code, properties })
}

const OPTIONS_QOS: u8 = 0b0000_0011;
const OPTIONS_NO_LOCAL: u8 = 0b0000_0100;
const OPTIONS_RETAIN_AS_PUBLISHED: u8 = 0b0000_1000;
const OPTIONS_RETAIN_HANDLING: u8 = 0b0011_0000;

fn decode_subscribe(mut reader: Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = non_zero_packet_id(&mut reader)?;
    let properties = properties(&mut reader, PacketType::Subscribe, v5)?;
    // Grows one entry per filter read, so it is bounded by the packet's bytes.
    let mut subscriptions = Vec::new();
    while !reader.is_empty() {
        let filter = reader.string()?;
        let byte = reader.u8()?;
        let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
        if byte & reserved != 0 {
            return Err(DecodeError::InvalidSubscriptionOptions(byte));
        }
        let qos_bits = byte & OPTIONS_QOS;
        let qos = QoS::from_u8(qos_bits).ok_or(DecodeError::InvalidQoS(qos_bits))?;
        let retain_handling = RetainHandling::from_u8((byte & OPTIONS_RETAIN_HANDLING) >> 4).ok_or(DecodeError::InvalidRetainHandling)?;
        let options = SubscriptionOptions {
            qos,
            no_local: byte & OPTIONS_NO_LOCAL != 0,
            retain_as_published: byte & OPTIONS_RETAIN_AS_PUBLISHED != 0,
            retain_handling,
        };
        validate_topic_filter(&filter)?;
        // A member would never get its own messages back otherwise (spec 3.8.3.1).
        if options.no_local && split_shared(&filter).is_some() {
            return Err(DecodeError::NoLocalOnSharedSubscription);
        }
        subscriptions.push(Subscription { filter, options });
    }
    if subscriptions.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(Subscribe { packet_id, subscriptions, properties })
}

fn decode_suback(mut reader: Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = non_zero_packet_id(&mut reader)?;
    let properties = properties(&mut reader, PacketType::SubAck, v5)?;
    let table = if v5 { allowed::SUBACK } else { allowed::SUBACK_V3 };
    let reason_codes = reason_list(reader, PacketType::SubAck, table)?;
    Ok(SubAck { packet_id, reason_codes, properties })
}

fn reason_list(mut reader: Reader, packet: PacketType, table: &[u8]) -> Result<Vec<ReasonCode>, DecodeError> {
    let raw = reader.rest();
    raw.iter().map(|&code| reason(code, packet, table)).collect()
}

fn decode_unsubscribe(mut reader: Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = non_zero_packet_id(&mut reader)?;
    let properties = properties(&mut reader, PacketType::Unsubscribe, v5)?;
    let mut filters = Vec::new();
    while !reader.is_empty() {
        let filter = reader.string()?;
        validate_topic_filter(&filter)?;
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(Unsubscribe { packet_id, filters, properties })
}

fn decode_unsuback(mut reader: Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = non_zero_packet_id(&mut reader)?;
    if !v5 {
        reader.finish()?;
        return Ok(UnsubAck { packet_id, reason_codes: Vec::new(), properties: Default::default() });
    }
    let properties = props::read_block(&mut reader, PacketType::UnsubAck)?;
    let reason_codes = reason_list(reader, PacketType::UnsubAck, allowed::UNSUBACK)?;
    Ok(UnsubAck { packet_id, reason_codes, properties })
}

/// v5 DISCONNECT and AUTH: no bytes means success, one byte means a reason without
/// properties.
fn decode_disconnect(mut reader: Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    let mut disconnect = Disconnect::default();
    if v5 && !reader.is_empty() {
        disconnect.reason_code = reason(reader.u8()?, PacketType::Disconnect, allowed::DISCONNECT)?;
        if !reader.is_empty() {
            disconnect.properties = props::read_block(&mut reader, PacketType::Disconnect)?;
        }
    }
    reader.finish()?;
    Ok(disconnect)
}

fn decode_auth(mut reader: Reader) -> Result<Auth, DecodeError> {
    let mut auth = Auth::default();
    if !reader.is_empty() {
        auth.reason_code = reason(reader.u8()?, PacketType::Auth, allowed::AUTH)?;
        if !reader.is_empty() {
            auth.properties = props::read_block(&mut reader, PacketType::Auth)?;
        }
    }
    reader.finish()?;
    Ok(auth)
}
