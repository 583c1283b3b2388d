//! Packets in, bytes out.

use bytes::BytesMut;

use crate::error::EncodeError;
use crate::packet::{ConnAck, Connect, Packet, PacketType, ProtocolVersion, PubReply, Publish, QoS, Subscribe, SubscriptionOptions};
use crate::props::{self, PropertySet};
use crate::reason::ReasonCode;
use crate::wire::{vbi_len, Measure, Sink, VARIABLE_BYTE_INTEGER_MAX};

/// Appends `packet`, laid out for `version`, to `out`.
///
/// Fields `version` cannot carry are dropped: properties before v5, reason codes v3
/// has no place for, a password without user name before v5, AUTH fails. v5 acks,
/// DISCONNECT and AUTH use the short forms when the reason is SUCCESS and there are no
/// properties, because many clients expect exactly those bytes.
///
/// On error nothing is written. The packet is not otherwise validated: the encoder
/// trusts the session to build packets the spec allows.
pub fn encode(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
    let mut measure = Measure::default();
    body(packet, version, &mut measure);
    if let Some(error) = measure.error {
        return Err(error);
    }
    let body_len =
        u32::try_from(measure.len).ok().filter(|&len| len <= VARIABLE_BYTE_INTEGER_MAX).ok_or(EncodeError::PacketTooLarge(measure.len))?;
    out.reserve(1 + vbi_len(body_len) + measure.len);
    out.u8(first_byte(packet));
    out.vbi(body_len);
    body(packet, version, out);
    Ok(())
}

/// Bytes `encode` would write, fixed header included: what the session compares with
/// the client's Maximum Packet Size before sending (and, if too large, drops the reason
/// string and user properties and asks again). For a packet `encode` rejects, the
/// size it would have had.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let mut measure = Measure::default();
    body(packet, version, &mut measure);
    let body_len = u32::try_from(measure.len).unwrap_or(u32::MAX);
    1 + vbi_len(body_len) + measure.len
}

fn first_byte(packet: &Packet) -> u8 {
    let packet_type = packet.packet_type();
    let flags = match packet {
        Packet::Publish(publish) => u8::from(publish.dup) << 3 | publish.qos.as_u8() << 1 | u8::from(publish.retain),
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
        _ => 0,
    };
    (packet_type as u8) << 4 | flags
}

fn body<S: Sink>(packet: &Packet, version: ProtocolVersion, sink: &mut S) {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(connect) => connect_body(connect, version, sink),
        Packet::ConnAck(connack) => connack_body(connack, version, sink),
        Packet::Publish(publish) => publish_body(publish, v5, sink),
        Packet::PubAck(reply) | Packet::PubRec(reply) | Packet::PubRel(reply) | Packet::PubComp(reply) => pub_reply_body(reply, v5, sink),
        Packet::Subscribe(subscribe) => subscribe_body(subscribe, v5, sink),
        Packet::SubAck(suback) => {
            sink.u16(suback.packet_id);
            properties_if(v5, &suback.properties, sink);
            for code in &suback.reason_codes {
                sink.u8(if v5 { code.0 } else { code.to_v3_suback() });
            }
        }
        Packet::Unsubscribe(unsubscribe) => {
            sink.u16(unsubscribe.packet_id);
            properties_if(v5, &unsubscribe.properties, sink);
            for filter in &unsubscribe.filters {
                sink.string(filter);
            }
        }
        Packet::UnsubAck(unsuback) => {
            sink.u16(unsuback.packet_id);
            // v3 UNSUBACK is the packet id alone.
            if v5 {
                props::write_block(&unsuback.properties, sink);
                for code in &unsuback.reason_codes {
                    sink.u8(code.0);
                }
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(disconnect) => {
            if v5 {
                short_reason(disconnect.reason_code, &disconnect.properties, sink);
            }
        }
        Packet::Auth(auth) => {
            if v5 {
                short_reason(auth.reason_code, &auth.properties, sink);
            } else {
                sink.fail(EncodeError::NotInVersion(PacketType::Auth));
            }
        }
    }
}

fn properties_if<P: PropertySet, S: Sink>(v5: bool, properties: &P, sink: &mut S) {
    if v5 {
        props::write_block(properties, sink);
    }
}

/// Reason code and properties that may be left out: nothing for SUCCESS without
/// properties. Any other reason is followed by its property length, even a zero
/// one the spec would let us omit: rumqttc 0.25 cannot parse the reason-only form
/// (it waits for the property length and reports the connection aborted).
fn short_reason<P: PropertySet, S: Sink>(reason: ReasonCode, properties: &P, sink: &mut S) {
    let has_properties = props::block_body_len(properties) > 0;
    if reason == ReasonCode::SUCCESS && !has_properties {
        return;
    }
    sink.u8(reason.0);
    props::write_block(properties, sink);
}

fn connect_body<S: Sink>(connect: &Connect, version: ProtocolVersion, sink: &mut S) {
    let v5 = version.is_v5();
    // Before v5 a password needs a user name; one that cannot be sent is dropped.
    let password = connect.password.as_ref().filter(|_| v5 || connect.username.is_some());
    let mut flags = 0u8;
    if connect.username.is_some() {
        flags |= 0b1000_0000;
    }
    if password.is_some() {
        flags |= 0b0100_0000;
    }
    if let Some(will) = &connect.will {
        flags |= u8::from(will.retain) << 5 | will.qos.as_u8() << 3 | 0b0000_0100;
    }
    if connect.clean_start {
        flags |= 0b0000_0010;
    }
    sink.string(version.protocol_name());
    sink.u8(version.level());
    sink.u8(flags);
    sink.u16(connect.keep_alive);
    properties_if(v5, &connect.properties, sink);
    sink.string(&connect.client_id);
    if let Some(will) = &connect.will {
        properties_if(v5, &will.properties, sink);
        sink.string(&will.topic);
        sink.binary(&will.payload);
    }
    if let Some(username) = &connect.username {
        sink.string(username);
    }
    if let Some(password) = password {
        sink.binary(password);
    }
}

fn connack_body<S: Sink>(connack: &ConnAck, version: ProtocolVersion, sink: &mut S) {
    // MQTT 3.1 has no session present flag; the byte is reserved there.
    let session_present = connack.session_present && version != ProtocolVersion::V3_1;
    sink.u8(u8::from(session_present));
    if version.is_v5() {
        sink.u8(connack.reason_code.0);
        props::write_block(&connack.properties, sink);
    } else {
        sink.u8(connack.reason_code.to_v3_connack());
    }
}

fn publish_body<S: Sink>(publish: &Publish, v5: bool, sink: &mut S) {
    sink.string(&publish.topic);
    if publish.qos != QoS::AtMostOnce {
        match publish.packet_id {
            Some(id) => sink.u16(id),
            None => sink.fail(EncodeError::MissingPacketId),
        }
    }
    properties_if(v5, &publish.properties, sink);
    sink.raw(&publish.payload);
}

fn pub_reply_body<S: Sink>(reply: &PubReply, v5: bool, sink: &mut S) {
    sink.u16(reply.packet_id);
    if v5 {
        short_reason(reply.reason_code, &reply.properties, sink);
    }
}

fn subscribe_body<S: Sink>(subscribe: &Subscribe, v5: bool, sink: &mut S) {
    sink.u16(subscribe.packet_id);
    properties_if(v5, &subscribe.properties, sink);
    for subscription in &subscribe.subscriptions {
        sink.string(&subscription.filter);
        sink.u8(options_byte(&subscription.options, v5));
    }
}

fn options_byte(options: &SubscriptionOptions, v5: bool) -> u8 {
    let mut byte = options.qos.as_u8();
    if v5 {
        byte |= u8::from(options.no_local) << 2 | u8::from(options.retain_as_published) << 3 | (options.retain_handling as u8) << 4;
    }
    byte
}
