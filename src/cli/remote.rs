//! Reaching a running server: the channel, and the bearer token from a flag, a variable or a file.

use std::path::Path;

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::config::ClientTls;
use crate::error::error_chain;

use super::CliError;

/// The largest answer the CLI accepts: an audit page of 1000 records carries entities before and
/// after, which can exceed gRPC's default 4 MiB.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Whether this command talks plaintext: its transport failures may mean the server wants TLS.
pub static PLAINTEXT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A channel to `addr`: TLS for `https://`, plaintext for `http://`.
pub async fn channel(addr: &str, tls: &ClientTls) -> Result<Channel, CliError> {
    let endpoint =
        Channel::from_shared(addr.to_string()).map_err(|e| format!("--addr `{addr}` is not a server address: {e}"))?;
    let (endpoint, hint) = match addr.split_once("://").map(|(scheme, _)| scheme) {
        Some("https") => {
            let endpoint = endpoint.tls_config(tls_config(tls)?).map_err(|e| format!("TLS settings: {e}"))?;
            (endpoint, " (is the server plaintext? then use http://)")
        }
        Some("http") if tls.is_set() => {
            return Err(format!("--addr `{addr}` is plaintext (http://) but TLS options are set: use https://").into());
        }
        Some("http") => {
            PLAINTEXT.store(true, std::sync::atomic::Ordering::Relaxed);
            (endpoint, " (does the server use TLS? then use https://)")
        }
        _ => return Err(format!("--addr `{addr}` needs a scheme: https:// (TLS) or http:// (plaintext)").into()),
    };
    Ok(endpoint.connect().await.map_err(|e| format!("cannot connect to {addr}: {}{hint}", error_chain(&e)))?)
}

fn tls_config(tls: &ClientTls) -> Result<ClientTlsConfig, CliError> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
    };
    let mut config = match &tls.ca {
        Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "CA file")?)),
        None => ClientTlsConfig::new().with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        config = config.identity(Identity::from_pem(read(cert, "client certificate")?, read(key, "client key")?));
    }
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

/// The token given inline or in a file, read as the server reads its own token files; else the
/// token a server on this machine generated in its data directory, if there is one.
pub fn token(inline: Option<&str>, file: Option<&Path>, data_dir: &Path) -> Result<Option<String>, CliError> {
    if let Some(path) = file {
        let tokens = crate::config::read_tokens(path, false)?;
        return Ok(tokens.into_iter().next().map(|(_, token)| token));
    }
    if let Some(token) = inline {
        return Ok(Some(token.to_string()));
    }
    let local = crate::grpc::LocalToken::path(data_dir);
    if !local.exists() {
        return Ok(None);
    }
    let tokens = crate::config::read_tokens(&local, false)?;
    Ok(tokens.into_iter().next().map(|(_, token)| token))
}

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    pub fn new(token: Option<String>) -> Result<Self, CliError> {
        let value = token
            .map(|t| MetadataValue::try_from(format!("Bearer {t}")))
            .transpose()
            .map_err(|_| "the token has characters not allowed in a header")?;
        Ok(Bearer(value))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}
