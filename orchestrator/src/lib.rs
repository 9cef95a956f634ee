//! tugboat: the orchestrator's library: spec files, the store, the scheduler, the controllers,
//! the HTTP API and its client, and the agent. The `tugboat` binary only parses arguments and calls in here.

pub mod agent;
pub mod api;
pub mod cli_config;
pub mod client;
pub mod controllers;
pub mod controlplane;
pub mod execstream;
pub mod model;
pub mod objects;
pub mod output;
pub mod scheduler;
pub mod server;
pub mod spec;
pub mod store;
pub mod up;
