//! Bearer-token gates for the services that are not open to anyone who reaches the port.
//!
//! With tokens configured, every call must carry `authorization: Bearer <token>` matching one of them
//! (compared as SHA-256 digests in constant time), loopback included: a proxy on the same host makes
//! every caller look local. Without tokens, only loopback peers are served.

use sha2::{Digest, Sha256};
use tonic::Request;

use crate::error::ServiceError;

pub struct TokenGate {
    /// (identity, SHA-256 of the token): comparing digests keeps the comparison length-independent.
    tokens: Vec<(String, [u8; 32])>,
}

impl TokenGate {
    /// Tokens as (identity, token); empty tokens are ignored.
    pub fn new(tokens: impl IntoIterator<Item = (String, String)>) -> Self {
        let tokens = tokens
            .into_iter()
            .filter(|(_, token)| !token.is_empty())
            .map(|(name, token)| (name, Sha256::digest(token.as_bytes()).into()))
            .collect();
        TokenGate { tokens }
    }

    /// The caller's identity: the matching token's name, or `loopback` when no token is configured.
    pub fn identify<T>(&self, request: &Request<T>) -> Result<String, ServiceError> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if self.tokens.is_empty() {
            return if is_loopback(request) {
                Ok("loopback".to_string())
            } else {
                Err(ServiceError::Unauthenticated("no token is configured; only loopback peers are served"))
            };
        }
        let Some(token) = presented else {
            return Err(ServiceError::Unauthenticated("missing `authorization: Bearer` token"));
        };
        let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every configured token is compared, so timing does not tell which one came close.
        let mut found = None;
        for (name, expected) in &self.tokens {
            let diff = got.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(name);
            }
        }
        found.cloned().ok_or(ServiceError::Unauthenticated("invalid bearer token"))
    }
}

fn is_loopback<T>(request: &Request<T>) -> bool {
    request.remote_addr().is_some_and(|a| a.ip().is_loopback() || a.ip().to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::transport::server::TcpConnectInfo;

    fn from(peer: &str, token: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        request.extensions_mut().insert(TcpConnectInfo { local_addr: None, remote_addr: Some(peer.parse().unwrap()) });
        if let Some(token) = token {
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    }

    fn gate(tokens: &[(&str, &str)]) -> TokenGate {
        TokenGate::new(tokens.iter().map(|(n, t)| (n.to_string(), t.to_string())))
    }

    #[test]
    fn remote_peers_need_a_token() {
        let gate = gate(&[("admin", "s3cret")]);
        assert_eq!(gate.identify(&from("203.0.113.9:4000", Some("s3cret"))).unwrap(), "admin");
        assert!(gate.identify(&from("203.0.113.9:4000", Some("s3cret2"))).is_err());
        assert!(gate.identify(&from("203.0.113.9:4000", Some("s3cre"))).is_err());
        assert!(gate.identify(&from("203.0.113.9:4000", None)).is_err());
        assert!(gate.identify(&from("[2001:db8::1]:4000", None)).is_err());
        // Once a token is configured, loopback needs it too.
        assert!(gate.identify(&from("127.0.0.1:4000", None)).is_err());
        assert!(gate.identify(&from("127.0.0.1:4000", Some("s3cret"))).is_ok());
    }

    #[test]
    fn each_token_names_its_caller() {
        let gate = gate(&[("hr-sync", "aaa"), ("scim", "bbb")]);
        assert_eq!(gate.identify(&from("10.0.0.1:1", Some("bbb"))).unwrap(), "scim");
        assert_eq!(gate.identify(&from("10.0.0.1:1", Some("aaa"))).unwrap(), "hr-sync");
        assert!(gate.identify(&from("10.0.0.1:1", Some("aaabbb"))).is_err());
    }

    #[test]
    fn without_a_token_only_loopback_is_served() {
        let gate = gate(&[]);
        assert_eq!(gate.identify(&from("127.0.0.1:4000", None)).unwrap(), "loopback");
        assert!(gate.identify(&from("[::1]:4000", None)).is_ok());
        assert!(gate.identify(&from("[::ffff:127.0.0.1]:4000", None)).is_ok());
        assert!(gate.identify(&from("10.0.0.8:4000", None)).is_err());
        assert!(gate.identify(&from("10.0.0.8:4000", Some("anything"))).is_err());
        // An empty configured token is no token.
        assert!(self::gate(&[("x", "")]).identify(&from("10.0.0.8:1", Some(""))).is_err());
        // An unknown peer is not loopback.
        assert!(gate.identify(&Request::new(())).is_err());
    }
}
