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
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::HealthServer;

use crate::config::ServeConfig;
use crate::entities::EntityStore;
use crate::error::ServeError;
use crate::grpc::{
    AdminApi, AdminServiceServer, AuthorizationApi, AuthorizationServiceServer, EntityApi, EntityServiceServer,
    HealthApi, HealthState, pb,
};
use crate::policy::{PolicyStore, watch};
use crate::telemetry;

/// What the main port serves when provisioning and admin have their own listener.
const DECISION_SERVICES: [&str; 3] =
    ["cedar_pdp.v1.AuthorizationService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"];
/// What the provisioning listener serves.
const PROVISIONING_SERVICES: [&str; 3] =
    ["cedar_pdp.v1.EntityService", "cedar_pdp.v1.AdminService", "grpc.reflection.v1.ServerReflection"];

/// Serves on `listener` until `shutdown` completes. Fails at once if the policy directory is invalid.
pub async fn serve(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let health = HealthState::default();
    let health_service = HealthServer::new(HealthApi::new(health.clone()));

    // Metrics first, so that the initial load is counted too.
    if let Some(addr) = config.metrics_listen {
        telemetry::serve_metrics(addr).map_err(ServeError::Metrics)?;
    }
    let store = Arc::new(PolicyStore::new(&config.policy));
    // Watch first, then load: an edit landing during the first load still triggers a reload.
    let background = CancellationToken::new();
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
            // A directory that cannot be watched usually cannot be loaded either: say why.
            store.reload().await?;
            return Err(e.into());
        }
    };
    if let Err(e) = store.reload().await {
        background.cancel();
        let _ = reloader.await;
        return Err(e.into());
    }

    let store_config = config.entities.store().map_err(crate::error::StoreError::Config);
    let entities = match store_config.and_then(|c| EntityStore::open(&c, background.clone())) {
        Ok(entities) => entities,
        Err(e) => {
            background.cancel();
            let _ = reloader.await;
            return Err(e.into());
        }
    };
    if !entities.wait_ready(config.entities.redis_timeout * 4).await {
        tracing::warn!("entity invalidations not subscribed yet; decisions needing Redis fail closed until it answers");
    }
    let (_, revision) = entities.coherence();
    tracing::info!(store = entities.kind(), location = %entities.location(), revision, "entity store open");
    let credentials = config.entities.provisioning_credentials().and_then(|p| Ok((p, config.admin_tokens()?)));
    let (provisioning_tokens, admin_tokens) = match credentials {
        Ok(tokens) => tokens,
        Err(e) => {
            background.cancel();
            let _ = reloader.await;
            return Err(ServeError::Credentials(e));
        }
    };
    if provisioning_tokens.is_empty() {
        tracing::warn!(
            "no --provisioning-token: EntityService serves loopback callers only, which includes \
             anything relayed by a proxy on this host"
        );
    }
    // Its own listener, bound before SERVING, so a bad address fails the start.
    let provisioning_listener = match config.entities.provisioning_listen {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                background.cancel();
                let _ = reloader.await;
                return Err(ServeError::Bind(addr, e));
            }
        },
        None => None,
    };

    // Reflection lists what each port serves, nothing it would answer UNIMPLEMENTED.
    let (main_reflection, provisioning_reflection) = match provisioning_listener {
        Some(_) => (reflection(Some(&DECISION_SERVICES))?, Some(reflection(Some(&PROVISIONING_SERVICES))?)),
        None => (reflection(None)?, None),
    };
    let limits = crate::authz::Limits { max_request_entities: config.max_request_entities };
    let authorization = AuthorizationServiceServer::new(AuthorizationApi::new(
        store.clone(),
        entities.clone(),
        config.decision_log,
        config.max_batch,
        limits,
    ))
    .max_decoding_message_size(config.max_message_bytes);
    let ext_authz = envoy_types::ext_authz::v3::pb::AuthorizationServer::new(crate::grpc::ExtAuthzApi::new(
        store.clone(),
        entities.clone(),
        config.decision_log,
        limits,
    ))
    .max_decoding_message_size(config.max_message_bytes);
    let admin = AdminServiceServer::new(AdminApi::new(store.clone(), entities.clone(), admin_tokens));
    let provisioning = EntityServiceServer::new(EntityApi::new(
        store.clone(),
        entities.clone(),
        provisioning_tokens,
        config.max_batch,
    ))
    .max_decoding_message_size(config.max_message_bytes);

    health.set(ServingStatus::Serving);
    tracing::info!(listen = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()), "serving");

    // As tonic does when it binds itself: without TCP_NODELAY a multi-segment request waits out the
    // peer's delayed ACK (~40 ms).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
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
    let over_limit = crate::grpc::RefusalsLayer::new(config.max_message_bytes);
    let mut router = Server::builder()
        .layer(over_limit.clone())
        .add_service(health_service)
        .add_service(main_reflection)
        .add_service(authorization)
        .add_service(ext_authz);
    // The provisioning and admin services go to their own listener when one is configured.
    let second = match provisioning_listener {
        Some(listener) => {
            tracing::info!(listen = %listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()), "serving provisioning and admin");
            let stop = background.clone();
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            Some(tokio::spawn(
                Server::builder()
                    .layer(over_limit)
                    .add_optional_service(provisioning_reflection)
                    .add_service(provisioning)
                    .add_service(admin)
                    .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await }),
            ))
        }
        None => {
            router = router.add_service(provisioning).add_service(admin);
            None
        }
    };
    let server = router.serve_with_incoming_shutdown(incoming, stop_accepting);
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
    // A reload in progress is not worth waiting for beyond the grace.
    let _ = tokio::time::timeout(grace, reloader).await;
    result.map_err(ServeError::from)
}

/// The reflection service over every descriptor set, listing `only` these services if given.
fn reflection(
    only: Option<&[&str]>,
) -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    ServeError,
> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for name in only.into_iter().flatten() {
        builder = builder.with_service_name(*name);
    }
    Ok(builder.build_v1()?)
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
