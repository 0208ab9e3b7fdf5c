//! Listing latency through the real server and a real gRPC client, side by side with one Check:
//! ListResources over 10,000 documents (a) where the permits' resource scopes prune (`resource in
//! Folder::"f7"`: 100 documents decided), (b) where they cannot (an owner condition: all 10,000
//! decided), and (c) ListActions over 50 actions. Entities provisioned in the embedded store.
//!
//! `taskset -c 1 cargo bench --bench list` (server and client on one core; figures in
//! docs/benchmarks.md). Prints p50, p99 and the number listed for each.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use cedar_pdp::grpc::pb;
use common::{TestServer, entity, uid};
use serde_json::json;

const DOCS: usize = 10_000;
const FOLDERS: usize = 100;

fn policy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut policies = String::from(
        r#"permit(principal in Group::"eng", action == Action::"view", resource in Folder::"f7");
permit(principal, action == Action::"edit", resource) when { resource.owner == principal };
"#,
    );
    for a in 0..50 {
        policies.push_str(&format!(
            "permit(principal in Group::\"eng\", action == Action::\"a{a}\", resource in Folder::\"f{}\");\n",
            a % 10
        ));
    }
    std::fs::write(dir.path().join("policies.cedar"), policies).unwrap();
    dir
}

fn entities() -> Vec<pb::Entity> {
    let mut out = vec![entity(r#"Group::"eng""#, json!({}), &[])];
    for u in 0..FOLDERS {
        out.push(entity(&format!(r#"User::"u{u}""#), json!({}), &[r#"Group::"eng""#]));
    }
    for f in 0..FOLDERS {
        out.push(entity(&format!(r#"Folder::"f{f}""#), json!({}), &[]));
    }
    for d in 0..DOCS {
        let owner = json!({"owner": {"__entity": {"type": "User", "id": format!("u{}", d % FOLDERS)}}});
        out.push(entity(&format!(r#"Document::"d{d:05}""#), owner, &[&format!(r#"Folder::"f{}""#, d % FOLDERS)]));
    }
    out
}

/// Latencies of `n` calls of `call`, after 10 unmeasured ones; returns (p50, p99, what the last listed).
async fn measure<F, Fut>(n: usize, mut call: F) -> (Duration, Duration, usize)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    for _ in 0..10 {
        call().await;
    }
    let mut times = Vec::with_capacity(n);
    let mut listed = 0;
    for _ in 0..n {
        let started = Instant::now();
        listed = call().await;
        times.push(started.elapsed());
    }
    times.sort();
    (times[n / 2], times[(n * 99 / 100).min(n - 1)], listed)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = policy_dir();
        let server = TestServer::start_with(dir.path(), |c| c.max_list_candidates = 20_000).await;
        let mut writer = server.entities(None).await;
        for chunk in entities().chunks(1000) {
            let request = pb::UpsertEntitiesRequest { entities: chunk.to_vec(), ..Default::default() };
            writer.upsert_entities(request).await.unwrap();
        }
        let client = server.client.clone();
        let list = |action: &'static str| {
            let client = client.clone();
            move || {
                let request = pb::ListResourcesRequest {
                    principal: Some(uid(r#"User::"u1""#)),
                    action: Some(uid(&format!(r#"Action::"{action}""#))),
                    resource_type: "Document".into(),
                    page_size: 1000,
                    ..Default::default()
                };
                let mut client = client.clone();
                async move {
                    let page = client.list_resources(request).await.unwrap().into_inner();
                    assert!(page.next_page_token.is_empty(), "one call lists all");
                    page.uids.len()
                }
            }
        };
        let check = {
            let client = client.clone();
            move || {
                let mut client = client.clone();
                async move {
                    let request = common::req(r#"User::"u1""#, r#"Action::"edit""#, r#"Document::"d00001""#);
                    usize::from(common::is_allow(&client.check(request).await.unwrap().into_inner()))
                }
            }
        };
        let actions = {
            let client = client.clone();
            move || {
                let mut client = client.clone();
                async move {
                    let request = pb::ListActionsRequest {
                        principal: Some(uid(r#"User::"u1""#)),
                        resource: Some(uid(r#"Document::"d00007""#)),
                        ..Default::default()
                    };
                    client.list_actions(request).await.unwrap().into_inner().actions.len()
                }
            }
        };
        let report = |name: &str, (p50, p99, listed): (Duration, Duration, usize)| {
            println!("{name:<48} p50 {:>9.3} ms  p99 {:>9.3} ms  listed {listed}", ms(p50), ms(p99));
        };
        report("Check (one decision)", measure(500, check).await);
        report("ListResources, pruned by scope (10,000 docs)", measure(200, list("view")).await);
        report("ListResources, owner condition (10,000 docs)", measure(30, list("edit")).await);
        report("ListActions over 52 actions", measure(200, actions).await);
    });
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
