//! Shadow policies on live traffic: a server process whose shadow set differs from the live one on
//! known requests; the live answers, the counts in `status`, the metrics and the log lines; a full
//! shadow queue drops without failing or changing a live answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use cedar_pdp::grpc::{AuthorizationServiceClient, pb};
use common::process::Process;
use common::*;

/// The example policies, plus (in the shadow set) a grant for engineering to edit and a forbid on
/// alice deleting.
fn shadow_dir() -> tempfile::TempDir {
    let dir = copy_dir(&example_policies());
    std::fs::write(
        dir.path().join("proposed.cedar"),
        "@id(\"engineering-edits\")\npermit (principal in Group::\"engineering\", action in Action::\"write\", resource in Folder::\"engineering\");\n\
         @id(\"alice-never-deletes\")\nforbid (principal == User::\"alice\", action == Action::\"delete\", resource);\n",
    )
    .unwrap();
    dir
}

async fn status(p: &Process) -> pb::ShadowStatus {
    let mut admin = p.remote().admin().await.unwrap();
    admin.get_status(pb::GetStatusRequest {}).await.unwrap().into_inner().shadow.unwrap()
}

#[tokio::test]
async fn differences_are_counted_and_logged_and_the_live_answer_stands() {
    let shadow = shadow_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics = format!("127.0.0.1:{port}");
    let p = Process::start(
        &example_policies(),
        &["--shadow-policies", shadow.path().to_str().unwrap(), "--metrics-listen", &metrics],
    );
    let mut client = AuthorizationServiceClient::connect(p.url()).await.unwrap();
    let ask = |principal: &str, action: &str| {
        req(&format!("User::{principal:?}"), &format!("Action::{action:?}"), r#"Document::"design-doc""#)
    };
    // Live answers are the live set's, whatever the shadow set says.
    let gain = client.check(ask("bob", "edit")).await.unwrap().into_inner();
    let loss = client.check(ask("alice", "delete")).await.unwrap().into_inner();
    let same = client.check(ask("bob", "view")).await.unwrap().into_inner();
    assert_eq!((is_allow(&gain), is_allow(&loss), is_allow(&same)), (false, true, true));
    let deadline = Instant::now() + Duration::from_secs(10);
    let counts = loop {
        let s = status(&p).await;
        if s.same + s.allow_gain + s.allow_loss + s.reasons_differ >= 3 {
            break s;
        }
        assert!(Instant::now() < deadline, "shadow counts: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((counts.allow_gain, counts.allow_loss, counts.same, counts.dropped, counts.errors), (1, 1, 1, 0, 0));
    assert!(!counts.policy_version.is_empty());
    let scraped = reqwest::get(format!("http://{metrics}/metrics")).await.unwrap().text().await.unwrap();
    for result in ["allow_gain", "allow_loss", "same"] {
        let line = format!("cedar_pdp_shadow_decisions_total{{result=\"{result}\"}} 1");
        assert!(scraped.contains(&line), "{line} in:\n{scraped}");
    }
    // One log line per difference, naming the decision and both answers.
    let mut found = Vec::new();
    while found.len() < 2 {
        let line = p.lines.recv_timeout(Duration::from_secs(10)).expect("shadow log lines");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if event["message"] == "the shadow policies decide differently" {
            found.push(event);
        }
    }
    let by_result = |r: &str| found.iter().find(|e| e["result"] == r).unwrap_or_else(|| panic!("{found:?}"));
    let g = by_result("allow_gain");
    assert_eq!(g["decision_id"], serde_json::json!(gain.decision_id));
    assert_eq!((g["live"].as_str(), g["shadow"].as_str()), (Some("deny"), Some("allow")));
    assert!(g["shadow_determining"].as_str().unwrap().contains("engineering-edits"), "{g}");
    let l = by_result("allow_loss");
    assert_eq!(l["decision_id"], serde_json::json!(loss.decision_id));
    assert!(l["shadow_determining"].as_str().unwrap().contains("alice-never-deletes"), "{l}");
    // The shadow set reloads like the live one.
    std::fs::remove_file(shadow.path().join("proposed.cedar")).unwrap();
    let first = counts.policy_version;
    eventually("the shadow set reloads", Duration::from_secs(10), || async {
        status(&p).await.policy_version != first
    })
    .await;
}

#[tokio::test]
async fn a_full_shadow_queue_drops_and_live_answers_do_not_change() {
    // A shadow set that is slow to decide (thousands of conditional policies) behind a queue of one.
    let shadow = copy_dir(&example_policies());
    let slow: String = (0..3000)
        .map(|i| {
            format!("permit (principal, action, resource) when {{ context has mfa && context.mfa && {i} > 3000 }};\n")
        })
        .collect();
    std::fs::write(shadow.path().join("slow.cedar"), slow).unwrap();
    let p = Process::start(
        &example_policies(),
        &["--shadow-policies", shadow.path().to_str().unwrap(), "--shadow-queue", "1", "--decision-log", "false"],
    );
    let mut client = AuthorizationServiceClient::connect(p.url()).await.unwrap();
    for _ in 0..3 {
        let checks: Vec<pb::CheckRequest> =
            (0..100).map(|_| req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"design-doc""#)).collect();
        let answer = client.batch_check(pb::BatchCheckRequest { checks }).await.unwrap().into_inner();
        assert_eq!(answer.results.len(), 100);
        assert!(answer.results.iter().all(is_allow), "every live answer stands");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(&p).await;
        if s.same + s.dropped + s.reasons_differ == 300 {
            assert!(s.dropped > 0, "{s:?}");
            assert_eq!((s.allow_gain, s.allow_loss, s.errors), (0, 0, 0));
            break;
        }
        assert!(Instant::now() < deadline, "shadow counts: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
