//! PlanResources: the plan for a resource type decides when the principal's facts decide, and
//! otherwise its residual policies decide every resource exactly as Check does — proved by
//! evaluating the residuals with Cedar on each document and comparing with the server's Check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::str::FromStr;

use cedar_pdp::grpc::pb;
use cedar_pdp::grpc::pb::plan_resources_response::Kind;
use cedar_policy::{Authorizer, Context, Entities, EntityUid, Policy, PolicyId, PolicySet, Request};
use common::{TestServer, is_allow, req, uid};
use serde_json::json;
use tonic::Code;

const SCHEMA: &str = r#"
entity Group in [Group];
entity User in [Group] { manager?: User, level?: Long };
entity Folder in [Folder];
entity Document in [Folder] { owner?: User, secret?: Bool };
action view, edit, share appliesTo { principal: User, resource: Document };
"#;

const POLICIES: &str = r#"
@id("team-folder")
permit(principal in Group::"eng", action == Action::"view", resource in Folder::"eng");
@id("owner")
permit(principal, action in [Action::"view", Action::"edit"], resource)
  when { resource has owner && resource.owner == principal };
@id("secret")
forbid(principal, action, resource)
  when { resource has secret && resource.secret } unless { principal in Group::"cleared" };
@id("admins")
permit(principal in Group::"admins", action == Action::"share", resource);
@id("managers")
permit(principal, action == Action::"edit", resource)
  when { principal has manager && principal.manager has level && principal.manager.level > 3 && resource has secret };
"#;

fn e(ty: &str, id: &str, attrs: serde_json::Value, parents: &[(&str, &str)]) -> serde_json::Value {
    let parents: Vec<_> = parents.iter().map(|(t, i)| json!({"type": t, "id": i})).collect();
    json!({"uid": {"type": ty, "id": id}, "attrs": attrs, "parents": parents})
}

/// Users, groups, folders and 30 documents, all in the policy directory's entity file.
fn entities() -> Vec<serde_json::Value> {
    let mut out = vec![
        e("Group", "eng", json!({}), &[]),
        e("Group", "admins", json!({}), &[]),
        e("Group", "cleared", json!({}), &[]),
        e("User", "ann", json!({}), &[("Group", "eng")]),
        e("User", "root", json!({}), &[("Group", "admins"), ("Group", "cleared")]),
        e("User", "sam", json!({}), &[("Group", "admins")]),
        e("User", "nobody", json!({}), &[]),
        // Managed by someone nobody holds: plans that read the manager cannot be made here.
        e("User", "dangler", json!({"manager": {"__entity": {"type": "User", "id": "gone"}}}), &[]),
        e("Folder", "eng", json!({}), &[]),
        e("Folder", "eng-sub", json!({}), &[("Folder", "eng")]),
        e("Folder", "other", json!({}), &[]),
    ];
    for d in 0..30 {
        let folder = ["eng", "eng-sub", "other"][d % 3];
        let mut attrs = serde_json::Map::new();
        if d % 4 == 0 {
            let owner = ["ann", "nobody"][d % 8 / 4];
            attrs.insert("owner".into(), json!({"__entity": {"type": "User", "id": owner}}));
        }
        if d % 5 == 0 {
            attrs.insert("secret".into(), json!(true));
        }
        out.push(e("Document", &format!("d{d}"), serde_json::Value::Object(attrs), &[("Folder", folder)]));
    }
    out
}

fn policy_dir(with_schema: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policies.cedar"), POLICIES).unwrap();
    if with_schema {
        std::fs::write(dir.path().join("schema.cedarschema"), SCHEMA).unwrap();
    }
    std::fs::write(dir.path().join("entities.json"), serde_json::Value::Array(entities()).to_string()).unwrap();
    dir
}

async fn plan(server: &TestServer, user: &str, action: &str) -> Result<pb::PlanResourcesResponse, tonic::Status> {
    let request = pb::PlanResourcesRequest {
        principal: Some(uid(&format!(r#"User::"{user}""#))),
        action: Some(uid(&format!(r#"Action::"{action}""#))),
        resource_type: "Document".into(),
        ..Default::default()
    };
    server.client.clone().plan_resources(request).await.map(|r| r.into_inner())
}

/// The residuals' decision on one document, by Cedar in the test.
fn residuals_allow(residuals: &[pb::ResidualPolicy], user: &str, action: &str, doc: &str) -> bool {
    let mut set = PolicySet::new();
    for r in residuals {
        // The JSON form is the one a service consumes: it must say what the text says.
        let from_json =
            Policy::from_json(Some(PolicyId::new(&r.policy_id)), serde_json::from_str(&r.policy_json).unwrap());
        assert!(from_json.is_ok(), "{}: {from_json:?}", r.policy_id);
        set.add(from_json.unwrap()).unwrap();
    }
    let entities = Entities::from_json_value(serde_json::Value::Array(entities()), None).unwrap();
    let request = Request::new(
        EntityUid::from_str(&format!(r#"User::"{user}""#)).unwrap(),
        EntityUid::from_str(&format!(r#"Action::"{action}""#)).unwrap(),
        EntityUid::from_str(&format!(r#"Document::"{doc}""#)).unwrap(),
        Context::empty(),
        None,
    )
    .unwrap();
    Authorizer::new().is_authorized(&request, &set, &entities).decision() == cedar_policy::Decision::Allow
}

#[tokio::test]
async fn plans_decide_where_they_can_and_their_residuals_equal_check_elsewhere() {
    let dir = policy_dir(true);
    let server = TestServer::start(dir.path()).await;
    let (mut conditional, mut decided) = (0, 0);
    for user in ["ann", "root", "sam", "nobody"] {
        for action in ["view", "edit", "share"] {
            let plan = plan(&server, user, action).await.unwrap();
            let kind = Kind::try_from(plan.kind).unwrap();
            for d in 0..30 {
                let doc = format!("d{d}");
                let check = req(
                    &format!(r#"User::"{user}""#),
                    &format!(r#"Action::"{action}""#),
                    &format!(r#"Document::"{doc}""#),
                );
                let allowed = is_allow(&server.check(check).await.unwrap());
                let planned = match kind {
                    Kind::AlwaysAllowed => true,
                    Kind::AlwaysDenied => false,
                    Kind::Conditional => residuals_allow(&plan.residuals, user, action, &doc),
                    Kind::Unspecified => panic!("{plan:?}"),
                };
                assert_eq!(planned, allowed, "{user} {action} {doc}: {plan:?}");
            }
            if kind == Kind::Conditional {
                conditional += 1;
                assert!(!plan.residuals.is_empty());
            } else {
                decided += 1;
                assert!(plan.residuals.is_empty());
            }
        }
    }
    assert!(conditional > 0 && decided > 0, "{conditional} conditional, {decided} decided");
    // root is an admin: the admins permit is satisfied already and listed as such (Cedar leaves the
    // forbid's residual unsimplified, so the plan stays conditional); nobody may share nothing.
    let root = plan(&server, "root", "share").await.unwrap();
    assert!(root.residuals.iter().any(|r| r.policy_id == "admins" && r.effect == "permit"), "{root:?}");
    assert_eq!(Kind::try_from(plan(&server, "nobody", "share").await.unwrap().kind).unwrap(), Kind::AlwaysDenied);
    // sam is an admin but not cleared: a secret document is the condition.
    let sam = plan(&server, "sam", "share").await.unwrap();
    assert!(sam.residuals.iter().any(|r| r.effect == "forbid" && r.cedar.contains("secret")), "{sam:?}");
}

#[tokio::test]
async fn plans_refuse_what_they_cannot_answer() {
    let without = TestServer::start(policy_dir(false).path()).await;
    let status = plan(&without, "ann", "view").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("schema"), "{status:?}");
    let dir = policy_dir(true);
    let server = TestServer::start(dir.path()).await;
    let mut client = server.client.clone();
    for (request, field) in [
        (pb::PlanResourcesRequest { principal: Some(uid(r#"User::"ghost""#)), ..base() }, "principal"),
        (pb::PlanResourcesRequest { resource_type: "Nope".into(), ..base() }, "resource_type"),
        (pb::PlanResourcesRequest { resource_type: "".into(), ..base() }, "resource_type"),
        (pb::PlanResourcesRequest { principal: None, ..base() }, "principal"),
        (pb::PlanResourcesRequest { action: Some(uid(r#"Action::"fly""#)), ..base() }, "action"),
        (pb::PlanResourcesRequest { context_json: "{\"x\": 1}".into(), ..base() }, "context"),
    ] {
        let status = client.plan_resources(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "{field}: {status:?}");
    }
}

/// A plan whose residual would read an entity this server does not hold fails closed.
#[tokio::test]
async fn a_plan_that_reads_an_absent_entity_fails_closed() {
    let dir = policy_dir(true);
    let server = TestServer::start(dir.path()).await;
    let status = plan(&server, "dangler", "edit").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains(r#"User::"gone""#), "{status:?}");
    // ann has no manager: her plan is made.
    assert!(plan(&server, "ann", "edit").await.is_ok());
}

fn base() -> pb::PlanResourcesRequest {
    pb::PlanResourcesRequest {
        principal: Some(uid(r#"User::"ann""#)),
        action: Some(uid(r#"Action::"view""#)),
        resource_type: "Document".into(),
        ..Default::default()
    }
}

/// The README's example, on the example policies.
#[tokio::test]
async fn the_readme_plan_on_the_example_policies() {
    let server = TestServer::start(&common::example_policies()).await;
    let bob = plan(&server, "bob", "view").await.unwrap();
    assert_eq!(Kind::try_from(bob.kind).unwrap(), Kind::Conditional, "{bob:?}");
    let owner = bob.residuals.iter().find(|r| r.policy_id == "owner-full-access").expect("owner residual");
    assert!(owner.effect == "permit" && owner.cedar.contains(r#"User::"bob""#), "{owner:?}");
    assert!(serde_json::from_str::<serde_json::Value>(&owner.policy_json).is_ok());
}
