//! Payload formats that more than one protocol reads.
//!
//! The core stores a message's payload with an opaque format tag
//! (`polymq::record::Message::format`); 0 is a plain payload. A protocol
//! that stores another encoding names its tag here, so that every protocol
//! delivering those messages can read them without importing the protocol
//! that wrote them.

pub mod record_batch;
