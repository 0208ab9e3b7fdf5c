//! Redis high availability with real processes: a primary, a replica and three sentinels on
//! loopback, and two `cedar-pdp` replicas that find the primary through Sentinel and wait for one
//! Redis replica on every write (`--redis-min-replicas 1`). Under Check load from four clients and
//! provisioning writes every few milliseconds, the primary is SIGKILLed, and then, once the old
//! primary is back as a replica, the new one is stopped (SIGSTOP: it hangs): no Check is allowed that an acknowledged revocation
//! forbids, every acknowledged write is on the promoted primary, failures are UNAVAILABLE only, and
//! both servers answer again, with live invalidations, without a restart. Writes are acknowledged
//! again once the old primary is back as the new one's replica.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cedar_pdp::grpc::{AuthorizationServiceClient, pb};
use common::process::Process;
use common::redis::{RedisServer, Sentinel, query};
use common::*;
use serde_json::json;

const MASTER: &str = "cedar";
const DOC: &str = r#"Document::"roadmap""#;

/// Two Redis servers (one the primary) and three sentinels.
struct Ha {
    servers: [RedisServer; 2],
    primary: usize,
    sentinels: Vec<Sentinel>,
    /// Whether the old primary was stopped (SIGSTOP) rather than killed.
    stalled: bool,
}

impl Ha {
    fn start() -> Ha {
        let primary = RedisServer::start();
        let replica = RedisServer::start_with(vec!["--replicaof".into(), "127.0.0.1".into(), primary.port.to_string()]);
        let sentinels = (0..3).map(|_| Sentinel::start(MASTER, primary.port)).collect();
        let mut ha = Ha { servers: [primary, replica], primary: 0, sentinels, stalled: false };
        ha.wait_ready();
        ha
    }

    fn sentinel_addrs(&self) -> String {
        self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect::<Vec<_>>().join(",")
    }

    fn primary(&self) -> &RedisServer {
        &self.servers[self.primary]
    }

    /// Until every sentinel names the same primary and knows the other sentinels and the replica,
    /// and that primary has its replica in sync: only then can a failover happen. The primary is
    /// taken from the sentinels, so a failover they make on their own (a loaded machine can miss
    /// `down-after-milliseconds`) is followed rather than waited out.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let views: Vec<_> = self.sentinels.iter().map(|s| s.master(MASTER)).collect();
            let agreed = views.iter().all(|m| {
                m.get("port") == views[0].get("port")
                    && m.get("flags").map(String::as_str) == Some("master")
                    && m.get("num-other-sentinels").map(String::as_str) == Some("2")
                    && m.get("num-slaves").map(String::as_str) == Some("1")
            });
            let named = views[0].get("port").and_then(|p| self.servers.iter().position(|s| s.port.to_string() == *p));
            if let (true, Some(primary)) = (agreed, named) {
                let info: String = query(self.servers[primary].port, &["INFO", "replication"]).unwrap_or_default();
                if info.contains("role:master") && info.contains("connected_slaves:1") && info.contains("state=online")
                {
                    self.primary = primary;
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the Sentinel set is not ready: {views:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the primary, or stops it (SIGSTOP: it hangs, its connections stay open), and waits
    /// for the sentinels to promote the replica: when the fault began, and how long the promotion took.
    fn fail_primary(&mut self, stall: bool) -> (Instant, Duration) {
        if stall {
            self.servers[self.primary].pause();
        } else {
            self.servers[self.primary].kill();
        }
        self.stalled = stall;
        let killed = Instant::now();
        let next = 1 - self.primary;
        let port = self.servers[next].port.to_string();
        wait_until(Duration::from_secs(30), "the sentinels to promote the replica", || {
            self.sentinels.iter().all(|s| s.master(MASTER).get("port") == Some(&port))
        });
        self.primary = next;
        (killed, killed.elapsed())
    }

    /// Brings the old primary back with its data: it comes back a primary of an old state, and the
    /// sentinels turn it into a replica of the new one.
    fn restore_old_primary(&mut self) {
        let old = &mut self.servers[1 - self.primary];
        if self.stalled {
            old.resume()
        } else {
            old.restart()
        }
        self.wait_ready();
    }
}

fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// When each user's grant and revocation were acknowledged.
#[derive(Default, Clone, Copy)]
struct Acks {
    granted: Option<Instant>,
    revoked: Option<Instant>,
}

/// One Check: which server, whose, when, and its outcome (`Err` holds the status code).
struct Sample {
    server: usize,
    user: usize,
    start: Instant,
    end: Instant,
    outcome: Result<bool, tonic::Code>,
}

fn user(k: usize) -> String {
    format!(r#"User::"u{k}""#)
}

#[test]
fn sentinel_failover_loses_no_acknowledged_write_and_allows_nothing_revoked() {
    let rounds: usize = std::env::var("CEDAR_PDP_FAILOVER_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(2);
    let mut ha = Ha::start();
    let sentinels = ha.sentinel_addrs();
    let args = [
        "--redis-sentinel",
        &sentinels,
        "--redis-sentinel-master",
        MASTER,
        "--redis-min-replicas",
        "1",
        "--redis-timeout",
        "300ms",
        // Exact: every decision confirms the store's revision, so an acknowledged write is never missed.
        "--entity-stale-for",
        "0s",
        "--decision-log",
        "false",
    ];
    let servers = [Process::start(&fixture("org"), &args), Process::start(&fixture("org"), &args)];
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut windows = Vec::new();
    runtime.block_on(async {
        let mut writer = servers[0].remote().entities().await.unwrap();
        let doc = entity(DOC, json!({"owner": {"__entity": {"type": "User", "id": "nobody"}}}), &[]);
        writer.upsert_entities(pb::UpsertEntitiesRequest { entities: vec![doc], ..Default::default() }).await.unwrap();
    });
    let acks: Arc<Mutex<Vec<Acks>>> = Arc::default();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let issued = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let load = runtime.spawn(load(
        [servers[0].url(), servers[1].url()],
        [servers[0].remote(), servers[1].remote()],
        acks.clone(),
        samples.clone(),
        issued.clone(),
        stop.clone(),
    ));
    for round in 0..rounds {
        // Load before the kill, so that the failover lands among reads and writes.
        let before = issued.load(Ordering::SeqCst);
        wait_until(Duration::from_secs(10), "writes before the kill", || issued.load(Ordering::SeqCst) >= before + 20);
        // Every other round the primary hangs instead of dying: its connections stay open and silent.
        let (killed, promotion) = ha.fail_primary(round % 2 == 1);
        // Both servers answer again, and writes are acknowledged again, without a restart.
        let recovered = |server: usize| {
            samples
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.server == server && s.start > killed && s.outcome.is_ok())
                .map(|s| s.end)
                .min()
        };
        wait_until(Duration::from_secs(30), "both servers to decide again", || {
            recovered(0).is_some() && recovered(1).is_some()
        });
        // The new primary has no replica until the old one is back as one: till then no write can be
        // acknowledged with --redis-min-replicas 1, and each is answered UNAVAILABLE (and retried).
        ha.restore_old_primary();
        let after = issued.load(Ordering::SeqCst);
        wait_until(Duration::from_secs(30), "writes after the failover", || {
            issued.load(Ordering::SeqCst) >= after + 20
        });
        windows.push([promotion, recovered(0).unwrap() - killed, recovered(1).unwrap() - killed]);
    }
    stop.store(true, Ordering::SeqCst);
    runtime.block_on(load).unwrap();

    let acks = acks.lock().unwrap().clone();
    let samples = samples.lock().unwrap();
    check_answers(&acks, &samples);
    check_primary_holds(ha.primary(), &acks);
    runtime.block_on(check_coherent(&servers, ha.primary()));
    let unavailable = samples.iter().filter(|s| s.outcome.is_err()).count();
    eprintln!(
        "failover: {rounds} rounds, {} checks ({unavailable} UNAVAILABLE), {} users written; per round [promoted, A answers, B answers] after the kill: {windows:?}",
        samples.len(),
        acks.len()
    );
}

/// No Allow that an acknowledged revocation forbids; every failure UNAVAILABLE.
fn check_answers(acks: &[Acks], samples: &[Sample]) {
    for s in samples {
        match s.outcome {
            Ok(true) => {
                let revoked = acks[s.user].revoked;
                assert!(
                    revoked.is_none_or(|at| at > s.start),
                    "server {} allowed u{} {:?} after its revocation was acknowledged",
                    s.server,
                    s.user,
                    s.start - revoked.unwrap()
                );
            }
            Ok(false) => {}
            Err(code) => assert_eq!(code, tonic::Code::Unavailable, "u{}: a failure other than UNAVAILABLE", s.user),
        }
    }
}

/// Every acknowledged grant and revocation is on the primary the sentinels promoted.
fn check_primary_holds(primary: &RedisServer, acks: &[Acks]) {
    for (k, ack) in acks.iter().enumerate() {
        let stored: Option<String> = query(primary.port, &["GET", &format!("cedar-pdp:e:{}", user(k))]).unwrap();
        let Some(stored) = stored else {
            assert!(ack.granted.is_none(), "u{k}: an acknowledged grant is not on the new primary");
            continue;
        };
        let member = stored.contains("readers");
        match (ack.granted, ack.revoked) {
            (_, Some(_)) => assert!(!member, "u{k}: an acknowledged revocation was undone: {stored}"),
            (Some(_), None) => assert!(member, "u{k}: an acknowledged grant was lost: {stored}"),
            (None, None) => {}
        }
    }
}

/// Both servers have their invalidation subscription back, at the primary's revision.
async fn check_coherent(servers: &[Process; 2], primary: &RedisServer) {
    let revision: u64 = query(primary.port, &["GET", "cedar-pdp:rev"]).unwrap();
    for (i, server) in servers.iter().enumerate() {
        let mut admin = server.remote().admin().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = admin.get_status(pb::GetStatusRequest {}).await.unwrap().into_inner();
            if status.entity_invalidations_live && status.entity_revision >= revision {
                break;
            }
            assert!(Instant::now() < deadline, "server {i} did not resubscribe: {status:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Four checkers and one writer until `stop`. The writer grants users one after another and
/// revokes each three grants later (never granting again), so an Allow for a user is wrong exactly
/// when it started after the revocation was acknowledged; writes go through both servers in turn.
async fn load(
    urls: [String; 2],
    remotes: [process::Remote; 2],
    acks: Arc<Mutex<Vec<Acks>>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    issued: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let mut tasks = Vec::new();
    for checker in 0..4 {
        let (urls, acks, samples, stop) = (urls.clone(), acks.clone(), samples.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut clients = Vec::new();
            for url in &urls {
                clients.push(AuthorizationServiceClient::connect(url.clone()).await.unwrap());
            }
            let mut n = checker;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let users = acks.lock().unwrap().len();
                if users == 0 {
                    tokio::task::yield_now().await;
                    continue;
                }
                // Mostly the newest users, whose revocations are the fresh ones.
                let user = users - 1 - (n * 7 % users.min(8));
                let server = n % 2;
                let start = Instant::now();
                let answer = tokio::time::timeout(
                    Duration::from_secs(5),
                    clients[server].check(req(&self::user(user), r#"Action::"view""#, DOC)),
                )
                .await
                .expect("a Check answers within 5 s, failover or not");
                let outcome = answer.map(|r| is_allow(&r.into_inner())).map_err(|s| s.code());
                samples.lock().unwrap().push(Sample { server, user, start, end: Instant::now(), outcome });
            }
        }));
    }
    let mut writers = Vec::new();
    for remote in &remotes {
        writers.push(remote.entities().await.unwrap());
    }
    let mut k = 0;
    while !stop.load(Ordering::SeqCst) {
        acks.lock().unwrap().push(Acks::default());
        write(&mut writers[k % 2], &user(k), true, &format!("grant-{k}")).await;
        acks.lock().unwrap()[k].granted = Some(Instant::now());
        if k >= 3 {
            let old = k - 3;
            write(&mut writers[(k + 1) % 2], &user(old), false, &format!("revoke-{old}")).await;
            acks.lock().unwrap()[old].revoked = Some(Instant::now());
        }
        issued.fetch_add(1, Ordering::SeqCst);
        k += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Writes `who`'s membership, retrying under one request_id until acknowledged.
async fn write(
    writer: &mut cedar_pdp::grpc::EntityServiceClient<process::Authed>,
    who: &str,
    member: bool,
    request_id: &str,
) {
    let parents: &[&str] = if member { &[r#"Group::"readers""#] } else { &[] };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let request = pb::UpsertEntitiesRequest {
            entities: vec![entity(who, json!({}), parents)],
            request_id: request_id.to_string(),
        };
        match writer.upsert_entities(request).await {
            Ok(_) => return,
            Err(status) => {
                assert!(status.code() == tonic::Code::Unavailable, "{who}: {status:?}");
                assert!(Instant::now() < deadline, "{who}: not acknowledged within 30 s: {status:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// `--redis-min-replicas 1` with the replica stalled (SIGSTOP): a write is answered UNAVAILABLE,
/// "not replicated", and its retry under the same request_id is acknowledged at the same revision
/// once the replica is back. Without the flag the same write is acknowledged at once.
#[test]
fn a_write_no_replica_has_is_not_acknowledged() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_with(vec!["--replicaof".into(), "127.0.0.1".into(), primary.port.to_string()]);
    wait_until(Duration::from_secs(10), "the replica to sync", || {
        let info: String = query(primary.port, &["INFO", "replication"]).unwrap_or_default();
        info.contains("state=online")
    });
    let url = primary.url();
    let strict = Process::start(&fixture("org"), &["--redis-url", &url, "--redis-min-replicas", "1"]);
    let relaxed = Process::start(&fixture("org"), &["--redis-url", &url]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut strict = strict.remote().entities().await.unwrap();
        let mut relaxed = relaxed.remote().entities().await.unwrap();
        let upsert = |who: &str, id: &str| pb::UpsertEntitiesRequest {
            entities: vec![entity(who, json!({}), &[r#"Group::"readers""#])],
            request_id: id.to_string(),
        };
        let first = strict.upsert_entities(upsert(&user(0), "a")).await.unwrap().into_inner().revision;
        replica.pause();
        let refused = strict.upsert_entities(upsert(&user(1), "b")).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("not replicated; retry"), "{refused:?}");
        let relaxed_revision = relaxed.upsert_entities(upsert(&user(2), "c")).await.unwrap().into_inner().revision;
        assert!(relaxed_revision > first);
        replica.resume();
        let retried = strict.upsert_entities(upsert(&user(1), "b")).await.unwrap().into_inner().revision;
        assert!(first < retried && retried < relaxed_revision, "the retry kept its first revision");
    });
}

/// Three Redis Cluster primaries (no replicas), their slots spread by `redis-cli --cluster create`.
fn cluster() -> Vec<RedisServer> {
    let nodes: Vec<RedisServer> = (0..3)
        .map(|_| {
            // The bus port is set apart: port + 10000 may be past 65535 for an ephemeral port.
            let bus = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            RedisServer::start_with(
                ["--cluster-enabled", "yes", "--cluster-port", &bus.to_string(), "--cluster-node-timeout", "2000"]
                    .map(String::from)
                    .to_vec(),
            )
        })
        .collect();
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let created = std::process::Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli is installed");
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stdout));
    wait_until(Duration::from_secs(20), "the cluster to be ok", || {
        nodes.iter().all(|n| {
            let info: String = query(n.port, &["CLUSTER", "INFO"]).unwrap_or_default();
            info.contains("cluster_state:ok")
        })
    });
    nodes
}

/// On a Redis Cluster: what one server grants, the other allows, and what it then revokes, the
/// other denies (through its invalidation subscription); every key lands in the one slot of the
/// deployment's hash tag.
#[test]
fn a_cluster_serves_writes_reads_and_revocations() {
    let nodes = cluster();
    let seeds = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",");
    let args = ["--redis-cluster", &seeds, "--decision-log", "false"];
    let (a, b) = (Process::start(&fixture("org"), &args), Process::start(&fixture("org"), &args));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut writer = a.remote().entities().await.unwrap();
        let mut reader = AuthorizationServiceClient::connect(b.url()).await.unwrap();
        let doc = entity(DOC, json!({"owner": {"__entity": {"type": "User", "id": "nobody"}}}), &[]);
        let member = |yes: bool| entity(&user(0), json!({}), if yes { &[r#"Group::"readers""#] } else { &[] });
        let mut upsert = async |entities: Vec<pb::Entity>| {
            writer.upsert_entities(pb::UpsertEntitiesRequest { entities, ..Default::default() }).await.unwrap();
        };
        upsert(vec![doc, member(true)]).await;
        let mut allowed =
            async || is_allow(&reader.check(req(&user(0), r#"Action::"view""#, DOC)).await.unwrap().into_inner());
        assert!(allowed().await, "a grant on the Cluster is decided on by the other server");
        upsert(vec![member(false)]).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while allowed().await {
            assert!(Instant::now() < deadline, "the revocation did not reach the other server");
        }
    });
    // Every key of the deployment is on one node: the one that owns the slot of `{cedar-pdp:}`.
    let slot: i64 = query(nodes[0].port, &["CLUSTER", "KEYSLOT", "{cedar-pdp:}"]).unwrap();
    let holders: Vec<usize> = nodes
        .iter()
        .map(|n| query::<Vec<String>>(n.port, &["KEYS", "*"]).unwrap())
        .map(|keys| keys.iter().filter(|k| k.starts_with("{cedar-pdp:}")).count())
        .collect();
    assert_eq!(holders.iter().filter(|&&n| n > 0).count(), 1, "keys on one node only: {holders:?} (slot {slot})");
    assert!(holders.iter().sum::<usize>() >= 4, "entities, revision and audit are stored: {holders:?}");
}
