//! InitProducerId (key 22): a new durable producer id for an idempotent
//! producer, or (v3+, KIP-360) the same id with its epoch bumped. A
//! transactional id is refused with TRANSACTIONAL_ID_AUTHORIZATION_FAILED
//! (53): transactions are not served yet, and that is the error clients
//! treat as fatal at once instead of retrying until their timeout.

use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId, TransactionalId};
use kafka_protocol::protocol::StrBytes;

use super::{encode, HandlerFuture, Request};
use crate::api::produce::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
use crate::connection::Session;
use crate::topics::code;
use crate::wire::{Reader, WireResult};

pub(crate) fn decode(r: &mut Reader, version: i16, flex: bool) -> WireResult<InitProducerIdRequest> {
    let mut req = InitProducerIdRequest::default();
    req.transactional_id = r.nullable_string(flex)?.map(|s| TransactionalId(StrBytes::from_string(s)));
    req.transaction_timeout_ms = r.i32()?;
    if version >= 3 {
        req.producer_id = ProducerId(r.i64()?);
        req.producer_epoch = r.i16()?;
    }
    r.tagged_fields(flex)?;
    Ok(req)
}

pub(crate) fn handle(session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        let (version, flex) = (req.version, req.flexible);
        let body = decode(&mut req.body, version, flex).map_err(|e| req.malformed(e))?;
        let refused =
            |error: i16| InitProducerIdResponse::default().with_error_code(error).with_producer_id(ProducerId(-1)).with_producer_epoch(-1);
        if body.transactional_id.is_some() {
            return encode(ApiKey::InitProducerId, &refused(TRANSACTIONAL_ID_AUTHORIZATION_FAILED), version);
        }
        let shared = &session.shared;
        let (pid, epoch) = if body.producer_id.0 >= 0 && body.producer_epoch >= 0 && body.producer_epoch < i16::MAX - 1 {
            (body.producer_id.0, body.producer_epoch + 1)
        } else {
            match shared.producers.allocate(&shared.store).await {
                Ok(id) => (id, 0),
                Err(e) => {
                    tracing::warn!(error = %e, "producer id allocation failed");
                    return encode(ApiKey::InitProducerId, &refused(code::KAFKA_STORAGE_ERROR), version);
                }
            }
        };
        let resp = InitProducerIdResponse::default().with_producer_id(ProducerId(pid)).with_producer_epoch(epoch);
        encode(ApiKey::InitProducerId, &resp, version)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests::round_trip;

    #[test]
    fn decodes_what_kafka_protocol_encodes_at_every_version() {
        for v in 0..=4 {
            let mut req = InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("tx"))))
                .with_transaction_timeout_ms(60_000);
            if v >= 3 {
                req.producer_id = ProducerId(42);
                req.producer_epoch = 3;
            }
            round_trip(ApiKey::InitProducerId, &req, v, decode);
            round_trip(ApiKey::InitProducerId, &InitProducerIdRequest::default().with_transaction_timeout_ms(1), v, decode);
        }
    }
}
