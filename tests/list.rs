//! ListResources and ListPrincipals (and the AuthZEN searches over them) list exactly what Check
//! allows: proved against brute force — Check over every candidate — on generated data with nested
//! groups and folders, attribute conditions, forbids, template links and evaluation errors, on
//! every entity store; pages complete across the candidate limit; a reload invalidates old pages;
//! a deadline is an error, never a short list.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use cedar_pdp::config::{ServeConfig, StoreChoice};
use cedar_pdp::grpc::pb;
use common::redis::RedisServer;
use common::{TestServer, entity, eventually, is_allow, req, uid, write_atomic};
use redb::ReadableTable;
use serde_json::json;
use tonic::Code;

const POLICIES: &str = r#"
@id("team-folder")
permit(principal in Group::"eng", action in [Action::"view", Action::"share"], resource in Folder::"eng");
@id("owner")
permit(principal, action in [Action::"view", Action::"edit"], resource)
  when { resource has owner && resource.owner == principal };
@id("secret")
forbid(principal, action, resource)
  when { resource has secret && resource.secret } unless { principal in Group::"cleared" };
@id("level")
permit(principal, action == Action::"view", resource) when { resource.level > 3 };
@id("grant")
permit(principal == ?principal, action == Action::"share", resource in ?resource);
@id("auditors")
permit(principal in Group::"audit", action == Action::"audit", resource);
"#;

/// A small deterministic generator (no dependency): the same data on every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

const USERS: u64 = 12;
const DOCS: u64 = 160;

/// The policy directory: policies, a template link, and some entities in the files (which win
/// over stored ones with the same uid).
fn policy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policies.cedar"), POLICIES).unwrap();
    let links = json!([{ "template_id": "grant", "link_id": "grant-u3-f2",
                         "args": { "?principal": "User::\"u3\"", "?resource": "Folder::\"f2\"" } }]);
    std::fs::write(dir.path().join("links.json"), links.to_string()).unwrap();
    let files = json!([
        { "uid": {"type": "Folder", "id": "eng"}, "attrs": {}, "parents": [] },
        { "uid": {"type": "Group", "id": "eng"}, "attrs": {}, "parents": [{"type": "Group", "id": "staff"}] },
        { "uid": {"type": "Document", "id": "file-doc"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "u1"}}},
          "parents": [{"type": "Folder", "id": "eng"}] },
        // In the files, under a stored folder: its ancestors come from both.
        { "uid": {"type": "Document", "id": "file-doc2"}, "attrs": {}, "parents": [{"type": "Folder", "id": "f5"}] },
    ]);
    std::fs::write(dir.path().join("entities.json"), files.to_string()).unwrap();
    dir
}

/// Users in nested groups, folders nested under `eng`, documents with owners, secrets and levels.
fn generated() -> Vec<pb::Entity> {
    let mut rng = Lcg(7);
    let mut out = Vec::new();
    let groups = ["eng", "g0", "g1", "g2", "cleared", "audit"];
    // g0 in eng, g1 in g0, g2 in g1: membership three levels deep.
    out.push(entity(r#"Group::"g0""#, json!({}), &[r#"Group::"eng""#]));
    out.push(entity(r#"Group::"g1""#, json!({}), &[r#"Group::"g0""#]));
    out.push(entity(r#"Group::"g2""#, json!({}), &[r#"Group::"g1""#]));
    for u in 0..USERS {
        let group = format!(r#"Group::"{}""#, groups[rng.below(groups.len() as u64) as usize]);
        out.push(entity(&format!(r#"User::"u{u}""#), json!({}), &[&group]));
    }
    for f in 0..8 {
        let parent = if f < 3 { r#"Folder::"eng""#.to_string() } else { format!(r#"Folder::"f{}""#, rng.below(3)) };
        out.push(entity(&format!(r#"Folder::"f{f}""#), json!({}), &[&parent]));
    }
    for d in 0..DOCS {
        let mut attrs = serde_json::Map::new();
        if rng.below(3) == 0 {
            attrs.insert("owner".into(), json!({"__entity": {"type": "User", "id": format!("u{}", rng.below(USERS))}}));
        }
        if rng.below(5) == 0 {
            attrs.insert("secret".into(), json!(true));
        }
        // Documents without `level` make the `level` policy error: an error is never an allow.
        if rng.below(4) == 0 {
            attrs.insert("level".into(), json!(rng.below(6)));
        }
        let parent = format!(r#"Folder::"f{}""#, rng.below(8));
        out.push(entity(&format!(r#"Document::"d{d}""#), serde_json::Value::Object(attrs), &[&parent]));
    }
    out
}

async fn start(
    store: Option<&RedisServer>,
    choice: Option<StoreChoice>,
    dir: &Path,
    max_candidates: u64,
) -> TestServer {
    let url = store.map(RedisServer::url);
    let server = TestServer::start_with(dir, move |c: &mut ServeConfig| {
        c.entities.redis_url = url;
        c.entities.store = choice;
        c.max_list_candidates = max_candidates;
    })
    .await;
    let mut client = server.entities(None).await;
    let entities = generated();
    for chunk in entities.chunks(100) {
        let request = pb::UpsertEntitiesRequest { entities: chunk.to_vec(), ..Default::default() };
        client.upsert_entities(request).await.unwrap();
    }
    server
}

fn doc_ids() -> Vec<String> {
    let mut ids: Vec<String> = (0..DOCS).map(|d| format!("d{d}")).collect();
    ids.push("file-doc".into());
    ids.push("file-doc2".into());
    ids
}

/// Every page of a ListResources, `page_size` at a time; every token leads on until "".
async fn list_resources_all(server: &TestServer, user: &str, action: &str, page_size: u32) -> BTreeSet<String> {
    let mut client = server.client.clone();
    let (mut listed, mut token, mut pages) = (BTreeSet::new(), String::new(), 0);
    loop {
        let request = pb::ListResourcesRequest {
            principal: Some(uid(&format!(r#"User::"{user}""#))),
            action: Some(uid(&format!(r#"Action::"{action}""#))),
            resource_type: "Document".into(),
            page_size,
            page_token: token,
            ..Default::default()
        };
        let page = client.list_resources(request).await.unwrap().into_inner();
        assert!(page.uids.len() <= page_size as usize, "{page:?}");
        for u in page.uids {
            assert_eq!(u.r#type, "Document");
            assert!(listed.insert(u.id.clone()), "{} listed twice", u.id);
        }
        pages += 1;
        assert!(pages < 1000, "pages never end");
        if page.next_page_token.is_empty() {
            return listed;
        }
        token = page.next_page_token;
    }
}

async fn allowed_by_check(server: &TestServer, user: &str, action: &str) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    for doc in doc_ids() {
        let check =
            req(&format!(r#"User::"{user}""#), &format!(r#"Action::"{action}""#), &format!(r#"Document::"{doc}""#));
        if is_allow(&server.check(check).await.unwrap()) {
            allowed.insert(doc);
        }
    }
    allowed
}

async fn assert_exact(server: &TestServer, page_size: u32) {
    let mut listed_any = 0;
    for u in 0..USERS {
        let user = format!("u{u}");
        // `share` is pruned by scope (its permits name folders); the others decide every candidate.
        for action in ["view", "edit", "share", "audit"] {
            let listed = list_resources_all(server, &user, action, page_size).await;
            let allowed = allowed_by_check(server, &user, action).await;
            assert_eq!(listed, allowed, "{user} {action}");
            listed_any += listed.len();
        }
    }
    // The data allows a fair share, and denies one too: the comparison means something.
    let total = (USERS * 4) as usize * doc_ids().len();
    assert!(listed_any > 50 && listed_any < total, "{listed_any} of {total}");
    // Principals: who may view each of a sample of documents, against Check for every user.
    let mut client = server.client.clone();
    for doc in ["d0", "d7", "d33", "d100", "file-doc", "file-doc2"] {
        let request = pb::ListPrincipalsRequest {
            principal_type: "User".into(),
            action: Some(uid(r#"Action::"view""#)),
            resource: Some(uid(&format!(r#"Document::"{doc}""#))),
            page_size: 1000,
            ..Default::default()
        };
        let page = client.list_principals(request).await.unwrap().into_inner();
        assert!(page.next_page_token.is_empty() || page_size < 1000);
        let mut listed: BTreeSet<String> = page.uids.into_iter().map(|u| u.id).collect();
        let mut token = page.next_page_token;
        while !token.is_empty() {
            let request = pb::ListPrincipalsRequest {
                principal_type: "User".into(),
                action: Some(uid(r#"Action::"view""#)),
                resource: Some(uid(&format!(r#"Document::"{doc}""#))),
                page_token: token,
                ..Default::default()
            };
            let page = client.list_principals(request).await.unwrap().into_inner();
            listed.extend(page.uids.into_iter().map(|u| u.id));
            token = page.next_page_token;
        }
        let mut allowed = BTreeSet::new();
        for u in 0..USERS {
            let check = req(&format!(r#"User::"u{u}""#), r#"Action::"view""#, &format!(r#"Document::"{doc}""#));
            if is_allow(&server.check(check).await.unwrap()) {
                allowed.insert(format!("u{u}"));
            }
        }
        assert_eq!(listed, allowed, "who may view {doc}");
    }
}

#[tokio::test]
async fn listings_equal_brute_force_on_the_embedded_store() {
    let dir = policy_dir();
    let server = start(None, None, dir.path(), 10_000).await;
    assert_exact(&server, 7).await;
}

#[tokio::test]
async fn listings_equal_brute_force_in_memory_with_a_small_candidate_limit() {
    let dir = policy_dir();
    // 13 candidates a call: most pages end short, with a token; the whole is still exact.
    let server = start(None, Some(StoreChoice::Memory), dir.path(), 13).await;
    assert_exact(&server, 1000).await;
}

#[tokio::test]
async fn listings_equal_brute_force_on_redis() {
    let redis = RedisServer::start();
    let dir = policy_dir();
    let server = start(Some(&redis), None, dir.path(), 10_000).await;
    assert_exact(&server, 25).await;
}

#[tokio::test]
async fn a_page_token_from_before_a_reload_is_refused() {
    let dir = policy_dir();
    let server = start(None, Some(StoreChoice::Memory), dir.path(), 10_000).await;
    let mut client = server.client.clone();
    let request = |token: String| pb::ListResourcesRequest {
        principal: Some(uid(r#"User::"u3""#)),
        action: Some(uid(r#"Action::"view""#)),
        resource_type: "Document".into(),
        page_size: 1,
        page_token: token,
        ..Default::default()
    };
    let first = client.list_resources(request(String::new())).await.unwrap().into_inner();
    assert!(!first.next_page_token.is_empty(), "{first:?}");
    let before = server.status().await.policy_version;
    write_atomic(&dir.path().join("policies.cedar"), &format!("{POLICIES}\n// reloaded\n"));
    eventually("the reload", Duration::from_secs(10), || async { server.status().await.policy_version != before })
        .await;
    let refused = client.list_resources(request(first.next_page_token)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("page_token") && refused.message().contains("reloaded"), "{refused:?}");
    // A forged token is refused too.
    let forged = client.list_resources(request(format!("{}.zz", server.status().await.policy_version))).await;
    assert_eq!(forged.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_listing_past_its_deadline_fails_instead_of_answering_short() {
    let redis = RedisServer::start();
    let proxy = common::proxy::FreezingProxy::start(([127, 0, 0, 1], redis.port).into()).await;
    let dir = policy_dir();
    let through_proxy = format!("redis://{}/", proxy.addr);
    let server = TestServer::start_with(dir.path(), move |c: &mut ServeConfig| {
        c.entities.redis_url = Some(through_proxy);
        c.entities.redis_timeout = Duration::from_secs(5);
    })
    .await;
    let mut client = server.entities(None).await;
    client.upsert_entities(pb::UpsertEntitiesRequest { entities: generated(), ..Default::default() }).await.unwrap();
    let listing = || pb::ListResourcesRequest {
        principal: Some(uid(r#"User::"u0""#)),
        action: Some(uid(r#"Action::"view""#)),
        resource_type: "Document".into(),
        page_size: 1000,
        ..Default::default()
    };
    let mut authz = server.client.clone();
    // The store stalls: the listing cannot finish, and answers DEADLINE_EXCEEDED within the
    // caller's deadline (not the store's 5 s timeout, not a short list).
    proxy.freeze();
    let mut request = tonic::Request::new(listing());
    request.set_timeout(Duration::from_millis(400));
    let started = std::time::Instant::now();
    let status = authz.list_resources(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    proxy.thaw();
    // With the store back, the same listing completes.
    let page = authz.list_resources(listing()).await.unwrap().into_inner();
    assert!(page.next_page_token.is_empty(), "{page:?}");
}

#[tokio::test]
async fn bad_listings_name_their_field() {
    let dir = policy_dir();
    let server = start(None, Some(StoreChoice::Memory), dir.path(), 10_000).await;
    let mut client = server.client.clone();
    let base = || pb::ListResourcesRequest {
        principal: Some(uid(r#"User::"u0""#)),
        action: Some(uid(r#"Action::"view""#)),
        resource_type: "Document".into(),
        ..Default::default()
    };
    for (request, field) in [
        (pb::ListResourcesRequest { resource_type: "".into(), ..base() }, "resource_type"),
        (pb::ListResourcesRequest { resource_type: "Not a type".into(), ..base() }, "resource_type"),
        (pb::ListResourcesRequest { principal: None, ..base() }, "principal"),
        (pb::ListResourcesRequest { action: None, ..base() }, "action"),
        (pb::ListResourcesRequest { context_json: "[1]".into(), ..base() }, "context_json"),
        (pb::ListResourcesRequest { page_token: "nope".into(), ..base() }, "page_token"),
    ] {
        let status = client.list_resources(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{field}: {status:?}");
    }
    let status = client
        .list_principals(pb::ListPrincipalsRequest {
            principal_type: "".into(),
            action: Some(uid(r#"Action::"view""#)),
            resource: Some(uid(r#"Document::"d1""#)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(status.code() == Code::InvalidArgument && status.message().contains("principal_type"), "{status:?}");
}

/// Who may `share` each user's documents, against Check: the pruned listing, through the embedded
/// store's children index.
async fn assert_share_exact(server: &TestServer) {
    for u in 0..USERS {
        let user = format!("u{u}");
        let listed = list_resources_all(server, &user, "share", 9).await;
        assert_eq!(listed, allowed_by_check(server, &user, "share").await, "{user} share");
    }
}

/// Moves documents into and out of the `eng` tree, re-parents a folder and deletes some documents.
async fn move_and_delete(server: &TestServer) {
    let mut writer = server.entities(None).await;
    let moves: Vec<pb::Entity> = (0..40)
        .map(|d| {
            let to = if d % 2 == 0 { r#"Folder::"f6""# } else { r#"Folder::"f0""# };
            entity(&format!(r#"Document::"d{d}""#), json!({}), &[to])
        })
        .chain(std::iter::once(entity(r#"Folder::"f1""#, json!({}), &[])))
        .collect();
    writer.upsert_entities(pb::UpsertEntitiesRequest { entities: moves, ..Default::default() }).await.unwrap();
    let gone = (40..60).map(|d| uid(&format!(r#"Document::"d{d}""#))).collect();
    writer.delete_entities(pb::DeleteEntitiesRequest { uids: gone, ..Default::default() }).await.unwrap();
}

#[tokio::test]
async fn the_children_index_follows_moves_and_deletes_and_is_built_for_an_older_database() {
    let dir = policy_dir();
    let data = tempfile::tempdir().unwrap();
    let on = |c: &mut ServeConfig| c.entities.data_dir = data.path().join("data");
    let server = TestServer::start_with(dir.path(), on).await;
    let mut writer = server.entities(None).await;
    writer.upsert_entities(pb::UpsertEntitiesRequest { entities: generated(), ..Default::default() }).await.unwrap();
    assert_share_exact(&server).await;
    move_and_delete(&server).await;
    assert_share_exact(&server).await;
    server.stop().await.unwrap();

    // A database from before the index: no `children` table, no marker. Opening builds it.
    let file = data.path().join("data").join("entities.redb");
    {
        let db = redb::Database::open(&file).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let children: redb::TableDefinition<(&str, &str), ()> = redb::TableDefinition::new("children");
            assert!(txn.delete_table(children).unwrap(), "the index was there");
            let mut meta = txn.open_table(redb::TableDefinition::<&str, u64>::new("meta")).unwrap();
            meta.remove("children").unwrap();
        }
        txn.commit().unwrap();
    }
    let server = TestServer::start_with(dir.path(), on).await;
    assert_share_exact(&server).await;
    server.stop().await.unwrap();

    // An earlier version wrote since (no index entries): a document under `eng`, the revision moved.
    {
        let db = redb::Database::open(&file).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(redb::TableDefinition::<&str, u64>::new("meta")).unwrap();
            let revision = meta.get("revision").unwrap().unwrap().value() + 1;
            meta.insert("revision", revision).unwrap();
            let mut entities = txn.open_table(redb::TableDefinition::<&str, &[u8]>::new("entities")).unwrap();
            let stored = json!({"rev": revision, "entity": sneaky()}).to_string();
            entities.insert(r#"Document::"sneaky""#, stored.as_bytes()).unwrap();
        }
        txn.commit().unwrap();
    }
    let server = TestServer::start_with(dir.path(), on).await;
    assert_sneaky_listed(&server).await;
}

/// A document an earlier version wrote, under `eng`.
fn sneaky() -> serde_json::Value {
    json!({"uid": {"type": "Document", "id": "sneaky"}, "attrs": {}, "parents": [{"type": "Folder", "id": "f0"}]})
}

/// Whoever Check lets share `sneaky` finds it listed.
async fn assert_sneaky_listed(server: &TestServer) {
    let mut found = 0;
    for u in 0..USERS {
        let user = format!("u{u}");
        let check = req(&format!(r#"User::"{user}""#), r#"Action::"share""#, r#"Document::"sneaky""#);
        let allowed = is_allow(&server.check(check).await.unwrap());
        let listed = list_resources_all(server, &user, "share", 50).await.contains("sneaky");
        assert_eq!(listed, allowed, "{user}");
        found += usize::from(allowed);
    }
    assert!(found > 0, "someone may share it");
}

/// Redis's index keys: the marker that it is complete, and the `c:` sets.
fn redis_index(redis: &RedisServer) -> (Option<String>, usize) {
    let mut conn = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let marker: Option<String> = redis::cmd("GET").arg("cedar-pdp:children").query(&mut conn).unwrap();
    let sets: Vec<String> = redis::cmd("KEYS").arg("cedar-pdp:c:*").query(&mut conn).unwrap();
    (marker, sets.len())
}

#[tokio::test]
async fn the_redis_children_index_follows_moves_and_deletes_and_is_built_for_an_older_store() {
    let redis = RedisServer::start();
    let dir = policy_dir();
    let url = redis.url();
    let on = move |c: &mut ServeConfig| c.entities.redis_url = Some(url);
    let server = TestServer::start_with(dir.path(), on.clone()).await;
    eventually("the index marked complete", Duration::from_secs(10), || async { redis_index(&redis).0.is_some() })
        .await;
    let mut writer = server.entities(None).await;
    writer.upsert_entities(pb::UpsertEntitiesRequest { entities: generated(), ..Default::default() }).await.unwrap();
    assert!(redis_index(&redis).1 > 5, "the writes keep the index");
    assert_share_exact(&server).await;
    move_and_delete(&server).await;
    assert_share_exact(&server).await;
    server.stop().await.unwrap();

    // A store written before the index: no `c:`/`pa:` sets, no marker. A replica builds them.
    let mut conn = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    for pattern in ["cedar-pdp:c:*", "cedar-pdp:pa:*", "cedar-pdp:children"] {
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut conn).unwrap();
        for key in keys {
            let _: () = redis::cmd("DEL").arg(key).query(&mut conn).unwrap();
        }
    }
    assert_eq!(redis_index(&redis), (None, 0));
    let server = TestServer::start_with(dir.path(), on).await;
    eventually("the index rebuilt", Duration::from_secs(10), || async { redis_index(&redis).0.is_some() }).await;
    assert!(redis_index(&redis).1 > 5);
    assert_share_exact(&server).await;

    // A replica of an earlier version writes (entity, type index, audit; no index entries): the
    // index is no longer trusted, so the document is found by a scan, then indexed again.
    let marker_before = redis_index(&redis).0;
    let stored = json!({"rev": 1, "entity": sneaky()}).to_string();
    let _: () = redis::cmd("SET").arg(r#"cedar-pdp:e:Document::"sneaky""#).arg(stored).query(&mut conn).unwrap();
    let _: () =
        redis::cmd("ZADD").arg("cedar-pdp:t:Document").arg(0).arg(r#"Document::"sneaky""#).query(&mut conn).unwrap();
    let _: String = redis::cmd("XADD")
        .arg("cedar-pdp:audit")
        .arg("*")
        .arg("op")
        .arg("upsert")
        .arg("uid")
        .arg(r#"Document::"sneaky""#)
        .query(&mut conn)
        .unwrap();
    assert_sneaky_listed(&server).await;
    eventually("the index rebuilt after the earlier version's write", Duration::from_secs(20), || async {
        redis_index(&redis).0 != marker_before
    })
    .await;
    assert_sneaky_listed(&server).await;
}

/// An entity deleted between Redis's index read and its entity read leaves a chunk short: the
/// scan goes on from the index, never stopping early with the rest of the type unlisted.
#[tokio::test]
async fn a_short_chunk_on_redis_does_not_end_the_scan() {
    let redis = RedisServer::start();
    let dir = policy_dir();
    let url = redis.url();
    let server = TestServer::start_with(dir.path(), move |c: &mut ServeConfig| c.entities.redis_url = Some(url)).await;
    let mut writer = server.entities(None).await;
    let bulk: Vec<pb::Entity> =
        (0..600).map(|i| entity(&format!(r#"Document::"bulk{i:04}""#), json!({"level": 5}), &[])).collect();
    for chunk in bulk.chunks(200) {
        writer
            .upsert_entities(pb::UpsertEntitiesRequest { entities: chunk.to_vec(), ..Default::default() })
            .await
            .unwrap();
    }
    // As if deleted between the two reads: the entity key gone, its index entry still there.
    let mut conn = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    for i in [3, 100, 200] {
        let _: () = redis::cmd("DEL").arg(format!(r#"cedar-pdp:e:Document::"bulk{i:04}""#)).query(&mut conn).unwrap();
    }
    let listed = list_resources_all(&server, "u0", "view", 1000).await;
    let bulk_listed = listed.iter().filter(|id| id.starts_with("bulk")).count();
    assert_eq!(bulk_listed, 597, "every remaining document of the type is listed");
    // ListEntities pages on the same way.
    let (mut seen, mut token) = (0, String::new());
    loop {
        let request = pb::ListEntitiesRequest { r#type: "Document".into(), page_size: 256, page_token: token };
        let page = writer.list_entities(request).await.unwrap().into_inner();
        seen += page.entities.iter().filter(|e| e.uid.as_ref().is_some_and(|u| u.id.starts_with("bulk"))).count();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, 597);
}
