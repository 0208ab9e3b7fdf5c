//! cedar-pdp: a gRPC policy decision point for Cedar policies.
//!
//! [`serve`] runs the server on a bound listener; `main.rs` only parses configuration, binds and
//! waits for a signal. See `ARCHITECTURE.md` for the codemap.

pub mod authz;
pub mod cli;
pub mod config;
pub mod decision;
pub mod entities;
pub mod envoy;
pub mod error;
pub mod grpc;
pub mod http;
pub mod json;
pub mod policy;
pub mod scim;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod web;

pub use server::{serve, shutdown_signal};
