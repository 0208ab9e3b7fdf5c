//! The Kubernetes manifests in `deploy/kubernetes` against the binary: every environment variable
//! they set is one of its flags', ports and probes agree with the listen addresses, the policy
//! ConfigMap holds the example policies, and the server runs on exactly the manifests' environment
//! (Sentinel discovery, one replica per write, tokens from files; TLS with the overlay's probe).
//! Rendering and the Kubernetes schemas are checked by `scripts/validate-deploy.sh`.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cedar_pdp::config::Cli;
use cedar_pdp::grpc::pb;
use clap::CommandFactory;
use common::process::{BIN, Process, Remote};
use common::redis::{RedisServer, Sentinel};
use serde_json::Value;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(deploy().join(path)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

/// The plain `value`s a container's `env` sets.
fn env_values(container: &Value) -> BTreeMap<String, String> {
    let env = container["env"].as_array().cloned().unwrap_or_default();
    env.iter().filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string()))).collect()
}

/// Every variable name a container's `env` sets, however.
fn env_names(container: &Value) -> Vec<String> {
    let env = container["env"].as_array().cloned().unwrap_or_default();
    env.iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()
}

/// The Redis settings, as `kustomization.yaml`'s generator writes them into a ConfigMap.
fn redis_literals() -> BTreeMap<String, String> {
    let kustomization = yaml("base/kustomization.yaml");
    let generators = kustomization["configMapGenerator"].as_array().unwrap();
    let redis = generators.iter().find(|g| g["name"] == "cedar-pdp-redis").expect("the Redis ConfigMap");
    redis["literals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let (k, v) = l.as_str().unwrap().split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn mount(container: &Value, volume: &str) -> String {
    let mounts = container["volumeMounts"].as_array().unwrap();
    let m = mounts.iter().find(|m| m["name"] == volume).unwrap_or_else(|| panic!("no mount of {volume}"));
    m["mountPath"].as_str().unwrap().to_string()
}

fn port_of(listen: &str) -> u64 {
    listen.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The environment variables of a command's flags (`serve`, and `health`, which the TLS probes run).
fn flag_envs(command: &str) -> Vec<String> {
    let cli = Cli::command();
    let sub = cli.find_subcommand(command).unwrap().clone();
    sub.get_arguments()
        .chain(cli.get_arguments())
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect()
}

#[test]
fn every_variable_the_manifests_set_is_a_flag() {
    let (serve, health) = (flag_envs("serve"), flag_envs("health"));
    let base = yaml("base/deployment.yaml");
    let mut names = env_names(container(&base));
    names.extend(redis_literals().into_keys());
    for name in &names {
        assert!(serve.contains(name), "base sets {name}, which `cedar-pdp serve` does not read");
    }
    let tls = yaml("tls/tls.yaml");
    for name in env_names(container(&tls)) {
        assert!(serve.contains(&name) || health.contains(&name), "the TLS overlay sets {name}, which nothing reads");
    }
}

#[test]
fn ports_probes_and_services_agree() {
    let base = yaml("base/deployment.yaml");
    let c = container(&base);
    let env = env_values(c);
    let ports: BTreeMap<String, u64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["containerPort"].as_u64().unwrap()))
        .collect();
    assert_eq!(ports["grpc"], port_of(&env["CEDAR_PDP_LISTEN"]));
    assert_eq!(ports["http"], port_of(&env["CEDAR_PDP_HTTP_LISTEN"]));
    assert_eq!(ports["metrics"], port_of(&env["CEDAR_PDP_METRICS_LISTEN"]));
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["grpc"]["port"].as_u64(), Some(ports["grpc"]), "{probe} asks the gRPC port");
        let service = c[probe]["grpc"]["service"].as_str().unwrap_or("");
        assert!(cedar_pdp::grpc::HEALTH_SERVICES.contains(&service), "{probe}: health has no service `{service}`");
    }
    let service = yaml("base/service.yaml");
    let service_ports = service["spec"]["ports"].as_array().unwrap();
    for p in service_ports {
        let target = p["targetPort"].as_str().unwrap();
        assert_eq!(p["port"].as_u64(), ports.get(target).copied(), "Service port {target}");
    }
    let monitor = yaml("monitoring/servicemonitor.yaml");
    let scraped = monitor["spec"]["endpoints"][0]["port"].as_str().unwrap();
    assert!(service_ports.iter().any(|p| p["name"] == scraped), "the ServiceMonitor scrapes a Service port");
    assert_eq!(mount(c, "policies"), env["CEDAR_PDP_POLICIES"]);
    for (var, volume) in [
        ("CEDAR_PDP_DATA_DIR", "scratch"),
        ("CEDAR_PDP_AUDIT_FILE", "scratch"),
        ("CEDAR_PDP_ADMIN_TOKEN_FILE", "tokens"),
        ("CEDAR_PDP_PROVISIONING_TOKENS_FILE", "tokens"),
    ] {
        assert!(env[var].starts_with(&mount(c, volume)), "{var} is on the {volume} volume");
    }
}

#[test]
fn the_configmap_holds_the_example_policies() {
    let kustomization = yaml("base/kustomization.yaml");
    let generators = kustomization["configMapGenerator"].as_array().unwrap();
    let policies = generators.iter().find(|g| g["name"] == "cedar-pdp-policies").unwrap();
    let mut listed: Vec<String> =
        policies["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().into()).collect();
    let mut present: Vec<String> = std::fs::read_dir(deploy().join("base/policies"))
        .unwrap()
        .map(|e| format!("policies/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    listed.sort();
    present.sort();
    assert_eq!(listed, present, "the generator lists every file of base/policies");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for file in &listed {
        let name = file.strip_prefix("policies/").unwrap();
        let copy = std::fs::read_to_string(deploy().join("base").join(file)).unwrap();
        assert_eq!(copy, std::fs::read_to_string(examples.join(name)).unwrap(), "{file} is a copy of policies/{name}");
    }
}

/// The manifests' environment with the cluster's paths and addresses replaced by this machine's.
struct Localized {
    env: BTreeMap<String, String>,
    dir: tempfile::TempDir,
}

fn localize(env: BTreeMap<String, String>, sentinel: u16) -> Localized {
    let dir = tempfile::tempdir().unwrap();
    let mut env = env;
    for listen in ["CEDAR_PDP_LISTEN", "CEDAR_PDP_HTTP_LISTEN", "CEDAR_PDP_METRICS_LISTEN"] {
        env.insert(listen.into(), "127.0.0.1:0".into());
    }
    env.insert("CEDAR_PDP_POLICIES".into(), deploy().join("base/policies").to_string_lossy().into_owned());
    for file in ["CEDAR_PDP_DATA_DIR", "CEDAR_PDP_AUDIT_FILE"] {
        let name = Path::new(&env[file]).file_name().unwrap().to_owned();
        env.insert(file.into(), dir.path().join(name).to_string_lossy().into_owned());
    }
    for (var, contents) in
        [("CEDAR_PDP_ADMIN_TOKEN_FILE", "admin-secret"), ("CEDAR_PDP_PROVISIONING_TOKENS_FILE", "idp=prov-secret")]
    {
        let path = dir.path().join(Path::new(&env[var]).file_name().unwrap());
        std::fs::write(&path, contents).unwrap();
        env.insert(var.into(), path.to_string_lossy().into_owned());
    }
    env.insert("CEDAR_PDP_REDIS_SENTINELS".into(), format!("127.0.0.1:{sentinel}"));
    Localized { env, dir }
}

fn spawn(localized: &Localized) -> Process {
    let mut command = Command::new(BIN);
    command.arg("serve").envs(&localized.env);
    let scratch = tempfile::tempdir().unwrap();
    let data = PathBuf::from(&localized.env["CEDAR_PDP_DATA_DIR"]);
    Process::try_spawn(command, scratch, data).unwrap_or_else(|log| panic!("the server did not start:\n{log}"))
}

#[test]
fn the_manifests_run_as_written() {
    let base = yaml("base/deployment.yaml");
    let literals = redis_literals();
    let master = literals["CEDAR_PDP_REDIS_SENTINEL_MASTER"].clone();
    let primary = RedisServer::start();
    let _replica = RedisServer::start_with(vec!["--replicaof".into(), "127.0.0.1".into(), primary.port.to_string()]);
    let sentinel = Sentinel::start(&master, primary.port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !common::redis::query::<String>(primary.port, &["INFO", "replication"]).unwrap().contains("state=online") {
        assert!(std::time::Instant::now() < deadline, "the replica did not sync");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut env = env_values(container(&base));
    env.extend(literals);
    let plain = localize(env.clone(), sentinel.port);
    let server = spawn(&plain);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
        let mut health = HealthClient::new(channel);
        for probe in ["readinessProbe", "livenessProbe"] {
            let service = container(&base)[probe]["grpc"]["service"].as_str().unwrap_or("").to_string();
            let answer = health.check(HealthCheckRequest { service }).await.unwrap().into_inner();
            assert_eq!(answer.status, ServingStatus::Serving as i32, "{probe}");
        }
        // A write through Sentinel's primary, acknowledged once the replica has it.
        let remote = Remote { url: server.url(), token: Some("prov-secret".into()) };
        let entity =
            common::entity(r#"User::"provisioned""#, serde_json::json!({"name": "P", "suspended": false}), &[]);
        let request = pb::UpsertEntitiesRequest { entities: vec![entity], ..Default::default() };
        remote.entities().await.unwrap().upsert_entities(request).await.unwrap();
    });

    // The TLS overlay: its variables on top, a certificate for the name its probe expects.
    let tls = yaml("tls/tls.yaml");
    let overlay = env_values(container(&tls));
    let pki = common::pki::Ca::new("deploy test CA");
    let (cert, key) = pki.server_named(&overlay["CEDAR_PDP_CLIENT_TLS_SERVER_NAME"]);
    let mut secure_env = env;
    secure_env.extend(overlay);
    let mut secure = localize(secure_env, sentinel.port);
    for (var, contents) in
        [("CEDAR_PDP_TLS_CERT", &cert), ("CEDAR_PDP_TLS_KEY", &key), ("CEDAR_PDP_CLIENT_TLS_CA", &pki.pem)]
    {
        let path = secure.dir.path().join(Path::new(&secure.env[var]).file_name().unwrap());
        std::fs::write(&path, contents).unwrap();
        secure.env.insert(var.into(), path.to_string_lossy().into_owned());
    }
    let tls_server = spawn(&secure);
    let probe = |port: &str, which: &str| {
        let argv: Vec<String> = container(&tls)[which]["exec"]["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().replace(":50051", &format!(":{port}")))
            .collect();
        assert_eq!(argv[0], "cedar-pdp");
        Command::new(BIN).args(&argv[1..]).envs(&secure.env).output().unwrap()
    };
    let port = |p: &Process| p.addr.rsplit_once(':').unwrap().1.to_string();
    for which in ["readinessProbe", "livenessProbe"] {
        let passed = probe(&port(&tls_server), which);
        assert!(passed.status.success(), "the TLS {which} fails: {}", String::from_utf8_lossy(&passed.stderr));
        assert_eq!(String::from_utf8_lossy(&passed.stdout).trim(), "SERVING");
        let refused = probe(&port(&server), which);
        assert!(!refused.status.success(), "the TLS {which} passes against a server without TLS");
    }
    // A policy edit that does not load keeps the last good set serving: the probes stay green.
    let bad = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(deploy().join("base/policies")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), bad.path().join(entry.file_name())).unwrap();
    }
    let mut broken_env = secure.env.clone();
    broken_env.insert("CEDAR_PDP_POLICIES".into(), bad.path().to_string_lossy().into_owned());
    broken_env.insert("CEDAR_PDP_DATA_DIR".into(), secure.dir.path().join("data2").to_string_lossy().into_owned());
    let broken = spawn(&Localized { env: broken_env, dir: tempfile::tempdir().unwrap() });
    std::fs::write(bad.path().join("sharing.cedar"), "permit (principal,").unwrap();
    let mut reloaded = false;
    while !reloaded {
        let line = broken.lines.recv_timeout(std::time::Duration::from_secs(10)).expect("the failed reload is logged");
        reloaded = line.contains("reload") && line.contains("ERROR");
    }
    let after = probe(&port(&broken), "readinessProbe");
    assert!(
        after.status.success(),
        "a failed reload fails the readiness probe: {}",
        String::from_utf8_lossy(&after.stdout)
    );
}

/// Kubernetes' update of a mounted Secret: the files in a new directory, `..data` swapped to it.
fn publish(dir: &Path, generation: usize, files: &[(&str, &str)]) {
    let target = dir.join(format!("..gen-{generation}"));
    std::fs::create_dir(&target).unwrap();
    for (name, contents) in files {
        std::fs::write(target.join(name), contents).unwrap();
    }
    let link = dir.join(format!("..data-{generation}"));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    std::fs::rename(&link, dir.join("..data")).unwrap();
}

/// A rotated token Secret is honoured without a restart: the new provisioning and admin tokens are
/// accepted and the old ones refused within seconds; a malformed file keeps the last good tokens.
#[test]
fn rotated_token_secrets_apply_without_a_restart() {
    let secret = tempfile::tempdir().unwrap();
    publish(secret.path(), 0, &[("provisioning", "idp=old-prov"), ("admin", "old-admin")]);
    for name in ["provisioning", "admin"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), secret.path().join(name)).unwrap();
    }
    let (prov, admin) = (secret.path().join("provisioning"), secret.path().join("admin"));
    let args = [
        "--store",
        "memory",
        "--provisioning-token-file",
        prov.to_str().unwrap(),
        "--admin-token-file",
        admin.to_str().unwrap(),
    ];
    let server = Process::start(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"), &args);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let accepted = |prov: &str, admin: &str| {
        runtime.block_on(async {
            let remote = |token: &str| Remote { url: server.url(), token: Some(token.to_string()) };
            let export = pb::ExportEntitiesRequest::default();
            let entities = remote(prov).entities().await.unwrap().export_entities(export).await;
            let status = remote(admin).admin().await.unwrap().get_status(pb::GetStatusRequest {}).await;
            (entities.is_ok(), status.is_ok())
        })
    };
    assert_eq!(accepted("old-prov", "old-admin"), (true, true));
    publish(secret.path(), 1, &[("provisioning", "idp=new-prov"), ("admin", "new-admin")]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while accepted("new-prov", "new-admin") != (true, true) {
        assert!(std::time::Instant::now() < deadline, "the rotated tokens were not taken up");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(accepted("old-prov", "old-admin"), (false, false), "the old tokens are refused");
    publish(secret.path(), 2, &[("provisioning", "no name here"), ("admin", "")]);
    // Both files are read and refused (logged) before the last good tokens are tried again.
    let mut refused = 0;
    while refused < 2 {
        let line = server.lines.recv_timeout(std::time::Duration::from_secs(5)).expect("the refusal is logged");
        refused += usize::from(line.contains("tokens not reloaded"));
    }
    assert_eq!(accepted("new-prov", "new-admin"), (true, true), "a malformed Secret keeps the last good tokens");
}
