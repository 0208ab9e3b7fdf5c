//! `cedar_pdp.v1.AdminService`: operator queries, closed to anyone who merely reaches the port.
//!
//! With an admin token configured, every call must carry `authorization: Bearer <token>` matching it
//! (compared in constant time). Without one, only loopback peers are served.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::{convert, pb};
use crate::error::ServiceError;
use crate::policy::PolicyStore;

pub struct AdminApi {
    store: Arc<PolicyStore>,
    /// SHA-256 of the admin token: comparing digests keeps the comparison length-independent.
    token_digest: Option<[u8; 32]>,
}

impl AdminApi {
    pub fn new(store: Arc<PolicyStore>, admin_token: Option<&str>) -> Self {
        let token_digest = admin_token.filter(|t| !t.is_empty()).map(|t| Sha256::digest(t.as_bytes()).into());
        AdminApi { store, token_digest }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), ServiceError> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match (&self.token_digest, presented) {
            (Some(expected), Some(token)) => {
                let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                let diff = got.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b));
                if diff == 0 { Ok(()) } else { Err(ServiceError::Unauthenticated("invalid admin token")) }
            }
            // With a token configured, loopback is not trusted: a proxy on the same host makes every
            // caller look local.
            (Some(_), None) => Err(ServiceError::Unauthenticated("missing `authorization: Bearer` admin token")),
            (None, _) if is_loopback(request) => Ok(()),
            (None, _) => {
                Err(ServiceError::Unauthenticated("no admin token is configured; only loopback peers are served"))
            }
        }
    }
}

fn is_loopback<T>(request: &Request<T>) -> bool {
    request.remote_addr().is_some_and(|a| a.ip().is_loopback() || a.ip().to_canonical().is_loopback())
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        self.authorize(&request)?;
        let snapshot = self.store.current();
        Ok(Response::new(convert::status_response(snapshot.as_deref(), self.store.stats())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PolicyConfig, ValidationMode};
    use tonic::transport::server::TcpConnectInfo;

    fn api(token: Option<&str>) -> AdminApi {
        let config = PolicyConfig { policies: "policies".into(), validation: ValidationMode::Strict };
        AdminApi::new(Arc::new(PolicyStore::new(&config)), token)
    }

    fn from(peer: &str, token: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        request.extensions_mut().insert(TcpConnectInfo { local_addr: None, remote_addr: Some(peer.parse().unwrap()) });
        if let Some(token) = token {
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    }

    #[test]
    fn remote_peers_need_the_token() {
        let api = api(Some("s3cret"));
        assert!(api.authorize(&from("203.0.113.9:4000", Some("s3cret"))).is_ok());
        assert!(api.authorize(&from("203.0.113.9:4000", Some("s3cret2"))).is_err());
        assert!(api.authorize(&from("203.0.113.9:4000", Some("s3cre"))).is_err());
        assert!(api.authorize(&from("203.0.113.9:4000", None)).is_err());
        assert!(api.authorize(&from("[2001:db8::1]:4000", None)).is_err());
        // Once a token is configured, loopback needs it too.
        assert!(api.authorize(&from("127.0.0.1:4000", None)).is_err());
        assert!(api.authorize(&from("127.0.0.1:4000", Some("s3cret"))).is_ok());
    }

    #[test]
    fn without_a_token_only_loopback_is_served() {
        let api = api(None);
        assert!(api.authorize(&from("127.0.0.1:4000", None)).is_ok());
        assert!(api.authorize(&from("[::1]:4000", None)).is_ok());
        assert!(api.authorize(&from("[::ffff:127.0.0.1]:4000", None)).is_ok());
        assert!(api.authorize(&from("10.0.0.8:4000", None)).is_err());
        assert!(api.authorize(&from("10.0.0.8:4000", Some("anything"))).is_err());
        // An empty configured token is no token.
        assert!(super::AdminApi::new(api.store.clone(), Some("")).authorize(&from("10.0.0.8:1", Some(""))).is_err());
    }

    #[test]
    fn an_unknown_peer_is_not_loopback() {
        assert!(api(None).authorize(&Request::new(())).is_err());
    }
}
