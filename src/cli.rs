//! The commands people run: `serve`, `validate`, `check`, `status`. Output is for humans; exit codes
//! are for scripts (0 success, 1 failure).

use std::process::ExitCode;
use std::str::FromStr;

use cedar_policy::EntityUid;
use tonic::metadata::MetadataValue;

use crate::config::{CheckArgs, ServeConfig, StatusArgs, ValidateArgs};
use crate::grpc::{AdminServiceClient, AuthorizationServiceClient, pb};
use crate::policy::load_dir;

pub async fn serve(config: ServeConfig) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    match crate::serve(listener, config, crate::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

pub fn validate(args: &ValidateArgs) -> ExitCode {
    match load_dir(&args.dir, args.validation) {
        Ok(s) => {
            println!(
                "ok: {} policies, {} templates, {} entities, schema: {}, validation: {}, version {}",
                s.policy_count,
                s.template_count,
                s.entities.len(),
                if s.schema.is_some() { "yes" } else { "none" },
                s.mode.as_str(),
                s.version
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            for d in &err.diagnostics {
                eprintln!("{d}\n");
            }
            eprintln!("{} problem(s) in {}", err.diagnostics.len(), args.dir.display());
            ExitCode::FAILURE
        }
    }
}

pub async fn check(args: &CheckArgs) -> ExitCode {
    match run_check(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_check(args: &CheckArgs) -> Result<(), String> {
    let request = pb::CheckRequest {
        principal: Some(parse_uid("--principal", &args.principal)?),
        action: Some(parse_uid("--action", &args.action)?),
        resource: Some(parse_uid("--resource", &args.resource)?),
        context_json: args.context.clone(),
        entities_json: args.entities.clone(),
        min_revision: args.min_revision,
    };
    let mut client = AuthorizationServiceClient::connect(args.addr.clone())
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.addr))?;
    let response = client.check(request).await.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?.into_inner();
    let decision = match response.decision() {
        pb::Decision::Allow => "ALLOW",
        pb::Decision::Deny => "DENY",
        pb::Decision::Unspecified => "UNSPECIFIED",
    };
    println!("decision: {decision}");
    println!("determining policies: {}", list_or_none(&response.determining_policies));
    if response.errors.is_empty() {
        println!("errors: none");
    } else {
        for e in &response.errors {
            println!("error in {}: {}", e.policy_id, e.message);
        }
    }
    println!("policy version: {}", response.policy_version);
    println!("decision id: {}", response.decision_id);
    Ok(())
}

/// `User::"alice"` → type `User`, id `alice`, using Cedar's own parser for the uid syntax.
fn parse_uid(flag: &str, text: &str) -> Result<pb::EntityUid, String> {
    let uid = EntityUid::from_str(text)
        .map_err(|e| format!("{flag} `{text}` is not an entity uid like `User::\"alice\"`: {e}"))?;
    Ok(pb::EntityUid { r#type: uid.type_name().to_string(), id: uid.id().unescaped().to_string() })
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() { "none".into() } else { items.join(", ") }
}

pub async fn status(args: &StatusArgs) -> ExitCode {
    match run_status(args).await {
        Ok(healthy) => {
            if healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the status; `Ok(false)` when the last reload failed.
async fn run_status(args: &StatusArgs) -> Result<bool, String> {
    let mut client = AdminServiceClient::connect(args.addr.clone())
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.addr))?;
    let mut request = tonic::Request::new(pb::GetStatusRequest {});
    if let Some(token) = &args.admin_token {
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| "the admin token has characters not allowed in a header")?;
        request.metadata_mut().insert("authorization", value);
    }
    let s = client.get_status(request).await.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?.into_inner();
    println!("policy version: {}", s.policy_version);
    println!("loaded at: {}", s.loaded_at);
    println!("policies: {}, templates: {}, entities: {}", s.policy_count, s.template_count, s.entity_count);
    println!("schema: {}, validation: {}", if s.schema_loaded { "yes" } else { "none" }, s.validation_mode);
    println!(
        "entity store: {}, revision {}, invalidations {}",
        s.entity_store,
        s.entity_revision,
        if s.entity_invalidations_live { "live" } else { "DOWN" }
    );
    println!("reloads: {} succeeded, {} failed", s.reloads_succeeded, s.reloads_failed);
    match &s.last_error {
        Some(err) => {
            println!("last reload failed at {} (the version above is still serving):", err.at);
            for d in &err.diagnostics {
                println!("  {d}");
            }
            Ok(false)
        }
        None => Ok(true),
    }
}
