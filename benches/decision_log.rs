//! The cost of one decision-log record through the JSON formatter (to a sink), per decision.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use cedar_pdp::authz::{CheckInput, ContextIn, UidRef, decide};
use cedar_pdp::config::ValidationMode;
use cedar_pdp::policy::load_dir;
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let snapshot = load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), ValidationMode::Strict).unwrap();
    let input = CheckInput {
        principal: Some(UidRef { ty: "User", id: "bob" }),
        action: Some(UidRef { ty: "Action", id: "view" }),
        resource: Some(UidRef { ty: "Document", id: "design-doc" }),
        context: ContextIn::EMPTY,
        entities_json: "",
    };
    let outcome = decide(&snapshot, &input, &cedar_pdp::authz::Limits::default()).unwrap();
    let subscriber = tracing_subscriber::fmt().json().flatten_event(true).with_writer(std::io::sink).finish();
    tracing::subscriber::with_default(subscriber, || {
        c.bench_function("decision_log/json_record", |b| {
            b.iter(|| {
                cedar_pdp::telemetry::record_decision(
                    true,
                    "check",
                    "01234567-89ab-7def-8123-456789abcdef",
                    &snapshot.version,
                    &outcome,
                    Duration::from_micros(42),
                    None,
                    None,
                )
            })
        });
        // `--decision-log-requests`: the same record with the request needed to replay it.
        let replay = cedar_pdp::telemetry::Replayable {
            context: r#"{"mfa": true, "source_ip": "10.1.2.3"}"#,
            entities: "",
            min_revision: 0,
            entity_revision: 1_796_044_686_941_345,
        };
        c.bench_function("decision_log/json_record_with_request", |b| {
            b.iter(|| {
                cedar_pdp::telemetry::record_decision(
                    true,
                    "check",
                    "01234567-89ab-7def-8123-456789abcdef",
                    &snapshot.version,
                    &outcome,
                    Duration::from_micros(42),
                    None,
                    Some(replay),
                )
            })
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
