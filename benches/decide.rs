//! The in-process decision path: request conversion + Cedar evaluation, next to Cedar alone.
//!
//! `cargo bench --bench decide` (figures in docs/benchmarks.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::path::Path;
use std::str::FromStr;

use cedar_pdp::authz::{CheckInput, ContextFields, ContextIn, Field, Limits, UidRef, decide, prepare};
use cedar_pdp::config::ValidationMode;
use cedar_pdp::policy::{Snapshot, load_dir};
use cedar_policy::{Authorizer, Context, EntityUid, Request};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

fn example() -> Snapshot {
    load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), ValidationMode::Strict).unwrap()
}

/// The example application with 11,000 more users in 100 more groups: a store worth not copying.
fn large() -> (tempfile::TempDir, Snapshot) {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        // Policy files only (not `tests/`).
        if entry.file_type().unwrap().is_dir() {
            continue;
        }
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let mut extra = Vec::new();
    for g in 0..100 {
        extra.push(serde_json::json!({"uid": {"type": "Group", "id": format!("g{g}")}, "attrs": {"name": "g"},
            "parents": [{"type": "Group", "id": "engineering"}]}));
    }
    for u in 0..11_000 {
        extra.push(serde_json::json!({"uid": {"type": "User", "id": format!("u{u}")},
            "attrs": {"name": "u", "suspended": false}, "parents": [{"type": "Group", "id": format!("g{}", u % 100)}]}));
    }
    std::fs::write(dir.path().join("bulk.entities.json"), serde_json::to_string(&extra).unwrap()).unwrap();
    let snapshot = load_dir(dir.path(), ValidationMode::Strict).unwrap();
    (dir, snapshot)
}

const DRAFT: &str = r#"[{"uid": {"type": "Document", "id": "draft"},
    "attrs": {"owner": {"type": "User", "id": "erin"}, "public": false, "classification": "internal"},
    "parents": [{"type": "Folder", "id": "designs"}]}]"#;

fn input<'a>(
    principal: &'a str,
    action: &'a str,
    resource: &'a str,
    context: &'a str,
    entities: &'a str,
) -> CheckInput<'a> {
    CheckInput {
        principal: Some(UidRef { ty: "User", id: principal }),
        action: Some(UidRef { ty: "Action", id: action }),
        resource: Some(UidRef { ty: "Document", id: resource }),
        context: ContextIn::Json(context),
        entities_json: entities,
    }
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let snapshot = example();
    let mut group = c.benchmark_group("decide");

    // The floor: Cedar's evaluation alone on a request built beforehand.
    let request = Request::new(
        EntityUid::from_str(r#"User::"bob""#).unwrap(),
        EntityUid::from_str(r#"Action::"view""#).unwrap(),
        EntityUid::from_str(r#"Document::"design-doc""#).unwrap(),
        Context::empty(),
        snapshot.schema.as_ref(),
    )
    .unwrap();
    let authorizer = Authorizer::new();
    group.bench_function("cedar_is_authorized_only", |b| {
        b.iter(|| black_box(authorizer.is_authorized(&request, &snapshot.policies, &snapshot.entities)))
    });

    // What building the request costs, with and without the schema's validation.
    let uids =
        [r#"User::"bob""#, r#"Action::"view""#, r#"Document::"design-doc""#].map(|u| EntityUid::from_str(u).unwrap());
    for (name, schema) in [("request_new_with_schema", snapshot.schema.as_ref()), ("request_new_without_schema", None)]
    {
        group.bench_function(name, |b| {
            b.iter(|| {
                let [p, a, r] = uids.clone();
                black_box(Request::new(p, a, r, Context::empty(), schema).unwrap())
            })
        });
    }

    let plain = input("bob", "view", "design-doc", "", "");
    group.bench_function("check", |b| b.iter(|| black_box(decide(&snapshot, black_box(&plain), &limits).unwrap())));

    let with_context = input("bob", "view", "design-doc", r#"{"mfa": true, "source_ip": "10.1.2.3"}"#, "");
    group.bench_function("check_with_context", |b| {
        b.iter(|| black_box(decide(&snapshot, &with_context, &limits).unwrap()))
    });

    // Building the Cedar request alone (uids, context, validation), without and with the context.
    for (name, check) in [("prepare", &plain), ("prepare_with_context", &with_context)] {
        group.bench_function(name, |b| b.iter(|| black_box(prepare(&snapshot, black_box(check), &limits).unwrap())));
    }

    // The same context through Cedar's generic path: typed parse, then validation against the schema.
    let view = EntityUid::from_str(r#"Action::"view""#).unwrap();
    group.bench_function("cedar_typed_context_for_comparison", |b| {
        b.iter(|| {
            let schema = snapshot.schema.as_ref().unwrap();
            let context =
                Context::from_json_str(black_box(with_context.context.text().as_ref()), Some((schema, &view))).unwrap();
            let [p, a, r] = uids.clone();
            black_box(Request::new(p, a, r, context, Some(schema)).unwrap())
        })
    });

    // ext_authz's context (a header record and the client's address) on the mesh example, made per
    // request as the mapping makes it: as fields converted by the plan, against as a JSON value.
    let mesh =
        load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mesh"), ValidationMode::Strict).unwrap();
    fn mesh_input(context: ContextIn<'_>) -> CheckInput<'_> {
        CheckInput {
            principal: Some(UidRef { ty: "User", id: "alice" }),
            action: Some(UidRef { ty: "Action", id: "view" }),
            resource: Some(UidRef { ty: "Document", id: "plan" }),
            context,
            entities_json: "",
        }
    }
    let fields = || {
        let mut fields = ContextFields::default();
        fields.push_strings("headers", [("x-tenant".to_string(), "acme".to_string())]);
        fields.push("source_ip", Field::Ip("127.0.0.1".into()));
        fields
    };
    group.bench_function("prepare_ext_authz_context_fields", |b| {
        b.iter(|| {
            let fields = fields();
            black_box(prepare(&mesh, &mesh_input(ContextIn::Fields(black_box(&fields))), &limits).unwrap())
        })
    });
    group.bench_function("prepare_ext_authz_context_json_value", |b| {
        b.iter(|| {
            // As the mapping built it before: a map of header strings and the extension call.
            let mut value = serde_json::Map::new();
            let headers = [("x-tenant".to_string(), serde_json::Value::String("acme".into()))];
            value.insert("headers".into(), serde_json::Value::Object(headers.into_iter().collect()));
            value.insert("source_ip".into(), serde_json::json!({"__extn": {"fn": "ip", "arg": "127.0.0.1"}}));
            let value = serde_json::Value::Object(value);
            black_box(prepare(&mesh, &mesh_input(ContextIn::Value(black_box(&value))), &limits).unwrap())
        })
    });

    let scoped = input("bob", "view", "draft", "", DRAFT);
    group.bench_function("check_with_request_entities", |b| {
        b.iter(|| black_box(decide(&snapshot, &scoped, &limits).unwrap()))
    });

    let batch: Vec<CheckInput<'_>> = (0..100)
        .map(|i| match i % 4 {
            0 => input("bob", "view", "design-doc", "", ""),
            1 => input("alice", "edit", "design-doc", "", ""),
            2 => input("dave", "view", "handbook", "", ""),
            _ => input("erin", "view", "salaries", r#"{"mfa": true}"#, ""),
        })
        .collect();
    group.throughput(Throughput::Elements(100));
    group.bench_function("batch_of_100", |b| {
        b.iter(|| {
            for check in &batch {
                black_box(decide(&snapshot, check, &limits).unwrap());
            }
        })
    });
    group.finish();

    // Request-scoped entities against an 11k-entity store: a slice, not a copy.
    let (_dir, big) = large();
    let mut group = c.benchmark_group("store_11k");
    group.bench_function("check", |b| b.iter(|| black_box(decide(&big, &plain, &limits).unwrap())));
    group.bench_function("check_with_request_entities", |b| {
        b.iter(|| black_box(decide(&big, &scoped, &limits).unwrap()))
    });
    group.bench_function("clone_store_for_comparison", |b| {
        b.iter_batched(|| (), |()| black_box(big.entities.clone()), BatchSize::SmallInput)
    });
    group.finish();
}

/// 10,000 users, each with a grant of their own: every principal matches a distinct set of policies,
/// more than any fixed-size slice cache would hold if it stopped caching.
fn many_match_sets(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let grants: String = (0..10_000)
        .map(|u| format!("permit (principal == User::\"u{u}\", action == Action::\"view\", resource) when {{ context.n > {u} }};\n"))
        .collect();
    std::fs::write(dir.path().join("grants.cedar"), grants).unwrap();
    let snapshot = load_dir(dir.path(), ValidationMode::Strict).unwrap();
    let names: Vec<String> = (0..10_000).map(|u| format!("u{u}")).collect();
    let mut next = 0;
    c.bench_function("decide/many_match_sets", |b| {
        b.iter(|| {
            next = (next + 1) % names.len();
            let check = input(&names[next], "view", "d", r#"{"n": 20000}"#, "");
            black_box(decide(&snapshot, &check, &Limits::default()).unwrap())
        })
    });
}

criterion_group!(benches, bench, many_match_sets);
criterion_main!(benches);
