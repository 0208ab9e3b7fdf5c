//! The HTTP → Cedar mapping for Envoy's ext_authz, read from `ext_authz.toml` in the policy directory
//! and loaded, validated and swapped with the policies. Pure: no protobuf (see `grpc/ext_authz.rs`).
//!
//! Architecture invariant: a request that matches no route, or that is not HTTP, is denied unless the
//! mapping says otherwise in so many words; nothing is allowed by accident.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use cedar_policy::{EntityTypeName, EntityUid};
use serde::Deserialize;

mod jwks;
pub use jwks::RemoteStatus;

/// The file's name, at the top of the policy directory.
pub const FILE: &str = "ext_authz.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    #[default]
    Deny,
    Allow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    /// A request that matches no route.
    #[serde(default)]
    unmatched: Fallback,
    /// A check without HTTP attributes (Envoy's network filter).
    #[serde(default)]
    non_http: Fallback,
    /// Decide and log, but let every request through.
    #[serde(default)]
    dry_run: bool,
    principal: PrincipalFile,
    #[serde(default)]
    jwt: Option<JwtFile>,
    #[serde(default)]
    context: ContextFile,
    #[serde(default)]
    response: ResponseFile,
    #[serde(default, rename = "route")]
    routes: Vec<RouteFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalFile {
    /// Entity type of identified principals, e.g. `User`.
    r#type: String,
    /// Where the id comes from, in order; the first present wins: `jwt_authn`, `peer`.
    from: Vec<Source>,
    /// `jwt_authn`: the `payload_in_metadata` name Envoy's jwt_authn filter stores the payload under.
    #[serde(default = "default_payload_key")]
    jwt_payload: String,
    /// `bearer` and `jwt_authn`: the claim holding the id.
    #[serde(default = "default_claim")]
    claim: String,
    /// A claim listing the principal's groups (an array of strings, or one space-separated string):
    /// they become its parents, of type `group_type`, for this request.
    #[serde(default)]
    groups_claim: Option<String>,
    #[serde(default)]
    group_type: Option<String>,
    /// Cedar attribute name → claim name: attributes of the principal for this request.
    #[serde(default)]
    attributes: std::collections::BTreeMap<String, String>,
    /// The principal when none is identified, e.g. `User::"anonymous"`.
    anonymous: String,
    /// Entity type of mTLS peer identities, when it should differ from `type` (recommended: a token
    /// subject then cannot pose as a workload).
    #[serde(default)]
    peer_type: Option<String>,
}

fn default_payload_key() -> String {
    "jwt_payload".into()
}

fn default_claim() -> String {
    "sub".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtFile {
    /// A JWKS file, relative to the policy directory.
    #[serde(default)]
    jwks_file: Option<String>,
    /// A JWKS URL (https://, or http:// to loopback), fetched and refreshed.
    #[serde(default)]
    jwks_url: Option<String>,
    /// PEM CA certificates to trust for `jwks_url`, relative to the policy directory; unset: the
    /// system's roots.
    #[serde(default)]
    jwks_ca_file: Option<String>,
    /// How often `jwks_url` is fetched again, e.g. `5m`.
    #[serde(default = "default_refresh")]
    jwks_refresh: String,
    /// Required `iss`, if set.
    #[serde(default)]
    issuer: Option<String>,
    /// Accepted `aud` values; at least one must match, if any are set.
    #[serde(default)]
    audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    leeway_seconds: u64,
    /// Accepted signing algorithms (`RS256`, `ES256`, …); empty: any the keys allow.
    #[serde(default)]
    algorithms: Vec<String>,
}

fn default_leeway() -> u64 {
    30
}

fn default_refresh() -> String {
    "5m".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `authorization: Bearer <JWT>`, verified here against `[jwt]`'s keys: what Istio's CUSTOM
    /// action needs, since it runs before Istio's own JWT authentication.
    Bearer,
    /// Verified JWT claims forwarded by Envoy's `jwt_authn` filter in `metadata_context`.
    JwtAuthn,
    /// The mTLS peer identity, `source.principal` (a SPIFFE id under Istio).
    Peer,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextFile {
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    query: Vec<String>,
    #[serde(default)]
    source_ip: bool,
    #[serde(default)]
    extensions: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseFile {
    #[serde(default = "default_principal_header")]
    principal_header: String,
    #[serde(default = "default_decision_header")]
    decision_header: String,
}

impl Default for ResponseFile {
    fn default() -> Self {
        ResponseFile { principal_header: default_principal_header(), decision_header: default_decision_header() }
    }
}

fn default_principal_header() -> String {
    "x-cedar-principal".into()
}

fn default_decision_header() -> String {
    "x-cedar-decision-id".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    name: String,
    /// HTTP methods; empty means any.
    #[serde(default)]
    methods: Vec<String>,
    /// `/docs/{id}`: literal segments and `{name}` captures of one whole segment.
    path: String,
    /// `Action::"view"`.
    action: String,
    /// `Document::"{id}"`: the type, and an id that may use the path's captures.
    resource: String,
    #[serde(default)]
    dry_run: Option<bool>,
}

/// A validated mapping.
#[derive(Debug)]
pub struct Mapping {
    pub unmatched: Fallback,
    pub non_http: Fallback,
    pub dry_run: bool,
    pub principal_type: String,
    pub peer_type: String,
    pub sources: Vec<Source>,
    pub jwt_payload: String,
    pub claim: String,
    /// (claim, parent type): the principal's groups from a token's claims.
    pub groups: Option<(String, EntityTypeName)>,
    /// (Cedar attribute, claim).
    pub attributes: Vec<(String, String)>,
    /// The anonymous principal's type and id, and its uid in Cedar's form.
    pub anonymous_type: String,
    pub anonymous_id: String,
    pub anonymous_uid: String,
    pub context_headers: Vec<String>,
    pub context_query: Vec<String>,
    pub source_ip: bool,
    pub extensions: bool,
    pub principal_header: String,
    pub decision_header: String,
    pub jwt: Option<JwtVerifier>,
    routes: Vec<Route>,
}

/// Verifies bearer JWTs with keys parsed once per load.
pub struct JwtVerifier {
    keys: jwks::Keys,
    issuer: Option<String>,
    audiences: Vec<String>,
    leeway: u64,
    algorithms: Vec<jsonwebtoken::Algorithm>,
    /// The key file's bytes, for the snapshot's version: rotating keys is a change.
    pub(crate) source: String,
    /// Tokens already verified, by SHA-256 of the token: a token seen again within its lifetime,
    /// under the same key set, costs no signature check (clients send the same token for minutes).
    verified: moka::sync::Cache<[u8; 32], Arc<Verified>>,
    /// Signature checks made (the cache's misses), for tests.
    signature_checks: std::sync::atomic::AtomicU64,
}

/// A token's verified claims, shared with the verified-token cache rather than copied per request.
pub type Claims = Arc<serde_json::Map<String, serde_json::Value>>;

/// A verified token's claims, the key set that verified them, and the times they hold between.
struct Verified {
    claims: Claims,
    keys: Arc<Vec<jwks::Key>>,
    exp: u64,
    nbf: Option<u64>,
}

/// Tokens kept verified per policy load: a token's claims are small (a few hundred bytes).
const VERIFIED_TOKENS: u64 = 50_000;

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").field("keys", &self.keys.current().len()).field("issuer", &self.issuer).finish()
    }
}

impl JwtVerifier {
    fn load(file: &JwtFile, dir: &std::path::Path) -> Result<Self, String> {
        let read = |name: &str, what: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| format!("jwt.{what}: cannot read {}: {e}", path.display()))
        };
        let (keys, source) = match (&file.jwks_file, &file.jwks_url) {
            (Some(name), None) => {
                let bytes = read(name, "jwks_file")?;
                let keys = jwks::Keys::Fixed(Arc::new(jwks::parse(&bytes, "jwt.jwks_file")?));
                (keys, String::from_utf8_lossy(&bytes).into_owned())
            }
            (None, Some(url)) => {
                let refresh = humantime::parse_duration(&file.jwks_refresh)
                    .map_err(|e| format!("jwt.jwks_refresh: `{}`: {e}", file.jwks_refresh))?;
                let ca = file.jwks_ca_file.as_deref().map(|name| read(name, "jwks_ca_file")).transpose()?;
                (jwks::Keys::Remote(jwks::RemoteKeys::open(url, ca, refresh)?), url.clone())
            }
            _ => return Err("jwt: set exactly one of `jwks_file` and `jwks_url`".into()),
        };
        let algorithms = file
            .algorithms
            .iter()
            .map(|a| a.parse().map_err(|_| format!("jwt.algorithms: `{a}` is not a JWS algorithm")))
            .collect::<Result<_, String>>()?;
        Ok(JwtVerifier {
            keys,
            issuer: file.issuer.clone(),
            audiences: file.audiences.clone(),
            leeway: file.leeway_seconds,
            algorithms,
            source,
            verified: moka::sync::Cache::new(VERIFIED_TOKENS),
            signature_checks: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// With keys at a URL: fetches them now if the token names a key id they lack (rate-limited).
    pub async fn prepare(&self, token: &str) {
        if let jwks::Keys::Remote(remote) = &self.keys
            && let Ok(Some(kid)) = jsonwebtoken::decode_header(token).map(|h| h.kid)
        {
            remote.ensure_kid(&kid).await;
        }
    }

    /// The key set fetched from a URL, if that is where the keys come from.
    pub fn remote_status(&self) -> Option<jwks::RemoteStatus> {
        match &self.keys {
            jwks::Keys::Remote(remote) => Some(remote.status()),
            jwks::Keys::Fixed(_) => None,
        }
    }

    /// The token's claims if its signature, `exp`, `nbf`, `iss` and `aud` check out. A token
    /// verified before under the same key set is checked against the clock only.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.verify_at(token, now)
    }

    fn verify_at(&self, token: &str, now: u64) -> Result<Claims, String> {
        use sha2::Digest;
        let keys = self.keys.current();
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        // Only under the key set that verified it: a rotated-out key no longer vouches for it.
        if let Some(hit) = self.verified.get(&digest).filter(|hit| Arc::ptr_eq(&hit.keys, &keys)) {
            if now > hit.exp.saturating_add(self.leeway) {
                return Err("ExpiredSignature".into());
            }
            if hit.nbf.is_some_and(|nbf| now.saturating_add(self.leeway) < nbf) {
                return Err("ImmatureSignature".into());
            }
            return Ok(hit.claims.clone());
        }
        self.signature_checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let claims = Arc::new(self.check_signature(token, &keys)?);
        let seconds = |name: &str| claims.get(name).and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)));
        if let Some(exp) = seconds("exp") {
            let verified = Verified { claims: claims.clone(), keys, exp, nbf: seconds("nbf") };
            self.verified.insert(digest, Arc::new(verified));
        }
        Ok(claims)
    }

    /// Signature checks made so far (tokens not found verified).
    #[cfg(test)]
    fn signature_checks(&self) -> u64 {
        self.signature_checks.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn check_signature(
        &self,
        token: &str,
        keys: &[jwks::Key],
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        if !self.algorithms.is_empty() && !self.algorithms.contains(&header.alg) {
            return Err(format!("algorithm {:?} is not accepted", header.alg));
        }
        let candidates = keys.iter().filter(|(kid, _, alg)| {
            (header.kid.is_none() || kid.is_none() || *kid == header.kid) && alg.is_none_or(|a| a == header.alg)
        });
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present, not merely not wrong.
        let mut required = vec!["exp"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if !self.audiences.is_empty() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        if self.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audiences);
        }
        let mut last = "no key matches the token's `kid` and `alg`".to_string();
        for (_, key, _) in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }
}

#[derive(Debug)]
struct Route {
    name: String,
    methods: Vec<String>,
    segments: Vec<Segment>,
    // Kept as the text a check carries: the request path parses each once, in `authz`.
    action_type: String,
    action_id: String,
    resource_type: String,
    resource_id: Vec<Segment>,
    dry_run: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Capture(String),
}

/// What a request matched.
#[derive(Debug, PartialEq, Eq)]
pub struct Matched<'m> {
    pub route: &'m str,
    pub action_type: &'m str,
    pub action_id: &'m str,
    pub resource_type: &'m str,
    /// The resource id, captures filled in.
    pub resource_id: String,
    pub dry_run: bool,
}

impl Mapping {
    /// Whether a principal's claims matter beyond its id: its groups or attributes come from them.
    pub fn needs_claims(&self) -> bool {
        self.groups.is_some() || !self.attributes.is_empty()
    }

    /// Parses and validates the file; `actions` are the schema's actions, when there is a schema.
    /// `dir` is where relative paths in the file (the JWKS) are found; with a schema, types and
    /// actions are checked against it.
    pub fn parse(text: &str, schema: Option<&cedar_policy::Schema>, dir: &std::path::Path) -> Result<Self, String> {
        let file: MappingFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let actions: Option<HashSet<EntityUid>> = schema.map(|s| s.actions().cloned().collect());
        let actions = actions.as_ref();
        let types: Option<HashSet<&EntityTypeName>> = schema.map(|s| s.entity_types().collect());
        let ty = |text: &str, what: &str| -> Result<EntityTypeName, String> {
            text.parse().map_err(|e| format!("{what}: `{text}` is not an entity type: {e}"))
        };
        let known_type = |text: &str, what: &str| -> Result<EntityTypeName, String> {
            let parsed = ty(text, what)?;
            match &types {
                Some(types) if !types.contains(&parsed) => {
                    Err(format!("{what}: `{parsed}` is not an entity type the schema declares"))
                }
                _ => Ok(parsed),
            }
        };
        let principal_type = known_type(&file.principal.r#type, "principal.type")?;
        let mut seen_headers = HashSet::new();
        for h in &file.context.headers {
            let h = h.to_ascii_lowercase();
            if h.starts_with(':') || h == "authorization" || h == "cookie" || !seen_headers.insert(h.clone()) {
                return Err(format!(
                    "context.headers: `{h}` cannot be listed (pseudo-headers, credentials and duplicates are not context)"
                ));
            }
        }
        let uid = |text: &str, what: &str| -> Result<EntityUid, String> {
            text.parse().map_err(|e| format!("{what}: `{text}` is not an entity uid like `Action::\"view\"`: {e}"))
        };
        if file.principal.from.is_empty() {
            return Err("principal.from: name at least one source (`bearer`, `jwt_authn`, `peer`)".into());
        }
        let jwt = file.jwt.as_ref().map(|j| JwtVerifier::load(j, dir)).transpose()?;
        if file.principal.from.contains(&Source::Bearer) && jwt.is_none() {
            return Err("principal.from names `bearer`: configure its keys in a [jwt] table".into());
        }
        let mut names = HashSet::new();
        let mut routes = Vec::with_capacity(file.routes.len());
        for (i, r) in file.routes.iter().enumerate() {
            let what = format!("route[{i}] `{}`", r.name);
            if !names.insert(r.name.clone()) {
                return Err(format!("{what}: a route of that name is already defined"));
            }
            let segments = parse_path(&r.path).map_err(|e| format!("{what}.path: {e}"))?;
            let captures: HashSet<&str> = segments
                .iter()
                .filter_map(|s| match s {
                    Segment::Capture(name) => Some(name.as_str()),
                    Segment::Literal(_) => None,
                })
                .collect();
            let action = uid(&r.action, &format!("{what}.action"))?;
            if let Some(actions) = actions
                && !actions.contains(&action)
            {
                return Err(format!("{what}.action: `{action}` is not an action the schema declares"));
            }
            let (resource_type, resource_id) = r
                .resource
                .split_once("::\"")
                .and_then(|(t, rest)| rest.strip_suffix('"').map(|id| (t, id)))
                .ok_or_else(|| format!("{what}.resource: expected `Type::\"id\"`, got `{}`", r.resource))?;
            let resource_type = known_type(resource_type, &format!("{what}.resource"))?;
            let resource_id = parse_template(resource_id).map_err(|e| format!("{what}.resource: {e}"))?;
            for part in &resource_id {
                if let Segment::Capture(name) = part
                    && !captures.contains(name.as_str())
                {
                    return Err(format!("{what}.resource: `{{{name}}}` is not captured by the path"));
                }
            }
            routes.push(Route {
                name: r.name.clone(),
                methods: r.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                segments,
                action_type: action.type_name().to_string(),
                action_id: action.id().unescaped().to_string(),
                resource_type: resource_type.to_string(),
                resource_id,
                dry_run: r.dry_run,
            });
        }
        let anonymous = uid(&file.principal.anonymous, "principal.anonymous")?;
        known_type(&anonymous.type_name().to_string(), "principal.anonymous")?;
        let groups = match (&file.principal.groups_claim, &file.principal.group_type) {
            (Some(claim), Some(group_type)) => Some((claim.clone(), known_type(group_type, "principal.group_type")?)),
            (None, None) => None,
            _ => return Err("principal: set both `groups_claim` and `group_type`, or neither".into()),
        };
        Ok(Mapping {
            unmatched: file.unmatched,
            non_http: file.non_http,
            dry_run: file.dry_run,
            principal_type: principal_type.to_string(),
            peer_type: match &file.principal.peer_type {
                Some(t) => known_type(t, "principal.peer_type")?.to_string(),
                None => principal_type.to_string(),
            },
            sources: file.principal.from,
            jwt_payload: file.principal.jwt_payload,
            claim: file.principal.claim,
            groups,
            attributes: file.principal.attributes.into_iter().collect(),
            anonymous_type: anonymous.type_name().to_string(),
            anonymous_id: anonymous.id().unescaped().to_string(),
            anonymous_uid: anonymous.to_string(),
            context_headers: file.context.headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            context_query: file.context.query,
            source_ip: file.context.source_ip,
            extensions: file.context.extensions,
            principal_header: file.response.principal_header.to_ascii_lowercase(),
            decision_header: file.response.decision_header.to_ascii_lowercase(),
            jwt,
            routes,
        })
    }

    /// The first route matching `method` and `path` (query string ignored), in file order.
    pub fn route(&self, method: &str, path: &str) -> Option<Matched<'_>> {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        self.routes.iter().find_map(|route| {
            if !route.methods.is_empty() && !route.methods.iter().any(|m| m == method) {
                return None;
            }
            if route.segments.len() != parts.len() {
                return None;
            }
            let mut captured: Vec<(&str, Cow<'_, str>)> = Vec::new();
            for (segment, part) in route.segments.iter().zip(&parts) {
                let part = percent_decode(part)?;
                match segment {
                    Segment::Literal(lit) if *lit == *part => {}
                    Segment::Literal(_) => return None,
                    // A capture is one whole, non-empty segment, and nothing an upstream could read as
                    // another path (`..`, an encoded `/`).
                    Segment::Capture(_) if !safe_capture(&part) => return None,
                    Segment::Capture(name) => captured.push((name, part)),
                }
            }
            let mut id = String::new();
            for segment in &route.resource_id {
                id.push_str(match segment {
                    Segment::Literal(l) => l,
                    Segment::Capture(name) => captured.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v),
                });
            }
            Some(Matched {
                route: &route.name,
                action_type: &route.action_type,
                action_id: &route.action_id,
                resource_type: &route.resource_type,
                resource_id: id,
                dry_run: route.dry_run.unwrap_or(self.dry_run),
            })
        })
    }
}

fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    let rest = path.strip_prefix('/').ok_or("must start with `/`")?;
    rest.split('/')
        .map(|part| match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                Ok(Segment::Capture(name.into()))
            }
            Some(_) => Err(format!("`{part}` is not a capture like `{{id}}`")),
            None if part.contains(['{', '}']) => Err(format!("`{part}`: a capture must be a whole segment")),
            None => Ok(Segment::Literal(part.into())),
        })
        .collect()
}

/// `doc-{id}` → literal `doc-`, capture `id`.
fn parse_template(text: &str) -> Result<Vec<Segment>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        if start > 0 {
            out.push(Segment::Literal(rest[..start].into()));
        }
        let end = rest[start..].find('}').ok_or_else(|| format!("unclosed `{{` in `{text}`"))? + start;
        out.push(Segment::Capture(rest[start + 1..end].into()));
        rest = &rest[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Segment::Literal(rest.into()));
    }
    Ok(out)
}

fn safe_capture(value: &str) -> bool {
    !value.is_empty() && value != "." && value != ".." && !value.contains(['/', '\\', '\0'])
}

/// Decodes `%XX` escapes; None for a malformed escape or bytes that are not UTF-8. Text without an
/// escape (most path segments) is borrowed, not copied.
pub(crate) fn percent_decode(text: &str) -> Option<Cow<'_, str>> {
    if !text.contains('%') {
        return Some(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const MAPPING: &str = r#"
        [principal]
        type = "User"
        from = ["jwt_authn", "peer"]
        anonymous = 'User::"anonymous"'

        [[route]]
        name = "read-doc"
        methods = ["GET", "head"]
        path = "/docs/{id}"
        action = 'Action::"view"'
        resource = 'Document::"{id}"'

        [[route]]
        name = "edit-doc"
        methods = ["PUT"]
        path = "/docs/{id}"
        action = 'Action::"edit"'
        resource = 'Document::"{id}"'
        dry_run = true
    "#;

    #[test]
    fn routes_match_method_and_path_and_capture_the_resource() {
        let m = Mapping::parse(MAPPING, None, Path::new(".")).unwrap();
        assert_eq!(m.route("GET", "/docs/a%2Db").unwrap().resource_id, "a-b");
        let hit = m.route("GET", "/docs/design%20doc?x=1").unwrap();
        assert_eq!(hit.route, "read-doc");
        assert_eq!((hit.resource_type, hit.resource_id.as_str()), ("Document", "design doc"));
        assert_eq!((hit.action_type, hit.action_id), ("Action", "view"));
        assert!(!hit.dry_run);
        assert!(m.route("HEAD", "/docs/d").is_some());
        assert!(m.route("PUT", "/docs/d").unwrap().dry_run);
        for (method, path) in
            [("POST", "/docs/d"), ("GET", "/docs/"), ("GET", "/docs/a/b"), ("GET", "/docs"), ("GET", "/docs/%zz")]
        {
            assert!(m.route(method, path).is_none(), "{method} {path}");
        }
    }

    #[test]
    fn a_verified_token_is_not_verified_again_within_its_lifetime() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mesh");
        let file = std::fs::read_to_string(dir.join("ext_authz.toml")).unwrap();
        let jwt = Mapping::parse(&file, None, &dir).unwrap().jwt.unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let sign = |claims: serde_json::Value, secret: &[u8]| {
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            header.kid = Some("test-hs256".into());
            jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(secret)).unwrap()
        };
        let secret = b"cedar-pdp-test-secret-0123456789abcdef";
        let claims = serde_json::json!({"sub": "alice", "iss": "https://issuer.test", "aud": "docs", "exp": now + 60});
        let token = sign(claims.clone(), secret);
        for _ in 0..3 {
            assert_eq!(jwt.verify_at(&token, now).unwrap()["sub"], "alice");
        }
        assert_eq!(jwt.signature_checks(), 1, "one signature check for three uses");
        // The clock still applies: past exp (and the leeway) the cached token is refused.
        let leeway = jwt.leeway;
        assert!(jwt.verify_at(&token, now + 61 + leeway).is_err());
        // A forged token is never a cache hit, and still fails its check.
        assert!(jwt.verify_at(&sign(claims, b"another-secret-entirely-0123456789"), now).is_err());
        assert_eq!(jwt.signature_checks(), 2);
    }

    #[test]
    fn bad_mappings_are_explained() {
        let bad = |from: &str, to: &str, needle: &str| {
            let err = Mapping::parse(&MAPPING.replacen(from, to, 1), None, Path::new(".")).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        };
        bad(r#"resource = 'Document::"{id}"'"#, r#"resource = 'Document::"{doc}"'"#, "`{doc}` is not captured");
        bad(r#"path = "/docs/{id}""#, r#"path = "docs/{id}""#, "must start with `/`");
        bad(r#"path = "/docs/{id}""#, r#"path = "/docs/x{id}""#, "whole segment");
        bad(r#"action = 'Action::"view"'"#, r#"action = 'view'"#, "not an entity uid");
        bad(r#"name = "edit-doc""#, r#"name = "read-doc""#, "already defined");
        bad("[principal]", "[principal]\nsurprise = 1", "unknown field");
        bad("[principal]", "[context]\nheaders = [\"authorization\"]\n[principal]", "cannot be listed");
        let (schema, _) = cedar_policy::Schema::from_cedarschema_str(
            "entity User; entity Document; action view appliesTo { principal: User, resource: Document };",
        )
        .unwrap();
        let err = Mapping::parse(MAPPING, Some(&schema), Path::new(".")).unwrap_err();
        assert!(err.contains(r#"`Action::"edit"` is not an action the schema declares"#), "{err}");
        let err = Mapping::parse(&MAPPING.replace("Document::", "Doc::"), Some(&schema), Path::new(".")).unwrap_err();
        assert!(err.contains("`Doc` is not an entity type the schema declares"), "{err}");
    }
}
