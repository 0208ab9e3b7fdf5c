//! The keys bearer JWTs are verified with: a JWKS file read with the policy directory, or a JWKS
//! URL fetched at load, refreshed every `jwks_refresh` and at once (at most every 30 s) when a token
//! names a key id the set lacks.
//!
//! Architecture invariants: a failed fetch keeps the last good set (logged, counted, in `status`);
//! a key removed from the set is refused once a fetch without it succeeds; every fetch is bounded in
//! time and size. A key set at a URL outlives policy reloads that keep the same URL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use sha2::Digest;

use crate::error::error_chain;

/// One verification key: its `kid`, the key, and the JWK's own algorithm if it names one.
pub type Key = (Option<String>, jsonwebtoken::DecodingKey, Option<jsonwebtoken::Algorithm>);

/// Longest wait for the JWKS endpoint.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS accepted.
const MAX_BYTES: usize = 1 << 20;
/// Unknown-kid refreshes are at most this frequent: tokens with made-up kids cannot hammer the IdP.
const ON_DEMAND_EVERY: Duration = Duration::from_secs(30);

/// Parses a JWKS file: every key must load, and there must be one.
pub fn parse(text: &[u8], what: &str) -> Result<Vec<Key>, String> {
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(text).map_err(|e| format!("{what}: not a JWKS: {e}"))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for (i, jwk) in set.keys.iter().enumerate() {
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| format!("{what}: key {i}: {e}"))?;
        let alg = jwk.common.key_algorithm.and_then(|a| a.to_string().parse().ok());
        keys.push((jwk.common.key_id.clone(), key, alg));
    }
    if keys.is_empty() {
        return Err(format!("{what}: the key set is empty"));
    }
    Ok(keys)
}

/// Where the keys come from.
pub enum Keys {
    Fixed(Arc<Vec<Key>>),
    Remote(Arc<RemoteKeys>),
}

impl Keys {
    pub fn current(&self) -> Arc<Vec<Key>> {
        match self {
            Keys::Fixed(keys) => keys.clone(),
            Keys::Remote(remote) => remote.keys.load_full(),
        }
    }
}

/// What `status` shows of a key set fetched from a URL.
#[derive(Debug, Clone)]
pub struct RemoteStatus {
    pub url: String,
    pub keys: usize,
    pub fetched_at: SystemTime,
    pub last_error: Option<String>,
    pub failures: u64,
}

/// A JWKS URL's key set, kept fresh in the background.
pub struct RemoteKeys {
    url: String,
    client: reqwest::Client,
    keys: ArcSwap<Vec<Key>>,
    state: Mutex<State>,
    refreshing: tokio::sync::Mutex<()>,
}

struct State {
    fetched_at: SystemTime,
    last_error: Option<String>,
    failures: u64,
    last_on_demand: Option<Instant>,
}

/// Live key sets by (URL, CA file, refresh period): a reload keeps the set it had.
type Registry = Mutex<HashMap<String, Weak<RemoteKeys>>>;
static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();

impl RemoteKeys {
    /// The key set at `url`, fetched now unless a live one exists; refreshed every `refresh` while
    /// the returned handle (or another for the same URL) lives. Called from the policy loader (a
    /// blocking thread) or outside any runtime (`cedar-pdp validate`).
    pub fn open(url: &str, ca_pem: Option<Vec<u8>>, refresh: Duration) -> Result<Arc<RemoteKeys>, String> {
        check_url(url)?;
        // The CA's content, not just its name, is part of the key: a rotated CA gets a new client.
        let ca_digest: [u8; 32] = sha2::Sha256::digest(ca_pem.as_deref().unwrap_or_default()).into();
        let id = format!("{url}|{refresh:?}|{ca_digest:?}");
        let registry = REGISTRY.get_or_init(Default::default);
        if let Some(live) = registry.lock().unwrap_or_else(PoisonError::into_inner).get(&id).and_then(Weak::upgrade) {
            return Ok(live);
        }
        let client = client(ca_pem)?;
        let runtime = tokio::runtime::Handle::try_current().ok();
        let fetched = match &runtime {
            // A thread of its own: `block_on` may not run on a runtime's worker.
            Some(handle) => std::thread::scope(|s| s.spawn(|| handle.block_on(fetch(&client, url))).join())
                .map_err(|_| "jwt.jwks_url: the fetch panicked".to_string())?,
            None => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(fetch(&client, url)),
        };
        let keys = fetched.map_err(|e| format!("jwt.jwks_url: {e}"))?;
        if keys.is_empty() {
            return Err(format!("jwt.jwks_url: {url} holds no key this server can use"));
        }
        let state = State { fetched_at: SystemTime::now(), last_error: None, failures: 0, last_on_demand: None };
        let remote = Arc::new(RemoteKeys {
            url: url.to_string(),
            client,
            keys: ArcSwap::from_pointee(keys),
            state: Mutex::new(state),
            refreshing: tokio::sync::Mutex::new(()),
        });
        if let Some(handle) = runtime {
            handle.spawn(refresh_forever(Arc::downgrade(&remote), refresh));
        }
        registry.lock().unwrap_or_else(PoisonError::into_inner).insert(id, Arc::downgrade(&remote));
        Ok(remote)
    }

    /// Fetches the set again; a failure keeps the current keys.
    pub async fn refresh(&self) {
        // One fetch at a time: a slow older fetch must not store its set after a newer one.
        let _one = self.refreshing.lock().await;
        let result = fetch(&self.client, &self.url).await;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(keys) => {
                metrics::counter!("cedar_pdp_jwks_fetches_total", "result" => "ok").increment(1);
                self.keys.store(Arc::new(keys));
                state.fetched_at = SystemTime::now();
                state.last_error = None;
            }
            Err(e) => {
                tracing::warn!(url = %self.url, "JWKS not refreshed, the last keys stay: {e}");
                metrics::counter!("cedar_pdp_jwks_fetches_total", "result" => "error").increment(1);
                state.last_error = Some(e);
                state.failures += 1;
            }
        }
    }

    /// A token names `kid`: fetch the set now if it lacks that key, unless that was done recently.
    pub async fn ensure_kid(&self, kid: &str) {
        if self.keys.load().iter().any(|(k, _, _)| k.as_deref() == Some(kid)) {
            return;
        }
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.last_on_demand.is_some_and(|at| at.elapsed() < ON_DEMAND_EVERY) {
                return;
            }
            state.last_on_demand = Some(Instant::now());
        }
        self.refresh().await;
    }

    pub fn status(&self) -> RemoteStatus {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        RemoteStatus {
            url: self.url.clone(),
            keys: self.keys.load().len(),
            fetched_at: state.fetched_at,
            last_error: state.last_error.clone(),
            failures: state.failures,
        }
    }
}

/// HTTPS, or plain HTTP to loopback only (tests, a local sidecar).
fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("jwt.jwks_url: `{url}` is not a URL: {e}"))?;
    let loopback = match parsed.host_str() {
        Some("localhost") => true,
        Some(host) => host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!("jwt.jwks_url: `{url}` must be https:// (http:// only to loopback)")),
    }
}

fn client(ca_pem: Option<Vec<u8>>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        // A redirect could lead anywhere, plain HTTP included.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("jwt.jwks_ca_file: {e}"))?;
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| format!("jwt.jwks_url: cannot build the HTTP client: {e}"))
}

/// Parses a fetched JWKS. Keys this server cannot use (another `use`, an unsupported curve) are
/// skipped with a warning rather than failing the set: otherwise a provider that withdraws a
/// compromised key while adding an unusable one would leave the withdrawn key trusted. An empty set
/// is accepted (every token then fails: closed).
fn parse_fetched(text: &[u8], url: &str) -> Result<Vec<Key>, String> {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(text).map_err(|e| format!("{url}: not a JWKS: {e}"))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for (i, jwk) in set.keys.iter().enumerate() {
        if matches!(jwk.common.public_key_use, Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)) {
            continue;
        }
        match jsonwebtoken::DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                let alg = jwk.common.key_algorithm.and_then(|a| a.to_string().parse().ok());
                keys.push((jwk.common.key_id.clone(), key, alg));
            }
            Err(e) => tracing::warn!(%url, "JWKS key {i} skipped: {e}"),
        }
    }
    Ok(keys)
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<Key>, String> {
    let mut response = client.get(url).send().await.map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("GET {url}: {}", error_chain(&e)))? {
        if body.len() + chunk.len() > MAX_BYTES {
            return Err(format!("GET {url}: the key set is larger than {MAX_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    parse_fetched(&body, url)
}

async fn refresh_forever(remote: Weak<RemoteKeys>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        // The last snapshot using this URL is gone: so is this task.
        let Some(remote) = remote.upgrade() else { return };
        remote.refresh().await;
    }
}
