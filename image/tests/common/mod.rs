#![allow(dead_code)]
pub mod layout;
pub mod tools;
