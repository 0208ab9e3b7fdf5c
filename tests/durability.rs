//! The embedded store keeps what it acknowledged: real server processes SIGKILLed mid-write, a
//! second server on the same data directory, damaged database files, the former audit file replayed.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use cedar_pdp::grpc::pb;
use common::process::{Process, Remote};
use common::*;
use serde_json::json;
use tonic::Code;

const PER_BATCH: usize = 5;

fn batch(k: u64) -> Vec<pb::Entity> {
    (0..PER_BATCH)
        .map(|i| entity(&format!(r#"User::"b{k}-{i}""#), json!({}), &[&format!(r#"Group::"batch{k}""#)]))
        .collect()
}

/// Every provisioned uid, through ExportEntities.
async fn exported(server: &Remote) -> HashSet<String> {
    let mut client = server.entities().await.unwrap();
    let mut stream = client.export_entities(pb::ExportEntitiesRequest::default()).await.unwrap().into_inner();
    let mut out = HashSet::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        out.extend(chunk.entities.into_iter().map(|e| e.uid.unwrap().id));
    }
    out
}

/// Every audit record, page by page.
async fn audit_trail(server: &Remote) -> Vec<pb::AuditRecord> {
    let mut client = server.entities().await.unwrap();
    let mut request = pb::ReadAuditRequest { limit: 1000, ..Default::default() };
    let mut out = Vec::new();
    loop {
        let page = client.read_audit(request.clone()).await.unwrap().into_inner();
        out.extend(page.records);
        if page.next_page_token.is_empty() {
            return out;
        }
        request.page_token = page.next_page_token;
    }
}

/// Writes batches, one after another, until the server stops answering: the batches acknowledged
/// (with their revisions) and the one in flight when it died.
async fn write_until_killed(server: Remote, batches: std::ops::Range<u64>) -> (Vec<(u64, u64)>, Option<u64>) {
    let Ok(mut client) = server.entities().await else { return (Vec::new(), None) };
    let mut acked = Vec::new();
    for k in batches {
        match client.upsert_entities(pb::UpsertEntitiesRequest { entities: batch(k), ..Default::default() }).await {
            Ok(r) => acked.push((k, r.into_inner().revision)),
            Err(_) => return (acked, Some(k)),
        }
    }
    (acked, None)
}

struct Ledger {
    acked: BTreeMap<u64, u64>,
    in_flight: Vec<u64>,
}

impl Ledger {
    /// Every acknowledged batch is there whole; one in flight at the kill is whole or absent; the
    /// revision is at least the highest acknowledged; one audit record per entity written.
    async fn verify(&self, server: &Process) {
        let present = exported(&server.remote()).await;
        for k in self.acked.keys() {
            let missing: Vec<usize> = (0..PER_BATCH).filter(|i| !present.contains(&format!("b{k}-{i}"))).collect();
            assert!(missing.is_empty(), "acknowledged batch {k} lost entities {missing:?}");
        }
        for k in &self.in_flight {
            let n = (0..PER_BATCH).filter(|i| present.contains(&format!("b{k}-{i}"))).count();
            assert!(n == 0 || n == PER_BATCH, "batch {k}, unacknowledged, is there in part ({n} of {PER_BATCH})");
        }
        let mut admin = server.remote().admin().await.unwrap();
        let status = admin.get_status(pb::GetStatusRequest {}).await.unwrap().into_inner();
        let highest = self.acked.values().max().copied().unwrap_or(0);
        assert!(status.entity_revision >= highest, "revision went back: {} < {highest}", status.entity_revision);
        let trail = audit_trail(&server.remote()).await;
        assert_eq!(trail.len(), present.len(), "one audit record per entity written");
        let mut per_revision: BTreeMap<u64, usize> = BTreeMap::new();
        trail.iter().for_each(|r| *per_revision.entry(r.revision).or_default() += 1);
        assert!(per_revision.values().all(|&n| n == PER_BATCH), "a batch's records are all there or none");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_keeps_every_acknowledged_batch_whole() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_string();
    let args = ["--data-dir", dir.as_str(), "--decision-log", "false"];
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    println!("kill points seeded with {seed}");
    let mut ledger = Ledger { acked: BTreeMap::new(), in_flight: Vec::new() };
    let mut next = 0u64;
    for round in 0..4u64 {
        let server = Process::start(&fixture("org"), &args);
        ledger.verify(&server).await;
        // Three writers at once, so that a kill can land inside any of several commits.
        let writers: Vec<_> = (0..3)
            .map(|w| tokio::spawn(write_until_killed(server.remote(), next + w * 10_000..next + (w + 1) * 10_000)))
            .collect();
        next += 30_000;
        // The kill point: somewhere in the first few hundred commits of this round.
        let wait = 40 + u64::from(seed.rotate_left(round as u32 * 7)) % 200;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        server.signal("KILL");
        for writer in writers {
            let (acked, in_flight) = writer.await.unwrap();
            assert!(!acked.is_empty() || in_flight.is_some(), "round {round}: no write reached the server");
            ledger.acked.extend(acked);
            ledger.in_flight.extend(in_flight);
        }
    }
    assert!(ledger.acked.len() > 20, "too few writes to mean anything: {}", ledger.acked.len());
    let server = Process::start(&fixture("org"), &args);
    ledger.verify(&server).await;
    println!("{} batches acknowledged, {} in flight at a kill", ledger.acked.len(), ledger.in_flight.len());
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let _first = Process::start(&fixture("org"), &["--data-dir", dir]);
    let Err(log) = Process::try_start(&fixture("org"), &["--data-dir", dir]) else {
        panic!("two servers opened one data directory")
    };
    assert!(log.contains("entities.redb is in use by another process"), "{log}");
}

/// Starts a server on `dir` and expects it to fail, returning what it logged.
fn start_fails(dir: &std::path::Path) -> String {
    let dir = dir.to_str().unwrap();
    match Process::try_start(&fixture("org"), &["--data-dir", dir]) {
        Ok(_) => panic!("the server started on a damaged database"),
        Err(log) => log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_is_a_start_up_error_naming_the_file() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    {
        let server = Process::start(&fixture("org"), &["--data-dir", dir]);
        let mut client = server.remote().entities().await.unwrap();
        for k in 0..20 {
            client
                .upsert_entities(pb::UpsertEntitiesRequest { entities: batch(k), ..Default::default() })
                .await
                .unwrap();
        }
        server.signal("TERM");
    }
    let file = data.path().join("entities.redb");
    let good = std::fs::read(&file).unwrap();
    let damaged: [(&str, Vec<u8>); 3] = [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("garbage", (0..good.len()).map(|i| (i * 7919 % 251) as u8).collect()),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in damaged {
        std::fs::write(&file, bytes).unwrap();
        let log = start_fails(data.path());
        assert!(log.contains("entities.redb"), "{what}: {log}");
        assert!(log.contains("cannot open the entity store"), "{what}: {log}");
        // Never replaced by an empty store.
        assert_ne!(std::fs::metadata(&file).unwrap().len(), 20 * 1024, "{what}");
    }
    // A valid header over damaged pages: caught by the integrity check, not served.
    let mut pages = good.clone();
    pages[4096..].iter_mut().for_each(|b| *b ^= 0x5a);
    std::fs::write(&file, pages).unwrap();
    assert!(start_fails(data.path()).contains("entities.redb"));
    // The good file still opens, with everything in it.
    std::fs::write(&file, good).unwrap();
    let server = Process::start(&fixture("org"), &["--data-dir", dir]);
    assert_eq!(exported(&server.remote()).await.len(), 20 * PER_BATCH);
}

#[tokio::test]
async fn the_former_audit_file_is_replayed_once_and_a_torn_tail_dropped() {
    let scratch = tempfile::tempdir().unwrap();
    let legacy = scratch.path().join("cedar-pdp-audit.jsonl");
    let record = |revision: u64, op: &str, id: &str, after: Option<serde_json::Value>| {
        json!({"revision": revision, "at": "2026-11-01T10:00:00.000Z", "actor": "hr-sync", "operation": op,
               "uid": format!("User::\"{id}\""), "before": null, "after": after})
        .to_string()
    };
    let user = |id: &str| json!({"uid": {"type": "User", "id": id}, "attrs": {}, "parents": [{"type": "Group", "id": "readers"}]});
    let lines = [
        record(1, "upsert", "ann", Some(user("ann"))),
        record(1, "upsert", "ben", Some(user("ben"))),
        record(2, "delete", "ben", None),
        record(3, "upsert", "cal", Some(user("cal"))),
    ];
    // The last record was cut off by a crash mid-append: never acknowledged, so dropped.
    let torn = record(4, "upsert", "dan", Some(user("dan")));
    std::fs::write(&legacy, format!("{}\n{}", lines.join("\n"), &torn[..torn.len() / 2])).unwrap();
    let data = scratch.path().join("data");
    let configure = |c: &mut cedar_pdp::config::ServeConfig| {
        c.entities.data_dir = data.clone();
        c.entities.audit_file = legacy.clone();
    };
    let server = TestServer::start_with(&fixture("org"), configure).await;
    assert_eq!(server.status().await.entity_revision, 3);
    let mut client = server.entities(None).await;
    let get = |id: &str| pb::GetEntityRequest { uid: Some(uid(&format!("User::\"{id}\""))) };
    assert_eq!(client.get_entity(get("ann")).await.unwrap().into_inner().revision, 1);
    assert_eq!(client.get_entity(get("ben")).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(client.get_entity(get("dan")).await.unwrap_err().code(), Code::NotFound);
    let trail = client.read_audit(pb::ReadAuditRequest::default()).await.unwrap().into_inner().records;
    assert_eq!(trail.iter().map(|r| r.revision).collect::<Vec<_>>(), [1, 1, 2, 3]);
    assert!(trail.iter().all(|r| r.actor == "hr-sync"));
    // A min_revision from before the migration still means what it meant.
    let check = req(r#"User::"cal""#, r#"Action::"view""#, r#"Document::"handbook""#);
    server.check(pb::CheckRequest { min_revision: 3, ..check }).await.unwrap();
    server.stop().await.unwrap();
    assert!(!legacy.exists() && scratch.path().join("cedar-pdp-audit.jsonl.migrated").exists());

    // Replayed once: a restart does not apply it again.
    std::fs::write(&legacy, lines.join("\n") + "\n").unwrap();
    let again = TestServer::start_with(&fixture("org"), configure).await;
    assert_eq!(again.status().await.entity_revision, 3);
    let trail = again.entities(None).await.read_audit(pb::ReadAuditRequest::default()).await.unwrap();
    assert_eq!(trail.into_inner().records.len(), 4);
}

#[tokio::test]
async fn a_damaged_former_audit_file_stops_the_start_naming_the_line() {
    let scratch = tempfile::tempdir().unwrap();
    let legacy = scratch.path().join("audit.jsonl");
    std::fs::write(&legacy, "{\"revision\": 1}\nnot json\n").unwrap();
    let err = TestServer::try_start_with(&fixture("org"), |c| {
        c.entities.data_dir = scratch.path().join("data");
        c.entities.audit_file = legacy.clone();
    })
    .await
    .err()
    .expect("started on a damaged audit file");
    assert!(err.to_string().contains("audit.jsonl:1"), "{err}");
}

#[tokio::test]
async fn a_memory_store_refuses_a_revision_from_before_its_restart() {
    let memory =
        |c: &mut cedar_pdp::config::ServeConfig| c.entities.store = Some(cedar_pdp::config::StoreChoice::Memory);
    let first = TestServer::start_with(&fixture("org"), memory).await;
    let mut client = first.entities(None).await;
    let written =
        client.upsert_entities(pb::UpsertEntitiesRequest { entities: batch(1), ..Default::default() }).await.unwrap();
    let revision = written.into_inner().revision;
    first.stop().await.unwrap();

    let second = TestServer::start_with(&fixture("org"), memory).await;
    let check = req(r#"User::"b1-0""#, r#"Action::"view""#, r#"Document::"handbook""#);
    let err = second.check(pb::CheckRequest { min_revision: revision, ..check }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("lost at restart"), "{}", err.message());
}

#[tokio::test]
async fn a_revision_from_a_wiped_data_dir_is_refused_not_honoured() {
    let data = tempfile::tempdir().unwrap();
    let on = |c: &mut cedar_pdp::config::ServeConfig| c.entities.data_dir = data.path().join("data");
    let first = TestServer::start_with(&fixture("org"), on).await;
    let mut client = first.entities(None).await;
    let written =
        client.upsert_entities(pb::UpsertEntitiesRequest { entities: batch(1), ..Default::default() }).await.unwrap();
    let revision = written.into_inner().revision;
    first.stop().await.unwrap();
    std::fs::remove_dir_all(data.path().join("data")).unwrap();

    // A new database starts above every revision the old one issued, and refuses them.
    let second = TestServer::start_with(&fixture("org"), on).await;
    let fresh = second.status().await.entity_revision;
    assert!(fresh > revision, "{fresh} <= {revision}");
    let check = req(r#"User::"b1-0""#, r#"Action::"view""#, r#"Document::"handbook""#);
    let err = second.check(pb::CheckRequest { min_revision: revision, ..check.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // Its own starting revision is fine.
    second.check(pb::CheckRequest { min_revision: fresh, ..check }).await.unwrap();
}

/// A creation interrupted after the database was built but before its rename: the whole file under
/// the temporary name is what the server may already have served from (a power loss can undo a
/// rename), so it is used, never thrown away; a broken one is built again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_left_under_its_temporary_name_is_used_when_whole() {
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    {
        let server = Process::start(&fixture("org"), &["--data-dir", first.path().to_str().unwrap()]);
        let mut client = server.remote().entities().await.unwrap();
        client.upsert_entities(pb::UpsertEntitiesRequest { entities: batch(7), ..Default::default() }).await.unwrap();
        server.signal("TERM");
    }
    std::fs::rename(first.path().join("entities.redb"), second.path().join("entities.redb.new")).unwrap();
    let server = Process::start(&fixture("org"), &["--data-dir", second.path().to_str().unwrap()]);
    assert_eq!(exported(&server.remote()).await.len(), PER_BATCH, "the renamed-back database, whole");
    drop(server);

    let third = tempfile::tempdir().unwrap();
    std::fs::write(third.path().join("entities.redb.new"), b"half a database").unwrap();
    let server = Process::start(&fixture("org"), &["--data-dir", third.path().to_str().unwrap()]);
    assert!(exported(&server.remote()).await.is_empty());
    assert!(!third.path().join("entities.redb.new").exists());
}
