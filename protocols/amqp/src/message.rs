//! basic.publish <-> core [`Message`]: what an AMQP publish keeps in the log.
//!
//! The routing key is the message key. Properties become headers: the ones
//! MQTT also has use MQTT's `:`-names (`:content-type`, `:correlation-id`,
//! `:reply-to`), the rest `:amqp-*` names. Entries of the `headers` table
//! whose value is a string are stored as plain headers (name, value) — the
//! same shape as MQTT user properties, so they cross over both ways; a name
//! starting with `:` gets one more `:` in front (as MQTT does). Entries of any
//! other type are kept together, as the table's wire bytes, under
//! `:amqp-headers`, so a table reads back exactly (string values come back
//! as long strings `S`).

use bytes::Bytes;
use polymq::record::Message;

use crate::codec::{self, short, AMQPValue, FieldTable, LongString, ShortString};
use amq_protocol::protocol::BasicProperties;

pub(crate) mod header {
    pub const CONTENT_TYPE: &[u8] = b":content-type";
    pub const CORRELATION_ID: &[u8] = b":correlation-id";
    pub const REPLY_TO: &[u8] = b":reply-to";
    /// Absolute expiry, Unix ms (MQTT reads it too).
    pub const EXPIRE_AT: &[u8] = b":expire-at";
    pub const CONTENT_ENCODING: &[u8] = b":amqp-content-encoding";
    pub const DELIVERY_MODE: &[u8] = b":amqp-delivery-mode";
    pub const PRIORITY: &[u8] = b":amqp-priority";
    pub const EXPIRATION: &[u8] = b":amqp-expiration";
    pub const MESSAGE_ID: &[u8] = b":amqp-message-id";
    pub const TIMESTAMP: &[u8] = b":amqp-timestamp";
    pub const TYPE: &[u8] = b":amqp-type";
    pub const USER_ID: &[u8] = b":amqp-user-id";
    pub const APP_ID: &[u8] = b":amqp-app-id";
    pub const CLUSTER_ID: &[u8] = b":amqp-cluster-id";
    /// The non-string entries of the headers table, as table wire bytes.
    pub const HEADERS: &[u8] = b":amqp-headers";
    /// The exchange the message was published to (basic.deliver names it).
    pub const EXCHANGE: &[u8] = b":amqp-exchange";
    /// Present on messages an MQTT client published.
    pub const MQTT_QOS: &[u8] = polymq::mapping::header::QOS;
    /// The canonical topic of a message routed in the shared topic space.
    pub const TOPIC: &[u8] = polymq::mapping::header::TOPIC;
}

/// The message to append for a basic.publish.
pub(crate) fn to_core(exchange: &str, routing_key: &str, props: &BasicProperties, body: Bytes, now_ms: u64) -> Message {
    let mut h: Vec<(Bytes, Bytes)> = Vec::with_capacity(4);
    let mut put = |name: &'static [u8], value: &str| h.push((Bytes::from_static(name), Bytes::copy_from_slice(value.as_bytes())));
    put(header::EXCHANGE, exchange);
    if let Some(v) = props.content_type() {
        put(header::CONTENT_TYPE, v.as_str());
    }
    if let Some(v) = props.correlation_id() {
        put(header::CORRELATION_ID, v.as_str());
    }
    if let Some(v) = props.reply_to() {
        put(header::REPLY_TO, v.as_str());
    }
    if let Some(v) = props.content_encoding() {
        put(header::CONTENT_ENCODING, v.as_str());
    }
    if let Some(v) = props.delivery_mode() {
        put(header::DELIVERY_MODE, &v.to_string());
    }
    if let Some(v) = props.priority() {
        put(header::PRIORITY, &v.to_string());
    }
    if let Some(v) = props.expiration() {
        put(header::EXPIRATION, v.as_str());
        if let Ok(ms) = v.as_str().parse::<u64>() {
            put(header::EXPIRE_AT, &now_ms.saturating_add(ms).to_string());
        }
    }
    if let Some(v) = props.message_id() {
        put(header::MESSAGE_ID, v.as_str());
    }
    if let Some(v) = props.timestamp() {
        put(header::TIMESTAMP, &v.to_string());
    }
    if let Some(v) = props.kind() {
        put(header::TYPE, v.as_str());
    }
    if let Some(v) = props.user_id() {
        put(header::USER_ID, v.as_str());
    }
    if let Some(v) = props.app_id() {
        put(header::APP_ID, v.as_str());
    }
    if let Some(v) = props.cluster_id() {
        put(header::CLUSTER_ID, v.as_str());
    }
    if let Some(table) = props.headers() {
        let mut rest = FieldTable::default();
        for (name, value) in table {
            match value {
                AMQPValue::LongString(s) => {
                    let n = name.as_str();
                    let n = if n.starts_with(':') { Bytes::from(format!(":{n}")) } else { Bytes::copy_from_slice(n.as_bytes()) };
                    h.push((n, Bytes::copy_from_slice(s.as_bytes())));
                }
                other => {
                    rest.insert(name.clone(), other.clone());
                }
            }
        }
        // Present even when empty: an empty table reads back as a table, not as none.
        h.push((Bytes::from_static(header::HEADERS), Bytes::from(codec::table_to_bytes(&rest))));
    }
    Message {
        key: Bytes::copy_from_slice(routing_key.as_bytes()),
        headers: h,
        payload: body,
        timestamp_ms: now_ms,
        priority: props.priority().unwrap_or(0),
        ..Message::new(Bytes::new())
    }
}

/// A stored message read back for delivery.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub properties: BasicProperties,
    pub expire_at_ms: Option<u64>,
}

impl Outgoing {
    pub fn from_core(msg: &Message) -> Outgoing {
        Outgoing::from_core_in(msg, "amq.topic")
    }

    /// `shared_exchange`: the exchange whose space MQTT shares; a message
    /// published there by another protocol (MQTT, a Kafka record routed
    /// into the topic space) is delivered as from it, with the topic in
    /// dotted form as routing key (`a/b.c` -> `a.b%2Ec`).
    pub fn from_core_in(msg: &Message, shared_exchange: &str) -> Outgoing {
        let mut p = BasicProperties::default();
        let mut exchange = None;
        let mut expire_at_ms = None;
        let mut table: Option<FieldTable> = None;
        let mut strings: Vec<(ShortString, AMQPValue)> = Vec::new();
        let mut from_mqtt = false;
        let mut topic: Option<&Bytes> = None;
        for (name, value) in &msg.headers {
            let text = || String::from_utf8_lossy(value).into_owned();
            let s = || short(&text());
            match &name[..] {
                header::EXCHANGE => exchange = Some(text()),
                header::CONTENT_TYPE => p = p.with_content_type(s()),
                header::CORRELATION_ID => p = p.with_correlation_id(s()),
                header::REPLY_TO => p = p.with_reply_to(s()),
                header::CONTENT_ENCODING => p = p.with_content_encoding(s()),
                header::DELIVERY_MODE => p = p.with_delivery_mode(text().parse().unwrap_or(1)),
                header::PRIORITY => p = p.with_priority(text().parse().unwrap_or(0)),
                header::EXPIRATION => p = p.with_expiration(s()),
                header::EXPIRE_AT => expire_at_ms = text().parse().ok(),
                header::MESSAGE_ID => p = p.with_message_id(s()),
                header::TIMESTAMP => p = p.with_timestamp(text().parse().unwrap_or(0)),
                header::TYPE => p = p.with_type(s()),
                header::USER_ID => p = p.with_user_id(s()),
                header::APP_ID => p = p.with_app_id(s()),
                header::CLUSTER_ID => p = p.with_cluster_id(s()),
                header::HEADERS => table = codec::table_from_bytes(value).or(table),
                header::MQTT_QOS => from_mqtt = true,
                header::TOPIC => topic = Some(value),
                n if n.starts_with(b"::") => {
                    strings.push((short(&String::from_utf8_lossy(&n[1..])), AMQPValue::LongString(LongString::from(value.to_vec()))))
                }
                n if n.starts_with(b":") => {}
                n => strings.push((short(&String::from_utf8_lossy(n)), AMQPValue::LongString(LongString::from(value.to_vec())))),
            }
        }
        if !strings.is_empty() || table.is_some() {
            let mut t = table.unwrap_or_default();
            for (k, v) in strings {
                t.insert(k, v);
            }
            p = p.with_headers(t);
        }
        let key = String::from_utf8_lossy(&msg.key).into_owned();
        // An MQTT publish or a routed Kafka record: it went through the
        // shared topic space, its topic levels are the routing key's words.
        let (exchange, routing_key) = match (exchange, topic) {
            (Some(e), _) => (e, key),
            (None, Some(t)) => (shared_exchange.to_owned(), polymq::mapping::dotted_from_topic(&String::from_utf8_lossy(t))),
            (None, None) if from_mqtt => (shared_exchange.to_owned(), polymq::mapping::dotted_from_topic(&key)),
            (None, None) => (String::new(), key),
        };
        Outgoing { exchange, routing_key, properties: p, expire_at_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_property_survives_the_round_trip() {
        let mut headers = FieldTable::default();
        headers.insert("s".into(), AMQPValue::LongString("v".into()));
        headers.insert(":x".into(), AMQPValue::LongString("colon".into()));
        headers.insert("n".into(), AMQPValue::LongLongInt(-5));
        let mut nested = FieldTable::default();
        nested.insert("b".into(), AMQPValue::Boolean(true));
        headers.insert("t".into(), AMQPValue::FieldTable(nested));
        let props = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_content_encoding("gzip".into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_priority(7)
            .with_correlation_id("c-1".into())
            .with_reply_to("replies".into())
            .with_expiration("60000".into())
            .with_message_id("m-1".into())
            .with_timestamp(1_700_000_000)
            .with_type("kind".into())
            .with_user_id("guest".into())
            .with_app_id("app".into())
            .with_cluster_id("cl".into());
        let msg = to_core("ex", "a.b", &props, Bytes::from_static(b"\x00\xff"), 1_000);
        assert_eq!(msg.priority, 7);
        let out = Outgoing::from_core(&msg);
        assert_eq!(out.properties, props);
        assert_eq!((out.exchange.as_str(), out.routing_key.as_str()), ("ex", "a.b"));
        assert_eq!(out.expire_at_ms, Some(61_000));
        let none = Outgoing::from_core(&to_core("", "q", &BasicProperties::default(), Bytes::new(), 0));
        assert_eq!(none.properties, BasicProperties::default());
    }

    #[test]
    fn an_mqtt_publish_reads_as_amq_topic_with_dotted_key() {
        let mut msg = Message::new(Bytes::from_static(b"x")).with_key(Bytes::from_static(b"a/b"));
        msg.headers.push((Bytes::from_static(b":qos"), Bytes::from_static(b"1")));
        msg.headers.push((Bytes::from_static(b"user"), Bytes::from_static(b"prop")));
        let out = Outgoing::from_core(&msg);
        assert_eq!((out.exchange.as_str(), out.routing_key.as_str()), ("amq.topic", "a.b"));
        let h = out.properties.headers().clone().expect("headers");
        assert_eq!(h.inner().get("user"), Some(&AMQPValue::LongString("prop".into())));
    }
}
