//! `entities import|export|get|delete` and `audit`: the EntityService for identity engineers.
//!
//! Entities are Cedar's entity JSON (`{"uid": …, "attrs": …, "parents": […], "tags": …}`), so an
//! export of one server imports into another to the same state, and Cedar's own entity files import
//! as they are.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use serde_json::{Value, json};

use super::remote::{Bearer, channel, token};
use super::{CliError, emit, parse_uid};
use crate::config::{AuditArgs, EntitiesArgs, EntitiesCommand, ProvisioningClient};
use crate::grpc::{EntityServiceClient, pb};

type Client = EntityServiceClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>;

pub(super) async fn client(args: &ProvisioningClient) -> Result<Client, CliError> {
    let bearer = Bearer::new(token(args.token.as_deref(), args.token_file.as_deref(), &args.data_dir)?)?;
    Ok(EntityServiceClient::with_interceptor(channel(&args.addr, &args.tls).await?, bearer)
        .max_decoding_message_size(super::remote::MAX_ANSWER_BYTES))
}

pub async fn entities(args: &EntitiesArgs) -> Result<ExitCode, CliError> {
    match &args.command {
        EntitiesCommand::Import { file, batch_size } => import(args, file, *batch_size).await,
        EntitiesCommand::Export { ty } => export(args, ty.as_deref()).await,
        EntitiesCommand::Get { uid } => get(args, uid).await,
        EntitiesCommand::Delete { uids } => delete(args, uids).await,
    }
}

/// An entity of the input and where it was: `line 12` or `entity [3]`.
struct Item {
    at: String,
    entity: pb::Entity,
}

async fn import(args: &EntitiesArgs, file: &Path, batch_size: usize) -> Result<ExitCode, CliError> {
    if batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    let items = read_items(file)?;
    let mut client = client(&args.client).await?;
    let progress = indicatif::ProgressBar::new(items.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} entities ({per_sec}, {eta} left)")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut written, mut revision) = (0usize, None);
    for batch in items.chunks(batch_size) {
        let request = pb::UpsertEntitiesRequest {
            entities: batch.iter().map(|i| i.entity.clone()).collect(),
            request_id: format!("import-{}", uuid::Uuid::now_v7()),
        };
        match upsert_retrying(&mut client, request).await {
            Ok(response) => {
                written += batch.len();
                revision = Some(response.into_inner().revision);
                progress.inc(batch.len() as u64);
            }
            Err(status) => {
                progress.abandon();
                let at = batch_index(status.message()).and_then(|i| batch.get(i)).map_or_else(
                    || format!("the batch of {} from {}", batch.len(), batch[0].at),
                    |item| item.at.clone(),
                );
                let before = match revision {
                    Some(r) => format!("{written} entities before it were written (last revision {r})"),
                    None => "nothing was written".into(),
                };
                return Err(format!(
                    "{}: {at}: {:?}: {}\n{before}; fix it and import the file again (importing is idempotent)",
                    file.display(),
                    status.code(),
                    status.message()
                )
                .into());
            }
        }
    }
    progress.finish_and_clear();
    let revision = revision.map_or_else(|| "unchanged".into(), |r| r.to_string());
    emit(&[format!("imported {written} entities from {}; revision {revision}", file.display())])?;
    Ok(ExitCode::SUCCESS)
}

/// One batch, retried with the same request id while the server answers UNAVAILABLE (a Redis
/// failover, an outcome it could not know): never written twice.
async fn upsert_retrying(
    client: &mut Client,
    request: pb::UpsertEntitiesRequest,
) -> Result<tonic::Response<pb::WriteResponse>, tonic::Status> {
    let mut wait = std::time::Duration::from_millis(200);
    for _ in 0..4 {
        match client.upsert_entities(request.clone()).await {
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            answer => return answer,
        }
    }
    client.upsert_entities(request).await
}

/// The `i` of the first `` `entities[i]`` `` a server error names.
fn batch_index(message: &str) -> Option<usize> {
    let rest = &message[message.find("entities[")? + "entities[".len()..];
    rest[..rest.find(']')?].parse().ok()
}

fn read_items(file: &Path) -> Result<Vec<Item>, CliError> {
    let mut text = String::new();
    let read = if file == Path::new("-") {
        std::io::stdin().read_to_string(&mut text)
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_string(&mut text))
    };
    read.map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let items = parse_items(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut seen: HashMap<(String, String), &str> = HashMap::new();
    for item in &items {
        let uid = item.entity.uid.as_ref().map(|u| (u.r#type.clone(), u.id.clone())).unwrap_or_default();
        if let Some(first) = seen.insert(uid, &item.at) {
            return Err(format!("{}: {}: the same uid as {first}", file.display(), item.at).into());
        }
    }
    Ok(items)
}

/// A JSON array of entities, or one entity per line.
fn parse_items(text: &str) -> Result<Vec<Item>, String> {
    if text.trim_start().starts_with('[') {
        let values: Vec<Value> =
            serde_json::from_str(text).map_err(|e| format!("not a JSON array of entities: {e}"))?;
        return values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let at = format!("entity [{i}]");
                entity_message(v).map(|entity| Item { at: at.clone(), entity }).map_err(|e| format!("{at}: {e}"))
            })
            .collect();
    }
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("line {}", n + 1);
        let value: Value = serde_json::from_str(line).map_err(|e| format!("{at}: not JSON: {e}"))?;
        items.push(Item { entity: entity_message(&value).map_err(|e| format!("{at}: {e}"))?, at });
    }
    Ok(items)
}

/// Cedar entity JSON → the API's entity (attributes and tags stay Cedar JSON, checked by the server).
fn entity_message(value: &Value) -> Result<pb::Entity, String> {
    let object = value.as_object().ok_or("an entity is a JSON object")?;
    if let Some(key) = object.keys().find(|k| !["uid", "attrs", "parents", "tags"].contains(&k.as_str())) {
        return Err(format!("unknown key `{key}` (an entity has uid, attrs, parents and tags)"));
    }
    let record = |key: &str| match object.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(v @ Value::Object(_)) => Ok(v.to_string()),
        Some(_) => Err(format!("`{key}` must be a JSON object")),
    };
    let parents = match object.get("parents") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, p)| uid_message(p).ok_or(format!("`parents[{i}]` must be {{\"type\": …, \"id\": …}}")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("`parents` must be an array".into()),
    };
    Ok(pb::Entity {
        uid: Some(
            uid_message(object.get("uid").ok_or("`uid` is required")?)
                .ok_or("`uid` must be {\"type\": …, \"id\": …}")?,
        ),
        attrs_json: record("attrs")?,
        parents,
        tags_json: record("tags")?,
    })
}

/// `{"type": T, "id": I}`, or Cedar's escaped `{"__entity": {…}}`.
fn uid_message(value: &Value) -> Option<pb::EntityUid> {
    let value = value.get("__entity").unwrap_or(value);
    Some(pb::EntityUid { r#type: value.get("type")?.as_str()?.to_string(), id: value.get("id")?.as_str()?.to_string() })
}

/// The API's entity → one line of Cedar entity JSON.
pub(super) fn entity_json(entity: &pb::Entity) -> String {
    let uid = |u: &pb::EntityUid| json!({"type": u.r#type, "id": u.id});
    let record = |text: &str| serde_json::from_str::<Value>(text).unwrap_or_else(|_| json!({}));
    let mut out = json!({
        "uid": entity.uid.as_ref().map(uid),
        "attrs": if entity.attrs_json.is_empty() { json!({}) } else { record(&entity.attrs_json) },
        "parents": entity.parents.iter().map(uid).collect::<Vec<_>>(),
    });
    if !entity.tags_json.is_empty() {
        out["tags"] = record(&entity.tags_json);
    }
    out.to_string()
}

async fn export(args: &EntitiesArgs, ty: Option<&str>) -> Result<ExitCode, CliError> {
    let request = pb::ExportEntitiesRequest { r#type: ty.unwrap_or_default().to_string() };
    let mut stream = client(&args.client).await?.export_entities(request).await?.into_inner();
    let (mut count, mut revision) = (0usize, None);
    while let Some(chunk) = stream.message().await? {
        count += chunk.entities.len();
        revision = Some(chunk.revision);
        emit(&chunk.entities.iter().map(entity_json).collect::<Vec<_>>())?;
    }
    let at = revision.map_or_else(String::new, |r| format!(" at revision {r}"));
    eprintln_quiet(&format!("exported {count} entities{at}"));
    Ok(ExitCode::SUCCESS)
}

async fn get(args: &EntitiesArgs, uid: &str) -> Result<ExitCode, CliError> {
    let request = pb::GetEntityRequest { uid: Some(parse_uid("the uid", uid)?) };
    let response = client(&args.client).await?.get_entity(request).await?.into_inner();
    let entity = response.entity.unwrap_or_default();
    emit(&[entity_json(&entity)])?;
    let from = match response.source.as_str() {
        "files" => "defined in the policy directory's files (read-only here)".to_string(),
        _ => format!("provisioned, last written at revision {}", response.revision),
    };
    eprintln_quiet(&from);
    Ok(ExitCode::SUCCESS)
}

async fn delete(args: &EntitiesArgs, uids: &[String]) -> Result<ExitCode, CliError> {
    let uids = uids.iter().map(|u| parse_uid("the uid", u)).collect::<Result<Vec<_>, _>>()?;
    let count = uids.len();
    let request = pb::DeleteEntitiesRequest { uids, request_id: String::new() };
    let response = client(&args.client).await?.delete_entities(request).await?;
    emit(&[format!("deleted {count} entities; revision {}", response.into_inner().revision)])?;
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(args: &AuditArgs) -> Result<ExitCode, CliError> {
    let mut request = pb::ReadAuditRequest {
        uid: args.uid.as_deref().map(|u| parse_uid("--uid", u)).transpose()?,
        since: args.since.clone().unwrap_or_default(),
        until: args.until.clone().unwrap_or_default(),
        limit: 0,
        page_token: String::new(),
    };
    let mut client = client(&args.client).await?;
    let mut records = Vec::new();
    // A page at a time (the server sends at most 1000), following the cursor.
    loop {
        let wanted = args.limit.saturating_sub(records.len());
        if wanted == 0 {
            break;
        }
        request.limit = u32::try_from(wanted.min(1000)).unwrap_or(1000);
        let page = client.read_audit(request.clone()).await?.into_inner();
        records.extend(page.records);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    let uid = |r: &pb::AuditRecord| {
        r.uid.as_ref().map(|u| format!("{}::{}", u.r#type, Value::String(u.id.clone()))).unwrap_or_default()
    };
    let lines: Vec<String> = if args.json {
        let entity = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
        records
            .iter()
            .map(|r| {
                json!({"revision": r.revision, "at": r.at, "actor": r.actor, "operation": r.operation,
                       "uid": uid(r), "before": entity(&r.before_json), "after": entity(&r.after_json)})
                .to_string()
            })
            .collect()
    } else {
        let mut lines = vec![format!("{:>16}  {:<24}  {:<16}  {:<6}  UID", "REVISION", "AT", "ACTOR", "OP")];
        lines.extend(
            records
                .iter()
                .map(|r| format!("{:>16}  {:<24}  {:<16}  {:<6}  {}", r.revision, r.at, r.actor, r.operation, uid(r))),
        );
        lines
    };
    emit(&lines)?;
    Ok(ExitCode::SUCCESS)
}

/// A note for the person at the terminal; a closed stderr is no reason to fail.
fn eprintln_quiet(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}
