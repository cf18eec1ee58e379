//! The OpenAI error body and the validation errors of a request.

use serde::{Deserialize, Serialize};

/// `{"error": {"message", "type", "param", "code"}}`, the shape every OpenAI client parses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Always serialized (as `null` when absent), as OpenAI does.
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ErrorBody {
    pub fn new(
        message: impl Into<String>,
        kind: impl Into<String>,
        param: Option<String>,
        code: Option<String>,
    ) -> Self {
        Self {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.into(),
                param,
                code,
            },
        }
    }
}

/// Why a request body was refused. Every variant is a client error (HTTP 400,
/// `invalid_request_error`); [`RequestError::param`] and [`RequestError::code`] fill the
/// matching fields of the error body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("We could not parse the JSON body of your request: {0}")]
    MalformedJson(String),
    #[error("The request body must be a JSON object, got {got}")]
    NotAnObject { got: &'static str },
    #[error("Missing required parameter: '{param}'")]
    MissingField { param: String },
    #[error("Unsupported parameter: '{param}' is not supported by this server{hint}")]
    UnsupportedField { param: String, hint: &'static str },
    #[error("Unrecognized request argument supplied: '{param}'")]
    UnknownField { param: String },
    #[error("Invalid type for '{param}': expected {expected}, but got {got} instead")]
    InvalidType {
        param: String,
        expected: &'static str,
        got: &'static str,
    },
    #[error("Invalid value for '{param}': {message}")]
    InvalidValue { param: String, message: String },
}

impl RequestError {
    /// The offending parameter, as a JSON path (`messages[1].content[0].image_url.url`).
    pub fn param(&self) -> Option<&str> {
        match self {
            RequestError::MalformedJson(_) | RequestError::NotAnObject { .. } => None,
            RequestError::MissingField { param }
            | RequestError::UnsupportedField { param, .. }
            | RequestError::UnknownField { param }
            | RequestError::InvalidType { param, .. }
            | RequestError::InvalidValue { param, .. } => Some(param),
        }
    }

    /// A stable machine-readable code for the `code` field.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::MalformedJson(_) => "invalid_json",
            RequestError::NotAnObject { .. } => "invalid_type",
            RequestError::MissingField { .. } => "missing_required_parameter",
            RequestError::UnsupportedField { .. } => "unsupported_parameter",
            RequestError::UnknownField { .. } => "unknown_parameter",
            RequestError::InvalidType { .. } => "invalid_type",
            RequestError::InvalidValue { .. } => "invalid_value",
        }
    }

    pub(crate) fn invalid_value(param: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError::InvalidValue {
            param: param.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_serializes_null_param_and_code() {
        let body = ErrorBody::new("boom", "server_error", None, None);
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": null}})
        );
    }
}
