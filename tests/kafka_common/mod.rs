//! Harness for the Kafka end-to-end tests: an in-process polymq server on
//! 127.0.0.1:0 serving Kafka (and MQTT / AMQP, for the cross-protocol tests)
//! over one store in a temporary directory, a restart on the same data
//! directory, and a tiny client that sends a `kafka-protocol` request struct
//! with a request header over a real socket and decodes the response.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

#[path = "../server_common/mod.rs"]
mod server_common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use polymq::server::ProtocolService;
use polymq::Store;
use polymq_kafka::{KafkaConfig, KafkaService};
use server_common::InProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something that should happen. Generous: CI
/// runs debug builds of several test binaries at once on two cores.
pub const WAIT: Duration = Duration::from_secs(10);

/// A polymq server with the Kafka service, restartable on the same data.
pub struct TestBroker {
    server: InProcess,
}

impl TestBroker {
    pub async fn start() -> Result<TestBroker> {
        TestBroker::start_with(KafkaConfig::default()).await
    }

    pub async fn start_with(cfg: KafkaConfig) -> Result<TestBroker> {
        TestBroker::start_full(cfg, polymq::FsyncPolicy::default()).await
    }

    pub async fn start_full(cfg: KafkaConfig, fsync: polymq::FsyncPolicy) -> Result<TestBroker> {
        let server = InProcess::start(
            fsync,
            Box::new(move |store| {
                let cfg = cfg.clone();
                Box::pin(async move {
                    let kafka: Arc<dyn ProtocolService> = KafkaService::new(store, cfg).await.context("starting Kafka")?;
                    Ok(vec![kafka])
                })
            }),
        )
        .await?;
        Ok(TestBroker { server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr("kafka")
    }

    /// The server's store (to check what the protocol wrote, or to write as
    /// another protocol would).
    pub fn store(&self) -> Arc<Store> {
        self.server.store()
    }

    pub async fn client(&self) -> Result<Client> {
        Client::connect(self.addr()).await
    }

    /// Shuts the server down as `polymq serve` does on SIGTERM, then opens
    /// the same data directory again on a new port.
    pub async fn restart(&mut self) -> Result<()> {
        self.server.restart().await
    }

    /// Shuts the server down as `polymq serve` does on SIGTERM and closes
    /// its store; [`TestBroker::start_again`] opens the data directory again.
    pub async fn stop(&mut self) -> Result<()> {
        self.server.stop().await
    }

    pub async fn start_again(&mut self) -> Result<()> {
        self.server.start_again().await
    }

    /// The data directory (to look at the log while the broker is stopped).
    pub fn data_dir(&self) -> &Path {
        self.server.data_dir()
    }
}

/// One Kafka connection speaking `kafka-protocol`'s client side.
pub struct Client {
    stream: TcpStream,
    correlation_id: i32,
    pub client_id: Option<String>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Result<Client> {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await.context("connect timed out")??;
        stream.set_nodelay(true)?;
        Ok(Client { stream, correlation_id: 0, client_id: Some("polymq-e2e".into()) })
    }

    /// Sends `req` at `version` and returns the decoded response.
    pub async fn send<R: Request>(&mut self, req: &R, version: i16) -> Result<R::Response> {
        let correlation_id = self.send_only(req, version).await?;
        let frame = self.read_frame().await?;
        decode_response::<R>(frame, version, correlation_id)
    }

    /// Sends `req` and does not read a response (Produce with acks=0).
    /// Returns the correlation id used.
    pub async fn send_only<R: Request>(&mut self, req: &R, version: i16) -> Result<i32> {
        self.correlation_id += 1;
        let key = ApiKey::try_from(R::KEY).map_err(|_| anyhow::anyhow!("unknown api key {}", R::KEY))?;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(self.client_id.clone().map(StrBytes::from_string));
        let mut body = BytesMut::new();
        header.encode(&mut body, key.request_header_version(version))?;
        req.encode(&mut body, version)?;
        self.send_raw(&body).await?;
        Ok(self.correlation_id)
    }

    /// Writes one size-prefixed frame of arbitrary bytes.
    pub async fn send_raw(&mut self, frame: &[u8]) -> Result<()> {
        let mut out = BytesMut::with_capacity(4 + frame.len());
        out.put_i32(frame.len() as i32);
        out.put_slice(frame);
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Reads one response frame (without its size prefix), within [`WAIT`].
    pub async fn read_frame(&mut self) -> Result<Bytes> {
        tokio::time::timeout(WAIT, async {
            let size = self.stream.read_i32().await.context("reading a response size")?;
            if !(0..=256 * 1024 * 1024).contains(&size) {
                bail!("response size {size}");
            }
            let mut buf = vec![0u8; size as usize];
            self.stream.read_exact(&mut buf).await.context("reading a response body")?;
            Ok(Bytes::from(buf))
        })
        .await
        .context("no response within the wait")?
    }

    /// True if the server closed the connection (EOF) within [`WAIT`].
    pub async fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(tokio::time::timeout(WAIT, self.stream.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
    }
}

/// Decodes a response frame for request type `R` at `version`.
pub fn decode_response<R: Request>(mut frame: Bytes, version: i16, correlation_id: i32) -> Result<R::Response> {
    let header = ResponseHeader::decode(&mut frame, <R::Response as HeaderVersion>::header_version(version))?;
    if header.correlation_id != correlation_id {
        bail!("correlation id {} answers {}", header.correlation_id, correlation_id);
    }
    let resp = R::Response::decode(&mut frame, version)?;
    if frame.has_remaining() {
        bail!("{} bytes left after the response", frame.remaining());
    }
    Ok(resp)
}

/// One simple record for [`batch`]: key, value, headers.
pub fn record(key: Option<&[u8]>, value: Option<&[u8]>, timestamp: i64) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp,
        key: key.map(Bytes::copy_from_slice),
        value: value.map(Bytes::copy_from_slice),
        headers: Default::default(),
    }
}

/// Encodes records as one v2 batch (offsets relative from 0).
pub fn batch(records: &[Record]) -> Result<Bytes> {
    let mut records = records.to_vec();
    for (i, r) in records.iter_mut().enumerate() {
        r.offset = i as i64;
        // kafka-protocol starts a new batch where offset - sequence changes;
        // without a producer the base sequence must stay -1.
        if r.producer_id < 0 {
            r.sequence = i as i32 - 1;
        }
    }
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, records.iter(), &RecordEncodeOptions { version: 2, compression: Compression::None })?;
    Ok(buf.freeze())
}

/// Decodes every batch in a Fetch's `records` into records (CRCs checked).
pub fn decode_records(records: &Option<Bytes>) -> Result<Vec<Record>> {
    let Some(b) = records else { return Ok(Vec::new()) };
    let mut b = b.clone();
    let mut out = Vec::new();
    for set in RecordBatchDecoder::decode_all(&mut b)? {
        out.extend(set.records);
    }
    Ok(out)
}
