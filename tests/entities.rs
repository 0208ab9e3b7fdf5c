//! Provisioned entities end to end: the EntityService and Check through real clients, on the
//! in-process store and on a real `redis-server`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use cedar_pdp::grpc::pb;
use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicySet, Request, Schema};
use common::redis::RedisServer;
use common::*;
use serde_json::json;
use tonic::Code;

fn org() -> std::path::PathBuf {
    fixture("org")
}

async fn start(redis: Option<&RedisServer>) -> TestServer {
    start_adjusted(redis, |_| {}).await
}

async fn start_adjusted(
    redis: Option<&RedisServer>,
    adjust: impl FnOnce(&mut cedar_pdp::config::ServeConfig),
) -> TestServer {
    let url = redis.map(RedisServer::url);
    TestServer::start_with(&org(), move |c| {
        c.entities.redis_url = url;
        adjust(c);
    })
    .await
}

async fn upsert(server: &TestServer, entities: Vec<pb::Entity>) -> u64 {
    let mut client = server.entities(None).await;
    client
        .upsert_entities(pb::UpsertEntitiesRequest { entities, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .revision
}

async fn delete(server: &TestServer, uids: &[&str]) -> u64 {
    let mut client = server.entities(None).await;
    let uids = uids.iter().map(|u| uid(u)).collect();
    client
        .delete_entities(pb::DeleteEntitiesRequest { uids, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .revision
}

async fn decide(
    server: &TestServer,
    principal: &str,
    action: &str,
    resource: &str,
    min_revision: u64,
) -> pb::CheckResponse {
    server.check(pb::CheckRequest { min_revision, ..req(principal, action, resource) }).await.unwrap()
}

/// Provision a user into a group: allowed. Revoke by removing the membership, by a banned parent
/// group, by deletion: denied each time, read through `min_revision`. Every change is audited.
async fn membership_scenario(server: &TestServer) {
    let (alice, view, doc) = (r#"User::"alice""#, r#"Action::"view""#, r#"Document::"plan""#);
    let bob = entity(r#"User::"bob""#, json!({}), &[]);
    let plan = entity(doc, json!({"owner": {"__entity": {"type": "User", "id": "bob"}}}), &[]);
    let rev = upsert(server, vec![bob, plan, entity(alice, json!({}), &[r#"Group::"readers""#])]).await;
    let allowed = decide(server, alice, view, doc, rev).await;
    assert!(is_allow(&allowed), "{allowed:?}");
    assert_eq!(allowed.determining_policies, ["readers-view"]);

    let revoked = upsert(server, vec![entity(alice, json!({}), &[])]).await;
    assert!(revoked > rev);
    assert!(!is_allow(&decide(server, alice, view, doc, revoked).await));

    // Back in `readers`, but also in `contractors`, which is inside `banned`: the forbid wins.
    let contractors = entity(r#"Group::"contractors""#, json!({}), &[r#"Group::"banned""#]);
    let rev = upsert(
        server,
        vec![contractors, entity(alice, json!({}), &[r#"Group::"readers""#, r#"Group::"contractors""#])],
    )
    .await;
    let banned = decide(server, alice, view, doc, rev).await;
    assert!(!is_allow(&banned));
    assert_eq!(banned.determining_policies, ["banned"]);
    let rev = delete(server, &[r#"Group::"contractors""#]).await;
    // With `contractors` gone, so is its link to `banned`: alice reads through `readers` again.
    assert!(is_allow(&decide(server, alice, view, doc, rev).await));

    let rev = delete(server, &[alice]).await;
    assert!(!is_allow(&decide(server, alice, view, doc, rev).await));

    let mut client = server.entities(None).await;
    let audit = client
        .read_audit(pb::ReadAuditRequest { uid: Some(uid(alice)), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .records;
    let ops: Vec<&str> = audit.iter().map(|r| r.operation.as_str()).collect();
    assert_eq!(ops, ["upsert", "upsert", "upsert", "delete"]);
    assert!(audit.windows(2).all(|w| w[0].revision < w[1].revision), "{audit:?}");
    assert!(audit.iter().all(|r| r.actor == "local" && !r.at.is_empty()));
    assert_eq!(audit[0].before_json, "");
    assert!(audit[1].before_json.contains("readers") && !audit[1].after_json.contains("readers"));
    assert_eq!(audit[3].after_json, "");
    // Whole trail: every change of every entity, in revision order.
    let all = client.read_audit(pb::ReadAuditRequest::default()).await.unwrap().into_inner().records;
    assert_eq!(all.len(), 3 + 1 + 2 + 1 + 1);
    assert!(all.windows(2).all(|w| w[0].revision <= w[1].revision));
}

#[tokio::test]
async fn embedded_store_provisions_and_revokes_and_keeps_it_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let on = |c: &mut cedar_pdp::config::ServeConfig| c.entities.data_dir = data.path().to_path_buf();
    let server = start_adjusted(None, on).await;
    membership_scenario(&server).await;
    let revision = server.status().await.entity_revision;
    let mut client = server.entities(None).await;
    let plan = client.get_entity(pb::GetEntityRequest { uid: Some(uid(r#"Document::"plan""#)) }).await.unwrap();
    server.stop().await.unwrap();

    let again = start_adjusted(None, on).await;
    let status = again.status().await;
    assert_eq!((status.entity_store.as_str(), status.entity_revision), ("embedded", revision));
    assert!(status.entity_store_location.ends_with("entities.redb"), "{status:?}");
    let mut client = again.entities(None).await;
    let after = client.get_entity(pb::GetEntityRequest { uid: Some(uid(r#"Document::"plan""#)) }).await.unwrap();
    assert_eq!(after.into_inner(), plan.into_inner());
    let all = client.read_audit(pb::ReadAuditRequest::default()).await.unwrap().into_inner().records;
    assert_eq!(all.len(), 8);
    // The deleted user stays deleted, and revisions go on from where they were.
    let alice = req(r#"User::"alice""#, r#"Action::"view""#, r#"Document::"plan""#);
    assert!(!is_allow(&again.check(pb::CheckRequest { min_revision: revision, ..alice }).await.unwrap()));
    assert_eq!(upsert(&again, vec![entity(r#"User::"zed""#, json!({}), &[])]).await, revision + 1);
}

#[tokio::test]
async fn memory_store_provisions_and_revokes() {
    let server = start_adjusted(None, |c| c.entities.store = Some(cedar_pdp::config::StoreChoice::Memory)).await;
    membership_scenario(&server).await;
    let status = server.status().await;
    assert_eq!((status.entity_store.as_str(), status.entity_store_location.as_str()), ("memory", "memory"));
    // The memory store writes no database: the data directory holds only the token generated for
    // the local CLI.
    let files: Vec<String> = std::fs::read_dir(server.scratch.path().join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, [cedar_pdp::grpc::LocalToken::FILE], "the memory store writes no files");
}

#[tokio::test]
async fn redis_store_provisions_and_revokes() {
    let redis = RedisServer::start();
    let server = start(Some(&redis)).await;
    membership_scenario(&server).await;
    assert!(redis.command("XLEN cedar-pdp:audit").contains(":8"));
}

#[tokio::test]
async fn a_schema_invalid_batch_is_rejected_whole() {
    for redis in [None, Some(RedisServer::start())] {
        let server = start(redis.as_ref()).await;
        let mut client = server.entities(None).await;
        let good = entity(r#"User::"carol""#, json!({}), &[]);
        let bad = entity(r#"User::"dave""#, json!({"suspended": "yes"}), &[]);
        let err = client
            .upsert_entities(pb::UpsertEntitiesRequest { entities: vec![good, bad], ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("entities[1]") && err.message().contains("suspended"), "{}", err.message());
        let get = client.get_entity(pb::GetEntityRequest { uid: Some(uid(r#"User::"carol""#)) }).await.unwrap_err();
        assert_eq!(get.code(), Code::NotFound);

        // Undeclared parent type, an undeclared entity type, malformed JSON: each named.
        for (entity, needle) in [
            (entity(r#"User::"e""#, json!({}), &[r#"Document::"x""#]), "entities[0]"),
            (entity(r#"Robot::"r""#, json!({}), &[]), "entities[0]"),
            (pb::Entity { attrs_json: "{".into(), ..entity(r#"User::"f""#, json!({}), &[]) }, "entities[0].attrs_json"),
            (pb::Entity { uid: None, ..entity(r#"User::"f""#, json!({}), &[]) }, "entities[0].uid"),
        ] {
            let err = client
                .upsert_entities(pb::UpsertEntitiesRequest { entities: vec![entity], ..Default::default() })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(err.message().contains(needle), "{needle}: {}", err.message());
        }
        let audit = client.read_audit(pb::ReadAuditRequest::default()).await.unwrap().into_inner().records;
        assert!(audit.is_empty(), "{audit:?}");
    }
}

#[tokio::test]
async fn provisioning_needs_a_valid_token_and_audits_its_name() {
    let redis = RedisServer::start();
    let server = start_adjusted(Some(&redis), |c| {
        c.entities.provisioning_tokens = vec![("hr-sync".into(), "s3cret".into())];
    })
    .await;
    let write = pb::UpsertEntitiesRequest {
        entities: vec![entity(r#"User::"mallory""#, json!({}), &[r#"Group::"readers""#])],
        ..Default::default()
    };
    for token in [None, Some("wrong"), Some("s3cret ")] {
        let err = server.entities(token).await.upsert_entities(write.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}");
        let err = server.entities(token).await.read_audit(pb::ReadAuditRequest::default()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let mut client = server.entities(Some("s3cret")).await;
    assert!(client.get_entity(pb::GetEntityRequest { uid: Some(uid(r#"User::"mallory""#)) }).await.is_err());
    assert!(client.read_audit(pb::ReadAuditRequest::default()).await.unwrap().into_inner().records.is_empty());
    client.upsert_entities(write).await.unwrap();
    let audit = client.read_audit(pb::ReadAuditRequest::default()).await.unwrap().into_inner().records;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].actor, "hr-sync");
}

#[tokio::test]
async fn file_entities_and_actions_are_not_writable() {
    let server = start(None).await;
    let mut client = server.entities(None).await;
    for (target, needle) in [(r#"User::"root""#, "entity files"), (r#"Action::"view""#, "is an action")] {
        let err = client
            .upsert_entities(pb::UpsertEntitiesRequest {
                entities: vec![entity(target, json!({}), &[])],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(needle), "{}", err.message());
        let err = client
            .delete_entities(pb::DeleteEntitiesRequest { uids: vec![uid(target)], ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    // The files' user `root` is in the files' group `staff`, in `everyone`, which the files leave
    // undefined. Provisioning `everyone` into `readers` reaches `root`: files and store are one graph.
    let doc = entity(r#"Document::"d""#, json!({"owner": {"__entity": {"type": "User", "id": "x"}}}), &[]);
    let (root, view) = (r#"User::"root""#, r#"Action::"view""#);
    let rev = upsert(&server, vec![doc]).await;
    assert!(!is_allow(&decide(&server, root, view, r#"Document::"d""#, rev).await));
    let rev = upsert(&server, vec![entity(r#"Group::"everyone""#, json!({}), &[r#"Group::"readers""#])]).await;
    assert!(is_allow(&decide(&server, root, view, r#"Document::"d""#, rev).await));
}

#[tokio::test]
async fn get_and_list_page_through_a_type() {
    for redis in [None, Some(RedisServer::start())] {
        let server = start(redis.as_ref()).await;
        let users: Vec<pb::Entity> =
            (0..25).map(|i| entity(&format!(r#"User::"u{i:02}""#), json!({"suspended": i % 2 == 0}), &[])).collect();
        upsert(&server, users).await;
        upsert(&server, vec![entity(r#"Group::"g""#, json!({}), &[])]).await;
        let mut client = server.entities(None).await;
        let got =
            client.get_entity(pb::GetEntityRequest { uid: Some(uid(r#"User::"u03""#)) }).await.unwrap().into_inner();
        let got_entity = got.entity.unwrap();
        assert_eq!(got_entity.attrs_json, r#"{"suspended":false}"#);
        assert!(got.revision > 0);
        let (mut ids, mut token) = (Vec::new(), String::new());
        loop {
            let page = client
                .list_entities(pb::ListEntitiesRequest { r#type: "User".into(), page_size: 10, page_token: token })
                .await
                .unwrap()
                .into_inner();
            assert!(page.entities.len() <= 10);
            ids.extend(page.entities.into_iter().map(|e| e.uid.unwrap().id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let expected: Vec<String> = (0..25).map(|i| format!("u{i:02}")).collect();
        assert_eq!(ids, expected);
        let err = client.list_entities(pb::ListEntitiesRequest::default()).await.unwrap_err();
        assert!(err.message().contains("`type`"), "{}", err.message());
    }
}

#[tokio::test]
async fn request_entities_cannot_redefine_or_extend_provisioned_ones() {
    let server = start(None).await;
    let rev = upsert(&server, vec![entity(r#"User::"gina""#, json!({}), &[r#"Group::"pending""#])]).await;
    let (view, doc) = (r#"Action::"view""#, r#"Document::"d""#);
    // Redefining gina herself.
    let own = json!([{"uid": {"type": "User", "id": "gina"}, "attrs": {}, "parents": [{"type": "Group", "id": "readers"}]},
                     {"uid": {"type": "Document", "id": "d"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "x"}}}, "parents": []}]);
    let check =
        pb::CheckRequest { entities_json: own.to_string(), min_revision: rev, ..req(r#"User::"gina""#, view, doc) };
    let err = server.check(check).await.unwrap_err();
    assert!(err.message().contains("entities_json[0]") && err.message().contains("provisioned"), "{}", err.message());
    // Defining gina's undefined group into `readers`.
    let own = json!([{"uid": {"type": "Group", "id": "pending"}, "attrs": {}, "parents": [{"type": "Group", "id": "readers"}]},
                     {"uid": {"type": "Document", "id": "d"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "x"}}}, "parents": []}]);
    let check =
        pb::CheckRequest { entities_json: own.to_string(), min_revision: rev, ..req(r#"User::"gina""#, view, doc) };
    let err = server.check(check).await.unwrap_err();
    assert!(err.message().contains("entities_json[0]") && err.message().contains("referred to"), "{}", err.message());
    // A request-scoped document is fine.
    let own = json!([{"uid": {"type": "Document", "id": "d"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "gina"}}}, "parents": []}]);
    let check = pb::CheckRequest { entities_json: own.to_string(), ..req(r#"User::"gina""#, view, doc) };
    assert!(is_allow(&server.check(check).await.unwrap()));
}

#[tokio::test]
async fn min_revision_reads_your_writes_on_another_replica() {
    let redis = RedisServer::start();
    let (a, b) = (start(Some(&redis)).await, start(Some(&redis)).await);
    let (hal, view, doc) = (r#"User::"hal""#, r#"Action::"view""#, r#"Document::"memo""#);
    let memo = entity(doc, json!({"owner": {"__entity": {"type": "User", "id": "nobody"}}}), &[]);
    upsert(&a, vec![memo, entity(hal, json!({}), &[])]).await;
    // Warm b's cache with the old hal, then change hal through a and read through b at once.
    for _ in 0..3 {
        assert!(!is_allow(&decide(&b, hal, view, doc, 0).await));
    }
    for round in 0..20 {
        let parents: &[&str] = if round % 2 == 0 { &[r#"Group::"readers""#] } else { &[] };
        let rev = upsert(&a, vec![entity(hal, json!({}), parents)]).await;
        assert_eq!(is_allow(&decide(&b, hal, view, doc, rev).await), round % 2 == 0, "round {round}");
    }
    let ahead = 1u64 << 60;
    let err = b.check(pb::CheckRequest { min_revision: ahead, ..req(hal, view, doc) }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(&format!("min_revision {ahead}")), "{}", err.message());
}

#[tokio::test]
async fn a_cold_cache_reads_one_round_trip_per_level() {
    let redis = RedisServer::start();
    let writer = start(Some(&redis)).await;
    // ivy ∈ g3 ∈ g2 ∈ g1; the document's owner is jack, whose manager is kate.
    upsert(
        &writer,
        vec![
            entity(r#"User::"ivy""#, json!({}), &[r#"Group::"g3""#]),
            entity(r#"Group::"g3""#, json!({}), &[r#"Group::"g2""#]),
            entity(r#"Group::"g2""#, json!({}), &[r#"Group::"g1""#]),
            entity(r#"Group::"g1""#, json!({}), &[]),
            entity(r#"User::"jack""#, json!({"manager": {"__entity": {"type": "User", "id": "kate"}}}), &[]),
            entity(r#"User::"kate""#, json!({}), &[]),
            entity(r#"Document::"report""#, json!({"owner": {"__entity": {"type": "User", "id": "jack"}}}), &[]),
        ],
    )
    .await;
    let reader = start(Some(&redis)).await;
    let before = redis.calls("mget");
    let resp = decide(&reader, r#"User::"ivy""#, r#"Action::"view""#, r#"Document::"report""#, 0).await;
    assert!(!is_allow(&resp));
    // Levels: {ivy, report, literals} → {g3, jack} → {g2, kate} → {g1}.
    assert_eq!(redis.calls("mget") - before, 4);
    // Warm: no round trip at all.
    let before = redis.calls("mget");
    decide(&reader, r#"User::"ivy""#, r#"Action::"view""#, r#"Document::"report""#, 0).await;
    assert_eq!(redis.calls("mget"), before);
}

/// Redis killed: decisions on cached entities follow the staleness bound, decisions needing
/// anything uncached fail closed with UNAVAILABLE; Redis back: the replica recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_closed_and_recovers() {
    let mut redis = RedisServer::start();
    let server = start_adjusted(Some(&redis), |c| {
        c.entities.entity_stale_for = Duration::from_secs(2);
        c.entities.redis_timeout = Duration::from_millis(300);
    })
    .await;
    let (view, doc) = (r#"Action::"view""#, r#"Document::"wiki""#);
    let wiki = entity(doc, json!({"owner": {"__entity": {"type": "User", "id": "nobody"}}}), &[]);
    let rev = upsert(
        &server,
        vec![
            wiki,
            entity(r#"User::"liam""#, json!({}), &[r#"Group::"readers""#]),
            entity(r#"User::"mia""#, json!({}), &[r#"Group::"readers""#]),
        ],
    )
    .await;
    // Cache liam once the replica has applied its own write's invalidation (which would otherwise
    // drop what a read overlapping it fetched).
    eventually("the write's invalidation is applied", Duration::from_secs(5), || async {
        server.status().await.entity_revision >= rev
    })
    .await;
    assert!(is_allow(&decide(&server, r#"User::"liam""#, view, doc, rev).await));

    redis.kill();
    let lost = Instant::now();
    // Uncached: mia was never read by this replica. Never a decision, never an Allow.
    let err = server.check(req(r#"User::"mia""#, view, doc)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // Cached within the bound: still answered (unless the loss took longer to notice than the bound).
    let cached = server.check(req(r#"User::"liam""#, view, doc)).await;
    if lost.elapsed() < Duration::from_secs(1) {
        assert!(is_allow(&cached.unwrap()));
    }
    // Past the bound the cached entry is not trusted either.
    eventually("cached entities expire after the staleness bound", Duration::from_secs(10), || async {
        server.check(req(r#"User::"liam""#, view, doc)).await.err().map(|e| e.code()) == Some(Code::Unavailable)
    })
    .await;
    // Writes fail too, and say nothing was written.
    let err = server
        .entities(None)
        .await
        .upsert_entities(pb::UpsertEntitiesRequest {
            entities: vec![entity(r#"User::"ned""#, json!({}), &[])],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    redis.restart();
    eventually("decisions recover once Redis is back", Duration::from_secs(15), || async {
        server.check(req(r#"User::"mia""#, view, doc)).await.is_ok_and(|r| is_allow(&r))
    })
    .await;
    // Invalidations flow again: a revocation is seen without min_revision.
    upsert(&server, vec![entity(r#"User::"mia""#, json!({}), &[])]).await;
    eventually("revocation after recovery", Duration::from_secs(5), || async {
        server.check(req(r#"User::"mia""#, view, doc)).await.is_ok_and(|r| !is_allow(&r))
    })
    .await;
}

/// Cedar's answer with every entity in one set, against the server's on Redis, cold and warm, over
/// a generated organisation: nested groups, managers, owners, teams, suspensions and bans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_on_redis_equal_cedar_on_the_whole_entity_set() {
    let redis = RedisServer::start();
    let server = start(Some(&redis)).await;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let groups = ["readers", "banned", "eng", "eng-core", "ops", "contractors"];
    let mut provisioned = vec![
        entity(r#"Group::"eng-core""#, json!({}), &[r#"Group::"eng""#]),
        entity(r#"Group::"eng""#, json!({}), &[r#"Group::"readers""#]),
        entity(r#"Group::"contractors""#, json!({}), &[r#"Group::"banned""#]),
        entity(r#"Group::"ops""#, json!({}), &[r#"Group::"staff""#]),
    ];
    let users: Vec<String> = (0..10).map(|i| format!(r#"User::"u{i}""#)).collect();
    for (i, user) in users.iter().enumerate() {
        let mut attrs = json!({});
        if next(3) == 0 {
            attrs["suspended"] = json!(next(2) == 0);
        }
        if i > 0 && next(2) == 0 {
            attrs["manager"] = json!({"__entity": {"type": "User", "id": format!("u{}", next(i as u64))}});
        }
        let parents: Vec<String> =
            (0..next(3)).map(|_| format!(r#"Group::"{}""#, groups[next(groups.len() as u64) as usize])).collect();
        let mut parents: Vec<&str> = parents.iter().map(String::as_str).collect();
        parents.sort_unstable();
        parents.dedup();
        provisioned.push(entity(user, attrs, &parents));
    }
    let mut docs = Vec::new();
    for i in 0..6 {
        let doc = format!(r#"Document::"d{i}""#);
        let mut attrs = json!({"owner": {"__entity": {"type": "User", "id": format!("u{}", next(12))}}});
        if next(2) == 0 {
            attrs["team"] = json!({"__entity": {"type": "Group", "id": groups[next(groups.len() as u64) as usize]}});
        }
        provisioned.push(entity(&doc, attrs, &[]));
        docs.push(doc);
    }
    upsert(&server, provisioned.clone()).await;

    // The whole set, as Cedar sees it: the files' entities plus every provisioned one.
    let dir = org();
    let schema =
        Schema::from_cedarschema_str(&std::fs::read_to_string(dir.join("org.cedarschema")).unwrap()).unwrap().0;
    let policies = PolicySet::from_str(&std::fs::read_to_string(dir.join("org.cedar")).unwrap()).unwrap();
    let mut all: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("entities.json")).unwrap()).unwrap();
    for e in &provisioned {
        let u = e.uid.as_ref().unwrap();
        let parents: Vec<_> = e.parents.iter().map(|p| json!({"type": p.r#type, "id": p.id})).collect();
        let attrs: serde_json::Value = serde_json::from_str(&e.attrs_json).unwrap();
        all.push(json!({"uid": {"type": u.r#type, "id": u.id}, "attrs": attrs, "parents": parents}));
    }
    let entities = Entities::from_json_value(serde_json::Value::Array(all), Some(&schema)).unwrap();
    let id_of = |pid: &cedar_policy::PolicyId| {
        policies.policy(pid).and_then(|p| p.annotation("id")).unwrap_or(pid.as_ref()).to_string()
    };

    let mut principals = users.clone();
    principals.extend([r#"User::"root""#.to_string(), r#"User::"ghost""#.to_string()]);
    let mut allowed = 0;
    for pass in ["cold", "warm"] {
        for p in &principals {
            for a in [r#"Action::"view""#, r#"Action::"edit""#] {
                for r in docs.iter().chain([&r#"Document::"missing""#.to_string()]) {
                    let request = Request::new(
                        EntityUid::from_str(p).unwrap(),
                        EntityUid::from_str(a).unwrap(),
                        EntityUid::from_str(r).unwrap(),
                        Context::empty(),
                        Some(&schema),
                    )
                    .unwrap();
                    let expected = Authorizer::new().is_authorized(&request, &policies, &entities);
                    let mut reasons: Vec<String> = expected.diagnostics().reason().map(id_of).collect();
                    reasons.sort();
                    let got = server.check(req(p, a, r)).await.unwrap();
                    let allow = expected.decision() == cedar_policy::Decision::Allow;
                    assert_eq!(is_allow(&got), allow, "{pass}: {p} {a} {r}");
                    assert_eq!(got.determining_policies, reasons, "{pass}: {p} {a} {r}");
                    assert_eq!(got.errors.len(), expected.diagnostics().errors().count(), "{pass}: {p} {a} {r}");
                    allowed += usize::from(allow);
                }
            }
        }
    }
    // The grid exercises both answers.
    assert!(allowed > 10 && allowed < 2 * principals.len() * 2 * 7 - 10, "allowed {allowed}");
}

/// One batch moves `pat` out of group `g` and `g` into `readers`; the next moves both back. In neither
/// state is `pat` in `readers`, so no decision read while the batches land may allow: a slice read
/// level by level must not combine `pat`'s old parents with `g`'s new ones.
async fn never_mixes_two_revisions(writer: &TestServer, reader: &TestServer) {
    let (pat, view, doc) = (r#"User::"pat""#, r#"Action::"view""#, r#"Document::"ledger""#);
    let ledger = entity(doc, json!({"owner": {"__entity": {"type": "User", "id": "nobody"}}}), &[]);
    let state = |in_group: bool| {
        vec![
            entity(pat, json!({}), if in_group { &[r#"Group::"g""#] } else { &[] }),
            entity(r#"Group::"g""#, json!({}), if in_group { &[] } else { &[r#"Group::"readers""#] }),
        ]
    };
    let mut batch = state(true);
    batch.push(ledger);
    upsert(writer, batch).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checks = {
        let (stop, client) = (stop.clone(), reader.client.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let answer = client.clone().check(req(pat, view, doc)).await;
                match answer {
                    Ok(r) => assert!(!is_allow(&r.into_inner()), "allowed on a mix of two revisions"),
                    // Entities that keep changing may fail closed; never allow.
                    Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
                }
                n += 1;
            }
            n
        })
    };
    for i in 0..300 {
        upsert(writer, state(i % 2 == 1)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let n = checks.await.unwrap();
    assert!(n > 10, "only {n} checks ran during the writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_never_mixes_two_revisions_on_redis() {
    let redis = RedisServer::start();
    never_mixes_two_revisions(&start(Some(&redis)).await, &start(Some(&redis)).await).await;
}

/// The embedded store's writer invalidates the cache itself: decisions on the same server, between
/// its commits, must not mix either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_never_mixes_two_revisions_embedded() {
    let server = start(None).await;
    never_mixes_two_revisions(&server, &server).await;
}

/// A key of the wrong type under the prefix (another tool's, say) fails the write before anything
/// is written: no revision, no entity, no audit entry.
#[tokio::test]
async fn a_redis_write_that_cannot_complete_writes_nothing() {
    let redis = RedisServer::start();
    let server = start(Some(&redis)).await;
    upsert(&server, vec![entity(r#"Group::"g""#, json!({}), &[])]).await;
    let revision = redis.command("GET cedar-pdp:rev");
    assert!(redis.command("SET cedar-pdp:t:User not-a-sorted-set").starts_with("+OK"));
    let mut client = server.entities(None).await;
    let batch = vec![entity(r#"Group::"h""#, json!({}), &[]), entity(r#"User::"quinn""#, json!({}), &[])];
    let err =
        client.upsert_entities(pb::UpsertEntitiesRequest { entities: batch, ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("cedar-pdp:t:User"), "{}", err.message());
    assert_eq!(redis.command("GET cedar-pdp:rev"), revision, "no revision taken");
    let keys = redis.command("KEYS cedar-pdp:e:*");
    assert!(keys.starts_with("*1\r\n") && keys.contains(r#"Group::"g""#), "{keys}");
    assert_eq!(redis.command("XLEN cedar-pdp:audit"), ":1\r\n");
}

#[tokio::test]
async fn a_write_that_would_close_a_parent_cycle_is_refused() {
    for redis in [None, Some(RedisServer::start())] {
        let server = start(redis.as_ref()).await;
        upsert(
            &server,
            vec![
                entity(r#"Group::"a""#, json!({}), &[r#"Group::"b""#]),
                entity(r#"Group::"b""#, json!({}), &[r#"Group::"c""#]),
            ],
        )
        .await;
        let mut client = server.entities(None).await;
        // c → a closes a → b → c → a, through the store.
        let closing =
            vec![entity(r#"Group::"x""#, json!({}), &[]), entity(r#"Group::"c""#, json!({}), &[r#"Group::"a""#])];
        let err = client
            .upsert_entities(pb::UpsertEntitiesRequest { entities: closing, ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("entities[1].parents") && err.message().contains("own ancestor"),
            "{}",
            err.message()
        );
        // Within one batch, and onto oneself.
        let within = vec![
            entity(r#"Group::"p""#, json!({}), &[r#"Group::"q""#]),
            entity(r#"Group::"q""#, json!({}), &[r#"Group::"p""#]),
        ];
        assert!(
            client.upsert_entities(pb::UpsertEntitiesRequest { entities: within, ..Default::default() }).await.is_err()
        );
        let own = vec![entity(r#"Group::"s""#, json!({}), &[r#"Group::"s""#])];
        assert!(
            client.upsert_entities(pb::UpsertEntitiesRequest { entities: own, ..Default::default() }).await.is_err()
        );
        // Through the files: `staff` (a file entity) is in `everyone`; `everyone` may not join `staff`.
        let through_files = vec![entity(r#"Group::"everyone""#, json!({}), &[r#"Group::"staff""#])];
        assert!(
            client
                .upsert_entities(pb::UpsertEntitiesRequest { entities: through_files, ..Default::default() })
                .await
                .is_err()
        );
        // A diamond is not a cycle.
        let diamond = vec![entity(r#"Group::"d""#, json!({}), &[r#"Group::"a""#, r#"Group::"b""#])];
        client.upsert_entities(pb::UpsertEntitiesRequest { entities: diamond, ..Default::default() }).await.unwrap();
    }
}

/// Records older than the retention go; the entities they describe stay.
async fn retention_scenario(server: &TestServer) {
    let mut client = server.entities(None).await;
    upsert(server, vec![entity(r#"User::"old""#, json!({}), &[])]).await;
    let records = || {
        let mut client = client.clone();
        async move { client.read_audit(pb::ReadAuditRequest::default()).await.unwrap().into_inner().records.len() }
    };
    assert_eq!(records().await, 1, "a fresh record is kept");
    eventually("the record past its retention is removed", Duration::from_secs(10), || async { records().await == 0 })
        .await;
    let kept = client.get_entity(pb::GetEntityRequest { uid: Some(uid(r#"User::"old""#)) }).await;
    assert!(kept.is_ok(), "retention removes records, not entities");
}

#[tokio::test]
async fn audit_retention_trims_the_embedded_trail() {
    let server = start_adjusted(None, |c| c.entities.audit_retention = Some(Duration::from_millis(400))).await;
    retention_scenario(&server).await;
}

#[tokio::test]
async fn audit_retention_trims_the_redis_trail() {
    let redis = RedisServer::start();
    let server = start_adjusted(Some(&redis), |c| c.entities.audit_retention = Some(Duration::from_millis(400))).await;
    retention_scenario(&server).await;
}

/// Redis restarted without the writes it acknowledged: the replica notices, says so, drops its cache,
/// and its next write does not reuse a revision a client may hold.
#[tokio::test]
async fn a_redis_that_lost_acknowledged_writes_is_detected_and_revisions_never_repeat() {
    let mut redis = RedisServer::start();
    let server = start(Some(&redis)).await;
    // The test Redis fsyncs every second: acknowledged writes can be lost, and status says so.
    eventually("the persistence warning", Duration::from_secs(10), || async {
        server.status().await.entity_store_warnings.iter().any(|w| w.contains("appendfsync is `everysec`"))
    })
    .await;
    let (alice, view, doc) = (r#"User::"alice""#, r#"Action::"view""#, r#"Document::"plan""#);
    let plan = entity(doc, json!({"owner": {"__entity": {"type": "User", "id": "bob"}}}), &[]);
    upsert(&server, vec![plan, entity(r#"User::"bob""#, json!({}), &[])]).await;
    let mut last = upsert(&server, vec![entity(alice, json!({}), &[r#"Group::"readers""#])]).await;
    assert!(is_allow(&decide(&server, alice, view, doc, last).await), "allowed, and now cached");
    for i in 0..3 {
        last = upsert(&server, vec![entity(&format!(r#"User::"w{i}""#), json!({}), &[])]).await;
    }
    redis.restart_empty();
    eventually("the regression alarm", Duration::from_secs(10), || async {
        let warnings = server.status().await.entity_store_warnings;
        warnings.iter().any(|w| w == &format!("acknowledged writes were lost: revision {last} → 0"))
    })
    .await;
    let next = upsert(&server, vec![entity(r#"User::"after""#, json!({}), &[])]).await;
    assert!(next > last, "the revision a client holds must not be issued again: {next} after {last}");
    // What was lost is gone from this replica's answers too: nothing cached survives.
    assert!(!is_allow(&decide(&server, alice, view, doc, next).await));
    let mut client = server.entities(None).await;
    let gone = client.get_entity(pb::GetEntityRequest { uid: Some(uid(r#"User::"w0""#)) }).await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound);
}

/// The audit records of one entity.
async fn history(server: &TestServer, of: &str) -> Vec<pb::AuditRecord> {
    let request = pb::ReadAuditRequest { uid: Some(uid(of)), ..Default::default() };
    server.entities(None).await.read_audit(request).await.unwrap().into_inner().records
}

/// The same request id twice writes once and answers with the first revision; on another batch it
/// is refused.
async fn idempotency_scenario(server: &TestServer) {
    let mut client = server.entities(None).await;
    let write = |id: &str, who: &str| pb::UpsertEntitiesRequest {
        entities: vec![entity(&format!(r#"User::"{who}""#), json!({}), &[])],
        request_id: id.into(),
    };
    let first = client.upsert_entities(write("sync-41", "kim")).await.unwrap().into_inner().revision;
    let again = client.upsert_entities(write("sync-41", "kim")).await.unwrap().into_inner().revision;
    assert_eq!(again, first);
    let other = client.upsert_entities(write("sync-41", "lee")).await.unwrap_err();
    assert_eq!(other.code(), Code::InvalidArgument);
    assert!(other.message().contains("`request_id` `sync-41` was already used"), "{other:?}");
    let bad = client.upsert_entities(write(&"x".repeat(200), "kim")).await.unwrap_err();
    assert!(bad.message().contains("`request_id`"), "{bad:?}");
    let trail = history(server, r#"User::"kim""#).await;
    assert_eq!(trail.len(), 1, "written once");
    assert_eq!(server.status().await.entity_revision, first);
}

#[tokio::test]
async fn a_request_id_makes_embedded_writes_retryable() {
    idempotency_scenario(&start(None).await).await;
}

#[tokio::test]
async fn a_request_id_makes_redis_writes_retryable() {
    let redis = RedisServer::start();
    idempotency_scenario(&start(Some(&redis)).await).await;
}

/// Redis stalls past the timeout with a write in flight: the answer says the outcome is unknown (it
/// was applied, once Redis went on), and the retry with the same id returns it without a second write.
#[tokio::test]
async fn a_write_whose_outcome_is_unknown_is_said_so_and_retried_safely() {
    let redis = RedisServer::start();
    let server = start_adjusted(Some(&redis), |c| c.entities.redis_timeout = Duration::from_millis(300)).await;
    let mut client = server.entities(None).await;
    let request = pb::UpsertEntitiesRequest {
        // No parents: nothing to read before the write itself goes out.
        entities: vec![entity(r#"User::"ola""#, json!({"suspended": false}), &[])],
        request_id: "hr-7".into(),
    };
    redis.pause();
    let pending = {
        let (mut client, request) = (client.clone(), request.clone());
        tokio::spawn(async move { client.upsert_entities(request).await })
    };
    let err = pending.await.unwrap().unwrap_err();
    redis.resume();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("outcome of this write is unknown"), "{err:?}");
    // Redis is answering again: the retry with the same id returns the first (applied) outcome.
    let revision = client.upsert_entities(request.clone()).await.unwrap().into_inner().revision;
    let trail = history(&server, r#"User::"ola""#).await;
    assert_eq!(trail.len(), 1, "applied once, though sent twice");
    assert_eq!(trail[0].revision, revision);
}

/// How long replica B, its link to Redis frozen, keeps allowing a user revoked through A: the time
/// from A's acknowledgement to B's last Allow (zero when B never allowed after it).
async fn stale_window(stale_for: Duration) -> Duration {
    let redis = RedisServer::start();
    let a = start(Some(&redis)).await;
    let proxy = common::proxy::FreezingProxy::start(([127, 0, 0, 1], redis.port).into()).await;
    let through_proxy = format!("redis://{}/", proxy.addr);
    let b = TestServer::start_with(&org(), move |c| {
        c.entities.redis_url = Some(through_proxy);
        c.entities.entity_stale_for = stale_for;
        c.entities.redis_timeout = Duration::from_millis(300);
    })
    .await;
    let (alice, view, doc) = (r#"User::"alice""#, r#"Action::"view""#, r#"Document::"plan""#);
    let plan = entity(doc, json!({"owner": {"__entity": {"type": "User", "id": "bob"}}}), &[]);
    upsert(&a, vec![plan, entity(r#"User::"bob""#, json!({}), &[])]).await;
    let granted = upsert(&a, vec![entity(alice, json!({}), &[r#"Group::"readers""#])]).await;
    // Steady state first: B has heard of every write so far, and its cache is warm.
    eventually("B saw the grant", Duration::from_secs(10), || async { b.status().await.entity_revision >= granted })
        .await;
    assert!(is_allow(&decide(&b, alice, view, doc, granted).await));
    assert!(is_allow(&decide(&b, alice, view, doc, 0).await), "B's cache is warm");

    proxy.freeze();
    upsert(&a, vec![entity(alice, json!({}), &[])]).await;
    let revoked = Instant::now();
    let mut last_allow = Duration::ZERO;
    let deadline = stale_for.max(Duration::from_secs(1)) + Duration::from_secs(2);
    while revoked.elapsed() < deadline {
        // An error (Redis unreachable) is fail-closed: not an Allow.
        if let Ok(answer) = b.check(req(alice, view, doc)).await
            && is_allow(&answer)
        {
            last_allow = revoked.elapsed();
        }
    }
    proxy.thaw();
    last_allow
}

/// The bound the README states: max(--entity-stale-for, ping interval 1 s + --redis-timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_link_serves_revoked_entities_no_longer_than_the_stated_bound() {
    let stale_for = Duration::from_secs(1);
    let window = stale_window(stale_for).await;
    let bound = stale_for.max(Duration::from_secs(1) + Duration::from_millis(300));
    println!("revoked user still allowed for {window:?} (bound {bound:?})");
    assert!(window <= bound + Duration::from_millis(250), "{window:?} > {bound:?}");
}

/// `--entity-stale-for 0s` never serves unconfirmed data: not one Allow after the revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_stale_for_zero_a_frozen_link_never_serves_a_revoked_entity() {
    let window = stale_window(Duration::ZERO).await;
    assert_eq!(window, Duration::ZERO, "allowed {window:?} after the revocation was acknowledged");
}
