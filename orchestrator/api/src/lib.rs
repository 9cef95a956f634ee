//! tugboat-api: what the orchestrator's programs share. The spec-file format and its
//! validation ([`spec`]), the objects of the cluster ([`model`]), the bodies of the HTTP
//! API ([`wire`]), the exec stream's framing and HTTP upgrade ([`execstream`]), and the typed
//! client of the server's API ([`client`]). The server and the agent depend on this crate
//! and never on each other.

pub mod client;
pub mod execstream;
pub mod model;
pub mod spec;
pub mod tls;
pub mod wire;
