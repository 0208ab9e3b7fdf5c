//! Impact analysis: decisions recorded by a real server with `--decision-log-requests`, replayed by
//! `cedar-pdp replay` on changed policies; the exact set of changed decision ids, the summary,
//! `--fail-on`, records that are not replayable, and provisioned entities read from the server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use cedar_pdp::grpc::{AuthorizationServiceClient, pb};
use common::process::{BIN, Process};
use common::*;

/// The decision-log lines of `ids`, read from the server's log as it writes them.
fn logged(p: &Process, ids: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    while found.len() < ids.len() {
        let line = p.lines.recv_timeout(Duration::from_secs(10)).expect("decision-log lines");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if event["decision_id"].as_str().is_some_and(|id| ids.iter().any(|i| i == id)) {
            found.push(line);
        }
    }
    found
}

fn replay(policies: &std::path::Path, log: &std::path::Path, extra: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
    let out = Command::new(BIN)
        .args(["replay", "--policies", policies.to_str().unwrap()])
        .args(extra)
        .arg(log)
        .output()
        .unwrap();
    let changes = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (out.status.code().unwrap(), changes, String::from_utf8(out.stderr).unwrap())
}

fn changed_ids(changes: &[serde_json::Value]) -> Vec<String> {
    let mut ids: Vec<String> = changes.iter().map(|c| c["decision_id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_policy_change_flips_exactly_the_decisions_it_should() {
    let p = Process::start(&example_policies(), &["--decision-log-requests", "true"]);
    let mut client = AuthorizationServiceClient::connect(p.url()).await.unwrap();
    let draft = r#"[{"uid": {"type": "Document", "id": "draft"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "erin"}}, "public": false, "classification": "internal"}, "parents": [{"type": "Folder", "id": "designs"}]}]"#;
    let mut asks = vec![
        req(r#"User::"bob""#, r#"Action::"edit""#, r#"Document::"design-doc""#),
        req(r#"User::"alice""#, r#"Action::"delete""#, r#"Document::"design-doc""#),
        req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"design-doc""#),
        req_ctx(r#"User::"carol""#, r#"Action::"view""#, r#"Document::"design-doc""#, r#"{"source_ip": "10.1.2.3"}"#),
    ];
    let mut with_entities = req(r#"User::"bob""#, r#"Action::"edit""#, r#"Document::"draft""#);
    with_entities.entities_json = draft.into();
    asks.push(with_entities);
    let mut ids = Vec::new();
    for ask in asks {
        ids.push(client.check(ask).await.unwrap().into_inner().decision_id);
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let mut lines = logged(&p, &ids);
    lines.push("not json".into());
    lines.push(r#"{"message": "serving"}"#.into());
    std::fs::write(&log, lines.join("\n")).unwrap();

    // Engineering may now edit; alice may no longer delete.
    let proposed = copy_dir(&example_policies());
    std::fs::write(
        proposed.path().join("proposed.cedar"),
        "@id(\"engineering-edits\")\npermit (principal in Group::\"engineering\", action in Action::\"write\", resource in Folder::\"engineering\");\n\
         @id(\"alice-never-deletes\")\nforbid (principal == User::\"alice\", action == Action::\"delete\", resource);\n",
    )
    .unwrap();
    let (code, changes, summary) = replay(proposed.path(), &log, &[]);
    assert_eq!(code, 0, "{summary}");
    let mut expected = vec![ids[0].clone(), ids[1].clone(), ids[4].clone()];
    expected.sort();
    assert_eq!(changed_ids(&changes), expected, "{changes:?}");
    let bob = changes.iter().find(|c| c["decision_id"] == ids[0].as_str()).unwrap();
    assert_eq!((bob["before"]["decision"].as_str(), bob["after"]["decision"].as_str()), (Some("deny"), Some("allow")));
    assert_eq!(bob["after"]["determining_policies"], serde_json::json!(["engineering-edits"]));
    let alice = changes.iter().find(|c| c["decision_id"] == ids[1].as_str()).unwrap();
    assert_eq!(alice["before"]["determining_policies"], serde_json::json!(["owner-full-access"]));
    assert!(summary.contains("replayed 5 decisions: 3 changed (1 allow → deny, 2 deny → allow)"), "{summary}");
    assert!(summary.contains("Action::\"edit\" on Document"), "{summary}");
    // As a CI gate.
    assert_eq!(replay(proposed.path(), &log, &["--fail-on", "allow-gain"]).0, 1);
    std::fs::remove_file(proposed.path().join("proposed.cedar")).unwrap();
    std::fs::write(
        proposed.path().join("proposed.cedar"),
        "forbid (principal == User::\"alice\", action == Action::\"delete\", resource);\n",
    )
    .unwrap();
    let (code, changes, _) = replay(proposed.path(), &log, &["--fail-on", "allow-gain"]);
    assert_eq!((code, changed_ids(&changes)), (0, vec![ids[1].clone()]), "only access removed: the gate passes");
    assert_eq!(replay(proposed.path(), &log, &["--fail-on", "any"]).0, 1);
    // The same policies change nothing.
    let (code, changes, summary) = replay(&example_policies(), &log, &["--fail-on", "any"]);
    assert_eq!((code, changes.len()), (0, 0), "{summary}");
}

#[tokio::test]
async fn records_without_the_request_are_not_replayed_and_provisioned_entities_come_from_the_server() {
    // Logged without --decision-log-requests: nothing to replay, and it says so.
    let plain = Process::start(&example_policies(), &[]);
    let mut client = AuthorizationServiceClient::connect(plain.url()).await.unwrap();
    let id = client
        .check(req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"design-doc""#))
        .await
        .unwrap()
        .into_inner()
        .decision_id;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("plain.jsonl");
    std::fs::write(&log, logged(&plain, &[id]).join("\n")).unwrap();
    let (code, changes, summary) = replay(&example_policies(), &log, &["--fail-on", "any"]);
    assert_eq!((code, changes.len()), (2, 0), "a gate that compared nothing does not pass");
    assert!(summary.contains("replayed 0 decisions") && summary.contains("1 not replayable"), "{summary}");
    assert!(summary.contains("nothing was replayed"), "{summary}");

    // A provisioned user: without the server's entities the replay cannot know them.
    let p = Process::start(&example_policies(), &["--decision-log-requests", "true"]);
    let mut entities = p.remote().entities().await.unwrap();
    let pat =
        entity(r#"User::"pat""#, serde_json::json!({"name": "Pat", "suspended": false}), &[r#"Group::"engineering""#]);
    entities.upsert_entities(pb::UpsertEntitiesRequest { entities: vec![pat], ..Default::default() }).await.unwrap();
    let mut client = AuthorizationServiceClient::connect(p.url()).await.unwrap();
    let id = client
        .check(req(r#"User::"pat""#, r#"Action::"view""#, r#"Document::"design-doc""#))
        .await
        .unwrap()
        .into_inner()
        .decision_id;
    let log = dir.path().join("provisioned.jsonl");
    let lines = logged(&p, std::slice::from_ref(&id));
    let record: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert!(record["entity_revision"].as_u64().unwrap() > 0, "{record}");
    std::fs::write(&log, lines.join("\n")).unwrap();
    let (_, changes, _) = replay(&example_policies(), &log, &[]);
    assert_eq!(changed_ids(&changes), vec![id.clone()], "files alone: pat is unknown");
    let data_dir = p.data_dir.to_str().unwrap().to_string();
    let (code, changes, summary) =
        replay(&example_policies(), &log, &["--entities-from", &p.url(), "--data-dir", &data_dir]);
    assert_eq!((code, changes.len()), (0, 0), "{summary}");
    assert!(summary.contains("provisioned entities from"), "{summary}");
}
