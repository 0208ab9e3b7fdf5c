//! The gRPC front door: generated types, conversions, and the service handlers.
//!
//! Architecture invariant: protobuf types stop here. Handlers convert, call [`crate::authz::decide`]
//! and convert back; errors become statuses only through `From<…> for Status` in `error.rs`.

mod admin;
mod auth;
mod authorization;
mod convert;
mod entities;
mod envoy_wire;
mod ext_authz;
mod health;
mod limits;

pub use admin::AdminApi;
pub use auth::{CheckGate, Gate, LocalToken};
pub use authorization::AuthorizationApi;
pub use entities::EntityApi;
pub use envoy_wire::AuthorizationServer as ExtAuthzServer;
pub use ext_authz::ExtAuthzApi;
pub use health::{HealthApi, HealthState, SERVICES as HEALTH_SERVICES};
pub use limits::RefusalsLayer;

/// Generated code for `proto/cedar_pdp/v1/authorization.proto`.
pub mod pb {
    #![allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    tonic::include_proto!("cedar_pdp.v1");

    /// Encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cedar_pdp_descriptor");
}

/// Envoy's `envoy.service.auth.v3` and its imports (`proto/vendor/`), for server reflection.
pub const ENVOY_AUTHZ_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("envoy_authz_descriptor");

pub use pb::admin_service_client::AdminServiceClient;
pub use pb::admin_service_server::AdminServiceServer;
pub use pb::authorization_service_client::AuthorizationServiceClient;
pub use pb::authorization_service_server::AuthorizationServiceServer;
pub use pb::entity_service_client::EntityServiceClient;
pub use pb::entity_service_server::EntityServiceServer;
