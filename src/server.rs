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
use tonic_health::ServingStatus;

use crate::config::ServeConfig;
use crate::entities::EntityStore;
use crate::error::ServeError;
use crate::grpc::{
    AdminApi, AdminServiceServer, AuthorizationApi, AuthorizationServiceServer, EntityApi, EntityServiceServer, pb,
};
use crate::policy::{PolicyStore, watch};
use crate::telemetry;

/// The gRPC service names health reports on, besides the whole server's `""`.
const HEALTH_SERVICES: [&str; 3] = ["", "cedar_pdp.v1.AuthorizationService", "envoy.service.auth.v3.Authorization"];

/// Serves on `listener` until `shutdown` completes. Fails at once if the policy directory is invalid.
pub async fn serve(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;

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
    if config.entities.provisioning_tokens.is_empty() {
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

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
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
    let admin = AdminServiceServer::new(AdminApi::new(store.clone(), entities.clone(), config.admin_token.as_deref()));
    let provisioning = EntityServiceServer::new(EntityApi::new(
        store.clone(),
        entities.clone(),
        config.entities.provisioning_tokens.clone(),
        config.max_batch,
    ))
    .max_decoding_message_size(config.max_message_bytes);

    set_health(&health, ServingStatus::Serving).await;
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
            set_health(&health, ServingStatus::NotServing).await;
            let _ = draining.send(());
        }
    };
    let over_limit = crate::grpc::RefusalsLayer::new(config.max_message_bytes);
    let mut router = Server::builder()
        .layer(over_limit.clone())
        .add_service(health_service)
        .add_service(reflection)
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

async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        health.set_service_status(service, status).await;
    }
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
