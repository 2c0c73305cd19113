//! API errors: one type, one `IntoResponse`, the JSON shape of DESIGN §4.
//!
//! User errors become 4xx with a precise message; internal failures become 5xx whose detail
//! is logged, not sent. The Consul-compatible API (`/v1`) answers errors as plain text, as
//! Consul does: [`ApiError::plain`] builds such an error, and the same `IntoResponse` writes it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use svcmeta_core::{MutationError, ValidationErrors, Violation};

use crate::catalog::WriteError;

/// An error answer of the native API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Vec<Violation>,
    /// Whether the body is the bare message as `text/plain` (Consul's shape) instead of JSON.
    plain: bool,
}

impl ApiError {
    /// A 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// A 404 for an unknown instance.
    pub fn not_found(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("instance {id:?} not found"),
        )
    }

    /// An error with any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            plain: false,
        }
    }

    /// An error whose body is the message alone, as `text/plain` (the Consul API's shape).
    pub fn plain(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            plain: true,
            ..ApiError::new(status, "consul", message)
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON body: `{"error":{"code","message","details"}}`.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
            }
        })
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(errors: ValidationErrors) -> ApiError {
        let count = errors.violations.len();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "validation_failed",
            message: if count == 1 {
                format!("invalid registration: {errors}")
            } else {
                format!("invalid registration ({count} problems): {errors}")
            },
            details: errors.violations,
            plain: false,
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> ApiError {
        match error {
            WriteError::Rejected(MutationError::NotFound(id)) => ApiError::not_found(&id),
            WriteError::Rejected(no_lease @ MutationError::NoLease(_)) => {
                ApiError::new(StatusCode::CONFLICT, "no_lease", no_lease.to_string())
            }
            WriteError::Rejected(conflict @ MutationError::Conflict { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", conflict.to_string())
            }
            WriteError::Rejected(full @ MutationError::Full { .. }) => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "registry_full",
                full.to_string(),
            ),
            WriteError::Store(svcmeta_store::StoreError::Unavailable(reason)) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!(
                    "redis is unreachable ({reason}); the write was not made, and reads are \
                     served from this node's last known state"
                ),
            ),
            WriteError::Store(svcmeta_store::StoreError::OutcomeUnknown(reason)) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!(
                    "redis stopped answering while the write was in flight ({reason}); it may \
                     or may not have been made: read the instance before retrying"
                ),
            ),
            WriteError::Store(svcmeta_store::StoreError::SyncFailed(reason)) => {
                tracing::error!(%reason, "fsync failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store could not make the write durable (an fsync failed): it may or may \
                     not be kept after a restart, so read the instance before retrying; this \
                     server takes no more writes until it is restarted",
                )
            }
            WriteError::Store(store) => {
                tracing::error!(error = %store, "store failure");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store could not complete the write; nothing was changed",
                )
            }
            contended @ WriteError::Contended { .. } => {
                ApiError::new(StatusCode::CONFLICT, "contended", contended.to_string())
            }
            WriteError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the registry is shutting down; retry on another node or later",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.plain {
            let content_type = [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )];
            return (self.status, content_type, self.message).into_response();
        }
        (self.status, Json(self.body())).into_response()
    }
}
