//! Reaching a running server: the channel, and the bearer token from a flag, a variable or a file.

use std::path::Path;

use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use super::CliError;

/// The largest answer the CLI accepts: an audit page of 1000 records carries entities before and
/// after, which can exceed gRPC's default 4 MiB.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

pub async fn channel(addr: &str) -> Result<Channel, CliError> {
    let endpoint =
        Channel::from_shared(addr.to_string()).map_err(|e| format!("--addr `{addr}` is not a server address: {e}"))?;
    Ok(endpoint.connect().await.map_err(|e| format!("cannot connect to {addr}: {e}"))?)
}

/// The token given inline or in a file, read as the server reads its own token files.
pub fn token(inline: Option<&str>, file: Option<&Path>) -> Result<Option<String>, CliError> {
    if let Some(path) = file {
        let tokens = crate::config::read_tokens(path, false)?;
        return Ok(tokens.into_iter().next().map(|(_, token)| token));
    }
    Ok(inline.map(str::to_string))
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
