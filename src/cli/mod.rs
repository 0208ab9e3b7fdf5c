//! The commands people run: `serve`, `validate`, `check`, `status`, `reload`, `entities …`, `audit`.
//! Output is for humans (or JSON lines where asked); exit codes are for scripts (0 success, 1
//! failure). A reader that goes away (`| head -1`) ends a command quietly, never with a panic.

mod admin;
mod entities;
mod remote;
mod replay;
mod test;

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;
use std::str::FromStr;

use cedar_policy::EntityUid;

use crate::config::{CheckArgs, ServeConfig, ValidateArgs};
use crate::grpc::{AuthorizationServiceClient, pb};
use crate::policy::{Snapshot, load_dir};

pub use admin::{health, reload, status};
pub use entities::{audit, entities};
pub use replay::replay;
pub use test::test;

/// Why a command failed: a message for stderr, or standard output that closed under it.
#[derive(Debug)]
pub enum CliError {
    Failed(String),
    Output(io::Error),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Failed(message) => f.write_str(message),
            CliError::Output(e) => write!(f, "cannot write the output: {e}"),
        }
    }
}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> Self {
        CliError::Output(e)
    }
}

impl From<String> for CliError {
    fn from(message: String) -> Self {
        CliError::Failed(message)
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> Self {
        CliError::Failed(message.to_string())
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        // A plaintext client gets no answer from a TLS port (its handshake bytes are not HTTP/2):
        // the call fails in transport, not with the server's status.
        use tonic::Code;
        let no_answer = matches!(status.code(), Code::Cancelled | Code::Unknown | Code::Unavailable)
            || status.message().contains("h2 protocol error");
        let hint = if no_answer && remote::PLAINTEXT.load(std::sync::atomic::Ordering::Relaxed) {
            " (if the server uses TLS, use an https:// address)"
        } else {
            ""
        };
        CliError::Failed(format!("{:?}: {}{hint}", status.code(), status.message()))
    }
}

/// The exit code of a command's result. A closed standard output is how `| head` says "enough":
/// not an error, as for any Unix tool.
pub fn exit(result: Result<ExitCode, CliError>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(CliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes lines to standard output, reporting a closed pipe instead of panicking as `println!` does.
pub(crate) fn emit(lines: &[String]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()
}

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

/// A policy directory loaded as the server loads it, for the offline tools (`test`, `replay`); when
/// it does not load, its problems are on stderr and the exit code is 2.
pub(crate) fn load_for_tool(policy: &crate::config::PolicyConfig) -> Result<Result<Snapshot, ExitCode>, CliError> {
    match load_dir(&policy.policies, policy.validation) {
        Ok(mut snapshot) => {
            snapshot.forbid_errors = policy.forbid_errors;
            Ok(Ok(snapshot))
        }
        Err(err) => {
            let mut stderr = io::stderr().lock();
            for d in &err.diagnostics {
                writeln!(stderr, "{d}\n")?;
            }
            writeln!(stderr, "the policy directory {} does not load", policy.policies.display())?;
            Ok(Err(ExitCode::from(2)))
        }
    }
}

pub fn validate(args: &ValidateArgs) -> Result<ExitCode, CliError> {
    match load_dir(&args.dir, args.validation) {
        Ok(s) => {
            let warnings = crate::policy::lint::forbids_that_fail_open(&s, &args.dir);
            let mut stderr = io::stderr().lock();
            for warning in &warnings {
                writeln!(stderr, "warning: {warning}")?;
            }
            drop(stderr);
            emit(&[format!(
                "ok: {} policies, {} templates, {} entities, schema: {}, validation: {}, version {}",
                s.policy_count,
                s.template_count,
                s.entities.len(),
                if s.schema.is_some() { "yes" } else { "none" },
                s.mode.as_str(),
                s.version
            )])?;
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            let mut stderr = io::stderr().lock();
            for d in &err.diagnostics {
                writeln!(stderr, "{d}\n")?;
            }
            writeln!(stderr, "{} problem(s) in {}", err.diagnostics.len(), args.dir.display())?;
            Ok(ExitCode::FAILURE)
        }
    }
}

pub async fn check(args: &CheckArgs) -> Result<ExitCode, CliError> {
    let request = pb::CheckRequest {
        principal: Some(parse_uid("--principal", &args.principal)?),
        action: Some(parse_uid("--action", &args.action)?),
        resource: Some(parse_uid("--resource", &args.resource)?),
        context_json: args.context.clone(),
        entities_json: args.entities.clone(),
        min_revision: args.min_revision,
    };
    let mut client = AuthorizationServiceClient::new(remote::channel(&args.addr, &args.tls).await?);
    let response = client.check(request).await?.into_inner();
    let decision = match response.decision() {
        pb::Decision::Allow => "ALLOW",
        pb::Decision::Deny => "DENY",
        pb::Decision::Unspecified => "UNSPECIFIED",
    };
    let mut lines = vec![
        format!("decision: {decision}"),
        format!("determining policies: {}", list_or_none(&response.determining_policies)),
    ];
    if response.errors.is_empty() {
        lines.push("errors: none".into());
    }
    lines.extend(response.errors.iter().map(|e| format!("error in {}: {}", e.policy_id, e.message)));
    lines.push(format!("policy version: {}", response.policy_version));
    lines.push(format!("decision id: {}", response.decision_id));
    emit(&lines)?;
    Ok(ExitCode::SUCCESS)
}

/// `User::"alice"` → type `User`, id `alice`, using Cedar's own parser for the uid syntax.
pub(crate) fn parse_uid(what: &str, text: &str) -> Result<pb::EntityUid, String> {
    let uid = EntityUid::from_str(text)
        .map_err(|e| format!("{what} `{text}` is not an entity uid like `User::\"alice\"`: {e}"))?;
    Ok(pb::EntityUid { r#type: uid.type_name().to_string(), id: uid.id().unescaped().to_string() })
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() { "none".into() } else { items.join(", ") }
}
