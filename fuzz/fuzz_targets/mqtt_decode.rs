//! The MQTT decoder never panics on arbitrary bytes, in any connection state, with a
//! small maximum packet size; and whatever it accepts re-encodes to the same packet.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polymq_mqtt::bytes::BytesMut;
use polymq_mqtt::{decode, encode, encoded_len, Packet, ProtocolVersion};

/// Small, so the size check before buffering is exercised as often as the body parsers.
const MAX_PACKET_BYTES: usize = 512;

fuzz_target!(|data: &[u8]| {
    for connected in [None, Some(ProtocolVersion::V3_1_1), Some(ProtocolVersion::V5)] {
        let mut buf = BytesMut::from(data);
        loop {
            let before = buf.len();
            let Ok(Some(packet)) = decode(&mut buf, connected, MAX_PACKET_BYTES) else {
                break;
            };
            let consumed = before - buf.len();
            let version = match (&packet, connected) {
                (Packet::Connect(connect), _) => connect.version,
                (_, Some(version)) => version,
                (_, None) => unreachable!("only CONNECT is accepted before CONNECT"),
            };
            let mut wire = BytesMut::new();
            encode(&packet, version, &mut wire).expect("a decoded packet encodes");
            assert_eq!(wire.len(), encoded_len(&packet, version));
            // Shorter is fine (short forms, minimal lengths); larger would mean the
            // encoder invents bytes, and could break the peer's maximum packet size.
            // One byte more is the exception, on purpose: a v5 ack, DISCONNECT or
            // AUTH that came with a reason code but without its property length
            // is re-encoded with a zero property length, because rumqttc cannot
            // parse that short form (docs/design-mqtt.md).
            let short_form = version == ProtocolVersion::V5 && has_reason_code(data[data.len() - before]);
            assert!(wire.len() <= consumed + usize::from(short_form), "{consumed} bytes re-encoded as {}", wire.len());
            let again = decode(&mut wire, connected, MAX_PACKET_BYTES).expect("re-decodes");
            assert_eq!(again.as_ref(), Some(&packet));
        }
    }
});

/// Whether a v5 packet with this first byte carries a reason code that may
/// come without a property length: PUBACK, PUBREC, PUBREL, PUBCOMP,
/// DISCONNECT, AUTH.
fn has_reason_code(first_byte: u8) -> bool {
    matches!(first_byte >> 4, 4..=7 | 14 | 15)
}
