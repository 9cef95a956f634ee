#![allow(dead_code)]
pub mod layout;
