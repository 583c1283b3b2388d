//! Property tests: every packet type round-trips in every version (modulo what the
//! version cannot carry), byte-by-byte feeding decodes the same packets as one buffer,
//! and arbitrary bytes never make `decode` panic.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use polymq_mqtt::*;

const MAX: usize = 1 << 20;

fn text() -> impl Strategy<Value = String> {
    // Multi-byte characters on purpose: lengths on the wire are in bytes.
    "[a-zA-Z0-9 _é€-]{0,10}"
}

fn topic_name() -> impl Strategy<Value = String> {
    "[a-z0-9$]{1,4}(/[a-z0-9é]{0,4}){0,3}"
}

fn topic_filter() -> impl Strategy<Value = String> {
    prop_oneof![
        topic_name(),
        "([a-z]{1,3}/){0,2}\\+(/[a-z]{0,3}){0,2}",
        "([a-z]{1,3}/){0,2}#",
        "\\$share/[a-z]{1,3}/[a-z]{1,3}(/\\+)?(/#)?",
    ]
}

fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..20).prop_map(Bytes::from)
}

fn user_properties() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((text(), text()), 0..3)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn payload_format() -> impl Strategy<Value = Option<PayloadFormat>> {
    option::of(prop_oneof![Just(PayloadFormat::Unspecified), Just(PayloadFormat::Utf8)])
}

fn reason(codes: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    proptest::sample::select(codes).prop_map(ReasonCode)
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn subscription_identifier() -> impl Strategy<Value = u32> {
    1..=VARIABLE_BYTE_INTEGER_MAX
}

/// Authentication data is only valid beside a method.
fn auth_pair() -> impl Strategy<Value = (Option<String>, Option<Bytes>)> {
    (option::of(text()), option::of(bytes())).prop_map(|(method, data)| match (method, data) {
        (None, Some(data)) => (Some("SCRAM".into()), Some(data)),
        other => other,
    })
}

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(1..=u32::MAX),
        option::of(any::<u16>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        user_properties(),
        auth_pair(),
    )
        .prop_map(|(sei, rm, mps, tam, rri, rpi, user_properties, (am, ad))| ConnectProperties {
            session_expiry_interval: sei,
            receive_maximum: rm,
            maximum_packet_size: mps,
            topic_alias_maximum: tam,
            request_response_information: rri,
            request_problem_information: rpi,
            user_properties,
            authentication_method: am,
            authentication_data: ad,
        })
}

fn will() -> impl Strategy<Value = Will> {
    let properties = (
        option::of(any::<u32>()),
        payload_format(),
        option::of(any::<u32>()),
        option::of(text()),
        option::of(topic_name()),
        option::of(bytes()),
        user_properties(),
    )
        .prop_map(|(wdi, pfi, mei, ct, rt, cd, user_properties)| WillProperties {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties,
        });
    (topic_name(), bytes(), qos(), any::<bool>(), properties).prop_map(|(topic, payload, qos, retain, properties)| Will {
        topic,
        payload,
        qos,
        retain,
        properties,
    })
}

fn connect() -> impl Strategy<Value = Packet> {
    (any::<bool>(), any::<u16>(), text(), option::of(will()), option::of(text()), option::of(bytes()), connect_properties()).prop_map(
        |(clean_start, keep_alive, client_id, will, username, password, properties)| {
            Packet::Connect(Connect {
                version: ProtocolVersion::V5,
                clean_start,
                keep_alive,
                client_id,
                will,
                username,
                password,
                properties,
            })
        },
    )
}

const CONNACK: &[u8] = &[0x00, 0x80, 0x81, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x9F];

fn connack() -> impl Strategy<Value = Packet> {
    let first = (
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
        option::of(any::<bool>()),
        option::of(1..=u32::MAX),
        option::of(text()),
        option::of(any::<u16>()),
        option::of(text()),
        user_properties(),
    );
    let second = (
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<u16>()),
        option::of(text()),
        option::of(text()),
        auth_pair(),
    );
    (any::<bool>(), reason(CONNACK), first, second).prop_map(
        |(session_present, reason_code, (sei, rm, mq, ra, mps, aci, tam, rs, up), second)| {
            let (wsa, sia, ssa, ska, ri, sr, (am, ad)) = second;
            Packet::ConnAck(ConnAck {
                // A refused connection cannot have a session.
                session_present: session_present && !reason_code.is_error(),
                reason_code,
                properties: ConnAckProperties {
                    session_expiry_interval: sei,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    user_properties: up,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: am,
                    authentication_data: ad,
                },
            })
        },
    )
}

fn publish() -> impl Strategy<Value = Packet> {
    let properties = (
        payload_format(),
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(topic_name()),
        option::of(bytes()),
        user_properties(),
        vec(subscription_identifier(), 0..3),
        option::of(text()),
    )
        .prop_map(|(pfi, mei, ta, rt, cd, user_properties, ids, ct)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            user_properties,
            subscription_identifiers: ids,
            content_type: ct,
        });
    (any::<bool>(), qos(), any::<bool>(), topic_name(), packet_id(), bytes(), properties).prop_map(
        |(dup, qos, retain, topic, id, payload, properties)| {
            let qos0 = qos == QoS::AtMostOnce;
            Packet::Publish(Publish { dup: dup && !qos0, qos, retain, topic, packet_id: (!qos0).then_some(id), payload, properties })
        },
    )
}

fn reason_properties() -> impl Strategy<Value = ReasonProperties> {
    (option::of(text()), user_properties()).prop_map(|(reason_string, user_properties)| ReasonProperties { reason_string, user_properties })
}

const PUBACK: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL: &[u8] = &[0x00, 0x92];

fn pub_reply(codes: &'static [u8]) -> impl Strategy<Value = PubReply> {
    (packet_id(), reason(codes), reason_properties()).prop_map(|(packet_id, reason_code, properties)| PubReply {
        packet_id,
        reason_code,
        properties,
    })
}

fn subscribe() -> impl Strategy<Value = Packet> {
    let retain_handling =
        prop_oneof![Just(RetainHandling::SendAtSubscribe), Just(RetainHandling::SendAtSubscribeIfNew), Just(RetainHandling::DoNotSend),];
    let subscription = (topic_filter(), qos(), any::<bool>(), any::<bool>(), retain_handling).prop_map(
        |(filter, qos, no_local, retain_as_published, retain_handling)| {
            // No-local is a protocol error on a shared subscription.
            let no_local = no_local && split_shared(&filter).is_none();
            Subscription { filter, options: SubscriptionOptions { qos, no_local, retain_as_published, retain_handling } }
        },
    );
    let properties = (option::of(subscription_identifier()), user_properties())
        .prop_map(|(subscription_identifier, user_properties)| SubscribeProperties { subscription_identifier, user_properties });
    (packet_id(), vec(subscription, 1..4), properties)
        .prop_map(|(packet_id, subscriptions, properties)| Packet::Subscribe(Subscribe { packet_id, subscriptions, properties }))
}

const SUBACK: &[u8] = &[0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2];
const UNSUBACK: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT: &[u8] = &[0x00, 0x04, 0x80, 0x81, 0x82, 0x87, 0x8B, 0x8E, 0x93, 0x95, 0x9C];
const AUTH: &[u8] = &[0x00, 0x18, 0x19];

fn any_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        connect(),
        connack(),
        publish(),
        pub_reply(PUBACK).prop_map(Packet::PubAck),
        pub_reply(PUBACK).prop_map(Packet::PubRec),
        pub_reply(PUBREL).prop_map(Packet::PubRel),
        pub_reply(PUBREL).prop_map(Packet::PubComp),
        subscribe(),
        (packet_id(), vec(reason(SUBACK), 1..4), reason_properties())
            .prop_map(|(packet_id, reason_codes, properties)| { Packet::SubAck(SubAck { packet_id, reason_codes, properties }) }),
        (packet_id(), vec(topic_filter(), 1..4), user_properties()).prop_map(|(packet_id, filters, user_properties)| Packet::Unsubscribe(
            Unsubscribe { packet_id, filters, properties: UnsubscribeProperties { user_properties } }
        )),
        (packet_id(), vec(reason(UNSUBACK), 1..4), reason_properties())
            .prop_map(|(packet_id, reason_codes, properties)| { Packet::UnsubAck(UnsubAck { packet_id, reason_codes, properties }) }),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        (reason(DISCONNECT), option::of(any::<u32>()), option::of(text()), user_properties(), option::of(text())).prop_map(
            |(reason_code, sei, rs, user_properties, sr)| Packet::Disconnect(Disconnect {
                reason_code,
                properties: DisconnectProperties { session_expiry_interval: sei, reason_string: rs, user_properties, server_reference: sr },
            })
        ),
        (reason(AUTH), auth_pair(), option::of(text()), user_properties()).prop_map(|(reason_code, (am, ad), rs, user_properties)| {
            Packet::Auth(Auth {
                reason_code,
                properties: AuthProperties { authentication_method: am, authentication_data: ad, reason_string: rs, user_properties },
            })
        }),
    ]
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    proptest::sample::select(ProtocolVersion::ALL.to_vec())
}

/// What decoding `packet` encoded for `version` must give: the packet minus what the
/// version cannot carry. `None` for packets the version does not have.
fn expected(packet: &Packet, version: ProtocolVersion) -> Option<Packet> {
    let mut packet = packet.clone();
    if let Packet::Connect(connect) = &mut packet {
        connect.version = version;
    }
    if version.is_v5() {
        return Some(packet);
    }
    match &mut packet {
        Packet::Connect(c) => {
            c.properties = Default::default();
            if let Some(will) = &mut c.will {
                will.properties = Default::default();
            }
            if c.username.is_none() {
                c.password = None;
            }
        }
        Packet::ConnAck(c) => {
            c.properties = Default::default();
            c.reason_code = ReasonCode::from_v3_connack(c.reason_code.to_v3_connack())?;
            c.session_present &= version != ProtocolVersion::V3_1;
        }
        Packet::Publish(p) => p.properties = Default::default(),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            r.reason_code = ReasonCode::SUCCESS;
            r.properties = Default::default();
        }
        Packet::Subscribe(s) => {
            s.properties = Default::default();
            for subscription in &mut s.subscriptions {
                subscription.options = SubscriptionOptions { qos: subscription.options.qos, ..Default::default() };
            }
        }
        Packet::SubAck(s) => {
            s.properties = Default::default();
            for code in &mut s.reason_codes {
                *code = ReasonCode(code.to_v3_suback());
            }
        }
        Packet::Unsubscribe(u) => u.properties = Default::default(),
        Packet::UnsubAck(u) => {
            u.properties = Default::default();
            u.reason_codes.clear();
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => *d = Default::default(),
        Packet::Auth(_) => return None,
    }
    Some(packet)
}

/// Whatever the decoder accepts, the encoder can write back, and that decodes to the
/// same packet: no accepted input is lost in translation.
fn assert_reencodes(packet: &Packet, connected: Option<ProtocolVersion>, version: ProtocolVersion) {
    let version = match (packet, connected) {
        (Packet::Connect(connect), _) => connect.version,
        (_, Some(version)) => version,
        (_, None) => version,
    };
    let mut wire = BytesMut::new();
    encode(packet, version, &mut wire).expect("a decoded packet encodes");
    assert_eq!(wire.len(), encoded_len(packet, version));
    let again = decode(&mut wire, connected, MAX).expect("re-encoded packet decodes");
    assert_eq!(again.as_ref(), Some(packet));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn round_trip(packet in any_packet(), version in version()) {
        let mut wire = BytesMut::new();
        let encoded = encode(&packet, version, &mut wire);
        let Some(want) = expected(&packet, version) else {
            prop_assert!(matches!(encoded, Err(EncodeError::NotInVersion(_))));
            prop_assert!(wire.is_empty());
            return Ok(());
        };
        prop_assert_eq!(encoded, Ok(()));
        prop_assert_eq!(wire.len(), encoded_len(&packet, version));
        let connected = match packet { Packet::Connect(_) => None, _ => Some(version) };
        let decoded = decode(&mut wire, connected, MAX);
        prop_assert_eq!(decoded, Ok(Some(want)));
        prop_assert!(wire.is_empty());
    }

    #[test]
    fn byte_by_byte_equals_whole(packets in vec(any_packet(), 1..6), version in version()) {
        let packets: Vec<Packet> = packets
            .into_iter()
            .filter(|p| !matches!(p, Packet::Connect(_)) && expected(p, version).is_some())
            .collect();
        let mut stream = BytesMut::new();
        for packet in &packets {
            prop_assert_eq!(encode(packet, version, &mut stream), Ok(()));
        }
        let mut whole = stream.clone();
        let mut from_whole = Vec::new();
        while let Some(packet) = decode(&mut whole, Some(version), MAX).expect("valid stream") {
            from_whole.push(packet);
        }
        prop_assert!(whole.is_empty());

        let mut trickle = BytesMut::new();
        let mut from_trickle = Vec::new();
        for &byte in stream.iter() {
            trickle.extend_from_slice(&[byte]);
            let before = trickle.len();
            match decode(&mut trickle, Some(version), MAX).expect("valid stream") {
                Some(packet) => from_trickle.push(packet),
                // "Need more" must leave the buffer as it was.
                None => prop_assert_eq!(trickle.len(), before),
            }
        }
        prop_assert!(trickle.is_empty());
        let want: Vec<Packet> = packets.iter().filter_map(|p| expected(p, version)).collect();
        prop_assert_eq!(&from_whole, &want);
        prop_assert_eq!(&from_trickle, &want);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..200), max in 0usize..300) {
        for version in [None, Some(ProtocolVersion::V3_1), Some(ProtocolVersion::V3_1_1), Some(ProtocolVersion::V5)] {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(packet)) = decode(&mut buf, version, max) {
                assert_reencodes(&packet, version, ProtocolVersion::V5);
            }
        }
    }

    /// Mutating a valid packet reaches far deeper into the decoder than random bytes.
    #[test]
    fn mutated_packets_never_panic(packet in any_packet(), version in version(), flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut wire = BytesMut::new();
        if encode(&packet, version, &mut wire).is_err() {
            return Ok(());
        }
        for (index, byte) in flips {
            let i = index.index(wire.len());
            wire[i] = byte;
        }
        let connected = match packet { Packet::Connect(_) => None, _ => Some(version) };
        let mut buf = wire.clone();
        while let Ok(Some(packet)) = decode(&mut buf, connected, MAX) {
            assert_reencodes(&packet, connected, version);
        }
        let mut buf = wire;
        while let Ok(Some(_)) = decode(&mut buf, Some(version), 64) {}
    }
}
