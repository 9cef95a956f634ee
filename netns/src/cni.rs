//! CNI plugin
