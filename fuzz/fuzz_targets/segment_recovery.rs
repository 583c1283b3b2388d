//! Recovery of a log whose last segment holds arbitrary bytes after a valid
//! header: the store opens (truncating a torn tail) or refuses with an error;
//! it never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    polymq::fuzz_api::recover_segment(data);
});
