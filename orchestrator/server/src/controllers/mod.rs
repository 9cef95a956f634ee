//! Controllers: pure reconcilers ([`service`], [`node`]) and the loop that runs them
//! against the store ([`runner`]).

pub mod addresses;
pub mod autoscale;
pub mod cache;
pub mod node;
pub mod runner;
pub mod service;

#[cfg(test)]
mod proptests;

pub use node::{reconcile_nodes, NodeAction, NodeTimers};
pub use service::{reconcile_service, ServiceAction};
