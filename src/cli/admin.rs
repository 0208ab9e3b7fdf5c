//! `status` and `reload`: the AdminService, for operators and deploy scripts.

use std::process::ExitCode;

use super::remote::{Bearer, channel, token};
use super::{CliError, emit};
use crate::config::{AdminArgs, HealthArgs};
use crate::grpc::{AdminServiceClient, pb};

type Client = AdminServiceClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>;

async fn client(args: &AdminArgs) -> Result<Client, CliError> {
    let bearer = Bearer::new(token(args.admin_token.as_deref(), args.admin_token_file.as_deref(), &args.data_dir)?)?;
    Ok(AdminServiceClient::with_interceptor(channel(&args.addr, &args.tls).await?, bearer)
        .max_decoding_message_size(super::remote::MAX_ANSWER_BYTES))
}

/// Prints the status; exit 1 when the last reload failed.
pub async fn status(args: &AdminArgs) -> Result<ExitCode, CliError> {
    let s = client(args).await?.get_status(pb::GetStatusRequest {}).await?.into_inner();
    let mut lines = vec![
        format!("policy version: {}", s.policy_version),
        format!("loaded at: {}", s.loaded_at),
        format!("policies: {}, templates: {}, entities: {}", s.policy_count, s.template_count, s.entity_count),
        format!("schema: {}, validation: {}", if s.schema_loaded { "yes" } else { "none" }, s.validation_mode),
        format!(
            "entity store: {} at {}, revision {}, invalidations {}",
            s.entity_store,
            s.entity_store_location,
            s.entity_revision,
            if s.entity_invalidations_live { "live" } else { "DOWN" }
        ),
        format!("reloads: {} succeeded, {} failed", s.reloads_succeeded, s.reloads_failed),
    ];
    lines.extend(s.entity_store_warnings.iter().map(|w| format!("WARNING: entity store: {w}")));
    if let Some(tls) = &s.tls {
        lines.push(format!("tls: {} (serial {}), valid until {}", tls.subject, tls.serial, tls.not_after));
        if !tls.last_reload_error.is_empty() {
            lines.push(format!("WARNING: tls: the certificate files were not reloaded: {}", tls.last_reload_error));
        }
        lines.extend(tls.warnings.iter().map(|w| format!("WARNING: tls: {w}")));
    }
    if let Some(shadow) = &s.shadow {
        lines.push(format!(
            "shadow policies: version {}; same {}, allow gained {}, allow lost {}, other reasons {}, errors {}, dropped {}",
            shadow.policy_version,
            shadow.same,
            shadow.allow_gain,
            shadow.allow_loss,
            shadow.reasons_differ,
            shadow.errors,
            shadow.dropped
        ));
        if !shadow.last_reload_error.is_empty() {
            lines.push(format!("WARNING: shadow policies: the last reload failed: {}", shadow.last_reload_error));
        }
    }
    if let Some(jwks) = &s.jwks {
        lines.push(format!("jwks: {} keys from {}, fetched at {}", jwks.keys, jwks.url, jwks.fetched_at));
        if !jwks.last_error.is_empty() {
            lines.push(format!("WARNING: jwks: the last fetch failed (the keys above are used): {}", jwks.last_error));
        }
    }
    let code = match &s.last_error {
        Some(err) => {
            lines.push(format!("last reload failed at {} (the version above is still serving):", err.at));
            lines.extend(err.diagnostics.iter().map(|d| format!("  {d}")));
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    };
    emit(&lines)?;
    Ok(code)
}

/// Reloads now; exit 1 (with every problem) when the directory does not load.
pub async fn reload(args: &AdminArgs) -> Result<ExitCode, CliError> {
    let r = client(args).await?.reload(pb::ReloadRequest {}).await?.into_inner();
    let what = if r.changed { "reloaded" } else { "unchanged" };
    emit(&[format!("{what}: policy version {}", r.policy_version)])?;
    Ok(ExitCode::SUCCESS)
}

/// The health service's answer for `args.service`; exit 0 when SERVING. Needs no credential.
pub async fn health(args: &HealthArgs) -> Result<ExitCode, CliError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel(&args.addr, &args.tls).await?);
    let request = tonic_health::pb::HealthCheckRequest { service: args.service.clone() };
    let status = client.check(request).await?.into_inner().status();
    emit(&[status.as_str_name().to_string()])?;
    Ok(if status == ServingStatus::Serving { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
