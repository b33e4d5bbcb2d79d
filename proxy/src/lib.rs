//! rampart: an edge proxy for an AI platform, on Pingora.
//!
//! This crate adapts Pingora to the pure plugins of `rampart-plugins`: it owns sockets,
//! listeners, upstream pools, the rules snapshot and its reloads, secrets and metrics.

pub mod accept;
pub mod access_log;
pub mod admin;
pub mod aws_secrets;
pub mod config;
pub mod config_view;
pub mod connection;
pub mod explain;
pub mod header_names;
pub mod health;
pub mod held_body;
pub mod jwks;
pub mod lifecycle;
pub mod llm;
pub mod metrics;
pub mod proxy;
pub mod redis_windows;
pub mod reload;
pub mod secrets;
pub mod server;
pub mod snapshot;
pub mod unread_body;
pub mod upstream;
