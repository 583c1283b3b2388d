//! The frame reader never panics, never reads out of bounds, and a record it
//! accepts is exactly its checksummed bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polymq::log::frame::{read_frame, FrameRead, FRAME_PREFIX};

fuzz_target!(|data: &[u8]| {
    if let FrameRead::Record { body, total } = read_frame(data) {
        assert!(total <= data.len());
        assert_eq!(body.len() + FRAME_PREFIX, total);
    }
});
