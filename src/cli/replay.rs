//! `cedar-pdp replay`: impact analysis. Decisions recorded replayable (`--decision-log-requests`)
//! are decided again on a new policy directory; every decision that changes is printed as one JSON
//! line, and a summary goes to stderr. `--fail-on` makes it a CI gate.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::ExitCode;

use cedar_policy::{Entities, EntityUid};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

use super::CliError;
use crate::authz::{self, CheckInput, ContextIn, Limits, UidRef};
use crate::config::{FailOn, ReplayArgs};
use crate::grpc::pb;
use crate::policy::Snapshot;

/// What a replay found.
#[derive(Default)]
struct Summary {
    replayed: u64,
    allow_to_deny: u64,
    deny_to_allow: u64,
    /// Records not replayable: answers made without the policies, listings, or decisions logged
    /// without `--decision-log-requests`.
    skipped: u64,
    /// Records the new policies cannot decide (a request the new schema refuses): a change for
    /// `--fail-on any`.
    refused: u64,
    /// Lines that are not JSON (a log written without `--log-format json`).
    unreadable: u64,
    /// Changes by (action, resource type).
    by_pair: BTreeMap<(String, String), u64>,
}

pub async fn replay(args: &ReplayArgs) -> Result<ExitCode, CliError> {
    let snapshot = match super::load_for_tool(&args.policy)? {
        Ok(snapshot) => snapshot,
        Err(code) => return Ok(code),
    };
    let entities = match &args.entities_from {
        Some(addr) => {
            let client = crate::config::ProvisioningClient { addr: addr.clone(), ..args.client.clone() };
            with_provisioned(&snapshot, &client).await?
        }
        None => snapshot.entities.clone(),
    };
    let mut summary = Summary::default();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for path in &args.logs {
        let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(BufReader::new(std::io::stdin()))
        } else {
            Box::new(BufReader::new(std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?))
        };
        for line in reader.lines() {
            let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
            if let Some(change) = replay_line(&snapshot, &entities, &line, &mut summary) {
                writeln!(out, "{change}")?;
            }
        }
    }
    out.flush()?;
    drop(out);
    report(&summary)?;
    // A gate that compared nothing must not pass.
    if summary.replayed == 0 {
        writeln!(
            std::io::stderr(),
            "nothing was replayed: record decisions with `serve --log-format json --decision-log-requests true`"
        )?;
        return Ok(ExitCode::from(2));
    }
    let failed = match args.fail_on {
        Some(FailOn::AllowGain) => summary.deny_to_allow > 0,
        Some(FailOn::Any) => summary.deny_to_allow + summary.allow_to_deny + summary.refused > 0,
        None => false,
    };
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The directory's entities with a running server's provisioned ones (files win, as in decisions).
async fn with_provisioned(
    snapshot: &Snapshot,
    client: &crate::config::ProvisioningClient,
) -> Result<Entities, CliError> {
    let addr = &client.addr;
    let mut stream = super::entities::client(client)
        .await?
        .export_entities(pb::ExportEntitiesRequest::default())
        .await?
        .into_inner();
    let (mut found, mut revision) = (Vec::new(), 0);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        revision = chunk.revision;
        for entity in chunk.entities {
            let json: Value = serde_json::from_str(&super::entities::entity_json(&entity))
                .map_err(|e| format!("an exported entity: {e}"))?;
            let uid = json.get("uid").cloned().and_then(|u| EntityUid::from_json(u).ok());
            let reserved =
                uid.as_ref().is_some_and(|u| u.type_name().to_string().starts_with(crate::policy::RESERVED_NAMESPACE));
            if !reserved && uid.is_some_and(|u| snapshot.entities.get(&u).is_none()) {
                found.push(json);
            }
        }
    }
    let provisioned = Entities::from_json_value(Value::Array(found), snapshot.schema.as_ref())
        .map_err(|e| format!("the provisioned entities of {addr}: {e}"))?;
    let count = provisioned.len();
    let merged = snapshot
        .entities
        .clone()
        .add_entities(provisioned, snapshot.schema.as_ref())
        .map_err(|e| format!("the provisioned entities of {addr}: {e}"))?;
    writeln!(std::io::stderr(), "replaying with {count} provisioned entities from {addr}, at its revision {revision}")?;
    Ok(merged)
}

/// Replays one decision-log line; the change, if its decision changed.
fn replay_line(snapshot: &Snapshot, entities: &Entities, line: &str, summary: &mut Summary) -> Option<Value> {
    let Ok(record) = serde_json::from_str::<Value>(line) else {
        summary.unreadable += u64::from(!line.trim().is_empty());
        return None;
    };
    if record.get("decision_id").is_none() || !matches!(record["decision"].as_str(), Some("allow" | "deny")) {
        return None;
    }
    let (Some(context), Some(principal)) =
        (record.get("context"), record["principal"].as_str().filter(|p| !p.is_empty()))
    else {
        summary.skipped += 1;
        return None;
    };
    let before_allow = record["decision"] == "allow";
    let uids: Vec<EntityUid> = [principal, record["action"].as_str()?, record["resource"].as_str()?]
        .iter()
        .filter_map(|u| u.parse().ok())
        .collect();
    let [p, a, r] = uids.as_slice() else {
        summary.skipped += 1;
        return None;
    };
    let parts = [p, a, r].map(|u| (u.type_name().to_string(), u.id().unescaped().to_string()));
    let refs = parts.each_ref().map(|(ty, id)| UidRef { ty, id });
    let input = CheckInput {
        principal: Some(refs[0]),
        action: Some(refs[1]),
        resource: Some(refs[2]),
        context: ContextIn::Json(context.as_str().unwrap_or_default()),
        entities_json: record["request_entities"].as_str().unwrap_or_default(),
    };
    // The server's own request-entity limit already applied when it decided.
    let limits = Limits { max_request_entities: usize::MAX, ..Limits::default() };
    let after = match authz::prepare(snapshot, &input, &limits) {
        Ok(prepared) if prepared.own.is_empty() => authz::decide_on(snapshot, prepared, entities),
        Ok(prepared) => {
            let own: Vec<_> = prepared.own.iter().map(|(_, e)| e.clone()).collect();
            let Ok(all) = entities.clone().add_entities(own, None) else {
                summary.refused += 1;
                return None;
            };
            authz::decide_on(snapshot, prepared, &all)
        }
        Err(_) => {
            summary.refused += 1;
            return None;
        }
    };
    summary.replayed += 1;
    if after.allow == before_allow {
        return None;
    }
    if before_allow {
        summary.allow_to_deny += 1
    } else {
        summary.deny_to_allow += 1
    }
    *summary.by_pair.entry((a.to_string(), r.type_name().to_string())).or_default() += 1;
    let show = |allow: bool| if allow { "allow" } else { "deny" };
    Some(json!({
        "decision_id": record["decision_id"],
        "principal": principal,
        "action": a.to_string(),
        "resource": r.to_string(),
        "before": {"decision": show(before_allow), "determining_policies": policies(&record["determining_policies"])},
        "after": {"decision": show(after.allow), "determining_policies": after.determining},
    }))
}

/// The determining policies of a record: a JSON list, or the list's debug text a log holds.
fn policies(value: &Value) -> Value {
    match value {
        Value::String(text) => serde_json::from_str(text).unwrap_or_else(|_| json!([text])),
        other => other.clone(),
    }
}

fn report(summary: &Summary) -> Result<(), CliError> {
    let mut stderr = std::io::stderr().lock();
    writeln!(
        stderr,
        "replayed {} decisions: {} changed ({} allow → deny, {} deny → allow); {} not replayable (not logged with --decision-log-requests, or not a check), {} refused by the new policies, {} lines not JSON",
        summary.replayed,
        summary.allow_to_deny + summary.deny_to_allow,
        summary.allow_to_deny,
        summary.deny_to_allow,
        summary.skipped,
        summary.refused,
        summary.unreadable
    )?;
    let mut pairs: Vec<_> = summary.by_pair.iter().collect();
    pairs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for ((action, ty), n) in pairs.into_iter().take(10) {
        writeln!(stderr, "  {n:>8}  {action} on {ty}")?;
    }
    Ok(())
}
