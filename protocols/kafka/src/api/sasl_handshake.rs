//! SaslHandshake (key 17), v0-1: the client names a mechanism.
//!
//! After a v1 handshake the tokens come in SaslAuthenticate requests; after
//! a v0 handshake they come as bare size-prefixed frames (the connection
//! hands them to `sasl::step`), as librdkafka and kafka-python do with
//! brokers older than Kafka 1.0.
//!
//! As Kafka: an unknown mechanism gets UNSUPPORTED_SASL_MECHANISM (33) with
//! the list and the connection is closed; a handshake where none is expected
//! (SASL off, already authenticated, mid-exchange) gets ILLEGAL_SASL_STATE
//! (34), and mid-exchange the connection is closed too.

use kafka_protocol::messages::{ApiKey, SaslHandshakeResponse};
use kafka_protocol::protocol::StrBytes;

use super::{encode, HandlerFuture, Request};
use crate::connection::Session;
use crate::sasl::{AuthState, Mechanism, MECHANISMS};
use crate::wire::{Reader, WireResult};

pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
pub const ILLEGAL_SASL_STATE: i16 = 34;

pub(crate) fn decode(r: &mut Reader, _version: i16, _flex: bool) -> WireResult<String> {
    r.string(false)
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let version = req.version;
        let mechanism = decode(&mut req.body, version, false).map_err(|e| req.malformed(e))?;
        let error = match (&session.auth, Mechanism::parse(&mechanism)) {
            (AuthState::Start, Some(m)) => {
                session.auth = AuthState::Chosen { mechanism: m, raw: version == 0 };
                0
            }
            (AuthState::Start, None) => {
                session.close_after_reply = Some(format!("SASL mechanism {mechanism:?} is not enabled"));
                UNSUPPORTED_SASL_MECHANISM
            }
            (AuthState::Authenticated, _) => ILLEGAL_SASL_STATE,
            (AuthState::Chosen { .. } | AuthState::ScramFinal { .. }, _) => {
                session.close_after_reply = Some("SaslHandshake in the middle of an exchange".into());
                ILLEGAL_SASL_STATE
            }
        };
        let mechanisms = MECHANISMS.iter().map(|m| StrBytes::from_static_str(m)).collect();
        encode(ApiKey::SaslHandshake, &SaslHandshakeResponse::default().with_error_code(error).with_mechanisms(mechanisms), version)
    })
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::SaslHandshakeRequest;

    use super::*;
    use crate::api::tests::round_trip;

    #[test]
    fn decodes_what_kafka_protocol_encodes_at_every_version() {
        for v in 0..=1 {
            let req = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("SCRAM-SHA-512"));
            round_trip(ApiKey::SaslHandshake, &req, v, |r, v, f| {
                decode(r, v, f).map(|m| SaslHandshakeRequest::default().with_mechanism(StrBytes::from_string(m)))
            });
        }
    }
}
