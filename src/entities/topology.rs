//! How the Redis store reaches Redis: one server (redis-rs's `ConnectionManager` reconnects to it),
//! the primary that Sentinel names (asked again after any lost connection or demotion, so a
//! failover is followed and a demoted primary is left), or a Cluster (whose client follows slot
//! moves and failovers; a deployment's keys share one hash tag, so each write stays one script on
//! one node).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection, PubSub};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, ConnectionAddr, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use crate::error::StoreError;

/// Which Redis deployment holds the store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Topology {
    /// The server at `--redis-url`.
    #[default]
    Single,
    /// The primary named `master` by these sentinels (`host:port`).
    Sentinel { sentinels: Vec<String>, master: String },
    /// A Redis Cluster reached through these seed nodes (`host:port`).
    Cluster { seeds: Vec<String> },
}

/// What `--redis-url` contributes besides the address: database, credentials, TLS.
pub(super) struct Endpoint {
    pub url: String,
    pub secure: bool,
    pub certs: Option<redis::TlsCertificates>,
}

impl Endpoint {
    fn client(&self) -> Result<redis::Client, StoreError> {
        let client = match &self.certs {
            Some(certs) => redis::Client::build_with_tls(self.url.as_str(), certs.clone()),
            None => redis::Client::open(self.url.as_str()),
        };
        client.map_err(|e| StoreError::Config(format!("--redis-url: {e}")))
    }

    /// The same database, credentials and TLS at another address.
    fn at(&self, host_port: &str, flag: &str) -> Result<Endpoint, StoreError> {
        let (host, port) = split_host_port(host_port, flag)?;
        let info = self.client()?.get_connection_info().redis_settings().clone();
        let auth = match (info.username(), info.password()) {
            (Some(user), Some(password)) => format!("{}:{}@", encode(user), encode(password)),
            (None, Some(password)) => format!(":{}@", encode(password)),
            _ => String::new(),
        };
        let scheme = if self.secure { "rediss" } else { "redis" };
        let url = format!("{scheme}://{auth}{host}:{port}/{}", info.db());
        Ok(Endpoint { url, secure: self.secure, certs: self.certs.clone() })
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn split_host_port(text: &str, flag: &str) -> Result<(String, u16), StoreError> {
    let bad = || StoreError::Config(format!("{flag} `{text}`: expected HOST:PORT"));
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port.parse().map_err(|_| bad())?))
}

/// The connection every store call goes through; cheap to clone.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Sentinel(Arc<SentinelPrimary>),
    Cluster(Arc<LazyCluster>),
}

/// The connection and where subscriptions go.
#[derive(Clone)]
pub(super) struct Link {
    pub conn: Conn,
    /// Servers a subscription may use, tried in order (a Cluster forwards every publication to
    /// every node); empty with Sentinel, whose current primary is asked for.
    subscribe_via: Vec<redis::Client>,
    pub db: i64,
}

impl Link {
    /// Connects lazily: the server starts while Redis is down, and reconnects by itself.
    /// `tag_key` is one of the store's keys: on a Cluster, its slot holds them all.
    pub fn open(
        endpoint: &Endpoint,
        topology: &Topology,
        tag_key: &str,
        timeout: Duration,
    ) -> Result<Link, StoreError> {
        let config_error = |flag: &str, e: RedisError| StoreError::Config(format!("{flag}: {e}"));
        let client = endpoint.client()?;
        let db = client.get_connection_info().redis_settings().db();
        match topology {
            Topology::Single => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout * 2))
                    .set_connection_timeout(Some(timeout))
                    .set_number_of_retries(1);
                let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map_err(|e| config_error("--redis-url", e))?;
                Ok(Link { conn: Conn::Single(conn), subscribe_via: vec![client], db })
            }
            Topology::Sentinel { sentinels, master } => {
                let primary = SentinelPrimary::new(endpoint, sentinels, master, timeout)?;
                Ok(Link { conn: Conn::Sentinel(Arc::new(primary)), subscribe_via: Vec::new(), db })
            }
            Topology::Cluster { seeds } => {
                if db != 0 {
                    return Err(StoreError::Config("--redis-cluster: a Cluster has database 0 only".into()));
                }
                let nodes: Vec<Endpoint> =
                    seeds.iter().map(|s| endpoint.at(s, "--redis-cluster")).collect::<Result<_, _>>()?;
                let mut builder = ClusterClient::builder(nodes.iter().map(|n| n.url.clone()))
                    .connection_timeout(timeout)
                    .response_timeout(timeout * 2)
                    .retries(2);
                if let Some(certs) = &endpoint.certs {
                    builder = builder.certs(certs.clone());
                }
                let cluster = builder.build().map_err(|e| config_error("--redis-cluster", e))?;
                let subscribe_via = nodes.iter().map(Endpoint::client).collect::<Result<_, _>>()?;
                let lazy = LazyCluster { client: cluster, tag_key: tag_key.to_string(), conn: Default::default() };
                Ok(Link { conn: Conn::Cluster(Arc::new(lazy)), subscribe_via, db })
            }
        }
    }

    /// A subscription connection: to the current primary under Sentinel, else the first server of
    /// `subscribe_via` that answers.
    pub async fn pubsub(&self) -> RedisResult<PubSub> {
        if let Conn::Sentinel(primary) = &self.conn {
            return primary.client().await?.get_async_pubsub().await;
        }
        let mut last = None;
        for client in &self.subscribe_via {
            match client.get_async_pubsub().await {
                Ok(pubsub) => return Ok(pubsub),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| RedisError::from((redis::ErrorKind::Client, "no Redis node to subscribe to"))))
    }
}

impl Conn {
    /// Runs a command that names no key (SCAN, INFO, CONFIG) where the store's keys are: on a
    /// Cluster, the primary of their slot; elsewhere, the one primary.
    pub async fn on_store_node<T: redis::FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Cluster(lazy) => {
                let (mut conn, slot) = lazy.connection().await?;
                let route =
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master)));
                Ok(redis::from_redis_value(conn.route_command(cmd.clone(), route).await?)?)
            }
            _ => cmd.query_async(self).await,
        }
    }

    /// Whether the server this connection writes to is still the primary (Sentinel, every second:
    /// it says it is one, and the sentinels name it; else it is left, and the next call asks the
    /// sentinels again). Sentinels that cannot be asked leave the answer to `ROLE`.
    pub async fn check_primary(&self) -> Result<(), String> {
        let Conn::Sentinel(primary) = self else { return Ok(()) };
        let Some(live) = primary.current() else { return Ok(()) };
        let mut conn = live.conn.clone();
        let role: RedisResult<Vec<Value>> = redis::cmd("ROLE").query_async(&mut conn).await;
        let demoted = match role.ok().and_then(|r| r.first().cloned()) {
            Some(Value::BulkString(role)) if role == b"master" => None,
            other => Some(format!("the primary is no longer one (ROLE: {other:?})")),
        };
        let named = match demoted {
            Some(_) => None,
            None => primary.named_addr().await,
        };
        let moved = named
            .filter(|named| *named != live.addr)
            .map(|named| format!("the sentinels name {named} as the primary, not {}", live.addr));
        match demoted.or(moved) {
            Some(reason) => {
                primary.forget(live.generation);
                Err(reason)
            }
            None => Ok(()),
        }
    }

    /// After a call that got no answer: under Sentinel the connection is left, so that a primary that
    /// hangs (not one that died) is asked for again, as after an error.
    pub fn on_timeout(&self) {
        if let Conn::Sentinel(primary) = self {
            primary.forget_any();
        }
    }
}

/// The connection to the primary, which primary it is, and its generation (an error forgets only
/// the connection it happened on).
#[derive(Clone)]
struct Live {
    generation: u64,
    conn: MultiplexedConnection,
    addr: String,
}

/// The primary Sentinel names, connected to on first use and asked for again once its
/// connection fails or it turns out demoted.
pub(super) struct SentinelPrimary {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<Live>>,
    generations: AtomicU64,
    config: AsyncConnectionConfig,
    db: i64,
}

impl SentinelPrimary {
    fn new(endpoint: &Endpoint, sentinels: &[String], master: &str, timeout: Duration) -> Result<Self, StoreError> {
        let addrs: Vec<ConnectionAddr> = sentinels
            .iter()
            .map(|s| split_host_port(s, "--redis-sentinel").map(|(h, p)| ConnectionAddr::Tcp(h, p)))
            .collect::<Result<_, _>>()?;
        let info = endpoint.client()?.get_connection_info().redis_settings().clone();
        let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
            .map(|b| b.set_client_to_redis_db(info.db()))
            .map_err(|e| StoreError::Config(format!("--redis-sentinel: {e}")))?;
        if let Some(user) = info.username() {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = info.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if endpoint.secure {
            builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
            if let Some(certs) = &endpoint.certs {
                builder = builder.set_client_to_redis_certificates(certs.clone());
            }
        }
        let sentinel = builder.build().map_err(|e| StoreError::Config(format!("--redis-sentinel: {e}")))?;
        let config =
            AsyncConnectionConfig::new().set_connection_timeout(Some(timeout)).set_response_timeout(Some(timeout * 2));
        let db = info.db();
        let sentinel = tokio::sync::Mutex::new(sentinel);
        Ok(SentinelPrimary { sentinel, current: Mutex::new(None), generations: AtomicU64::new(0), config, db })
    }

    fn current(&self) -> Option<Live> {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn forget(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|live| live.generation == generation) {
            *current = None;
        }
    }

    fn forget_any(&self) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The address of the primary the sentinels name now; `None` when none answers.
    async fn named_addr(&self) -> Option<String> {
        let client = self.sentinel.lock().await.async_get_client().await.ok()?;
        Some(client.get_connection_info().addr().to_string())
    }

    /// A client for the primary the sentinels name now (redis-rs checks its `ROLE`).
    async fn client(&self) -> RedisResult<redis::Client> {
        self.sentinel.lock().await.async_get_client().await
    }

    async fn connection(&self) -> RedisResult<Live> {
        if let Some(live) = self.current() {
            return Ok(live);
        }
        // One discovery at a time; whoever waited finds the connection made.
        let mut sentinel = self.sentinel.lock().await;
        if let Some(live) = self.current() {
            return Ok(live);
        }
        let client = sentinel.async_get_client().await?;
        let conn = client.get_multiplexed_async_connection_with_config(&self.config).await?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let live = Live { generation, conn, addr: client.get_connection_info().addr().to_string() };
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(live.clone());
        Ok(live)
    }

    /// Forgets the connection after an error that says the primary is gone or demoted.
    fn judge(&self, generation: u64, error: &RedisError) {
        let demoted = matches!(error.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"));
        if demoted || error.is_io_error() || error.is_connection_dropped() || error.is_timeout() {
            self.forget(generation);
        }
    }
}

/// A Cluster connection made on first use (the server starts while the Cluster is down).
pub(super) struct LazyCluster {
    client: ClusterClient,
    tag_key: String,
    conn: tokio::sync::OnceCell<(ClusterConnection, u16)>,
}

impl LazyCluster {
    /// The connection and the slot of the store's hash tag, computed by the Cluster itself.
    async fn connection(&self) -> RedisResult<(ClusterConnection, u16)> {
        let (conn, slot) = self
            .conn
            .get_or_try_init(|| async {
                let mut conn = self.client.get_async_connection().await?;
                let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(&self.tag_key).query_async(&mut conn).await?;
                Ok::<_, RedisError>((conn, slot))
            })
            .await?;
        Ok((conn.clone(), *slot))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Sentinel(primary) => Box::pin(async move {
                let Live { generation, mut conn, .. } = primary.connection().await?;
                let reply = conn.req_packed_command(cmd).await;
                if let Err(e) = &reply {
                    primary.judge(generation, e);
                }
                reply
            }),
            Conn::Cluster(lazy) => Box::pin(async move {
                let (mut conn, _) = lazy.connection().await?;
                conn.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(primary) => Box::pin(async move {
                let Live { generation, mut conn, .. } = primary.connection().await?;
                let reply = conn.req_packed_commands(pipeline, offset, count).await;
                match &reply {
                    Err(e) => primary.judge(generation, e),
                    // A pipeline that keeps its errors in its replies (the write's) tells a demotion there.
                    Ok(values) => {
                        for value in values {
                            if let Value::ServerError(e) = value {
                                primary.judge(generation, &e.clone().into());
                            }
                        }
                    }
                }
                reply
            }),
            Conn::Cluster(lazy) => Box::pin(async move {
                let (mut conn, _) = lazy.connection().await?;
                conn.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Sentinel(primary) => primary.db,
            Conn::Cluster(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        assert_eq!(split_host_port("redis-0.redis:26379", "--x").unwrap(), ("redis-0.redis".to_string(), 26379));
        assert_eq!(split_host_port("[::1]:6379", "--x").unwrap(), ("::1".to_string(), 6379));
        for bad in ["nohost", ":6379", "host:", "host:port", "host:70000"] {
            let e = split_host_port(bad, "--redis-sentinel").unwrap_err().to_string();
            assert!(e.contains("--redis-sentinel") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn an_endpoint_keeps_database_credentials_and_tls_at_another_address() {
        let endpoint = Endpoint { url: "redis://user:p%40ss@ignored:1/3".into(), secure: false, certs: None };
        let moved = endpoint.at("10.0.0.7:6380", "--redis-cluster").unwrap();
        let info = moved.client().unwrap().get_connection_info().clone();
        assert_eq!(info.redis_settings().db(), 3);
        assert_eq!(info.redis_settings().username(), Some("user"));
        assert_eq!(info.redis_settings().password(), Some("p@ss"));
        assert_eq!(info.addr().to_string(), "10.0.0.7:6380");
    }
}
