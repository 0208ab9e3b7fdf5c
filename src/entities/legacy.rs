//! The JSON-lines audit trail of the former in-process store, replayed into a new data directory.
//!
//! That store kept its entities in memory and every change, with the entity after it, in the trail
//! (synced before the change was acknowledged). Replaying the trail gives back every acknowledged
//! write that a restart of that store lost, and keeps revisions where they were, so a `min_revision`
//! a client holds still means what it meant.

use std::path::{Path, PathBuf};

use super::AuditRecord;
use super::local::LocalStore;
use crate::error::StoreError;

/// Replays `file` into `store` (new and empty) if it exists, then renames it `<file>.migrated`.
pub fn migrate(store: &LocalStore, file: &Path) -> Result<(), StoreError> {
    let text = match std::fs::read(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::Open(format!("cannot read the audit file {}: {e}", file.display()))),
    };
    let records = parse(file, &text)?;
    store.import_legacy_audit(&records)?;
    let done = PathBuf::from(format!("{}.migrated", file.display()));
    tracing::info!(
        records = records.len(),
        revision = store.revision(),
        from = %file.display(),
        "replayed the former in-process store's audit trail into the data directory"
    );
    if let Err(e) = std::fs::rename(file, &done) {
        tracing::warn!("cannot rename {} to {}: {e} (it is not read again)", file.display(), done.display());
    }
    Ok(())
}

/// The records of a trail. A last line without its newline is a record torn by a crash mid-append:
/// that change was never acknowledged, so it is dropped (and logged). Any other line that is not a
/// record is an error naming it.
pub fn parse(file: &Path, text: &[u8]) -> Result<Vec<AuditRecord>, StoreError> {
    let torn = !text.is_empty() && !text.ends_with(b"\n");
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    // A batch was appended with one write: the records before a torn one that share its revision
    // were never acknowledged either.
    let torn_revision = lines.last().filter(|_| torn).and_then(|line| leading_revision(line));
    let mut records = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<AuditRecord>(line) {
            Ok(record) => records.push(record),
            Err(_) if torn && n + 1 == lines.len() => {
                tracing::warn!(
                    file = %file.display(),
                    line = n + 1,
                    "dropped a torn last audit record (a write interrupted before it was acknowledged)"
                );
            }
            Err(e) => {
                return Err(StoreError::Open(format!("{}:{}: not an audit record: {e}", file.display(), n + 1)));
            }
        }
    }
    if let Some(revision) = torn_revision {
        let before = records.len();
        records.retain(|r| r.revision != revision);
        if records.len() < before {
            tracing::warn!(
                file = %file.display(),
                revision,
                dropped = before - records.len(),
                "dropped the rest of the torn batch: it was never acknowledged"
            );
        }
    }
    if records.windows(2).any(|w| w[1].revision < w[0].revision) {
        return Err(StoreError::Open(format!("{}: revisions go backwards", file.display())));
    }
    Ok(records)
}

/// The revision a record's line starts with (`{"revision":12,…`), readable in a torn line too.
fn leading_revision(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(br#"{"revision":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if rest.get(digits) != Some(&b',') {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(revision: u64) -> String {
        format!(
            r#"{{"revision":{revision},"at":"2026-01-01T00:00:00.000Z","actor":"a","operation":"delete","uid":"User::\"x\"","before":null,"after":null}}"#
        )
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_nothing_else() {
        let path = Path::new("audit.jsonl");
        let whole = format!("{}\n{}\n", line(1), line(2));
        assert_eq!(parse(path, whole.as_bytes()).unwrap().len(), 2);
        let torn = format!("{}\n{}\n{}", line(1), line(2), &line(3)[..40]);
        assert_eq!(parse(path, torn.as_bytes()).unwrap().len(), 2);
        // The torn record's batch-mates go with it.
        let torn_batch = format!("{}\n{}\n{}\n{}", line(1), line(2), line(2), &line(2)[..30]);
        let kept = parse(path, torn_batch.as_bytes()).unwrap();
        assert_eq!(kept.iter().map(|r| r.revision).collect::<Vec<_>>(), [1]);
        // A bad line that is not the last is damage, not a torn append.
        let bad = format!("{}\n{{oops\n{}\n", line(1), line(3));
        let err = parse(path, bad.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("audit.jsonl:2"), "{err}");
        // A complete but unreadable last line is not torn either.
        let bad_last = format!("{}\nnot json\n", line(1));
        assert!(parse(path, bad_last.as_bytes()).is_err());
    }
}
