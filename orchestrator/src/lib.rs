//! tugboat: the `tugboat` binary's own parts (the CLI's config file and output, `tugboat up`)
//! over the crates it is made of: `tugboat-api` (wire types, client), `tugboat-server` (the
//! control plane) and `tugboat-agent` (the node side). They are re-exported under their
//! usual names for the binary, the tests and the benchmarks.

pub use tugboat_agent as agent;
pub use tugboat_api::{client, execstream, model, spec, tls, wire};
pub use tugboat_server::{
    controllers, controlplane, election, http, nodepools, objects, pki, scheduler, server, store,
};

pub mod cli_config;
pub mod commands;
pub mod diff;
pub mod manpages;
pub mod output;
pub mod service_logs;
pub mod spec_build;
pub mod up;
pub mod wait;
