//! Check and BatchCheck through a real client against the real server on the example policies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cedar_pdp::grpc::pb;
use common::*;
use tonic::Code;

/// (principal, action, resource, context, allowed, determining policies)
type Row = (&'static str, &'static str, &'static str, &'static str, bool, &'static [&'static str]);

const TABLE: &[Row] = &[
    // The owner, who is also on the platform team that edits the engineering folder.
    (
        r#"User::"alice""#,
        r#"Action::"edit""#,
        r#"Document::"design-doc""#,
        "",
        true,
        &["owner-full-access", "platform-edits-engineering-folder"],
    ),
    // bob is in engineering: reads through the folder tree (designs ⊂ engineering), cannot edit.
    (
        r#"User::"bob""#,
        r#"Action::"view""#,
        r#"Document::"design-doc""#,
        "",
        true,
        &["engineering-reads-engineering-folder"],
    ),
    (
        r#"User::"bob""#,
        r#"Action::"comment""#,
        r#"Document::"design-doc""#,
        "",
        true,
        &["engineering-reads-engineering-folder"],
    ),
    (r#"User::"bob""#, r#"Action::"edit""#, r#"Document::"design-doc""#, "", false, &[]),
    // erin is staff but not engineering.
    (r#"User::"erin""#, r#"Action::"view""#, r#"Document::"design-doc""#, "", false, &[]),
    // Public document: anyone may view, not edit.
    (r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#, "", true, &["public-documents-readable"]),
    (r#"User::"bob""#, r#"Action::"edit""#, r#"Document::"handbook""#, "", false, &[]),
    // A forbid overrides the permits: dave is on the platform team but suspended.
    (r#"User::"dave""#, r#"Action::"view""#, r#"Document::"design-doc""#, "", false, &["suspended-users-denied"]),
    // Confidential documents need MFA, even for their owner.
    (r#"User::"erin""#, r#"Action::"view""#, r#"Document::"salaries""#, "", false, &["confidential-needs-mfa"]),
    (
        r#"User::"erin""#,
        r#"Action::"view""#,
        r#"Document::"salaries""#,
        r#"{"mfa": true}"#,
        true,
        &["owner-full-access"],
    ),
    // A template link shares the design doc with carol, a contractor, who must be on the office network;
    // the schema lets the address be a plain string.
    (
        r#"User::"carol""#,
        r#"Action::"view""#,
        r#"Document::"design-doc""#,
        r#"{"source_ip": "10.1.2.3"}"#,
        true,
        &["share-design-doc-with-carol"],
    ),
    (
        r#"User::"carol""#,
        r#"Action::"view""#,
        r#"Document::"design-doc""#,
        r#"{"source_ip": "192.0.2.7"}"#,
        false,
        &["contractors-office-network-only"],
    ),
    (r#"User::"carol""#, r#"Action::"edit""#, r#"Document::"design-doc""#, r#"{"source_ip": "10.1.2.3"}"#, false, &[]),
];

#[tokio::test]
async fn decisions_on_the_example_application() {
    let server = TestServer::start(&example_policies()).await;
    for (principal, action, resource, context, allowed, determining) in TABLE {
        let resp = server.check(req_ctx(principal, action, resource, context)).await.unwrap();
        let case = format!("{principal} {action} {resource} {context}");
        assert_eq!(is_allow(&resp), *allowed, "{case}: {resp:?}");
        assert_eq!(resp.determining_policies, *determining, "{case}");
        assert!(resp.errors.is_empty(), "{case}: {:?}", resp.errors);
        assert_eq!(resp.policy_version.len(), 16, "{case}");
        assert!(uuid::Uuid::parse_str(&resp.decision_id).is_ok(), "{case}: {}", resp.decision_id);
    }
}

#[tokio::test]
async fn decision_ids_are_unique() {
    let server = TestServer::start(&example_policies()).await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        let resp = server.check(req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#)).await.unwrap();
        assert!(ids.insert(resp.decision_id));
    }
}

#[tokio::test]
async fn unknown_entities_deny_with_the_policy_error_reported() {
    let server = TestServer::start(&fixture("authoring")).await;
    // No such user: `principal.banned` cannot be read, so that forbid errors (Cedar skips it) and no
    // permit applies.
    let resp = server.check(req(r#"User::"mallory""#, r#"Action::"view""#, r#"Doc::"d1""#)).await.unwrap();
    assert!(!is_allow(&resp));
    assert!(resp.determining_policies.is_empty());
    let ids: Vec<&str> = resp.errors.iter().map(|e| e.policy_id.as_str()).collect();
    assert_eq!(ids, ["no-banned"], "{:?}", resp.errors);
    assert!(resp.errors.iter().all(|e| !e.message.is_empty()));
}

/// A forbid that errors is skipped by Cedar, so a member whose `banned` attribute is missing is
/// allowed; `--forbid-errors deny` turns that into a Deny naming the forbid, with its error listed.
#[tokio::test]
async fn forbid_errors_deny_fails_closed() {
    let dir = copy_dir(&fixture("authoring"));
    let mut entities: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("entities.json")).unwrap()).unwrap();
    entities.as_array_mut().unwrap().push(serde_json::json!(
        {"uid": {"type": "User", "id": "nob"}, "attrs": {}, "parents": [{"type": "Group", "id": "members"}]}
    ));
    std::fs::write(dir.path().join("entities.json"), entities.to_string()).unwrap();
    let question = || req(r#"User::"nob""#, r#"Action::"view""#, r#"Doc::"d1""#);
    let skip = TestServer::start(dir.path()).await;
    let resp = skip.check(question()).await.unwrap();
    assert!(is_allow(&resp), "Cedar's semantics: the erroring forbid is skipped");
    assert_eq!((resp.determining_policies.clone(), resp.errors.len()), (vec!["members-view".to_string()], 1));
    let deny =
        TestServer::start_with(dir.path(), |c| c.policy.forbid_errors = cedar_pdp::config::ForbidErrors::Deny).await;
    let resp = deny.check(question()).await.unwrap();
    assert!(!is_allow(&resp));
    assert_eq!(resp.determining_policies, ["no-banned"]);
    assert_eq!(resp.errors.iter().map(|e| e.policy_id.as_str()).collect::<Vec<_>>(), ["no-banned"]);
    // Nothing else changes: a member with the attribute is still allowed, a banned one denied.
    assert!(is_allow(&deny.check(req(r#"User::"ann""#, r#"Action::"view""#, r#"Doc::"d1""#)).await.unwrap()));
    assert!(!is_allow(&deny.check(req(r#"User::"ben""#, r#"Action::"view""#, r#"Doc::"d1""#)).await.unwrap()));
    // PlanResources keeps Cedar's semantics, so it is refused rather than allowed to disagree.
    let planner =
        TestServer::start_with(&example_policies(), |c| c.policy.forbid_errors = cedar_pdp::config::ForbidErrors::Deny)
            .await;
    let mut client = cedar_pdp::grpc::AuthorizationServiceClient::new(planner.channel().await);
    let plan = pb::PlanResourcesRequest {
        principal: Some(uid(r#"User::"bob""#)),
        action: Some(uid(r#"Action::"view""#)),
        resource_type: "Document".into(),
        ..Default::default()
    };
    let refused = client.plan_resources(plan).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("--forbid-errors deny"), "{refused:?}");
}

#[tokio::test]
async fn request_scoped_entities_join_the_stored_ones_for_that_request_only() {
    let server = TestServer::start(&example_policies()).await;
    // A new document in a stored folder: bob reads it through engineering ⊃ designs ⊃ new doc.
    let new_doc = r#"[{"uid": {"type": "Document", "id": "draft"},
        "attrs": {"owner": {"type": "User", "id": "erin"}, "public": false, "classification": "internal"},
        "parents": [{"type": "Folder", "id": "designs"}]}]"#;
    let mut r = req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"draft""#);
    r.entities_json = new_doc.into();
    let resp = server.check(r.clone()).await.unwrap();
    assert!(is_allow(&resp), "{resp:?}");
    assert_eq!(resp.determining_policies, ["engineering-reads-engineering-folder"]);
    // Attributes of the request's entity reach stored entities: erin owns the draft.
    r.principal = Some(uid(r#"User::"erin""#));
    r.action = Some(uid(r#"Action::"edit""#));
    let resp = server.check(r).await.unwrap();
    assert_eq!(resp.determining_policies, ["owner-full-access"]);
    // Without the request's entities the draft does not exist.
    let resp = server.check(req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"draft""#)).await.unwrap();
    assert!(!is_allow(&resp));
    // A chain through the request's own entities reaches the stored hierarchy: a new document in a new
    // folder (listed after it) inside designs, inside engineering.
    let chain = r#"[{"uid": {"type": "Document", "id": "deep"},
        "attrs": {"owner": {"type": "User", "id": "erin"}, "public": false, "classification": "internal"},
        "parents": [{"type": "Folder", "id": "sub"}]},
        {"uid": {"type": "Folder", "id": "sub"}, "attrs": {}, "parents": [{"type": "Folder", "id": "designs"}]}]"#;
    let mut r = req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"deep""#);
    r.entities_json = chain.into();
    let resp = server.check(r.clone()).await.unwrap();
    assert_eq!(resp.determining_policies, ["engineering-reads-engineering-folder"], "{resp:?}");
    // Cut the chain and the folder's ancestors no longer reach the document.
    r.entities_json = chain.replace(r#"[{"type": "Folder", "id": "designs"}]"#, "[]");
    assert!(!is_allow(&server.check(r).await.unwrap()));
}

#[tokio::test]
async fn request_scoped_entities_cannot_redefine_stored_ones() {
    let server = TestServer::start(&example_policies()).await;
    let mut r = req(r#"User::"dave""#, r#"Action::"view""#, r#"Document::"design-doc""#);
    r.entities_json = r#"[{"uid": {"type": "User", "id": "dave"}, "attrs": {"name": "Dave", "suspended": false},
        "parents": [{"type": "Group", "id": "platform"}]}]"#
        .into();
    let err = server.check(r).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("entities_json[0]") && err.message().contains("stored entity"), "{}", err.message());
}

#[tokio::test]
async fn the_schema_rejects_ill_typed_requests() {
    let server = TestServer::start(&example_policies()).await;
    let cases = [
        (req(r#"User::"bob""#, r#"Action::"fly""#, r#"Document::"handbook""#), "`action`"),
        (req(r#"Document::"handbook""#, r#"Action::"view""#, r#"Document::"handbook""#), "`principal.type`"),
        (req(r#"User::"bob""#, r#"Action::"view""#, r#"User::"alice""#), "`resource.type`"),
        (
            req_ctx(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#, r#"{"mfa": "yes"}"#),
            "`context_json`",
        ),
        (
            req_ctx(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#, r#"{"source_ip": "not an ip"}"#),
            "`context_json`",
        ),
        (
            req_ctx(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#, r#"{"unknown": 1}"#),
            "`context_json`",
        ),
    ];
    for (r, field) in cases {
        let err = server.check(r.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{r:?}");
        assert!(err.message().contains(field), "expected {field} in `{}`", err.message());
    }
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let server = TestServer::start(&example_policies()).await;
    let base = req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#);
    let cases: Vec<(pb::CheckRequest, &str)> = vec![
        (pb::CheckRequest { principal: None, ..base.clone() }, "`principal` is required"),
        (pb::CheckRequest { action: None, ..base.clone() }, "`action` is required"),
        (pb::CheckRequest { resource: None, ..base.clone() }, "`resource` is required"),
        (
            pb::CheckRequest {
                principal: Some(pb::EntityUid { r#type: String::new(), id: "x".into() }),
                ..base.clone()
            },
            "`principal.type` is required",
        ),
        (
            pb::CheckRequest {
                principal: Some(pb::EntityUid { r#type: "Not A Type".into(), id: "x".into() }),
                ..base.clone()
            },
            "`principal.type` is invalid",
        ),
        (
            pb::CheckRequest {
                resource: Some(pb::EntityUid { r#type: "Doc::".into(), id: "x".into() }),
                ..base.clone()
            },
            "`resource.type` is invalid",
        ),
        (pb::CheckRequest { context_json: "{not json".into(), ..base.clone() }, "`context_json` is invalid"),
        (pb::CheckRequest { context_json: "[1, 2]".into(), ..base.clone() }, "`context_json` is invalid"),
        (pb::CheckRequest { context_json: "42".into(), ..base.clone() }, "`context_json` is invalid"),
        (pb::CheckRequest { entities_json: "{not json".into(), ..base.clone() }, "`entities_json` is invalid"),
        (pb::CheckRequest { entities_json: r#"{"uid": 1}"#.into(), ..base.clone() }, "`entities_json` is invalid"),
        (
            pb::CheckRequest { entities_json: r#"[{"uid": {"type": "Document"}}]"#.into(), ..base.clone() },
            "`entities_json[0]` is invalid",
        ),
    ];
    for (r, expected) in cases {
        let err = server.check(r.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{r:?}");
        assert!(err.message().contains(expected), "expected `{expected}` in `{}`", err.message());
    }
    // The server is still answering after all of that.
    assert!(is_allow(&server.check(base).await.unwrap()));
}

#[tokio::test]
async fn oversized_messages_are_refused() {
    let server = TestServer::start_with(&example_policies(), |c| c.max_message_bytes = 16 * 1024).await;
    let mut r = req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#);
    r.context_json = format!(r#"{{"pad": "{}"}}"#, "x".repeat(32 * 1024));
    let err = server.check(r).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(err.message(), "request message is larger than the limit of 16384 bytes (`--max-message-bytes`)");
    // Within the limit, the same server answers.
    assert!(is_allow(
        &server.check(req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#)).await.unwrap()
    ));
}

#[tokio::test]
async fn batch_check_answers_in_order_on_one_policy_version() {
    let server = TestServer::start(&example_policies()).await;
    let checks: Vec<pb::CheckRequest> = TABLE.iter().map(|(p, a, r, c, _, _)| req_ctx(p, a, r, c)).collect();
    let results =
        server.client.clone().batch_check(pb::BatchCheckRequest { checks }).await.unwrap().into_inner().results;
    assert_eq!(results.len(), TABLE.len());
    for ((p, a, r, c, allowed, determining), resp) in TABLE.iter().zip(&results) {
        assert_eq!(is_allow(resp), *allowed, "{p} {a} {r} {c}");
        assert_eq!(resp.determining_policies, *determining);
    }
    assert!(results.iter().all(|r| r.policy_version == results[0].policy_version));
    let ids: std::collections::HashSet<_> = results.iter().map(|r| &r.decision_id).collect();
    assert_eq!(ids.len(), results.len());
}

#[tokio::test]
async fn one_bad_item_fails_the_whole_batch_naming_it() {
    let server = TestServer::start(&example_policies()).await;
    let good = req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#);
    let checks = vec![good.clone(), good.clone(), pb::CheckRequest { resource: None, ..good }];
    let err = server.client.clone().batch_check(pb::BatchCheckRequest { checks }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "`checks[2].resource` is required");
}

#[tokio::test]
async fn batches_over_the_limit_are_refused() {
    let server = TestServer::start_with(&example_policies(), |c| c.max_batch = 3).await;
    let good = req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#);
    let ok = server.client.clone().batch_check(pb::BatchCheckRequest { checks: vec![good.clone(); 3] }).await;
    assert_eq!(ok.unwrap().into_inner().results.len(), 3);
    let err = server.client.clone().batch_check(pb::BatchCheckRequest { checks: vec![good; 4] }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("`checks` has 4 items, more than the limit of 3"), "{}", err.message());
    let empty = server.client.clone().batch_check(pb::BatchCheckRequest { checks: vec![] }).await.unwrap();
    assert!(empty.into_inner().results.is_empty());
}

#[tokio::test]
async fn request_scoped_entities_cannot_define_what_the_store_or_policies_mention() {
    let dir = copy_dir(&example_policies());
    // A stored user in a group nobody defined, and a policy naming a document the store lacks.
    std::fs::write(
        dir.path().join("extra.entities.json"),
        r#"[{"uid": {"type": "User", "id": "gus"}, "attrs": {"name": "Gus", "suspended": false},
            "parents": [{"type": "Group", "id": "ghosts"}]}]"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("archive.cedar"),
        "@id(\"archive-closed\")\nforbid (principal, action, resource == Document::\"archived\");",
    )
    .unwrap();
    let server = TestServer::start(dir.path()).await;
    let cases = [
        // Would put the stored gus into engineering for this request.
        (
            r#"[{"uid": {"type": "Group", "id": "ghosts"}, "attrs": {"name": "x"}, "parents": [{"type": "Group", "id": "engineering"}]}]"#,
            r#"`Group::"ghosts"` is referred to"#,
        ),
        (
            r#"[{"uid": {"type": "Document", "id": "archived"}, "attrs": {"owner": {"type": "User", "id": "gus"}, "public": true, "classification": "public"}, "parents": []}]"#,
            r#"`Document::"archived"` is referred to"#,
        ),
        // Actions come from the schema or the store, never from a request (refused by the schema here;
        // without a schema by the action rule, see `authz::tests`).
        (
            r#"[{"uid": {"type": "Action", "id": "fly"}, "attrs": {}, "parents": [{"type": "Action", "id": "read"}]}]"#,
            "does not conform to the schema",
        ),
    ];
    for (entities, expected) in cases {
        let mut r = req(r#"User::"gus""#, r#"Action::"view""#, r#"Document::"design-doc""#);
        r.entities_json = entities.into();
        let err = server.check(r).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("entities_json[0]") && err.message().contains(expected), "{}", err.message());
    }
}

#[tokio::test]
async fn request_scoped_entities_are_bounded() {
    let server = TestServer::start_with(&example_policies(), |c| c.max_request_entities = 3).await;
    let doc = |i: usize| {
        format!(
            r#"{{"uid": {{"type": "Document", "id": "d{i}"}}, "attrs": {{"owner": {{"type": "User", "id": "bob"}}, "public": false, "classification": "internal"}}, "parents": []}}"#
        )
    };
    let mut r = req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"d0""#);
    r.entities_json = format!("[{}]", (0..3).map(doc).collect::<Vec<_>>().join(","));
    assert!(is_allow(&server.check(r.clone()).await.unwrap()), "bob owns d0");
    r.entities_json = format!("[{}]", (0..4).map(doc).collect::<Vec<_>>().join(","));
    let err = server.check(r).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("`entities_json` has 4 items, more than the limit of 3"), "{}", err.message());
}

#[tokio::test]
async fn validation_modes_as_the_server_applies_them() {
    use cedar_pdp::config::ValidationMode;
    let dir = copy_dir(&example_policies());
    // Does not validate: `Document` has no `nope`.
    std::fs::write(
        dir.path().join("loose.cedar"),
        "@id(\"loose\")\npermit (principal, action, resource is Document) when { resource.nope == 1 };",
    )
    .unwrap();
    let strict = TestServer::try_start_with(dir.path(), |_| {}).await;
    let err = strict.err().expect("strict refuses the set").to_string();
    assert!(err.contains("loose.cedar:2:"), "{err}");

    // Off: loads and evaluates it; the policy errors at run time and the error is reported.
    let off = TestServer::start_with(dir.path(), |c| c.policy.validation = ValidationMode::Off).await;
    let resp = off.check(req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#)).await.unwrap();
    assert!(is_allow(&resp), "public-documents-readable still applies");
    assert_eq!(resp.errors.iter().map(|e| e.policy_id.as_str()).collect::<Vec<_>>(), ["loose"]);
    // Off does not check requests against the schema: an undeclared action is simply not permitted.
    let resp = off.check(req(r#"User::"bob""#, r#"Action::"fly""#, r#"Document::"handbook""#)).await.unwrap();
    assert!(!is_allow(&resp));

    // Permissive accepts what only strict rejects (a set mixing entity types).
    std::fs::write(
        dir.path().join("loose.cedar"),
        "@id(\"mixed\")\npermit (principal, action, resource) when { [principal, resource].contains(principal) };",
    )
    .unwrap();
    assert!(TestServer::try_start_with(dir.path(), |_| {}).await.is_err());
    let permissive = TestServer::start_with(dir.path(), |c| c.policy.validation = ValidationMode::Permissive).await;
    let status = permissive.status().await;
    assert_eq!(status.validation_mode, "permissive");
    let resp = permissive.check(req(r#"User::"bob""#, r#"Action::"view""#, r#"Document::"handbook""#)).await.unwrap();
    assert!(resp.determining_policies.contains(&"mixed".to_string()), "{resp:?}");
}

/// ListActions lists exactly the actions Check allows: brute force over every action the schema file
/// declares (read from the file here, not from the server), for every user on every document.
#[tokio::test]
async fn list_actions_is_exactly_what_check_allows() {
    let server = TestServer::start(&example_policies()).await;
    let schema_text = std::fs::read_to_string(example_policies().join("docs.cedarschema")).unwrap();
    let (schema, _) = cedar_policy::Schema::from_cedarschema_str(&schema_text).unwrap();
    let actions: Vec<String> = schema.actions().map(|a| a.id().unescaped().to_string()).collect();
    assert!(actions.len() >= 5, "{actions:?}");
    let mut client = cedar_pdp::grpc::AuthorizationServiceClient::new(server.channel().await);
    let mut listed_any = false;
    for user in ["alice", "bob", "carol", "dave", "erin", "nobody"] {
        for doc in ["design-doc", "handbook", "salaries"] {
            let request = pb::ListActionsRequest {
                principal: Some(uid(&format!(r#"User::"{user}""#))),
                resource: Some(uid(&format!(r#"Document::"{doc}""#))),
                ..Default::default()
            };
            let listed: Vec<String> =
                client.list_actions(request).await.unwrap().into_inner().actions.into_iter().map(|a| a.id).collect();
            let mut allowed = Vec::new();
            for action in &actions {
                let check = req(
                    &format!(r#"User::"{user}""#),
                    &format!(r#"Action::"{action}""#),
                    &format!(r#"Document::"{doc}""#),
                );
                // Actions the request is not valid for (groups without appliesTo) are refused, not allowed.
                if server.check(check).await.is_ok_and(|r| is_allow(&r)) {
                    allowed.push(action.clone());
                }
            }
            allowed.sort();
            assert_eq!(listed, allowed, "{user} on {doc}");
            listed_any |= !listed.is_empty();
        }
    }
    assert!(listed_any, "some user may do something");
    // A request valid for no action at all is the request's error.
    let bad = pb::ListActionsRequest {
        principal: Some(uid(r#"Nope::"x""#)),
        resource: Some(uid(r#"Document::"handbook""#)),
        ..Default::default()
    };
    assert_eq!(client.list_actions(bad).await.unwrap_err().code(), Code::InvalidArgument);
}
