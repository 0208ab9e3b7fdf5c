//! `cedar_pdp.v1.AdminService`: operator queries, closed to anyone who merely reaches the port.
//!
//! A call is served when it comes from a loopback address, or carries `authorization: Bearer <token>`
//! matching the configured admin token (compared in constant time).

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
        match (presented, &self.token_digest) {
            (Some(token), Some(expected)) => {
                let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                let diff = got.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b));
                if diff == 0 { Ok(()) } else { Err(ServiceError::Unauthenticated("invalid admin token")) }
            }
            (Some(_), None) if is_loopback(request) => Ok(()),
            (Some(_), None) => Err(ServiceError::Unauthenticated("no admin token is configured")),
            (None, _) if is_loopback(request) => Ok(()),
            (None, _) => Err(ServiceError::Unauthenticated("missing `authorization: Bearer` admin token")),
        }
    }
}

fn is_loopback<T>(request: &Request<T>) -> bool {
    request.remote_addr().is_some_and(|a| a.ip().is_loopback() || a.ip().to_canonical().is_loopback())
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn get_status(&self, request: Request<pb::GetStatusRequest>) -> Result<Response<pb::GetStatusResponse>, Status> {
        self.authorize(&request)?;
        let snapshot = self.store.current();
        Ok(Response::new(convert::status_response(snapshot.as_deref(), self.store.stats())))
    }
}
