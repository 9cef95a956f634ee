//! tug-image: the OCI image store of a Tug host.
//!
//! [`ImageStore`] keeps verified blobs by digest, one unpacked directory per layer shared by
//! every image that has it, and named references; it imports OCI layouts and archives,
//! pulls from registries, and mounts an overlay rootfs per instance. See docs/images.md.

pub mod auth;
pub mod cli;
pub mod content;
pub mod digest;
pub mod error;
mod gc;
pub mod import;
pub mod lock;
pub mod oci;
pub mod progress;
pub mod pull;
pub mod reference;
mod registry;
pub mod rootfs;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use error::Error;
pub use import::ImportOptions;
pub use oci::Platform;
pub use progress::Progress;
pub use pull::{PullOptions, PullReport};
pub use reference::Reference;
pub use rootfs::{Mapped, Mounter, NixMounter};
pub use store::{Image, ImageConfig, ImageDetails, ImageStore, PruneReport, Rootfs};
