//! polymq core: one commit log, lightweight queues, pop and offset consumption.
//!
//! The core knows no protocol. Protocol crates talk to it through [`Store`]:
//! declare queues, append a message routed to many queues (stored once), read
//! by offset, pop / ack / nack by receipt, and commit group offsets.

pub mod clock;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzz_api;
pub mod limits;
pub mod log;
pub mod mapping;
pub mod queue;
pub mod record;
pub mod route;
pub mod server;
pub mod store;
mod sys;
pub mod topic;

pub use error::StoreError;
pub use log::FsyncPolicy;
pub use store::{Store, StoreConfig, StoreMetrics};
