//! SCIM 2.0 over real HTTP (reqwest) against the real server: the Okta and Entra ID flows as they
//! send them, deprovisioning seen by Check (also on a second replica sharing Redis), the errors an
//! IdP relies on, and SCIM and the EntityService keeping off each other's entities.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use cedar_pdp::grpc::pb;
use common::redis::RedisServer;
use common::*;
use serde_json::{Value, json};

const USER_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH_URN: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

struct Scim {
    server: TestServer,
    base: String,
    client: reqwest::Client,
    token: String,
}

struct Answer {
    status: u16,
    body: Value,
    etag: Option<String>,
    content_type: Option<String>,
}

impl Scim {
    async fn start(dir: &std::path::Path, redis: Option<&RedisServer>) -> Scim {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let url = redis.map(RedisServer::url);
        let server = TestServer::start_with(dir, |c| {
            c.http_listen = cedar_pdp::config::Listen(Some(addr));
            c.scim_tokens = vec![("okta".into(), "okta-secret".into()), ("entra".into(), "entra-secret".into())];
            c.entities.redis_url = url;
        })
        .await;
        Scim {
            server,
            base: format!("http://{addr}/scim/v2"),
            client: reqwest::Client::new(),
            token: "okta-secret".into(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>, headers: &[(&str, &str)]) -> Answer {
        let mut request = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/scim+json").body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_string());
        let (status, etag, content_type) = (response.status().as_u16(), header("etag"), header("content-type"));
        let text = response.text().await.unwrap();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Answer { status, body, etag, content_type }
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.call("POST", path, Some(body), &[]).await
    }

    async fn patch(&self, path: &str, operations: Value) -> Answer {
        self.call("PATCH", path, Some(json!({"schemas": [PATCH_URN], "Operations": operations})), &[]).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None, &[]).await
    }

    async fn allowed(&self, user: &str, action: &str, resource: &str) -> bool {
        let principal = format!("User::{}", json!(user));
        is_allow(&self.server.check(req(&principal, action, resource)).await.unwrap())
    }

    /// The provisioned Cedar entity, through the EntityService.
    async fn cedar(&self, uid_text: &str) -> Option<Value> {
        let mut client = self.server.entities(None).await;
        let found = client.get_entity(pb::GetEntityRequest { uid: Some(uid(uid_text)) }).await.ok()?;
        let entity = found.into_inner().entity.unwrap();
        Some(
            json!({"attrs": serde_json::from_str::<Value>(&entity.attrs_json).unwrap(), "parents": entity.parents.len()}),
        )
    }
}

fn example_with_engineers() -> tempfile::TempDir {
    let dir = copy_dir(&example_policies());
    std::fs::write(
        dir.path().join("engineers.cedar"),
        "@id(\"engineers-read-engineering\")\npermit (principal in Group::\"Engineers\", action in Action::\"read\", resource in Folder::\"engineering\");\n",
    )
    .unwrap();
    dir
}

const DOC: &str = r#"Document::"design-doc""#;
const VIEW: &str = r#"Action::"view""#;

#[tokio::test]
async fn okta_flow_provisions_deactivates_reactivates_and_renames() {
    let dir = example_with_engineers();
    let scim = Scim::start(dir.path(), None).await;
    // Create, as Okta sends it.
    let created = scim
        .post(
            "/Users",
            json!({"schemas": [USER_URN], "userName": "ann@example.com", "active": true,
            "name": {"givenName": "Ann", "familyName": "Lee"}, "displayName": "Ann Lee",
            "emails": [{"primary": true, "value": "ann@example.com", "type": "work"}], "password": "never-kept"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.content_type.as_deref(), Some("application/scim+json"));
    let id = created.body["id"].as_str().unwrap().to_string();
    assert!(created.body.get("password").is_none());
    assert_eq!(created.etag.as_deref(), created.body["meta"]["version"].as_str());
    assert!(created.body["meta"]["location"].as_str().unwrap().ends_with(&format!("/Users/{id}")));
    // Okta looks users up by userName, which is compared case-insensitively.
    let found = scim.get("/Users?filter=userName%20eq%20%22ANN@EXAMPLE.COM%22&startIndex=1&count=100").await;
    assert_eq!((found.status, found.body["totalResults"].clone()), (200, json!(1)), "{}", found.body);
    assert_eq!(found.body["Resources"][0]["id"], json!(id));
    let none = scim.get("/Users?filter=userName%20eq%20%22nobody%22").await;
    assert_eq!((none.status, none.body["totalResults"].clone()), (200, json!(0)));
    // Group push with members: Check now allows through the group.
    assert!(!scim.allowed("ann@example.com", VIEW, DOC).await);
    let group = scim
        .post("/Groups", json!({"schemas": [GROUP_URN], "displayName": "Engineers", "members": [{"value": id}]}))
        .await;
    assert_eq!(group.status, 201, "{}", group.body);
    let gid = group.body["id"].as_str().unwrap().to_string();
    assert!(scim.allowed("ann@example.com", VIEW, DOC).await);
    // Deactivation by PATCH (Okta OIN apps): denied at once, reads back active=false with its groups.
    let off = scim.patch(&format!("/Users/{id}"), json!([{"op": "replace", "value": {"active": false}}])).await;
    assert_eq!(off.status, 200, "{}", off.body);
    assert!(!scim.allowed("ann@example.com", VIEW, DOC).await);
    let read = scim.get(&format!("/Users/{id}")).await;
    assert_eq!((read.status, read.body["active"].clone()), (200, json!(false)));
    assert_eq!(read.body["groups"][0]["value"], json!(gid));
    assert_eq!(scim.cedar(r#"User::"ann@example.com""#).await.unwrap()["parents"], json!(0), "no group parents");
    // Reactivation restores the membership.
    scim.patch(&format!("/Users/{id}"), json!([{"op": "replace", "value": {"active": true}}])).await;
    assert!(scim.allowed("ann@example.com", VIEW, DOC).await);
    // Custom apps deactivate with PUT.
    let mut whole = read.body.clone();
    whole["active"] = json!(false);
    let put = scim.call("PUT", &format!("/Users/{id}"), Some(whole.clone()), &[]).await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert!(!scim.allowed("ann@example.com", VIEW, DOC).await);
    // A PUT that leaves `active` out, or a PATCH that removes it, unassigns it in SCIM (RFC 7644), but
    // never reactivates in Cedar: the user stays denied until `active: true` is sent.
    let mut without = whole.clone();
    without.as_object_mut().unwrap().remove("active");
    let kept = scim.call("PUT", &format!("/Users/{id}"), Some(without), &[]).await;
    assert_eq!((kept.status, kept.body.get("active")), (200, None), "{}", kept.body);
    assert!(!scim.allowed("ann@example.com", VIEW, DOC).await);
    let entity = scim.cedar(r#"User::"ann@example.com""#).await.unwrap();
    assert_eq!((entity["attrs"]["suspended"].clone(), entity["parents"].clone()), (json!(true), json!(0)), "{entity}");
    scim.patch(&format!("/Users/{id}"), json!([{"op": "replace", "path": "active", "value": false}])).await;
    let removed = scim.patch(&format!("/Users/{id}"), json!([{"op": "remove", "path": "active"}])).await;
    assert_eq!((removed.status, removed.body.get("active")), (200, None), "{}", removed.body);
    assert!(!scim.allowed("ann@example.com", VIEW, DOC).await);
    whole["active"] = json!(true);
    scim.call("PUT", &format!("/Users/{id}"), Some(whole), &[]).await;
    assert!(scim.allowed("ann@example.com", VIEW, DOC).await);
    // Okta's group rename sends the read-only id too: ignored. The permit names the old group.
    let renamed = scim
        .patch(
            &format!("/Groups/{gid}"),
            json!([{"op": "replace", "value": {"id": gid, "displayName": "Platform Engineers"}}]),
        )
        .await;
    assert_eq!(
        (renamed.status, renamed.body["displayName"].clone()),
        (200, json!("Platform Engineers")),
        "{}",
        renamed.body
    );
    assert!(!scim.allowed("ann@example.com", VIEW, DOC).await);
    assert!(scim.cedar(r#"Group::"Engineers""#).await.is_none());
    assert_eq!(scim.cedar(r#"Group::"Platform Engineers""#).await.unwrap()["attrs"]["name"], "Platform Engineers");
    assert_eq!(scim.get(&format!("/Users/{id}")).await.body["groups"][0]["display"], "Platform Engineers");
    // The audit trail names the SCIM credential.
    let mut client = scim.server.entities(None).await;
    let audit = client
        .read_audit(pb::ReadAuditRequest { uid: Some(uid(r#"User::"ann@example.com""#)), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(audit.len() >= 5 && audit.iter().all(|r| r.actor == "scim:okta"), "{audit:?}");
}

#[tokio::test]
async fn entra_flow_with_its_quirks_and_a_hard_delete() {
    let scim = Scim::start(&fixture("scim"), None).await;
    let created = scim
        .post(
            "/Users",
            json!({"schemas": [USER_URN, "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
            "externalId": "0a21f0f2-8d2a", "userName": "Bo@contoso.com", "active": true, "roles": [],
            "meta": {"resourceType": "User"}, "displayName": "Bo",
            "emails": [{"primary": true, "type": "work", "value": "bo@contoso.com"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "R&D"}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_string();
    let found = scim.get("/Users?filter=externalId%20eq%20%220a21f0f2-8d2a%22").await;
    assert_eq!(found.body["totalResults"], json!(1), "{}", found.body);
    // Group create with Entra's extra schema URN, then members added as a value array with $ref null.
    let group = scim
        .post(
            "/Groups",
            json!({"schemas": [GROUP_URN, "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
            "externalId": "g-ext", "displayName": "Engineers", "members": []}),
        )
        .await;
    assert_eq!(group.status, 201, "{}", group.body);
    let gid = group.body["id"].as_str().unwrap().to_string();
    let added = scim
        .patch(
            &format!("/Groups/{gid}"),
            json!([{"op": "Add", "path": "members", "value": [{"$ref": null, "value": id}]}]),
        )
        .await;
    assert_eq!(added.status, 200, "{}", added.body);
    assert!(scim.allowed("Bo@contoso.com", VIEW, r#"Document::"any""#).await);
    let member =
        scim.get(&format!("/Groups?filter=members%5Bvalue%20eq%20%22{id}%22%5D&excludedAttributes=members")).await;
    assert_eq!(member.body["totalResults"], json!(1), "{}", member.body);
    assert!(member.body["Resources"][0].get("members").is_none());
    // Deactivation as Entra sends it: capitalised op, a string boolean. No policy reads `active`.
    let off = scim.patch(&format!("/Users/{id}"), json!([{"op": "Replace", "path": "active", "value": "False"}])).await;
    assert_eq!((off.status, off.body["active"].clone()), (200, json!(false)), "{}", off.body);
    assert!(!scim.allowed("Bo@contoso.com", VIEW, r#"Document::"any""#).await);
    let on = scim.patch(&format!("/Users/{id}"), json!([{"op": "Replace", "path": "active", "value": "True"}])).await;
    assert_eq!(on.status, 200);
    assert!(scim.allowed("Bo@contoso.com", VIEW, r#"Document::"any""#).await);
    // Member removal by value array, then by filter after re-adding.
    scim.patch(&format!("/Groups/{gid}"), json!([{"op": "Remove", "path": "members", "value": [{"value": id}]}])).await;
    assert!(!scim.allowed("Bo@contoso.com", VIEW, r#"Document::"any""#).await);
    scim.patch(&format!("/Groups/{gid}"), json!([{"op": "add", "path": "members", "value": [{"value": id}]}])).await;
    assert!(scim.allowed("Bo@contoso.com", VIEW, r#"Document::"any""#).await);
    let removed = scim
        .patch(&format!("/Groups/{gid}"), json!([{"op": "remove", "path": format!("members[value eq \"{id}\"]")}]))
        .await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert!(!scim.allowed("Bo@contoso.com", VIEW, r#"Document::"any""#).await);
    // Cedar attributes by the default mapping.
    let entity = scim.cedar(r#"User::"Bo@contoso.com""#).await.unwrap();
    assert_eq!(
        entity["attrs"],
        json!({"userName": "Bo@contoso.com", "active": true, "displayName": "Bo", "email": "bo@contoso.com"})
    );
    // Hard delete: the user, its entity and its memberships go.
    scim.patch(&format!("/Groups/{gid}"), json!([{"op": "add", "path": "members", "value": [{"value": id}]}])).await;
    let gone = scim.call("DELETE", &format!("/Users/{id}"), None, &[]).await;
    assert_eq!(gone.status, 204);
    assert_eq!(scim.get(&format!("/Users/{id}")).await.status, 404);
    assert!(scim.cedar(r#"User::"Bo@contoso.com""#).await.is_none());
    assert!(scim.get(&format!("/Groups/{gid}")).await.body.get("members").is_none());
    assert!(!scim.allowed("Bo@contoso.com", VIEW, r#"Document::"any""#).await);
}

#[tokio::test]
async fn errors_an_idp_relies_on() {
    let mut scim = Scim::start(&fixture("scim"), None).await;
    let user = json!({"schemas": [USER_URN], "userName": "cy@example.com"});
    let created = scim.post("/Users", user.clone()).await;
    let id = created.body["id"].as_str().unwrap().to_string();
    let error = |a: &Answer, status: u16, scim_type: Option<&str>| {
        assert_eq!(a.status, status, "{}", a.body);
        assert_eq!(a.body["schemas"], json!(["urn:ietf:params:scim:api:messages:2.0:Error"]), "{}", a.body);
        assert_eq!(a.body["status"], json!(status.to_string()));
        assert_eq!(a.body["scimType"].as_str(), scim_type, "{}", a.body);
    };
    error(&scim.post("/Users", json!({"userName": "CY@example.com"})).await, 409, Some("uniqueness"));
    error(&scim.post("/Users", json!({"displayName": "no userName"})).await, 400, Some("invalidValue"));
    error(&scim.post("/Users", json!({"userName": "x", "active": "maybe"})).await, 400, Some("invalidValue"));
    error(&scim.call("POST", "/Users", None, &[]).await, 400, Some("invalidSyntax"));
    error(&scim.get("/Users?filter=userName%20equals%20%22x%22").await, 400, Some("invalidFilter"));
    error(&scim.get("/Users?filter=favouriteColour%20eq%20%22red%22").await, 400, Some("invalidFilter"));
    error(&scim.get("/Users?count=many").await, 400, Some("invalidValue"));
    error(&scim.get("/Users/no-such-id").await, 404, None);
    error(
        &scim.patch(&format!("/Users/{id}"), json!([{"op": "remove", "path": "emails[type eq \"home\"]"}])).await,
        400,
        Some("noTarget"),
    );
    error(
        &scim.patch(&format!("/Users/{id}"), json!([{"op": "replace", "path": "id", "value": "x"}])).await,
        400,
        Some("mutability"),
    );
    // ETags: a stale If-Match is refused, the current one accepted.
    let stale = created.etag.clone().unwrap();
    let now =
        scim.patch(&format!("/Users/{id}"), json!([{"op": "replace", "path": "displayName", "value": "Cy"}])).await;
    assert_ne!(now.etag, Some(stale.clone()));
    let path = format!("/Users/{id}");
    error(&scim.call("PUT", &path, Some(user.clone()), &[("if-match", &stale)]).await, 412, None);
    let current = now.etag.clone().unwrap();
    assert_eq!(scim.call("PUT", &path, Some(user.clone()), &[("if-match", &current)]).await.status, 200);
    // Oversized bodies.
    let huge = json!({"userName": "big", "displayName": "x".repeat(2 << 20)});
    error(&scim.post("/Users", huge).await, 413, None);
    // Unicode names: the lookup agrees with the uniqueness check.
    scim.post("/Users", json!({"userName": "Élise@example.com"})).await;
    let found = scim.get("/Users?filter=userName%20eq%20%22%C3%A9lise@example.com%22").await;
    assert_eq!(found.body["totalResults"], json!(1), "{}", found.body);
    error(&scim.post("/Users", json!({"userName": "élise@EXAMPLE.com"})).await, 409, Some("uniqueness"));
    // Group cycles are refused.
    let outer = scim.post("/Groups", json!({"displayName": "Outer"})).await.body["id"].as_str().unwrap().to_string();
    let inner = scim.post("/Groups", json!({"displayName": "Inner"})).await.body["id"].as_str().unwrap().to_string();
    let nest = |member: &str| json!([{"op": "add", "path": "members", "value": [{"value": member}]}]);
    assert_eq!(scim.patch(&format!("/Groups/{outer}"), nest(&inner)).await.status, 200);
    error(&scim.patch(&format!("/Groups/{inner}"), nest(&outer)).await, 400, Some("invalidValue"));
    error(&scim.patch(&format!("/Groups/{inner}"), nest(&inner)).await, 400, Some("invalidValue"));
    // A hostile filter is refused, and the server lives on.
    let deep = format!("{}userName pr{}", "(".repeat(3000), ")".repeat(3000));
    let answer = scim
        .client
        .get(format!("{}/Users", scim.base))
        .query(&[("filter", deep)])
        .header("authorization", "Bearer okta-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 400);
    assert_eq!(scim.get(&format!("/Users/{id}")).await.status, 200);
    // Pagination: 1-based, stable, integer counts.
    for n in 0..4 {
        scim.post("/Users", json!({"userName": format!("page{n}@example.com")})).await;
    }
    let first = scim.get("/Users?startIndex=1&count=2").await.body;
    let second = scim.get("/Users?startIndex=3&count=2").await.body;
    assert_eq!(
        (first["totalResults"].clone(), first["itemsPerPage"].clone(), second["startIndex"].clone()),
        (json!(6), json!(2), json!(3))
    );
    let ids: Vec<&Value> =
        [&first, &second].iter().flat_map(|p| p["Resources"].as_array().unwrap()).map(|r| &r["id"]).collect();
    let unique: std::collections::BTreeSet<String> = ids.iter().map(|v| v.to_string()).collect();
    assert_eq!(unique.len(), 4, "{ids:?}");
    // Credentials: Okta's header mode sends the bare token; a wrong or missing one is a 401.
    scim.token = "entra-secret".into();
    let bare = scim
        .client
        .get(format!("{}/Users/{id}", scim.base))
        .header("authorization", "okta-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status().as_u16(), 200);
    for header in [None, Some("Bearer wrong"), Some("wrong")] {
        let mut request = scim.client.get(format!("{}/Users", scim.base));
        if let Some(h) = header {
            request = request.header("authorization", h);
        }
        assert_eq!(request.send().await.unwrap().status().as_u16(), 401, "{header:?}");
    }
    // SCIM's entities are SCIM's: the EntityService may not overwrite them, and SCIM will not take
    // a uid the EntityService wrote.
    let mut client = scim.server.entities(None).await;
    let overwrite = pb::UpsertEntitiesRequest {
        entities: vec![entity(r#"User::"cy@example.com""#, json!({}), &[])],
        ..Default::default()
    };
    let refused = client.upsert_entities(overwrite).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    let state = pb::UpsertEntitiesRequest {
        entities: vec![entity(&format!(r#"CedarPdp::Scim::User::"{id}""#), json!({}), &[])],
        ..Default::default()
    };
    assert_eq!(client.upsert_entities(state).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let theirs = pb::UpsertEntitiesRequest {
        entities: vec![entity(r#"User::"dee@example.com""#, json!({}), &[])],
        ..Default::default()
    };
    client.upsert_entities(theirs).await.unwrap();
    error(&scim.post("/Users", json!({"userName": "dee@example.com"})).await, 409, Some("uniqueness"));
}

#[tokio::test]
async fn without_a_scim_token_scim_is_off() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _server =
        TestServer::start_with(&fixture("scim"), |c| c.http_listen = cedar_pdp::config::Listen(Some(addr))).await;
    let answer = reqwest::Client::new()
        .get(format!("http://{addr}/scim/v2/Users"))
        .header("authorization", "Bearer anything")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 401);
    assert!(answer.text().await.unwrap().contains("--scim-token"));
}

#[tokio::test]
async fn deactivation_reaches_a_second_replica_on_shared_redis() {
    let redis = RedisServer::start();
    let a = Scim::start(&fixture("scim"), Some(&redis)).await;
    let b = Scim::start(&fixture("scim"), Some(&redis)).await;
    let user = a.post("/Users", json!({"userName": "eve@example.com"})).await;
    let id = user.body["id"].as_str().unwrap().to_string();
    a.post("/Groups", json!({"displayName": "Engineers", "members": [{"value": id}]})).await;
    // SCIM's entity is SCIM's on Redis too (the guard is checked in the write script).
    let mut client = b.server.entities(None).await;
    let overwrite = pb::UpsertEntitiesRequest {
        entities: vec![entity(r#"User::"eve@example.com""#, json!({}), &[])],
        ..Default::default()
    };
    let refused = client.upsert_entities(overwrite).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("provisioned through SCIM"), "{refused:?}");
    // B serves the same SCIM view and decides on the same entities.
    assert_eq!(b.get(&format!("/Users/{id}")).await.body["groups"][0]["display"], "Engineers");
    assert!(b.allowed("eve@example.com", VIEW, r#"Document::"any""#).await, "B's cache now holds eve");
    a.patch(&format!("/Users/{id}"), json!([{"op": "replace", "path": "active", "value": false}])).await;
    eventually("B denies the deactivated user", Duration::from_secs(2), || async {
        !b.allowed("eve@example.com", VIEW, r#"Document::"any""#).await
    })
    .await;
    // Concurrent writes through both replicas: none is lost.
    let path = format!("/Users/{id}");
    let (x, y) = tokio::join!(
        a.patch(&path, json!([{"op": "add", "path": "title", "value": "Engineer"}])),
        b.patch(&path, json!([{"op": "add", "path": "nickName", "value": "Evie"}])),
    );
    assert_eq!((x.status, y.status), (200, 200), "{} {}", x.body, y.body);
    let both = a.get(&format!("/Users/{id}")).await.body;
    assert_eq!((both["title"].clone(), both["nickName"].clone()), (json!("Engineer"), json!("Evie")), "{both}");
    // Many members added to one group at once through both replicas, as an IdP pushes them: every
    // one lands (conflicting writes are redone, never lost).
    let group = a.post("/Groups", json!({"displayName": "Busy"})).await.body["id"].as_str().unwrap().to_string();
    let mut users = Vec::new();
    for n in 0..12 {
        users.push(
            a.post("/Users", json!({"userName": format!("busy{n}@example.com")})).await.body["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let group_path = format!("/Groups/{group}");
    let mut adds = tokio::task::JoinSet::new();
    for (n, user) in users.iter().enumerate() {
        let replica = if n % 2 == 0 { &a } else { &b };
        let request = replica
            .client
            .patch(format!("{}{group_path}", replica.base))
            .header("authorization", format!("Bearer {}", replica.token))
            .header("content-type", "application/scim+json")
            .body(json!({"schemas": [PATCH_URN], "Operations": [{"op": "add", "path": "members", "value": [{"value": user}]}]}).to_string());
        adds.spawn(async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        });
    }
    while let Some(done) = adds.join_next().await {
        let (status, text) = done.unwrap();
        assert_eq!(status, 200, "{text}");
    }
    let members = b.get(&group_path).await.body["members"].as_array().unwrap().len();
    assert_eq!(members, 12);
    for user in &users {
        assert_eq!(b.get(&format!("/Users/{user}")).await.body["groups"][0]["value"], json!(group));
    }
}

#[tokio::test]
async fn the_enterprise_manager_maps_to_an_entity_reference() {
    let dir = copy_dir(&fixture("scim"));
    std::fs::write(
        dir.path().join("scim.toml"),
        "[user.attributes]\nuserName = \"userName\"\ndepartment = \"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department\"\nmanager = \"&urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("approve.cedar"),
        "permit (principal, action == Action::\"approve\", resource is User) when { resource has manager && resource.manager == principal };\n",
    )
    .unwrap();
    let scim = Scim::start(dir.path(), None).await;
    let boss =
        scim.post("/Users", json!({"userName": "boss@example.com"})).await.body["id"].as_str().unwrap().to_string();
    let report =
        scim.post("/Users", json!({"userName": "report@example.com"})).await.body["id"].as_str().unwrap().to_string();
    let approve =
        |who: &str| req(&format!("User::{}", json!(who)), r#"Action::"approve""#, r#"User::"report@example.com""#);
    assert!(!is_allow(&scim.server.check(approve("boss@example.com")).await.unwrap()));
    // Entra sends the manager as the bare id.
    let set = scim
        .patch(&format!("/Users/{report}"), json!([{"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", "value": boss}]))
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert!(is_allow(&scim.server.check(approve("boss@example.com")).await.unwrap()));
    assert!(!is_allow(&scim.server.check(approve("report@example.com")).await.unwrap()));
    let entity = scim.cedar(r#"User::"report@example.com""#).await.unwrap();
    assert_eq!(entity["attrs"]["manager"], json!({"__entity": {"type": "User", "id": "boss@example.com"}}), "{entity}");
}
