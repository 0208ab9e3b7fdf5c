//! The OpenID AuthZEN 1.0 access evaluation API over real HTTP (reqwest), against the same server's
//! gRPC Check on the same questions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};

struct Api {
    server: TestServer,
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn start(adjust: impl FnOnce(&mut cedar_pdp::config::ServeConfig)) -> Api {
        Api::start_in(&example_policies(), adjust).await
    }

    async fn start_in(dir: &std::path::Path, adjust: impl FnOnce(&mut cedar_pdp::config::ServeConfig)) -> Api {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let server = TestServer::start_with(dir, |c| {
            c.http_listen = cedar_pdp::config::Listen(Some(addr));
            adjust(c);
        })
        .await;
        Api { server, base: format!("http://{addr}"), client: reqwest::Client::new() }
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Value, Option<String>) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("x-request-id", "req-7")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let id = response.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_string());
        (status, serde_json::from_str(&response.text().await.unwrap()).unwrap(), id)
    }
}

fn evaluation(subject: &str, action: &str, resource: &str) -> Value {
    json!({"subject": {"type": "User", "id": subject}, "action": {"name": action},
           "resource": {"type": "Document", "id": resource}})
}

/// The gRPC Check's answer on the same question.
async fn grpc_allows(server: &TestServer, subject: &str, action: &str, resource: &str) -> bool {
    let r =
        req(&format!(r#"User::"{subject}""#), &format!(r#"Action::"{action}""#), &format!(r#"Document::"{resource}""#));
    is_allow(&server.check(r).await.unwrap())
}

#[tokio::test]
async fn evaluation_answers_as_the_grpc_check_does() {
    let api = Api::start(|_| {}).await;
    for (subject, action, resource) in [
        ("bob", "view", "handbook"),
        ("bob", "view", "design-doc"),
        ("alice", "edit", "design-doc"),
        ("dave", "view", "design-doc"),
        ("mallory", "view", "design-doc"),
    ] {
        let body = evaluation(subject, action, resource).to_string();
        let (status, answer, id) = api.post("/access/v1/evaluation", &body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(id.as_deref(), Some("req-7"), "X-Request-ID is echoed");
        let expected = grpc_allows(&api.server, subject, action, resource).await;
        assert_eq!(answer["decision"], Value::Bool(expected), "{subject} {action} {resource}: {answer}");
        assert!(answer["context"]["decision_id"].as_str().is_some_and(|d| !d.is_empty()));
    }
}

#[tokio::test]
async fn bad_requests_are_400s_naming_the_field() {
    let api = Api::start(|_| {}).await;
    for (body, field) in [
        (json!({"action": {"name": "view"}, "resource": {"type": "Document", "id": "x"}}).to_string(), "subject"),
        (json!({"subject": {"type": "User"}, "action": {"name": "view"}, "resource": {"type": "Document", "id": "x"}}).to_string(), "subject.id"),
        (json!({"subject": {"type": "User", "id": "bob"}, "action": {}, "resource": {"type": "Document", "id": "x"}}).to_string(), "action.name"),
        (json!({"subject": {"type": "User", "id": "bob"}, "action": {"name": "view"}, "resource": {"type": "Document", "id": "x"}, "context": 3}).to_string(), "context"),
        (json!({"subject": {"type": "Nope", "id": "bob"}, "action": {"name": "view"}, "resource": {"type": "Document", "id": "x"}}).to_string(), "subject"),
        (r#"{"subject": {"type": "User", "type": "Admin", "id": "bob"}}"#.to_string(), "duplicate key"),
        ("not json".to_string(), "not JSON"),
    ] {
        let (status, answer, _) = api.post("/access/v1/evaluation", &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(field), "{body}: {answer}");
    }
}

#[tokio::test]
async fn evaluations_use_defaults_and_the_three_semantics() {
    let api = Api::start(|_| {}).await;
    // bob: view handbook (allow), view design-doc (allow), edit design-doc (deny); an unknown type: deny with a reason.
    let body = |semantic: &str| {
        json!({
            "subject": {"type": "User", "id": "bob"},
            "action": {"name": "view"},
            "options": {"evaluations_semantic": semantic},
            "evaluations": [
                {"resource": {"type": "Document", "id": "handbook"}},
                {"action": {"name": "edit"}, "resource": {"type": "Document", "id": "design-doc"}},
                {"resource": {"type": "Nope", "id": "x"}},
                {"resource": {"type": "Document", "id": "design-doc"}}
            ]
        })
        .to_string()
    };
    let decisions = |answer: &Value| -> Vec<Value> {
        answer["evaluations"].as_array().unwrap().iter().map(|e| e["decision"].clone()).collect()
    };
    let expected_last = grpc_allows(&api.server, "bob", "view", "design-doc").await;
    let (status, all, id) = api.post("/access/v1/evaluations", &body("execute_all")).await;
    assert_eq!((status, id.as_deref()), (200, Some("req-7")), "{all}");
    assert_eq!(decisions(&all), [json!(true), json!(false), json!(false), json!(expected_last)]);
    assert!(all["evaluations"][2]["context"]["error"].as_str().unwrap().contains("evaluations[2].resource"), "{all}");
    let (_, deny_first, _) = api.post("/access/v1/evaluations", &body("deny_on_first_deny")).await;
    assert_eq!(decisions(&deny_first), [json!(true), json!(false)]);
    let (_, permit_first, _) = api.post("/access/v1/evaluations", &body("permit_on_first_permit")).await;
    assert_eq!(decisions(&permit_first), [json!(true)]);
    // No `evaluations`: one evaluation of the top-level request.
    let (status, single, _) =
        api.post("/access/v1/evaluations", &evaluation("bob", "view", "handbook").to_string()).await;
    assert_eq!((status, decisions(&single)), (200, vec![json!(true)]));
    let bad = json!({"options": {"evaluations_semantic": "sometimes"}}).to_string();
    assert_eq!(api.post("/access/v1/evaluations", &bad).await.0, 400);
}

#[tokio::test]
async fn properties_describe_entities_the_server_does_not_hold_and_cannot_override_those_it_does() {
    let api = Api::start(|_| {}).await;
    // A principal unknown to the files: its properties are its attributes for this request.
    let unknown = |suspended: bool| {
        json!({"subject": {"type": "User", "id": "visitor", "properties": {"name": "V", "suspended": suspended}},
               "action": {"name": "view"}, "resource": {"type": "Document", "id": "handbook"}})
        .to_string()
    };
    let (status, ok, _) = api.post("/access/v1/evaluation", &unknown(false)).await;
    assert_eq!((status, &ok["decision"]), (200, &json!(true)), "{ok}");
    let (_, suspended, _) = api.post("/access/v1/evaluation", &unknown(true)).await;
    assert_eq!(suspended["decision"], json!(false), "{suspended}");
    // dave is suspended in the files: properties cannot make him active.
    let override_ = json!({"subject": {"type": "User", "id": "dave", "properties": {"name": "D", "suspended": false}},
                           "action": {"name": "view"}, "resource": {"type": "Document", "id": "handbook"}})
    .to_string();
    let (status, refused, _) = api.post("/access/v1/evaluation", &override_).await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("subject.properties"), "{refused}");
}

#[tokio::test]
async fn metadata_and_credentials() {
    let api = Api::start(|c| c.http_tokens = vec![("pep".into(), "s3cret".into())]).await;
    let url = format!("{}/.well-known/authzen-configuration", api.base);
    let config: Value = serde_json::from_str(&api.client.get(url).send().await.unwrap().text().await.unwrap()).unwrap();
    assert!(config["access_evaluation_endpoint"].as_str().unwrap().ends_with("/access/v1/evaluation"), "{config}");
    assert!(config["access_evaluations_endpoint"].as_str().unwrap().ends_with("/access/v1/evaluations"), "{config}");
    // With a token configured, none or a wrong one is a 401; the right one gets decisions.
    let body = evaluation("bob", "view", "handbook").to_string();
    assert_eq!(api.post("/access/v1/evaluation", &body).await.0, 401);
    let send = |token: &str| {
        api.client
            .post(format!("{}/access/v1/evaluation", api.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    assert_eq!(send("guess").await.unwrap().status().as_u16(), 401);
    let ok: Value = serde_json::from_str(&send("s3cret").await.unwrap().text().await.unwrap()).unwrap();
    assert_eq!(ok["decision"], json!(true));
}

/// A store that cannot answer is a 503, never a decision.
#[tokio::test]
async fn a_store_outage_is_a_503() {
    let mut redis = common::redis::RedisServer::start();
    let url = redis.url();
    let api = Api::start(|c| {
        c.entities.redis_url = Some(url);
        c.entities.redis_timeout = std::time::Duration::from_millis(200);
        c.entities.entity_stale_for = std::time::Duration::ZERO;
    })
    .await;
    redis.kill();
    let (status, answer, _) =
        api.post("/access/v1/evaluation", &evaluation("newcomer", "view", "design-doc").to_string()).await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer.get("decision").is_none(), "{answer}");
}

#[tokio::test]
async fn search_action_pages_through_what_list_actions_lists() {
    let api = Api::start(|_| {}).await;
    let mut client = cedar_pdp::grpc::AuthorizationServiceClient::new(api.server.channel().await);
    let request = cedar_pdp::grpc::pb::ListActionsRequest {
        principal: Some(uid(r#"User::"alice""#)),
        resource: Some(uid(r#"Document::"design-doc""#)),
        ..Default::default()
    };
    let expected: Vec<String> =
        client.list_actions(request).await.unwrap().into_inner().actions.into_iter().map(|a| a.id).collect();
    assert!(expected.len() >= 2, "{expected:?}");
    // One action a page: every page's token leads to the next, the last one's is "".
    let (mut names, mut token) = (Vec::new(), String::new());
    loop {
        let body = json!({"subject": {"type": "User", "id": "alice"}, "resource": {"type": "Document", "id": "design-doc"},
                          "page": {"limit": 1, "token": token}});
        let (status, answer, _) = api.post("/access/v1/search/action", &body.to_string()).await;
        assert_eq!(status, 200, "{answer}");
        // `count` is this page's results, `total` every action listed.
        assert_eq!(answer["page"]["count"], json!(answer["results"].as_array().unwrap().len()));
        assert_eq!(answer["page"]["total"], json!(expected.len()));
        names.extend(answer["results"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_string()));
        token = answer["page"]["next_token"].as_str().unwrap().to_string();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(names, expected);
    let subject_and_resource = |page: Value| {
        json!({"subject": {"type": "User", "id": "alice"}, "resource": {"type": "Document", "id": "x"}, "page": page})
            .to_string()
    };
    for (page, field) in [
        (json!({"limit": 0}), "page.limit"),
        (json!(3), "`page`"),
        (json!({"token": "12"}), "page.token"),
        // A token of another policy version: the list may have changed under the pages.
        (json!({"token": "0123456789abcdef.1"}), "another policy version"),
    ] {
        let (status, answer, _) = api.post("/access/v1/search/action", &subject_and_resource(page)).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(field), "{answer}");
    }
    let bad_options = json!({"options": 3, "evaluations": []}).to_string();
    let (status, answer, _) = api.post("/access/v1/evaluations", &bad_options).await;
    assert!(status == 400 && answer["error"].as_str().unwrap().contains("`options`"), "{answer}");
}

/// `/search/resource` and `/search/subject` page through what ListResources and ListPrincipals
/// list, which the exactness tests (tests/list.rs) hold to brute-force Check.
#[tokio::test]
async fn search_resource_and_subject_page_through_the_grpc_listings() {
    let api = Api::start(|_| {}).await;
    let mut client = cedar_pdp::grpc::AuthorizationServiceClient::new(api.server.channel().await);
    for user in ["alice", "bob", "carol", "dave"] {
        let request = cedar_pdp::grpc::pb::ListResourcesRequest {
            principal: Some(uid(&format!(r#"User::"{user}""#))),
            action: Some(uid(r#"Action::"view""#)),
            resource_type: "Document".into(),
            page_size: 1000,
            ..Default::default()
        };
        let expected: Vec<String> =
            client.list_resources(request).await.unwrap().into_inner().uids.into_iter().map(|u| u.id).collect();
        let mut found = Vec::new();
        let mut token = String::new();
        loop {
            let body = json!({"subject": {"type": "User", "id": user}, "action": {"name": "view"},
                              "resource": {"type": "Document"}, "page": {"limit": 1, "token": token}});
            let (status, answer, id) = api.post("/access/v1/search/resource", &body.to_string()).await;
            assert_eq!(status, 200, "{answer}");
            assert_eq!(id.as_deref(), Some("req-7"));
            let results = answer["results"].as_array().unwrap();
            assert_eq!(answer["page"]["count"], json!(results.len()));
            for r in results {
                assert_eq!(r["type"], "Document");
                found.push(r["id"].as_str().unwrap().to_string());
            }
            token = answer["page"]["next_token"].as_str().unwrap().to_string();
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(found, expected, "{user}");
        for doc in &found {
            assert!(grpc_allows(&api.server, user, "view", doc).await, "{user} may view {doc}");
        }
    }
    let body = json!({"subject": {"type": "User"}, "action": {"name": "view"},
                      "resource": {"type": "Document", "id": "design-doc"}});
    let (status, answer, _) = api.post("/access/v1/search/subject", &body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    let subjects: Vec<&str> = answer["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert!(!subjects.is_empty(), "{answer}");
    for user in ["alice", "bob", "carol", "dave", "erin"] {
        let allowed = grpc_allows(&api.server, user, "view", "design-doc").await;
        assert_eq!(subjects.contains(&user), allowed, "{user}: {answer}");
    }
    // The searched part is a type only; the others are whole.
    for (path, body, field) in [
        (
            "/access/v1/search/resource",
            json!({"subject": {"type": "User", "id": "bob"}, "action": {"name": "view"},
                                              "resource": {"type": "Document", "id": "x"}}),
            "resource.id",
        ),
        (
            "/access/v1/search/resource",
            json!({"subject": {"type": "User", "id": "bob"}, "action": {"name": "view"},
                                              "resource": {"type": "Document", "properties": {}}}),
            "resource.properties",
        ),
        (
            "/access/v1/search/resource",
            json!({"subject": {"type": "User", "id": "bob"}, "action": {"name": "view"},
                                              "resource": {}}),
            "resource.type",
        ),
        (
            "/access/v1/search/resource",
            json!({"subject": {"type": "User", "id": "bob"},
                                              "resource": {"type": "Document"}}),
            "action",
        ),
        ("/access/v1/search/subject", json!({"subject": {"type": "User"}, "action": {"name": "view"}}), "resource"),
        (
            "/access/v1/search/subject",
            json!({"subject": {"type": "User"}, "action": {"name": "view"},
                                             "resource": {"type": "Document", "id": "x"}, "page": {"token": "x.zz"}}),
            "page.token",
        ),
    ] {
        let (status, answer, _) = api.post(path, &body.to_string()).await;
        assert_eq!(status, 400, "{path} {answer}");
        assert!(answer["error"].as_str().unwrap().contains(field), "{field}: {answer}");
    }
    let response = api.client.get(format!("{}/.well-known/authzen-configuration", api.base)).send().await.unwrap();
    let config: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    for key in ["search_subject_endpoint", "search_resource_endpoint", "search_action_endpoint"] {
        assert!(config[key].as_str().is_some_and(|u| u.contains("/access/v1/search/")), "{key}: {config}");
    }
}

/// `authzen.toml` maps AuthZEN's type names and action namespace to Cedar's, both ways.
#[tokio::test]
async fn authzen_toml_maps_type_names_and_the_action_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let schema = "namespace App { entity User; entity Document { owner: User }; \
                  action view appliesTo { principal: User, resource: Document }; }";
    std::fs::write(dir.path().join("schema.cedarschema"), schema).unwrap();
    let policy = r#"permit(principal, action == App::Action::"view", resource) when { resource.owner == principal };"#;
    std::fs::write(dir.path().join("policies.cedar"), policy).unwrap();
    let entities = json!([
        {"uid": {"type": "App::User", "id": "alice"}, "attrs": {}, "parents": []},
        {"uid": {"type": "App::User", "id": "bob"}, "attrs": {}, "parents": []},
        {"uid": {"type": "App::Document", "id": "d1"}, "attrs": {"owner": {"__entity": {"type": "App::User", "id": "alice"}}}, "parents": []},
        {"uid": {"type": "App::Document", "id": "d2"}, "attrs": {"owner": {"__entity": {"type": "App::User", "id": "bob"}}}, "parents": []},
    ]);
    std::fs::write(dir.path().join("entities.json"), entities.to_string()).unwrap();
    let names = "action_namespace = \"App\"\n[types]\nuser = \"App::User\"\ndocument = \"App::Document\"\n";
    std::fs::write(dir.path().join("authzen.toml"), names).unwrap();
    let api = Api::start_in(dir.path(), |_| {}).await;
    for (doc, allowed) in [("d1", true), ("d2", false)] {
        let body = json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "view"},
                          "resource": {"type": "document", "id": doc}});
        let (status, answer, _) = api.post("/access/v1/evaluation", &body.to_string()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["decision"], json!(allowed), "{doc}: {answer}");
        let check = req(r#"App::User::"alice""#, r#"App::Action::"view""#, &format!(r#"App::Document::"{doc}""#));
        assert_eq!(is_allow(&api.server.check(check).await.unwrap()), allowed);
    }
    let body = json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "view"}, "resource": {"type": "document"}});
    let (status, answer, _) = api.post("/access/v1/search/resource", &body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"], json!([{"type": "document", "id": "d1"}]), "{answer}");
    let body = json!({"subject": {"type": "user", "id": "alice"}, "resource": {"type": "document", "id": "d1"}});
    let (status, answer, _) = api.post("/access/v1/search/action", &body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"], json!([{"name": "view"}]), "{answer}");
    // A mapping to a type the schema does not declare: the directory does not load, naming the file.
    std::fs::write(dir.path().join("authzen.toml"), "[types]\nuser = \"App::Person\"\n").unwrap();
    let Err(err) = cedar_pdp::policy::load_dir(dir.path(), cedar_pdp::config::ValidationMode::Strict) else {
        panic!("a bad authzen.toml loaded");
    };
    assert!(err.diagnostics.iter().any(|d| d.file == "authzen.toml" && d.message.contains("App::Person")), "{err}");
}

/// A client that trickles its headers is cut off after `--http-header-timeout`; connections past
/// `--http-max-connections` are closed at once; neither stops others from being served.
#[tokio::test]
async fn slow_and_surplus_connections_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Api::start(|c| c.http_header_timeout = std::time::Duration::from_millis(300)).await;
    let addr = api.base.trim_start_matches("http://").to_string();
    // Half a request, then silence: closed (perhaps after a 408) once the header timeout passes.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /access/v1/evaluation HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), slow.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a trickling client kept its connection");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250), "{:?}", started.elapsed());
    assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&answer));

    // Two connections held open: the third is closed without an answer.
    let api = Api::start(|c| c.http_max_connections = 2).await;
    let addr = api.base.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(b"GET /.well-known/authzen-configuration HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut first = [0u8; 12];
        conn.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        held.push(conn);
    }
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = third.write_all(b"GET /.well-known/authzen-configuration HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), third.read_to_end(&mut answer)).await;
    assert!(read.is_ok() && answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // Once one closes, requests are served again.
    drop(held.pop());
    eventually("a connection slot frees", std::time::Duration::from_secs(10), || async {
        let body = evaluation("bob", "view", "handbook").to_string();
        let response = api.client.post(format!("{}/access/v1/evaluation", api.base)).body(body).send().await;
        response.is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// A client that connects and sends nothing (hyper's header timeout has not started: it does not
/// know the protocol yet) is closed after the header timeout too, and frees its slot.
#[tokio::test]
async fn a_silent_connection_is_closed() {
    use tokio::io::AsyncReadExt;
    let api = Api::start(|c| {
        c.http_header_timeout = std::time::Duration::from_millis(300);
        c.http_max_connections = 1;
    })
    .await;
    let addr = api.base.trim_start_matches("http://").to_string();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), silent.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a silent client kept its connection (and the only slot)");
    eventually("the slot is free again", std::time::Duration::from_secs(10), || async {
        let body = evaluation("bob", "view", "handbook").to_string();
        let response = api.client.post(format!("{}/access/v1/evaluation", api.base)).body(body).send().await;
        response.is_ok_and(|r| r.status() == 200)
    })
    .await;
}
