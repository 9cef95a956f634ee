//! API errors: a status code and a JSON body a person can act on.

use crate::controlplane::ControlPlaneError;
use crate::store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tugboat_api::spec::SpecError;
use tugboat_api::wire::{ErrorBody, ErrorDetail};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<SpecError>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: String) -> ApiError {
        ApiError {
            status,
            code,
            message,
            details: vec![],
        }
    }
    pub fn bad_request(message: String) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: String) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<ControlPlaneError> for ApiError {
    fn from(e: ControlPlaneError) -> ApiError {
        let message = e.to_string();
        // A store error met while reading typed objects is the same store error.
        let e = match e {
            ControlPlaneError::Object(crate::objects::ObjectError::Store(store)) => {
                ControlPlaneError::Store(store)
            }
            other => other,
        };
        match e {
            ControlPlaneError::NotFound { .. } => ApiError::not_found(message),
            ControlPlaneError::AlreadyExists { .. } => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", message)
            }
            ControlPlaneError::Invalid(details) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid_spec",
                message: "the spec is invalid; nothing was stored".into(),
                details,
            },
            ControlPlaneError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            ControlPlaneError::BadRequest(_) => ApiError::bad_request(message),
            ControlPlaneError::Store(StoreError::Conflict { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            ControlPlaneError::Store(StoreError::Compacted { .. }) => {
                ApiError::new(StatusCode::GONE, "compacted", message)
            }
            ControlPlaneError::Store(StoreError::Etcd { .. } | StoreError::WatchEnded { .. }) => {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    format!("the cluster store (etcd) does not answer; try again: {message}"),
                )
            }
            ControlPlaneError::Store(_) | ControlPlaneError::Object(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("server storage error: {message}"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                status: self.status.as_u16(),
                code: self.code.into(),
                message: self.message,
                details: self.details,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}
