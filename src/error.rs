//! Errors of each layer, and the one place they become gRPC statuses.
//!
//! Architecture invariant: an error is never an Allow. A request that cannot be decided gets a
//! status, never a decision made on partial input.

use std::fmt;

use thiserror::Error;
use tonic::Status;

/// One problem found while loading a policy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Path relative to the policy directory (or the directory itself for whole-set problems).
    pub file: String,
    /// 1-based line and column, when the problem has a position.
    pub position: Option<(usize, usize)>,
    pub message: String,
    /// The source line the position points into.
    pub snippet: Option<String>,
}

impl Diagnostic {
    pub fn new(file: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic { file: file.into(), position: None, message: message.into(), snippet: None }
    }

    /// `file:line:col: message`, the one-line form used in logs and the status API.
    pub fn one_line(&self) -> String {
        match self.position {
            Some((line, col)) => format!("{}:{line}:{col}: {}", self.file, self.message),
            None => format!("{}: {}", self.file, self.message),
        }
    }
}

impl fmt::Display for Diagnostic {
    /// The form people read in a terminal: the one-line form and, under it, the offending line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.one_line())?;
        if let (Some((line, col)), Some(snippet)) = (self.position, &self.snippet) {
            let gutter = line.to_string().len();
            write!(f, "\n {:gutter$} |\n {line} | {snippet}\n {:gutter$} | {:>col$}", "", "", "^")?;
        }
        Ok(())
    }
}

/// A policy directory that does not load: every problem found, each with file and position.
#[derive(Debug, Error)]
pub struct PolicyLoadError {
    pub diagnostics: Vec<Diagnostic>,
}

impl PolicyLoadError {
    pub fn single(file: &str, message: impl Into<String>) -> Self {
        PolicyLoadError { diagnostics: vec![Diagnostic::new(file, message)] }
    }
}

impl fmt::Display for PolicyLoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.diagnostics.len();
        write!(f, "policy directory invalid ({n} problem{})", if n == 1 { "" } else { "s" })?;
        for d in &self.diagnostics {
            write!(f, "\n  {}", d.one_line())?;
        }
        Ok(())
    }
}

/// Why a check request cannot be decided. `field` names the request field at fault, as a client
/// wrote it (`principal.type`, `context_json`, `checks[3].resource.id`).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("`{field}` is required")]
    Missing { field: String },
    #[error("`{field}` is invalid: {reason}")]
    Invalid { field: String, reason: String },
    #[error("request rejected by the schema: `{field}`: {reason}")]
    Schema { field: String, reason: String },
    #[error("`{field}` has {len} items, more than the limit of {limit}")]
    TooMany { field: String, len: usize, limit: usize },
}

impl RequestError {
    pub fn missing(field: &str) -> Self {
        RequestError::Missing { field: field.into() }
    }

    pub fn invalid(field: &str, reason: impl fmt::Display) -> Self {
        RequestError::Invalid { field: field.into(), reason: reason.to_string() }
    }

    pub fn schema(field: &str, reason: impl fmt::Display) -> Self {
        RequestError::Schema { field: field.into(), reason: reason.to_string() }
    }

    /// The same error, its field placed under `prefix` (`principal` → `checks[2].principal`).
    pub fn within(self, prefix: &str) -> Self {
        self.renamed(|field| format!("{prefix}.{field}"))
    }

    /// The same error, its field named by `rename` (another API's names for the same fields).
    pub fn renamed(self, rename: impl Fn(&str) -> String) -> Self {
        let nest = |field: String| rename(&field);
        match self {
            RequestError::Missing { field } => RequestError::Missing { field: nest(field) },
            RequestError::Invalid { field, reason } => RequestError::Invalid { field: nest(field), reason },
            RequestError::Schema { field, reason } => RequestError::Schema { field: nest(field), reason },
            RequestError::TooMany { field, len, limit } => RequestError::TooMany { field: nest(field), len, limit },
        }
    }
}

/// Serving-layer failures that are not about the request.
#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("no policy set is loaded yet")]
    NotReady,
    #[error("call refused: {0}")]
    Unauthenticated(String),
    #[error("call refused: {0}")]
    PermissionDenied(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// Details go to the log; the caller gets a generic message.
    #[error("internal error")]
    Internal(String),
}

/// Failures of the provisioned-entity store. None of them is ever turned into a decision.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("entity store unavailable: {0}")]
    Unavailable(String),
    #[error("min_revision {requested} is ahead of the entity store, which is at revision {current}")]
    AheadOfStore { requested: u64, current: u64 },
    #[error("the audit trail cannot be written, so nothing was changed: {0}")]
    Audit(String),
    #[error("a stored entity cannot be read: {0}")]
    Corrupt(String),
    #[error(
        "min_revision {requested} is from before this in-memory entity store started (at revision {origin}): its entities were lost at restart"
    )]
    LostRevision { requested: u64, origin: u64 },
    #[error("{0}")]
    Changed(String),
    /// A guarded write found an entity changed since its writer read it: nothing was written.
    #[error("`{0}` changed since it was read; nothing was written")]
    Conflict(String),
    #[error(
        "the outcome of this write is unknown ({0}): it may or may not have been applied; retry it with the same `request_id`"
    )]
    WriteUnknown(String),
    #[error("`request_id` `{0}` was already used for a different batch")]
    RequestReused(String),
    #[error("invalid entity store configuration: {0}")]
    Config(String),
    #[error("cannot open the entity store: {0}")]
    Open(String),
    #[error("the decision needs more than {0} entities (--max-decision-entities)")]
    TooManyEntities(usize),
}

/// A SCIM answer that is not a resource: the RFC 7644 §3.12 error, with its HTTP status and
/// `scimType`.
#[derive(Debug, Error)]
#[error("{detail}")]
pub struct ScimError {
    pub status: u16,
    pub scim_type: Option<&'static str>,
    pub detail: String,
}

impl ScimError {
    pub fn new(status: u16, scim_type: Option<&'static str>, detail: impl Into<String>) -> Self {
        ScimError { status, scim_type, detail: detail.into() }
    }

    /// A 400 with this `scimType` (invalidValue, invalidSyntax, invalidPath, noTarget, mutability...).
    pub fn bad(scim_type: &'static str, detail: impl Into<String>) -> Self {
        Self::new(400, Some(scim_type), detail)
    }

    pub fn invalid_filter(detail: impl Into<String>) -> Self {
        Self::bad("invalidFilter", detail)
    }

    pub fn invalid_value(detail: impl Into<String>) -> Self {
        Self::bad("invalidValue", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, None, detail)
    }

    pub fn uniqueness(detail: impl Into<String>) -> Self {
        Self::new(409, Some("uniqueness"), detail)
    }
}

impl From<StoreError> for ScimError {
    fn from(err: StoreError) -> Self {
        let status = match &err {
            StoreError::Unavailable(_) | StoreError::Audit(_) | StoreError::WriteUnknown(_) => 503,
            // A guarded write that kept losing races with other writers (SCIM redoes it first).
            StoreError::Conflict(_) => 503,
            StoreError::TooManyEntities(_) => 413,
            _ => 500,
        };
        ScimError::new(status, None, bounded(err.to_string()))
    }
}

impl From<RequestError> for ScimError {
    /// A Cedar entity the mapping made that the schema or the store refuses: the IdP's value is at fault.
    fn from(err: RequestError) -> Self {
        ScimError::invalid_value(bounded(err.to_string()))
    }
}

impl From<DecideError> for ScimError {
    fn from(err: DecideError) -> Self {
        match err {
            DecideError::Request(e) => e.into(),
            DecideError::Store(e) => e.into(),
            other => ScimError::new(500, None, other.to_string()),
        }
    }
}

/// Why a check on provisioned entities was not decided.
#[derive(Debug, Error)]
pub enum DecideError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listing that ran out of time: no partial answer is given.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A question this policy set cannot answer (PlanResources without a schema).
    #[error("{0}")]
    Unsupported(String),
}

/// The HTTP status of a gRPC status code: the HTTP front door answers what gRPC would, by this table.
pub fn http_status(code: tonic::Code) -> u16 {
    use tonic::Code;
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::FailedPrecondition => 412,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Unimplemented => 501,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}

/// An error and its causes on one line: a transport's own message is often just "transport error".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(&format!(": {e}"));
        cause = e.source();
    }
    text
}

/// Start-up failures of `serve`.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Policies(#[from] PolicyLoadError),
    #[error("cannot watch the policy directory: {0}")]
    Watch(#[from] notify::Error),
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot start the metrics endpoint: {0}")]
    Metrics(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {0}: {1}")]
    Bind(std::net::SocketAddr, std::io::Error),
    #[error("server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl From<RequestError> for Status {
    fn from(err: RequestError) -> Self {
        // Every request error is the caller's to fix, including an oversized batch: retrying the same
        // call cannot succeed, which RESOURCE_EXHAUSTED would suggest.
        Status::invalid_argument(bounded(err.to_string()))
    }
}

impl From<PolicyLoadError> for Status {
    fn from(err: PolicyLoadError) -> Self {
        // Asked for by an operator: the directory, not the call, needs fixing; the last good set serves.
        Status::failed_precondition(bounded(err.to_string()))
    }
}

impl From<ScimError> for Status {
    /// For the EntityService refusing what SCIM owns.
    fn from(err: ScimError) -> Self {
        match err.status {
            400 => Status::invalid_argument(err.detail),
            409 => Status::failed_precondition(err.detail),
            503 => Status::unavailable(err.detail),
            _ => Status::internal(err.detail),
        }
    }
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        match err {
            // Fail closed and say so: the caller may retry, and must not treat this as a Deny it can cache.
            StoreError::Unavailable(_) | StoreError::Audit(_) => Status::unavailable(bounded(err.to_string())),
            StoreError::AheadOfStore { .. } | StoreError::LostRevision { .. } => {
                Status::failed_precondition(err.to_string())
            }
            StoreError::Changed(_) | StoreError::Conflict(_) => Status::aborted(err.to_string()),
            StoreError::WriteUnknown(_) => Status::unavailable(bounded(err.to_string())),
            StoreError::RequestReused(_) => Status::invalid_argument(bounded(err.to_string())),
            StoreError::TooManyEntities(_) => Status::resource_exhausted(err.to_string()),
            StoreError::Corrupt(_) | StoreError::Config(_) | StoreError::Open(_) => Status::internal(err.to_string()),
        }
    }
}

impl From<DecideError> for Status {
    fn from(err: DecideError) -> Self {
        match err {
            DecideError::Request(e) => e.into(),
            DecideError::Store(e) => e.into(),
            DecideError::DeadlineExceeded(why) => Status::deadline_exceeded(why),
            DecideError::Unsupported(why) => Status::failed_precondition(why),
        }
    }
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::NotReady => Status::unavailable(err.to_string()),
            ServiceError::Unauthenticated(_) => Status::unauthenticated(err.to_string()),
            ServiceError::PermissionDenied(_) => Status::permission_denied(err.to_string()),
            ServiceError::NotFound(_) => Status::not_found(bounded(err.to_string())),
            ServiceError::Internal(detail) => {
                tracing::error!("internal error: {detail}");
                Status::internal("internal error")
            }
        }
    }
}

/// The longest run between backticks a status message repeats, in characters.
const ECHO_LIMIT: usize = 200;
/// The longest status message, in bytes: percent-encoded (up to three times longer), it stays within
/// the 8 KiB header limit of the strictest gRPC clients.
const MESSAGE_LIMIT: usize = 2048;

/// Caps what a status echoes. User input is quoted in backticks; any run between backticks over
/// `ECHO_LIMIT` characters is cut with a marker — quoted or not, since a backtick inside the input
/// would flip which runs are quoted — so that a huge field cannot make the error itself too large
/// to deliver (a client would then see a protocol error instead of the reason).
pub fn bounded(message: String) -> String {
    if message.len() <= ECHO_LIMIT {
        return message;
    }
    let mut out = String::with_capacity(message.len().min(MESSAGE_LIMIT));
    for (i, part) in message.split('`').enumerate() {
        if i > 0 {
            out.push('`');
        }
        let chars = part.chars().count();
        if chars > ECHO_LIMIT {
            out.extend(part.chars().take(ECHO_LIMIT));
            out.push_str(&format!("…[{} more characters]", chars - ECHO_LIMIT));
        } else {
            out.push_str(part);
        }
    }
    if out.len() > MESSAGE_LIMIT {
        let mut end = MESSAGE_LIMIT;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str("…[cut]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn request_errors_name_the_field_and_map_to_invalid_argument() {
        let status = Status::from(RequestError::missing("principal").within("checks[2]"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "`checks[2].principal` is required");
        let status = Status::from(RequestError::TooMany { field: "checks".into(), len: 9, limit: 5 });
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("limit of 5"));
    }

    #[test]
    fn echoed_input_is_cut_with_a_marker() {
        let huge = "T".repeat(1_000_000);
        let status = Status::from(RequestError::invalid("principal.type", format!("`{huge}` is not a type name")));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().len() < 400, "{}", status.message().len());
        assert!(status.message().starts_with("`principal.type` is invalid: `TTT"), "{}", status.message());
        assert!(status.message().contains("…[999800 more characters]` is not a type name"), "{}", status.message());
        // A backtick inside the input does not let it through whole, nor do wide characters.
        let tricky = format!("a`{}", "😀".repeat(100_000));
        let status = Status::from(RequestError::invalid("principal.type", format!("`{tricky}` is not a type name")));
        assert!(status.message().len() <= 2100, "{}", status.message().len());
        // Short messages pass untouched.
        let short = Status::from(RequestError::missing("principal"));
        assert_eq!(short.message(), "`principal` is required");
    }

    #[test]
    fn service_errors_are_never_ok() {
        assert_eq!(Status::from(ServiceError::NotReady).code(), Code::Unavailable);
        assert_eq!(Status::from(ServiceError::Unauthenticated("x".into())).code(), Code::Unauthenticated);
        assert_eq!(Status::from(ServiceError::PermissionDenied("x".into())).code(), Code::PermissionDenied);
        assert_eq!(Status::from(StoreError::Unavailable("down".into())).code(), Code::Unavailable);
        assert_eq!(Status::from(StoreError::Audit("disk full".into())).code(), Code::Unavailable);
        let ahead = Status::from(StoreError::AheadOfStore { requested: 9, current: 3 });
        assert_eq!(ahead.code(), Code::FailedPrecondition);
        assert!(ahead.message().contains("min_revision 9"), "{}", ahead.message());
    }
}
