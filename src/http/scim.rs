//! SCIM 2.0 over HTTP under `/scim/v2`: routes, credentials (`--scim-token`, as `Bearer TOKEN` or
//! the bare token Okta's "header" mode sends), query parameters, ETags and `If-Match`, and answers
//! as `application/scim+json`, errors in SCIM's error schema. Everything else is `crate::scim`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::HttpApi;
use crate::error::ScimError;
use crate::scim::{self, MAX_RESULTS, ResourceType, Stored};

const CONTENT_TYPE: &str = "application/scim+json";
const ERROR_URN: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const LIST_URN: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";

pub fn routes() -> axum::Router<Arc<HttpApi>> {
    axum::Router::new()
        .route("/scim/v2/ServiceProviderConfig", get(service_provider_config))
        .route("/scim/v2/ResourceTypes", get(resource_types))
        .route("/scim/v2/ResourceTypes/{id}", get(resource_type))
        .route("/scim/v2/Schemas", get(schemas))
        .route("/scim/v2/Schemas/{id}", get(schema))
        .route("/scim/v2/Users", get(list_users).post(create_user))
        .route("/scim/v2/Users/{id}", get(get_user).put(put_user).patch(patch_user).delete(delete_user))
        .route("/scim/v2/Groups", get(list_groups).post(create_group))
        .route("/scim/v2/Groups/{id}", get(get_group).put(put_group).patch(patch_group).delete(delete_group))
        .route("/scim/v2/.search", axum::routing::post(search))
        .route("/scim/v2/{*rest}", axum::routing::any(unknown))
}

/// Searching across resource types (`POST /.search`) is not supported: 501, as RFC 7644 §3.4.3 allows.
async fn search(State(api): State<Arc<HttpApi>>, headers: HeaderMap) -> Result<Response, ScimError> {
    caller(&api, &headers)?;
    Err(ScimError::new(501, None, "searching across resource types is not supported; search /Users or /Groups"))
}

async fn unknown(State(api): State<Arc<HttpApi>>, headers: HeaderMap) -> Result<Response, ScimError> {
    caller(&api, &headers)?;
    Err(ScimError::not_found("no such SCIM endpoint"))
}

impl IntoResponse for ScimError {
    fn into_response(self) -> Response {
        let mut body = json!({"schemas": [ERROR_URN], "status": self.status.to_string(), "detail": self.detail});
        if let Some(scim_type) = self.scim_type {
            body["scimType"] = json!(scim_type);
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        scim_json(status, &body)
    }
}

fn scim_json(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))], body.to_string()).into_response()
}

/// The caller's token name, from `Authorization: Bearer TOKEN` or `Authorization: TOKEN`.
fn caller(api: &HttpApi, headers: &HeaderMap) -> Result<String, ScimError> {
    let unauthorized = |detail: &str| ScimError::new(401, None, detail);
    let gate = api.scim.as_ref().ok_or_else(|| unauthorized("SCIM is off: the server has no --scim-token"))?;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthorized("a SCIM token is required"))?;
    let token = presented.strip_prefix("Bearer ").or_else(|| presented.strip_prefix("bearer ")).unwrap_or(presented);
    gate.1.name(token.trim()).ok_or_else(|| unauthorized("invalid SCIM token"))
}

fn service(api: &HttpApi) -> Result<&scim::Scim, ScimError> {
    api.scim
        .as_ref()
        .map(|(s, _)| s)
        .ok_or_else(|| ScimError::new(401, None, "SCIM is off: the server has no --scim-token"))
}

/// The base URL of the SCIM endpoints as the caller reached them (for `location` and `$ref`).
fn base(api: &HttpApi, headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    format!("{}://{host}/scim/v2", api.scheme)
}

async fn service_provider_config(State(api): State<Arc<HttpApi>>, headers: HeaderMap) -> Result<Response, ScimError> {
    caller(&api, &headers)?;
    Ok(scim_json(StatusCode::OK, &scim::service_provider_config(&base(&api, &headers))))
}

fn list_of(items: Vec<Value>) -> Value {
    json!({"schemas": [LIST_URN], "totalResults": items.len(), "itemsPerPage": items.len(), "startIndex": 1, "Resources": items})
}

async fn resource_types(State(api): State<Arc<HttpApi>>, headers: HeaderMap) -> Result<Response, ScimError> {
    caller(&api, &headers)?;
    Ok(scim_json(StatusCode::OK, &list_of(scim::resource_types(&base(&api, &headers)))))
}

async fn resource_type(
    State(api): State<Arc<HttpApi>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ScimError> {
    caller(&api, &headers)?;
    let found = scim::resource_types(&base(&api, &headers)).into_iter().find(|t| t["id"] == id.as_str());
    Ok(scim_json(StatusCode::OK, &found.ok_or_else(|| ScimError::not_found(format!("no resource type `{id}`")))?))
}

async fn schemas(State(api): State<Arc<HttpApi>>, headers: HeaderMap) -> Result<Response, ScimError> {
    caller(&api, &headers)?;
    Ok(scim_json(StatusCode::OK, &list_of(scim::schema_documents(&base(&api, &headers)))))
}

async fn schema(
    State(api): State<Arc<HttpApi>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ScimError> {
    caller(&api, &headers)?;
    let found = scim::schema_documents(&base(&api, &headers)).into_iter().find(|s| s["id"] == id.as_str());
    Ok(scim_json(StatusCode::OK, &found.ok_or_else(|| ScimError::not_found(format!("no schema `{id}`")))?))
}

/// `attributes` / `excludedAttributes`: which attributes an answer carries.
struct Projection {
    attributes: Vec<String>,
    excluded: Vec<String>,
}

impl Projection {
    fn from_query(query: &HashMap<String, String>) -> Self {
        let list = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default()
        };
        Projection { attributes: list("attributes"), excluded: list("excludedAttributes") }
    }

    fn apply(&self, ty: ResourceType, mut resource: Value) -> Value {
        let Some(object) = resource.as_object_mut() else { return resource };
        let named = |list: &[String], key: &str| {
            list.iter().any(|a| {
                let a = a.rsplit_once(':').filter(|(urn, _)| urn.contains(':')).map_or(a.as_str(), |(_, name)| name);
                let top = a.split('.').next().unwrap_or(a);
                top.eq_ignore_ascii_case(key)
                    || ty
                        .schemas()
                        .iter()
                        .any(|s| s.id.eq_ignore_ascii_case(key) && list.iter().any(|x| x.starts_with(s.id)))
            })
        };
        let always = ["id", "schemas", "meta"];
        if !self.attributes.is_empty() {
            object.retain(|k, _| always.contains(&k.as_str()) || named(&self.attributes, k));
        }
        if !self.excluded.is_empty() {
            object.retain(|k, _| always.contains(&k.as_str()) || !named(&self.excluded, k));
        }
        resource
    }
}

fn query_number(query: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ScimError> {
    match query.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
        None => Ok(None),
        Some((_, v)) => v
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ScimError::invalid_value(format!("`{name}` is an integer, not `{v}`"))),
    }
}

async fn list(
    api: &HttpApi,
    ty: ResourceType,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Response, ScimError> {
    caller(api, headers)?;
    let filter = query.iter().find(|(k, _)| k.eq_ignore_ascii_case("filter")).map(|(_, v)| v.as_str());
    // RFC 7644 §3.4.2.4: below 1 means 1; a negative count means 0.
    let start = query_number(query, "startIndex")?.unwrap_or(1).max(1);
    let count =
        query_number(query, "count")?.map_or(MAX_RESULTS, |c| usize::try_from(c.max(0)).unwrap_or(0)).min(MAX_RESULTS);
    let page = service(api)?.list(ty, filter, usize::try_from(start).unwrap_or(usize::MAX), count).await?;
    let base = base(api, headers);
    let projection = Projection::from_query(query);
    let resources: Vec<Value> = page.resources.iter().map(|s| projection.apply(ty, s.render(ty, &base))).collect();
    let body = json!({
        "schemas": [LIST_URN],
        "totalResults": page.total,
        "itemsPerPage": resources.len(),
        "startIndex": start,
        "Resources": resources,
    });
    Ok(scim_json(StatusCode::OK, &body))
}

/// One resource, with its ETag (and `Location` when created).
fn one(
    api: &HttpApi,
    ty: ResourceType,
    headers: &HeaderMap,
    stored: &Stored,
    status: StatusCode,
    projection: &Projection,
) -> Response {
    let rendered = stored.render(ty, &base(api, headers));
    let location = rendered["meta"]["location"].as_str().unwrap_or_default().to_string();
    let mut response = scim_json(status, &projection.apply(ty, rendered));
    if let Ok(etag) = HeaderValue::from_str(&stored.etag()) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    if status == StatusCode::CREATED
        && let Ok(location) = HeaderValue::from_str(&location)
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// A request body as JSON: a duplicate key is refused (an IdP and we must read the same value).
fn body_json(body: &Bytes) -> Result<Value, ScimError> {
    let text = std::str::from_utf8(body).map_err(|_| ScimError::bad("invalidSyntax", "the body is not UTF-8"))?;
    crate::json::refuse_duplicate_keys(text).map_err(|e| ScimError::bad("invalidSyntax", e.to_string()))?;
    serde_json::from_str(text).map_err(|e| ScimError::bad("invalidSyntax", format!("the body is not JSON: {e}")))
}

fn if_match(headers: &HeaderMap) -> Option<String> {
    headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(str::to_string)
}

async fn get_one(
    api: &HttpApi,
    ty: ResourceType,
    headers: &HeaderMap,
    id: &str,
    query: &HashMap<String, String>,
) -> Result<Response, ScimError> {
    caller(api, headers)?;
    let stored = service(api)?.get(ty, id).await?;
    let not_modified = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|tags| {
        tags.split(',').any(|t| t.trim().trim_start_matches("W/") == stored.etag().trim_start_matches("W/"))
    });
    if not_modified {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    Ok(one(api, ty, headers, &stored, StatusCode::OK, &Projection::from_query(query)))
}

async fn create(api: &HttpApi, ty: ResourceType, headers: &HeaderMap, body: &Bytes) -> Result<Response, ScimError> {
    let actor = caller(api, headers)?;
    let stored = service(api)?.create(ty, &body_json(body)?, &actor).await?;
    tracing::info!(target: "cedar_pdp::audit", actor = %format!("scim:{actor}"), id = %stored.id, revision = stored.revision, "SCIM {} created", ty.name());
    Ok(one(api, ty, headers, &stored, StatusCode::CREATED, &Projection { attributes: vec![], excluded: vec![] }))
}

async fn put(
    api: &HttpApi,
    ty: ResourceType,
    headers: &HeaderMap,
    id: &str,
    body: &Bytes,
) -> Result<Response, ScimError> {
    let actor = caller(api, headers)?;
    let stored = service(api)?.replace(ty, id, &body_json(body)?, if_match(headers).as_deref(), &actor).await?;
    Ok(one(api, ty, headers, &stored, StatusCode::OK, &Projection { attributes: vec![], excluded: vec![] }))
}

async fn patch(
    api: &HttpApi,
    ty: ResourceType,
    headers: &HeaderMap,
    id: &str,
    body: &Bytes,
) -> Result<Response, ScimError> {
    let actor = caller(api, headers)?;
    let stored = service(api)?.patch(ty, id, &body_json(body)?, if_match(headers).as_deref(), &actor).await?;
    Ok(one(api, ty, headers, &stored, StatusCode::OK, &Projection { attributes: vec![], excluded: vec![] }))
}

async fn delete(api: &HttpApi, ty: ResourceType, headers: &HeaderMap, id: &str) -> Result<Response, ScimError> {
    let actor = caller(api, headers)?;
    service(api)?.delete(ty, id, if_match(headers).as_deref(), &actor).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

type Q = Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>;
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

/// Query parameters, or a SCIM 400 (never axum's plain-text rejection).
fn query(q: Q) -> Result<HashMap<String, String>, ScimError> {
    q.map(|Query(q)| q).map_err(|e| ScimError::invalid_value(format!("the query string: {}", e.body_text())))
}

/// The body, or a SCIM 413 past the limit (400 for other failures to read it).
fn read_body(b: Body) -> Result<Bytes, ScimError> {
    b.map_err(|e| {
        let status = e.status().as_u16();
        ScimError::new(status, (status == 400).then_some("invalidSyntax"), e.body_text())
    })
}

async fn list_users(State(api): State<Arc<HttpApi>>, headers: HeaderMap, q: Q) -> Result<Response, ScimError> {
    list(&api, ResourceType::User, &headers, &query(q)?).await
}
async fn list_groups(State(api): State<Arc<HttpApi>>, headers: HeaderMap, q: Q) -> Result<Response, ScimError> {
    list(&api, ResourceType::Group, &headers, &query(q)?).await
}
async fn get_user(
    State(api): State<Arc<HttpApi>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Q,
) -> Result<Response, ScimError> {
    get_one(&api, ResourceType::User, &headers, &id, &query(q)?).await
}
async fn get_group(
    State(api): State<Arc<HttpApi>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Q,
) -> Result<Response, ScimError> {
    get_one(&api, ResourceType::Group, &headers, &id, &query(q)?).await
}
async fn create_user(State(api): State<Arc<HttpApi>>, headers: HeaderMap, body: Body) -> Result<Response, ScimError> {
    create(&api, ResourceType::User, &headers, &read_body(body)?).await
}
async fn create_group(State(api): State<Arc<HttpApi>>, headers: HeaderMap, body: Body) -> Result<Response, ScimError> {
    create(&api, ResourceType::Group, &headers, &read_body(body)?).await
}
async fn put_user(
    State(api): State<Arc<HttpApi>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ScimError> {
    put(&api, ResourceType::User, &headers, &id, &read_body(body)?).await
}
async fn put_group(
    State(api): State<Arc<HttpApi>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ScimError> {
    put(&api, ResourceType::Group, &headers, &id, &read_body(body)?).await
}
async fn patch_user(
    State(api): State<Arc<HttpApi>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ScimError> {
    patch(&api, ResourceType::User, &headers, &id, &read_body(body)?).await
}
async fn patch_group(
    State(api): State<Arc<HttpApi>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ScimError> {
    patch(&api, ResourceType::Group, &headers, &id, &read_body(body)?).await
}
async fn delete_user(
    State(api): State<Arc<HttpApi>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ScimError> {
    delete(&api, ResourceType::User, &headers, &id).await
}
async fn delete_group(
    State(api): State<Arc<HttpApi>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ScimError> {
    delete(&api, ResourceType::Group, &headers, &id).await
}
