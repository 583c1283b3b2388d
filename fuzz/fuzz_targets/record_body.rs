//! Record bodies (messages, acks, declarations, bindings, ...) and metadata
//! snapshot entries decode or fail cleanly, with allocations bounded by the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    polymq::fuzz_api::decode_record(data);
});
