//! The reply envelope every syscall returns, and the stable error codes.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The reply to every syscall, over every transport.
///
/// `ok` is true exactly when `data` is present and `error` is absent. `revision` is the
/// new revision of the control block a command changed, when it changed one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<T = Value> {
    pub ok: bool,
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl<T> Envelope<T> {
    /// A successful reply.
    pub fn success(op: impl Into<String>, data: T, revision: Option<u64>) -> Self {
        Self {
            ok: true,
            op: op.into(),
            revision,
            data: Some(data),
            error: None,
        }
    }

    /// A failed reply.
    pub fn failure(op: impl Into<String>, error: ErrorBody) -> Self {
        Self {
            ok: false,
            op: op.into(),
            revision: None,
            data: None,
            error: Some(error),
        }
    }

    /// The data of a successful reply, or its error.
    pub fn into_result(self) -> Result<T, ErrorBody> {
        match (self.data, self.error) {
            (_, Some(error)) => Err(error),
            (Some(data), None) if self.ok => Ok(data),
            _ => Err(ErrorBody::new(
                ErrorCode::Internal,
                format!("malformed envelope for `{}`: ok without data", self.op),
            )),
        }
    }
}

/// What went wrong: a stable code for programs, a message for people, and optional
/// structured details (for example the field that failed validation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ErrorBody {}

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $wire:literal => $status:literal ),* $(,)?) => {
        /// Stable error codes. The wire spelling never changes once released; new codes
        /// may be added, so clients must treat unknown codes like [`ErrorCode::Internal`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum ErrorCode {
            $( $(#[$doc])* #[serde(rename = $wire)] $variant, )*
        }

        impl ErrorCode {
            /// Every code, in documentation order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The wire spelling, e.g. `invalid.params`.
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $wire,)* }
            }

            /// The HTTP status a reply with this code carries.
            pub const fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            /// Parses the wire spelling.
            pub fn from_wire(text: &str) -> Option<Self> {
                match text { $($wire => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

error_codes! {
    /// Params are missing, of the wrong type, unknown, or out of range.
    InvalidParams = "invalid.params" => 400,
    /// No bearer token, or one the kernel does not know (or expired, or revoked).
    Unauthenticated = "unauthenticated" => 401,
    /// The token is valid but its scope does not cover this operation or target.
    PermissionDenied = "permission.denied" => 403,
    /// An admission hook refused the operation; the message names the service and reason.
    HookRejected = "hook.rejected" => 403,
    /// The operation or the object it names does not exist.
    NotFound = "not_found" => 404,
    /// The request body exceeds the configured limit.
    PayloadTooLarge = "payload.too_large" => 413,
    /// The session is running a dispatch (or compacting) and cannot take this now.
    SessionBusy = "session.busy" => 409,
    /// The session has not finished bootstrapping.
    SessionNotReady = "session.not_ready" => 409,
    /// The session is archived: reads work, changes do not.
    SessionArchived = "session.archived" => 409,
    /// The agent is archived: reads work, changes do not.
    AgentArchived = "agent.archived" => 409,
    /// The lease this work ran under has expired and been taken over.
    LeaseExpired = "lease.expired" => 409,
    /// A concurrent writer changed the object first; retry on the new revision.
    RevisionConflict = "revision.conflict" => 409,
    /// A configured bound was reached (a rate, a depth, a fan-out); the message names
    /// the bound and where it is configured. Retrying later may succeed.
    LimitExceeded = "limit.exceeded" => 429,
    /// The operation exists but is not available in this build or configuration.
    Unavailable = "unavailable" => 501,
    /// The LLM provider could not be reached or refused the request.
    ProviderUnavailable = "provider.unavailable" => 503,
    /// The database could not be written (disk full, read-only, locked too long).
    StorageUnavailable = "storage.unavailable" => 503,
    /// A service did not answer within its deadline.
    Timeout = "timeout" => 504,
    /// A service failed: it did not start, crashed, or its operation failed without
    /// naming a more specific code.
    ServiceFailed = "service.failed" => 502,
    /// A bug or an unexpected failure inside the kernel; details are in its log.
    Internal = "internal" => 500,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_wire_spelling() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, Value::String(code.as_str().to_owned()));
            assert_eq!(ErrorCode::from_wire(code.as_str()), Some(*code));
        }
    }

    #[test]
    fn success_omits_error_and_failure_omits_data() {
        let ok = serde_json::to_value(Envelope::success("agent.get", 1, Some(3))).unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"ok": true, "op": "agent.get", "revision": 3, "data": 1})
        );
        let err =
            Envelope::<Value>::failure("agent.get", ErrorBody::new(ErrorCode::NotFound, "no"));
        let err = serde_json::to_value(err).unwrap();
        assert_eq!(
            err,
            serde_json::json!({"ok": false, "op": "agent.get", "error": {"code": "not_found", "message": "no"}})
        );
    }
}
