//! RabbitMQ's reply codes, and the `CODE_NAME - text` form of reply texts
//! that clients log and some match on.

pub const REPLY_SUCCESS: u16 = 200;
pub const NO_ROUTE: u16 = 312;
pub const ACCESS_REFUSED: u16 = 403;
pub const NOT_FOUND: u16 = 404;
pub const RESOURCE_LOCKED: u16 = 405;
pub const PRECONDITION_FAILED: u16 = 406;
pub const CONNECTION_FORCED: u16 = 320;
pub const FRAME_ERROR: u16 = 501;
pub const SYNTAX_ERROR: u16 = 502;
pub const COMMAND_INVALID: u16 = 503;
pub const CHANNEL_ERROR: u16 = 504;
pub const UNEXPECTED_FRAME: u16 = 505;
pub const RESOURCE_ERROR: u16 = 506;
pub const NOT_ALLOWED: u16 = 530;
pub const NOT_IMPLEMENTED: u16 = 540;
pub const INTERNAL_ERROR: u16 = 541;

pub fn name(code: u16) -> &'static str {
    match code {
        REPLY_SUCCESS => "OK",
        NO_ROUTE => "NO_ROUTE",
        CONNECTION_FORCED => "CONNECTION_FORCED",
        ACCESS_REFUSED => "ACCESS_REFUSED",
        NOT_FOUND => "NOT_FOUND",
        RESOURCE_LOCKED => "RESOURCE_LOCKED",
        PRECONDITION_FAILED => "PRECONDITION_FAILED",
        FRAME_ERROR => "FRAME_ERROR",
        SYNTAX_ERROR => "SYNTAX_ERROR",
        COMMAND_INVALID => "COMMAND_INVALID",
        CHANNEL_ERROR => "CHANNEL_ERROR",
        UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        RESOURCE_ERROR => "RESOURCE_ERROR",
        NOT_ALLOWED => "NOT_ALLOWED",
        NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        _ => "INTERNAL_ERROR",
    }
}

/// An error that closes a channel or the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    pub code: u16,
    pub text: String,
    /// Channel errors close the channel; connection errors (the 5xx hard
    /// errors, and 530) close the connection.
    pub connection: bool,
}

impl AmqpError {
    pub fn channel(code: u16, text: impl std::fmt::Display) -> AmqpError {
        AmqpError { code, text: format!("{} - {}", name(code), text), connection: false }
    }
    pub fn connection(code: u16, text: impl std::fmt::Display) -> AmqpError {
        AmqpError { code, text: format!("{} - {}", name(code), text), connection: true }
    }
}

impl From<polymq::StoreError> for AmqpError {
    fn from(e: polymq::StoreError) -> AmqpError {
        use polymq::StoreError as E;
        match e {
            E::QueueNotFound(q) => AmqpError::channel(NOT_FOUND, format!("no queue {q}")),
            E::Inequivalent(q) => AmqpError::channel(PRECONDITION_FAILED, format!("inequivalent arg for queue {q}")),
            E::InvalidQueueName(q) => AmqpError::channel(PRECONDITION_FAILED, format!("invalid queue name {q}")),
            E::QueueLimit(n) => AmqpError::channel(RESOURCE_ERROR, format!("queue limit reached ({n} queues)")),
            E::MemoryLimit(n) => AmqpError::channel(RESOURCE_ERROR, format!("memory for transient messages is full ({n} bytes)")),
            E::NoSpace => AmqpError::channel(RESOURCE_ERROR, "no space left on the broker's disk; retry when space returns"),
            E::RecordTooLarge { size, max } => AmqpError::channel(PRECONDITION_FAILED, format!("message of {size} bytes exceeds {max}")),
            E::InvalidArgument(a) => AmqpError::channel(PRECONDITION_FAILED, a),
            other => AmqpError::connection(INTERNAL_ERROR, other),
        }
    }
}
