//! ApiVersions (key 18): what we serve, read from [`super::APIS`].
//!
//! A version we do not serve is answered with the v0 response carrying
//! UNSUPPORTED_VERSION (35) and the table (KIP-511), which is how a newer
//! client learns to step down; the connection handles that case before
//! dispatch, with [`unsupported_version_response`].
//!
//! No tagged fields are written: librdkafka 2.0.2 (Debian's kcat 1.7.1)
//! drops the connection when the v3 response carries default-valued tagged
//! fields, as Apache Kafka never sends them.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::ResponseError;

use super::{encode, HandlerFuture, HandlerResult, Request, APIS};
use crate::connection::Session;

pub(crate) fn handle(_session: &mut Session, mut req: Request) -> HandlerFuture<'_> {
    Box::pin(async move {
        if req.version >= 3 {
            // client_software_name, client_software_version, tagged fields:
            // informational only, but they must decode.
            let body = &mut req.body;
            let decoded = (|| {
                body.string(true)?;
                body.string(true)?;
                body.tagged_fields(true)
            })();
            decoded.map_err(|e| req.malformed(e))?;
        }
        encode(ApiKey::ApiVersions, &response(0), req.version)
    })
}

fn response(error_code: i16) -> ApiVersionsResponse {
    let api_keys = APIS
        .iter()
        .map(|a| ApiVersion::default().with_api_key(a.key as i16).with_min_version(a.min_version).with_max_version(a.max_version))
        .collect();
    let mut resp = ApiVersionsResponse::default().with_error_code(error_code).with_api_keys(api_keys);
    // Default is -1 (no finalized features): keeps the tagged field out.
    resp.finalized_features_epoch = -1;
    resp
}

/// The v0 response to an ApiVersions request of a version we do not serve.
pub(crate) fn unsupported_version_response() -> HandlerResult {
    encode(ApiKey::ApiVersions, &response(ResponseError::UnsupportedVersion.code()), 0)
}
