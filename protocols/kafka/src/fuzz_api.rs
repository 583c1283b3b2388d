//! Entry points for the fuzz target `fuzz/fuzz_targets/kafka_request.rs` (and
//! its regression test): the request header decoder and every request body
//! decoder, on arbitrary bytes. Not a stable API.

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;

use crate::api;
use crate::wire::Reader;

/// Decodes `frame` as a request: the header, then the body with the decoder
/// of the API and version it names (if served), and also with every served
/// decoder at every advertised version. Must return, never panic, and never
/// allocate more than the frame could describe.
pub fn decode_request(frame: &[u8]) {
    let frame = Bytes::copy_from_slice(frame);
    let mut r = Reader::new(frame.clone());
    if let (Ok(key), Ok(version), Ok(_correlation)) = (r.i16(), r.i16(), r.i32()) {
        if let Some(a) = api::lookup(key) {
            let flexible = a.key.request_header_version(version.clamp(a.min_version, a.max_version)) >= 2;
            if r.nullable_string(false).is_ok() && r.tagged_fields(flexible).is_ok() {
                decode_body(a.key, version.clamp(a.min_version, a.max_version), r.rest());
            }
        }
    }
    for a in api::APIS {
        for v in a.min_version..=a.max_version {
            decode_body(a.key, v, frame.clone());
        }
    }
}

fn decode_body(key: ApiKey, version: i16, body: Bytes) {
    let flex = key.request_header_version(version) >= 2;
    let r = &mut Reader::new(body);
    let _ = match key {
        ApiKey::Metadata => api::metadata::decode(r, version, flex).map(drop),
        ApiKey::Produce => api::produce::decode(r, version, flex).map(drop),
        ApiKey::Fetch => api::fetch::decode(r, version, flex).map(drop),
        ApiKey::ListOffsets => api::list_offsets::decode(r, version, flex).map(drop),
        ApiKey::InitProducerId => api::init_producer_id::decode(r, version, flex).map(drop),
        ApiKey::CreateTopics => api::create_topics::decode(r, version, flex).map(drop),
        ApiKey::DeleteTopics => api::delete_topics::decode(r, version, flex).map(drop),
        ApiKey::CreatePartitions => api::create_partitions::decode(r, version, flex).map(drop),
        ApiKey::DescribeConfigs => api::describe_configs::decode(r, version, flex).map(drop),
        ApiKey::AlterConfigs => api::alter_configs::decode(r, version, flex).map(drop),
        ApiKey::IncrementalAlterConfigs => api::incremental_alter_configs::decode(r, version, flex).map(drop),
        ApiKey::DescribeCluster => api::describe_cluster::decode(r, version, flex).map(drop),
        ApiKey::SaslHandshake => api::sasl_handshake::decode(r, version, flex).map(drop),
        ApiKey::SaslAuthenticate => api::sasl_authenticate::decode(r, version, flex).map(|token| crate::sasl::fuzz_tokens(&token)),
        _ => Ok(()),
    };
    // Produced record batches are validated too.
    let _ = crate::batch::validate_produce(&r.rest());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_frames_are_refused_without_allocating() {
        // Every decoder, fed a frame whose first array announces 2^31-1
        // elements (fixed-width and compact counts), returns an error at
        // once: the count is checked against the bytes left.
        for prefix in [&[0x7f, 0xff, 0xff, 0xff][..], &[0xff, 0xff, 0xff, 0xff, 0x07][..]] {
            for a in api::APIS {
                for v in a.min_version..=a.max_version {
                    for lead in 0..24 {
                        let mut frame = vec![0u8; lead];
                        frame.extend_from_slice(prefix);
                        decode_body(a.key, v, Bytes::from(frame));
                    }
                }
            }
        }
        decode_request(&[0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff]);
        decode_request(&[]);
        decode_request(&[0xff; 64]);
    }
}
