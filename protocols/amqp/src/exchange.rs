//! Exchanges and names: exchanges are topic spaces of the core, their
//! definitions durable metadata kept as bindings in a side space, queue
//! names mapped onto core queue names in one place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use polymq::queue::{QueueId, QueueOptions};
use polymq::route::{Level, Pattern};
use polymq::{Store, StoreError};

use crate::codec::{self, FieldTable};
use crate::reply::{self, AmqpError};

/// The durable queue that holds AMQP metadata as bindings; nothing is ever
/// appended to it.
pub(crate) const META_QUEUE: &str = "amqp/meta";
/// Side space of exchange definitions: one binding per durable exchange,
/// pattern `[name, type, flags, arguments-hex]`. Nothing routes in it.
pub(crate) const EXCHANGES_SPACE: &str = "amqp.exchanges";
/// Side space of exchange-to-exchange bindings between durable exchanges:
/// pattern `[source, destination, routing-key, arguments-hex]`.
pub(crate) const E2E_SPACE: &str = "amqp.e2e-bindings";
/// The virtual host every installation has; its names are the core's names verbatim.
pub(crate) const DEFAULT_VHOST: &str = "/";
/// Separates a vhost from a name in core names and topic spaces off `/`.
pub(crate) const VHOST_SEPARATOR: char = '|';
/// The exchange type of the rabbitmq_delayed_message_exchange plugin.
pub(crate) const DELAYED_TYPE: &str = "x-delayed-message";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "direct" => Kind::Direct,
            "fanout" => Kind::Fanout,
            "topic" => Kind::Topic,
            "headers" => Kind::Headers,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Fanout => "fanout",
            Kind::Topic => "topic",
            Kind::Headers => "headers",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExchangeDef {
    /// How it routes (for an `x-delayed-message` exchange: its `x-delayed-type`).
    pub kind: Kind,
    /// `x-delayed-message`: publishes are held back by their `x-delay` header.
    pub delayed: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

impl ExchangeDef {
    fn builtin(kind: Kind) -> ExchangeDef {
        ExchangeDef { kind, delayed: false, durable: true, auto_delete: false, internal: false, arguments: FieldTable::default() }
    }

    /// The type as declared: `x-delayed-message` or the routing kind.
    pub fn type_name(&self) -> &'static str {
        if self.delayed {
            DELAYED_TYPE
        } else {
            self.kind.name()
        }
    }

    fn flags(&self) -> String {
        format!("d{}a{}i{}", self.durable as u8, self.auto_delete as u8, self.internal as u8)
    }

    fn record_pattern(&self, name: &str) -> Pattern {
        let args: String = codec::table_to_bytes(&self.arguments).iter().map(|b| format!("{b:02x}")).collect();
        Pattern(vec![
            Level::Word(name.into()),
            Level::Word(self.type_name().into()),
            Level::Word(self.flags().into()),
            Level::Word(args.into()),
        ])
    }

    fn from_record(p: &Pattern) -> Option<(String, ExchangeDef)> {
        let [Level::Word(name), Level::Word(kind), Level::Word(flags), Level::Word(args)] = &p.0[..] else { return None };
        let f = flags.as_bytes();
        if f.len() != 6 {
            return None;
        }
        let bytes: Option<Vec<u8>> =
            (0..args.len() / 2).map(|i| args.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
        let arguments = codec::table_from_bytes(&bytes?)?;
        let delayed = &**kind == DELAYED_TYPE;
        let kind = if delayed { delayed_type(&arguments)? } else { Kind::parse(kind)? };
        Some((
            name.to_string(),
            ExchangeDef { kind, delayed, durable: f[1] == b'1', auto_delete: f[3] == b'1', internal: f[5] == b'1', arguments },
        ))
    }

    /// The first property in which `other` differs, RabbitMQ's way of saying it.
    pub fn inequivalence(&self, other: &ExchangeDef) -> Option<(&'static str, String, String)> {
        if self.kind != other.kind || self.delayed != other.delayed {
            if self.delayed && other.delayed {
                return Some(("x-delayed-type", other.kind.name().into(), self.kind.name().into()));
            }
            return Some(("type", other.type_name().into(), self.type_name().into()));
        }
        if self.durable != other.durable {
            return Some(("durable", other.durable.to_string(), self.durable.to_string()));
        }
        if self.auto_delete != other.auto_delete {
            return Some(("auto_delete", other.auto_delete.to_string(), self.auto_delete.to_string()));
        }
        if self.internal != other.internal {
            return Some(("internal", other.internal.to_string(), self.internal.to_string()));
        }
        None
    }
}

/// The routing kind an `x-delayed-message` exchange's `x-delayed-type` names.
pub(crate) fn delayed_type(arguments: &FieldTable) -> Option<Kind> {
    match arguments.inner().get("x-delayed-type")? {
        codec::AMQPValue::LongString(s) => Kind::parse(std::str::from_utf8(s.as_bytes()).ok()?),
        codec::AMQPValue::ShortString(s) => Kind::parse(s.as_str()),
        _ => None,
    }
}

/// The topic space of an exchange: its name on `/`, `<vhost>|<name>` elsewhere.
pub(crate) fn space(vhost: &str, exchange: &str) -> String {
    if vhost == DEFAULT_VHOST {
        exchange.to_owned()
    } else {
        format!("{vhost}{VHOST_SEPARATOR}{exchange}")
    }
}

/// The vhost of a core queue name or topic space made by [`space`].
pub(crate) fn vhost_of(core: &str) -> &str {
    core.split_once(VHOST_SEPARATOR).map_or(DEFAULT_VHOST, |(v, _)| v)
}

/// Names on `/` may not contain `|`: `a|b` there would be the name `b` of
/// vhost `a` (names on other vhosts may: the first `|` ends the vhost).
pub(crate) fn check_name(vhost: &str, name: &str, what: &str) -> Result<(), AmqpError> {
    if vhost == DEFAULT_VHOST && name.contains(VHOST_SEPARATOR) {
        return Err(AmqpError::channel(
            reply::ACCESS_REFUSED,
            format!("{what} name '{name}' contains '{VHOST_SEPARATOR}', which polymq uses to separate vhosts"),
        ));
    }
    Ok(())
}

/// The core name of an AMQP queue. Names the other protocols and this one
/// use internally are refused.
pub(crate) fn queue_core_name(vhost: &str, name: &str) -> Result<String, AmqpError> {
    for reserved in ["mqtt/", "amqp/", polymq::topic::PREFIX] {
        if name.starts_with(reserved) {
            return Err(AmqpError::channel(
                reply::ACCESS_REFUSED,
                format!("queue name '{name}' contains reserved prefix '{reserved}' (used by polymq internals)"),
            ));
        }
    }
    check_name(vhost, name, "queue")?;
    Ok(space(vhost, name))
}

/// The core name of an AMQP stream queue: partition 0 of the topic of the
/// same name (`<vhost>|<name>` off `/`), so a stream IS a Kafka topic.
pub(crate) fn stream_core_name(vhost: &str, name: &str) -> Result<String, AmqpError> {
    queue_core_name(vhost, name)?;
    let topic = space(vhost, name);
    if !polymq::topic::valid_name(&topic) {
        return Err(AmqpError::channel(
            reply::PRECONDITION_FAILED,
            format!(
                "stream queue name '{name}' cannot name a topic: 1..={} bytes without '/' (vhost included)",
                polymq::topic::NAME_BYTES_MAX
            ),
        ));
    }
    Ok(polymq::topic::partition_queue(&topic, 0))
}

/// The core queue an AMQP queue name refers to: the classic queue of that
/// name, else the stream (a name is one or the other; declare keeps it so).
pub(crate) fn find_core_queue(store: &Store, vhost: &str, name: &str) -> Result<Option<QueueId>, AmqpError> {
    if let Some(id) = store.queue_id(&queue_core_name(vhost, name)?) {
        return Ok(Some(id));
    }
    Ok(stream_core_name(vhost, name).ok().and_then(|core| store.queue_id(&core)))
}

/// The binding pattern for `routing_key` on an exchange of `kind`.
pub(crate) fn binding_pattern(kind: Kind, routing_key: &str) -> Result<Pattern, AmqpError> {
    match kind {
        // One level: dots are part of a direct key, not separators.
        Kind::Direct => Ok(Pattern::exact(routing_key)),
        Kind::Fanout => Ok(Pattern::all()),
        // `#` may stand anywhere in an AMQP binding key (`#.error`).
        Kind::Topic => Ok(Pattern::parse_many_anywhere(routing_key, '.', "*", "#")),
        Kind::Headers => Err(AmqpError::channel(reply::PRECONDITION_FAILED, "headers exchange bindings are not supported yet")),
    }
}

/// A topic binding key in the topic space shared with MQTT: its words are
/// topic levels in dotted form, so `%2E` / `%25` inside a word are a `.` / `%`
/// of the level (`polymq::mapping`), and an MQTT level `b.c` meets `b%2Ec`.
pub(crate) fn shared_topic_pattern(routing_key: &str) -> Pattern {
    Pattern(
        polymq::mapping::levels_from_dotted(routing_key)
            .into_iter()
            .map(|w| match &*w {
                "*" => Level::One,
                "#" => Level::Many,
                w => Level::Word(w.into()),
            })
            .collect(),
    )
}

/// An exchange-to-exchange binding (spaces, not names).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExchangeBinding {
    pub source: String,
    pub destination: String,
    pub routing_key: String,
    pub arguments: FieldTable,
}

impl ExchangeBinding {
    fn record_pattern(&self) -> Pattern {
        let args: String = codec::table_to_bytes(&self.arguments).iter().map(|b| format!("{b:02x}")).collect();
        Pattern(vec![
            Level::Word(self.source.as_str().into()),
            Level::Word(self.destination.as_str().into()),
            Level::Word(self.routing_key.as_str().into()),
            Level::Word(args.into()),
        ])
    }

    fn from_record(p: &Pattern) -> Option<ExchangeBinding> {
        let [Level::Word(source), Level::Word(destination), Level::Word(key), Level::Word(args)] = &p.0[..] else { return None };
        let bytes: Option<Vec<u8>> =
            (0..args.len() / 2).map(|i| args.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
        Some(ExchangeBinding {
            source: source.to_string(),
            destination: destination.to_string(),
            routing_key: key.to_string(),
            arguments: codec::table_from_bytes(&bytes?)?,
        })
    }

    /// Whether a publish with `key` and `headers` to the source goes on to
    /// the destination, by the source's type.
    pub fn matches(&self, source_kind: Kind, key: &str, headers: Option<&FieldTable>) -> bool {
        match source_kind {
            Kind::Direct => self.routing_key == key,
            Kind::Fanout => true,
            Kind::Topic => topic_matches(&self.routing_key, key),
            Kind::Headers => crate::headers::matches(&self.arguments, headers),
        }
    }
}

/// AMQP topic matching (`*` one word, `#` zero or more, anywhere).
pub(crate) fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| go(rest, &k[i..])),
            Some((&w, rest)) => k.split_first().is_some_and(|(&kw, krest)| (w == "*" || w == kw) && go(rest, krest)),
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

/// The known exchanges of every vhost, by topic space.
pub(crate) struct Exchanges {
    map: Mutex<HashMap<String, ExchangeDef>>,
    e2e: Mutex<Vec<ExchangeBinding>>,
    meta: QueueId,
}

impl Exchanges {
    /// Declares the metadata queue and loads the durable exchanges.
    pub async fn load(store: &Arc<Store>, vhosts: &[String]) -> Result<Exchanges, StoreError> {
        let meta = store.declare_queue(META_QUEUE, QueueOptions::default()).await?.id;
        let mut map = HashMap::new();
        for (name, kind) in [
            ("", Kind::Direct),
            ("amq.direct", Kind::Direct),
            ("amq.fanout", Kind::Fanout),
            ("amq.topic", Kind::Topic),
            ("amq.headers", Kind::Headers),
            ("amq.match", Kind::Headers),
        ] {
            for vhost in vhosts {
                map.insert(space(vhost, name), ExchangeDef::builtin(kind));
            }
        }
        let mut e2e = Vec::new();
        for (sp, p) in store.bindings_of(meta) {
            if sp == EXCHANGES_SPACE {
                if let Some((name, def)) = ExchangeDef::from_record(&p) {
                    map.insert(name, def);
                }
            } else if sp == E2E_SPACE {
                e2e.extend(ExchangeBinding::from_record(&p));
            }
        }
        Ok(Exchanges { map: Mutex::new(map), e2e: Mutex::new(e2e), meta })
    }

    fn e2e(&self) -> MutexGuard<'_, Vec<ExchangeBinding>> {
        self.e2e.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exchange-to-exchange bindings out of `source`.
    pub fn bindings_from(&self, source: &str) -> Vec<ExchangeBinding> {
        self.e2e().iter().filter(|b| b.source == source).cloned().collect()
    }

    /// exchange.bind / exchange.unbind. Durable when both ends are.
    pub async fn bind_exchange(&self, store: &Store, b: ExchangeBinding, add: bool) -> Result<(), StoreError> {
        let durable = [&b.source, &b.destination].iter().all(|sp| self.get(sp).is_some_and(|d| d.durable));
        if durable {
            if add {
                store.bind(E2E_SPACE, &b.record_pattern(), self.meta).await?;
            } else {
                store.unbind(E2E_SPACE, &b.record_pattern(), self.meta).await?;
            }
        }
        let mut e2e = self.e2e();
        e2e.retain(|x| x != &b);
        if add {
            e2e.push(b);
        }
        Ok(())
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, ExchangeDef>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, space: &str) -> Option<ExchangeDef> {
        self.map().get(space).cloned()
    }

    /// Adds an exchange (durably if it is durable).
    pub async fn add(&self, store: &Store, space: &str, def: ExchangeDef) -> Result<(), StoreError> {
        if def.durable {
            store.bind(EXCHANGES_SPACE, &def.record_pattern(space), self.meta).await?;
        }
        self.map().insert(space.to_owned(), def);
        Ok(())
    }

    /// Removes an exchange and every binding in its space.
    pub async fn remove(&self, store: &Store, space: &str) -> Result<(), StoreError> {
        let Some(def) = self.map().remove(space) else { return Ok(()) };
        if def.durable {
            store.unbind(EXCHANGES_SPACE, &def.record_pattern(space), self.meta).await?;
        }
        let gone: Vec<ExchangeBinding> = {
            let mut e2e = self.e2e();
            let (gone, kept) = e2e.drain(..).partition(|b| b.source == space || b.destination == space);
            *e2e = kept;
            gone
        };
        for b in gone {
            // Unbinding a record that was never written (non-durable) is harmless.
            store.unbind(E2E_SPACE, &b.record_pattern(), self.meta).await?;
        }
        for (q, p) in bindings_in(store, space) {
            store.unbind(space, &p, q).await?;
        }
        Ok(())
    }
}

/// Every binding in a topic space. The core has no index by space, so this
/// walks every queue: fine for exchange.delete, not for a hot path.
pub(crate) fn bindings_in(store: &Store, space: &str) -> Vec<(QueueId, Pattern)> {
    let mut out = Vec::new();
    for (q, _) in store.list_queues() {
        for (sp, p) in store.bindings_of(q) {
            if sp == space {
                out.push((q, p));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::AMQPValue;

    #[test]
    fn definitions_round_trip_through_their_record() {
        let mut arguments = FieldTable::default();
        arguments.insert("alternate-exchange".into(), AMQPValue::LongString("ae".into()));
        let def = ExchangeDef { kind: Kind::Topic, delayed: false, durable: true, auto_delete: true, internal: false, arguments };
        let p = def.record_pattern("logs/x.y");
        let back = ExchangeDef::from_record(&Pattern::from_canonical(&p.to_canonical()));
        assert_eq!(back, Some(("logs/x.y".to_owned(), def)));
    }

    #[test]
    fn topic_keys_match_with_hash_anywhere() {
        assert!(topic_matches("#.error", "kern.disk.error"));
        assert!(topic_matches("#", ""));
        assert!(topic_matches("a.*.c", "a.b.c"));
        assert!(!topic_matches("a.*", "a.b.c"));
        assert!(topic_matches("a.#.c", "a.c"));
    }

    #[test]
    fn names_and_patterns() {
        assert!(queue_core_name("/", "mqtt/s/x").is_err());
        assert_eq!(queue_core_name("/", "jobs").ok().as_deref(), Some("jobs"));
        assert_eq!(binding_pattern(Kind::Direct, "a.b").ok(), Some(Pattern::exact("a.b")));
        assert_eq!(binding_pattern(Kind::Topic, "a.*.#").ok(), Pattern::parse("a/+/#", '/', "+", "#").ok());
        assert_eq!(binding_pattern(Kind::Topic, "#.error").ok(), Some(Pattern(vec![Level::Many, Level::Word("error".into())])));
    }
}
