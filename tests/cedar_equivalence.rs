//! Decisions are exactly Cedar's: the server's answers over a grid of requests are compared with
//! Cedar's own `Authorizer` on the same files — namespaces, action groups, ip/decimal/datetime,
//! entity tags, templates and links, attribute chains, missing entities, evaluation errors, and
//! request-scoped entities (decided on a slice by the server, on the whole store here).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::str::FromStr;

use cedar_pdp::grpc::pb;
use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicyId, PolicySet, Request, Schema, SlotId};
use common::*;

struct Reference {
    schema: Schema,
    policies: PolicySet,
    entities: Entities,
    entities_json: String,
}

/// Cedar on the fixture, with policy ids given by the documented rule (`@id`, else `file#n`).
fn reference() -> Reference {
    let dir = fixture("features");
    let read = |rel: &str| std::fs::read_to_string(dir.join(rel)).unwrap();
    let schema = Schema::from_cedarschema_str(&read("acme.cedarschema")).unwrap().0;
    let mut policies = PolicySet::new();
    for rel in ["repos.cedar", "nested/guardrails.cedar"] {
        let parsed = PolicySet::from_str(&read(rel)).unwrap();
        let name = |id: &PolicyId, annotation: Option<&str>| {
            PolicyId::new(
                annotation
                    .map_or_else(|| format!("{rel}#{}", id.to_string().trim_start_matches("policy")), str::to_string),
            )
        };
        for t in parsed.templates() {
            policies.add_template(t.new_id(name(t.id(), t.annotation("id")))).unwrap();
        }
        for p in parsed.policies() {
            policies.add(p.new_id(name(p.id(), p.annotation("id")))).unwrap();
        }
    }
    let slots = [
        (SlotId::principal(), EntityUid::from_str(r#"Acme::Employee::"cat""#).unwrap()),
        (SlotId::resource(), EntityUid::from_str(r#"Acme::Team::"infra""#).unwrap()),
    ];
    policies.link(PolicyId::new("grant-admin"), PolicyId::new("cat-admins-infra"), slots.into()).unwrap();
    let entities_json = read("entities.json");
    let entities = Entities::from_json_str(&entities_json, Some(&schema)).unwrap();
    Reference { schema, policies, entities, entities_json }
}

const REQUEST_ENTITIES: &str = r#"[
  { "uid": { "type": "Acme::Repo", "id": "scratch" },
    "attrs": { "owner": { "type": "Acme::Team", "id": "infra" }, "visibility": "private", "min_level": 1, "budget": "2000.0" },
    "parents": [{ "type": "Acme::Team", "id": "infra" }] },
  { "uid": { "type": "Acme::Employee", "id": "newbie" },
    "attrs": { "level": 1, "home_network": "10.0.0.0/8", "manager": { "type": "Acme::Employee", "id": "cat" } },
    "parents": [{ "type": "Acme::Team", "id": "web" }] }
]"#;

fn grid() -> Vec<pb::CheckRequest> {
    let principals = ["ann", "ben", "cat", "fay", "ghost", "newbie"];
    let actions = ["pull", "push", "admin"];
    let resources = ["infra-tools", "website", "ghost-repo", "scratch"];
    let contexts = [
        r#"{"ip": "10.1.1.1", "count": 0, "now": "2026-01-01"}"#,
        r#"{"ip": "192.168.7.7", "count": 5, "now": "2026-01-01T12:00:00Z"}"#,
        r#"{"ip": "10.1.1.1", "count": 9223372036854775807, "now": "2019-06-01"}"#,
        r#"{"ip": "10.1.1.1", "count": 1, "now": "2026-01-01", "reviewer": {"type": "Acme::Employee", "id": "dee"}}"#,
        r#"{"ip": "10.1.1.1", "count": 1, "now": "2026-01-01", "reviewer": {"type": "Acme::Employee", "id": "newbie"}}"#,
    ];
    let mut out = Vec::new();
    for p in principals {
        for a in actions {
            for r in resources {
                for (i, c) in contexts.iter().enumerate() {
                    let mut check = req_ctx(
                        &format!(r#"Acme::Employee::"{p}""#),
                        &format!(r#"Acme::Action::"{a}""#),
                        &format!(r#"Acme::Repo::"{r}""#),
                        c,
                    );
                    // Request-scoped entities on about half the grid (always when they are named).
                    if p == "newbie" || r == "scratch" || i == 1 {
                        check.entities_json = REQUEST_ENTITIES.into();
                    }
                    out.push(check);
                }
            }
        }
    }
    out
}

fn cedar_answer(reference: &Reference, check: &pb::CheckRequest) -> (bool, BTreeSet<String>, BTreeSet<String>) {
    let uid = |u: &Option<pb::EntityUid>| {
        let u = u.as_ref().unwrap();
        EntityUid::from_type_name_and_id(u.r#type.parse().unwrap(), u.id.parse().unwrap())
    };
    let action = uid(&check.action);
    let context = Context::from_json_str(&check.context_json, Some((&reference.schema, &action))).unwrap();
    let request =
        Request::new(uid(&check.principal), action, uid(&check.resource), context, Some(&reference.schema)).unwrap();
    // Request-scoped entities: Cedar parses them together with the stored ones, straight from JSON.
    let entities = if check.entities_json.is_empty() {
        reference.entities.clone()
    } else {
        let mut all: Vec<serde_json::Value> = serde_json::from_str(&reference.entities_json).unwrap();
        all.extend(serde_json::from_str::<Vec<serde_json::Value>>(&check.entities_json).unwrap());
        Entities::from_json_value(serde_json::Value::Array(all), Some(&reference.schema)).unwrap()
    };
    let response = Authorizer::new().is_authorized(&request, &reference.policies, &entities);
    let reasons = response.diagnostics().reason().map(ToString::to_string).collect();
    let errors = response
        .diagnostics()
        .errors()
        .map(|e| match e {
            cedar_policy::AuthorizationError::PolicyEvaluationError(e) => e.policy_id().to_string(),
        })
        .collect();
    (response.decision() == cedar_policy::Decision::Allow, reasons, errors)
}

#[tokio::test]
async fn every_answer_matches_cedar() {
    let reference = reference();
    let server = TestServer::start(&fixture("features")).await;
    let checks = grid();
    let results = server
        .client
        .clone()
        .batch_check(pb::BatchCheckRequest { checks: checks.clone() })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), checks.len());
    let (mut allows, mut with_errors, mut with_entities) = (0, 0, 0);
    for (check, got) in checks.iter().zip(&results) {
        let (allow, reasons, errors) = cedar_answer(&reference, check);
        let got_reasons: BTreeSet<String> = got.determining_policies.iter().cloned().collect();
        let got_errors: BTreeSet<String> = got.errors.iter().map(|e| e.policy_id.clone()).collect();
        let case = format!(
            "{:?} {:?} {:?} {} entities={}",
            check.principal,
            check.action,
            check.resource,
            check.context_json,
            !check.entities_json.is_empty()
        );
        assert_eq!(is_allow(got), allow, "{case}");
        assert_eq!(got_reasons, reasons, "{case}");
        assert_eq!(got_errors, errors, "{case}");
        allows += usize::from(allow);
        with_errors += usize::from(!errors.is_empty());
        with_entities += usize::from(!check.entities_json.is_empty());
    }
    // The grid exercises both answers, evaluation errors and the slice path.
    assert!(allows > 10 && allows < checks.len() - 10, "allows: {allows} of {}", checks.len());
    assert!(with_errors > 10, "with errors: {with_errors}");
    assert!(with_entities > 50, "with request entities: {with_entities}");
}

#[tokio::test]
async fn the_expected_features_fire() {
    // Spot checks that the grid is not vacuous: each feature decides something.
    let server = TestServer::start(&fixture("features")).await;
    let office = r#"{"ip": "10.1.1.1", "count": 0, "now": "2026-01-01"}"#;
    let ask = |p: &str, a: &str, r: &str, c: &str| {
        req_ctx(
            &format!(r#"Acme::Employee::"{p}""#),
            &format!(r#"Acme::Action::"{a}""#),
            &format!(r#"Acme::Repo::"{r}""#),
            c,
        )
    };
    // Entity tags.
    let resp = server.check(ask("ann", "admin", "infra-tools", office)).await.unwrap();
    assert_eq!(resp.determining_policies, ["tagged-admin"]);
    // A template link, and a forbid reached through an attribute chain (cat's manager fay is frozen).
    let resp = server
        .check(ask("cat", "admin", "infra-tools", r#"{"ip": "192.168.1.1", "count": 0, "now": "2026-01-01"}"#))
        .await
        .unwrap();
    assert!(!is_allow(&resp));
    assert_eq!(resp.determining_policies, ["nested/guardrails.cedar#4"]);
    // datetime: ben's contract has ended.
    let resp = server.check(ask("ben", "pull", "infra-tools", office)).await.unwrap();
    assert_eq!(resp.determining_policies, ["contract-expired"]);
    // decimal: a big budget needs level 5.
    let mut r = ask("ben", "push", "scratch", r#"{"ip": "10.1.1.1", "count": 0, "now": "2019-01-01"}"#);
    r.entities_json = REQUEST_ENTITIES.into();
    let resp = server.check(r).await.unwrap();
    assert_eq!(resp.determining_policies, ["big-budget-needs-senior"]);
    // An overflow is an evaluation error, reported with its policy id.
    let resp = server
        .check(ask(
            "ann",
            "push",
            "infra-tools",
            r#"{"ip": "10.1.1.1", "count": 9223372036854775807, "now": "2026-01-01"}"#,
        ))
        .await
        .unwrap();
    assert_eq!(resp.errors.iter().map(|e| e.policy_id.as_str()).collect::<Vec<_>>(), ["push-counter"]);
    assert!(resp.errors[0].message.contains("overflow"), "{}", resp.errors[0].message);
}
