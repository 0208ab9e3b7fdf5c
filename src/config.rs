//! Command line and environment configuration: one typed tree, parsed once in `main`.
//!
//! Every flag has a `CEDAR_PDP_…` environment variable and a default that works, so `cedar-pdp serve`
//! alone runs the service on `./policies`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "cedar-pdp", version, about = "A gRPC policy decision point for Cedar policies")]
pub struct Cli {
    #[command(flatten)]
    pub log: LogConfig,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the check API from a policy directory, reloading it when it changes.
    Serve(ServeConfig),
    /// Load and validate a policy directory exactly as the server would; non-zero exit on error.
    Validate(ValidateArgs),
    /// Ask a running server for one decision.
    Check(CheckArgs),
    /// Run policy tests (Cedar's `run-tests` JSON, or YAML suites) against a policy directory loaded
    /// as the server loads it: exit 0 all pass, 1 a test failed, 2 something does not load.
    Test(TestArgs),
    /// Decide logged decisions (`--decision-log-requests`) again on a new policy directory and print
    /// every decision that changes: impact analysis before a policy change is merged.
    Replay(ReplayArgs),
    /// Show a running server's active policy set, entity store and last reload error.
    Status(AdminArgs),
    /// Reload a running server's policy directory now; prints the version serving afterwards.
    Reload(AdminArgs),
    /// Ask a running server's gRPC health service, over TLS too (a probe where the kubelet's gRPC
    /// probe cannot go): exit 0 when SERVING, 1 otherwise.
    Health(HealthArgs),
    /// Provisioned entities of a running server: import, export, get, delete.
    Entities(EntitiesArgs),
    /// Read a running server's audit trail of provisioning changes.
    Audit(AuditArgs),
}

#[derive(Debug, Clone, Args)]
pub struct LogConfig {
    /// Log line format.
    #[arg(long, env = "CEDAR_PDP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter in `tracing` env-filter syntax, e.g. `info` or `info,cedar_pdp::decision=off`.
    #[arg(long, env = "CEDAR_PDP_LOG", default_value = "info", global = true)]
    pub log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub use crate::policy::{ForbidErrors, ValidationMode};

#[derive(Debug, Clone, Args)]
pub struct PolicyConfig {
    /// Directory holding `*.cedar`, an optional `*.cedarschema`, `entities.json` and `links.json`.
    #[arg(long, env = "CEDAR_PDP_POLICIES", default_value = "./policies")]
    pub policies: PathBuf,
    /// Schema validation mode.
    #[arg(long, env = "CEDAR_PDP_VALIDATION", value_enum, default_value_t = ValidationMode::Strict)]
    pub validation: ValidationMode,
    /// A `forbid` whose evaluation errors (an attribute its entity lacks, an entity the store does
    /// not hold): `skip` it, as Cedar does (the error is reported), or `deny`, failing closed.
    #[arg(long, env = "CEDAR_PDP_FORBID_ERRORS", value_enum, default_value_t = ForbidErrors::Skip)]
    pub forbid_errors: ForbidErrors,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address the gRPC server listens on.
    #[arg(long, env = "CEDAR_PDP_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub policy: PolicyConfig,
    /// A second policy directory, loaded, validated and reloaded like the first: every live decision
    /// is decided on it too, off the request's path, and the differences are logged and counted. The
    /// live answer never depends on it.
    #[arg(long, env = "CEDAR_PDP_SHADOW_POLICIES")]
    pub shadow_policies: Option<PathBuf>,
    /// Shadow evaluations waiting at most; past it, new ones are dropped (and counted), never waited for.
    #[arg(long, env = "CEDAR_PDP_SHADOW_QUEUE", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub shadow_queue: u32,
    /// Watch the policy directory and reload on change (SIGHUP always reloads).
    #[arg(long, env = "CEDAR_PDP_WATCH", default_value_t = true, action = ArgAction::Set)]
    pub watch: bool,
    /// Quiet period after the last file event before a reload starts.
    #[arg(long, env = "CEDAR_PDP_RELOAD_DEBOUNCE", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub reload_debounce: Duration,
    /// How long an edit that empties a policy file, or removes a forbid from one, must hold still
    /// before a file-change reload applies it (a half-written file looks like that).
    #[arg(long, env = "CEDAR_PDP_RELOAD_SETTLE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub reload_settle: Duration,
    /// Most checks one BatchCheck may carry.
    #[arg(long, env = "CEDAR_PDP_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,
    /// Most request-scoped entities (`entities_json`) one check may carry.
    #[arg(long, env = "CEDAR_PDP_MAX_REQUEST_ENTITIES", default_value_t = 100)]
    pub max_request_entities: usize,
    /// Most candidate entities one ListResources/ListPrincipals call (or AuthZEN search) examines
    /// before it answers with what it found and a page token to go on from.
    #[arg(long, env = "CEDAR_PDP_MAX_LIST_CANDIDATES", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_list_candidates: u64,
    /// Largest request message accepted, in bytes.
    #[arg(long, env = "CEDAR_PDP_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Emit one decision-log event per decision (target `cedar_pdp::decision`).
    #[arg(long, env = "CEDAR_PDP_DECISION_LOG", default_value_t = true, action = ArgAction::Set)]
    pub decision_log: bool,
    /// Decision-log records carry the whole request (context, request-scoped entities, min_revision)
    /// and the entity revision it was decided at, so that `cedar-pdp replay` can decide them again.
    #[arg(long, env = "CEDAR_PDP_DECISION_LOG_REQUESTS", default_value_t = false, action = ArgAction::Set)]
    pub decision_log_requests: bool,
    /// How long in-flight calls may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "CEDAR_PDP_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Bearer token for the AdminService, required from every peer. With no admin token or
    /// `--admin-peer`, the server generates one at start (see `cli.token` in `--data-dir`).
    #[arg(long, env = "CEDAR_PDP_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the AdminService token (first line): unlike a flag, not readable in the process list.
    #[arg(long, env = "CEDAR_PDP_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,
    /// Serve the HTTP API (OpenID AuthZEN) on this address; `off`: no HTTP listener.
    #[arg(long, env = "CEDAR_PDP_HTTP_LISTEN", default_value = "127.0.0.1:8180", value_parser = parse_listen)]
    pub http_listen: Listen,
    /// HTTP API credential `NAME=TOKEN`, repeatable (comma-separated in the variable). Unset, with no
    /// `--check-peer` either: any caller the TLS policy admits, as for the gRPC Check.
    #[arg(long = "http-token", env = "CEDAR_PDP_HTTP_TOKENS", value_delimiter = ',', value_parser = parse_named_token, hide_env_values = true)]
    pub http_tokens: Vec<(String, String)>,
    /// SCIM credential `NAME=TOKEN`, repeatable (comma-separated in the variable): the IdP presents
    /// `Authorization: Bearer TOKEN` (or the bare token) and is audited as `scim:NAME`. Unset, with no
    /// `--scim-token-file` either: SCIM is off (every SCIM call is refused with 401).
    #[arg(long = "scim-token", env = "CEDAR_PDP_SCIM_TOKENS", value_delimiter = ',', value_parser = parse_named_token, hide_env_values = true)]
    pub scim_tokens: Vec<(String, String)>,
    /// File of SCIM credentials, one `NAME=TOKEN` per line (`#` comments), with those above.
    #[arg(long, env = "CEDAR_PDP_SCIM_TOKENS_FILE")]
    pub scim_token_file: Option<PathBuf>,
    /// HTTP API: how long a client may take to send a request's headers (HTTP/1.1) before the
    /// connection is closed: a client trickling bytes cannot hold a connection open.
    #[arg(long, env = "CEDAR_PDP_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http_header_timeout: Duration,
    /// HTTP API: most connections open at once; past it a new connection is closed at once.
    #[arg(long, env = "CEDAR_PDP_HTTP_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,
    /// Serve Prometheus metrics on this address (`/metrics`). Unset: no metrics endpoint.
    #[arg(long, env = "CEDAR_PDP_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub traces: TraceConfig,
    #[command(flatten)]
    pub tls: TlsConfig,
    #[command(flatten)]
    pub entities: EntityConfig,
}

/// OpenTelemetry traces.
#[derive(Debug, Clone, Args)]
pub struct TraceConfig {
    /// OTLP/gRPC collector (`http://otel-collector:4317`): a span per call, continuing the caller's
    /// W3C `traceparent`, with the decision; the trace id goes into the decision log. Unset: no traces.
    #[arg(long, env = "CEDAR_PDP_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of traces kept (0 to 1) where the caller sent no sampling decision; a caller's is followed.
    #[arg(long, env = "CEDAR_PDP_OTLP_SAMPLE_RATIO", default_value_t = 0.01)]
    pub otlp_sample_ratio: f64,
}

/// TLS on every listener, and the certificate identities allowed to call each service.
#[derive(Debug, Clone, Args)]
pub struct TlsConfig {
    /// PEM certificate chain: turns on TLS for every listener (gRPC, provisioning, metrics).
    /// Reloaded when the file changes.
    #[arg(long, env = "CEDAR_PDP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "CEDAR_PDP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates that client certificates must chain to: turns on mTLS.
    #[arg(long, env = "CEDAR_PDP_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// With `--tls-client-ca`: `required` refuses clients without a certificate at the handshake;
    /// `optional` serves them, without a certificate identity.
    #[arg(long, env = "CEDAR_PDP_TLS_CLIENT_AUTH", value_enum, default_value_t = crate::tls::ClientAuth::Required)]
    pub tls_client_auth: crate::tls::ClientAuth,
    /// Certificate identity (URI SAN such as a SPIFFE id, else DNS SAN, else CN) allowed to call the
    /// EntityService, alongside the tokens; repeatable (comma-separated in the variable).
    #[arg(long = "provisioning-peer", env = "CEDAR_PDP_PROVISIONING_PEERS", value_delimiter = ',')]
    pub provisioning_peers: Vec<String>,
    /// Certificate identity allowed to call the AdminService, alongside the admin token; repeatable.
    #[arg(long = "admin-peer", env = "CEDAR_PDP_ADMIN_PEERS", value_delimiter = ',')]
    pub admin_peers: Vec<String>,
    /// When set, only these certificate identities may ask for decisions (Check, BatchCheck,
    /// ext_authz); repeatable. Unset: any caller the TLS policy lets in.
    #[arg(long = "check-peer", env = "CEDAR_PDP_CHECK_PEERS", value_delimiter = ',')]
    pub check_peers: Vec<String>,
}

impl TlsConfig {
    /// The TLS files, when TLS is on; peers without TLS are an error (no certificate can be seen).
    pub fn files(&self) -> Result<Option<crate::tls::TlsFiles>, String> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            let peers = [&self.provisioning_peers, &self.admin_peers, &self.check_peers];
            if peers.iter().any(|p| !p.is_empty()) {
                return Err(
                    "--provisioning-peer, --admin-peer and --check-peer need TLS (--tls-cert, --tls-key)".into()
                );
            }
            return Ok(None);
        };
        let peers = [&self.provisioning_peers, &self.admin_peers, &self.check_peers];
        if self.tls_client_ca.is_none() && peers.iter().any(|p| !p.is_empty()) {
            return Err("certificate identities (--*-peer) need client certificates: set --tls-client-ca".into());
        }
        Ok(Some(crate::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.tls_client_ca.clone(),
            client_auth: self.tls_client_auth,
        }))
    }
}

/// Where provisioned entities live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreChoice {
    /// A database in `--data-dir`: durable, this replica only.
    Embedded,
    /// In this process only: everything is lost on restart (tests, throwaway runs).
    Memory,
    /// Redis at `--redis-url`, shared by every replica.
    Redis,
}

/// The provisioned-entity store and the EntityService.
#[derive(Debug, Clone, Args)]
pub struct EntityConfig {
    /// Where provisioned entities live. Default: `redis` when `--redis-url`, `--redis-sentinel` or
    /// `--redis-cluster` is set, else `embedded`.
    #[arg(long, env = "CEDAR_PDP_STORE", value_enum)]
    pub store: Option<StoreChoice>,
    /// Directory of the embedded store's database (created if missing; one server at a time).
    #[arg(long, env = "CEDAR_PDP_DATA_DIR", default_value = "./cedar-pdp-data")]
    pub data_dir: PathBuf,
    /// Redis URL (`redis://host:6379/0`): the entity store and cache shared by all replicas.
    #[arg(long, env = "CEDAR_PDP_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Sentinel `HOST:PORT` (repeatable, or comma-separated): the store is the primary they name
    /// `--redis-sentinel-master`, followed through failovers; `--redis-url` then gives only the
    /// database, credentials and TLS.
    #[arg(long = "redis-sentinel", env = "CEDAR_PDP_REDIS_SENTINELS", value_delimiter = ',', value_name = "HOST:PORT")]
    pub redis_sentinels: Vec<String>,
    /// The name of the primary the sentinels watch.
    #[arg(long, env = "CEDAR_PDP_REDIS_SENTINEL_MASTER", value_name = "NAME")]
    pub redis_sentinel_master: Option<String>,
    /// Redis Cluster seed node `HOST:PORT` (repeatable, or comma-separated); `--redis-url` then gives
    /// only the credentials and TLS. Every key carries one hash tag: one node's capacity, with failover.
    #[arg(long = "redis-cluster", env = "CEDAR_PDP_REDIS_CLUSTER", value_delimiter = ',', value_name = "HOST:PORT")]
    pub redis_cluster: Vec<String>,
    /// Replicas that must have a write (Redis `WAIT`) before it is acknowledged; one that is not
    /// replicated within `--redis-timeout` is answered UNAVAILABLE. 0: the primary's answer suffices.
    #[arg(long, env = "CEDAR_PDP_REDIS_MIN_REPLICAS", default_value_t = 0)]
    pub redis_min_replicas: u32,
    /// PEM CA certificates trusted for a `rediss://` Redis (a private CA). Unset: the system's roots.
    #[arg(long, env = "CEDAR_PDP_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<PathBuf>,
    /// PEM client certificate presented to a `rediss://` Redis that requires one.
    #[arg(long, env = "CEDAR_PDP_REDIS_TLS_CERT", requires = "redis_tls_key")]
    pub redis_tls_cert: Option<PathBuf>,
    /// PEM private key of `--redis-tls-cert`.
    #[arg(long, env = "CEDAR_PDP_REDIS_TLS_KEY", requires = "redis_tls_cert")]
    pub redis_tls_key: Option<PathBuf>,
    /// Prefix of every Redis key and channel, so that deployments can share one Redis.
    #[arg(long, env = "CEDAR_PDP_REDIS_PREFIX", default_value = "cedar-pdp:")]
    pub redis_prefix: String,
    /// Longest wait for Redis; past it, a decision that needs Redis fails closed (UNAVAILABLE).
    #[arg(long, env = "CEDAR_PDP_REDIS_TIMEOUT", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,
    /// Most entities held in the in-process cache in front of Redis.
    #[arg(long, env = "CEDAR_PDP_ENTITY_CACHE_SIZE", default_value_t = 100_000)]
    pub entity_cache_size: u64,
    /// Longest time a cached entity is kept, invalidations or not.
    #[arg(long, env = "CEDAR_PDP_ENTITY_CACHE_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub entity_cache_ttl: Duration,
    /// While the invalidation subscription is down, cached entities confirmed within this long are
    /// still served; older ones must be read from Redis again. A write elsewhere is missed for at most
    /// max(this, 1s + --redis-timeout). `0s`: never serve unconfirmed data (every decision reads the
    /// store's revision: one round trip).
    #[arg(long, env = "CEDAR_PDP_ENTITY_STALE_FOR", default_value = "5s", value_parser = humantime::parse_duration)]
    pub entity_stale_for: Duration,
    /// Most entities held in built entity slices (what one request's decision reads), per replica.
    #[arg(long, env = "CEDAR_PDP_SLICE_CACHE_SIZE", default_value_t = 200_000)]
    pub slice_cache_size: u64,
    /// Most entities one decision may look up (found or not); a decision needing more fails
    /// (RESOURCE_EXHAUSTED).
    #[arg(long, env = "CEDAR_PDP_MAX_DECISION_ENTITIES", default_value_t = 2_000)]
    pub max_decision_entities: usize,
    /// The JSON-lines audit trail of the former in-process store: replayed into a new data directory
    /// at its first start (entities, records, revision), then renamed `*.migrated`.
    #[arg(long, env = "CEDAR_PDP_AUDIT_FILE", default_value = "./cedar-pdp-audit.jsonl")]
    pub audit_file: PathBuf,
    /// Audit records older than this are removed in the background. Unset: kept forever.
    #[arg(long, env = "CEDAR_PDP_AUDIT_RETENTION", value_parser = humantime::parse_duration)]
    pub audit_retention: Option<Duration>,
    /// EntityService credential `NAME=TOKEN`, repeatable (comma-separated in the variable). A caller
    /// presents `authorization: Bearer TOKEN` and is audited as NAME. With no token or
    /// `--provisioning-peer`, the server generates one at start (see `cli.token` in `--data-dir`).
    #[arg(long = "provisioning-token", env = "CEDAR_PDP_PROVISIONING_TOKENS", value_delimiter = ',', value_parser = parse_named_token, hide_env_values = true)]
    pub provisioning_tokens: Vec<(String, String)>,
    /// File of EntityService credentials, one `NAME=TOKEN` per line (`#` comments), with those above.
    #[arg(long, env = "CEDAR_PDP_PROVISIONING_TOKENS_FILE")]
    pub provisioning_token_file: Option<PathBuf>,
    /// Serve the EntityService and AdminService on this address instead of `--listen`.
    #[arg(long, env = "CEDAR_PDP_PROVISIONING_LISTEN")]
    pub provisioning_listen: Option<SocketAddr>,
}

/// A listener address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

fn parse_listen(text: &str) -> Result<Listen, String> {
    match text {
        "off" => Ok(Listen(None)),
        _ => text.parse().map(|a| Listen(Some(a))).map_err(|e| format!("`{text}`: {e} (or `off`)")),
    }
}

fn parse_named_token(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, token)) if !name.trim().is_empty() && !token.is_empty() => {
            Ok((name.trim().to_string(), token.to_string()))
        }
        _ => Err("expected NAME=TOKEN with both parts non-empty".into()),
    }
}

/// Reads a token file: `NAME=TOKEN` lines when `named`, else the first line as the token.
pub fn read_tokens(path: &std::path::Path, named: bool) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let lines = text.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let tokens: Vec<(String, String)> = if named {
        lines
            .map(|(n, l)| parse_named_token(l).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1)))
            .collect::<Result<_, _>>()?
    } else {
        lines.take(1).map(|(_, l)| ("admin".to_string(), l.to_string())).collect()
    };
    if tokens.is_empty() {
        return Err(format!("{} holds no token", path.display()));
    }
    Ok(tokens)
}

impl ServeConfig {
    /// The SCIM credentials from the flags and the file.
    pub fn scim_credentials(&self) -> Result<Vec<(String, String)>, String> {
        let mut tokens = self.scim_tokens.clone();
        if let Some(path) = &self.scim_token_file {
            tokens.extend(read_tokens(path, true)?);
        }
        Ok(tokens)
    }

    /// The admin token from the flag or the file.
    pub fn admin_tokens(&self) -> Result<Vec<(String, String)>, String> {
        match (&self.admin_token, &self.admin_token_file) {
            (_, Some(path)) => read_tokens(path, false),
            (Some(token), None) => Ok(vec![("admin".to_string(), token.clone())]),
            (None, None) => Ok(Vec::new()),
        }
    }
}

impl EntityConfig {
    /// The provisioning credentials from the flags and the file.
    pub fn provisioning_credentials(&self) -> Result<Vec<(String, String)>, String> {
        let mut tokens = self.provisioning_tokens.clone();
        if let Some(path) = &self.provisioning_token_file {
            tokens.extend(read_tokens(path, true)?);
        }
        Ok(tokens)
    }

    /// Which Redis deployment the flags name, and the URL that gives its database, credentials and
    /// TLS; `None` when no Redis is named.
    fn redis_topology(&self) -> Result<Option<(String, crate::entities::Topology)>, String> {
        use crate::entities::Topology;
        let topology = match (&self.redis_sentinels[..], &self.redis_cluster[..], &self.redis_sentinel_master) {
            ([], [], Some(_)) => return Err("--redis-sentinel-master needs --redis-sentinel".into()),
            ([], [], None) => Topology::Single,
            ([_, ..], [_, ..], _) => return Err("--redis-sentinel and --redis-cluster exclude each other".into()),
            ([_, ..], [], None) => return Err("--redis-sentinel needs --redis-sentinel-master NAME".into()),
            (sentinels @ [_, ..], [], Some(master)) => {
                Topology::Sentinel { sentinels: sentinels.to_vec(), master: master.clone() }
            }
            ([], _, Some(_)) => {
                return Err("--redis-sentinel-master goes with --redis-sentinel, not --redis-cluster".into());
            }
            ([], seeds, None) => Topology::Cluster { seeds: seeds.to_vec() },
        };
        Ok(match (&self.redis_url, topology) {
            (None, Topology::Single) => None,
            (Some(url), topology) => Some((url.clone(), topology)),
            // The address comes from the sentinels or the seeds: the URL is the defaults'.
            (None, topology) => Some(("redis://localhost/0".into(), topology)),
        })
    }

    /// The store settings; a `--store` that contradicts the Redis flags is an error.
    pub fn store(&self) -> Result<crate::entities::StoreConfig, String> {
        use crate::entities::StoreKind;
        let kind = match (self.store, self.redis_topology()?) {
            (Some(StoreChoice::Redis) | None, Some((url, topology))) => {
                let tls = crate::entities::RedisTls {
                    ca: self.redis_tls_ca.clone(),
                    cert: self.redis_tls_cert.clone(),
                    key: self.redis_tls_key.clone(),
                };
                let prefix = self.redis_prefix.clone();
                StoreKind::Redis { url, prefix, tls, topology, min_replicas: self.redis_min_replicas }
            }
            (Some(StoreChoice::Redis), None) => {
                return Err("--store redis needs --redis-url, --redis-sentinel or --redis-cluster".into());
            }
            (Some(choice), Some(_)) => {
                return Err(format!("a Redis is named, but --store is {choice:?}; drop one of them"));
            }
            (Some(StoreChoice::Memory), None) => StoreKind::Memory,
            (Some(StoreChoice::Embedded) | None, None) => StoreKind::Embedded { data_dir: self.data_dir.clone() },
        };
        Ok(crate::entities::StoreConfig {
            kind,
            redis_timeout: self.redis_timeout,
            cache_capacity: self.entity_cache_size,
            cache_ttl: self.entity_cache_ttl,
            stale_for: self.entity_stale_for,
            legacy_audit_file: self.audit_file.clone(),
            audit_retention: self.audit_retention,
            max_decision_entities: self.max_decision_entities,
            slice_cache_size: self.slice_cache_size,
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// Policy directory to validate.
    #[arg(default_value = "./policies")]
    pub dir: PathBuf,
    /// Schema validation mode.
    #[arg(long, env = "CEDAR_PDP_VALIDATION", value_enum, default_value_t = ValidationMode::Strict)]
    pub validation: ValidationMode,
}

#[derive(Debug, Clone, Args)]
pub struct TestArgs {
    /// `--policies` (the policy directory under test), `--validation` and `--forbid-errors`, as the server's.
    #[command(flatten)]
    pub policy: PolicyConfig,
    /// Output: failures and a summary, or JUnit XML for CI systems.
    #[arg(long, value_enum, default_value_t = TestFormat::Text)]
    pub format: TestFormat,
    /// Test files or directories; default: every `*.test.json` / `*.test.yaml` under `<policies>/tests/`.
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// `--policies` (the new policy directory), `--validation` and `--forbid-errors`, as the server's.
    #[command(flatten)]
    pub policy: PolicyConfig,
    /// Also the provisioned entities of the server at this address (read at its current revision);
    /// without it, the new directory's entity files only. Its token: `--token`, `--token-file`, or
    /// the one it generated in `--data-dir`.
    #[arg(long)]
    pub entities_from: Option<String>,
    #[command(flatten)]
    pub client: ProvisioningClient,
    /// Exit 1 when a decision changes from deny to allow (`allow-gain`: "this change grants no new
    /// access") or changes at all (`any`).
    #[arg(long, value_enum)]
    pub fail_on: Option<FailOn>,
    /// Decision logs (JSON lines, `--log-format json`); `-` reads standard input.
    #[arg(required = true)]
    pub logs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailOn {
    AllowGain,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TestFormat {
    Text,
    Junit,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Server address.
    #[arg(long, env = "CEDAR_PDP_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Principal uid in Cedar syntax, e.g. `User::"alice"`.
    #[arg(long)]
    pub principal: String,
    /// Action uid in Cedar syntax, e.g. `Action::"view"`.
    #[arg(long)]
    pub action: String,
    /// Resource uid in Cedar syntax, e.g. `Document::"design-doc"`.
    #[arg(long)]
    pub resource: String,
    /// Context record as Cedar JSON.
    #[arg(long, default_value = "")]
    pub context: String,
    /// Request-scoped entities as a Cedar entity JSON array.
    #[arg(long, default_value = "")]
    pub entities: String,
    /// Decide on provisioned entities at least as fresh as this EntityService write revision.
    #[arg(long, default_value_t = 0)]
    pub min_revision: u64,
    #[command(flatten)]
    pub tls: ClientTls,
}

/// How the CLI reaches a TLS server (`--addr https://…`).
#[derive(Debug, Clone, Default, Args)]
pub struct ClientTls {
    /// PEM CA certificates to trust for the server's certificate. Unset: the system's roots.
    #[arg(long = "tls-ca", env = "CEDAR_PDP_CLIENT_TLS_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate to present (mTLS).
    #[arg(long = "tls-cert", env = "CEDAR_PDP_CLIENT_TLS_CERT", requires = "key", global = true)]
    pub cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long = "tls-key", env = "CEDAR_PDP_CLIENT_TLS_KEY", requires = "cert", global = true)]
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the host of `--addr`.
    #[arg(long = "tls-server-name", env = "CEDAR_PDP_CLIENT_TLS_SERVER_NAME", global = true)]
    pub server_name: Option<String>,
}

impl ClientTls {
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.server_name.is_some()
    }
}

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// Server address.
    #[arg(long, env = "CEDAR_PDP_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// The service asked about: `` (the server), `cedar_pdp.v1.AuthorizationService` or
    /// `envoy.service.auth.v3.Authorization`.
    #[arg(long, default_value = "")]
    pub service: String,
    #[command(flatten)]
    pub tls: ClientTls,
}

#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Server address (the `--provisioning-listen` one, if the server has it).
    #[arg(long, env = "CEDAR_PDP_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Admin bearer token, needed when the server has one configured.
    #[arg(long, env = "CEDAR_PDP_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token (kept out of the process list and shell history).
    #[arg(long, env = "CEDAR_PDP_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,
    /// The server's data directory: without a token, the token it generated there is used.
    #[arg(long, env = "CEDAR_PDP_DATA_DIR", default_value = "./cedar-pdp-data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub tls: ClientTls,
}

/// How the provisioning commands reach the server's EntityService.
#[derive(Debug, Clone, Args)]
pub struct ProvisioningClient {
    /// Server address (the `--provisioning-listen` one, if the server has it).
    #[arg(long, env = "CEDAR_PDP_ADDR", default_value = "http://127.0.0.1:50051", global = true)]
    pub addr: String,
    /// A provisioning token of the server (`--provisioning-token NAME=TOKEN`: the TOKEN part).
    #[arg(long, env = "CEDAR_PDP_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// File holding the provisioning token (kept out of the process list and shell history).
    #[arg(long, env = "CEDAR_PDP_TOKEN_FILE", conflicts_with = "token", global = true)]
    pub token_file: Option<PathBuf>,
    /// The server's data directory: without a token, the token it generated there is used.
    #[arg(long, env = "CEDAR_PDP_DATA_DIR", default_value = "./cedar-pdp-data", global = true)]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub tls: ClientTls,
}

#[derive(Debug, Clone, Args)]
pub struct EntitiesArgs {
    #[command(flatten)]
    pub client: ProvisioningClient,
    #[command(subcommand)]
    pub command: EntitiesCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum EntitiesCommand {
    /// Upsert Cedar entity JSON (an array, or one entity per line) from FILE or `-` (stdin).
    Import {
        file: PathBuf,
        /// Entities per UpsertEntities call (at most the server's `--max-batch`).
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
    },
    /// Every provisioned entity (or those of one type) as JSON lines, read at one revision.
    Export {
        /// Only entities of this type.
        #[arg(long = "type")]
        ty: Option<String>,
    },
    /// One entity as Cedar JSON, with where it comes from and its revision.
    Get { uid: String },
    /// Delete entities, in one all-or-nothing batch.
    Delete {
        #[arg(required = true)]
        uids: Vec<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub client: ProvisioningClient,
    /// Only records about this entity, e.g. `User::"alice"`.
    #[arg(long)]
    pub uid: Option<String>,
    /// Only records at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Only records before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many records.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl ServeConfig {
    /// The configuration `cedar-pdp serve` would run with (defaults and `CEDAR_PDP_…` variables),
    /// serving `policies` on `listen`; for tests and embedding. Fails on an invalid variable.
    pub fn new(listen: SocketAddr, policies: PathBuf) -> Result<Self, clap::Error> {
        match Cli::try_parse_from(["cedar-pdp", "serve"])?.command {
            Command::Serve(mut config) => {
                config.listen = listen;
                config.policy.policies = policies;
                Ok(config)
            }
            _ => Err(clap::Error::new(clap::error::ErrorKind::MissingSubcommand)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_usable() {
        let cli = Cli::try_parse_from(["cedar-pdp", "serve"]).unwrap();
        let Command::Serve(c) = cli.command else { panic!("not serve") };
        assert_eq!(c.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(c.policy.policies, PathBuf::from("./policies"));
        assert_eq!(c.policy.validation, ValidationMode::Strict);
        assert!(c.watch && c.decision_log);
        assert_eq!(c.reload_debounce, Duration::from_millis(200));
        assert!(c.admin_token.is_none());
    }

    #[test]
    fn flags_override_defaults() {
        let cli = Cli::try_parse_from([
            "cedar-pdp",
            "--log-format",
            "json",
            "serve",
            "--listen",
            "0.0.0.0:9000",
            "--validation",
            "off",
            "--watch",
            "false",
            "--max-batch",
            "5",
            "--shutdown-grace",
            "2s",
        ])
        .unwrap();
        assert_eq!(cli.log.log_format, LogFormat::Json);
        let Command::Serve(c) = cli.command else { panic!("not serve") };
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.policy.validation, ValidationMode::Off);
        assert!(!c.watch);
        assert_eq!(c.max_batch, 5);
        assert_eq!(c.shutdown_grace, Duration::from_secs(2));
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Cli::try_parse_from(["cedar-pdp", "serve", "--listen", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["cedar-pdp", "serve", "--validation", "lenient"]).is_err());
        assert!(Cli::try_parse_from(["cedar-pdp", "serve", "--reload-debounce", "soon"]).is_err());
        assert!(Cli::try_parse_from(["cedar-pdp", "serve", "--provisioning-token", "no-name"]).is_err());
        assert!(Cli::try_parse_from(["cedar-pdp", "serve", "--provisioning-token", "=secret"]).is_err());
    }

    /// The store `serve` with these arguments would open, or why it refuses them.
    fn store_kind(args: &[&str]) -> Result<crate::entities::StoreKind, String> {
        let cli = Cli::try_parse_from([&["cedar-pdp", "serve"], args].concat()).unwrap();
        let Command::Serve(c) = cli.command else { panic!("not serve") };
        c.entities.store().map(|s| s.kind)
    }

    #[test]
    fn the_store_follows_the_flags_and_contradictions_are_refused() {
        let kind = store_kind;
        use crate::entities::StoreKind;
        assert_eq!(kind(&[]).unwrap(), StoreKind::Embedded { data_dir: "./cedar-pdp-data".into() });
        assert_eq!(kind(&["--store", "memory"]).unwrap(), StoreKind::Memory);
        let redis = kind(&["--redis-url", "redis://127.0.0.1:1/0"]).unwrap();
        assert!(matches!(redis, StoreKind::Redis { .. }), "{redis:?}");
        assert!(kind(&["--store", "redis"]).unwrap_err().contains("--redis-url"));
        assert!(kind(&["--store", "memory", "--redis-url", "redis://x"]).is_err());
        assert!(Cli::try_parse_from(["cedar-pdp", "serve", "--store", "disk"]).is_err());
        assert!(Cli::try_parse_from(["cedar-pdp", "serve", "--audit-retention", "forever"]).is_err());
    }

    #[test]
    fn redis_topologies_come_from_the_flags() {
        use crate::entities::{StoreKind, Topology};
        let kind = store_kind;
        let sentinel = ["--redis-sentinel", "127.0.0.1:1,127.0.0.1:2", "--redis-sentinel-master", "main"];
        let Ok(StoreKind::Redis { topology, min_replicas: 0, .. }) = kind(&sentinel) else { panic!("not redis") };
        let sentinels = vec!["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
        assert_eq!(topology, Topology::Sentinel { sentinels, master: "main".into() });
        let cluster = ["--redis-cluster", "127.0.0.1:1", "--redis-cluster", "127.0.0.1:2", "--redis-min-replicas", "1"];
        let Ok(StoreKind::Redis { topology, min_replicas: 1, .. }) = kind(&cluster) else { panic!("not redis") };
        assert!(matches!(topology, Topology::Cluster { seeds } if seeds.len() == 2));
        assert!(kind(&["--redis-sentinel", "127.0.0.1:1"]).unwrap_err().contains("--redis-sentinel-master"));
        assert!(kind(&["--redis-sentinel-master", "main"]).unwrap_err().contains("--redis-sentinel"));
        let both = ["--redis-cluster", "a:1", "--redis-sentinel", "b:1", "--redis-sentinel-master", "m"];
        assert!(kind(&both).unwrap_err().contains("exclude"));
        let master_with_cluster = ["--redis-cluster", "a:1", "--redis-sentinel-master", "m"];
        assert!(kind(&master_with_cluster).unwrap_err().contains("--redis-sentinel-master"));
        assert!(kind(&["--store", "embedded", "--redis-cluster", "a:1"]).is_err());
    }

    #[test]
    fn provisioning_tokens_are_named() {
        let cli = Cli::try_parse_from([
            "cedar-pdp",
            "serve",
            "--provisioning-token",
            "hr-sync=abc=def",
            "--provisioning-token",
            "scim=xyz",
        ])
        .unwrap();
        let Command::Serve(c) = cli.command else { panic!("not serve") };
        assert_eq!(
            c.entities.provisioning_tokens,
            [("hr-sync".to_string(), "abc=def".to_string()), ("scim".to_string(), "xyz".to_string())]
        );
        assert!(c.entities.redis_url.is_none());
    }
}
