//! The pure translation core: On-Premise shapes in, Cloud shapes out, and back.
//!
//! Everything here is synchronous and side-effect free: no hyper types, no clock, no env, no
//! logging. Functions take `serde_json::Value`s (plus a [`Meta`] context) and return `Value`s or a
//! [`TranslateError`] that names the offending field. The async shell in `handlers` does the I/O.

pub mod contacts;
pub mod dryrun;
pub mod errors;
pub mod fast;
pub mod media;
pub mod messages;
pub mod profile;
pub mod request;
pub mod settings;
pub mod templates;
pub mod webhooks;

use serde_json::{json, Map, Value};

/// What the On-Premise API put in every body's `meta`; the version is configurable because
/// clients parse it as semver and some gate features on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub version: String,
}

impl Meta {
    pub fn new(version: impl Into<String>) -> Self {
        Meta {
            version: version.into(),
        }
    }

    pub fn to_value(&self) -> Value {
        json!({"api_status": "stable", "version": self.version})
    }
}

/// Why a body could not be translated. Each variant keeps the dotted path of the field
/// (`hsm.localizable_params[1].default`) so the client learns exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{path} is required")]
    Missing { path: String },
    #[error("{path} must be {expected}")]
    WrongType {
        path: String,
        expected: &'static str,
    },
    #[error("{path} {reason}")]
    InvalidValue { path: String, reason: String },
    #[error("{path} is longer than {limit} characters")]
    MessageTooLong { path: String, limit: usize },
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },
}

impl TranslateError {
    pub fn missing(path: impl Into<String>) -> Self {
        TranslateError::Missing { path: path.into() }
    }

    pub fn wrong_type(path: impl Into<String>, expected: &'static str) -> Self {
        TranslateError::WrongType {
            path: path.into(),
            expected,
        }
    }

    pub fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Self {
        TranslateError::InvalidValue {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Parses a client body; an empty body is `Null` so routes without a body need no special case.
pub fn parse_body(bytes: &[u8]) -> Result<Value, TranslateError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(bytes).map_err(|e| TranslateError::InvalidJson(e.to_string()))
}

/// The body as a JSON object, or the error a client expects for a non-object body.
pub fn as_object<'a>(
    value: &'a Value,
    path: &str,
) -> Result<&'a Map<String, Value>, TranslateError> {
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Err(TranslateError::missing(path)),
        _ => Err(TranslateError::wrong_type(path, "an object")),
    }
}

/// A required string field of `map`, `path` being the map's own path ("" at top level).
pub(crate) fn required_str<'a>(
    map: &'a Map<String, Value>,
    parent: &str,
    key: &str,
) -> Result<&'a str, TranslateError> {
    match map.get(key) {
        None | Some(Value::Null) => Err(TranslateError::missing(join(parent, key))),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(TranslateError::wrong_type(join(parent, key), "a string")),
    }
}

/// An optional string field: absent and `null` are both "not given".
pub(crate) fn optional_str<'a>(
    map: &'a Map<String, Value>,
    parent: &str,
    key: &str,
) -> Result<Option<&'a str>, TranslateError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(TranslateError::wrong_type(join(parent, key), "a string")),
    }
}

/// Dotted path of a child field, as shown to clients in error details.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}
