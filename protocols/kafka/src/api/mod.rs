//! The APIs we serve: one module per API key, registered in [`APIS`], the one
//! table that dispatch and the ApiVersions response both read.
//!
//! A handler gets the decoded request header and the body as a bounded
//! [`Reader`]; it decodes the body itself (with the version's `flexible`
//! flag), does the work over the core, and encodes its response with
//! `kafka-protocol`'s response types ([`encode`]).

pub(crate) mod alter_configs;
pub(crate) mod api_versions;
pub(crate) mod create_partitions;
pub(crate) mod create_topics;
pub(crate) mod delete_groups;
pub(crate) mod delete_topics;
pub(crate) mod describe_cluster;
pub(crate) mod describe_configs;
pub(crate) mod describe_groups;
pub(crate) mod fetch;
pub(crate) mod find_coordinator;
pub(crate) mod heartbeat;
pub(crate) mod incremental_alter_configs;
pub(crate) mod init_producer_id;
pub(crate) mod join_group;
pub(crate) mod leave_group;
pub(crate) mod list_groups;
pub(crate) mod list_offsets;
pub(crate) mod metadata;
pub(crate) mod offset_commit;
pub(crate) mod offset_fetch;
pub(crate) mod produce;
pub(crate) mod sasl_authenticate;
pub(crate) mod sasl_handshake;
pub(crate) mod sync_group;

use std::future::Future;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};

use crate::connection::Session;
use crate::wire::{Reader, WireError};

/// A request as the connection hands it to a handler.
pub(crate) struct Request {
    pub api_key: ApiKey,
    pub version: i16,
    // Not read by the handlers served so far (group and SASL handlers log them).
    #[allow(dead_code)]
    pub correlation_id: i32,
    #[allow(dead_code)]
    pub client_id: Option<String>,
    /// Whether this version is "flexible" (compact encodings, tagged fields).
    pub flexible: bool,
    pub body: Reader,
}

/// What a handler answers.
pub(crate) enum Reply {
    /// No response at all (Produce with acks=0).
    None,
    /// The encoded response body; the connection adds the response header.
    Body(Bytes),
    /// The body as chunks written in order with one vectored write (Fetch:
    /// the stored batches are not copied into one buffer).
    Chunks(Vec<Bytes>),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HandlerError {
    /// The body does not decode: the connection is closed, as Kafka does.
    #[error("malformed {api:?} v{version} request: {source}")]
    Malformed {
        api: ApiKey,
        version: i16,
        #[source]
        source: WireError,
    },
    /// Our response did not encode (a bug; the connection is closed).
    #[error("encoding the {0:?} response failed: {1}")]
    Encode(ApiKey, String),
}

pub(crate) type HandlerResult = Result<Reply, HandlerError>;
pub(crate) type HandlerFuture<'a> = Pin<Box<dyn Future<Output = HandlerResult> + Send + 'a>>;
pub(crate) type Handler = for<'a> fn(&'a mut Session, Request) -> HandlerFuture<'a>;

/// One served API: the versions we accept and who handles them.
pub(crate) struct Api {
    pub key: ApiKey,
    pub min_version: i16,
    pub max_version: i16,
    pub handler: Handler,
}

/// Every API we serve. ApiVersions answers from this table; an API missing
/// here is not advertised and a request for it closes the connection.
///
/// The ranges are what librdkafka 2.0.2 (Debian's kcat), current librdkafka
/// and kafka-python negotiate down to; each starts where Kafka 4.0 starts
/// (Produce v3 / Fetch v4: record batches, magic 2).
#[rustfmt::skip]
pub(crate) static APIS: &[Api] = &[
    Api { key: ApiKey::ApiVersions, min_version: 0, max_version: 3, handler: api_versions::handle },
    Api { key: ApiKey::Metadata, min_version: 0, max_version: 12, handler: metadata::handle },
    Api { key: ApiKey::Produce, min_version: 3, max_version: 9, handler: produce::handle },
    Api { key: ApiKey::Fetch, min_version: 4, max_version: 12, handler: fetch::handle },
    Api { key: ApiKey::ListOffsets, min_version: 1, max_version: 6, handler: list_offsets::handle },
    Api { key: ApiKey::InitProducerId, min_version: 0, max_version: 4, handler: init_producer_id::handle },
    Api { key: ApiKey::CreateTopics, min_version: 0, max_version: 7, handler: create_topics::handle },
    Api { key: ApiKey::DeleteTopics, min_version: 0, max_version: 6, handler: delete_topics::handle },
    Api { key: ApiKey::CreatePartitions, min_version: 0, max_version: 3, handler: create_partitions::handle },
    Api { key: ApiKey::DescribeConfigs, min_version: 1, max_version: 4, handler: describe_configs::handle },
    Api { key: ApiKey::AlterConfigs, min_version: 0, max_version: 2, handler: alter_configs::handle },
    Api { key: ApiKey::IncrementalAlterConfigs, min_version: 0, max_version: 1, handler: incremental_alter_configs::handle },
    Api { key: ApiKey::DescribeCluster, min_version: 0, max_version: 1, handler: describe_cluster::handle },
    Api { key: ApiKey::OffsetCommit, min_version: 2, max_version: 8, handler: offset_commit::handle },
    Api { key: ApiKey::OffsetFetch, min_version: 1, max_version: 8, handler: offset_fetch::handle },
    Api { key: ApiKey::FindCoordinator, min_version: 0, max_version: 4, handler: find_coordinator::handle },
    Api { key: ApiKey::JoinGroup, min_version: 0, max_version: 9, handler: join_group::handle },
    Api { key: ApiKey::Heartbeat, min_version: 0, max_version: 4, handler: heartbeat::handle },
    Api { key: ApiKey::LeaveGroup, min_version: 0, max_version: 5, handler: leave_group::handle },
    Api { key: ApiKey::SyncGroup, min_version: 0, max_version: 5, handler: sync_group::handle },
    Api { key: ApiKey::DescribeGroups, min_version: 0, max_version: 5, handler: describe_groups::handle },
    Api { key: ApiKey::ListGroups, min_version: 0, max_version: 5, handler: list_groups::handle },
    Api { key: ApiKey::DeleteGroups, min_version: 0, max_version: 2, handler: delete_groups::handle },
    Api { key: ApiKey::SaslHandshake, min_version: 0, max_version: 1, handler: sasl_handshake::handle },
    Api { key: ApiKey::SaslAuthenticate, min_version: 0, max_version: 2, handler: sasl_authenticate::handle },
];

/// The table entry of `key`.
pub(crate) fn lookup(key: i16) -> Option<&'static Api> {
    APIS.iter().find(|a| a.key as i16 == key)
}

/// A topic name from the wire.
pub(crate) fn topic_name(s: String) -> TopicName {
    TopicName(StrBytes::from_string(s))
}

/// Encodes `response` at `version`.
pub(crate) fn encode<T: Encodable>(api: ApiKey, response: &T, version: i16) -> HandlerResult {
    let mut buf = BytesMut::new();
    response.encode(&mut buf, version).map_err(|e| HandlerError::Encode(api, e.to_string()))?;
    Ok(Reply::Body(buf.freeze()))
}

impl Request {
    /// Maps a body decode error to [`HandlerError::Malformed`].
    pub(crate) fn malformed(&self, source: WireError) -> HandlerError {
        HandlerError::Malformed { api: self.api_key, version: self.version, source }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::fmt::Debug;

    use super::*;
    use crate::wire::WireResult;

    /// Encodes `req` with kafka-protocol's client side at `version`, decodes
    /// it with ours and compares; every truncation of it must be refused.
    pub(crate) fn round_trip<T: Encodable + PartialEq + Debug>(
        key: ApiKey,
        req: &T,
        version: i16,
        decode: fn(&mut Reader, i16, bool) -> WireResult<T>,
    ) {
        let mut buf = BytesMut::new();
        req.encode(&mut buf, version).unwrap_or_else(|e| panic!("{key:?} v{version} encode: {e}"));
        let bytes = buf.freeze();
        let flex = key.request_header_version(version) >= 2;
        let mut r = Reader::new(bytes.clone());
        let got = decode(&mut r, version, flex).unwrap_or_else(|e| panic!("{key:?} v{version} decode: {e}"));
        assert_eq!(&got, req, "{key:?} v{version}");
        assert_eq!(r.remaining(), 0, "{key:?} v{version}: bytes left over");
        for cut in 0..bytes.len() {
            assert!(decode(&mut Reader::new(bytes.slice(..cut)), version, flex).is_err(), "{key:?} v{version} cut at {cut}");
        }
    }

    #[test]
    fn the_table_is_within_what_kafka_protocol_encodes_and_has_no_duplicates() {
        for (i, a) in APIS.iter().enumerate() {
            assert!(a.min_version <= a.max_version, "{:?}", a.key);
            assert!(APIS[..i].iter().all(|b| b.key != a.key), "{:?} twice", a.key);
            let v = a.key.valid_versions();
            // CreateTopics v0-1 and DeleteTopics v0 are encoded by hand.
            let min = if matches!(a.key, ApiKey::CreateTopics | ApiKey::DeleteTopics) { 0 } else { v.min };
            assert!(min <= a.min_version && a.max_version <= v.max, "{:?}", a.key);
        }
    }
}
