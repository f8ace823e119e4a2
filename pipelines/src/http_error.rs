//! The one shape every HTTP error of a node has, whichever crate's route answers:
//! `{"error": {"code": "not_found", "message": "no stream \"x\""}}`, as `application/json`.
//! The code is a stable word for the status; the message is for people.

/// The `Content-Type` of an error body.
pub const CONTENT_TYPE: &str = "application/json";

/// A stable, machine-readable word for an HTTP status.
pub fn code(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        429 => "too_many_requests",
        500 => "internal",
        502 => "bad_gateway",
        503 => "unavailable",
        504 => "timeout",
        _ => "error",
    }
}

/// An error as every route answers it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    /// A stable word for the status.
    #[schema(examples("not_found"))]
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: &'a str,
}

/// The body of an error with `status`.
pub fn body(status: u16, message: &str) -> String {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code(status),
            message,
        },
    };
    serde_json::to_string(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_a_code_and_a_message() {
        let v: serde_json::Value = serde_json::from_str(&body(404, "no stream \"x\"")).unwrap();
        assert_eq!(v["error"]["code"], "not_found");
        assert_eq!(v["error"]["message"], "no stream \"x\"");
        assert_eq!(code(418), "error");
    }
}
