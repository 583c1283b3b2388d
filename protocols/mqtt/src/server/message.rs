//! PUBLISH <-> core [`Message`]: what an MQTT publish keeps in the log.
//!
//! The topic is the message key. MQTT properties become headers; the names
//! the broker itself reads start with `:` (like HTTP/2 pseudo-headers), so
//! they cannot collide with user properties: a user property whose name
//! starts with `:` is stored with one more `:` in front and gets it removed
//! on the way out. `docs/design-mqtt.md` has the table.

use bytes::Bytes;
use polymq::record::Message;

use crate::packet::{PayloadFormat, Publish, QoS, Will};
use crate::props::{PublishProperties, UserProperties};

pub(crate) mod header {
    /// The QoS the message was published with: "0", "1" or "2".
    pub const QOS: &[u8] = b":qos";
    /// Present ("1") when the publish had RETAIN set.
    pub const RETAIN: &[u8] = b":retain";
    /// The publisher's client id (no-local compares it).
    pub const CLIENT: &[u8] = b":mqtt-client";
    /// Absolute expiry time, Unix ms, decimal (MQTT 5 Message Expiry Interval).
    pub const EXPIRE_AT: &[u8] = b":expire-at";
    pub const CONTENT_TYPE: &[u8] = b":content-type";
    /// MQTT 5 Response Topic.
    pub const REPLY_TO: &[u8] = b":reply-to";
    /// MQTT 5 Correlation Data.
    pub const CORRELATION_ID: &[u8] = b":correlation-id";
    /// "1": the payload is UTF-8 (Payload Format Indicator).
    pub const PAYLOAD_FORMAT: &[u8] = b":payload-format";
}

const QOS_VALUES: [&[u8]; 3] = [b"0", b"1", b"2"];

/// The message to append for a PUBLISH (or a will) on `topic` by `client`.
pub(crate) fn to_core(
    topic: &str,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    props: &PublishProperties,
    client: &Bytes,
    now_ms: u64,
) -> Message {
    let mut headers = Vec::with_capacity(3 + props.user_properties.len());
    headers.push((Bytes::from_static(header::QOS), Bytes::from_static(QOS_VALUES[qos as usize])));
    if retain {
        headers.push((Bytes::from_static(header::RETAIN), Bytes::from_static(b"1")));
    }
    headers.push((Bytes::from_static(header::CLIENT), client.clone()));
    if let Some(secs) = props.message_expiry_interval {
        let at = now_ms.saturating_add(u64::from(secs) * 1000);
        headers.push((Bytes::from_static(header::EXPIRE_AT), Bytes::from(at.to_string())));
    }
    if let Some(v) = &props.content_type {
        headers.push((Bytes::from_static(header::CONTENT_TYPE), Bytes::copy_from_slice(v.as_bytes())));
    }
    if let Some(v) = &props.response_topic {
        headers.push((Bytes::from_static(header::REPLY_TO), Bytes::copy_from_slice(v.as_bytes())));
    }
    if let Some(v) = &props.correlation_data {
        headers.push((Bytes::from_static(header::CORRELATION_ID), v.clone()));
    }
    if props.payload_format_indicator == Some(PayloadFormat::Utf8) {
        headers.push((Bytes::from_static(header::PAYLOAD_FORMAT), Bytes::from_static(b"1")));
    }
    push_user_properties(&mut headers, &props.user_properties);
    Message { key: Bytes::copy_from_slice(topic.as_bytes()), headers, payload, timestamp_ms: now_ms, ..Message::new(Bytes::new()) }
}

/// The message for a will.
pub(crate) fn will_to_core(will: &Will, client: &Bytes, now_ms: u64) -> Message {
    let w = &will.properties;
    let props = PublishProperties {
        payload_format_indicator: w.payload_format_indicator,
        message_expiry_interval: w.message_expiry_interval,
        response_topic: w.response_topic.clone(),
        correlation_data: w.correlation_data.clone(),
        user_properties: w.user_properties.clone(),
        content_type: w.content_type.clone(),
        ..PublishProperties::default()
    };
    to_core(&will.topic, will.payload.clone(), will.qos, will.retain, &props, client, now_ms)
}

fn push_user_properties(headers: &mut Vec<(Bytes, Bytes)>, user: &UserProperties) {
    for (name, value) in user {
        let name = if name.starts_with(':') { Bytes::from(format!(":{name}")) } else { Bytes::copy_from_slice(name.as_bytes()) };
        headers.push((name, Bytes::copy_from_slice(value.as_bytes())));
    }
}

/// A stored message read back for delivery.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    pub client: Option<Bytes>,
    pub expire_at_ms: Option<u64>,
    /// Everything but the per-delivery fields (expiry, alias, subscription ids).
    pub props: PublishProperties,
    pub payload: Bytes,
}

impl Stored {
    /// `None` when the key is not a valid MQTT topic name (a message that came
    /// from elsewhere and cannot be delivered over MQTT).
    pub fn from_core(msg: &Message) -> Option<Stored> {
        // A message from another protocol names its topic in `:topic` (an
        // AMQP routing key or a Kafka record key is not one).
        let topic = polymq::mapping::topic_of(&msg.key, &msg.headers);
        let topic = std::str::from_utf8(&topic).ok()?;
        if crate::validate_topic_name(topic).is_err() || topic.contains('\0') {
            return None;
        }
        let mut s = Stored {
            topic: topic.to_owned(),
            // A message without an MQTT QoS (another protocol's) counts as
            // QoS 1: it was acknowledged to its producer.
            qos: QoS::AtLeastOnce,
            retain: false,
            client: None,
            expire_at_ms: None,
            props: PublishProperties::default(),
            payload: msg.payload.clone(),
        };
        for (name, value) in &msg.headers {
            let text = || std::str::from_utf8(value).ok().map(str::to_owned);
            match &name[..] {
                header::QOS => s.qos = value.first().and_then(|b| QoS::from_u8(b.wrapping_sub(b'0'))).unwrap_or(QoS::AtLeastOnce),
                header::RETAIN => s.retain = &value[..] == b"1",
                header::CLIENT => s.client = Some(value.clone()),
                header::EXPIRE_AT => s.expire_at_ms = text().and_then(|t| t.parse().ok()),
                header::CONTENT_TYPE => s.props.content_type = text(),
                header::REPLY_TO => s.props.response_topic = text(),
                header::CORRELATION_ID => s.props.correlation_data = Some(value.clone()),
                header::PAYLOAD_FORMAT => s.props.payload_format_indicator = Some(PayloadFormat::Utf8),
                n if n.starts_with(b"::") => {
                    if let (Ok(n), Some(v)) = (std::str::from_utf8(&n[1..]), text()) {
                        s.props.user_properties.push((n.to_owned(), v));
                    }
                }
                n if n.starts_with(b":") => {}
                n => {
                    if let (Ok(n), Some(v)) = (std::str::from_utf8(n), text()) {
                        s.props.user_properties.push((n.to_owned(), v));
                    }
                }
            }
        }
        Some(s)
    }

    /// Seconds of life left (rounded up), `Some(0)` when expired, `None` when
    /// the message does not expire.
    pub fn remaining_secs(&self, now_ms: u64) -> Option<u32> {
        self.expire_at_ms.map(|at| (at.saturating_sub(now_ms).div_ceil(1000)).min(u64::from(u32::MAX)) as u32)
    }

    /// The PUBLISH to send (packet id, DUP and subscription ids set by the caller).
    pub fn to_publish(&self, qos: QoS, retain: bool, now_ms: u64) -> Publish {
        let mut props = self.props.clone();
        props.message_expiry_interval = self.remaining_secs(now_ms);
        Publish { dup: false, qos, retain, topic: self.topic.clone(), packet_id: None, payload: self.payload.clone(), properties: props }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_survive_the_round_trip_and_user_names_cannot_spoof_ours() {
        let props = PublishProperties {
            payload_format_indicator: Some(PayloadFormat::Utf8),
            message_expiry_interval: Some(10),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("a".into(), "1".into()), (":qos".into(), "2".into()), ("a".into(), "2".into())],
            content_type: Some("text/plain".into()),
            ..PublishProperties::default()
        };
        let msg = to_core("t/1", Bytes::from_static(b"hi"), QoS::AtLeastOnce, true, &props, &Bytes::from_static(b"c1"), 1_000);
        let s = Stored::from_core(&msg).expect("a valid topic");
        assert_eq!((s.topic.as_str(), s.qos, s.retain), ("t/1", QoS::AtLeastOnce, true));
        assert_eq!(s.client.as_deref(), Some(&b"c1"[..]));
        assert_eq!(s.props.user_properties, props.user_properties, "order and duplicates kept, `:qos` stays a user property");
        let p = s.to_publish(QoS::AtMostOnce, false, 4_500);
        assert_eq!(p.properties.message_expiry_interval, Some(7), "10 s from t=1 s, at t=4.5 s: 6.5 s left, rounded up");
        assert_eq!(p.properties.response_topic.as_deref(), Some("reply/here"));
        assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(s.remaining_secs(11_000), Some(0));
    }
}
