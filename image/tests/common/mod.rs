#![allow(dead_code)]
pub mod fake_registry;
pub mod layout;
pub mod tools;
