//! Who may call what: bearer tokens and certificate identities, checked per call.
//!
//! A caller is identified by a bearer token (`authorization: Bearer <token>`, compared as SHA-256
//! digests in constant time) or by the identity of the client certificate its TLS handshake verified
//! (`tls.rs`). Nothing is granted for where a call comes from: a proxy on the same host, or a
//! service-mesh sidecar, makes every caller look local.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tonic::Request;

use crate::error::ServiceError;

/// (identity, SHA-256 of the token): comparing digests keeps the comparison length-independent.
type Digests = Vec<(String, [u8; 32])>;

/// The credentials one service accepts; clones share them, so a token file's reloader can replace
/// the tokens every clone checks.
#[derive(Clone)]
pub struct Gate {
    service: &'static str,
    tokens: Arc<ArcSwap<Digests>>,
    /// Certificate identities allowed to call.
    peers: Arc<HashSet<String>>,
}

fn digests(tokens: impl IntoIterator<Item = (String, String)>) -> Digests {
    tokens
        .into_iter()
        .filter(|(_, token)| !token.is_empty())
        .map(|(name, token)| (name, Sha256::digest(token.as_bytes()).into()))
        .collect()
}

impl Gate {
    /// A gate for `service` accepting these (name, token) pairs and certificate identities; empty
    /// tokens are ignored.
    pub fn new(
        service: &'static str,
        tokens: impl IntoIterator<Item = (String, String)>,
        peers: impl IntoIterator<Item = String>,
    ) -> Self {
        let tokens = Arc::new(ArcSwap::from_pointee(digests(tokens)));
        Gate { service, tokens, peers: Arc::new(peers.into_iter().collect()) }
    }

    /// Whether no credential is configured.
    pub fn is_unconfigured(&self) -> bool {
        self.tokens.load().is_empty() && self.peers.is_empty()
    }

    /// Keeps the tokens of `file` (plus `fixed`, from flags) current: the file is read every half
    /// second, and a changed, valid one replaces the tokens for the next call — a rotated Secret
    /// (Kubernetes swaps its `..data` link) needs no restart. An unreadable, empty or malformed
    /// file keeps the last good tokens, logged and counted.
    pub fn follow_file(&self, fixed: Vec<(String, String)>, file: PathBuf, named: bool, stop: CancellationToken) {
        let gate = self.clone();
        let mut last = std::fs::read(&file).ok();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = std::fs::read(&file).ok();
                if now == last {
                    continue;
                }
                last = now;
                if last.is_none() {
                    // Said once per disappearance; to revoke a token, publish the file without it.
                    tracing::error!(file = %file.display(), "{} token file unreadable: the previous tokens still hold", gate.service);
                    metrics::counter!("cedar_pdp_token_reloads_total", "result" => "error").increment(1);
                    continue;
                }
                match crate::config::read_tokens(&file, named) {
                    Ok(tokens) => {
                        gate.tokens.store(Arc::new(digests(fixed.iter().cloned().chain(tokens))));
                        tracing::info!(file = %file.display(), "{} tokens reloaded", gate.service);
                        metrics::counter!("cedar_pdp_token_reloads_total", "result" => "ok").increment(1);
                    }
                    Err(e) => {
                        tracing::error!("{} tokens not reloaded, the previous ones still hold: {e}", gate.service);
                        metrics::counter!("cedar_pdp_token_reloads_total", "result" => "error").increment(1);
                    }
                }
            }
        });
    }

    /// The caller's identity: the matching token's name, or the certificate identity. A token, when
    /// presented, decides alone.
    pub fn identify<T>(&self, request: &Request<T>) -> Result<String, ServiceError> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(token) = presented {
            return self.token_name(token).ok_or(ServiceError::Unauthenticated("invalid bearer token".into()));
        }
        match peer_identity(request) {
            Some(id) if self.peers.contains(id) => Ok(id.to_string()),
            Some(id) => Err(ServiceError::PermissionDenied(format!(
                "certificate identity `{id}` may not call {}",
                self.service
            ))),
            None => Err(ServiceError::Unauthenticated(format!(
                "{} needs a bearer token or a listed client certificate",
                self.service
            ))),
        }
    }

    /// The name of a presented token (for callers that read it themselves: SCIM's bare tokens).
    pub fn name(&self, token: &str) -> Option<String> {
        self.token_name(token)
    }

    fn token_name(&self, token: &str) -> Option<String> {
        let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every configured token is compared, so timing does not tell which one came close.
        let mut found = None;
        let tokens = self.tokens.load();
        for (name, expected) in tokens.iter() {
            let diff = got.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(name);
            }
        }
        found.cloned()
    }
}

/// Who may ask for decisions: anyone who passed the TLS policy, or only these identities.
#[derive(Default)]
pub struct CheckGate {
    peers: Option<HashSet<String>>,
}

impl CheckGate {
    pub fn new(peers: &[String]) -> Self {
        CheckGate { peers: (!peers.is_empty()).then(|| peers.iter().cloned().collect()) }
    }

    pub fn admit<T>(&self, request: &Request<T>) -> Result<(), ServiceError> {
        let Some(peers) = &self.peers else { return Ok(()) };
        match peer_identity(request) {
            Some(id) if peers.contains(id) => Ok(()),
            Some(id) => {
                Err(ServiceError::PermissionDenied(format!("certificate identity `{id}` may not ask for decisions")))
            }
            None => Err(ServiceError::Unauthenticated("decisions need a listed client certificate".into())),
        }
    }
}

/// The token a server generates when a service has no credential configured: in `cli.token` in the
/// data directory, readable by the server's user only, new at every start. The CLI reads it.
pub struct LocalToken;

impl LocalToken {
    pub const FILE: &str = "cli.token";

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(Self::FILE)
    }

    /// A new random token written to `path` (atomically, mode 0600).
    pub fn generate(path: &Path) -> Result<String, String> {
        let mut bytes = [0u8; 32];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut bytes)
            .map_err(|_| "no secure random source for the generated token".to_string())?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let fail = |e: std::io::Error| format!("cannot write the generated token to {}: {e}", path.display());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let tmp = path.with_extension("token.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(fail)?;
        std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes()).map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)?;
        Ok(token)
    }
}

fn peer_identity<T>(request: &Request<T>) -> Option<&str> {
    crate::tls::peer_of(request).and_then(|p| p.identity.as_deref())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::tls::Peer;

    fn from(identity: Option<&str>, token: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        let peer = Peer { addr: Some("127.0.0.1:4000".parse().unwrap()), identity: identity.map(Arc::from) };
        request.extensions_mut().insert(peer);
        if let Some(token) = token {
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    }

    fn gate(tokens: &[(&str, &str)], peers: &[&str]) -> Gate {
        Gate::new(
            "EntityService",
            tokens.iter().map(|(n, t)| (n.to_string(), t.to_string())),
            peers.iter().map(|p| p.to_string()),
        )
    }

    #[test]
    fn tokens_are_checked_whatever_the_source_address() {
        let gate = gate(&[("admin", "s3cret")], &[]);
        assert_eq!(gate.identify(&from(None, Some("s3cret"))).unwrap(), "admin");
        assert!(gate.identify(&from(None, Some("s3cret2"))).is_err());
        assert!(gate.identify(&from(None, Some("s3cre"))).is_err());
        // Loopback is no credential.
        assert!(matches!(gate.identify(&from(None, None)), Err(ServiceError::Unauthenticated(_))));
        assert!(gate.identify(&Request::new(())).is_err());
    }

    #[test]
    fn each_token_names_its_caller() {
        let gate = gate(&[("hr-sync", "aaa"), ("scim", "bbb")], &[]);
        assert_eq!(gate.identify(&from(None, Some("bbb"))).unwrap(), "scim");
        assert_eq!(gate.identify(&from(None, Some("aaa"))).unwrap(), "hr-sync");
        assert!(gate.identify(&from(None, Some("aaabbb"))).is_err());
        // An empty configured token is no token.
        assert!(self::gate(&[("x", "")], &[]).identify(&from(None, Some(""))).is_err());
    }

    #[test]
    fn certificate_identities_are_listed_or_refused() {
        let gate = gate(&[("hr-sync", "aaa")], &["spiffe://example.org/idp"]);
        assert_eq!(gate.identify(&from(Some("spiffe://example.org/idp"), None)).unwrap(), "spiffe://example.org/idp");
        let refused = gate.identify(&from(Some("spiffe://example.org/other"), None));
        assert!(matches!(refused, Err(ServiceError::PermissionDenied(m)) if m.contains("example.org/other")));
        // A presented token decides alone: a wrong one is refused even with a listed certificate.
        assert!(gate.identify(&from(Some("spiffe://example.org/idp"), Some("nope"))).is_err());
        assert_eq!(gate.identify(&from(Some("spiffe://example.org/other"), Some("aaa"))).unwrap(), "hr-sync");
    }

    #[test]
    fn check_peers_when_set() {
        let open = CheckGate::new(&[]);
        assert!(open.admit(&from(None, None)).is_ok());
        let gate = CheckGate::new(&["spiffe://example.org/gw".to_string()]);
        assert!(gate.admit(&from(Some("spiffe://example.org/gw"), None)).is_ok());
        assert!(matches!(gate.admit(&from(Some("spiffe://x"), None)), Err(ServiceError::PermissionDenied(_))));
        assert!(matches!(gate.admit(&from(None, None)), Err(ServiceError::Unauthenticated(_))));
    }
}
