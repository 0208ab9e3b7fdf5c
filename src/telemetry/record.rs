//! Decision-log records written straight to the log sink, in the two formats tracing-subscriber gives
//! them (JSON lines; plain text when the log is not a terminal): the same keys, values and order, but
//! without visiting every field through `tracing`'s dynamic machinery and its JSON visitor, which
//! cost about half of a record. The `--log` filter still decides whether a record is written; a
//! terminal's coloured text still goes through `tracing` (see the test that holds the two equal).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;

use super::Record;
use super::sink::BatchWriter;

struct Direct {
    writer: BatchWriter,
    json: bool,
}

static DIRECT: OnceLock<Direct> = OnceLock::new();

/// From now on decision records go straight to `writer`.
pub(super) fn install(writer: BatchWriter, json: bool) {
    let _ = DIRECT.set(Direct { writer, json });
}

/// Writes `r` if records go straight to the sink (and the filter lets them through); false when the
/// caller must log it through `tracing`.
pub(super) fn write_direct(r: &Record<'_>, trace_id: Option<&str>) -> bool {
    let Some(direct) = DIRECT.get() else { return false };
    if !tracing::enabled!(target: "cedar_pdp::decision", tracing::Level::INFO) {
        return true;
    }
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
    let mut sink = tracing_subscriber::fmt::MakeWriter::make_writer(&direct.writer);
    if direct.json {
        let _ = sink.write_all(json(r, trace_id, Some(&now.to_string())).as_bytes());
        return true;
    }
    text_line(r, trace_id, now, |line| {
        let _ = sink.write_all(line);
    });
    true
}

thread_local! {
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}
/// The largest line buffer a thread keeps: a record with a large replayed request is let go.
const LINE_MAX: usize = 64 * 1024;

/// The text line for `r`, stamped `now`, handed to `write`. The default format, every decision: it is
/// built in a line buffer each thread reuses (a fresh line and timestamp per record were a sixth of
/// one). A thread whose buffer is gone (exiting) or in use builds a line of its own.
fn text_line(r: &Record<'_>, trace_id: Option<&str>, now: impl std::fmt::Display, write: impl FnOnce(&[u8])) {
    let build = |line: &mut String| {
        line.clear();
        let _ = write!(line, "{now} ");
        push_text(line, r, trace_id);
    };
    let mut write = Some(write);
    let _ = LINE.try_with(|cell| {
        let Ok(mut line) = cell.try_borrow_mut() else { return };
        let Some(write) = write.take() else { return };
        build(&mut line);
        write(line.as_bytes());
        if line.capacity() > LINE_MAX {
            *line = String::new();
        }
    });
    if let Some(write) = write {
        let mut line = String::new();
        build(&mut line);
        write(line.as_bytes());
    }
}

/// tracing-subscriber's JSON line (`flatten_event`, no spans).
fn json(r: &Record<'_>, trace_id: Option<&str>, timestamp: Option<&str>) -> String {
    let line = Json {
        timestamp,
        level: "INFO",
        message: "decision",
        trace_id,
        decision_id: r.decision_id,
        api: r.front_door,
        principal: r.principal,
        action: r.action,
        resource: r.resource,
        decision: r.decision,
        determining_policies: debug_list(r.determining),
        errors: debug_list(r.errors),
        policy_version: r.policy_version,
        latency_us: r.latency.as_micros() as u64,
        reason: r.reason,
        listing: r.listing.map(|l| ListingJson {
            listed: l.listed as u64,
            scanned: l.scanned as u64,
            complete: l.complete,
        }),
        http: r.http.map(|h| HttpJson { route: h.route, request_id: h.request_id, dry_run: h.dry_run }),
        replay: r.replay.map(|x| ReplayJson {
            context: x.context,
            request_entities: x.entities,
            min_revision: x.min_revision,
            entity_revision: x.entity_revision,
        }),
        target: "cedar_pdp::decision",
    };
    let mut out = serde_json::to_string(&line).unwrap_or_default();
    out.push('\n');
    out
}

#[derive(serde::Serialize)]
struct Json<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<&'a str>,
    level: &'static str,
    message: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    decision_id: &'a str,
    api: &'a str,
    principal: &'a str,
    action: &'a str,
    resource: &'a str,
    decision: &'a str,
    determining_policies: String,
    errors: String,
    policy_version: &'a str,
    latency_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    // A group's keys are all there or none is (serde writes nothing for a flattened None).
    #[serde(flatten)]
    listing: Option<ListingJson>,
    #[serde(flatten)]
    http: Option<HttpJson<'a>>,
    #[serde(flatten)]
    replay: Option<ReplayJson<'a>>,
    target: &'static str,
}

#[derive(serde::Serialize)]
struct ListingJson {
    listed: u64,
    scanned: u64,
    complete: bool,
}

#[derive(serde::Serialize)]
struct HttpJson<'a> {
    route: &'a str,
    request_id: &'a str,
    dry_run: bool,
}

#[derive(serde::Serialize)]
struct ReplayJson<'a> {
    context: &'a str,
    request_entities: &'a str,
    min_revision: u64,
    entity_revision: u64,
}

/// The text line without its timestamp.
#[cfg(test)]
fn text(r: &Record<'_>, trace_id: Option<&str>) -> String {
    let mut out = String::new();
    push_text(&mut out, r, trace_id);
    out
}

/// tracing-subscriber's plain text line after its timestamp: strings quoted as `Debug` writes them,
/// absent fields left out.
fn push_text(out: &mut String, r: &Record<'_>, trace_id: Option<&str>) {
    out.push_str(" INFO cedar_pdp::decision: decision");
    let mut str_field = |name: &str, value: Option<&str>| {
        if let Some(v) = value {
            out.push(' ');
            out.push_str(name);
            out.push('=');
            push_debug(out, v);
        }
    };
    str_field("trace_id", trace_id);
    str_field("decision_id", Some(r.decision_id));
    str_field("api", Some(r.front_door));
    str_field("principal", Some(r.principal));
    str_field("action", Some(r.action));
    str_field("resource", Some(r.resource));
    str_field("decision", Some(r.decision));
    out.push_str(" determining_policies=");
    push_debug_list(out, r.determining);
    out.push_str(" errors=");
    push_debug_list(out, r.errors);
    out.push_str(" policy_version=");
    push_debug(out, r.policy_version);
    let _ = write!(out, " latency_us={}", r.latency.as_micros() as u64);
    let mut plain = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            let _ = write!(out, " {name}={v}");
        }
    };
    plain("reason", r.reason.map(|v| format!("{v:?}")));
    plain("listed", r.listing.map(|l| l.listed.to_string()));
    plain("scanned", r.listing.map(|l| l.scanned.to_string()));
    plain("complete", r.listing.map(|l| l.complete.to_string()));
    plain("route", r.http.map(|h| format!("{:?}", h.route)));
    plain("request_id", r.http.map(|h| format!("{:?}", h.request_id)));
    plain("dry_run", r.http.map(|h| h.dry_run.to_string()));
    plain("context", r.replay.map(|x| format!("{:?}", x.context)));
    plain("request_entities", r.replay.map(|x| format!("{:?}", x.entities)));
    plain("min_revision", r.replay.map(|x| x.min_revision.to_string()));
    plain("entity_revision", r.replay.map(|x| x.entity_revision.to_string()));
    out.push('\n');
}

/// `value` as `{:?}` writes it. In printable ASCII that formatter escapes only `"` and `\`, so such a
/// string is written here without it; anything else goes through it.
fn push_debug(out: &mut String, value: &str) {
    // One pass over every byte, without stopping early, so that it runs on whole words at a time.
    let (printable, plain) = value.bytes().fold((true, true), |(printable, plain), b| {
        let p = (b' '..=b'~').contains(&b);
        (printable & p, plain & p & (b != b'"') & (b != b'\\'))
    });
    if plain {
        out.push('"');
        out.push_str(value);
        out.push('"');
        return;
    }
    if !printable {
        let _ = write!(out, "{value:?}");
        return;
    }
    // Byte by byte: every byte is ASCII here, so any index is a char boundary (a char-by-char split
    // was a third of a text record).
    out.push('"');
    let mut run = 0;
    for (at, byte) in value.bytes().enumerate() {
        if byte == b'"' || byte == b'\\' {
            out.push_str(&value[run..at]);
            out.push('\\');
            run = at;
        }
    }
    out.push_str(&value[run..]);
    out.push('"');
}

/// A list of strings as `{:?}` writes it: `["a", "b"]`.
fn push_debug_list(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_debug(out, item);
    }
    out.push(']');
}

fn debug_list(items: &[String]) -> String {
    let mut out = String::new();
    push_debug_list(&mut out, items);
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::super::{HttpInfo, Listing, Replayable, via_tracing};
    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What tracing-subscriber writes for `r`, in the server's settings but without the time.
    fn through_tracing(r: &Record<'_>, trace_id: Option<&str>, json: bool) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let fmt = tracing_subscriber::fmt().with_ansi(false).without_time().with_writer(move || writer.clone());
        let dispatch: tracing::Dispatch = if json {
            fmt.json().flatten_event(true).with_current_span(false).with_span_list(false).into()
        } else {
            fmt.into()
        };
        tracing::dispatcher::with_default(&dispatch, || via_tracing(r, trace_id));
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    /// A Check's record, its uids with characters to escape.
    fn record(decision_id: &str) -> Record<'_> {
        Record {
            decision_id,
            front_door: "check",
            principal: r#"User::"bob \"b\"""#,
            action: r#"Action::"view""#,
            resource: "Document::\"d\\n\u{e9}\"",
            decision: "allow",
            determining: &[],
            errors: &[],
            policy_version: "v1",
            latency: Duration::from_micros(17),
            reason: None,
            listing: None,
            http: None,
            replay: None,
        }
    }

    #[test]
    fn direct_records_are_what_tracing_writes() {
        let determining = ["p\"1".to_string(), "p2".to_string()];
        let errors = ["p3: attribute `x` not found".to_string()];
        let parts = ["User::*".to_string(), r#"Action::"view""#.to_string(), String::new()];
        let listing = Listing { parts: &parts, listed: 3, scanned: 9, complete: false };
        let plain = Record { determining: &determining, errors: &errors, ..record("0190-ab") };
        let http = HttpInfo { route: "read-doc", request_id: "req-1", dry_run: true };
        let replay = Replayable { context: r#"{"mfa": true}"#, entities: "", min_revision: 4, entity_revision: 7 };
        let full = Record {
            reason: Some("no route"),
            listing: Some(&listing),
            http: Some(http),
            replay: Some(replay),
            ..plain
        };
        for (r, trace_id) in [(&plain, None), (&full, Some("4bf92f3577b34da6a3ce929d0e0e4736"))] {
            assert_eq!(json(r, trace_id, None), through_tracing(r, trace_id, true));
            assert_eq!(text(r, trace_id), through_tracing(r, trace_id, false));
        }
    }

    /// Lines built one after the other on one thread (one reused buffer) hold their own record only.
    #[test]
    fn each_text_line_holds_one_record() {
        for id in ["first", "second", "third"] {
            let r = record(id);
            let mut written = Vec::new();
            text_line(&r, None, "TIME", |line| written.extend_from_slice(line));
            assert_eq!(String::from_utf8(written).unwrap(), format!("TIME {}", text(&r, None)));
        }
        // A line built while this thread's buffer is in use gets a buffer of its own.
        let (outer, inner) = (record("outer"), record("inner"));
        let mut got = Vec::new();
        text_line(&outer, None, "T", |line| {
            text_line(&inner, None, "T", |l| got.push(String::from_utf8(l.to_vec()).unwrap()));
            got.push(String::from_utf8(line.to_vec()).unwrap());
        });
        assert_eq!(got, [format!("T {}", text(&inner, None)), format!("T {}", text(&outer, None))]);
    }

    #[test]
    fn plain_strings_are_written_as_the_escaping_formatter_writes_them() {
        let samples = [
            "",
            "view",
            "a b~!",
            "q\"uote",
            "back\\slash",
            "User::\"a\\\"b\\\\c\"",
            "\"\"\\",
            "ends\"",
            "\\",
            "tab\t",
            "nl\n",
            "del\u{7f}",
            "é",
            "\u{301}x",
            "\u{200b}",
            "'",
        ];
        for sample in samples {
            let mut out = String::new();
            push_debug(&mut out, sample);
            assert_eq!(out, format!("{sample:?}"));
        }
        let items: Vec<String> = samples.iter().map(|s| s.to_string()).collect();
        assert_eq!(debug_list(&items), format!("{items:?}"));
        assert_eq!(debug_list(&[]), "[]");
    }
}
