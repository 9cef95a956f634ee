//! tugboat-server: the control plane. The store ([`store`]: revisions, transactions,
//! watches; embedded log backend), typed objects over it ([`objects`]), the scheduler
//! ([`scheduler`]), the controllers ([`controllers`]), the control plane's operations
//! ([`controlplane`]), the HTTP API ([`http`]) and the server that runs them ([`server`]).
//! It never depends on the agent: both speak through `tugboat-api`.

pub mod bootstrap;
pub mod controllers;
pub mod controlplane;
pub mod election;
pub mod http;
pub mod liveness;
pub mod nodepools;
pub mod objects;
pub mod pki;
pub mod scheduler;
pub mod server;
pub mod servers;
pub mod store;
