//! Assembles and runs the server: load, health, reflection, services, reload loop, shutdown.
//!
//! Architecture invariants: health reports SERVING only once a policy set is loaded, and NOT_SERVING
//! as soon as shutdown begins; shutdown waits for in-flight calls at most `shutdown_grace`; every
//! background task ends with the server.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::HealthServer;

use crate::config::ServeConfig;
use crate::decision::Decisions;
use crate::decision::Shadow;
use crate::entities::EntityStore;
use crate::error::{ServeError, StoreError};
use crate::grpc::{
    AdminApi, AdminServiceServer, AuthorizationApi, AuthorizationServiceServer, CheckGate, EntityApi,
    EntityServiceServer, Gate, HealthApi, HealthState, LocalToken, RefusalsLayer, pb,
};
use crate::http::HttpApi;
use crate::policy::{PolicyStore, watch};
use crate::telemetry;
use crate::telemetry::trace;
use crate::tls::{Alpn, Incoming, Tls};

/// What the main port serves when provisioning and admin have their own listener.
const DECISION_SERVICES: [&str; 5] = [
    "cedar_pdp.v1.AuthorizationService",
    "envoy.service.auth.v3.Authorization",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];
/// What the provisioning listener serves.
const PROVISIONING_SERVICES: [&str; 4] = [
    "cedar_pdp.v1.EntityService",
    "cedar_pdp.v1.AdminService",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Serves on `listener` until `shutdown` completes. Fails at once if the policy directory is invalid.
pub async fn serve(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let health = HealthState::default();
    // One crypto provider for every TLS client and server in the process (Redis's client asks for
    // the process default); an error means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // TLS first: every listener, metrics included, needs it.
    let tls = match config.tls.files().map_err(ServeError::Tls)? {
        Some(files) => Some(Tls::load(files).map_err(ServeError::Tls)?),
        None => None,
    };
    let background = CancellationToken::new();
    // Metrics next, so that the initial load is counted too.
    if let Some(addr) = config.metrics_listen {
        let listener = TcpListener::bind(addr).await.map_err(|e| ServeError::Bind(addr, e))?;
        let incoming =
            Incoming::new(listener, tls.clone().map(|t| (t, Alpn::Http))).map_err(|e| ServeError::Bind(addr, e))?;
        telemetry::serve_metrics(incoming, background.clone()).map_err(ServeError::Metrics)?;
    }
    let store = Arc::new(
        PolicyStore::new(config.policy.policies.clone(), config.policy.validation)
            .with_forbid_errors(config.policy.forbid_errors),
    );
    // Watch first, then load: an edit landing during the first load still triggers a reload.
    let reloader = match watch::spawn(
        store.clone(),
        &config.policy.policies,
        config.watch,
        config.reload_debounce,
        config.reload_settle,
        background.clone(),
    ) {
        Ok(reloader) => reloader,
        Err(e) => {
            background.cancel();
            // A directory that cannot be watched usually cannot be loaded either: say why.
            store.reload().await?;
            return Err(e.into());
        }
    };
    let tls_reloader = tls.as_ref().map(|tls| tls.spawn_reloader(background.clone()));
    let result = match start(&config, &store, tls, &health, &background).await {
        Ok(parts) => run(listener, parts, &config, health, shutdown, &background).await,
        Err(e) => Err(e),
    };
    background.cancel();
    // A reload in progress is not worth waiting for beyond the grace.
    let _ = tokio::time::timeout(config.shutdown_grace, reloader).await;
    if let Some(tls_reloader) = tls_reloader {
        let _ = tls_reloader.await;
    }
    result
}

/// Loads `--shadow-policies` (a directory that does not load fails the start, as the live one does),
/// watches it like the live one, and starts the shadow worker.
async fn start_shadow(
    config: &ServeConfig,
    dir: &std::path::Path,
    entities: &Arc<EntityStore>,
    limits: crate::authz::Limits,
    background: &CancellationToken,
) -> Result<Shadow, ServeError> {
    let policies = Arc::new(
        PolicyStore::new(dir.to_path_buf(), config.policy.validation)
            .with_forbid_errors(config.policy.forbid_errors)
            .as_shadow(),
    );
    policies
        .reload()
        .await
        .inspect_err(|_| tracing::error!("the shadow policy directory {} does not load", dir.display()))?;
    watch::spawn(
        policies.clone(),
        dir,
        config.watch,
        config.reload_debounce,
        config.reload_settle,
        background.clone(),
    )?;
    let version = policies.current().map(|s| s.version.clone()).unwrap_or_default();
    tracing::info!(dir = %dir.display(), version, "shadow policies loaded: live decisions are decided on them too");
    Ok(Shadow::start(policies, entities.clone(), limits, config.shadow_queue as usize, background.clone()))
}

/// What `start` prepares: the services, and the provisioning listener when there is one.
struct Parts {
    main: Router<tower::layer::util::Stack<RefusalsLayer, tower::layer::util::Identity>>,
    provisioning: Option<(Incoming, Router<tower::layer::util::Stack<RefusalsLayer, tower::layer::util::Identity>>)>,
    /// The HTTP API and its listener.
    http: Option<(Incoming, Arc<HttpApi>)>,
    tls: Option<Arc<Tls>>,
}

/// Loads the policies, opens the entity store, settles the credentials and builds every service.
async fn start(
    config: &ServeConfig,
    store: &Arc<PolicyStore>,
    tls: Option<Arc<Tls>>,
    health: &HealthState,
    background: &CancellationToken,
) -> Result<Parts, ServeError> {
    store.reload().await?;
    let store_config = config.entities.store().map_err(StoreError::Config)?;
    let entities = EntityStore::open(&store_config, background.clone())?;
    if !entities.wait_ready(config.entities.redis_timeout * 4).await {
        tracing::warn!("entity invalidations not subscribed yet; decisions needing Redis fail closed until it answers");
    }
    let (_, revision) = entities.coherence();
    tracing::info!(store = entities.kind(), location = %entities.location(), revision, "entity store open");
    let (provisioning_gate, admin_gate) = gates(config)?;
    if let Some(file) = &config.entities.provisioning_token_file {
        let fixed = config.entities.provisioning_tokens.clone();
        provisioning_gate.follow_file(fixed, file.clone(), true, background.clone());
    }
    if let Some(file) = &config.admin_token_file {
        admin_gate.follow_file(Vec::new(), file.clone(), false, background.clone());
    }
    // Its own listener, bound before SERVING, so a bad address fails the start.
    let provisioning_incoming = match config.entities.provisioning_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(|e| ServeError::Bind(addr, e))?;
            Some(Incoming::new(listener, tls.clone().map(|t| (t, Alpn::Grpc))).map_err(|e| ServeError::Bind(addr, e))?)
        }
        None => None,
    };

    // Reflection lists what each port serves, nothing it would answer UNIMPLEMENTED.
    let (main_reflection, provisioning_reflection) = match provisioning_incoming {
        Some(_) => (reflection(Some(&DECISION_SERVICES))?, Some(reflection(Some(&PROVISIONING_SERVICES))?)),
        None => (reflection(None)?, None),
    };
    let limits = crate::authz::Limits {
        max_request_entities: config.max_request_entities,
        max_list_candidates: usize::try_from(config.max_list_candidates).unwrap_or(usize::MAX),
    };
    let callers = Arc::new(CheckGate::new(&config.tls.check_peers));
    let shadow = match &config.shadow_policies {
        Some(dir) => Some(start_shadow(config, dir, &entities, limits, background).await?),
        None => None,
    };
    let shadow_status = shadow.as_ref().map(|s: &Shadow| (s.policies.clone(), s.counts.clone()));
    // Every front door decides through this one service.
    let mut decisions = Decisions::new(store.clone(), entities.clone(), limits, config.decision_log)
        .with_logged_requests(config.decision_log_requests);
    if let Some(shadow) = shadow {
        decisions = decisions.with_shadow(shadow);
    }
    let decisions = Arc::new(decisions);
    let authorization =
        AuthorizationServiceServer::new(AuthorizationApi::new(decisions.clone(), config.max_batch, callers.clone()))
            .max_decoding_message_size(config.max_message_bytes);
    let ext_authz = crate::grpc::ExtAuthzServer::new(
        crate::grpc::ExtAuthzApi::new(decisions.clone(), callers),
        config.max_message_bytes,
    );
    // Bound before SERVING too.
    let http = match config.http_listen.0 {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(|e| ServeError::Bind(addr, e))?;
            let incoming =
                Incoming::new(listener, tls.clone().map(|t| (t, Alpn::Http))).map_err(|e| ServeError::Bind(addr, e))?;
            let scim_tokens = config.scim_credentials().map_err(ServeError::Credentials)?;
            if scim_tokens.is_empty() {
                tracing::warn!("SCIM is off: no --scim-token (every /scim/v2 call is refused with 401)");
            }
            let scim_gate = Gate::new("SCIM", scim_tokens, Vec::<String>::new());
            if let Some(file) = &config.scim_token_file {
                scim_gate.follow_file(config.scim_tokens.clone(), file.clone(), true, background.clone());
            }
            let scim = crate::scim::Scim::new(entities.clone(), store.clone());
            let api =
                HttpApi::new(decisions, config.max_batch, config.http_tokens.clone(), config.tls.check_peers.clone())
                    .with_scim(scim, scim_gate, tls.is_some());
            Some((incoming, Arc::new(api)))
        }
        None => None,
    };
    let admin = AdminServiceServer::new(
        AdminApi::new(store.clone(), entities.clone(), admin_gate, tls.clone()).with_shadow(shadow_status),
    );
    let provisioning =
        EntityServiceServer::new(EntityApi::new(store.clone(), entities, provisioning_gate, config.max_batch))
            .max_decoding_message_size(config.max_message_bytes);

    let over_limit = RefusalsLayer::new(config.max_message_bytes);
    let health_service = HealthServer::new(HealthApi::new(health.clone()));
    let span = |request: &http::Request<()>| trace::call_span(request.uri().path(), request.headers());
    let mut main = Server::builder()
        .trace_fn(span)
        .layer(over_limit.clone())
        .add_service(health_service)
        .add_service(main_reflection.0)
        .add_service(main_reflection.1)
        .add_service(authorization)
        .add_service(ext_authz);
    // The provisioning and admin services go to their own listener when one is configured.
    let (reflection_v1, reflection_v1alpha) = provisioning_reflection.unzip();
    let provisioning = match provisioning_incoming {
        Some(incoming) => Some((
            incoming,
            Server::builder()
                .trace_fn(span)
                .layer(over_limit)
                .add_optional_service(reflection_v1)
                .add_optional_service(reflection_v1alpha)
                .add_service(provisioning)
                .add_service(admin),
        )),
        None => {
            main = main.add_service(provisioning).add_service(admin);
            None
        }
    };
    Ok(Parts { main, provisioning, http, tls })
}

/// Serves until `shutdown`, then drains for at most the grace.
async fn run(
    listener: TcpListener,
    parts: Parts,
    config: &ServeConfig,
    health: HealthState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    background: &CancellationToken,
) -> Result<(), ServeError> {
    let bind = |e| ServeError::Bind(config.listen, e);
    let incoming = Incoming::new(listener, parts.tls.clone().map(|t| (t, Alpn::Grpc))).map_err(bind)?;
    health.set(ServingStatus::Serving);
    let scheme = if parts.tls.is_some() { "https" } else { "http" };
    tracing::info!(listen = %incoming.local_addr(), scheme, "serving");

    let (draining, drain_started) = tokio::sync::oneshot::channel::<()>();
    let stop_accepting = {
        let health = health.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: NOT_SERVING, draining in-flight calls");
            health.close();
            let _ = draining.send(());
        }
    };
    if let Some((incoming, api)) = parts.http {
        tracing::info!(listen = %incoming.local_addr(), scheme, "serving the HTTP API (AuthZEN)");
        let limits = crate::http::ConnLimits {
            name: "http",
            header_timeout: config.http_header_timeout,
            max_connections: config.http_max_connections as usize,
        };
        crate::http::serve(incoming, api, limits, background.clone());
    }
    let second = parts.provisioning.map(|(incoming, router)| {
        tracing::info!(listen = %incoming.local_addr(), scheme, "serving provisioning and admin");
        let stop = background.clone();
        tokio::spawn(router.serve_with_incoming_shutdown(incoming.into_stream(), async move { stop.cancelled().await }))
    });
    let server = parts.main.serve_with_incoming_shutdown(incoming.into_stream(), stop_accepting);
    let grace = config.shutdown_grace;
    let result = tokio::select! {
        result = server => result,
        () = async {
            match drain_started.await {
                Ok(()) => tokio::time::sleep(grace).await,
                Err(_) => std::future::pending().await,
            }
        } => {
            tracing::warn!(?grace, "shutdown grace elapsed; dropping calls still in flight");
            Ok(())
        }
    };
    background.cancel();
    if let Some(second) = second {
        let _ = tokio::time::timeout(grace, second).await;
    }
    result.map_err(ServeError::from)
}

/// The EntityService and AdminService gates. A service with no credential configured gets a
/// token generated now, in a file only this user can read, for the CLI on this machine.
fn gates(config: &ServeConfig) -> Result<(Gate, Gate), ServeError> {
    let credentials = config.entities.provisioning_credentials().and_then(|p| Ok((p, config.admin_tokens()?)));
    let (mut provisioning_tokens, mut admin_tokens) = credentials.map_err(ServeError::Credentials)?;
    let local = LocalToken::path(&config.entities.data_dir);
    let bare_provisioning = provisioning_tokens.is_empty() && config.tls.provisioning_peers.is_empty();
    let bare_admin = admin_tokens.is_empty() && config.tls.admin_peers.is_empty();
    if bare_provisioning || bare_admin {
        let token = LocalToken::generate(&local).map_err(ServeError::Credentials)?;
        let services = match (bare_provisioning, bare_admin) {
            (true, true) => "EntityService and AdminService",
            (true, false) => "EntityService",
            _ => "AdminService",
        };
        tracing::warn!(file = %local.display(), "no credential configured for the {services}: generated a token (the CLI on this machine reads it)");
        for (bare, tokens) in [(bare_provisioning, &mut provisioning_tokens), (bare_admin, &mut admin_tokens)] {
            if bare {
                tokens.push(("local".to_string(), token.clone()));
            }
        }
    } else {
        // A token from an earlier start would no longer be accepted: do not leave it around.
        let _ = std::fs::remove_file(&local);
    }
    Ok((
        Gate::new("EntityService", provisioning_tokens, config.tls.provisioning_peers.clone()),
        Gate::new("AdminService", admin_tokens, config.tls.admin_peers.clone()),
    ))
}

/// The reflection services, v1 and v1alpha (what grpcurl, Postman and evans still ask), over every
/// descriptor set, listing `only` these services if given.
fn reflection(
    only: Option<&[&str]>,
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    ServeError,
> {
    let builder = || {
        // Both reflection versions' descriptors in both, so that each lists the other too.
        let mut builder = tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(crate::grpc::ENVOY_AUTHZ_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for name in only.into_iter().flatten() {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
