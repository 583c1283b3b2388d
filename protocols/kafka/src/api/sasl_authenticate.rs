//! SaslAuthenticate (key 36), v0-2: one SASL token in, one out, after a v1
//! SaslHandshake chose the mechanism.
//!
//! A refused exchange gets SASL_AUTHENTICATION_FAILED (58) with a message
//! and the connection is closed after the response (as Kafka). A request
//! with no exchange in progress gets ILLEGAL_SASL_STATE (34) and is closed
//! too. The session lifetime is 0: no re-authentication (KIP-368) is asked for.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, SaslAuthenticateResponse};
use kafka_protocol::protocol::StrBytes;
use tracing::info;

use super::sasl_handshake::ILLEGAL_SASL_STATE;
use super::{encode, HandlerFuture, Request};
use crate::connection::Session;
use crate::sasl::{self, AuthState, Step};
use crate::wire::{Reader, WireResult};

pub const SASL_AUTHENTICATION_FAILED: i16 = 58;

pub(crate) fn decode(r: &mut Reader, _version: i16, flex: bool) -> WireResult<Bytes> {
    let token = r.bytes(flex)?;
    r.tagged_fields(flex)?;
    Ok(token)
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let (version, flex) = (req.version, req.flexible);
        let token = decode(&mut req.body, version, flex).map_err(|e| req.malformed(e))?;
        let in_exchange = matches!(session.auth, AuthState::Chosen { raw: false, .. } | AuthState::ScramFinal { raw: false, .. });
        let resp = SaslAuthenticateResponse::default();
        let resp = if !in_exchange {
            session.close_after_reply = Some("SaslAuthenticate without a SaslHandshake v1 before it".into());
            resp.with_error_code(ILLEGAL_SASL_STATE)
                .with_error_message(Some(StrBytes::from_static_str("SaslAuthenticate is not expected here")))
        } else {
            match sasl::step(&mut session.auth, &session.shared.users, &token) {
                Step::Continue(out) => resp.with_auth_bytes(Bytes::from(out)),
                Step::Done { user, token } => {
                    info!(peer = %session.peer, user = %user, "Kafka client authenticated");
                    resp.with_auth_bytes(Bytes::from(token))
                }
                Step::Failed(reason) => {
                    session.close_after_reply = Some(reason.clone());
                    resp.with_error_code(SASL_AUTHENTICATION_FAILED).with_error_message(Some(StrBytes::from_string(reason)))
                }
            }
        };
        encode(ApiKey::SaslAuthenticate, &resp, version)
    })
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::SaslAuthenticateRequest;

    use super::*;
    use crate::api::tests::round_trip;

    #[test]
    fn decodes_what_kafka_protocol_encodes_at_every_version() {
        for v in 0..=2 {
            let req = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\0user\0pw"));
            round_trip(ApiKey::SaslAuthenticate, &req, v, |r, v, f| {
                decode(r, v, f).map(|t| SaslAuthenticateRequest::default().with_auth_bytes(t))
            });
        }
    }
}
