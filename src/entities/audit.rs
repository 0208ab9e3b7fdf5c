//! Audit records of provisioning changes, and the filter they are read back with.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// One change to one entity. A line of the audit file is exactly this, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub revision: u64,
    /// RFC 3339, milliseconds.
    pub at: String,
    /// The credential's identity.
    pub actor: String,
    /// `upsert` or `delete`.
    pub operation: String,
    /// Cedar's form, `User::"alice"`.
    pub uid: String,
    /// The entity as Cedar JSON before the change; null where it did not exist.
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    /// Where the next page starts after this record (`<n>-<n>`); not stored.
    #[serde(skip)]
    pub cursor: String,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Cedar's form of the uid, as in [`AuditRecord::uid`].
    pub uid: Option<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub limit: usize,
    /// Only records after this cursor (a record's `cursor`: the previous page's last).
    pub after: Option<(u64, u64)>,
}

/// Parses a page token, `<n>-<n>` as every store writes its cursors.
pub fn parse_cursor(token: &str) -> Option<(u64, u64)> {
    let (a, b) = token.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl AuditFilter {
    pub(crate) fn matches_uid(&self, uid: &str) -> bool {
        self.uid.as_deref().is_none_or(|u| u == uid)
    }

    pub(crate) fn matches_time(&self, at: SystemTime) -> bool {
        self.since.is_none_or(|s| at >= s) && self.until.is_none_or(|u| at < u)
    }

    pub(crate) fn matches(&self, record: &AuditRecord) -> bool {
        self.matches_uid(&record.uid) && humantime::parse_rfc3339_weak(&record.at).is_ok_and(|at| self.matches_time(at))
    }
}
