//! Byte-exact vectors written out by hand from the spec's packet layouts, every
//! malformation the decoder must catch with the reason code it must report, and the
//! bounds: a huge declared length fails at once without buffering.

use bytes::{Bytes, BytesMut};
use polymq_mqtt::*;

use ProtocolVersion::{V3_1, V3_1_1, V5};

const MAX: usize = 1 << 20;

/// A fixed header (first byte, remaining length) in front of `body`.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A UTF-8 string / binary field: 2-byte length, then the bytes.
fn s(text: &str) -> Vec<u8> {
    field(text.as_bytes())
}

fn field(data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn decode_all(bytes: &[u8], version: Option<ProtocolVersion>) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let result = decode(&mut buf, version, MAX);
    if let Ok(Some(_)) = result {
        assert!(buf.is_empty(), "decode left {} bytes", buf.len());
    }
    result
}

fn decoded(bytes: &[u8], version: Option<ProtocolVersion>) -> Packet {
    decode_all(bytes, version).expect("decodes").expect("complete")
}

fn failure(bytes: &[u8], version: Option<ProtocolVersion>) -> DecodeError {
    decode_all(bytes, version).expect_err("must be rejected")
}

fn encoded(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out).expect("encodes");
    assert_eq!(out.len(), encoded_len(packet, version));
    out.to_vec()
}

/// Decodes `bytes` to `packet` and encodes `packet` back to exactly `bytes`.
fn vector(bytes: &[u8], version: ProtocolVersion, packet: Packet) {
    let connected = match packet {
        Packet::Connect(_) => None,
        _ => Some(version),
    };
    assert_eq!(decoded(bytes, connected), packet);
    assert_eq!(encoded(&packet, version), bytes);
}

// --- vectors ---------------------------------------------------------------------------

fn connect_user_pass(version: ProtocolVersion, properties: ConnectProperties) -> Packet {
    Packet::Connect(Connect {
        version,
        clean_start: true,
        keep_alive: 10,
        client_id: "client".into(),
        will: None,
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"pass")),
        properties,
    })
}

#[test]
fn connect_v3_1_1() {
    // Spec 3.1.2: name "MQTT", level 4, flags user|password|clean (0xC2), keep alive 10.
    let bytes = [
        0x10, 0x1E, //
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xC2, 0x00, 0x0A, //
        0x00, 0x06, b'c', b'l', b'i', b'e', b'n', b't', //
        0x00, 0x04, b'u', b's', b'e', b'r', //
        0x00, 0x04, b'p', b'a', b's', b's',
    ];
    vector(&bytes, V3_1_1, connect_user_pass(V3_1_1, Default::default()));
}

#[test]
fn connect_v5() {
    // Spec 3.1.2.12's example variable header: level 5, keep alive 10, properties of
    // length 5 holding Session Expiry Interval (0x11) = 10.
    let bytes = [
        0x10, 0x24, //
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xC2, 0x00, 0x0A, //
        0x05, 0x11, 0x00, 0x00, 0x00, 0x0A, //
        0x00, 0x06, b'c', b'l', b'i', b'e', b'n', b't', //
        0x00, 0x04, b'u', b's', b'e', b'r', //
        0x00, 0x04, b'p', b'a', b's', b's',
    ];
    let properties = ConnectProperties { session_expiry_interval: Some(10), ..Default::default() };
    vector(&bytes, V5, connect_user_pass(V5, properties));
}

#[test]
fn connect_v3_1_with_will() {
    // "MQIsdp", level 3, flags will retain | will QoS 1 | will | clean = 0x2E.
    let body = cat(&[&s("MQIsdp"), &[0x03, 0x2E, 0x00, 0x3C], &s("abc"), &s("t/w"), &s("bye")]);
    let want = Packet::Connect(Connect {
        version: V3_1,
        clean_start: true,
        keep_alive: 60,
        client_id: "abc".into(),
        will: Some(Will {
            topic: "t/w".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
        }),
        username: None,
        password: None,
        properties: Default::default(),
    });
    vector(&packet(0x10, &body), V3_1, want);
}

#[test]
fn connect_v5_with_will_properties() {
    // Will properties come before the will topic: Will Delay Interval (0x18) = 5.
    let body = cat(&[
        &s("MQTT"),
        &[0x05, 0x0C, 0x00, 0x00, 0x00], // will QoS 1 | will; no properties
        &s("c"),
        &[0x05, 0x18, 0x00, 0x00, 0x00, 0x05],
        &s("t"),
        &field(b"x"),
    ]);
    let Packet::Connect(connect) = decoded(&packet(0x10, &body), None) else { panic!("CONNECT") };
    let will = connect.will.expect("will");
    assert_eq!(will.properties.will_delay_interval, Some(5));
    assert_eq!(will.qos, QoS::AtLeastOnce);
    assert!(!connect.clean_start);
}

fn publish_a_b(properties: PublishProperties) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a/b".into(),
        packet_id: Some(10),
        payload: Bytes::from_static(b"hi"),
        properties,
    })
}

#[test]
fn publish_v3_1_1() {
    // Spec 3.3: QoS 1 (0x32), topic "a/b", packet id 10, payload "hi".
    let bytes = [0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i'];
    vector(&bytes, V3_1_1, publish_a_b(Default::default()));
}

#[test]
fn publish_v5() {
    // Same, with properties: Message Expiry Interval (0x02) = 60, Topic Alias (0x23) = 1.
    let bytes = [
        0x32, 0x12, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, //
        0x08, 0x02, 0x00, 0x00, 0x00, 0x3C, 0x23, 0x00, 0x01, //
        b'h', b'i',
    ];
    let properties = PublishProperties { message_expiry_interval: Some(60), topic_alias: Some(1), ..Default::default() };
    vector(&bytes, V5, publish_a_b(properties));
    // No properties still carries a zero property length.
    let bytes = [0x32, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, 0x00, b'h', b'i'];
    vector(&bytes, V5, publish_a_b(Default::default()));
}

#[test]
fn publish_payload_is_a_slice_of_the_input() {
    let mut buf = BytesMut::from(&[0x30, 0x07, 0x00, 0x01, b't', b'd', b'a', b't', b'a'][..]);
    let start = buf.as_ptr() as usize;
    let Ok(Some(Packet::Publish(publish))) = decode(&mut buf, Some(V3_1_1), MAX) else { panic!("PUBLISH") };
    assert_eq!(&publish.payload[..], b"data");
    assert_eq!(publish.payload.as_ptr() as usize, start + 5, "payload was copied");
}

#[test]
fn publish_v5_alias_only() {
    // An empty topic is allowed when a topic alias names it.
    let body = cat(&[&s(""), &[0x03, 0x23, 0x00, 0x07], b"p"]);
    let Packet::Publish(publish) = decoded(&packet(0x30, &body), Some(V5)) else { panic!() };
    assert_eq!(publish.topic, "");
    assert_eq!(publish.properties.topic_alias, Some(7));
}

#[test]
fn publish_v5_repeated_subscription_identifiers() {
    let body = cat(&[&s("t"), &[0x04, 0x0B, 0x01, 0x0B, 0x02], b"p"]);
    let Packet::Publish(publish) = decoded(&packet(0x30, &body), Some(V5)) else { panic!() };
    assert_eq!(publish.properties.subscription_identifiers, vec![1, 2]);
}

#[test]
fn connack_vectors() {
    let accepted =
        |present| Packet::ConnAck(ConnAck { session_present: present, reason_code: ReasonCode::SUCCESS, properties: Default::default() });
    vector(&[0x20, 0x02, 0x01, 0x00], V3_1_1, accepted(true));
    vector(&[0x20, 0x03, 0x00, 0x00, 0x00], V5, accepted(false));
    // v5 reasons become v3 return codes.
    for (reason, v3) in [(0x84, 1), (0x85, 2), (0x88, 3), (0x89, 3), (0x86, 4), (0x87, 5), (0x80, 3), (0x8A, 3)] {
        let refused = Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode(reason),
            properties: ConnAckProperties { reason_string: Some("no".into()), ..Default::default() },
        });
        assert_eq!(encoded(&refused, V3_1_1), [0x20, 0x02, 0x00, v3]);
        assert_eq!(encoded(&refused, V5), [0x20, 0x08, 0x00, reason, 0x05, 0x1F, 0x00, 0x02, b'n', b'o']);
    }
}

#[test]
fn ack_short_forms() {
    let puback = |reason, properties| Packet::PubAck(PubReply { packet_id: 10, reason_code: ReasonCode(reason), properties });
    vector(&[0x40, 0x02, 0x00, 0x0A], V3_1_1, puback(0, Default::default()));
    vector(&[0x40, 0x02, 0x00, 0x0A], V5, puback(0, Default::default()));
    // A failure reason is always followed by a property length (rumqttc needs it);
    // the reason-only form the spec also allows still decodes.
    vector(&[0x40, 0x04, 0x00, 0x0A, 0x10, 0x00], V5, puback(0x10, Default::default()));
    assert_eq!(decoded(&[0x40, 0x03, 0x00, 0x0A, 0x10], Some(V5)), puback(0x10, Default::default()));
    let with_reason = ReasonProperties { reason_string: Some("x".into()), ..Default::default() };
    vector(&[0x40, 0x08, 0x00, 0x0A, 0x00, 0x04, 0x1F, 0x00, 0x01, b'x'], V5, puback(0, with_reason));
    // v3 has no reason: a failure PUBACK is just the packet id there.
    assert_eq!(encoded(&puback(0x80, Default::default()), V3_1_1), [0x40, 0x02, 0x00, 0x0A]);
    vector(&[0x62, 0x02, 0x00, 0x0A], V5, Packet::PubRel(PubReply::success(10)));
    vector(
        &[0x70, 0x04, 0x00, 0x0A, 0x92, 0x00],
        V5,
        Packet::PubComp(PubReply { packet_id: 10, reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND, properties: Default::default() }),
    );
}

#[test]
fn subscribe_vectors() {
    let subscribe = |options, properties| {
        Packet::Subscribe(Subscribe { packet_id: 1, subscriptions: vec![Subscription { filter: "a/b".into(), options }], properties })
    };
    let qos1 = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
    vector(&[0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'b', 0x01], V3_1_1, subscribe(qos1, Default::default()));
    // v5: Subscription Identifier (0x0B) = 5; options QoS 2 | no local | RAP | RH 1 = 0x1E.
    let options = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::SendAtSubscribeIfNew,
    };
    let properties = SubscribeProperties { subscription_identifier: Some(5), ..Default::default() };
    vector(&[0x82, 0x0B, 0x00, 0x01, 0x02, 0x0B, 0x05, 0x00, 0x03, b'a', b'/', b'b', 0x1E], V5, subscribe(options, properties));
    // v3 drops the v5-only options.
    assert_eq!(encoded(&subscribe(options, Default::default()), V3_1_1)[9], 0x02);

    let suback = Packet::SubAck(SubAck {
        packet_id: 1,
        reason_codes: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED],
        properties: Default::default(),
    });
    vector(&[0x90, 0x05, 0x00, 0x01, 0x00, 0x01, 0x87], V5, suback.clone());
    assert_eq!(encoded(&suback, V3_1_1), [0x90, 0x04, 0x00, 0x01, 0x01, 0x80]);

    let unsubscribe = Packet::Unsubscribe(Unsubscribe { packet_id: 2, filters: vec!["a/+".into()], properties: Default::default() });
    vector(&[0xA2, 0x07, 0x00, 0x02, 0x00, 0x03, b'a', b'/', b'+'], V3_1_1, unsubscribe);
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: 2,
        reason_codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
        properties: Default::default(),
    });
    vector(&[0xB0, 0x04, 0x00, 0x02, 0x00, 0x11], V5, unsuback.clone());
    assert_eq!(encoded(&unsuback, V3_1_1), [0xB0, 0x02, 0x00, 0x02]);
}

#[test]
fn ping_disconnect_auth_vectors() {
    vector(&[0xC0, 0x00], V3_1_1, Packet::PingReq);
    vector(&[0xD0, 0x00], V5, Packet::PingResp);
    vector(&[0xE0, 0x00], V3_1_1, Packet::Disconnect(Disconnect::default()));
    vector(&[0xE0, 0x00], V5, Packet::Disconnect(Disconnect::default()));
    let taken_over = Packet::Disconnect(Disconnect { reason_code: ReasonCode::SESSION_TAKEN_OVER, properties: Default::default() });
    vector(&[0xE0, 0x02, 0x8E, 0x00], V5, taken_over.clone());
    assert_eq!(decoded(&[0xE0, 0x01, 0x8E], Some(V5)), taken_over, "the reason-only form decodes");
    assert_eq!(encoded(&taken_over, V3_1_1), [0xE0, 0x00]);
    vector(&[0xF0, 0x00], V5, Packet::Auth(Auth::default()));
    let mut out = BytesMut::new();
    assert_eq!(encode(&Packet::Auth(Auth::default()), V3_1_1, &mut out), Err(EncodeError::NotInVersion(PacketType::Auth)));
    assert!(out.is_empty());
}

#[test]
fn v3_1_tolerates_missing_credentials() {
    // User name and password flags set, fields absent: mosquitto accepts this from 3.1.
    let body = cat(&[&s("MQIsdp"), &[0x03, 0xC2, 0x00, 0x3C], &s("abc")]);
    let Packet::Connect(connect) = decoded(&packet(0x10, &body), None) else { panic!() };
    assert_eq!((connect.username, connect.password), (None, None));
    // ...but 3.1.1 does not.
    let body = cat(&[&s("MQTT"), &[0x04, 0xC2, 0x00, 0x3C], &s("abc")]);
    assert_eq!(failure(&packet(0x10, &body), None), DecodeError::UnexpectedEnd);
}

#[test]
fn long_client_ids_are_left_to_the_session() {
    let id = "x".repeat(200);
    let body = cat(&[&s("MQIsdp"), &[0x03, 0x02, 0x00, 0x3C], &s(&id)]);
    let Packet::Connect(connect) = decoded(&packet(0x10, &body), None) else { panic!() };
    assert_eq!(connect.client_id, id);
}

// --- malformations ---------------------------------------------------------------------

fn connect_body(level: u8, flags: u8, properties: &[u8], payload: &[u8]) -> Vec<u8> {
    let name = if level == 3 { "MQIsdp" } else { "MQTT" };
    let mut body = cat(&[&s(name), &[level, flags, 0x00, 0x3C]]);
    if level == 5 {
        body.extend_from_slice(properties);
    }
    body.extend_from_slice(payload);
    packet(0x10, &body)
}

/// Expects `bytes` to be rejected with `reason`, and returns the error for closer checks.
#[track_caller]
fn rejected(bytes: &[u8], version: Option<ProtocolVersion>, reason: u8) -> DecodeError {
    let error = failure(bytes, version);
    assert_eq!(error.reason_code(), ReasonCode(reason), "{error:?}");
    error
}

const MALFORMED: u8 = 0x81;
const PROTOCOL: u8 = 0x82;

#[test]
fn reserved_header_flags() {
    for version in [Some(V3_1_1), Some(V5)] {
        // PUBREL, SUBSCRIBE and UNSUBSCRIBE must carry 0b0010.
        rejected(&[0x60, 0x02, 0x00, 0x01], version, MALFORMED);
        rejected(&packet(0x80, &cat(&[&[0x00, 0x01], &s("a"), &[0x00]])), version, MALFORMED);
        rejected(&packet(0xA0, &cat(&[&[0x00, 0x01], &s("a")])), version, MALFORMED);
        // Everything else must carry 0.
        rejected(&[0xC1, 0x00], version, MALFORMED);
        rejected(&[0x42, 0x02, 0x00, 0x01], version, MALFORMED);
        // Type 0 is reserved.
        rejected(&[0x00, 0x00], version, MALFORMED);
    }
    rejected(&[0x11, 0x00], None, MALFORMED);
    // AUTH does not exist before v5.
    rejected(&[0xF0, 0x00], Some(V3_1_1), MALFORMED);
}

#[test]
fn publish_flags() {
    let body = cat(&[&s("t"), &[0x00, 0x01]]);
    assert_eq!(rejected(&packet(0x36, &body), Some(V5), MALFORMED), DecodeError::InvalidQoS(3));
    assert_eq!(rejected(&packet(0x38, &s("t")), Some(V3_1_1), MALFORMED), DecodeError::DupWithQoS0);
}

#[test]
fn zero_packet_ids() {
    for version in [Some(V3_1_1), Some(V5)] {
        let properties: &[u8] = if version == Some(V5) { &[0x00] } else { &[] };
        rejected(&packet(0x32, &cat(&[&s("t"), &[0, 0], properties])), version, PROTOCOL);
        rejected(&[0x40, 0x02, 0x00, 0x00], version, PROTOCOL);
        rejected(&packet(0x82, &cat(&[&[0, 0], properties, &s("a"), &[0]])), version, PROTOCOL);
        rejected(&packet(0xA2, &cat(&[&[0, 0], properties, &s("a")])), version, PROTOCOL);
    }
}

#[test]
fn bad_strings() {
    let invalid_utf8 = [0x00, 0x02, 0xC3, 0x28];
    assert_eq!(rejected(&packet(0x30, &invalid_utf8), Some(V3_1_1), MALFORMED), DecodeError::InvalidUtf8);
    let nul = [0x00, 0x03, b'a', 0x00, b'b'];
    assert_eq!(rejected(&packet(0x30, &nul), Some(V3_1_1), MALFORMED), DecodeError::NullCharacter);
    // A string longer than the packet.
    assert_eq!(rejected(&packet(0x30, &[0x00, 0x09, b'a']), Some(V3_1_1), MALFORMED), DecodeError::UnexpectedEnd);
    // Client ids are checked as well.
    let connect = connect_body(4, 0x02, &[], &[0x00, 0x01, 0x00]);
    rejected(&connect, None, MALFORMED);
}

#[test]
fn topic_names() {
    for topic in ["a/+", "#", "a/b#"] {
        rejected(&packet(0x30, &cat(&[&s(topic), &[0x00]])), Some(V5), 0x90);
        rejected(&packet(0x30, &s(topic)), Some(V3_1_1), 0x90);
    }
    // Empty topic: always wrong in v3, wrong in v5 without a topic alias.
    assert_eq!(failure(&packet(0x30, &s("")), Some(V3_1_1)), DecodeError::EmptyTopicName);
    rejected(&packet(0x30, &cat(&[&s(""), &[0x00]])), Some(V5), PROTOCOL);
    // Topic alias 0 is not a topic alias.
    rejected(&packet(0x30, &cat(&[&s("t"), &[0x03, 0x23, 0x00, 0x00]])), Some(V5), 0x94);
    // Will topics are topic names too.
    let will = cat(&[&s("c"), &s("w/#"), &field(b"")]);
    rejected(&connect_body(4, 0x06, &[], &will), None, 0x90);
}

#[test]
fn topic_filters() {
    for filter in ["", "a/#/b", "a#", "a+/b", "$share//a", "$share/g+/a", "$share/g", "$share/g/"] {
        let subscribe = packet(0x82, &cat(&[&[0x00, 0x01], &s(filter), &[0x00]]));
        rejected(&subscribe, Some(V3_1_1), 0x8F);
        let unsubscribe = packet(0xA2, &cat(&[&[0x00, 0x01, 0x00], &s(filter)]));
        rejected(&unsubscribe, Some(V5), 0x8F);
    }
    let good = packet(0x82, &cat(&[&[0x00, 0x01], &s("$share/g/a/+/#"), &[0x01]]));
    assert!(decode_all(&good, Some(V3_1_1)).is_ok());
}

#[test]
fn empty_subscribe_and_unsubscribe() {
    assert_eq!(rejected(&[0x82, 0x02, 0x00, 0x01], Some(V3_1_1), PROTOCOL), DecodeError::NoTopicFilters);
    rejected(&[0x82, 0x03, 0x00, 0x01, 0x00], Some(V5), PROTOCOL);
    rejected(&[0xA2, 0x02, 0x00, 0x01], Some(V3_1_1), PROTOCOL);
    rejected(&[0xA2, 0x03, 0x00, 0x01, 0x00], Some(V5), PROTOCOL);
}

#[test]
fn subscription_options() {
    let subscribe = |options: u8, filter: &str| packet(0x82, &cat(&[&[0x00, 0x01, 0x00], &s(filter), &[options]]));
    rejected(&subscribe(0x03, "a"), Some(V5), MALFORMED); // QoS 3
    rejected(&subscribe(0x40, "a"), Some(V5), MALFORMED); // reserved bit
    rejected(&subscribe(0x30, "a"), Some(V5), PROTOCOL); // retain handling 3
    rejected(&subscribe(0x04, "$share/g/a"), Some(V5), PROTOCOL); // no local, shared
    assert!(decode_all(&subscribe(0x04, "a"), Some(V5)).is_ok());
    // v3 reserves everything above the QoS bits.
    let v3 = packet(0x82, &cat(&[&[0x00, 0x01], &s("a"), &[0x04]]));
    rejected(&v3, Some(V3_1_1), MALFORMED);
}

#[test]
fn connect_flags() {
    let payload = s("c");
    // Reserved bit 0.
    assert!(matches!(rejected(&connect_body(4, 0x03, &[], &payload), None, MALFORMED), DecodeError::InvalidConnectFlags(_)));
    rejected(&connect_body(5, 0x03, &[0x00], &payload), None, MALFORMED);
    // Will QoS or will retain without the will flag.
    rejected(&connect_body(4, 0x08, &[], &payload), None, MALFORMED);
    rejected(&connect_body(4, 0x20, &[], &payload), None, MALFORMED);
    // Will QoS 3.
    let will = cat(&[&s("c"), &s("w"), &field(b"")]);
    rejected(&connect_body(4, 0x1C, &[], &will), None, MALFORMED);
    // Password without user name: malformed before v5, fine in v5.
    let with_password = cat(&[&s("c"), &field(b"pw")]);
    assert_eq!(rejected(&connect_body(4, 0x40, &[], &with_password), None, MALFORMED), DecodeError::PasswordWithoutUsername);
    rejected(&connect_body(3, 0x40, &[], &with_password), None, MALFORMED);
    let Packet::Connect(connect) = decoded(&connect_body(5, 0x40, &[0x00], &with_password), None) else { panic!() };
    assert_eq!(connect.password.as_deref(), Some(&b"pw"[..]));
    assert_eq!(connect.username, None);
    // Trailing bytes after the last field.
    rejected(&connect_body(4, 0x02, &[], &cat(&[&s("c"), &[0x00]])), None, MALFORMED);
}

#[test]
fn protocol_name_and_level() {
    let with = |name: &str, level: u8| packet(0x10, &cat(&[&s(name), &[level, 0x02, 0x00, 0x3C], &s("c")]));
    for (name, level) in [("MQTT", 6), ("MQTT", 3), ("MQIsdp", 4), ("MQTT", 0), ("MQTT", 0x84)] {
        assert_eq!(rejected(&with(name, level), None, 0x84), DecodeError::UnsupportedProtocolVersion { level });
    }
    assert_eq!(rejected(&with("HTTP", 4), None, 0x84), DecodeError::InvalidProtocolName { level: 4 });
    // Before CONNECT nothing else is accepted, and that is decided from the first byte.
    assert_eq!(rejected(&[0x30], None, PROTOCOL), DecodeError::ExpectedConnect { packet_type: 3 });
    assert_eq!(rejected(b"GET / HTTP/1.1\r\n", None, PROTOCOL), DecodeError::ExpectedConnect { packet_type: 4 });
}

#[test]
fn properties() {
    let connect = |properties: &[u8]| connect_body(5, 0x02, properties, &s("c"));
    // Duplicates of a once-only property: Session Expiry Interval twice.
    let twice = [0x0A, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2];
    assert_eq!(rejected(&connect(&twice), None, PROTOCOL), DecodeError::DuplicateProperty(0x11));
    // User properties may repeat.
    let users = cat(&[&[0x0E, 0x26], &s("a"), &s("1"), &[0x26], &s("a"), &s("2")]);
    let Packet::Connect(c) = decoded(&connect(&users), None) else { panic!() };
    assert_eq!(c.properties.user_properties, vec![("a".into(), "1".into()), ("a".into(), "2".into())]);
    // Not allowed in CONNECT: Topic Alias; unknown identifier.
    assert!(matches!(rejected(&connect(&[0x03, 0x23, 0x00, 0x01]), None, MALFORMED), DecodeError::PropertyNotAllowed { id: 0x23, .. }));
    assert_eq!(rejected(&connect(&[0x02, 0x7F, 0x00]), None, MALFORMED), DecodeError::UnknownProperty(0x7F));
    // Property length past the end of the packet, and a value past the property length.
    assert_eq!(rejected(&connect(&[0x40, 0x11, 0, 0, 0, 1]), None, MALFORMED), DecodeError::PropertyLengthOverrun);
    assert_eq!(rejected(&connect(&[0x03, 0x11, 0, 0, 0, 1]), None, MALFORMED), DecodeError::PropertyLengthOverrun);
    // Values the spec forbids: Receive Maximum 0, Maximum Packet Size 0, Request
    // Problem Information 2, Authentication Data without Method.
    rejected(&connect(&[0x03, 0x21, 0x00, 0x00]), None, PROTOCOL);
    rejected(&connect(&[0x05, 0x27, 0, 0, 0, 0]), None, PROTOCOL);
    rejected(&connect(&[0x02, 0x17, 0x02]), None, PROTOCOL);
    assert_eq!(rejected(&connect(&cat(&[&[0x04, 0x16], &field(b"x")])), None, PROTOCOL), DecodeError::AuthDataWithoutMethod);
    // SUBSCRIBE: one Subscription Identifier at most, never 0.
    let subscribe = |properties: &[u8]| packet(0x82, &cat(&[&[0x00, 0x01], properties, &s("a"), &[0x00]]));
    rejected(&subscribe(&[0x04, 0x0B, 0x01, 0x0B, 0x02]), Some(V5), PROTOCOL);
    rejected(&subscribe(&[0x02, 0x0B, 0x00]), Some(V5), PROTOCOL);
    // A Reason String is fine on PUBACK, a Content Type is not.
    let puback = |properties: &[u8]| packet(0x40, &cat(&[&[0x00, 0x01, 0x00], properties]));
    assert!(decode_all(&puback(&cat(&[&[0x04, 0x1F], &s("x")])), Some(V5)).is_ok());
    rejected(&puback(&cat(&[&[0x04, 0x03], &s("x")])), Some(V5), MALFORMED);
    // Will properties are checked against the will's list.
    let will = cat(&[&s("c"), &[0x03, 0x23, 0x00, 0x01], &s("w"), &field(b"")]);
    rejected(&connect_body(5, 0x06, &[0x00], &will), None, MALFORMED);
}

#[test]
fn reason_codes_must_fit_the_packet() {
    rejected(&[0x40, 0x03, 0x00, 0x01, 0x05], Some(V5), PROTOCOL);
    rejected(&[0x62, 0x03, 0x00, 0x01, 0x10], Some(V5), PROTOCOL);
    rejected(&[0x90, 0x04, 0x00, 0x01, 0x00, 0x03], Some(V5), PROTOCOL);
    rejected(&[0x90, 0x03, 0x00, 0x01, 0x87], Some(V3_1_1), PROTOCOL);
    rejected(&[0xE0, 0x01, 0x01], Some(V5), PROTOCOL);
    rejected(&[0x20, 0x02, 0x00, 0x06], Some(V3_1_1), PROTOCOL);
    // Session present with a refusal.
    rejected(&[0x20, 0x03, 0x01, 0x80, 0x00], Some(V5), MALFORMED);
}

#[test]
fn trailing_bytes() {
    rejected(&[0xC0, 0x01, 0x00], Some(V3_1_1), MALFORMED);
    rejected(&[0x40, 0x03, 0x00, 0x01, 0x00], Some(V3_1_1), MALFORMED);
    rejected(&[0xE0, 0x01, 0x00], Some(V3_1_1), MALFORMED);
    rejected(&[0xB0, 0x03, 0x00, 0x01, 0x00], Some(V3_1_1), MALFORMED);
}

// --- bounds ----------------------------------------------------------------------------

#[test]
fn huge_declared_length_fails_before_buffering() {
    // PUBLISH declaring 268435455 bytes (256 MiB): five bytes are enough to refuse it.
    let mut buf = BytesMut::with_capacity(16);
    buf.extend_from_slice(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]);
    let capacity = buf.capacity();
    let error = decode(&mut buf, Some(V5), 1 << 20).expect_err("too large");
    assert_eq!(error, DecodeError::PacketTooLarge { size: 268_435_460, max: 1 << 20 });
    assert_eq!(error.reason_code(), ReasonCode::PACKET_TOO_LARGE);
    // Nothing consumed, nothing grown: the decoder never reserves on the caller's behalf.
    assert_eq!(buf.len(), 5);
    assert_eq!(buf.capacity(), capacity);
    // Same before CONNECT.
    let mut buf = BytesMut::from(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert!(matches!(decode(&mut buf, None, 1 << 20), Err(DecodeError::PacketTooLarge { .. })));
}

#[test]
fn maximum_counts_the_fixed_header() {
    // PINGREQ is 2 bytes.
    let mut buf = BytesMut::from(&[0xC0, 0x00][..]);
    assert!(matches!(decode(&mut buf, Some(V5), 1), Err(DecodeError::PacketTooLarge { size: 2, max: 1 })));
    assert_eq!(decode(&mut buf, Some(V5), 2), Ok(Some(Packet::PingReq)));
}

#[test]
fn remaining_length_encoding() {
    // A continuation bit on the 4th byte announces a 5th: malformed.
    assert_eq!(rejected(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], Some(V5), MALFORMED), DecodeError::MalformedVariableByteInteger);
    // Incomplete length: wait, do not fail.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF][..]);
    assert_eq!(decode(&mut buf, Some(V5), MAX), Ok(None));
    assert_eq!(buf.len(), 3);
    // Multi-byte lengths work (200-byte payload, 2-byte length).
    let body = cat(&[&s("t"), &[0x61; 200]]);
    let Packet::Publish(publish) = decoded(&packet(0x30, &body), Some(V3_1_1)) else { panic!() };
    assert_eq!(publish.payload.len(), 200);
}

#[test]
fn need_more_leaves_the_buffer_alone() {
    let whole = connect_body(5, 0x02, &[0x00], &s("client"));
    for cut in 0..whole.len() {
        let mut buf = BytesMut::from(&whole[..cut]);
        assert_eq!(decode(&mut buf, None, MAX), Ok(None), "cut at {cut}");
        assert_eq!(&buf[..], &whole[..cut]);
    }
}

#[test]
fn encode_rejects_what_cannot_be_sent() {
    let long = "x".repeat(70_000);
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: long,
        packet_id: None,
        payload: Bytes::new(),
        properties: Default::default(),
    });
    let mut out = BytesMut::new();
    assert_eq!(encode(&publish, V5, &mut out), Err(EncodeError::FieldTooLong(70_000)));
    assert!(out.is_empty());
    let missing_id = Packet::Publish(Publish {
        qos: QoS::AtLeastOnce,
        topic: "t".into(),
        ..match publish {
            Packet::Publish(p) => p,
            _ => unreachable!(),
        }
    });
    assert_eq!(encode(&missing_id, V5, &mut out), Err(EncodeError::MissingPacketId));
}

#[test]
fn encoded_len_shrinks_when_optional_properties_go() {
    // What the session does for a client's Maximum Packet Size.
    let mut publish = publish_a_b(PublishProperties { user_properties: vec![("k".into(), "v".repeat(100))], ..Default::default() });
    let full = encoded_len(&publish, V5);
    if let Packet::Publish(p) = &mut publish {
        p.properties.user_properties.clear();
    }
    assert_eq!(encoded_len(&publish, V5), 12);
    assert!(full > 100);
}
