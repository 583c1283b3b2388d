//! The one address space (issue 6), end to end: an in-process polymq with
//! all three protocols over one store, real clients (rumqttc, lapin, a
//! hand-built kafka-protocol client), one test per story of
//! `docs/interop.md`. It lives in the broker package, which depends on every
//! protocol crate, so no protocol crate dev-depends on another.

#[path = "kafka_common/mod.rs"]
mod kafka_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use kafka_common::{batch, decode_records, record, Client};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{BrokerId, CreateTopicsRequest, FetchRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Record;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use polymq::config::Config;
use polymq::mapping::Mapping;
use polymq::server::{shutdown_channel, ProtocolService, Server, ShutdownTrigger};
use polymq::Store;
use polymq_amqp::{AmqpConfig, AmqpService};
use polymq_kafka::{KafkaConfig, KafkaService};
use polymq_mqtt::{MqttConfig, MqttService};
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(700);

// ---- harness: one store, three protocols ----

struct Broker {
    store: Arc<Store>,
    mqtt: SocketAddr,
    amqp: SocketAddr,
    kafka: SocketAddr,
    trigger: ShutdownTrigger,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.trigger.trigger();
    }
}

impl Broker {
    async fn start() -> Result<Broker> {
        Broker::start_with(Mapping::default()).await
    }

    /// Services configured the way `polymq serve` configures them, from one `Config`.
    async fn start_with(mapping: Mapping) -> Result<Broker> {
        let dir = tempfile::tempdir()?;
        let loopback: SocketAddr = "127.0.0.1:0".parse()?;
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            mqtt_listen: loopback,
            amqp_listen: loopback,
            kafka_listen: loopback,
            http_listen: loopback,
            mapping,
            ..Config::default()
        };
        config.validate()?;
        let store_config = config.store_config();
        let store = tokio::task::spawn_blocking(move || Store::open(store_config)).await??;
        let mqtt: Arc<dyn ProtocolService> = MqttService::new(Arc::clone(&store), MqttConfig::from_config(&config)).await?;
        let amqp: Arc<dyn ProtocolService> = AmqpService::new(Arc::clone(&store), AmqpConfig::from_config(&config)).await?;
        let kafka: Arc<dyn ProtocolService> = KafkaService::new(Arc::clone(&store), KafkaConfig::from_config(&config)).await?;
        let services = vec![(config.mqtt_listen, mqtt), (config.amqp_listen, amqp), (config.kafka_listen, kafka)];
        let server = Server::bind(&config, Arc::clone(&store), services).await?;
        let addrs = server.local_addrs();
        let find = |p: &str| addrs.iter().find(|(n, _)| *n == p).map(|(_, a)| *a).context("listener");
        let (mqtt, amqp, kafka) = (find("mqtt")?, find("amqp")?, find("kafka")?);
        let (trigger, signal) = shutdown_channel();
        tokio::spawn(server.run(signal.triggered()));
        Ok(Broker { store, mqtt, amqp, kafka, trigger, _dir: dir })
    }

    async fn kafka(&self) -> Result<Client> {
        Client::connect(self.kafka).await
    }

    async fn amqp(&self) -> Result<(Connection, Channel)> {
        let uri = format!("amqp://guest:guest@{}/%2f", self.amqp);
        let conn = Connection::connect(&uri, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        Ok((conn, ch))
    }

    /// An MQTT 5 client; every incoming packet lands in the returned channel.
    async fn mqtt(&self, id: &str) -> Result<Mqtt> {
        let mut opts = MqttOptions::new(id, self.mqtt.ip().to_string(), self.mqtt.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(Some(1 << 20));
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Ok(ev) = eventloop.poll().await {
                if let Event::Incoming(p) = ev {
                    if tx.send(p).is_err() {
                        break;
                    }
                }
            }
        });
        let mut m = Mqtt { client, rx, driver };
        m.wait(|p| matches!(p, Packet::ConnAck(_)).then_some(())).await.context("CONNACK")?;
        Ok(m)
    }
}

struct Mqtt {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Packet>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// An MQTT publish as received: topic, payload, properties.
type Received = (String, Bytes, Option<PublishProperties>);

impl Mqtt {
    async fn wait<T>(&mut self, mut f: impl FnMut(&Packet) -> Option<T>) -> Result<T> {
        tokio::time::timeout(WAIT, async {
            while let Some(p) = self.rx.recv().await {
                if let Some(t) = f(&p) {
                    return Ok(t);
                }
            }
            bail!("MQTT connection ended")
        })
        .await
        .context("timed out waiting for an MQTT packet")?
    }

    async fn subscribe(&mut self, filter: &str) -> Result<()> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        self.wait(|p| matches!(p, Packet::SubAck(_)).then_some(())).await
    }

    async fn next_publish(&mut self) -> Result<Received> {
        self.wait(|p| match p {
            Packet::Publish(p) => Some((String::from_utf8_lossy(&p.topic).into_owned(), p.payload.clone(), p.properties.clone())),
            _ => None,
        })
        .await
    }

    async fn no_publish(&mut self) -> Result<()> {
        if let Ok(Some(Packet::Publish(p))) = tokio::time::timeout(QUIET, self.rx.recv()).await {
            bail!("unexpected publish on {:?}", String::from_utf8_lossy(&p.topic));
        }
        Ok(())
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    async fn publish(&mut self, topic: &str, payload: &[u8], props: Option<PublishProperties>) -> Result<()> {
        match props {
            Some(p) => self.client.publish_with_properties(topic, QoS::AtLeastOnce, false, payload.to_vec(), p).await?,
            None => self.client.publish(topic, QoS::AtLeastOnce, false, payload.to_vec()).await?,
        }
        self.wait(|p| matches!(p, Packet::PubAck(_)).then_some(())).await
    }
}

// ---- Kafka helpers ----

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

async fn create_topic(c: &mut Client, topic: &str, partitions: i32) -> Result<()> {
    let t = CreatableTopic::default().with_name(name(topic)).with_num_partitions(partitions).with_replication_factor(-1);
    let resp = c.send(&CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(vec![t]), 5).await?;
    ensure!(resp.topics[0].error_code == 0, "create {topic}: {:?}", resp.topics[0].error_message);
    Ok(())
}

async fn produce(c: &mut Client, topic: &str, partition: i32, records: &[Record]) -> Result<i64> {
    let req = ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![TopicProduceData::default()
        .with_name(name(topic))
        .with_partition_data(vec![PartitionProduceData::default().with_index(partition).with_records(Some(batch(records)?))])]);
    let resp = c.send(&req, 7).await?;
    let p = &resp.responses[0].partition_responses[0];
    ensure!(p.error_code == 0, "produce to {topic}: {} {:?}", p.error_code, p.error_message);
    Ok(p.base_offset)
}

async fn fetch(c: &mut Client, topic: &str, partition: i32, offset: i64) -> Result<Vec<Record>> {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(50 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default().with_topic(name(topic)).with_partitions(vec![FetchPartition::default()
            .with_partition(partition)
            .with_fetch_offset(offset)
            .with_partition_max_bytes(8 << 20)])]);
    let resp = c.send(&req, 12).await?;
    let p = &resp.responses[0].partitions[0];
    ensure!(p.error_code == 0, "fetch {topic}/{partition}: {}", p.error_code);
    decode_records(&p.records)
}

fn header<'a>(r: &'a Record, name: &str) -> Option<&'a [u8]> {
    r.headers.get(&StrBytes::from_string(name.to_owned())).and_then(|v| v.as_deref())
}

fn with_headers(mut r: Record, headers: &[(&str, &str)]) -> Record {
    let mut h = IndexMap::new();
    for (k, v) in headers {
        h.insert(StrBytes::from_string((*k).to_owned()), Some(Bytes::copy_from_slice(v.as_bytes())));
    }
    r.headers = h;
    r
}

// ---- AMQP helpers ----

async fn bound_queue(ch: &Channel, queue: &str, exchange: &str, key: &str) -> Result<Consumer> {
    ch.queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default()).await?;
    ch.queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), FieldTable::default()).await?;
    Ok(ch.basic_consume(queue.into(), format!("c-{queue}").as_str().into(), BasicConsumeOptions::default(), FieldTable::default()).await?)
}

async fn next(c: &mut Consumer) -> Result<lapin::message::Delivery> {
    let d = tokio::time::timeout(WAIT, c.next()).await.context("timed out waiting for an AMQP delivery")?.context("consumer ended")??;
    d.ack(BasicAckOptions::default()).await?;
    Ok(d)
}

async fn nothing(c: &mut Consumer) -> Result<()> {
    if let Ok(Some(d)) = tokio::time::timeout(QUIET, c.next()).await {
        bail!("unexpected delivery: {:?}", d.map(|d| d.routing_key.to_string()));
    }
    Ok(())
}

fn amqp_header(d: &lapin::message::Delivery, name: &str) -> Option<AMQPValue> {
    d.properties.headers().as_ref().and_then(|h| h.inner().get(name).cloned())
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

// ---- the stories ----

/// MQTT in -> Kafka, AMQP and MQTT out, from one stored copy.
#[tokio::test]
async fn an_mqtt_publish_is_stored_once_and_read_by_kafka_amqp_and_mqtt() -> Result<()> {
    let broker = Broker::start().await?;
    let mut kafka = broker.kafka().await?;
    create_topic(&mut kafka, "sensors", 3).await?;
    let (_conn, ch) = broker.amqp().await?;
    let mut amqp = bound_queue(&ch, "temps", "amq.topic", "sensors.*.temp").await?;
    let mut sub = broker.mqtt("sub-1").await?;
    sub.subscribe("sensors/+/temp").await?;
    let mut publisher = broker.mqtt("dev42").await?;

    // Large enough that two copies could not hide in the log's growth.
    let payload: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let props = PublishProperties {
        content_type: Some("application/octet-stream".into()),
        correlation_data: Some(Bytes::from_static(b"\x00corr")),
        response_topic: Some("sensors/dev42/reply".into()),
        user_properties: vec![("unit".into(), "C".into())],
        ..PublishProperties::default()
    };
    broker.store.flush().await?;
    let before = broker.store.metrics().append_bytes_total;
    publisher.publish("sensors/dev42/temp", &payload, Some(props)).await?;
    broker.store.flush().await?;
    let grown = broker.store.metrics().append_bytes_total - before;
    ensure!(
        (payload.len() as u64..2 * payload.len() as u64).contains(&grown),
        "the log grew by {grown} bytes for a {} byte payload: stored once",
        payload.len()
    );

    let partition = polymq::mapping::partition_for(b"sensors/dev42/temp", 3) as i32;
    let records = fetch(&mut kafka, "sensors", partition, 0).await?;
    ensure!(records.len() == 1, "one record in partition {partition}: {}", records.len());
    let r = &records[0];
    ensure!(r.key.as_deref() == Some(&b"sensors/dev42/temp"[..]), "key {:?}", r.key);
    ensure!(r.value.as_deref() == Some(&payload[..]), "payload byte-exact");
    ensure!(header(r, "content-type") == Some(&b"application/octet-stream"[..]));
    ensure!(header(r, "correlation-id") == Some(&b"\x00corr"[..]));
    ensure!(header(r, "reply-to") == Some(&b"sensors/dev42/reply"[..]));
    ensure!(header(r, "unit") == Some(&b"C"[..]));
    ensure!(header(r, "mqtt.qos") == Some(&b"1"[..]));
    ensure!(r.headers.keys().all(|k| !k.starts_with(':')), "no internal headers: {:?}", r.headers.keys().collect::<Vec<_>>());
    for other in (0..3).filter(|p| *p != partition) {
        ensure!(fetch(&mut kafka, "sensors", other, 0).await?.is_empty(), "partition {other} stays empty");
    }

    let d = next(&mut amqp).await?;
    ensure!(d.exchange.as_str() == "amq.topic" && d.routing_key.as_str() == "sensors.dev42.temp", "{} {}", d.exchange, d.routing_key);
    ensure!(d.data == payload);
    ensure!(d.properties.content_type().as_ref().map(|s| s.as_str()) == Some("application/octet-stream"));
    ensure!(d.properties.reply_to().as_ref().map(|s| s.as_str()) == Some("sensors/dev42/reply"));
    ensure!(amqp_header(&d, "unit") == Some(text("C")));

    let (topic, body, _) = sub.next_publish().await?;
    ensure!(topic == "sensors/dev42/temp" && body == payload);
    Ok(())
}

/// Kafka in -> MQTT and AMQP out; the batch stays byte-exact for Kafka.
#[tokio::test]
async fn a_kafka_record_reaches_mqtt_and_amqp_subscribers_of_its_topic() -> Result<()> {
    let broker = Broker::start().await?;
    let mut kafka = broker.kafka().await?;
    create_topic(&mut kafka, "sensors", 1).await?;
    let (_conn, ch) = broker.amqp().await?;
    let mut amqp = bound_queue(&ch, "all-sensors", "amq.topic", "sensors.#").await?;
    let mut exact = broker.mqtt("exact").await?;
    exact.subscribe("sensors/dev7/cmd").await?;
    let mut wide = broker.mqtt("wide").await?;
    wide.subscribe("sensors/#").await?;

    let cmd = with_headers(
        record(Some(b"sensors/dev7/cmd"), Some(b"reboot"), 1_700_000_000_000),
        &[("content-type", "text/plain"), ("correlation-id", "c-7"), ("reply-to", "sensors/dev7/ack"), ("origin", "ops")],
    );
    let keyed_elsewhere = record(Some(b"user-42"), Some(b"not a topic key"), 1_700_000_000_001);
    let by_header = with_headers(record(Some(b"dev8"), Some(b"via header"), 1_700_000_000_002), &[("mqtt.topic", "sensors/dev8/cmd")]);
    assert_eq!(produce(&mut kafka, "sensors", 0, &[cmd, keyed_elsewhere, by_header]).await?, 0);

    let (topic, body, props) = exact.next_publish().await?;
    ensure!(topic == "sensors/dev7/cmd" && &body[..] == b"reboot", "{topic} {body:?}");
    let props = props.context("MQTT 5 properties")?;
    ensure!(props.content_type.as_deref() == Some("text/plain"));
    ensure!(props.correlation_data.as_deref() == Some(&b"c-7"[..]));
    ensure!(props.response_topic.as_deref() == Some("sensors/dev7/ack"));
    ensure!(props.user_properties.contains(&("origin".into(), "ops".into())), "{:?}", props.user_properties);
    exact.no_publish().await?;

    let mut seen = Vec::new();
    for _ in 0..3 {
        let (topic, body, _) = wide.next_publish().await?;
        seen.push((topic, String::from_utf8_lossy(&body).into_owned()));
    }
    ensure!(
        seen == [
            ("sensors/dev7/cmd".to_owned(), "reboot".to_owned()),
            ("sensors".to_owned(), "not a topic key".to_owned()),
            ("sensors/dev8/cmd".to_owned(), "via header".to_owned())
        ],
        "{seen:?}"
    );

    let d = next(&mut amqp).await?;
    ensure!(d.routing_key.as_str() == "sensors.dev7.cmd" && d.exchange.as_str() == "amq.topic", "{}", d.routing_key);
    ensure!(d.properties.content_type().as_ref().map(|s| s.as_str()) == Some("text/plain"));
    ensure!(d.properties.correlation_id().as_ref().map(|s| s.as_str()) == Some("c-7"));
    ensure!(amqp_header(&d, "origin") == Some(text("ops")));
    ensure!(next(&mut amqp).await?.routing_key.as_str() == "sensors");
    ensure!(next(&mut amqp).await?.routing_key.as_str() == "sensors.dev8.cmd");

    let records = fetch(&mut kafka, "sensors", 0, 0).await?;
    let values: Vec<_> = records.iter().map(|r| (r.offset, r.value.clone().unwrap_or_default())).collect();
    ensure!(values.len() == 3 && values[0] == (0, Bytes::from_static(b"reboot")), "the batch, once: {values:?}");
    Ok(())
}

/// Plain Kafka traffic pays nothing: without a subscriber nothing is decoded or stored twice.
#[tokio::test]
async fn kafka_records_nobody_subscribed_to_are_stored_once() -> Result<()> {
    let broker = Broker::start().await?;
    let mut kafka = broker.kafka().await?;
    create_topic(&mut kafka, "quiet", 1).await?;
    let mut sub = broker.mqtt("elsewhere").await?;
    sub.subscribe("other/#").await?;
    let before = broker.store.metrics().appends_total;
    produce(&mut kafka, "quiet", 0, &[record(Some(b"quiet/a"), Some(b"x"), 1)]).await?;
    ensure!(broker.store.metrics().appends_total - before == 1, "only the batch was appended");
    Ok(())
}

/// AMQP in -> MQTT and Kafka out.
#[tokio::test]
async fn an_amqp_publish_to_amq_topic_reaches_mqtt_and_kafka() -> Result<()> {
    let broker = Broker::start().await?;
    let mut kafka = broker.kafka().await?;
    create_topic(&mut kafka, "sensors", 1).await?;
    let mut sub = broker.mqtt("dev9-watch").await?;
    sub.subscribe("sensors/dev9/temp").await?;
    let (_conn, ch) = broker.amqp().await?;
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from("unit"), text("C"));
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_correlation_id("corr-9".into())
        .with_reply_to("sensors.dev9.reply".into())
        .with_headers(headers);
    ch.basic_publish("amq.topic".into(), "sensors.dev9.temp".into(), BasicPublishOptions::default(), b"21.5", props).await?.await?;

    let (topic, body, props) = sub.next_publish().await?;
    ensure!(topic == "sensors/dev9/temp" && &body[..] == b"21.5", "the MQTT subscriber sees the topic, not the dotted key: {topic}");
    let props = props.context("MQTT 5 properties")?;
    ensure!(props.content_type.as_deref() == Some("text/plain"));
    ensure!(props.correlation_data.as_deref() == Some(&b"corr-9"[..]));
    ensure!(props.response_topic.as_deref() == Some("sensors.dev9.reply"), "reply-to is passed as it is");
    ensure!(props.user_properties == vec![("unit".to_owned(), "C".to_owned())], "{:?}", props.user_properties);

    let records = fetch(&mut kafka, "sensors", 0, 0).await?;
    ensure!(records.len() == 1);
    let r = &records[0];
    ensure!(r.key.as_deref() == Some(&b"sensors/dev9/temp"[..]), "key is the MQTT-form topic: {:?}", r.key);
    ensure!(r.value.as_deref() == Some(&b"21.5"[..]));
    ensure!(header(r, "content-type") == Some(&b"text/plain"[..]) && header(r, "correlation-id") == Some(&b"corr-9"[..]));
    ensure!(header(r, "unit") == Some(&b"C"[..]));
    Ok(())
}

/// The `.` rule: a `.` inside an MQTT level is `%2E` in a routing key (and
/// `%` is `%25`), both ways; a Kafka topic with a `.` in its name is one level.
#[tokio::test]
async fn dots_inside_topic_levels_survive_both_ways() -> Result<()> {
    let broker = Broker::start().await?;
    let (_conn, ch) = broker.amqp().await?;
    let mut amqp = bound_queue(&ch, "versions", "amq.topic", "fw.v1%2E2.*").await?;
    let mut sub = broker.mqtt("fw-watch").await?;
    sub.subscribe("fw/v1.2/+").await?;
    let mut publisher = broker.mqtt("fw-pub").await?;

    publisher.publish("fw/v1.2/100%", b"from mqtt", None).await?;
    let d = next(&mut amqp).await?;
    ensure!(d.routing_key.as_str() == "fw.v1%2E2.100%25", "{}", d.routing_key);
    let (topic, _, _) = sub.next_publish().await?;
    ensure!(topic == "fw/v1.2/100%");

    ch.basic_publish("amq.topic".into(), "fw.v1%2E2.beta".into(), BasicPublishOptions::default(), b"from amqp", BasicProperties::default())
        .await?
        .await?;
    let (topic, body, _) = sub.next_publish().await?;
    ensure!(topic == "fw/v1.2/beta" && &body[..] == b"from amqp", "{topic}");
    let d = next(&mut amqp).await?;
    ensure!(d.routing_key.as_str() == "fw.v1%2E2.beta", "an AMQP publish keeps its key: {}", d.routing_key);
    // RabbitMQ's reading (`v1.2` as two words) does not match.
    ch.basic_publish("amq.topic".into(), "fw.v1.2.x".into(), BasicPublishOptions::default(), b"two words", BasicProperties::default())
        .await?
        .await?;
    nothing(&mut amqp).await?;
    sub.no_publish().await?;

    // A Kafka topic name with a `.` is a single MQTT level.
    let mut kafka = broker.kafka().await?;
    create_topic(&mut kafka, "metrics.eu", 1).await?;
    let mut eu = broker.mqtt("eu-watch").await?;
    eu.subscribe("metrics.eu/#").await?;
    let mut amqp_eu = bound_queue(&ch, "eu", "amq.topic", "metrics%2Eeu.#").await?;
    produce(&mut kafka, "metrics.eu", 0, &[record(None, Some(b"no key"), 1)]).await?;
    let (topic, _, _) = eu.next_publish().await?;
    ensure!(topic == "metrics.eu", "{topic}");
    ensure!(next(&mut amqp_eu).await?.routing_key.as_str() == "metrics%2Eeu");
    Ok(())
}

/// An AMQP stream `orders` is the Kafka topic `orders`, offsets included.
#[tokio::test]
async fn an_amqp_stream_is_a_kafka_topic_with_the_same_offsets() -> Result<()> {
    let broker = Broker::start().await?;
    let (_conn, ch) = broker.amqp().await?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("stream"));
    ch.queue_declare("orders".into(), QueueDeclareOptions { durable: true, ..Default::default() }, args).await?;
    // Confirms: each publish is stored before the Kafka fetch below looks.
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    for body in [&b"o-0"[..], b"o-1"] {
        ch.basic_publish("".into(), "orders".into(), BasicPublishOptions::default(), body, BasicProperties::default()).await?.await?;
    }
    let mut kafka = broker.kafka().await?;
    let got: Vec<_> = fetch(&mut kafka, "orders", 0, 0).await?.into_iter().map(|r| (r.offset, r.value.unwrap_or_default())).collect();
    ensure!(got == [(0, Bytes::from_static(b"o-0")), (1, Bytes::from_static(b"o-1"))], "{got:?}");

    let recs: Vec<Record> =
        ["k-2", "k-3", "k-4"].iter().map(|v| record(Some(v.as_bytes()), Some(format!("o-{}", &v[2..]).as_bytes()), 1)).collect();
    ensure!(produce(&mut kafka, "orders", 0, &recs).await? == 2);

    ch.basic_qos(10, BasicQosOptions::default()).await?;
    let mut cargs = FieldTable::default();
    cargs.insert("x-stream-offset".into(), AMQPValue::LongLongInt(3));
    let mut c = ch.basic_consume("orders".into(), "from-3".into(), BasicConsumeOptions::default(), cargs).await?;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let d = next(&mut c).await?;
        let Some(AMQPValue::LongLongInt(off)) = amqp_header(&d, "x-stream-offset") else { bail!("no x-stream-offset") };
        seen.push((off, String::from_utf8_lossy(&d.data).into_owned(), d.routing_key.to_string()));
    }
    ensure!(
        seen == [(3, "o-3".to_owned(), "k-3".to_owned()), (4, "o-4".to_owned(), "k-4".to_owned())],
        "each record its own message: {seen:?}"
    );
    nothing(&mut c).await?;
    Ok(())
}

/// Mapping rules in config rename, restrict and disable directions.
#[tokio::test]
async fn mapping_config_renames_restricts_and_disables() -> Result<()> {
    let mut mapping = Mapping::default();
    mapping.streams.insert("sensors".into(), "iot-sensors".into());
    mapping.streams_only_listed = true;
    mapping.streams_to_topics = false;
    let broker = Broker::start_with(mapping).await?;
    let mut kafka = broker.kafka().await?;
    create_topic(&mut kafka, "iot-sensors", 1).await?;
    create_topic(&mut kafka, "other", 1).await?;
    let mut sub = broker.mqtt("watch").await?;
    sub.subscribe("sensors/#").await?;
    let mut publisher = broker.mqtt("pub").await?;
    publisher.publish("sensors/a", b"renamed", None).await?;
    publisher.publish("other/a", b"not listed", None).await?;
    let got = fetch(&mut kafka, "iot-sensors", 0, 0).await?;
    ensure!(got.len() == 1 && got[0].key.as_deref() == Some(&b"sensors/a"[..]), "renamed topic gets it");
    ensure!(fetch(&mut kafka, "other", 0, 0).await?.is_empty(), "unlisted first levels do not map");
    let (topic, _, _) = sub.next_publish().await?;
    ensure!(topic == "sensors/a");
    produce(&mut kafka, "iot-sensors", 0, &[record(Some(b"sensors/b"), Some(b"x"), 1)]).await?;
    sub.no_publish().await?;

    // Auto-creation, off by default, on when asked.
    let broker = Broker::start_with(Mapping { auto_create_streams: true, ..Mapping::default() }).await?;
    let mut publisher = broker.mqtt("pub").await?;
    publisher.publish("fresh/x", b"created", None).await?;
    ensure!(polymq::topic::partitions(&broker.store, "fresh").len() == 1);
    let plain = Broker::start().await?;
    let mut publisher = plain.mqtt("pub").await?;
    publisher.publish("fresh/x", b"not created", None).await?;
    ensure!(polymq::topic::partitions(&plain.store, "fresh").is_empty());
    Ok(())
}

/// The test that used to live in the AMQP suite: a plain MQTT 3.1.1 client.
#[tokio::test]
async fn an_mqtt_publish_reaches_an_amqp_queue_bound_to_amq_topic() -> Result<()> {
    let broker = Broker::start().await?;
    let (_conn, ch) = broker.amqp().await?;
    let mut c = bound_queue(&ch, "from-mqtt", "amq.topic", "a.*").await?;
    let opts = rumqttc::MqttOptions::new("amqp-bridge-test", broker.mqtt.ip().to_string(), broker.mqtt.port());
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10);
    let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    client.publish("a/b", rumqttc::QoS::AtLeastOnce, false, b"from mqtt".to_vec()).await?;
    client.publish("x/y", rumqttc::QoS::AtLeastOnce, false, b"elsewhere".to_vec()).await?;
    let d = next(&mut c).await?;
    ensure!(d.data == b"from mqtt", "{:?}", String::from_utf8_lossy(&d.data));
    ensure!(d.exchange.as_str() == "amq.topic" && d.routing_key.as_str() == "a.b", "{} {}", d.exchange, d.routing_key);
    nothing(&mut c).await?;
    driver.abort();
    Ok(())
}
