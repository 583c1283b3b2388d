//! Queue arguments the AMQP layer acts on itself, over the core:
//! `x-message-ttl` (checked at delivery, like per-message `expiration`) and
//! `x-dead-letter-exchange` / `x-dead-letter-routing-key` (a rejected or
//! expired message is republished through the exchange with an `x-death`
//! header, then acked away from its queue).

use std::collections::BTreeMap;

use polymq::record::Message;
use polymq::route::{Level, Pattern};

use crate::codec;

use crate::codec::{short, AMQPValue, FieldTable, LongString, ShortString};
use crate::message::{self, Outgoing};

/// What a queue's declare arguments ask of the AMQP layer (the core does
/// the rest: see `connection::queue_options`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct QueueArgs {
    /// The queue's AMQP name (x-death names it).
    pub name: String,
    /// Its vhost: the dead-letter exchange is looked up there. Not part of
    /// the record: derived from the core queue name when loaded.
    pub vhost: String,
    pub message_ttl_ms: Option<u64>,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    /// x-max-length: ready messages kept at most.
    pub max_length: Option<u64>,
    /// x-max-length-bytes: stored bytes kept at most (see `over_limit`).
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    /// x-single-active-consumer: one consumer gets deliveries at a time.
    pub single_active_consumer: bool,
}

/// x-overflow: what a publish to a full queue does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Drop (or dead-letter) the oldest ready messages to make room.
    #[default]
    DropHead,
    /// Refuse the publish for this queue (a confirming publisher gets a nack).
    RejectPublish,
}

impl Overflow {
    pub fn parse(s: &[u8]) -> Option<Overflow> {
        match s {
            b"drop-head" => Some(Overflow::DropHead),
            // reject-publish-dlx also dead-letters the refused message in
            // RabbitMQ; here it only refuses it (see FINDINGS).
            b"reject-publish" | b"reject-publish-dlx" => Some(Overflow::RejectPublish),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Overflow::DropHead => "drop-head",
            Overflow::RejectPublish => "reject-publish",
        }
    }
}

impl QueueArgs {
    /// Whether the layer has anything to do for this queue.
    pub fn is_active(&self) -> bool {
        self.message_ttl_ms.is_some() || self.dead_letter_exchange.is_some() || self.has_length_limit() || self.single_active_consumer
    }

    /// The first argument in which `other` differs, with both values, for
    /// RabbitMQ's `inequivalent arg` text.
    pub fn inequivalence(&self, other: &QueueArgs) -> Option<(&'static str, String, String)> {
        fn show<T: std::fmt::Debug>(v: &Option<T>) -> String {
            v.as_ref().map_or_else(|| "none".to_owned(), |v| format!("{v:?}").trim_matches('"').to_owned())
        }
        if self.message_ttl_ms != other.message_ttl_ms {
            return Some(("x-message-ttl", show(&other.message_ttl_ms), show(&self.message_ttl_ms)));
        }
        if self.dead_letter_exchange != other.dead_letter_exchange {
            return Some(("x-dead-letter-exchange", show(&other.dead_letter_exchange), show(&self.dead_letter_exchange)));
        }
        if self.dead_letter_routing_key != other.dead_letter_routing_key {
            return Some(("x-dead-letter-routing-key", show(&other.dead_letter_routing_key), show(&self.dead_letter_routing_key)));
        }
        if self.max_length != other.max_length {
            return Some(("x-max-length", show(&other.max_length), show(&self.max_length)));
        }
        if self.max_length_bytes != other.max_length_bytes {
            return Some(("x-max-length-bytes", show(&other.max_length_bytes), show(&self.max_length_bytes)));
        }
        if self.overflow != other.overflow {
            return Some(("x-overflow", other.overflow.name().to_owned(), self.overflow.name().to_owned()));
        }
        if self.single_active_consumer != other.single_active_consumer {
            return Some(("x-single-active-consumer", other.single_active_consumer.to_string(), self.single_active_consumer.to_string()));
        }
        None
    }

    pub fn has_length_limit(&self) -> bool {
        self.max_length.is_some() || self.max_length_bytes.is_some()
    }

    /// Whether a queue holding `ready` messages and `bytes` stored bytes is
    /// over the queue's limits.
    pub fn over_limit(&self, ready: u64, bytes: u64) -> bool {
        self.max_length.is_some_and(|m| ready > m) || self.max_length_bytes.is_some_and(|m| bytes > m)
    }

    /// Whether `msg` has expired in this queue at `now_ms`: its own
    /// `expiration`, or the queue's `x-message-ttl` counted from the publish.
    pub fn expired(&self, msg: &Message, out: &Outgoing, now_ms: u64) -> bool {
        if out.expire_at_ms.is_some_and(|at| at <= now_ms) {
            return true;
        }
        match self.message_ttl_ms {
            Some(ttl) if msg.timestamp_ms > 0 => msg.timestamp_ms.saturating_add(ttl) <= now_ms,
            _ => false,
        }
    }
}

/// The side space where a durable queue's arguments are kept, as a binding
/// of the queue itself (deleted with it). Nothing routes there.
pub(crate) const ARGS_SPACE: &str = "amqp.queue-args";

impl QueueArgs {
    /// The arguments as a one-level binding pattern: a field table, in hex.
    pub fn record_pattern(&self) -> Pattern {
        let mut t = FieldTable::default();
        t.insert("name".into(), string(&self.name));
        if let Some(v) = self.message_ttl_ms {
            t.insert("x-message-ttl".into(), AMQPValue::LongLongInt(v.min(i64::MAX as u64) as i64));
        }
        if let Some(v) = &self.dead_letter_exchange {
            t.insert("x-dead-letter-exchange".into(), string(v));
        }
        if let Some(v) = &self.dead_letter_routing_key {
            t.insert("x-dead-letter-routing-key".into(), string(v));
        }
        if let Some(v) = self.max_length {
            t.insert("x-max-length".into(), AMQPValue::LongLongInt(v.min(i64::MAX as u64) as i64));
        }
        if let Some(v) = self.max_length_bytes {
            t.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(v.min(i64::MAX as u64) as i64));
        }
        t.insert("x-overflow".into(), string(self.overflow.name()));
        t.insert("x-single-active-consumer".into(), AMQPValue::Boolean(self.single_active_consumer));
        let hex: String = codec::table_to_bytes(&t).iter().map(|b| format!("{b:02x}")).collect();
        Pattern::exact(&hex)
    }

    pub fn from_record(p: &Pattern) -> Option<QueueArgs> {
        let [Level::Word(hex)] = &p.0[..] else { return None };
        let bytes: Option<Vec<u8>> =
            (0..hex.len() / 2).map(|i| hex.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
        let t = codec::table_from_bytes(&bytes?)?;
        let s = |k: &str| match t.inner().get(k) {
            Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            _ => None,
        };
        let n = |k: &str| match t.inner().get(k) {
            Some(AMQPValue::LongLongInt(n)) => Some(*n as u64),
            _ => None,
        };
        Some(QueueArgs {
            name: s("name")?,
            vhost: crate::exchange::DEFAULT_VHOST.to_owned(),
            message_ttl_ms: n("x-message-ttl"),
            max_length: n("x-max-length"),
            max_length_bytes: n("x-max-length-bytes"),
            overflow: s("x-overflow").and_then(|o| Overflow::parse(o.as_bytes())).unwrap_or_default(),
            single_active_consumer: matches!(t.inner().get("x-single-active-consumer"), Some(AMQPValue::Boolean(true))),
            dead_letter_exchange: s("x-dead-letter-exchange"),
            dead_letter_routing_key: s("x-dead-letter-routing-key"),
        })
    }
}

/// Why a message was dead-lettered (the `reason` of its x-death entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Rejected,
    Expired,
    /// Dropped from the head of a full queue (x-overflow drop-head).
    Maxlen,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
        }
    }
}

/// The message to republish through `args.dead_letter_exchange`, with the
/// routing key to route it by; `None` when the queue has no DLX.
///
/// As RabbitMQ: the `x-death` array gets (or bumps, moving it to the front)
/// the entry for this queue and reason; `x-first-death-*` are set once; the
/// `expiration` property is removed (kept as `original-expiration`), so the
/// dead-lettered copy does not expire again for the same reason.
pub(crate) fn dead_lettered(args: &QueueArgs, msg: &Message, reason: Reason, now_ms: u64) -> Option<(String, String, Message)> {
    let exchange = args.dead_letter_exchange.clone()?;
    let out = Outgoing::from_core(msg);
    let key = args.dead_letter_routing_key.clone().unwrap_or_else(|| out.routing_key.clone());
    let mut props = out.properties.clone();
    let original_expiration = props.expiration().clone();
    let mut headers: BTreeMap<ShortString, AMQPValue> = props.headers().as_ref().map(|h| h.inner().clone()).unwrap_or_default();

    let mut deaths: Vec<AMQPValue> = match headers.get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let same = |v: &AMQPValue| match v {
        AMQPValue::FieldTable(t) => {
            let s = |k: &str| match t.inner().get(k) {
                Some(AMQPValue::LongString(s)) => Some(s.as_bytes().to_vec()),
                _ => None,
            };
            s("queue").as_deref() == Some(args.name.as_bytes()) && s("reason").as_deref() == Some(reason.as_str().as_bytes())
        }
        _ => false,
    };
    let previous = deaths.iter().position(same).map(|i| deaths.remove(i));
    let count = match &previous {
        Some(AMQPValue::FieldTable(t)) => match t.inner().get("count") {
            Some(AMQPValue::LongLongInt(n)) => *n + 1,
            _ => 1,
        },
        _ => 1,
    };
    let mut entry = FieldTable::default();
    entry.insert("count".into(), AMQPValue::LongLongInt(count));
    entry.insert("reason".into(), string(reason.as_str()));
    entry.insert("queue".into(), string(&args.name));
    entry.insert("time".into(), AMQPValue::Timestamp(now_ms / 1000));
    entry.insert("exchange".into(), string(&out.exchange));
    entry.insert("routing-keys".into(), AMQPValue::FieldArray(vec![string(&out.routing_key)].into()));
    if let Some(e) = &original_expiration {
        entry.insert("original-expiration".into(), string(e.as_str()));
    }
    deaths.insert(0, AMQPValue::FieldTable(entry));
    headers.insert(short("x-death"), AMQPValue::FieldArray(deaths.into()));
    headers.entry(short("x-first-death-exchange")).or_insert_with(|| string(&out.exchange));
    headers.entry(short("x-first-death-queue")).or_insert_with(|| string(&args.name));
    headers.entry(short("x-first-death-reason")).or_insert_with(|| string(reason.as_str()));
    props = props.with_headers(FieldTable::from(headers));
    if original_expiration.is_some() {
        // BasicProperties has no "unset": rebuild without the expiration.
        let mut p = amq_protocol::protocol::BasicProperties::default();
        macro_rules! copy {
            ($get:ident, $with:ident) => {
                if let Some(v) = props.$get().clone() {
                    p = p.$with(v);
                }
            };
        }
        copy!(content_type, with_content_type);
        copy!(content_encoding, with_content_encoding);
        copy!(headers, with_headers);
        copy!(delivery_mode, with_delivery_mode);
        copy!(priority, with_priority);
        copy!(correlation_id, with_correlation_id);
        copy!(reply_to, with_reply_to);
        copy!(message_id, with_message_id);
        copy!(timestamp, with_timestamp);
        copy!(kind, with_type);
        copy!(user_id, with_user_id);
        copy!(app_id, with_app_id);
        copy!(cluster_id, with_cluster_id);
        props = p;
    }
    let republished = message::to_core(&exchange, &key, &props, msg.payload.clone(), now_ms);
    Some((exchange, key, republished))
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::BasicProperties;
    use bytes::Bytes;

    fn args() -> QueueArgs {
        QueueArgs {
            name: "work".into(),
            vhost: "/".into(),
            message_ttl_ms: Some(1000),
            dead_letter_exchange: Some("dlx".into()),
            dead_letter_routing_key: None,
            ..QueueArgs::default()
        }
    }

    #[test]
    fn arguments_round_trip_through_their_record() {
        let a = QueueArgs {
            dead_letter_routing_key: Some("k.1".into()),
            max_length: Some(3),
            max_length_bytes: Some(4096),
            overflow: Overflow::RejectPublish,
            single_active_consumer: true,
            ..args()
        };
        assert_eq!(QueueArgs::from_record(&Pattern::from_canonical(&a.record_pattern().to_canonical())), Some(a));
    }

    #[test]
    fn queue_ttl_counts_from_the_publish() {
        let msg = message::to_core("", "work", &BasicProperties::default(), Bytes::from_static(b"x"), 5_000);
        let out = Outgoing::from_core(&msg);
        assert!(!args().expired(&msg, &out, 5_999));
        assert!(args().expired(&msg, &out, 6_000));
    }

    #[test]
    fn x_death_is_added_then_counted_and_expiration_removed() {
        let props = BasicProperties::default().with_expiration("50".into()).with_message_id("m".into());
        let msg = message::to_core("ex", "rk", &props, Bytes::from_static(b"x"), 1_000);
        let (exchange, key, dead) = dead_lettered(&args(), &msg, Reason::Expired, 2_000).expect("has a DLX");
        assert_eq!((exchange.as_str(), key.as_str()), ("dlx", "rk"));
        let out = Outgoing::from_core(&dead);
        assert_eq!(out.properties.expiration(), &None);
        assert_eq!(out.properties.message_id().as_ref().map(|s| s.as_str()), Some("m"));
        let again = dead_lettered(&args(), &dead, Reason::Expired, 3_000).expect("has a DLX").2;
        let h = Outgoing::from_core(&again).properties.headers().clone().expect("headers");
        let Some(AMQPValue::FieldArray(deaths)) = h.inner().get("x-death") else { panic!("no x-death: {h:?}") };
        assert_eq!(deaths.as_slice().len(), 1);
        let AMQPValue::FieldTable(e) = &deaths.as_slice()[0] else { panic!() };
        assert_eq!(e.inner().get("count"), Some(&AMQPValue::LongLongInt(2)));
        assert_eq!(e.inner().get("original-expiration"), None, "the second death had no expiration");
        assert_eq!(h.inner().get("x-first-death-exchange"), Some(&string("ex")));
    }
}
