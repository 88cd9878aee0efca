//! portcullis: an OAuth 2.0 client-credentials gateway.
//!
//! Services obtain tokens from the gateway itself (RFC 6749 4.4) and call the APIs behind it
//! with `Authorization: Bearer`; the gateway checks each token and the scopes its route demands
//! for the method, then forwards the request to the unmodified upstream.
#![warn(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod limit;
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
pub mod proxy;
pub mod request_id;
pub mod route;
pub mod scope;
pub mod secret;
pub mod server;
pub mod stack;
pub mod store;
pub mod tls;
pub mod token;

pub use config::Config;
pub use server::{run, Running};
