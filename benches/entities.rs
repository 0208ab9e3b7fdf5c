//! One check whose decision needs a principal in nested groups and a document whose owner has a
//! manager, with its entities (a) in the policy files, (m) provisioned in the in-memory store, (e)
//! in the embedded store on disk with a warm cache, (f) embedded with a cold cache (every level read
//! from the database), (b) provisioned in Redis with a warm local cache, (c) in Redis with a cold
//! cache (every level read from Redis); and (n) the in-memory store with its entities cached but
//! every slice built anew.
//!
//! `taskset -c 1 cargo bench --bench entities` (figures in docs/benchmarks.md). Starts its own
//! redis-server on a free loopback port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "../tests/common/redis.rs"]
mod redis_server;

use std::hint::black_box;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use cedar_pdp::authz::{CheckInput, ContextIn, Limits, UidRef};
use cedar_pdp::config::ValidationMode;
use cedar_pdp::entities::{self, Change, EntityStore, StoreConfig, StoreKind};
use cedar_pdp::policy::{Snapshot, load_dir};
use cedar_policy::EntityUid;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn uid(ty: &str, id: &str) -> serde_json::Value {
    json!({"__entity": {"type": ty, "id": id}})
}

/// 2,000 users in 100 teams, in 10 departments, in `readers`; each user's manager is another user;
/// 500 documents owned by users. Cedar JSON with explicit escapes, as the store keeps it.
fn organisation() -> Vec<serde_json::Value> {
    let entity = |ty: &str, id: String, attrs: serde_json::Value, parents: Vec<serde_json::Value>| json!({"uid": {"type": ty, "id": id}, "attrs": attrs, "parents": parents});
    let mut out = Vec::new();
    for d in 0..10 {
        out.push(entity("Group", format!("dept{d}"), json!({}), vec![json!({"type": "Group", "id": "readers"})]));
    }
    for t in 0..100 {
        out.push(entity(
            "Group",
            format!("team{t}"),
            json!({}),
            vec![json!({"type": "Group", "id": format!("dept{}", t % 10)})],
        ));
    }
    for u in 0..2000 {
        let attrs = json!({"suspended": false, "manager": uid("User", &format!("u{}", (u + 1) % 2000))});
        out.push(entity(
            "User",
            format!("u{u}"),
            attrs,
            vec![json!({"type": "Group", "id": format!("team{}", u % 100)})],
        ));
    }
    for d in 0..500 {
        out.push(entity(
            "Document",
            format!("d{d}"),
            json!({"owner": uid("User", &format!("u{}", (d * 7) % 2000))}),
            vec![],
        ));
    }
    out
}

fn policy_dir(with_entities: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/org");
    for file in ["org.cedar", "org.cedarschema", "entities.json"] {
        std::fs::copy(fixture.join(file), dir.path().join(file)).unwrap();
    }
    if with_entities {
        std::fs::write(dir.path().join("org.entities.json"), serde_json::to_string(&organisation()).unwrap()).unwrap();
    }
    dir
}

fn changes() -> Vec<Change> {
    organisation()
        .into_iter()
        .map(|json| {
            let u = &json["uid"];
            let uid =
                EntityUid::from_str(&format!("{}::\"{}\"", u["type"].as_str().unwrap(), u["id"].as_str().unwrap()))
                    .unwrap();
            Change::Upsert { uid, json }
        })
        .collect()
}

fn store(runtime: &tokio::runtime::Runtime, kind: StoreKind, scratch: &Path, provision: bool) -> Arc<EntityStore> {
    let config = StoreConfig {
        kind,
        redis_timeout: Duration::from_secs(1),
        cache_capacity: 100_000,
        cache_ttl: Duration::from_secs(600),
        stale_for: Duration::from_secs(5),
        legacy_audit_file: scratch.join("audit.jsonl"),
        audit_retention: None,
        max_decision_entities: 10_000,
        slice_cache_size: 10_000,
    };
    runtime.block_on(async {
        let store = EntityStore::open(&config, CancellationToken::new()).unwrap();
        assert!(store.wait_ready(Duration::from_secs(5)).await);
        for chunk in changes().chunks(500).filter(|_| provision) {
            store.apply(chunk.to_vec(), "bench", None).await.unwrap();
        }
        store
    })
}

const INPUT: CheckInput<'static> = CheckInput {
    principal: Some(UidRef { ty: "User", id: "u8" }),
    action: Some(UidRef { ty: "Action", id: "view" }),
    resource: Some(UidRef { ty: "Document", id: "d3" }),
    context: ContextIn::EMPTY,
    entities_json: "",
};

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let redis = redis_server::RedisServer::start();
    let scratch = tempfile::tempdir().unwrap();
    let limits = Limits::default();
    let files_dir = policy_dir(true);
    let files: Snapshot = load_dir(files_dir.path(), ValidationMode::Strict).unwrap();
    let bare_dir = policy_dir(false);
    let bare: Snapshot = load_dir(bare_dir.path(), ValidationMode::Strict).unwrap();
    let empty_scratch = tempfile::tempdir().unwrap();
    let empty = store(&runtime, StoreKind::Memory, empty_scratch.path(), false);
    let memory = store(&runtime, StoreKind::Memory, scratch.path(), true);
    let embedded = store(&runtime, StoreKind::Embedded { data_dir: scratch.path().join("data") }, scratch.path(), true);
    let redis_kind = StoreKind::Redis {
        url: redis.url(),
        prefix: "bench:".into(),
        tls: Default::default(),
        topology: Default::default(),
        min_replicas: 0,
    };
    let shared = store(&runtime, redis_kind, scratch.path(), true);

    // Every variant must decide the same way: allowed through team → dept → readers.
    for (store, snapshot) in [(&empty, &files), (&memory, &bare), (&embedded, &bare), (&shared, &bare)] {
        let outcome = runtime.block_on(entities::decide(store, snapshot, &INPUT, &limits, 0)).unwrap();
        assert!(outcome.allow && outcome.determining == ["readers-view"], "{outcome:?}");
    }

    let mut group = c.benchmark_group("entities");
    group.bench_function("a_files", |b| {
        b.iter(|| runtime.block_on(entities::decide(&empty, black_box(&files), &INPUT, &limits, 0)).unwrap())
    });
    group.bench_function("m_in_process_store", |b| {
        b.iter(|| runtime.block_on(entities::decide(&memory, black_box(&bare), &INPUT, &limits, 0)).unwrap())
    });
    group.bench_function("n_in_process_store_new_slice", |b| {
        b.iter_batched(
            || memory.clear_slices(),
            |()| runtime.block_on(entities::decide(&memory, black_box(&bare), &INPUT, &limits, 0)).unwrap(),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("e_embedded_warm_cache", |b| {
        b.iter(|| runtime.block_on(entities::decide(&embedded, black_box(&bare), &INPUT, &limits, 0)).unwrap())
    });
    group.bench_function("f_embedded_cold_cache", |b| {
        b.iter_batched(
            || embedded.clear_cache(),
            |()| runtime.block_on(entities::decide(&embedded, black_box(&bare), &INPUT, &limits, 0)).unwrap(),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("b_redis_warm_cache", |b| {
        b.iter(|| runtime.block_on(entities::decide(&shared, black_box(&bare), &INPUT, &limits, 0)).unwrap())
    });
    group.bench_function("c_redis_cold_cache", |b| {
        b.iter_batched(
            || shared.clear_cache(),
            |()| runtime.block_on(entities::decide(&shared, black_box(&bare), &INPUT, &limits, 0)).unwrap(),
            BatchSize::PerIteration,
        )
    });
    group.finish();

    // What a cached entity costs a new slice: a copy of Cedar's entity, or a parse of its stored text.
    let user = organisation().into_iter().find(|e| e["uid"]["id"] == "u8").unwrap();
    let text = user.to_string();
    let entity = cedar_policy::Entity::from_json_value(user, None).unwrap();
    let mut group = c.benchmark_group("record");
    group.bench_function("clone_cedar_entity", |b| b.iter(|| black_box(&entity).clone()));
    group.bench_function("parse_stored_text", |b| {
        b.iter(|| cedar_policy::Entity::from_json_str(black_box(&text), None).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
