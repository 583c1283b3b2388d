//! Arbitrary frames through the Kafka request header decoder and every
//! request body decoder at every advertised version: each returns (Ok or a
//! clean error), never panics, and allocates only in proportion to the
//! frame (array counts are checked against the bytes left).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    polymq_kafka::fuzz_api::decode_request(data);
});
