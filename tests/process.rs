//! The `cedar-pdp` binary as people and process managers run it: CLI commands, signals, exit codes.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::process::*;
use common::*;

#[test]
fn validate_accepts_the_example_and_explains_errors() {
    let ok = run(&["validate", example_policies().to_str().unwrap()]);
    assert!(ok.status.success());
    let stdout = String::from_utf8(ok.stdout).unwrap();
    assert!(stdout.starts_with("ok: 8 policies, 1 templates"), "{stdout}");

    let dir = copy_dir(&example_policies());
    std::fs::write(
        dir.path().join("extra.cedar"),
        "@id(\"x\")\npermit (principal, action, resource is Document)\nwhen { resource.ownr == principal };\n",
    )
    .unwrap();
    let bad = run(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8(bad.stderr).unwrap();
    assert!(stderr.contains("error: extra.cedar:3:"), "{stderr}");
    assert!(stderr.contains("| when { resource.ownr == principal };"), "the offending line is quoted: {stderr}");
    assert!(stderr.contains("1 problem(s)"), "{stderr}");
}

#[test]
fn check_prints_decisions_and_the_server_exits_cleanly_on_sigterm() {
    let mut server = Process::start(&example_policies(), &[]);
    let allow = server.check(r#"User::"alice""#, r#"Action::"edit""#, r#"Document::"design-doc""#);
    assert!(allow.contains("decision: ALLOW"), "{allow}");
    assert!(allow.contains("determining policies: owner-full-access, platform-edits-engineering-folder"), "{allow}");
    let deny = server.check(r#"User::"dave""#, r#"Action::"view""#, r#"Document::"design-doc""#);
    assert!(deny.contains("decision: DENY") && deny.contains("suspended-users-denied"), "{deny}");

    // No credential is configured: the server generated a token only its user can read, which the
    // CLI on this machine finds in the data directory; without it, nothing is served.
    let token = server.data_dir.join("cli.token");
    assert_eq!(std::fs::metadata(&token).unwrap().permissions().mode() & 0o777, 0o600);
    let elsewhere = tempfile::tempdir().unwrap();
    let refused = Command::new(BIN)
        .args(["status", "--addr", &server.url()])
        .env("CEDAR_PDP_DATA_DIR", elsewhere.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"), "{refused:?}");
    let status = server.cli_command().args(["status", "--addr", &server.url()]).output().unwrap();
    assert!(status.status.success(), "{status:?}");
    assert!(String::from_utf8_lossy(&status.stdout).contains("policies: 8, templates: 1"));

    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(15)).success());
}

#[test]
fn decisions_are_logged_with_their_id() {
    let server = Process::start(&example_policies(), &[]);
    let out = server.check(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#);
    let id = out.lines().find_map(|l| l.strip_prefix("decision id: ")).unwrap().to_string();
    let record = loop {
        let line = server.lines.recv_timeout(Duration::from_secs(10)).expect("a decision record");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if event["target"] == "cedar_pdp::decision" {
            break event;
        }
    };
    assert_eq!(record["decision_id"], id.as_str());
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["principal"], r#"User::"bob""#);
    assert_eq!(record["determining_policies"], r#"["public-documents-readable"]"#);
    assert!(record["latency_us"].is_u64());
    assert!(record["policy_version"].is_string());
}

/// The default format, text lines, written without `tracing` (`telemetry/record.rs`) from a line
/// buffer each thread reuses: each decision is one whole line, once. (On one worker thread every
/// record reuses the same buffer; `record.rs` tests that on one thread whatever the machine.)
#[test]
fn text_decision_records_are_one_line_each() {
    let scratch = tempfile::tempdir().unwrap();
    let data_dir = scratch.path().join("data");
    let mut command = Command::new(BIN);
    command.args(["--log-format", "text", "serve", "--listen", "127.0.0.1:0", "--http-listen", "off", "--policies"]);
    command.arg(example_policies()).arg("--data-dir").arg(&data_dir).env("TOKIO_WORKER_THREADS", "1");
    let server = Process::try_spawn(command, scratch, data_dir).unwrap();
    let ids: Vec<String> = ["handbook", "design-doc", "handbook"]
        .iter()
        .map(|doc| {
            let out = server.check(r#"User::"bob""#, r#"Action::"view""#, &format!("Document::{doc:?}"));
            out.lines().find_map(|l| l.strip_prefix("decision id: ")).unwrap().to_string()
        })
        .collect();
    let mut records = Vec::new();
    while records.len() < ids.len() {
        let line = server.lines.recv_timeout(Duration::from_secs(10)).expect("a decision record");
        if line.contains(" INFO cedar_pdp::decision: ") {
            records.push(line);
        }
    }
    for (record, id) in records.iter().zip(&ids) {
        assert_eq!(record.matches("cedar_pdp::decision").count(), 1, "{record}");
        assert!(
            record.contains(&format!(" decision_id={id:?} api=\"check\" principal=\"User::\\\"bob\\\"\"")),
            "{record}"
        );
    }
    assert!(records[0].contains(r#"resource="Document::\"handbook\"""#), "{}", records[0]);
    assert!(records[1].contains(r#"resource="Document::\"design-doc\"""#), "{}", records[1]);
}

#[test]
fn sighup_reloads_when_watching_is_off() {
    let dir = copy_dir(&example_policies());
    let server = Process::start(dir.path(), &["--watch", "false", "--reload-debounce", "10ms"]);
    let bob_edits = || server.check(r#"User::"bob""#, r#"Action::"edit""#, r#"Document::"design-doc""#);
    assert!(bob_edits().contains("decision: DENY"));
    write_atomic(
        &dir.path().join("grants.cedar"),
        "permit (principal in Group::\"engineering\", action in Action::\"write\", resource);",
    );
    // Not watching: with a 10 ms debounce a watcher would have reloaded many times over within this
    // window; the set stays as it was until the signal.
    let window = std::time::Instant::now() + Duration::from_millis(600);
    while std::time::Instant::now() < window {
        assert!(bob_edits().contains("decision: DENY"), "reloaded without SIGHUP");
    }
    let status = server.cli_command().args(["status", "--addr", &server.url()]).output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("reloads: 1 succeeded"));
    server.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !bob_edits().contains("decision: ALLOW") {
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(bob_edits().contains("grants.cedar#0"), "a policy without @id is named by file and position");
}

#[test]
fn an_invalid_directory_is_a_nonzero_exit_naming_the_file() {
    let dir = copy_dir(&example_policies());
    std::fs::write(dir.path().join("broken.cedar"), "permit (principal, action, resource)\nwhen { };").unwrap();
    let out =
        Command::new(BIN).args(["serve", "--listen", "127.0.0.1:0", "--policies"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.cedar:2:"), "{stderr}");
}

#[test]
fn check_reports_server_errors_with_a_nonzero_exit() {
    let server = Process::start(&example_policies(), &[]);
    let out = server.check_output(r#"User::"bob""#, r#"Action::"fly""#, r#"Document::"x""#);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidArgument"));
    let out = server.check_output("alice", r#"Action::"view""#, r#"Document::"x""#);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--principal `alice` is not an entity uid"));
}

/// A raw HTTP/1.1 GET: enough for a Prometheus scrape, with no HTTP client in the tests.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn metrics_count_decisions_and_reloads() {
    // A free port for the exporter (it binds its own listener).
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let server = Process::start(&example_policies(), &["--metrics-listen", &metrics_addr]);
    server.check(r#"User::"dave""#, r#"Action::"view""#, r#"Document::"design-doc""#);
    server.check(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#);
    server.check(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let scrape = loop {
        if let Some(body) = http_get(&metrics_addr, "/metrics").filter(|b| b.contains("cedar_pdp_decisions_total")) {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "no metrics at {metrics_addr}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let line = |prefix: &str| scrape.lines().find(|l| l.starts_with(prefix)).map(str::to_string);
    let value = |l: Option<String>| l.and_then(|l| l.rsplit(' ').next().map(str::to_string));
    let allow = line("cedar_pdp_decisions_total{decision=\"allow\",api=\"check\"}")
        .or_else(|| line("cedar_pdp_decisions_total{api=\"check\",decision=\"allow\"}"));
    let deny = line("cedar_pdp_decisions_total{decision=\"deny\",api=\"check\"}")
        .or_else(|| line("cedar_pdp_decisions_total{api=\"check\",decision=\"deny\"}"));
    assert_eq!(value(allow).as_deref(), Some("2"), "{scrape}");
    assert_eq!(value(deny).as_deref(), Some("1"), "{scrape}");
    assert_eq!(value(line("cedar_pdp_policy_reloads_total{result=\"success\"}")).as_deref(), Some("1"), "{scrape}");
    assert!(scrape.contains("cedar_pdp_decision_seconds"), "{scrape}");
}

/// Every front door writes one decision-log format: ext_authz's answers made without the policies
/// (here: no route matches) carry the same fields as a Check's, with the reason.
#[test]
fn ext_authz_answers_without_policies_are_logged_in_the_same_format() {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    let server = Process::start(&fixture("mesh"), &[]);
    let headers = [("x-request-id".to_string(), "req-42".to_string())].into();
    let http = HttpRequest { method: "GET".into(), path: "/nowhere".into(), headers, ..Default::default() };
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request { http: Some(http), ..Default::default() }),
            ..Default::default()
        }),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = AuthorizationClient::connect(server.url()).await.unwrap();
        client.check(request).await.unwrap();
    });
    let record = loop {
        let line = server.lines.recv_timeout(Duration::from_secs(10)).expect("a decision record");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if event["target"] == "cedar_pdp::decision" {
            break event;
        }
    };
    assert_eq!(record["message"], "decision");
    assert_eq!((record["api"].as_str(), record["decision"].as_str()), (Some("ext_authz"), Some("deny")));
    assert_eq!(record["reason"], "no route matches this request");
    assert_eq!(record["request_id"], "req-42");
    assert!(record["decision_id"].as_str().is_some_and(|id| !id.is_empty()));
    for field in ["principal", "action", "resource", "determining_policies", "errors", "policy_version", "latency_us"] {
        assert!(record.get(field).is_some(), "{field} missing from {record}");
    }
}

/// An AuthZEN evaluation is in the decision log with its decision id and the caller's X-Request-ID.
#[test]
fn authzen_evaluations_are_logged_with_the_request_id() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let http = format!("127.0.0.1:{port}");
    let server = Process::start(&example_policies(), &["--http-listen", &http]);
    let body = r#"{"subject":{"type":"User","id":"bob"},"action":{"name":"view"},"resource":{"type":"Document","id":"handbook"}}"#;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answer: serde_json::Value = runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(format!("http://{http}/access/v1/evaluation"))
            .header("x-request-id", "rid-314")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        serde_json::from_str(&response.text().await.unwrap()).unwrap()
    });
    assert_eq!(answer["decision"], true, "{answer}");
    let record = loop {
        let line = server.lines.recv_timeout(Duration::from_secs(10)).expect("a decision record");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if event["target"] == "cedar_pdp::decision" {
            break event;
        }
    };
    assert_eq!(record["api"], "authzen");
    assert_eq!(record["request_id"], "rid-314");
    assert_eq!(record["decision_id"], answer["context"]["decision_id"]);
    assert_eq!(record["principal"], r#"User::"bob""#);
}
