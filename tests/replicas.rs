//! Two `cedar-pdp` processes sharing one real Redis: what one provisions or revokes, the other
//! decides on, through its invalidation subscription (no `min_revision`).
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use cedar_pdp::grpc::{AuthorizationServiceClient, pb};
use common::process::Process;
use common::redis::RedisServer;
use common::*;
use serde_json::json;

/// Toggles a user's membership `rounds` times through replica A and measures how long replica B
/// takes to decide accordingly, polling B until its answer changes. Returns the sorted latencies and
/// how many of B's answers were still the old one (served from its cache before the invalidation).
fn propagation(rounds: usize) -> (Vec<Duration>, usize) {
    let redis = RedisServer::start();
    let args = ["--redis-url", &redis.url(), "--decision-log", "false"];
    let (a, b) = (Process::start(&fixture("org"), &args), Process::start(&fixture("org"), &args));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut writer = a.remote().entities().await.unwrap();
        let mut reader = AuthorizationServiceClient::connect(b.url()).await.unwrap();
        let (user, view, doc) = (r#"User::"olga""#, r#"Action::"view""#, r#"Document::"roadmap""#);
        let roadmap = entity(doc, json!({"owner": {"__entity": {"type": "User", "id": "nobody"}}}), &[]);
        let member = |yes: bool| entity(user, json!({}), if yes { &[r#"Group::"readers""#] } else { &[] });
        let mut upsert = async |entities: Vec<pb::Entity>| {
            writer
                .upsert_entities(pb::UpsertEntitiesRequest { entities, ..Default::default() })
                .await
                .unwrap()
                .into_inner()
                .revision
        };
        upsert(vec![roadmap, member(true)]).await;
        let mut allowed = async || is_allow(&reader.check(req(user, view, doc)).await.unwrap().into_inner());
        // B's first read of olga fills its cache; every later change must reach it as an invalidation.
        assert!(allowed().await);
        let mut latencies = Vec::with_capacity(rounds);
        let mut stale = 0;
        for round in 0..rounds {
            let expected = round % 2 == 1;
            upsert(vec![member(expected)]).await;
            let written = Instant::now();
            let deadline = written + Duration::from_secs(5);
            while allowed().await != expected {
                stale += 1;
                assert!(Instant::now() < deadline, "round {round}: replica B still answers the old membership");
            }
            latencies.push(written.elapsed());
        }
        latencies.sort();
        (latencies, stale)
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn a_revocation_through_one_replica_reaches_the_other() {
    let (latencies, _) = propagation(20);
    // Correctness here (every change arrived); the distribution is measured by the ignored test below.
    assert_eq!(latencies.len(), 20);
}

/// `cargo test --release --test replicas -- --ignored --nocapture`; figures in docs/benchmarks.md.
#[test]
#[ignore = "measurement: run explicitly"]
fn measure_propagation() {
    let (latencies, stale) = propagation(1000);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "propagation over {} revocations/grants: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
         {stale} stale answers from B's cache before an invalidation landed",
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies[latencies.len() - 1]),
    );
}
