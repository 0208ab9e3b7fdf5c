//! OpenID AuthZEN Authorization API 1.0: access evaluation, batched evaluations and the metadata
//! document. A subject `{type, id}` is the principal `<type>::"<id>"`, an action `{name}` is
//! `Action::"<name>"`, a resource `{type, id}` is `<type>::"<id>"`, `context` is the Cedar context;
//! the `properties` of a subject or resource become the attributes of a request-scoped entity, under
//! the rules of `entities_json` (refused for an entity the store or the files define).

use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::{HttpApi, HttpError, with_request_id};
use crate::authz::{CheckInput, ContextIn, UidRef};
use crate::decision::{ListQuery, Origin, Varying};
use crate::error::{DecideError, RequestError};
use crate::policy::{AuthzenNames, Snapshot};
use crate::telemetry::HttpInfo;
use crate::tls::Peer;

const EVALUATION: &str = "/access/v1/evaluation";
const EVALUATIONS: &str = "/access/v1/evaluations";
const SEARCH_ACTION: &str = "/access/v1/search/action";
const SEARCH_SUBJECT: &str = "/access/v1/search/subject";
const SEARCH_RESOURCE: &str = "/access/v1/search/resource";
/// Default and largest page of a search.
const PAGE: (usize, usize) = (100, 1000);

pub fn routes() -> axum::Router<Arc<HttpApi>> {
    axum::Router::new()
        .route(EVALUATION, post(evaluation))
        .route(EVALUATIONS, post(evaluations))
        .route(SEARCH_ACTION, post(search_action))
        .route(SEARCH_SUBJECT, post(|a, p, h, b| search_entities(a, p, h, b, Varying::Principal)))
        .route(SEARCH_RESOURCE, post(|a, p, h, b| search_entities(a, p, h, b, Varying::Resource)))
        .route("/.well-known/authzen-configuration", get(configuration))
}

/// `GET /.well-known/authzen-configuration`: the endpoints this server serves, relative to the
/// address the caller used.
async fn configuration(headers: HeaderMap) -> Response {
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let base = format!("//{host}");
    let body = json!({
        "policy_decision_point": base,
        "access_evaluation_endpoint": format!("{base}{EVALUATION}"),
        "access_evaluations_endpoint": format!("{base}{EVALUATIONS}"),
        "search_action_endpoint": format!("{base}{SEARCH_ACTION}"),
        "search_subject_endpoint": format!("{base}{SEARCH_SUBJECT}"),
        "search_resource_endpoint": format!("{base}{SEARCH_RESOURCE}"),
    });
    with_request_id(headers.get("x-request-id"), axum::Json(body))
}

/// `POST /access/v1/evaluation`.
async fn evaluation(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let result = async {
        api.admit(&headers, &peer)?;
        let request = parse_body(&body)?;
        let snapshot = api.decisions.snapshot().map_err(|e| HttpError::from_status(&e.into()))?;
        let request_id = request_id(&headers);
        let item = Item::parse(&request, "", &snapshot.authzen)?;
        decide(&api, &snapshot, &item, &request_id, "evaluation").await.map_err(|e| decide_error(e, ""))
    }
    .await;
    answer(&headers, result)
}

/// `POST /access/v1/evaluations`: the top-level subject, action, resource and context are defaults
/// that an item's own key replaces as a whole.
async fn evaluations(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let result = async {
        api.admit(&headers, &peer)?;
        let request = parse_body(&body)?;
        let semantic = Semantic::parse(&request)?;
        let items = match request.get("evaluations") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.clone(),
            Some(_) => return Err(HttpError::bad_request("`evaluations` must be an array")),
        };
        if items.len() > api.max_batch {
            let limit = api.max_batch;
            return Err(HttpError::bad_request(format!(
                "`evaluations` has {} items, more than the limit of {limit}",
                items.len()
            )));
        }
        // One snapshot for the whole batch: every item is decided by the same policy version.
        let snapshot = api.decisions.snapshot().map_err(|e| HttpError::from_status(&e.into()))?;
        let request_id = request_id(&headers);
        if items.is_empty() {
            let item = Item::parse(&request, "", &snapshot.authzen)?;
            let answer =
                decide(&api, &snapshot, &item, &request_id, "evaluations").await.map_err(|e| decide_error(e, ""))?;
            return Ok(json!({ "evaluations": [answer] }));
        }
        let mut answers = Vec::with_capacity(items.len());
        for (i, own) in items.iter().enumerate() {
            let at = format!("evaluations[{i}].");
            let Some(own) = own.as_object() else {
                return Err(HttpError::bad_request(format!("`evaluations[{i}]` must be an object")));
            };
            let merged = defaults_replaced_by(&request, own);
            let item = Item::parse(&merged, &at, &snapshot.authzen)?;
            let answer = match decide(&api, &snapshot, &item, &request_id, "evaluations").await {
                Ok(answer) => answer,
                // An item that cannot be decided is a deny with its reason, as the spec asks.
                Err(DecideError::Request(e)) => {
                    json!({ "decision": false, "context": { "error": authzen_fields(e, &at).to_string() } })
                }
                // A store outage is no answer at all, for any item.
                Err(e) => return Err(HttpError::from_status(&e.into())),
            };
            let allowed = answer["decision"] == Value::Bool(true);
            answers.push(answer);
            if semantic.stops_after(allowed) {
                break;
            }
        }
        Ok(json!({ "evaluations": answers }))
    }
    .await;
    answer(&headers, result)
}

/// `POST /access/v1/search/action`: the actions the subject may take on the resource (the
/// `ListActions` RPC), a page at a time.
async fn search_action(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let result = async {
        api.admit(&headers, &peer)?;
        let request = parse_body(&body)?;
        let snapshot = api.decisions.snapshot().map_err(|e| HttpError::from_status(&e.into()))?;
        let (token, limit) = page_object(&request)?;
        let offset = match token_key(&token, &snapshot.version)?.as_str() {
            "" => 0,
            key => key.parse().map_err(|_| HttpError::bad_request("`page.token` is not a token this server gave"))?,
        };
        let mut with_action = request.clone();
        with_action.insert("action".into(), json!({"name": "-"}));
        let item = Item::parse(&with_action, "", &snapshot.authzen)?;
        let entities_json = item.entities_json();
        let input = item.input(&entities_json);
        let request_id = request_id(&headers);
        let origin = Origin {
            api: "authzen",
            http: Some(HttpInfo { route: "search_action", request_id: &request_id, dry_run: false }),
        };
        let actions = api.decisions.list_actions(&snapshot, &CheckInput { action: None, ..input }, 0, origin).await;
        let mut actions = actions.map_err(|e| decide_error(with_properties_named(e, &item.entities), ""))?;
        // An AuthZEN action is a name in the action namespace (`authzen.toml`): others are not listed.
        actions.retain(|a| a.type_name().to_string() == snapshot.authzen.action_type());
        let total = actions.len();
        let results: Vec<Value> =
            actions.iter().skip(offset).take(limit).map(|a| json!({"name": a.id().unescaped()})).collect();
        let next = offset + results.len();
        // A token holds the policy version: a page after a reload is refused, never skewed.
        let next_token = if next < total {
            crate::decision::page_token(&snapshot.version, &next.to_string())
        } else {
            String::new()
        };
        Ok(json!({ "results": results, "page": { "next_token": next_token, "count": results.len(), "total": total } }))
    }
    .await;
    answer(&headers, result)
}

/// `POST /access/v1/search/subject` and `/search/resource`: the subjects (or resources) of the
/// given type that the evaluation allows (`ListPrincipals`, `ListResources`), a page at a time.
/// `count` is the number of results in this page.
async fn search_entities(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: String,
    varying: Varying,
) -> Response {
    let result = async {
        api.admit(&headers, &peer)?;
        let mut request = parse_body(&body)?;
        let snapshot = api.decisions.snapshot().map_err(|e| HttpError::from_status(&e.into()))?;
        let part = match varying {
            Varying::Principal => "subject",
            Varying::Resource => "resource",
        };
        let ty = searched_type(&mut request, part)?;
        let (token, limit) = page_object(&request)?;
        let after = token_key(&token, &snapshot.version)?;
        let item = Item::parse(&request, "", &snapshot.authzen)?;
        let ty = snapshot.authzen.cedar_type(&ty).to_string();
        let entities_json = item.entities_json();
        let mut input = item.input(&entities_json);
        match varying {
            Varying::Principal => input.principal = None,
            Varying::Resource => input.resource = None,
        }
        let request_id = request_id(&headers);
        let route = if varying == Varying::Principal { "search_subject" } else { "search_resource" };
        let origin = Origin { api: "authzen", http: Some(HttpInfo { route, request_id: &request_id, dry_run: false }) };
        let query = ListQuery {
            input,
            varying,
            entity_type: &ty,
            after: &after,
            page_size: limit,
            min_revision: 0,
            deadline: None,
        };
        let listed = api.decisions.list(&snapshot, &query, origin).await;
        let listed = listed.map_err(|e| decide_error(with_properties_named(e, &item.entities), ""))?;
        let as_authzen = |u: &cedar_policy::EntityUid| {
            let ty = u.type_name().to_string();
            json!({"type": snapshot.authzen.authzen_type(&ty), "id": u.id().unescaped()})
        };
        let results: Vec<Value> = listed.uids.iter().map(as_authzen).collect();
        let next_token =
            listed.next.map(|key| crate::decision::page_token(&snapshot.version, &key)).unwrap_or_default();
        let count = results.len();
        Ok(json!({ "results": results, "page": { "next_token": next_token, "count": count },
                   "context": { "decision_id": listed.decision_id } }))
    }
    .await;
    answer(&headers, result)
}

/// The searched part's `type`; the part gets a placeholder id so that the rest parses as one
/// evaluation. It can carry no `id` or `properties`: every candidate is a stored entity.
fn searched_type(request: &mut Map<String, Value>, part: &str) -> Result<String, HttpError> {
    let Some(Value::Object(object)) = request.get_mut(part) else {
        return Err(HttpError::bad_request(format!("`{part}` is required (an object with a `type`)")));
    };
    for key in ["id", "properties"] {
        if object.get(key).is_some_and(|v| !v.is_null()) {
            return Err(HttpError::bad_request(format!("`{part}.{key}` cannot be given in a {part} search")));
        }
    }
    let ty = match object.get("type").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => return Err(HttpError::bad_request(format!("`{part}.type` is required (a non-empty string)"))),
    };
    object.insert("id".into(), json!("-"));
    Ok(ty)
}

/// The `page` object: (`token`, `limit`).
fn page_object(request: &Map<String, Value>) -> Result<(String, usize), HttpError> {
    let page = match request.get("page") {
        None | Some(Value::Null) => return Ok((String::new(), PAGE.0)),
        Some(Value::Object(page)) => page,
        Some(_) => return Err(HttpError::bad_request("`page` must be an object")),
    };
    let token = match page.get("token") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(t)) => t.clone(),
        Some(_) => return Err(HttpError::bad_request("`page.token` must be a string")),
    };
    let limit = match page.get("limit") {
        None | Some(Value::Null) => PAGE.0,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => (n as usize).min(PAGE.1),
            _ => return Err(HttpError::bad_request("`page.limit` must be a positive integer")),
        },
    };
    Ok((token, limit))
}

/// Where a page token leads: the candidate key after which to go on. A token from another policy
/// version is a 400: the listing may have changed under the pages.
fn token_key(token: &str, version: &str) -> Result<String, HttpError> {
    crate::decision::parse_page_token(token, version, "page.token").map_err(|e| HttpError::bad_request(e.to_string()))
}

/// When a batch stops early.
#[derive(Clone, Copy)]
enum Semantic {
    ExecuteAll,
    DenyOnFirstDeny,
    PermitOnFirstPermit,
}

impl Semantic {
    fn parse(request: &Map<String, Value>) -> Result<Semantic, HttpError> {
        let value = match request.get("options") {
            None | Some(Value::Null) => None,
            Some(Value::Object(options)) => options.get("evaluations_semantic"),
            Some(_) => return Err(HttpError::bad_request("`options` must be an object")),
        };
        match value.map(|v| v.as_str()) {
            None | Some(Some("execute_all")) => Ok(Semantic::ExecuteAll),
            Some(Some("deny_on_first_deny")) => Ok(Semantic::DenyOnFirstDeny),
            Some(Some("permit_on_first_permit")) => Ok(Semantic::PermitOnFirstPermit),
            _ => Err(HttpError::bad_request(
                "`options.evaluations_semantic` must be `execute_all`, `deny_on_first_deny` or `permit_on_first_permit`",
            )),
        }
    }

    fn stops_after(self, allowed: bool) -> bool {
        match self {
            Semantic::ExecuteAll => false,
            Semantic::DenyOnFirstDeny => !allowed,
            Semantic::PermitOnFirstPermit => allowed,
        }
    }
}

/// The request's defaults with an item's own keys replacing them whole (no deep merge).
fn defaults_replaced_by(request: &Map<String, Value>, own: &Map<String, Value>) -> Map<String, Value> {
    let mut merged: Map<String, Value> = ["subject", "action", "resource", "context"]
        .into_iter()
        .filter_map(|key| request.get(key).map(|v| (key.to_string(), v.clone())))
        .collect();
    merged.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    merged
}

fn parse_body(body: &str) -> Result<Map<String, Value>, HttpError> {
    crate::json::refuse_duplicate_keys(body).map_err(|e| HttpError::bad_request(format!("the body: {e}")))?;
    match serde_json::from_str(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(HttpError::bad_request("the body must be a JSON object")),
        Err(e) => Err(HttpError::bad_request(format!("the body is not JSON: {e}"))),
    }
}

fn request_id(headers: &HeaderMap) -> String {
    headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// One evaluation's parts, as Cedar request text (types through `authzen.toml`'s names).
struct Item {
    subject: (String, String),
    action_type: String,
    action: String,
    resource: (String, String),
    /// The context object; Null when the request has none.
    context: Value,
    /// The request-scoped entities made of `properties`, and which part each came from.
    entities: Vec<(&'static str, Value)>,
}

impl Item {
    /// Reads subject, action, resource and context; `at` prefixes field names in errors.
    fn parse(request: &Map<String, Value>, at: &str, names: &AuthzenNames) -> Result<Item, HttpError> {
        let object = |key: &str| -> Result<&Map<String, Value>, HttpError> {
            request
                .get(key)
                .and_then(Value::as_object)
                .ok_or_else(|| HttpError::bad_request(format!("`{at}{key}` is required (an object)")))
        };
        let text = |part: &Map<String, Value>, key: &str, field: &str| -> Result<String, HttpError> {
            match part.get(key).and_then(Value::as_str) {
                Some(s) if !s.is_empty() => Ok(s.to_string()),
                _ => Err(HttpError::bad_request(format!("`{at}{field}.{key}` is required (a non-empty string)"))),
            }
        };
        let (subject, action, resource) = (object("subject")?, object("action")?, object("resource")?);
        let cedar = |name: String| names.cedar_type(&name).to_string();
        let subject_uid = (cedar(text(subject, "type", "subject")?), text(subject, "id", "subject")?);
        let resource_uid = (cedar(text(resource, "type", "resource")?), text(resource, "id", "resource")?);
        let context = match request.get("context") {
            None | Some(Value::Null) => Value::Null,
            Some(c @ Value::Object(_)) => c.clone(),
            Some(_) => return Err(HttpError::bad_request(format!("`{at}context` must be an object"))),
        };
        let mut entities = Vec::new();
        for (part, object, (ty, id)) in [("subject", subject, &subject_uid), ("resource", resource, &resource_uid)] {
            match object.get("properties") {
                None | Some(Value::Null) => {}
                Some(Value::Object(attrs)) => {
                    entities.push((part, json!({"uid": {"type": ty, "id": id}, "attrs": attrs, "parents": []})))
                }
                Some(_) => return Err(HttpError::bad_request(format!("`{at}{part}.properties` must be an object"))),
            }
        }
        Ok(Item {
            subject: subject_uid,
            action_type: names.action_type().to_string(),
            action: text(action, "name", "action")?,
            resource: resource_uid,
            context,
            entities,
        })
    }
}

impl Item {
    /// The request-scoped entities, as `entities_json`.
    fn entities_json(&self) -> String {
        if self.entities.is_empty() {
            return String::new();
        }
        Value::Array(self.entities.iter().map(|(_, e)| e.clone()).collect()).to_string()
    }

    fn input<'a>(&'a self, entities_json: &'a str) -> CheckInput<'a> {
        CheckInput {
            principal: Some(UidRef { ty: &self.subject.0, id: &self.subject.1 }),
            action: Some(UidRef { ty: &self.action_type, id: &self.action }),
            resource: Some(UidRef { ty: &self.resource.0, id: &self.resource.1 }),
            context: if self.context.is_null() { ContextIn::EMPTY } else { ContextIn::Value(&self.context) },
            entities_json,
        }
    }
}

/// Decides one item: `{"decision": bool}` with the decision id in `context`.
async fn decide(
    api: &HttpApi,
    snapshot: &Snapshot,
    item: &Item,
    request_id: &str,
    route: &'static str,
) -> Result<Value, DecideError> {
    let entities_json = item.entities_json();
    let input = item.input(&entities_json);
    let origin = Origin { api: "authzen", http: Some(HttpInfo { route, request_id, dry_run: false }) };
    let decided = api
        .decisions
        .decide(snapshot, &input, 0, origin)
        .await
        .map_err(|e| with_properties_named(e, &item.entities))?;
    Ok(json!({ "decision": decided.outcome.allow, "context": { "decision_id": decided.decision_id } }))
}

fn with_properties_named(error: DecideError, entities: &[(&str, Value)]) -> DecideError {
    match error {
        DecideError::Request(e) => DecideError::Request(properties_named(e, entities)),
        other => other,
    }
}

/// `entities_json[i]` in an error is the `properties` of the part it was made from.
fn properties_named(error: RequestError, entities: &[(&str, Value)]) -> RequestError {
    error.renamed(|field| match field.strip_prefix("entities_json[").and_then(|rest| rest.split_once(']')) {
        Some((i, rest)) => match i.parse::<usize>().ok().and_then(|i| entities.get(i)) {
            Some((part, _)) => format!("{part}.properties{rest}"),
            None => field.to_string(),
        },
        None => field.to_string(),
    })
}

/// The Check API's field names in AuthZEN's terms, under `at`.
fn authzen_fields(error: RequestError, at: &str) -> RequestError {
    error.renamed(|field| {
        let field = match field.split_once('.').map_or((field, ""), |(head, rest)| (head, rest)) {
            ("principal", rest) => format!("subject.{rest}"),
            ("context_json", rest) => format!("context.{rest}"),
            _ => field.to_string(),
        };
        format!("{at}{}", field.trim_end_matches('.'))
    })
}

fn decide_error(error: DecideError, at: &str) -> HttpError {
    match error {
        DecideError::Request(e) => HttpError::bad_request(authzen_fields(e, at).to_string()),
        other => HttpError::from_status(&other.into()),
    }
}

fn answer(headers: &HeaderMap, result: Result<Value, HttpError>) -> Response {
    let request_id = headers.get("x-request-id");
    match result {
        Ok(body) => with_request_id(request_id, (StatusCode::OK, axum::Json(body))),
        Err(e) => with_request_id(request_id, e),
    }
}
