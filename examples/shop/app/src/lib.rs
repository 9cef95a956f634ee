//! The shop example as small real services: front (the HTML shop), catalog, cart, orders and
//! payments, each one `shop SERVICE` in its own container, and a load generator (`shop load`).
//! Services reach each other by name (`catalog`, `cart`, ...): the name is looked up in
//! /etc/hosts (the agent writes it in each container), never through libc's resolver.

pub mod cart;
pub mod catalog;
pub mod client;
pub mod front;
pub mod hosts;
pub mod journal;
pub mod load;
pub mod model;
pub mod orders;
pub mod pages;
pub mod payments;
pub mod serve;
