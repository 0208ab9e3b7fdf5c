//! The operator CLI against a real server process: `entities import|export|get|delete`, `audit`,
//! `reload`, and output into a pipe that closes.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::process::{Output, Stdio};

use common::process::Process;
use common::*;
use serde_json::{Value, json};

fn cli(server: &Process, args: &[&str]) -> Output {
    server.cli_command().args(args).args(["--addr", &server.url()]).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The revision an `import` or `delete` printed last on its summary line.
fn revision_of(out: &Output) -> u64 {
    stdout(out).trim().rsplit(' ').next().unwrap().parse().unwrap()
}

/// `n` users as JSON lines, in 40 teams; `bad` (if any) has an attribute of the wrong type.
fn users(n: usize, bad: Option<usize>) -> String {
    (0..n)
        .map(|i| {
            let suspended = if Some(i) == bad { json!("yes") } else { json!(i % 13 == 0) };
            json!({"uid": {"type": "User", "id": format!("u{i}")},
                   "attrs": {"suspended": suspended, "manager": {"__entity": {"type": "User", "id": format!("u{}", (i + 1) % n)}}},
                   "parents": [{"type": "Group", "id": format!("team{}", i % 40)}]})
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn import_stops_at_a_bad_entity_naming_it_and_a_fixed_file_completes() {
    let server = Process::start(&fixture("org"), &[]);
    let file = server.scratch.path().join("users.jsonl");
    std::fs::write(&file, users(3000, Some(1499))).unwrap();
    let path = file.to_str().unwrap();

    let out = cli(&server, &["entities", "import", path]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("line 1500"), "{err}");
    assert!(err.contains("suspended"), "{err}");
    assert!(err.contains("1000 entities before it were written"), "{err}");

    std::fs::write(&file, users(3000, None)).unwrap();
    let out = cli(&server, &["entities", "import", path]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("imported 3000 entities"), "{}", stdout(&out));
    // Idempotent: the same file again leaves the same entities.
    let first = stdout(&cli(&server, &["entities", "export"]));
    assert!(cli(&server, &["entities", "import", path]).status.success());
    assert_eq!(stdout(&cli(&server, &["entities", "export"])), first);
    assert_eq!(first.lines().count(), 3000);
}

#[test]
fn export_imports_elsewhere_to_the_same_lines() {
    let a = Process::start(&fixture("org"), &[]);
    let file = a.scratch.path().join("users.json");
    // A JSON array this time, with a document that points at a user and a group.
    let mut entities: Vec<Value> = serde_json::from_str(&format!("[{}]", users(700, None).replace('\n', ","))).unwrap();
    let owner = json!({"__entity": {"type": "User", "id": "u1"}});
    entities.push(json!({"uid": {"type": "Document", "id": "plan"}, "attrs": {"owner": owner, "team": {"type": "Group", "id": "team1"}}}));
    std::fs::write(&file, serde_json::to_string(&entities).unwrap()).unwrap();
    let out = cli(&a, &["entities", "import", file.to_str().unwrap(), "--batch-size", "128"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let exported = cli(&a, &["entities", "export"]);
    let at = format!("exported 701 entities at revision {}", revision_of(&out));
    assert!(stderr(&exported).contains(&at), "{}", stderr(&exported));

    let b = Process::start(&fixture("org"), &[]);
    let dump = b.scratch.path().join("dump.jsonl");
    std::fs::write(&dump, &exported.stdout).unwrap();
    assert!(cli(&b, &["entities", "import", dump.to_str().unwrap()]).status.success());
    assert_eq!(stdout(&cli(&b, &["entities", "export"])), stdout(&exported));
    // One type only.
    let documents = stdout(&cli(&b, &["entities", "export", "--type", "Document"]));
    let expected = r#"{"uid":{"type":"Document","id":"plan"},"attrs":{"owner":{"__entity":{"type":"User","id":"u1"}},"team":{"__entity":{"type":"Group","id":"team1"}}},"parents":[]}"#;
    assert_eq!(documents.lines().collect::<Vec<_>>(), [expected]);
}

#[test]
fn get_delete_and_the_audit_trail() {
    let server = Process::start(&fixture("org"), &[]);
    let file = server.scratch.path().join("users.jsonl");
    std::fs::write(&file, users(10, None)).unwrap();
    let imported = cli(&server, &["entities", "import", file.to_str().unwrap()]);
    assert!(imported.status.success());
    let revision = revision_of(&imported);

    let got = cli(&server, &["entities", "get", r#"User::"u3""#]);
    let entity: Value = serde_json::from_str(&stdout(&got)).unwrap();
    assert_eq!(entity["parents"], json!([{"type": "Group", "id": "team3"}]));
    assert!(stderr(&got).contains(&format!("provisioned, last written at revision {revision}")), "{}", stderr(&got));
    // An entity of the policy files is answered too, marked read-only.
    let staff = cli(&server, &["entities", "get", r#"Group::"staff""#]);
    assert!(staff.status.success(), "{}", stderr(&staff));
    assert!(stderr(&staff).contains("policy directory's files"), "{}", stderr(&staff));

    let deleted = cli(&server, &["entities", "delete", r#"User::"u1""#, r#"User::"u2""#]);
    assert_eq!(stdout(&deleted).trim(), format!("deleted 2 entities; revision {}", revision + 1));
    let gone = cli(&server, &["entities", "get", r#"User::"u1""#]);
    assert!(!gone.status.success() && stderr(&gone).contains("NotFound"), "{}", stderr(&gone));

    let history = cli(&server, &["audit", "--uid", r#"User::"u1""#, "--json"]);
    let ops: Vec<(u64, String)> = stdout(&history)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| (r["revision"].as_u64().unwrap(), r["operation"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(ops, [(revision, "upsert".to_string()), (revision + 1, "delete".to_string())]);
    let table = stdout(&cli(&server, &["audit", "--limit", "3"]));
    assert_eq!(table.lines().count(), 1 + 3, "{table}");
    assert!(table.lines().next().unwrap().contains("REVISION"));
    let everything = stdout(&cli(&server, &["audit", "--json", "--limit", "5000"]));
    assert_eq!(everything.lines().count(), 12);
    let future = stdout(&cli(&server, &["audit", "--json", "--since", "2999-01-01T00:00:00Z"]));
    assert!(future.is_empty(), "{future}");
    let bad = cli(&server, &["audit", "--since", "yesterday"]);
    assert!(!bad.status.success() && stderr(&bad).contains("`since`"), "{}", stderr(&bad));
}

#[test]
fn import_refuses_malformed_input_before_writing() {
    let server = Process::start(&fixture("org"), &[]);
    let file = server.scratch.path().join("bad.jsonl");
    for (text, expected) in [
        ("{\"uid\": {\"type\": \"User\", \"id\": \"a\"}}\n{oops}\n", "line 2: not JSON"),
        ("{\"uid\": {\"type\": \"User\"}}\n", "line 1: `uid` must be"),
        ("{\"uid\": {\"type\": \"User\", \"id\": \"a\"}, \"atrs\": {}}\n", "unknown key `atrs`"),
        (
            "[{\"uid\": {\"type\": \"User\", \"id\": \"a\"}}, {\"uid\": {\"type\": \"User\", \"id\": \"a\"}}]",
            "entity [1]: the same uid as entity [0]",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = cli(&server, &["entities", "import", file.to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    }
    let export = cli(&server, &["entities", "export"]);
    assert!(stdout(&export).is_empty(), "nothing was written");
}

#[test]
fn import_reads_standard_input() {
    let server = Process::start(&fixture("org"), &[]);
    let mut child = server
        .cli_command()
        .args(["entities", "import", "-", "--addr", &server.url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(users(5, None).as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(stdout(&out).starts_with("imported 5 entities from -"), "{}", stdout(&out));
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    let server = Process::start(&example_policies(), &[]);
    let commands: [&[&str]; 3] = [
        &["status"],
        &[
            "check",
            "--principal",
            r#"User::"alice""#,
            "--action",
            r#"Action::"view""#,
            "--resource",
            r#"Document::"design-doc""#,
        ],
        &["audit"],
    ];
    for args in commands {
        let mut child = server
            .cli_command()
            .args(args)
            .args(["--addr", &server.url()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before the command writes a line, as with `| head -0` or `| true`.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert!(!stderr(&out).contains("panicked"), "{args:?}: {}", stderr(&out));
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn reload_applies_an_edit_now_and_reports_a_broken_one() {
    let dir = copy_dir(&example_policies());
    let server = Process::start(dir.path(), &["--watch", "false"]);
    let bob_edits =
        ["--principal", r#"User::"bob""#, "--action", r#"Action::"edit""#, "--resource", r#"Document::"design-doc""#];
    let check = |server: &Process| stdout(&cli(server, &[&["check"][..], &bob_edits[..]].concat()));
    assert!(check(&server).starts_with("decision: DENY"));

    std::fs::write(
        dir.path().join("grants.cedar"),
        "@id(\"engineering-edits\")\npermit (principal in Group::\"engineering\", action in Action::\"write\", resource in Folder::\"engineering\");\n",
    )
    .unwrap();
    let reloaded = cli(&server, &["reload"]);
    assert!(stdout(&reloaded).starts_with("reloaded: policy version"), "{}", stderr(&reloaded));
    assert!(check(&server).starts_with("decision: ALLOW"));
    assert!(stdout(&cli(&server, &["reload"])).starts_with("unchanged"));

    std::fs::write(dir.path().join("grants.cedar"), "permit (principal, action, resource) when { principal.name == };")
        .unwrap();
    let broken = cli(&server, &["reload"]);
    assert!(!broken.status.success());
    assert!(
        stderr(&broken).contains("FailedPrecondition") && stderr(&broken).contains("grants.cedar:1:"),
        "{}",
        stderr(&broken)
    );
    // The last good set keeps serving.
    assert!(check(&server).starts_with("decision: ALLOW"));
}

/// Redis stalls under an import: the server answers UNAVAILABLE, the CLI retries the batch (with the
/// same request id, which `entities.rs` shows applies a batch once) and the import completes, every
/// entity recorded once.
#[test]
fn import_retries_through_a_stalled_redis() {
    let redis = common::redis::RedisServer::start();
    let url = redis.url();
    let server = Process::start(&fixture("org"), &["--redis-url", &url, "--redis-timeout", "300ms"]);
    let file = server.scratch.path().join("users.jsonl");
    // No parents: nothing is read before a batch's write goes out, so the stall hits the write itself
    // (sent, applied once Redis goes on, its answer too late: an outcome the server cannot know).
    let lines: Vec<String> = (0..400)
        .map(|i| json!({"uid": {"type": "User", "id": format!("v{i}")}, "attrs": {"suspended": false}}).to_string())
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    redis.pause();
    let import = server
        .cli_command()
        .args(["entities", "import", file.to_str().unwrap(), "--batch-size", "100", "--addr", &server.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Long enough for the first attempt to time out and a retry to be under way.
    std::thread::sleep(std::time::Duration::from_millis(700));
    redis.resume();
    let out = import.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("imported 400 entities"), "{}", stdout(&out));
    let trail = cli(&server, &["audit", "--json", "--limit", "5000"]);
    assert_eq!(stdout(&trail).lines().count(), 400, "one record per entity");
}

/// The CLI presents a token from a file, read as the server reads its own.
#[test]
fn the_cli_takes_its_token_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (server_tokens, cli_token) = (dir.path().join("tokens"), dir.path().join("my.token"));
    std::fs::write(&server_tokens, "ops=t0ken-from-file\n").unwrap();
    std::fs::write(&cli_token, "# ops\nt0ken-from-file\n").unwrap();
    let server = Process::start(&fixture("org"), &["--provisioning-token-file", server_tokens.to_str().unwrap()]);
    let refused = cli(&server, &["audit"]);
    assert!(!refused.status.success() && stderr(&refused).contains("Unauthenticated"), "{}", stderr(&refused));
    let file = server.scratch.path().join("u.jsonl");
    std::fs::write(&file, users(3, None)).unwrap();
    let imported =
        cli(&server, &["entities", "import", file.to_str().unwrap(), "--token-file", cli_token.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", stderr(&imported));
    let trail = cli(&server, &["audit", "--json", "--token-file", cli_token.to_str().unwrap()]);
    assert!(stdout(&trail).lines().all(|l| l.contains(r#""actor":"ops""#)), "{}", stdout(&trail));
}
