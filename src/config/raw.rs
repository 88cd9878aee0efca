//! The serde mirror of gateway.yaml. Private to `config`: nothing outside sees loose strings.
//!
//! Unknown keys are errors, but not through `deny_unknown_fields`, which stops at the first:
//! `config::from_str` deserializes through `serde_ignored` and reports every unknown key with
//! its line, together with every other problem.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub(super) struct RawConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub tokens: RawTokens,
    #[serde(default)]
    pub clients: Vec<RawClient>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}

/// `store: memory` (the embedded default).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawStore {
    #[default]
    Memory,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawTokens {
    #[serde(default = "default_ttl")]
    pub ttl: String,
    #[serde(default = "default_token_path")]
    pub token_path: String,
    /// The RFC 8414 issuer; derived from the request's Host when absent.
    #[serde(default)]
    pub issuer: Option<String>,
}

impl Default for RawTokens {
    fn default() -> Self {
        RawTokens {
            ttl: default_ttl(),
            token_path: default_token_path(),
            issuer: None,
        }
    }
}

fn default_ttl() -> String {
    "1h".into()
}

fn default_token_path() -> String {
    "/oauth/token".into()
}

#[derive(Debug, Deserialize)]
pub(super) struct RawClient {
    pub id: String,
    pub secret_hash: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawRoute {
    pub id: String,
    pub path: String,
    pub upstream: String,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default = "default_timeout")]
    pub timeout: String,
    #[serde(default)]
    pub public: bool,
    /// Method key (`read`, `write`, `*` or a method name) -> scopes required.
    #[serde(default)]
    pub scopes: Option<BTreeMap<String, Vec<String>>>,
}

fn default_timeout() -> String {
    "30s".into()
}
