//! Hot reload through the file watcher: good edits take effect, bad ones never replace the last good set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use cedar_pdp::config::ValidationMode;
use common::*;

const WAIT: Duration = Duration::from_secs(15);

fn bob_edits() -> cedar_pdp::grpc::pb::CheckRequest {
    req(r#"User::"bob""#, r#"Action::"edit""#, r#"Document::"design-doc""#)
}

const GRANT_ENGINEERING_WRITE: &str = r#"
@id("engineering-edits-engineering-folder")
permit (principal in Group::"engineering", action in Action::"write", resource in Folder::"engineering");
"#;

#[tokio::test]
async fn an_edit_changes_decisions_and_the_version() {
    let dir = copy_dir(&example_policies());
    let server = TestServer::start(dir.path()).await;
    let before = server.check(bob_edits()).await.unwrap();
    assert!(!is_allow(&before));

    write_atomic(&dir.path().join("grants.cedar"), GRANT_ENGINEERING_WRITE);
    eventually("bob may edit after the new policy file appears", WAIT, || async {
        is_allow(&server.check(bob_edits()).await.unwrap())
    })
    .await;
    let after = server.check(bob_edits()).await.unwrap();
    assert_eq!(after.determining_policies, ["engineering-edits-engineering-folder"]);
    assert_ne!(after.policy_version, before.policy_version);

    // Removing the file takes the grant away again, back to the original version.
    std::fs::remove_file(dir.path().join("grants.cedar")).unwrap();
    eventually("the grant is gone", WAIT, || async { !is_allow(&server.check(bob_edits()).await.unwrap()) }).await;
    assert_eq!(server.check(bob_edits()).await.unwrap().policy_version, before.policy_version);
}

/// Each case: a file to write and what the status must then say.
const BAD_EDITS: &[(&str, &str, &str)] = &[
    ("grants.cedar", "permit (principal, action, resource)\nwhen { principal.name == };\n", "grants.cedar:2:"),
    (
        "grants.cedar",
        "@id(\"typo\")\npermit (principal, action, resource is Document)\nwhen { resource.ownr == principal };\n",
        "grants.cedar:3:",
    ),
    (
        "grants.cedar",
        "@id(\"owner-full-access\")\npermit (principal, action, resource);\n",
        "duplicate policy id `owner-full-access`",
    ),
    (
        "more.entities.json",
        "[{\"uid\": {\"type\": \"User\", \"id\": \"zed\"}, \"attrs\": {\"name\": 7, \"suspended\": false}, \"parents\": []}]",
        "more.entities.json",
    ),
    ("bad.entities.json", "[\n  {\"uid\": {\"type\": \"User\", \"id\": \"zed\"},,}\n]", "bad.entities.json:2:"),
    (
        "links.json",
        "[{\"template_id\": \"no-such-template\", \"link_id\": \"x\", \"args\": {}}]",
        "links.json: links[0]",
    ),
    ("docs.cedarschema", "entity User {", "docs.cedarschema:1:"),
];

#[tokio::test]
async fn invalid_edits_keep_the_last_good_set_and_say_what_is_wrong() {
    let dir = copy_dir(&example_policies());
    let server = TestServer::start(dir.path()).await;
    let good_version = server.status().await.policy_version;
    let good_schema = std::fs::read_to_string(dir.path().join("docs.cedarschema")).unwrap();
    let good_links = std::fs::read_to_string(dir.path().join("links.json")).unwrap();

    for (i, (file, contents, expected)) in BAD_EDITS.iter().enumerate() {
        let failures_before = server.status().await.reloads_failed;
        write_atomic(&dir.path().join(file), contents);
        eventually(&format!("reload of bad {file} fails"), WAIT, || async {
            server.status().await.reloads_failed > failures_before
        })
        .await;
        let status = server.status().await;
        let diags = status.last_error.as_ref().expect("last_error is set").diagnostics.join("\n");
        assert!(diags.contains(expected), "case {i}: expected `{expected}` in:\n{diags}");
        assert_eq!(status.policy_version, good_version, "case {i}: the bad set must not be active");
        // The old decisions stand.
        let alice =
            server.check(req(r#"User::"alice""#, r#"Action::"edit""#, r#"Document::"design-doc""#)).await.unwrap();
        assert!(is_allow(&alice), "case {i}");
        assert_eq!(alice.policy_version, good_version);
        // Undo before the next case.
        match *file {
            "docs.cedarschema" => write_atomic(&dir.path().join(file), &good_schema),
            "links.json" => write_atomic(&dir.path().join(file), &good_links),
            _ => std::fs::remove_file(dir.path().join(file)).unwrap(),
        }
        eventually("the undo reloads cleanly", WAIT, || async { server.status().await.last_error.is_none() }).await;
    }
    assert_eq!(server.status().await.policy_version, good_version);
}

#[cfg(unix)]
#[tokio::test]
async fn a_file_vanishing_mid_write_is_rejected_not_half_loaded() {
    let dir = copy_dir(&example_policies());
    let server = TestServer::start(dir.path()).await;
    let version = server.status().await.policy_version;
    std::os::unix::fs::symlink(dir.path().join("gone.cedar.src"), dir.path().join("gone.cedar")).unwrap();
    eventually("the dangling file is reported", WAIT, || async {
        server
            .status()
            .await
            .last_error
            .is_some_and(|e| e.diagnostics.iter().any(|d| d.starts_with("gone.cedar: cannot read")))
    })
    .await;
    assert_eq!(server.status().await.policy_version, version);
}

#[tokio::test]
async fn a_burst_of_writes_ends_on_the_final_content() {
    let dir = copy_dir(&example_policies());
    let server = TestServer::start(dir.path()).await;
    let path = dir.path().join("burst.cedar");
    // Forty quick rewrites, some of them invalid; only the last one grants bob `edit`.
    for i in 0..40 {
        let text = if i == 39 {
            GRANT_ENGINEERING_WRITE.to_string()
        } else if i % 3 == 0 {
            format!("permit (principal, action, resource) when {{ {i} == }};")
        } else {
            format!("@id(\"burst-{i}\")\nforbid (principal == User::\"bob\", action, resource == Document::\"n{i}\");")
        };
        std::fs::write(&path, text).unwrap();
    }
    let expected = cedar_pdp::policy::load_dir(dir.path(), ValidationMode::Strict).unwrap().version;
    eventually("the final content is active", WAIT, || async { server.status().await.policy_version == expected })
        .await;
    let resp = server.check(bob_edits()).await.unwrap();
    assert!(is_allow(&resp));
    assert_eq!(resp.determining_policies, ["engineering-edits-engineering-folder"]);
}

#[tokio::test]
async fn reloads_under_load_fail_no_request() {
    let dir = copy_dir(&example_policies());
    let server = TestServer::start(dir.path()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (client, stop, answered) = (server.client.clone(), stop.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            let mut versions = std::collections::HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                let resp =
                    client.clone().check(bob_edits()).await.expect("no check may fail during a reload").into_inner();
                // Each answer is consistent with the version that gave it.
                let granted = resp.determining_policies == ["engineering-edits-engineering-folder"];
                assert_eq!(is_allow(&resp), granted, "{resp:?}");
                versions.insert(resp.policy_version);
                answered.fetch_add(1, Ordering::Relaxed);
            }
            versions
        }));
    }
    let path = dir.path().join("grants.cedar");
    for round in 0..6 {
        let swaps = server.status().await.reloads_succeeded;
        if round % 2 == 0 {
            write_atomic(&path, GRANT_ENGINEERING_WRITE);
        } else {
            write_atomic(&path, "// nothing granted\n");
        }
        eventually("the rewrite is loaded", WAIT, || async { server.status().await.reloads_succeeded > swaps }).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut versions = std::collections::HashSet::new();
    for c in clients {
        versions.extend(c.await.unwrap());
    }
    assert!(answered.load(Ordering::Relaxed) > 0);
    assert!(versions.len() >= 2, "checks ran across reloads: {versions:?}");
}

#[tokio::test]
async fn an_invalid_directory_fails_start_up_with_every_problem() {
    let dir = copy_dir(&example_policies());
    std::fs::write(dir.path().join("bad.cedar"), "permit (principal, action, resource) when { 1 + };").unwrap();
    std::fs::write(dir.path().join("links.json"), "not json").unwrap();
    let err = match TestServer::try_start_with(dir.path(), |_| {}).await {
        Ok(_) => panic!("a server started on an invalid directory"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("bad.cedar:1:"), "{err}");
    assert!(err.contains("links.json:1:2: invalid JSON"), "{err}");
}

#[tokio::test]
async fn a_missing_directory_fails_start_up() {
    let err = match TestServer::try_start_with(std::path::Path::new("/nonexistent/policies"), |_| {}).await {
        Ok(_) => panic!("a server started without policies"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("/nonexistent/policies: cannot read"), "{err}");
}

#[tokio::test]
async fn a_reload_does_not_trigger_the_next_one() {
    // Reading the files during a reload must not count as a change: with a 50 ms debounce, a feedback
    // loop would reload many times over within the observation window below.
    let dir = copy_dir(&example_policies());
    let server = TestServer::start(dir.path()).await;
    write_atomic(&dir.path().join("grants.cedar"), GRANT_ENGINEERING_WRITE);
    eventually("the edit is loaded", WAIT, || async { is_allow(&server.check(bob_edits()).await.unwrap()) }).await;
    let settled = server.status().await.reloads_succeeded;
    let window = std::time::Instant::now() + Duration::from_millis(800);
    while std::time::Instant::now() < window {
        assert!(server.status().await.reloads_succeeded <= settled + 1, "reloads keep coming with no edits");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // At most one trailing reload from the edit's own burst of events.
    assert!(server.status().await.reloads_succeeded <= settled + 1);
}

/// `(sleep 0.6; cat guardrails.cedar.new) > guardrails.cedar`: the shell truncates the file at once
/// and writes it 0.6 s later. Under load, the suspended user it forbids must never be let in, and the
/// new content must arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncating_writer_never_opens_a_hole() {
    let dir = copy_dir(&example_policies());
    let file = dir.path().join("guardrails.cedar");
    let new_text = std::fs::read_to_string(&file).unwrap()
        + "\n@id(\"marker\")\nforbid (principal, action == Action::\"delete\", resource);\n";
    std::fs::write(dir.path().join("guardrails.cedar.new"), &new_text).unwrap();
    let server = Arc::new(TestServer::start(dir.path()).await);
    let dave = || req(r#"User::"dave""#, r#"Action::"view""#, r#"Document::"design-doc""#);
    assert!(!is_allow(&server.check(dave()).await.unwrap()));
    let before = server.status().await.policy_version;

    let stop = Arc::new(AtomicBool::new(false));
    let (allowed, checked) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (server, stop, allowed, checked) = (server.clone(), stop.clone(), allowed.clone(), checked.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if is_allow(&server.check(dave()).await.unwrap()) {
                    allowed.fetch_add(1, Ordering::SeqCst);
                }
                checked.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let writer = std::process::Command::new("sh")
        .arg("-c")
        .arg("(sleep 0.6; cat guardrails.cedar.new) > guardrails.cedar")
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(writer.success());
    eventually("the finished file is loaded", WAIT, || async { server.status().await.policy_version != before }).await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let status = server.status().await;
    assert_eq!(status.policy_count, 9, "the new file with its marker policy");
    println!("{} checks during the write, {} allowed", checked.load(Ordering::SeqCst), allowed.load(Ordering::SeqCst));
    assert!(checked.load(Ordering::SeqCst) > 100, "too little load: {}", checked.load(Ordering::SeqCst));
    assert_eq!(allowed.load(Ordering::SeqCst), 0, "the suspended user was let in while the file was empty");
}

/// A file emptied on purpose still applies, once it stayed empty for the settle period.
#[tokio::test]
async fn an_emptied_file_applies_after_the_settle_period() {
    let dir = copy_dir(&example_policies());
    let server = TestServer::start_with(dir.path(), |c| c.reload_settle = Duration::from_millis(300)).await;
    let dave = || req(r#"User::"dave""#, r#"Action::"view""#, r#"Document::"design-doc""#);
    assert!(!is_allow(&server.check(dave()).await.unwrap()));
    write_atomic(&dir.path().join("guardrails.cedar"), "// no guardrails for now\n");
    eventually("the emptied file is applied", WAIT, || async { is_allow(&server.check(dave()).await.unwrap()) }).await;
}
